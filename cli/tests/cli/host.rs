//! `ektool host trust` and `ektool host run` against sshd.

use ektool_tests::{ssh_host, tempdir};

use crate::harness::Ektool;

#[test]
fn trust_then_run_with_strict_checking() {
    let host = ssh_host(1);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    let kh_s = kh.to_str().unwrap();
    let key = host.client_key.to_str().unwrap();

    // Unknown key: refused, fingerprint shown, nothing ran.
    Ektool::new()
        .args(&[
            "host",
            "run",
            &host.target(),
            "--known-hosts",
            kh_s,
            "-i",
            key,
            "--",
            "echo",
            "hi",
        ])
        .run()
        .code(1)
        .stderr_has(&host.fingerprint())
        .stderr_has("ektool host trust");

    // Non-interactive trust without a fingerprint is a usage error that shows it.
    Ektool::new()
        .args(&["host", "trust", &host.target(), "--known-hosts", kh_s])
        .run()
        .code(2)
        .stderr_has(&host.fingerprint());
    assert!(!kh.exists());

    // The wrong fingerprint records nothing.
    Ektool::new()
        .args(&[
            "host",
            "trust",
            &host.target(),
            "--known-hosts",
            kh_s,
            "--fingerprint",
            "SHA256:nope",
        ])
        .run()
        .code(1)
        .stderr_has("is not the expected");
    assert!(!kh.exists());

    Ektool::new()
        .args(&[
            "host",
            "trust",
            &host.target(),
            "--known-hosts",
            kh_s,
            "--fingerprint",
            &host.fingerprint(),
        ])
        .run()
        .success()
        .stdout_has("trusted");

    Ektool::new()
        .args(&[
            "host",
            "run",
            &host.target(),
            "--known-hosts",
            kh_s,
            "-i",
            key,
            "--",
            "echo",
            "hi there",
        ])
        .run()
        .success()
        .stdout_has("hi there");

    // A failing command is exit 1 and says how it ended.
    Ektool::new()
        .args(&[
            "host",
            "run",
            &host.target(),
            "--known-hosts",
            kh_s,
            "-i",
            key,
            "exit 4",
        ])
        .run()
        .code(1)
        .stderr_has("exit code 4");
}

/// Kills the agent when the test ends, pass or fail.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn agent_identities_are_tried_in_turn() {
    let host = ssh_host(2);
    let dir = tempdir();
    let sock = dir.path().join("agent.sock");
    let _agent = Agent(
        std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A key the host does not accept goes in first: the right one is second.
    let stranger = dir.path().join("stranger");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    for key in [&stranger, &host.client_key] {
        let ok = std::process::Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &sock)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let kh = host.write_known_hosts(dir.path());
    // HOME without ~/.ssh keys: the agent is the only way in.
    Ektool::new()
        .env("HOME", dir.path().to_str().unwrap())
        .env("SSH_AUTH_SOCK", sock.to_str().unwrap())
        .args(&[
            "host",
            "run",
            &host.target(),
            "--known-hosts",
            kh.to_str().unwrap(),
            "--",
            "echo",
            "via agent",
        ])
        .run()
        .success()
        .stdout_has("via agent");
    // Without the agent the same call cannot log in.
    Ektool::new()
        .env("HOME", dir.path().to_str().unwrap())
        .env_remove("SSH_AUTH_SOCK")
        .args(&[
            "host",
            "run",
            &host.target(),
            "--known-hosts",
            kh.to_str().unwrap(),
            "--",
            "true",
        ])
        .run()
        .code(1)
        .stderr_has("authentication");
}

/// `host run --timeout` takes a duration with its unit, like every
/// duration flag; a bare number is refused with a hint, before connecting.
#[test]
fn run_timeouts_are_durations_with_units() {
    let host = ssh_host(1);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{}\n", host.known_hosts_line())).unwrap();
    let run = |timeout: &str| {
        Ektool::new()
            .args(&[
                "host",
                "run",
                &host.target(),
                "--known-hosts",
                kh.to_str().unwrap(),
                "-i",
                host.client_key.to_str().unwrap(),
                "--timeout",
                timeout,
                "--",
                "sleep 5; echo finished",
            ])
            .run()
    };
    run("30").code(2).stderr_has("30s");
    run("30d").code(2).stderr_has("out of range");
    let out = run("1s").code(1);
    assert!(!out.stdout.contains("finished"), "{out:?}");
}
