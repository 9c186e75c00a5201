//! Roles end to end on three sshd hosts: role-scoped hooks leave their
//! marker files only on the hosts with the role, a `once_on` migration
//! runs on exactly one host (the first with the role, in lock order),
//! `--role` narrows every host command, and what cannot work is refused
//! before anything changes.

use std::path::PathBuf;

use ektool_tests::{SshHost, git, ssh_host, tempdir, unique};

use crate::harness::Ektool;

/// An origin, a clone with an `ektool.toml`, three sshd hosts: h1 without
/// roles, h2 `web` + `db`, h3 `db` + `worker`.
struct Site {
    _dir: tempfile::TempDir,
    work: PathBuf,
    name: String,
    hosts: Vec<SshHost>,
}

const HOOKS: &str = r#"
hooks.build = [{ run = "touch \"$SHARED_PATH/built\"" }]
hooks.before_switch = [
  { run = "echo \"$RELEASE\" >> \"$SHARED_PATH/first\"" },
  { run = "echo \"$RELEASE\" >> \"$SHARED_PATH/migrated\"", once_on = "db" },
]
hooks.restart = [
  { run = "echo \"$DEPLOY_ACTION\" >> \"$SHARED_PATH/restarted\"" },
  { run = "echo \"$DEPLOY_ACTION\" >> \"$SHARED_PATH/web-restarted\"", roles = ["web"] },
]
hooks.after_switch = [{ run = "touch \"$SHARED_PATH/worker\"", roles = ["worker", "cron"] }]
hooks.maintenance = [{ run = "echo \"$MAINTENANCE\" >> \"$SHARED_PATH/maintenance-hook\"", roles = ["web"] }]
"#;

impl Site {
    fn new() -> Self {
        let dir = tempdir();
        let work = ektool_tests::origin_and_clone(dir.path());
        let hosts = vec![ssh_host(1), ssh_host(2), ssh_host(3)];
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            hosts
                .iter()
                .map(|h| h.known_hosts_line() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        let name = unique("cli-roles");
        let config = format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.staging]
hosts = [
  "{h1}",
  {{ host = "{h2}", roles = ["web", "db"] }},
  {{ host = "{h3}", roles = ["db", "worker"] }},
]
path = "{mount}/{name}"
{HOOKS}
"#,
            kh = kh.display(),
            key = hosts[0].client_key.display(),
            h1 = hosts[0].target(),
            h2 = hosts[1].target(),
            h3 = hosts[2].target(),
            mount = SshHost::MOUNT,
        );
        std::fs::write(work.join("ektool.toml"), config).unwrap();
        std::fs::write(work.join(".gitignore"), "ektool.toml\n").unwrap();
        std::fs::write(work.join("app.txt"), "v1\n").unwrap();
        git(&work, &["add", "app.txt", ".gitignore"]);
        git(&work, &["commit", "--quiet", "-m", "v1"]);
        git(&work, &["push", "--quiet", "origin", "main"]);
        Self {
            _dir: dir,
            work,
            name,
            hosts,
        }
    }

    fn ektool(&self) -> Ektool {
        Ektool::new().current_dir(&self.work)
    }

    /// Host `i`'s shared file `rel`, if it is there.
    fn shared(&self, i: usize, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.hosts[i].local_path(&format!("{}/shared/{rel}", self.name)))
            .ok()
    }

    /// Which hosts (0-based) have shared file `rel`.
    fn have(&self, rel: &str) -> Vec<usize> {
        (0..3).filter(|&i| self.shared(i, rel).is_some()).collect()
    }

    /// The hosts in lock order (by `user@host:port`), 0-based.
    fn lock_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by_key(|&i| self.hosts[i].target());
        order
    }

    fn live(&self, i: usize) -> bool {
        self.hosts[i]
            .local_path(&format!("{}/current", self.name))
            .exists()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = std::fs::remove_dir_all(h.local_path(&self.name));
        }
    }
}

#[test]
fn role_scoped_hooks_run_only_on_their_hosts_and_once_on_on_one() {
    let site = Site::new();
    let order = site.lock_order();
    // The run-once hooks' hosts: the first in lock order, and the first
    // with `db` (h2 or h3, whichever sorts first).
    let first = order[0];
    let first_db = *order.iter().find(|&&i| i != 0).unwrap();

    // Refused before anything changes (exit 2, the role named): a role no
    // host has, and a once_on role the selected hosts lack.
    site.ektool()
        .args(&["deploy", "--role", "cache"])
        .run()
        .code(2)
        .stderr_has("no host of this environment has role \"cache\"");
    site.ektool()
        .args(&["deploy", "--host", &site.hosts[0].target()])
        .run()
        .code(2)
        .stderr_has("runs once_on role \"db\", and no selected host has it");
    assert!((0..3).all(|i| !site.live(i)), "nothing was deployed");

    // The plan shows each host's roles and where each hook runs.
    let out = site
        .ektool()
        .args(&["--dry-run", "deploy"])
        .run()
        .success()
        .stdout_has("ROLES")
        .stdout_has("db,worker");
    let line = |start: &str| -> String {
        out.stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} line: {}", out.stdout))
            .to_owned()
    };
    let migrate = line("before_switch `echo \"$RELEASE\" >> \"$SHARED_PATH/migrated\"`");
    assert!(
        migrate.ends_with(&site.hosts[first_db].target()),
        "{migrate}"
    );
    let web = line("restart `echo \"$DEPLOY_ACTION\" >> \"$SHARED_PATH/web-restarted\"`");
    assert!(web.ends_with(&site.hosts[1].target()), "{web}");
    assert!(line("build `touch").ends_with("every host"));
    let plan = site
        .ektool()
        .args(&["--dry-run", "--output", "json", "deploy"])
        .run()
        .success()
        .json();
    let hosts = plan["hosts"].as_array().unwrap();
    let by_target = |i: usize| {
        hosts
            .iter()
            .find(|h| h["host"] == site.hosts[i].target())
            .unwrap()
    };
    assert!(by_target(0).get("roles").is_none(), "no roles, none shown");
    assert_eq!(by_target(2)["roles"], serde_json::json!(["db", "worker"]));
    assert!((0..3).all(|i| !site.live(i)), "a dry run changes nothing");

    // The deploy: markers only where the roles say.
    site.ektool().args(&["deploy"]).run().success();
    assert!((0..3).all(|i| site.live(i)));
    assert_eq!(site.have("built"), [0, 1, 2], "role-less build hook");
    assert_eq!(site.have("restarted"), [0, 1, 2], "role-less restart hook");
    assert_eq!(site.have("web-restarted"), [1], "web only");
    assert_eq!(site.have("worker"), [2], "worker (or cron) only");
    assert_eq!(site.have("first"), [first], "run-once: the first host");
    assert_eq!(site.have("migrated"), [first_db], "once_on db: one host");
    assert_eq!(
        site.shared(first_db, "migrated").unwrap().lines().count(),
        1
    );

    // --role narrows the other commands too: a restart of the web hosts
    // runs there only, and `run --once` picks the host the migration did.
    site.ektool()
        .args(&["restart", "--role", "web"])
        .run()
        .success();
    assert_eq!(
        site.shared(1, "web-restarted").unwrap(),
        "deploy\nrestart\n"
    );
    assert_eq!(
        site.shared(0, "restarted").unwrap(),
        "deploy\n",
        "h1 not restarted"
    );
    assert_eq!(
        site.shared(2, "restarted").unwrap(),
        "deploy\n",
        "h3 not restarted"
    );
    site.ektool()
        .args(&["run", "--role", "db", "--once", "--", "hostname"])
        .run()
        .success()
        .stdout_has(&format!("{} | ", site.hosts[first_db].target()));
    let out = site
        .ektool()
        .args(&["releases", "--role", "worker"])
        .run()
        .success();
    assert!(
        out.stdout.contains(&site.hosts[2].target()),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&site.hosts[1].target()),
        "{}",
        out.stdout
    );
    site.ektool()
        .args(&["releases", "--role", "cache"])
        .run()
        .code(2)
        .stderr_has("\"cache\"");

    // A deploy of the db hosts only: the migration again on the first of
    // them, nothing on h1.
    std::fs::write(site.work.join("app.txt"), "v2\n").unwrap();
    git(&site.work, &["commit", "--quiet", "-am", "v2"]);
    git(&site.work, &["push", "--quiet", "origin", "main"]);
    site.ektool()
        .args(&["deploy", "--role", "db"])
        .run()
        .success();
    assert_eq!(site.have("migrated"), [first_db]);
    assert_eq!(
        site.shared(first_db, "migrated").unwrap().lines().count(),
        2
    );
    assert_eq!(
        site.shared(0, "first").map(|f| f.lines().count()),
        (first == 0).then_some(1)
    );

    // A rollback of the db hosts: the web restart hook on h2 only.
    site.ektool()
        .args(&["rollback", "--role", "db"])
        .run()
        .success();
    assert_eq!(
        site.shared(1, "web-restarted").unwrap().lines().last(),
        Some("rollback")
    );
    assert_eq!(site.have("web-restarted"), [1]);
    assert_eq!(
        site.shared(2, "restarted").unwrap().lines().last(),
        Some("rollback")
    );
    assert_eq!(site.shared(0, "restarted").unwrap(), "deploy\n");
    // Maintenance on every host: its web-only hook on h2 only.
    site.ektool().args(&["maintenance", "on"]).run().success();
    assert_eq!(site.have("maintenance-hook"), [1]);
    assert_eq!(site.shared(1, "maintenance-hook").unwrap(), "on\n");
}

/// Roles in the config that cannot be read: exit 2, one `error:` line
/// naming the file, line and column. No services needed.
#[test]
fn bad_roles_are_one_located_error_line() {
    let dir = tempdir();
    let file = dir.path().join("ektool.toml");
    let head = "[environments.prod]\npath = \"/srv/app\"\n";
    for (body, at, what) in [
        (
            "hosts = [\"a\", { host = \"b\", role = [\"web\"] }]\n",
            ":3:29: ",
            "unknown field `role`",
        ),
        (
            "hosts = [{ host = \"b\", roles = [\"\"] }]\n",
            ":3:32: ",
            "a role name must not be empty",
        ),
        (
            "hosts = [{ host = \"b\", roles = \"web\" }]\n",
            ":3:",
            "invalid type",
        ),
        (
            "ec2 = { tag = \"Role=web\", region = \"eu-west-1\", roles = [\"web app\"] }\n",
            ":3:",
            "role \"web app\"",
        ),
        (
            "hooks.restart = [{ run = \"x\", roles = [\"\"] }]\n",
            ":3:",
            "a role name must not be empty",
        ),
        (
            "hooks.build = [{ run = \"x\", once_on = \"db\" }]\n",
            ":3:",
            "`once_on` is for before_switch hooks",
        ),
        (
            "hooks.before_switch = [{ run = \"x\", roles = [\"db\"] }]\n",
            ":3:",
            "they take `once_on",
        ),
    ] {
        std::fs::write(&file, format!("{head}{body}")).unwrap();
        let out = Ektool::new()
            .args(&["--config", file.to_str().unwrap(), "config"])
            .run()
            .code(2);
        let err = out.stderr.trim_end();
        assert_eq!(err.lines().count(), 1, "{body}: {err}");
        let prefix = format!("error: {}{at}", file.display());
        assert!(err.starts_with(&prefix), "{body}: {err}");
        assert!(err.contains(what), "{body}: {err}");
    }
}
