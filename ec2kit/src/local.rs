//! [`LocalRemote`]: the [`Remote`] seam on this machine.

use std::path::Path;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::remote::{Command, ExitStatus, Output, Program, Remote, RemoteError};

/// Runs commands on this machine, as the current user.
///
/// Deploys to `localhost` use it, and so do tests of code written against
/// [`Remote`].
#[derive(Debug, Clone, Default)]
pub struct LocalRemote {
    _private: (),
}

impl LocalRemote {
    /// A local shell.
    pub fn new() -> Self {
        Self::default()
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RemoteError {
    let context = context.into();
    move |source| RemoteError::Io { context, source }
}

fn status_of(s: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(sig)) => ExitStatus::Signal(sig.to_string()),
        (None, None) => ExitStatus::Unknown,
    }
}

#[async_trait]
impl Remote for LocalRemote {
    fn host(&self) -> String {
        "localhost".to_owned()
    }

    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        let mut cmd = match &command.program {
            Program::Argv(args) => {
                let Some((program, rest)) = args.split_first() else {
                    return Err(RemoteError::Io {
                        context: "empty command".into(),
                        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    });
                };
                let mut c = tokio::process::Command::new(program);
                c.args(rest);
                c
            }
            Program::Shell(script) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(script);
                c
            }
        };
        cmd.envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(if command.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout can kill the whole tree.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &command.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(io(format!("could not start `{command}`")))?;
        let pid = child.id();
        if let (Some(bytes), Some(mut stdin)) = (command.stdin.clone(), child.stdin.take()) {
            // Feed stdin concurrently so a child that writes a lot before
            // reading cannot deadlock against us.
            tokio::spawn(async move {
                let _ = stdin.write_all(&bytes).await;
            });
        }
        let wait = child.wait_with_output();
        let out = match command.timeout {
            None => wait.await,
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(out) => out,
                Err(_) => {
                    if let Some(pid) = pid {
                        let _ = tokio::process::Command::new("kill")
                            .args(["-KILL", "--", &format!("-{pid}")])
                            .status()
                            .await;
                    }
                    return Err(RemoteError::Timeout {
                        host: self.host(),
                        after: limit,
                        command: command.to_string(),
                    });
                }
            },
        }
        .map_err(io(format!("could not run `{command}`")))?;
        Ok(Output {
            status: status_of(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), RemoteError> {
        let path = path.to_owned();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            use std::os::unix::fs::PermissionsExt;
            let target = Path::new(&path);
            let dir = match target.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            // NamedTempFile is created 0600 in the target's directory, so
            // the rename is atomic and the content never world-readable.
            let mut tmp = tempfile::Builder::new()
                .prefix(".ektool-upload.")
                .tempfile_in(dir)
                .map_err(io(format!(
                    "could not create a temporary file in {}",
                    dir.display()
                )))?;
            tmp.write_all(&bytes)
                .map_err(io(format!("could not write {path}")))?;
            tmp.as_file()
                .sync_all()
                .map_err(io(format!("could not sync {path}")))?;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("could not set the mode of {path}")))?;
            tmp.persist(target).map_err(|e| RemoteError::Io {
                context: format!("could not rename into {path}"),
                source: e.error,
            })?;
            Ok(())
        })
        .await
        .map_err(|e| RemoteError::Io {
            context: "upload task failed".into(),
            source: std::io::Error::other(e),
        })?
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError> {
        tokio::fs::read(path)
            .await
            .map_err(io(format!("could not read {path}")))
    }
}
