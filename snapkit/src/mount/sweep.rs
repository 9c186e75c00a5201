//! Undoing many mounts at once: the mounts of a snapshot (`unmount`), or
//! every mount volume older than some age across regions (the cleanup of
//! crashed runs), each with the host it must be unmounted on.

use std::time::Duration;

use ec2kit::{Filter, Instance, InstanceId, Region};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::undo::{created_before, find, no_host};
use super::{MountError, Mounter, Selector, UnmountPlan, UnmountReport};
use crate::connect::reach;

/// One mount volume to undo, and where its host is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepItem {
    /// The region.
    pub region: Region,
    /// The steps.
    #[serde(flatten)]
    pub plan: UnmountPlan,
    /// The address of the host to unmount on (the [`Mounter::on_host`]
    /// host, or the instance's address); `None` when nothing is to be
    /// unmounted, or the instance has no such address (then only `force`
    /// goes on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A region whose mount volumes (or their instances) could not be listed.
#[derive(Debug)]
pub struct RegionFailure {
    /// The region.
    pub region: Region,
    /// Why.
    pub error: MountError,
}

/// What a sweep will undo: a dry run shows it, [`Mounter::unmount`]
/// carries it out.
#[derive(Debug, Default)]
pub struct SweepPlan {
    /// The volumes, region by region.
    pub items: Vec<SweepItem>,
    /// Regions that could not be listed (the others are planned).
    pub failed_regions: Vec<RegionFailure>,
}

impl SweepPlan {
    /// The instances the items' volumes are on (sorted, once each).
    pub fn instances(&self) -> Vec<&InstanceId> {
        let mut all: Vec<&InstanceId> = self
            .items
            .iter()
            .filter_map(|i| i.plan.volume.instance.as_ref())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// One item of a sweep and what undoing it did.
#[derive(Debug)]
pub struct Unmounted {
    /// The item.
    pub item: SweepItem,
    /// What was done, or why it stopped.
    pub result: Result<UnmountReport, MountError>,
}

impl Mounter<'_> {
    /// The mounts `selector` names in `region` (only those on `instance`,
    /// when given), each with its host: one `DescribeInstances` for every
    /// instance involved, unless [`Mounter::on_host`] names the host.
    pub async fn unmount_plan(
        &self,
        region: &Region,
        selector: &Selector,
        instance: Option<&InstanceId>,
    ) -> Result<SweepPlan, MountError> {
        let found = find(self.ec2, region, selector, instance).await?;
        let plans: Vec<UnmountPlan> = found.iter().map(UnmountPlan::of).collect();
        Ok(SweepPlan {
            items: self.with_hosts(region, plans).await?,
            failed_regions: Vec::new(),
        })
    }

    /// Every mount volume in `regions` created longer than `older_than`
    /// ago (younger ones may belong to a mount in progress; zero: every
    /// age), only those of
    /// `instance` when given, each with its host (one `DescribeInstances`
    /// per region). A region that cannot be listed is reported in
    /// [`SweepPlan::failed_regions`]; the others are planned.
    pub async fn sweep_plan(
        &self,
        regions: &[Region],
        older_than: Duration,
        instance: Option<&InstanceId>,
    ) -> SweepPlan {
        let age = SignedDuration::try_from(older_than).unwrap_or(SignedDuration::MAX);
        let cutoff = self.now().checked_sub(age).unwrap_or(Timestamp::MIN);
        let mut plan = SweepPlan::default();
        for region in regions {
            let listed = async {
                let found = find(self.ec2, region, &Selector::All, instance).await?;
                // Zero means every age, even a volume made this instant.
                let found = if older_than.is_zero() {
                    found
                } else {
                    created_before(found, cutoff)
                };
                let plans = found.iter().map(UnmountPlan::of).collect();
                self.with_hosts(region, plans).await
            };
            match listed.await {
                Ok(items) => plan.items.extend(items),
                Err(error) => plan.failed_regions.push(RegionFailure {
                    region: region.clone(),
                    error,
                }),
            }
        }
        plan
    }

    /// Carries out a sweep, item by item: each host reached through the
    /// [`Mounter::connect`] given (without one, or when it fails, a volume
    /// still mounted is only detached with `force`). One item failing does
    /// not stop the others.
    pub async fn unmount(&self, plan: &SweepPlan, force: bool) -> Vec<Unmounted> {
        let mut done = Vec::with_capacity(plan.items.len());
        for item in &plan.items {
            let remote = match (&item.host, &self.connect) {
                (Some(host), Some(connect)) => reach(connect, host).map_err(MountError::from),
                _ => Err(no_host(&item.plan)),
            };
            let result = match remote {
                Ok(r) => self.undo(Ok(r.as_ref()), &item.plan, force).await,
                Err(e) => self.undo(Err(e), &item.plan, force).await,
            };
            done.push(Unmounted {
                item: item.clone(),
                result,
            });
        }
        done
    }

    /// The plans, each with the address of its host.
    async fn with_hosts(
        &self,
        region: &Region,
        plans: Vec<UnmountPlan>,
    ) -> Result<Vec<SweepItem>, MountError> {
        let ids: Vec<String> = plans
            .iter()
            .filter_map(|p| p.host_instance().map(|i| i.to_string()))
            .collect();
        let instances: Vec<Instance> = if ids.is_empty() || self.host.is_some() {
            Vec::new()
        } else {
            self.ec2
                .describe_instances(region, &[Filter::new("instance-id", ids)])
                .await?
        };
        Ok(plans
            .into_iter()
            .map(|plan| {
                let host = plan.host_instance().and_then(|id| match &self.host {
                    Some(h) => Some(h.clone()),
                    None => instances
                        .iter()
                        .find(|i| &i.id == id)
                        .and_then(|i| i.address(self.address))
                        .map(str::to_owned),
                });
                SweepItem {
                    region: region.clone(),
                    plan,
                    host,
                }
            })
            .collect())
    }
}
