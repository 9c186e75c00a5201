//! The host side of `snap mount` over real SSH. There are no block
//! devices here, so recording scripts stand in for device resolution and
//! the probe, and mount a tmpfs named like the device instead: the mount
//! is real (in the host's own mount namespace), so mount-table checks,
//! reruns and unmounting are exercised for real.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2kit::{Command, Remote, SshOptions, SshRemote, SshTarget, VolumeId};
use ektool_tests::{SshHost, ssh_host, tempdir, unique};
use snapkit::mount::{self, MountCommands, MountError, MountTarget};

fn remote(host: &SshHost, dir: &Path) -> SshRemote {
    let kh = host.write_known_hosts(dir);
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

/// Templates calling a recording script that logs its arguments to `log`.
fn recording(dir: &Path) -> (MountCommands, PathBuf) {
    let log = dir.join("log");
    let rec = dir.join("rec");
    std::fs::write(
        &rec,
        format!(
            r#"#!/bin/sh
echo "$*" >> '{log}'
case "$1" in
  resolve) echo "/dev/ektool-fake-$2" ;;
  probe) echo "$2 1073741824 xfs" ;;
  mount) o=$(echo "$2" | tr , '\n' | grep -E '^(ro|nosuid|nodev|noexec)$' | paste -sd, -)
         exec mount -t tmpfs -o "$o" "$3" "$4" ;;
  umount) exec umount "$2" ;;
esac
"#,
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = rec.display();
    (
        MountCommands {
            resolve: format!("{r} resolve {{volume}} {{device}} {{nvme}} {{xen}}"),
            probe: format!("{r} probe {{source}}"),
            mount: format!("{r} mount {{options}} {{source}} {{mountpoint}}"),
            unmount: format!("{r} umount {{mountpoint}}"),
        },
        log,
    )
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A volume id of this test run's own: the fake devices are named after
/// it, and a device left mounted by an earlier (failed) run must not be
/// taken for this run's.
fn fresh_volume() -> VolumeId {
    let u = unique("v");
    let hex: String = u.chars().filter(char::is_ascii_hexdigit).collect();
    VolumeId::from_api(format!("vol-{:0>17}", &hex[hex.len().saturating_sub(17)..]))
}

/// A mount root of the test's own on the host, and a mountpoint in it.
fn target(name: &str) -> (String, String) {
    let root = format!("{}/{}", SshHost::MOUNT, unique("mount"));
    let mp = format!("{root}/{name}");
    (root, mp)
}

fn host() -> SshHost {
    let h = ssh_host(3);
    assert!(h.namespaced, "the bench host needs its own mount namespace");
    h
}

#[tokio::test]
async fn mounts_read_only_once_and_unmounts() {
    let h = host();
    let dir = tempdir();
    let (commands, log) = recording(dir.path());
    let r = remote(&h, dir.path());
    let vol = fresh_volume();
    let (root, mp) = target("snap");
    let t = MountTarget {
        root: &root,
        mountpoint: &mp,
    };

    let m = mount::mount_on_host(&r, &commands, &vol, "/dev/sdg", &t, None)
        .await
        .unwrap();
    assert!(!m.already);
    let v = vol.as_str();
    let hexid = v.replace('-', "");
    assert_eq!(m.source, format!("/dev/ektool-fake-{v}"));
    assert_eq!(m.options, "ro,nosuid,nodev,noexec,norecovery,nouuid");
    assert_eq!(
        lines(&log),
        [
            format!(
                "resolve {v} /dev/sdg /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{hexid} /dev/xvdg"
            ),
            format!("probe /dev/ektool-fake-{v}"),
            format!("mount ro,nosuid,nodev,noexec,norecovery,nouuid /dev/ektool-fake-{v} {mp}"),
        ]
    );
    let table = mount::mount_table(&r).await.unwrap();
    let entry = table.iter().find(|e| e.target == mp).expect("mounted");
    // M2: what the kernel actually applied.
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            entry.options.split(',').any(|x| x == o),
            "{o}: {}",
            entry.options
        );
    }
    let mode = r
        .run(&Command::argv(["stat", "-c", "%a", &root]))
        .await
        .unwrap();
    assert_eq!(mode.stdout_str().trim(), "700", "the mount root is private");
    // Only in the host's own namespace, not on this machine.
    assert!(
        !std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(&mp)
    );

    // A rerun finds it mounted and mounts nothing.
    let again = mount::mount_on_host(&r, &commands, &vol, "/dev/sdg", &t, None)
        .await
        .unwrap();
    assert!(again.already);
    assert_eq!(
        lines(&log)
            .iter()
            .filter(|l| l.starts_with("mount "))
            .count(),
        1
    );

    let gone = mount::unmount_on_host(&r, &commands, &vol, "/dev/sdg")
        .await
        .unwrap();
    assert_eq!(gone, std::slice::from_ref(&mp));
    assert!(lines(&log).contains(&format!("umount {mp}")));
    assert!(
        !mount::mount_table(&r)
            .await
            .unwrap()
            .iter()
            .any(|e| e.target == mp)
    );
    assert!(
        !h.local_path(mp.strip_prefix(SshHost::MOUNT).unwrap())
            .exists(),
        "the empty mountpoint is removed"
    );
    // Unmounting again is a no-op.
    assert!(
        mount::unmount_on_host(&r, &commands, &vol, "/dev/sdg")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_busy_mountpoint_is_refused() {
    let h = host();
    let dir = tempdir();
    let (commands, log) = recording(dir.path());
    let r = remote(&h, dir.path());
    let (root, mp) = target("busy");
    let setup = format!("mkdir -p {mp} && mount -t tmpfs something-else {mp}");
    ec2kit::remote::run_checked(&r, &Command::shell(setup))
        .await
        .unwrap();
    let err = mount::mount_on_host(
        &r,
        &commands,
        &fresh_volume(),
        "/dev/sdf",
        &MountTarget {
            root: &root,
            mountpoint: &mp,
        },
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MountError::MountpointBusy { .. }), "{err}");
    assert!(err.to_string().contains("something-else"), "{err}");
    assert!(!lines(&log).iter().any(|l| l.starts_with("mount ")));
    r.run(&Command::shell(format!("umount {mp}")))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_template_that_mounts_read_write_is_caught_and_undone() {
    let h = host();
    let dir = tempdir();
    let (mut commands, _) = recording(dir.path());
    // Keeps the placeholder but ignores it.
    commands.mount = "mount -t tmpfs -o rw {source} {mountpoint} # {options}".into();
    let r = remote(&h, dir.path());
    let (root, mp) = target("rw");
    let err = mount::mount_on_host(
        &r,
        &commands,
        &fresh_volume(),
        "/dev/sdf",
        &MountTarget {
            root: &root,
            mountpoint: &mp,
        },
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("without ro"), "{err}");
    assert!(
        !mount::mount_table(&r)
            .await
            .unwrap()
            .iter()
            .any(|e| e.target == mp),
        "unmounted again"
    );
}

/// M2: a read-only mount that honours setuid bits and device nodes is
/// caught in the mount table and undone.
#[tokio::test]
async fn a_mount_without_nosuid_nodev_noexec_is_caught_and_undone() {
    let h = host();
    let dir = tempdir();
    let (mut commands, _) = recording(dir.path());
    commands.mount = "mount -t tmpfs -o ro {source} {mountpoint} # {options}".into();
    let r = remote(&h, dir.path());
    let (root, mp) = target("suid");
    let err = mount::mount_on_host(
        &r,
        &commands,
        &fresh_volume(),
        "/dev/sdf",
        &MountTarget {
            root: &root,
            mountpoint: &mp,
        },
        None,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("without nosuid,nodev,noexec"),
        "{err}"
    );
    assert!(
        !mount::mount_table(&r)
            .await
            .unwrap()
            .iter()
            .any(|e| e.target == mp),
        "unmounted again"
    );
}

/// M2: a mountpoint with files in it, one reached through a symlink, and
/// one outside the root are refused; nothing is mounted.
#[tokio::test]
async fn unsafe_mountpoints_are_refused_before_mounting() {
    let h = host();
    let dir = tempdir();
    let (commands, log) = recording(dir.path());
    let r = remote(&h, dir.path());
    let (root, full) = target("full");
    ec2kit::remote::run_checked(
        &r,
        &Command::shell(format!(
            "mkdir -p {full} && touch {full}/precious && mkdir -p {root}/elsewhere && ln -s {root}/elsewhere {root}/link"
        )),
    )
    .await
    .unwrap();
    let vol = fresh_volume();
    let at = |mp: &str| {
        let (r, c, v, root, mp) = (&r, &commands, &vol, root.clone(), mp.to_owned());
        async move {
            mount::mount_on_host(
                r,
                c,
                v,
                "/dev/sdf",
                &MountTarget {
                    root: &root,
                    mountpoint: &mp,
                },
                None,
            )
            .await
            .unwrap_err()
        }
    };
    let e = at(&full).await;
    assert!(matches!(e, MountError::MountpointNotEmpty { .. }), "{e}");
    let e = at(&format!("{root}/link/snap")).await;
    assert!(e.to_string().contains("symlink"), "{e}");
    let e = at("/etc").await;
    assert!(matches!(e, MountError::InvalidMountpoint { .. }), "{e}");
    assert!(!lines(&log).iter().any(|l| l.starts_with("mount ")));
    assert!(
        h.local_path(&format!(
            "{}/precious",
            full.strip_prefix(SshHost::MOUNT).unwrap()
        ))
        .exists()
    );
}
