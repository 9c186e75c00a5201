//! A simulated destination region for the copy scheduler: copies take
//! random durations on tokio's clock, and EC2's limit of concurrent copies
//! answers `ResourceLimitExceeded`. Shared by the unit tests and the
//! replication benchmark (`#[path]`-included there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2kit::{Action, Ec2Error, MockEc2, Snapshot, SnapshotId, SnapshotState};
use tokio::time::Instant;

/// The simulation's state.
#[derive(Debug)]
pub(crate) struct Sim {
    /// EC2's limit of copies in flight in the destination.
    pub limit: usize,
    /// Copies started: start time and duration.
    pub copies: HashMap<SnapshotId, (Instant, Duration)>,
    /// Other people's copies: when each ends.
    pub foreign_until: Vec<Instant>,
    /// `ResourceLimitExceeded` answers given.
    pub limit_errors: usize,
    /// The most copies (ours and foreign) pending at once.
    pub peak: usize,
    /// Shortest and longest copy duration.
    pub durations: (Duration, Duration),
    rng: u64,
}

impl Sim {
    /// A destination with `limit` slots and copies taking between `min`
    /// and `max`, from a fixed seed.
    pub(crate) fn new(limit: usize, min: Duration, max: Duration, seed: u64) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            limit,
            copies: HashMap::new(),
            foreign_until: Vec::new(),
            limit_errors: 0,
            peak: 0,
            durations: (min, max),
            rng: seed.max(1),
        }))
    }

    fn next_duration(&mut self) -> Duration {
        // xorshift64: deterministic, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let (min, max) = self.durations;
        let span = (max - min).as_millis() as u64;
        min + Duration::from_millis(if span == 0 { 0 } else { self.rng % span })
    }

    fn pending(&self, now: Instant) -> usize {
        let ours = self
            .copies
            .values()
            .filter(|(start, d)| *start + *d > now)
            .count();
        ours + self.foreign_until.iter().filter(|t| **t > now).count()
    }

    /// Busy slot-time of our copies and the time the last one ended.
    pub(crate) fn busy_and_end(&self) -> (Duration, Option<Instant>) {
        let busy = self.copies.values().map(|(_, d)| *d).sum();
        let end = self.copies.values().map(|(s, d)| *s + *d).max();
        (busy, end)
    }
}

/// A `MockEc2` whose `copy_snapshot` and `describe_snapshots` play `sim`.
pub(crate) fn mock(sim: &Arc<Mutex<Sim>>) -> MockEc2 {
    let mut ec2 = MockEc2::new();
    let s = sim.clone();
    ec2.expect_copy_snapshot().returning(move |region, _req| {
        let mut sim = s.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if sim.pending(now) >= sim.limit {
            sim.limit_errors += 1;
            return Err(Ec2Error::from_code(
                Action::CopySnapshot,
                region.as_str(),
                "ResourceLimitExceeded",
                Some("too many snapshot copies in progress".into()),
            ));
        }
        let id = SnapshotId::from_api(format!("snap-{:017x}", sim.copies.len() + 1));
        let d = sim.next_duration();
        sim.copies.insert(id.clone(), (now, d));
        let p = sim.pending(now);
        sim.peak = sim.peak.max(p);
        Ok(id)
    });
    let s = sim.clone();
    ec2.expect_describe_snapshots()
        .returning(move |_, filters| {
            let sim = s.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let ids = filters
                .iter()
                .find(|f| f.name == "snapshot-id")
                .map(|f| f.values.clone())
                .unwrap_or_default();
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let id = SnapshotId::from_api(id);
                    let (start, d) = sim.copies.get(&id)?;
                    let state = if *start + *d <= now {
                        SnapshotState::Completed
                    } else {
                        SnapshotState::Pending
                    };
                    Some(Snapshot::new(id, None, jiff::Timestamp::UNIX_EPOCH, state))
                })
                .collect::<Vec<_>>())
        });
    ec2
}
