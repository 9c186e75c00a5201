//! A deploy behind a load balancer, across deploykit, ec2kit's
//! aws-sdk-elasticloadbalancingv2 client and moto's ELBv2: the bench's
//! sshd hosts are the instances of a moto target group (deploykit's own
//! tests use a fake of the seam, and never compile the AWS SDK).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploykit::balancer::LoadBalancer;
use deploykit::{DeployError, Deployer, Environment, Event, HealthCheck, Host, Release, Stage};
use ec2kit::{
    AwsEc2, AwsEc2Options, RateLimits, SshOptions, SshRemote, SshTarget, TargetGroups, TargetState,
};
use ektool_tests::{
    SshHost, git, moto_target_group, moto_url, origin_and_clone, ssh_host, tempdir, unique,
};

fn remote(host: &SshHost, dir: &Path) -> Arc<SshRemote> {
    let kh = dir.join(format!("known_hosts_{}", host.n));
    std::fs::write(&kh, format!("{}\n", host.known_hosts_line())).unwrap();
    Arc::new(SshRemote::new(
        SshTarget::parse_with_user(&host.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![host.client_key.clone()],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(10),
        },
    ))
}

fn commit(work: &Path, content: &str) -> String {
    std::fs::write(work.join("app.txt"), content).unwrap();
    git(work, &["add", "app.txt"]);
    git(work, &["commit", "--quiet", "-m", content]);
    git(work, &["push", "--quiet", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
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

/// Three hosts, the instances of a moto target group (named after the
/// instances' private IPs, reached at the bench's sshds): one wave per
/// host (the default behind a load balancer), each deregistered, drained,
/// switched, registered again and healthy before the next; the plan names
/// each host's target. Then a health check failing in batch 2 puts batch 1
/// back, batch 3 never leaves the group, and every target is registered
/// again.
#[tokio::test]
async fn each_wave_leaves_the_target_group_and_a_failure_leaves_every_host_registered() {
    let dir = tempdir();
    let work = origin_and_clone(dir.path());
    let origin = dir.path().join("origin.git");
    let name = unique("lb");
    let bench: Vec<SshHost> = (1..=3).map(ssh_host).collect();
    let group = moto_target_group(3, &[], 0);
    let aws = AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await;
    let root = format!("{}/{name}", SshHost::MOUNT);
    // Host i: bench sshd i, named after instance i's private IP.
    let hosts: Vec<Host> = bench
        .iter()
        .zip(&group.instances)
        .map(|(b, (_, ip))| {
            Host::new(remote(b, dir.path()), root.clone()).named(format!("deploy@{ip}:22"))
        })
        .collect();
    let index = |host: &str| hosts.iter().position(|h| h.name() == host).unwrap();
    let mut env = Environment::new(Vec::new(), &root).unwrap();
    env.repository = Some(origin.display().to_string());
    let mut check = HealthCheck::command("test ! -e ../../shared/unhealthy");
    check.interval_ms = 100;
    check.deadline_seconds = 1;
    env.health = Some(check);
    env.load_balancer = Some(LoadBalancer::new(group.arn.clone()));
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let recorded = events.clone();
    let d = Deployer::new("staging", env, hosts.clone())
        .on_event(move |e| recorded.lock().unwrap().push(e.clone()))
        .target_groups(Arc::new(aws.clone()))
        .ec2(Arc::new(aws.clone()));
    let take = || std::mem::take(&mut *events.lock().unwrap());
    let names: Vec<String> = d.hosts().iter().map(|h| h.name().to_owned()).collect();
    let current = |host: &str| {
        std::fs::read_link(bench[index(host)].local_path(&format!("{name}/current")))
            .ok()
            .map(|t| t.display().to_string())
    };

    let c1 = commit(&work, "good");
    let plan = d.deploy_plan(&Release::commit(&c1)).await.unwrap();
    let lb = plan
        .load_balancer
        .clone()
        .expect("the plan's load balancer steps");
    assert_eq!(lb.target_type, "instance");
    assert!(lb.not_targets.is_empty());
    assert_eq!(plan.waves.len(), 3, "one host per wave: {:?}", plan.waves);
    for (id, ip) in &group.instances {
        assert_eq!(lb.targets[&format!("deploy@{ip}:22")], [format!("{id}:80")]);
    }

    take();
    d.deploy(&Release::commit(&c1)).await.unwrap();
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
    assert_eq!(lb_steps(&take()), want);
    let good: Vec<Option<String>> = names.iter().map(|h| current(h)).collect();
    let health = aws.target_health(&group.arn, &[]).await.unwrap();
    assert_eq!(health.len(), 3);
    assert!(health.iter().all(|h| h.state == TargetState::Healthy));

    // Batch 2's host fails its health check.
    let (first, second, third) = (&names[0], &names[1], &names[2]);
    let shared = bench[index(second)].local_path(&format!("{name}/shared/unhealthy"));
    std::fs::write(shared, "").unwrap();
    let c2 = commit(&work, "bad in batch 2");
    let err = d.deploy(&Release::commit(&c2)).await.unwrap_err();
    let DeployError::Failed {
        stage, rolled_back, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*stage, Stage::Health);
    assert_eq!(rolled_back.len(), 3, "{err}");
    let steps = lb_steps(&take());
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
    let now: Vec<Option<String>> = names.iter().map(|h| current(h)).collect();
    assert_eq!(now, good, "every host on the good release again");
    let health = aws.target_health(&group.arn, &[]).await.unwrap();
    assert_eq!(health.len(), 3, "every target registered again: {health:?}");
    for b in &bench {
        let _ = std::fs::remove_dir_all(b.local_path(&name));
    }
}
