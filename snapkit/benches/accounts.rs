//! Many accounts, one run: 50 accounts x 17 regions x 100 instances
//! against a simulated EC2 with AWS's token buckets per account, region and
//! action (a request finding its bucket empty is refused with
//! `RequestLimitExceeded`) and 30 ms a call, on tokio's paused clock
//! (virtual time: the figures are exact and the run takes seconds).
//!
//! Each account gets a client of its own, paced by its own limiter (as
//! each account's `AwsEc2` is): `ec2kit::accounts::each_account` over
//! accounts, `ec2kit::fleet::each_region` inside each. The work of one
//! account-region is shaped like a nightly backup and trim: list the
//! instances, one `CreateSnapshots` per instance, list the snapshots, then
//! delete the old ones (100, 200 or 300 depending on the account-region:
//! the biggest trims take 40 s of `DeleteSnapshot` bucket alone).
//!
//! Prints the makespan against the slowest account-region's own minimum
//! (that account-region run alone with the same client; target <= 1.1x)
//! and the throttling errors surfaced (target 0), with all accounts at
//! once and with the default concurrency.
//!
//! `cargo bench -p snapkit --bench accounts`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2kit::accounts::{self, AccountId};
use ec2kit::requests::CreateSnapshots;
use ec2kit::{
    Action, Ec2, Ec2Error, ErrorKind, Instance, InstanceId, Latency, MockEc2, Paced, RateLimits,
    Region, Snapshot, SnapshotId, SnapshotState, fleet, ratelimit,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::time::Instant;

const ACCOUNTS: usize = 50;
const REGIONS: usize = 17;
const INSTANCES: usize = 100;
const LATENCY: Duration = Duration::from_millis(30);
/// Requests in flight per account-region.
const IN_REGION: usize = 16;

/// A bucket's key (account, region, action) and state (tokens, last refill).
type Buckets = HashMap<(String, String, Action), (f64, Instant)>;

/// AWS's side: a token bucket per account, region and action.
#[derive(Default)]
struct Server {
    buckets: Mutex<Buckets>,
    refused: AtomicUsize,
    served: AtomicUsize,
}

impl Server {
    fn admit(&self, account: &str, region: &Region, action: Action) -> Result<(), Ec2Error> {
        let bucket = ratelimit::aws_bucket(action);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        let (tokens, last) = buckets
            .entry((account.to_owned(), region.to_string(), action))
            .or_insert((bucket.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * bucket.per_second)
            .min(bucket.burst);
        *last = now;
        // A hair of tolerance for floating point, not for early requests.
        if *tokens < 1.0 - 1e-9 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Ec2Error::from_code(
                action,
                region.as_str(),
                "RequestLimitExceeded",
                None,
            ));
        }
        *tokens -= 1.0;
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// How many old snapshots an account-region trims: 100, 200 or 300.
fn old_snapshots(account: usize, region: usize) -> usize {
    100 * (1 + (account + region) % 3)
}

fn region_index(region: &Region) -> usize {
    region.as_str()[2..].parse().unwrap()
}

/// One account's EC2: the shared server behind 30 ms of latency and the
/// account's own client-side limiter.
fn client(server: &Arc<Server>, account: usize, limits: RateLimits) -> Paced<Latency<MockEc2>> {
    let id = format!("{account:012}");
    let mut mock = MockEc2::new();
    let (s, a) = (server.clone(), id.clone());
    mock.expect_describe_instances()
        .returning(move |region, _| {
            s.admit(&a, region, Action::DescribeInstances)?;
            Ok((0..INSTANCES)
                .map(|i| Instance::new(InstanceId::from_api(format!("i-{i:08x}")), region.clone()))
                .collect())
        });
    let (s, a) = (server.clone(), id.clone());
    mock.expect_create_snapshots().returning(move |region, _| {
        s.admit(&a, region, Action::CreateSnapshots)?;
        Ok(Vec::new())
    });
    let (s, a) = (server.clone(), id.clone());
    mock.expect_describe_snapshots()
        .returning(move |region, _| {
            s.admit(&a, region, Action::DescribeSnapshots)?;
            let old = old_snapshots(account, region_index(region));
            Ok((0..old)
                .map(|i| {
                    Snapshot::new(
                        SnapshotId::from_api(format!("snap-{i:08x}")),
                        None,
                        jiff::Timestamp::UNIX_EPOCH,
                        SnapshotState::Completed,
                    )
                })
                .collect())
        });
    let (s, a) = (server.clone(), id);
    mock.expect_delete_snapshot()
        .returning(move |region, _, _| s.admit(&a, region, Action::DeleteSnapshot));
    Paced::new(Latency::new(mock, LATENCY), limits, Region::new("r-0"))
}

/// One account-region's backup and trim.
async fn work(ec2: &dyn Ec2, region: &Region) -> Result<(), Ec2Error> {
    let instances = ec2.describe_instances(region, &[]).await?;
    stream::iter(instances)
        .map(|i| async move {
            let request = CreateSnapshots {
                instance_id: Some(i.id),
                ..CreateSnapshots::default()
            };
            ec2.create_snapshots(region, &request).await.map(drop)
        })
        .buffer_unordered(IN_REGION)
        .try_collect::<Vec<()>>()
        .await?;
    let old = ec2.describe_snapshots(region, &[]).await?;
    stream::iter(old)
        .map(|s| async move { ec2.delete_snapshot(region, &s.id, false).await })
        .buffer_unordered(IN_REGION)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

struct Run {
    makespan: Duration,
    slowest: Duration,
    refused: usize,
    surfaced: usize,
    served: usize,
}

/// Every account x region at `account_concurrency` x `region_concurrency`.
async fn run(account_concurrency: usize, region_concurrency: usize, limits: RateLimits) -> Run {
    let server = Arc::new(Server::default());
    let ids: Vec<AccountId> = (0..ACCOUNTS)
        .map(|a| format!("{a:012}").parse().unwrap())
        .collect();
    let regions: Vec<Region> = (0..REGIONS)
        .map(|r| Region::new(format!("r-{r}")))
        .collect();
    let clients: Vec<_> = (0..ACCOUNTS)
        .map(|a| client(&server, a, limits.clone()))
        .collect();
    let start = Instant::now();
    let results = accounts::each_account(&ids, account_concurrency, |id| {
        let ec2 = &clients[id.as_str().parse::<usize>().unwrap()];
        let regions = &regions;
        async move {
            let out = fleet::each_region(regions, region_concurrency, |r| {
                let start = Instant::now();
                async move {
                    work(ec2, r).await?;
                    Ok(start.elapsed())
                }
            })
            .await;
            Ok::<_, Ec2Error>(out)
        }
    })
    .await;
    let makespan = start.elapsed();
    let mut surfaced = 0;
    let mut slowest_pair = (0, 0, Duration::ZERO);
    for (a, account) in results.into_iter().enumerate() {
        for (r, region) in account.result.unwrap().into_iter().enumerate() {
            match region.result {
                Ok(took) if took > slowest_pair.2 => slowest_pair = (a, r, took),
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
                    surfaced += 1;
                }
            }
        }
    }
    // The slowest kind of account-region (the most to trim), alone.
    let (a, r) = (0..ACCOUNTS)
        .flat_map(|a| (0..REGIONS).map(move |r| (a, r)))
        .max_by_key(|&(a, r)| old_snapshots(a, r))
        .unwrap();
    let alone_server = Arc::new(Server::default());
    let alone = client(&alone_server, a, RateLimits::aws());
    let t = Instant::now();
    work(&alone, &Region::new(format!("r-{r}"))).await.unwrap();
    let slowest = t.elapsed();
    Run {
        makespan,
        slowest,
        refused: server.refused.load(Ordering::Relaxed),
        surfaced,
        served: server.served.load(Ordering::Relaxed),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let bound = ratelimit::aws_bucket(Action::DeleteSnapshot).minimum_time(300);
    println!(
        "{ACCOUNTS} accounts x {REGIONS} regions x {INSTANCES} instances, {} ms a call, \
         AWS token buckets per account-region (virtual time):",
        LATENCY.as_millis()
    );
    println!(
        "  slowest account-region's bucket bound: {:.1} s (300 DeleteSnapshot at 100 + 5/s)",
        bound.as_secs_f64()
    );
    for (label, accounts, regions, limits) in [
        ("all at once", ACCOUNTS, REGIONS, RateLimits::aws()),
        (
            "default concurrency",
            accounts::DEFAULT_ACCOUNT_CONCURRENCY,
            fleet::DEFAULT_REGION_CONCURRENCY,
            RateLimits::aws(),
        ),
        (
            "all at once, no client-side pacing (the counter's control)",
            ACCOUNTS,
            REGIONS,
            RateLimits::disabled(),
        ),
    ] {
        let r = runtime.block_on(run(accounts, regions, limits));
        println!(
            "  {label} ({accounts} accounts x {regions} regions at a time): makespan {:.1} s, \
             slowest account-region alone {:.1} s: {:.3}x (target <= 1.1x); \
             {} requests, {} refused by the buckets, {} throttling errors surfaced (target 0)",
            r.makespan.as_secs_f64(),
            r.slowest.as_secs_f64(),
            r.makespan.as_secs_f64() / r.slowest.as_secs_f64(),
            r.served,
            r.refused,
            r.surfaced,
        );
    }
}
