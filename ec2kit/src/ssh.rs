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
//!
//! Nothing waits unbounded: connecting and the handshake are bounded by
//! [`SshOptions::connect_timeout`]; a command runs with every libssh2 call
//! non-blocking, sending SSH keepalives while it waits, and fails with
//! [`RemoteError::Unresponsive`] once the host has been silent for the
//! [`Keepalive`] limit (a stopped or cut-off host acknowledges TCP but
//! answers nothing), with [`RemoteError::Timeout`] shortly after its own
//! timeout, or with [`RemoteError::Interrupted`] when cancelled. TCP
//! keepalive and `TCP_USER_TIMEOUT` end a dead connection between commands.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session};

use tokio_util::sync::CancellationToken;

use crate::remote::{
    Command, ExitStatus, Output, Remote, RemoteError, STDERR_TAIL, Streamed, Streams, quote,
};
// The targets and options are plain data (`crate::target`, compiled
// without this feature); re-exported here where they used to live.
pub use crate::target::{InvalidTarget, SshOptions, SshTarget};

mod jump;
mod shell;
pub use jump::Bastion;

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

/// One line of a known_hosts file that ektool could not use. The line is
/// skipped (it never makes every connection fail); a host whose only entry
/// it was is then simply not known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownHostsProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for KnownHostsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A known_hosts file as ektool reads it: libssh2 parses each host line
/// on its own (its file reader stops at the first line longer than 4092
/// bytes and then fails every connection), and the OpenSSH markers it does
/// not know are handled here: a key listed `@revoked` is refused (for every
/// host, whatever the line's host pattern), and `@cert-authority` lines
/// (host certificates, which libssh2 cannot verify) are reported for the
/// hosts they cover instead of being read as host names.
struct KnownHostsFile {
    plain: ssh2::KnownHosts,
    revoked: Vec<Vec<u8>>,
    cert_authority: Vec<(usize, String)>,
    problems: Vec<KnownHostsProblem>,
}

/// The longest line libssh2 accepts (`KNOWNHOST_MAX_LEN`).
const KNOWN_HOSTS_MAX_LINE: usize = 1024 * 1024;

impl KnownHostsFile {
    fn read(path: &Path, session: &Session, name: &str) -> Result<Self, RemoteError> {
        let mut file = Self {
            plain: session.known_hosts().map_err(ssh_err(name))?,
            revoked: Vec::new(),
            cert_authority: Vec::new(),
            problems: Vec::new(),
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(file),
            Err(source) => {
                return Err(RemoteError::Io {
                    context: format!("could not read {}", path.display()),
                    source,
                });
            }
        };
        for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
            if let Err(reason) = file.add_line(i + 1, raw) {
                file.problems.push(KnownHostsProblem {
                    line: i + 1,
                    reason,
                });
            }
        }
        Ok(file)
    }

    fn add_line(&mut self, line: usize, raw: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_owned())?;
        let text = text.trim_matches([' ', '\t', '\r']);
        if text.is_empty() || text.starts_with('#') {
            return Ok(());
        }
        if raw.len() > KNOWN_HOSTS_MAX_LINE {
            return Err(format!(
                "{} bytes long, more than the {KNOWN_HOSTS_MAX_LINE} an entry may have",
                raw.len()
            ));
        }
        if text.contains('\0') {
            return Err("contains a NUL byte".into());
        }
        let Some(marked) = text.strip_prefix('@') else {
            return self
                .plain
                .read_str(text, KnownHostFileKind::OpenSSH)
                .map_err(|e| format!("not a known_hosts entry ({})", e.message()));
        };
        let mut fields = marked.split_ascii_whitespace();
        let marker = fields.next().unwrap_or_default();
        let (hosts, _kind, key) = match (fields.next(), fields.next(), fields.next()) {
            (Some(h), Some(k), Some(b)) => (h, k, b),
            _ => return Err(format!("@{marker} line without host, key type and key")),
        };
        match marker {
            "revoked" => {
                let blob = base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|_| "@revoked key is not base64".to_owned())?;
                self.revoked.push(blob);
                Ok(())
            }
            "cert-authority" => {
                self.cert_authority.push((line, hosts.to_owned()));
                Ok(())
            }
            other => Err(format!("unknown marker @{other}")),
        }
    }

    /// The `@cert-authority` lines whose host patterns cover `name`.
    fn cert_authority_lines(&self, name: &str) -> Vec<usize> {
        self.cert_authority
            .iter()
            .filter(|(_, patterns)| host_patterns_match(patterns, name))
            .map(|(line, _)| *line)
            .collect()
    }
}

/// OpenSSH's host pattern list: comma-separated globs (`*`, `?`), `!`
/// negating; case-insensitive. Hashed entries (`|1|…`) never match here.
fn host_patterns_match(patterns: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(&pattern.to_ascii_lowercase(), &name) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `*` and `?` glob matching, iterative (no recursion on hostile input).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The lines of `known_hosts` ektool skips, and why: entries libssh2
/// cannot parse (too long, malformed) and unknown `@` markers. An empty
/// list means every line is used. A missing file has no problems.
pub fn known_hosts_problems(known_hosts: &Path) -> Result<Vec<KnownHostsProblem>, RemoteError> {
    let session = Session::new().map_err(ssh_err("known_hosts"))?;
    Ok(KnownHostsFile::read(known_hosts, &session, "known_hosts")?.problems)
}

/// libssh2 panics (through ssh2's `CString::new(..).unwrap()`) on a host
/// name holding a NUL byte; such a name is never a real host.
fn check_host_name(target: &SshTarget) -> Result<(), RemoteError> {
    if target.host.is_empty() || target.host.chars().any(char::is_control) {
        return Err(RemoteError::Ssh {
            host: target.to_string().escape_debug().to_string(),
            message: "the host name is empty or holds control characters".into(),
        });
    }
    Ok(())
}

/// Compares a key blob with what `known_hosts` records for `target`. A
/// key listed `@revoked` for the host is an error; so is a host covered
/// only by a `@cert-authority` line (ektool cannot check host certificates).
fn known_status(
    target: &SshTarget,
    blob: &[u8],
    known_hosts: &Path,
) -> Result<HostKeyStatus, RemoteError> {
    check_host_name(target)?;
    let name = target.to_string();
    let session = Session::new().map_err(ssh_err(&name))?;
    let file = KnownHostsFile::read(known_hosts, &session, &name)?;
    for p in &file.problems {
        tracing::warn!(
            known_hosts = %known_hosts.display(),
            line = p.line,
            "known_hosts entry skipped: {}",
            p.reason
        );
    }
    if file.revoked.iter().any(|k| k.as_slice() == blob) {
        return Err(RemoteError::HostKeyRevoked {
            host: name,
            known_hosts: known_hosts.to_owned(),
        });
    }
    Ok(
        match file.plain.check_port(&target.host, target.port, blob) {
            CheckResult::Match => HostKeyStatus::Trusted,
            CheckResult::Mismatch => HostKeyStatus::Changed,
            CheckResult::NotFound | CheckResult::Failure => {
                let lines = file.cert_authority_lines(&target.known_hosts_name());
                if !lines.is_empty() {
                    return Err(RemoteError::HostCertificateUnsupported {
                        host: name,
                        known_hosts: known_hosts.to_owned(),
                        lines,
                    });
                }
                HostKeyStatus::Unknown
            }
        },
    )
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

/// When bytes last came from the peer, as told by the connection's pump.
#[derive(Debug)]
struct Heard {
    base: Instant,
    /// Milliseconds since `base`.
    last: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// An SSH session and the TCP connection under it.
///
/// libssh2 does not tell when it last heard from the peer, and sends
/// keepalives only when asked. So libssh2 talks to one end of a local
/// socket pair and two small threads pump bytes between the other end and
/// the TCP connection, noting when the peer last sent anything: a peer
/// that stops answering keepalives (stopped, partitioned, hung) shows as
/// silence, whatever its TCP stack still acknowledges.
///
/// Behind a bastion ([`Bastion`]) the bytes come from the bastion's
/// connection thread instead, which notes when they last came the same way.
struct Conn {
    session: Session,
    /// What carries the session: the TCP connection, or libssh2's end of a
    /// bastion tunnel.
    link: Link,
    heard: Arc<Heard>,
    /// Libssh2's end of its socket (a second handle on it): readable when
    /// the peer sent something libssh2 has not read yet.
    local: UnixStream,
    /// The connection's command shell (see [`shell`]).
    shell: ShellSlot,
}

/// A connection's command shell: not started yet, running, or not
/// possible on this host (commands then use `exec`).
enum ShellSlot {
    NotStarted,
    Ready(ssh2::Channel),
    Unavailable,
}

/// What carries a [`Conn`].
enum Link {
    Tcp(TcpStream),
    Tunnel(UnixStream),
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Wakes both pump threads (or ends the tunnel on the bastion),
        // even when the peer never answers again.
        let _ = match &self.link {
            Link::Tcp(tcp) => tcp.shutdown(Shutdown::Both),
            Link::Tunnel(sock) => sock.shutdown(Shutdown::Both),
        };
    }
}

fn connect_err(host: &str) -> impl Fn(std::io::Error) -> RemoteError + '_ {
    move |source| RemoteError::Connect {
        host: host.to_owned(),
        source,
    }
}

/// Kernel-level liveness: TCP keepalive probes on an idle connection and a
/// bound on unacknowledged data, so a partitioned network ends the
/// connection even between commands.
fn tune_tcp(tcp: &TcpStream) -> std::io::Result<()> {
    // Each command is a few small SSH packets (channel open, exec, EOF)
    // sent back to back: with Nagle's algorithm the second one waits for
    // the peer's delayed ACK, ~40 ms per command.
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3),
    )?;
    sock.set_tcp_user_timeout(Some(Duration::from_secs(60)))
}

fn pump(mut from: impl Read, mut to: impl Write, heard: Option<&Heard>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(h) = heard {
            h.touch();
        }
        to.write_all(&buf[..n])?;
    }
}

/// Connects (bounded by `timeout`) and performs the handshake only: no
/// authentication, no checks. Every blocking libssh2 call is bounded by
/// `timeout` too.
fn handshake(target: &SshTarget, timeout: Duration) -> Result<Conn, RemoteError> {
    check_host_name(target)?;
    let name = target.to_string();
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(connect_err(&name))?
        .next()
        .ok_or_else(|| RemoteError::Connect {
            host: name.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })?;
    let timeout = timeout.max(Duration::from_millis(1));
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err(&name))?;
    tune_tcp(&tcp).map_err(connect_err(&name))?;
    let (ours, theirs) = UnixStream::pair().map_err(connect_err(&name))?;
    let heard = Arc::new(Heard::new());
    let clone = |s: &TcpStream| s.try_clone().map_err(connect_err(&name));
    let (tcp_in, tcp_out) = (clone(&tcp)?, clone(&tcp)?);
    let theirs_out = theirs.try_clone().map_err(connect_err(&name))?;
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name("ektool-ssh-pump".into())
            .spawn(f)
            .map(drop)
            .map_err(connect_err(&name))
    };
    {
        let heard = heard.clone();
        spawn(Box::new(move || {
            let _ = pump(&tcp_in, &theirs_out, Some(&heard));
            // The peer closed (or the link broke): libssh2 reads EOF.
            let _ = theirs_out.shutdown(Shutdown::Write);
        }))?;
    }
    spawn(Box::new(move || {
        let _ = pump(&theirs, &tcp_out, None);
        // libssh2 let go of the session: end the TCP connection too, which
        // also wakes the other pump.
        let _ = tcp_out.shutdown(Shutdown::Both);
    }))?;
    let local = ours.try_clone().map_err(connect_err(&name))?;
    let mut session = Session::new().map_err(ssh_err(&name))?;
    session.set_tcp_stream(ours);
    session.set_timeout(timeout.as_millis().min(u128::from(u32::MAX)) as u32);
    let conn = Conn {
        session,
        link: Link::Tcp(tcp),
        heard,
        local,
        shell: ShellSlot::NotStarted,
    };
    let mut session = conn.session.clone();
    session.handshake().map_err(ssh_err(&name))?;
    Ok(conn)
}

/// Like [`handshake`], through a tunnel on `bastion`'s connection (opened
/// first, bounded by `timeout`; then the handshake is, as directly).
fn handshake_via(
    target: &SshTarget,
    timeout: Duration,
    bastion: &Bastion,
) -> Result<Conn, RemoteError> {
    check_host_name(target)?;
    let name = target.to_string();
    let timeout = timeout.max(Duration::from_millis(1));
    let heard = Arc::new(Heard::new());
    let ours = bastion.tunnel(target, heard.clone(), timeout)?;
    let local = ours.try_clone().map_err(connect_err(&name))?;
    let link = ours.try_clone().map_err(connect_err(&name))?;
    let mut session = Session::new().map_err(ssh_err(&name))?;
    session.set_tcp_stream(ours);
    session.set_timeout(timeout.as_millis().min(u128::from(u32::MAX)) as u32);
    let conn = Conn {
        session,
        link: Link::Tunnel(link),
        heard,
        local,
        shell: ShellSlot::NotStarted,
    };
    let mut session = conn.session.clone();
    session.handshake().map_err(ssh_err(&name))?;
    Ok(conn)
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
    fetch_host_key_via(target, known_hosts, timeout, None).await
}

/// [`fetch_host_key`], through `bastion` when there is one (the bastion's
/// own key checked strictly first: it is a host like any other).
pub async fn fetch_host_key_via(
    target: &SshTarget,
    known_hosts: &Path,
    timeout: Duration,
    bastion: Option<&Bastion>,
) -> Result<(HostKey, HostKeyStatus), RemoteError> {
    let target = target.clone();
    let known_hosts = known_hosts.to_owned();
    let bastion = bastion.cloned();
    blocking(move || {
        let conn = match &bastion {
            None => handshake(&target, timeout)?,
            Some(b) => handshake_via(&target, timeout, b)?,
        };
        let (key, blob) = offered_key(&conn.session, &target)?;
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
    trust_host_key_via(target, expected, known_hosts, timeout, None).await
}

/// [`trust_host_key`], through `bastion` when there is one.
pub async fn trust_host_key_via(
    target: &SshTarget,
    expected: &str,
    known_hosts: &Path,
    timeout: Duration,
    bastion: Option<&Bastion>,
) -> Result<(HostKey, HostKeyStatus), RemoteError> {
    let (key, status) = fetch_host_key_via(target, known_hosts, timeout, bastion).await?;
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

/// How a silent peer is found out: SSH keepalives sent while waiting, and
/// a limit on how long the peer may stay silent.
///
/// A host that is stopped, hung or cut off by the network (no RST) answers
/// nothing; after `interval × max_missed` without a byte from it, the
/// command fails with [`RemoteError::Unresponsive`] and the connection is
/// dropped, so a dead peer never hangs a caller, with or without a command
/// timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Send a keepalive this often while waiting (libssh2's floor: 2 s).
    pub interval: Duration,
    /// Keepalive intervals the peer may leave unanswered (at least 2).
    pub max_missed: u32,
}

impl Default for Keepalive {
    /// 15 s × 4: a dead peer is noticed within about a minute, like
    /// OpenSSH's `ServerAliveInterval 15` with `ServerAliveCountMax 4`.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            max_missed: 4,
        }
    }
}

impl Keepalive {
    fn interval_secs(&self) -> u32 {
        self.interval.as_secs().clamp(2, u64::from(u32::MAX)) as u32
    }

    /// The longest silence accepted from the peer.
    pub fn limit(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval_secs())).saturating_mul(self.max_missed.max(2))
    }
}

/// How much longer than a command's own timeout the client waits: the host
/// enforces the timeout and needs a moment to report it.
const DEADLINE_GRACE: Duration = Duration::from_secs(15);

/// A shell on a host over SSH.
#[derive(Clone)]
pub struct SshRemote {
    inner: Arc<Inner>,
}

struct Inner {
    target: SshTarget,
    options: SshOptions,
    keepalive: Keepalive,
    session: Mutex<Option<Conn>>,
    /// The client key the last session logged in with.
    used_key: Mutex<Option<crate::ssh_key::PublicKey>>,
    /// The bastion the host is reached through, if any.
    bastion: Option<Bastion>,
}

impl fmt::Debug for SshRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshRemote")
            .field("target", &self.inner.target)
            .field("keepalive", &self.inner.keepalive)
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
                keepalive: Keepalive::default(),
                session: Mutex::new(None),
                used_key: Mutex::new(None),
                bastion: None,
            }),
        }
    }

    /// Reaches the host through `bastion` (OpenSSH's `ProxyJump`): a
    /// `direct-tcpip` channel on the bastion's one connection, shared by
    /// every remote behind it. The host's key is checked against
    /// known_hosts under its own name, as directly.
    #[must_use]
    pub fn via(self, bastion: Bastion) -> Self {
        Self {
            inner: Arc::new(Inner {
                target: self.inner.target.clone(),
                options: self.inner.options.clone(),
                keepalive: self.inner.keepalive,
                session: Mutex::new(None),
                used_key: Mutex::new(None),
                bastion: Some(bastion),
            }),
        }
    }

    /// The bastion this remote goes through, if any.
    pub fn bastion(&self) -> Option<&Bastion> {
        self.inner.bastion.as_ref()
    }

    /// Sets how a silent peer is found out (default: [`Keepalive::default`]).
    #[must_use]
    pub fn keepalive(self, keepalive: Keepalive) -> Self {
        Self {
            inner: Arc::new(Inner {
                target: self.inner.target.clone(),
                options: self.inner.options.clone(),
                keepalive,
                session: Mutex::new(None),
                used_key: Mutex::new(None),
                bastion: self.inner.bastion.clone(),
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

/// The line a host is sent for `command`, under its timeout, and the
/// local deadline that goes with it.
fn bounded_line(command: &Command) -> (String, Option<Instant>) {
    let line = command.to_shell_line();
    match command.timeout {
        // The host enforces the limit (and kills the command), so nothing
        // is left running there; the local deadline only guards against a
        // silent network.
        Some(limit) => (
            format!(
                "timeout -k 5 {} sh -c {}",
                limit.as_secs().max(1),
                quote(&line)
            ),
            local_deadline(command),
        ),
        None => (line, None),
    }
}

/// When the client gives up on `command`: its timeout (which the host
/// enforces) and a grace for the host to say so.
fn local_deadline(command: &Command) -> Option<Instant> {
    Instant::now()
        .checked_add(command.timeout?)
        .and_then(|d| d.checked_add(DEADLINE_GRACE))
}

/// A command with a timeout that exited 124 was killed by `timeout` on the
/// host: that is [`RemoteError::Timeout`], not a status.
fn timed_out(command: &Command, status: &ExitStatus, host: String) -> Result<(), RemoteError> {
    match command.timeout {
        Some(after) if *status == ExitStatus::Code(124) => Err(RemoteError::Timeout {
            host,
            after,
            command: command.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Reads what `from` has now (non-blocking) onto `into`: whether anything
/// came. "Would block" is nothing yet; any other error ends the command.
fn read_some(from: &mut impl Read, buf: &mut [u8], into: &mut Vec<u8>) -> std::io::Result<bool> {
    match from.read(buf) {
        Ok(n) => {
            into.extend_from_slice(&buf[..n]);
            Ok(n > 0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// `f` with every libssh2 call on `session` non-blocking (the polling
/// loops' mode), blocking again after.
fn nonblocking<T>(session: &Session, f: impl FnOnce() -> T) -> T {
    session.set_blocking(false);
    let result = f();
    session.set_blocking(true);
    result
}

/// libssh2's "would block" (`LIBSSH2_ERROR_EAGAIN`).
fn is_again(e: &ssh2::Error) -> bool {
    e.code() == ssh2::ErrorCode::Session(-37)
}

/// Sleeps between polls: short while a command is likely to answer soon,
/// longer once it has been quiet for a while (long jobs, big uploads that
/// wait on the window), so an idle wait costs little CPU.
struct Idle(Instant);

impl Idle {
    fn new() -> Self {
        Self(Instant::now())
    }
    fn reset(&mut self) {
        self.0 = Instant::now();
    }
    fn sleep(&self) {
        let quiet = self.0.elapsed();
        std::thread::sleep(if quiet < Duration::from_millis(50) {
            Duration::from_millis(1)
        } else if quiet < Duration::from_secs(2) {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(10)
        });
    }
}

/// What bounds one command: its deadline, the peer's silence, a cancel.
struct Watch<'a> {
    conn: &'a Conn,
    host: &'a str,
    keepalive: Keepalive,
    started: Instant,
    deadline: Option<Instant>,
    command: &'a Command,
    cancel: Option<&'a CancellationToken>,
}

impl Watch<'_> {
    fn check(&self) -> Result<(), RemoteError> {
        if self.cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(RemoteError::Interrupted {
                host: self.host.to_owned(),
            });
        }
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(RemoteError::Timeout {
                host: self.host.to_owned(),
                after: self.command.timeout.unwrap_or_default(),
                command: self.command.to_string(),
            });
        }
        // libssh2 sends one only when the interval has passed since the
        // last; a full socket buffer ("again") is no reason to fail here.
        let _ = self.conn.session.keepalive_send();
        let silent_for = self.conn.heard.last().max(self.started).elapsed();
        if silent_for > self.keepalive.limit() {
            return Err(RemoteError::Unresponsive {
                host: self.host.to_owned(),
                silent_for,
            });
        }
        Ok(())
    }

    /// Repeats a non-blocking libssh2 call until it stops saying "again",
    /// checking the bounds in between.
    fn again<T>(&self, mut f: impl FnMut() -> Result<T, ssh2::Error>) -> Result<T, RemoteError> {
        let idle = Idle::new();
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if is_again(&e) => {
                    self.check()?;
                    idle.sleep();
                }
                Err(e) => {
                    return Err(RemoteError::Ssh {
                        host: self.host.to_owned(),
                        message: e.message().to_owned(),
                    });
                }
            }
        }
    }
}

/// Standard input of a command, fed from the polling loop.
enum Input {
    None,
    Bytes(Vec<u8>, usize),
    /// Chunks read by a helper thread (a reader may block: a pipe, a slow
    /// disk), at most a few in memory at once.
    Reader {
        rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        chunk: Vec<u8>,
        pos: usize,
    },
}

enum Step<'a> {
    Data(&'a [u8]),
    Wait,
    End,
    Failed(std::io::Error),
}

impl Input {
    fn reader(mut r: Box<dyn Read + Send>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name("ektool-ssh-stdin".into())
            .spawn(move || {
                loop {
                    let mut buf = vec![0u8; 64 * 1024];
                    let sent = match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            tx.send(Ok(buf))
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self::Reader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        })
    }

    fn step(&mut self) -> Step<'_> {
        match self {
            Self::None => Step::End,
            Self::Bytes(b, pos) if *pos < b.len() => Step::Data(&b[*pos..]),
            Self::Bytes(..) => Step::End,
            Self::Reader { rx, chunk, pos } => {
                if *pos >= chunk.len() {
                    match rx.try_recv() {
                        Ok(Ok(next)) => {
                            *chunk = next;
                            *pos = 0;
                        }
                        Ok(Err(e)) => return Step::Failed(e),
                        Err(std::sync::mpsc::TryRecvError::Empty) => return Step::Wait,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return Step::End,
                    }
                }
                Step::Data(&chunk[*pos..])
            }
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            Self::None => {}
            Self::Bytes(_, pos) | Self::Reader { pos, .. } => *pos += n,
        }
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes written to it.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Write for Tail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        if self.0.len() > 2 * STDERR_TAIL {
            let cut = self.0.len() - STDERR_TAIL;
            self.0.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tail {
    fn into_inner(mut self) -> Vec<u8> {
        if self.0.len() > STDERR_TAIL {
            let cut = self.0.len() - STDERR_TAIL;
            self.0.drain(..cut);
        }
        self.0
    }
}

/// What one command did.
struct Ran {
    status: ExitStatus,
    stdin_bytes: u64,
    stdout_bytes: u64,
}

impl Inner {
    fn open(&self) -> Result<Conn, RemoteError> {
        let t = &self.target;
        let name = t.to_string();
        let conn = match &self.bastion {
            None => handshake(t, self.options.connect_timeout)?,
            Some(b) => handshake_via(t, self.options.connect_timeout, b)?,
        };
        self.verify(&conn.session)?;
        self.authenticate(&conn.session)?;
        if !conn.session.authenticated() {
            return Err(RemoteError::Auth {
                host: name,
                user: t.user.clone(),
                tried: "nothing".into(),
            });
        }
        // libssh2 sends keepalives only when asked (`keepalive_send` in
        // the polling loops below); this sets their interval.
        conn.session
            .set_keepalive(true, self.keepalive.interval_secs());
        Ok(conn)
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

    /// Runs `f` on the cached connection, connecting first if needed. Any
    /// failure other than a command's own drops the connection (its state
    /// is unknown), so the next call reconnects.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(RemoteError::Ssh {
                host: self.target.to_string(),
                message: "no session".into(),
            });
        };
        let result = f(conn);
        if result.is_err() {
            *guard = None;
        }
        result
    }

    /// Runs one command with every libssh2 call non-blocking: standard
    /// input is written while both output streams are read (neither side
    /// can stall the other, and no blocking write can hit libssh2's
    /// timeout), keepalives go out while waiting, and every wait is bounded
    /// by the deadline, the peer's silence and `cancel`.
    fn exec(
        &self,
        conn: &Conn,
        command: &Command,
        input: Input,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        cancel: Option<&CancellationToken>,
    ) -> Result<Ran, RemoteError> {
        nonblocking(&conn.session, || {
            self.exec_nonblocking(conn, command, input, stdout, stderr, cancel)
        })
    }

    fn exec_nonblocking(
        &self,
        conn: &Conn,
        command: &Command,
        mut input: Input,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        cancel: Option<&CancellationToken>,
    ) -> Result<Ran, RemoteError> {
        let name = self.target.to_string();
        let (line, deadline) = bounded_line(command);
        let watch = Watch {
            conn,
            host: &name,
            keepalive: self.keepalive,
            started: Instant::now(),
            deadline,
            command,
            cancel,
        };
        let session = &conn.session;
        let mut channel = watch.again(|| session.channel_session())?;
        watch.again(|| channel.exec(&line))?;

        let local_io = |what: &str| {
            let context = format!("{name}: {what} `{command}`");
            move |source| RemoteError::Io { context, source }
        };
        let mut buf = vec![0u8; 32 * 1024];
        let (mut stdin_bytes, mut stdout_bytes) = (0u64, 0u64);
        let mut stdin_open = true;
        let mut idle = Idle::new();
        loop {
            let mut progressed = false;
            if stdin_open {
                match input.step() {
                    Step::Data(bytes) => match channel.write(bytes) {
                        Ok(n) => {
                            input.consume(n);
                            stdin_bytes += n as u64;
                            progressed |= n > 0;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // The command closed its input (or exited): the
                        // rest is not wanted; its status says the rest.
                        Err(_) => stdin_open = false,
                    },
                    Step::Wait => {}
                    Step::End => match channel.send_eof() {
                        Ok(()) => stdin_open = false,
                        Err(e) if is_again(&e) => {}
                        Err(_) => stdin_open = false,
                    },
                    // The input broke off: no EOF is sent; the caller
                    // drops the connection (the command may still see
                    // that as the end of its input: see `Streams`).
                    Step::Failed(source) => {
                        return Err(RemoteError::Io {
                            context: format!(
                                "{name}: reading the input of `{command}` failed after {stdin_bytes} bytes"
                            ),
                            source,
                        });
                    }
                }
            }
            match channel.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    stdout
                        .write_all(&buf[..n])
                        .map_err(local_io("writing the output of"))?;
                    stdout_bytes += n as u64;
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(connect_err(&name)(source)),
            }
            match channel.stderr().read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    stderr
                        .write_all(&buf[..n])
                        .map_err(local_io("writing the errors of"))?;
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => return Err(connect_err(&name)(source)),
            }
            if !progressed && channel.eof() {
                break;
            }
            watch.check()?;
            if progressed {
                idle.reset();
            } else {
                idle.sleep();
            }
        }
        stdout.flush().map_err(local_io("writing the output of"))?;
        watch.again(|| channel.wait_close())?;
        let status = match channel.exit_signal() {
            Ok(sig) if sig.exit_signal.is_some() => {
                ExitStatus::Signal(sig.exit_signal.unwrap_or_default())
            }
            _ => match channel.exit_status() {
                Ok(code) => ExitStatus::Code(code),
                Err(_) => ExitStatus::Unknown,
            },
        };
        timed_out(command, &status, name)?;
        Ok(Ran {
            status,
            stdin_bytes,
            stdout_bytes,
        })
    }
}

impl Inner {
    /// Runs `command` on the connection's shell (one round trip), starting
    /// the shell first if needed. `None`: no shell on this host; use
    /// `exec`.
    fn in_shell(
        &self,
        conn: &mut Conn,
        command: &Command,
        stdin: &[u8],
    ) -> Result<Option<Output>, RemoteError> {
        let session = conn.session.clone();
        nonblocking(&session, || self.in_shell_nonblocking(conn, command, stdin))
    }

    fn in_shell_nonblocking(
        &self,
        conn: &mut Conn,
        command: &Command,
        stdin: &[u8],
    ) -> Result<Option<Output>, RemoteError> {
        if matches!(conn.shell, ShellSlot::NotStarted) {
            conn.shell = self.start_shell(conn)?;
        }
        let ShellSlot::Ready(mut channel) =
            std::mem::replace(&mut conn.shell, ShellSlot::NotStarted)
        else {
            conn.shell = ShellSlot::Unavailable;
            return Ok(None);
        };
        let name = self.target.to_string();
        let timeout_secs = command.timeout.map_or(0, |t| t.as_secs().max(1));
        let deadline = local_deadline(command);
        let nonce = shell::nonce();
        let request = shell::frame(&nonce, &shell::script(command), stdin, timeout_secs);
        let watch = Watch {
            conn,
            host: &name,
            keepalive: self.keepalive,
            started: Instant::now(),
            deadline,
            command,
            cancel: None,
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 32 * 1024];
        let mut sent = 0;
        let (mut out_end, mut err_end) = (None, None);
        let mut idle = Idle::new();
        // A stream that cannot be trusted retires the shell (the next
        // command starts another); the command's fate is unknown.
        let mut broken = false;
        loop {
            let mut progressed = false;
            if sent < request.len() {
                match channel.write(&request[sent..]) {
                    Ok(n) => {
                        sent += n;
                        progressed |= n > 0;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(source) => return Err(connect_err(&name)(source)),
                }
            }
            if out_end.is_none()
                && read_some(&mut channel, &mut buf, &mut stdout).map_err(connect_err(&name))?
            {
                progressed = true;
                match shell::end(&stdout, &nonce, true) {
                    shell::End::Open => {}
                    shell::End::At(at, code) => out_end = Some((at, code)),
                    shell::End::Broken => broken = true,
                }
            }
            if err_end.is_none()
                && read_some(&mut channel.stderr(), &mut buf, &mut stderr)
                    .map_err(connect_err(&name))?
            {
                progressed = true;
                match shell::end(&stderr, &nonce, false) {
                    shell::End::Open => {}
                    shell::End::At(at, _) => err_end = Some(at),
                    shell::End::Broken => broken = true,
                }
            }
            if broken || (out_end.is_some() && err_end.is_some()) {
                break;
            }
            if !progressed && channel.eof() {
                broken = true;
                break;
            }
            watch.check()?;
            if progressed {
                idle.reset();
            } else {
                idle.sleep();
            }
        }
        let status = match (broken, out_end) {
            (false, Some((at, code))) => {
                stdout.truncate(at);
                stderr.truncate(err_end.unwrap_or(stderr.len()));
                conn.shell = ShellSlot::Ready(channel);
                code.map_or(ExitStatus::Unknown, ExitStatus::Code)
            }
            _ => {
                // Dropping the channel closes it; the shell ends when its
                // input does.
                drop(channel);
                ExitStatus::Unknown
            }
        };
        timed_out(command, &status, name)?;
        Ok(Some(Output {
            status,
            stdout,
            stderr,
        }))
    }

    /// Starts the connection's shell and waits for its banner (bounded by
    /// the connect timeout). A shell that ends or says something else
    /// means this host keeps using `exec`.
    fn start_shell(&self, conn: &Conn) -> Result<ShellSlot, RemoteError> {
        let name = self.target.to_string();
        let probe = Command::shell("ektool command shell");
        let watch = Watch {
            conn,
            host: &name,
            keepalive: self.keepalive,
            started: Instant::now(),
            deadline: Instant::now().checked_add(self.options.connect_timeout),
            command: &probe,
            cancel: None,
        };
        let session = &conn.session;
        let mut channel = watch.again(|| session.channel_session())?;
        let line = format!("exec sh -c {}", quote(shell::DRIVER));
        watch.again(|| channel.exec(&line))?;
        // Whatever a login script prints comes first, on either stream:
        // the banner ends each, so everything before it is dropped.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 4096];
        let idle = Idle::new();
        let ready = |b: &[u8]| shell::ends_with_banner(b);
        while !(ready(&out) && ready(&err)) {
            let mut progressed = false;
            if !ready(&out) {
                progressed |=
                    read_some(&mut channel, &mut buf, &mut out).map_err(connect_err(&name))?;
            }
            if !ready(&err) {
                progressed |= read_some(&mut channel.stderr(), &mut buf, &mut err)
                    .map_err(connect_err(&name))?;
            }
            if out.len() + err.len() > shell::MAX_GREETING || (!progressed && channel.eof()) {
                tracing::debug!(host = %name, "no command shell on this host; using exec");
                return Ok(ShellSlot::Unavailable);
            }
            watch.check()?;
            if !progressed {
                idle.sleep();
            }
        }
        Ok(ShellSlot::Ready(channel))
    }
}

#[async_trait]
impl Remote for SshRemote {
    fn host(&self) -> String {
        self.inner.target.to_string()
    }

    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        let inner = self.inner.clone();
        let mut command = command.clone();
        blocking(move || {
            let stdin = command.stdin.take().unwrap_or_default();
            inner.with_session(|c| {
                if stdin.len() <= shell::MAX_INPUT
                    && let Some(out) = inner.in_shell(c, &command, &stdin)?
                {
                    return Ok(out);
                }
                let input = Input::Bytes(stdin, 0);
                let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
                let ran = inner.exec(c, &command, input, &mut stdout, &mut stderr, None)?;
                Ok(Output {
                    status: ran.status,
                    stdout,
                    stderr,
                })
            })
        })
        .await
    }

    async fn run_streaming(
        &self,
        command: &Command,
        streams: Streams,
    ) -> Result<Streamed, RemoteError> {
        let inner = self.inner.clone();
        let command = command.clone();
        blocking(move || {
            let Streams {
                stdin,
                mut stdout,
                cancel,
            } = streams;
            let input = match stdin {
                Some(r) => Input::reader(r).map_err(|source| RemoteError::Io {
                    context: "could not start the input reader".into(),
                    source,
                })?,
                None => match &command.stdin {
                    Some(bytes) => Input::Bytes(bytes.clone(), 0),
                    None => Input::None,
                },
            };
            let mut stderr = Tail::default();
            let ran = inner.with_session(|c| {
                inner.exec(
                    c,
                    &command,
                    input,
                    &mut stdout,
                    &mut stderr,
                    cancel.as_ref(),
                )
            })?;
            Ok(Streamed {
                status: ran.status,
                stdin_bytes: ran.stdin_bytes,
                stdout_bytes: ran.stdout_bytes,
                stderr: stderr.into_inner(),
            })
        })
        .await
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
///
/// The content is flushed to disk (`sync FILE` is an fsync) before the
/// rename, and the directory after it: without that, a power loss soon
/// after can leave an empty `authorized_keys` or secrets file behind the
/// new name. A `sync` that takes no file (busybox, coreutils < 8.24) falls
/// back to syncing everything.
fn upload_script(path: &str, mode: u32) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/".to_owned(), name.to_owned()),
        Some((dir, name)) => (dir.to_owned(), name.to_owned()),
        None => (".".to_owned(), path.to_owned()),
    };
    // mktemp creates the file 0600, so the content is never readable by
    // others before the final chmod, whatever the umask.
    let template = format!("{}/.{name}.ektool.XXXXXX", dir.trim_end_matches('/'));
    format!(
        "set -e; t=$(mktemp {template}); trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; chmod {mode:o} \"$t\"; \
         sync -- \"$t\" 2>/dev/null || sync; mv -f \"$t\" {path}; trap - EXIT; sync -- {dir} 2>/dev/null || sync",
        template = quote(&template),
        path = quote(path),
        dir = quote(&dir),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    #[test]
    fn upload_script_quotes_paths() {
        let s = upload_script("/srv/my app/.env", 0o600);
        assert!(
            s.contains("mktemp '/srv/my app/..env.ektool.XXXXXX'"),
            "{s}"
        );
        assert!(s.contains("chmod 600"), "{s}");
        assert!(s.contains("mv -f \"$t\" '/srv/my app/.env'"), "{s}");
        // Flushed before the rename, the directory after.
        let (sync_file, mv, sync_dir) = (
            s.find("sync -- \"$t\"").unwrap(),
            s.find("mv -f").unwrap(),
            s.find("sync -- '/srv/my app'").unwrap(),
        );
        assert!(sync_file < mv && mv < sync_dir, "{s}");
        assert!(upload_script("/top", 0o600).contains("sync -- /"));
        assert!(upload_script("rel", 0o600).contains("sync -- ."));
    }

    #[test]
    fn host_patterns_follow_openssh() {
        assert!(host_patterns_match("*.example.com", "web1.example.com"));
        assert!(host_patterns_match("WEB?.example.com", "web1.example.com"));
        assert!(!host_patterns_match("*.example.com", "example.org"));
        assert!(host_patterns_match("[127.0.0.1]:*", "[127.0.0.1]:2222"));
        assert!(!host_patterns_match("*,!db.example.com", "db.example.com"));
        assert!(host_patterns_match("*,!db.example.com", "web.example.com"));
        assert!(!host_patterns_match("|1|c2FsdA==|aGFzaA==", "web"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b", "ab c"));
    }

    #[test]
    fn keepalive_limit_is_never_below_two_intervals_of_two_seconds() {
        let k = Keepalive {
            interval: Duration::ZERO,
            max_missed: 0,
        };
        assert_eq!(k.limit(), Duration::from_secs(4));
        assert_eq!(Keepalive::default().limit(), Duration::from_secs(60));
        let huge = Keepalive {
            interval: Duration::MAX,
            max_missed: u32::MAX,
        };
        assert!(huge.limit() > Duration::from_secs(1));
    }

    proptest::proptest! {
        #[test]
        fn target_parsing_never_panics_and_yields_clean_names(s in "\\PC*|.*") {
            if let Ok(t) = SshTarget::parse_with_user(&s, "u") {
                proptest::prop_assert!(!t.host.is_empty() && !t.user.is_empty());
                proptest::prop_assert!(!t.host.chars().any(char::is_control));
                proptest::prop_assert!(check_host_name(&t).is_ok());
                let _ = t.known_hosts_name();
            }
        }

        #[test]
        fn known_hosts_lines_never_panic(lines in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::arbitrary::any::<Vec<u8>>(),
                "(@revoked|@cert-authority|@x|\\|1\\|)?[ \t]*[^ ]{0,30}( [a-z0-9-]{0,20}( [A-Za-z0-9+/=]{0,80})?)?"
                    .prop_map(String::into_bytes),
            ],
            0..8,
        ), host in ".{0,40}", port in proptest::arbitrary::any::<u16>()) {
            let session = Session::new().unwrap();
            let mut file = KnownHostsFile {
                plain: session.known_hosts().unwrap(),
                revoked: Vec::new(),
                cert_authority: Vec::new(),
                problems: Vec::new(),
            };
            for (i, l) in lines.iter().enumerate() {
                let _ = file.add_line(i + 1, l);
            }
            let target = SshTarget { user: "u".into(), host, port };
            if check_host_name(&target).is_ok() {
                let _ = file.plain.check_port(&target.host, target.port, b"blob");
                let _ = file.cert_authority_lines(&target.known_hosts_name());
            }
        }

        #[test]
        fn glob_never_panics(p in ".{0,20}", t in ".{0,40}") {
            let _ = glob(&p, &t);
            let _ = host_patterns_match(&p, &t);
        }
    }
}
