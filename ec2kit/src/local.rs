//! [`LocalRemote`]: the [`Remote`] seam on this machine.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::remote::{
    Command, ExitStatus, Output, Program, Remote, RemoteError, STDERR_TAIL, Streamed, Streams,
};

/// The variables a command inherits from ektool's own environment: what a
/// program needs to find its tools, home, language and time zone. Anything
/// else ektool was started with (`AWS_*` credentials, the webhook URL,
/// tokens of the CI job) is not passed on.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR",
];

/// Runs commands on this machine, as the current user.
///
/// Deploys to `localhost` use it, and so do tests of code written against
/// [`Remote`]. Commands get a scrubbed environment, like a command on a
/// fresh SSH login: [`INHERITED_ENV`], the `LC_*` variables, the names
/// added with [`LocalRemote::pass_env`], and the command's own
/// [`Command::env`].
#[derive(Debug, Clone, Default)]
pub struct LocalRemote {
    pass: Vec<String>,
}

impl LocalRemote {
    /// A local shell.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also passes the variable `name` on from ektool's environment (for
    /// example `SSH_AUTH_SOCK` for a hook that fetches over SSH).
    #[must_use]
    pub fn pass_env(mut self, name: impl Into<String>) -> Self {
        self.pass.push(name.into());
        self
    }

    fn inherited(&self) -> Vec<(OsString, OsString)> {
        std::env::vars_os()
            .filter(|(k, _)| {
                k.to_str().is_some_and(|k| {
                    INHERITED_ENV.contains(&k)
                        || k.starts_with("LC_")
                        || self.pass.iter().any(|p| p == k)
                })
            })
            .collect()
    }

    fn process(&self, command: &Command) -> Result<tokio::process::Command, RemoteError> {
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
        cmd.env_clear()
            .envs(self.inherited())
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout can kill the whole tree.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &command.cwd {
            cmd.current_dir(dir);
        }
        Ok(cmd)
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

/// Kills the process group `pid` leads (the command and its children).
async fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .await;
    }
}

/// Fsyncs a directory, so a rename into it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Remote for LocalRemote {
    fn host(&self) -> String {
        "localhost".to_owned()
    }

    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        let mut cmd = self.process(command)?;
        cmd.stdin(if command.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
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
                    kill_group(pid).await;
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

    async fn run_streaming(
        &self,
        command: &Command,
        streams: Streams,
    ) -> Result<Streamed, RemoteError> {
        let Streams {
            stdin,
            stdout,
            cancel,
        } = streams;
        let mut cmd = self.process(command)?;
        cmd.stdin(if stdin.is_some() || command.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .map_err(io(format!("could not start `{command}`")))?;
        let pid = child.id();
        let host = self.host();

        // Input: a blocking reader on its own thread, a few chunks ahead.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        match stdin {
            Some(mut reader) => {
                tokio::task::spawn_blocking(move || {
                    loop {
                        let mut buf = vec![0u8; 64 * 1024];
                        let item = match reader.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                buf.truncate(n);
                                Ok(buf)
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => Err(e),
                        };
                        let failed = item.is_err();
                        if tx.blocking_send(item).is_err() || failed {
                            break;
                        }
                    }
                });
            }
            None => {
                if let Some(bytes) = command.stdin.clone() {
                    let _ = tx.send(Ok(bytes)).await;
                }
                drop(tx);
            }
        }
        let mut pipe = child.stdin.take();
        let feed = async move {
            let mut sent = 0u64;
            while let Some(item) = rx.recv().await {
                let chunk = match item {
                    Ok(c) => c,
                    // Keep the pipe open: the caller kills the command
                    // first, so it never sees a clean end of input.
                    Err(e) => return (Err(e), pipe),
                };
                if let Some(p) = pipe.as_mut() {
                    if p.write_all(&chunk).await.is_err() {
                        // The command closed its input: it wants no more.
                        pipe = None;
                    } else {
                        sent += chunk.len() as u64;
                    }
                }
            }
            // Only a complete input is closed cleanly.
            drop(pipe);
            (Ok::<u64, std::io::Error>(sent), None)
        };

        // Output: to the (blocking) sink on its own thread.
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let sink = tokio::task::spawn_blocking(move || {
            let mut stdout = stdout;
            let mut written = 0u64;
            while let Some(chunk) = out_rx.blocking_recv() {
                stdout.write_all(&chunk)?;
                written += chunk.len() as u64;
            }
            stdout.flush()?;
            Ok::<u64, std::io::Error>(written)
        });
        let mut child_out = child.stdout.take();
        let drain_out = async move {
            if let Some(out) = child_out.as_mut() {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = out.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    if out_tx.send(buf[..n].to_vec()).await.is_err() {
                        return Err(std::io::Error::other("the output sink stopped"));
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        };
        let mut child_err = child.stderr.take();
        let drain_err = async move {
            let mut tail = Vec::new();
            if let Some(err) = child_err.as_mut() {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = err.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 2 * STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
            }
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
            Ok::<Vec<u8>, std::io::Error>(tail)
        };

        let work = async {
            // A failed input kills the command before its input is closed.
            let (fed, out, err) = tokio::join!(
                async {
                    let (r, pipe) = feed.await;
                    if r.is_err() {
                        kill_group(pid).await;
                    }
                    drop(pipe);
                    r
                },
                drain_out,
                drain_err
            );
            let status = child.wait().await;
            (fed, out, err, status)
        };
        let limit = command.timeout;
        let timed = async {
            match limit {
                Some(l) => tokio::time::timeout(l, work).await.ok(),
                None => Some(work.await),
            }
        };
        let cancelled = async {
            match &cancel {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let (fed, out, err, status) = tokio::select! {
            r = timed => match r {
                Some(r) => r,
                None => {
                    kill_group(pid).await;
                    return Err(RemoteError::Timeout {
                        host,
                        after: limit.unwrap_or_default(),
                        command: command.to_string(),
                    });
                }
            },
            () = cancelled => {
                kill_group(pid).await;
                return Err(RemoteError::Interrupted { host });
            }
        };
        let stdin_bytes = fed.map_err(io(format!(
            "{host}: reading the input of `{command}` failed"
        )))?;
        out.map_err(io(format!(
            "{host}: reading the output of `{command}` failed"
        )))?;
        let stderr = err.map_err(io(format!(
            "{host}: reading the errors of `{command}` failed"
        )))?;
        let status = status.map_err(io(format!("could not run `{command}`")))?;
        let stdout_bytes = sink
            .await
            .map_err(|e| RemoteError::Io {
                context: "output writer failed".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(format!(
                "{host}: writing the output of `{command}` failed"
            )))?;
        Ok(Streamed {
            status: status_of(status),
            stdin_bytes,
            stdout_bytes,
            stderr,
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
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("could not set the mode of {path}")))?;
            // Content (and mode) on disk before the new name points at it,
            // and the rename itself on disk after: a power loss never
            // leaves an empty file under the name.
            tmp.as_file()
                .sync_all()
                .map_err(io(format!("could not sync {path}")))?;
            tmp.persist(target).map_err(|e| RemoteError::Io {
                context: format!("could not rename into {path}"),
                source: e.error,
            })?;
            sync_dir(dir).map_err(io(format!("could not sync {}", dir.display())))?;
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
