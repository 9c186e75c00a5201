//! Retention planning at fleet scale: 1,000,000 snapshots in 10,000
//! lineages (target: <= 1 s on one core).
//!
//! `cargo bench -p snapkit --bench retention`

use criterion::{Criterion, criterion_group, criterion_main};
use ec2kit::{Snapshot, SnapshotId, SnapshotState, VolumeId};
use jiff::{SignedDuration, Timestamp};
use snapkit::lineage::tags;
use snapkit::retention::{Gfs, Logarithmic, Planner, RetentionPolicy};

/// 10,000 lineages x 100 snapshots: a daily backup for ~3 months each,
/// starting at staggered times.
fn inventory() -> Vec<Snapshot> {
    let base: Timestamp = "2024-01-01T02:00:00Z".parse().expect("timestamp");
    let mut out = Vec::with_capacity(1_000_000);
    for lineage in 0..10_000u64 {
        for day in 0..100i64 {
            let mut s = Snapshot::new(
                SnapshotId::from_api(format!("snap-{:017x}", lineage * 100 + day as u64)),
                Some(VolumeId::from_api(format!("vol-{lineage:017x}"))),
                base.checked_add(SignedDuration::from_hours(day * 24 + (lineage % 24) as i64))
                    .expect("time"),
                SnapshotState::Completed,
            );
            s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
            out.push(s);
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let snaps = inventory();
    let now: Timestamp = "2024-04-15T00:00:00Z".parse().expect("timestamp");
    let mut group = c.benchmark_group("plan_1m_snapshots_10k_lineages");
    group.sample_size(10);
    let log = Logarithmic::default();
    group.bench_function("logarithmic", |b| {
        b.iter(|| Planner::new(&log).plan(&snaps, now))
    });
    let gfs = Gfs {
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(12),
        ..Default::default()
    };
    group.bench_function("gfs", |b| b.iter(|| gfs.plan(&snaps, now)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
