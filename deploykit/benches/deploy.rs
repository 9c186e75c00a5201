//! Deploy and rollback timings against the test bench's sshd hosts
//! (`scripts/testbed up && source .testbed/env`).
//!
//! Ten deploy targets are ten deploy roots spread over the bench's hosts,
//! each reached through its own SSH connection, so they work in parallel
//! like ten machines would. Scenarios (`EKTOOL_DEPLOY_BENCH=a,b` picks):
//!
//! - `loopback`: straight to sshd, a trivial build hook. The ten "hosts"
//!   share this machine's cores, so the 10-host time is bound by the CPU
//!   all ten hosts' git and shells need (printed as a floor);
//! - `wan`: through a proxy that adds a 50 ms round trip (real SSH over a
//!   slower link, like a deployer reaching EC2), trivial build hook;
//! - `wan-build`: the same with a build hook that takes 1 s on the host
//!   without using this machine's CPU (`sleep 1`): what a deploy with a
//!   real build on ten machines with their own CPUs looks like.
//!
//! Each prints a warm deploy (mirror present, new commit: fetch, checkout,
//! build hook, switch, log, cleanup) to 1 host and to 10 hosts and the
//! ratio (target ≤ 1.5×), the spread between the first and the last
//! host's switch (≤ 100 ms) and a rollback of 10 hosts (≤ 1 s on
//! loopback).
//!
//! Run with `cargo bench -p deploykit --bench deploy`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploykit::{Deployer, Environment, Hook, Host, Release};
use ec2kit::{Remote, SshOptions, SshRemote, SshTarget};
use ektool_tests::{SshHost, git, ssh_hosts, tempdir, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNS: usize = 5;

/// The round trip the `wan` scenarios add.
const RTT: Duration = Duration::from_millis(50);

/// Prints each command with its start and end (ms since the first), for
/// `EKTOOL_DEPLOY_BENCH_TRACE=1`.
struct Traced(Arc<dyn Remote>, Instant);

#[async_trait::async_trait]
impl Remote for Traced {
    fn host(&self) -> String {
        self.0.host()
    }
    async fn run(&self, command: &ec2kit::Command) -> Result<ec2kit::Output, ec2kit::RemoteError> {
        let t = self.1.elapsed().as_secs_f64() * 1000.0;
        let r = self.0.run(command).await;
        let e = self.1.elapsed().as_secs_f64() * 1000.0;
        let c = command.to_string();
        if std::env::var("EKTOOL_DEPLOY_BENCH_TRACE").as_deref() == Ok("full") {
            eprintln!("trace {t:8.1} {e:8.1} {:6.1}\n{c}\n", e - t);
        } else {
            eprintln!(
                "trace {t:8.1} {e:8.1} {:6.1}  {}",
                e - t,
                &c[..c.len().min(150)].replace('\n', " ")
            );
        }
        r
    }
    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), ec2kit::RemoteError> {
        let t = self.1.elapsed().as_secs_f64() * 1000.0;
        let r = self.0.upload(path, bytes, mode).await;
        eprintln!("trace {t:8.1} upload {path}");
        r
    }
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, ec2kit::RemoteError> {
        self.0.read_file(path).await
    }
}

fn remote(host: &SshHost, dir: &Path) -> Arc<dyn Remote> {
    let r = remote_plain(host, dir);
    if host.n == 1 && std::env::var_os("EKTOOL_DEPLOY_BENCH_TRACE").is_some() {
        return Arc::new(Traced(r, Instant::now()));
    }
    r
}

fn remote_plain(host: &SshHost, dir: &Path) -> Arc<dyn Remote> {
    let kh = dir.join(format!("kh{}-{}", host.n, host.port));
    std::fs::create_dir_all(&kh).unwrap();
    let kh = host.write_known_hosts(&kh);
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

/// A TCP proxy to `to` on a fresh loopback port that delays every byte by
/// half of `rtt` in each direction (in order, without slowing the stream
/// down otherwise). Runs until the runtime ends.
fn delay_proxy(rt: &tokio::runtime::Runtime, to: u16, rtt: Duration) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(delayed_pipe(cr, sw, rtt / 2));
            tokio::spawn(delayed_pipe(sr, cw, rtt / 2));
        }
    });
    port
}

async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0
            || tx
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Core-milliseconds this machine spent busy (every process: the bench,
/// sshd, the hosts' shells and git), from `/proc/stat`; `None` elsewhere.
fn busy_core_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest…: busy = user,
    // nice, system, irq, softirq (guest is inside user; steal is not ours).
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(5)
        .map(|(_, t)| t)
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Some(busy * 10.0)
}

/// The newest process id (`/proc/loadavg`): the difference over a run is
/// how many processes and threads the machine started (when no other
/// work runs, those of the run: sshd, shells, git).
fn last_pid() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .nth(4)?
        .parse()
        .ok()
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
    let mut counter = 0;
    let mut next = || {
        counter += 1;
        std::fs::write(work.join("app.txt"), format!("{counter}\n")).unwrap();
        git(&work, &["add", "app.txt"]);
        git(&work, &["commit", "--quiet", "-m", &counter.to_string()]);
        git(&work, &["push", "--quiet", "origin", "main"]);
        Release::commit(git(&work, &["rev-parse", "HEAD"]))
    };

    let bench = ssh_hosts();
    let name = unique("bench");
    let mut env = Environment::new(Vec::new(), "/unused").unwrap();
    env.repository = Some(dir.path().join("origin.git").display().to_string());
    env.hooks.build = vec![Hook::new("echo built > built.txt")];
    env.keep = 3;
    let mut slow_build = env.clone();
    slow_build.hooks.build = vec![Hook::new("sleep 1 && echo built > built.txt")];

    // Every bench host also behind a proxy adding a round trip.
    let far: Vec<SshHost> = bench
        .iter()
        .map(|h| SshHost {
            port: delay_proxy(&rt, h.port, RTT),
            ..h.clone()
        })
        .collect();

    // What one command costs (sshd, the login shell, back).
    let cmd = ec2kit::Command::argv(["true"]);
    for (label, host) in [("loopback", &bench[0]), ("50 ms round trip", &far[0])] {
        let probe = remote(host, dir.path());
        rt.block_on(probe.run(&cmd)).unwrap();
        let per_command: Vec<f64> = (0..10)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(probe.run(&cmd)).unwrap();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        println!(
            "one SSH command, {label}: median {:.1} ms",
            median(per_command)
        );
    }

    // Eleven targets per scenario: ten roots round-robin over the hosts for
    // the fleet, and one more root of its own for the single-host deploys
    // (sharing a root with the fleet would leave one host a release the
    // others never had, and a fleet rollback rightly refuses that); one SSH
    // connection each.
    let targets = |hosts: &[SshHost], key: &str| -> Vec<(Host, PathBuf)> {
        (0..11)
            .map(|i| {
                let h = &hosts[i % hosts.len()];
                let rel = format!("{name}/{key}/t{i}");
                let host = Host::new(remote(h, dir.path()), format!("{}/{rel}", SshHost::MOUNT))
                    .named(format!("{key}{i}"));
                (host, h.local_path(&rel))
            })
            .collect()
    };
    let scenarios = [
        (
            "loopback",
            "ssh on loopback, trivial build hook",
            &bench,
            &env,
        ),
        (
            "wan",
            "ssh with a 50 ms round trip, trivial build hook",
            &far,
            &env,
        ),
        (
            "wan-build",
            "ssh with a 50 ms round trip, build hook taking 1 s on the host",
            &far,
            &slow_build,
        ),
    ];
    // Under `cargo test` (the suite), one run of the loopback scenario.
    let full = ektool_tests::full_bench();
    let runs = if full { RUNS } else { 1 };
    let only = std::env::var("EKTOOL_DEPLOY_BENCH").unwrap_or_else(|_| {
        if full {
            String::new()
        } else {
            "loopback".into()
        }
    });
    let mut roots = Vec::new();
    for (key, label, hosts, env) in scenarios {
        if !only.is_empty() && !only.split(',').any(|o| o == key) {
            continue;
        }
        let targets = targets(hosts, key);
        roots.extend(targets.iter().map(|(_, p)| p.clone()));
        let deployer = |range: std::ops::Range<usize>| {
            let hosts = targets[range].iter().map(|(h, _)| h.clone()).collect();
            Deployer::new("bench", env.clone(), hosts)
        };
        let one = deployer(10..11);
        let ten = deployer(0..10);
        // Warm up: mirrors cloned, SSH sessions open.
        rt.block_on(ten.deploy(&next())).unwrap();
        rt.block_on(one.deploy(&next())).unwrap();

        let (mut t1, mut t10, mut spreads) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rollbacks, mut rb_spreads) = (Vec::new(), Vec::new());
        let (mut cpu1, mut cpu10) = (Vec::new(), Vec::new());
        let (mut pids1, mut pids10) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let r = next();
            let (t, c, p) = (Instant::now(), busy_core_ms(), last_pid());
            rt.block_on(one.deploy(&r)).unwrap();
            t1.push(t.elapsed().as_secs_f64());
            cpu1.extend(c.zip(busy_core_ms()).map(|(a, b)| b - a));
            pids1.extend(p.zip(last_pid()).map(|(a, b)| b - a));

            let r = next();
            let (t, c, p) = (Instant::now(), busy_core_ms(), last_pid());
            let report = rt.block_on(ten.deploy(&r)).unwrap();
            t10.push(t.elapsed().as_secs_f64());
            cpu10.extend(c.zip(busy_core_ms()).map(|(a, b)| b - a));
            pids10.extend(p.zip(last_pid()).map(|(a, b)| b - a));
            spreads.push(report.switch_spread_ms);

            let t = Instant::now();
            let rb = rt.block_on(ten.rollback(None)).unwrap();
            rollbacks.push(t.elapsed().as_secs_f64());
            rb_spreads.push(rb.switch_spread_ms);
            assert_eq!(rb.hosts.len(), 10);
        }
        let (m1, m10) = (median(t1), median(t10));
        println!("\n{label}, warm deploy of a new commit, median of {runs} runs:");
        println!("  1 host      {:>7.0} ms", m1 * 1000.0);
        println!(
            "  10 hosts    {:>7.0} ms   ({:.2}x of 1 host; target <= 1.5x)",
            m10 * 1000.0,
            m10 / m1
        );
        if !cpu1.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let (c1, c10) = (median(cpu1), median(cpu10));
            println!(
                "  CPU work (whole machine): 1 host {c1:.0} core-ms, 10 hosts {c10:.0} core-ms \
                 (that much work on {cores} cores takes at least {:.0} ms)",
                c10 / cores
            );
        }
        if !pids1.is_empty() {
            println!(
                "  processes started (whole machine): 1 host {:.0}, 10 hosts {:.0}",
                median(pids1),
                median(pids10)
            );
        }
        println!(
            "  switch spread, 10 hosts: median {:.1} ms, max {:.1} ms (target <= 100 ms)",
            median(spreads.clone()),
            spreads.iter().cloned().fold(0.0, f64::max)
        );
        println!(
            "  rollback, 10 hosts: median {:.0} ms, max {:.0} ms, spread {:.1} ms (target <= 1000 ms on loopback)",
            median(rollbacks.clone()) * 1000.0,
            rollbacks.iter().cloned().fold(0.0, f64::max) * 1000.0,
            median(rb_spreads)
        );
    }
    for root in &roots {
        let _ = std::fs::remove_dir_all(root);
    }
    if let Some(parent) = roots.first().and_then(|r| r.parent()?.parent()) {
        let _ = std::fs::remove_dir_all(parent);
    }
}
