//! Freshness: is the newest good backup of every volume recent enough?
//!
//! [`check`] looks, in every selected region at once, at the instances
//! carrying a tag and at named volumes (the config's aliases), and finds
//! for each of their volumes the newest **completed** snapshot of its
//! lineage ([`crate::lineage`]'s rules: copies group with their source)
//! and its age. With a [`ReplicaCheck`], it also finds the newest
//! completed copy of each lineage in the replication destination. The
//! result is a plain [`CheckReport`]; [`CheckReport::failures`] lists,
//! one per line, the lineages never backed up, the stale ones, the
//! `error` snapshots and the regions that could not be listed.
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2) {
//! use std::time::Duration;
//! use ec2kit::{Region, Tag};
//! use snapkit::check::{self, CheckSpec};
//!
//! let spec = CheckSpec {
//!     regions: vec![Region::new("eu-west-1"), Region::new("us-east-1")],
//!     tag: Some(Tag::new("Earmarking", "production")),
//!     max_age: Duration::from_secs(26 * 3600),
//!     ..CheckSpec::default()
//! };
//! let report = check::check(ec2, &spec, jiff::Timestamp::now()).await;
//! for failure in report.failures() {
//!     eprintln!("{failure}");
//! }
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use ec2kit::{
    Ec2, Ec2Error, Filter, InstanceId, Region, Snapshot, SnapshotId, SnapshotState, Tag, VolumeId,
};
use jiff::Timestamp;
use serde::Serialize;

use crate::lineage;
use crate::trim::{self, Scope};

/// What [`check`] calls: the tagged instances and the owned snapshots of
/// each region (and of the replication destination).
pub const PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeInstances,
    ec2kit::Action::DescribeSnapshots,
]);

/// The threshold when nothing else says: a daily backup plus two hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(26 * 3600);

/// One named volume to check (a config alias).
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeTarget {
    /// The alias (shown in the report).
    pub alias: String,
    /// The region the volume lives in.
    pub region: Region,
    /// The volume: its lineage key.
    pub volume: VolumeId,
    /// Its own threshold, over [`CheckSpec::max_age`].
    pub max_age: Option<Duration>,
}

/// Copies in the replication destination are checked too.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaCheck {
    /// The destination region.
    pub region: Region,
    /// How old the data of the newest copy may be.
    pub max_age: Duration,
}

/// What to check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// Regions whose tagged instances are checked.
    pub regions: Vec<Region>,
    /// Instances carrying this tag are checked (every attached volume);
    /// `None`: only [`volumes`](Self::volumes).
    pub tag: Option<Tag>,
    /// Leave instances' root volumes out (as `snap backup --exclude-boot`).
    pub exclude_boot: bool,
    /// Volumes never checked (as `snap backup --exclude-volume`).
    pub exclude_volumes: Vec<VolumeId>,
    /// Named volumes; checked when their region is in
    /// [`regions`](Self::regions).
    pub volumes: Vec<VolumeTarget>,
    /// The threshold of every lineage without a more specific one.
    pub max_age: Duration,
    /// Thresholds of instances carrying a tag: the smallest matching one
    /// wins over [`max_age`](Self::max_age).
    pub tag_max_age: Vec<(Tag, Duration)>,
    /// Also check copies in a destination region.
    pub replica: Option<ReplicaCheck>,
    /// Regions listed at once.
    pub concurrency: usize,
    /// Each source lineage must have passed a restore test
    /// ([`crate::verify`]) this recently; `None`: not checked.
    pub max_unverified: Option<Duration>,
}

impl Default for CheckSpec {
    fn default() -> Self {
        Self {
            regions: Vec::new(),
            tag: None,
            exclude_boot: false,
            exclude_volumes: Vec::new(),
            volumes: Vec::new(),
            max_age: DEFAULT_MAX_AGE,
            tag_max_age: Vec::new(),
            replica: None,
            concurrency: ec2kit::fleet::DEFAULT_REGION_CONCURRENCY,
            max_unverified: None,
        }
    }
}

/// Where a checked snapshot lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// In the region the volume lives in.
    Source,
    /// A copy in the replication destination.
    Replica,
    /// A copy in the vault account ([`check_vault`], [`check_vault_copies`]).
    Vault,
}

/// The verdict on one lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// The newest completed snapshot is within the threshold.
    Fresh,
    /// It is older than the threshold.
    Stale,
    /// There is no completed snapshot (or copy) at all.
    Missing,
}

/// One lineage (volume) in one place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineageCheck {
    /// Where the snapshots were looked for.
    pub region: Region,
    /// Source or replica.
    pub place: Place,
    /// The lineage key (the volume id; in a vault, `ACCOUNT/KEY`).
    pub lineage: String,
    /// In a vault: the account the copies came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_account: Option<String>,
    /// The instance the volume is attached to, when found by tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    /// The device it is attached as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The config alias, when named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The newest completed snapshot.
    pub newest: Option<SnapshotId>,
    /// The point in time of its data (a copy's source time).
    pub newest_time: Option<Timestamp>,
    /// Seconds between that and the check's time.
    pub age_seconds: Option<i64>,
    /// The threshold applied, in seconds.
    pub max_age_seconds: u64,
    /// The verdict.
    pub status: Freshness,
    /// Completed snapshots of the lineage here.
    pub completed: usize,
    /// Its snapshots in `error` state here.
    pub errors: Vec<SnapshotId>,
    /// The last successful restore test, when
    /// [`CheckSpec::max_unverified`] asks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

/// A lineage's last successful restore test, against its threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verified {
    /// The newest snapshot whose restore test passed.
    pub snapshot: Option<SnapshotId>,
    /// When that test ran.
    pub at: Option<Timestamp>,
    /// Seconds since then.
    pub age_seconds: Option<i64>,
    /// The threshold, in seconds.
    pub max_seconds: u64,
    /// Whether it is within the threshold.
    pub ok: bool,
}

/// A region's owned snapshots, for the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionStats {
    /// The region.
    pub region: Region,
    /// Snapshots ektool made there, any state.
    pub snapshots: usize,
    /// The sum of their volume sizes, in bytes (EC2 does not report the
    /// incremental size a snapshot is billed for).
    pub volume_bytes: u64,
}

/// A region that could not be listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionFailure {
    /// The region.
    pub region: Region,
    /// Why.
    pub error: String,
}

/// The result of [`check`]: a plain value, serialisable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// The time ages are measured from.
    pub now: Timestamp,
    /// Every checked lineage, sources first, by region then lineage.
    pub lineages: Vec<LineageCheck>,
    /// Per region listed (the destination included).
    pub regions: Vec<RegionStats>,
    /// Regions that could not be listed: their lineages are unknown.
    pub region_errors: Vec<RegionFailure>,
}

/// One failure of a check, as one line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "failure")]
#[non_exhaustive]
pub enum Failure<'a> {
    /// A lineage without any completed snapshot.
    Missing(&'a LineageCheck),
    /// A lineage whose newest completed snapshot is too old.
    Stale(&'a LineageCheck),
    /// A snapshot of a checked lineage in `error` state.
    Error {
        /// Its lineage.
        lineage: &'a LineageCheck,
        /// The snapshot.
        snapshot: &'a SnapshotId,
    },
    /// A region that could not be listed.
    Region(&'a RegionFailure),
    /// A lineage without a successful restore test recently enough.
    Unverified(&'a LineageCheck),
}

fn whose(l: &LineageCheck) -> String {
    let mut s = format!("{} {}", l.region, l.lineage);
    if let Some(a) = &l.alias {
        s.push_str(&format!(" ({a})"));
    }
    if let Some(i) = &l.instance {
        match &l.device {
            Some(d) => s.push_str(&format!(" ({i} {d})")),
            None => s.push_str(&format!(" ({i})")),
        }
    }
    match l.place {
        Place::Source => {}
        Place::Replica => s.push_str(" replica"),
        Place::Vault => s.push_str(" vault"),
    }
    s
}

fn human(seconds: u64) -> String {
    ec2kit::duration::format(Duration::from_secs(seconds))
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(l) => write!(f, "missing: {}: no completed snapshot", whose(l)),
            Self::Stale(l) => write!(
                f,
                "stale: {}: newest {} is {} old, more than {}",
                whose(l),
                l.newest.as_ref().map_or("?", |s| s.as_str()),
                human(l.age_seconds.unwrap_or(0).max(0) as u64),
                human(l.max_age_seconds)
            ),
            Self::Error { lineage, snapshot } => {
                write!(
                    f,
                    "error: {}: snapshot {snapshot} is in error state",
                    whose(lineage)
                )
            }
            Self::Region(r) => write!(f, "region: {}: could not be listed: {}", r.region, r.error),
            Self::Unverified(l) => {
                let v = l.verified.as_ref();
                let max = human(v.map_or(0, |v| v.max_seconds));
                match v.and_then(|v| Some((v.snapshot.as_ref()?, v.age_seconds?))) {
                    Some((s, age)) => write!(
                        f,
                        "unverified: {}: last successful restore test ({s}) {} ago, more than {max}",
                        whose(l),
                        human(age.max(0) as u64)
                    ),
                    None => write!(
                        f,
                        "unverified: {}: no successful restore test (within {max})",
                        whose(l)
                    ),
                }
            }
        }
    }
}

impl CheckReport {
    /// Every failure, one per line: regions, then per lineage missing or
    /// stale, then its `error` snapshots.
    pub fn failures(&self) -> Vec<Failure<'_>> {
        let mut out: Vec<Failure<'_>> = self.region_errors.iter().map(Failure::Region).collect();
        for l in &self.lineages {
            match l.status {
                Freshness::Missing => out.push(Failure::Missing(l)),
                Freshness::Stale => out.push(Failure::Stale(l)),
                Freshness::Fresh => {}
            }
            out.extend(l.errors.iter().map(|s| Failure::Error {
                lineage: l,
                snapshot: s,
            }));
            if l.verified.as_ref().is_some_and(|v| !v.ok) {
                out.push(Failure::Unverified(l));
            }
        }
        out
    }

    /// Whether nothing failed.
    pub fn ok(&self) -> bool {
        self.failures().is_empty()
    }

    /// The report as Prometheus metrics: per lineage the **timestamp** of
    /// the newest completed snapshot (alert on `time() - it > threshold`,
    /// the threshold being the next gauge) and the `error` snapshots (and,
    /// with `max_unverified`, of the last passed restore test); per
    /// region the snapshots ektool made and their volume bytes; the
    /// failures found. Add [`Metrics::run`](crate::metrics::Metrics::run)
    /// for the run itself.
    pub fn metrics(&self) -> crate::metrics::Metrics {
        let mut m = crate::metrics::Metrics::new();
        let labels = |l: &LineageCheck| -> [(&'static str, String); 6] {
            [
                ("region", l.region.to_string()),
                ("lineage", l.lineage.clone()),
                (
                    "place",
                    match l.place {
                        Place::Source => "source",
                        Place::Replica => "replica",
                        Place::Vault => "vault",
                    }
                    .to_owned(),
                ),
                (
                    "instance",
                    l.instance
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                ("device", l.device.clone().unwrap_or_default()),
                ("alias", l.alias.clone().unwrap_or_default()),
            ]
        };
        for (name, help) in [
            (
                "ektool_snapshot_newest_completed_timestamp_seconds",
                "When the data of the newest completed snapshot of the lineage was taken (Unix time).",
            ),
            (
                "ektool_snapshot_max_age_seconds",
                "How old the newest completed snapshot of the lineage may be.",
            ),
            (
                "ektool_snapshot_completed",
                "Completed snapshots of the lineage in the region.",
            ),
            (
                "ektool_snapshot_errors",
                "Snapshots of the lineage in error state in the region.",
            ),
        ] {
            let family = m.gauge(name, help);
            for l in &self.lineages {
                let v = match name {
                    "ektool_snapshot_newest_completed_timestamp_seconds" => match l.newest_time {
                        Some(t) => t.as_second() as f64,
                        None => continue,
                    },
                    "ektool_snapshot_max_age_seconds" => l.max_age_seconds as f64,
                    "ektool_snapshot_completed" => l.completed as f64,
                    _ => l.errors.len() as f64,
                };
                let ls = labels(l);
                let refs: Vec<(&str, &str)> = ls.iter().map(|(k, v)| (*k, v.as_str())).collect();
                family.sample(&refs, v);
            }
        }
        // Restore tests, only when asked for (`max_unverified`).
        if self.lineages.iter().any(|l| l.verified.is_some()) {
            let last = m.gauge(
                "ektool_snapshot_last_verified_timestamp_seconds",
                "When a restore test of the lineage last passed (Unix time).",
            );
            for l in &self.lineages {
                if let Some(at) = l.verified.as_ref().and_then(|v| v.at) {
                    let ls = labels(l);
                    let refs: Vec<(&str, &str)> =
                        ls.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    last.sample(&refs, at.as_second() as f64);
                }
            }
            let max = m.gauge(
                "ektool_snapshot_max_unverified_seconds",
                "How long ago the last passed restore test of the lineage may be.",
            );
            for l in &self.lineages {
                if let Some(v) = &l.verified {
                    let ls = labels(l);
                    let refs: Vec<(&str, &str)> =
                        ls.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    max.sample(&refs, v.max_seconds as f64);
                }
            }
        }
        let snapshots = m.gauge(
            "ektool_snapshots",
            "Snapshots carrying ektool's ownership tag in the region, any state.",
        );
        for r in &self.regions {
            snapshots.sample(&[("region", r.region.as_str())], r.snapshots as f64);
        }
        let bytes = m.gauge(
            "ektool_snapshots_volume_size_bytes",
            "The sum of the volume sizes of the snapshots carrying ektool's ownership tag in the region \
             (EC2 does not report the incremental size).",
        );
        for r in &self.regions {
            bytes.sample(&[("region", r.region.as_str())], r.volume_bytes as f64);
        }
        m.gauge(
            "ektool_check_failures",
            "Failures the last check found: missing, stale and error snapshots, unlisted regions.",
        )
        .sample(&[], self.failures().len() as f64);
        m
    }
}

/// A volume to check in a region, before its snapshots are looked at.
struct Target {
    lineage: String,
    instance: Option<InstanceId>,
    device: Option<String>,
    alias: Option<String>,
    max_age: Duration,
}

/// What one region yields.
struct Listed {
    targets: Vec<Target>,
    snapshots: Vec<Snapshot>,
}

async fn list_region(ec2: &dyn Ec2, spec: &CheckSpec, region: &Region) -> Result<Listed, Ec2Error> {
    let instances = async {
        match &spec.tag {
            Some(tag) => {
                let filters = [
                    Filter::tag(tag),
                    Filter::new(
                        "instance-state-name",
                        ec2kit::fleet::LIVE_STATES.iter().copied(),
                    ),
                ];
                ec2.describe_instances(region, &filters).await
            }
            None => Ok(Vec::new()),
        }
    };
    let (instances, snapshots) =
        futures::try_join!(instances, trim::inventory(ec2, region, Scope::Owned))?;
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for v in spec.volumes.iter().filter(|v| &v.region == region) {
        if seen.insert(v.volume.as_str().to_owned()) {
            targets.push(Target {
                lineage: v.volume.as_str().to_owned(),
                instance: None,
                device: None,
                alias: Some(v.alias.clone()),
                max_age: v.max_age.unwrap_or(spec.max_age),
            });
        }
    }
    for i in &instances {
        // Belt and braces: never trust a filter to have been applied.
        if spec.tag.as_ref().is_some_and(|t| !i.tags.matches(t)) {
            continue;
        }
        let max_age = spec
            .tag_max_age
            .iter()
            .filter(|(t, _)| i.tags.matches(t))
            .map(|(_, d)| *d)
            .min()
            .unwrap_or(spec.max_age);
        for b in &i.block_devices {
            let root = i.root_device_name.as_deref() == Some(b.device_name.as_str());
            if (spec.exclude_boot && root) || spec.exclude_volumes.contains(&b.volume_id) {
                continue;
            }
            if !seen.insert(b.volume_id.as_str().to_owned()) {
                continue;
            }
            targets.push(Target {
                lineage: b.volume_id.as_str().to_owned(),
                instance: Some(i.id.clone()),
                device: Some(b.device_name.clone()),
                alias: None,
                max_age,
            });
        }
    }
    Ok(Listed { targets, snapshots })
}

/// Per lineage: the completed snapshots' count and newest (by data time),
/// and the `error` ones.
#[derive(Default)]
struct Lineage<'a> {
    newest: Option<(Timestamp, &'a Snapshot)>,
    /// The latest passed restore test: when, and of which snapshot.
    verified: Option<(Timestamp, &'a Snapshot)>,
    completed: usize,
    errors: Vec<SnapshotId>,
}

fn by_lineage<'a>(
    snapshots: impl IntoIterator<Item = &'a Snapshot>,
    time: fn(&Snapshot) -> Timestamp,
) -> HashMap<String, Lineage<'a>> {
    let mut out: HashMap<String, Lineage<'a>> = HashMap::new();
    for s in snapshots.into_iter().filter(|s| lineage::is_owned(s)) {
        let entry = out.entry(lineage::lineage_of(s)).or_default();
        match s.state {
            SnapshotState::Completed => {
                entry.completed += 1;
                let t = time(s);
                if entry
                    .newest
                    .is_none_or(|(have, h)| (have, &h.id) < (t, &s.id))
                {
                    entry.newest = Some((t, s));
                }
                if let Some(at) = verified_at(s)
                    && entry
                        .verified
                        .is_none_or(|(have, h)| (have, &h.id) < (at, &s.id))
                {
                    entry.verified = Some((at, s));
                }
            }
            SnapshotState::Error => entry.errors.push(s.id.clone()),
            _ => {}
        }
    }
    for l in out.values_mut() {
        l.errors.sort();
    }
    out
}

/// When a restore test of `s` last passed (its verify tags).
fn verified_at(s: &Snapshot) -> Option<Timestamp> {
    use crate::verify::tags;
    if s.tags.get(tags::VERIFY_RESULT) != Some(tags::OK) {
        return None;
    }
    s.tags.get(tags::VERIFIED_AT)?.parse().ok()
}

fn stats(region: &Region, snapshots: &[Snapshot]) -> RegionStats {
    RegionStats {
        region: region.clone(),
        snapshots: snapshots.len(),
        volume_bytes: snapshots
            .iter()
            .map(|s| u64::try_from(s.volume_size_gib.unwrap_or(0)).unwrap_or(0) << 30)
            .sum(),
    }
}

fn judge(
    region: &Region,
    place: Place,
    target: &Target,
    max_age: Duration,
    found: Option<&Lineage<'_>>,
    now: Timestamp,
    max_unverified: Option<Duration>,
) -> LineageCheck {
    let newest = found.and_then(|l| l.newest);
    let age = newest.map(|(t, _)| now.as_second() - t.as_second());
    let limit = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    LineageCheck {
        region: region.clone(),
        place,
        lineage: target.lineage.clone(),
        source_account: None,
        instance: target.instance.clone(),
        device: target.device.clone(),
        alias: target.alias.clone(),
        newest: newest.map(|(_, s)| s.id.clone()),
        newest_time: newest.map(|(t, _)| t),
        age_seconds: age,
        max_age_seconds: max_age.as_secs(),
        status: match age {
            None => Freshness::Missing,
            Some(a) if a > limit => Freshness::Stale,
            Some(_) => Freshness::Fresh,
        },
        completed: found.map_or(0, |l| l.completed),
        errors: found.map(|l| l.errors.clone()).unwrap_or_default(),
        verified: max_unverified.map(|max| {
            let last = found.and_then(|l| l.verified);
            let age = last.map(|(t, _)| now.as_second() - t.as_second());
            let limit = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            Verified {
                snapshot: last.map(|(_, s)| s.id.clone()),
                at: last.map(|(t, _)| t),
                age_seconds: age,
                max_seconds: max.as_secs(),
                ok: age.is_some_and(|a| a <= limit),
            }
        }),
    }
}

/// Checks every selected region at once (at most
/// [`CheckSpec::concurrency`]), then the replication destination. A region
/// that cannot be listed is reported in [`CheckReport::region_errors`]
/// and the others go on.
pub async fn check(ec2: &dyn Ec2, spec: &CheckSpec, now: Timestamp) -> CheckReport {
    let listed = ec2kit::fleet::each_region(&spec.regions, spec.concurrency, |region| {
        list_region(ec2, spec, region)
    });
    let replica = async {
        match &spec.replica {
            Some(r) => Some(trim::inventory(ec2, &r.region, Scope::Owned).await),
            None => None,
        }
    };
    let (listed, replica) = futures::join!(listed, replica);
    let mut report = CheckReport {
        now,
        lineages: Vec::new(),
        regions: Vec::new(),
        region_errors: Vec::new(),
    };
    let mut sources: Vec<(Region, Target)> = Vec::new();
    for r in listed {
        match r.result {
            Ok(l) => {
                let found = by_lineage(&l.snapshots, |s| s.start_time);
                for t in &l.targets {
                    report.lineages.push(judge(
                        &r.region,
                        Place::Source,
                        t,
                        t.max_age,
                        found.get(&t.lineage),
                        now,
                        spec.max_unverified,
                    ));
                }
                report.regions.push(stats(&r.region, &l.snapshots));
                sources.extend(l.targets.into_iter().map(|t| (r.region.clone(), t)));
            }
            Err(e) => report.region_errors.push(RegionFailure {
                region: r.region,
                error: e.to_string(),
            }),
        }
    }
    if let (Some(spec), Some(result)) = (&spec.replica, replica) {
        match result {
            Ok(all) => {
                // Only copies count: a snapshot taken in the destination
                // is not a replica of anything.
                let copies = all
                    .iter()
                    .filter(|s| s.tags.contains_key(lineage::tags::SOURCE_SNAPSHOT));
                let found = by_lineage(copies, crate::replicate::data_time);
                let mut done = BTreeMap::new();
                for (region, t) in &sources {
                    if region == &spec.region || done.insert(t.lineage.clone(), ()).is_some() {
                        continue;
                    }
                    report.lineages.push(judge(
                        &spec.region,
                        Place::Replica,
                        t,
                        spec.max_age,
                        found.get(&t.lineage),
                        now,
                        // Restore tests are of the source's snapshots.
                        None,
                    ));
                }
                if !report.regions.iter().any(|r| r.region == spec.region) {
                    report.regions.push(stats(&spec.region, &all));
                }
            }
            Err(e) => report.region_errors.push(RegionFailure {
                region: spec.region.clone(),
                error: e.to_string(),
            }),
        }
    }
    report
}

/// The vault's copies, checked from the source side
/// ([`check_vault_copies`]): every source lineage must have a vault copy
/// this recent.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultCheck {
    /// The source account (the vault copies' [`lineage::tags::SOURCE_ACCOUNT`]).
    pub source_account: String,
    /// The vault region the copies are in; `None`: each source lineage's
    /// own region.
    pub region: Option<Region>,
    /// How old the data of the newest vault copy may be.
    pub max_age: Duration,
}

/// The vault's copies in `region`: ektool's snapshots there carrying a
/// source account.
async fn vault_copies(ec2: &dyn Ec2, region: &Region) -> Result<Vec<Snapshot>, Ec2Error> {
    Ok(trim::inventory(ec2, region, Scope::Owned)
        .await?
        .into_iter()
        .filter(|s| lineage::source_account(s).is_some())
        .collect())
}

/// A vault account's own check (`snap check --account VAULT`): in every
/// region, each vault lineage (`ACCOUNT/KEY`, one per source account and
/// source lineage) must have a completed copy whose data
/// ([`crate::replicate::data_time`]) is at most `max_age` old. Only
/// `DescribeSnapshots` ([`VAULT_PERMISSIONS`]).
pub async fn check_vault(
    ec2: &dyn Ec2,
    regions: &[Region],
    max_age: Duration,
    concurrency: usize,
    now: Timestamp,
) -> CheckReport {
    let listed = ec2kit::fleet::each_region(regions, concurrency, |region| {
        trim::inventory(ec2, region, Scope::Owned)
    })
    .await;
    let mut report = CheckReport {
        now,
        lineages: Vec::new(),
        regions: Vec::new(),
        region_errors: Vec::new(),
    };
    for r in listed {
        match r.result {
            Ok(all) => {
                let copies = all.iter().filter(|s| lineage::source_account(s).is_some());
                let found = by_lineage(copies.clone(), crate::replicate::data_time);
                let accounts: HashMap<String, &str> = copies
                    .filter_map(|s| Some((lineage::lineage_of(s), lineage::source_account(s)?)))
                    .collect();
                let mut keys: Vec<&String> = found.keys().collect();
                keys.sort();
                for key in keys {
                    let target = Target {
                        lineage: key.clone(),
                        instance: None,
                        device: None,
                        alias: None,
                        max_age,
                    };
                    let mut l = judge(
                        &r.region,
                        Place::Vault,
                        &target,
                        max_age,
                        found.get(key),
                        now,
                        None,
                    );
                    l.source_account = accounts.get(key).map(|a| (*a).to_owned());
                    report.lineages.push(l);
                }
                report.regions.push(stats(&r.region, &all));
            }
            Err(e) => report.region_errors.push(RegionFailure {
                region: r.region,
                error: e.to_string(),
            }),
        }
    }
    report
}

/// What [`check_vault`] and [`check_vault_copies`] call in the vault.
pub const VAULT_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeSnapshots]);

/// "`snap check` covers the vault": adds to `report` (a source account's
/// [`check`]) one [`Place::Vault`] lineage per source lineage, whose
/// newest completed copy in the vault (`ACCOUNT/KEY`, read with
/// `vault_ec2`, `DescribeSnapshots` only) must be at most
/// [`VaultCheck::max_age`] old by its data time. A vault region that
/// cannot be listed is a region error (`vault …`); the vault's regions are
/// not added to [`CheckReport::regions`] (they are another account's).
pub async fn check_vault_copies(
    vault_ec2: &dyn Ec2,
    vault: &VaultCheck,
    report: &mut CheckReport,
    now: Timestamp,
) {
    let mut sources: Vec<(Region, LineageCheck)> = Vec::new();
    let mut seen = HashSet::new();
    for l in report.lineages.iter().filter(|l| l.place == Place::Source) {
        if seen.insert(l.lineage.clone()) {
            let region = vault.region.clone().unwrap_or_else(|| l.region.clone());
            sources.push((region, l.clone()));
        }
    }
    let mut regions: Vec<Region> = sources.iter().map(|(r, _)| r.clone()).collect();
    regions.sort();
    regions.dedup();
    let listed = ec2kit::fleet::each_region(&regions, regions.len().max(1), |region| {
        vault_copies(vault_ec2, region)
    })
    .await;
    let mut found: HashMap<Region, Vec<Snapshot>> = HashMap::new();
    for r in listed {
        match r.result {
            Ok(copies) => {
                found.insert(r.region, copies);
            }
            Err(e) => report.region_errors.push(RegionFailure {
                region: r.region,
                error: format!("vault account: {e}"),
            }),
        }
    }
    for (region, source) in sources {
        let Some(copies) = found.get(&region) else {
            continue;
        };
        let mine = copies
            .iter()
            .filter(|s| lineage::source_account(s) == Some(vault.source_account.as_str()));
        let by = by_lineage(mine, crate::replicate::data_time);
        let key = format!("{}/{}", vault.source_account, source.lineage);
        let target = Target {
            lineage: key.clone(),
            instance: source.instance.clone(),
            device: source.device.clone(),
            alias: source.alias.clone(),
            max_age: vault.max_age,
        };
        let mut l = judge(
            &region,
            Place::Vault,
            &target,
            vault.max_age,
            by.get(&key),
            now,
            None,
        );
        l.source_account = Some(vault.source_account.clone());
        report.lineages.push(l);
    }
}

#[cfg(test)]
mod tests;
