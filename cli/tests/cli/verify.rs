//! `ektool snap verify` (and `snap check --max-unverified`) against moto
//! (the EC2 half) and a bench sshd host (the host half). A loop device
//! with a real ext4 filesystem stands in for the attached volume: only
//! device resolution and the probe are scripted; the read-only mount, the
//! check and the unmount are the real commands, in the host's own mount
//! namespace.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ec2kit::requests::CreateSnapshot;
use ec2kit::{Ec2, Filter, Region, SnapshotId, Tags, Volume};
use ektool_tests::{SshHost, ssh_host, tempdir, unique};
use snapkit::lineage::tags as lineage;
use snapkit::mount::tags as mount_tags;
use snapkit::verify::tags;

use crate::harness::{Ektool, Outcome};
use crate::moto::{self, ec2};

/// A loop device holding an ext4 filesystem made from `files`; detached
/// when dropped.
struct Disk {
    dev: String,
    _dir: tempfile::TempDir,
}

impl Disk {
    fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempdir();
        let content = dir.path().join("content");
        for (path, bytes) in files {
            let p = content.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::create_dir_all(&content).unwrap();
        let image = dir.path().join("disk.img");
        sh(&format!(
            "truncate -s 16M {img} && mkfs.ext4 -q -F -d {c} {img}",
            img = image.display(),
            c = content.display()
        ));
        let dev = sh(&format!("losetup -f --show {}", image.display()))
            .trim()
            .to_owned();
        assert!(dev.starts_with("/dev/loop"), "{dev}");
        Self { dev, _dir: dir }
    }
}

impl Disk {
    /// A loop device with no filesystem at all (zeros).
    fn blank() -> Self {
        let dir = tempdir();
        let image = dir.path().join("disk.img");
        sh(&format!("truncate -s 16M {}", image.display()));
        let dev = sh(&format!("losetup -f --show {}", image.display()))
            .trim()
            .to_owned();
        assert!(dev.starts_with("/dev/loop"), "{dev}");
        Self { dev, _dir: dir }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

fn sh(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bench host, its known_hosts, the disk standing in for every
/// volume attached, and scripts resolving and probing it.
struct Bench {
    host: SshHost,
    dir: tempfile::TempDir,
    rec: PathBuf,
    log: PathBuf,
    /// This test's mount root on the host.
    root: String,
    disk: Disk,
}

impl Bench {
    fn new(files: &[(&str, &[u8])]) -> Self {
        Self::with(Disk::new(files))
    }

    fn with(disk: Disk) -> Self {
        let host = ssh_host(3);
        assert!(
            host.namespaced,
            "the bench host needs its own mount namespace"
        );
        let dir = tempdir();
        host.write_known_hosts(dir.path());
        let log = dir.path().join("log");
        let rec = dir.path().join("rec");
        std::fs::write(
            &rec,
            format!(
                r#"#!/bin/sh
echo "$*" >> '{log}'
case "$1" in
  resolve) echo '{dev}' ;;
  probe) echo "$2 $(blockdev --getsize64 "$2") $(blkid -p -o value -s TYPE "$2")" ;;
esac
"#,
                log = log.display(),
                dev = disk.dev,
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            host,
            dir,
            rec,
            log,
            root: format!("{}/{}", SshHost::MOUNT, unique("verify")),
            disk,
        }
    }

    /// Host and mount-command flags, reaching the host at `target`
    /// (`user@host:port`) with a known_hosts file trusting it.
    fn flags_at(&self, target: &str, known_hosts: &Path) -> Vec<String> {
        let r = self.rec.display();
        vec![
            "--host".to_owned(),
            target.to_owned(),
            "-i".into(),
            self.host.client_key.display().to_string(),
            "--known-hosts".into(),
            known_hosts.display().to_string(),
            format!("--resolve-cmd={r} resolve {{volume}} {{device}}"),
            format!("--probe-cmd={r} probe {{source}}"),
            "--wait-timeout=30s".into(),
            format!("--mount-root={}", self.root),
        ]
    }

    fn flags(&self) -> Vec<String> {
        self.flags_at(&self.host.target(), &self.dir.path().join("known_hosts"))
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The host's mounts of the disk (any mountpoint).
    fn mounts(&self) -> Vec<String> {
        self.ssh("cat /proc/self/mounts")
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(self.disk.dev.as_str()))
            .map(str::to_owned)
            .collect()
    }

    /// Runs a command on the host over OpenSSH.
    fn ssh(&self, command: &str) -> String {
        let out = std::process::Command::new("ssh")
            .args(["-i", self.host.client_key.to_str().unwrap()])
            .args(["-o", "BatchMode=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .args(["-p", &self.host.port.to_string()])
            .arg(format!("{}@{}", self.host.user, self.host.host))
            .arg(command)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A path on the host (under its private directory) for a marker the
    /// check writes, and where this machine sees it.
    fn marker(&self) -> (String, PathBuf) {
        let name = unique("started");
        (
            format!("{}/{name}", SshHost::MOUNT),
            self.host.local_path(&name),
        )
    }
}

/// What a test verifies: a scratch instance, and an ektool snapshot of
/// another instance's root volume (its lineage), that instance tagged.
struct Setup {
    region: String,
    scratch: String,
    lineage: String,
    snapshot: String,
    tag: String,
}

impl Setup {
    async fn new(region: &str) -> Self {
        let scratch = moto::launch(region, 1, Tags::new()).await.remove(0);
        let tag = unique("verify");
        let source = moto::launch(region, 1, Tags::new().with("VerifyTest", tag.clone()))
            .await
            .remove(0);
        let volume = source.root_volume().unwrap().clone();
        let s = ec2()
            .await
            .create_snapshot(
                &Region::new(region),
                &CreateSnapshot {
                    volume_id: Some(volume.clone()),
                    tags: Tags::new()
                        .with(lineage::OWNER, lineage::OWNER_VALUE)
                        .with(lineage::VOLUME, volume.as_str()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        Self {
            region: region.to_owned(),
            scratch: scratch.id.to_string(),
            lineage: volume.to_string(),
            snapshot: s.id.to_string(),
            tag: format!("VerifyTest={tag}"),
        }
    }

    /// `ektool -r REGION --output json snap verify --lineage L --instance
    /// SCRATCH <args> <bench flags>`.
    fn verify(&self, bench: &Bench, args: &[&str]) -> Ektool {
        self.verify_with(&bench.flags(), args)
    }

    fn verify_with(&self, flags: &[String], args: &[&str]) -> Ektool {
        Ektool::moto()
            .args(&[
                "-r",
                &self.region,
                "--output",
                "json",
                "snap",
                "verify",
                "--lineage",
                &self.lineage,
                "--instance",
                &self.scratch,
            ])
            .args(args)
            .args(&flags.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn check(&self) -> Outcome {
        Ektool::moto()
            .args(&[
                "-r",
                &self.region,
                "snap",
                "check",
                "--tag",
                &self.tag,
                "--max-unverified",
                "7d",
            ])
            .run()
    }

    /// The volumes on the scratch instance made by mounts (verify's).
    async fn volumes(&self) -> Vec<Volume> {
        ec2()
            .await
            .describe_volumes(
                &Region::new(&self.region),
                &[Filter::new(
                    format!("tag:{}", mount_tags::MOUNTED_ON),
                    [self.scratch.as_str()],
                )],
            )
            .await
            .unwrap()
    }

    async fn snapshot_tags(&self) -> Tags {
        ec2()
            .await
            .describe_snapshots(
                &Region::new(&self.region),
                &[Filter::new("snapshot-id", [self.snapshot.as_str()])],
            )
            .await
            .unwrap()
            .remove(0)
            .tags
    }
}

/// Waits (up to a minute) for `path` to exist: the check has started.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A check that marks its start, then holds the filesystem (its working
/// directory is on it) until killed.
fn holding_check(marker: &str) -> String {
    format!("cd \"$MOUNT\" && touch {marker} && sleep 120")
}

#[tokio::test]
async fn a_passing_restore_test_is_tagged_and_leaves_nothing_behind() {
    let bench = Bench::new(&[
        ("var/lib/mysql/ibdata1", b"innodb pages"),
        ("etc/hostname", b"db1\n"),
    ]);
    let s = Setup::new("eu-north-1").await;

    // Never tested: `snap check --max-unverified` fails.
    s.check()
        .code(1)
        .stderr_has("unverified: ")
        .stderr_has("no successful restore test");

    // --dry-run: the plan, and nothing made.
    let dry = Ektool::moto()
        .args(&[
            "-r",
            &s.region,
            "--dry-run",
            "snap",
            "verify",
            "--lineage",
            &s.lineage,
            "--instance",
            &s.scratch,
        ])
        .args(&bench.flags().iter().map(String::as_str).collect::<Vec<_>>())
        .run()
        .success()
        .stdout_has("dry run: nothing changed")
        .stdout_has("mount it read-only");
    assert!(dry.stdout.contains(&s.snapshot), "{}", dry.stdout);
    assert!(s.volumes().await.is_empty());

    let out = s
        .verify(
            &bench,
            &[
                "--check",
                "test -s \"$MOUNT/var/lib/mysql/ibdata1\" && cat \"$MOUNT/etc/hostname\" \
                 && ! touch \"$MOUNT/written\" 2>/dev/null",
            ],
        )
        .run()
        .success();
    let j = out.json();
    let item = &j["items"][0];
    assert_eq!(j["items"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(item["snapshot"], s.snapshot.as_str());
    assert_eq!(item["lineage"], s.lineage.as_str());
    assert_eq!(item["result"], "ok", "{j}");
    assert_eq!(item["tagged"], true);
    assert_eq!(item["cleaned_up"], true);
    assert_eq!(item["output"], "db1\n", "read from the mounted filesystem");
    let volume = item["volume"].as_str().unwrap();
    assert!(bench.log().contains(&format!("resolve {volume} /dev/sdf")));

    let t = s.snapshot_tags().await;
    assert_eq!(t.get(tags::VERIFY_RESULT), Some(tags::OK));
    let at: jiff::Timestamp = t.get(tags::VERIFIED_AT).unwrap().parse().unwrap();
    assert_eq!(at.to_string(), j["verified_at"].as_str().unwrap());
    assert!(s.volumes().await.is_empty(), "detached and deleted");
    assert!(bench.mounts().is_empty(), "unmounted");

    // The default check, in a table.
    let table = s
        .verify(&bench, &[])
        .args(&["--output", "table"])
        .run()
        .success()
        .stdout_has("LINEAGE")
        .stdout_has(" ok ");
    assert!(table.stdout.contains(&s.snapshot), "{}", table.stdout);
    assert!(s.volumes().await.is_empty());

    // Now tested: the check passes, and says when.
    s.check()
        .success()
        .stdout_has("VERIFIED")
        .stdout_has("s ago");
}

#[tokio::test]
async fn a_failing_check_is_tagged_failed_and_cleaned_up() {
    let bench = Bench::new(&[("etc/hostname", b"db1\n")]);
    let s = Setup::new("eu-north-1").await;
    let out = s
        .verify(
            &bench,
            &["--check", "test -s \"$MOUNT/var/lib/mysql/ibdata1\""],
        )
        .run()
        .code(1)
        .stderr_has("1 of 1 restore test(s) did not pass")
        .stderr_has("the check failed: exit code 1");
    let item = &out.json()["items"][0];
    assert_eq!(item["result"], "failed");
    assert_eq!(item["tagged"], true);
    assert_eq!(item["cleaned_up"], true);
    assert_eq!(
        s.snapshot_tags().await.get(tags::VERIFY_RESULT),
        Some(tags::FAILED)
    );
    assert!(s.volumes().await.is_empty(), "detached and deleted");
    assert!(bench.mounts().is_empty(), "unmounted");
    s.check().code(1).stderr_has("no successful restore test");
}

#[tokio::test]
async fn the_default_check_fails_an_empty_filesystem() {
    let bench = Bench::new(&[]);
    let s = Setup::new("eu-north-1").await;
    let out = s
        .verify(&bench, &[])
        .run()
        .code(1)
        .stderr_has("the check failed");
    let item = &out.json()["items"][0];
    assert_eq!(item["result"], "failed");
    assert!(
        item["output"]
            .as_str()
            .unwrap()
            .contains("no files on the filesystem"),
        "{item}"
    );
    assert!(s.volumes().await.is_empty());
}

/// A volume with no filesystem that mounts fails the snapshot (tagged
/// `failed`); the mount's own rollback removes the volume.
#[tokio::test]
async fn a_volume_without_a_filesystem_fails_the_snapshot() {
    let bench = Bench::with(Disk::blank());
    let s = Setup::new("eu-north-1").await;
    let out = s
        .verify(&bench, &[])
        .run()
        .code(1)
        .stderr_has("no mountable filesystem");
    let item = &out.json()["items"][0];
    assert_eq!(item["result"], "failed", "{item}");
    assert_eq!(item["tagged"], true);
    assert_eq!(item["cleaned_up"], true);
    assert_eq!(
        s.snapshot_tags().await.get(tags::VERIFY_RESULT),
        Some(tags::FAILED)
    );
    assert!(s.volumes().await.is_empty(), "detached and deleted");
    assert!(bench.mounts().is_empty());
}

/// A TCP relay to the bench host that can be cut: every connection
/// dropped, and every new one closed at once (the host is unreachable).
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for s in [&client, &server] {
                    k.lock().unwrap().push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The host stops answering while the check runs: the volume is detached
/// by force and deleted; nothing is said about the snapshot.
#[tokio::test]
async fn a_host_lost_mid_way_still_loses_its_volume() {
    let bench = Bench::new(&[("etc/hostname", b"db1\n")]);
    let s = Setup::new("eu-west-3").await;
    let relay = Relay::to(bench.host.port);
    let known_hosts = bench.dir.path().join("relay_known_hosts");
    let line = bench.host.known_hosts_line().replace(
        &format!(":{} ", bench.host.port),
        &format!(":{} ", relay.port),
    );
    std::fs::write(&known_hosts, format!("{line}\n")).unwrap();
    let target = format!("{}@127.0.0.1:{}", bench.host.user, relay.port);
    let (marker, seen) = bench.marker();
    let run = s
        .verify_with(
            &bench.flags_at(&target, &known_hosts),
            &["--check", &holding_check(&marker)],
        )
        .spawn(bench.dir.path());
    wait_for(&seen);
    assert_eq!(s.volumes().await.len(), 1, "attached while the check runs");
    relay.cut();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the check could not run"), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = &j["items"][0];
    assert_eq!(item["result"], "error");
    assert_eq!(item["tagged"], false);
    assert_eq!(item["cleaned_up"], true, "{j}");
    assert!(
        item["notes"][0]
            .as_str()
            .unwrap()
            .contains("detached by force"),
        "{j}"
    );
    assert!(s.volumes().await.is_empty(), "detached and deleted");
    assert_eq!(s.snapshot_tags().await.get(tags::VERIFY_RESULT), None);
    // The stand-in disk is still mounted on the host, its check holding
    // it (a real instance loses the device with the detach).
    bench.ssh(&format!(
        "fuser -k -m {dev}; sleep 0.2; umount {dev}",
        dev = bench.disk.dev
    ));
}

/// SIGINT while the check runs: the check is abandoned (its processes
/// killed), the volume unmounted, detached and deleted, exit 130.
#[tokio::test]
async fn an_interrupt_mid_check_cleans_up() {
    let bench = Bench::new(&[("etc/hostname", b"db1\n")]);
    let s = Setup::new("eu-west-3").await;
    let (marker, seen) = bench.marker();
    let run = s
        .verify(&bench, &["--check", &holding_check(&marker)])
        .spawn(bench.dir.path());
    wait_for(&seen);
    assert_eq!(bench.mounts().len(), 1);
    sh(&format!("kill -INT {}", run.id()));
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted during the check"), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["items"][0]["cleaned_up"], true, "{j}");
    assert_eq!(j["items"][0]["tagged"], false);
    assert_eq!(j["interrupted"], true);
    assert!(s.volumes().await.is_empty(), "detached and deleted");
    assert!(bench.mounts().is_empty(), "unmounted");
    assert_eq!(s.snapshot_tags().await.get(tags::VERIFY_RESULT), None);
}

/// A run killed outright leaves its volume attached and mounted; the next
/// run on the scratch instance finds it by its tags and removes it first.
#[tokio::test]
async fn the_next_run_removes_what_a_killed_run_left() {
    let bench = Bench::new(&[("etc/hostname", b"db1\n")]);
    let s = Setup::new("ap-northeast-2").await;
    let (marker, seen) = bench.marker();
    let mut run = s
        .verify(&bench, &["--check", &holding_check(&marker)])
        .spawn(bench.dir.path());
    wait_for(&seen);
    run.kill().unwrap();
    run.wait().unwrap();
    let mut stdout = String::new();
    run.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let left = s.volumes().await;
    assert_eq!(left.len(), 1, "the killed run's volume");
    let left = left[0].id.to_string();
    assert!(left_tagged(&s, &left).await);
    assert_eq!(bench.mounts().len(), 1);

    // --dry-run names it.
    Ektool::moto()
        .args(&[
            "-r",
            &s.region,
            "--dry-run",
            "snap",
            "verify",
            "--lineage",
            &s.lineage,
            "--instance",
            &s.scratch,
        ])
        .args(&bench.flags().iter().map(String::as_str).collect::<Vec<_>>())
        .run()
        .success()
        .stdout_has(&format!("would first remove {left}"));

    let j = s.verify(&bench, &[]).run().success().json();
    assert_eq!(j["leftovers"][0]["volume"], left.as_str(), "{j}");
    assert_eq!(j["leftovers"][0]["done"]["deleted"], true, "{j}");
    assert_eq!(j["items"][0]["result"], "ok", "{j}");
    assert!(s.volumes().await.is_empty());
    assert!(bench.mounts().is_empty());
}

async fn left_tagged(s: &Setup, volume: &str) -> bool {
    ec2()
        .await
        .describe_volumes(
            &Region::new(&s.region),
            &[Filter::new("volume-id", [volume])],
        )
        .await
        .unwrap()
        .first()
        .is_some_and(|v| v.tags.get(tags::VERIFY_RUN).is_some())
}

/// `ektool iam-policy --list`: `command`'s own actions.
fn policy_actions(command: &str) -> std::collections::BTreeSet<String> {
    crate::iam::Policies::load().expected(command, &[])
}

#[tokio::test]
async fn verify_calls_exactly_its_iam_policy() {
    let bench = Bench::new(&[("etc/hostname", b"db1\n")]);
    let s = Setup::new("us-west-1").await;
    let dir = tempdir();
    let file = dir.path().join("actions");
    s.verify(&bench, &[])
        .env("EKTOOL_RECORD_ACTIONS", file.to_str().unwrap())
        .run()
        .success();
    let got = crate::harness::recorded_actions(&file);
    assert_eq!(got, policy_actions("snap verify"));
    let _ = SnapshotId::parse(&s.snapshot).unwrap();
}

/// `[check] max_unverified` does what the flag does; a bad value is a
/// config error at its line.
#[tokio::test]
async fn the_config_sets_max_unverified() {
    let s = Setup::new("eu-north-1").await;
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[check]\nmax_unverified = \"7d\"\n",
    )
    .unwrap();
    let check = || {
        Ektool::moto()
            .args(&["-r", &s.region, "snap", "check", "--tag", &s.tag])
            .current_dir(dir.path())
            .run()
    };
    check()
        .code(1)
        .stdout_has("VERIFIED")
        .stderr_has("no successful restore test (within 7d)");
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[check]\nmax_unverified = \"7\"\n",
    )
    .unwrap();
    check()
        .code(2)
        .stderr_has("ektool.toml:2:")
        .stderr_has("max_unverified: `7` has no unit");
}
