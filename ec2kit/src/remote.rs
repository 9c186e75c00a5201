//! The `Remote` seam: a shell on one host.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// A program and its arguments, quoted for the remote shell by the
    /// implementation (no shell interpretation of the arguments).
    Argv(Vec<String>),
    /// A POSIX shell script, run by `sh -c`.
    Shell(String),
}

/// A command to run on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The program.
    pub program: Program,
    /// Extra environment variables. Over SSH they are set by the remote
    /// shell, so they show in the host's process list: never put secrets
    /// here; upload them as a 0600 file instead.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Bytes fed to standard input (then closed).
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long; the call then fails with
    /// [`RemoteError::Timeout`].
    pub timeout: Option<Duration>,
}

impl Command {
    /// A program with arguments.
    pub fn argv<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Program::Argv(args.into_iter().map(Into::into).collect()))
    }

    /// A shell script.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(Program::Shell(script.into()))
    }

    fn new(program: Program) -> Self {
        Self {
            program,
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: None,
        }
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets standard input.
    #[must_use]
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The whole command as one POSIX shell line: `cd`, environment and
    /// program, each quoted. This is what an SSH server is sent.
    pub fn to_shell_line(&self) -> String {
        let mut line = String::new();
        if let Some(cwd) = &self.cwd {
            line.push_str(&format!("cd {} && ", quote(cwd)));
        }
        if !self.env.is_empty() {
            line.push_str("env ");
            for (k, v) in &self.env {
                line.push_str(&quote(&format!("{k}={v}")));
                line.push(' ');
            }
        }
        match &self.program {
            Program::Argv(args) => {
                line.push_str(&args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "))
            }
            Program::Shell(script) => {
                line.push_str("sh -c ");
                line.push_str(&quote(script));
            }
        }
        line
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.program {
            Program::Argv(args) => {
                f.write_str(&args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "))
            }
            Program::Shell(script) => f.write_str(script),
        }
    }
}

/// Quotes `s` for a POSIX shell (single quotes; safe for any bytes).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(String),
    /// The host never said (the connection dropped, or the server sent no
    /// exit status). Never treated as success.
    Unknown,
}

impl ExitStatus {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, Self::Code(0))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(s) => write!(f, "signal {s}"),
            Self::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// How much of a streamed command's standard error is kept: its end.
pub const STDERR_TAIL: usize = 64 * 1024;

/// Where a streamed command's input comes from and its output goes
/// ([`Remote::run_streaming`]): neither is ever held whole in memory.
pub struct Streams {
    /// Read as the command consumes it, then standard input is closed.
    /// If reading fails, the call fails and the command is stopped without
    /// a clean end of input as far as the transport allows: a local
    /// process is killed first; over SSH the connection is dropped, which
    /// the command itself may still see as the end of its input. So never
    /// let the end of input mean "complete": frame it (a `COMMIT` sent
    /// only after the last byte was read, as `deploykit::db` does).
    /// Replaces [`Command::stdin`].
    pub stdin: Option<Box<dyn std::io::Read + Send>>,
    /// Receives standard output as it arrives.
    pub stdout: Box<dyn std::io::Write + Send>,
    /// Stops the command when cancelled; the call then fails with
    /// [`RemoteError::Interrupted`].
    pub cancel: Option<CancellationToken>,
}

impl Streams {
    /// Output to `stdout`, no input, no cancellation.
    pub fn new(stdout: impl std::io::Write + Send + 'static) -> Self {
        Self {
            stdin: None,
            stdout: Box::new(stdout),
            cancel: None,
        }
    }

    /// Feeds standard input from `reader`.
    #[must_use]
    pub fn stdin(mut self, reader: impl std::io::Read + Send + 'static) -> Self {
        self.stdin = Some(Box::new(reader));
        self
    }

    /// Stops the command when `token` is cancelled.
    #[must_use]
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("stdin", &self.stdin.is_some())
            .field("cancel", &self.cancel.is_some())
            .finish_non_exhaustive()
    }
}

/// How a streamed command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// How it ended.
    pub status: ExitStatus,
    /// Bytes of standard input the command was sent.
    pub stdin_bytes: u64,
    /// Bytes of standard output written to the sink.
    pub stdout_bytes: u64,
    /// The end of its standard error (at most [`STDERR_TAIL`] bytes).
    pub stderr: Vec<u8>,
}

impl Streamed {
    /// The kept end of standard error as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Errors of the `Remote` seam.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// Could not connect or the connection broke.
    #[error("{host}: connection failed")]
    Connect {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SSH handshake or protocol failed.
    #[error("{host}: ssh: {message}")]
    Ssh {
        /// The host.
        host: String,
        /// What failed.
        message: String,
    },
    /// No offered key was accepted.
    #[error("{host}: authentication as {user} failed (tried: {tried})")]
    Auth {
        /// The host.
        host: String,
        /// The user.
        user: String,
        /// What was tried.
        tried: String,
    },
    /// The host is not in known_hosts. Nothing was sent to it.
    #[error(
        "{host}: host key is not known ({key_type} {fingerprint}); if this is the right host, trust it with `ektool host trust {host} --fingerprint {fingerprint}`"
    )]
    UnknownHostKey {
        /// The host (`[host]:port` form for non-22 ports).
        host: String,
        /// The key type, e.g. `ssh-ed25519`.
        key_type: String,
        /// `SHA256:…` fingerprint of the offered key.
        fingerprint: String,
    },
    /// The host offered a different key than the one recorded. Nothing was
    /// sent to it.
    #[error(
        "{host}: HOST KEY CHANGED: offered {key_type} {fingerprint} does not match known_hosts; this may be an attack. Remove the old entry from known_hosts only if you know why it changed"
    )]
    HostKeyMismatch {
        /// The host.
        host: String,
        /// The offered key type.
        key_type: String,
        /// `SHA256:…` fingerprint of the offered key.
        fingerprint: String,
    },
    /// A trust step was given a fingerprint the host does not have.
    #[error("{host}: offered key {actual} is not the expected {expected}")]
    FingerprintMismatch {
        /// The host.
        host: String,
        /// What the user said to expect.
        expected: String,
        /// What the host offered.
        actual: String,
    },
    /// The command ran longer than its timeout and was killed.
    #[error("{host}: command timed out after {after:?}: {command}")]
    Timeout {
        /// The host.
        host: String,
        /// The timeout.
        after: Duration,
        /// The command (as displayed).
        command: String,
    },
    /// A command that had to succeed did not.
    #[error("{host}: `{command}` failed with {status}: {stderr}")]
    Failed {
        /// The host.
        host: String,
        /// The command (as displayed).
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// A command succeeded but printed something ektool cannot use
    /// (e.g. a login banner instead of a path).
    #[error("{host}: {command}: {detail}")]
    UnexpectedOutput {
        /// The host.
        host: String,
        /// What was being done.
        command: String,
        /// What was expected, and what came.
        detail: String,
    },
    /// The host stopped answering: nothing came back, SSH keepalives
    /// included, for longer than the keepalive limit. The connection was
    /// dropped; what the command did on the host is unknown.
    #[error(
        "{host}: no answer for {}s (SSH keepalives unanswered): the host or the network to it is down or hung",
        silent_for.as_secs()
    )]
    Unresponsive {
        /// The host.
        host: String,
        /// How long it had been silent.
        silent_for: Duration,
    },
    /// The host offered a key that known_hosts lists as `@revoked`.
    /// Nothing was sent to it.
    #[error(
        "{host}: the host key it offered is marked @revoked in {}; refusing to connect",
        known_hosts.display()
    )]
    HostKeyRevoked {
        /// The host.
        host: String,
        /// The known_hosts file.
        known_hosts: std::path::PathBuf,
    },
    /// known_hosts trusts a certificate authority for this host
    /// (`@cert-authority`), and has no key of its own for it: host
    /// certificates cannot be checked here. Nothing was sent to it.
    #[error(
        "{host}: {} trusts host certificates for it (@cert-authority, line {}), which ektool cannot verify; record the host's own key instead",
        known_hosts.display(),
        lines.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    HostCertificateUnsupported {
        /// The host.
        host: String,
        /// The known_hosts file.
        known_hosts: std::path::PathBuf,
        /// The `@cert-authority` lines covering the host.
        lines: Vec<usize>,
    },
    /// The caller cancelled the command; it was stopped.
    #[error("{host}: interrupted")]
    Interrupted {
        /// The host.
        host: String,
    },
    /// A local I/O error (key files, known_hosts, local processes).
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// A shell on one host.
///
/// Implementations: [`LocalRemote`](crate::LocalRemote) (this machine) and
/// `SshRemote` (feature `ssh`); `MockRemote` (feature `mock`) for tests.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Remote: Send + Sync {
    /// A name for the host in messages (`user@host:port`, `localhost`).
    fn host(&self) -> String;

    /// Runs a command to completion. A non-zero exit is *not* an error
    /// here: look at [`Output::status`].
    async fn run(&self, command: &Command) -> Result<Output, RemoteError>;

    /// Runs a command to completion, streaming: standard input is read
    /// from `streams.stdin` while standard output goes to
    /// `streams.stdout`, so neither is held whole in memory. A non-zero
    /// exit is not an error here: look at [`Streamed::status`].
    ///
    /// The default buffers both (for test doubles); [`LocalRemote`](crate::LocalRemote)
    /// and `SshRemote` stream.
    async fn run_streaming(
        &self,
        command: &Command,
        streams: Streams,
    ) -> Result<Streamed, RemoteError> {
        buffered_streaming(self, command, streams).await
    }

    /// Writes `bytes` to `path` with permission bits `mode`, atomically: a
    /// private temporary file in the same directory, renamed over `path`.
    /// Readers see the old file or the new one, never a partial one.
    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), RemoteError>;

    /// Reads a whole file.
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError>;
}

/// [`Remote::run_streaming`] through [`Remote::run`]: reads all of standard
/// input first (a read error fails the call before anything runs), then
/// writes the whole output.
pub async fn buffered_streaming<R: Remote + ?Sized>(
    remote: &R,
    command: &Command,
    streams: Streams,
) -> Result<Streamed, RemoteError> {
    let Streams {
        stdin,
        mut stdout,
        cancel,
    } = streams;
    let mut command = command.clone();
    if let Some(mut reader) = stdin {
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| RemoteError::Io {
            context: "input reader failed".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| RemoteError::Io {
            context: format!("{}: reading the input of `{command}` failed", remote.host()),
            source,
        })?;
        command.stdin = Some(bytes);
    }
    let stdin_bytes = command.stdin.as_ref().map_or(0, |b| b.len() as u64);
    let out = match &cancel {
        None => remote.run(&command).await?,
        Some(token) => tokio::select! {
            out = remote.run(&command) => out?,
            () = token.cancelled() => return Err(RemoteError::Interrupted { host: remote.host() }),
        },
    };
    let stdout_bytes = out.stdout.len() as u64;
    tokio::task::spawn_blocking(move || {
        stdout.write_all(&out.stdout)?;
        stdout.flush()?;
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|e| RemoteError::Io {
        context: "output writer failed".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| RemoteError::Io {
        context: format!(
            "{}: writing the output of `{command}` failed",
            remote.host()
        ),
        source,
    })
    .map(|out| {
        let mut stderr = out.stderr;
        if stderr.len() > STDERR_TAIL {
            stderr.drain(..stderr.len() - STDERR_TAIL);
        }
        Streamed {
            status: out.status,
            stdin_bytes,
            stdout_bytes,
            stderr,
        }
    })
}

/// Runs `command` and fails unless it exits 0.
pub async fn run_checked(remote: &dyn Remote, command: &Command) -> Result<Output, RemoteError> {
    let out = remote.run(command).await?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(RemoteError::Failed {
            host: remote.host(),
            command: command.to_string(),
            status: out.status.clone(),
            stderr: out.stderr_str().trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("plain-word_1.2"), "plain-word_1.2");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn shell_line_quotes_everything() {
        let c = Command::argv(["echo", "a b", "$HOME"])
            .env("X", "1 2")
            .cwd("/srv/my app");
        assert_eq!(
            c.to_shell_line(),
            "cd '/srv/my app' && env 'X=1 2' echo 'a b' '$HOME'"
        );
        let s = Command::shell("echo $HOME");
        assert_eq!(s.to_shell_line(), "sh -c 'echo $HOME'");
    }

    #[tokio::test]
    async fn run_checked_turns_failure_into_an_error_with_stderr() {
        let mut remote = MockRemote::new();
        remote.expect_host().return_const("web1".to_owned());
        remote.expect_run().returning(|_| {
            Ok(Output {
                status: ExitStatus::Code(2),
                stdout: vec![],
                stderr: b"  no such file\n".to_vec(),
            })
        });
        let err = run_checked(&remote, &Command::argv(["cat", "/x"]))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "web1: `cat /x` failed with exit code 2: no such file"
        );
    }

    #[tokio::test]
    async fn run_checked_never_takes_unknown_for_success() {
        let mut remote = MockRemote::new();
        remote.expect_host().return_const("web1".to_owned());
        remote.expect_run().returning(|_| {
            Ok(Output {
                status: ExitStatus::Unknown,
                stdout: vec![],
                stderr: vec![],
            })
        });
        assert!(
            run_checked(&remote, &Command::argv(["true"]))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn guarded_job_start_sends_one_detached_command_under_timeout() {
        let mut remote = MockRemote::new();
        remote
            .expect_run()
            .times(1)
            .withf(|c| match &c.program {
                Program::Shell(s) => {
                    s.contains("setsid nohup")
                        && s.contains("timeout -k 5 30 sh -c")
                        && s.contains("fsfreeze -f /data")
                }
                Program::Argv(_) => false,
            })
            .returning(|_| {
                Ok(Output {
                    status: ExitStatus::Code(0),
                    stdout: b"/tmp/ektool-job.abc\n".to_vec(),
                    stderr: vec![],
                })
            });
        let job = crate::GuardedJob::start(
            &remote,
            &Command::argv(["fsfreeze", "-f", "/data"]),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(job.dir, "/tmp/ektool-job.abc");
        assert_eq!(job.limit, Duration::from_secs(30));
    }

    #[test]
    fn unknown_status_is_not_success() {
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Unknown.success());
        assert!(!ExitStatus::Signal("KILL".into()).success());
    }
}
