//! The reverse path: finding mount volumes, the steps that undo one, and
//! carrying them out (unmount on the host, detach, delete), each step
//! idempotent.

use ec2kit::{Ec2, Filter, InstanceId, Region, Remote, SnapshotId, Volume, VolumeId};
use jiff::Timestamp;
use serde::Serialize;

use super::host::unmount_on_host;
use super::volume::describe_volume;
use super::{MountError, MountEvent, Mounter, tags};
use crate::lineage::tags as lineage;

/// A volume a mount made, as found in EC2.
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
    /// From a volume; `None` unless a mount made it ([`MountVolume`]s are
    /// only ever made from volumes that pass this check).
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

/// Whether a mount made the volume: owner and mount-of tags, **and**
/// EC2's own record that the volume was made from the snapshot the tag
/// names (a tag alone can be written by anyone with `ec2:CreateTags`, and
/// would otherwise let a sweep delete any detached volume).
pub(crate) fn is_mount_volume(v: &Volume) -> bool {
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
    /// One volume (refused unless a mount made it).
    Volume(VolumeId),
    /// Every mount volume.
    All,
}

/// The mount volumes in `region` that `selector` (and `instance`, when
/// given) names; `deleting`/`deleted` ones are left out.
pub(crate) async fn find(
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

/// What undoing one mount will do (a dry run shows it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnmountPlan {
    /// The volume.
    #[serde(flatten)]
    pub volume: MountVolume,
    /// The steps, in order.
    pub steps: Vec<UnmountStep>,
}

impl UnmountPlan {
    /// The steps that undo the mount of `volume`, from its state.
    pub fn of(volume: &MountVolume) -> Self {
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
        Self {
            volume: volume.clone(),
            steps,
        }
    }

    /// The instance whose host must unmount, if any.
    pub fn host_instance(&self) -> Option<&InstanceId> {
        self.steps.iter().find_map(|s| match s {
            UnmountStep::Unmount { instance, .. } => Some(instance),
            _ => None,
        })
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

impl Mounter<'_> {
    /// The mount volumes in `region` that `selector` (and `instance`, when
    /// given) names; `deleting`/`deleted` ones are left out.
    pub async fn find(
        &self,
        region: &Region,
        selector: &Selector,
        instance: Option<&InstanceId>,
    ) -> Result<Vec<MountVolume>, MountError> {
        find(self.ec2, region, selector, instance).await
    }

    /// Carries out one volume's unmount plan. `remote` is the host of the
    /// instance the volume is attached to; without it (or when it fails)
    /// only `force` goes on, detaching without unmounting (`DetachVolume`
    /// with `Force`).
    pub async fn unmount_volume(
        &self,
        remote: Option<&dyn Remote>,
        plan: &UnmountPlan,
        force: bool,
    ) -> Result<UnmountReport, MountError> {
        let host = remote.ok_or_else(|| no_host(plan));
        self.undo(host, plan, force).await
    }

    /// [`Mounter::unmount_volume`], with the host already reached (or
    /// why it could not be).
    pub(crate) async fn undo(
        &self,
        remote: Result<&dyn Remote, MountError>,
        plan: &UnmountPlan,
        force: bool,
    ) -> Result<UnmountReport, MountError> {
        let commands = &self.commands;
        commands.validate()?;
        let (host, mut unreachable) = match remote {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
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
                UnmountStep::Unmount { .. } => {
                    let device = v.device.clone().unwrap_or_default();
                    let result = match host {
                        Some(r) => {
                            self.emit(MountEvent::Unmounting {
                                volume: v.volume.clone(),
                                host: r.host(),
                            });
                            unmount_on_host(r, commands, &v.volume, &device).await
                        }
                        None => Err(unreachable.take().unwrap_or_else(|| no_host(plan))),
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
                    self.emit(MountEvent::Detaching {
                        volume: v.volume.clone(),
                        instance: instance.clone(),
                    });
                    report.detached = self
                        .detach(&v.region, &v.volume, instance, force_detach)
                        .await?;
                }
                UnmountStep::WaitAvailable => {
                    self.wait_volume(&v.region, &v.volume, "available", |x| x.state != "creating")
                        .await?;
                }
                UnmountStep::Delete => {
                    self.emit(MountEvent::Deleting {
                        volume: v.volume.clone(),
                    });
                    report.deleted = self.delete(&v.region, &v.volume).await?;
                }
            }
        }
        Ok(report)
    }
}

/// The error of an unmount that needs a host and has none.
pub(crate) fn no_host(plan: &UnmountPlan) -> MountError {
    let instance = plan
        .host_instance()
        .or(plan.volume.instance.as_ref())
        .cloned()
        .unwrap_or_else(|| InstanceId::from_api("-"));
    MountError::NoHost {
        volume: plan.volume.volume.clone(),
        instance,
    }
}

/// The mount volumes in `volumes` created before `cutoff` (or with no
/// known creation time: they are certainly not from a run in progress
/// that just began).
pub(crate) fn created_before(volumes: Vec<MountVolume>, cutoff: Timestamp) -> Vec<MountVolume> {
    volumes
        .into_iter()
        .filter(|v| v.created.is_none_or(|c| c < cutoff))
        .collect()
}
