//! Retention: which snapshots to keep, and why.
//!
//! A [`RetentionPolicy`] is pure: given one lineage's completed snapshots
//! (oldest first) and `now`, it returns a verdict and a reason for each.
//! The [`Planner`] groups an inventory by lineage, asks the policy, then
//! applies the safety guards no policy can override ([`Guards`]) and
//! returns a [`Plan`]: a plain value that `--dry-run` prints and `trim`
//! executes.

mod gfs;
pub mod html;
mod logarithmic;
mod max_age;
mod parse;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use ec2kit::{Region, Snapshot, SnapshotId, SnapshotState};
use jiff::Timestamp;
use serde::{Serialize, Serializer};

use crate::lineage::{description_names_ami, is_owned, is_preserved, lineage_key};

pub use gfs::{Gfs, GfsDuration, GfsRules, InvalidDuration, MAX_YEARS, MIN_COUNT};
pub use logarithmic::Logarithmic;
pub use max_age::MaxAge;
pub use parse::{Policies, PolicyError, PolicySpec};

// `ArchiveAfter`, `ArchiveCost` and `TierPrices` are defined below.

/// Keep, delete, or keep in the archive tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The snapshot stays.
    Keep,
    /// The snapshot goes.
    Delete,
    /// The snapshot stays, moved to the archive tier (`ModifySnapshotTier`).
    /// Only the planner gives it, never a policy: a policy's `Archive` is
    /// read as `Keep`.
    Archive,
}

impl Verdict {
    /// Whether the snapshot stays (kept or archived).
    pub fn is_kept(self) -> bool {
        self != Self::Delete
    }
}

/// Why a verdict was reached. Formatted only when shown.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reason {
    /// The newest snapshot of its lineage.
    Newest,
    /// Logarithmic: the oldest snapshot in the interval (e.g.
    /// `[2013-01-01 00:00, 2013-01-20 14:30)`).
    OldestInInterval(Arc<str>),
    /// Logarithmic: an older snapshot already represents the interval.
    IntervalTaken(Arc<str>),
    /// Logarithmic: newer than the newest target (the current hour).
    AfterLastTarget,
    /// GFS: the rules that keep it, restic-style (`daily snapshot`,
    /// `oldest monthly snapshot`, `within 1y6m`).
    Rules(GfsRules),
    /// GFS: no rule wants it.
    NoRule,
    /// Max-age: younger than the limit.
    YoungerThan(String),
    /// Max-age: older than the limit.
    OlderThan(String),
    /// Guard: not made by ektool (and not adopted).
    NotOwned,
    /// Guard: still pending.
    Pending,
    /// Guard: in another state than completed (error snapshots are removed
    /// by `delete-broken`, not by retention).
    NotCompleted(SnapshotState),
    /// Guard: the newest completed snapshot of its lineage.
    NewestCompleted,
    /// Guard: backs an AMI.
    BacksAmi,
    /// Guard: tagged `preserve_snapshot`.
    Preserved,
    /// Guard: kept to reach the minimum per lineage.
    MinKeep(usize),
    /// A user policy's own words.
    Custom(String),
    /// Kept (for `kept`), and older than `after`: to the archive tier.
    Archive {
        /// Why the policy (or a guard) keeps it.
        kept: Box<Reason>,
        /// The `archive_after` in force, as written (`90d`).
        after: String,
    },
}

pub(crate) fn ts(t: &Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M").to_string()
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Newest => f.write_str("newest snapshot of its lineage"),
            Self::OldestInInterval(interval) => write!(f, "oldest in {interval}"),
            Self::IntervalTaken(interval) => write!(f, "{interval} already has an older snapshot"),
            Self::AfterLastTarget => f.write_str("within the current hour"),
            Self::Rules(rules) => rules.fmt(f),
            Self::NoRule => f.write_str("no keep rule wants it"),
            Self::YoungerThan(d) => write!(f, "younger than {d}"),
            Self::OlderThan(d) => write!(f, "older than {d}"),
            Self::NotOwned => f.write_str("guard: not made by ektool"),
            Self::Pending => f.write_str("guard: pending"),
            Self::NotCompleted(s) => write!(
                f,
                "guard: state {s} (delete-broken handles error snapshots)"
            ),
            Self::NewestCompleted => f.write_str("guard: newest completed snapshot of its lineage"),
            Self::BacksAmi => f.write_str("guard: backs an AMI"),
            Self::Preserved => f.write_str("guard: tagged preserve_snapshot"),
            Self::MinKeep(n) => write!(f, "guard: keep at least {n} per lineage"),
            Self::Custom(s) => f.write_str(s),
            Self::Archive { kept, after } => {
                write!(f, "{kept}; older than {after}: to the archive tier")
            }
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Reason {
    /// Whether a safety guard (not the policy) decided.
    pub fn is_guard(&self) -> bool {
        matches!(
            self,
            Self::NotOwned
                | Self::Pending
                | Self::NotCompleted(_)
                | Self::NewestCompleted
                | Self::BacksAmi
                | Self::Preserved
                | Self::MinKeep(_)
        )
    }
}

/// A retention policy: pure, deterministic, per lineage.
///
/// ```
/// use snapkit::retention::{Reason, RetentionPolicy, Verdict};
/// use ec2kit::Snapshot;
/// use jiff::Timestamp;
///
/// /// Keep the three newest; the guards still apply on top.
/// struct KeepThree;
///
/// impl RetentionPolicy for KeepThree {
///     fn name(&self) -> String { "keep-three".into() }
///     fn decide(&self, snapshots: &[&Snapshot], _now: Timestamp) -> Vec<(Verdict, Reason)> {
///         let n = snapshots.len();
///         (0..n).map(|i| if i + 3 >= n {
///             (Verdict::Keep, Reason::Custom("one of the three newest".into()))
///         } else {
///             (Verdict::Delete, Reason::Custom("older than the three newest".into()))
///         }).collect()
///     }
/// }
/// ```
pub trait RetentionPolicy: Send + Sync {
    /// A short name for plans and logs.
    fn name(&self) -> String;

    /// Decides for one lineage: `snapshots` are its completed, owned
    /// snapshots sorted oldest first. Returns one verdict per snapshot, in
    /// the same order.
    fn decide(&self, snapshots: &[&Snapshot], now: Timestamp) -> Vec<(Verdict, Reason)>;

    /// Plans a whole inventory with the default [`Guards`].
    fn plan(&self, snapshots: &[Snapshot], now: Timestamp) -> Plan
    where
        Self: Sized,
    {
        Planner::new(self).plan(snapshots, now)
    }
}

/// One snapshot's fate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Keep or delete.
    pub action: Verdict,
    /// Why.
    pub reason: Reason,
    /// Its lineage.
    pub lineage: Arc<str>,
    /// When it was taken.
    #[serde(serialize_with = "ec2kit::rfc3339::serialize")]
    pub start_time: Timestamp,
    /// Its region, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    /// The policy that decided (or that the guards overrode).
    pub policy: Arc<str>,
    /// Size of its source volume in GiB (what the archive tier bills: a
    /// full snapshot is at most this), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<i32>,
}

/// The decisions for an inventory, in lineage and time order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The time the plan was made for.
    pub now: Timestamp,
    /// One decision per snapshot of the inventory.
    pub decisions: Vec<Decision>,
    /// What the plan could not check (e.g. AMIs, offline).
    pub notes: Vec<String>,
}

impl Plan {
    /// The decisions to delete.
    pub fn deletions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| d.action == Verdict::Delete)
    }

    /// The decisions to move to the archive tier.
    pub fn archives(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| d.action == Verdict::Archive)
    }

    /// What the plan's archives move and what they change in the monthly
    /// bill at `prices` (every decision priced alike: plan one region at a
    /// time, as `trim` does).
    pub fn archive_cost(&self, prices: Option<TierPrices>) -> ArchiveCost {
        let mut cost = ArchiveCost {
            snapshots: 0,
            bytes: 0,
            unknown_size: 0,
            prices,
            monthly_difference: None,
        };
        let mut gib: u64 = 0;
        for d in self.archives() {
            cost.snapshots += 1;
            match d.size_gib.and_then(|g| u64::try_from(g).ok()) {
                Some(g) => gib += g,
                None => cost.unknown_size += 1,
            }
        }
        cost.bytes = gib.saturating_mul(1 << 30);
        cost.monthly_difference = prices.map(|p| {
            let gib = gib as f64;
            gib * p.archive_gb_month - gib * p.standard_gb_month
        });
        cost
    }

    /// `(kept, deleted)`; archived snapshots count as kept.
    pub fn counts(&self) -> (usize, usize) {
        let deleted = self.deletions().count();
        (self.decisions.len() - deleted, deleted)
    }
}

/// List prices of snapshot storage in one region, in USD per GB-month
/// (EBS bills snapshots per GiB, which its price list calls GB).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPrices {
    /// The standard tier (billed for the blocks a snapshot adds).
    pub standard_gb_month: f64,
    /// The archive tier (billed for the full snapshot).
    pub archive_gb_month: f64,
}

impl TierPrices {
    /// us-east-1's list prices: standard $0.05, archive $0.0125.
    pub const US_EAST_1: TierPrices = TierPrices {
        standard_gb_month: 0.05,
        archive_gb_month: 0.0125,
    };
}

/// The archives of a plan, in bytes and in the monthly bill.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ArchiveCost {
    /// Snapshots moving to the archive tier.
    pub snapshots: usize,
    /// Their full size in bytes (the source volumes' sizes: an upper
    /// bound of what the archive tier bills).
    pub bytes: u64,
    /// Snapshots of unknown size (not in `bytes`).
    pub unknown_size: usize,
    /// The prices used, when the region has any.
    pub prices: Option<TierPrices>,
    /// Archive minus standard per month, in USD, for `bytes` at list
    /// prices, as if the standard tier billed each snapshot in full
    /// (negative: a saving). The standard tier bills only the blocks a
    /// snapshot adds to its lineage, so the real saving is at most this.
    pub monthly_difference: Option<f64>,
}

/// The safety guards, applied after any policy.
#[derive(Debug, Clone)]
pub struct Guards {
    /// Keep at least this many completed snapshots per lineage (>= 1: the
    /// newest completed is always kept).
    pub min_keep: usize,
    /// Also consider snapshots ektool did not make (explicit adoption).
    pub adopt_unowned: bool,
    /// Snapshots that back AMIs; `None` when unknown (offline planning).
    pub ami_backed: Option<HashSet<SnapshotId>>,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            min_keep: 1,
            adopt_unowned: false,
            ami_backed: None,
        }
    }
}

/// Plans an inventory: a default policy, per-lineage overrides, guards.
pub struct Planner<'a> {
    default: &'a dyn RetentionPolicy,
    overrides: HashMap<String, &'a dyn RetentionPolicy>,
    guards: Guards,
    archive_after: Option<ArchiveAfter>,
    archive_overrides: HashMap<String, Option<ArchiveAfter>>,
}

/// After how long a kept snapshot moves to the archive tier
/// (`[retention] archive_after = "90d"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveAfter {
    /// The age.
    pub age: jiff::SignedDuration,
    /// As written, for reasons (`90d`).
    pub written: String,
}

impl std::str::FromStr for ArchiveAfter {
    type Err = PolicyError;

    /// Days and/or hours (`90d`, `36h`, `1d12h`), as `max-age:` takes them;
    /// `0d` archives every kept snapshot but the newest of its lineage.
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let t = s.trim();
        // `0d`, `0h`: a duration of nothing, which `max-age:` refuses.
        if ["0", "0d", "0h"].contains(&t) {
            return Ok(Self {
                age: jiff::SignedDuration::ZERO,
                written: t.to_owned(),
            });
        }
        let age = parse::parse_age(t)
            .map_err(|_| PolicyError::ArchiveAfter(s.chars().take(40).collect()))?;
        if age < jiff::SignedDuration::ZERO {
            return Err(PolicyError::ArchiveAfter(s.chars().take(40).collect()));
        }
        Ok(Self {
            age,
            written: s.trim().to_owned(),
        })
    }
}

impl<'a> Planner<'a> {
    /// A planner with the default guards.
    pub fn new(default: &'a dyn RetentionPolicy) -> Self {
        Self {
            default,
            overrides: HashMap::new(),
            guards: Guards::default(),
            archive_after: None,
            archive_overrides: HashMap::new(),
        }
    }

    /// Moves kept snapshots older than `after` to the archive tier (never
    /// the newest of a lineage, one that backs an AMI or one already
    /// archived); `None`: never.
    #[must_use]
    pub fn with_archive_after(mut self, after: Option<ArchiveAfter>) -> Self {
        self.archive_after = after;
        self
    }

    /// Uses `after` for the lineage `lineage` (a volume alias's own
    /// `archive_after`; `None`: never archive it).
    #[must_use]
    pub fn with_lineage_archive_after(
        mut self,
        lineage: impl Into<String>,
        after: Option<ArchiveAfter>,
    ) -> Self {
        self.archive_overrides.insert(lineage.into(), after);
        self
    }

    /// Uses `policy` for the lineage `lineage` (a volume alias's strategy).
    #[must_use]
    pub fn with_lineage_policy(
        mut self,
        lineage: impl Into<String>,
        policy: &'a dyn RetentionPolicy,
    ) -> Self {
        self.overrides.insert(lineage.into(), policy);
        self
    }

    /// Sets the guards.
    #[must_use]
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    fn backs_ami(&self, s: &Snapshot) -> bool {
        self.guards
            .ami_backed
            .as_ref()
            .is_some_and(|a| a.contains(&s.id))
            || description_names_ami(s)
    }

    /// Plans the inventory.
    pub fn plan(&self, snapshots: &[Snapshot], now: Timestamp) -> Plan {
        // Inventories list a lineage's snapshots together: the previous
        // snapshot's lineage is checked before the map.
        let mut index: HashMap<std::borrow::Cow<'_, str>, usize> = HashMap::new();
        let mut lineages: Vec<(std::borrow::Cow<'_, str>, Vec<&Snapshot>)> = Vec::new();
        let mut last: Option<usize> = None;
        for s in snapshots {
            let key = lineage_key(s);
            let i = match last.filter(|&i| lineages[i].0 == key) {
                Some(i) => i,
                None => *index.entry(key.clone()).or_insert_with(|| {
                    lineages.push((key, Vec::new()));
                    lineages.len() - 1
                }),
            };
            lineages[i].1.push(s);
            last = Some(i);
        }
        drop(index);
        lineages.sort_by(|a, b| a.0.cmp(&b.0));

        let min_keep = self.guards.min_keep.max(1);
        let mut decisions = Vec::with_capacity(snapshots.len());
        for (lineage, mut group) in lineages {
            group.sort_by(|a, b| {
                a.start_time
                    .cmp(&b.start_time)
                    .then_with(|| a.id.cmp(&b.id))
            });
            let policy = self
                .overrides
                .get(lineage.as_ref())
                .copied()
                .unwrap_or(self.default);
            let policy_name: Arc<str> = policy.name().into();
            let lineage: Arc<str> = lineage.as_ref().into();
            let decision = |s: &Snapshot, action, reason| Decision {
                id: s.id.clone(),
                action,
                reason,
                lineage: lineage.clone(),
                start_time: s.start_time,
                region: s.region.clone(),
                policy: policy_name.clone(),
                size_gib: s.volume_size_gib,
            };

            let (eligible, others): (Vec<&Snapshot>, Vec<&Snapshot>) =
                group.iter().partition(|s| {
                    s.state == SnapshotState::Completed
                        && (self.guards.adopt_unowned || is_owned(s))
                });
            let mut verdicts = if eligible.is_empty() {
                Vec::new()
            } else {
                policy.decide(&eligible, now)
            };
            // A policy that returns the wrong number of verdicts must not
            // cause deletions: missing verdicts are keeps.
            verdicts.resize(
                eligible.len(),
                (
                    Verdict::Keep,
                    Reason::Custom("policy gave no verdict".into()),
                ),
            );

            for (i, s) in eligible.iter().enumerate() {
                let guard = if i + 1 == eligible.len() {
                    Some(Reason::NewestCompleted)
                } else if is_preserved(s) {
                    Some(Reason::Preserved)
                } else if self.backs_ami(s) {
                    Some(Reason::BacksAmi)
                } else {
                    None
                };
                if let (Some(g), Verdict::Delete) = (guard, verdicts[i].0) {
                    verdicts[i] = (Verdict::Keep, g);
                }
            }
            let mut kept = verdicts.iter().filter(|v| v.0 == Verdict::Keep).count();
            for v in verdicts.iter_mut().rev() {
                if kept >= min_keep {
                    break;
                }
                if v.0 == Verdict::Delete {
                    *v = (Verdict::Keep, Reason::MinKeep(min_keep));
                    kept += 1;
                }
            }

            // A policy's own "archive" is a keep: only the planner archives.
            for v in &mut verdicts {
                if v.0 == Verdict::Archive {
                    v.0 = Verdict::Keep;
                }
            }
            let archive_after = match self.archive_overrides.get(lineage.as_ref()) {
                Some(a) => a.as_ref(),
                None => self.archive_after.as_ref(),
            };
            if let Some(after) = archive_after {
                let newest = eligible.len().saturating_sub(1);
                for (i, s) in eligible.iter().enumerate() {
                    if verdicts[i].0 != Verdict::Keep
                        || i == newest
                        || s.storage_tier != ec2kit::StorageTier::Standard
                        || self.backs_ami(s)
                        || now.duration_since(s.start_time) < after.age
                    {
                        continue;
                    }
                    let kept = std::mem::replace(&mut verdicts[i].1, Reason::NoRule);
                    verdicts[i] = (
                        Verdict::Archive,
                        Reason::Archive {
                            kept: Box::new(kept),
                            after: after.written.clone(),
                        },
                    );
                }
            }

            let mut lineage_decisions: Vec<Decision> = eligible
                .iter()
                .zip(verdicts)
                .map(|(s, (action, reason))| decision(s, action, reason))
                .chain(others.iter().map(|s| {
                    let reason = if s.state == SnapshotState::Pending {
                        Reason::Pending
                    } else if s.state != SnapshotState::Completed {
                        Reason::NotCompleted(s.state.clone())
                    } else {
                        Reason::NotOwned
                    };
                    decision(s, Verdict::Keep, reason)
                }))
                .collect();
            lineage_decisions.sort_by(|a, b| {
                a.start_time
                    .cmp(&b.start_time)
                    .then_with(|| a.id.cmp(&b.id))
            });
            decisions.extend(lineage_decisions);
        }
        let mut notes = Vec::new();
        if self.guards.ami_backed.is_none() {
            notes.push("AMI-backed snapshots were not checked (offline plan); trim re-checks before deleting".to_owned());
        }
        Plan {
            now,
            decisions,
            notes,
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::lineage::tags;
    use ec2kit::VolumeId;

    /// An owned, completed snapshot of `volume` at `time` (RFC 3339).
    pub(crate) fn snap(id: u64, volume: &str, time: &str) -> Snapshot {
        let mut s = Snapshot::new(
            SnapshotId::from_api(format!("snap-{id:017x}")),
            Some(VolumeId::from_api(volume)),
            time.parse().expect("timestamp"),
            SnapshotState::Completed,
        );
        s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
        s
    }

    /// Timestamps of the kept snapshots, formatted `YYYY-MM-DD HH:MM`.
    pub(crate) fn kept_times(plan: &Plan) -> Vec<String> {
        plan.decisions
            .iter()
            .filter(|d| d.action.is_kept())
            .map(|d| ts(&d.start_time))
            .collect()
    }
}

#[cfg(test)]
mod tests;
