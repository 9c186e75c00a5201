//! A private OpenSSH server for one test: for a test that must stop a host
//! (`SIGSTOP` to the server and every process it started, as a frozen or
//! partitioned machine looks from outside) or shape the shell commands run
//! in (a `ForceCommand` wrapper), without touching the shared bench hosts.
//!
//! It runs like the bench's hosts (`scripts/testbed`): 127.0.0.1, a free
//! port, the bench's client key authorised, and without this machine's
//! `~/.bashrc` (an empty one is bound over it in a mount namespace of its
//! own, when running as root). It has no private deploy path: give its
//! deploy root a path of its own (e.g. inside [`PrivateSshd::dir`]).

// Test harness: a panic here is a failed test with a line number.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private sshd, stopped (and everything it started killed) on
/// drop.
pub struct PrivateSshd {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The login user (the bench's).
    pub user: String,
    /// A directory of its own: config, keys, log; free for the test's files.
    pub dir: tempfile::TempDir,
}

impl PrivateSshd {
    /// Starts a server. `force_command`: a script every SSH command goes
    /// through (it finds the client's command in `$SSH_ORIGINAL_COMMAND`).
    pub fn start(force_command: Option<&str>) -> Self {
        let dir = crate::tempdir();
        let d = dir.path();
        let key = d.join("host_ed25519");
        let status = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "ektool-private-sshd",
                "-f",
            ])
            .arg(&key)
            .stdin(Stdio::null())
            .status()
            .expect("run ssh-keygen");
        assert!(status.success(), "ssh-keygen failed");
        let client_pub = std::fs::read_to_string(format!(
            "{}.pub",
            std::env::var("EKTOOL_TEST_SSH_KEY").expect("EKTOOL_TEST_SSH_KEY: the bench is not up")
        ))
        .expect("read the bench's client public key");
        std::fs::write(d.join("authorized_keys"), client_pub).unwrap();
        let mut force = String::new();
        if let Some(script) = force_command {
            let wrapper = d.join("force-command");
            std::fs::write(&wrapper, format!("#!/bin/sh\n{script}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
            force = format!("ForceCommand {}\n", wrapper.display());
        }
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = d.join("sshd.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\n\
                     AuthorizedKeysFile {keys}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n\
                     UsePAM no\nPrintMotd no\n{force}",
                    key = key.display(),
                    pid = d.join("sshd.pid").display(),
                    keys = d.join("authorized_keys").display(),
                ),
            )
            .unwrap();
            let sshd = format!(
                "exec /usr/sbin/sshd -D -f '{}' -E '{}'",
                conf.display(),
                d.join("sshd.log").display()
            );
            let home_rc = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".bashrc"));
            let mut cmd = match home_rc.filter(|rc| rc.exists() && is_root()) {
                Some(rc) => {
                    std::fs::write(d.join("empty_bashrc"), "").unwrap();
                    let mut c = Command::new("unshare");
                    c.args(["--mount", "--propagation", "private", "sh", "-c"])
                        .arg(format!(
                            "mount --bind '{}' '{}' && {sshd}",
                            d.join("empty_bashrc").display(),
                            rc.display()
                        ));
                    c
                }
                None => {
                    let mut c = Command::new("sh");
                    c.arg("-c").arg(&sshd);
                    c
                }
            };
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        port,
                        user: std::env::var("EKTOOL_TEST_SSH_USER")
                            .expect("EKTOOL_TEST_SSH_USER: the bench is not up"),
                        dir,
                    };
                }
                assert!(Instant::now() < deadline, "sshd did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd could not bind a port")
    }

    /// `user@127.0.0.1:port`.
    pub fn target(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.port)
    }

    /// The known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        let key = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap();
        let mut parts = key.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}",
            self.port,
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        )
    }

    /// Freezes the server and everything it started (sessions, shells,
    /// their commands): connections stay open and nothing answers.
    pub fn stop(&self) {
        self.signal("STOP");
    }

    /// Lets it run again.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pids = descendants(self.child.id());
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status()
            .expect("run kill");
        // A process that ended meanwhile is fine; the server itself is not.
        assert!(
            status.success() || Path::new(&format!("/proc/{}", self.child.id())).exists(),
            "kill -{sig} failed"
        );
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        let pids = descendants(self.child.id());
        for sig in ["CONT", "KILL"] {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .args(pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// `pid` and every process descended from it (from `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|pp| pp.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}
