//! Reaching the hosts a job finds: which address of an instance to use,
//! and the caller's transport.
//!
//! A backup holding a freeze, or a sweep unmounting volumes, finds its
//! hosts in EC2 as it goes. snapkit does not open connections itself (it
//! never depends on ssh2): the caller passes a [`Connect`] that turns an
//! address into a [`Remote`], e.g. an `ec2kit::SshRemote` with the team's
//! SSH options.

use std::sync::Arc;

use ec2kit::{BoxError, Instance, Remote};
use serde::{Deserialize, Serialize};

/// Turns an address (`host`, `user@host:port`) into a [`Remote`] for it.
/// Called once per host a job reaches, before its first command; an `Err`
/// fails that host's items, not the job.
pub type Connect = Arc<dyn Fn(&str) -> Result<Arc<dyn Remote>, BoxError> + Send + Sync>;

/// Which address of an instance a job reaches it at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Address {
    /// The private IPv4 address (the same VPC, a VPN, a bastion).
    #[default]
    PrivateIp,
    /// The public IPv4 address.
    PublicIp,
    /// The public DNS name.
    PublicDns,
}

impl Address {
    /// This address of `instance`, if it has one.
    // The one place an address is chosen: `ec2kit::Address` and
    // `Instance::address` replace it once ec2kit has them.
    pub fn of(self, instance: &Instance) -> Option<&str> {
        match self {
            Self::PrivateIp => instance.private_ip.as_deref(),
            Self::PublicIp => instance.public_ip.as_deref(),
            Self::PublicDns => instance.public_dns.as_deref(),
        }
    }

    /// The name used in messages and the config (`private_ip`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrivateIp => "private_ip",
            Self::PublicIp => "public_ip",
            Self::PublicDns => "public_dns",
        }
    }
}

impl std::str::FromStr for Address {
    type Err = String;

    /// `private_ip`, `public_ip` or `public_dns`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::PrivateIp, Self::PublicIp, Self::PublicDns]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown address {s:?}: private_ip, public_ip or public_dns"))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a host could not be reached through the caller's [`Connect`].
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {host}: {source}")]
pub struct ConnectError {
    /// The address given to [`Connect`].
    pub host: String,
    /// What the caller's transport said.
    #[source]
    pub source: BoxError,
}

/// Calls `connect` for `host`, naming the host in the error.
pub(crate) fn reach(connect: &Connect, host: &str) -> Result<Arc<dyn Remote>, ConnectError> {
    connect(host).map_err(|source| ConnectError {
        host: host.to_owned(),
        source,
    })
}
