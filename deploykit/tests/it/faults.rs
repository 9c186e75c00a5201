//! Fault injection: the deploy is cut at every command it sends, in turn.
//! After each cut, `current` on every host must point at a complete
//! release, and the next deploy must succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use deploykit::environment::LayoutKind;
use deploykit::{HealthCheck, Hook, Host};
use ec2kit::{Command, Output, Remote, RemoteError};

use crate::support::Fixture;

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Count only.
    None,
    /// The Nth command fails without running; later ones work (a flaky
    /// network: the flow's own recovery runs).
    FailAt(usize),
    /// The Nth command runs but its answer is lost, and every later
    /// command fails: the deploying process was killed mid-command.
    CutAt(usize),
}

/// Wraps a remote; the command counter is shared by every host of a run.
struct Faulty {
    inner: Arc<dyn Remote>,
    count: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
    fault: Fault,
}

impl Faulty {
    fn lost(&self) -> RemoteError {
        RemoteError::Connect {
            host: self.inner.host(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected fault"),
        }
    }

    /// Whether to run the command, and whether to lose its answer.
    fn decide(&self) -> (bool, bool) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        match self.fault {
            Fault::None => (true, false),
            Fault::FailAt(k) => (n != k, false),
            Fault::CutAt(k) => {
                if self.cut.load(Ordering::SeqCst) || n > k {
                    (false, true)
                } else if n == k {
                    self.cut.store(true, Ordering::SeqCst);
                    (true, true)
                } else {
                    (true, false)
                }
            }
        }
    }
}

#[async_trait]
impl Remote for Faulty {
    fn host(&self) -> String {
        self.inner.host()
    }

    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        match self.decide() {
            (true, false) => self.inner.run(command).await,
            (true, true) => {
                let _ = self.inner.run(command).await;
                Err(self.lost())
            }
            (false, _) => Err(self.lost()),
        }
    }

    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), RemoteError> {
        match self.decide() {
            (true, false) => self.inner.upload(path, bytes, mode).await,
            (true, true) => {
                let _ = self.inner.upload(path, bytes, mode).await;
                Err(self.lost())
            }
            (false, _) => Err(self.lost()),
        }
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError> {
        match self.decide() {
            (true, _) => self.inner.read_file(path).await,
            (false, _) => Err(self.lost()),
        }
    }
}

fn faulty_hosts(f: &Fixture, fault: Fault) -> (Vec<Host>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let hosts = f
        .remotes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let remote: Arc<dyn Remote> = Arc::new(Faulty {
                inner: r.clone(),
                count: count.clone(),
                cut: cut.clone(),
                fault,
            });
            Host::new(remote, f.root()).named(format!("h{}", i + 1))
        })
        .collect();
    (hosts, count)
}

async fn every_cut_leaves_complete_releases(layout: LayoutKind, make: fn(usize) -> Fault) {
    let f = Fixture::new(2);
    let mut env = f.env(layout);
    env.keep = 2;
    env.hooks.before_switch = vec![Hook::new("true")];
    env.hooks.restart = vec![Hook::new("true")];
    env.health = Some(HealthCheck::command("test -f REVISION"));
    let clean = f.deployer(env.clone());
    let c0 = f.commit("base");
    clean.deploy(&f.release(&c0)).await.unwrap();

    // How many commands a whole deploy sends.
    let (hosts, count) = faulty_hosts(&f, Fault::None);
    let c = f.commit("counted");
    f.deployer_on(env.clone(), hosts)
        .deploy(&f.release(&c))
        .await
        .unwrap();
    let total = count.load(Ordering::SeqCst);
    // Per host: lock, checkout, build (+ marker), switch, restart, health,
    // log; and the run-once hook.
    assert_eq!(total, 2 * 7 + 1, "commands of a whole deploy");

    for n in 1..=total + 1 {
        let c = f.commit(&format!("cut at {n}"));
        let (hosts, _) = faulty_hosts(&f, make(n));
        let result = f
            .deployer_on(env.clone(), hosts)
            .deploy(&f.release(&c))
            .await;
        f.assert_current_complete(&format!("{layout} {:?} ({result:?})", make(n)));
        if let Err(e) = &result
            && matches!(make(n), Fault::FailAt(_))
        {
            // The flow recovered by itself: every host is on one release.
            let (a, b) = (f.live_commit(0), f.live_commit(1));
            assert_eq!(a, b, "fault {n}: hosts disagree after {e}");
        }
        // The killed run's lock may be left; the operator removes it.
        clean.unlock(true).await.unwrap();
        let next = f.commit(&format!("after {n}"));
        clean
            .deploy(&f.release(&next))
            .await
            .unwrap_or_else(|e| panic!("deploy after fault {n} failed: {e}"));
        for i in 0..2 {
            assert_eq!(
                f.live_commit(i).as_deref(),
                Some(next.as_str()),
                "fault {n}"
            );
        }
        f.assert_current_complete("after the next deploy");
    }
}

#[tokio::test]
async fn killed_at_every_command_timestamped() {
    every_cut_leaves_complete_releases(LayoutKind::Timestamped, Fault::CutAt).await;
}

#[tokio::test]
async fn killed_at_every_command_ab() {
    every_cut_leaves_complete_releases(LayoutKind::Ab, Fault::CutAt).await;
}

#[tokio::test]
async fn failing_at_every_command_timestamped() {
    every_cut_leaves_complete_releases(LayoutKind::Timestamped, Fault::FailAt).await;
}

#[tokio::test]
async fn failing_at_every_command_ab() {
    every_cut_leaves_complete_releases(LayoutKind::Ab, Fault::FailAt).await;
}

#[tokio::test]
async fn a_failing_hook_at_every_phase_leaves_one_good_release_live() {
    let f = Fixture::new(2);
    let base = f.env(LayoutKind::Timestamped);
    let c0 = f.commit("base");
    f.deployer(base.clone())
        .deploy(&f.release(&c0))
        .await
        .unwrap();
    let fail = || vec![Hook::new("echo boom >&2; exit 7")];
    for phase in [
        "build",
        "before_switch",
        "restart",
        "after_switch",
        "health",
    ] {
        let mut env = base.clone();
        match phase {
            "build" => env.hooks.build = fail(),
            "before_switch" => env.hooks.before_switch = fail(),
            "restart" => env.hooks.restart = fail(),
            "after_switch" => env.hooks.after_switch = fail(),
            _ => {
                let mut h = HealthCheck::command("exit 1");
                h.deadline_seconds = 1;
                env.health = Some(h);
            }
        }
        let before: Vec<_> = (0..2).map(|i| f.current(i)).collect();
        let c = f.commit(phase);
        let err = f.deployer(env).deploy(&f.release(&c)).await.unwrap_err();
        assert!(
            phase == "health" || err.to_string().contains("boom"),
            "{phase}: {err}"
        );
        let after: Vec<_> = (0..2).map(|i| f.current(i)).collect();
        assert_eq!(before, after, "{phase}: current changed");
        f.assert_current_complete(phase);
        let next = f.commit(&format!("after {phase}"));
        f.deployer(base.clone())
            .deploy(&f.release(&next))
            .await
            .unwrap();
    }
}

/// Records whether each command sent had a deadline.
struct Deadlines {
    inner: Arc<dyn Remote>,
    without: Arc<std::sync::Mutex<Vec<String>>>,
    sent: Arc<AtomicUsize>,
}

#[async_trait]
impl Remote for Deadlines {
    fn host(&self) -> String {
        self.inner.host()
    }
    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if command.timeout.is_none() {
            self.without.lock().unwrap().push(command.to_string());
        }
        self.inner.run(command).await
    }
    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), RemoteError> {
        self.inner.upload(path, bytes, mode).await
    }
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError> {
        self.inner.read_file(path).await
    }
}

/// The fixture's hosts, each command they are sent counted in `sent`
/// (and listed in `without` when it has no deadline).
fn recorded(
    f: &Fixture,
    without: &Arc<std::sync::Mutex<Vec<String>>>,
    sent: &Arc<AtomicUsize>,
) -> Vec<Host> {
    f.remotes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let remote: Arc<dyn Remote> = Arc::new(Deadlines {
                inner: r.clone(),
                without: without.clone(),
                sent: sent.clone(),
            });
            Host::new(remote, f.root()).named(format!("h{}", i + 1))
        })
        .collect()
}

/// Every command a deploy, a failed deploy, a rollback, a restart,
/// maintenance on and off, the releases table and an unlock send to a host
/// has a deadline: a host that stops answering can never hold a run (and
/// its locks) forever.
#[tokio::test]
async fn every_command_sent_to_a_host_has_a_deadline() {
    let f = Fixture::new(2);
    let without = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let hosts = recorded(&f, &without, &sent);
    let mut env = f.env(LayoutKind::Timestamped);
    env.hooks.restart = vec![Hook::new("true")];
    env.hooks.maintenance = vec![Hook::new("true")];
    env.hooks.on_failure = vec![Hook::new("true")];
    env.hooks.after_rollback = vec![Hook::new("true")];
    let mut check = HealthCheck::command("test ! -e ../../shared/sick");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    env.health = Some(check);
    let d = f.deployer_on(env, hosts);
    for n in 0..2 {
        let c = f.commit(&format!("good {n}"));
        d.deploy(&f.release(&c)).await.unwrap();
    }
    std::fs::write(f.local(1, "shared/sick"), "").unwrap();
    let c = f.commit("bad");
    d.deploy(&f.release(&c)).await.unwrap_err();
    std::fs::remove_file(f.local(1, "shared/sick")).unwrap();
    d.deploy_plan(&f.release(&c)).await.unwrap();
    d.rollback_plan(None).await.unwrap();
    d.rollback(None).await.unwrap();
    d.restart().await.unwrap();
    d.maintenance(true).await.unwrap();
    d.maintenance(false).await.unwrap();
    d.releases().await.unwrap();
    d.unlock(true).await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 30);
    let without = without.lock().unwrap();
    assert!(
        without.is_empty(),
        "commands without a deadline: {without:#?}"
    );
}

/// A rollback with restart and after-rollback hooks costs, per host, the
/// lock round, the switch and one command per hook: recording the
/// rollback and releasing the lock ride in the last hook's command. Both
/// still happen, and a failing last hook still gets them, on their own.
#[tokio::test]
async fn rollback_bookkeeping_rides_in_the_last_hook_command() {
    let f = Fixture::new(2);
    let sent = Arc::new(AtomicUsize::new(0));
    let hosts = recorded(&f, &Arc::default(), &sent);
    let mut env = f.env(LayoutKind::Timestamped);
    env.hooks.restart = vec![Hook::new("echo restart >> ../../shared/hooks")];
    env.hooks.after_rollback = vec![Hook::new(
        "echo after >> ../../shared/hooks; test ! -e ../../shared/fail-after",
    )];
    let d = f.deployer_on(env, hosts);
    let mut commits = Vec::new();
    for n in 0..3 {
        let c = f.commit(&format!("r{n}"));
        d.deploy(&f.release(&c)).await.unwrap();
        commits.push(c);
    }
    let log_len = |i: usize| {
        std::fs::read_to_string(f.local(i, ".ektool/releases.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let before = log_len(0);
    sent.store(0, Ordering::SeqCst);
    let report = d.rollback(None).await.unwrap();
    assert!(report.hook_failures.is_empty(), "{report:?}");
    assert_eq!(
        sent.load(Ordering::SeqCst),
        2 * 4,
        "per host: lock round, switch, restart hook, after-rollback hook"
    );
    for i in 0..2 {
        assert_eq!(f.live_commit(i).as_deref(), Some(commits[1].as_str()));
        assert_eq!(log_len(i), before + 2, "bad + rollback recorded on h{i}");
        assert!(!f.local(i, ".ektool/lock").exists(), "h{i} unlocked");
        let hooks = std::fs::read_to_string(f.local(i, "shared/hooks")).unwrap();
        assert!(hooks.ends_with("restart\nafter\n"), "{hooks}");
    }

    // A failing last hook: reported, and the rollback still recorded and
    // the lock released (by a command of their own).
    std::fs::write(f.local(1, "shared/fail-after"), "").unwrap();
    let before = [log_len(0), log_len(1)];
    let report = d.rollback(None).await.unwrap();
    assert_eq!(report.hook_failures.len(), 1, "{report:?}");
    assert_eq!(report.hook_failures[0].host, "h2");
    for (i, before) in before.into_iter().enumerate() {
        assert_eq!(f.live_commit(i).as_deref(), Some(commits[0].as_str()));
        assert_eq!(log_len(i), before + 2, "recorded on h{i}");
        assert!(!f.local(i, ".ektool/lock").exists(), "h{i} unlocked");
    }
}
