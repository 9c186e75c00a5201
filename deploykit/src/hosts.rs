//! An environment's hosts: its static `hosts` list and the running
//! instances its [`HostSource`] finds by EC2 tag, narrowed to the hosts an
//! operation names, as [`HostTarget`]s ([`resolve`]); then, given a way to
//! reach a target, as deploy [`Host`]s ([`connect`]).
//!
//! Naming hosts (`only`; ektool's `--host`) means the same for every
//! operation — deploy, rollback, provision, `db`, `secrets`: it **narrows**
//! the environment's hosts, and a name that is none of them is refused
//! ([`HostsError::UnknownHost`]) before any host is contacted. A host is
//! named as written in `hosts`, by its host name or address, or as
//! `user@host:port`; one found by tag also by its instance id or its
//! `Name` tag. So a typo never sends an environment's secrets, or a
//! release, to a machine that is not one of its hosts: a fresh server is
//! added to the environment (or tagged) first.
//!
//! Hosts carry roles (`{ host = "db1", roles = ["db"] }` in `hosts`,
//! `roles` on the EC2 source for every host it finds). [`select`] narrows
//! by role as well (ektool's `--role`): a host having any of the roles
//! named, within the hosts named if any; a role no such host has is
//! refused ([`HostsError::UnknownRole`]). [`connect_selected`] gives the
//! deploy [`Host`]s their roles, which decide the hooks that run on them.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use deploykit::{Environment, hosts};
//!
//! let env = Environment::new(vec!["localhost".into(), "web1:2222".into()], "/srv/app")?;
//! // Static hosts need no EC2 client; narrowed to one by its host name.
//! let targets = hosts::resolve(&env, None, "deploy", &["web1".to_owned()]).await?;
//! assert_eq!(targets[0].to_string(), "deploy@web1:2222");
//! let unknown = hosts::resolve(&env, None, "deploy", &["web2".to_owned()]).await;
//! assert!(matches!(unknown, Err(hosts::HostsError::UnknownHost { .. })));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::sync::Arc;

use ec2kit::{Ec2, Ec2Error, HostTarget, InvalidTag, InvalidTarget, Remote, SshTarget, Tag};

use crate::environment::{Environment, HostSource};
use crate::host::Host;

/// Why an environment's hosts could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostsError {
    /// An entry of the environment's `hosts` is not `[user@]host[:port]`.
    #[error("host {written:?} of the environment: {source}")]
    InvalidHost {
        /// The entry as written.
        written: String,
        /// Why it does not parse.
        #[source]
        source: InvalidTarget,
    },
    /// The environment's EC2 source names a tag that is not `Key=Value`.
    #[error(transparent)]
    InvalidTag(#[from] InvalidTag),
    /// The environment finds hosts by EC2 tag, and no EC2 client was given.
    #[error("the environment finds hosts by EC2 tag {tag}, and no EC2 client was given")]
    NoEc2 {
        /// The tag.
        tag: String,
    },
    /// The EC2 source's region is not one EC2 knows (or names several).
    #[error(transparent)]
    Region(#[from] ec2kit::RegionError),
    /// Listing the regions or the tagged instances failed.
    #[error("could not list the instances tagged {tag} in {region}")]
    Ec2 {
        /// The tag.
        tag: String,
        /// The region as the environment names it.
        region: String,
        /// The EC2 error (its code kept; boxed, so the error stays small).
        #[source]
        source: Box<Ec2Error>,
    },
    /// The bastion (`jump`) is not `[user@]host[:port]`.
    #[error("jump {written:?}: {source}")]
    InvalidJump {
        /// The bastion as written.
        written: String,
        /// Why it does not parse.
        #[source]
        source: InvalidTarget,
    },
    /// No host (of those named, if any) has a role asked for.
    #[error("no host of this environment has role {role:?} (roles: {})", have_list(.have))]
    UnknownRole {
        /// The role asked for.
        role: String,
        /// The roles the hosts have.
        have: Vec<String>,
    },
    /// The environment's load balancer could not list its hosts.
    #[error(transparent)]
    LoadBalancer(#[from] crate::balancer::BalancerError),
    /// A named host is none of the environment's hosts.
    #[error("{wanted} is not a host of this environment (have: {})", have_list(.have))]
    UnknownHost {
        /// The name asked for.
        wanted: String,
        /// The environment's hosts, as written (or `user@address:port` for
        /// those found by tag).
        have: Vec<String>,
    },
}

fn have_list(have: &[String]) -> String {
    if have.is_empty() {
        "none".to_owned()
    } else {
        have.join(", ")
    }
}

/// One host of the environment, with every name it answers to.
struct Candidate {
    target: HostTarget,
    roles: Vec<String>,
    /// Its own bastion, as written.
    jump: Option<String>,
    /// How it is shown in [`HostsError::UnknownHost::have`].
    shown: String,
    /// What `only` may call it.
    names: Vec<String>,
}

impl Candidate {
    fn answers_to(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// The environment's hosts: its static `hosts` in their order, then the
/// running instances its `ec2` source finds (sorted by target), each as
/// written or at the source's address, user (default `default_user`) and
/// port. `only` narrows them (see the module docs; empty: all of them).
///
/// `ec2` is needed only when the environment has an `ec2` source (one
/// `DescribeRegions` and one filtered `DescribeInstances`); without one
/// that is [`HostsError::NoEc2`]. A running instance without the chosen
/// address is left out (logged). An empty result is not an error here:
/// each operation says what no hosts means for it.
pub async fn resolve(
    env: &Environment,
    ec2: Option<&dyn Ec2>,
    default_user: &str,
    only: &[String],
) -> Result<Vec<HostTarget>, HostsError> {
    resolve_with(env, ec2, None, default_user, only).await
}

/// As [`resolve`], and the registered targets of the environment's load
/// balancer when it finds hosts there (`[load_balancer.hosts]`, see
/// [`registered_hosts`](crate::balancer::registered_hosts)), after the
/// others; `groups` is needed then (and `ec2` for an `instance` group).
/// Such a host also answers to its address and, for an instance, its id
/// and `Name` tag.
pub async fn resolve_with(
    env: &Environment,
    ec2: Option<&dyn Ec2>,
    groups: Option<&dyn ec2kit::TargetGroups>,
    default_user: &str,
    only: &[String],
) -> Result<Vec<HostTarget>, HostsError> {
    Ok(select_with(env, ec2, groups, default_user, only, &[])
        .await?
        .into_iter()
        .map(|s| s.target)
        .collect())
}

/// One host [`select`] found: where it is, and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Selected {
    /// How to reach it.
    pub target: HostTarget,
    /// Its roles (those of its `hosts` entry, or of the EC2 source that
    /// found it; none for a load balancer's target).
    pub roles: Vec<String>,
    /// Its own bastion (the `jump` of its `hosts` entry), as written.
    pub jump: Option<String>,
}

/// [`resolve`], with each host's roles, also narrowed to the hosts having
/// any of `roles` (empty: no narrowing by role). A role that none of the
/// hosts left by `only` has is [`HostsError::UnknownRole`], so a typo in
/// `--role` never means "no hosts".
pub async fn select(
    env: &Environment,
    ec2: Option<&dyn Ec2>,
    default_user: &str,
    only: &[String],
    roles: &[String],
) -> Result<Vec<Selected>, HostsError> {
    select_with(env, ec2, None, default_user, only, roles).await
}

/// [`select`], with the load balancer's targets as [`resolve_with`].
pub async fn select_with(
    env: &Environment,
    ec2: Option<&dyn Ec2>,
    groups: Option<&dyn ec2kit::TargetGroups>,
    default_user: &str,
    only: &[String],
    roles: &[String],
) -> Result<Vec<Selected>, HostsError> {
    let named = named(env, ec2, groups, default_user, only).await?;
    if let Some(role) = roles
        .iter()
        .find(|r| !named.iter().any(|c| c.roles.contains(r)))
    {
        let mut have: Vec<String> = named.iter().flat_map(|c| c.roles.clone()).collect();
        have.sort();
        have.dedup();
        return Err(HostsError::UnknownRole {
            role: role.clone(),
            have,
        });
    }
    Ok(named
        .into_iter()
        .filter(|c| roles.is_empty() || c.roles.iter().any(|r| roles.contains(r)))
        .map(|c| Selected {
            target: c.target,
            roles: c.roles,
            jump: c.jump,
        })
        .collect())
}

/// The environment's hosts, narrowed by `only`.
async fn named(
    env: &Environment,
    ec2: Option<&dyn Ec2>,
    groups: Option<&dyn ec2kit::TargetGroups>,
    default_user: &str,
    only: &[String],
) -> Result<Vec<Candidate>, HostsError> {
    let mut all = Vec::new();
    for entry in &env.hosts {
        let written = &entry.host;
        let target = HostTarget::parse_with_user(written, default_user).map_err(|source| {
            HostsError::InvalidHost {
                written: written.clone(),
                source,
            }
        })?;
        let mut names = vec![written.clone(), target.to_string()];
        if let HostTarget::Ssh(t) = &target {
            names.push(t.host.clone());
        }
        all.push(Candidate {
            target,
            roles: entry.roles.clone(),
            jump: entry.jump.clone(),
            shown: written.clone(),
            names,
        });
    }
    if let Some(source) = &env.ec2 {
        let ec2 = ec2.ok_or_else(|| HostsError::NoEc2 {
            tag: source.tag.clone(),
        })?;
        all.extend(tagged(ec2, source, default_user).await?);
    }
    if let Some(lb) = &env.load_balancer
        && let Some(source) = &lb.hosts
    {
        let groups = groups.ok_or_else(|| crate::balancer::BalancerError::NoClient {
            arn: lb.target_group_arn.clone(),
        })?;
        let found =
            crate::balancer::registered_hosts(lb, source, groups, ec2, default_user).await?;
        for (target, mut names) in found {
            let shown = target.to_string();
            names.push(shown.clone());
            all.push(Candidate {
                target,
                roles: Vec::new(),
                jump: None,
                shown,
                names,
            });
        }
    }
    if only.is_empty() {
        return Ok(all);
    }
    if let Some(wanted) = only.iter().find(|w| !all.iter().any(|c| c.answers_to(w))) {
        return Err(HostsError::UnknownHost {
            wanted: wanted.clone(),
            have: all.into_iter().map(|c| c.shown).collect(),
        });
    }
    Ok(all
        .into_iter()
        .filter(|c| only.iter().any(|w| c.answers_to(w)))
        .collect())
}

/// The running instances carrying the source's tag in its region.
async fn tagged(
    ec2: &dyn Ec2,
    source: &HostSource,
    default_user: &str,
) -> Result<Vec<Candidate>, HostsError> {
    let tag: Tag = source.tag.parse()?;
    let failed = |source_error: Ec2Error| HostsError::Ec2 {
        tag: source.tag.clone(),
        region: source.region.clone(),
        source: Box::new(source_error),
    };
    let catalog = ec2kit::fleet::region_catalog(ec2).await.map_err(failed)?;
    let region = catalog.resolve(&source.region)?;
    let user = source.user.as_deref().unwrap_or(default_user);
    let mut found = Vec::new();
    for answer in ec2kit::fleet::instances_by_tag(ec2, &[region], &tag, 1).await {
        for instance in answer.result.map_err(failed)? {
            // The fleet query also returns pending, stopping and stopped
            // instances; only a running one can take commands.
            if instance.state != "running" {
                continue;
            }
            let Some(address) = instance.address(source.address) else {
                tracing::warn!(
                    instance = %instance.id,
                    address = %source.address,
                    "a running instance without this address; left out"
                );
                continue;
            };
            let target = HostTarget::Ssh(SshTarget {
                user: user.to_owned(),
                host: address.to_owned(),
                port: source.port,
            });
            let shown = target.to_string();
            let mut names = vec![shown.clone(), address.to_owned(), instance.id.to_string()];
            names.extend(instance.name().map(str::to_owned));
            found.push(Candidate {
                target,
                roles: source.roles.clone(),
                jump: None,
                shown,
                names,
            });
        }
    }
    found.sort_by(|a, b| a.shown.cmp(&b.shown));
    Ok(found)
}

/// The bastion the environment's SSH hosts are reached through: `over`
/// (ektool's `--jump`) if given, else the environment's `jump`; its user
/// defaulting to `default_user` and its port to 22. `None`: the hosts are
/// reached directly. Pass it to `ec2kit::connect_via`, which shares one
/// bastion connection among every host behind it.
pub fn jump(
    env: &Environment,
    over: Option<&str>,
    default_user: &str,
) -> Result<Option<SshTarget>, HostsError> {
    parse_jump(over.or(env.jump.as_deref()), default_user)
}

/// The bastion one host is reached through: `over` (`--jump`) if given,
/// else the host's own `jump`, else the environment's (see [`jump`]).
pub fn jump_for(
    env: &Environment,
    host: &Selected,
    over: Option<&str>,
    default_user: &str,
) -> Result<Option<SshTarget>, HostsError> {
    parse_jump(
        over.or(host.jump.as_deref()).or(env.jump.as_deref()),
        default_user,
    )
}

fn parse_jump(written: Option<&str>, default_user: &str) -> Result<Option<SshTarget>, HostsError> {
    let Some(written) = written else {
        return Ok(None);
    };
    let invalid = |source| HostsError::InvalidJump {
        written: written.to_owned(),
        source,
    };
    if written == HostTarget::LOCALHOST {
        return Err(invalid(InvalidTarget(written.to_owned())));
    }
    SshTarget::parse_with_user(written, default_user)
        .map(Some)
        .map_err(invalid)
}

/// The deploy [`Host`]s of hosts [`select`] found, with their roles: each
/// reached through `connect` (as for [`connect`]), deploying to the
/// environment's root.
pub fn connect_selected(
    env: &Environment,
    selected: &[Selected],
    connect: impl Fn(&Selected) -> Arc<dyn Remote>,
) -> Vec<Host> {
    selected
        .iter()
        .map(|s| Host::new(connect(s), env.path.as_str()).with_roles(s.roles.clone()))
        .collect()
}

/// The deploy [`Host`]s of `targets` (without roles: see
/// [`connect_selected`]): each reached through `connect`
/// (`|t| ec2kit::connect(t, &options)` with ec2kit's `ssh` feature, or a
/// test's own shell), deploying to the environment's root.
pub fn connect(
    env: &Environment,
    targets: &[HostTarget],
    connect: impl Fn(&HostTarget) -> Arc<dyn Remote>,
) -> Vec<Host> {
    targets
        .iter()
        .map(|t| Host::new(connect(t), env.path.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ec2kit::{Action, Address, Instance, MockEc2, Region, RegionInfo, Tags};

    fn env(hosts: &[&str]) -> Environment {
        Environment::new(hosts.iter().map(|h| (*h).to_owned()).collect(), "/srv/app").unwrap()
    }

    #[tokio::test]
    async fn a_hosts_own_jump_is_over_the_environments_and_under_the_flag() {
        let mut e: Environment = toml::from_str(
            "hosts = [\"web1\", { host = \"db1\", jump = \"ops@bastion2\" }]\npath = \"/srv/app\"\n",
        )
        .unwrap();
        // A plain entry stays a string; a table keeps its jump.
        let back = toml::to_string(&e).unwrap();
        assert!(
            back.contains("\"web1\"") && back.contains("jump = \"ops@bastion2\""),
            "{back}"
        );
        let sel = select(&e, None, "deploy", &[], &[]).await.unwrap();
        let via = |s: &Selected, over: Option<&str>, e: &Environment| {
            jump_for(e, s, over, "deploy")
                .unwrap()
                .map(|t| t.to_string())
        };
        assert_eq!(via(&sel[0], None, &e), None);
        assert_eq!(via(&sel[1], None, &e).as_deref(), Some("ops@bastion2:22"));
        e.jump = Some("bastion1".into());
        assert_eq!(
            via(&sel[0], None, &e).as_deref(),
            Some("deploy@bastion1:22")
        );
        assert_eq!(via(&sel[1], None, &e).as_deref(), Some("ops@bastion2:22"));
        assert_eq!(via(&sel[1], Some("x@b3"), &e).as_deref(), Some("x@b3:22"));
        // A bad one is refused where it is written.
        let bad: Result<Environment, _> =
            toml::from_str("hosts = [{ host = \"db1\", jump = \"a b\" }]\npath = \"/srv/app\"\n");
        assert!(bad.is_err());
    }

    #[test]
    fn the_jump_comes_from_the_flag_or_the_environment() {
        let mut e = env(&["web1"]);
        assert_eq!(jump(&e, None, "deploy").unwrap(), None);
        e.jump = Some("bastion.example.com".into());
        assert_eq!(
            jump(&e, None, "deploy").unwrap().unwrap().to_string(),
            "deploy@bastion.example.com:22"
        );
        assert_eq!(
            jump(&e, Some("ops@10.0.0.9:2222"), "deploy")
                .unwrap()
                .unwrap()
                .to_string(),
            "ops@10.0.0.9:2222"
        );
        for bad in ["a b", "localhost", "host:port"] {
            assert!(
                matches!(
                    jump(&e, Some(bad), "deploy"),
                    Err(HostsError::InvalidJump { .. })
                ),
                "{bad}"
            );
        }
        let parsed: Result<Environment, _> =
            toml::from_str("hosts = [\"web1\"]\npath = \"/srv/app\"\njump = \"a b\"\n");
        assert!(parsed.is_err());
        let parsed: Environment =
            toml::from_str("hosts = [\"web1\"]\npath = \"/srv/app\"\njump = \"ops@bastion\"\n")
                .unwrap();
        assert_eq!(parsed.jump.as_deref(), Some("ops@bastion"));
    }

    fn only(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn shown(targets: &[HostTarget]) -> Vec<String> {
        targets.iter().map(ToString::to_string).collect()
    }

    fn instance(id: &str, state: &str, ip: Option<&str>, name: Option<&str>) -> Instance {
        let mut tags = Tags::new().with("Role", "web");
        if let Some(n) = name {
            tags.insert("Name", n);
        }
        serde_json::from_value(serde_json::json!({
            "id": id, "region": "eu-west-1", "availability_zone": null, "state": state,
            "instance_type": null, "architecture": null, "root_device_name": null,
            "virtualization_type": null, "ena_support": null, "image_id": null,
            "key_name": null, "private_ip": ip, "public_ip": null,
            "public_dns": "ec2-1.example.com", "launch_time": null, "reservation_id": null,
            "block_devices": [], "tags": tags
        }))
        .unwrap()
    }

    fn fleet(instances: Vec<Instance>) -> MockEc2 {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_regions().returning(|| {
            Ok(["eu-west-1", "eu-north-1"]
                .into_iter()
                .map(|r| RegionInfo {
                    name: Region::new(r),
                    opt_in_status: None,
                    endpoint: None,
                })
                .collect())
        });
        ec2.expect_describe_instances().returning(move |region, _| {
            assert_eq!(region.as_str(), "eu-west-1");
            Ok(instances.clone())
        });
        ec2
    }

    fn tagged_env(hosts: &[&str], address: Address) -> Environment {
        let mut e = env(hosts);
        e.ec2 = Some(HostSource {
            tag: "Role=web".into(),
            region: "eu-west".into(),
            user: Some("ubuntu".into()),
            port: 2222,
            address,
            roles: Vec::new(),
        });
        e
    }

    #[tokio::test]
    async fn static_hosts_keep_their_order_and_localhost_is_this_machine() {
        let e = env(&[
            "web2.example.com",
            "root@web1.example.com:2200",
            "localhost",
        ]);
        let t = resolve(&e, None, "deploy", &[]).await.unwrap();
        assert_eq!(
            shown(&t),
            [
                "deploy@web2.example.com:22",
                "root@web1.example.com:2200",
                "localhost"
            ]
        );
        assert_eq!(t[2], HostTarget::Local);
    }

    #[tokio::test]
    async fn only_narrows_by_written_form_host_name_or_target_and_refuses_strangers() {
        let e = env(&[
            "web2.example.com",
            "root@web1.example.com:2200",
            "localhost",
        ]);
        for (name, expected) in [
            ("web2.example.com", "deploy@web2.example.com:22"),
            ("web1.example.com", "root@web1.example.com:2200"),
            ("root@web1.example.com:2200", "root@web1.example.com:2200"),
            ("deploy@web2.example.com:22", "deploy@web2.example.com:22"),
            ("localhost", "localhost"),
        ] {
            let t = resolve(&e, None, "deploy", &only(&[name])).await.unwrap();
            assert_eq!(shown(&t), [expected], "{name}");
        }
        // Several names keep the environment's order.
        let t = resolve(
            &e,
            None,
            "deploy",
            &only(&["localhost", "web2.example.com"]),
        )
        .await
        .unwrap();
        assert_eq!(shown(&t), ["deploy@web2.example.com:22", "localhost"]);
        // A fresh server's address is not one of them: refused, named.
        let err = resolve(&e, None, "deploy", &only(&["web1.example.com", "10.0.0.9"]))
            .await
            .unwrap_err();
        match &err {
            HostsError::UnknownHost { wanted, have } => {
                assert_eq!(wanted, "10.0.0.9");
                assert_eq!(have.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "10.0.0.9 is not a host of this environment (have: web2.example.com, root@web1.example.com:2200, localhost)"
        );
    }

    #[tokio::test]
    async fn a_bad_static_host_is_an_error_naming_it() {
        let err = resolve(&env(&["web 1"]), None, "deploy", &[])
            .await
            .unwrap_err();
        assert!(matches!(err, HostsError::InvalidHost { ref written, .. } if written == "web 1"));
    }

    #[tokio::test]
    async fn tagged_hosts_are_the_running_ones_at_their_address_sorted() {
        let ec2 = fleet(vec![
            instance("i-2", "running", Some("10.0.0.2"), Some("web-b")),
            instance("i-1", "running", Some("10.0.0.1"), Some("web-a")),
            instance("i-3", "stopped", Some("10.0.0.3"), None),
            instance("i-4", "running", None, None),
        ]);
        let e = tagged_env(&["localhost"], Address::PrivateIp);
        let t = resolve(&e, Some(&ec2), "deploy", &[]).await.unwrap();
        assert_eq!(
            shown(&t),
            ["localhost", "ubuntu@10.0.0.1:2222", "ubuntu@10.0.0.2:2222"]
        );
        // Named by address, instance id or Name tag.
        for name in ["10.0.0.2", "i-2", "web-b", "ubuntu@10.0.0.2:2222"] {
            let t = resolve(&e, Some(&ec2), "deploy", &only(&[name]))
                .await
                .unwrap();
            assert_eq!(shown(&t), ["ubuntu@10.0.0.2:2222"], "{name}");
        }
        let e = tagged_env(&[], Address::PublicDns);
        let t = resolve(&e, Some(&ec2), "deploy", &[]).await.unwrap();
        assert_eq!(t.len(), 3, "every running instance has the public name");
    }

    #[tokio::test]
    async fn tagged_hosts_need_a_client_and_keep_the_ec2_error() {
        let e = tagged_env(&[], Address::PrivateIp);
        let err = resolve(&e, None, "deploy", &[]).await.unwrap_err();
        assert!(matches!(err, HostsError::NoEc2 { .. }), "{err:?}");

        let mut ec2 = MockEc2::new();
        ec2.expect_describe_regions().returning(|| {
            Err(Ec2Error::from_code(
                Action::DescribeRegions,
                "us-east-1",
                "UnauthorizedOperation",
                None,
            ))
        });
        let err = resolve(&e, Some(&ec2), "deploy", &[]).await.unwrap_err();
        let HostsError::Ec2 { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.code.as_deref(), Some("UnauthorizedOperation"));
    }

    fn roles_of(selected: &[Selected]) -> Vec<(String, Vec<String>)> {
        selected
            .iter()
            .map(|s| (s.target.to_string(), s.roles.clone()))
            .collect()
    }

    #[tokio::test]
    async fn roles_come_from_the_entries_and_the_ec2_source_and_narrow_the_hosts() {
        let mut e = tagged_env(&["web2", "db1"], Address::PrivateIp);
        e.hosts = vec![
            "web2".into(),
            crate::environment::HostEntry::new("db1", ["db", "worker"]),
            crate::environment::HostEntry::new("web1", ["web"]),
        ];
        e.ec2.as_mut().unwrap().roles = vec!["web".into()];
        let ec2 = fleet(vec![instance("i-1", "running", Some("10.0.0.1"), None)]);
        let all = select(&e, Some(&ec2), "deploy", &[], &[]).await.unwrap();
        let s = |t: &str, r: &[&str]| {
            (
                t.to_owned(),
                r.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            roles_of(&all),
            [
                s("deploy@web2:22", &[]),
                s("deploy@db1:22", &["db", "worker"]),
                s("deploy@web1:22", &["web"]),
                s("ubuntu@10.0.0.1:2222", &["web"]),
            ]
        );
        // Any of the roles, in the environment's order.
        let web = select(&e, Some(&ec2), "deploy", &[], &only(&["web"]))
            .await
            .unwrap();
        assert_eq!(
            roles_of(&web),
            [
                s("deploy@web1:22", &["web"]),
                s("ubuntu@10.0.0.1:2222", &["web"])
            ]
        );
        let two = select(&e, Some(&ec2), "deploy", &[], &only(&["worker", "web"]))
            .await
            .unwrap();
        assert_eq!(two.len(), 3);
        // With --host: among the hosts named.
        let one = select(
            &e,
            Some(&ec2),
            "deploy",
            &only(&["web1", "db1"]),
            &only(&["web"]),
        )
        .await
        .unwrap();
        assert_eq!(roles_of(&one), [s("deploy@web1:22", &["web"])]);
        // A role no (named) host has is refused, named, with the roles there are.
        for (hosts, role) in [(&[][..], "cache"), (&["db1"][..], "web")] {
            let err = select(&e, Some(&ec2), "deploy", &only(hosts), &only(&[role]))
                .await
                .unwrap_err();
            let HostsError::UnknownRole { role: r, have } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(r, role);
            assert!(!have.is_empty());
            assert!(err.to_string().contains(&format!("{role:?}")), "{err}");
        }
        // The old entry point still gives the targets alone.
        let targets = resolve(&e, Some(&ec2), "deploy", &[]).await.unwrap();
        assert_eq!(targets.len(), 4);
        // And the deploy hosts get the roles.
        let hosts = connect_selected(&e, &web, |_| Arc::new(ec2kit::LocalRemote::new()));
        assert!(hosts.iter().all(|h| h.has_role("web") && !h.has_role("db")));
    }

    #[test]
    fn deploy_hosts_are_named_after_their_remote_and_share_the_root() {
        let e = env(&["localhost"]);
        let hosts = connect(&e, &[HostTarget::Local], |_| {
            Arc::new(ec2kit::LocalRemote::new())
        });
        assert_eq!(hosts[0].name(), "localhost");
        assert_eq!(hosts[0].root(), "/srv/app");
    }
}
