//! `jump` / `--jump`: deploying to hosts reachable only through a bastion
//! (two sshd hosts in a network namespace of their own, a real sshd
//! bastion in front of them: `ektool_tests::jump`).

use ektool_tests::jump::{Bastion, HiddenSshd};
use ektool_tests::{SshHost, git, tempdir, unique};

use crate::harness::Ektool;

/// Two hidden hosts behind a bastion, an app repository's clone to deploy
/// from, and a known_hosts file trusting all three.
struct Private {
    first: HiddenSshd,
    second: HiddenSshd,
    bastion: Bastion,
    dir: tempfile::TempDir,
    work: std::path::PathBuf,
    kh: std::path::PathBuf,
}

impl Private {
    fn new() -> Self {
        let first = HiddenSshd::start();
        let second = HiddenSshd::beside(&first);
        let bastion = Bastion::start(&first);
        let dir = tempdir();
        let work = ektool_tests::origin_and_clone(dir.path());
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            [&bastion.host, &first.host, &second.host]
                .iter()
                .map(|h| h.known_hosts_line() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        Self {
            first,
            second,
            bastion,
            dir,
            work,
            kh,
        }
    }

    fn hosts(&self) -> [&SshHost; 2] {
        [&self.first.host, &self.second.host]
    }

    /// A config with environment `private` over both hosts, deploying to
    /// `name` on each, `extra` lines added to the environment.
    fn config(&self, name: &str, extra: &str) -> String {
        format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.private]
hosts = [{hosts}]
path = "{mount}/{name}"
{extra}
"#,
            kh = self.kh.display(),
            key = self.first.host.client_key.display(),
            hosts = self
                .hosts()
                .iter()
                .map(|h| format!("\"{}\"", h.target()))
                .collect::<Vec<_>>()
                .join(", "),
            mount = SshHost::MOUNT,
        )
    }
}

#[test]
fn deploys_and_runs_through_the_bastion_with_one_connection_per_run() {
    let p = Private::new();
    let (first, second, bastion) = (&p.first, &p.second, &p.bastion);
    let (kh, work) = (p.kh.clone(), p.work.clone());
    let hosts = p.hosts();
    let name = unique("cli-jump");
    let config = |extra: &str| {
        p.config(
            &name,
            &format!("{extra}\nhooks.build = [{{ run = \"echo built > built.txt\" }}]"),
        )
    };
    let with_jump = config(&format!("jump = \"{}\"", bastion.host.target()));
    std::fs::write(work.join("ektool.toml"), &with_jump).unwrap();
    std::fs::write(work.join(".gitignore"), "ektool.toml\n").unwrap();
    std::fs::write(work.join("app.txt"), "v1\n").unwrap();
    git(&work, &["add", "app.txt", ".gitignore"]);
    git(&work, &["commit", "--quiet", "-m", "v1"]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    let ektool = || Ektool::new().current_dir(&work);

    ektool().args(&["deploy"]).run().success();
    for h in hosts {
        let live = std::fs::read_to_string(h.local_path(&format!("{name}/current/REVISION")));
        assert_eq!(live.unwrap().trim(), commit, "{}", h.target());
    }
    // One ektool run, two hosts: one bastion login.
    assert_eq!(bastion.logins(), 1, "{}", bastion.log());

    let out = ektool()
        .args(&["run", "--", "cat", "built.txt"])
        .run()
        .success();
    // What docs/deploys.md shows.
    println!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.matches("| built").count(), 2, "{}", out.stdout);
    assert_eq!(bastion.logins(), 2, "{}", bastion.log());

    // Without the bastion the hosts cannot be reached; `--jump` gives it.
    std::fs::write(work.join("ektool.toml"), config("")).unwrap();
    ektool()
        .args(&["releases"])
        .run()
        .code(1)
        .stderr_has("connection failed");
    ektool()
        .args(&["releases", "--jump", &bastion.host.target()])
        .run()
        .success()
        .stdout_has(&commit[..12]);
    // A bastion of the host's own (`{ host, jump }`): the first host
    // through it, the second, without one, unreachable.
    let per_host = config("").replace(
        &format!("\"{}\", ", first.host.target()),
        &format!(
            "{{ host = \"{}\", jump = \"{}\" }}, ",
            first.host.target(),
            bastion.host.target()
        ),
    );
    assert_ne!(per_host, config(""));
    std::fs::write(work.join("ektool.toml"), &per_host).unwrap();
    let logins = bastion.logins();
    ektool()
        .args(&["releases", "--host", &first.host.target()])
        .run()
        .success()
        .stdout_has(&commit[..12]);
    assert_eq!(bastion.logins(), logins + 1, "{}", bastion.log());
    ektool()
        .args(&["releases", "--host", &second.host.target()])
        .run()
        .code(1)
        .stderr_has("connection failed");
    // A bastion whose key is not trusted is refused, naming it.
    std::fs::write(
        &kh,
        format!(
            "{}\n{}\n",
            first.host.known_hosts_line(),
            second.host.known_hosts_line()
        ),
    )
    .unwrap();
    let out = ektool()
        .args(&["releases", "--jump", &bastion.host.target()])
        .run()
        .code(1)
        .stderr_has(&bastion.host.target());
    println!("{}", out.stderr);
    let logins = bastion.logins();
    // Bad input: exit 2.
    ektool()
        .args(&["releases", "--jump", "a b"])
        .run()
        .code(2)
        .stderr_has("jump");
    assert_eq!(bastion.logins(), logins);
}

/// The bastion drops its connections while the restart hooks run after the
/// switch: the deploy fails (exit 1) and puts every host back, through a
/// new connection to the bastion.
#[test]
fn a_bastion_that_drops_mid_deploy_fails_it_and_every_host_is_put_back() {
    let p = Private::new();
    let (bastion, dir) = (&p.bastion, &p.dir);
    let work = p.work.clone();
    let hosts = p.hosts();
    let name = unique("cli-jump-drop");
    let marker = dir.path().join("restarting");
    std::fs::write(
        work.join("ektool.toml"),
        p.config(
            &name,
            &format!(
                "jump = \"{jump}\"\nhooks.restart = [{{ run = \"if [ \\\"$DEPLOY_ACTION\\\" = deploy ] && [ -f slow ]; then touch '{marker}'; sleep 20; fi\" }}]",
                jump = bastion.host.target(),
                marker = marker.display(),
            ),
        ),
    )
    .unwrap();
    std::fs::write(work.join(".gitignore"), "ektool.toml\n").unwrap();
    let commit = |files: &[&str]| {
        for f in files {
            std::fs::write(work.join(f), "x\n").unwrap();
        }
        git(&work, &["add", "."]);
        git(&work, &["commit", "--quiet", "-m", "next"]);
        git(&work, &["push", "--quiet", "origin", "main"]);
        git(&work, &["rev-parse", "HEAD"])
    };
    let live = |h: &SshHost| {
        std::fs::read_to_string(h.local_path(&format!("{name}/current/REVISION")))
            .map(|s| s.trim().to_owned())
            .ok()
    };
    let good = commit(&["app.txt"]);
    Ektool::new()
        .current_dir(&work)
        .args(&["deploy"])
        .run()
        .success();
    let _slow = commit(&["slow"]);
    let deploy = {
        let work = work.clone();
        std::thread::spawn(move || Ektool::new().current_dir(&work).args(&["deploy"]).run())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restart hook never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let logins = bastion.logins();
    bastion.kill_sessions();
    let out = deploy.join().unwrap().code(1);
    for h in hosts {
        assert_eq!(
            live(h).as_deref(),
            Some(good.as_str()),
            "{}: {}",
            h.target(),
            out.stderr
        );
    }
    assert!(
        bastion.logins() > logins,
        "the hosts were put back through a new bastion connection: {}",
        out.stderr
    );
    println!("{}", out.stderr);
}

/// `ektool host trust --jump`: a hidden host's key is fetched through the
/// bastion (whose own key must be trusted) and recorded.
#[test]
fn host_trust_fetches_a_hidden_hosts_key_through_the_bastion() {
    let hidden = HiddenSshd::start();
    let bastion = Bastion::start(&hidden);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    // The bastion is logged in to (the host only shows its key).
    let config = dir.path().join("ektool.toml");
    std::fs::write(
        &config,
        format!(
            "[ssh]\nuser = \"root\"\nidentity_files = [\"{}\"]\nuse_agent = false\n",
            hidden.host.client_key.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let trust = |jump: Option<&str>| {
        let kh = kh.display().to_string();
        let target = hidden.host.target();
        let fingerprint = hidden.host.fingerprint();
        let mut args = vec![
            "host",
            "trust",
            target.as_str(),
            "--fingerprint",
            fingerprint.as_str(),
            "--known-hosts",
            kh.as_str(),
        ];
        if let Some(j) = jump {
            args.extend(["--jump", j]);
        }
        Ektool::new()
            .env("EKTOOL_CONFIG", &config)
            .args(&args)
            .run()
    };
    let jump = bastion.host.target();
    // The bastion itself is not trusted yet: refused, nothing recorded.
    trust(Some(&jump)).code(1).stderr_has(&jump);
    assert!(!kh.exists() || std::fs::read_to_string(&kh).unwrap().is_empty());
    std::fs::write(&kh, bastion.host.known_hosts_line() + "\n").unwrap();
    // Directly, the host cannot be reached.
    trust(None).code(1).stderr_has("connection failed");
    trust(Some(&jump)).success();
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(
        recorded.contains(&hidden.host.known_hosts_line()),
        "{recorded}"
    );
}

/// `ektool provision` through the environment's bastion: first contact
/// with a new host (its key fetched through the bastion, trusted with
/// `--trust-host-key`), then the script provisioner runs on it.
#[test]
fn provision_reaches_a_new_host_through_the_bastion() {
    let hidden = HiddenSshd::start();
    let bastion = Bastion::start(&hidden);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, bastion.host.known_hosts_line() + "\n").unwrap();
    let name = unique("jump-prov");
    let sandbox = format!("{}/{name}", SshHost::MOUNT);
    let tree = dir.path().join("conf");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("bootstrap.sh"),
        format!(
            "set -eu\nmkdir -p {sandbox}/out\necho \"$EKTOOL_ENV\" > {sandbox}/out/script.txt\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.private]
hosts = ["{target}"]
path = "{sandbox}/app"
jump = "{jump}"

[environments.private.provision]
tree = "{tree}"
path = "{sandbox}/prov"
provisioner = "script"
script = "bootstrap.sh"
"#,
            kh = kh.display(),
            key = hidden.host.client_key.display(),
            target = hidden.host.target(),
            jump = bastion.host.target(),
            tree = tree.display(),
        ),
    )
    .unwrap();
    Ektool::new()
        .current_dir(dir.path())
        .args(&["provision", "--trust-host-key", &hidden.host.fingerprint()])
        .run()
        .success();
    let out = hidden.host.local_path(&format!("{name}/out/script.txt"));
    assert_eq!(std::fs::read_to_string(out).unwrap(), "private\n");
    assert!(
        std::fs::read_to_string(&kh)
            .unwrap()
            .contains(&hidden.host.known_hosts_line())
    );
    assert_eq!(bastion.logins(), 1, "{}", bastion.log());
}
