//! Deploys behind a load balancer, on a fake of the `TargetGroups` seam for
//! what moto cannot show (targets that take time to drain, a target that
//! never becomes healthy: moto's are healthy as soon as they are
//! registered, and out of the group as soon as they are deregistered).
//! Against moto's ELBv2 itself: `tests/integration/balancer.rs` (the
//! cross-crate tests: deploykit's never compile the AWS SDK).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deploykit::Event;
use deploykit::balancer::LoadBalancer;
use deploykit::environment::LayoutKind;
use deploykit::{DeployError, Host, Stage};
use ec2kit::{Ec2Error, Target, TargetGroup, TargetGroups, TargetHealth, TargetState, TargetType};

use crate::support::Fixture;

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

/// A signal while the second wave drains: the first wave is switched
/// back, and the second wave's target registered again.
#[tokio::test]
async fn an_interruption_while_draining_puts_every_host_back_and_registered() {
    let f = Fixture::new(2);
    let addresses = ["10.0.0.1".to_owned(), "10.0.0.2".to_owned()];
    let mut env = f.env(LayoutKind::Timestamped);
    env.load_balancer = Some(LoadBalancer::new(ARN));
    let fake = Arc::new(Fake::with(&["10.0.0.1", "10.0.0.2"], 0, &[]));
    let d = f
        .deployer_on(env.clone(), hosts_at(&f, &addresses))
        .target_groups(fake);
    let c1 = f.commit("good");
    let good = d.deploy(&f.release(&c1)).await.unwrap().hosts[0]
        .release
        .clone();

    // Draining never ends (the first wave switches when the drain wait
    // runs out): the signal comes as the second wave leaves the group.
    let fake = Arc::new(Fake::with(&["10.0.0.1", "10.0.0.2"], u32::MAX, &[]));
    let mut env = env;
    if let Some(lb) = &mut env.load_balancer {
        lb.drain_timeout = Some(Duration::from_millis(200).into());
    }
    let cancel = ec2kit::CancellationToken::new();
    let (events, on_signal) = (f.events.clone(), cancel.clone());
    let d = deploykit::Deployer::new("staging", env, hosts_at(&f, &addresses))
        .target_groups(fake.clone())
        .cancel_on(cancel)
        .on_event(move |e| {
            if let Event::Deregistered { hosts, .. } = e
                && hosts == &["deploy@10.0.0.2:22".to_owned()]
            {
                on_signal.cancel();
            }
            events.lock().unwrap().push(e.clone());
        });
    f.take_events();
    let c2 = f.commit("interrupted");
    let err = d.deploy(&f.release(&c2)).await.unwrap_err();
    let DeployError::Interrupted {
        stage, rolled_back, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::LoadBalancer);
    assert_eq!(rolled_back.len(), 2, "{err}");
    let steps = lb_steps(&f.take_events());
    assert!(
        steps.contains(&"switched deploy@10.0.0.1:22".to_owned())
            && !steps.contains(&"switched deploy@10.0.0.2:22".to_owned())
            && !steps.contains(&"drained(false) deploy@10.0.0.2:22".to_owned())
            && steps.last() == Some(&"registered deploy@10.0.0.2:22".to_owned()),
        "{steps:?}"
    );
    for i in 0..2 {
        assert_eq!(f.current(i).as_deref(), Some(good.as_str()), "host {i}");
    }
    assert_eq!(fake.registered().len(), 2, "every target registered");
}
