//! A starting "fabfile": list the instances carrying a tag in every region.
//!
//! Copy this crate, rename it, and grow it into your team's own tool. It is
//! the whole program a fleet inventory needs: one `DescribeRegions`, then
//! one filtered, paginated `DescribeInstances` per region, at most eight
//! regions at a time; a region that fails is reported and the rest listed.
//!
//! Run with:
//!
//! ```text
//! cargo run -p fleet-inventory -- Earmarking=production
//! # against the local bench (scripts/testbed up && source .testbed/env):
//! AWS_ENDPOINT_URL_EC2=$EKTOOL_TEST_MOTO_URL cargo run -p fleet-inventory -- Earmarking=production
//! ```

use std::process::ExitCode;

use ec2kit::{AwsEc2, AwsEc2Options, Tag, fleet};

#[tokio::main]
async fn main() -> ExitCode {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Earmarking=production".to_owned());
    let tag: Tag = match arg.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("usage: fleet-inventory KEY=VALUE\nerror: {e}");
            return ExitCode::from(2);
        }
    };

    let ec2 = AwsEc2::new(AwsEc2Options::default()).await;
    let catalog = match fleet::region_catalog(&ec2).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let regions: Vec<_> = catalog.enabled().cloned().collect();

    let mut failed = false;
    for region in
        fleet::instances_by_tag(&ec2, &regions, &tag, fleet::DEFAULT_REGION_CONCURRENCY).await
    {
        match region.result {
            Ok(instances) => {
                for i in instances {
                    println!(
                        "{}\t{}\t{}\t{}",
                        region.region,
                        i.id,
                        i.state,
                        i.name().unwrap_or("-")
                    );
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
