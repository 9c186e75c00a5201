//! `ektool snap mount|unmount|cleanup` against moto (the EC2 side) and a
//! real sshd host (the host side). There are no block devices here, so
//! recording scripts stand in for device resolution and the probe, and
//! mount a tmpfs named like the device (in the host's own mount
//! namespace), so the mount table checks run for real.

use std::path::PathBuf;

use ec2kit::requests::{CreateSnapshot, CreateVolume};
use ec2kit::{Ec2, Filter, Instance, Region, SshRemote, SshTarget, Tags, Volume};
use ektool_tests::{SshHost, ssh_host, tempdir, unique};
use snapkit::lineage::tags as lineage;
use snapkit::mount::tags;

use crate::harness::{Ektool, Outcome};
use crate::moto::{self, ec2};

/// The bench host the tests mount on, its known_hosts and a recorder.
pub(crate) struct Bench {
    pub(crate) host: SshHost,
    dir: tempfile::TempDir,
    known_hosts: PathBuf,
    log: PathBuf,
    rec: PathBuf,
    /// This test's mount root on the host.
    root: String,
}

impl Bench {
    pub(crate) fn new() -> Self {
        let host = ssh_host(3);
        assert!(
            host.namespaced,
            "the bench host needs its own mount namespace"
        );
        let dir = tempdir();
        let known_hosts = host.write_known_hosts(dir.path());
        let log = dir.path().join("log");
        let rec = dir.path().join("rec");
        std::fs::write(
            &rec,
            format!(
                r#"#!/bin/sh
echo "$*" >> '{log}'
case "$1" in
  resolve) [ -e '{fail}' ] && exit 1; echo "/dev/ektool-fake-$2" ;;
  probe) echo "$2 1073741824 ext4" ;;
  mount) o=$(echo "$2" | tr , '\n' | grep -E '^(ro|nosuid|nodev|noexec)$' | paste -sd, -)
         exec mount -t tmpfs -o "$o" "$3" "$4" ;;
  umount) exec umount "$2" ;;
esac
"#,
                log = log.display(),
                fail = dir.path().join("fail-resolve").display(),
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            host,
            dir,
            known_hosts,
            log,
            rec,
            root: format!("{}/{}", SshHost::MOUNT, unique("mnt")),
        }
    }

    /// Host and command flags for a mount command.
    pub(crate) fn flags(&self) -> Vec<String> {
        let r = self.rec.display();
        [
            "--host".to_owned(),
            self.host.target(),
            "-i".into(),
            self.host.client_key.display().to_string(),
            "--known-hosts".into(),
            self.known_hosts.display().to_string(),
            format!("--resolve-cmd={r} resolve {{volume}} {{device}}"),
            format!("--probe-cmd={r} probe {{source}}"),
            format!("--mount-cmd={r} mount {{options}} {{source}} {{mountpoint}}"),
            format!("--umount-cmd={r} umount {{mountpoint}}"),
            "--wait-timeout=30s".into(),
            format!("--mount-root={}", self.root),
        ]
        .to_vec()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn mountpoint(&self) -> String {
        format!("{}/{}", self.root, unique("snap"))
    }

    /// Runs a command on the host (over OpenSSH).
    fn ssh(&self, command: &str) -> String {
        let out = std::process::Command::new("ssh")
            .args(["-i", self.host.client_key.to_str().unwrap()])
            .args(["-o", "BatchMode=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
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

    /// The options `mountpoint` is mounted with on the host.
    fn mount_options(&self, mountpoint: &str) -> String {
        self.ssh("cat /proc/self/mounts")
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(mountpoint))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or_default()
            .to_owned()
    }

    /// A path's permission bits on the host (`700`).
    fn mode(&self, path: &str) -> String {
        self.ssh(&format!("stat -c %a {path}")).trim().to_owned()
    }

    /// The host's mount table entries under this test's mount root.
    pub(crate) fn mounts_under_root(&self) -> Vec<String> {
        let prefix = format!("{}/", self.root);
        self.ssh("cat /proc/self/mounts")
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|m| m.starts_with(&prefix))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The host's mount table.
    pub(crate) fn mounted(&self, mountpoint: &str) -> bool {
        let out = std::process::Command::new("ssh")
            .args(["-i", self.host.client_key.to_str().unwrap()])
            .args(["-o", "BatchMode=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-p", &self.host.port.to_string()])
            .arg(format!("{}@{}", self.host.user, self.host.host))
            .arg("cat /proc/self/mounts")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(mountpoint))
    }
}

fn snap(bench: &Bench, region: &str, args: &[&str]) -> Outcome {
    let mut e = Ektool::moto().args(&["-r", region, "--output", "json", "snap"]);
    e = e.args(args);
    let flags = bench.flags();
    e.args(&flags.iter().map(String::as_str).collect::<Vec<_>>())
        .run()
}

/// A running instance and a snapshot of its root volume.
async fn instance_and_snapshot(region: &str, encrypted: bool) -> (Instance, String) {
    let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
    let ec2 = ec2().await;
    let r = Region::new(region);
    let volume = if encrypted {
        ec2.create_volume(
            &r,
            &CreateVolume {
                availability_zone: inst.availability_zone.clone().unwrap(),
                size_gib: Some(1),
                encrypted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
    } else {
        inst.root_volume().unwrap().clone()
    };
    let s = ec2
        .create_snapshot(
            &r,
            &CreateSnapshot {
                volume_id: Some(volume),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (inst, s.id.to_string())
}

async fn mount_volumes(region: &str, instance: &Instance) -> Vec<Volume> {
    ec2()
        .await
        .describe_volumes(
            &Region::new(region),
            &[Filter::new(
                format!("tag:{}", tags::MOUNTED_ON),
                [instance.id.as_str()],
            )],
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn mount_twice_unmount_twice() {
    let region = "ca-central-1";
    let bench = Bench::new();
    let (inst, snapshot) = instance_and_snapshot(region, false).await;
    let mp = bench.mountpoint();
    let id = inst.id.to_string();

    // --dry-run: the plan, EC2's permission check, and nothing created.
    let dry = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--dry-run",
            "snap",
            "mount",
            &snapshot,
            "--instance",
            &id,
            "--mountpoint",
            &mp,
        ])
        .args(&bench.flags().iter().map(String::as_str).collect::<Vec<_>>())
        .run()
        .success()
        .stdout_has("would attach it to")
        .stdout_has("/dev/sdf")
        .stdout_has("EC2 permission check: ok");
    assert!(dry.stdout.contains(&mp), "{}", dry.stdout);
    assert!(mount_volumes(region, &inst).await.is_empty());

    let out = snap(
        &bench,
        region,
        &["mount", &snapshot, "--instance", &id, "--mountpoint", &mp],
    )
    .success();
    let m = out.json();
    let volume = m["volume"].as_str().unwrap().to_owned();
    assert_eq!(m["attach_device"], "/dev/sdf");
    assert_eq!(
        m["options"], "ro,nosuid,nodev,noexec,noload",
        "ext4: read-only, untrusting, no journal replay"
    );
    assert_eq!(m["mountpoint"], mp);
    assert_eq!(m["already_mounted"], false);
    assert_eq!(m["host"], bench.host.target());
    assert!(bench.mounted(&mp));
    // M2: what the host's kernel applied, and the private root.
    let applied = bench.mount_options(&mp);
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(applied.split(',').any(|x| x == o), "{o}: {applied}");
    }
    assert_eq!(bench.mode(&bench.root), "700");
    assert!(bench.log().contains(&format!("resolve {volume} /dev/sdf")));
    assert!(bench.log().contains(&format!(
        "mount ro,nosuid,nodev,noexec,noload /dev/ektool-fake-{volume} {mp}"
    )));

    // EC2: one volume, tagged at creation, in the instance's zone, attached.
    let vols = mount_volumes(region, &inst).await;
    assert_eq!(vols.len(), 1);
    let v = &vols[0];
    assert_eq!(v.id.as_str(), volume);
    assert_eq!(v.tags.get(tags::MOUNT_OF), Some(snapshot.as_str()));
    assert_eq!(v.tags.get(lineage::OWNER), Some(lineage::OWNER_VALUE));
    assert!(v.tags.get(lineage::CREATED).is_some());
    assert_eq!(v.availability_zone, inst.availability_zone);
    assert_eq!(v.attachments[0].instance_id, inst.id);
    assert_eq!(v.attachments[0].device.as_deref(), Some("/dev/sdf"));

    // Again: picked up, nothing new anywhere.
    let again = snap(
        &bench,
        region,
        &["mount", &snapshot, "--instance", &id, "--mountpoint", &mp],
    )
    .success()
    .json();
    assert_eq!(again["volume"], volume.as_str());
    assert_eq!(again["already_mounted"], true);
    assert_eq!(again["resumed"], true);
    assert_eq!(mount_volumes(region, &inst).await.len(), 1);
    assert_eq!(
        bench
            .log()
            .iter()
            .filter(|l| l.starts_with("mount "))
            .count(),
        1
    );

    // A second snapshot on the same instance takes the next free device.
    let (_, second) = instance_and_snapshot(region, false).await;
    let mp2 = bench.mountpoint();
    let m2 = snap(
        &bench,
        region,
        &["mount", &second, "--instance", &id, "--mountpoint", &mp2],
    )
    .success()
    .json();
    assert_eq!(m2["attach_device"], "/dev/sdg");

    let un = snap(&bench, region, &["unmount", &snapshot, "--instance", &id]).success();
    let items = un.json();
    assert_eq!(items[0]["volume"], volume.as_str());
    assert_eq!(items[0]["done"]["unmounted"][0], mp.as_str());
    assert_eq!(items[0]["done"]["deleted"], true);
    assert!(!bench.mounted(&mp));
    assert!(bench.mounted(&mp2), "the other mount is left alone");
    let left = mount_volumes(region, &inst).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].tags.get(tags::MOUNT_OF), Some(second.as_str()));

    // Again: nothing left to do, still success.
    snap(&bench, region, &["unmount", &snapshot, "--instance", &id]).success();

    // By volume id.
    let v2 = m2["volume"].as_str().unwrap();
    snap(&bench, region, &["unmount", v2]).success();
    assert!(!bench.mounted(&mp2));
    assert!(mount_volumes(region, &inst).await.is_empty());
}

#[tokio::test]
async fn encrypted_snapshots_mount_as_encrypted_volumes() {
    let region = "ca-central-1";
    let bench = Bench::new();
    let (inst, snapshot) = instance_and_snapshot(region, true).await;
    let mp = bench.mountpoint();
    let m = snap(
        &bench,
        region,
        &[
            "mount",
            &snapshot,
            "--instance",
            inst.id.as_str(),
            "--mountpoint",
            &mp,
        ],
    )
    .success()
    .json();
    assert_eq!(m["encrypted"], true);
    let vols = mount_volumes(region, &inst).await;
    assert!(vols[0].encrypted);
    snap(&bench, region, &["unmount", &snapshot]).success();
    assert!(mount_volumes(region, &inst).await.is_empty());
}

#[tokio::test]
async fn a_failure_on_the_host_leaves_nothing_behind() {
    let region = "ap-southeast-2";
    let bench = Bench::new();
    std::fs::write(bench.dir.path().join("fail-resolve"), "").unwrap();
    let (inst, snapshot) = instance_and_snapshot(region, false).await;
    let mp = bench.mountpoint();
    let out = snap(
        &bench,
        region,
        &[
            "mount",
            &snapshot,
            "--instance",
            inst.id.as_str(),
            "--mountpoint",
            &mp,
        ],
    )
    .code(1)
    .stderr_has("mount failed; volume")
    .stderr_has("deleted again")
    .stderr_has("no block device");
    assert!(out.stdout.is_empty());
    assert!(
        mount_volumes(region, &inst).await.is_empty(),
        "the volume was detached and deleted"
    );
    assert!(!bench.mounted(&mp));
}

#[tokio::test]
async fn refused_before_anything_is_created() {
    let region = "ap-southeast-2";
    let bench = Bench::new();
    let (inst, snapshot) = instance_and_snapshot(region, false).await;
    let id = inst.id.to_string();
    // A template that drops the read-only options is a usage error.
    Ektool::moto()
        .args(&[
            "-r",
            region,
            "snap",
            "mount",
            &snapshot,
            "--instance",
            &id,
            "--mount-cmd",
            "mount {source} {mountpoint}",
        ])
        .run()
        .code(2)
        .stderr_has("{options}");
    // M2: a mountpoint outside the mount root (here /etc) is bad input.
    snap(
        &bench,
        region,
        &[
            "mount",
            &snapshot,
            "--instance",
            &id,
            "--mountpoint",
            "/etc",
        ],
    )
    .code(2)
    .stderr_has("must lie under the mount root");
    // No such snapshot.
    snap(
        &bench,
        region,
        &["mount", "snap-0123456789abcdef0", "--instance", &id],
    )
    .code(1)
    .stderr_has("not found");
    // A stopped instance.
    ec2()
        .await
        .terminate_instances(&Region::new(region), std::slice::from_ref(&inst.id), false)
        .await
        .unwrap();
    snap(&bench, region, &["mount", &snapshot, "--instance", &id])
        .code(1)
        .stderr_has("not running");
    assert!(mount_volumes(region, &inst).await.is_empty());
}

/// A volume as a crashed `snap mount` leaves it.
async fn leftover(region: &str, inst: &Instance, snapshot: &str, owned: bool) -> String {
    let mut t = Tags::new()
        .with(tags::MOUNT_OF, snapshot)
        .with(tags::MOUNTED_ON, inst.id.as_str());
    if owned {
        t.insert(lineage::OWNER, lineage::OWNER_VALUE);
    }
    ec2()
        .await
        .create_volume(
            &Region::new(region),
            &CreateVolume {
                availability_zone: inst.availability_zone.clone().unwrap(),
                snapshot_id: Some(snapshot.parse().unwrap()),
                tags: t,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
        .to_string()
}

#[tokio::test]
async fn cleanup_removes_only_ektools_leftovers() {
    let region = "sa-east-1";
    let bench = Bench::new();
    let (inst, snapshot) = instance_and_snapshot(region, false).await;
    let id = inst.id.to_string();
    let crashed = leftover(region, &inst, &snapshot, true).await;
    let foreign = leftover(region, &inst, &snapshot, false).await;
    // M14: both tags, but EC2 says it was made from another snapshot: a
    // tagger's volume, never resumed and never cleaned up.
    let (_, other) = instance_and_snapshot(region, false).await;
    let forged = {
        let id = leftover(region, &inst, &other, true).await;
        ec2()
            .await
            .create_tags(
                &Region::new(region),
                std::slice::from_ref(&id),
                &Tags::new().with(tags::MOUNT_OF, snapshot.as_str()),
                false,
            )
            .await
            .unwrap();
        id
    };
    // A mount picks up its own crashed run's volume instead of making another.
    let mp = bench.mountpoint();
    let m = snap(
        &bench,
        region,
        &["mount", &snapshot, "--instance", &id, "--mountpoint", &mp],
    )
    .success()
    .json();
    let mounted = m["volume"].as_str().unwrap().to_owned();
    assert_eq!(mounted, crashed);
    assert_eq!(m["resumed"], true);
    // And another crashed run's volume, never attached.
    let crashed = leftover(region, &inst, &snapshot, true).await;

    // Young volumes are spared by default.
    let young = snap(&bench, region, &["cleanup", "--instance", &id]).success();
    assert_eq!(young.json(), serde_json::json!([]));
    assert_eq!(mount_volumes(region, &inst).await.len(), 4);

    let dry = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--dry-run",
            "snap",
            "cleanup",
            "--older-than",
            "0h",
            "--instance",
            &id,
        ])
        .args(&bench.flags().iter().map(String::as_str).collect::<Vec<_>>())
        .run()
        .success()
        .stdout_has("dry run: nothing changed")
        .stdout_has("would unmount on");
    assert!(dry.stdout.contains(&mounted) && dry.stdout.contains(&crashed));
    assert!(!dry.stdout.contains(&foreign));
    assert!(!dry.stdout.contains(&forged));
    assert_eq!(mount_volumes(region, &inst).await.len(), 4);

    snap(
        &bench,
        region,
        &["cleanup", "--older-than", "0h", "--instance", &id],
    )
    .success();
    let mut left: Vec<String> = mount_volumes(region, &inst)
        .await
        .into_iter()
        .map(|v| v.id.to_string())
        .collect();
    left.sort();
    let mut want = vec![foreign, forged];
    want.sort();
    assert_eq!(left, want, "only the volumes ektool did not make are left");
    assert!(!bench.mounted(&mp));
}

#[tokio::test]
async fn an_unreachable_host_blocks_unmount_unless_forced() {
    let region = "sa-east-1";
    let bench = Bench::new();
    let (inst, snapshot) = instance_and_snapshot(region, false).await;
    let id = inst.id.to_string();
    let mp = bench.mountpoint();
    snap(
        &bench,
        region,
        &["mount", &snapshot, "--instance", &id, "--mountpoint", &mp],
    )
    .success();
    let unreachable = |force: bool| {
        let mut e = Ektool::moto().args(&[
            "-r",
            region,
            "--output",
            "json",
            "snap",
            "unmount",
            &snapshot,
            "--host",
            "root@127.0.0.1:1",
        ]);
        if force {
            e = e.arg("--force");
        }
        e.run()
    };
    unreachable(false).code(1).stderr_has("connection failed");
    assert_eq!(mount_volumes(region, &inst).await.len(), 1, "nothing done");
    let forced = unreachable(true).success().json();
    assert!(
        forced[0]["done"]["notes"][0]
            .as_str()
            .unwrap()
            .contains("detached by force")
    );
    assert!(mount_volumes(region, &inst).await.is_empty());
    // The tmpfs stand-in stays mounted on the host: unmount it by hand.
    let r = SshRemote::new(
        SshTarget::parse_with_user(&bench.host.target(), "x").unwrap(),
        ec2kit::SshOptions {
            identity_files: vec![bench.host.client_key.clone()],
            use_agent: false,
            known_hosts: bench.known_hosts.clone(),
            connect_timeout: std::time::Duration::from_secs(10),
        },
    );
    ec2kit::remote::run_checked(&r, &ec2kit::Command::argv(["umount", &mp]))
        .await
        .unwrap();
}

/// `ektool iam-policy --list`: `command`'s own actions.
fn policy_actions(command: &str) -> std::collections::BTreeSet<String> {
    crate::iam::Policies::load().expected(command, &[])
}

#[tokio::test]
async fn mount_unmount_and_cleanup_call_exactly_their_iam_policies() {
    let region = "us-west-1";
    let bench = Bench::new();
    let (inst, snapshot) = instance_and_snapshot(region, false).await;
    let mp = bench.mountpoint();
    let id = inst.id.to_string();
    let run = |args: &[&str]| {
        let dir = tempdir();
        let file = dir.path().join("actions");
        let mut e = Ektool::moto()
            .env("EKTOOL_RECORD_ACTIONS", file.to_str().unwrap())
            .args(&["-r", region, "snap"])
            .args(args);
        if args[0] != "cleanup" {
            e = e.args(&bench.flags().iter().map(String::as_str).collect::<Vec<_>>());
        }
        e.run().success();
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<String>>()
    };
    let got = run(&["mount", &snapshot, "--instance", &id, "--mountpoint", &mp]);
    assert_eq!(got, policy_actions("snap mount"));
    let got = run(&["unmount", &snapshot, "--instance", &id]);
    assert_eq!(got, policy_actions("snap unmount"));
    // A volume left attached by a "crashed" run, for cleanup.
    run(&["mount", &snapshot, "--instance", &id, "--mountpoint", &mp]);
    let got = run(&[
        "cleanup",
        "--older-than",
        "0h",
        "--force",
        "--instance",
        &id,
    ]);
    assert_eq!(got, policy_actions("snap cleanup"));
}
