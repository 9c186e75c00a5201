//! `ektool host sync` between two real sshd hosts of the bench (h1 → h2).

use std::path::{Path, PathBuf};

use ektool_tests::{SshHost, ssh_host, tempdir, unique};

use crate::harness::{Ektool, Outcome};

fn authorized_keys() -> PathBuf {
    PathBuf::from(std::env::var("EKTOOL_TESTBED_DIR").expect("EKTOOL_TESTBED_DIR"))
        .join("ssh/authorized_keys")
}

pub(crate) fn known_hosts(dir: &Path, hosts: &[&SshHost]) -> PathBuf {
    let path = dir.join("known_hosts");
    let text: String = hosts
        .iter()
        .map(|h| format!("{}\n", h.known_hosts_line()))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn sync(h1: &SshHost, kh: &Path, src: &str, dst: &str, extra: &[&str]) -> Outcome {
    sync_command(h1, kh, src, dst, extra).run()
}

/// The `ektool host sync` invocation [`sync`] runs.
pub(crate) fn sync_command(
    h1: &SshHost,
    kh: &Path,
    src: &str,
    dst: &str,
    extra: &[&str],
) -> Ektool {
    Ektool::new()
        .args(&[
            "host",
            "sync",
            src,
            dst,
            "-i",
            h1.client_key.to_str().unwrap(),
            "--known-hosts",
            kh.to_str().unwrap(),
            "--authorized-keys",
            authorized_keys().to_str().unwrap(),
        ])
        .args(extra)
}

pub(crate) fn paths(h1: &SshHost, h2: &SshHost, name: &str) -> (String, String) {
    (
        format!("{}:{}/{name}/src", h1.target(), SshHost::MOUNT),
        format!("{}:{}/{name}/dst", h2.target(), SshHost::MOUNT),
    )
}

#[test]
fn syncs_and_reports_then_removes_the_key() {
    let (h1, h2) = (ssh_host(1), ssh_host(2));
    let dir = tempdir();
    let kh = known_hosts(dir.path(), &[&h1, &h2]);
    let name = unique("cli-sync");
    let src_dir = h1.local_path(&format!("{name}/src"));
    std::fs::create_dir_all(src_dir.join("sub")).unwrap();
    std::fs::write(src_dir.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(src_dir.join("sub/b.bin"), vec![7u8; 10_000]).unwrap();
    std::fs::write(src_dir.join("skip.cache"), "no\n").unwrap();
    let (src, dst) = paths(&h1, &h2, &name);

    // --dry-run: the plan, and nothing anywhere.
    sync(&h1, &kh, &src, &dst, &["--dry-run"])
        .success()
        .stdout_has("StrictHostKeyChecking=yes")
        .stdout_has("restrict,expiry-time=")
        .stdout_has("dry run: nothing changed");
    assert!(!h2.local_path(&name).exists());

    let out = sync(
        &h1,
        &kh,
        &src,
        &dst,
        &["--output", "json", "--exclude", "*.cache"],
    )
    .success();
    let report = out.json();
    assert_eq!(report["stats"]["files_transferred"], 2, "{report}");
    assert_eq!(report["stats"]["transferred_size"], 10_006);
    assert_eq!(report["stale_keys_removed"], 0);
    let dst_dir = h2.local_path(&format!("{name}/dst"));
    assert_eq!(
        std::fs::read(dst_dir.join("sub/b.bin")).unwrap(),
        vec![7u8; 10_000]
    );
    assert!(!dst_dir.join("skip.cache").exists());
    let marker = report["key_comment"].as_str().unwrap();
    assert!(
        !std::fs::read_to_string(authorized_keys())
            .unwrap()
            .contains(marker)
    );

    // The table: a second run transfers nothing.
    sync(&h1, &kh, &src, &dst, &["--exclude", "*.cache"])
        .success()
        .stdout_has("0 transferred")
        .stdout_has("temporary key removed");
}

#[test]
fn an_untrusted_destination_is_refused_before_anything_runs() {
    let (h1, h2) = (ssh_host(1), ssh_host(2));
    let dir = tempdir();
    // Only the source is trusted.
    let kh = known_hosts(dir.path(), &[&h1]);
    let name = unique("cli-sync-untrusted");
    std::fs::create_dir_all(h1.local_path(&format!("{name}/src"))).unwrap();
    let before = std::fs::read(authorized_keys()).unwrap();
    let (src, dst) = paths(&h1, &h2, &name);
    sync(&h1, &kh, &src, &dst, &[])
        .code(1)
        .stderr_has("host key is not known")
        .stderr_has(&h2.fingerprint())
        .stderr_has("ektool host trust");
    assert!(!h2.local_path(&name).exists());
    assert_eq!(std::fs::read(authorized_keys()).unwrap(), before);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (h1, h2) = (ssh_host(1), ssh_host(2));
    let dir = tempdir();
    let kh = known_hosts(dir.path(), &[&h1, &h2]);
    sync(&h1, &kh, &h1.target(), &format!("{}:/x", h2.target()), &[])
        .code(2)
        .stderr_has("expected [user@]host[:port]:/absolute/path");
    sync(
        &h1,
        &kh,
        &format!("{}:/srv/x", h1.target()),
        &format!("{}:/", h2.target()),
        &[],
    )
    .code(2)
    .stderr_has("cannot be /");
}
