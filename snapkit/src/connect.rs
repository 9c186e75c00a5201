//! Reaching the hosts a job finds: which address of an instance to use,
//! and the caller's transport.
//!
//! A backup holding a freeze, or a sweep unmounting volumes, finds its
//! hosts in EC2 as it goes. snapkit does not open connections itself (it
//! never depends on ssh2): the caller passes a [`Connect`] that turns an
//! address into a [`Remote`], e.g. an `ec2kit::SshRemote` with the team's
//! SSH options.

use std::sync::Arc;

use ec2kit::{BoxError, Remote};

/// Turns an address (`host`, `user@host:port`) into a [`Remote`] for it.
/// Called once per host a job reaches, before its first command; an `Err`
/// fails that host's items, not the job.
pub type Connect = Arc<dyn Fn(&str) -> Result<Arc<dyn Remote>, BoxError> + Send + Sync>;

/// Which address of an instance a job reaches it at: ec2kit's, re-exported
/// so a caller of snapkit alone names it from here.
pub use ec2kit::Address;

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
