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

pub use private_sshd::PrivateSshd;

/// A port nobody listens on right now (another process may take it before
/// it is used: callers retry).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}
