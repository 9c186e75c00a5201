//! What the host reports and what ektool chooses from it: device names,
//! the probe's and the mount table's listings, the filesystem to mount and
//! its options. Pure functions, tested without a host.

use ec2kit::VolumeId;
use serde::Serialize;

use super::MountError;

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

/// The names a volume attached as `device` may have on the instance:
/// `(nvme by-id link, xen name)`.
pub(crate) fn local_names(volume: &VolumeId, device: &str) -> (String, String) {
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
pub(crate) fn mount_options(fstype: &str) -> String {
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
pub(crate) fn missing_options(options: &str) -> Vec<&'static str> {
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
pub(crate) fn parse_mounts(text: &str) -> Vec<MountEntry> {
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
pub(crate) struct BlockDev {
    /// Path, e.g. `/dev/nvme1n1p1`.
    pub(crate) name: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Filesystem type, if any.
    pub(crate) fstype: Option<String>,
}

/// Parses the probe's `NAME SIZE [FSTYPE]` lines.
pub(crate) fn parse_probe(text: &str) -> Vec<BlockDev> {
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
pub(crate) fn choose_source(
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
pub(crate) fn free_devices<'a>(used: impl IntoIterator<Item = &'a str>) -> Vec<&'static str> {
    let taken: Vec<char> = used.into_iter().filter_map(letter).collect();
    DEVICES
        .iter()
        .copied()
        .filter(|d| letter(d).is_some_and(|l| !taken.contains(&l)))
        .collect()
}
