//! `jump` / `--jump`: deploying to hosts reachable only through a bastion
//! (two sshd hosts in a network namespace of their own, a real sshd
//! bastion in front of them: `ektool_tests::jump`).

use ektool_tests::jump::{Bastion, HiddenSshd};
use ektool_tests::{SshHost, git, tempdir, unique};

use crate::harness::Ektool;

#[test]
fn deploys_and_runs_through_the_bastion_with_one_connection_per_run() {
    let first = HiddenSshd::start();
    let second = HiddenSshd::beside(&first);
    let bastion = Bastion::start(&first);
    let hosts = [&first.host, &second.host];

    let dir = tempdir();
    git(
        dir.path(),
        &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
    );
    git(dir.path(), &["clone", "--quiet", "origin.git", "work"]);
    let work = dir.path().join("work");
    git(&work, &["checkout", "--quiet", "-b", "main"]);
    git(&work, &["config", "user.name", "Dev"]);
    git(&work, &["config", "user.email", "dev@example.com"]);
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        [&bastion.host, &first.host, &second.host]
            .iter()
            .map(|h| h.known_hosts_line() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let name = unique("cli-jump");
    let config = |jump: &str| {
        format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.private]
hosts = [{hosts}]
path = "{mount}/{name}"
{jump}
hooks.build = [{{ run = "echo built > built.txt" }}]
"#,
            kh = kh.display(),
            key = first.host.client_key.display(),
            hosts = hosts
                .iter()
                .map(|h| format!("\"{}\"", h.target()))
                .collect::<Vec<_>>()
                .join(", "),
            mount = SshHost::MOUNT,
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
    let first = HiddenSshd::start();
    let second = HiddenSshd::beside(&first);
    let bastion = Bastion::start(&first);
    let hosts = [&first.host, &second.host];
    let dir = tempdir();
    git(
        dir.path(),
        &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
    );
    git(dir.path(), &["clone", "--quiet", "origin.git", "work"]);
    let work = dir.path().join("work");
    git(&work, &["checkout", "--quiet", "-b", "main"]);
    git(&work, &["config", "user.name", "Dev"]);
    git(&work, &["config", "user.email", "dev@example.com"]);
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        [&bastion.host, &first.host, &second.host]
            .iter()
            .map(|h| h.known_hosts_line() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let name = unique("cli-jump-drop");
    let marker = dir.path().join("restarting");
    std::fs::write(
        work.join("ektool.toml"),
        format!(
            r#"[ssh]
user = "root"
known_hosts = "{kh}"
identity_files = ["{key}"]
use_agent = false

[environments.private]
hosts = [{hosts}]
path = "{mount}/{name}"
jump = "{jump}"
hooks.restart = [{{ run = "if [ \"$DEPLOY_ACTION\" = deploy ] && [ -f slow ]; then touch '{marker}'; sleep 20; fi" }}]
"#,
            kh = kh.display(),
            key = first.host.client_key.display(),
            hosts = hosts
                .iter()
                .map(|h| format!("\"{}\"", h.target()))
                .collect::<Vec<_>>()
                .join(", "),
            mount = SshHost::MOUNT,
            jump = bastion.host.target(),
            marker = marker.display(),
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
