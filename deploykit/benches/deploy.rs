//! Deploy and rollback timings on loopback, against the test bench's sshd
//! hosts (`scripts/testbed up && source .testbed/env`).
//!
//! Ten deploy targets are ten deploy roots spread over the bench's hosts,
//! each reached through its own SSH connection, so they work in parallel
//! like ten machines would (they share this machine's CPU, which makes the
//! 10-host figure pessimistic). Prints:
//!
//! - a warm deploy (mirror present, new commit: fetch, checkout, build
//!   hook, switch, log, cleanup) to 1 host and to 10 hosts, and the ratio
//!   (target ≤ 1.5×);
//! - the spread between the first and the last host's switch (≤ 100 ms);
//! - a rollback of 10 hosts (≤ 1 s).
//!
//! Run with `cargo bench -p deploykit --bench deploy`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploykit::{Deployer, Environment, Hook, Host, Release};
use ec2kit::{Remote, SshOptions, SshRemote, SshTarget};
use ektool_tests::{SshHost, ssh_hosts, tempdir, unique};

const RUNS: usize = 5;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn remote(host: &SshHost, dir: &Path) -> Arc<dyn Remote> {
    let kh = host.write_known_hosts(&dir.join(format!("kh{}", host.n)).tap_mkdir());
    Arc::new(SshRemote::new(
        SshTarget::parse_with_user(&host.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![host.client_key.clone()],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(10),
        },
    ))
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// A remote that adds a network round trip to every call.
struct Delayed(ec2kit::LocalRemote);

const RTT: Duration = Duration::from_millis(50);

#[async_trait::async_trait]
impl Remote for Delayed {
    fn host(&self) -> String {
        self.0.host()
    }
    async fn run(&self, c: &ec2kit::Command) -> Result<ec2kit::Output, ec2kit::RemoteError> {
        tokio::time::sleep(RTT).await;
        self.0.run(c).await
    }
    async fn upload(&self, p: &str, b: &[u8], m: u32) -> Result<(), ec2kit::RemoteError> {
        tokio::time::sleep(RTT).await;
        self.0.upload(p, b, m).await
    }
    async fn read_file(&self, p: &str) -> Result<Vec<u8>, ec2kit::RemoteError> {
        tokio::time::sleep(RTT).await;
        self.0.read_file(p).await
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempdir();
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
    );
    git(dir.path(), &["clone", "--quiet", "origin.git", "work"]);
    git(&work, &["checkout", "--quiet", "-b", "main"]);
    let commit = |n: usize| {
        std::fs::write(work.join("app.txt"), format!("{n}\n")).unwrap();
        git(&work, &["add", "app.txt"]);
        git(&work, &["commit", "--quiet", "-m", &n.to_string()]);
        git(&work, &["push", "--quiet", "origin", "main"]);
        git(&work, &["rev-parse", "HEAD"])
    };

    let bench = ssh_hosts();
    let name = unique("bench");
    let mut env = Environment::new(Vec::new(), "/unused").unwrap();
    env.repository = Some(dir.path().join("origin.git").display().to_string());
    env.hooks.build = vec![Hook::new("echo built > built.txt")];
    env.keep = 3;

    // What one command costs on these hosts (sshd, the login shell, back).
    let probe = remote(&bench[0], dir.path());
    let cmd = ec2kit::Command::argv(["true"]);
    rt.block_on(probe.run(&cmd)).unwrap();
    let per_command: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            rt.block_on(probe.run(&cmd)).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    println!(
        "one SSH command on a bench host: median {:.0} ms",
        median(per_command)
    );

    // Ten targets: ten roots round-robin over the bench hosts, one SSH
    // connection each.
    let ssh_targets: Vec<(Host, std::path::PathBuf)> = (0..10)
        .map(|i| {
            let h = &bench[i % bench.len()];
            let rel = format!("{name}/t{i}");
            let host = Host::new(remote(h, dir.path()), format!("{}/{rel}", SshHost::MOUNT))
                .named(format!("t{i}"));
            (host, h.local_path(&rel))
        })
        .collect();
    // The same through the local shell: the orchestration without SSH.
    let local_root = dir.path().join("local");
    let local_targets: Vec<(Host, std::path::PathBuf)> = (0..10)
        .map(|i| {
            let root = local_root.join(format!("t{i}"));
            let host = Host::new(
                Arc::new(ec2kit::LocalRemote::new()),
                root.display().to_string(),
            )
            .named(format!("l{i}"));
            (host, root)
        })
        .collect();

    // The same with a 50 ms round trip added to every command: hosts a
    // network away, whose own work is not what is measured.
    let delayed_root = dir.path().join("delayed");
    let delayed_targets: Vec<(Host, std::path::PathBuf)> = (0..10)
        .map(|i| {
            let root = delayed_root.join(format!("t{i}"));
            let remote: Arc<dyn Remote> = Arc::new(Delayed(ec2kit::LocalRemote::new()));
            let host = Host::new(remote, root.display().to_string()).named(format!("d{i}"));
            (host, root)
        })
        .collect();

    let mut counter = 0;
    let mut next = || {
        counter += 1;
        Release::commit(commit(counter))
    };
    for (label, targets) in [
        ("ssh (bench sshd hosts)", &ssh_targets),
        ("local shell (LocalRemote)", &local_targets),
        (
            "local shell + 50 ms round trip per command",
            &delayed_targets,
        ),
    ] {
        let deployer = |n: usize| {
            let hosts = targets[..n].iter().map(|(h, _)| h.clone()).collect();
            Deployer::new("bench", env.clone(), hosts)
        };
        let one = deployer(1);
        let ten = deployer(10);
        // Warm up: mirrors cloned, SSH sessions open.
        rt.block_on(ten.deploy(&next())).unwrap();

        let mut t1 = Vec::new();
        let mut t10 = Vec::new();
        let mut spreads = Vec::new();
        let mut rollbacks = Vec::new();
        let mut rb_spreads = Vec::new();
        for _ in 0..RUNS {
            let r = next();
            let t = Instant::now();
            rt.block_on(one.deploy(&r)).unwrap();
            t1.push(t.elapsed().as_secs_f64());

            let r = next();
            let t = Instant::now();
            let report = rt.block_on(ten.deploy(&r)).unwrap();
            t10.push(t.elapsed().as_secs_f64());
            spreads.push(report.switch_spread_ms);

            let t = Instant::now();
            let rb = rt.block_on(ten.rollback(None)).unwrap();
            rollbacks.push(t.elapsed().as_secs_f64());
            rb_spreads.push(rb.switch_spread_ms);
            assert_eq!(rb.hosts.len(), 10);
        }
        let (m1, m10) = (median(t1), median(t10));
        println!("\n{label}, warm deploy of a new commit, median of {RUNS} runs:");
        println!("  1 host      {:>7.0} ms", m1 * 1000.0);
        println!(
            "  10 hosts    {:>7.0} ms   ({:.2}x of 1 host; target <= 1.5x)",
            m10 * 1000.0,
            m10 / m1
        );
        println!(
            "  switch spread, 10 hosts: median {:.1} ms, max {:.1} ms (target <= 100 ms)",
            median(spreads.clone()),
            spreads.iter().cloned().fold(0.0, f64::max)
        );
        println!(
            "  rollback, 10 hosts: median {:.0} ms, max {:.0} ms, spread {:.1} ms (target <= 1000 ms)",
            median(rollbacks.clone()) * 1000.0,
            rollbacks.iter().cloned().fold(0.0, f64::max) * 1000.0,
            median(rb_spreads)
        );
    }
    let targets = ssh_targets;
    for (_, local) in &targets {
        let _ = std::fs::remove_dir_all(local);
    }
    if let Some(parent) = targets[0].1.parent() {
        let _ = std::fs::remove_dir_all(parent);
    }
}
