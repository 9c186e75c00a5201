//! `ektool provision`, `secrets get`, `db dump/load` against the bench's
//! sshd hosts, with the real `salt-call --local` applying a small state
//! tree into each test's own sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ektool_tests::{SshHost, ssh_host, tempdir, unique};

use crate::harness::{Ektool, Outcome};

const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceAliceAliceAliceAlice alice@laptop";
const BOB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBobBobBobBobBobBobBobBobBo bob@laptop";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A project with a configuration tree, one sshd host, and a sandbox on
/// the host (`/srv/ektool-host/<name>`) holding the provision root, the
/// states' output and a user database for `useradd --prefix`.
struct Project {
    dir: tempfile::TempDir,
    host: SshHost,
    name: String,
    secret: String,
}

impl Project {
    fn new() -> Self {
        let dir = tempdir();
        let host = ssh_host(1);
        let name = unique("prov");
        let sandbox = format!("{}/{name}", SshHost::MOUNT);
        let secret = unique("s3cr3t-value");
        let conf = dir.path().join("conf");
        write(&conf.join("states/top.sls"), "base:\n  '*':\n    - app\n");
        write(
            &conf.join("states/app.sls"),
            &format!(
                "greeting:\n  file.managed:\n    - name: {sandbox}/out/greeting.txt\n    - makedirs: True\n    - contents: \"{{{{ pillar['greeting'] }}}}\"\n\
                 token:\n  file.managed:\n    - name: {sandbox}/out/token\n    - mode: '0600'\n    - show_changes: False\n    - contents: \"{{{{ pillar['secrets']['API_TOKEN'] }}}}\"\n"
            ),
        );
        write(
            &conf.join("pillar/staging/top.sls"),
            "base:\n  '*':\n    - env\n    - secrets\n",
        );
        write(
            &conf.join("pillar/staging/env.sls"),
            "greeting: hello-staging\n",
        );
        write(
            &conf.join("pillar/production/top.sls"),
            "base:\n  '*':\n    - env\n",
        );
        write(
            &conf.join("pillar/production/env.sls"),
            "greeting: PRODUCTION-MARKER\n",
        );
        write(
            &conf.join("secrets/staging.sls.example"),
            "secrets:\n  API_TOKEN: change-me\n",
        );
        write(
            &conf.join("secrets/staging.sls"),
            &format!("secrets:\n  API_TOKEN: {secret}\n"),
        );
        write(
            &conf.join("secrets/production.sls"),
            "secrets:\n  API_TOKEN: PROD-SECRET-VALUE\n",
        );
        // The sandboxed user database.
        let users = host.local_path(&format!("{name}/users"));
        write(
            &users.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\n",
        );
        write(&users.join("etc/group"), "root:x:0:\n");
        write(&users.join("etc/shadow"), "root:*:19000:0:99999:7:::\n");
        write(&users.join("etc/gshadow"), "root:*::\n");
        std::fs::create_dir_all(users.join("home")).unwrap();
        let p = Self {
            dir,
            host,
            name,
            secret,
        };
        p.config(&[("alice", ALICE)]);
        std::fs::write(p.dir.path().join("known_hosts"), "").unwrap();
        p
    }

    fn config(&self, users: &[(&str, &str)]) {
        let sandbox = format!("{}/{}", SshHost::MOUNT, self.name);
        let users: String = users
            .iter()
            .map(|(n, k)| {
                let keys = if k.is_empty() {
                    String::new()
                } else {
                    format!("\"{k}\"")
                };
                format!("  {{ name = \"{n}\", groups = [\"login\"], keys = [{keys}] }},\n")
            })
            .collect();
        let config = format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.staging]
hosts = ["{target}"]
path = "{sandbox}/app"

[environments.staging.provision]
tree = "{tree}"
path = "{sandbox}/prov"
salt_call = "{salt}"
users_root = "{sandbox}/users"
users = [
{users}]

[environments.staging.database]
name = "{db}"
host = "127.0.0.1"
port = {pg}
user = "postgres"

[environments.production]
hosts = ["{target}"]
path = "{sandbox}/prod"

[environments.production.database]
name = "{db}"
host = "127.0.0.1"
port = {pg}
user = "postgres"
"#,
            kh = self.dir.path().join("known_hosts").display(),
            key = self.host.client_key.display(),
            target = self.host.target(),
            tree = self.tree().display(),
            salt = ektool_tests::salt_call(),
            db = self.db_name(),
            pg = std::env::var("EKTOOL_TEST_PG_PORT").unwrap_or_else(|_| "5432".into()),
        );
        std::fs::write(self.dir.path().join("ektool.toml"), config).unwrap();
    }

    fn db_name(&self) -> String {
        self.name.replace('-', "_")
    }

    fn tree(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn ektool(&self) -> Ektool {
        Ektool::new().current_dir(self.dir.path())
    }

    fn on_host(&self, rel: &str) -> PathBuf {
        self.host.local_path(&format!("{}/{rel}", self.name))
    }

    /// Runs ektool while watching every process's arguments for the
    /// secret value.
    fn run_watched(&self, e: Ektool) -> Outcome {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (stop, seen, secret) = (stop.clone(), seen.clone(), self.secret.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                        if std::fs::read(p.path().join("cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&secret))
                        {
                            seen.store(true, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        let out = e.run();
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        assert!(
            !seen.load(Ordering::Relaxed),
            "the secret showed in a process's arguments"
        );
        assert!(
            !out.stdout.contains(&self.secret) && !out.stderr.contains(&self.secret),
            "the secret was printed: {out:?}"
        );
        out
    }

    fn grep_host(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![self.on_host("")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                } else if std::fs::read(&p)
                    .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
                {
                    hits.push(p);
                }
            }
        }
        hits
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.on_host(""));
    }
}

#[test]
fn provision_takes_a_sandboxed_host_from_nothing_to_configured() {
    let p = Project::new();

    // First contact: the fingerprint is shown, nothing is recorded or sent.
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has(&p.host.fingerprint())
        .stderr_has("--trust-host-key");
    assert!(!p.on_host("prov").exists());
    // A wrong fingerprint is refused.
    p.ektool()
        .args(&[
            "provision",
            "--env",
            "staging",
            "--trust-host-key",
            "SHA256:wrong",
        ])
        .run()
        .code(1);

    // Trusted explicitly: Salt applies the tree.
    let out = p
        .run_watched(p.ektool().args(&[
            "provision",
            "--env",
            "staging",
            "--trust-host-key",
            &p.host.fingerprint(),
        ]))
        .success()
        .stdout_has("changed  greeting (file.managed")
        .stdout_has("0 failed");
    drop(out);
    assert_eq!(
        std::fs::read_to_string(p.on_host("out/greeting.txt"))
            .unwrap()
            .trim(),
        "hello-staging"
    );
    // The secret reached Salt through the 0600 pillar file.
    assert_eq!(
        std::fs::read_to_string(p.on_host("out/token"))
            .unwrap()
            .trim(),
        p.secret
    );
    let secrets = p.on_host("prov/secrets/secrets.sls");
    let meta = std::fs::metadata(&secrets).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    // Another environment's pillar and secrets never reached the host.
    assert!(
        p.grep_host("PRODUCTION-MARKER").is_empty(),
        "{:?}",
        p.grep_host("PRODUCTION-MARKER")
    );
    assert!(p.grep_host("PROD-SECRET-VALUE").is_empty());
    // The tree is switched in through a symlink.
    let link = std::fs::read_link(p.on_host("prov/tree")).unwrap();
    assert!(link.starts_with("trees/"), "{link:?}");
    // Alice exists in the sandboxed user database, with her key.
    assert!(
        std::fs::read_to_string(p.on_host("users/etc/passwd"))
            .unwrap()
            .contains("alice:")
    );
    let alice_keys = p.on_host("users/home/alice/.ssh/authorized_keys");
    assert_eq!(std::fs::read_to_string(&alice_keys).unwrap().trim(), ALICE);

    // Again: strict host key, nothing to change.
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success()
        .stdout_has("ok  greeting");

    // Changed local secrets: a masked diff, and no overwrite unconfirmed.
    let new_secret = unique("rotated");
    write(
        &p.tree().join("secrets/staging.sls"),
        &format!("secrets:\n  API_TOKEN: {new_secret}\n  EXTRA: x\n"),
    );
    let out = p
        .ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(1)
        .stderr_has("~ secrets.API_TOKEN: ********")
        .stderr_has("+ secrets.EXTRA: ********")
        .stderr_has("not confirmed");
    assert!(!out.stderr.contains(&new_secret) && !out.stderr.contains(&p.secret));
    assert_eq!(
        std::fs::read_to_string(p.on_host("out/token"))
            .unwrap()
            .trim(),
        p.secret
    );
    p.ektool()
        .args(&["provision", "--env", "staging", "--yes"])
        .run()
        .success();
    assert_eq!(
        std::fs::read_to_string(p.on_host("out/token"))
            .unwrap()
            .trim(),
        new_secret
    );

    // secrets get: the host's file, 0600 locally.
    std::fs::remove_file(p.tree().join("secrets/staging.sls")).unwrap();
    // Without the local file, provision refuses rather than keep or drop them.
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has("ektool secrets get --env staging");
    p.ektool()
        .args(&["secrets", "get", "--env", "staging"])
        .run()
        .success();
    let local = p.tree().join("secrets/staging.sls");
    assert_eq!(
        std::fs::metadata(&local).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&local)
            .unwrap()
            .contains(&new_secret)
    );

    // Users: bob replaces alice; alice's keys are revoked.
    p.config(&[("bob", BOB)]);
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success();
    assert_eq!(std::fs::read_to_string(&alice_keys).unwrap(), "");
    assert_eq!(
        std::fs::read_to_string(p.on_host("users/home/bob/.ssh/authorized_keys"))
            .unwrap()
            .trim(),
        BOB
    );
    // Nobody left with a key: refused before anything changes.
    p.config(&[("bob", "")]);
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has("nobody able to log in");
    assert_eq!(
        std::fs::read_to_string(p.on_host("users/home/bob/.ssh/authorized_keys"))
            .unwrap()
            .trim(),
        BOB
    );
}

#[test]
fn failed_states_and_render_errors_fail_the_command() {
    let p = Project::new();
    let fp = p.host.fingerprint();
    write(
        &p.tree().join("states/app.sls"),
        "broken:\n  cmd.run:\n    - name: \"exit 3\"\n",
    );
    p.ektool()
        .args(&["provision", "--env", "staging", "--trust-host-key", &fp])
        .run()
        .code(1)
        .stdout_has("FAILED  broken (cmd.run exit 3)")
        .stderr_has("1 state failed")
        .stderr_has("broken (cmd.run exit 3)");

    // --dry-run: test=True on a staged tree that is then discarded.
    write(
        &p.tree().join("states/app.sls"),
        "fine:\n  file.managed:\n    - name: /srv/ektool-host/never\n    - contents: x\n",
    );
    let before = std::fs::read_link(p.on_host("prov/tree")).unwrap();
    p.ektool()
        .args(&["--dry-run", "provision", "--env", "staging"])
        .run()
        .success()
        .stdout_has("would change  fine")
        .stdout_has("left out: pillar/production, secrets/")
        .stdout_has("plan for ");
    // The plan is a value scripts can read.
    let dry = p
        .ektool()
        .args(&[
            "--output",
            "json",
            "--dry-run",
            "provision",
            "--env",
            "staging",
        ])
        .run()
        .success()
        .json();
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["plan"]["provisioner"], "salt", "{dry}");
    assert!(
        dry["plan"]["hosts"][0]["secrets"]["action"].is_string(),
        "{dry}"
    );
    assert!(
        dry["plan"]["hosts"][0]["users"]["ensure"].is_array(),
        "{dry}"
    );
    assert_eq!(std::fs::read_link(p.on_host("prov/tree")).unwrap(), before);
    assert!(!p.host.local_path("never").exists());
    assert_eq!(
        std::fs::read_dir(p.on_host("prov/trees")).unwrap().count(),
        1
    );

    // A render error is reported as such, and fails.
    write(
        &p.tree().join("states/app.sls"),
        "broken:\n  file.managed:\n    - name: {{ foo(\n",
    );
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(1)
        .stderr_has("salt could not render the configuration")
        .stderr_has("Rendering SLS 'base:app' failed");
}

#[test]
fn db_dump_and_load_stream_over_ssh() {
    let Some(port) = ektool_tests::pg_port() else {
        return;
    };
    let p = Project::new();
    std::fs::write(
        p.dir.path().join("known_hosts"),
        format!("{}\n", p.host.known_hosts_line()),
    )
    .unwrap();
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-tAc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let db = p.db_name();
    psql(&format!("CREATE DATABASE {db}"));
    let psql_db = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                &db,
                "-tAc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    psql_db(
        "CREATE TABLE notes (id int primary key, body text); INSERT INTO notes VALUES (1, 'first')",
    );
    p.ektool()
        .args(&["db", "dump", "--env", "staging", "-o", "dump.sql"])
        .run()
        .success();
    let dump = p.dir.path().join("dump.sql");
    assert_eq!(
        std::fs::metadata(&dump).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&dump).unwrap().contains("first"));
    // Nothing was left on the server (the host's sandbox holds no .sql).
    assert!(p.grep_host("CREATE TABLE").is_empty());

    psql_db("UPDATE notes SET body = 'changed'");
    p.ektool()
        .args(&["db", "load", "--env", "staging", "dump.sql"])
        .run()
        .success();
    assert_eq!(psql_db("SELECT body FROM notes"), "first");

    // Production: refused without the explicit flag, before connecting.
    p.ektool()
        .args(&["db", "load", "--env", "production", "dump.sql"])
        .run()
        .code(2)
        .stderr_has("--allow-production");
    psql(&format!("DROP DATABASE {db}"));
}

#[test]
fn the_script_provisioner_runs_from_the_tree_and_fails_with_its_script() {
    let p = Project::new();
    std::fs::write(
        p.dir.path().join("known_hosts"),
        format!("{}\n", p.host.known_hosts_line()),
    )
    .unwrap();
    let config = std::fs::read_to_string(p.dir.path().join("ektool.toml")).unwrap();
    let config = config.replace(
        "salt_call = ",
        "provisioner = \"script\"\nscript = \"bootstrap.sh\"\nsalt_call = ",
    );
    std::fs::write(p.dir.path().join("ektool.toml"), config).unwrap();
    let out = p.on_host("out/script.txt");
    write(&p.tree().join("NOTES.md"), "not configuration\n");
    write(
        &p.tree().join("bootstrap.sh"),
        &format!(
            "set -eu\nmkdir -p {dir}\nprintf '%s %s %s' \"$EKTOOL_ENV\" \"$(stat -c %a \"$EKTOOL_SECRETS\")\" \"${{EKTOOL_DRY_RUN:-0}}\" > {dir}/script.txt\n",
            dir = format!("{}/{}/out", SshHost::MOUNT, p.name),
        ),
    );
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success()
        .stdout_has("ok  bootstrap.sh (script.run bootstrap.sh)");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "staging 600 0");
    // The tree on the host holds the script, and no other file of the tree.
    assert!(p.on_host("prov/tree/bootstrap.sh").exists());
    assert!(!p.on_host("prov/tree/NOTES.md").exists());

    write(&p.tree().join("bootstrap.sh"), "echo broken >&2; exit 4\n");
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(1)
        .stderr_has("exit code 4: broken");
}

/// Hosts found by EC2 tag (moto gives the instance the bench host's
/// address): provision reaches them like listed ones, first contact
/// included, and calls exactly what `iam-policy provision` lists for it.
#[tokio::test]
async fn hosts_found_by_ec2_tag_are_provisioned_like_listed_ones() {
    use ec2kit::Tags;

    let p = Project::new();
    let role = unique("prov-web");
    let role_tag = Tags::from_iter([("Role".to_owned(), role.clone())]);
    crate::moto::launch_at("us-gov-west-1", "127.0.0.1", role_tag).await;
    let sandbox = format!("{}/{}", SshHost::MOUNT, p.name);
    let config = std::fs::read_to_string(p.dir.path().join("ektool.toml")).unwrap()
        + &format!(
            r#"
[environments.fleet]
path = "{sandbox}/fleet"
ec2 = {{ tag = "Role={role}", region = "us-gov-west-1", user = "root", port = {port} }}

[environments.fleet.provision]
tree = "{tree}"
path = "{sandbox}/prov"
salt_call = "{salt}"
users_root = "{sandbox}/users"
"#,
            port = p.host.port,
            tree = p.tree().display(),
            salt = ektool_tests::salt_call(),
        );
    std::fs::write(p.dir.path().join("ektool.toml"), config).unwrap();
    let actions = p.dir.path().join("actions");
    Ektool::moto()
        .current_dir(p.dir.path())
        .env("EKTOOL_RECORD_ACTIONS", actions.to_str().unwrap())
        .args(&["provision", "--env", "fleet"])
        .run()
        .code(2)
        .stderr_has(&format!("[127.0.0.1]:{} is a new host", p.host.port))
        .stderr_has(&p.host.fingerprint());
    assert!(!p.on_host("prov").exists());
    assert_eq!(
        crate::harness::recorded_actions(&actions)
            .into_iter()
            .collect::<Vec<_>>(),
        ["ec2:DescribeInstances", "ec2:DescribeRegions"]
    );
}

/// `(owner uid, mode)` of a path, not following a link.
fn owner_mode(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

/// A project already provisioned once (alice managed, host key trusted).
fn provisioned() -> Project {
    let p = Project::new();
    p.ektool()
        .args(&[
            "provision",
            "--env",
            "staging",
            "--trust-host-key",
            &p.host.fingerprint(),
        ])
        .run()
        .success();
    p
}

/// C1: a developer who replaces `~/.ssh` (or `authorized_keys`) with a
/// link to a root-owned directory never gets root to chmod, chown or
/// write there: the account is refused, naming the path, on the ensure
/// path and on the revoke path, and the target stays as it was.
#[test]
fn a_developer_s_links_never_make_root_touch_their_target() {
    let p = provisioned();
    let victim = p.on_host("users/victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(victim.join("precious"), "root's\n").unwrap();
    let victim_on_host = format!("{}/{}/users/victim", SshHost::MOUNT, p.name);
    let ssh_dir = p.on_host("users/home/alice/.ssh");
    std::fs::remove_dir_all(&ssh_dir).unwrap();
    std::os::unix::fs::symlink(&victim_on_host, &ssh_dir).unwrap();
    let untouched = || {
        assert_eq!(owner_mode(&victim), (0, 0o755));
        assert!(!victim.join("authorized_keys").exists());
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            1,
            "nothing new in the target"
        );
        assert_eq!(owner_mode(&victim.join("precious")).0, 0);
    };

    // Ensure: alice is still in the list (a key changed, so her keys are rewritten).
    p.config(&[("alice", BOB)]);
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has("refusing to manage alice")
        .stderr_has("home/alice/.ssh is a symbolic link");
    untouched();

    // Revoke: alice leaves the list.
    p.config(&[("bob", BOB)]);
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has("refusing to manage alice")
        .stderr_has(".ssh is a symbolic link");
    untouched();
    // Refused before anything changed: bob was not created either.
    assert!(
        !std::fs::read_to_string(p.on_host("users/etc/passwd"))
            .unwrap()
            .contains("bob:")
    );

    // authorized_keys itself a link to a root-owned file.
    std::fs::remove_file(&ssh_dir).unwrap();
    std::fs::create_dir(&ssh_dir).unwrap();
    let alice_uid = owner_mode(&p.on_host("users/home/alice")).0;
    std::os::unix::fs::chown(&ssh_dir, Some(alice_uid), None).unwrap();
    std::os::unix::fs::symlink(
        format!("{victim_on_host}/precious"),
        ssh_dir.join("authorized_keys"),
    )
    .unwrap();
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has(".ssh/authorized_keys is a symbolic link");
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "root's\n"
    );
    untouched();

    // A home that is not the developer's own (root's directory).
    std::fs::remove_file(ssh_dir.join("authorized_keys")).unwrap();
    std::os::unix::fs::chown(p.on_host("users/home/alice"), Some(0), None).unwrap();
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has("home/alice is not its own");
}

/// M11: a revoked developer loses every way in (keys in both files,
/// password, account, shell) and the groups the config granted; back in
/// the list, the account works again.
#[test]
fn revoking_a_developer_closes_every_door() {
    let p = Project::new();
    p.config(&[("alice", ALICE), ("bob", BOB)]);
    p.ektool()
        .args(&[
            "provision",
            "--env",
            "staging",
            "--trust-host-key",
            &p.host.fingerprint(),
        ])
        .run()
        .success();
    // Alice copies her key where OpenSSH also looks.
    let ssh = p.on_host("users/home/alice/.ssh");
    let alice_uid = owner_mode(&ssh).0;
    std::fs::write(ssh.join("authorized_keys2"), format!("{ALICE}\n")).unwrap();
    std::os::unix::fs::chown(ssh.join("authorized_keys2"), Some(alice_uid), None).unwrap();
    let line = |file: &str, name: &str| -> Vec<String> {
        std::fs::read_to_string(p.on_host(&format!("users/etc/{file}")))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {file}"))
            .split(':')
            .map(str::to_owned)
            .collect()
    };
    assert!(line("group", "login")[3].split(',').any(|m| m == "alice"));

    p.config(&[("bob", BOB)]);
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success();
    assert_eq!(
        std::fs::read_to_string(ssh.join("authorized_keys")).unwrap(),
        ""
    );
    assert!(!ssh.join("authorized_keys2").exists());
    let shadow = line("shadow", "alice");
    assert!(shadow[1].starts_with('!'), "password locked: {shadow:?}");
    assert_eq!(shadow[7], "1", "account expired: {shadow:?}");
    assert!(line("passwd", "alice")[6].ends_with("/nologin"));
    assert!(!line("group", "login")[3].split(',').any(|m| m == "alice"));
    // Bob kept everything.
    assert!(line("group", "login")[3].split(',').any(|m| m == "bob"));
    assert_eq!(line("passwd", "bob")[6], "/bin/bash");

    // Back in the list: shell, expiry and group return.
    p.config(&[("alice", ALICE), ("bob", BOB)]);
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success();
    assert_eq!(line("passwd", "alice")[6], "/bin/bash");
    assert_eq!(line("shadow", "alice")[7], "");
    assert!(line("group", "login")[3].split(',').any(|m| m == "alice"));
}

/// L12: root and system accounts are never developers.
#[test]
fn root_and_system_accounts_are_refused_as_developers() {
    let p = Project::new();
    let fp = p.host.fingerprint();
    p.config(&[("root", ALICE)]);
    p.ektool()
        .args(&["provision", "--env", "staging", "--trust-host-key", &fp])
        .run()
        .code(2)
        .stderr_has("`root` cannot be a developer");
    // A system account that exists on the host and ektool did not create.
    let passwd = p.on_host("users/etc/passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str("www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n");
    std::fs::write(&passwd, text).unwrap();
    p.config(&[("www-data", ALICE)]);
    p.ektool()
        .args(&["provision", "--env", "staging", "--trust-host-key", &fp])
        .run()
        .code(2)
        .stderr_has("refusing to manage www-data")
        .stderr_has("system account (uid 33");
    assert!(!p.on_host("prov/tree").exists(), "nothing was applied");
}

/// Waits (bounded) until `what` holds.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..600 {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

/// M10: two provisions of one host never interleave: the second fails at
/// once naming the first (nothing of it staged), the first finishes; and
/// the tree applied is the resolved `trees/<id>`, not the `tree` link.
#[test]
fn two_provisions_of_one_host_never_interleave() {
    let p = provisioned();
    let sandbox = format!("{}/{}", SshHost::MOUNT, p.name);
    // A state that holds the first run until the test lets it go.
    write(
        &p.tree().join("states/app.sls"),
        &format!(
            "hold:\n  cmd.run:\n    - name: \"i=0; while [ ! -e {sandbox}/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo held\"\n"
        ),
    );
    let link = p.on_host("prov/tree");
    let old_tree = std::fs::read_link(&link).unwrap();
    let first = {
        let e = p.ektool().args(&["provision", "--env", "staging"]);
        std::thread::spawn(move || e.run())
    };
    // Holding its lock, switched to its tree, applying it.
    wait_for("the first run to apply", || {
        std::fs::read_link(&link).is_ok_and(|t| t != old_tree)
    });
    assert!(
        std::fs::read_to_string(p.on_host("prov/.ektool/lock/owner.json"))
            .unwrap()
            .contains("\"provision\"")
    );
    let trees_before = std::fs::read_dir(p.on_host("prov/trees")).unwrap().count();
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(1)
        .stderr_has("is locked by")
        .stderr_has("provision")
        .stderr_has("prov/.ektool/lock")
        .stderr_has("--lock-wait");
    assert_eq!(
        std::fs::read_dir(p.on_host("prov/trees")).unwrap().count(),
        trees_before,
        "the second run staged nothing"
    );
    // A third run waits for the lock instead, and goes on once it is free.
    let waiting = {
        let e = p
            .ektool()
            .args(&["provision", "--env", "staging", "--lock-wait", "5m"]);
        std::thread::spawn(move || e.run())
    };
    std::fs::write(p.on_host("go"), "").unwrap();
    first.join().unwrap().success().stdout_has("hold (cmd.run");
    waiting
        .join()
        .unwrap()
        .success()
        .stdout_has("hold (cmd.run");
    assert!(!p.on_host("prov/.ektool/lock").exists(), "released");
    // Salt read the staged directory itself.
    let minion = std::fs::read_to_string(p.on_host("prov/tree/.salt/minion")).unwrap();
    assert!(minion.contains("/prov/trees/"), "{minion}");
    assert!(!minion.contains("/prov/tree/"), "{minion}");
}

/// M10: a provision does not run while a deploy of the environment holds
/// its lock; a deploy root it locks keeps its owner for `.ektool`.
#[test]
fn a_held_deploy_lock_stops_a_provision() {
    let p = provisioned();
    let app = p.on_host("app");
    std::fs::create_dir_all(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(4242), Some(4242)).unwrap();
    let owner = serde_json::json!({
        "actor": {"user": "alice", "machine": "laptop", "pid": 4242},
        "environment": "staging", "since": "2024-01-01T00:00:00Z",
        "action": "deploy v2.0.0", "message": "big one", "token": "x"
    });
    std::fs::create_dir_all(app.join(".ektool/lock")).unwrap();
    std::fs::write(app.join(".ektool/lock/owner.json"), owner.to_string()).unwrap();
    let tree_before = std::fs::read_link(p.on_host("prov/tree")).unwrap();
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(1)
        .stderr_has("is locked by alice@laptop")
        .stderr_has("deploy v2.0.0");
    // A dry run says so, and takes nothing.
    p.ektool()
        .args(&["--dry-run", "provision", "--env", "staging"])
        .run()
        .success()
        .stderr_has("is locked by alice@laptop")
        .stderr_has("a real run would stop here");
    assert_eq!(
        std::fs::read_link(p.on_host("prov/tree")).unwrap(),
        tree_before
    );
    assert!(
        !p.on_host("prov/.ektool/lock").exists(),
        "its own lock given back"
    );
    assert!(
        app.join(".ektool/lock/owner.json").exists(),
        "the deploy's lock kept"
    );

    // The deploy ends: the provision runs, and leaves the deploy's
    // `.ektool` to the deploy root's owner.
    std::fs::remove_dir_all(app.join(".ektool")).unwrap();
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success();
    assert_eq!(owner_mode(&app.join(".ektool")).0, 4242);
    assert!(!app.join(".ektool/lock").exists());
}

/// Every file under `dir` with its bytes, mode, owner and mtime.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32, u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(&path).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            out.push((path, bytes, m.mode(), m.uid(), m.mtime()));
        }
    }
    out.sort();
    out
}

/// M12: `--dry-run` changes nothing anywhere: no known_hosts entry, no
/// prompt, no file on the host (not even on first contact), no local file.
#[test]
fn dry_runs_change_nothing_anywhere() {
    let p = Project::new();
    let fp = p.host.fingerprint();
    let known_hosts = p.dir.path().join("known_hosts");

    // First contact, on a host that has no secrets yet while the pillar
    // needs them: the dry run trusts the key only for itself, and tests
    // with the local secrets staged in its scratch directory (gone after).
    let out = p
        .ektool()
        .args(&[
            "--dry-run",
            "provision",
            "--env",
            "staging",
            "--trust-host-key",
            &fp,
        ])
        .run()
        .success()
        .stderr_has("would trust")
        .stdout_has("would change  greeting")
        .stdout_has("would change  token");
    assert!(!out.stdout.contains(&p.secret), "the secret is never shown");
    drop(out);
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), "");
    assert!(!p.on_host("prov").exists(), "no provision root");
    assert!(!p.on_host("out").exists());
    assert!(
        !std::fs::read_to_string(p.on_host("users/etc/passwd"))
            .unwrap()
            .contains("alice")
    );
    // Without the fingerprint: refused, never asked.
    p.ektool()
        .args(&["--dry-run", "provision", "--env", "staging"])
        .run()
        .code(2)
        .stderr_has("--trust-host-key");

    // host trust: says what it would record, records nothing.
    p.ektool()
        .args(&[
            "--dry-run",
            "host",
            "trust",
            &p.host.target(),
            "--fingerprint",
            &fp,
            "--known-hosts",
            known_hosts.to_str().unwrap(),
        ])
        .run()
        .success()
        .stdout_has("would be recorded");
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), "");

    // A provisioned host: a dry run with changes leaves every file as it was.
    p.ektool()
        .args(&["provision", "--env", "staging", "--trust-host-key", &fp])
        .run()
        .success();
    let kh = std::fs::read_to_string(&known_hosts).unwrap();
    write(
        &p.tree().join("pillar/staging/env.sls"),
        "greeting: changed\n",
    );
    p.config(&[("alice", ALICE), ("bob", BOB)]);
    write(
        &p.tree().join("secrets/staging.sls"),
        "secrets:\n  API_TOKEN: rotated\n",
    );
    let before = snapshot(&p.on_host(""));
    p.ektool()
        .args(&["--dry-run", "provision", "--env", "staging"])
        .run()
        .success()
        .stdout_has("would change  greeting");
    assert_eq!(snapshot(&p.on_host("")), before, "the host's files changed");
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), kh);

    // secrets get: shows the difference, asks nothing, writes nothing.
    let local = p.tree().join("secrets/staging.sls");
    p.ektool()
        .args(&["--dry-run", "secrets", "get", "--env", "staging"])
        .run()
        .success()
        .stdout_has("would replace");
    assert_eq!(
        std::fs::read_to_string(&local).unwrap(),
        "secrets:\n  API_TOKEN: rotated\n"
    );
}

/// A provision run leaves a line in the audit file of each host whose
/// deploy root exists (who, what, how it ended), and `ektool audit` shows
/// it.
#[test]
fn a_provision_run_is_in_the_audit_log() {
    let p = Project::new();
    std::fs::write(
        p.dir.path().join("known_hosts"),
        format!("{}\n", p.host.known_hosts_line()),
    )
    .unwrap();
    let config = std::fs::read_to_string(p.dir.path().join("ektool.toml")).unwrap();
    let config = config.replace(
        "salt_call = ",
        "provisioner = \"script\"\nscript = \"bootstrap.sh\"\nsalt_call = ",
    );
    std::fs::write(p.dir.path().join("ektool.toml"), config).unwrap();
    write(&p.tree().join("bootstrap.sh"), "true\n");
    std::fs::create_dir_all(p.on_host("app")).unwrap();
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .success();
    write(&p.tree().join("bootstrap.sh"), "exit 4\n");
    p.ektool()
        .args(&["provision", "--env", "staging"])
        .run()
        .code(1);
    let out = p
        .ektool()
        .args(&["--output", "json", "audit", "--env", "staging"])
        .run()
        .success();
    let entries: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("provision", "success"), ("provision", "failed")],
        "{entries:#?}"
    );
    assert!(
        entries[0]["what"]
            .as_str()
            .unwrap()
            .starts_with("provision (tree ")
    );
    assert_eq!(entries[1]["message"], "1 state(s) failed", "{entries:#?}");
    let me = std::env::var("USER").unwrap_or_else(|_| "root".into());
    assert_eq!(entries[0]["who"]["user"], me.as_str());
    assert_eq!(entries[0]["host"], p.host.target().as_str());
}
