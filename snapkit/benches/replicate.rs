//! Simulated replication of 1,000 snapshots into one destination region
//! with EC2's limit of 20 copies in flight and random copy durations, on
//! tokio's paused clock: how busy the scheduler keeps the 20 slots, and
//! that no `ResourceLimitExceeded` reaches the user. Prints its figures.
//!
//! `cargo bench -p snapkit --bench replicate`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/replicate/sim.rs"]
#[allow(dead_code)]
mod sim;

use std::time::Duration;

use ec2kit::requests::CopySnapshot;
use ec2kit::{Region, SnapshotId};
use jiff::Timestamp;
use snapkit::replicate::{CopyAction, CopyItem, CopyOptions, CopyOutcome, ReplicationPlan, apply};
use tokio::time::Instant;

fn plan(n: usize) -> ReplicationPlan {
    ReplicationPlan {
        from: Region::new("eu-west-1"),
        to: Region::new("us-east-1"),
        items: (0..n)
            .map(|i| CopyItem {
                lineage: format!("vol-{i:017x}"),
                source: SnapshotId::from_api(format!("snap-{i:017x}")),
                taken: Timestamp::UNIX_EPOCH,
                encrypted: false,
                action: CopyAction::Copy,
                request: Some(CopySnapshot::default()),
            })
            .collect(),
    }
}

/// Runs one scenario; `foreign` copies of someone else hold slots for
/// `foreign_for` at the start.
fn scenario(name: &str, foreign: usize, foreign_for: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let wall = std::time::Instant::now();
    rt.block_on(async {
        let sim = sim::Sim::new(20, Duration::from_secs(120), Duration::from_secs(3600), 42);
        let t0 = Instant::now();
        sim.lock().unwrap().foreign_until = vec![t0 + foreign_for; foreign];
        let ec2 = sim::mock(&sim);
        let options = CopyOptions {
            wait: true,
            ..CopyOptions::default()
        };
        let report = apply(&ec2, &[plan(1000)], &options, &|_| {}).await;
        let s = sim.lock().unwrap();
        let (busy, end) = s.busy_and_end();
        let makespan = end.unwrap() - t0;
        // Slot-time available to us: 20 slots, minus what foreign copies held.
        let available = 20.0 * makespan.as_secs_f64() - foreign as f64 * foreign_for.as_secs_f64();
        let completed = report
            .results
            .iter()
            .filter(|r| matches!(r.outcome, CopyOutcome::Completed { .. }))
            .count();
        println!(
            "{name}: {completed}/1000 copies completed, simulated {:.1} h, slot utilisation {:.1} % \
             (ideal makespan {:.1} h), peak in flight {}, ResourceLimitExceeded answered {} and \
             surfaced {}, {} slot waits; wall {:.2} s",
            makespan.as_secs_f64() / 3600.0,
            100.0 * busy.as_secs_f64() / available,
            busy.as_secs_f64() / 20.0 / 3600.0,
            s.peak,
            s.limit_errors,
            report.failed(),
            report.slot_waits,
            wall.elapsed().as_secs_f64(),
        );
    });
}

fn main() {
    scenario("20 free slots", 0, Duration::ZERO);
    scenario(
        "8 slots held by other copies for 3 h",
        8,
        Duration::from_secs(3 * 3600),
    );
}
