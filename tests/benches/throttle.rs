//! Throttling must not stall: `snap trim` and `snap backup` (the snapkit
//! jobs, through `AwsEc2` with AWS's own bucket sizes) against moto behind
//! the fault proxy answering a share of all requests with
//! `RequestLimitExceeded`. Prints each run's wall time against its pacing
//! minimum (what the client-side rate limiter alone makes it take); the
//! target is ≤ 1.3× at 10 % throttled.
//!
//! moto answers more slowly as a region fills up (it keeps terminated
//! instances), so the figures are truest on a freshly started bench; the
//! last lines print what throttling itself costs over the same job run
//! unthrottled, which does not depend on that.
//!
//! Needs the bench (`scripts/testbed up`, `source .testbed/env`):
//! `cargo bench -p ektool-tests --bench throttle` (`-- N` for N items,
//! default 228).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ec2kit::requests::{CreateSnapshot, RunInstances};
use ec2kit::{Action, AwsEc2, AwsEc2Options, Ec2, Filter, RateLimits, Region, Tags};
use ektool_tests::{Fault, FaultProxy, moto_url, unique};
use snapkit::backup::{BackupOptions, backup_instances};
use snapkit::retention::{Gfs, Guards, Planner};

async fn direct() -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await
}

/// Deletes what a run left in `region` (moto slows down as a region fills
/// up, which would blur later runs): the snapshots tagged `key` and the
/// instances.
async fn clean_up(region: &Region, key: &str, instances: &[ec2kit::InstanceId]) {
    let direct = direct().await;
    for s in direct
        .describe_snapshots(region, &[Filter::tag_key(key.to_owned())])
        .await
        .unwrap()
    {
        direct.delete_snapshot(region, &s.id, false).await.unwrap();
    }
    for chunk in instances.chunks(500) {
        direct
            .terminate_instances(region, chunk, false)
            .await
            .unwrap();
    }
}

async fn client(endpoint: String) -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(endpoint),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::aws()),
        ..Default::default()
    })
    .await
}

/// `n` owned snapshots of one volume, tagged `key`, in `region`; returns
/// the instance made for the volume.
async fn seed_snapshots(region: &Region, key: &str, n: usize) -> ec2kit::InstanceId {
    let direct = direct().await;
    let inst = direct
        .run_instances(
            region,
            &RunInstances {
                image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
                instance_type: "t3.micro".into(),
                count: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .remove(0);
    let volume = inst.root_volume().unwrap().clone();
    for _ in 0..n {
        direct
            .create_snapshot(
                region,
                &CreateSnapshot {
                    volume_id: Some(volume.clone()),
                    tags: Tags::new()
                        .with("ektool:owner", "ektool")
                        .with("ektool:volume", volume.as_str())
                        .with(key, "yes"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    inst.id
}

/// A trim as `ektool snap trim --keep-last 1` runs it, limited to this
/// run's snapshots: inventory, AMI map, plan, deletes (concurrency 8).
async fn trim(ec2: &AwsEc2, region: &Region, key: &str) -> (usize, usize) {
    let snapshots: Vec<_> = snapkit::trim::inventory(ec2, region, snapkit::trim::Scope::Owned)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.tags.get(key).is_some())
        .collect();
    let ami = snapkit::trim::ami_backed(ec2, region).await.unwrap();
    let policy = Gfs {
        keep_last: Some(1),
        ..Default::default()
    };
    let plan = Planner::new(&policy)
        .with_guards(Guards {
            ami_backed: Some(ami),
            ..Guards::default()
        })
        .plan(&snapshots, jiff::Timestamp::now());
    let report = snapkit::trim::apply(ec2, &plan, region, 8, &|_| {}).await;
    (report.deleted(), report.failed())
}

/// One run's figures.
struct Run<'a> {
    what: &'a str,
    n: usize,
    rate: f64,
    took: Duration,
    minimum: Duration,
    ok: usize,
    failed: usize,
}

fn figures(run: Run<'_>, proxy: &FaultProxy) -> Duration {
    let Run {
        what,
        n,
        rate,
        took,
        minimum,
        ok,
        failed,
    } = run;
    let throttled: usize = proxy.all_counts().values().map(|c| c.throttled).sum();
    let forwarded: usize = proxy.all_counts().values().map(|c| c.forwarded).sum();
    println!(
        "{what}: {n} items at {:.0} % throttled: {:.1} s, pacing minimum {:.1} s, ratio {:.2}; \
         {ok} done, {failed} failed; {forwarded} requests forwarded, {throttled} throttled",
        rate * 100.0,
        took.as_secs_f64(),
        minimum.as_secs_f64(),
        took.as_secs_f64() / minimum.as_secs_f64().max(0.001),
    );
    took
}

async fn bench_trim(n: usize, rate: f64) -> Duration {
    // A region no test uses: its state stays small.
    let region = Region::new("eu-central-2");
    let key = unique("bench-trim");
    let instance = seed_snapshots(&region, &key, n + 1).await;
    let proxy = FaultProxy::start(&moto_url());
    proxy.set_all(Fault::Throttle { rate });
    let ec2 = client(proxy.url()).await;
    let minimum = RateLimits::aws()
        .bucket(Action::DeleteSnapshot)
        .unwrap()
        .minimum_time(n as u64);
    let start = Instant::now();
    let (deleted, failed) = trim(&ec2, &region, &key).await;
    let took = figures(
        Run {
            what: "trim",
            n,
            rate,
            took: start.elapsed(),
            minimum,
            ok: deleted,
            failed,
        },
        &proxy,
    );
    clean_up(&region, &key, &[instance]).await;
    took
}

async fn bench_backup(n: usize, rate: f64) -> Duration {
    let region = Region::new("ap-south-2");
    let direct = direct().await;
    let key = unique("bench-backup");
    let instances = direct
        .run_instances(
            &region,
            &RunInstances {
                image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
                instance_type: "t3.micro".into(),
                count: n as i32,
                tags: Tags::new().with(key.clone(), "yes"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let proxy = FaultProxy::start(&moto_url());
    proxy.set_all(Fault::Throttle { rate });
    let ec2 = client(proxy.url()).await;
    let minimum = RateLimits::aws()
        .bucket(Action::CreateSnapshots)
        .unwrap()
        .minimum_time(n as u64);
    let start = Instant::now();
    let found = ec2
        .describe_instances(&region, &[Filter::tag_key(key.clone())])
        .await
        .unwrap();
    assert_eq!(found.len(), instances.len());
    let results = backup_instances(&ec2, &region, &found, &BackupOptions::default()).await;
    let failed = results
        .iter()
        .filter(|r| matches!(r.status, snapkit::backup::BackupStatus::Failed { .. }))
        .count();
    let took = figures(
        Run {
            what: "backup",
            n,
            rate,
            took: start.elapsed(),
            minimum,
            ok: results.len() - failed,
            failed,
        },
        &proxy,
    );
    // The snapshots carry the instances' tags (the key) through the backup.
    let ids: Vec<_> = instances.iter().map(|i| i.id.clone()).collect();
    clean_up(&region, &key, &ids).await;
    took
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if ektool_tests::full_bench() { 228 } else { 12 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (trim0, backup0) = (bench_trim(n, 0.0).await, bench_backup(n, 0.0).await);
        let (trim10, backup10) = (bench_trim(n, 0.10).await, bench_backup(n, 0.10).await);
        // What throttling itself costs, over the same job unthrottled (the
        // rest is moto's own time and this machine's load).
        for (what, base, hit) in [("trim", trim0, trim10), ("backup", backup0, backup10)] {
            println!(
                "{what}: 10 % throttled costs {:+.1} s ({:+.0} %) over unthrottled",
                hit.as_secs_f64() - base.as_secs_f64(),
                100.0 * (hit.as_secs_f64() / base.as_secs_f64() - 1.0),
            );
        }
    });
}
