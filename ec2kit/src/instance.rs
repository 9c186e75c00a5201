//! EC2 instances.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{InstanceId, Region, Tags, VolumeId};

/// An EC2 instance, as far as the toolkit cares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id.
    pub id: InstanceId,
    /// Region it runs in.
    pub region: Region,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    /// Instance type, e.g. `t3.micro`.
    pub instance_type: Option<String>,
    /// `x86_64`, `arm64`, `i386`.
    pub architecture: Option<String>,
    /// Root device name, e.g. `/dev/xvda`.
    pub root_device_name: Option<String>,
    /// `hvm` or `paravirtual`.
    pub virtualization_type: Option<String>,
    /// Whether ENA networking is enabled.
    pub ena_support: Option<bool>,
    /// The AMI it was launched from.
    pub image_id: Option<String>,
    /// Key pair name.
    pub key_name: Option<String>,
    /// Private IPv4 address.
    pub private_ip: Option<String>,
    /// Public IPv4 address.
    pub public_ip: Option<String>,
    /// Public DNS name.
    pub public_dns: Option<String>,
    /// Launch time.
    pub launch_time: Option<Timestamp>,
    /// Reservation the instance was launched in.
    pub reservation_id: Option<String>,
    /// Attached EBS volumes.
    pub block_devices: Vec<BlockDevice>,
    /// Tags.
    pub tags: Tags,
}

impl Instance {
    /// The `Name` tag, if any.
    pub fn name(&self) -> Option<&str> {
        self.tags.get("Name")
    }

    /// The attached volume on the root device, if any.
    pub fn root_volume(&self) -> Option<&VolumeId> {
        let root = self.root_device_name.as_deref()?;
        self.block_devices
            .iter()
            .find(|b| b.device_name == root)
            .map(|b| &b.volume_id)
    }
}

/// An EBS volume attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Device name, e.g. `/dev/sdf`.
    pub device_name: String,
    /// The attached volume.
    pub volume_id: VolumeId,
    /// Whether the volume goes with the instance.
    pub delete_on_termination: Option<bool>,
}
