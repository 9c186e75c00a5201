//! Roles in a deploy's plan, which the deploy carries out: a hook with
//! roles runs on a host iff they share one; a `before_switch` hook runs on
//! exactly one host, the first in lock order with its `once_on` role.

use std::sync::Arc;

use proptest::prelude::*;

use crate::Deployer;
use crate::environment::{Environment, Hook, Phase};
use crate::error::DeployError;
use crate::host::Host;
use crate::plan::DeployPlan;
use crate::release::Release;

const ROLES: [&str; 3] = ["web", "worker", "db"];

fn roles() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(ROLES.to_vec(), 0..=3)
        .prop_map(|r| r.into_iter().map(str::to_owned).collect())
}

fn release() -> Release {
    Release {
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        tag: None,
        describe: "main".into(),
        reference: "main".into(),
    }
}

/// The plan of a deploy to hosts `h0`, `h1`, … (lock order) with these
/// roles; each restart hook `r<j>` has its roles, each before-switch hook
/// `m<j>` its `once_on`.
fn plan(
    host_roles: &[Vec<String>],
    restart: &[Vec<String>],
    before: &[Option<String>],
) -> Result<DeployPlan, DeployError> {
    let dir = tempfile::tempdir().unwrap();
    let mut env = Environment::new(Vec::new(), "/srv/app").unwrap();
    env.hooks.restart = restart
        .iter()
        .enumerate()
        .map(|(j, r)| Hook::new(format!("r{j}")).on_roles(r.clone()))
        .collect();
    env.hooks.before_switch = before
        .iter()
        .enumerate()
        .map(|(j, r)| {
            let h = Hook::new(format!("m{j}"));
            match r {
                Some(r) => h.once_on(r.clone()),
                None => h,
            }
        })
        .collect();
    // Given in reverse: the deployer sorts them into lock order.
    let hosts = host_roles
        .iter()
        .enumerate()
        .rev()
        .map(|(i, r)| {
            Host::new(
                Arc::new(ec2kit::LocalRemote::new()),
                dir.path().join(format!("h{i}")).display().to_string(),
            )
            .named(format!("h{i}"))
            .with_roles(r.clone())
        })
        .collect();
    let d = Deployer::new("test", env, hosts).repository("https://git.example.com/app.git");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(d.deploy_plan(&release()))
}

fn commands(plan: &DeployPlan, host: usize, phase: Phase) -> Vec<String> {
    plan.hosts[host]
        .hooks
        .iter()
        .filter(|p| p.phase == phase)
        .flat_map(|p| p.commands.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn hooks_run_where_the_roles_say_and_once_on_picks_the_first_host_with_the_role(
        host_roles in proptest::collection::vec(roles(), 1..5),
        restart in proptest::collection::vec(roles(), 0..4),
        before in proptest::collection::vec(
            proptest::option::of(proptest::sample::select(ROLES.to_vec())),
            0..3,
        ),
    ) {
        let before: Vec<Option<String>> =
            before.into_iter().map(|r| r.map(str::to_owned)).collect();
        let missing = before
            .iter()
            .flatten()
            .find(|r| !host_roles.iter().any(|h| h.contains(r)));
        let result = plan(&host_roles, &restart, &before);
        if let Some(role) = missing {
            // Refused before anything is read, naming the role.
            let is_no_host = matches!(&result, Err(DeployError::NoHostWithRole { role: r, .. }) if r == role);
            prop_assert!(is_no_host, "{:?}", result);
            return Ok(());
        }
        let plan = result.unwrap();
        prop_assert_eq!(plan.hosts.len(), host_roles.len());
        for (i, h) in host_roles.iter().enumerate() {
            prop_assert_eq!(&plan.hosts[i].host, &format!("h{i}"));
            prop_assert_eq!(&plan.hosts[i].roles, h);
            let ran = commands(&plan, i, Phase::Restart);
            for (j, r) in restart.iter().enumerate() {
                let runs = r.is_empty() || r.iter().any(|r| h.contains(r));
                prop_assert_eq!(ran.contains(&format!("r{j}")), runs, "r{} {:?} on h{} {:?}", j, r, i, h);
            }
        }
        for (j, r) in before.iter().enumerate() {
            let on: Vec<usize> = (0..host_roles.len())
                .filter(|&i| commands(&plan, i, Phase::BeforeSwitch).contains(&format!("m{j}")))
                .collect();
            let first = match r {
                Some(r) => host_roles.iter().position(|h| h.contains(r)).unwrap(),
                None => 0,
            };
            prop_assert_eq!(on, vec![first], "m{} once_on {:?}", j, r);
        }
    }
}

#[test]
fn role_less_hosts_run_role_less_hooks_only() {
    let plan = plan(
        &[Vec::new(), vec!["web".into()]],
        &[Vec::new(), vec!["web".into()], vec!["db".into()]],
        &[],
    )
    .unwrap();
    assert_eq!(commands(&plan, 0, Phase::Restart), ["r0"]);
    assert_eq!(commands(&plan, 1, Phase::Restart), ["r0", "r1"]);
}
