//! The `TargetGroups` seam: the Elastic Load Balancing (v2) calls a
//! deploy needs to take hosts out of an ALB/NLB target group and put them
//! back, in domain types.
//!
//! A target group is named by its ARN, which holds its region
//! (`arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>`):
//! every call finds its region there ([`region_of`]).
//!
//! Implementations: [`AwsEc2`](crate::AwsEc2) (feature `aws`, on
//! aws-sdk-elasticloadbalancingv2, paced, retried and recorded like its
//! EC2 calls), and `MockTargetGroups` (feature `mock`) for tests of logic.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Action, Ec2Error, ErrorKind, Region};

/// What ELB waits for in-flight requests of a deregistered target when the
/// target group says nothing (its `deregistration_delay.timeout_seconds`
/// default).
pub const DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(300);

/// One target of a target group: an instance id or an IP address (or a
/// Lambda function's or an ALB's ARN), and the port it receives traffic on
/// (`None`: the target group's port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// `i-…`, an IP address, or an ARN.
    pub id: String,
    /// The port, when it is not the target group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Target {
    /// A target on the target group's port.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            port: None,
        }
    }

    /// The same target on `port`.
    #[must_use]
    pub fn on_port(mut self, port: Option<u16>) -> Self {
        self.port = port;
        self
    }
}

impl fmt::Display for Target {
    /// `id` or `id:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// How a target group names its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TargetType {
    /// By EC2 instance id.
    Instance,
    /// By IP address.
    Ip,
    /// A Lambda function.
    Lambda,
    /// An Application Load Balancer (behind an NLB).
    Alb,
    /// Anything else.
    Other,
}

impl TargetType {
    /// Parses the API's name (`instance`, `ip`, `lambda`, `alb`).
    pub fn from_api(name: &str) -> Self {
        match name {
            "instance" => Self::Instance,
            "ip" => Self::Ip,
            "lambda" => Self::Lambda,
            "alb" => Self::Alb,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Instance => "instance",
            Self::Ip => "ip",
            Self::Lambda => "lambda",
            Self::Alb => "alb",
            Self::Other => "other",
        })
    }
}

/// A target's health in its target group (the API's `TargetHealth.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TargetState {
    /// Registered, the first health checks still running.
    Initial,
    /// Receiving traffic.
    Healthy,
    /// Failing its health checks.
    Unhealthy,
    /// Failing its health checks and being deregistered.
    UnhealthyDraining,
    /// Not used: its group has no load balancer, or it is in an
    /// Availability Zone the load balancer does not serve.
    Unused,
    /// Being deregistered: in-flight requests finish
    /// (`deregistration_delay`).
    Draining,
    /// Health checks are off for the group.
    Unavailable,
    /// Not registered (any more): what a deregistered target becomes.
    NotRegistered,
    /// A state this version does not know.
    Other,
}

impl TargetState {
    /// Parses the API's name (`initial`, `healthy`, `draining`, …).
    pub fn from_api(name: &str) -> Self {
        match name {
            "initial" => Self::Initial,
            "healthy" => Self::Healthy,
            "unhealthy" => Self::Unhealthy,
            "unhealthy.draining" => Self::UnhealthyDraining,
            "unused" => Self::Unused,
            "draining" => Self::Draining,
            "unavailable" => Self::Unavailable,
            _ => Self::Other,
        }
    }

    /// Whether the target still takes (or finishes) traffic: it is not yet
    /// out of the group.
    pub fn is_draining(self) -> bool {
        matches!(self, Self::Draining | Self::UnhealthyDraining)
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initial => "initial",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::UnhealthyDraining => "unhealthy.draining",
            Self::Unused => "unused",
            Self::Draining => "draining",
            Self::Unavailable => "unavailable",
            Self::NotRegistered => "not registered",
            Self::Other => "other",
        })
    }
}

/// One target and its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetHealth {
    /// The target (its port as the API reports it).
    pub target: Target,
    /// Its state.
    pub state: TargetState,
    /// The API's reason code (`Target.NotRegistered`,
    /// `Target.DeregistrationInProgress`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A target group, as a deploy needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroup {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// How it names targets.
    pub target_type: TargetType,
    /// The port targets receive traffic on by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How long a deregistered target drains
    /// (`deregistration_delay.timeout_seconds`; default
    /// [`DEFAULT_DEREGISTRATION_DELAY`]).
    #[serde(with = "seconds")]
    pub deregistration_delay: Duration,
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// The region of a target group's ARN
/// (`arn:<partition>:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>`).
pub fn region_of(arn: &str) -> Result<Region, InvalidArn> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        [
            "arn",
            partition,
            "elasticloadbalancing",
            region,
            account,
            resource,
        ] if !partition.is_empty()
            && !region.is_empty()
            && !account.is_empty()
            && resource.starts_with("targetgroup/") =>
        {
            Ok(Region::new(*region))
        }
        _ => Err(InvalidArn(arn.to_owned())),
    }
}

/// A target group ARN that is not
/// `arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid target group ARN {0:?}: expected arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>"
)]
pub struct InvalidArn(pub String);

impl InvalidArn {
    /// The error a call with this ARN fails with.
    pub fn into_error(self, action: Action) -> Ec2Error {
        Ec2Error::new(action, "", ErrorKind::InvalidRequest, self.to_string())
    }
}

/// The Elastic Load Balancing (v2) target group calls of a deploy.
///
/// Every call names its target group by ARN (the region is taken from
/// it). Listings return all pages.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait TargetGroups: Send + Sync {
    /// The target group (`DescribeTargetGroups`) with its
    /// `deregistration_delay.timeout_seconds`
    /// (`DescribeTargetGroupAttributes`).
    async fn describe_target_group(&self, arn: &str) -> Result<TargetGroup, Ec2Error>;

    /// The health of `targets` (`DescribeTargetHealth`); with none, of
    /// every registered target. A target asked for that is not registered
    /// comes back as [`TargetState::NotRegistered`] (or, from some
    /// implementations, not at all).
    async fn target_health(
        &self,
        arn: &str,
        targets: &[Target],
    ) -> Result<Vec<TargetHealth>, Ec2Error>;

    /// Registers targets (`RegisterTargets`; registering a registered
    /// target again is not an error).
    async fn register_targets(&self, arn: &str, targets: &[Target]) -> Result<(), Ec2Error>;

    /// Deregisters targets (`DeregisterTargets`): they start draining.
    async fn deregister_targets(&self, arn: &str, targets: &[Target]) -> Result<(), Ec2Error>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arns_name_their_region() {
        let arn =
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/50dc6c495c0c9188";
        assert_eq!(region_of(arn).unwrap().as_str(), "eu-west-1");
        for bad in [
            "",
            "web",
            "arn:aws:elasticloadbalancing::123:targetgroup/web/1",
            "arn:aws:elasticloadbalancing:eu-west-1:123:loadbalancer/app/x/1",
            "arn:aws:ec2:eu-west-1:123:targetgroup/web/1",
        ] {
            assert!(region_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_parse_from_the_api() {
        assert_eq!(TargetState::from_api("healthy"), TargetState::Healthy);
        assert!(TargetState::from_api("unhealthy.draining").is_draining());
        assert!(TargetState::from_api("draining").is_draining());
        assert_eq!(TargetState::from_api("new"), TargetState::Other);
        assert_eq!(
            Target::new("10.0.0.1").on_port(Some(8080)).to_string(),
            "10.0.0.1:8080"
        );
    }
}
