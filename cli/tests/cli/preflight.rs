//! `ektool deploy check` (pre-flight) and `ektool lock` / `unlock` against
//! the bench's sshd hosts and a real git origin: each failure made real.

use ektool_tests::{SshHost, free_port};

use crate::deploy::App;

/// The deploy tests' app (environment `staging`, two sshd hosts), with a
/// restart hook and `extra` in the environment, nothing deployed.
struct Site(App);

impl std::ops::Deref for Site {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

impl Site {
    fn new(extra: &str) -> Self {
        Self(App::with_environment(
            "preflight",
            &format!(
                "hooks.restart = [{{ run = \"echo \\\"$DEPLOY_ACTION $RELEASE\\\" >> ../../shared/restarts\" }}]\n{extra}"
            ),
        ))
    }

    /// The deploy root with `shared/<file>` on every host.
    fn lay_out(&self, shared: &[&str]) {
        for i in 0..self.hosts.len() {
            for f in shared {
                let p = self.local(i, &format!("shared/{f}"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, "x\n").unwrap();
            }
            std::fs::create_dir_all(self.local(i, "shared")).unwrap();
        }
    }

    /// `deploy check --output json`, its exit code and rows.
    fn check(&self, extra: &[&str], code: i32) -> Vec<serde_json::Value> {
        let mut args = vec!["--output", "json", "deploy", "check"];
        args.extend_from_slice(extra);
        let out = self.ektool().args(&args).run().code(code);
        out.json().as_array().unwrap().clone()
    }

    /// The row of `check` on host `i` (0-based).
    fn row<'a>(
        &self,
        rows: &'a [serde_json::Value],
        i: usize,
        check: &str,
    ) -> &'a serde_json::Value {
        let host = self.hosts[i].target();
        rows.iter()
            .find(|r| r["host"] == host.as_str() && r["check"] == check)
            .unwrap_or_else(|| panic!("no {check} row for {host}: {rows:#?}"))
    }

    /// Runs a shell command as root on host `i`, in its mount namespace.
    fn on_host(&self, i: usize, command: &str) {
        let h = &self.hosts[i];
        let status = std::process::Command::new("ssh")
            .args(["-i", h.client_key.to_str().unwrap()])
            .args(["-p", &h.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
            ])
            .arg(format!("{}@{}", h.user, h.host))
            .arg(command)
            .status()
            .unwrap();
        assert!(status.success(), "{command} on h{}", i + 1);
    }
}

/// The failed checks as (host index, check), sorted: the report lists
/// hosts in the environment's order, which is not the bench's numbering.
fn failures(site: &Site, rows: &[serde_json::Value]) -> Vec<(usize, String)> {
    let mut failed: Vec<(usize, String)> = rows
        .iter()
        .filter(|r| r["result"] == "failed")
        .map(|r| {
            let i = site
                .hosts
                .iter()
                .position(|h| r["host"] == h.target().as_str())
                .unwrap();
            (i, r["check"].as_str().unwrap().to_owned())
        })
        .collect();
    failed.sort();
    failed
}

#[test]
fn check_passes_on_a_ready_environment_and_shows_one_table() {
    let site = Site::new("shared_files = [\"config/app.env\"]\nmin_free = \"1MiB\"");
    site.lay_out(&["config/app.env"]);
    let out = site
        .ektool()
        .args(&["deploy", "check"])
        .run()
        .success()
        .stdout_has("HOST")
        .stdout_has("DETAIL");
    for check in [
        "ssh",
        "root",
        "disk-space",
        "shared-files",
        "git",
        "clock",
        "lock",
    ] {
        assert_eq!(
            out.stdout
                .lines()
                .filter(|l| l.split_whitespace().nth(1) == Some(check)
                    && l.split_whitespace().nth(2) == Some("ok"))
                .count(),
            2,
            "{check}: {}",
            out.stdout
        );
    }
    let rows = site.check(&[], 0);
    assert_eq!(rows.len(), 14, "{rows:#?}");
    assert_eq!(failures(&site, &rows), []);
    assert!(
        site.row(&rows, 0, "disk-space")["detail"]
            .as_str()
            .unwrap()
            .contains("need 1.0MiB"),
        "{rows:#?}"
    );
    // No sudo in the environment's commands: not checked.
    assert!(rows.iter().all(|r| r["check"] != "sudo"));
}

#[test]
fn check_finds_a_missing_shared_file_and_a_missing_root() {
    let site = Site::new("shared_files = [\"config/app.env\", \".env\"]");
    // Nothing on either host yet: the root is missing, so are the files.
    let rows = site.check(&[], 1);
    assert_eq!(
        failures(&site, &rows),
        [
            (0, "root".to_owned()),
            (0, "shared-files".to_owned()),
            (1, "root".to_owned()),
            (1, "shared-files".to_owned()),
        ]
    );
    assert!(
        site.row(&rows, 0, "root")["detail"]
            .as_str()
            .unwrap()
            .ends_with("does not exist"),
        "{rows:#?}"
    );
    // Both files on h1; h2 lacks .env.
    site.lay_out(&["config/app.env", ".env"]);
    std::fs::remove_file(site.local(1, "shared/.env")).unwrap();
    let rows = site.check(&[], 1);
    assert_eq!(failures(&site, &rows), [(1, "shared-files".to_owned())]);
    assert_eq!(
        site.row(&rows, 1, "shared-files")["detail"],
        "missing in shared/: .env"
    );
    let out = site.ektool().args(&["deploy", "check"]).run().code(1);
    let out = out.stderr_has("error: 1 check failed on 1 host of staging");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(&site.hosts[1].target())
                && l.contains("shared-files")
                && l.contains("FAILED")),
        "{}",
        out.stdout
    );
}

#[test]
fn check_finds_a_read_only_root() {
    let site = Site::new("");
    site.lay_out(&[]);
    if !site.hosts[0].namespaced {
        eprintln!("skipped: h1 has no mount namespace of its own to mount read-only in");
        return;
    }
    let root = format!("{}/{}", SshHost::MOUNT, site.name);
    site.on_host(
        0,
        &format!("mount --bind {root} {root} && mount -o remount,bind,ro {root}"),
    );
    let rows = site.check(&[], 1);
    site.on_host(0, &format!("umount {root}"));
    assert_eq!(failures(&site, &rows), [(0, "root".to_owned())]);
    let detail = site.row(&rows, 0, "root")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("Read-only file system"), "{detail}");
    site.check(&[], 0);
}

#[test]
fn check_finds_an_unreachable_git_server() {
    // A git:// URL on a port nothing listens on.
    let site = Site::new(&format!(
        "repository = \"git://127.0.0.1:{}/app.git\"",
        free_port()
    ));
    site.lay_out(&[]);
    let rows = site.check(&[], 1);
    assert_eq!(
        failures(&site, &rows),
        [(0, "git".to_owned()), (1, "git".to_owned())]
    );
    let detail = site.row(&rows, 0, "git")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("git ls-remote git://127.0.0.1:"),
        "{detail}"
    );
    // The clone's origin (the default) answers.
    let site = Site::new("");
    site.lay_out(&[]);
    site.check(&[], 0);
}

#[test]
fn check_finds_too_little_disk_space_and_refuses_a_bad_size() {
    let site = Site::new("");
    site.lay_out(&[]);
    let rows = site.check(&["--min-free", "1000TiB"], 1);
    assert_eq!(
        failures(&site, &rows),
        [(0, "disk-space".to_owned()), (1, "disk-space".to_owned())]
    );
    let detail = site.row(&rows, 1, "disk-space")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("(below 1000.0TiB)"), "{detail}");
    site.check(&["--min-free", "1KiB"], 0);
    site.ektool()
        .args(&["deploy", "check", "--min-free", "lots"])
        .run()
        .code(2);
    // The environment's own threshold, when no flag says otherwise.
    let site = Site::new("min_free = \"1000TiB\"");
    site.lay_out(&[]);
    site.check(&[], 1);
}

#[test]
fn check_shows_a_held_lock_and_checks_sudo_when_hooks_use_it() {
    let site = Site::new("hooks.maintenance = [{ run = \"sudo true\" }]");
    site.lay_out(&[]);
    let lock = site.local(1, ".ektool/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(
        lock.join("owner.json"),
        r#"{"actor":{"user":"alice","machine":"laptop","pid":1},"environment":"staging","since":"2024-01-01T00:00:00Z","action":"deploy v1.2.3","message":"hotfix","token":"t"}"#,
    )
    .unwrap();
    let rows = site.check(&[], 1);
    let lock_row = site.row(&rows, 1, "lock");
    assert_eq!(lock_row["result"], "failed", "{rows:#?}");
    let detail = lock_row["detail"].as_str().unwrap();
    assert!(detail.contains("alice@laptop"), "{detail}");
    assert!(detail.contains("hotfix"), "{detail}");
    assert_eq!(lock_row["lock"]["owner"]["message"], "hotfix");
    assert_eq!(site.row(&rows, 0, "lock")["result"], "ok");
    // sudo: checked on both hosts (the bench installs it; root may use it).
    for i in 0..2 {
        assert_eq!(site.row(&rows, i, "sudo")["result"], "ok", "{rows:#?}");
    }
}

/// The owner file of host `i`'s lock, if it has one.
fn lock_owner(site: &Site, i: usize) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(site.local(i, ".ektool/lock/owner.json")).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

#[test]
fn a_hand_held_lock_stops_deploys_until_unlock() {
    let site = Site::new("");
    site.ektool().arg("deploy").run().success();

    // Dry run: nothing taken.
    site.ektool()
        .args(&["--dry-run", "lock", "-m", "incident 42"])
        .run()
        .success()
        .stdout_has("would lock 2 hosts of staging by hand")
        .stdout_has("dry run: nothing was changed");
    assert!(lock_owner(&site, 0).is_none());
    site.ektool()
        .args(&["lock", "-m", " "])
        .run()
        .code(2)
        .stderr_has("error: say why with -m");

    site.ektool()
        .args(&["lock", "--env", "staging", "-m", "incident 42"])
        .run()
        .success()
        .stdout_has("locked 2 hosts of staging by hand: \"incident 42\"");
    for i in 0..2 {
        let owner = lock_owner(&site, i).unwrap();
        assert_eq!(owner["hand_held"], true, "{owner}");
        assert_eq!(owner["message"], "incident 42", "{owner}");
        assert_eq!(owner["action"], "hand-held lock", "{owner}");
        assert!(owner["since"].is_string(), "{owner}");
    }
    // A second lock, a deploy, a restart: refused, naming the holder and
    // the message; nothing changed.
    site.ektool()
        .args(&["lock", "-m", "again"])
        .run()
        .code(1)
        .stderr_has("is held by hand by");
    let out = site
        .ektool()
        .arg("deploy")
        .run()
        .code(1)
        .stderr_has("is held by hand by")
        .stderr_has("\"incident 42\"")
        .stderr_has("`ektool unlock` releases it");
    assert!(!out.stderr.contains("stale"), "{}", out.stderr);
    site.ektool()
        .arg("restart")
        .run()
        .code(1)
        .stderr_has("\"incident 42\"");
    // Never stale, even though the process that took it has exited.
    site.ektool().args(&["deploy", "unlock"]).run().code(1);
    // deploy check shows it.
    let rows = site.check(&[], 1);
    let detail = site.row(&rows, 0, "lock")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("held by hand") && detail.contains("incident 42"),
        "{detail}"
    );
    assert!(lock_owner(&site, 0).is_some() && lock_owner(&site, 1).is_some());

    site.ektool()
        .args(&["--dry-run", "unlock"])
        .run()
        .success()
        .stdout_has("WOULD REMOVE");
    assert!(lock_owner(&site, 0).is_some());
    site.ektool()
        .args(&["unlock", "--env", "staging"])
        .run()
        .success()
        .stdout_has("REMOVED");
    assert!(lock_owner(&site, 0).is_none() && lock_owner(&site, 1).is_none());
    // Nothing left to release: not an error.
    site.ektool().arg("unlock").run().success();
    site.ektool().arg("deploy").run().success();
}

#[test]
fn lock_and_unlock_are_all_or_nothing() {
    // A deploy holds h2's lock.
    let site = Site::new("");
    site.lay_out(&[]);
    let lock = site.local(1, ".ektool/lock");
    std::fs::create_dir_all(&lock).unwrap();
    let deploying = r#"{"actor":{"user":"bob","machine":"ci","pid":1},"environment":"staging","since":"2024-01-01T00:00:00Z","action":"deploy v2","token":"running-deploy"}"#;
    std::fs::write(lock.join("owner.json"), deploying).unwrap();
    site.ektool()
        .args(&["lock", "--env", "staging", "-m", "incident"])
        .run()
        .code(1)
        .stderr_has("bob@ci");
    // h1 was taken in the same round and given back.
    assert!(lock_owner(&site, 0).is_none());
    assert_eq!(lock_owner(&site, 1).unwrap()["token"], "running-deploy");

    // unlock never removes a running deploy's lock, and then removes
    // nothing anywhere.
    std::fs::remove_dir_all(&lock).unwrap();
    site.ektool()
        .args(&["lock", "--env", "staging", "-m", "incident"])
        .run()
        .success();
    std::fs::remove_dir_all(&lock).unwrap();
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join("owner.json"), deploying).unwrap();
    site.ektool()
        .args(&["unlock", "--env", "staging"])
        .run()
        .code(1)
        .stderr_has("it was not taken by hand, so it is left in place")
        .stderr_has("hint: wait for that run to finish");
    assert_eq!(lock_owner(&site, 0).unwrap()["hand_held"], true);
    assert_eq!(lock_owner(&site, 1).unwrap()["token"], "running-deploy");
}

#[test]
fn a_lock_that_cannot_reach_every_host_takes_none() {
    let site = Site::new("");
    site.lay_out(&[]);
    // The same deploy root, plus a host nothing answers on.
    let config = std::fs::read_to_string(site.work.join("ektool.toml")).unwrap();
    let dead = format!("root@127.0.0.1:{}", free_port());
    let config = config.replacen(
        &format!("\"{}\"]", site.hosts[1].target()),
        &format!("\"{}\", \"{dead}\"]", site.hosts[1].target()),
        1,
    );
    std::fs::write(site.work.join("ektool.toml"), config).unwrap();
    site.ektool()
        .args(&["lock", "-m", "incident"])
        .run()
        .code(1)
        .stderr_has(&dead);
    assert!(lock_owner(&site, 0).is_none());
    assert!(lock_owner(&site, 1).is_none());
}

/// `ektool audit --output json`: its exit code and entries.
fn audit(site: &Site, extra: &[&str], code: i32) -> (Vec<serde_json::Value>, String) {
    let mut args = vec!["--output", "json", "audit"];
    args.extend_from_slice(extra);
    let out = site.ektool().args(&args).run().code(code);
    let entries = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (entries, out.stderr)
}

/// The (action, result) of each entry on host `i`, oldest first.
fn actions_on(site: &Site, entries: &[serde_json::Value], i: usize) -> Vec<(String, String)> {
    let host = site.hosts[i].target();
    entries
        .iter()
        .filter(|e| e["host"] == host.as_str())
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

/// Every action leaves a line on every host it touched, with who, when,
/// what and how it ended; `ektool audit` merges the hosts' logs into one
/// timeline, in time order.
#[test]
fn every_action_leaves_a_line_and_audit_merges_the_hosts() {
    let site = Site::new("");
    site.ektool().arg("deploy").run().success();
    site.ektool().arg("restart").run().success();
    site.ektool().args(&["maintenance", "on"]).run().success();
    site.ektool().args(&["maintenance", "off"]).run().success();
    site.ektool()
        .args(&["lock", "-m", "incident 7"])
        .run()
        .success();
    site.ektool().arg("unlock").run().success();
    site.ektool()
        .args(&["run", "--", "sh", "-c", "exit 3"])
        .run()
        .code(1);
    let (entries, _) = audit(&site, &[], 0);
    let want: Vec<(String, String)> = [
        ("deploy", "success"),
        ("restart", "success"),
        ("maintenance_on", "success"),
        ("maintenance_off", "success"),
        ("lock", "success"),
        ("unlock", "success"),
        ("run", "failed"),
    ]
    .iter()
    .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
    .collect();
    for i in 0..2 {
        assert_eq!(
            actions_on(&site, &entries, i),
            want,
            "h{}: {entries:#?}",
            i + 1
        );
    }
    // One timeline: sorted by time across hosts.
    let times: Vec<jiff::Timestamp> = entries
        .iter()
        .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Who: this process's user; the lock's message; the command's words
    // and exit code.
    let me = std::env::var("USER").unwrap_or_else(|_| "root".into());
    assert!(
        entries.iter().all(|e| e["who"]["user"] == me.as_str()),
        "{entries:#?}"
    );
    let lock = entries.iter().find(|e| e["action"] == "lock").unwrap();
    assert_eq!(lock["message"], "incident 7", "{lock}");
    let run = entries.iter().find(|e| e["action"] == "run").unwrap();
    assert_eq!(run["exit_code"], 3, "{run}");
    assert_eq!(
        run["argv"],
        serde_json::json!(["sh", "-c", "exit 3"]),
        "{run}"
    );
    // On the host: the release log keeps releases only; the rest is in
    // audit.jsonl.
    let releases = std::fs::read_to_string(site.local(0, ".ektool/releases.jsonl")).unwrap();
    assert_eq!(releases.lines().count(), 1, "{releases}");
    let lines = std::fs::read_to_string(site.local(0, ".ektool/audit.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6, "{lines}");

    // Interleaved runs on one host at a time come back in time order.
    for i in [0, 1, 0] {
        site.ektool()
            .args(&["run", "--host", &site.hosts[i].target(), "--", "true"])
            .run()
            .success();
    }
    let (last, _) = audit(&site, &["--limit", "3"], 0);
    let hosts: Vec<&str> = last.iter().map(|e| e["host"].as_str().unwrap()).collect();
    let (h1, h2) = (site.hosts[0].target(), site.hosts[1].target());
    assert_eq!(hosts, [h1.as_str(), h2.as_str(), h1.as_str()], "{last:#?}");
    // The table.
    let out = site
        .ektool()
        .args(&["audit", "--since", "1h"])
        .run()
        .success();
    println!("{}", out.stdout);
    assert!(out.stdout.starts_with("WHEN"), "{}", out.stdout);
    assert_eq!(out.stdout.lines().count(), 1 + 7 * 2 + 3, "{}", out.stdout);
}

/// Old release-log lines (and actions from a newer ektool) still show; a
/// host that cannot be read is reported and the others shown (exit 1); an
/// append that fails is a warning, never the action's failure.
#[test]
fn audit_reads_old_lines_reports_an_unreadable_host_and_survives_a_failed_append() {
    let site = Site::new("");
    site.lay_out(&[]);
    let old = r#"{"at":"2020-03-01T10:00:00Z","action":"deploy","who":{"user":"ann","machine":"lap","pid":7},"environment":"staging","release":"a","commit":"1111111111111111111111111111111111111111","tag":null,"previous":null,"result":"success","message":null}"#;
    let newer = r#"{"at":"2020-03-02T10:00:00Z","action":"reboot","who":{"user":"bob","machine":"ci","pid":8},"environment":"staging","what":"all","result":"success","extra":true}"#;
    std::fs::create_dir_all(site.local(1, ".ektool")).unwrap();
    std::fs::write(
        site.local(1, ".ektool/releases.jsonl"),
        format!("{old}\n{{\"at\":"),
    )
    .unwrap();
    std::fs::write(site.local(1, ".ektool/audit.jsonl"), format!("{newer}\n")).unwrap();
    let (entries, _) = audit(&site, &[], 0);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(entries[0]["who"]["user"], "ann");
    assert_eq!(entries[0]["what"], "a 111111111111");
    assert_eq!(entries[1]["action"], "reboot");
    let (since, _) = audit(&site, &["--since", "2020-03-02"], 0);
    assert_eq!(since.len(), 1, "{since:#?}");
    site.ektool()
        .args(&["audit", "--since", "soon"])
        .run()
        .code(2);

    // h1's audit file is a link: the append is refused, the restart
    // still succeeds, and the refusal is shown.
    std::fs::create_dir_all(site.local(0, ".ektool")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", site.local(0, ".ektool/audit.jsonl")).unwrap();
    site.ektool()
        .args(&["maintenance", "on"])
        .run()
        .success()
        .stderr_has("warning: audit log not written");
    // The same for a command: its own result stands (here: nothing is
    // deployed on h1).
    site.ektool()
        .args(&["run", "--host", &site.hosts[0].target(), "--", "true"])
        .run()
        .code(1)
        .stderr_has("no live release")
        .stderr_has("warning: audit log not written");
    let (entries, _) = audit(&site, &[], 0);
    assert_eq!(
        actions_on(&site, &entries, 0),
        Vec::<(String, String)>::new()
    );
    assert_eq!(actions_on(&site, &entries, 1).len(), 3, "{entries:#?}");

    // `deploy unlock --force` records each lock it removes.
    let lock = site.local(1, ".ektool/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(
        lock.join("owner.json"),
        r#"{"actor":{"user":"bob","machine":"ci","pid":1},"environment":"staging","since":"2024-01-01T00:00:00Z","action":"deploy v2","token":"t"}"#,
    )
    .unwrap();
    site.ektool()
        .args(&["deploy", "unlock", "--force"])
        .run()
        .success();
    let (entries, _) = audit(&site, &[], 0);
    let last = entries.last().unwrap();
    assert_eq!(
        (&last["action"], &last["what"], &last["result"]),
        (
            &serde_json::json!("unlock"),
            &serde_json::json!("lock (forced)"),
            &serde_json::json!("success")
        ),
        "{entries:#?}"
    );

    // A host nothing answers on: named, exit 1, the others shown.
    let config = std::fs::read_to_string(site.work.join("ektool.toml")).unwrap();
    let dead = format!("root@127.0.0.1:{}", free_port());
    let config = config.replacen(
        &format!("\"{}\"]", site.hosts[1].target()),
        &format!("\"{}\", \"{dead}\"]", site.hosts[1].target()),
        1,
    );
    std::fs::write(site.work.join("ektool.toml"), config).unwrap();
    let (entries, stderr) = audit(&site, &[], 1);
    assert!(stderr.contains(&dead), "{stderr}");
    assert_eq!(entries.len(), 4, "{entries:#?}");
}
