//! Trim against EC2: plan a region in one call, then apply.
//!
//! [`plan_region`] lists a region's snapshots in scope and the snapshots
//! its AMIs use, and plans them with the [`Policies`] and the safety
//! guards; [`apply`] deletes what the plan says. `delete-broken` is the
//! same pair with [`plan_broken`].
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2) -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::Region;
//! use snapkit::retention::{Gfs, Logarithmic, Policies, PolicySpec};
//! use snapkit::trim::{self, Scope, TrimEvent};
//!
//! let gfs = Gfs { keep_daily: Some(7), keep_weekly: Some(4), ..Gfs::default() };
//! let policies = Policies::new(PolicySpec::from_name("gfs", &Logarithmic::default(), &gfs)?);
//! let region = Region::new("eu-west-1");
//! let plan = trim::plan_region(ec2, &region, &policies, Scope::Owned, jiff::Timestamp::now()).await?;
//! for d in plan.deletions() {
//!     println!("{} {}: {}", d.id, d.lineage, d.reason);
//! }
//! let report = trim::apply(ec2, &plan, &region, 8, &|event| {
//!     if let TrimEvent::Applied(a) = event {
//!         eprintln!("{} {:?}", a.id, a.outcome);
//!     }
//! })
//! .await;
//! println!("deleted {}, failed {}", report.deleted(), report.failed());
//! # Ok(()) }
//! ```
//!
//! The inventory is tag-scoped: only snapshots carrying the ownership tag
//! are listed (`OwnerIds=self` alone is not enough: moto, for one, lists
//! hundreds of AMI snapshots as "self"), unless the user adopts every
//! snapshot of the account. The AMI map comes from `DescribeImages`
//! (`Owners=self`), and `InvalidSnapshot.InUse` is still handled at delete
//! time, since an AMI may be registered between plan and apply.

use std::collections::HashSet;

use ec2kit::{Ec2, Ec2Error, ErrorKind, Filter, Region, Snapshot, SnapshotId, SnapshotState};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::lineage::tags;
use crate::retention::{Decision, Guards, Plan, Policies};

/// What a trim calls: [`inventory`], [`ami_backed`] and [`apply`].
pub const PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::DescribeImages,
    ec2kit::Action::DeleteSnapshot,
]);

/// What [`apply`] adds when the policies archive (`archive_after`).
pub const ARCHIVE_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::ModifySnapshotTier]);

/// What [`restore_tier`] calls.
pub const RESTORE_TIER_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::RestoreSnapshotTier,
]);

/// What deleting broken snapshots calls: [`broken`], then [`apply`].
pub const BROKEN_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::DeleteSnapshot,
]);

/// What [`inventory`] and [`inventories`] call.
pub const INVENTORY_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeSnapshots]);

/// Which snapshots of a region retention considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Only snapshots ektool made (the default).
    #[default]
    Owned,
    /// Every snapshot the account owns (explicit adoption).
    Adopted,
}

impl Scope {
    /// `Adopted` when the user passed `--adopt`, else `Owned`.
    pub fn adopting(adopt: bool) -> Self {
        if adopt { Self::Adopted } else { Self::Owned }
    }
}

/// The snapshots of `region` in scope.
pub async fn inventory(
    ec2: &dyn Ec2,
    region: &Region,
    scope: Scope,
) -> Result<Vec<Snapshot>, Ec2Error> {
    let filters = match scope {
        Scope::Owned => vec![Filter::new(
            format!("tag:{}", tags::OWNER),
            [tags::OWNER_VALUE],
        )],
        Scope::Adopted => Vec::new(),
    };
    ec2.describe_snapshots(region, &filters).await
}

/// The inventory of several regions, at most `concurrency` at a time; a
/// failing region does not hide the others.
pub async fn inventories(
    ec2: &dyn Ec2,
    regions: &[Region],
    scope: Scope,
    concurrency: usize,
) -> Vec<ec2kit::fleet::RegionResult<Vec<Snapshot>>> {
    ec2kit::fleet::each_region(regions, concurrency, |r| inventory(ec2, r, scope)).await
}

/// The snapshots backing the account's AMIs in `region`.
pub async fn ami_backed(ec2: &dyn Ec2, region: &Region) -> Result<HashSet<SnapshotId>, Ec2Error> {
    Ok(ec2
        .describe_images(region, &[])
        .await?
        .iter()
        .flat_map(|i| i.snapshot_ids().cloned())
        .collect())
}

/// Plans `region` in one call: its snapshots in `scope`, the snapshots
/// its AMIs use (never deleted), and `policies` with the guards (the
/// newest completed per lineage, pending, preserved, `min_keep`).
pub async fn plan_region(
    ec2: &dyn Ec2,
    region: &Region,
    policies: &Policies,
    scope: Scope,
    now: jiff::Timestamp,
) -> Result<Plan, Ec2Error> {
    let snapshots = inventory(ec2, region, scope).await?;
    let ami = ami_backed(ec2, region).await?;
    let guards = Guards {
        adopt_unowned: scope == Scope::Adopted,
        ami_backed: Some(ami),
        ..Guards::default()
    };
    Ok(policies.plan(&snapshots, now, guards))
}

/// Plans `delete-broken` in `region`: every `error` snapshot in `scope`
/// deleted ([`broken`], [`broken_plan`]).
pub async fn plan_broken(
    ec2: &dyn Ec2,
    region: &Region,
    scope: Scope,
    now: jiff::Timestamp,
) -> Result<Plan, Ec2Error> {
    Ok(broken_plan(&broken(ec2, region, scope).await?, region, now))
}

/// What happened to one planned deletion or archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Deleted.
    Deleted,
    /// Moving to the archive tier (EC2 accepted `ModifySnapshotTier`).
    Archived,
    /// Already gone.
    AlreadyGone,
    /// EC2 refused because the snapshot is in use (an AMI appeared).
    InUse {
        /// EC2's message.
        message: String,
    },
    /// The call failed.
    Failed {
        /// The error.
        error: String,
        /// The EC2 error code.
        code: Option<String>,
    },
}

/// One planned deletion (or archive) and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its region.
    pub region: Option<Region>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Progress of [`apply`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum TrimEvent {
    /// One planned deletion or archive is done, whatever its outcome.
    Applied(Applied),
}

/// The result of applying a plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrimReport {
    /// One entry per planned deletion, then one per planned archive.
    pub results: Vec<Applied>,
}

impl TrimReport {
    /// How many were deleted (or already gone).
    pub fn deleted(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Deleted | Outcome::AlreadyGone))
            .count()
    }

    /// How many were sent to the archive tier.
    pub fn archived(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Archived)
            .count()
    }

    /// How many failed (in use or errors).
    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::InUse { .. } | Outcome::Failed { .. }))
            .count()
    }

    /// This region's run as metrics: `ektool_trim_deleted_snapshots` and
    /// `ektool_trim_failed_deletions`, labelled with `region`.
    pub fn add_metrics(&self, m: &mut crate::metrics::Metrics, region: &Region) {
        let labels = [("region", region.as_str())];
        m.gauge(
            "ektool_trim_deleted_snapshots",
            "Snapshots the last trim run deleted (or found already gone), by region.",
        )
        .sample(&labels, self.deleted() as f64);
        m.gauge(
            "ektool_trim_failed_deletions",
            "Deletions of the last trim run that failed, by region.",
        )
        .sample(&labels, self.failed() as f64);
    }
}

/// Deletes, then archives, what the plan says, at most `concurrency`
/// calls in flight (the `Ec2` implementation paces them to the API's
/// bucket). Only `completed` snapshots the plan marked are touched; a
/// failure is recorded and the rest go on. `on_event` sees each result as
/// it comes. Rerunning is safe: a snapshot already gone counts as deleted,
/// and a new plan no longer archives what is in the archive tier.
pub async fn apply(
    ec2: &dyn Ec2,
    plan: &Plan,
    default_region: &Region,
    concurrency: usize,
    on_event: &(dyn Fn(&TrimEvent) + Send + Sync),
) -> TrimReport {
    let todo: Vec<&Decision> = plan.deletions().chain(plan.archives()).collect();
    let results = stream::iter(todo)
        .map(|d| async move {
            let region = d.region.clone().unwrap_or_else(|| default_region.clone());
            let outcome = if d.action == crate::retention::Verdict::Archive {
                match ec2.modify_snapshot_tier(&region, &d.id, false).await {
                    Ok(()) => Outcome::Archived,
                    Err(e) => outcome_of(e),
                }
            } else {
                match ec2.delete_snapshot(&region, &d.id, false).await {
                    Ok(()) => Outcome::Deleted,
                    Err(e) => outcome_of(e),
                }
            };
            let applied = Applied {
                id: d.id.clone(),
                region: Some(region),
                outcome,
            };
            on_event(&TrimEvent::Applied(applied.clone()));
            applied
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    TrimReport { results }
}

fn outcome_of(e: Ec2Error) -> Outcome {
    match e.kind {
        ErrorKind::NotFound => Outcome::AlreadyGone,
        ErrorKind::InUse => Outcome::InUse {
            message: e.message.clone().unwrap_or_else(|| e.to_string()),
        },
        _ => Outcome::Failed {
            error: e.to_string(),
            code: e.code.clone(),
        },
    }
}

/// The outcome of [`restore_tier`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierRestored {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its region.
    pub region: Region,
    /// The tier it was in when asked.
    pub tier: ec2kit::StorageTier,
    /// What was asked.
    #[serde(flatten)]
    pub restore: ec2kit::requests::TierRestore,
    /// Whether the restore was only checked (`dry_run`: EC2 checked the
    /// permissions and the request, nothing changed).
    pub dry_run: bool,
}

/// Why [`restore_tier`] did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreTierError {
    /// No such snapshot in the region (among the account's own).
    #[error("snapshot {id} not found in {region}")]
    NotFound {
        /// The snapshot.
        id: SnapshotId,
        /// The region.
        region: Region,
    },
    /// The snapshot is in the standard tier: nothing to restore.
    #[error("snapshot {id} is in the {tier} tier, not archived")]
    NotArchived {
        /// The snapshot.
        id: SnapshotId,
        /// Its tier.
        tier: ec2kit::StorageTier,
    },
    /// A call failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
}

/// Brings an archived snapshot back (`RestoreSnapshotTier`): for
/// `Temporary { days }` or for good. Checks first that the snapshot exists
/// and is archived; with `dry_run` EC2 only checks the request.
pub async fn restore_tier(
    ec2: &dyn Ec2,
    region: &Region,
    id: &SnapshotId,
    restore: ec2kit::requests::TierRestore,
    dry_run: bool,
) -> Result<TierRestored, RestoreTierError> {
    let found = ec2
        .describe_snapshots(region, &[Filter::new("snapshot-id", [id.as_str()])])
        .await?;
    let snapshot =
        found
            .into_iter()
            .find(|s| &s.id == id)
            .ok_or_else(|| RestoreTierError::NotFound {
                id: id.clone(),
                region: region.clone(),
            })?;
    if snapshot.storage_tier == ec2kit::StorageTier::Standard {
        return Err(RestoreTierError::NotArchived {
            id: id.clone(),
            tier: snapshot.storage_tier,
        });
    }
    match ec2
        .restore_snapshot_tier(region, id, &restore, dry_run)
        .await
    {
        Ok(()) => {}
        Err(e) if dry_run && e.kind == ErrorKind::DryRunOk => {}
        Err(e) => return Err(e.into()),
    }
    Ok(TierRestored {
        id: id.clone(),
        region: region.clone(),
        tier: snapshot.storage_tier,
        restore,
        dry_run,
    })
}

/// The `error` snapshots in scope in `region` (for `delete-broken`).
pub async fn broken(
    ec2: &dyn Ec2,
    region: &Region,
    scope: Scope,
) -> Result<Vec<Snapshot>, Ec2Error> {
    let mut filters = vec![Filter::new("status", ["error"])];
    if scope == Scope::Owned {
        filters.push(Filter::new(
            format!("tag:{}", tags::OWNER),
            [tags::OWNER_VALUE],
        ));
    }
    let found = ec2.describe_snapshots(region, &filters).await?;
    // Belt and braces: never trust a filter to have been applied.
    Ok(found
        .into_iter()
        .filter(|s| {
            s.state == SnapshotState::Error
                && (scope == Scope::Adopted || crate::lineage::is_owned(s))
        })
        .collect())
}

/// The plan `delete-broken` applies: every snapshot in `broken` deleted,
/// the reason quoting EC2's state message.
pub fn broken_plan(broken: &[Snapshot], region: &Region, now: jiff::Timestamp) -> Plan {
    let decisions = broken
        .iter()
        .map(|s| Decision {
            id: s.id.clone(),
            action: crate::retention::Verdict::Delete,
            reason: crate::retention::Reason::Custom(match s.state_message.as_deref() {
                Some(m) => format!("state error: {m}"),
                None => "state error".to_owned(),
            }),
            lineage: crate::lineage::lineage_of(s).into(),
            start_time: s.start_time,
            region: Some(region.clone()),
            policy: "delete-broken".into(),
            size_gib: s.volume_size_gib,
        })
        .collect();
    Plan {
        now,
        decisions,
        notes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ec2kit::{Action, Bucket, MockEc2, Paced, RateLimits};
    use tokio::time::Instant;

    use super::*;
    use crate::retention::{Reason, Verdict};

    fn plan_deleting(n: usize) -> Plan {
        let decisions = (0..n)
            .map(|i| Decision {
                id: SnapshotId::from_api(format!("snap-{i:017x}")),
                action: Verdict::Delete,
                reason: Reason::Custom("test".into()),
                lineage: "vol-1".into(),
                start_time: jiff::Timestamp::UNIX_EPOCH,
                region: None,
                policy: "test".into(),
                size_gib: None,
            })
            .collect();
        Plan {
            now: jiff::Timestamp::UNIX_EPOCH,
            decisions,
            notes: vec![],
        }
    }

    #[test]
    fn broken_plan_deletes_each_with_ec2s_message() {
        let region = Region::new("eu-west-1");
        let mut a = Snapshot::new(
            SnapshotId::from_api("snap-0000000a"),
            None,
            jiff::Timestamp::UNIX_EPOCH,
            SnapshotState::Error,
        );
        a.state_message = Some("KMS key disabled".into());
        let mut b = a.clone();
        b.id = SnapshotId::from_api("snap-0000000b");
        b.state_message = None;
        let plan = broken_plan(&[a, b], &region, jiff::Timestamp::UNIX_EPOCH);
        let reasons: Vec<String> = plan.deletions().map(|d| d.reason.to_string()).collect();
        assert_eq!(reasons, ["state error: KMS key disabled", "state error"]);
        assert!(
            plan.decisions
                .iter()
                .all(|d| d.region.as_ref() == Some(&region))
        );
    }

    #[tokio::test]
    async fn outcomes_are_recorded_per_snapshot_and_failures_do_not_stop_the_rest() {
        let mut ec2 = MockEc2::new();
        ec2.expect_delete_snapshot()
            .times(4)
            .returning(|region, id, dry| {
                assert!(!dry);
                match id.as_str() {
                    "snap-00000000000000001" => Err(Ec2Error::from_code(
                        Action::DeleteSnapshot,
                        region.as_str(),
                        "InvalidSnapshot.InUse",
                        Some("in use by ami-1".into()),
                    )),
                    "snap-00000000000000002" => Err(Ec2Error::from_code(
                        Action::DeleteSnapshot,
                        region.as_str(),
                        "InvalidSnapshot.NotFound",
                        None,
                    )),
                    "snap-00000000000000003" => Err(Ec2Error::from_code(
                        Action::DeleteSnapshot,
                        region.as_str(),
                        "UnauthorizedOperation",
                        None,
                    )),
                    _ => Ok(()),
                }
            });
        let report = apply(
            &ec2,
            &plan_deleting(4),
            &Region::new("eu-west-1"),
            2,
            &|_| {},
        )
        .await;
        let outcomes: Vec<&Outcome> = report.results.iter().map(|r| &r.outcome).collect();
        assert_eq!(outcomes[0], &Outcome::Deleted);
        assert_eq!(
            outcomes[1],
            &Outcome::InUse {
                message: "in use by ami-1".into()
            }
        );
        assert_eq!(outcomes[2], &Outcome::AlreadyGone);
        assert!(
            matches!(outcomes[3], Outcome::Failed { code: Some(c), .. } if c == "UnauthorizedOperation")
        );
        assert_eq!((report.deleted(), report.failed()), (2, 2));
    }

    #[tokio::test]
    async fn keeps_are_never_sent() {
        let mut ec2 = MockEc2::new();
        ec2.expect_delete_snapshot().never();
        let mut plan = plan_deleting(3);
        for d in &mut plan.decisions {
            d.action = Verdict::Keep;
        }
        assert!(
            apply(&ec2, &plan, &Region::new("r"), 4, &|_| {})
                .await
                .results
                .is_empty()
        );
    }

    /// AWS's DeleteSnapshot bucket, simulated on tokio's clock.
    struct AwsBucket {
        tokens: f64,
        last: Instant,
        throttled: usize,
        sent: usize,
    }

    #[tokio::test(start_paused = true)]
    async fn five_thousand_deletes_pace_to_the_bucket_without_throttling() {
        let bucket = Bucket::new(100.0, 5.0);
        let state = Arc::new(Mutex::new(AwsBucket {
            tokens: bucket.burst,
            last: Instant::now(),
            throttled: 0,
            sent: 0,
        }));
        let mut mock = MockEc2::new();
        let s = state.clone();
        mock.expect_delete_snapshot()
            .returning(move |region, _, _| {
                let mut b = s.lock().unwrap();
                let now = Instant::now();
                b.tokens = (b.tokens
                    + now.duration_since(b.last).as_secs_f64() * bucket.per_second)
                    .min(bucket.burst);
                b.last = now;
                b.sent += 1;
                // AWS counts whole requests; allow float rounding only.
                if b.tokens < 1.0 - 1e-9 {
                    b.throttled += 1;
                    return Err(Ec2Error::from_code(
                        Action::DeleteSnapshot,
                        region.as_str(),
                        "RequestLimitExceeded",
                        None,
                    ));
                }
                b.tokens -= 1.0;
                Ok(())
            });
        let ec2 = Paced::new(mock, RateLimits::aws(), Region::new("us-east-1"));
        let start = Instant::now();
        let report = apply(
            &ec2,
            &plan_deleting(5000),
            &Region::new("us-east-1"),
            16,
            &|_| {},
        )
        .await;
        let took = start.elapsed();
        let minimum = bucket.minimum_time(5000);
        let b = state.lock().unwrap();
        println!(
            "trim of 5000 paced to 100/5s: {:.1}s virtual, minimum {:.1}s, ratio {:.4}, throttled {}",
            took.as_secs_f64(),
            minimum.as_secs_f64(),
            took.as_secs_f64() / minimum.as_secs_f64(),
            b.throttled
        );
        assert_eq!(b.throttled, 0);
        assert_eq!(report.deleted(), 5000);
        assert!(
            took.as_secs_f64() <= 1.1 * minimum.as_secs_f64(),
            "{took:?} vs minimum {minimum:?}"
        );
    }
}

#[cfg(test)]
mod plan_tests {
    use ec2kit::{Image, ImageBlockDevice, ImageId, MockEc2, VolumeId};

    use super::*;
    use crate::retention::{Gfs, Logarithmic, PolicySpec, Reason};

    fn snap(n: u64, state: SnapshotState) -> Snapshot {
        let mut s = Snapshot::new(
            SnapshotId::from_api(format!("snap-{n:017x}")),
            Some(VolumeId::from_api("vol-0000000000000000a")),
            jiff::Timestamp::from_second(1_700_000_000 + n as i64 * 86_400).unwrap(),
            state,
        );
        s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
        s
    }

    /// One call lists the owned snapshots and the AMIs, and the guards
    /// keep what backs an AMI and what is pending.
    #[tokio::test]
    async fn a_region_is_planned_in_one_call_with_its_guards() {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_snapshots().times(1).returning(|_, f| {
            assert!(f.contains(&Filter::new("tag:ektool:owner", ["ektool"])));
            Ok((1..=4)
                .map(|n| snap(n, SnapshotState::Completed))
                .chain([snap(5, SnapshotState::Pending)])
                .collect())
        });
        ec2.expect_describe_images()
            .times(1)
            .returning(|region, _| {
                Ok(vec![Image {
                    id: ImageId::from_api("ami-00000001"),
                    region: region.clone(),
                    name: None,
                    description: None,
                    state: "available".into(),
                    architecture: None,
                    root_device_name: None,
                    virtualization_type: None,
                    ena_support: None,
                    creation_date: None,
                    owner_id: None,
                    block_devices: vec![ImageBlockDevice {
                        device_name: "/dev/xvda".into(),
                        snapshot_id: Some(SnapshotId::from_api("snap-00000000000000002")),
                        volume_size_gib: None,
                        volume_type: None,
                        delete_on_termination: None,
                    }],
                    tags: ec2kit::Tags::new(),
                }])
            });
        let gfs = Gfs {
            keep_last: Some(1),
            ..Gfs::default()
        };
        let policies =
            Policies::new(PolicySpec::from_name("gfs", &Logarithmic::default(), &gfs).unwrap());
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let plan = plan_region(&ec2, &Region::new("r"), &policies, Scope::Owned, now)
            .await
            .unwrap();
        let deleted: Vec<&str> = plan.deletions().map(|d| d.id.as_str()).collect();
        assert_eq!(
            deleted,
            ["snap-00000000000000001", "snap-00000000000000003"]
        );
        let reason = |id: &str| {
            plan.decisions
                .iter()
                .find(|d| d.id.as_str() == id)
                .map(|d| d.reason.clone())
        };
        assert_eq!(reason("snap-00000000000000002"), Some(Reason::BacksAmi));
        assert_eq!(reason("snap-00000000000000005"), Some(Reason::Pending));
        assert!(plan.notes.is_empty(), "AMIs were checked: {:?}", plan.notes);
    }
}

#[cfg(test)]
mod broken_tests {
    use ec2kit::{MockEc2, Snapshot, SnapshotId, SnapshotState};

    use super::*;

    #[tokio::test]
    async fn broken_asks_for_owned_error_snapshots_and_double_checks() {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_snapshots().times(1).returning(|_, f| {
            assert!(f.contains(&Filter::new("status", ["error"])));
            assert!(f.contains(&Filter::new("tag:ektool:owner", ["ektool"])));
            let mut owned = Snapshot::new(
                SnapshotId::from_api("snap-0000000a"),
                None,
                jiff::Timestamp::UNIX_EPOCH,
                SnapshotState::Error,
            );
            owned.tags.insert(tags::OWNER, tags::OWNER_VALUE);
            // A filter the server ignored: not ours, and not in error.
            let foreign = Snapshot::new(
                SnapshotId::from_api("snap-0000000b"),
                None,
                jiff::Timestamp::UNIX_EPOCH,
                SnapshotState::Error,
            );
            let mut fine = Snapshot::new(
                SnapshotId::from_api("snap-0000000c"),
                None,
                jiff::Timestamp::UNIX_EPOCH,
                SnapshotState::Completed,
            );
            fine.tags.insert(tags::OWNER, tags::OWNER_VALUE);
            Ok(vec![owned, foreign, fine])
        });
        let found = broken(&ec2, &Region::new("r"), Scope::Owned).await.unwrap();
        assert_eq!(
            found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["snap-0000000a"]
        );
    }
}

#[cfg(test)]
mod archive_tests {
    use ec2kit::requests::TierRestore;
    use ec2kit::{Action, MockEc2, StorageTier};

    use super::*;
    use crate::retention::{Reason, Verdict};

    fn decision(n: u64, action: Verdict) -> Decision {
        Decision {
            id: SnapshotId::from_api(format!("snap-{n:017x}")),
            action,
            reason: Reason::Custom("test".into()),
            lineage: "vol-1".into(),
            start_time: jiff::Timestamp::UNIX_EPOCH,
            region: None,
            policy: "test".into(),
            size_gib: Some(1),
        }
    }

    /// Deletes go to `DeleteSnapshot`, archives to `ModifySnapshotTier`,
    /// keeps nowhere; a failed archive is a failure, an archive of a
    /// snapshot gone meanwhile is not.
    #[tokio::test]
    async fn archives_are_sent_as_tier_changes_after_the_deletes() {
        let mut ec2 = MockEc2::new();
        ec2.expect_delete_snapshot().times(1).returning(|_, id, _| {
            assert_eq!(id.as_str(), "snap-00000000000000001");
            Ok(())
        });
        ec2.expect_modify_snapshot_tier()
            .times(3)
            .returning(|region, id, dry| {
                assert!(!dry);
                match id.as_str() {
                    "snap-00000000000000003" => Err(Ec2Error::from_code(
                        Action::ModifySnapshotTier,
                        region.as_str(),
                        "InvalidSnapshot.NotFound",
                        None,
                    )),
                    "snap-00000000000000004" => Err(Ec2Error::from_code(
                        Action::ModifySnapshotTier,
                        region.as_str(),
                        "UnauthorizedOperation",
                        None,
                    )),
                    _ => Ok(()),
                }
            });
        let plan = Plan {
            now: jiff::Timestamp::UNIX_EPOCH,
            decisions: vec![
                decision(1, Verdict::Delete),
                decision(2, Verdict::Archive),
                decision(3, Verdict::Archive),
                decision(4, Verdict::Archive),
                decision(5, Verdict::Keep),
            ],
            notes: vec![],
        };
        let report = apply(&ec2, &plan, &Region::new("r"), 2, &|_| {}).await;
        let outcomes: Vec<(&str, &Outcome)> = report
            .results
            .iter()
            .map(|r| (r.id.as_str(), &r.outcome))
            .collect();
        assert_eq!(outcomes[0], ("snap-00000000000000001", &Outcome::Deleted));
        assert_eq!(outcomes[1], ("snap-00000000000000002", &Outcome::Archived));
        assert_eq!(outcomes[2].1, &Outcome::AlreadyGone);
        assert!(matches!(outcomes[3].1, Outcome::Failed { .. }));
        assert_eq!(
            (report.deleted(), report.archived(), report.failed()),
            (2, 1, 1)
        );
    }

    #[tokio::test]
    async fn restore_tier_checks_the_tier_first() {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_snapshots().returning(|_, f| {
            assert_eq!(f[0].name, "snapshot-id");
            let id = f[0].values[0].clone();
            let mut s = Snapshot::new(
                SnapshotId::from_api(id.clone()),
                None,
                jiff::Timestamp::UNIX_EPOCH,
                SnapshotState::Completed,
            );
            if id.ends_with('a') {
                s.storage_tier = StorageTier::Archive;
            }
            Ok(if id.ends_with('0') { vec![] } else { vec![s] })
        });
        ec2.expect_restore_snapshot_tier()
            .times(1)
            .returning(|_, id, restore, dry| {
                assert_eq!(id.as_str(), "snap-0000000a");
                assert_eq!(restore, &TierRestore::Temporary { days: 7 });
                assert!(!dry);
                Ok(())
            });
        let r = Region::new("r");
        let seven = TierRestore::Temporary { days: 7 };
        let done = restore_tier(
            &ec2,
            &r,
            &SnapshotId::from_api("snap-0000000a"),
            seven,
            false,
        )
        .await
        .unwrap();
        assert_eq!(done.tier, StorageTier::Archive);
        assert!(matches!(
            restore_tier(
                &ec2,
                &r,
                &SnapshotId::from_api("snap-0000000b"),
                seven,
                false
            )
            .await,
            Err(RestoreTierError::NotArchived { .. })
        ));
        assert!(matches!(
            restore_tier(
                &ec2,
                &r,
                &SnapshotId::from_api("snap-00000000"),
                seven,
                false
            )
            .await,
            Err(RestoreTierError::NotFound { .. })
        ));
    }
}
