//! The AMI lifecycle: AMIs of running instances ([`from_instance`]), and
//! retention of a name family of AMIs ([`plan`], [`apply`]).
//!
//! A family (`ektool-web-*`, EC2's `name` filter with `*` and `?`) is
//! planned like one lineage of snapshots, by creation date, with the same
//! [`Policies`] and guards (the newest is always kept, pending ones too,
//! AMIs not made by ektool unless adopted), and one guard more: an AMI
//! that an instance (pending, running, stopping or stopped) or any launch
//! template version uses is never deregistered. [`apply`] deregisters what
//! the plan drops, then deletes its snapshots.
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2) -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::Region;
//! use snapkit::ami_trim;
//! use snapkit::retention::{Gfs, Logarithmic, Policies, PolicySpec};
//! use snapkit::trim::Scope;
//!
//! let gfs = Gfs { keep_last: Some(3), ..Gfs::default() };
//! let policies = Policies::new(PolicySpec::from_name("gfs", &Logarithmic::default(), &gfs)?);
//! let region = Region::new("eu-west-1");
//! let plan = ami_trim::plan(ec2, &region, "ektool-web-*", &policies, Scope::Owned, jiff::Timestamp::now()).await?;
//! for d in plan.deregistrations() {
//!     println!("{} {}: {}", d.image, d.name.as_deref().unwrap_or("-"), d.reason);
//! }
//! let report = ami_trim::apply(ec2, &plan, &|_| {}).await;
//! println!("deregistered {}, failed {}", report.deregistered(), report.failed());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashSet};

use ec2kit::requests::CreateImage;
use ec2kit::{
    Ec2, Ec2Error, ErrorKind, Filter, Image, ImageId, InstanceId, Region, Snapshot, SnapshotId,
    SnapshotState, Tags,
};
use serde::Serialize;

use crate::lineage::tags;
use crate::retention::{Guards, Policies, Reason, Verdict};
use crate::trim::Scope;

/// What [`from_instance`] calls.
pub const FROM_INSTANCE_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::CreateImage])
        .implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// What [`plan`] and [`apply`] call.
pub const TRIM_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeImages,
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::DescribeInstances,
    ec2kit::Action::DescribeLaunchTemplates,
    ec2kit::Action::DeregisterImage,
    ec2kit::Action::DeleteSnapshot,
])
.sometimes(&[ec2kit::iam::Sometimes {
    when: ec2kit::iam::When::Case("launch templates exist"),
    actions: &[ec2kit::Action::DescribeLaunchTemplateVersions],
}]);

/// An AMI of an instance to make ([`from_instance`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FromInstance {
    /// The instance.
    pub instance: InstanceId,
    /// The AMI name (unique per region; a family is a name pattern).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Do not stop the instance while its volumes are snapshotted (the
    /// file systems are then only crash-consistent).
    pub no_reboot: bool,
    /// Tag the AMI's snapshots at creation too (the default; EC2 supports
    /// it, some emulators refuse it).
    pub tag_snapshots: bool,
    /// More tags for the AMI (and its snapshots); reserved `ektool:*` and
    /// `aws:*` keys are dropped.
    pub tags: Tags,
}

impl FromInstance {
    /// The `CreateImage` request: the ownership tag (ektool made it), the
    /// instance and the time, at creation.
    pub fn request(&self, now: jiff::Timestamp) -> CreateImage {
        let mut t = Tags::new();
        for (k, v) in self.tags.iter() {
            if !ec2kit::is_reserved_key(k) && !k.starts_with("ektool:") {
                t.insert(k, v);
            }
        }
        t.insert(tags::OWNER, tags::OWNER_VALUE);
        t.insert(tags::INSTANCE, self.instance.as_str());
        t.insert(
            tags::CREATED,
            now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        CreateImage {
            instance_id: Some(self.instance.clone()),
            name: self.name.clone(),
            description: self.description.clone(),
            no_reboot: self.no_reboot,
            snapshot_tags: if self.tag_snapshots {
                t.clone()
            } else {
                Tags::new()
            },
            tags: t,
            dry_run: false,
        }
    }
}

/// Makes an AMI of an instance (`CreateImage`, tags at creation).
pub async fn from_instance(
    ec2: &dyn Ec2,
    region: &Region,
    image: &FromInstance,
    dry_run: bool,
) -> Result<Option<ImageId>, Ec2Error> {
    let mut request = image.request(jiff::Timestamp::now());
    request.dry_run = dry_run;
    match ec2.create_image(region, &request).await {
        Ok(id) => Ok(Some(id)),
        Err(e) if dry_run && e.kind == ErrorKind::DryRunOk => Ok(None),
        Err(e) => Err(e),
    }
}

/// One AMI's fate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmiDecision {
    /// The AMI.
    pub image: ImageId,
    /// Its name.
    pub name: Option<String>,
    /// When EC2 says it was made.
    #[serde(serialize_with = "ec2kit::rfc3339::serialize")]
    pub created: jiff::Timestamp,
    /// Keep or delete (deregister, then delete its snapshots).
    pub action: Verdict,
    /// Why.
    pub reason: Reason,
    /// Its snapshots (deleted after it is deregistered).
    pub snapshots: Vec<SnapshotId>,
}

/// A snapshot of ektool's whose AMI is gone: what a run stopped between
/// a deregistration and the deletion of the AMI's snapshots leaves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Orphan {
    /// The snapshot (tagged as ektool's).
    pub snapshot: SnapshotId,
    /// The AMI its description names (`Created by CreateImage(…) for
    /// ami-…`), no longer registered.
    pub image: String,
}

/// The decisions for one family in one region, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmiPlan {
    /// The region.
    pub region: Region,
    /// The name pattern.
    pub family: String,
    /// The policy that decided.
    pub policy: String,
    /// One decision per AMI of the family.
    pub decisions: Vec<AmiDecision>,
    /// Snapshots of ektool's AMIs that are gone (any family), deleted by
    /// [`apply`] after the deregistrations: a rerun finishes what a
    /// stopped run began.
    pub orphans: Vec<Orphan>,
}

/// The AMI a snapshot made by `CreateImage` names in its description
/// (`Created by CreateImage(i-…) for ami-… [from vol-…]`).
pub fn created_for(description: &str) -> Option<&str> {
    let rest = description.strip_prefix("Created by CreateImage(")?;
    let (_, after) = rest.split_once(") for ")?;
    let image = after.split_whitespace().next()?;
    (image.starts_with("ami-") && image.len() > 4).then_some(image)
}

/// The orphans among `snapshots`: ektool's own (the ownership tag), made
/// by `CreateImage` for an AMI not in `images`.
pub fn orphans(snapshots: &[Snapshot], images: &[Image]) -> Vec<Orphan> {
    let registered: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
    snapshots
        .iter()
        .filter(|s| crate::lineage::is_owned(s))
        .filter_map(|s| {
            let image = created_for(s.description.as_deref()?)?;
            (!registered.contains(image)).then(|| Orphan {
                snapshot: s.id.clone(),
                image: image.to_owned(),
            })
        })
        .collect()
}

impl AmiPlan {
    /// The AMIs to deregister.
    pub fn deregistrations(&self) -> impl Iterator<Item = &AmiDecision> {
        self.decisions
            .iter()
            .filter(|d| d.action == Verdict::Delete)
    }
}

/// Whether `name` matches the family `pattern` (`*`: any run of
/// characters, `?`: one character), as EC2's `name` filter does.
pub fn matches_family(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Where the AMIs of `region` are in use: by instance (pending, running,
/// stopping, stopped) and by launch template version.
pub async fn in_use(ec2: &dyn Ec2, region: &Region) -> Result<BTreeMap<String, String>, Ec2Error> {
    let mut used = BTreeMap::new();
    let instances = ec2
        .describe_instances(
            region,
            &[Filter::new(
                "instance-state-name",
                ["pending", "running", "stopping", "stopped"],
            )],
        )
        .await?;
    for i in instances {
        if let Some(image) = &i.image_id {
            used.entry(image.to_string())
                .or_insert_with(|| format!("used by instance {} ({})", i.id, i.state));
        }
    }
    for t in ec2.launch_template_images(region).await? {
        used.entry(t.image.clone()).or_insert_with(|| {
            format!(
                "used by launch template {} version {}",
                t.template_name.as_deref().unwrap_or(&t.template_id),
                t.version
            )
        });
    }
    Ok(used)
}

/// Plans the AMIs of `family` in `region` with `policies` (by creation
/// date, one lineage), the guards of snapshot retention (newest, pending,
/// not ektool's unless `Scope::Adopted`, `min_keep`) and the in-use guard.
/// Policies' `archive_after` does not apply to AMIs.
pub async fn plan(
    ec2: &dyn Ec2,
    region: &Region,
    family: &str,
    policies: &Policies,
    scope: Scope,
    now: jiff::Timestamp,
) -> Result<AmiPlan, Ec2Error> {
    // Every AMI of the account (the family's, and what orphans are
    // checked against).
    let all = ec2.describe_images(region, &[]).await?;
    let images: Vec<Image> = all
        .iter()
        .filter(|i| i.name.as_deref().is_some_and(|n| matches_family(family, n)))
        .cloned()
        .collect();
    let used = in_use(ec2, region).await?;
    let snapshots = ec2
        .describe_snapshots(
            region,
            &[Filter::new(
                format!("tag:{}", tags::OWNER),
                [tags::OWNER_VALUE],
            )],
        )
        .await?;
    let mut plan = plan_images(region, family, &images, &used, policies, scope, now);
    plan.orphans = orphans(&snapshots, &all);
    Ok(plan)
}

/// [`plan`] without the calls: `images` of the family, `used` (AMI id →
/// why it is in use).
pub fn plan_images(
    region: &Region,
    family: &str,
    images: &[Image],
    used: &BTreeMap<String, String>,
    policies: &Policies,
    scope: Scope,
    now: jiff::Timestamp,
) -> AmiPlan {
    // Each AMI as a snapshot of one lineage (the family), for the planner.
    let as_snapshots: Vec<Snapshot> = images
        .iter()
        .map(|i| {
            let created = i
                .creation_date
                .as_deref()
                .and_then(|d| d.parse::<jiff::Timestamp>().ok())
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            let state = if i.state == "available" {
                SnapshotState::Completed
            } else if i.state == "pending" {
                SnapshotState::Pending
            } else {
                SnapshotState::Unknown(i.state.clone())
            };
            let mut s = Snapshot::new(SnapshotId::from_api(i.id.as_str()), None, created, state);
            s.tags.insert(tags::VOLUME, family);
            if i.tags.get(tags::OWNER) == Some(tags::OWNER_VALUE) {
                s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
            }
            s
        })
        .collect();
    let mut no_archive = policies.clone();
    no_archive.archive_after = None;
    no_archive.per_lineage_archive_after.clear();
    let guards = Guards {
        adopt_unowned: scope == Scope::Adopted,
        ami_backed: Some(HashSet::new()),
        ..Guards::default()
    };
    let planned = no_archive.plan(&as_snapshots, now, guards);
    let by_id: BTreeMap<&str, &Image> = images.iter().map(|i| (i.id.as_str(), i)).collect();
    let policy = planned.decisions.first().map_or_else(
        || no_archive.default.policy().name(),
        |d| d.policy.to_string(),
    );
    let decisions = planned
        .decisions
        .into_iter()
        .map(|d| {
            let image = by_id[d.id.as_str()];
            let (action, reason) = match used.get(image.id.as_str()) {
                Some(why) if d.action == Verdict::Delete => {
                    (Verdict::Keep, Reason::Custom(format!("guard: {why}")))
                }
                _ => (d.action, d.reason),
            };
            AmiDecision {
                image: image.id.clone(),
                name: image.name.clone(),
                created: d.start_time,
                action,
                reason,
                snapshots: image.snapshot_ids().cloned().collect(),
            }
        })
        .collect();
    AmiPlan {
        region: region.clone(),
        family: family.to_owned(),
        policy,
        decisions,
        orphans: Vec::new(),
    }
}

/// What happened to one planned deregistration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmiApplied {
    /// The AMI.
    pub image: ImageId,
    /// Deregistered (or already gone).
    pub deregistered: bool,
    /// Its snapshots deleted (or already gone).
    pub deleted_snapshots: Vec<SnapshotId>,
    /// What failed, if anything (the AMI's snapshots are not touched when
    /// it could not be deregistered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Progress of [`apply`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum AmiTrimEvent {
    /// One AMI is done, whatever the outcome.
    Applied(AmiApplied),
}

/// The result of [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AmiTrimReport {
    /// One entry per planned deregistration.
    pub results: Vec<AmiApplied>,
    /// Orphaned snapshots deleted (or already gone).
    pub orphans_deleted: Vec<SnapshotId>,
    /// Orphans that could not be deleted, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphan_errors: Vec<String>,
}

impl AmiTrimReport {
    /// AMIs deregistered (or already gone).
    pub fn deregistered(&self) -> usize {
        self.results.iter().filter(|r| r.deregistered).count()
    }

    /// Snapshots deleted (or already gone).
    pub fn deleted_snapshots(&self) -> usize {
        self.results.iter().map(|r| r.deleted_snapshots.len()).sum()
    }

    /// AMIs with any failure, and orphans not deleted.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.errors.is_empty()).count() + self.orphan_errors.len()
    }
}

/// Deregisters what the plan drops, one AMI at a time, then deletes its
/// snapshots, then deletes the plan's orphans. A failure is recorded and
/// the rest go on; an AMI or a snapshot already gone counts as done, so a
/// rerun of the same plan is safe.
pub async fn apply(
    ec2: &dyn Ec2,
    plan: &AmiPlan,
    on_event: &(dyn Fn(&AmiTrimEvent) + Send + Sync),
) -> AmiTrimReport {
    let mut results = Vec::new();
    for d in plan.deregistrations() {
        let mut done = AmiApplied {
            image: d.image.clone(),
            deregistered: false,
            deleted_snapshots: Vec::new(),
            errors: Vec::new(),
        };
        match ec2.deregister_image(&plan.region, &d.image, false).await {
            Ok(()) => done.deregistered = true,
            Err(e) if e.kind == ErrorKind::NotFound => done.deregistered = true,
            Err(e) => done.errors.push(e.to_string()),
        }
        if done.deregistered {
            for s in &d.snapshots {
                match ec2.delete_snapshot(&plan.region, s, false).await {
                    Ok(()) => done.deleted_snapshots.push(s.clone()),
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        done.deleted_snapshots.push(s.clone());
                    }
                    Err(e) => done.errors.push(e.to_string()),
                }
            }
        }
        on_event(&AmiTrimEvent::Applied(done.clone()));
        results.push(done);
    }
    let mut report = AmiTrimReport {
        results,
        ..AmiTrimReport::default()
    };
    for o in &plan.orphans {
        match ec2.delete_snapshot(&plan.region, &o.snapshot, false).await {
            Ok(()) => report.orphans_deleted.push(o.snapshot.clone()),
            Err(e) if e.kind == ErrorKind::NotFound => {
                report.orphans_deleted.push(o.snapshot.clone())
            }
            Err(e) => report.orphan_errors.push(format!("{}: {e}", o.snapshot)),
        }
    }
    report
}

#[cfg(test)]
mod tests;
