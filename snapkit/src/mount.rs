//! Mounting a snapshot read-only on an instance, and cleaning up after.
//!
//! [`plan_mount`] looks at the snapshot, the instance and the volumes
//! already on it; [`mount`] then creates a volume from the snapshot in the
//! instance's zone (tagged at creation, so a crashed run is found again),
//! attaches it on a free device, and over [`Remote`] resolves the local
//! device and mounts it **read-only without replaying a journal**
//! (`norecovery` for XFS, `noload` for ext*): a snapshot of a live
//! filesystem has a dirty journal, and replaying it would write to the
//! volume. Anything that fails after the volume exists is rolled back
//! (detached and deleted), so a failed mount leaves nothing behind.
//!
//! [`find`], [`unmount_plan`] and [`unmount`] undo a mount, each step
//! idempotent (unmount, detach, delete), so a second run, or one after a
//! crash, finishes the job; `cleanup` is the same over every mount volume
//! older than some age.
//!
//! The host-side commands are [`MountCommands`] templates, so a site with
//! unusual device naming can adapt them, and tests replace them with
//! recording scripts.

use std::time::Duration;

use ec2kit::remote::{quote, run_checked};
use ec2kit::requests::CreateVolume;
use ec2kit::{
    Command, Ec2, Ec2Error, ErrorKind, Filter, Instance, InstanceId, Region, Remote, RemoteError,
    SnapshotId, SnapshotState, Tags, Volume, VolumeId,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::lineage::tags as lineage;

/// What a mount calls: [`plan_mount`] and [`mount`] (a failed mount
/// detaches and deletes the volume it made).
pub const PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::DescribeInstances,
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::CreateVolume,
    ec2kit::Action::AttachVolume,
])
.sometimes(&[ec2kit::iam::Sometimes {
    when: ec2kit::iam::When::Case("on-failure"),
    actions: &[ec2kit::Action::DetachVolume, ec2kit::Action::DeleteVolume],
}])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// What [`find`] calls.
pub const FIND_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeVolumes]);

/// What [`unmount`] calls.
pub const UNMOUNT_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::DetachVolume,
    ec2kit::Action::DeleteVolume,
]);

/// The tags on every volume `snap mount` creates (besides
/// [`lineage::OWNER`] and [`lineage::CREATED`]).
pub mod tags {
    /// The snapshot the volume was made from: marks a mount volume.
    pub const MOUNT_OF: &str = "ektool:mount-of";
    /// The instance it is (to be) attached to.
    pub const MOUNTED_ON: &str = "ektool:mounted-on";
    /// Where it is (to be) mounted on that instance.
    pub const MOUNTPOINT: &str = "ektool:mountpoint";
}

/// The default mount root: mounts go to `<root>/<snapshot id>`, and every
/// mountpoint (asked for, or found in a tag) must lie under the root. The
/// root is made `0700`, so other local users of the instance cannot read
/// another host's files (uids do not map between hosts).
pub const DEFAULT_ROOT: &str = "/mnt/ektool";

/// The device names mounts use, in order (AWS's recommended range for EBS
/// data volumes on both Xen and Nitro instances).
pub const DEVICES: [&str; 11] = [
    "/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl", "/dev/sdm",
    "/dev/sdn", "/dev/sdo", "/dev/sdp",
];

/// Filesystem types that are never mounted directly.
const NOT_MOUNTABLE: [&str; 6] = [
    "swap",
    "LVM2_member",
    "crypto_LUKS",
    "linux_raid_member",
    "zfs_member",
    "BitLocker",
];

/// The host-side commands, as templates. Placeholders are replaced by
/// shell-quoted values:
///
/// - `resolve`: `{volume}` (`vol-0abc…`), `{device}` (the attach name,
///   `/dev/sdf`), `{nvme}` (`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc…`,
///   how Nitro instances name it), `{xen}` (`/dev/xvdf`, how Xen instances
///   name it). Prints the local block device.
/// - `probe`: `{source}`. Prints `NAME SIZE [FSTYPE]` for the device and
///   each partition, one per line (`lsblk -bnlpo NAME,SIZE,FSTYPE`).
/// - `mount`: `{source}`, `{mountpoint}`, `{fstype}` and `{options}`
///   (required: ektool decides them, and they always start with `ro`).
/// - `unmount`: `{mountpoint}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountCommands {
    /// Prints the local block device of the attached volume.
    pub resolve: String,
    /// Lists the device and its partitions with sizes and filesystem types.
    pub probe: String,
    /// Mounts a filesystem.
    pub mount: String,
    /// Unmounts a filesystem.
    pub unmount: String,
}

impl Default for MountCommands {
    fn default() -> Self {
        Self {
            // The device node shows up a moment after EC2 says `attached`.
            // Only names that identify *this* volume are tried: never a
            // guess such as "the newest nvme disk".
            resolve: "i=0; while [ $i -lt 120 ]; do \
                      for d in {nvme} {xen} {device}; do \
                      if [ -b \"$d\" ]; then readlink -f -- \"$d\"; exit 0; fi; done; \
                      i=$((i+1)); sleep 0.5; done; \
                      echo no block device for {volume} >&2; exit 1"
                .into(),
            probe: "udevadm settle >/dev/null 2>&1 || true; lsblk -bnlpo NAME,SIZE,FSTYPE {source}"
                .into(),
            mount: "mount -t {fstype} -o {options} {source} {mountpoint}".into(),
            unmount: "umount {mountpoint}".into(),
        }
    }
}

impl MountCommands {
    /// Checks that each template has the placeholders it must have.
    pub fn validate(&self) -> Result<(), MountError> {
        let need = |what: &'static str, template: &str, any_of: &[&str]| {
            if any_of.iter().any(|p| template.contains(p)) {
                Ok(())
            } else {
                Err(MountError::InvalidTemplate {
                    what,
                    reason: format!("needs {}", any_of.join(" or ")),
                })
            }
        };
        need(
            "resolve",
            &self.resolve,
            &["{nvme}", "{xen}", "{device}", "{volume}"],
        )?;
        need("probe", &self.probe, &["{source}"])?;
        // `{options}` is how the read-only, no-journal-replay options get
        // in: a mount template without it could mount read-write.
        need("mount", &self.mount, &["{options}"])?;
        need("mount", &self.mount, &["{source}"])?;
        need("mount", &self.mount, &["{mountpoint}"])?;
        need("unmount", &self.unmount, &["{mountpoint}"])?;
        Ok(())
    }
}

/// Replaces each `{name}` in `template` by the quoted value.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut s = template.to_owned();
    for (name, value) in values {
        s = s.replace(&format!("{{{name}}}"), &quote(value));
    }
    s
}

/// The names a volume attached as `device` may have on the instance:
/// `(nvme by-id link, xen name)`.
pub fn local_names(volume: &VolumeId, device: &str) -> (String, String) {
    let nvme = format!(
        "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
        volume.as_str().replace('-', "")
    );
    let xen = match device.strip_prefix("/dev/sd") {
        Some(rest) => format!("/dev/xvd{rest}"),
        None => device.to_owned(),
    };
    (nvme, xen)
}

/// The options every snapshot mount has, and that are checked in the
/// host's mount table afterwards: read-only, and nothing on a foreign
/// filesystem is trusted (no setuid binaries, no device nodes, no
/// executables: a snapshot of a compromised host must not give root on
/// the instance that inspects it).
pub const REQUIRED_OPTIONS: [&str; 4] = ["ro", "nosuid", "nodev", "noexec"];

/// The mount options for a filesystem type: always read-only,
/// `nosuid,nodev,noexec`, and never replaying a journal (which would write
/// to the volume).
pub fn mount_options(fstype: &str) -> String {
    let own = match fstype {
        // nouuid: a snapshot of a filesystem mounted on the same instance
        // (its root, typically) has the same UUID, which XFS refuses.
        "xfs" => ",norecovery,nouuid",
        "ext3" | "ext4" => ",noload",
        "btrfs" => ",nologreplay",
        _ => "",
    };
    format!("ro,nosuid,nodev,noexec{own}")
}

/// The [`REQUIRED_OPTIONS`] a mount-table entry's options lack.
pub fn missing_options(options: &str) -> Vec<&'static str> {
    REQUIRED_OPTIONS
        .iter()
        .copied()
        .filter(|want| !options.split(',').any(|o| o == *want))
        .collect()
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountEntry {
    /// What is mounted (a device for block filesystems).
    pub source: String,
    /// Where.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// Options.
    pub options: String,
}

/// Parses `/proc/self/mounts` (fields are octal-escaped: `\040` is a space).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(MountEntry {
                source: unescape(f.next()?),
                target: unescape(f.next()?),
                fstype: f.next()?.to_owned(),
                options: f.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// A block device or partition, as the probe lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDev {
    /// Path, e.g. `/dev/nvme1n1p1`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Filesystem type, if any.
    pub fstype: Option<String>,
}

/// Parses the probe's `NAME SIZE [FSTYPE]` lines.
pub fn parse_probe(text: &str) -> Vec<BlockDev> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_owned();
            let size = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let fstype = f.next().map(str::to_owned);
            Some(BlockDev { name, size, fstype })
        })
        .collect()
}

/// What to mount on `device`: the device itself when it holds a
/// filesystem, else partition `partition` when asked for, else the
/// largest mountable partition (a root volume's root filesystem, next to
/// its small boot and EFI partitions).
pub fn choose_source(
    host: &str,
    device: &str,
    devs: &[BlockDev],
    partition: Option<u32>,
) -> Result<BlockDev, MountError> {
    let mountable = |d: &&BlockDev| {
        d.fstype
            .as_deref()
            .is_some_and(|t| !NOT_MOUNTABLE.contains(&t))
    };
    let listing = || {
        devs.iter()
            .map(|d| format!("{} {}", d.name, d.fstype.as_deref().unwrap_or("-")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(n) = partition {
        let names = [format!("{device}{n}"), format!("{device}p{n}")];
        return match devs.iter().find(|d| names.contains(&d.name)) {
            Some(d) if mountable(&d) => Ok(d.clone()),
            Some(d) => Err(MountError::NoFilesystem {
                host: host.to_owned(),
                device: d.name.clone(),
                found: listing(),
            }),
            None => Err(MountError::NoSuchPartition {
                host: host.to_owned(),
                device: device.to_owned(),
                partition: n,
                found: listing(),
            }),
        };
    }
    if let Some(d) = devs.iter().filter(mountable).find(|d| d.name == device) {
        return Ok(d.clone());
    }
    devs.iter()
        .filter(mountable)
        .filter(|d| d.name != device)
        .max_by_key(|d| d.size)
        .cloned()
        .ok_or_else(|| MountError::NoFilesystem {
            host: host.to_owned(),
            device: device.to_owned(),
            found: listing(),
        })
}

/// The device letter of a name such as `/dev/sdf`, `/dev/xvdf`, `xvdf1`.
fn letter(device: &str) -> Option<char> {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    let rest = name
        .strip_prefix("xvd")
        .or_else(|| name.strip_prefix("sd"))?;
    rest.chars().next().filter(char::is_ascii_lowercase)
}

/// The first of [`DEVICES`] whose letter no name in `used` has (`sdf`
/// and `xvdf` are the same slot).
pub fn free_devices<'a>(used: impl IntoIterator<Item = &'a str>) -> Vec<&'static str> {
    let taken: Vec<char> = used.into_iter().filter_map(letter).collect();
    DEVICES
        .iter()
        .copied()
        .filter(|d| letter(d).is_some_and(|l| !taken.contains(&l)))
        .collect()
}

/// Checks that `mountpoint` is a valid mountpoint strictly under `root`
/// (both absolute, without `.`/`..` or empty components). Paths taken from
/// tags go through this too: a tag can never choose `/etc`.
pub fn check_mountpoint_under(mountpoint: &str, root: &str) -> Result<(), MountError> {
    check_mountpoint(root)?;
    check_mountpoint(mountpoint)?;
    let bad = |reason: String| {
        Err(MountError::InvalidMountpoint {
            mountpoint: mountpoint.to_owned(),
            reason,
        })
    };
    let clean = |p: &str| {
        p.trim_end_matches('/')
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != ".")
    };
    if !clean(root) || !clean(mountpoint) {
        return bad("must not contain empty or `.` components".into());
    }
    let root = root.trim_end_matches('/');
    match mountpoint.trim_end_matches('/').strip_prefix(root) {
        Some(rest) if rest.starts_with('/') && rest.len() > 1 => Ok(()),
        _ => bad(format!("must lie under the mount root {root}")),
    }
}

/// Checks a mountpoint: absolute, not `/`, no `..`, one line.
pub fn check_mountpoint(mountpoint: &str) -> Result<(), MountError> {
    let bad = |reason: &str| {
        Err(MountError::InvalidMountpoint {
            mountpoint: mountpoint.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if !mountpoint.starts_with('/') {
        return bad("must be an absolute path");
    }
    if mountpoint.trim_end_matches('/').is_empty() {
        return bad("cannot be /");
    }
    if mountpoint.split('/').any(|c| c == "..") {
        return bad("must not contain ..");
    }
    if mountpoint.contains(['\n', '\0']) {
        return bad("must be one line");
    }
    Ok(())
}

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// An EC2 call failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// The host failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// No such snapshot among the account's own.
    #[error("snapshot {snapshot} not found in {region}")]
    SnapshotNotFound {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The region.
        region: Region,
    },
    /// The snapshot is not completed.
    #[error("snapshot {snapshot} is {state}, not completed")]
    SnapshotNotReady {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Its state.
        state: String,
    },
    /// No such instance.
    #[error("instance {instance} not found in {region}")]
    InstanceNotFound {
        /// The instance.
        instance: InstanceId,
        /// The region.
        region: Region,
    },
    /// The instance is not running.
    #[error("instance {instance} is {state}, not running")]
    InstanceNotRunning {
        /// The instance.
        instance: InstanceId,
        /// Its state.
        state: String,
    },
    /// Every device of /dev/sdf../dev/sdp is taken.
    #[error("instance {instance} has no free device in /dev/sdf../dev/sdp")]
    NoFreeDevice {
        /// The instance.
        instance: InstanceId,
    },
    /// A volume did not reach a state in time.
    #[error("volume {volume} still {state} after {after:?} waiting to be {waiting_for}")]
    Timeout {
        /// The volume.
        volume: VolumeId,
        /// What it should have become.
        waiting_for: &'static str,
        /// Where it was.
        state: String,
        /// How long we waited.
        after: Duration,
    },
    /// A volume went to `error`.
    #[error("volume {volume} is in state {state}")]
    VolumeFailed {
        /// The volume.
        volume: VolumeId,
        /// Its state.
        state: String,
    },
    /// A volume disappeared while we waited for it.
    #[error("volume {volume} disappeared")]
    VolumeGone {
        /// The volume.
        volume: VolumeId,
    },
    /// The attached volume has no block device on the host.
    #[error("{host}: no block device for {volume} attached as {device}: {detail}")]
    DeviceNotFound {
        /// The host.
        host: String,
        /// The volume.
        volume: VolumeId,
        /// Its attach name.
        device: String,
        /// What the resolve command said.
        detail: String,
    },
    /// Nothing mountable on the device.
    #[error("{host}: no mountable filesystem on {device} (found: {found})")]
    NoFilesystem {
        /// The host.
        host: String,
        /// The device.
        device: String,
        /// What the probe listed.
        found: String,
    },
    /// `--partition N` does not exist.
    #[error("{host}: {device} has no partition {partition} (found: {found})")]
    NoSuchPartition {
        /// The host.
        host: String,
        /// The device.
        device: String,
        /// The partition asked for.
        partition: u32,
        /// What the probe listed.
        found: String,
    },
    /// The mountpoint directory has files in it (mounting would hide them,
    /// and it is not a directory `snap mount` made).
    #[error("{host}: {mountpoint} is not an empty directory; not mounting over it")]
    MountpointNotEmpty {
        /// The host.
        host: String,
        /// The mountpoint.
        mountpoint: String,
    },
    /// Something else is mounted where the snapshot should go.
    #[error("{host}: {mountpoint} already has {mounted} mounted")]
    MountpointBusy {
        /// The host.
        host: String,
        /// The mountpoint.
        mountpoint: String,
        /// What is mounted there.
        mounted: String,
    },
    /// The mount command succeeded but nothing is mounted (or an unmount
    /// succeeded and it still is).
    #[error("{host}: {mountpoint}: {detail}")]
    NotMounted {
        /// The host.
        host: String,
        /// The mountpoint.
        mountpoint: String,
        /// What went wrong.
        detail: String,
    },
    /// The volume is not one `snap mount` made.
    #[error("volume {volume} was not made by `ektool snap mount`; not touching it")]
    NotOurs {
        /// The volume.
        volume: VolumeId,
    },
    /// A mount volume is attached, and no host was given to unmount it on.
    #[error(
        "volume {volume} is attached to {instance}: unmounting needs the host (or force, to detach without unmounting)"
    )]
    NoHost {
        /// The volume.
        volume: VolumeId,
        /// The instance.
        instance: InstanceId,
    },
    /// A command template lacks a placeholder.
    #[error("invalid {what} command template: {reason}")]
    InvalidTemplate {
        /// Which template.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A mountpoint that cannot be used.
    #[error("invalid mountpoint {mountpoint:?}: {reason}")]
    InvalidMountpoint {
        /// The mountpoint.
        mountpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// A mount failed after the volume was created; what happened to it.
    #[error("mount failed; {rollback}")]
    Aborted {
        /// Why the mount failed.
        #[source]
        cause: Box<MountError>,
        /// What became of the volume.
        rollback: Rollback,
    },
}

/// What a failed mount did with the volume it had created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Rollback {
    /// Detached (if needed) and deleted: nothing left behind.
    Deleted {
        /// The volume.
        volume: VolumeId,
    },
    /// Could not be removed; `snap cleanup` will find it by its tags.
    LeftBehind {
        /// The volume.
        volume: VolumeId,
        /// Why it could not be removed.
        reason: String,
    },
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deleted { volume } => write!(f, "volume {volume} deleted again"),
            Self::LeftBehind { volume, reason } => write!(
                f,
                "volume {volume} left behind ({reason}); `ektool snap cleanup` removes it"
            ),
        }
    }
}

/// How long to wait for EC2, and how often to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// Between two looks.
    pub poll: Duration,
    /// For each wait (available, attached, detached).
    pub timeout: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(3),
            timeout: Duration::from_secs(300),
        }
    }
}

/// What to mount where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// The instance.
    pub instance: InstanceId,
    /// Where; default `<root>/<snapshot>`; must lie under `root`.
    pub mountpoint: Option<String>,
    /// The mount root ([`DEFAULT_ROOT`] unless configured).
    pub root: String,
    /// Mount this partition of the volume instead of choosing.
    pub partition: Option<u32>,
}

/// What `mount` will do: the `--dry-run` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MountPlan {
    /// The region.
    pub region: Region,
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Whether it (and so the volume) is encrypted.
    pub encrypted: bool,
    /// Size in GiB.
    pub size_gib: Option<i32>,
    /// The instance.
    pub instance: InstanceId,
    /// Its availability zone, where the volume is created.
    pub availability_zone: String,
    /// Its private IP.
    pub private_ip: Option<String>,
    /// Its public DNS name.
    pub public_dns: Option<String>,
    /// The device to attach on (the next free one is tried if another
    /// attach takes it first).
    pub device: String,
    /// The free devices after `device`.
    #[serde(skip)]
    pub spare_devices: Vec<String>,
    /// Where to mount.
    pub mountpoint: String,
    /// The mount root the mountpoint lies under (made `0700`).
    pub mount_root: String,
    /// The partition asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// An earlier run's volume for the same snapshot and instance, picked
    /// up instead of creating another (only one EC2 says was made from
    /// that snapshot: tags alone are not enough).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<Volume>,
}

/// A finished mount.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mounted {
    /// The region.
    pub region: Region,
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// The instance.
    pub instance: InstanceId,
    /// The host it was mounted on.
    pub host: String,
    /// The volume made from the snapshot.
    pub volume: VolumeId,
    /// Whether the volume is encrypted.
    pub encrypted: bool,
    /// The attach name (`/dev/sdf`).
    pub attach_device: String,
    /// The block device on the host (`/dev/nvme1n1`).
    pub device: String,
    /// What was mounted: the device or one of its partitions.
    pub source: String,
    /// Its filesystem type.
    pub fstype: String,
    /// The mount options.
    pub options: String,
    /// Where.
    pub mountpoint: String,
    /// Whether an earlier run's volume was picked up.
    pub resumed: bool,
    /// Whether it was mounted already (nothing done on the host).
    pub already_mounted: bool,
}

/// Reports what is happening, for progress output.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

async fn describe_volume(
    ec2: &dyn Ec2,
    region: &Region,
    volume: &VolumeId,
) -> Result<Option<Volume>, Ec2Error> {
    // A filter (not VolumeIds) so a deleted volume is an empty answer,
    // not an error.
    Ok(ec2
        .describe_volumes(region, &[Filter::new("volume-id", [volume.as_str()])])
        .await?
        .into_iter()
        .next())
}

/// Polls `volume` until `done` says so; `error` state, disappearance and
/// the timeout are errors.
async fn wait_volume(
    ec2: &dyn Ec2,
    region: &Region,
    volume: &VolumeId,
    waiting_for: &'static str,
    done: impl Fn(&Volume) -> bool,
    waits: Waits,
    progress: Progress<'_>,
) -> Result<Volume, MountError> {
    // Checked: a library caller may pass any Duration.
    let deadline = crate::wait::deadline(waits.timeout);
    loop {
        let Some(v) = describe_volume(ec2, region, volume).await? else {
            return Err(MountError::VolumeGone {
                volume: volume.clone(),
            });
        };
        if done(&v) {
            return Ok(v);
        }
        if v.state == "error" {
            return Err(MountError::VolumeFailed {
                volume: volume.clone(),
                state: v.state,
            });
        }
        progress(&format!(
            "{volume}: {} (waiting to be {waiting_for})",
            v.state
        ));
        if crate::wait::deadline(waits.poll) > deadline {
            return Err(MountError::Timeout {
                volume: volume.clone(),
                waiting_for,
                state: v.state,
                after: waits.timeout,
            });
        }
        tokio::time::sleep(waits.poll).await;
    }
}

fn attached_to(v: &Volume, instance: &InstanceId) -> Option<String> {
    v.attachments
        .iter()
        .find(|a| &a.instance_id == instance && a.state.as_deref() == Some("attached"))
        .map(|a| a.device.clone().unwrap_or_default())
}

/// Looks at the snapshot, the instance and its volumes, and decides the
/// volume's zone, the device and the mountpoint. Only reads.
pub async fn plan_mount(
    ec2: &dyn Ec2,
    region: &Region,
    request: &MountRequest,
) -> Result<MountPlan, MountError> {
    let snapshot = ec2
        .describe_snapshots(
            region,
            &[Filter::new("snapshot-id", [request.snapshot.as_str()])],
        )
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| MountError::SnapshotNotFound {
            snapshot: request.snapshot.clone(),
            region: region.clone(),
        })?;
    if snapshot.state != SnapshotState::Completed {
        return Err(MountError::SnapshotNotReady {
            snapshot: snapshot.id,
            state: snapshot.state.to_string(),
        });
    }
    let instance: Instance = ec2
        .describe_instances(
            region,
            &[Filter::new("instance-id", [request.instance.as_str()])],
        )
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| MountError::InstanceNotFound {
            instance: request.instance.clone(),
            region: region.clone(),
        })?;
    if instance.state != "running" {
        return Err(MountError::InstanceNotRunning {
            instance: instance.id,
            state: instance.state,
        });
    }
    let zone = instance
        .availability_zone
        .clone()
        .ok_or_else(|| MountError::InstanceNotFound {
            instance: instance.id.clone(),
            region: region.clone(),
        })?;

    // An earlier run for the same snapshot and instance that did not
    // finish: pick its volume up rather than make a second one.
    let earlier = ec2
        .describe_volumes(
            region,
            &[
                Filter::new(format!("tag:{}", lineage::OWNER), [lineage::OWNER_VALUE]),
                Filter::new(format!("tag:{}", tags::MOUNT_OF), [snapshot.id.as_str()]),
                Filter::new(format!("tag:{}", tags::MOUNTED_ON), [instance.id.as_str()]),
            ],
        )
        .await?;
    // Tags can be written by anyone with ec2:CreateTags: a volume counts
    // only when EC2 itself says it was made from this snapshot.
    let earlier: Vec<&Volume> = earlier
        .iter()
        .filter(|v| v.snapshot_id.as_ref() == Some(&snapshot.id))
        .collect();
    let resume = earlier
        .iter()
        .find(|v| attached_to(v, &instance.id).is_some())
        .or_else(|| {
            earlier
                .iter()
                .find(|v| matches!(v.state.as_str(), "creating" | "available"))
        })
        .map(|v| (*v).clone());

    let root = request.root.trim_end_matches('/').to_owned();
    check_mountpoint(&root)?;
    let default = format!("{root}/{}", snapshot.id);
    let mountpoint = match (&request.mountpoint, &resume) {
        (Some(m), _) => m.trim_end_matches('/').to_owned(),
        // A tagged mountpoint is used only under the root; a tag pointing
        // elsewhere (`/etc`) is ignored.
        (None, Some(v)) => v
            .tags
            .get(tags::MOUNTPOINT)
            .filter(|m| check_mountpoint_under(m, &root).is_ok())
            .map(|m| m.trim_end_matches('/').to_owned())
            .unwrap_or(default),
        (None, None) => default,
    };
    check_mountpoint_under(&mountpoint, &root)?;

    // Devices in use: the instance's mappings, and every volume attached
    // or attaching to it (a mapping can lag behind an attach in flight).
    let on_instance = ec2
        .describe_volumes(
            region,
            &[Filter::new(
                "attachment.instance-id",
                [instance.id.as_str()],
            )],
        )
        .await?;
    let used: Vec<String> = instance
        .block_devices
        .iter()
        .map(|b| b.device_name.clone())
        .chain(
            on_instance
                .iter()
                .flat_map(|v| v.attachments.iter())
                .filter(|a| a.instance_id == instance.id)
                .filter_map(|a| a.device.clone()),
        )
        .collect();
    let (device, spare) = match resume.as_ref().and_then(|v| attached_to(v, &instance.id)) {
        Some(d) => (d, Vec::new()),
        None => {
            let mut free = free_devices(used.iter().map(String::as_str)).into_iter();
            let first = free.next().ok_or_else(|| MountError::NoFreeDevice {
                instance: instance.id.clone(),
            })?;
            (first.to_owned(), free.map(str::to_owned).collect())
        }
    };

    Ok(MountPlan {
        region: region.clone(),
        snapshot: snapshot.id,
        encrypted: snapshot.encrypted,
        size_gib: snapshot.volume_size_gib,
        instance: instance.id,
        availability_zone: zone,
        private_ip: instance.private_ip,
        public_dns: instance.public_dns,
        device,
        spare_devices: spare,
        mountpoint,
        mount_root: root,
        partition: request.partition,
        resume,
    })
}

/// The `CreateVolume` request of a plan (tags at creation: nothing is
/// ever untagged, even for a moment).
pub fn create_request(plan: &MountPlan, now: Timestamp, dry_run: bool) -> CreateVolume {
    let tags = Tags::new()
        .with(lineage::OWNER, lineage::OWNER_VALUE)
        .with(tags::MOUNT_OF, plan.snapshot.as_str())
        .with(tags::MOUNTED_ON, plan.instance.as_str())
        .with(tags::MOUNTPOINT, plan.mountpoint.clone())
        .with(
            lineage::CREATED,
            now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
        .with(
            "Name",
            format!("ektool mount of {} on {}", plan.snapshot, plan.instance),
        );
    CreateVolume {
        availability_zone: plan.availability_zone.clone(),
        snapshot_id: Some(plan.snapshot.clone()),
        // A volume from an encrypted snapshot is encrypted with the
        // snapshot's key; saying so explicitly keeps it that way.
        encrypted: plan.encrypted,
        client_token: Some(uuid::Uuid::new_v4().to_string()),
        tags,
        dry_run,
        ..CreateVolume::default()
    }
}

fn is_device_taken(e: &Ec2Error) -> bool {
    e.code() == Some("InvalidParameterValue")
        && e.message
            .as_deref()
            .is_some_and(|m| m.contains("already in use"))
}

/// Carries out a plan: create (or pick up) the volume, attach, mount
/// read-only on `remote`. On failure the volume is detached and deleted
/// again ([`MountError::Aborted`] says whether that worked).
pub async fn mount(
    ec2: &dyn Ec2,
    remote: &dyn Remote,
    plan: &MountPlan,
    commands: &MountCommands,
    waits: Waits,
    now: Timestamp,
    progress: Progress<'_>,
) -> Result<Mounted, MountError> {
    commands.validate()?;
    check_mountpoint_under(&plan.mountpoint, &plan.mount_root)?;
    let region = &plan.region;
    let (volume, resumed) = match &plan.resume {
        Some(v) => (v.clone(), true),
        None => {
            progress(&format!(
                "creating a volume from {} in {}",
                plan.snapshot, plan.availability_zone
            ));
            (
                ec2.create_volume(region, &create_request(plan, now, false))
                    .await?,
                false,
            )
        }
    };
    // A volume an earlier run left attached may be in use: a failure now
    // is reported, not rolled back (`snap unmount` removes it).
    let roll_back = attached_to(&volume, &plan.instance).is_none();
    match attach_and_mount(ec2, remote, plan, commands, waits, &volume, progress).await {
        Ok((attach_device, on_host)) => Ok(Mounted {
            region: region.clone(),
            snapshot: plan.snapshot.clone(),
            instance: plan.instance.clone(),
            host: remote.host(),
            volume: volume.id,
            encrypted: volume.encrypted || plan.encrypted,
            attach_device,
            device: on_host.device,
            source: on_host.source,
            fstype: on_host.fstype,
            options: on_host.options,
            mountpoint: on_host.mountpoint,
            resumed,
            already_mounted: on_host.already,
        }),
        Err(cause) if !roll_back => Err(cause),
        Err(cause) => {
            progress(&format!("mount failed, removing {}", volume.id));
            let rollback = remove_volume(ec2, region, &volume.id, &plan.instance, waits).await;
            Err(MountError::Aborted {
                cause: Box::new(cause),
                rollback,
            })
        }
    }
}

async fn attach_and_mount(
    ec2: &dyn Ec2,
    remote: &dyn Remote,
    plan: &MountPlan,
    commands: &MountCommands,
    waits: Waits,
    volume: &Volume,
    progress: Progress<'_>,
) -> Result<(String, HostMount), MountError> {
    let region = &plan.region;
    let id = &volume.id;
    let device = match attached_to(volume, &plan.instance) {
        Some(d) => d,
        None => {
            wait_volume(
                ec2,
                region,
                id,
                "available",
                |v| v.state == "available",
                waits,
                progress,
            )
            .await?;
            let mut candidates = std::iter::once(plan.device.clone())
                .chain(plan.spare_devices.iter().cloned())
                .take(4);
            let mut device = candidates.next().unwrap_or_default();
            loop {
                progress(&format!("attaching {id} to {} as {device}", plan.instance));
                match ec2
                    .attach_volume(region, id, &plan.instance, &device, false)
                    .await
                {
                    Ok(()) => break,
                    // Another attach took the device since we looked.
                    Err(e) if is_device_taken(&e) => match candidates.next() {
                        Some(next) => device = next,
                        None => return Err(e.into()),
                    },
                    Err(e) => return Err(e.into()),
                }
            }
            let instance = plan.instance.clone();
            wait_volume(
                ec2,
                region,
                id,
                "attached",
                move |v| attached_to(v, &instance).is_some(),
                waits,
                progress,
            )
            .await?;
            device
        }
    };
    progress(&format!("mounting on {}", remote.host()));
    let host = mount_on_host(
        remote,
        commands,
        id,
        &device,
        &MountTarget {
            root: &plan.mount_root,
            mountpoint: &plan.mountpoint,
        },
        plan.partition,
    )
    .await?;
    Ok((device, host))
}

/// Detaches `volume` from `instance` if attached, waits, deletes. Never
/// fails: says what it could not do.
async fn remove_volume(
    ec2: &dyn Ec2,
    region: &Region,
    volume: &VolumeId,
    instance: &InstanceId,
    waits: Waits,
) -> Rollback {
    let quiet: Progress<'_> = &|_| {};
    let left = |reason: String| Rollback::LeftBehind {
        volume: volume.clone(),
        reason,
    };
    match detach_and_delete(ec2, region, volume, Some(instance), false, waits, quiet).await {
        Ok(_) => Rollback::Deleted {
            volume: volume.clone(),
        },
        Err(e) => left(e.to_string()),
    }
}

/// What the host side of a mount did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostMount {
    /// The block device.
    pub device: String,
    /// What was mounted (the device or a partition).
    pub source: String,
    /// Its filesystem type.
    pub fstype: String,
    /// The options.
    pub options: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// Whether it was mounted already.
    pub already: bool,
}

/// Runs the resolve command: the local block device of `volume`.
pub async fn resolve_device(
    remote: &dyn Remote,
    commands: &MountCommands,
    volume: &VolumeId,
    attach_device: &str,
) -> Result<String, MountError> {
    let (nvme, xen) = local_names(volume, attach_device);
    let script = fill(
        &commands.resolve,
        &[
            ("volume", volume.as_str()),
            ("device", attach_device),
            ("nvme", &nvme),
            ("xen", &xen),
        ],
    );
    let out = remote.run(&Command::shell(script)).await?;
    let device = out.stdout_str().trim().to_owned();
    if !out.status.success() || !device.starts_with('/') || device.contains('\n') {
        return Err(MountError::DeviceNotFound {
            host: remote.host(),
            volume: volume.clone(),
            device: attach_device.to_owned(),
            detail: format!("{}: {}", out.status, out.stderr_str().trim()),
        });
    }
    Ok(device)
}

/// The host's mount table.
pub async fn mount_table(remote: &dyn Remote) -> Result<Vec<MountEntry>, MountError> {
    let text = remote.read_file("/proc/self/mounts").await?;
    Ok(parse_mounts(&String::from_utf8_lossy(&text)))
}

async fn probe(
    remote: &dyn Remote,
    commands: &MountCommands,
    device: &str,
) -> Result<Vec<BlockDev>, MountError> {
    let script = fill(&commands.probe, &[("source", device)]);
    let out = run_checked(remote, &Command::shell(script)).await?;
    Ok(parse_probe(&out.stdout_str()))
}

/// Where a mount goes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountTarget<'a> {
    /// The mount root (made `0700`; never a symlink).
    pub root: &'a str,
    /// The mountpoint, under `root`.
    pub mountpoint: &'a str,
}

/// Makes the mount root (`0700`) and the mountpoint under it, refusing a
/// root that is a symlink, a mountpoint reached through a symlink below the
/// root, and a mountpoint that is not an empty directory.
async fn prepare_mountpoint(
    remote: &dyn Remote,
    target: &MountTarget<'_>,
) -> Result<(), MountError> {
    let script = "r=$1; m=$2; \
        if [ -L \"$r\" ]; then echo \"$r is a symlink\" >&2; exit 3; fi; \
        mkdir -p -- \"$r\" && chmod 0700 -- \"$r\" || exit 1; \
        mkdir -p -- \"$m\" || exit 1; \
        rr=$(readlink -f -- \"$r\") && mm=$(readlink -f -- \"$m\") || exit 1; \
        if [ \"$mm\" != \"$rr${m#\"$r\"}\" ]; then echo \"$m leads through a symlink\" >&2; exit 3; fi; \
        if [ -n \"$(ls -A -- \"$m\")\" ]; then exit 4; fi";
    let out = remote
        .run(&Command::argv([
            "sh",
            "-c",
            script,
            "sh",
            target.root,
            target.mountpoint,
        ]))
        .await?;
    match out.status.clone() {
        ec2kit::ExitStatus::Code(0) => Ok(()),
        ec2kit::ExitStatus::Code(3) => Err(MountError::InvalidMountpoint {
            mountpoint: target.mountpoint.to_owned(),
            reason: out.stderr_str().trim().to_owned(),
        }),
        ec2kit::ExitStatus::Code(4) => Err(MountError::MountpointNotEmpty {
            host: remote.host(),
            mountpoint: target.mountpoint.to_owned(),
        }),
        status => Err(MountError::Remote(RemoteError::Failed {
            host: remote.host(),
            command: format!("prepare mountpoint {}", target.mountpoint),
            status,
            stderr: out.stderr_str().trim().to_owned(),
        })),
    }
}

/// The host side of a mount: resolve the device, choose what to mount,
/// and mount it read-only, `nosuid,nodev,noexec`, at the target's
/// mountpoint unless it is mounted already (the options are checked in the
/// mount table; a mount without them is undone).
pub async fn mount_on_host(
    remote: &dyn Remote,
    commands: &MountCommands,
    volume: &VolumeId,
    attach_device: &str,
    target: &MountTarget<'_>,
    partition: Option<u32>,
) -> Result<HostMount, MountError> {
    check_mountpoint_under(target.mountpoint, target.root)?;
    let mountpoint = target.mountpoint;
    let host = remote.host();
    let device = resolve_device(remote, commands, volume, attach_device).await?;
    let devs = probe(remote, commands, &device).await?;
    let chosen = choose_source(&host, &device, &devs, partition)?;
    let fstype = chosen.fstype.clone().unwrap_or_default();
    let options = mount_options(&fstype);
    let done = |mountpoint: &str, already| HostMount {
        device: device.clone(),
        source: chosen.name.clone(),
        fstype: fstype.clone(),
        options: options.clone(),
        mountpoint: mountpoint.to_owned(),
        already,
    };

    let table = mount_table(remote).await?;
    // Mounted already (a rerun): wherever it is, do not mount it twice.
    if let Some(m) = table.iter().find(|m| m.source == chosen.name) {
        return Ok(done(&m.target, true));
    }
    if let Some(m) = table.iter().find(|m| m.target == mountpoint) {
        return Err(MountError::MountpointBusy {
            host,
            mountpoint: mountpoint.to_owned(),
            mounted: m.source.clone(),
        });
    }
    prepare_mountpoint(remote, target).await?;
    let script = fill(
        &commands.mount,
        &[
            ("source", &chosen.name),
            ("mountpoint", mountpoint),
            ("fstype", &fstype),
            ("options", &options),
        ],
    );
    run_checked(remote, &Command::shell(script)).await?;
    let table = mount_table(remote).await?;
    match table.iter().find(|m| m.target == mountpoint) {
        Some(m) if missing_options(&m.options).is_empty() => Ok(done(mountpoint, false)),
        Some(m) => {
            // Never leave a snapshot mounted read-write, or with setuid
            // binaries and device nodes honoured.
            let undo = fill(&commands.unmount, &[("mountpoint", mountpoint)]);
            let _ = remote.run(&Command::shell(undo)).await;
            Err(MountError::NotMounted {
                host,
                mountpoint: mountpoint.to_owned(),
                detail: format!(
                    "mounted with {}, without {}; unmounted again",
                    m.options,
                    missing_options(&m.options).join(",")
                ),
            })
        }
        None => Err(MountError::NotMounted {
            host,
            mountpoint: mountpoint.to_owned(),
            detail: "the mount command succeeded but nothing is mounted there".into(),
        }),
    }
}

/// The host side of an unmount: unmounts every mount of the volume's
/// device (and its partitions), and `mountpoint` if it still holds one
/// of them. Returns the mountpoints unmounted; nothing mounted is fine.
pub async fn unmount_on_host(
    remote: &dyn Remote,
    commands: &MountCommands,
    volume: &VolumeId,
    attach_device: &str,
) -> Result<Vec<String>, MountError> {
    let host = remote.host();
    // A volume whose device is not on the host cannot be mounted there.
    let device = match resolve_device(remote, commands, volume, attach_device).await {
        Ok(d) => d,
        Err(MountError::DeviceNotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut sources: Vec<String> = probe(remote, commands, &device)
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    sources.push(device);
    let table = mount_table(remote).await?;
    // Innermost first: the table lists mounts in mount order.
    let targets: Vec<String> = table
        .iter()
        .rev()
        .filter(|m| sources.contains(&m.source))
        .map(|m| m.target.clone())
        .collect();
    for target in &targets {
        let script = fill(&commands.unmount, &[("mountpoint", target)]);
        run_checked(remote, &Command::shell(script)).await?;
        // The directory `snap mount` made; only if empty, never an error.
        let _ = remote
            .run(&Command::argv(["rmdir", "--", target.as_str()]))
            .await;
    }
    let table = mount_table(remote).await?;
    if let Some(m) = table.iter().find(|m| sources.contains(&m.source)) {
        return Err(MountError::NotMounted {
            host,
            mountpoint: m.target.clone(),
            detail: format!("{} is still mounted after unmounting", m.source),
        });
    }
    Ok(targets)
}

/// A volume `snap mount` made, as found in EC2.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MountVolume {
    /// The region.
    pub region: Region,
    /// The volume.
    pub volume: VolumeId,
    /// Its state.
    pub state: String,
    /// The snapshot it was made from.
    pub snapshot: Option<String>,
    /// The instance it is attached to (or was meant for).
    pub instance: Option<InstanceId>,
    /// Whether it is attached (or attaching, or detaching).
    pub attached: bool,
    /// Its attach name.
    pub device: Option<String>,
    /// Where it was mounted.
    pub mountpoint: Option<String>,
    /// When it was created.
    pub created: Option<Timestamp>,
}

impl MountVolume {
    /// From a volume; `None` unless `snap mount` made it.
    pub fn from_volume(v: &Volume) -> Option<Self> {
        if !is_mount_volume(v) {
            return None;
        }
        let attachment = v.attachments.first();
        Some(Self {
            region: v.region.clone(),
            volume: v.id.clone(),
            state: v.state.clone(),
            snapshot: v.tags.get(tags::MOUNT_OF).map(str::to_owned),
            instance: attachment.map(|a| a.instance_id.clone()).or_else(|| {
                v.tags
                    .get(tags::MOUNTED_ON)
                    .and_then(|i| InstanceId::parse(i).ok())
            }),
            attached: attachment.is_some_and(|a| a.state.as_deref() != Some("detached")),
            device: attachment.and_then(|a| a.device.clone()),
            mountpoint: v.tags.get(tags::MOUNTPOINT).map(str::to_owned),
            created: v.create_time.or_else(|| {
                v.tags
                    .get(lineage::CREATED)
                    .and_then(|t| t.parse::<Timestamp>().ok())
            }),
        })
    }
}

/// Whether `snap mount` made the volume: owner and mount-of tags, **and**
/// EC2's own record that the volume was made from the snapshot the tag
/// names (a tag alone can be written by anyone with `ec2:CreateTags`, and
/// would otherwise let `snap cleanup` delete any detached volume).
pub fn is_mount_volume(v: &Volume) -> bool {
    v.tags.get(lineage::OWNER) == Some(lineage::OWNER_VALUE)
        && v.tags.get(tags::MOUNT_OF).is_some_and(|s| {
            !s.is_empty() && v.snapshot_id.as_ref().map(|id| id.as_str()) == Some(s)
        })
}

/// Which mount volumes to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The mounts of a snapshot.
    Snapshot(SnapshotId),
    /// One volume (refused unless `snap mount` made it).
    Volume(VolumeId),
    /// Every mount volume.
    All,
}

/// The mount volumes in `region` that `selector` (and `instance`, when
/// given) names; `deleting`/`deleted` ones are left out.
pub async fn find(
    ec2: &dyn Ec2,
    region: &Region,
    selector: &Selector,
    instance: Option<&InstanceId>,
) -> Result<Vec<MountVolume>, MountError> {
    let owner = Filter::new(format!("tag:{}", lineage::OWNER), [lineage::OWNER_VALUE]);
    let volumes = match selector {
        Selector::Volume(id) => {
            let Some(v) = describe_volume(ec2, region, id).await? else {
                return Ok(Vec::new());
            };
            if !is_mount_volume(&v) {
                return Err(MountError::NotOurs { volume: v.id });
            }
            vec![v]
        }
        Selector::Snapshot(s) => {
            ec2.describe_volumes(
                region,
                &[
                    owner,
                    Filter::new(format!("tag:{}", tags::MOUNT_OF), [s.as_str()]),
                ],
            )
            .await?
        }
        Selector::All => {
            ec2.describe_volumes(region, &[owner, Filter::tag_key(tags::MOUNT_OF)])
                .await?
        }
    };
    Ok(volumes
        .iter()
        .filter(|v| !matches!(v.state.as_str(), "deleting" | "deleted"))
        .filter_map(MountVolume::from_volume)
        .filter(|m| instance.is_none() || m.instance.as_ref() == instance)
        .collect())
}

/// One step of an unmount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum UnmountStep {
    /// Unmount on the host (every mount of the volume's device).
    Unmount {
        /// The instance.
        instance: InstanceId,
        /// Where it was mounted.
        #[serde(skip_serializing_if = "Option::is_none")]
        mountpoint: Option<String>,
    },
    /// Detach from the instance and wait until it is.
    Detach {
        /// The instance.
        instance: InstanceId,
    },
    /// Wait for a volume still being created.
    WaitAvailable,
    /// Delete the volume.
    Delete,
}

/// What undoing one mount will do: the `--dry-run` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnmountPlan {
    /// The volume.
    #[serde(flatten)]
    pub volume: MountVolume,
    /// The steps, in order.
    pub steps: Vec<UnmountStep>,
}

impl UnmountPlan {
    /// The instance whose host must unmount, if any.
    pub fn host_instance(&self) -> Option<&InstanceId> {
        self.steps.iter().find_map(|s| match s {
            UnmountStep::Unmount { instance, .. } => Some(instance),
            _ => None,
        })
    }
}

/// The steps that undo a mount, from the volume's state.
pub fn unmount_plan(volume: &MountVolume) -> UnmountPlan {
    let mut steps = Vec::new();
    match (&volume.instance, volume.attached) {
        (Some(i), true) => {
            steps.push(UnmountStep::Unmount {
                instance: i.clone(),
                mountpoint: volume.mountpoint.clone(),
            });
            steps.push(UnmountStep::Detach {
                instance: i.clone(),
            });
        }
        _ if volume.state == "creating" => steps.push(UnmountStep::WaitAvailable),
        _ => {}
    }
    steps.push(UnmountStep::Delete);
    UnmountPlan {
        volume: volume.clone(),
        steps,
    }
}

/// What an unmount did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnmountReport {
    /// The volume.
    pub volume: VolumeId,
    /// Mountpoints unmounted on the host.
    pub unmounted: Vec<String>,
    /// Whether it was detached by this run.
    pub detached: bool,
    /// Whether it was deleted by this run (false: it was gone already).
    pub deleted: bool,
    /// Anything worth knowing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Carries out an unmount plan. `remote` is the host of the instance the
/// volume is attached to; without it (or when it fails) only `force`
/// goes on, detaching without unmounting (`DetachVolume` with `Force`).
pub async fn unmount(
    ec2: &dyn Ec2,
    remote: Option<&dyn Remote>,
    plan: &UnmountPlan,
    commands: &MountCommands,
    force: bool,
    waits: Waits,
    progress: Progress<'_>,
) -> Result<UnmountReport, MountError> {
    commands.validate()?;
    let v = &plan.volume;
    let mut report = UnmountReport {
        volume: v.volume.clone(),
        unmounted: Vec::new(),
        detached: false,
        deleted: false,
        notes: Vec::new(),
    };
    let mut force_detach = false;
    for step in &plan.steps {
        match step {
            UnmountStep::Unmount { instance, .. } => {
                let device = v.device.clone().unwrap_or_default();
                let result = match remote {
                    Some(r) => {
                        progress(&format!("unmounting {} on {}", v.volume, r.host()));
                        unmount_on_host(r, commands, &v.volume, &device).await
                    }
                    None => Err(MountError::NoHost {
                        volume: v.volume.clone(),
                        instance: instance.clone(),
                    }),
                };
                match result {
                    Ok(targets) => report.unmounted = targets,
                    Err(e) if force => {
                        report
                            .notes
                            .push(format!("not unmounted ({e}); detached by force"));
                        force_detach = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            UnmountStep::Detach { instance } => {
                progress(&format!("detaching {} from {instance}", v.volume));
                report.detached = detach(
                    ec2,
                    &v.region,
                    &v.volume,
                    instance,
                    force_detach,
                    waits,
                    progress,
                )
                .await?;
            }
            UnmountStep::WaitAvailable => {
                wait_volume(
                    ec2,
                    &v.region,
                    &v.volume,
                    "available",
                    |x| x.state != "creating",
                    waits,
                    progress,
                )
                .await?;
            }
            UnmountStep::Delete => {
                progress(&format!("deleting {}", v.volume));
                report.deleted = delete(ec2, &v.region, &v.volume).await?;
            }
        }
    }
    Ok(report)
}

/// Detaches and waits until the volume is `available`; `false` if it
/// was not attached (any more).
async fn detach(
    ec2: &dyn Ec2,
    region: &Region,
    volume: &VolumeId,
    instance: &InstanceId,
    force: bool,
    waits: Waits,
    progress: Progress<'_>,
) -> Result<bool, MountError> {
    let detached = match ec2
        .detach_volume_from(region, volume, instance, force, false)
        .await
    {
        Ok(()) => true,
        // Not attached (any more), or gone: nothing to detach.
        Err(e) if e.kind == ErrorKind::NotFound => false,
        Err(e) if e.code() == Some("IncorrectState") => false,
        Err(e) => return Err(e.into()),
    };
    match wait_volume(
        ec2,
        region,
        volume,
        "detached",
        |v| v.state == "available",
        waits,
        progress,
    )
    .await
    {
        Ok(_) | Err(MountError::VolumeGone { .. }) => Ok(detached),
        Err(e) => Err(e),
    }
}

/// Deletes; `false` if it was gone already.
async fn delete(ec2: &dyn Ec2, region: &Region, volume: &VolumeId) -> Result<bool, MountError> {
    match ec2.delete_volume(region, volume, false).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Detaches (if attached to `instance`) and deletes, waiting in between.
async fn detach_and_delete(
    ec2: &dyn Ec2,
    region: &Region,
    volume: &VolumeId,
    instance: Option<&InstanceId>,
    force: bool,
    waits: Waits,
    progress: Progress<'_>,
) -> Result<bool, MountError> {
    let Some(v) = describe_volume(ec2, region, volume).await? else {
        return Ok(false);
    };
    if v.state == "creating" {
        wait_volume(
            ec2,
            region,
            volume,
            "available",
            |x| x.state != "creating",
            waits,
            progress,
        )
        .await?;
    }
    let attached = v
        .attachments
        .iter()
        .find(|a| instance.is_none_or(|i| &a.instance_id == i));
    if let Some(a) = attached {
        detach(ec2, region, volume, &a.instance_id, force, waits, progress).await?;
    }
    delete(ec2, region, volume).await
}

/// The mount volumes in `volumes` created before `cutoff` (or with no
/// known creation time: they are certainly not from a run in progress
/// that just began).
pub fn older_than(volumes: Vec<MountVolume>, cutoff: Timestamp) -> Vec<MountVolume> {
    volumes
        .into_iter()
        .filter(|v| v.created.is_none_or(|c| c < cutoff))
        .collect()
}

#[cfg(test)]
mod tests;
