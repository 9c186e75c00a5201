//! Waiting for snapshots to complete: bounded, with progress, and `error`
//! snapshots reported (the seed retried forever).

use std::collections::BTreeMap;
use std::time::Duration;

use ec2kit::{Ec2, Ec2Error, Filter, Region, SnapshotId, SnapshotState};
use serde::Serialize;

/// Where each awaited snapshot ended up.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WaitReport {
    /// Completed.
    pub completed: Vec<SnapshotId>,
    /// Failed, with EC2's state message.
    pub failed: Vec<(SnapshotId, String)>,
    /// Still pending when the time ran out (progress in percent).
    pub pending: Vec<(SnapshotId, Option<u8>)>,
    /// Gone (deleted meanwhile).
    pub missing: Vec<SnapshotId>,
}

impl WaitReport {
    /// Whether everything completed.
    pub fn all_completed(&self) -> bool {
        self.failed.is_empty() && self.pending.is_empty() && self.missing.is_empty()
    }
}

/// Progress of [`wait_for`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum WaitEvent {
    /// After each round of polling: how many of the awaited snapshots
    /// are no longer pending (completed, failed or gone).
    Progress {
        /// The region.
        region: Region,
        /// No longer pending.
        done: usize,
        /// Awaited in all.
        total: usize,
    },
}

/// Polls `ids` in `region` every `poll` until none is pending or `timeout`
/// passes; a [`WaitEvent::Progress`] after each round. One filtered
/// `DescribeSnapshots` per 200 ids per round.
pub async fn wait_for(
    ec2: &dyn Ec2,
    region: &Region,
    ids: &[SnapshotId],
    poll: Duration,
    timeout: Duration,
    on_event: &(dyn Fn(&WaitEvent) + Send + Sync),
) -> Result<WaitReport, Ec2Error> {
    let deadline = deadline(timeout);
    let mut open: Vec<SnapshotId> = ids.to_vec();
    let mut report = WaitReport::default();
    loop {
        let mut seen: BTreeMap<SnapshotId, (SnapshotState, Option<u8>, Option<String>)> =
            BTreeMap::new();
        for chunk in open.chunks(200) {
            let filter = Filter::new("snapshot-id", chunk.iter().map(|i| i.to_string()));
            for s in ec2.describe_snapshots(region, &[filter]).await? {
                seen.insert(
                    s.id.clone(),
                    (s.state, s.progress, s.state_message.map(String::from)),
                );
            }
        }
        let mut still = Vec::new();
        for id in open {
            match seen.remove(&id) {
                Some((SnapshotState::Completed, _, _)) => report.completed.push(id),
                Some((SnapshotState::Error, _, msg)) => report
                    .failed
                    .push((id, msg.unwrap_or_else(|| "error".into()))),
                Some((_, progress, _)) => still.push((id, progress)),
                None => report.missing.push(id),
            }
        }
        on_event(&WaitEvent::Progress {
            region: region.clone(),
            done: ids.len() - still.len(),
            total: ids.len(),
        });
        if still.is_empty() {
            return Ok(report);
        }
        if self::deadline(poll) > deadline {
            report.pending = still;
            return Ok(report);
        }
        open = still.into_iter().map(|(id, _)| id).collect();
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ec2kit::{MockEc2, Snapshot};

    use super::*;

    fn snap(id: &str, state: SnapshotState) -> Snapshot {
        let mut s = Snapshot::new(
            SnapshotId::from_api(id),
            None,
            jiff::Timestamp::UNIX_EPOCH,
            state,
        );
        s.progress = Some(40);
        s
    }

    #[tokio::test(start_paused = true)]
    async fn completes_reports_errors_and_gives_up_at_the_timeout() {
        let round = Arc::new(AtomicUsize::new(0));
        let r = round.clone();
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_snapshots().returning(move |_, f| {
            assert_eq!(f[0].name, "snapshot-id");
            let n = r.fetch_add(1, Ordering::SeqCst);
            let mut out = Vec::new();
            for id in &f[0].values {
                out.push(match id.as_str() {
                    // completes on the third round
                    "snap-0000000a" => snap(
                        id,
                        if n >= 2 {
                            SnapshotState::Completed
                        } else {
                            SnapshotState::Pending
                        },
                    ),
                    "snap-0000000b" => {
                        let mut s = snap(id, SnapshotState::Error);
                        s.state_message = Some("Given key ID is not accessible".into());
                        s
                    }
                    // never completes
                    _ => snap(id, SnapshotState::Pending),
                });
            }
            Ok(out)
        });
        let ids: Vec<SnapshotId> = ["snap-0000000a", "snap-0000000b", "snap-0000000c"]
            .map(SnapshotId::from_api)
            .to_vec();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let report = wait_for(
            &ec2,
            &Region::new("r"),
            &ids,
            Duration::from_secs(15),
            Duration::from_secs(60),
            &move |WaitEvent::Progress { done, .. }| {
                s.store(*done, Ordering::SeqCst);
            },
        )
        .await
        .unwrap();
        assert_eq!(report.completed, [SnapshotId::from_api("snap-0000000a")]);
        assert_eq!(
            report.failed,
            [(
                SnapshotId::from_api("snap-0000000b"),
                "Given key ID is not accessible".to_owned()
            )]
        );
        assert_eq!(
            report.pending,
            [(SnapshotId::from_api("snap-0000000c"), Some(40))]
        );
        assert!(!report.all_completed());
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        // 60 s at one poll per 15 s: a bounded number of rounds, not forever.
        assert!(round.load(Ordering::SeqCst) <= 5);
    }
}

/// `now + after`, or a moment centuries away when that does not fit
/// (never a panic on a huge duration).
pub fn deadline(after: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    /// L13: a huge wait (from a library caller) is far away, not a panic.
    #[test]
    fn huge_durations_make_a_far_deadline() {
        let now = tokio::time::Instant::now();
        assert!(deadline(std::time::Duration::MAX) > now);
        assert!(deadline(std::time::Duration::from_secs(1)) > now);
    }
}
