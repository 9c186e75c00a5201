//! EBS volumes.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{InstanceId, Region, SnapshotId, Tags, VolumeId};

/// An EBS volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume id.
    pub id: VolumeId,
    /// Region.
    pub region: Region,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// `creating`, `available`, `in-use`, `deleting`, `deleted`, `error`.
    pub state: String,
    /// Size in GiB.
    pub size_gib: Option<i32>,
    /// `gp3`, `io2`, `st1`, ...
    pub volume_type: Option<String>,
    /// Whether the volume is encrypted.
    pub encrypted: bool,
    /// KMS key of an encrypted volume.
    pub kms_key_id: Option<String>,
    /// The snapshot the volume was created from.
    pub snapshot_id: Option<SnapshotId>,
    /// Creation time.
    pub create_time: Option<Timestamp>,
    /// Attachments (at most one, except for multi-attach io volumes).
    pub attachments: Vec<VolumeAttachment>,
    /// Tags.
    pub tags: Tags,
}

/// Where a volume is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttachment {
    /// The instance.
    pub instance_id: InstanceId,
    /// The device name on the instance.
    pub device: Option<String>,
    /// `attaching`, `attached`, `detaching`, `detached`.
    pub state: Option<String>,
}
