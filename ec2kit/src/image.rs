//! AMIs.

use serde::{Deserialize, Serialize};

use crate::{ImageId, Region, SnapshotId, Tags};

/// An AMI (only the account's own are listed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// AMI id.
    pub id: ImageId,
    /// Region.
    pub region: Region,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `pending`, `available`, `failed`, ...
    pub state: String,
    /// Architecture.
    pub architecture: Option<String>,
    /// Root device name.
    pub root_device_name: Option<String>,
    /// `hvm` or `paravirtual`.
    pub virtualization_type: Option<String>,
    /// ENA support.
    pub ena_support: Option<bool>,
    /// Creation date as EC2 reports it.
    pub creation_date: Option<String>,
    /// Owning account.
    pub owner_id: Option<String>,
    /// Block devices (EBS ones carry the backing snapshot).
    pub block_devices: Vec<ImageBlockDevice>,
    /// Tags.
    pub tags: Tags,
}

impl Image {
    /// The snapshots backing this image.
    pub fn snapshot_ids(&self) -> impl Iterator<Item = &SnapshotId> {
        self.block_devices
            .iter()
            .filter_map(|b| b.snapshot_id.as_ref())
    }
}

/// The AMI one launch template version launches (`ImageId` of its data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTemplateImage {
    /// The template's id.
    pub template_id: String,
    /// The template's name.
    pub template_name: Option<String>,
    /// The version number.
    pub version: i64,
    /// The image as the version names it (an AMI id, or a
    /// `resolve:ssm:` parameter).
    pub image: String,
}

/// One block device of an AMI, or of an AMI to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBlockDevice {
    /// Device name, e.g. `/dev/xvda`.
    pub device_name: String,
    /// The EBS snapshot, for EBS devices.
    pub snapshot_id: Option<SnapshotId>,
    /// Volume size in GiB.
    pub volume_size_gib: Option<i32>,
    /// Volume type.
    pub volume_type: Option<String>,
    /// Whether the volume is deleted with the instance.
    pub delete_on_termination: Option<bool>,
}
