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
