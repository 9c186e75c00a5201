//! The test bench harness.
//!
//! `scripts/testbed up` starts moto and sshd hosts on 127.0.0.1 and writes
//! their coordinates to `.testbed/env`; `scripts/test` sources it before
//! `cargo test`. This crate reads those variables, so every integration
//! test of every crate finds the same services. A test that needs the
//! bench and does not find it **fails** (it never silently passes).
//!
//! Tests share one moto and one set of hosts per run, so each test works in
//! its own namespace: [`unique`] names, unique tags, its own directories.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod fault;
pub use fault::{Counts, Fault, FaultProxy};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the test bench is not running.\n\
             Run the whole suite with `scripts/test`, or start the bench with\n\
             `scripts/testbed up && source .testbed/env` and run cargo test again."
        )
    })
}

/// A name no other test (or run) uses: `prefix-<12 hex>`.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// The moto server's endpoint URL.
pub fn moto_url() -> String {
    var("EKTOOL_TEST_MOTO_URL")
}

/// One sshd host of the bench.
#[derive(Debug, Clone)]
pub struct SshHost {
    /// 1-based host number.
    pub n: usize,
    /// Always 127.0.0.1.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Client private key.
    pub client_key: PathBuf,
    /// The host's public key file.
    pub host_public_key: PathBuf,
    /// The host's private directory, seen by the host at [`SshHost::MOUNT`]
    /// when `namespaced`.
    pub root: PathBuf,
    /// Whether the host runs in its own mount namespace.
    pub namespaced: bool,
}

impl SshHost {
    /// Where each namespaced host sees its own [`SshHost::root`].
    pub const MOUNT: &'static str = "/srv/ektool-host";

    /// `user@127.0.0.1:port`.
    pub fn target(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// The known_hosts line for this host.
    pub fn known_hosts_line(&self) -> String {
        let key = std::fs::read_to_string(&self.host_public_key).expect("read host public key");
        let mut parts = key.split_whitespace();
        let (kind, blob) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        format!("[{}]:{} {kind} {blob}", self.host, self.port)
    }

    /// Writes a known_hosts file that trusts this host into `dir`.
    pub fn write_known_hosts(&self, dir: &Path) -> PathBuf {
        let path = dir.join("known_hosts");
        std::fs::write(&path, format!("{}\n", self.known_hosts_line())).expect("write known_hosts");
        path
    }

    /// The `SHA256:…` fingerprint of the host key, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&self.host_public_key)
            .output()
            .expect("run ssh-keygen");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(1)
            .expect("fingerprint in ssh-keygen output")
            .to_owned()
    }

    /// A path inside this host's private directory, as this machine sees it.
    pub fn local_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
}

/// Host `n` (1-based) of the bench.
pub fn ssh_host(n: usize) -> SshHost {
    SshHost {
        n,
        host: "127.0.0.1".to_owned(),
        port: var(&format!("EKTOOL_TEST_SSH_{n}_PORT"))
            .parse()
            .expect("port number"),
        user: var("EKTOOL_TEST_SSH_USER"),
        client_key: PathBuf::from(var("EKTOOL_TEST_SSH_KEY")),
        host_public_key: PathBuf::from(var("EKTOOL_TEST_SSH_HOST_KEY")),
        root: PathBuf::from(var(&format!("EKTOOL_TEST_SSH_{n}_ROOT"))),
        namespaced: std::env::var(format!("EKTOOL_TEST_SSH_{n}_NAMESPACED")).as_deref()
            == Ok("yes"),
    }
}

/// Every sshd host of the bench.
pub fn ssh_hosts() -> Vec<SshHost> {
    let count: usize = var("EKTOOL_TEST_SSH_HOSTS").parse().expect("host count");
    (1..=count).map(ssh_host).collect()
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Runs git in `dir` as a fixed author, panicking with its stderr on
/// failure; returns its standard output, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `salt-call` from the project's venv (`scripts/testbed install` pins it).
pub fn salt_call() -> String {
    var("EKTOOL_TEST_SALT_CALL")
}

/// The port of the bench's PostgreSQL, or `None` (with the reason printed)
/// when `scripts/testbed up` could not start it.
pub fn pg_port() -> Option<u16> {
    match std::env::var("EKTOOL_TEST_PG_PORT") {
        Ok(p) => p.parse().ok(),
        Err(_) => {
            eprintln!(
                "SKIPPED: EKTOOL_TEST_PG_PORT is not set: the bench's PostgreSQL did not start \
                 (see scripts/testbed up); database tests cannot run here"
            );
            None
        }
    }
}

pub mod private_sshd;

/// The pids of `pid`'s descendants (children, their children, ...), read
/// from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((child, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            if !found.contains(child) {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .args(pids.iter().map(u32::to_string))
        .status();
}

/// A port nobody listens on right now (another process may take it before
/// it is used: callers retry).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// Whether this process may make a private mount namespace (root).
fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An sshd of a test's own, with the bench's host and client keys, for
/// tests that must stop or break a host: the shared bench hosts are never
/// stopped. Killed (with everything it started) when dropped.
#[derive(Debug)]
pub struct PrivateSshd {
    /// The host as the bench's own hosts are described (not namespaced).
    pub host: SshHost,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateSshd {
    /// Starts one on a free 127.0.0.1 port and waits until it accepts.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Like [`PrivateSshd::start`], with the server and every session under
    /// `strace -f`, logging the file-sync and rename system calls (what a
    /// test of "flushed before renamed" looks at) to `log`.
    pub fn start_traced(log: &Path) -> Self {
        Self::launch(Some(log))
    }

    fn launch(trace: Option<&Path>) -> Self {
        let bench = PathBuf::from(var("EKTOOL_TESTBED_DIR"));
        let keys = bench.join("ssh");
        for _ in 0..5 {
            let dir = tempdir();
            let port = free_port();
            let conf = dir.path().join("sshd.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     StrictModes no\nUsePAM no\nPrintMotd no\nLogLevel VERBOSE\n",
                    hk = keys.join("host_ed25519").display(),
                    pid = dir.path().join("sshd.pid").display(),
                    ak = keys.join("authorized_keys").display(),
                ),
            )
            .expect("write sshd config");
            let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
            let mut line = String::from("exec ");
            if let Some(log) = trace {
                line.push_str(&format!(
                    "strace -f -qq --seccomp-bpf -e trace=fsync,fdatasync,syncfs,sync,rename,renameat,renameat2,openat -o {} ",
                    q(log)
                ));
            }
            line.push_str(&format!(
                "/usr/sbin/sshd -D -f {} -E {}",
                q(&conf),
                q(&dir.path().join("sshd.log"))
            ));
            // Like the bench hosts: a fresh server has none of this
            // machine user's shell start-up (root's ~/.bashrc may run slow
            // tools, and a session killed inside them leaves their locks).
            let home_rc = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".bashrc"));
            let mut command = match home_rc.filter(|rc| rc.is_file() && can_unshare()) {
                Some(rc) => {
                    let empty = dir.path().join("bashrc");
                    std::fs::write(&empty, "").expect("write an empty bashrc");
                    let mut c = Command::new("unshare");
                    c.args(["--mount", "--propagation", "private", "sh", "-c"])
                        .arg(format!("mount --bind {} {} && {line}", q(&empty), q(&rc)));
                    c
                }
                None => {
                    let mut c = Command::new("sh");
                    c.arg("-c").arg(line);
                    c
                }
            };
            let mut child = command
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("start sshd");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let host = SshHost {
                        n: 0,
                        host: "127.0.0.1".to_owned(),
                        port,
                        user: var("EKTOOL_TEST_SSH_USER"),
                        client_key: PathBuf::from(var("EKTOOL_TEST_SSH_KEY")),
                        host_public_key: PathBuf::from(var("EKTOOL_TEST_SSH_HOST_KEY")),
                        root: PathBuf::from("/"),
                        namespaced: false,
                    };
                    return Self {
                        host,
                        child,
                        _dir: dir,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // port taken in between: try another
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a private sshd");
    }

    /// Stops (SIGSTOP) the server and every session process it started:
    /// the kernel still accepts and acknowledges, but nothing answers.
    pub fn freeze(&self) {
        let mut pids = vec![self.child.id()];
        pids.extend(descendants(self.child.id()));
        signal("STOP", &pids);
    }

    /// Resumes what [`PrivateSshd::freeze`] stopped.
    pub fn thaw(&self) {
        let mut pids = vec![self.child.id()];
        pids.extend(descendants(self.child.id()));
        signal("CONT", &pids);
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        let mut pids = descendants(self.child.id());
        pids.push(self.child.id());
        signal("KILL", &pids);
        signal("CONT", &pids);
        let _ = self.child.wait();
    }
}
