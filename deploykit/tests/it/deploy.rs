//! Deploys, rollbacks and health checks over real SSH.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deploykit::environment::LayoutKind;
use deploykit::{DeployError, Event, HealthCheck, Hook, Host, LogAction, LogResult, Stage};

use crate::support::{Fixture, GitDaemon, git};

#[tokio::test]
async fn deploys_to_several_hosts_with_relative_links_marker_log_and_shared_dirs() {
    let f = Fixture::new(3);
    let c2 = f.commit("v2");
    let d = f.deployer(f.env(LayoutKind::Timestamped));
    let report = d.deploy(&f.release(&c2)).await.unwrap();
    assert_eq!(report.hosts.len(), 3);
    let name = &report.hosts[0].release;
    for i in 0..3 {
        assert_eq!(
            f.current(i).as_deref(),
            Some(name.as_str()),
            "one name everywhere"
        );
        assert_eq!(f.live_commit(i).as_deref(), Some(c2.as_str()));
        let built = std::fs::read_to_string(f.local(i, "current/built.txt")).unwrap();
        assert_eq!(built.trim(), format!("{name} {c2} staging"));
        assert_eq!(
            std::fs::read_link(f.local(i, "current/log"))
                .unwrap()
                .to_str(),
            Some("../../shared/log")
        );
        let log = f.log(i);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].result, Some(LogResult::Success));
        assert_eq!(log[0].commit, c2);
        assert!(!f.local(i, ".ektool/lock").exists(), "unlocked");
    }
    // The same commit again: already built, reused, nothing rebuilt.
    f.take_events();
    let again = d.deploy(&f.release(&c2)).await.unwrap();
    assert!(again.hosts.iter().all(|h| h.reused && &h.release == name));
    assert!(
        !f.take_events()
            .iter()
            .any(|e| matches!(e, Event::CheckedOut { .. }))
    );
}

#[tokio::test]
async fn the_switch_never_leaves_current_missing() {
    let f = Fixture::new(1);
    let c2 = f.commit("v2");
    let mut env = f.env(LayoutKind::Ab);
    env.hooks.build.clear();
    let d = f.deployer(env);
    d.deploy(&f.release(&c2)).await.unwrap();
    let c3 = f.commit("v3");
    d.deploy(&f.release(&c3)).await.unwrap();

    // A reader on the same directory while the link flips back and forth.
    let stop = Arc::new(AtomicBool::new(false));
    let missing = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let link = f.local(0, "current");
    let reader = {
        let (stop, missing, reads) = (stop.clone(), missing.clone(), reads.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::read_link(&link).is_err() {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for i in 0..6 {
        let c = if i % 2 == 0 { &c2 } else { &c3 };
        d.deploy(&f.release(c)).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 1000);
    assert_eq!(missing.load(Ordering::Relaxed), 0, "current was missing");
}

#[tokio::test]
async fn ab_layout_alternates_slots_and_rollback_goes_to_the_other_good_slot() {
    let f = Fixture::new(2);
    f.commit_file(".gitignore", "env/\n");
    let c1 = f.commit("one");
    let c2 = f.commit("two");
    let mut env = f.env(LayoutKind::Ab);
    // An ignored build product (a virtualenv) kept by each slot.
    env.hooks
        .build
        .push(Hook::new("mkdir -p env && echo \"$COMMIT\" >> env/builds"));
    let d = f.deployer(env);
    d.deploy(&f.release(&c1)).await.unwrap();
    assert_eq!(f.current(0).as_deref(), Some("a"));
    d.deploy(&f.release(&c2)).await.unwrap();
    assert_eq!(f.current(0).as_deref(), Some("b"));
    let report = d.rollback(None).await.unwrap();
    for (i, step) in report.hosts.iter().enumerate() {
        assert_eq!((step.from.as_str(), step.to.as_str()), ("b", "a"));
        assert_eq!(f.current(i).as_deref(), Some("a"));
        assert_eq!(f.live_commit(i).as_deref(), Some(c1.as_str()));
        let log = f.log(i);
        let bad = log.iter().find(|e| e.action == LogAction::Bad).unwrap();
        assert_eq!(
            (bad.release.as_str(), bad.commit.as_str()),
            ("b", c2.as_str())
        );
    }
    // b is marked bad and a is live: nothing left to roll back to.
    assert!(matches!(
        d.rollback(None).await,
        Err(DeployError::NothingToRollBack { .. })
    ));
    // A new deploy builds in b (the slot not live) again.
    let c3 = f.commit("three");
    d.deploy(&f.release(&c3)).await.unwrap();
    assert_eq!(f.current(1).as_deref(), Some("b"));
    assert_eq!(f.live_commit(1).as_deref(), Some(c3.as_str()));
    // Slot b's build products survived its rebuild (incremental builds).
    let builds = std::fs::read_to_string(f.local(1, "releases/b/env/builds")).unwrap();
    assert_eq!(builds, format!("{c2}\n{c3}\n"));
}

#[tokio::test]
async fn timestamped_rollback_goes_to_the_previous_release_and_cleanup_keeps_current_and_previous()
{
    let f = Fixture::new(2);
    let mut env = f.env(LayoutKind::Timestamped);
    env.keep = 3;
    let d = f.deployer(env);
    let mut names = Vec::new();
    let mut commits = Vec::new();
    for i in 0..5 {
        let c = f.commit(&format!("release {i}"));
        let r = d.deploy(&f.release(&c)).await.unwrap();
        names.push(r.hosts[0].release.clone());
        commits.push(c);
    }
    let mut left: Vec<String> = std::fs::read_dir(f.local(0, "releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, names[2..].to_vec(), "keep = 3 newest");

    let r = d.rollback(None).await.unwrap();
    assert_eq!(r.hosts[0].to, names[3]);
    assert_eq!(f.live_commit(1).as_deref(), Some(commits[3].as_str()));
    // The next rollback skips the bad release 4 and goes to 2.
    let r = d.rollback(None).await.unwrap();
    assert_eq!(
        (r.hosts[0].from.as_str(), r.hosts[0].to.as_str()),
        (names[3].as_str(), names[2].as_str())
    );
    // An explicit target, even one marked bad.
    let r = d.rollback(Some(&names[4])).await.unwrap();
    assert_eq!(r.hosts[0].to, names[4]);
    assert_eq!(f.live_commit(0).as_deref(), Some(commits[4].as_str()));
    assert!(matches!(
        d.rollback(Some("19990101000000")).await,
        Err(DeployError::UnknownRelease { .. })
    ));
    // Deploying after rollbacks: cleanup never removes current or previous.
    let c = f.commit("after");
    let report = d.deploy(&f.release(&c)).await.unwrap();
    for h in &report.hosts {
        assert!(!h.removed.contains(&names[4]), "previous removed: {h:?}");
        assert!(!h.removed.contains(&h.release));
    }
}

#[tokio::test]
async fn failing_health_check_on_one_host_switches_every_host_back() {
    let f = Fixture::new(3);
    let mut env = f.env(LayoutKind::Timestamped);
    let mut check = HealthCheck::command("test ! -e ../../shared/unhealthy");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    env.health = Some(check);
    env.hooks.restart = vec![Hook::new(
        "echo \"$DEPLOY_ACTION $RELEASE\" >> ../../shared/restarts",
    )];
    env.hooks.after_rollback = vec![Hook::new(
        "echo \"$RELEASE $PREVIOUS_RELEASE\" > ../../shared/rolled-back",
    )];
    let d = f.deployer(env);
    let c1 = f.commit("good");
    let good = d.deploy(&f.release(&c1)).await.unwrap().hosts[0]
        .release
        .clone();

    std::fs::write(f.local(1, "shared/unhealthy"), "").unwrap();
    let c2 = f.commit("bad");
    f.take_events();
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    let DeployError::Failed {
        stage,
        failures,
        rolled_back,
        inconsistent,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::Health);
    assert_eq!(failures.len(), 1, "{err}");
    assert_eq!(failures[0].host, "h2");
    assert_eq!(rolled_back.len(), 3);
    assert!(inconsistent.is_empty());
    let events = f.take_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Switched { .. }))
            .count(),
        3,
        "every host had switched"
    );
    for i in 0..3 {
        assert_eq!(f.current(i).as_deref(), Some(good.as_str()), "h{}", i + 1);
        let restarts = std::fs::read_to_string(f.local(i, "shared/restarts")).unwrap();
        assert!(
            restarts.ends_with(&format!("rollback {good}\n")),
            "{restarts}"
        );
        let rb = std::fs::read_to_string(f.local(i, "shared/rolled-back")).unwrap();
        assert!(rb.starts_with(&good), "{rb}");
        let last = f.log(i).pop().unwrap();
        assert_eq!(
            (last.commit.as_str(), last.result),
            (c2.as_str(), Some(LogResult::RolledBack))
        );
    }
    assert!(err.to_string().contains("switched 3 hosts back"), "{err}");
}

#[tokio::test]
async fn failure_before_the_switch_leaves_current_untouched_and_the_release_unfinished() {
    let f = Fixture::new(2);
    let mut env = f.env(LayoutKind::Timestamped);
    let d = f.deployer(env.clone());
    let c1 = f.commit("one");
    let live = d.deploy(&f.release(&c1)).await.unwrap().hosts[0]
        .release
        .clone();
    env.hooks
        .build
        .push(Hook::new("test -e ../../shared/ok-to-build"));
    std::fs::write(f.local(0, "shared/ok-to-build"), "").unwrap();
    let d = f.deployer(env);
    let c2 = f.commit("two");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            DeployError::Failed {
                stage: Stage::Build,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no host was switched"), "{err}");
    for i in 0..2 {
        assert_eq!(f.current(i).as_deref(), Some(live.as_str()));
    }
    // Host 1 built completely, host 2 did not: its directory has no marker.
    let unfinished: Vec<_> = std::fs::read_dir(f.local(1, "releases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.join(".ektool-release").exists())
        .collect();
    assert_eq!(unfinished.len(), 1);
    // The next deploy succeeds and removes the unfinished directory.
    std::fs::write(f.local(1, "shared/ok-to-build"), "").unwrap();
    let c3 = f.commit("three");
    d.deploy(&f.release(&c3)).await.unwrap();
    assert!(!unfinished[0].exists());
}

#[tokio::test]
async fn two_deploys_at_once_exactly_one_proceeds_and_names_the_owner() {
    let f = Fixture::new(3);
    let mut env = f.env(LayoutKind::Timestamped);
    env.hooks.build.push(Hook::new("sleep 1"));
    let c = f.commit("race");
    let a = f.deployer(env.clone()).message(Some("first".into()));
    let b = f.deployer(env.clone()).message(Some("second".into()));
    let rel = f.release(&c);
    let (ra, rb) = tokio::join!(a.deploy(&rel), b.deploy(&rel));
    let (ok, err) = match (ra, rb) {
        (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, e),
        (a, b) => panic!("exactly one must proceed: {a:?} {b:?}"),
    };
    assert_eq!(ok.hosts.len(), 3);
    let DeployError::Locked { lock } = &err else {
        panic!("{err}")
    };
    assert_eq!(lock.stale, None);
    let text = err.to_string();
    // The facts (who holds it); how to wait is the caller's (the CLI adds
    // its `--lock-wait` hint).
    assert!(
        text.contains("is locked by") && !text.contains("--lock-wait"),
        "{text}"
    );
    // With --lock-wait, a deploy queued behind a running one proceeds.
    let c2 = f.commit("queued");
    let waiter = f.deployer(env.clone()).lock_wait(Duration::from_secs(30));
    let rel2 = f.release(&c2);
    let (r1, r2) = tokio::join!(a.deploy(&rel), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        waiter.deploy(&rel2).await
    });
    r1.unwrap();
    r2.unwrap();
    assert_eq!(f.live_commit(2).as_deref(), Some(c2.as_str()));
}

/// A remote whose every call starts late, counting lock attempts.
struct Lagging {
    inner: Arc<dyn ec2kit::Remote>,
    lag: Duration,
    lock_attempts: AtomicUsize,
}

#[async_trait::async_trait]
impl ec2kit::Remote for Lagging {
    fn host(&self) -> String {
        self.inner.host()
    }
    async fn run(&self, c: &ec2kit::Command) -> Result<ec2kit::Output, ec2kit::RemoteError> {
        let text = c.to_string();
        if text.contains("if mkdir") && text.contains("owner.json") {
            self.lock_attempts.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.lag).await;
        self.inner.run(c).await
    }
    async fn upload(&self, p: &str, b: &[u8], m: u32) -> Result<(), ec2kit::RemoteError> {
        tokio::time::sleep(self.lag).await;
        self.inner.upload(p, b, m).await
    }
    async fn read_file(&self, p: &str) -> Result<Vec<u8>, ec2kit::RemoteError> {
        tokio::time::sleep(self.lag).await;
        self.inner.read_file(p).await
    }
}

/// Racing runs take the hosts' locks in one round each, so each may get
/// some. Each run here has its own SSH connections (opened beforehand) and
/// reaches one host late: `a` takes the first host and `b` the last. `b`
/// gives its hosts back and fails naming `a`; `a` waits for them (it tries
/// the last host again) and proceeds; no lock is left behind.
#[tokio::test]
async fn racing_deploys_split_no_lock_between_them() {
    let f = Fixture::new(3);
    let mut env = f.env(LayoutKind::Timestamped);
    env.hooks.build.push(Hook::new("sleep 0.3"));
    let lagging = |late: usize, ms: u64| -> Vec<Arc<Lagging>> {
        (0..3)
            .map(|i| {
                let remote = crate::support::ssh_remote(i + 1, f.dir.path());
                Arc::new(Lagging {
                    inner: remote,
                    lag: Duration::from_millis(if i == late { ms } else { 0 }),
                    lock_attempts: AtomicUsize::new(0),
                })
            })
            .collect()
    };
    let hosts = |remotes: &[Arc<Lagging>]| -> Vec<Host> {
        remotes
            .iter()
            .enumerate()
            .map(|(i, r)| Host::new(r.clone(), f.root()).named(format!("h{}", i + 1)))
            .collect()
    };
    // `b` learns it lost the first host after `a` has found the last
    // one taken.
    let (ra, rb) = (lagging(2, 200), lagging(0, 400));
    for r in ra.iter().chain(&rb) {
        r.inner.run(&ec2kit::Command::argv(["true"])).await.unwrap();
    }
    let a = f
        .deployer_on(env.clone(), hosts(&ra))
        .message(Some("a".into()));
    let b = f
        .deployer_on(env.clone(), hosts(&rb))
        .message(Some("b".into()));
    for round in 0..3 {
        let c = f.commit(&format!("race {round}"));
        let rel = f.release(&c);
        let before = ra[2].lock_attempts.load(Ordering::SeqCst);
        let (oa, ob) = tokio::join!(a.deploy(&rel), b.deploy(&rel));
        assert!(
            oa.is_ok(),
            "round {round}: a holds the first host and proceeds: {oa:?}"
        );
        let Err(DeployError::Locked { lock }) = &ob else {
            panic!("round {round}: b must fail at the lock: {ob:?}")
        };
        assert_eq!(
            lock.owner.as_ref().and_then(|o| o.message.as_deref()),
            Some("a"),
            "round {round}: {lock}"
        );
        assert!(
            ra[2].lock_attempts.load(Ordering::SeqCst) - before >= 2,
            "round {round}: a found the last host taken by b and waited for it"
        );
        for i in 0..3 {
            assert!(
                !f.local(i, ".ektool/lock").exists(),
                "round {round}: host {i} still locked"
            );
            assert_eq!(f.live_commit(i).as_deref(), Some(c.as_str()));
        }
    }
}

#[tokio::test]
async fn stale_locks_are_detected_and_unlock_needs_force_for_live_ones() {
    let f = Fixture::new(2);
    let d = f.deployer(f.env(LayoutKind::Timestamped));
    let c = f.commit("x");
    d.deploy(&f.release(&c)).await.unwrap();
    // An owner on this machine (its id, boot and pid namespace).
    let owner = |pid: u32| {
        let mut actor = deploykit::Actor::current();
        actor.user = "ghost".into();
        actor.pid = pid;
        serde_json::json!({
            "actor": actor,
            "environment": "staging", "since": "2024-01-01T00:00:00Z", "action": "deploy v9",
            "message": null, "token": "someone-else"
        })
        .to_string()
    };
    // A lock left by a process that no longer exists, on host 2.
    std::fs::create_dir_all(f.local(1, ".ektool/lock")).unwrap();
    std::fs::write(f.local(1, ".ektool/lock/owner.json"), owner(u32::MAX)).unwrap();
    let err = d.deploy(&f.release(&c)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ghost@") && text.contains("stale") && text.contains("is gone"),
        "{text}"
    );
    assert!(
        !f.local(0, ".ektool/lock").exists(),
        "host 1's lock was released again"
    );
    assert!(
        f.local(1, ".ektool/lock").exists(),
        "never removes another run's lock"
    );
    let removed = d.unlock(false).await.unwrap();
    assert!(removed[1].removed && !removed[0].removed);
    // A live owner (this very process): only --force removes it.
    std::fs::create_dir_all(f.local(0, ".ektool/lock")).unwrap();
    std::fs::write(
        f.local(0, ".ektool/lock/owner.json"),
        owner(std::process::id()),
    )
    .unwrap();
    assert!(matches!(
        d.unlock(false).await,
        Err(DeployError::LockNotStale { .. })
    ));
    assert!(f.local(0, ".ektool/lock").exists());
    d.unlock(true).await.unwrap();
    assert!(!f.local(0, ".ektool/lock").exists());
    d.deploy(&f.release(&c)).await.unwrap();
}

#[tokio::test]
async fn maintenance_flag_and_restart_run_in_the_live_release() {
    let f = Fixture::new(2);
    let mut env = f.env(LayoutKind::Ab);
    env.hooks.maintenance = vec![Hook::new(
        "echo \"$MAINTENANCE $RELEASE\" >> ../../shared/maint.log",
    )];
    env.hooks.restart = vec![Hook::new(
        "echo \"$DEPLOY_ACTION\" >> ../../shared/restarts",
    )];
    let d = f.deployer(env);
    let c = f.commit("m");
    d.deploy(&f.release(&c)).await.unwrap();
    d.maintenance(true).await.unwrap();
    assert!(f.local(0, "shared/maintenance").exists());
    assert!(d.releases().await.unwrap().iter().all(|h| h.maintenance));
    d.maintenance(false).await.unwrap();
    assert!(!f.local(1, "shared/maintenance").exists());
    assert_eq!(
        std::fs::read_to_string(f.local(1, "shared/maint.log")).unwrap(),
        "on a\noff a\n"
    );
    d.restart().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(f.local(0, "shared/restarts")).unwrap(),
        "deploy\nrestart\n"
    );
    // The tracked files of the release are untouched (the seed edited settings.py).
    assert_eq!(
        std::fs::read_to_string(f.local(0, "current/app.txt")).unwrap(),
        "m\n"
    );
}

#[tokio::test]
async fn releases_table_marks_current_and_bad() {
    let f = Fixture::new(1);
    let d = f.deployer(f.env(LayoutKind::Timestamped));
    let c1 = f.commit("1");
    let c2 = f.commit("2");
    d.deploy(&f.release(&c1)).await.unwrap();
    d.deploy(&f.release(&c2)).await.unwrap();
    d.rollback(None).await.unwrap();
    let hosts = d.releases().await.unwrap();
    let rows = &hosts[0].history;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].action, LogAction::Rollback);
    assert!(rows[0].current && rows[0].commit == c1);
    assert!(rows[1].bad && rows[1].commit == c2 && !rows[1].current);
    assert!(!rows[2].current && !rows[2].bad && rows[2].available);
}

#[tokio::test]
async fn dry_run_plan_reads_and_changes_nothing() {
    let f = Fixture::new(2);
    let mut env = f.env(LayoutKind::Ab);
    env.hooks.before_switch = vec![Hook::new("echo migrate")];
    let d = f.deployer(env);
    let c1 = f.commit("1");
    let plan = d.deploy_plan(&f.release(&c1)).await.unwrap();
    assert!(!f.local(0, "").exists(), "the plan created the deploy root");
    d.deploy(&f.release(&c1)).await.unwrap();
    let c2 = f.commit("2");
    let plan2 = d.deploy_plan(&f.release(&c2)).await.unwrap();
    let mut json = serde_json::to_value((&plan, &plan2)).unwrap();
    normalise(
        &mut json,
        &[
            (&c1, "<c1>"),
            (&c2, "<c2>"),
            (&f.root(), "<root>"),
            (&f.origin.display().to_string(), "<origin>"),
        ],
    );
    insta::assert_json_snapshot!("plan_first_and_second_deploy", json);
}

/// Replaces run-specific strings in every string of a JSON value (and
/// drops the measured clock skews).
fn normalise(v: &mut serde_json::Value, pairs: &[(&str, &str)]) {
    if let serde_json::Value::Object(o) = v {
        o.remove("clock_skew_ms");
    }
    match v {
        serde_json::Value::String(s) => {
            for (from, to) in pairs {
                *s = s.replace(from, to);
            }
            if s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                *s = "<short>".into();
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, pairs)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| normalise(x, pairs)),
        _ => {}
    }
}

/// Submodules with a relative URL resolve against the origin the hosts
/// fetch from (a `git://` server here), in a fresh clone and in an a/b
/// slot updated in place.
#[tokio::test]
async fn submodules_are_checked_out_at_the_recorded_commit() {
    let f = Fixture::new(2);
    let base = f.dir.path();
    git(
        base,
        &["init", "--quiet", "--bare", "-b", "main", "lib.git"],
    );
    git(base, &["clone", "--quiet", "lib.git", "lib-work"]);
    let lib = base.join("lib-work");
    git(&lib, &["checkout", "--quiet", "-b", "main"]);
    let lib_commit = |content: &str| {
        std::fs::write(lib.join("lib.txt"), content).unwrap();
        git(&lib, &["add", "lib.txt"]);
        git(&lib, &["commit", "--quiet", "-m", content]);
        git(&lib, &["push", "--quiet", "origin", "main"]);
    };
    lib_commit("lib one");
    // The developer's machine adds it from a local path (git refuses file
    // URLs for submodules unless told).
    git(
        &f.work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "--quiet",
            "add",
            "../lib.git",
            "vendor/lib",
        ],
    );
    git(&f.work, &["commit", "--quiet", "-m", "add lib"]);
    git(&f.work, &["push", "--quiet", "origin", "main"]);
    let c1 = git(&f.work, &["rev-parse", "HEAD"]);
    let daemon = GitDaemon::serve(base);
    let mut env = f.env(LayoutKind::Ab);
    env.repository = Some(format!("{}/origin.git", daemon.url));
    let d = f.deployer(env);

    let bump = |content: &str| {
        lib_commit(content);
        let sub = f.work.join("vendor/lib");
        git(&sub, &["pull", "--quiet", "origin", "main"]);
        git(&f.work, &["commit", "--quiet", "-am", content]);
        git(&f.work, &["push", "--quiet", "origin", "main"]);
        git(&f.work, &["rev-parse", "HEAD"])
    };
    let lib_live =
        |i: usize| std::fs::read_to_string(f.local(i, "current/vendor/lib/lib.txt")).ok();
    // a: fresh clone; b: fresh clone; a again: updated in place.
    d.deploy(&f.release(&c1)).await.unwrap();
    assert_eq!(lib_live(0).as_deref(), Some("lib one"));
    let c2 = bump("lib two");
    d.deploy(&f.release(&c2)).await.unwrap();
    let c3 = bump("lib three");
    d.deploy(&f.release(&c3)).await.unwrap();
    for i in 0..2 {
        assert_eq!(f.current(i).as_deref(), Some("a"));
        assert_eq!(lib_live(i).as_deref(), Some("lib three"), "host {i}");
    }
    // The submodule's remote in the release is the network one.
    let url =
        std::fs::read_to_string(f.local(0, "current/.git/modules/vendor/lib/config")).unwrap();
    assert!(url.contains(&format!("{}/lib.git", daemon.url)), "{url}");
}

/// Hosts fetch over SSH with the environment's deploy key, and check the
/// git server's host key strictly against `git_known_hosts`: unknown, the
/// fetch fails before anything is switched; recorded, the deploy goes on.
/// (The git server is another bench sshd.)
#[tokio::test]
async fn hosts_fetch_over_ssh_with_a_deploy_key_checking_the_servers_key() {
    let f = Fixture::new(1);
    let server = ektool_tests::ssh_host(2);
    let c = f.commit("over ssh");
    let mut env = f.env(LayoutKind::Timestamped);
    env.repository = Some(format!(
        "ssh://{}@127.0.0.1:{}{}",
        server.user,
        server.port,
        f.origin.display()
    ));
    env.git_ssh_key = Some(server.client_key.display().to_string());
    let known = f.dir.path().join("git_known_hosts");
    std::fs::write(&known, "").unwrap();
    env.git_known_hosts = Some(known.display().to_string());
    let d = f.deployer(env);

    let err = d.deploy(&f.release(&c)).await.unwrap_err();
    let DeployError::Failed { stage, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::Fetch, "{err}");
    assert!(
        err.to_string().contains("Host key verification failed"),
        "{err}"
    );
    assert_eq!(f.current(0), None);

    std::fs::write(&known, format!("{}\n", server.known_hosts_line())).unwrap();
    d.deploy(&f.release(&c)).await.unwrap();
    assert_eq!(f.live_commit(0).as_deref(), Some(c.as_str()));
}

/// After a canary deploy to one host, a fleet rollback sends the canary
/// back to what the others run and leaves them alone: no host goes
/// further back, no good release is marked bad.
#[tokio::test]
async fn a_fleet_rollback_after_a_canary_deploy_ends_on_one_release() {
    let f = Fixture::new(2);
    let env = f.env(LayoutKind::Timestamped);
    let d = f.deployer(env.clone());
    let c0 = f.commit("zero");
    d.deploy(&f.release(&c0)).await.unwrap();
    let c1 = f.commit("one");
    d.deploy(&f.release(&c1)).await.unwrap();
    // The canary is the second host (not the first in lock order).
    let canary = f.deployer_on(env, vec![f.hosts().remove(1)]);
    let c2 = f.commit("canary");
    canary.deploy(&f.release(&c2)).await.unwrap();

    let plan = d.rollback_plan(None).await.unwrap();
    assert!(plan[0].unchanged && !plan[1].unchanged, "{plan:?}");
    let report = d.rollback(None).await.unwrap();
    for i in 0..2 {
        assert_eq!(f.live_commit(i).as_deref(), Some(c1.as_str()), "h{}", i + 1);
        assert!(!f.local(i, ".ektool/lock").exists());
    }
    assert!(report.hosts[0].unchanged);
    assert!(
        !f.log(0).iter().any(|e| e.action == LogAction::Bad),
        "h1 left alone: nothing marked bad"
    );
    let bad: Vec<_> = f
        .log(1)
        .into_iter()
        .filter(|e| e.action == LogAction::Bad)
        .map(|e| e.commit)
        .collect();
    assert_eq!(bad, [c2]);
    // The next rollback moves the whole fleet one step, together.
    d.rollback(None).await.unwrap();
    for i in 0..2 {
        assert_eq!(f.live_commit(i).as_deref(), Some(c0.as_str()), "h{}", i + 1);
    }
}

/// A remote that, right before the command removing the lock is sent,
/// lets another deploy take the lock (a new owner file).
struct TakenMeanwhile {
    inner: Arc<dyn ec2kit::Remote>,
    lock: std::path::PathBuf,
    live_owner: String,
}

#[async_trait::async_trait]
impl ec2kit::Remote for TakenMeanwhile {
    fn host(&self) -> String {
        self.inner.host()
    }
    async fn run(&self, c: &ec2kit::Command) -> Result<ec2kit::Output, ec2kit::RemoteError> {
        let text = c.to_string();
        if text.contains("rm -rf") && text.contains("lock") && !text.contains("if mkdir") {
            std::fs::remove_dir_all(&self.lock).unwrap();
            std::fs::create_dir(&self.lock).unwrap();
            std::fs::write(self.lock.join("owner.json"), &self.live_owner).unwrap();
        }
        self.inner.run(c).await
    }
    async fn upload(&self, p: &str, b: &[u8], m: u32) -> Result<(), ec2kit::RemoteError> {
        self.inner.upload(p, b, m).await
    }
    async fn read_file(&self, p: &str) -> Result<Vec<u8>, ec2kit::RemoteError> {
        self.inner.read_file(p).await
    }
}

/// `unlock` judges a lock stale, then removes it only if it is still that
/// lock: a deploy that took the lock in between keeps it.
#[tokio::test]
async fn unlock_never_removes_a_lock_taken_after_it_was_judged() {
    let f = Fixture::new(1);
    let d = f.deployer(f.env(LayoutKind::Timestamped));
    let c = f.commit("x");
    d.deploy(&f.release(&c)).await.unwrap();
    let owner = |pid: u32, token: &str| {
        let mut actor = deploykit::Actor::current();
        actor.pid = pid;
        serde_json::json!({
            "actor": actor, "environment": "staging", "since": "2024-01-01T00:00:00Z",
            "action": "deploy", "message": null, "token": token
        })
        .to_string()
    };
    let lock = f.local(0, ".ektool/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join("owner.json"), owner(u32::MAX, "dead-run")).unwrap();
    let remote: Arc<dyn ec2kit::Remote> = Arc::new(TakenMeanwhile {
        inner: f.remotes[0].clone(),
        lock: lock.clone(),
        live_owner: owner(std::process::id(), "live-run"),
    });
    let racing = f.deployer_on(
        f.env(LayoutKind::Timestamped),
        vec![Host::new(remote, f.root()).named("h1")],
    );
    let out = racing.unlock(false).await.unwrap();
    assert!(
        out[0].lock.as_ref().unwrap().stale.is_some(),
        "judged stale"
    );
    assert!(!out[0].removed, "{out:?}");
    let left = std::fs::read_to_string(lock.join("owner.json")).unwrap();
    assert!(left.contains("live-run"), "the live lock is kept: {left}");
    // Judged again, it is live: only --force removes it.
    assert!(matches!(
        d.unlock(false).await,
        Err(DeployError::LockNotStale { .. })
    ));
    assert!(d.unlock(true).await.unwrap()[0].removed);
}

/// A repository URL with credentials in it is refused before any host is
/// touched, and the secret shows nowhere: not in the plan, the error, the
/// events, or on the hosts.
#[tokio::test]
async fn a_repository_url_with_credentials_is_refused_and_never_shown() {
    let f = Fixture::new(1);
    let mut env = f.env(LayoutKind::Timestamped);
    env.repository = None;
    let c = f.commit("x");
    let secret_url = "https://ci-token:S3CRET-T0KEN@git.example.com/acme/app.git";
    let d = f.deployer(env.clone()).repository(secret_url);
    let e = d.deploy_plan(&f.release(&c)).await.unwrap_err();
    assert!(matches!(e, DeployError::Invalid(_)), "{e}");
    let e = d.deploy(&f.release(&c)).await.unwrap_err().to_string();
    assert!(
        e.contains("credentials") && e.contains("***@git.example.com"),
        "{e}"
    );
    env.repository = Some(secret_url.to_owned());
    let e2 = f
        .deployer(env)
        .deploy(&f.release(&c))
        .await
        .unwrap_err()
        .to_string();
    let events = serde_json::to_string(&f.take_events()).unwrap();
    for text in [&e, &e2, &events] {
        assert!(!text.contains("S3CRET"), "{text}");
    }
    assert!(!f.local(0, "").exists(), "no host was touched");
}

/// A rollback or a restart waiting for another run's lock stops when its
/// cancellation token is cancelled (SIGINT in the CLI): nothing changes,
/// no lock of its own is left, the other run's lock is kept.
#[tokio::test]
async fn rollback_and_restart_waiting_for_a_lock_stop_when_cancelled() {
    let f = Fixture::new(2);
    let d = f.deployer(f.env(LayoutKind::Timestamped));
    let c1 = f.commit("one");
    d.deploy(&f.release(&c1)).await.unwrap();
    let c2 = f.commit("two");
    d.deploy(&f.release(&c2)).await.unwrap();
    let foreign = serde_json::json!({
        "actor": {"user": "alice", "machine": "laptop", "pid": 4242},
        "environment": "staging", "since": "2024-01-01T00:00:00Z",
        "action": "deploy", "message": null, "token": "alice-run"
    })
    .to_string();
    std::fs::create_dir_all(f.local(1, ".ektool/lock")).unwrap();
    std::fs::write(f.local(1, ".ektool/lock/owner.json"), &foreign).unwrap();
    for verb in ["rollback", "restart"] {
        let token = ec2kit::CancellationToken::new();
        let waiting = f
            .deployer(f.env(LayoutKind::Timestamped))
            .lock_wait(Duration::from_secs(600))
            .cancel_on(token.clone());
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel();
        };
        let run = async {
            match verb {
                "rollback" => waiting.rollback(None).await.map(|_| ()),
                _ => waiting.restart().await,
            }
        };
        let (result, ()) =
            tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, cancel) })
                .await
                .expect("it stopped waiting");
        assert!(
            matches!(
                result,
                Err(DeployError::Interrupted {
                    stage: Stage::Lock,
                    ..
                })
            ),
            "{verb}: {result:?}"
        );
        assert!(!f.local(0, ".ektool/lock").exists(), "{verb}: h1 unlocked");
        assert_eq!(
            std::fs::read_to_string(f.local(1, ".ektool/lock/owner.json")).unwrap(),
            foreign
        );
        for i in 0..2 {
            assert_eq!(f.live_commit(i).as_deref(), Some(c2.as_str()), "{verb}");
        }
    }
}

/// A canary, then batches: waves switch in order, the rest wait the
/// canary's time, and a failure in any wave puts every switched host back
/// (earlier waves too); a failing canary never lets the rest switch.
#[tokio::test]
async fn canary_and_batches_switch_in_waves_and_any_failure_puts_every_host_back() {
    let f = Fixture::new(3);
    let mut env = f.env(LayoutKind::Timestamped);
    let mut check = HealthCheck::command("test ! -e ../../shared/unhealthy");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    env.health = Some(check);
    env.hooks.restart = vec![Hook::new("date +%s%N >> ../../shared/restarted_at")];
    env.canary = 1;
    env.canary_wait = std::time::Duration::from_secs(1).into();
    env.batch = Some(deploykit::rollout::BatchSize::Hosts(1));
    let d = f.deployer(env);
    let c1 = f.commit("good");
    f.take_events();
    let good = d.deploy(&f.release(&c1)).await.unwrap().hosts[0]
        .release
        .clone();
    let waves: Vec<(usize, Vec<String>)> = f
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Wave { number, hosts, .. } => Some((number, hosts)),
            _ => None,
        })
        .collect();
    assert_eq!(
        waves,
        [
            (1, vec!["h1".to_owned()]),
            (2, vec!["h2".to_owned()]),
            (3, vec!["h3".to_owned()])
        ]
    );
    let restarted = |i: usize| -> u128 {
        let text = std::fs::read_to_string(f.local(i, "shared/restarted_at")).unwrap();
        text.lines().last().unwrap().trim().parse().unwrap()
    };
    let (t1, t2, t3) = (restarted(0), restarted(1), restarted(2));
    assert!(
        t2 >= t1 + 1_000_000_000,
        "the rest waited the canary's second: {t1} {t2}"
    );
    assert!(t3 > t2, "batches one after another: {t2} {t3}");

    // The last batch fails its health check: all three go back.
    std::fs::write(f.local(2, "shared/unhealthy"), "").unwrap();
    let c2 = f.commit("bad in the last batch");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    let DeployError::Failed {
        stage, rolled_back, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::Health);
    assert_eq!(rolled_back.len(), 3, "{err}");
    let switched = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Switched { .. }))
            .count()
    };
    assert_eq!(switched(&f.take_events()), 3, "every wave had switched");
    for i in 0..3 {
        assert_eq!(f.current(i).as_deref(), Some(good.as_str()), "h{}", i + 1);
    }

    // The canary fails: the other waves never switch.
    std::fs::remove_file(f.local(2, "shared/unhealthy")).unwrap();
    std::fs::write(f.local(0, "shared/unhealthy"), "").unwrap();
    let c3 = f.commit("bad on the canary");
    let err = d.deploy(&f.release(&c3)).await.unwrap_err();
    assert!(
        matches!(
            err,
            DeployError::Failed {
                stage: Stage::Health,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(switched(&f.take_events()), 1, "only the canary switched");
    for i in 0..3 {
        assert_eq!(f.current(i).as_deref(), Some(good.as_str()), "h{}", i + 1);
    }
}

/// A shared file missing on one host is found by the lock round: the
/// deploy fails before anything is fetched or built on any host.
#[tokio::test]
async fn a_missing_shared_file_fails_the_deploy_before_any_host_builds() {
    let f = Fixture::new(2);
    let mut env = f.env(LayoutKind::Timestamped);
    env.shared_files = vec![deploykit::environment::SharedPath::new("config/app.env").unwrap()];
    env.hooks.build = vec![Hook::new("echo \"$RELEASE\" >> ../../shared/built")];
    let d = f.deployer(env);
    // A first deploy lays the roots out; then the file goes missing on h2.
    for i in 0..2 {
        let p = f.local(i, "shared/config/app.env");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "KEY=1\n").unwrap();
    }
    let c1 = f.commit("first");
    d.deploy(&f.release(&c1)).await.unwrap();
    std::fs::remove_file(f.local(1, "shared/config/app.env")).unwrap();
    let built_before: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(f.local(i, "shared/built")).unwrap())
        .collect();
    let c2 = f.commit("second");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    let DeployError::Failed {
        stage, failures, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::Checkout, "{err}");
    assert_eq!(failures.len(), 1, "{err}");
    assert_eq!(failures[0].host, "h2");
    assert!(failures[0].error.contains("config/app.env"), "{err}");
    for (i, before) in built_before.iter().enumerate() {
        let now = std::fs::read_to_string(f.local(i, "shared/built")).unwrap();
        assert_eq!(&now, before, "h{} built nothing", i + 1);
    }
    std::fs::write(f.local(1, "shared/config/app.env"), "KEY=1\n").unwrap();
    d.deploy(&f.release(&c2)).await.unwrap();
}
