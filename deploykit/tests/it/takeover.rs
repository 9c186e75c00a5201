//! Hosts ektool did not lay out (Capistrano 3, buedafab, a hand-made
//! link), deploy roots owned by a less privileged user with links planted
//! in them, and release logs and markers with text that is not a commit.

use std::path::Path;
use std::sync::Arc;

use deploykit::environment::LayoutKind;
use deploykit::{DeployError, HealthCheck, Hook, Stage};

use crate::support::{Fixture, git};

/// Capistrano 3's deploy root, as `cap deploy` leaves it: `repo/` (a bare
/// mirror), `releases/<UTC stamp>` (checkouts with a `REVISION` file),
/// `current` an **absolute** link to the newest, `shared/`, and
/// `revisions.log`. Returns the release names, oldest first.
fn capistrano_root(f: &Fixture, i: usize, stamps: &[&str]) -> Vec<String> {
    let root = f.local(i, "");
    std::fs::create_dir_all(root.join("shared/log")).unwrap();
    git(
        &root,
        &[
            "clone",
            "--quiet",
            "--mirror",
            f.origin.to_str().unwrap(),
            "repo",
        ],
    );
    let mut log = String::new();
    for stamp in stamps {
        let rel = root.join("releases").join(stamp);
        std::fs::create_dir_all(&rel).unwrap();
        git(
            &root,
            &[
                "--git-dir=repo",
                &format!("--work-tree={}", rel.display()),
                "checkout",
                "--quiet",
                "-f",
                "main",
                "--",
                ".",
            ],
        );
        let sha = git(&root, &["--git-dir=repo", "rev-parse", "main"]);
        std::fs::write(rel.join("REVISION"), format!("{sha}\n")).unwrap();
        log.push_str(&format!(
            "Branch main (at {sha}) deployed as release {stamp} by deployer\n"
        ));
    }
    std::fs::write(root.join("revisions.log"), log).unwrap();
    let newest = stamps.last().unwrap();
    std::os::unix::fs::symlink(
        format!("{}/releases/{newest}", f.root()),
        root.join("current"),
    )
    .unwrap();
    stamps.iter().map(|s| (*s).to_owned()).collect()
}

fn tree_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
                out.push((rel, Vec::new()));
            } else if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    std::fs::read_link(&p).unwrap().display().to_string().into(),
                ));
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Two hosts taken over: h1 laid out by Capistrano 3 (absolute `current`,
/// releases without ektool's marker, plus a stray 14-digit directory that
/// is not a time), h2 with a hand-made relative link to a directory
/// outside `releases/`. A deploy whose health check fails puts back
/// exactly the link each had; then several good deploys with `keep = 2`
/// remove only ektool's own releases.
#[tokio::test]
async fn taking_over_capistrano_and_hand_made_hosts_puts_current_back_exactly_and_keeps_their_releases()
 {
    let f = Fixture::new(2);
    let stamps = capistrano_root(
        &f,
        0,
        &["20250101120000", "20250102120000", "20250103120000"],
    );
    std::fs::create_dir_all(f.local(0, "releases/99999999999999")).unwrap();
    std::fs::write(f.local(0, "releases/99999999999999/keep-me"), "x").unwrap();
    let legacy: Vec<_> = stamps
        .iter()
        .chain(std::iter::once(&"99999999999999".to_owned()))
        .map(|s| (s.clone(), tree_of(&f.local(0, &format!("releases/{s}")))))
        .collect();
    let cap_link = format!("{}/releases/{}", f.root(), stamps[2]);
    std::fs::create_dir_all(f.local(1, "app-v7")).unwrap();
    std::fs::write(f.local(1, "app-v7/index.html"), "v7").unwrap();
    std::os::unix::fs::symlink("app-v7", f.local(1, "current")).unwrap();

    let mut env = f.env(LayoutKind::Timestamped);
    env.keep = 2;
    env.hooks.restart = vec![Hook::new("pwd -P > \"$SHARED_PATH/restarted-in\"")];
    let mut check = HealthCheck::command("test -e ../../shared/healthy");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    env.health = Some(check);
    let d = f.deployer(env);

    let c2 = f.commit("ektool's first");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            DeployError::Failed {
                stage: Stage::Health,
                inconsistent,
                ..
            } if inconsistent.is_empty()
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_link(f.local(0, "current")).unwrap().to_str(),
        Some(cap_link.as_str()),
        "Capistrano's absolute link is back, exactly"
    );
    assert_eq!(
        std::fs::read_link(f.local(1, "current")).unwrap().to_str(),
        Some("app-v7"),
        "the hand-made relative link is back, exactly"
    );
    // The restart hooks ran in what is live again.
    let restarted = std::fs::read_to_string(f.local(1, "shared/restarted-in")).unwrap();
    assert!(restarted.trim().ends_with("/app-v7"), "{restarted}");

    // Good deploys now: the first leaves Capistrano's release as previous.
    std::fs::create_dir_all(f.local(0, "shared")).unwrap();
    for i in 0..2 {
        std::fs::write(f.local(i, "shared/healthy"), "").unwrap();
    }
    let mut ours = Vec::new();
    for n in 0..4 {
        let c = f.commit(&format!("good {n}"));
        let r = d.deploy(&f.release(&c)).await.unwrap();
        ours.push(r.hosts[0].release.clone());
        for i in 0..2 {
            assert_eq!(f.live_commit(i).as_deref(), Some(c.as_str()));
        }
    }
    for (name, tree) in &legacy {
        assert_eq!(
            &tree_of(&f.local(0, &format!("releases/{name}"))),
            tree,
            "releases/{name} (not ektool's) changed"
        );
    }
    assert!(f.local(0, "repo/HEAD").exists() && f.local(0, "revisions.log").exists());
    assert!(f.local(1, "app-v7/index.html").exists());
    let mut left: Vec<String> = std::fs::read_dir(f.local(0, "releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !stamps.contains(n) && n != "99999999999999")
        .collect();
    left.sort();
    assert_eq!(left, ours[2..].to_vec(), "keep = 2 of ektool's own");
    assert!(
        ours.iter()
            .all(|n| n.as_str() < "99999999999999" && n.len() == 14)
    );
}

/// buedafab keeps its live pointer in `releases/current` (slots `a` and
/// `b`, and no `current` in the root): an a/b deploy never rebuilds the
/// slot that link points at, a failed one removes only the `current` it
/// made, and `releases/current` is never touched.
#[tokio::test]
async fn taking_over_buedafab_never_touches_its_live_slot() {
    let f = Fixture::new(1);
    let root = f.local(0, "");
    std::fs::create_dir_all(root.join("releases")).unwrap();
    for slot in ["a", "b"] {
        git(
            &root.join("releases"),
            &["clone", "--quiet", f.origin.to_str().unwrap(), slot],
        );
    }
    let live_link = format!("{}/releases/a", f.root());
    std::os::unix::fs::symlink(&live_link, root.join("releases/current")).unwrap();
    let a_before = tree_of(&root.join("releases/a"));

    let mut env = f.env(LayoutKind::Ab);
    let mut check = HealthCheck::command("test -e ../../shared/healthy");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    env.health = Some(check);
    let d = f.deployer(env);
    let c = f.commit("ektool");
    let err = d.deploy(&f.release(&c)).await.unwrap_err();
    assert!(err.to_string().contains("health"), "{err}");
    assert!(
        std::fs::symlink_metadata(root.join("current")).is_err(),
        "the current this deploy made is gone again"
    );
    std::fs::write(f.local(0, "shared/healthy"), "").unwrap();
    let r = d.deploy(&f.release(&c)).await.unwrap();
    assert_eq!(
        r.hosts[0].release, "b",
        "built in the slot that is not live"
    );
    assert_eq!(f.live_commit(0).as_deref(), Some(c.as_str()));
    assert_eq!(
        std::fs::read_link(root.join("releases/current"))
            .unwrap()
            .to_str(),
        Some(live_link.as_str())
    );
    assert_eq!(
        tree_of(&root.join("releases/a")),
        a_before,
        "slot a untouched"
    );
}

/// The SSH user (root on the bench) is more privileged than the deploy
/// root's owner: links that owner plants must never redirect a write.
/// Each plant is refused with a message, and the file outside is
/// untouched.
#[tokio::test]
async fn links_planted_in_the_deploy_root_are_never_written_through() {
    use std::os::unix::fs::{chown, symlink};

    let f = Fixture::new(1);
    let d = f.deployer(f.env(LayoutKind::Timestamped));
    let c1 = f.commit("one");
    d.deploy(&f.release(&c1)).await.unwrap();
    let outside_dir = ektool_tests::tempdir();
    let outside = outside_dir.path().join("victim");
    let before = "root's own file\n";
    let app = 65534; // nobody: the application's user.
    chown(f.local(0, ""), Some(app), Some(app)).expect("the bench runs as root");
    chown(f.local(0, "shared"), Some(app), Some(app)).unwrap();
    let reset = || {
        std::fs::write(&outside, before).unwrap();
        std::fs::remove_file(outside_dir.path().join("lock")).ok();
    };
    let check = |what: &str, err: Option<String>| {
        let err = err.unwrap_or_else(|| panic!("{what}: not refused"));
        assert!(err.contains("refusing to write through"), "{what}: {err}");
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            before,
            "{what}: the file outside changed"
        );
        let entries = std::fs::read_dir(outside_dir.path()).unwrap().count();
        assert_eq!(entries, 1, "{what}: something was created outside");
    };
    let c2 = f.commit("two");
    let meta = f.local(0, ".ektool");
    let saved = f.local(0, ".ektool-saved");

    // The app user swaps `.ektool` for its own directory with a log link.
    reset();
    std::fs::rename(&meta, &saved).unwrap();
    std::fs::create_dir(&meta).unwrap();
    symlink(&outside, meta.join("releases.jsonl")).unwrap();
    chown(&meta, Some(app), Some(app)).unwrap();
    let r = d.deploy(&f.release(&c2)).await;
    check(".ektool of the app user", r.err().map(|e| e.to_string()));
    std::fs::remove_dir_all(&meta).unwrap();

    // `.ektool` itself a link to a directory elsewhere.
    reset();
    symlink(outside_dir.path(), &meta).unwrap();
    let r = d.deploy(&f.release(&c2)).await;
    check(".ektool -> elsewhere", r.err().map(|e| e.to_string()));
    std::fs::remove_file(&meta).unwrap();
    std::fs::rename(&saved, &meta).unwrap();

    // The log itself a link (in root's own .ektool).
    reset();
    let log = meta.join("releases.jsonl");
    std::fs::rename(&log, meta.join("log-saved")).unwrap();
    symlink(&outside, &log).unwrap();
    let r = d.deploy(&f.release(&c2)).await;
    check(
        "releases.jsonl -> elsewhere",
        r.err().map(|e| e.to_string()),
    );
    std::fs::remove_file(&log).unwrap();
    std::fs::rename(meta.join("log-saved"), &log).unwrap();

    // `releases/` swapped for a link.
    reset();
    let releases = f.local(0, "releases");
    std::fs::rename(&releases, f.local(0, "releases-saved")).unwrap();
    symlink(outside_dir.path(), &releases).unwrap();
    let r = d.deploy(&f.release(&c2)).await;
    check("releases -> elsewhere", r.err().map(|e| e.to_string()));
    std::fs::remove_file(&releases).unwrap();
    std::fs::rename(f.local(0, "releases-saved"), &releases).unwrap();

    // The maintenance flag (in the app user's shared/) a link: on and off.
    reset();
    symlink(&outside, f.local(0, "shared/maintenance")).unwrap();
    let r = d.maintenance(true).await;
    check("maintenance on", r.err().map(|e| e.to_string()));
    let r = d.maintenance(false).await;
    check("maintenance off", r.err().map(|e| e.to_string()));
    std::fs::remove_file(f.local(0, "shared/maintenance")).unwrap();

    // Nothing planted: the deploy works, as root, in the app's root.
    assert!(!f.local(0, ".ektool/lock").exists(), "no lock left behind");
    d.deploy(&f.release(&c2)).await.unwrap();
    assert_eq!(f.live_commit(0).as_deref(), Some(c2.as_str()));
    chown(f.local(0, ""), Some(0), Some(0)).unwrap();
}

/// A marker and a release-log line whose commit is not a commit id (here
/// multi-byte text, cut at byte 12 inside a character) are taken as
/// unfinished and cut: `releases`, `rollback` and a notified deploy do
/// not panic.
#[tokio::test]
async fn host_text_that_is_not_a_commit_never_panics() {
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);
    #[async_trait::async_trait]
    impl deploykit::Notifier for Recorder {
        async fn notify(
            &self,
            n: &deploykit::Notification,
        ) -> Result<(), deploykit::notify::NotifyError> {
            self.0.lock().unwrap().push(n.text());
            Ok(())
        }
    }

    let f = Fixture::new(1);
    let bad = format!("a{}", "é".repeat(20));
    let name = "20200101000000";
    let rel = f.local(0, &format!("releases/{name}"));
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(
        rel.join(".ektool-release"),
        serde_json::json!({"release": name, "commit": bad, "built_at": "2020-01-01T00:00:00Z"})
            .to_string(),
    )
    .unwrap();
    std::fs::create_dir_all(f.local(0, "releases/20200102000000")).unwrap();
    std::os::unix::fs::symlink(format!("releases/{name}"), f.local(0, "current")).unwrap();
    std::fs::create_dir_all(f.local(0, ".ektool")).unwrap();
    let line = |release: &str| {
        serde_json::json!({
            "at": "2020-01-01T00:00:00Z", "action": "deploy",
            "who": {"user": "x", "machine": "m", "pid": 1},
            "environment": "staging", "release": release, "commit": bad, "result": "success"
        })
        .to_string()
    };
    std::fs::write(
        f.local(0, ".ektool/releases.jsonl"),
        format!("{}\n{}\n", line("20200102000000"), line(name)),
    )
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let d = f
        .deployer(f.env(LayoutKind::Timestamped))
        .notifier(recorder.clone());
    let rows = d.releases().await.unwrap();
    assert!(rows[0].history.is_empty(), "{rows:?}");
    assert!(matches!(
        d.rollback(None).await,
        Err(DeployError::NothingToRollBack { .. })
    ));
    let c = f.commit("fine");
    d.deploy(&f.release(&c)).await.unwrap();
    assert!(recorder.0.lock().unwrap().iter().all(|t| !t.contains('é')));
}
