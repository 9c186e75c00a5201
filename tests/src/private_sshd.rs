//! A private OpenSSH server for one test: for a test that must stop a host
//! (`SIGSTOP` to the server and every process it started, as a frozen or
//! partitioned machine looks from outside), watch its system calls
//! (`strace`), or shape the shell commands run in (a `ForceCommand`
//! wrapper), without touching the shared bench hosts.
//!
//! It runs like the bench's hosts (`scripts/testbed`): 127.0.0.1, a free
//! port, the bench's host key and authorised client key, and without this
//! machine's `~/.bashrc` (an empty one is bound over it in a mount
//! namespace of its own, when that is allowed): root's start-up files may
//! run slow tools, and a session killed inside them leaves their locks. It
//! has no private deploy path: give its deploy root a path of its own
//! (e.g. inside [`PrivateSshd::dir`]).

// Test harness: a panic here is a failed test with a line number.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{SshHost, tempdir, var};

/// A running private sshd, stopped (and everything it started killed) on
/// drop.
#[derive(Debug)]
pub struct PrivateSshd {
    /// The host as the bench's own hosts are described (not namespaced).
    pub host: SshHost,
    /// A directory of its own: config, log; free for the test's files.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl PrivateSshd {
    /// Starts one on a free 127.0.0.1 port and waits until it accepts.
    pub fn start() -> Self {
        Self::launch(None, None)
    }

    /// Like [`PrivateSshd::start`], with the server and every session under
    /// `strace -f`, logging the file-sync and rename system calls (what a
    /// test of "flushed before renamed" looks at) to `log`.
    pub fn start_traced(log: &Path) -> Self {
        Self::launch(Some(log), None)
    }

    /// Like [`PrivateSshd::start`], with every SSH command run through
    /// `script` (a `ForceCommand`; the client's command is in
    /// `$SSH_ORIGINAL_COMMAND`).
    pub fn with_force_command(script: &str) -> Self {
        Self::launch(None, Some(script))
    }

    fn launch(trace: Option<&Path>, force_command: Option<&str>) -> Self {
        let keys = PathBuf::from(var("EKTOOL_TESTBED_DIR")).join("ssh");
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        for _ in 0..5 {
            let dir = tempdir();
            let d = dir.path();
            let mut force = String::new();
            if let Some(script) = force_command {
                use std::os::unix::fs::PermissionsExt;
                let wrapper = d.join("force-command");
                std::fs::write(&wrapper, format!("#!/bin/sh\n{script}\n")).unwrap();
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
                force = format!("ForceCommand {}\n", wrapper.display());
            }
            let port = crate::free_port();
            let conf = d.join("sshd.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     StrictModes no\nUsePAM no\nPrintMotd no\nLogLevel VERBOSE\n{force}",
                    hk = keys.join("host_ed25519").display(),
                    pid = d.join("sshd.pid").display(),
                    ak = keys.join("authorized_keys").display(),
                ),
            )
            .unwrap();
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
                q(&d.join("sshd.log"))
            ));
            let home_rc = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".bashrc"));
            let mut command = match home_rc.filter(|rc| rc.is_file() && can_unshare()) {
                Some(rc) => {
                    let empty = d.join("bashrc");
                    std::fs::write(&empty, "").unwrap();
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
            let mut child = command.stdin(Stdio::null()).spawn().expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
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
                    return Self { host, dir, child };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a private sshd");
    }

    /// `user@127.0.0.1:port`.
    pub fn target(&self) -> String {
        self.host.target()
    }

    /// The known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        self.host.known_hosts_line()
    }

    /// Stops (SIGSTOP) the server and every session process it started:
    /// the kernel still accepts and acknowledges, but nothing answers.
    pub fn freeze(&self) {
        signal("STOP", &self.processes());
    }

    /// Resumes what [`PrivateSshd::freeze`] stopped.
    pub fn thaw(&self) {
        signal("CONT", &self.processes());
    }

    fn processes(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(descendants(self.child.id()));
        pids
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        let pids = self.processes();
        signal("KILL", &pids);
        signal("CONT", &pids);
        let _ = self.child.wait();
    }
}

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
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
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
        .stderr(Stdio::null())
        .status();
}

/// Whether this process may make a private mount namespace (root).
fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
