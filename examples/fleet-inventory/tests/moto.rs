//! The example, built and run as a team runs it, against the bench's moto
//! (`AWS_ENDPOINT_URL_EC2`, as its docs say): the instances carrying a tag
//! are listed with their region, and a region whose `DescribeInstances`
//! fails is one error line and a non-zero exit.

// A test fails loudly at the first broken step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::{Command, Output};

use ec2kit::requests::RunInstances;
use ec2kit::{AwsEc2, AwsEc2Options, Ec2, InstanceId, RateLimits, Region, Tags};
use ektool_tests::{Fault, FaultProxy, moto_url, unique};

/// Regions no other test launches instances in (the tag is unique anyway).
const REGIONS: [&str; 2] = ["ap-northeast-1", "sa-east-1"];

/// Launches `count` instances tagged `key=yes` in `region`.
async fn launch(ec2: &AwsEc2, region: &str, key: &str, count: i32) -> Vec<InstanceId> {
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count,
        tags: Tags::new().with(key, "yes").with("Name", "web"),
        ..Default::default()
    };
    let made = ec2.run_instances(&Region::new(region), &request).await;
    made.unwrap().into_iter().map(|i| i.id).collect()
}

/// Runs the example with `args` against `endpoint`.
fn inventory(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-inventory"))
        .args(args)
        .env("AWS_ENDPOINT_URL_EC2", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn lists_the_tagged_instances_of_every_region_and_reports_a_failing_one() {
    let ec2 = AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await;
    let key = unique("fleet");
    let mut expected = BTreeSet::new();
    for (region, count) in REGIONS.iter().zip([2, 1]) {
        for id in launch(&ec2, region, &key, count).await {
            expected.insert(format!("{region}\t{id}\trunning\tweb"));
        }
    }

    let tag = format!("{key}=yes");
    let out = inventory(&moto_url(), &[&tag]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let listed: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, expected, "{stderr}");

    // Every region's DescribeInstances refused: one line per region, the
    // region named, no instance listed, exit 1.
    let proxy = FaultProxy::start(&moto_url());
    proxy.set("DescribeInstances", Fault::Throttle { rate: 1.0 });
    let out = inventory(&proxy.url(), &[&tag]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for region in REGIONS {
        let line = format!("error: DescribeInstances in {region}: ");
        assert!(stderr.lines().any(|l| l.starts_with(&line)), "{stderr}");
    }
    assert!(proxy.counts("DescribeRegions").forwarded >= 1);
}

#[test]
fn a_tag_without_a_value_is_a_usage_error() {
    let out = inventory("http://127.0.0.1:1", &["Earmarking"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("usage: fleet-inventory KEY=VALUE"),
        "{stderr}"
    );
}
