//! Seeding moto for CLI tests, through ec2kit itself.

use ec2kit::requests::RunInstances;
use ec2kit::{AwsEc2, AwsEc2Options, Ec2, Instance, RateLimits, Region, Tags};
use ektool_tests::moto_url;

/// An unpaced client for the bench's moto.
pub(crate) async fn ec2() -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await
}

/// `n` account ids no other test (nor an earlier run against the same
/// moto) uses: this process's id and one counter for every test.
pub(crate) fn fresh_accounts(n: u64) -> Vec<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = NEXT.fetch_add(n, Ordering::SeqCst);
    let seed = u64::from(std::process::id()) % 10_000_000 * 1000;
    (start..start + n)
        .map(|i| format!("{:012}", 300_000_000_000 + seed + i))
        .collect()
}

/// ektool's role in `account` (moto trusts any role name).
pub(crate) fn role(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/ektool")
}

/// An unpaced client working as `role_arn`, in its account's own state.
pub(crate) async fn ec2_as(role_arn: String) -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        role_arn: Some(role_arn),
        ..Default::default()
    })
    .await
}

/// An unpaced client in `account` (as [`role`]).
pub(crate) async fn ec2_in(account: &str) -> AwsEc2 {
    ec2_as(role(account)).await
}

/// Launches `count` instances carrying `tags` in `region`.
pub(crate) async fn launch(region: &str, count: i32, tags: Tags) -> Vec<Instance> {
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count,
        tags,
        ..Default::default()
    };
    ec2()
        .await
        .run_instances(&Region::new(region), &request)
        .await
        .unwrap()
}

/// Launches one instance carrying `tags` in `region` at private address
/// `ip` (moto takes any, so `127.0.0.1` makes it a bench host).
pub(crate) async fn launch_at(region: &str, ip: &str, tags: Tags) -> Instance {
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count: 1,
        private_ip: Some(ip.parse().unwrap()),
        tags,
        ..Default::default()
    };
    let mut launched = ec2()
        .await
        .run_instances(&Region::new(region), &request)
        .await
        .unwrap();
    launched.remove(0)
}
