//! A backup item held consistent: its snapshot call made with the host's
//! database locked and filesystems frozen, and the hold's outcome turned
//! into the item's result.

use ec2kit::{CancellationToken, Remote};

use super::{BackupItem, BackupResult, BackupStatus};
use crate::consistency::{self, Consistency, ConsistencyError, HoldReport};

/// Runs one backup item (`run`: [`backup_instances`] or [`backup_volumes`]
/// for it) with the host's database locked and filesystems frozen
/// ([`consistency::around_until`]), and turns the hold into the item's
/// result:
///
/// - a lock or freeze that could not be taken fails the item (nothing was
///   snapshotted);
/// - `cancel` fired before the snapshot call: the item fails as
///   interrupted, everything taken released;
/// - a hold that ended before the snapshot call returned, or a thaw/unlock
///   that failed afterwards, fails the item **and reports the snapshots
///   that were made**;
/// - with `dry_run`, nothing is frozen or locked: the host is only reached
///   (strict host key) and what would be held is noted.
pub(crate) async fn consistently<F, Fut>(
    remote: &dyn Remote,
    c: &Consistency,
    cancel: &CancellationToken,
    dry_run: bool,
    item: &BackupItem,
    run: F,
) -> Vec<BackupResult>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Vec<BackupResult>>,
{
    if dry_run {
        return match consistency::plan(remote, c).await {
            Ok(plan) => {
                let mut results = run().await;
                let note = format!(
                    "dry run: would hold on {}: freeze {}, lock {}",
                    plan.host,
                    if plan.would_freeze.is_empty() {
                        "-".to_owned()
                    } else {
                        plan.would_freeze.join(" ")
                    },
                    plan.would_lock.unwrap_or("-"),
                );
                for r in &mut results {
                    r.notes.push(note.clone());
                }
                results
            }
            Err(e) => {
                vec![item.failed(format!("host not reachable for the consistent backup: {e}"))]
            }
        };
    }
    let held = consistency::around_until(remote, c, cancel, || async {
        Ok::<_, std::convert::Infallible>(run().await)
    })
    .await;
    match held {
        Ok((Ok(results), hold)) => with_hold(results, &remote.host(), &hold),
        Ok((Err(never), _)) => match never {},
        Err(ConsistencyError::Interrupted { .. }) => vec![item.failed(
            "interrupted before the snapshot call: everything held was released, nothing snapshotted",
        )],
        Err(e) => vec![item.failed(format!("not consistent, not snapshotted: {e}"))],
    }
}

/// The results of a snapshot call made under a hold, with what the hold
/// report says: a note of how long it was held; a failure (keeping the
/// snapshot ids) when the hold ended before the snapshot call returned or
/// could not be released.
pub(crate) fn with_hold(
    mut results: Vec<BackupResult>,
    host: &str,
    hold: &HoldReport,
) -> Vec<BackupResult> {
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.2}s"));
    let note = format!(
        "held on {host}: frozen {}, locked {}{}",
        secs(hold.frozen_secs),
        secs(hold.locked_secs),
        if hold.released_by_watchdog {
            " (released by the host's watchdog)"
        } else {
            ""
        }
    );
    let early = format!(
        "the hold on {host} ended before the snapshot call returned (max_hold too short?): the snapshots may not be consistent"
    );
    let release: Vec<String> = hold
        .release_errors
        .iter()
        .map(|e| {
            format!(
                "could not release on {host} after the snapshot ({e}); the host's watchdog releases it after max_hold"
            )
        })
        .collect();
    for r in &mut results {
        r.notes.push(note.clone());
        let (made, error, code) = match &r.status {
            BackupStatus::Created { snapshots, .. } => (snapshots.clone(), None, None),
            BackupStatus::Failed {
                error,
                code,
                snapshots,
            } => (snapshots.clone(), Some(error.clone()), code.clone()),
            _ => (Vec::new(), None, None),
        };
        let mut problems = Vec::new();
        // Only snapshots that exist can be inconsistent.
        if hold.released_before_snapshot && !made.is_empty() {
            problems.push(early.clone());
        }
        problems.extend(release.iter().cloned());
        if problems.is_empty() {
            continue;
        }
        r.status = BackupStatus::Failed {
            error: error
                .into_iter()
                .chain(problems)
                .collect::<Vec<_>>()
                .join("; "),
            code,
            snapshots: made,
        };
    }
    results
}
