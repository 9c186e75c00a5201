//! [`SshRemote`]: the [`Remote`] seam over SSH (feature `ssh`, on ssh2).
//!
//! Host keys are checked against a known_hosts file **strictly**: an unknown
//! or changed key is an error that shows the offered fingerprint, and
//! nothing is sent to such a host. Recording a key is a separate, explicit
//! step ([`fetch_host_key`] then [`HostKey::record`]), which the CLI exposes
//! as `ektool host trust`.
//!
//! ssh2 is blocking: every session operation runs on tokio's blocking pool.
//! One session per host is kept and reused; a broken one is dropped and the
//! next call reconnects.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session};

use crate::remote::{Command, ExitStatus, Output, Remote, RemoteError, quote};

/// `user@host:port`, with `user` and `port` optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshTarget {
    /// Login user.
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A target string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ssh target {0:?}: expected [user@]host[:port]")]
pub struct InvalidTarget(pub String);

impl SshTarget {
    /// The name known_hosts uses: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// Parses a target, defaulting the user to `default_user` and the port to 22.
    pub fn parse_with_user(s: &str, default_user: &str) -> Result<Self, InvalidTarget> {
        let bad = || InvalidTarget(s.to_owned());
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (u.to_owned(), r),
            Some(_) => return Err(bad()),
            None => (default_user.to_owned(), s),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 22,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (rest.to_owned(), 22),
            }
        };
        if host.is_empty() || user.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Self { user, host, port })
    }
}

impl FromStr for SshTarget {
    type Err = InvalidTarget;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
        Self::parse_with_user(s, &user)
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// How to authenticate and verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// Private key files to try, in order (before the agent).
    pub identity_files: Vec<PathBuf>,
    /// Try every identity of the running ssh-agent (`SSH_AUTH_SOCK`).
    pub use_agent: bool,
    /// The known_hosts file host keys are checked against.
    pub known_hosts: PathBuf,
    /// TCP connect and per-operation I/O timeout.
    pub connect_timeout: Duration,
}

impl SshOptions {
    /// Defaults: `~/.ssh/known_hosts`, the usual key files that exist, the agent.
    pub fn from_home() -> Self {
        let ssh_dir = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".ssh");
        let identity_files = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| ssh_dir.join(n))
            .filter(|p| p.exists())
            .collect();
        Self {
            identity_files,
            use_agent: true,
            known_hosts: ssh_dir.join("known_hosts"),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// A host's public key as offered during the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    /// The host in known_hosts form.
    pub host: String,
    /// The key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key blob, base64.
    pub key_base64: String,
}

impl HostKey {
    /// The known_hosts line for this key.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {} {}", self.host, self.key_type, self.key_base64)
    }

    /// Appends this key to `known_hosts` (creating it 0600, and its
    /// directory 0700, if missing). Existing entries are left alone.
    pub fn record(&self, known_hosts: &Path) -> Result<(), RemoteError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |context: String| move |source| RemoteError::Io { context, source };
        if let Some(dir) = known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(format!("could not create {}", dir.display())))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(known_hosts)
            .map_err(io(format!("could not open {}", known_hosts.display())))?;
        writeln!(file, "{}", self.known_hosts_line())
            .map_err(io(format!("could not write {}", known_hosts.display())))
    }
}

/// How a host's key compares with a known_hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyStatus {
    /// known_hosts has this very key for the host.
    Trusted,
    /// known_hosts has no key for the host.
    Unknown,
    /// known_hosts has a *different* key for the host.
    Changed,
}

/// Compares a key blob with what `known_hosts` records for `target`.
fn known_status(
    target: &SshTarget,
    blob: &[u8],
    known_hosts: &Path,
) -> Result<HostKeyStatus, RemoteError> {
    let name = target.to_string();
    let session = Session::new().map_err(ssh_err(&name))?;
    let mut known = session.known_hosts().map_err(ssh_err(&name))?;
    if known_hosts.exists() {
        known
            .read_file(known_hosts, KnownHostFileKind::OpenSSH)
            .map_err(ssh_err(&name))?;
    }
    Ok(match known.check_port(&target.host, target.port, blob) {
        CheckResult::Match => HostKeyStatus::Trusted,
        CheckResult::Mismatch => HostKeyStatus::Changed,
        CheckResult::NotFound | CheckResult::Failure => HostKeyStatus::Unknown,
    })
}

fn key_type_name(t: HostKeyType) -> &'static str {
    match t {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown",
    }
}

fn ssh_err(host: &str) -> impl Fn(ssh2::Error) -> RemoteError + '_ {
    move |e| RemoteError::Ssh {
        host: host.to_owned(),
        message: e.message().to_owned(),
    }
}

/// Connects and performs the handshake only: no authentication, no checks.
fn handshake(target: &SshTarget, timeout: Duration) -> Result<Session, RemoteError> {
    let name = target.to_string();
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|source| RemoteError::Connect {
            host: name.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| RemoteError::Connect {
            host: name.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
    let tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| RemoteError::Connect {
            host: name.clone(),
            source,
        })?;
    // Each command is a few small SSH packets (channel open, exec, EOF)
    // sent back to back: with Nagle's algorithm the second one waits for
    // the peer's delayed ACK, ~40 ms per command.
    tcp.set_nodelay(true)
        .map_err(|source| RemoteError::Connect {
            host: name.clone(),
            source,
        })?;
    let mut session = Session::new().map_err(ssh_err(&name))?;
    session.set_tcp_stream(tcp);
    session.set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
    session.handshake().map_err(ssh_err(&name))?;
    Ok(session)
}

fn offered_key(session: &Session, target: &SshTarget) -> Result<(HostKey, Vec<u8>), RemoteError> {
    let name = target.to_string();
    let (blob, kind) = session.host_key().ok_or_else(|| RemoteError::Ssh {
        host: name.clone(),
        message: "no host key offered".into(),
    })?;
    let hash = session
        .host_key_hash(HashType::Sha256)
        .ok_or_else(|| RemoteError::Ssh {
            host: name.clone(),
            message: "no host key hash".into(),
        })?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = HostKey {
        host: target.known_hosts_name(),
        key_type: key_type_name(kind).to_owned(),
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        ),
        key_base64: b64.encode(blob),
    };
    Ok((key, blob.to_vec()))
}

/// Connects to `target` and returns the host key it offers and how it
/// compares with `known_hosts`, without authenticating or trusting it.
/// Show the fingerprint to the user, then [`HostKey::record`] it only on
/// explicit confirmation.
pub async fn fetch_host_key(
    target: &SshTarget,
    known_hosts: &Path,
    timeout: Duration,
) -> Result<(HostKey, HostKeyStatus), RemoteError> {
    let target = target.clone();
    let known_hosts = known_hosts.to_owned();
    blocking(move || {
        let session = handshake(&target, timeout)?;
        let (key, blob) = offered_key(&session, &target)?;
        let status = known_status(&target, &blob, &known_hosts)?;
        Ok((key, status))
    })
    .await
}

/// The explicit trust step: fetches the host key and records it in
/// `known_hosts` only if its fingerprint is `expected`. A key that is
/// already trusted is left as is; a host whose recorded key *changed* is
/// refused (the old entry must be removed by hand, knowingly).
pub async fn trust_host_key(
    target: &SshTarget,
    expected: &str,
    known_hosts: &Path,
    timeout: Duration,
) -> Result<(HostKey, HostKeyStatus), RemoteError> {
    let (key, status) = fetch_host_key(target, known_hosts, timeout).await?;
    let normalise = |s: &str| {
        s.trim()
            .trim_start_matches("SHA256:")
            .trim_end_matches('=')
            .to_owned()
    };
    if normalise(expected) != normalise(&key.fingerprint) {
        return Err(RemoteError::FingerprintMismatch {
            host: target.to_string(),
            expected: expected.trim().to_owned(),
            actual: key.fingerprint,
        });
    }
    match status {
        HostKeyStatus::Trusted => {}
        HostKeyStatus::Unknown => key.record(known_hosts)?,
        HostKeyStatus::Changed => {
            return Err(RemoteError::HostKeyMismatch {
                host: key.host,
                key_type: key.key_type,
                fingerprint: key.fingerprint,
            });
        }
    }
    Ok((key, status))
}

async fn blocking<T, F>(f: F) -> Result<T, RemoteError>
where
    F: FnOnce() -> Result<T, RemoteError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::Io {
            context: "ssh worker failed".into(),
            source: std::io::Error::other(e),
        })?
}

/// A shell on a host over SSH.
#[derive(Clone)]
pub struct SshRemote {
    inner: Arc<Inner>,
}

struct Inner {
    target: SshTarget,
    options: SshOptions,
    session: Mutex<Option<Session>>,
    /// The client key the last session logged in with.
    used_key: Mutex<Option<crate::ssh_key::PublicKey>>,
}

impl fmt::Debug for SshRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshRemote")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl SshRemote {
    /// A remote for `target`. Nothing connects until the first call.
    pub fn new(target: SshTarget, options: SshOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                options,
                session: Mutex::new(None),
                used_key: Mutex::new(None),
            }),
        }
    }

    /// The client public key this remote logged in with (connecting first
    /// if needed), when it can be told: a key file's public half, or the
    /// agent identity's. A caller that rewrites the login user's
    /// `authorized_keys` uses it to keep the key in use.
    pub async fn authenticated_key(
        &self,
    ) -> Result<Option<crate::ssh_key::PublicKey>, RemoteError> {
        self.connect().await?;
        let used = self
            .inner
            .used_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(used.clone())
    }

    /// The target.
    pub fn target(&self) -> &SshTarget {
        &self.inner.target
    }

    /// Connects now (verifying the host key and authenticating), so that
    /// problems show before any work starts.
    pub async fn connect(&self) -> Result<(), RemoteError> {
        let inner = self.inner.clone();
        blocking(move || inner.with_session(|_| Ok(()))).await
    }
}

impl Inner {
    fn open(&self) -> Result<Session, RemoteError> {
        let t = &self.target;
        let name = t.to_string();
        let session = handshake(t, self.options.connect_timeout)?;
        self.verify(&session)?;
        self.authenticate(&session)?;
        // Keepalives make a dead peer show up as an error, not a hang.
        session.set_keepalive(true, 15);
        if !session.authenticated() {
            return Err(RemoteError::Auth {
                host: name,
                user: t.user.clone(),
                tried: "nothing".into(),
            });
        }
        Ok(session)
    }

    fn verify(&self, session: &Session) -> Result<(), RemoteError> {
        let (key, blob) = offered_key(session, &self.target)?;
        // Errors name the target as the user wrote it, so the trust hint
        // in the message can be pasted as is.
        let host = self.target.to_string();
        match known_status(&self.target, &blob, &self.options.known_hosts)? {
            HostKeyStatus::Trusted => Ok(()),
            HostKeyStatus::Changed => Err(RemoteError::HostKeyMismatch {
                host,
                key_type: key.key_type,
                fingerprint: key.fingerprint,
            }),
            HostKeyStatus::Unknown => Err(RemoteError::UnknownHostKey {
                host,
                key_type: key.key_type,
                fingerprint: key.fingerprint,
            }),
        }
    }

    fn authenticate(&self, session: &Session) -> Result<(), RemoteError> {
        let t = &self.target;
        let mut tried = Vec::new();
        for key in &self.options.identity_files {
            tried.push(key.display().to_string());
            if session
                .userauth_pubkey_file(&t.user, None, key, None)
                .is_ok()
                && session.authenticated()
            {
                self.record_key(crate::ssh_key::PublicKey::of_key_file(key));
                return Ok(());
            }
        }
        if self.options.use_agent
            && std::env::var_os("SSH_AUTH_SOCK").is_some()
            && let Ok(mut agent) = session.agent()
            && agent.connect().is_ok()
            && agent.list_identities().is_ok()
        {
            for identity in agent.identities().unwrap_or_default() {
                tried.push(format!("agent:{}", identity.comment()));
                if agent.userauth(&t.user, &identity).is_ok() && session.authenticated() {
                    self.record_key(crate::ssh_key::PublicKey::from_blob(
                        identity.blob(),
                        format!("agent:{}", identity.comment()),
                    ));
                    return Ok(());
                }
            }
        }
        Err(RemoteError::Auth {
            host: t.to_string(),
            user: t.user.clone(),
            tried: if tried.is_empty() {
                "no keys configured and no agent".into()
            } else {
                tried.join(", ")
            },
        })
    }

    fn record_key(&self, key: Option<crate::ssh_key::PublicKey>) {
        *self.used_key.lock().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// Runs `f` on the cached session, connecting first if needed. A
    /// connection-level failure drops the session so the next call
    /// reconnects.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let Some(session) = guard.as_ref() else {
            return Err(RemoteError::Ssh {
                host: self.target.to_string(),
                message: "no session".into(),
            });
        };
        let result = f(session);
        if matches!(
            result,
            Err(RemoteError::Connect { .. }
                | RemoteError::Ssh { .. }
                | RemoteError::Timeout { .. })
        ) {
            *guard = None;
        }
        result
    }

    fn exec(&self, session: &Session, command: &Command) -> Result<Output, RemoteError> {
        let name = self.target.to_string();
        let err = ssh_err(&name);
        let mut line = command.to_shell_line();
        let mut deadline = None;
        if let Some(limit) = command.timeout {
            // The host enforces the limit (and kills the command), so
            // nothing is left running there; the local deadline only
            // guards against a silent network.
            line = format!(
                "timeout -k 5 {} sh -c {}",
                limit.as_secs().max(1),
                quote(&line)
            );
            deadline = Some(Instant::now() + limit + Duration::from_secs(15));
        }
        session.set_blocking(true);
        let mut channel = session.channel_session().map_err(&err)?;
        channel.exec(&line).map_err(&err)?;
        if let Some(stdin) = &command.stdin {
            channel
                .write_all(stdin)
                .map_err(|source| RemoteError::Connect {
                    host: name.clone(),
                    source,
                })?;
        }
        channel.send_eof().map_err(&err)?;

        // Read both streams without blocking on either, so a command that
        // fills stderr while we wait on stdout cannot deadlock.
        session.set_blocking(false);
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 32 * 1024];
        let result = loop {
            let mut progressed = false;
            match channel.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    stdout.extend_from_slice(&buf[..n]);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    break Err(RemoteError::Connect {
                        host: name.clone(),
                        source,
                    });
                }
            }
            match channel.stderr().read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    stderr.extend_from_slice(&buf[..n]);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    break Err(RemoteError::Connect {
                        host: name.clone(),
                        source,
                    });
                }
            }
            if !progressed && channel.eof() {
                break Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                break Err(RemoteError::Timeout {
                    host: name.clone(),
                    after: command.timeout.unwrap_or_default(),
                    command: command.to_string(),
                });
            }
            if !progressed {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        session.set_blocking(true);
        result?;
        let status = match channel.wait_close() {
            Ok(()) => match channel.exit_signal() {
                Ok(sig) if sig.exit_signal.is_some() => {
                    ExitStatus::Signal(sig.exit_signal.unwrap_or_default())
                }
                _ => match channel.exit_status() {
                    Ok(code) => ExitStatus::Code(code),
                    Err(_) => ExitStatus::Unknown,
                },
            },
            Err(_) => ExitStatus::Unknown,
        };
        if command.timeout.is_some() && status == ExitStatus::Code(124) {
            return Err(RemoteError::Timeout {
                host: name.clone(),
                after: command.timeout.unwrap_or_default(),
                command: command.to_string(),
            });
        }
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

#[async_trait]
impl Remote for SshRemote {
    fn host(&self) -> String {
        self.inner.target.to_string()
    }

    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        let inner = self.inner.clone();
        let command = command.clone();
        blocking(move || inner.with_session(|s| inner.exec(s, &command))).await
    }

    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), RemoteError> {
        let command = Command::shell(upload_script(path, mode)).stdin(bytes.to_vec());
        crate::remote::run_checked(self, &command).await.map(|_| ())
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError> {
        let command = Command::argv(["cat", "--", path]);
        crate::remote::run_checked(self, &command)
            .await
            .map(|o| o.stdout)
    }
}

/// The shell script that performs an atomic upload from standard input.
fn upload_script(path: &str, mode: u32) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some(("", name)) => (String::new(), name.to_owned()),
        Some((dir, name)) => (dir.to_owned(), name.to_owned()),
        None => (".".to_owned(), path.to_owned()),
    };
    // mktemp creates the file 0600, so the content is never readable by
    // others before the final chmod, whatever the umask.
    let template = format!("{dir}/.{name}.ektool.XXXXXX");
    format!(
        "set -e; t=$(mktemp {template}); trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; chmod {mode:o} \"$t\"; mv -f \"$t\" {path}; trap - EXIT",
        template = quote(&template),
        path = quote(path),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_script_quotes_paths() {
        let s = upload_script("/srv/my app/.env", 0o600);
        assert!(
            s.contains("mktemp '/srv/my app/..env.ektool.XXXXXX'"),
            "{s}"
        );
        assert!(s.contains("chmod 600"), "{s}");
        assert!(s.contains("mv -f \"$t\" '/srv/my app/.env'"), "{s}");
    }

    #[test]
    fn parses_targets() {
        let t = SshTarget::parse_with_user("deploy@web1.example.com:2222", "x").unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("deploy", "web1.example.com", 2222)
        );
        let t = SshTarget::parse_with_user("10.0.0.1", "ubuntu").unwrap();
        assert_eq!((t.user.as_str(), t.port), ("ubuntu", 22));
        let t = SshTarget::parse_with_user("root@[::1]:22022", "x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 22022));
        for bad in ["", "@host", "host:notaport", "user@", "[::1", "a b"] {
            assert!(SshTarget::parse_with_user(bad, "u").is_err(), "{bad}");
        }
    }

    #[test]
    fn known_hosts_name_brackets_non_default_ports() {
        assert_eq!(
            SshTarget::parse_with_user("h", "u")
                .unwrap()
                .known_hosts_name(),
            "h"
        );
        assert_eq!(
            SshTarget::parse_with_user("h:2222", "u")
                .unwrap()
                .known_hosts_name(),
            "[h]:2222"
        );
    }
}
