//! Deploys behind a load balancer: against moto's ELBv2 (a real target
//! group, its instances' addresses from moto's EC2), and against a fake of
//! the `TargetGroups` seam for what moto cannot show (targets that take
//! time to drain, a target that never becomes healthy: moto's targets are
//! healthy as soon as they are registered, and out of the group as soon as
//! they are deregistered).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploykit::Event;
use deploykit::balancer::LoadBalancer;
use deploykit::environment::LayoutKind;
use deploykit::{DeployError, HealthCheck, Host, Stage};
use ec2kit::{
    AwsEc2, AwsEc2Options, Ec2Error, RateLimits, Target, TargetGroup, TargetGroups, TargetHealth,
    TargetState, TargetType,
};
use ektool_tests::{moto_target_group, moto_url};

use crate::support::Fixture;

async fn aws() -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await
}

/// The fixture's hosts, named `deploy@<address>:22` after `addresses`
/// (their targets' addresses) while they are reached at the bench's sshds.
fn hosts_at(f: &Fixture, addresses: &[String]) -> Vec<Host> {
    f.hosts()
        .into_iter()
        .zip(addresses)
        .map(|(h, a)| h.named(format!("deploy@{a}:22")))
        .collect()
}

/// The load balancer events, as `step host…` lines, in order.
fn lb_steps(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Deregistered { hosts, .. } => Some(format!("deregistered {}", hosts.join(" "))),
            Event::Drained {
                hosts, complete, ..
            } => Some(format!("drained({complete}) {}", hosts.join(" "))),
            Event::Switched { host, .. } => Some(format!("switched {host}")),
            Event::SwitchedBack { host, .. } => Some(format!("switched back {host}")),
            Event::Registered { hosts, .. } => Some(format!("registered {}", hosts.join(" "))),
            Event::InService { hosts, .. } => Some(format!("in service {}", hosts.join(" "))),
            _ => None,
        })
        .collect()
}

fn unhealthy_check() -> HealthCheck {
    let mut check = HealthCheck::command("test ! -e ../../shared/unhealthy");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    check
}

/// Three hosts, the instances of a moto target group: one wave per host
/// (the default behind a load balancer), each deregistered, drained,
/// switched, registered again and healthy before the next. Then a health
/// check failing in batch 2 puts batch 1 back, and leaves every target
/// registered.
#[tokio::test]
async fn each_wave_leaves_the_target_group_and_a_failure_leaves_every_host_registered() {
    let f = Fixture::new(3);
    let group = moto_target_group(3, &[], 0);
    let aws = aws().await;
    let addresses: Vec<String> = group.instances.iter().map(|(_, ip)| ip.clone()).collect();
    let mut env = f.env(LayoutKind::Timestamped);
    env.health = Some(unhealthy_check());
    env.load_balancer = Some(LoadBalancer::new(group.arn.clone()));
    let d = f
        .deployer_on(env, hosts_at(&f, &addresses))
        .target_groups(Arc::new(aws.clone()))
        .ec2(Arc::new(aws.clone()));
    let names: Vec<String> = d.hosts().iter().map(|h| h.name().to_owned()).collect();

    // The plan names each host's target.
    let c1 = f.commit("good");
    let plan = d.deploy_plan(&f.release(&c1)).await.unwrap();
    let lb = plan
        .load_balancer
        .clone()
        .expect("the plan's load balancer steps");
    assert_eq!(lb.target_type, "instance");
    assert_eq!(lb.targets.len(), 3, "{lb:?}");
    assert!(lb.not_targets.is_empty());
    assert_eq!(plan.waves.len(), 3, "one host per wave: {:?}", plan.waves);
    let ids: BTreeMap<&str, &str> = group
        .instances
        .iter()
        .map(|(id, ip)| (ip.as_str(), id.as_str()))
        .collect();
    for (host, targets) in &lb.targets {
        let ip = host.trim_start_matches("deploy@").trim_end_matches(":22");
        assert_eq!(targets, &[format!("{}:80", ids[ip])], "{host}");
    }

    f.take_events();
    let good = d.deploy(&f.release(&c1)).await.unwrap().hosts[0]
        .release
        .clone();
    let mut want = Vec::new();
    for h in &names {
        want.extend([
            format!("deregistered {h}"),
            format!("drained(true) {h}"),
            format!("switched {h}"),
            format!("registered {h}"),
            format!("in service {h}"),
        ]);
    }
    assert_eq!(lb_steps(&f.take_events()), want);
    let health = aws.target_health(&group.arn, &[]).await.unwrap();
    assert_eq!(health.len(), 3);
    assert!(health.iter().all(|h| h.state == TargetState::Healthy));

    // Batch 2's host fails its health check.
    let second = d.hosts()[1].name().to_owned();
    let i = hosts_at(&f, &addresses)
        .iter()
        .position(|h| h.name() == second)
        .unwrap();
    std::fs::write(f.local(i, "shared/unhealthy"), "").unwrap();
    let c2 = f.commit("bad in batch 2");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    let DeployError::Failed {
        stage, rolled_back, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::Health);
    assert_eq!(rolled_back.len(), 3, "{err}");
    let steps = lb_steps(&f.take_events());
    let (first, third) = (&names[0], &names[2]);
    for step in [
        format!("in service {first}"),
        format!("deregistered {second}"),
        format!("switched {second}"),
        format!("switched back {first}"),
        format!("registered {second}"),
    ] {
        assert!(steps.contains(&step), "{step} missing: {steps:?}");
    }
    assert!(
        !steps.contains(&format!("deregistered {third}")),
        "batch 3 never left the group: {steps:?}"
    );
    for i in 0..3 {
        assert_eq!(f.current(i).as_deref(), Some(good.as_str()), "host {i}");
    }
    let health = aws.target_health(&group.arn, &[]).await.unwrap();
    assert_eq!(health.len(), 3, "every target registered again: {health:?}");
}

/// A fake target group for what moto cannot show: a deregistered target
/// drains for `drain_reads` health reads; a registered one becomes healthy
/// at once unless it is in `never_healthy`.
#[derive(Default)]
struct Fake {
    state: Mutex<BTreeMap<String, (TargetState, u32)>>,
    drain_reads: u32,
    never_healthy: Vec<String>,
}

impl Fake {
    fn with(targets: &[&str], drain_reads: u32, never_healthy: &[&str]) -> Self {
        Self {
            state: Mutex::new(
                targets
                    .iter()
                    .map(|t| ((*t).to_owned(), (TargetState::Healthy, 0)))
                    .collect(),
            ),
            drain_reads,
            never_healthy: never_healthy.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn registered(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.iter()
            .filter(|(_, (st, _))| *st != TargetState::NotRegistered)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

const ARN: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef";

#[async_trait]
impl TargetGroups for Fake {
    async fn describe_target_group(&self, arn: &str) -> Result<TargetGroup, Ec2Error> {
        Ok(TargetGroup {
            arn: arn.to_owned(),
            name: "web".into(),
            target_type: TargetType::Ip,
            port: Some(80),
            deregistration_delay: Duration::from_secs(30),
        })
    }

    async fn target_health(
        &self,
        _arn: &str,
        targets: &[Target],
    ) -> Result<Vec<TargetHealth>, Ec2Error> {
        let mut s = self.state.lock().unwrap();
        let mut out = Vec::new();
        for (id, (state, reads)) in s.iter_mut() {
            if !targets.is_empty() && !targets.iter().any(|t| &t.id == id) {
                continue;
            }
            if *state == TargetState::Draining {
                *reads += 1;
                if *reads > self.drain_reads {
                    *state = TargetState::NotRegistered;
                }
            }
            out.push(TargetHealth {
                target: Target::new(id.clone()).on_port(Some(80)),
                state: *state,
                reason: None,
            });
        }
        Ok(out)
    }

    async fn register_targets(&self, _arn: &str, targets: &[Target]) -> Result<(), Ec2Error> {
        let mut s = self.state.lock().unwrap();
        for t in targets {
            let state = if self.never_healthy.contains(&t.id) {
                TargetState::Unhealthy
            } else {
                TargetState::Healthy
            };
            s.insert(t.id.clone(), (state, 0));
        }
        Ok(())
    }

    async fn deregister_targets(&self, _arn: &str, targets: &[Target]) -> Result<(), Ec2Error> {
        let mut s = self.state.lock().unwrap();
        for t in targets {
            s.insert(t.id.clone(), (TargetState::Draining, 0));
        }
        Ok(())
    }
}

/// Draining takes a few reads: each wave switches only once its targets
/// are out of the group; past the drain wait it switches anyway. A target that never becomes healthy again fails
/// the deploy at the load balancer stage: every host is switched back, and
/// every target is registered.
#[tokio::test]
async fn a_wave_waits_for_draining_and_a_target_never_healthy_again_fails_the_deploy() {
    let f = Fixture::new(2);
    let addresses = ["10.0.0.1".to_owned(), "10.0.0.2".to_owned()];
    let mut env = f.env(LayoutKind::Timestamped);
    let mut lb = LoadBalancer::new(ARN);
    lb.healthy_timeout = Duration::from_millis(300).into();
    env.load_balancer = Some(lb);
    let fake = Arc::new(Fake::with(&["10.0.0.1", "10.0.0.2"], 1, &[]));
    let d = f
        .deployer_on(env.clone(), hosts_at(&f, &addresses))
        .target_groups(fake.clone());
    let c1 = f.commit("good");
    f.take_events();
    d.deploy(&f.release(&c1)).await.unwrap();
    let events = f.take_events();
    let steps = lb_steps(&events);
    assert_eq!(
        steps[..3],
        [
            "deregistered deploy@10.0.0.1:22".to_owned(),
            "drained(true) deploy@10.0.0.1:22".to_owned(),
            "switched deploy@10.0.0.1:22".to_owned(),
        ]
    );
    let drained: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Drained { seconds, .. } => Some(*seconds),
            _ => None,
        })
        .collect();
    assert_eq!(drained.len(), 2);
    assert_eq!(fake.registered().len(), 2);

    // Targets that drain longer than the drain wait: each wave switches
    // when the wait runs out, and says so.
    let fake = Arc::new(Fake::with(&["10.0.0.1", "10.0.0.2"], u32::MAX, &[]));
    let d = f
        .deployer_on(env.clone(), hosts_at(&f, &addresses))
        .target_groups(fake.clone())
        .drain_timeout(Duration::from_millis(200));
    let c = f.commit("slow to drain");
    let good = d.deploy(&f.release(&c)).await.unwrap().hosts[0]
        .release
        .clone();
    let steps = lb_steps(&f.take_events());
    assert!(
        steps.contains(&"drained(false) deploy@10.0.0.1:22".to_owned())
            && steps.contains(&"drained(false) deploy@10.0.0.2:22".to_owned()),
        "{steps:?}"
    );
    assert_eq!(fake.registered().len(), 2);

    // 10.0.0.2 never becomes healthy in the group again.
    let fake = Arc::new(Fake::with(&["10.0.0.1", "10.0.0.2"], 0, &["10.0.0.2"]));
    let d = f
        .deployer_on(env, hosts_at(&f, &addresses))
        .target_groups(fake.clone());
    let c2 = f.commit("never healthy behind the balancer");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    let DeployError::Failed {
        stage,
        rolled_back,
        failures,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::LoadBalancer, "{err}");
    assert_eq!(failures[0].host, "deploy@10.0.0.2:22");
    assert!(failures[0].error.contains("not healthy"), "{err}");
    assert_eq!(rolled_back.len(), 2, "{err}");
    for i in 0..2 {
        assert_eq!(f.current(i).as_deref(), Some(good.as_str()), "host {i}");
    }
    assert_eq!(fake.registered().len(), 2, "every target registered");
}

/// Without a client for the target group the deploy refuses before any
/// host is locked or changed.
#[tokio::test]
async fn a_load_balancer_without_a_client_is_refused_before_anything_changes() {
    let f = Fixture::new(1);
    let mut env = f.env(LayoutKind::Timestamped);
    env.load_balancer = Some(LoadBalancer::new(ARN));
    let d = f.deployer(env);
    let c1 = f.commit("x");
    let err = d.deploy(&f.release(&c1)).await.unwrap_err();
    assert!(matches!(err, DeployError::LoadBalancer(_)), "{err}");
    assert_eq!(f.current(0), None);
}
