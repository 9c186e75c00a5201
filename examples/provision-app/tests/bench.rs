//! The example, built and run as a team runs it, against a bench host:
//! the real `salt-call --local` applies a small tree into this test's own
//! sandbox on the host, and developers go into a sandboxed user database
//! (`useradd --prefix`), as `ektool provision`'s own tests do.

// A test fails loudly at the first broken step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ektool_tests::{SshHost, salt_call, ssh_host, tempdir, unique};

const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceAliceAliceAliceAlice alice@laptop";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A tree, a home whose `~/.ssh` knows the bench host, and a sandbox on
/// the host (`/srv/ektool-host/<name>`).
struct Project {
    dir: tempfile::TempDir,
    host: SshHost,
    name: String,
}

impl Project {
    fn new() -> Self {
        let dir = tempdir();
        let host = ssh_host(1);
        let name = unique("provision-app");
        let sandbox = format!("{}/{name}", SshHost::MOUNT);
        let tree = dir.path().join("provision");
        write(&tree.join("states/top.sls"), "base:\n  '*':\n    - app\n");
        write(
            &tree.join("states/app.sls"),
            &format!(
                "greeting:\n  file.managed:\n    - name: {sandbox}/out/greeting.txt\n    - makedirs: True\n    - contents: \"{{{{ pillar['greeting'] }}}}\"\n\
                 token:\n  file.managed:\n    - name: {sandbox}/out/token\n    - mode: '0600'\n    - show_changes: False\n    - contents: \"{{{{ pillar['secrets']['API_TOKEN'] }}}}\"\n"
            ),
        );
        write(
            &tree.join("pillar/staging/top.sls"),
            "base:\n  '*':\n    - env\n    - secrets\n",
        );
        write(
            &tree.join("pillar/staging/env.sls"),
            "greeting: hello-staging\n",
        );
        write(
            &tree.join("secrets/staging.sls.example"),
            "secrets:\n  API_TOKEN: change-me\n",
        );
        let users = host.local_path(&format!("{name}/users"));
        write(
            &users.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\n",
        );
        write(&users.join("etc/group"), "root:x:0:\n");
        write(&users.join("etc/shadow"), "root:*:19000:0:99999:7:::\n");
        write(&users.join("etc/gshadow"), "root:*::\n");
        std::fs::create_dir_all(users.join("home")).unwrap();
        let ssh = dir.path().join("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::copy(&host.client_key, ssh.join("id_ed25519")).unwrap();
        host.write_known_hosts(&ssh);
        let p = Self { dir, host, name };
        p.secret("first-token");
        p
    }

    fn secret(&self, token: &str) {
        let path = self.dir.path().join("provision/secrets/staging.sls");
        write(&path, &format!("secrets:\n  API_TOKEN: {token}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn on_host(&self, rel: &str) -> PathBuf {
        self.host.local_path(&format!("{}/{rel}", self.name))
    }

    /// `provision-app ARGS` in the project, its stdin closed (a question
    /// is answered no).
    fn run(&self, args: &[&str]) -> Output {
        let sandbox = format!("{}/{}", SshHost::MOUNT, self.name);
        let out = Command::new(env!("CARGO_BIN_EXE_provision-app"))
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path().join("home"))
            .env_remove("SSH_AUTH_SOCK")
            .env("PROVISION_APP_STAGING_HOSTS", self.host.target())
            .env("PROVISION_APP_ROOT", format!("{sandbox}/prov"))
            .env("PROVISION_APP_DEPLOY_ROOT", format!("{sandbox}/app"))
            .env("PROVISION_APP_USERS_ROOT", format!("{sandbox}/users"))
            .env("PROVISION_APP_SALT_CALL", salt_call())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "provision-app {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.on_host(rel))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.host.local_path(&self.name));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn provision_app_configures_a_host_and_guards_its_secrets() {
    let p = Project::new();

    // A host that is not one of the environment's is refused.
    let out = p.run(&["staging", "--host", "web9.example.com"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("web9.example.com is not a host"));
    assert!(!p.on_host("prov").exists());

    // The run: Salt applies the tree with the secrets; alice gets her key.
    let out = p.run(&["staging", "--host", &p.host.target()]);
    assert!(out.status.success());
    assert_eq!(p.read("out/greeting.txt"), "hello-staging");
    assert_eq!(p.read("out/token"), "first-token");
    assert!(p.read("users/etc/passwd").contains("alice:"));
    assert_eq!(p.read("users/home/alice/.ssh/authorized_keys"), ALICE);

    // A dry run plans and tests, and changes nothing on the host.
    p.secret("second-token");
    let tree = std::fs::read_link(p.on_host("prov/tree")).unwrap();
    let out = p.run(&["staging", "--dry-run"]);
    assert!(out.status.success());
    assert_eq!(p.read("out/token"), "first-token");
    assert_eq!(std::fs::read_link(p.on_host("prov/tree")).unwrap(), tree);

    // Rotated secrets: not overwritten unless confirmed (stdin says no)...
    let out = p.run(&["staging"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("secrets.API_TOKEN"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("second-token"), "values are masked");
    assert_eq!(p.read("out/token"), "first-token");
    // ...and overwritten with --yes.
    let out = p.run(&["staging", "--yes"]);
    assert!(out.status.success());
    assert_eq!(p.read("out/token"), "second-token");
}
