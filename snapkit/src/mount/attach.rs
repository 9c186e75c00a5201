//! The forward path: carrying out a [`MountPlan`] — create (or pick up)
//! the volume, attach it, mount it on the host — and rolling back a
//! failure.

use ec2kit::{InstanceId, Region, Remote, SnapshotId, Volume, VolumeId};
use serde::Serialize;

use super::host::{HostMount, MountTarget, mount_on_host};
use super::plan::create_request;
use super::volume::{attached_to, is_device_taken};
use super::{MountError, MountEvent, MountPlan, Mounter, check_mountpoint_under};

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

impl Mounter<'_> {
    /// Carries out a plan: create (or pick up) the volume, attach, mount
    /// read-only on `remote` (the instance's host). On failure the volume is
    /// detached and deleted again ([`MountError::Aborted`] says whether that
    /// worked).
    pub async fn mount(
        &self,
        remote: &dyn Remote,
        plan: &MountPlan,
    ) -> Result<Mounted, MountError> {
        self.commands.validate()?;
        check_mountpoint_under(&plan.mountpoint, &plan.mount_root)?;
        let region = &plan.region;
        let (volume, resumed) = match &plan.resume {
            Some(v) => (v.clone(), true),
            None => {
                self.emit(MountEvent::Creating {
                    snapshot: plan.snapshot.clone(),
                    availability_zone: plan.availability_zone.clone(),
                });
                let request = create_request(plan, &self.extra_tags, self.now(), false);
                (self.ec2.create_volume(region, &request).await?, false)
            }
        };
        // A volume an earlier run left attached may be in use: a failure now
        // is reported, not rolled back (`snap unmount` removes it).
        let roll_back = attached_to(&volume, &plan.instance).is_none();
        match self.attach_and_mount(remote, plan, &volume).await {
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
                self.emit(MountEvent::RollingBack {
                    volume: volume.id.clone(),
                });
                let rollback = self.remove_volume(region, &volume.id, &plan.instance).await;
                Err(MountError::Aborted {
                    cause: Box::new(cause),
                    rollback,
                })
            }
        }
    }

    async fn attach_and_mount(
        &self,
        remote: &dyn Remote,
        plan: &MountPlan,
        volume: &Volume,
    ) -> Result<(String, HostMount), MountError> {
        let region = &plan.region;
        let id = &volume.id;
        let device = match attached_to(volume, &plan.instance) {
            Some(d) => d,
            None => {
                self.wait_volume(region, id, "available", |v| v.state == "available")
                    .await?;
                let mut candidates = std::iter::once(plan.device.clone())
                    .chain(plan.spare_devices.iter().cloned())
                    .take(4);
                let mut device = candidates.next().unwrap_or_default();
                loop {
                    self.emit(MountEvent::Attaching {
                        volume: id.clone(),
                        instance: plan.instance.clone(),
                        device: device.clone(),
                    });
                    match self
                        .ec2
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
                self.wait_volume(region, id, "attached", move |v| {
                    attached_to(v, &instance).is_some()
                })
                .await?;
                device
            }
        };
        self.emit(MountEvent::Mounting {
            volume: id.clone(),
            host: remote.host(),
        });
        let host = mount_on_host(
            remote,
            &self.commands,
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
}
