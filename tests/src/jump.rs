//! A host in a private subnet and the bastion in front of it, for the
//! `ProxyJump` tests.
//!
//! [`HiddenSshd`] runs an OpenSSH server in a **network namespace of its
//! own** (`unshare --net`): it listens on that namespace's loopback, which
//! nothing in this machine's namespace can reach — as a host in a private
//! subnet looks from outside.
//!
//! [`Bastion`] is a real OpenSSH server in front of it: a listener on
//! 127.0.0.1 here hands each connection to a fresh `sshd -i` (inetd mode)
//! started *inside the hidden host's namespace* (`nsenter --net`), so the
//! bastion is reachable from here and reaches the hidden host, and nothing
//! else does. The bastion has a host key of its own (so a test can leave it
//! out of known_hosts while trusting the hidden host's), counts the
//! connections it accepted, and can be stopped, or its sessions killed.

// Test harness: a panic here is a failed test with a line number.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{SshHost, tempdir, var};

fn keys_dir() -> PathBuf {
    PathBuf::from(var("EKTOOL_TESTBED_DIR")).join("ssh")
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn sshd_config(dir: &Path, host_key: &Path, extra: &str) -> PathBuf {
    let conf = dir.join("sshd.conf");
    std::fs::write(
        &conf,
        format!(
            "HostKey {hk}\nAuthorizedKeysFile {ak}\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPrintMotd no\n\
             LogLevel VERBOSE\n{extra}",
            hk = host_key.display(),
            ak = keys_dir().join("authorized_keys").display(),
        ),
    )
    .unwrap();
    conf
}

/// An sshd in a network namespace of its own, on its loopback; stopped
/// on drop.
#[derive(Debug)]
pub struct HiddenSshd {
    /// The host as the bastion reaches it: 127.0.0.1 (its namespace's) and
    /// a port that is free in this machine's namespace (so a direct
    /// connection from here is refused, not answered by something else).
    pub host: SshHost,
    /// The same server on a second port: a second host behind the bastion.
    pub second: SshHost,
    /// Its directory: config, log.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl HiddenSshd {
    /// Starts one in a network namespace of its own and waits until it
    /// listens.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts another in `other`'s network namespace (so the same bastion
    /// reaches both), with a deploy root of its own.
    pub fn beside(other: &Self) -> Self {
        Self::launch(Some(other.netns()))
    }

    fn launch(netns: Option<PathBuf>) -> Self {
        let dir = tempdir();
        let d = dir.path();
        let (port, second) = (crate::free_port(), crate::free_port());
        let conf = sshd_config(
            d,
            &keys_dir().join("host_ed25519"),
            &format!(
                "Port {port}\nPort {second}\nListenAddress 127.0.0.1\nPidFile {}\n",
                d.join("sshd.pid").display()
            ),
        );
        let log = d.join("sshd.log");
        // A fresh network namespace has its loopback down. Root's
        // ~/.bashrc is hidden as for the bench's hosts (slow start-up).
        let mut rc = String::new();
        if let Some(home_rc) = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".bashrc"))
            .filter(|p| p.is_file())
        {
            let empty = d.join("bashrc");
            std::fs::write(&empty, "").unwrap();
            rc = format!("mount --bind {} {} && ", q(&empty), q(&home_rc));
        }
        // Like the bench's hosts, it sees a directory of its own at
        // `SshHost::MOUNT`, so hosts can share a deploy path.
        let root = d.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let _ = std::fs::create_dir_all(SshHost::MOUNT);
        let script = format!(
            "mount --bind {} {} && {rc}exec /usr/sbin/sshd -D -f {} -E {}",
            q(&root),
            q(Path::new(SshHost::MOUNT)),
            q(&conf),
            q(&log)
        );
        let mut command = match &netns {
            None => {
                let mut c = Command::new("unshare");
                c.args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("ip link set lo up && {script}"));
                c
            }
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .args(["--", "unshare", "--mount", "--propagation", "private"])
                    .args(["sh", "-c", &script]);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .expect("start the hidden sshd (needs root: unshare --net)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .is_ok_and(|l| l.matches("Server listening").count() >= 2)
        {
            assert!(
                Instant::now() < deadline,
                "the hidden sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let host = SshHost {
            n: 0,
            host: "127.0.0.1".to_owned(),
            port,
            user: var("EKTOOL_TEST_SSH_USER"),
            client_key: PathBuf::from(var("EKTOOL_TEST_SSH_KEY")),
            host_public_key: PathBuf::from(var("EKTOOL_TEST_SSH_HOST_KEY")),
            root,
            namespaced: true,
        };
        let second = SshHost {
            port: second,
            ..host.clone()
        };
        Self {
            host,
            second,
            dir,
            child,
        }
    }

    /// The path of its network namespace, for `nsenter --net`.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many connections it saw (`Connection from` lines of its log).
    pub fn connections(&self) -> usize {
        self.log().matches("Connection from").count()
    }
}

impl Drop for HiddenSshd {
    fn drop(&mut self) {
        let mut pids = vec![self.child.id()];
        pids.extend(crate::private_sshd::descendants(self.child.id()));
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// The bastion in front of a [`HiddenSshd`]: `sshd -i` per connection in
/// the hidden host's network namespace, behind a listener on 127.0.0.1.
#[derive(Debug)]
pub struct Bastion {
    /// The bastion as a host (its own host key: `host.host_public_key`).
    pub host: SshHost,
    /// Its directory: config, host key, log.
    pub dir: tempfile::TempDir,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    sessions: Arc<Mutex<Vec<Child>>>,
}

impl Bastion {
    /// Starts one in front of `hidden`.
    pub fn start(hidden: &HiddenSshd) -> Self {
        let dir = tempdir();
        let d = dir.path().to_owned();
        let key = d.join("host_ed25519");
        let made = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "ektool-bastion",
                "-f",
            ])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success(), "ssh-keygen");
        let conf = sshd_config(&d, &key, "AllowTcpForwarding yes\n");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let netns = hidden.netns();
        {
            let (accepted, stop, sessions) = (accepted.clone(), stop.clone(), sessions.clone());
            let log = d.join("sshd.log");
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let input = OwnedFd::from(conn.try_clone().unwrap());
                    let output = OwnedFd::from(conn);
                    let child = Command::new("nsenter")
                        .arg(format!("--net={}", netns.display()))
                        .args(["--", "/usr/sbin/sshd", "-i", "-f"])
                        .arg(&conf)
                        .arg("-E")
                        .arg(&log)
                        .stdin(Stdio::from(input))
                        .stdout(Stdio::from(output))
                        .spawn();
                    if let Ok(c) = child {
                        sessions.lock().unwrap().push(c);
                    }
                }
            });
        }
        let host = SshHost {
            n: 0,
            host: "127.0.0.1".to_owned(),
            port,
            user: var("EKTOOL_TEST_SSH_USER"),
            client_key: PathBuf::from(var("EKTOOL_TEST_SSH_KEY")),
            host_public_key: d.join("host_ed25519.pub"),
            root: PathBuf::from("/"),
            namespaced: false,
        };
        Self {
            host,
            dir,
            accepted,
            stop,
            sessions,
        }
    }

    /// How many TCP connections it accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Its log (every session's).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many logins it accepted (`Accepted publickey` lines).
    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    /// Kills every session it is serving (a bastion dropping its
    /// connections); it keeps accepting new ones.
    pub fn kill_sessions(&self) {
        for mut c in self.sessions.lock().unwrap().drain(..) {
            let mut pids = vec![c.id()];
            pids.extend(crate::private_sshd::descendants(c.id()));
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .args(pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.host.port));
        self.kill_sessions();
    }
}
