//! The host side: the command templates, and mounting and unmounting over
//! [`Remote`] (resolve the device, probe it, choose what to mount, mount
//! read-only and check the mount table).

use ec2kit::remote::{quote, run_checked};
use ec2kit::{Command, Remote, RemoteError, VolumeId};
use serde::{Deserialize, Serialize};

use super::device::{
    BlockDev, MountEntry, choose_source, local_names, missing_options, mount_options, parse_mounts,
    parse_probe,
};
use super::{MountError, check_mountpoint_under};

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
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut s = template.to_owned();
    for (name, value) in values {
        s = s.replace(&format!("{{{name}}}"), &quote(value));
    }
    s
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
pub(crate) async fn resolve_device(
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
