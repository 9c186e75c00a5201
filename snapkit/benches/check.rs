//! `snap check` over 17 regions against an EC2 that takes 50 ms a call,
//! in real time: regions are listed at once, so 17 regions should take
//! about as long as one (target: at most 1.5 times). Each region has 20
//! tagged instances with two volumes each; the replica destination is
//! checked too. Prints its figures.
//!
//! `cargo bench -p snapkit --bench check`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ec2kit::{
    BlockDevice, Instance, InstanceId, Latency, MockEc2, Region, Snapshot, SnapshotId,
    SnapshotState, Tag, Tags, VolumeId,
};
use jiff::Timestamp;
use snapkit::check::{CheckSpec, ReplicaCheck, check};
use snapkit::lineage::tags;

const INSTANCES: usize = 20;
const LATENCY: Duration = Duration::from_millis(50);

fn instance(region: &Region, i: usize) -> Instance {
    Instance {
        root_device_name: Some("/dev/xvda".into()),
        block_devices: ["/dev/xvda", "/dev/xvdf"]
            .iter()
            .enumerate()
            .map(|(v, device)| BlockDevice {
                device_name: (*device).into(),
                volume_id: VolumeId::from_api(format!("vol-{:08x}", i * 2 + v)),
                delete_on_termination: None,
            })
            .collect(),
        tags: Tags::new().with("Earmarking", "production"),
        ..Instance::new(InstanceId::from_api(format!("i-{i:08x}")), region.clone())
    }
}

fn ec2(now: Timestamp) -> Latency<MockEc2> {
    let mut inner = MockEc2::new();
    inner
        .expect_describe_instances()
        .returning(|region, _| Ok((0..INSTANCES).map(|i| instance(region, i)).collect()));
    inner
        .expect_describe_snapshots()
        .returning(move |region, _| {
            Ok((0..INSTANCES * 2)
                .map(|v| {
                    let volume = format!("vol-{v:08x}");
                    let mut s = Snapshot::new(
                        SnapshotId::from_api(format!("snap-{v:08x}")),
                        Some(VolumeId::from_api(&volume)),
                        now - jiff::SignedDuration::from_hours(2),
                        SnapshotState::Completed,
                    );
                    s.tags = Tags::new()
                        .with(tags::OWNER, tags::OWNER_VALUE)
                        .with(tags::VOLUME, volume);
                    if region.as_str() == "r-dest" {
                        // Copies: the replica check counts only those.
                        s.tags
                            .insert(tags::SOURCE_SNAPSHOT, format!("snap-{v:08x}"));
                    }
                    s
                })
                .collect())
        });
    Latency::new(inner, LATENCY)
}

fn spec(regions: usize) -> CheckSpec {
    CheckSpec {
        regions: (0..regions)
            .map(|r| Region::new(format!("r-{r}")))
            .collect(),
        tag: Some(Tag::new("Earmarking", "production")),
        max_age: Duration::from_secs(26 * 3600),
        replica: Some(ReplicaCheck {
            region: Region::new("r-dest"),
            max_age: Duration::from_secs(26 * 3600),
        }),
        concurrency: 17,
        ..CheckSpec::default()
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let now = Timestamp::now();
    let ec2 = ec2(now);
    let time = |regions: usize| {
        runtime.block_on(async {
            let start = Instant::now();
            let report = check(&ec2, &spec(regions), now).await;
            let elapsed = start.elapsed();
            assert!(report.ok(), "{:?}", report.failures());
            elapsed
        })
    };
    // Medians of 5: the first region list warms nothing up, but a laptop's
    // scheduler can.
    let median = |regions: usize| {
        let mut runs: Vec<Duration> = (0..5).map(|_| time(regions)).collect();
        runs.sort();
        runs[2]
    };
    let one = median(1);
    let all = median(17);
    println!(
        "snap check, {} ms a call, {INSTANCES} instances x 2 volumes a region, replica region too:",
        LATENCY.as_millis()
    );
    println!(
        "1 region {:.0} ms, 17 regions {:.0} ms: {:.2}x one region's (target <= 1.5x)",
        one.as_secs_f64() * 1e3,
        all.as_secs_f64() * 1e3,
        all.as_secs_f64() / one.as_secs_f64()
    );
}
