//! Cross-region replication with native `CopySnapshot` (the seed's
//! `rsync_region`, `rsync_all_regions` and `get_oldest_replica`).
//!
//! For every lineage selected in the source region, the newest completed
//! snapshot must exist in the destination. A copy is recognised by its
//! lineage tags — [`SOURCE_SNAPSHOT`](tags::SOURCE_SNAPSHOT) and
//! [`SOURCE_REGION`](tags::SOURCE_REGION), written at creation — never by
//! description text, so a second run finds every copy the first one
//! started, finished or not, and copies nothing twice.
//!
//! [`apply`] is the copy scheduler: EC2 allows 20 copies in flight per
//! destination region and answers `ResourceLimitExceeded` beyond; the
//! scheduler keeps at most [`CopyOptions::max_in_flight`] of its own
//! copies going, polls them, starts the next one as a slot frees, and
//! treats `ResourceLimitExceeded` (someone else's copies hold the slots)
//! as "wait for a slot", never as a failure.
//!
//! Two runs at once (L16): right after starting a copy, the run looks up
//! the destination's copies of the same source; when another one started
//! earlier (earlier start time, then smaller id) the new copy is deleted
//! again and the earlier one is followed instead, so racing runs end with
//! one copy.
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2) -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::Region;
//! use snapkit::replicate::{self, CopyEvent, CopyOptions, Selection};
//!
//! let (from, to) = (Region::new("eu-west-1"), Region::new("eu-central-1"));
//! let plan = replicate::plan(ec2, &from, &to, &Selection::default(), None).await?;
//! println!("{} lineages to copy", plan.to_copy().count());
//! let report = replicate::apply(ec2, &[plan], &CopyOptions::default(), &|e| {
//!     if let CopyEvent::Started { source, copy } = e {
//!         eprintln!("{source} -> {copy}");
//!     }
//! })
//! .await;
//! if report.failed() > 0 {
//!     return Err(format!("{} copies failed", report.failed()).into());
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use ec2kit::requests::CopySnapshot;
use ec2kit::{
    Ec2, Ec2Error, ErrorKind, Filter, Region, Snapshot, SnapshotId, SnapshotState, Tag, Tags,
};
use jiff::Timestamp;
use serde::Serialize;
use tokio::time::Instant;

use crate::backup::device_of;
use crate::lineage::{self, SeedDescription, tags};
use crate::trim::Scope;

/// What a replication calls: [`plan`] and [`apply`] (a copy a concurrent
/// run started first is deleted again).
pub const PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::CopySnapshot,
])
.sometimes(&[ec2kit::iam::Sometimes {
    when: ec2kit::iam::When::Case("a concurrent run"),
    actions: &[ec2kit::Action::DeleteSnapshot],
}])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// What copies encrypted with the caller's KMS key need on top of
/// [`PERMISSIONS`]: [`check_kms_key`], and the grants EBS uses on the
/// caller's behalf.
pub const KMS_KEY_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeKey])
        .implied(ec2kit::iam::KMS_FOR_COPIES);

/// What [`lag`] calls.
pub const LAG_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeSnapshots]);

/// Which snapshots of the source region replicate.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Only snapshots carrying this tag (e.g. `Earmarking=production`,
    /// which backups copy from the instance); all in scope when `None`.
    pub tag: Option<Tag>,
    /// Ours only, or every snapshot of the account (explicit adoption).
    pub scope: Scope,
    /// Only snapshots taken in the source region, not copies that arrived
    /// there from elsewhere (the seed's `native_only`, default on).
    pub native_only: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            tag: None,
            scope: Scope::Owned,
            native_only: true,
        }
    }
}

/// What replication does for one lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CopyAction {
    /// No copy yet: start one.
    Copy,
    /// A completed copy exists.
    Present {
        /// The copy.
        copy: SnapshotId,
    },
    /// A copy is under way (started by an earlier run): not started twice.
    InProgress {
        /// The copy.
        copy: SnapshotId,
    },
    /// The only copy ended in `error`: copy again (`snap delete-broken`
    /// removes the broken one).
    Recopy {
        /// The broken copy.
        failed: SnapshotId,
    },
}

/// One lineage's line of a [`ReplicationPlan`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyItem {
    /// The lineage key.
    pub lineage: String,
    /// The newest completed snapshot of the lineage in the source region.
    pub source: SnapshotId,
    /// When it was taken.
    pub taken: Timestamp,
    /// Whether the source is encrypted (its copy will be too).
    pub encrypted: bool,
    /// What happens.
    #[serde(flatten)]
    pub action: CopyAction,
    /// The request a `Copy`/`Recopy` sends (tags included), for review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<CopySnapshot>,
}

/// Replication from one region into another, as a reviewable value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicationPlan {
    /// Source region.
    pub from: Region,
    /// Destination region.
    pub to: Region,
    /// One item per lineage, in lineage order.
    pub items: Vec<CopyItem>,
}

impl ReplicationPlan {
    /// Items that start a copy.
    pub fn to_copy(&self) -> impl Iterator<Item = &CopyItem> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, CopyAction::Copy | CopyAction::Recopy { .. }))
    }
}

/// Whether `s` was taken in `region` (not a copy that arrived there).
pub fn is_native(s: &Snapshot, region: &Region) -> bool {
    if s.tags.contains_key(tags::SOURCE_SNAPSHOT) {
        return false;
    }
    let here = region.as_str();
    let origin_ok = s.tags.get(tags::ORIGIN_REGION).is_none_or(|r| r == here);
    let seed_ok = s
        .description
        .as_deref()
        .and_then(SeedDescription::parse)
        .and_then(|d| d.region)
        .is_none_or(|r| r == here);
    origin_ok && seed_ok
}

/// The newest completed snapshot of every selected lineage in `region`,
/// in lineage order.
pub async fn latest_per_lineage(
    ec2: &dyn Ec2,
    region: &Region,
    selection: &Selection,
) -> Result<Vec<(String, Snapshot)>, Ec2Error> {
    let mut filters = vec![Filter::new("status", ["completed"])];
    if selection.scope == Scope::Owned {
        filters.push(Filter::new(
            format!("tag:{}", tags::OWNER),
            [tags::OWNER_VALUE],
        ));
    }
    if let Some(tag) = &selection.tag {
        filters.push(Filter::tag(tag));
    }
    let found = ec2.describe_snapshots(region, &filters).await?;
    let mut latest: BTreeMap<String, Snapshot> = BTreeMap::new();
    // Filters are re-checked here: a listing is never trusted to have
    // applied them.
    for s in found.into_iter().filter(|s| {
        s.state == SnapshotState::Completed
            && (selection.scope == Scope::Adopted || lineage::is_owned(s))
            && selection.tag.as_ref().is_none_or(|t| s.tags.matches(t))
            && (!selection.native_only || is_native(s, region))
    }) {
        let key = lineage::lineage_of(&s);
        match latest.get(&key) {
            Some(have) if (have.start_time, &have.id) >= (s.start_time, &s.id) => {}
            _ => {
                latest.insert(key, s);
            }
        }
    }
    Ok(latest.into_iter().collect())
}

/// ektool's copies in `region`, whatever their state.
async fn copies_in(ec2: &dyn Ec2, region: &Region) -> Result<Vec<Snapshot>, Ec2Error> {
    let filters = [
        Filter::new(format!("tag:{}", tags::OWNER), [tags::OWNER_VALUE]),
        Filter::tag_key(tags::SOURCE_SNAPSHOT),
    ];
    let found = ec2.describe_snapshots(region, &filters).await?;
    Ok(found
        .into_iter()
        .filter(|s| lineage::is_owned(s) && s.tags.contains_key(tags::SOURCE_SNAPSHOT))
        .collect())
}

/// The `CopySnapshot` request for `source`: its user tags plus the lineage
/// tags, encrypted when the source is or a key is given.
pub fn copy_request(
    source: &Snapshot,
    from: &Region,
    lineage_key: &str,
    kms_key: Option<&str>,
) -> CopySnapshot {
    let mut t = Tags::new();
    t.merge_user_tags(&source.tags);
    // A copy's VolumeId is meaningless: device and lineage go in tags.
    if let Some(device) = device_of(source) {
        t.insert(tags::DEVICE, device);
    }
    t.remove(crate::backup::DEVICES_TAG);
    t.insert(tags::OWNER, tags::OWNER_VALUE);
    t.insert(tags::VOLUME, lineage_key);
    t.insert(tags::SOURCE_SNAPSHOT, source.id.as_str());
    t.insert(tags::SOURCE_REGION, from.as_str());
    t.insert(tags::SOURCE_TIME, source.start_time.to_string());
    if !t.contains_key(tags::ORIGIN_REGION) {
        t.insert(tags::ORIGIN_REGION, from.as_str());
    }
    CopySnapshot {
        source_region: Some(from.clone()),
        source_snapshot_id: Some(source.id.clone()),
        description: Some(format!(
            "ektool copy of {} from {from} (lineage {lineage_key})",
            source.id
        )),
        encrypted: source.encrypted || kms_key.is_some(),
        kms_key_id: kms_key.map(str::to_owned),
        tags: t,
        dry_run: false,
    }
}

/// Plans replication of the selected lineages from `from` into `to`.
pub async fn plan(
    ec2: &dyn Ec2,
    from: &Region,
    to: &Region,
    selection: &Selection,
    kms_key: Option<&str>,
) -> Result<ReplicationPlan, Ec2Error> {
    let sources = latest_per_lineage(ec2, from, selection).await?;
    let copies = copies_in(ec2, to).await?;
    let mut by_source: HashMap<&str, Vec<&Snapshot>> = HashMap::new();
    for c in &copies {
        if c.tags.get(tags::SOURCE_REGION) == Some(from.as_str())
            && let Some(src) = c.tags.get(tags::SOURCE_SNAPSHOT)
        {
            by_source.entry(src).or_default().push(c);
        }
    }
    let items = sources
        .into_iter()
        .map(|(lineage_key, source)| {
            let found = by_source.get(source.id.as_str());
            let pick = |state: SnapshotState| {
                found
                    .into_iter()
                    .flatten()
                    .find(|c| c.state == state && lineage::lineage_key(c) == lineage_key)
                    .map(|c| c.id.clone())
            };
            let action = if let Some(copy) = pick(SnapshotState::Completed) {
                CopyAction::Present { copy }
            } else if let Some(copy) = pick(SnapshotState::Pending) {
                CopyAction::InProgress { copy }
            } else if let Some(failed) = pick(SnapshotState::Error) {
                CopyAction::Recopy { failed }
            } else {
                CopyAction::Copy
            };
            let request = matches!(action, CopyAction::Copy | CopyAction::Recopy { .. })
                .then(|| copy_request(&source, from, &lineage_key, kms_key));
            CopyItem {
                lineage: lineage_key,
                encrypted: source.encrypted,
                taken: source.start_time,
                source: source.id,
                action,
                request,
            }
        })
        .collect();
    Ok(ReplicationPlan {
        from: from.clone(),
        to: to.clone(),
        items,
    })
}

/// A KMS key that cannot encrypt the copies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsCheckError {
    /// The lookup failed (unknown key, no permission, ...).
    #[error("kms key {key} in {region}")]
    Lookup {
        /// The key as given.
        key: String,
        /// The destination region.
        region: Region,
        /// What KMS said.
        #[source]
        source: Box<Ec2Error>,
    },
    /// The key exists but EBS cannot use it.
    #[error("kms key {key} in {region} cannot encrypt snapshots: {reason}")]
    Unusable {
        /// The key as given.
        key: String,
        /// The destination region.
        region: Region,
        /// Why.
        reason: String,
    },
}

/// The pre-flight check of `--kms-key`: the key must exist in the
/// destination region and be an enabled symmetric encryption key. EC2 would
/// accept the copy and fail it later, asynchronously, as an `error`
/// snapshot.
pub async fn check_kms_key(ec2: &dyn Ec2, region: &Region, key: &str) -> Result<(), KmsCheckError> {
    let found =
        ec2.describe_kms_key(region, key)
            .await
            .map_err(|source| KmsCheckError::Lookup {
                key: key.to_owned(),
                region: region.clone(),
                source: Box::new(source),
            })?;
    match found.unusable_because() {
        None => Ok(()),
        Some(reason) => Err(KmsCheckError::Unusable {
            key: key.to_owned(),
            region: region.clone(),
            reason,
        }),
    }
}

/// How the copy scheduler runs.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copies of this run in flight per destination region at most
    /// (EC2's limit is 20 per destination, shared with anyone else).
    pub max_in_flight: usize,
    /// How often copies in flight are polled.
    pub poll: Duration,
    /// How long to wait for a slot when other copies hold all of them and
    /// none of ours is in flight, before giving up on the rest.
    pub slot_timeout: Duration,
    /// Wait until every copy has completed (else return once the last one
    /// has started; a later run picks up what is still in flight).
    pub wait: bool,
    /// Settle races with concurrent runs (the default): a copy this run
    /// started is deleted again when another run started one of the same
    /// source first. Off for copies into a vault account
    /// ([`crate::vault`]), whose copy role may never delete: there, a
    /// concurrent run can leave a duplicate copy, which the vault's
    /// retention ages out like any other snapshot.
    pub settle_races: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 20,
            poll: Duration::from_secs(15),
            slot_timeout: Duration::from_secs(3600),
            wait: false,
            settle_races: true,
        }
    }
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CopyOutcome {
    /// Nothing to do: a completed copy exists.
    Present {
        /// The copy.
        copy: SnapshotId,
    },
    /// Started, still in flight when the run ended.
    InFlight {
        /// The copy.
        copy: SnapshotId,
    },
    /// Completed during the run.
    Completed {
        /// The copy.
        copy: SnapshotId,
    },
    /// Could not be started, or the copy failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// The result for one lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyResult {
    /// The lineage.
    pub lineage: String,
    /// The source snapshot.
    pub source: SnapshotId,
    /// Source region.
    pub from: Region,
    /// Destination region.
    pub to: Region,
    /// What happened.
    #[serde(flatten)]
    pub outcome: CopyOutcome,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicationReport {
    /// One result per planned item.
    pub results: Vec<CopyResult>,
    /// Copies started by this run.
    pub started: usize,
    /// `ResourceLimitExceeded` answers handled by waiting for a slot.
    pub slot_waits: usize,
    /// Copies this run started and deleted again because a concurrent run
    /// had started one of the same source first.
    pub duplicates_removed: usize,
    /// The most copies of this run in flight at once, per destination.
    pub peak_in_flight: BTreeMap<String, usize>,
}

impl ReplicationReport {
    /// This run as metrics: `ektool_replicate_copies_started` and
    /// `ektool_replicate_failures`.
    pub fn add_metrics(&self, m: &mut crate::metrics::Metrics) {
        m.gauge(
            "ektool_replicate_copies_started",
            "Copies the last replicate run started.",
        )
        .sample(&[], self.started as f64);
        m.gauge(
            "ektool_replicate_failures",
            "Copies of the last replicate run that failed.",
        )
        .sample(&[], self.failed() as f64);
    }

    /// Items that failed.
    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, CopyOutcome::Failed { .. }))
            .count()
    }
}

/// Progress of [`apply`], for bars and logs.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum CopyEvent<'a> {
    /// A copy started.
    Started {
        /// The source.
        source: &'a SnapshotId,
        /// The copy.
        copy: &'a SnapshotId,
    },
    /// A copy completed.
    Completed {
        /// The copy.
        copy: &'a SnapshotId,
    },
    /// An item failed.
    Failed {
        /// The source.
        source: &'a SnapshotId,
        /// Why.
        error: &'a str,
    },
    /// Every slot of the destination is taken: waiting.
    WaitingForSlot {
        /// The destination.
        region: &'a Region,
    },
}

/// A copy vanishing from listings this soon after it started is eventual
/// consistency, not a deleted copy.
const VISIBILITY_GRACE: Duration = Duration::from_secs(300);

/// How long to wait before trying again after `ResourceLimitExceeded`
/// when none of our own copies finishes first.
const SLOT_PROBE: Duration = Duration::from_secs(60);

/// Runs plans: copies start as slots allow, per destination region (plans
/// sharing a destination share its slots).
pub async fn apply(
    ec2: &dyn Ec2,
    plans: &[ReplicationPlan],
    options: &CopyOptions,
    on_event: &(dyn Fn(CopyEvent<'_>) + Send + Sync),
) -> ReplicationReport {
    let mut report = ReplicationReport::default();
    for plan in plans {
        for item in &plan.items {
            let outcome = match &item.action {
                CopyAction::Present { copy } => CopyOutcome::Present { copy: copy.clone() },
                CopyAction::InProgress { copy } => CopyOutcome::InFlight { copy: copy.clone() },
                _ => CopyOutcome::Failed {
                    error: "not started".into(),
                },
            };
            report.results.push(CopyResult {
                lineage: item.lineage.clone(),
                source: item.source.clone(),
                from: plan.from.clone(),
                to: plan.to.clone(),
                outcome,
            });
        }
    }
    let mut destinations: Vec<&Region> = plans.iter().map(|p| &p.to).collect();
    destinations.sort();
    destinations.dedup();
    let runs = destinations.into_iter().map(|to| {
        let mut indexed = Vec::new();
        let mut n = 0;
        for plan in plans {
            for item in &plan.items {
                if &plan.to == to {
                    indexed.push((n, item));
                }
                n += 1;
            }
        }
        schedule(ec2, to, indexed, options, on_event)
    });
    for done in futures::future::join_all(runs).await {
        report.started += done.started;
        report.slot_waits += done.slot_waits;
        report.duplicates_removed += done.duplicates_removed;
        report
            .peak_in_flight
            .insert(done.region.to_string(), done.peak);
        for (i, outcome) in done.outcomes {
            report.results[i].outcome = outcome;
        }
    }
    report
}

/// After starting `ours`: when another copy of the same source (same
/// source region, ektool's, not in error) started earlier in `to`, deletes
/// ours and returns that one. `None`: ours stays (no earlier one, ours not
/// visible yet, or it could not be deleted).
async fn settle_copy_race(
    ec2: &dyn Ec2,
    to: &Region,
    request: &CopySnapshot,
    ours: &SnapshotId,
) -> Option<SnapshotId> {
    let (source, from) = (
        request.source_snapshot_id.as_ref()?,
        request.source_region.as_ref()?,
    );
    let filters = [
        Filter::new(format!("tag:{}", tags::OWNER), [tags::OWNER_VALUE]),
        Filter::new(format!("tag:{}", tags::SOURCE_SNAPSHOT), [source.as_str()]),
        Filter::new(format!("tag:{}", tags::SOURCE_REGION), [from.as_str()]),
    ];
    let found = ec2.describe_snapshots(to, &filters).await.ok()?;
    let mine = found.iter().find(|s| &s.id == ours)?;
    let earlier = found
        .iter()
        .filter(|s| {
            &s.id != ours
                && s.state != SnapshotState::Error
                && lineage::is_owned(s)
                && s.tags.get(tags::SOURCE_SNAPSHOT) == Some(source.as_str())
                && s.tags.get(tags::SOURCE_REGION) == Some(from.as_str())
        })
        .filter(|s| (s.start_time, &s.id) < (mine.start_time, &mine.id))
        .min_by(|a, b| (a.start_time, &a.id).cmp(&(b.start_time, &b.id)))?;
    match ec2.delete_snapshot(to, ours, false).await {
        Ok(()) => Some(earlier.id.clone()),
        Err(e) if e.kind == ErrorKind::NotFound => Some(earlier.id.clone()),
        Err(e) => {
            tracing::warn!(region = %to, copy = %ours, error = %e, "could not delete a duplicate copy");
            None
        }
    }
}

struct Scheduled {
    region: Region,
    started: usize,
    duplicates_removed: usize,
    slot_waits: usize,
    peak: usize,
    outcomes: Vec<(usize, CopyOutcome)>,
}

struct Flight {
    index: usize,
    started: Instant,
}

/// The scheduler of one destination region.
async fn schedule(
    ec2: &dyn Ec2,
    to: &Region,
    items: Vec<(usize, &CopyItem)>,
    options: &CopyOptions,
    on_event: &(dyn Fn(CopyEvent<'_>) + Send + Sync),
) -> Scheduled {
    let mut out = Scheduled {
        region: to.clone(),
        started: 0,
        duplicates_removed: 0,
        slot_waits: 0,
        peak: 0,
        outcomes: Vec::new(),
    };
    let mut queue: VecDeque<(usize, &CopyItem)> = VecDeque::new();
    let mut in_flight: HashMap<SnapshotId, Flight> = HashMap::new();
    let sources: HashMap<usize, &SnapshotId> =
        items.iter().map(|(i, it)| (*i, &it.source)).collect();
    for (i, item) in items {
        match (&item.action, &item.request) {
            // Copies of earlier runs hold slots too: track them.
            (CopyAction::InProgress { copy }, _) => {
                in_flight.insert(
                    copy.clone(),
                    Flight {
                        index: i,
                        started: Instant::now(),
                    },
                );
            }
            (CopyAction::Copy | CopyAction::Recopy { .. }, Some(_)) => queue.push_back((i, item)),
            _ => {}
        }
    }
    let max = options.max_in_flight.max(1);
    let mut blocked_since: Option<Instant> = None;
    // After a `ResourceLimitExceeded`, the next attempt waits for one of
    // our copies to finish or for SLOT_PROBE, whichever is first: no
    // CopySnapshot per poll while others hold the slots.
    let mut probe_after: Option<Instant> = None;
    loop {
        let mut limited = probe_after.is_some();
        while in_flight.len() < max && probe_after.is_none_or(|t| Instant::now() >= t) {
            let Some((i, item)) = queue.pop_front() else {
                break;
            };
            let Some(request) = &item.request else {
                continue;
            };
            match ec2.copy_snapshot(to, request).await {
                Ok(started) => {
                    on_event(CopyEvent::Started {
                        source: &item.source,
                        copy: &started,
                    });
                    out.started += 1;
                    let settled = if options.settle_races {
                        settle_copy_race(ec2, to, request, &started).await
                    } else {
                        None
                    };
                    let copy = match settled {
                        Some(earlier) => {
                            out.duplicates_removed += 1;
                            earlier
                        }
                        None => started,
                    };
                    out.outcomes
                        .push((i, CopyOutcome::InFlight { copy: copy.clone() }));
                    in_flight.insert(
                        copy,
                        Flight {
                            index: i,
                            started: Instant::now(),
                        },
                    );
                    out.peak = out.peak.max(in_flight.len());
                }
                Err(e) if e.kind == ErrorKind::ConcurrencyLimit => {
                    queue.push_front((i, item));
                    out.slot_waits += 1;
                    limited = true;
                    probe_after = Some(Instant::now() + SLOT_PROBE);
                    on_event(CopyEvent::WaitingForSlot { region: to });
                    break;
                }
                Err(e) => {
                    let error = e.to_string();
                    on_event(CopyEvent::Failed {
                        source: &item.source,
                        error: &error,
                    });
                    out.outcomes.push((i, CopyOutcome::Failed { error }));
                }
            }
        }
        if queue.is_empty() && (in_flight.is_empty() || !options.wait) {
            break;
        }
        if limited && in_flight.is_empty() {
            // Someone else's copies hold every slot: wait, but not forever.
            let since = *blocked_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= options.slot_timeout {
                let error = format!(
                    "no copy slot free in {to} within {}s",
                    options.slot_timeout.as_secs()
                );
                for (i, item) in queue.drain(..) {
                    on_event(CopyEvent::Failed {
                        source: &item.source,
                        error: &error,
                    });
                    out.outcomes.push((
                        i,
                        CopyOutcome::Failed {
                            error: error.clone(),
                        },
                    ));
                }
                break;
            }
        } else {
            blocked_since = None;
        }
        tokio::time::sleep(options.poll).await;
        if in_flight.is_empty() {
            continue;
        }
        let ids: Vec<String> = in_flight.keys().map(|id| id.to_string()).collect();
        let mut seen = Vec::new();
        for chunk in ids.chunks(200) {
            match ec2
                .describe_snapshots(to, &[Filter::new("snapshot-id", chunk.iter().cloned())])
                .await
            {
                Ok(found) => seen.extend(found),
                // A failed poll is retried next round; the copies go on.
                Err(e) => tracing::warn!(region = %to, error = %e, "polling copies failed"),
            }
        }
        let mut seen_ids = std::collections::HashSet::new();
        for s in seen {
            seen_ids.insert(s.id.clone());
            let done = match s.state {
                SnapshotState::Completed => Some(CopyOutcome::Completed { copy: s.id.clone() }),
                SnapshotState::Error => Some(CopyOutcome::Failed {
                    error: format!(
                        "copy {} failed: {}",
                        s.id,
                        s.state_message.as_deref().unwrap_or("state error")
                    ),
                }),
                _ => None,
            };
            if let Some(outcome) = done
                && let Some(f) = in_flight.remove(&s.id)
            {
                probe_after = None;
                match &outcome {
                    CopyOutcome::Completed { copy } => on_event(CopyEvent::Completed { copy }),
                    CopyOutcome::Failed { error } => {
                        if let Some(source) = sources.get(&f.index) {
                            on_event(CopyEvent::Failed { source, error });
                        }
                    }
                    _ => {}
                }
                out.outcomes.push((f.index, outcome));
            }
        }
        let vanished: Vec<SnapshotId> = in_flight
            .iter()
            .filter(|(id, f)| !seen_ids.contains(*id) && f.started.elapsed() > VISIBILITY_GRACE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            if let Some(f) = in_flight.remove(&id) {
                out.outcomes.push((
                    f.index,
                    CopyOutcome::Failed {
                        error: format!("copy {id} disappeared (deleted?)"),
                    },
                ));
            }
        }
    }
    out
}

/// One lineage's replication lag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LagRow {
    /// The lineage.
    pub lineage: String,
    /// The newest completed snapshot in the source region.
    pub newest_source: SnapshotId,
    /// When it was taken.
    pub source_taken: Timestamp,
    /// The newest completed copy in the destination, if any.
    pub newest_copy: Option<SnapshotId>,
    /// The point in time of that copy's data.
    pub copy_taken: Option<Timestamp>,
    /// A copy of a newer snapshot under way, if any.
    pub in_progress: Option<SnapshotId>,
    /// How far the copy is behind the source (0 when up to date; `None`
    /// without any completed copy).
    pub behind_seconds: Option<i64>,
}

impl LagRow {
    /// Whether the destination is more than `max` behind (a lineage without
    /// any copy always is).
    pub fn is_behind(&self, max: Duration) -> bool {
        self.behind_seconds
            .is_none_or(|b| b > i64::try_from(max.as_secs()).unwrap_or(i64::MAX))
    }
}

/// The point in time of a copy's data: its source-time tag, else the
/// backup's created tag, else its own start time — never later than its
/// own start time. Tags are written by whoever made the copy (in a vault,
/// a source account that may be compromised); a copy cannot hold data
/// from after it began, so a tag claiming so cannot make a stale lineage
/// look fresh.
pub fn data_time(copy: &Snapshot) -> Timestamp {
    [tags::SOURCE_TIME, tags::CREATED]
        .iter()
        .find_map(|k| copy.tags.get(k).and_then(|v| v.parse::<Timestamp>().ok()))
        .map_or(copy.start_time, |t| t.min(copy.start_time))
}

/// Per selected lineage of `from`: the newest source, the newest copy in
/// `to` (whatever region it was copied from), and how far behind it is.
pub async fn lag(
    ec2: &dyn Ec2,
    from: &Region,
    to: &Region,
    selection: &Selection,
) -> Result<Vec<LagRow>, Ec2Error> {
    let sources = latest_per_lineage(ec2, from, selection).await?;
    let copies = copies_in(ec2, to).await?;
    let mut newest: HashMap<String, (Timestamp, &Snapshot)> = HashMap::new();
    let mut pending: HashMap<&str, &Snapshot> = HashMap::new();
    for c in &copies {
        match c.state {
            SnapshotState::Completed => {
                let t = data_time(c);
                let key = lineage::lineage_of(c);
                match newest.get(&key) {
                    Some((have, _)) if *have >= t => {}
                    _ => {
                        newest.insert(key, (t, c));
                    }
                }
            }
            SnapshotState::Pending => {
                if let Some(src) = c.tags.get(tags::SOURCE_SNAPSHOT) {
                    pending.insert(src, c);
                }
            }
            _ => {}
        }
    }
    Ok(sources
        .into_iter()
        .map(|(key, source)| {
            let copy = newest.get(&key);
            let behind = copy.map(|(t, _)| (source.start_time.as_second() - t.as_second()).max(0));
            LagRow {
                newest_copy: copy.map(|(_, c)| c.id.clone()),
                copy_taken: copy.map(|(t, _)| *t),
                in_progress: pending.get(source.id.as_str()).map(|c| c.id.clone()),
                behind_seconds: behind,
                lineage: key,
                source_taken: source.start_time,
                newest_source: source.id,
            }
        })
        .collect())
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
