//! Request values for the mutating calls of [`Ec2`](crate::Ec2).
//!
//! Plain structs with public fields and `Default`, so a call site names only
//! what it sets. Every one carries `dry_run`: EC2 then checks permissions
//! and parameters and answers [`ErrorKind::DryRunOk`](crate::ErrorKind::DryRunOk)
//! instead of acting.

use serde::{Deserialize, Serialize};

use crate::{ImageBlockDevice, ImageId, InstanceId, Region, SnapshotId, Tags, VolumeId};

/// `CreateSnapshot`: one volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    /// The volume.
    pub volume_id: Option<VolumeId>,
    /// Description.
    pub description: Option<String>,
    /// Tags applied at creation (`TagSpecifications`).
    pub tags: Tags,
    /// Check only.
    pub dry_run: bool,
}

/// `CreateSnapshots`: every (selected) volume of an instance at one point in time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSnapshots {
    /// The instance.
    pub instance_id: Option<InstanceId>,
    /// Leave the root volume out.
    pub exclude_boot_volume: bool,
    /// Data volumes to leave out (at most 40).
    pub exclude_data_volume_ids: Vec<VolumeId>,
    /// Description of every snapshot of the set.
    pub description: Option<String>,
    /// Tags applied at creation to every snapshot of the set.
    pub tags: Tags,
    /// Also copy each volume's own tags (`CopyTagsFromSource=volume`).
    pub copy_tags_from_volume: bool,
    /// Check only.
    pub dry_run: bool,
}

/// `CopySnapshot`, sent to the destination region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopySnapshot {
    /// Region of the source snapshot.
    pub source_region: Option<Region>,
    /// The source snapshot.
    pub source_snapshot_id: Option<SnapshotId>,
    /// Description of the copy.
    pub description: Option<String>,
    /// Encrypt the copy.
    pub encrypted: bool,
    /// KMS key for the copy.
    pub kms_key_id: Option<String>,
    /// Tags applied at creation.
    pub tags: Tags,
    /// Check only.
    pub dry_run: bool,
}

/// `RegisterImage` from snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterImage {
    /// AMI name (unique per region and account).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// `x86_64`, `arm64`, ...
    pub architecture: Option<String>,
    /// Root device name.
    pub root_device_name: Option<String>,
    /// `hvm` or `paravirtual`.
    pub virtualization_type: Option<String>,
    /// ENA support.
    pub ena_support: Option<bool>,
    /// Block devices.
    pub block_devices: Vec<ImageBlockDevice>,
    /// Tags applied at creation.
    pub tags: Tags,
    /// Check only.
    pub dry_run: bool,
}

/// `CreateImage`: an AMI of an instance's volumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateImage {
    /// The instance.
    pub instance_id: Option<InstanceId>,
    /// AMI name (unique per region and account).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Do not stop the instance first (the file systems are then only
    /// crash-consistent).
    pub no_reboot: bool,
    /// Tags applied at creation to the AMI.
    pub tags: Tags,
    /// Tags applied at creation to the AMI's snapshots (none: no snapshot
    /// `TagSpecification` is sent).
    pub snapshot_tags: Tags,
    /// Check only.
    pub dry_run: bool,
}

/// `RestoreSnapshotTier`: how long an archived snapshot comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "restore")]
pub enum TierRestore {
    /// A temporary restore: the snapshot stays in the archive tier and is
    /// usable for this many days (1 to 180).
    Temporary {
        /// Days.
        days: u16,
    },
    /// A permanent restore: the snapshot moves back to the standard tier.
    Permanent,
}

/// `CopyImage`, sent to the destination region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyImage {
    /// Region of the source AMI.
    pub source_region: Option<Region>,
    /// The source AMI.
    pub source_image_id: Option<ImageId>,
    /// Name of the copy.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Encrypt the copy's snapshots.
    pub encrypted: bool,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// Idempotency token.
    pub client_token: Option<String>,
    /// Tags applied at creation (to the AMI and its snapshots).
    pub tags: Tags,
    /// Check only.
    pub dry_run: bool,
}

/// `CreateVolume`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateVolume {
    /// Availability zone.
    pub availability_zone: String,
    /// Create from this snapshot.
    pub snapshot_id: Option<SnapshotId>,
    /// Size in GiB (required without a snapshot).
    pub size_gib: Option<i32>,
    /// Volume type.
    pub volume_type: Option<String>,
    /// Encrypt.
    pub encrypted: bool,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// Idempotency token.
    pub client_token: Option<String>,
    /// Tags applied at creation.
    pub tags: Tags,
    /// Check only.
    pub dry_run: bool,
}

/// `RunInstances` (one or more of the same).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInstances {
    /// AMI.
    pub image_id: Option<ImageId>,
    /// Instance type.
    pub instance_type: String,
    /// How many.
    pub count: i32,
    /// Key pair name.
    pub key_name: Option<String>,
    /// Security group ids.
    pub security_group_ids: Vec<String>,
    /// Subnet.
    pub subnet_id: Option<String>,
    /// The primary private IPv4 address (one instance only; inside the
    /// subnet's range).
    pub private_ip: Option<std::net::Ipv4Addr>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// User data (raw; encoded by the adapter).
    pub user_data: Option<Vec<u8>>,
    /// Idempotency token.
    pub client_token: Option<String>,
    /// Tags applied at creation to the instances and their volumes.
    pub tags: Tags,
    /// Check only.
    pub dry_run: bool,
}
