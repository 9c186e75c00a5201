//! `snapkit::rsync` between two real sshd hosts of the bench (h1 → h2,
//! each with its own /srv/ektool-host), authorising the temporary key in
//! the bench's shared AuthorizedKeysFile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2kit::{SshOptions, SshRemote, SshTarget};
use ektool_tests::{SshHost, ssh_host, tempdir, unique};
use snapkit::rsync::{self, Destination, SyncError, SyncSpec};

fn remote(host: &SshHost, dir: &Path) -> SshRemote {
    let kh = dir.join(format!("known_hosts_{}", host.n));
    std::fs::write(&kh, format!("{}\n", host.known_hosts_line())).unwrap();
    SshRemote::new(
        SshTarget::parse_with_user(&host.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![host.client_key.clone()],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(10),
        },
    )
}

/// The bench's AuthorizedKeysFile (shared by its hosts).
fn authorized_keys() -> PathBuf {
    PathBuf::from(std::env::var("EKTOOL_TESTBED_DIR").expect("EKTOOL_TESTBED_DIR"))
        .join("ssh/authorized_keys")
}

fn destination(host: &SshHost) -> Destination {
    let key = std::fs::read_to_string(&host.host_public_key).unwrap();
    let mut f = key.split_whitespace();
    Destination {
        user: host.user.clone(),
        host: host.host.clone(),
        port: host.port,
        key_type: f.next().unwrap().to_owned(),
        key_base64: f.next().unwrap().to_owned(),
    }
}

fn spec(src: &SshHost, dst: &SshHost, name: &str) -> SyncSpec {
    let mut s = SyncSpec::new(
        src.target(),
        format!("{}/{name}/src", SshHost::MOUNT),
        destination(dst),
        format!("{}/{name}/dst", SshHost::MOUNT),
    );
    s.authorized_keys = authorized_keys().to_str().unwrap().to_owned();
    s
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn no_key_left(s: &SyncSpec) {
    let text = std::fs::read_to_string(authorized_keys()).unwrap();
    assert!(
        !text.contains(&s.marker()),
        "temporary key left in authorized_keys:\n{text}"
    );
    // Nor the source-side key directory (the hosts share /tmp with us).
    for entry in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ektool-sync.") {
            let public = std::fs::read_to_string(entry.path().join("key.pub")).unwrap_or_default();
            assert!(!public.contains(&s.marker()), "key dir left: {name}");
        }
    }
}

fn hosts() -> (SshHost, SshHost) {
    let (h1, h2) = (ssh_host(1), ssh_host(2));
    assert!(
        h1.namespaced && h2.namespaced,
        "the bench hosts need their own mount namespaces"
    );
    (h1, h2)
}

#[tokio::test]
async fn copies_with_checksums_deletes_and_honours_excludes() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = unique("sync");
    let src = |p: &str| h1.local_path(&format!("{name}/src/{p}"));
    let dst = |p: &str| h2.local_path(&format!("{name}/dst/{p}"));
    write(src("a.txt"), "alpha\n");
    write(src("sub/b.txt"), "beta\n");
    write(src("app.log"), "excluded by the user\n");
    write(src("tmp/scratch"), "excluded by default\n");
    write(src("etc/ssh/ssh_host_ed25519_key"), "host key\n");
    std::fs::hard_link(src("a.txt"), src("a-link.txt")).unwrap();
    // Same size and mtime, other content: only a checksum notices.
    let same = write(src("same.txt"), "AAAA\n");
    let stale = write(dst("same.txt"), "BBBB\n");
    let t = std::fs::metadata(&same).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(t)
        .unwrap();
    write(dst("old.txt"), "only on the destination\n");
    write(
        dst("etc/ssh/ssh_host_ed25519_key"),
        "the destination's own\n",
    );

    let mut s = spec(&h1, &h2, &name);
    s.excludes = vec!["*.log".into()];
    let report = rsync::sync(&remote(&h1, dir.path()), &remote(&h2, dir.path()), &s)
        .await
        .unwrap();

    assert_eq!(std::fs::read_to_string(dst("a.txt")).unwrap(), "alpha\n");
    assert_eq!(std::fs::read_to_string(dst("sub/b.txt")).unwrap(), "beta\n");
    assert_eq!(std::fs::read_to_string(dst("same.txt")).unwrap(), "AAAA\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(dst("a.txt")).unwrap().ino(),
        std::fs::metadata(dst("a-link.txt")).unwrap().ino(),
        "hard links kept"
    );
    assert!(!dst("old.txt").exists(), "--delete");
    assert!(!dst("app.log").exists(), "user exclude");
    assert!(!dst("tmp/scratch").exists(), "default exclude /tmp/*");
    assert_eq!(
        std::fs::read_to_string(dst("etc/ssh/ssh_host_ed25519_key")).unwrap(),
        "the destination's own\n",
        "host keys are never copied over"
    );
    assert!(report.stats.files_transferred >= 3, "{:?}", report.stats);
    assert_eq!(report.stats.files_deleted, 1, "{:?}", report.stats);
    assert!(report.stats.bytes_sent > 0);
    no_key_left(&s);

    // A second run has nothing to transfer.
    let again = rsync::sync(&remote(&h1, dir.path()), &remote(&h2, dir.path()), &s)
        .await
        .unwrap();
    assert_eq!(again.stats.files_transferred, 0, "{:?}", again.stats);
    no_key_left(&s);
}

#[tokio::test]
async fn check_only_changes_nothing() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = unique("sync-check");
    write(h1.local_path(&format!("{name}/src/new.txt")), "new\n");
    let old = write(h2.local_path(&format!("{name}/dst/old.txt")), "old\n");
    let mut s = spec(&h1, &h2, &name);
    s.check_only = true;
    let report = rsync::sync(&remote(&h1, dir.path()), &remote(&h2, dir.path()), &s)
        .await
        .unwrap();
    assert_eq!(report.stats.files_transferred, 1);
    assert_eq!(report.stats.files_deleted, 1);
    assert!(old.exists());
    assert!(!h2.local_path(&format!("{name}/dst/new.txt")).exists());
    no_key_left(&s);
}

#[tokio::test]
async fn a_failing_rsync_still_removes_the_key() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = unique("sync-fail");
    // No source directory: rsync fails (code 23) after the key went in.
    let s = spec(&h1, &h2, &name);
    let err = rsync::sync(&remote(&h1, dir.path()), &remote(&h2, dir.path()), &s)
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::Rsync { .. }), "{err}");
    assert!(err.to_string().contains("rsync failed"), "{err}");
    no_key_left(&s);
}

#[tokio::test]
async fn a_crashed_runs_key_is_removed_by_the_next_run() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = unique("sync-crash");
    write(h1.local_path(&format!("{name}/src/f")), "f\n");
    let s = spec(&h1, &h2, &name);
    // What a run killed mid-way leaves: its line, with this job's marker.
    let crashed = format!(
        "restrict,expiry-time=\"209901010000Z\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNyYXNoZWQ {}crashed-run",
        s.job_marker()
    );
    // A sync of another directory from the same source, still running.
    let mut other = spec(&h1, &h2, &unique("sync-other"));
    other.run_id = "concurrent-run".into();
    let concurrent = format!(
        "restrict,expiry-time=\"209901010000Z\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNvbmN1cnJlbnQ {}",
        other.marker()
    );
    let src_remote = remote(&h1, dir.path());
    let dst_remote = remote(&h2, dir.path());
    let edit = |drop: String, add: Option<String>| {
        // The way ektool does it (under the lock, atomically).
        let script =
            rsync::authorized_keys_script(&s.authorized_keys, &drop, add.as_deref(), s.now);
        let dst_remote = &dst_remote;
        async move {
            ec2kit::remote::run_checked(dst_remote, &ec2kit::Command::shell(script))
                .await
                .unwrap();
        }
    };
    edit("no-such-marker".into(), Some(crashed)).await;
    edit("no-such-marker".into(), Some(concurrent)).await;
    assert!(
        std::fs::read_to_string(authorized_keys())
            .unwrap()
            .contains("crashed-run")
    );
    let report = rsync::sync(&src_remote, &dst_remote, &s).await.unwrap();
    assert_eq!(report.stale_keys_removed, 1);
    let text = std::fs::read_to_string(authorized_keys()).unwrap();
    assert!(!text.contains("crashed-run"), "{text}");
    assert!(
        text.contains(&other.marker()),
        "the other job's key stays: {text}"
    );
    edit(other.marker(), None).await;
    // The bench's own client key is still there.
    let client = std::fs::read_to_string(format!("{}.pub", h1.client_key.display())).unwrap();
    let blob = client.split_whitespace().nth(1).unwrap();
    assert!(text.contains(blob));
    no_key_left(&s);
}

#[tokio::test]
async fn a_wrong_destination_host_key_fails_the_copy() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = unique("sync-hostkey");
    write(h1.local_path(&format!("{name}/src/f")), "f\n");
    let mut s = spec(&h1, &h2, &name);
    // A key the destination does not have: ssh on the source must refuse
    // (StrictHostKeyChecking=yes), never accept and record it.
    s.destination.key_base64 =
        "AAAAC3NzaC1lZDI1NTE5AAAAIHdyb25na2V5d3JvbmdrZXl3cm9uZ2tleXdyb25n".into();
    let err = rsync::sync(&remote(&h1, dir.path()), &remote(&h2, dir.path()), &s)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Host key verification failed")
            || err
                .to_string()
                .contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    assert!(!h2.local_path(&format!("{name}/dst/f")).exists());
    no_key_left(&s);
}

/// L10: on the bench (rsync 3.2.4 or newer with rrsync, destination on
/// 127.0.0.1) the temporary key is confined: `command="rrsync -wo <dst>"`
/// and `from=` the source's address; the copy still works, and a path with
/// shell syntax in it reaches rsync as one argument.
#[tokio::test]
async fn the_temporary_key_is_confined_to_rsync_into_the_destination() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = format!("{} $(touch pwned) x", unique("sync-confined"));
    std::fs::create_dir_all(h1.local_path(&name)).unwrap();
    write(h1.local_path(&format!("{name}/src/a.txt")), "alpha\n");
    let s = spec(&h1, &h2, &name);
    let report = rsync::sync(&remote(&h1, dir.path()), &remote(&h2, dir.path()), &s)
        .await
        .unwrap();
    let o = &report.plan.key_options;
    assert!(
        o.contains(",command=\"") && o.contains("rrsync -wo "),
        "{o}"
    );
    assert!(o.contains(",from=\"127.0.0.1\""), "{o}");
    assert_eq!(
        std::fs::read_to_string(h2.local_path(&format!("{name}/dst/a.txt"))).unwrap(),
        "alpha\n"
    );
    assert!(!h2.local_path(&format!("{name}/dst/pwned")).exists());
    assert!(!h2.local_path("pwned").exists());
    no_key_left(&s);
}

/// L10: what those options make sshd do with the key: no shell, nothing
/// but rrsync in the directory, and nothing at all from another address.
#[tokio::test]
async fn a_confined_key_gives_no_shell() {
    let (h1, h2) = hosts();
    let dir = tempdir();
    let name = unique("sync-noshell");
    let s = spec(&h1, &h2, &name);
    let dst = format!("{}/{name}/dst", SshHost::MOUNT);
    let key = dir.path().join("key");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let public = std::fs::read_to_string(dir.path().join("key.pub")).unwrap();
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let ssh = |from: &str| {
        let caps = rsync::Capabilities {
            source_version: Some((3, 2, 7)),
            destination_version: Some((3, 2, 7)),
            rrsync: Some("rrsync".into()),
            source_address: Some(from.to_owned()),
        };
        let line = format!(
            "{} {} {}",
            rsync::key_options_with(&s, &caps),
            public.join(" "),
            s.marker()
        );
        let edit = rsync::authorized_keys_script(
            authorized_keys().to_str().unwrap(),
            &s.marker(),
            Some(&line),
            s.now,
        );
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &edit])
                .status()
                .unwrap()
                .success()
        );
        let kh = dir.path().join("kh");
        std::fs::write(&kh, format!("{}\n", h2.known_hosts_line())).unwrap();
        std::process::Command::new("ssh")
            .arg("-i")
            .arg(&key)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args(["-p", &h2.port.to_string()])
            .arg(format!("{}@{}", h2.user, h2.host))
            .arg("id; echo SHELL-RAN")
            .output()
            .unwrap()
    };
    std::fs::create_dir_all(h2.local_path(&format!("{name}/dst"))).unwrap();
    let confined = ssh("127.0.0.1");
    let out = String::from_utf8_lossy(&confined.stdout);
    assert!(!out.contains("SHELL-RAN") && !out.contains("uid="), "{out}");
    let elsewhere = ssh("192.0.2.1");
    assert!(!elsewhere.status.success(), "refused from another address");
    assert!(!String::from_utf8_lossy(&elsewhere.stdout).contains("SHELL-RAN"));
    let _ = dst;
    // Remove the test key again.
    let remove = rsync::authorized_keys_script(
        authorized_keys().to_str().unwrap(),
        &s.marker(),
        None,
        s.now,
    );
    assert!(
        std::process::Command::new("sh")
            .args(["-c", &remove])
            .status()
            .unwrap()
            .success()
    );
    no_key_left(&s);
}
