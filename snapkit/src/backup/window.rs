//! The backup window: what is already done in it, and settling a race
//! with another run in the same window.

use std::collections::BTreeMap;

use ec2kit::{
    Ec2, Ec2Error, ErrorKind, Filter, Region, Snapshot, SnapshotId, SnapshotState, VolumeId,
};

use super::{BackupOptions, BackupResult, BackupStatus, WINDOW_TAG};
use crate::lineage::tags;

/// The snapshots of one region's window: what is already done.
#[derive(Debug, Clone, Default)]
pub struct WindowSnapshots {
    snapshots: Vec<Snapshot>,
}

/// One set of a window: its id, when it started, its snapshots.
struct SetView<'a> {
    id: &'a str,
    started: jiff::Timestamp,
    members: Vec<&'a Snapshot>,
}

impl WindowSnapshots {
    /// From the window's snapshots (any order); `error` snapshots are
    /// left out (they are not a backup).
    pub fn new(snapshots: Vec<Snapshot>) -> Self {
        Self {
            snapshots: snapshots
                .into_iter()
                .filter(|s| s.state != SnapshotState::Error)
                .collect(),
        }
    }

    /// The window's sets: snapshots grouped by `ektool:set` (a snapshot
    /// without one is a set of its own).
    fn sets(&self) -> Vec<SetView<'_>> {
        let mut by_set: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
        for s in &self.snapshots {
            let key = s.tags.get(tags::SET).unwrap_or(s.id.as_str());
            by_set.entry(key).or_default().push(s);
        }
        by_set
            .into_iter()
            .filter_map(|(id, members)| {
                let started = members.iter().map(|s| s.start_time).min()?;
                Some(SetView {
                    id,
                    started,
                    members,
                })
            })
            .collect()
    }

    /// The first set (oldest, then smallest id) whose snapshots' volume ids
    /// include every one of `volumes`, other than `except`.
    fn first_covering(&self, volumes: &[VolumeId], except: Option<&str>) -> Option<SetView<'_>> {
        if volumes.is_empty() {
            return None;
        }
        self.sets()
            .into_iter()
            .filter(|set| Some(set.id) != except)
            .filter(|set| {
                volumes
                    .iter()
                    .all(|v| set.members.iter().any(|s| s.volume_id.as_ref() == Some(v)))
            })
            .min_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(b.id)))
    }

    /// The snapshots of the first set covering all of `volumes` (an
    /// instance's requested volume set), if any: the instance is done.
    pub fn covering(&self, volumes: &[VolumeId]) -> Option<Vec<SnapshotId>> {
        self.first_covering(volumes, None)
            .map(|set| set.members.iter().map(|s| s.id.clone()).collect())
    }

    /// The snapshots of `volume` in the window, if any: the volume is done.
    pub fn of_volume(&self, volume: &VolumeId) -> Option<Vec<SnapshotId>> {
        let ids: Vec<SnapshotId> = self
            .snapshots
            .iter()
            .filter(|s| s.volume_id.as_ref() == Some(volume))
            .map(|s| s.id.clone())
            .collect();
        (!ids.is_empty()).then_some(ids)
    }

    /// Whether the set `ours` lost a race: another set covering `volumes`
    /// started earlier (or at the same time with a smaller id). Returns the
    /// winner's snapshots.
    pub fn predecessor(&self, ours: &str, volumes: &[VolumeId]) -> Option<Vec<SnapshotId>> {
        let mine = self.sets().into_iter().find(|s| s.id == ours)?;
        let other = self.first_covering(volumes, Some(ours))?;
        let earlier = (other.started, other.id) < (mine.started, mine.id);
        earlier.then(|| other.members.iter().map(|s| s.id.clone()).collect())
    }
}

/// Snapshots already taken in this run's window in `region` (one
/// filtered, paginated call).
pub async fn done_in_window(
    ec2: &dyn Ec2,
    region: &Region,
    options: &BackupOptions,
) -> Result<WindowSnapshots, Ec2Error> {
    let filters = [
        Filter::new(format!("tag:{}", tags::OWNER), [tags::OWNER_VALUE]),
        Filter::new(format!("tag:{WINDOW_TAG}"), [options.window_key()]),
    ];
    Ok(WindowSnapshots::new(
        ec2.describe_snapshots(region, &filters).await?,
    ))
}

/// After creating: lists the window again and deletes each set this run
/// made that an earlier covering set makes redundant (a run racing this
/// one). `made` is `(index into results, set id, requested volumes)`.
pub(crate) async fn settle_races(
    ec2: &dyn Ec2,
    region: &Region,
    options: &BackupOptions,
    results: &mut [BackupResult],
    made: &[(usize, String, Vec<VolumeId>)],
) {
    if made.is_empty() || options.dry_run {
        return;
    }
    let window = match done_in_window(ec2, region, options).await {
        Ok(w) => w,
        Err(e) => {
            for (i, _, _) in made {
                results[*i].notes.push(format!(
                    "could not check for a concurrent run in this window: {e}"
                ));
            }
            return;
        }
    };
    for (i, set, volumes) in made {
        let Some(winner) = window.predecessor(set, volumes) else {
            continue;
        };
        let BackupStatus::Created { snapshots, .. } = &results[*i].status else {
            continue;
        };
        let mut left = Vec::new();
        for id in snapshots {
            match ec2.delete_snapshot(region, id, false).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => left.push(format!("{id} ({e})")),
            }
        }
        let r = &mut results[*i];
        if left.is_empty() {
            r.notes.push(format!(
                "another run made the same set first; this run's set {set} was deleted again"
            ));
            r.status = BackupStatus::AlreadyDone { snapshots: winner };
        } else {
            r.notes.push(format!(
                "another run made the same set first; could not delete this run's duplicates: {}",
                left.join(", ")
            ));
        }
    }
}
