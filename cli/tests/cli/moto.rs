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
