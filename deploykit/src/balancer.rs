//! Load balancers: taking each wave of a deploy out of an ALB/NLB target
//! group while it switches, and hosts found from a target group.
//!
//! With `[environments.<name>.load_balancer] target_group_arn = "…"`, each
//! wave of a deploy (see [`crate::rollout`]; with a load balancer and no
//! `batch`, one host per wave, [`DEFAULT_BATCH`]) goes:
//!
//! ```text
//! deregister the wave's targets
//!  → wait until they are out of the group: at most the group's
//!    deregistration_delay, bounded by drain_timeout (--drain-timeout)
//!  → switch, restart, after-switch hooks, health check (as without one)
//!  → register the targets again
//!  → wait until every one is `healthy` in the group (healthy_timeout)
//! ```
//!
//! A failure anywhere switches every switched host back (as without a load
//! balancer), then registers again every target that was taken out: the
//! group ends with the targets it had.
//!
//! **Which target is which host.** A host is a target of the group when
//! its address (the host part of `user@host:port`) is the target's: for an
//! `ip` group the target's id; for an `instance` group the instance's
//! private IP, public IP, public or private DNS name, or its id (one
//! `DescribeInstances`, so an `instance` group needs an EC2 client). A
//! host with several targets (one address, several ports) has all of them
//! taken out; `port` narrows them to one port. A host that is no target is
//! switched without draining (the plan says so); a target that is no host
//! is left alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ec2kit::iam::{Permissions, Sometimes, When};
use ec2kit::{
    Action, Address, Ec2, Ec2Error, Filter, HostTarget, HumanDuration, SshTarget, Target,
    TargetGroup, TargetGroups, TargetState, TargetType,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::host::Host;
use crate::rollout::BatchSize;

/// The batch of a deploy behind a load balancer when the environment sets
/// none: one host at a time (taking every host out of the group at once
/// is an outage).
pub const DEFAULT_BATCH: BatchSize = BatchSize::Hosts(1);

/// What a deploy behind a load balancer calls: the group and its
/// deregistration delay, its targets' health, deregistering and
/// registering them; for an `instance` group, its instances' addresses.
pub const DRAIN_PERMISSIONS: Permissions = Permissions::calls(&[
    Action::DescribeTargetGroups,
    Action::DescribeTargetGroupAttributes,
    Action::DescribeTargetHealth,
    Action::DeregisterTargets,
    Action::RegisterTargets,
])
.sometimes(INSTANCE_GROUP);

/// What finding hosts from a target group calls ([`registered_hosts`]).
pub const HOSTS_PERMISSIONS: Permissions = Permissions::calls(&[
    Action::DescribeTargetGroups,
    Action::DescribeTargetGroupAttributes,
    Action::DescribeTargetHealth,
])
.sometimes(INSTANCE_GROUP);

const INSTANCE_GROUP: &[Sometimes] = &[Sometimes {
    when: When::Case("an instance target group"),
    actions: &[Action::DescribeInstances],
}];

/// How often target health is read while waiting.
pub const POLL: Duration = Duration::from_secs(2);

/// An environment's load balancer (`[environments.<name>.load_balancer]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    /// The target group the hosts are targets of (its region is in the
    /// ARN).
    #[serde(deserialize_with = "target_group_arn")]
    pub target_group_arn: String,
    /// Only targets on this port are the hosts' (default: every target at
    /// a host's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The longest a wave waits for its targets to drain (default: the
    /// group's `deregistration_delay`). `--drain-timeout` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<HumanDuration>,
    /// The longest a wave waits, registered again, for its targets to be
    /// `healthy` in the group (default 5m); past it the deploy fails and
    /// every host is switched back.
    #[serde(default = "default_healthy_timeout")]
    pub healthy_timeout: HumanDuration,
    /// Find the environment's hosts from the group's registered targets
    /// (`[environments.<name>.load_balancer.hosts]`), as an EC2 tag source
    /// finds them from tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<TargetHosts>,
}

impl LoadBalancer {
    /// A load balancer in front of the target group `arn`, with defaults.
    pub fn new(arn: impl Into<String>) -> Self {
        Self {
            target_group_arn: arn.into(),
            port: None,
            drain_timeout: None,
            healthy_timeout: default_healthy_timeout(),
            hosts: None,
        }
    }
}

fn default_healthy_timeout() -> HumanDuration {
    HumanDuration::from_secs(300)
}

fn target_group_arn<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let arn = String::deserialize(d)?;
    ec2kit::elb::region_of(&arn).map_err(serde::de::Error::custom)?;
    Ok(arn)
}

/// Hosts from a target group's registered targets: how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetHosts {
    /// Login user (default: the `[ssh]` user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SSH port.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Which address of an instance target to connect to (default: the
    /// private IP). An `ip` target is reached at its IP.
    #[serde(default)]
    pub address: Address,
}

fn default_ssh_port() -> u16 {
    22
}

/// Why a target group could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalancerError {
    /// The environment has a load balancer, and no target group client was
    /// given.
    #[error("the environment has a load balancer ({arn}), and no ELB client was given")]
    NoClient {
        /// The target group.
        arn: String,
    },
    /// An `instance` target group, and no EC2 client to find its
    /// instances' addresses.
    #[error(
        "target group {arn} names instances, and no EC2 client was given to find their addresses"
    )]
    NoEc2 {
        /// The target group.
        arn: String,
    },
    /// The group's targets are neither instances nor IP addresses.
    #[error(
        "target group {arn} has {kind} targets: only instance and ip target groups can be drained"
    )]
    Unsupported {
        /// The target group.
        arn: String,
        /// Its target type.
        kind: TargetType,
    },
    /// An ELB or EC2 call failed.
    #[error("target group {arn}: {source}")]
    Api {
        /// The target group.
        arn: String,
        /// The error (its code kept; boxed, so the error stays small).
        #[source]
        source: Box<Ec2Error>,
    },
}

/// The group, and which of its targets each host is.
#[derive(Debug, Clone)]
pub(crate) struct Members {
    pub(crate) group: TargetGroup,
    /// Host name → its targets (only hosts that have some).
    pub(crate) targets: BTreeMap<String, Vec<Target>>,
    /// How many targets the group has registered (on `port`, if set).
    pub(crate) registered: usize,
}

/// The address a host is reached at: the host part of its name.
fn host_address(name: &str) -> String {
    SshTarget::parse_with_user(name, "_").map_or_else(|_| name.to_owned(), |t| t.host)
}

/// Reads the group and matches its registered targets to `hosts` (see the
/// module docs).
pub(crate) async fn members(
    config: &LoadBalancer,
    groups: &dyn TargetGroups,
    ec2: Option<&dyn Ec2>,
    hosts: &[Host],
) -> Result<Members, BalancerError> {
    let arn = &config.target_group_arn;
    let api = |e: Ec2Error| BalancerError::Api {
        arn: arn.clone(),
        source: Box::new(e),
    };
    let group = groups.describe_target_group(arn).await.map_err(api)?;
    let registered = groups.target_health(arn, &[]).await.map_err(api)?;
    let registered: Vec<Target> = registered
        .into_iter()
        .filter(|h| h.state != TargetState::NotRegistered)
        .map(|h| h.target)
        .filter(|t| config.port.is_none_or(|p| t.port == Some(p)))
        .collect();
    let count = registered.len();
    // Every name a target answers to.
    let mut names: Vec<(Target, Vec<String>)> = Vec::new();
    match group.target_type {
        TargetType::Ip => {
            names.extend(registered.into_iter().map(|t| {
                let id = t.id.clone();
                (t, vec![id])
            }));
        }
        TargetType::Instance => {
            if !registered.is_empty() {
                let ec2 = ec2.ok_or_else(|| BalancerError::NoEc2 { arn: arn.clone() })?;
                let instances = instances(ec2, arn, &registered).await.map_err(api)?;
                for t in registered {
                    let mut n = vec![t.id.clone()];
                    if let Some(i) = instances.iter().find(|i| i.id.as_str() == t.id) {
                        for a in [
                            Address::PrivateIp,
                            Address::PublicIp,
                            Address::PublicDns,
                            Address::PrivateDns,
                        ] {
                            n.extend(i.address(a).map(str::to_owned));
                        }
                    }
                    names.push((t, n));
                }
            }
        }
        kind => {
            return Err(BalancerError::Unsupported {
                arn: arn.clone(),
                kind,
            });
        }
    }
    let mut targets = BTreeMap::new();
    for h in hosts {
        let address = host_address(h.name());
        let mine: Vec<Target> = names
            .iter()
            .filter(|(_, n)| n.contains(&address))
            .map(|(t, _)| t.clone())
            .collect();
        if !mine.is_empty() {
            targets.insert(h.name().to_owned(), mine);
        }
    }
    Ok(Members {
        group,
        targets,
        registered: count,
    })
}

/// The instances behind `targets` (one `DescribeInstances` in the group's
/// region).
async fn instances(
    ec2: &dyn Ec2,
    arn: &str,
    targets: &[Target],
) -> Result<Vec<ec2kit::Instance>, Ec2Error> {
    let region =
        ec2kit::elb::region_of(arn).map_err(|e| e.into_error(Action::DescribeInstances))?;
    let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
    ec2.describe_instances(&region, &[Filter::new("instance-id", ids)])
        .await
}

/// How a wait on target health ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Waited {
    /// Every target reached the state waited for.
    pub(crate) done: bool,
    /// How long it took.
    pub(crate) seconds: f64,
}

/// Waits until none of `targets` is registered or draining any more, for
/// at most `limit` (polling every [`POLL`]). A failed read ends the wait
/// as not done.
pub(crate) async fn wait_drained(
    groups: &dyn TargetGroups,
    arn: &str,
    targets: &[Target],
    limit: Duration,
    cancel: &ec2kit::CancellationToken,
) -> Result<Waited, Ec2Error> {
    wait_for(groups, arn, targets, limit, cancel, |s| {
        matches!(s, TargetState::NotRegistered | TargetState::Unused)
    })
    .await
}

/// Waits until every one of `targets` is `healthy` (or `unavailable`:
/// health checks off), for at most `limit`.
pub(crate) async fn wait_healthy(
    groups: &dyn TargetGroups,
    arn: &str,
    targets: &[Target],
    limit: Duration,
    cancel: &ec2kit::CancellationToken,
) -> Result<Waited, Ec2Error> {
    // `unavailable`: the group's health checks are off; it takes traffic.
    wait_for(groups, arn, targets, limit, cancel, |s| {
        matches!(s, TargetState::Healthy | TargetState::Unavailable)
    })
    .await
}

async fn wait_for(
    groups: &dyn TargetGroups,
    arn: &str,
    targets: &[Target],
    limit: Duration,
    cancel: &ec2kit::CancellationToken,
    reached: impl Fn(TargetState) -> bool,
) -> Result<Waited, Ec2Error> {
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let health = groups.target_health(arn, targets).await?;
        // A target the API does not list is not registered.
        let state_of = |want: &Target| {
            health
                .iter()
                .find(|h| {
                    h.target.id == want.id && (want.port.is_none() || h.target.port == want.port)
                })
                .map_or(TargetState::NotRegistered, |h| h.state)
        };
        let done = targets.iter().all(|want| reached(state_of(want)));
        let seconds = t.elapsed().as_secs_f64();
        if done {
            return Ok(Waited { done, seconds });
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || cancel.is_cancelled() {
            return Ok(Waited {
                done: false,
                seconds,
            });
        }
        tokio::select! {
            () = tokio::time::sleep_until((now + POLL).min(deadline)) => {}
            () = cancel.cancelled() => {}
        }
    }
}

/// The hosts of the environment's target group source: its registered
/// targets, reached as [`TargetHosts`] says (instances at the chosen
/// address, found with one `DescribeInstances`; `ip` targets at their IP),
/// sorted. Also returns, per host, the names it answers to (its address,
/// and an instance's id).
pub async fn registered_hosts(
    config: &LoadBalancer,
    source: &TargetHosts,
    groups: &dyn TargetGroups,
    ec2: Option<&dyn Ec2>,
    default_user: &str,
) -> Result<Vec<(HostTarget, Vec<String>)>, BalancerError> {
    let arn = &config.target_group_arn;
    let api = |e: Ec2Error| BalancerError::Api {
        arn: arn.clone(),
        source: Box::new(e),
    };
    let group = groups.describe_target_group(arn).await.map_err(api)?;
    let registered: Vec<Target> = groups
        .target_health(arn, &[])
        .await
        .map_err(api)?
        .into_iter()
        .filter(|h| h.state != TargetState::NotRegistered)
        .map(|h| h.target)
        .filter(|t| config.port.is_none_or(|p| t.port == Some(p)))
        .collect();
    let user = source.user.as_deref().unwrap_or(default_user);
    let reach = |address: &str| {
        HostTarget::Ssh(SshTarget {
            user: user.to_owned(),
            host: address.to_owned(),
            port: source.port,
        })
    };
    let mut out: Vec<(HostTarget, Vec<String>)> = Vec::new();
    match group.target_type {
        TargetType::Ip => {
            for t in &registered {
                out.push((reach(&t.id), vec![t.id.clone()]));
            }
        }
        TargetType::Instance => {
            if !registered.is_empty() {
                let ec2 = ec2.ok_or_else(|| BalancerError::NoEc2 { arn: arn.clone() })?;
                for i in instances(ec2, arn, &registered).await.map_err(api)? {
                    if i.state != "running" {
                        continue;
                    }
                    let Some(address) = i.address(source.address) else {
                        tracing::warn!(instance = %i.id, "a target instance without this address; left out");
                        continue;
                    };
                    let mut names = vec![address.to_owned(), i.id.to_string()];
                    names.extend(i.name().map(str::to_owned));
                    out.push((reach(address), names));
                }
            }
        }
        kind => {
            return Err(BalancerError::Unsupported {
                arn: arn.clone(),
                kind,
            });
        }
    }
    out.sort_by_key(|(t, _)| t.to_string());
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use ec2kit::{Instance, MockEc2, MockTargetGroups, TargetHealth};

    use super::*;

    const ARN: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef";

    fn host(name: &str) -> Host {
        Host::new(Arc::new(ec2kit::LocalRemote::new()), "/srv/app").named(name)
    }

    fn group(kind: TargetType, targets: &[(&str, u16)]) -> MockTargetGroups {
        let mut g = MockTargetGroups::new();
        g.expect_describe_target_group().returning(move |arn| {
            Ok(TargetGroup {
                arn: arn.to_owned(),
                name: "web".into(),
                target_type: kind,
                port: Some(80),
                deregistration_delay: Duration::from_secs(30),
            })
        });
        let health: Vec<TargetHealth> = targets
            .iter()
            .map(|(id, port)| TargetHealth {
                target: Target::new(*id).on_port(Some(*port)),
                state: TargetState::Healthy,
                reason: None,
            })
            .collect();
        g.expect_target_health()
            .returning(move |_, _| Ok(health.clone()));
        g
    }

    fn shown(m: &Members) -> Vec<(String, Vec<String>)> {
        m.targets
            .iter()
            .map(|(h, t)| (h.clone(), t.iter().map(ToString::to_string).collect()))
            .collect()
    }

    #[tokio::test]
    async fn ip_targets_are_the_hosts_at_their_address_narrowed_by_port() {
        let g = group(
            TargetType::Ip,
            &[
                ("10.0.0.1", 80),
                ("10.0.0.1", 8080),
                ("10.0.0.2", 80),
                ("10.0.0.9", 80),
            ],
        );
        let hosts = [
            host("deploy@10.0.0.1:22"),
            host("10.0.0.2"),
            host("worker@10.0.0.3"),
        ];
        let lb = LoadBalancer::new(ARN);
        let m = members(&lb, &g, None, &hosts).await.unwrap();
        assert_eq!(
            shown(&m),
            [
                ("10.0.0.2".to_owned(), vec!["10.0.0.2:80".to_owned()]),
                (
                    "deploy@10.0.0.1:22".to_owned(),
                    vec!["10.0.0.1:80".to_owned(), "10.0.0.1:8080".to_owned()]
                ),
            ]
        );
        let mut lb = LoadBalancer::new(ARN);
        lb.port = Some(8080);
        let m = members(&lb, &g, None, &hosts).await.unwrap();
        assert_eq!(
            shown(&m),
            [(
                "deploy@10.0.0.1:22".to_owned(),
                vec!["10.0.0.1:8080".to_owned()]
            )]
        );
    }

    fn instance(id: &str, ip: &str, dns: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": id, "region": "eu-west-1", "availability_zone": null, "state": "running",
            "instance_type": null, "architecture": null, "root_device_name": null,
            "virtualization_type": null, "ena_support": null, "image_id": null,
            "key_name": null, "private_ip": ip, "public_ip": null,
            "public_dns": dns, "launch_time": null, "reservation_id": null,
            "block_devices": [], "tags": {}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn instance_targets_are_the_hosts_at_any_address_of_the_instance() {
        let g = group(
            TargetType::Instance,
            &[("i-0aaaaaaaaaaaaaaaa", 80), ("i-0bbbbbbbbbbbbbbbb", 80)],
        );
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_instances()
            .returning(|region, filters| {
                assert_eq!(region.as_str(), "eu-west-1");
                assert_eq!(filters[0].name, "instance-id");
                Ok(vec![
                    instance("i-0aaaaaaaaaaaaaaaa", "10.0.0.1", "web1.example.com"),
                    instance("i-0bbbbbbbbbbbbbbbb", "10.0.0.2", ""),
                ])
            });
        let hosts = [
            host("deploy@web1.example.com:22"),
            host("deploy@10.0.0.2:22"),
        ];
        let lb = LoadBalancer::new(ARN);
        let m = members(&lb, &g, Some(&ec2), &hosts).await.unwrap();
        assert_eq!(m.targets.len(), 2, "{m:?}");
        assert_eq!(
            m.targets["deploy@web1.example.com:22"],
            [Target::new("i-0aaaaaaaaaaaaaaaa").on_port(Some(80))]
        );
        // No EC2 client: the addresses cannot be found.
        let err = members(&lb, &g, None, &hosts).await.unwrap_err();
        assert!(matches!(err, BalancerError::NoEc2 { .. }), "{err}");
    }

    /// Hosts from the group: `ip` targets at their IP, with the source's
    /// user and port, after the static ones; `--host` takes the address;
    /// without a client it is an error.
    #[tokio::test]
    async fn hosts_come_from_the_registered_targets() {
        let g = group(
            TargetType::Ip,
            &[("10.0.0.2", 80), ("10.0.0.1", 80), ("10.0.0.1", 81)],
        );
        let mut env = crate::Environment::new(vec!["web0".into()], "/srv/app").unwrap();
        let mut lb = LoadBalancer::new(ARN);
        lb.hosts = Some(TargetHosts {
            user: Some("ubuntu".into()),
            port: 2222,
            address: Address::PrivateIp,
        });
        env.load_balancer = Some(lb);
        let all = crate::hosts::resolve_with(&env, None, Some(&g), "deploy", &[])
            .await
            .unwrap();
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "deploy@web0:22",
                "ubuntu@10.0.0.1:2222",
                "ubuntu@10.0.0.2:2222"
            ]
        );
        let one = crate::hosts::resolve_with(&env, None, Some(&g), "deploy", &["10.0.0.2".into()])
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        let err = crate::hosts::resolve(&env, None, "deploy", &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::hosts::HostsError::LoadBalancer(BalancerError::NoClient { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn the_table_is_checked_where_it_is_read() {
        let ok: LoadBalancer = toml::from_str(&format!(
            "target_group_arn = \"{ARN}\"\ndrain_timeout = \"30s\"\nhosts = {{ user = \"deploy\" }}\n"
        ))
        .unwrap();
        assert_eq!(ok.drain_timeout, Some(HumanDuration::from_secs(30)));
        assert_eq!(ok.healthy_timeout, HumanDuration::from_secs(300));
        assert_eq!(ok.hosts.unwrap().port, 22);
        for bad in [
            "target_group_arn = \"web\"\n".to_owned(),
            format!("target_group_arn = \"{ARN}\"\nprot = 80\n"),
        ] {
            assert!(toml::from_str::<LoadBalancer>(&bad).is_err(), "{bad}");
        }
    }
}
