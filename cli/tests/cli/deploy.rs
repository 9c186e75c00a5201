//! `ektool deploy`, `rollback`, `releases`, `maintenance`, `restart` against
//! the bench's sshd hosts and a real git origin.

use std::path::PathBuf;

use ektool_tests::{SshHost, git, ssh_host, tempdir, unique};

use crate::harness::Ektool;

/// An origin, a clone with an `ektool.toml`, two sshd hosts.
pub(crate) struct App {
    _dir: tempfile::TempDir,
    pub(crate) work: PathBuf,
    pub(crate) name: String,
    pub(crate) hosts: Vec<SshHost>,
}

impl App {
    /// Environment `staging` with an A/B layout, a build hook, a restart
    /// hook and a health check; `extra` appended to it.
    fn new(extra: &str) -> Self {
        Self::with_environment(
            "cli-deploy",
            &format!(
                r#"layout = "ab"
shared_dirs = ["log"]
hooks.build = [{{ run = "echo \"$RELEASE $COMMIT\" > built.txt" }}]
hooks.restart = [{{ run = "echo \"$DEPLOY_ACTION $RELEASE\" >> ../../shared/restarts" }}]
health = {{ command = "test -f built.txt", deadline_seconds = 5 }}
{extra}"#
            ),
        )
    }

    /// Environment `staging` on two sshd hosts under a deploy root named
    /// after `label`, `body` the rest of its section; one commit pushed,
    /// nothing deployed.
    pub(crate) fn with_environment(label: &str, body: &str) -> Self {
        let dir = tempdir();
        let work = ektool_tests::origin_and_clone(dir.path());
        let hosts = vec![ssh_host(1), ssh_host(2)];
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            hosts
                .iter()
                .map(|h| h.known_hosts_line() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        let name = unique(label);
        let config = format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.staging]
hosts = [{hosts}]
path = "{mount}/{name}"
{body}
"#,
            kh = kh.display(),
            key = hosts[0].client_key.display(),
            hosts = hosts
                .iter()
                .map(|h| format!("\"{}\"", h.target()))
                .collect::<Vec<_>>()
                .join(", "),
            mount = SshHost::MOUNT,
        );
        std::fs::write(work.join("ektool.toml"), config).unwrap();
        std::fs::write(work.join(".gitignore"), "ektool.toml\n").unwrap();
        let app = Self {
            _dir: dir,
            work,
            name,
            hosts,
        };
        app.commit("v1");
        app
    }

    pub(crate) fn commit(&self, content: &str) -> String {
        std::fs::write(self.work.join("app.txt"), format!("{content}\n")).unwrap();
        git(&self.work, &["add", "app.txt", ".gitignore"]);
        git(&self.work, &["commit", "--quiet", "-m", content]);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub(crate) fn ektool(&self) -> Ektool {
        Ektool::new().current_dir(&self.work)
    }

    pub(crate) fn local(&self, i: usize, rel: &str) -> PathBuf {
        self.hosts[i].local_path(&format!("{}/{rel}", self.name))
    }

    fn live(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.local(i, "current/REVISION"))
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            let _ = std::fs::remove_dir_all(self.local(i, ""));
        }
    }
}

#[test]
fn deploy_releases_rollback_end_to_end() {
    let app = App::new("");
    let c1 = app.commit("one");

    // Dry run: the plan, and nothing on the hosts.
    app.ektool()
        .args(&["--dry-run", "deploy"])
        .run()
        .success()
        .stdout_has("build a (in place)")
        .stdout_has("current -> releases/a")
        .stdout_has("dry run: nothing was changed");
    let out = app
        .ektool()
        .args(&["--dry-run", "--output", "json", "deploy"])
        .run()
        .success();
    let text = out
        .stdout
        .replace(&c1, "<commit>")
        .replace(&c1[..12], "<short>")
        .replace(&app.hosts[0].target(), "<h1>")
        .replace(&app.hosts[1].target(), "<h2>")
        .replace(&app.name, "<name>")
        .replace(&app.work.parent().unwrap().display().to_string(), "<tmp>");
    let mut plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Hosts come in the order of their names, which holds random ports.
    plan["hosts"]
        .as_array_mut()
        .unwrap()
        .sort_by_key(|h| h["host"].as_str().unwrap_or_default().to_owned());
    // So do the hosts within a wave (the order of waves is kept).
    for wave in plan["waves"].as_array_mut().unwrap() {
        wave.as_array_mut()
            .unwrap()
            .sort_by_key(|h| h.as_str().unwrap_or_default().to_owned());
    }
    // The measured clock skews vary from run to run.
    for h in plan["hosts"].as_array_mut().unwrap() {
        assert!(h["clock_skew_ms"].is_i64(), "{h}");
        h.as_object_mut().unwrap().remove("clock_skew_ms");
    }
    insta::assert_json_snapshot!("deploy_dry_run_first", plan);
    assert!(!app.local(0, "").exists());

    // Deploy, streaming JSON events.
    let out = app
        .ektool()
        .args(&["--output", "json", "deploy", "-m", "first"])
        .run()
        .success();
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().any(|e| e["event"] == "switched"));
    assert!(lines.iter().any(|e| e["event"] == "healthy"));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "deployed");
    assert_eq!(last["report"]["release"]["commit"], c1.as_str());
    assert_eq!(app.live(0).as_deref(), Some(c1.as_str()));
    assert_eq!(app.live(1).as_deref(), Some(c1.as_str()));

    let c2 = app.commit("two");
    app.ektool()
        .arg("deploy")
        .run()
        .success()
        .stdout_has("is live on 2 hosts");
    assert_eq!(app.live(1).as_deref(), Some(c2.as_str()));

    let out = app.ektool().arg("releases").run().success();
    let current_line = out.stdout.lines().find(|l| l.contains(&c2[..12])).unwrap();
    assert!(current_line.contains("current"), "{}", out.stdout);

    app.ektool()
        .args(&["--dry-run", "rollback"])
        .run()
        .success()
        .stdout_has("dry run");
    assert_eq!(app.live(0).as_deref(), Some(c2.as_str()));
    app.ektool().arg("rollback").run().success();
    assert_eq!(app.live(0).as_deref(), Some(c1.as_str()));
    assert_eq!(app.live(1).as_deref(), Some(c1.as_str()));
    let json = app
        .ektool()
        .args(&["--output", "json", "releases"])
        .run()
        .success()
        .json();
    let rows = json[0]["history"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["commit"] == c2.as_str() && r["bad"] == true)
    );
    let restarts = std::fs::read_to_string(app.local(1, "shared/restarts")).unwrap();
    assert_eq!(restarts, "deploy a\ndeploy b\nrollback a\n");

    // --host narrows; restart and maintenance run on the live release.
    app.ektool()
        .args(&["restart", "--host", &app.hosts[0].target()])
        .run()
        .success();
    assert!(
        std::fs::read_to_string(app.local(0, "shared/restarts"))
            .unwrap()
            .ends_with("restart a\n")
    );
    assert!(
        std::fs::read_to_string(app.local(1, "shared/restarts"))
            .unwrap()
            .ends_with("rollback a\n")
    );
    app.ektool().args(&["maintenance", "on"]).run().success();
    assert!(app.local(1, "shared/maintenance").exists());
    app.ektool().args(&["maintenance", "off"]).run().success();
    assert!(!app.local(1, "shared/maintenance").exists());
    app.ektool()
        .args(&["deploy", "--host", "nope"])
        .run()
        .code(2)
        .stderr_has("not a host of this environment");
}

#[test]
fn refusals_happen_before_any_host_is_touched() {
    let app = App::new(
        r#"
[environments.production]
hosts = ["localhost"]
path = "/nonexistent/ektool-never"
require_tag = true
"#,
    );
    app.ektool()
        .args(&["deploy", "--env", "production", "--ref", "main"])
        .run()
        .code(2)
        .stderr_has("deploys only release tags");
    // An unpushed commit.
    std::fs::write(app.work.join("app.txt"), "local\n").unwrap();
    git(&app.work, &["commit", "--quiet", "-am", "local"]);
    app.ektool()
        .args(&["deploy", "--env", "staging", "--ref", "HEAD"])
        .run()
        .code(1)
        .stderr_has("is not on origin");
    // A dirty tree when deploying HEAD.
    std::fs::write(app.work.join("app.txt"), "dirty\n").unwrap();
    app.ektool()
        .args(&["deploy", "--env", "staging", "--ref", "HEAD"])
        .run()
        .code(1)
        .stderr_has("uncommitted changes");
    app.ektool()
        .args(&["deploy", "--env", "staging", "--ref", "no-such-ref"])
        .run()
        .code(2);
    assert!(!app.local(0, "").exists());
    assert!(!app.local(1, "").exists());
    // More than one environment: --env is required.
    app.ektool().arg("deploy").run().code(2).stderr_has("--env");
}

#[test]
fn tag_next_patch_tags_pushes_and_deploys_it() {
    let app = App::new("require_tag = true");
    git(&app.work, &["tag", "-a", "-m", "v1.4.9", "v1.4.9"]);
    git(&app.work, &["push", "--quiet", "origin", "v1.4.9"]);
    let c = app.commit("fix");
    app.ektool()
        .args(&["--dry-run", "deploy", "--tag", "next-patch"])
        .run()
        .success()
        .stdout_has("would tag");
    assert_eq!(git(&app.work, &["tag", "--list", "v1.4.10"]), "");
    app.ektool()
        .args(&["deploy", "--tag", "next-patch"])
        .run()
        .success()
        .stdout_has("v1.4.10");
    let remote = git(&app.work, &["ls-remote", "--tags", "origin", "v1.4.10^{}"]);
    assert!(remote.starts_with(&c), "{remote}");
    assert_eq!(app.live(0).as_deref(), Some(c.as_str()));
}

#[test]
fn a_held_lock_stops_a_deploy_and_unlock_needs_force() {
    let app = App::new("");
    app.ektool().arg("deploy").run().success();
    let owner = serde_json::json!({
        "actor": {"user": "alice", "machine": "laptop", "pid": 4242},
        "environment": "staging", "since": "2024-01-01T00:00:00Z",
        "action": "deploy v2.0.0", "message": "big one", "token": "x"
    });
    std::fs::create_dir_all(app.local(1, ".ektool/lock")).unwrap();
    std::fs::write(app.local(1, ".ektool/lock/owner.json"), owner.to_string()).unwrap();
    // Fresh by the host's clock (mtime now), another machine: not stale.
    app.ektool()
        .arg("deploy")
        .run()
        .code(1)
        .stderr_has("is locked by alice@laptop")
        .stderr_has("big one");
    app.ektool()
        .args(&["deploy", "unlock"])
        .run()
        .code(1)
        .stderr_has("--force");
    app.ektool()
        .args(&["deploy", "unlock", "--force"])
        .run()
        .success();
    app.ektool().arg("deploy").run().success();
}

/// Hosts found by EC2 tag (through ec2kit, against moto): the running
/// instances carrying the tag, at the address and port the environment
/// names; a terminated one and one with another tag are left out. moto
/// gives the instance the bench host's address, so the deploy is real.
#[tokio::test]
async fn hosts_found_by_ec2_tag_are_deployed_to() {
    use ec2kit::{Ec2, Region, Tags};

    let role = unique("web");
    let tagged = |role: &str| Tags::from_iter([("Role".to_owned(), role.to_owned())]);
    crate::moto::launch_at("us-gov-west-1", "127.0.0.1", tagged(&role)).await;
    let gone = crate::moto::launch_at("us-gov-west-1", "127.0.0.2", tagged(&role)).await;
    crate::moto::ec2()
        .await
        .terminate_instances(&Region::new("us-gov-west-1"), &[gone.id], false)
        .await
        .unwrap();
    crate::moto::launch_at("us-gov-west-1", "127.0.0.3", tagged("other")).await;

    let app = App::new("");
    let fleet = unique("cli-fleet");
    let config = std::fs::read_to_string(app.work.join("ektool.toml")).unwrap()
        + &format!(
            "\n[environments.fleet]\npath = \"{mount}/{fleet}\"\nec2 = {{ tag = \"Role={role}\", region = \"us-gov-west-1\", user = \"root\", port = {port} }}\n",
            mount = SshHost::MOUNT,
            port = app.hosts[0].port,
        );
    std::fs::write(app.work.join("ektool.toml"), config).unwrap();
    let c = app.commit("fleet");

    let out = Ektool::moto()
        .current_dir(&app.work)
        .args(&["--dry-run", "--output", "json", "deploy", "--env", "fleet"])
        .run()
        .success();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let hosts: Vec<&str> = plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, [app.hosts[0].target()], "{}", out.stdout);

    let dir = tempdir();
    let actions = dir.path().join("actions");
    Ektool::moto()
        .current_dir(&app.work)
        .env("EKTOOL_RECORD_ACTIONS", actions.to_str().unwrap())
        .args(&["deploy", "--env", "fleet"])
        .run()
        .success()
        .stdout_has("is live on 1 host");
    let local = app.hosts[0].local_path(&fleet);
    let live = std::fs::read_to_string(local.join("current/REVISION"));
    let _ = std::fs::remove_dir_all(&local);
    assert_eq!(live.unwrap().trim(), c);
    // What `ektool iam-policy deploy` lists for hosts by EC2 tag.
    assert_eq!(
        crate::harness::recorded_actions(&actions)
            .into_iter()
            .collect::<Vec<_>>(),
        ["ec2:DescribeInstances", "ec2:DescribeRegions"]
    );
}

/// Hosts from a load balancer's target group (moto's ELBv2; moto gives
/// the instance the bench host's address, so the deploy is real): the plan
/// shows the load balancer steps (human and JSON), the deploy drains the
/// host while it switches and leaves it registered, and it calls exactly
/// what `ektool iam-policy deploy` lists for hosts from an instance target
/// group behind a load balancer.
#[tokio::test]
async fn hosts_from_a_target_group_are_drained_while_they_switch() {
    use ec2kit::{Tags, TargetGroups, TargetState};

    let region = "ca-central-1";
    let instance = crate::moto::launch_at(region, "127.0.0.1", Tags::new()).await;
    let group = ektool_tests::moto_instance_group(region, &[instance.id.to_string()], 0);
    let app = App::new("");
    let root = unique("cli-lb");
    let config = std::fs::read_to_string(app.work.join("ektool.toml")).unwrap()
        + &format!(
            "\n[environments.lb]\npath = \"{mount}/{root}\"\n\n[environments.lb.load_balancer]\ntarget_group_arn = \"{arn}\"\nhosts = {{ user = \"root\", port = {port} }}\n",
            mount = SshHost::MOUNT,
            arn = group.arn,
            port = app.hosts[0].port,
        );
    std::fs::write(app.work.join("ektool.toml"), config).unwrap();
    let c = app.commit("behind the balancer");
    let host = format!("root@127.0.0.1:{}", app.hosts[0].port);

    let out = Ektool::moto()
        .current_dir(&app.work)
        .args(&["--dry-run", "--output", "json", "deploy", "--env", "lb"])
        .run()
        .success();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let lb = &plan["load_balancer"];
    assert_eq!(lb["target_group_arn"], group.arn.as_str(), "{}", out.stdout);
    assert_eq!(lb["target_type"], "instance");
    assert_eq!(
        lb["targets"][&host],
        serde_json::json!([format!("{}:80", instance.id)]),
        "{}",
        out.stdout
    );
    Ektool::moto()
        .current_dir(&app.work)
        .args(&["--dry-run", "deploy", "--env", "lb"])
        .run()
        .success()
        .stdout_has(&format!("load balancer: target group {}", group.arn))
        .stdout_has(&format!("{host}: target {}:80", instance.id));

    let dir = tempdir();
    let actions = dir.path().join("actions");
    Ektool::moto()
        .current_dir(&app.work)
        .env("EKTOOL_RECORD_ACTIONS", actions.to_str().unwrap())
        .args(&["deploy", "--env", "lb", "--drain-timeout", "10s"])
        .run()
        .success()
        .stderr_has("load balancer: deregistered")
        // Its only host: the wave empties the group, and says so.
        .stderr_has("this wave takes every target out of target group")
        .stderr_has("healthy in the target group")
        .stdout_has("is live on 1 host");
    let local = app.hosts[0].local_path(&root);
    let live = std::fs::read_to_string(local.join("current/REVISION"));
    let _ = std::fs::remove_dir_all(&local);
    assert_eq!(live.unwrap().trim(), c);
    let health = crate::moto::ec2()
        .await
        .target_health(&group.arn, &[])
        .await
        .unwrap();
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].state, TargetState::Healthy);

    // What `ektool iam-policy deploy` lists for these choices.
    let listed = crate::iam::Policies::load().of_flags(
        "deploy",
        &[
            "hosts from a target group",
            "a load balancer",
            "an instance target group",
        ],
    );
    assert_eq!(crate::harness::recorded_actions(&actions), listed);
}

#[test]
fn localhost_deploys_through_the_local_shell() {
    let dir = tempdir();
    let app = App::new("");
    let root = dir.path().join("local-root");
    let config = std::fs::read_to_string(app.work.join("ektool.toml")).unwrap()
        + &format!(
            "\n[environments.dev]\nhosts = [\"localhost\"]\npath = \"{}\"\nlayout = \"timestamped\"\n",
            root.display()
        );
    std::fs::write(app.work.join("ektool.toml"), config).unwrap();
    let c = app.commit("local");
    app.ektool()
        .args(&["deploy", "--env", "dev"])
        .run()
        .success();
    let link = std::fs::read_link(root.join("current")).unwrap();
    assert!(link.to_str().unwrap().starts_with("releases/2"), "{link:?}");
    assert_eq!(
        std::fs::read_to_string(root.join("current/REVISION"))
            .unwrap()
            .trim(),
        c
    );
}

#[test]
fn bad_environment_config_is_located() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[environments.staging]\nhosts = [\"localhost\"]\npath = \"/srv/app\"\nlayuot = \"ab\"\n",
    )
    .unwrap();
    Ektool::new()
        .current_dir(dir.path())
        .arg("releases")
        .run()
        .code(2)
        .stderr_has("ektool.toml:4:1")
        .stderr_has("layuot");
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[environments.staging]\nhosts = []\npath = \"relative/path\"\n",
    )
    .unwrap();
    Ektool::new()
        .current_dir(dir.path())
        .arg("releases")
        .run()
        .code(2)
        .stderr_has("must be absolute");
}

/// `--lock-wait` takes a duration with a unit; a bare number is refused
/// with a hint (it used to mean seconds here and minutes elsewhere).
#[test]
fn lock_wait_is_a_duration_with_a_unit() {
    let app = App::new("");
    for verb in [
        &["deploy", "--lock-wait", "30"][..],
        &["rollback", "--lock-wait", "30"],
        &["restart", "--lock-wait", "30"],
        &["maintenance", "on", "--lock-wait", "30"],
    ] {
        app.ektool().args(verb).run().code(2).stderr_has("30s");
    }
    app.ektool()
        .args(&["deploy", "--lock-wait", "2d"])
        .run()
        .code(2)
        .stderr_has("out of range");
    app.ektool()
        .args(&["deploy", "--lock-wait", "5s"])
        .run()
        .success();
}

/// Every file, directory and link under `dir`: kind, target or content,
/// and modification time (a rewrite with the same content shows).
fn snapshot(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        out.push(format!(
            "{} dir {}.{}",
            d.display(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.push(format!(
                    "{} -> {}",
                    p.display(),
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else {
                out.push(format!(
                    "{} {:?} {}.{}",
                    p.display(),
                    std::fs::read(&p).unwrap(),
                    m.mtime(),
                    m.mtime_nsec()
                ));
            }
        }
    }
    out.sort();
    out
}

/// `--dry-run` of every deploy verb changes nothing on the hosts (the
/// deploy roots are compared file by file, times included), and `deploy
/// unlock --dry-run` shows what it would remove.
#[test]
fn dry_runs_of_every_deploy_verb_change_nothing_on_the_hosts() {
    let app = App::new("");
    app.commit("one");
    app.ektool().arg("deploy").run().success();
    app.commit("two");
    app.ektool().arg("deploy").run().success();
    app.commit("three");
    // A lock left by a process of this machine that is gone (stale).
    let mut actor = deploykit::Actor::current();
    actor.pid = u32::MAX;
    let owner = serde_json::json!({
        "actor": actor, "environment": "staging", "since": "2024-01-01T00:00:00Z",
        "action": "deploy", "message": null, "token": "dead"
    });
    std::fs::create_dir_all(app.local(1, ".ektool/lock")).unwrap();
    std::fs::write(app.local(1, ".ektool/lock/owner.json"), owner.to_string()).unwrap();
    let before: Vec<_> = (0..2).map(|i| snapshot(&app.local(i, ""))).collect();
    for verb in [
        &["deploy"][..],
        &["rollback"],
        &["releases"],
        &["maintenance", "on"],
        &["maintenance", "off"],
        &["restart"],
        &["deploy", "unlock", "--force"],
    ] {
        let mut args = vec!["--dry-run"];
        args.extend_from_slice(verb);
        app.ektool().args(&args).run().success();
    }
    let out = app
        .ektool()
        .args(&["--dry-run", "deploy", "unlock"])
        .run()
        .success()
        .stdout_has("WOULD REMOVE")
        .stdout_has("dry run: nothing was changed");
    assert!(out.stdout.contains("is gone"), "{}", out.stdout);
    let json = app
        .ektool()
        .args(&["--dry-run", "--output", "json", "deploy", "unlock"])
        .run()
        .success()
        .json();
    let of = |i: usize| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|o| o["host"] == app.hosts[i].target().as_str())
            .unwrap()
            .clone()
    };
    assert_eq!(of(1)["removed"], true, "{json}");
    assert_eq!(of(0)["removed"], false, "{json}");
    let after: Vec<_> = (0..2).map(|i| snapshot(&app.local(i, ""))).collect();
    assert_eq!(before, after);
    app.ektool().args(&["deploy", "unlock"]).run().success();
    assert!(!app.local(1, ".ektool/lock").exists());
}

/// A release log line written on a host with text that is not a commit
/// (multi-byte, cut at byte 12 inside a character) is skipped: `releases`
/// and `rollback` do not panic.
#[test]
fn host_text_that_is_not_a_commit_never_panics_the_cli() {
    let app = App::new("");
    app.ektool().arg("deploy").run().success();
    let line = serde_json::json!({
        "at": "2020-01-01T00:00:00Z", "action": "deploy",
        "who": {"user": "x", "machine": "m", "pid": 1},
        "environment": "staging", "release": "b",
        "commit": format!("a{}", "é".repeat(20)), "result": "success"
    });
    let log = app.local(0, ".ektool/releases.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str(&format!("{line}\n"));
    std::fs::write(&log, text).unwrap();
    app.ektool().arg("releases").run().success();
    app.ektool()
        .args(&["--dry-run", "rollback"])
        .run()
        .code(1)
        .stderr_has("no earlier complete release");
}

/// A repository URL with credentials in the config is refused where it
/// is written (exit 2, file and line), and the secret is not echoed.
#[test]
fn credentials_in_the_repository_url_are_refused_without_showing_them() {
    let app = App::new("repository = \"https://ci:S3CRET@git.example.com/app.git\"");
    let out = app
        .ektool()
        .args(&["--dry-run", "deploy"])
        .run()
        .code(2)
        .stderr_has("ektool.toml:")
        .stderr_has("credentials")
        .stderr_has("git_ssh_key");
    assert!(!out.stderr.contains("S3CRET") && !out.stdout.contains("S3CRET"));
    assert!(!app.local(0, "").exists());
}

/// A git server that accepts connections and never answers: the fetch
/// fails at its deadline on every host, the deploy exits 1 with every
/// host unlocked and `current` untouched, and a rerun with a working
/// server deploys.
#[test]
fn a_git_server_that_never_answers_fails_the_fetch_within_its_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s); // accepted, never answered
        }
    });
    let app = App::new(&format!(
        "repository = \"git://127.0.0.1:{port}/app.git\"\ntimeouts = {{ fetch = \"2s\", checkout = \"2s\" }}"
    ));
    let c1 = app.commit("one");
    let mut run = Running::start(&app, &["deploy"]);
    assert_eq!(run.exit(), Some(1), "the deploy fails, within a minute");
    let events: Vec<serde_json::Value> = run.events.iter().collect();
    assert!(
        events.iter().any(|e| e["event"] == "host_failed"
            && e["stage"] == "fetch"
            && e["error"]
                .as_str()
                .unwrap_or_default()
                .contains("timed out")),
        "{events:?}"
    );
    for i in 0..2 {
        assert!(
            !app.local(i, ".ektool/lock").exists(),
            "h{} unlocked",
            i + 1
        );
        assert!(std::fs::symlink_metadata(app.local(i, "current")).is_err());
    }
    let config = std::fs::read_to_string(app.work.join("ektool.toml")).unwrap();
    let origin = app.work.parent().unwrap().join("origin.git");
    std::fs::write(
        app.work.join("ektool.toml"),
        config.replace(
            &format!("git://127.0.0.1:{port}/app.git"),
            &origin.display().to_string(),
        ),
    )
    .unwrap();
    app.ektool().arg("deploy").run().success();
    assert_eq!(app.live(1).as_deref(), Some(c1.as_str()));
}

/// `ektool` running in the background, its JSON events read as they come.
struct Running {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Running {
    fn start(app: &App, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ektool"))
            .args(["--output", "json"])
            .args(args)
            .current_dir(&app.work)
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env_remove("EKTOOL_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Self { child, events }
    }

    /// Waits for an event of this kind.
    fn wait_for(&self, kind: &str) {
        loop {
            let e = self
                .events
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {kind} event"));
            if e["event"] == kind {
                return;
            }
        }
    }

    fn signal(&mut self, sig: &str) -> Option<i32> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.exit()
    }

    /// Its exit code; a run still going after a minute is killed and the
    /// test fails (it would otherwise hang the suite).
    fn exit(&mut self) -> Option<i32> {
        let t = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if t.elapsed() > std::time::Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("ektool did not end within a minute");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn wait_for_file(path: &std::path::Path) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// SIGINT or SIGTERM during a deploy (waiting for the lock, preparing,
/// after the switch) takes the failure path: every host is back on its
/// release, no lock is left, the log says what happened, and the exit
/// code is 130 or 143.
#[test]
fn signals_at_every_phase_leave_the_fleet_on_its_release_and_unlocked() {
    let app = App::new(
        "hooks.after_switch = [{ run = \"[ ! -e ../../shared/slow-after ] || { touch ../../shared/after-switch; sleep 3; }\" }]",
    );
    let c1 = app.commit("one");
    app.ektool().arg("deploy").run().success();
    let unlocked = |phase: &str| {
        for i in 0..2 {
            assert!(
                !app.local(i, ".ektool/lock").exists(),
                "{phase}: h{} locked",
                i + 1
            );
            assert_eq!(
                app.live(i).as_deref(),
                Some(c1.as_str()),
                "{phase}: h{}",
                i + 1
            );
        }
    };

    // Waiting for another deploy's lock (on the second host).
    let foreign = serde_json::json!({
        "actor": {"user": "alice", "machine": "laptop", "pid": 4242},
        "environment": "staging", "since": "2024-01-01T00:00:00Z",
        "action": "deploy", "message": null, "token": "alice-run"
    })
    .to_string();
    std::fs::create_dir_all(app.local(1, ".ektool/lock")).unwrap();
    std::fs::write(app.local(1, ".ektool/lock/owner.json"), &foreign).unwrap();
    app.commit("two");
    let mut run = Running::start(&app, &["deploy", "--lock-wait", "5m"]);
    run.wait_for("lock_waiting");
    assert_eq!(run.signal("INT"), Some(130));
    assert_eq!(
        std::fs::read_to_string(app.local(1, ".ektool/lock/owner.json")).unwrap(),
        foreign,
        "the other deploy's lock is kept"
    );
    std::fs::remove_dir_all(app.local(1, ".ektool/lock")).unwrap();
    unlocked("lock");

    // While the release is being built.
    let config = std::fs::read_to_string(app.work.join("ektool.toml")).unwrap();
    std::fs::write(
        app.work.join("ektool.toml"),
        config.replace(
            "hooks.build = [{ run = \"echo \\\"$RELEASE $COMMIT\\\" > built.txt\" }]",
            "hooks.build = [{ run = \"echo \\\"$RELEASE $COMMIT\\\" > built.txt; touch ../../shared/building; sleep 2\" }]",
        ),
    )
    .unwrap();
    let mut run = Running::start(&app, &["deploy"]);
    wait_for_file(&app.local(0, "shared/building"));
    assert_eq!(run.signal("INT"), Some(130));
    unlocked("prepare");
    let last = |i: usize| {
        let log = std::fs::read_to_string(app.local(i, ".ektool/releases.jsonl")).unwrap();
        serde_json::from_str::<serde_json::Value>(log.lines().last().unwrap()).unwrap()
    };
    for i in 0..2 {
        let e = last(i);
        assert_eq!(e["result"], "failed", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("interrupted"),
            "{e}"
        );
    }

    // After the switch, during the after-switch hooks.
    std::fs::write(app.local(0, "shared/slow-after"), "").unwrap();
    let mut run = Running::start(&app, &["deploy"]);
    wait_for_file(&app.local(0, "shared/after-switch"));
    assert_eq!(run.signal("TERM"), Some(143));
    unlocked("after switch");
    for i in 0..2 {
        assert_eq!(last(i)["result"], "rolled_back", "h{}", i + 1);
    }
    std::fs::remove_file(app.local(0, "shared/slow-after")).unwrap();
    app.ektool().arg("deploy").run().success();
}

/// A second signal does not wait for the failure path: while a build hook
/// still runs (the first signal waits for it, as it must to switch hosts
/// back safely), a second SIGINT exits at once with 130. Nothing was
/// switched, and what it left (the lock of a process that is gone) is
/// judged stale, so `deploy unlock` and a rerun finish the job.
#[test]
fn a_second_signal_exits_at_once_and_a_rerun_finishes_the_job() {
    let app = App::new("");
    let c1 = app.commit("one");
    app.ektool().arg("deploy").run().success();
    let toml = app.work.join("ektool.toml");
    let config = std::fs::read_to_string(&toml).unwrap();
    let quick = "hooks.build = [{ run = \"echo \\\"$RELEASE $COMMIT\\\" > built.txt\" }]";
    assert!(config.contains(quick), "{config}");
    std::fs::write(
        &toml,
        config.replace(
            quick,
            "hooks.build = [{ run = \"touch ../../shared/building; sleep 15; touch ../../shared/built\" }]",
        ),
    )
    .unwrap();
    let c2 = app.commit("two");
    let mut run = Running::start(&app, &["deploy"]);
    wait_for_file(&app.local(0, "shared/building"));
    let kill = |sig: &str, pid: u32| {
        assert!(
            std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap()
                .success()
        );
    };
    kill("INT", run.child.id());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "the first signal waits for the running hook"
    );
    assert_eq!(run.signal("INT"), Some(130));
    assert!(
        !app.local(0, "shared/built").exists(),
        "ektool exited before the hook ended"
    );
    for i in 0..2 {
        assert_eq!(app.live(i).as_deref(), Some(c1.as_str()), "h{}", i + 1);
    }

    std::fs::write(&toml, &config).unwrap();
    app.ektool().arg("deploy").run().code(1).stderr_has("stale");
    app.ektool().args(&["deploy", "unlock"]).run().success();
    app.ektool().arg("deploy").run().success();
    for i in 0..2 {
        assert_eq!(app.live(i).as_deref(), Some(c2.as_str()), "h{}", i + 1);
    }
}

/// An environment without its own `notify` posts to the top-level
/// `[notify]` webhook.
#[test]
fn deploys_fall_back_to_the_top_level_notify() {
    let app = App::new("");
    let server = crate::harness::Recorder::start();
    let config = std::fs::read_to_string(app.work.join("ektool.toml")).unwrap()
        + "\n[notify]\nwebhook_url_env = \"EKTOOL_TEST_HOOK\"\n";
    std::fs::write(app.work.join("ektool.toml"), config).unwrap();
    app.ektool()
        .env("EKTOOL_TEST_HOOK", &server.url("/hook"))
        .args(&["deploy"])
        .run()
        .success();
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(
        requests[0].starts_with("POST /hook ") && requests[0].contains(" is deploying "),
        "{requests:#?}"
    );
    assert!(requests[1].contains(" deployed "), "{requests:#?}");
}

/// `ektool run --env E -- CMD`: the command runs in the live release of
/// every host with the hook variables, output prefixed by host; a host
/// without a release or where it fails makes exit 1 and is named.
#[test]
fn a_command_runs_in_the_live_release_of_every_host() {
    let app = App::new("");
    app.ektool()
        .args(&["run", "--env", "staging", "--", "true"])
        .run()
        .code(1)
        .stderr_has("no live release");
    let commit = app.commit("v2");
    app.ektool()
        .args(&["deploy", "--env", "staging"])
        .run()
        .success();
    let script =
        "echo \"$ENVIRONMENT $RELEASE $(cat REVISION) $DEPLOY_ACTION\"; echo to-stderr >&2";
    let out = app
        .ektool()
        .args(&["run", "--env", "staging", "--", "sh", "-c", script])
        .run()
        .success();
    // What docs/deploys.md shows.
    println!("{}{}", out.stdout, out.stderr);
    let want = format!(" | staging a {commit} run");
    let lines: Vec<&str> = out.stdout.lines().filter(|l| l.ends_with(&want)).collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_ne!(
        lines[0], lines[1],
        "one line per host, each prefixed by its host"
    );
    assert_eq!(
        out.stderr.matches(" | to-stderr").count(),
        2,
        "{}",
        out.stderr
    );
    // Arguments are words: nothing in them reaches a shell.
    app.ektool()
        .args(&[
            "run", "--env", "staging", "--once", "--", "echo", "$HOME;", "`id`",
        ])
        .run()
        .success()
        .stdout_has("| $HOME; `id`");
    // Fails on one host: exit 1, that host named, the other's output shown.
    std::fs::write(app.local(0, "shared/flag"), "").unwrap();
    let out = app
        .ektool()
        .args(&[
            "--output",
            "json",
            "run",
            "--env",
            "staging",
            "--",
            "test",
            "-f",
            "../../shared/flag",
        ])
        .run()
        .code(1)
        .stderr_has("failed on 1 of 2 host(s)")
        .stderr_has("(exit 1)");
    let runs = out.json();
    let code = |i: usize| {
        let host = app.hosts[i].target();
        let run = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == host.as_str());
        run.and_then(|r| r["exit_code"].as_i64())
    };
    assert_eq!((code(0), code(1)), (Some(0), Some(1)), "{runs}");
    // A job and a command at once, or neither: bad input.
    app.ektool()
        .args(&["run", "nightly", "--", "true"])
        .run()
        .code(2);
    app.ektool().args(&["run"]).run().code(2);
}

/// `--canary`, `--canary-wait` and `--batch` show in the plan as waves;
/// a bad batch size is bad input; `batch` in the config is read.
#[test]
fn canary_and_batch_flags_plan_waves() {
    let app = App::new("batch = \"50%\"");
    let out = app
        .ektool()
        .args(&[
            "--dry-run",
            "deploy",
            "--env",
            "staging",
            "--canary",
            "1",
            "--canary-wait",
            "30s",
        ])
        .run();
    // What docs/deploys.md shows.
    println!("{}", out.stdout);
    out.success()
        .stdout_has("wave 1/2: ")
        .stdout_has("(canary: then wait 30s)")
        .stdout_has("wave 2/2: ");
    let out = app
        .ektool()
        .args(&[
            "--output",
            "json",
            "--dry-run",
            "deploy",
            "--env",
            "staging",
            "--batch",
            "1",
        ])
        .run()
        .success();
    assert_eq!(
        out.json()["waves"].as_array().unwrap().len(),
        2,
        "{}",
        out.stdout
    );
    app.ektool()
        .args(&["--dry-run", "deploy", "--env", "staging", "--batch", "0"])
        .run()
        .code(2)
        .stderr_has("invalid batch size");
}
