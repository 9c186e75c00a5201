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

/// A bare `origin.git` in `dir` and its clone `work` on branch `main`,
/// committing as `Dev <dev@example.com>`: an app repository for deploy
/// tests. Returns the clone's path.
pub fn origin_and_clone(dir: &Path) -> PathBuf {
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
    );
    git(dir, &["clone", "--quiet", "origin.git", "work"]);
    let work = dir.join("work");
    git(&work, &["checkout", "--quiet", "-b", "main"]);
    git(&work, &["config", "user.name", "Dev"]);
    git(&work, &["config", "user.email", "dev@example.com"]);
    work
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

pub mod elb;
pub mod jump;
pub mod private_sshd;

pub use elb::{MotoTargetGroup, moto_instance_group, moto_target_group};
pub use private_sshd::PrivateSshd;

/// A port nobody listens on right now (another process may take it before
/// it is used: callers retry).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// A moto server of a test's own (the bench's `moto_server`, on a free
/// 127.0.0.1 port), for a test that compares the *whole* EC2 state before
/// and after: the shared moto changes under it while other tests run.
/// Killed when dropped.
#[derive(Debug)]
pub struct PrivateMoto {
    /// Its endpoint URL.
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateMoto {
    /// Starts one and waits until it answers (moto preloads its AMIs: a
    /// few seconds).
    pub fn start() -> Self {
        let server = var("EKTOOL_TEST_MOTO_SERVER");
        for _ in 0..5 {
            let dir = tempdir();
            let port = free_port();
            let mut child = Command::new(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start moto_server");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        url: format!("http://127.0.0.1:{port}"),
                        child,
                        _dir: dir,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a private moto");
    }

    /// moto's whole state (`/moto-api/data.json`: every backend of every
    /// region it has seen): equal before and after means nothing changed.
    pub fn state(&self) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/moto-api/data.json", self.url)])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "moto's data.json could not be read");
        serde_json::from_slice(&out.stdout).expect("moto's data.json is JSON")
    }
}

/// Whether a `harness = false` bench runs at its full size: `cargo bench`
/// passes `--bench`; `cargo test --all-targets` (the suite) does not, and
/// then each bench runs a smoke-size version of itself, so it cannot rot
/// without costing the suite minutes.
pub fn full_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Where two JSON values first differ (a path like `ec2.Snapshot[3].state`
/// and both sides, shortened), or `None` when they are equal.
pub fn json_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn short(v: &Value) -> String {
        let s = v.to_string();
        match s.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        }
    }
    // moto instantiates a service's backend lazily, so a read can add an
    // empty one: an empty shape is the same state as no entry.
    fn empty(v: &Value) -> bool {
        match v {
            Value::Array(x) => x.is_empty(),
            Value::Object(x) => x.values().all(empty),
            _ => false,
        }
    }
    fn walk(a: &Value, b: &Value, path: &str) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for k in x.keys().chain(y.keys()) {
                    let p = format!("{path}.{k}");
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => {
                            if let Some(d) = walk(u, v, &p) {
                                return Some(d);
                            }
                        }
                        (Some(u), None) | (None, Some(u)) if empty(u) => {}
                        (u, v) => {
                            return Some(format!(
                                "{p}: {} vs {}",
                                u.map_or("absent".into(), short),
                                v.map_or("absent".into(), short)
                            ));
                        }
                    }
                }
                None
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| walk(u, v, &format!("{path}[{i}]"))),
            (Value::Array(x), Value::Array(y)) => {
                let extra: Vec<String> = y.iter().filter(|v| !x.contains(v)).map(short).collect();
                let gone: Vec<String> = x.iter().filter(|v| !y.contains(v)).map(short).collect();
                Some(format!(
                    "{path}: {} items vs {}; new: {extra:?}; gone: {gone:?}",
                    x.len(),
                    y.len()
                ))
            }
            _ if a == b => None,
            _ => Some(format!("{path}: {} vs {}", short(a), short(b))),
        }
    }
    walk(a, b, "")
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::json_difference;
    use serde_json::json;

    #[test]
    fn json_difference_finds_every_kind_of_change_and_ignores_empty_backends() {
        let before = json!({"ec2": {"Snapshot": [{"id": "snap-1", "tags": {"a": "1"}}]}});
        assert_eq!(json_difference(&before, &before), None);
        let tagged = json!({"ec2": {"Snapshot": [{"id": "snap-1", "tags": {"a": "2"}}]}});
        assert!(
            json_difference(&before, &tagged)
                .unwrap()
                .contains(".ec2.Snapshot[0].tags.a")
        );
        let more =
            json!({"ec2": {"Snapshot": [{"id": "snap-1", "tags": {"a": "1"}}, {"id": "snap-2"}]}});
        assert!(json_difference(&before, &more).unwrap().contains("snap-2"));
        let gone = json!({"ec2": {"Snapshot": []}});
        assert!(json_difference(&before, &gone).unwrap().contains("gone"));
        let lazy =
            json!({"ec2": before["ec2"].clone(), "elb": {"LoadBalancer": [], "Listener": {}}});
        assert_eq!(json_difference(&before, &lazy), None);
        let real = json!({"ec2": before["ec2"].clone(), "elb": {"LoadBalancer": [{"name": "x"}]}});
        assert!(json_difference(&before, &real).unwrap().starts_with(".elb"));
    }
}
