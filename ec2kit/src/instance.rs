//! EC2 instances, and which of an instance's addresses to reach it at.

use std::fmt;

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
    /// Private DNS name (`ip-10-0-0-1.ec2.internal`; resolvable inside the
    /// VPC).
    #[serde(default)]
    pub private_dns: Option<String>,
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
    /// A running instance known only by its id and region, the rest empty
    /// (for simulations and tests: `Instance { tags, ..Instance::new(id, region) }`).
    pub fn new(id: InstanceId, region: Region) -> Self {
        Self {
            id,
            region,
            availability_zone: None,
            state: "running".into(),
            instance_type: None,
            architecture: None,
            root_device_name: None,
            virtualization_type: None,
            ena_support: None,
            image_id: None,
            key_name: None,
            private_ip: None,
            public_ip: None,
            public_dns: None,
            private_dns: None,
            launch_time: None,
            reservation_id: None,
            block_devices: Vec::new(),
            tags: Tags::new(),
        }
    }

    /// The `Name` tag, if any.
    pub fn name(&self) -> Option<&str> {
        self.tags.get("Name")
    }

    /// The instance's `which` address, when it has one (a stopped instance
    /// has no public IP; an instance outside a public subnet no public
    /// DNS name).
    pub fn address(&self, which: Address) -> Option<&str> {
        let value = match which {
            Address::PrivateIp => &self.private_ip,
            Address::PublicIp => &self.public_ip,
            Address::PublicDns => &self.public_dns,
            Address::PrivateDns => &self.private_dns,
        };
        // EC2 reports "no name" as an empty string.
        value.as_deref().filter(|a| !a.is_empty())
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

/// Which address of an instance to reach it at (SSH for consistent
/// backups, mounts and hosts found by tag). Written in config files as
/// `private_ip` (the default: from inside the VPC), `public_ip`,
/// `public_dns` or `private_dns`; any other word is refused where the
/// file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Address {
    /// The primary private IPv4 address.
    #[default]
    PrivateIp,
    /// The public IPv4 address.
    PublicIp,
    /// The public DNS name.
    PublicDns,
    /// The private DNS name.
    PrivateDns,
}

impl Address {
    /// The word config files use for it (`private_ip`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrivateIp => "private_ip",
            Self::PublicIp => "public_ip",
            Self::PublicDns => "public_dns",
            Self::PrivateDns => "private_dns",
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_are_read_from_their_field_and_empty_is_none() {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "id": "i-1", "region": "r", "availability_zone": null, "state": "running",
            "instance_type": null, "architecture": null, "root_device_name": null,
            "virtualization_type": null, "ena_support": null, "image_id": null,
            "key_name": null, "private_ip": "10.0.0.1", "public_ip": null,
            "public_dns": "", "launch_time": null, "reservation_id": null,
            "block_devices": [], "tags": {}
        }))
        .unwrap();
        assert_eq!(i.address(Address::default()), Some("10.0.0.1"));
        assert_eq!(i.address(Address::PublicIp), None);
        assert_eq!(i.address(Address::PublicDns), None, "empty is none");
        assert_eq!(i.address(Address::PrivateDns), None, "older JSON has none");
        i.private_dns = Some("ip-10-0-0-1.ec2.internal".into());
        assert_eq!(
            i.address(Address::PrivateDns),
            Some("ip-10-0-0-1.ec2.internal")
        );
    }

    #[test]
    fn address_words_are_the_config_words() {
        for a in [
            Address::PrivateIp,
            Address::PublicIp,
            Address::PublicDns,
            Address::PrivateDns,
        ] {
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), a);
        }
        assert!(serde_json::from_str::<Address>("\"public-ip\"").is_err());
    }
}
