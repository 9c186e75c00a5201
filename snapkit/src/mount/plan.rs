//! The forward path's decisions: which zone, device and mountpoint a
//! mount uses, and the `CreateVolume` it sends. Only reads.

use ec2kit::requests::CreateVolume;
use ec2kit::{
    Ec2Error, Filter, Instance, InstanceId, Region, SnapshotId, SnapshotState, Tags, Volume,
};
use jiff::Timestamp;
use serde::Serialize;

use super::device::free_devices;
use super::volume::attached_to;
use super::{DEFAULT_ROOT, MountError, Mounter, tags};
use crate::connect::Address;
use crate::lineage::tags as lineage;

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

impl MountRequest {
    /// `snapshot` on `instance`, at `<DEFAULT_ROOT>/<snapshot>`, the
    /// filesystem chosen from what the volume holds.
    pub fn new(snapshot: SnapshotId, instance: InstanceId) -> Self {
        Self {
            snapshot,
            instance,
            mountpoint: None,
            root: DEFAULT_ROOT.to_owned(),
            partition: None,
        }
    }
}

/// What [`Mounter::mount`] will do: a dry run shows it.
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
    /// Its public IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// Its public DNS name.
    pub public_dns: Option<String>,
    /// Its private DNS name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_dns: Option<String>,
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

impl MountPlan {
    /// The instance's `address`, if it has one: where its host is.
    pub fn address(&self, address: Address) -> Option<&str> {
        match address {
            Address::PrivateIp => self.private_ip.as_deref(),
            Address::PublicIp => self.public_ip.as_deref(),
            Address::PublicDns => self.public_dns.as_deref(),
            Address::PrivateDns => self.private_dns.as_deref(),
        }
    }
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

impl Mounter<'_> {
    /// Looks at the snapshot, the instance and its volumes, and decides
    /// the volume's zone, the device and the mountpoint. Only reads.
    pub async fn plan(
        &self,
        region: &Region,
        request: &MountRequest,
    ) -> Result<MountPlan, MountError> {
        plan(self.ec2, region, request).await
    }

    /// Asks EC2 whether the plan's `CreateVolume` would be allowed and
    /// valid (a `DryRun` call: nothing is created). `Ok` means it would.
    pub async fn check(&self, plan: &MountPlan) -> Result<(), Ec2Error> {
        let request = create_request(plan, &self.extra_tags, self.now(), true);
        match self.ec2.create_volume(&plan.region, &request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_dry_run_ok() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn plan(
    ec2: &dyn ec2kit::Ec2,
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
    let (instance, zone) = running_instance(ec2, region, &request.instance).await?;

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
        public_ip: instance.public_ip,
        public_dns: instance.public_dns,
        private_dns: instance.private_dns,
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
pub(crate) fn create_request(
    plan: &MountPlan,
    extra: &Tags,
    now: Timestamp,
    dry_run: bool,
) -> CreateVolume {
    let mut tags = Tags::new();
    for (k, v) in extra.iter() {
        tags.insert(k, v);
    }
    let tags = tags
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

/// The instance volumes are attached to: it must exist and be running;
/// with the zone its volumes must be made in.
pub(crate) async fn running_instance(
    ec2: &dyn ec2kit::Ec2,
    region: &Region,
    id: &InstanceId,
) -> Result<(Instance, String), MountError> {
    let instance: Instance = ec2
        .describe_instances(region, &[Filter::new("instance-id", [id.as_str()])])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| MountError::InstanceNotFound {
            instance: id.clone(),
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
    Ok((instance, zone))
}
