//! The nightly backup as one job: which instances and volumes, held
//! consistent or not, run (or dry-run), and waited for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ec2kit::{
    CancellationToken, Ec2, Ec2Error, Filter, Instance, InstanceId, Region, SnapshotId, Tag,
    VolumeId, fleet,
};
use serde::Serialize;

use super::create::{backup_instances, backup_volumes};
use super::hold::consistently;
use super::{BackupItem, BackupOptions, BackupResult, BackupStatus};
use crate::connect::{Address, Connect, ConnectError, reach};
use crate::consistency::Consistency;
use crate::wait::{WaitEvent, WaitReport, wait_for};

/// Which instances a backup takes, in each of its regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instances {
    /// The live instances carrying this tag.
    Tagged(Tag),
    /// These instances, in whichever of the regions they are.
    Ids(Vec<InstanceId>),
}

/// How instances are held consistent around their snapshot calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHold {
    /// What to freeze and lock on each instance's host.
    pub consistency: Consistency,
    /// Which address of the instance its host is reached at.
    pub address: Address,
}

/// A host a volume is held consistent on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHold {
    /// The host's address, as given to the job's [`Connect`].
    pub host: String,
    /// What to freeze and lock there.
    pub consistency: Consistency,
}

/// One volume a backup takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBackup {
    /// Its region.
    pub region: Region,
    /// The volume.
    pub volume: VolumeId,
    /// Held consistent on a host around its snapshot call, when set.
    pub hold: Option<VolumeHold>,
}

/// What a backup is doing, as it goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum BackupEvent {
    /// A region's instances were listed.
    Listed {
        /// The region.
        region: Region,
        /// How many instances it has to back up.
        instances: usize,
    },
    /// A host's database lock and freeze are being taken (or, in a dry
    /// run, the host is being reached).
    Holding {
        /// The host's address.
        host: String,
    },
    /// One item is done: backed up, already done, or failed.
    Done {
        /// Its result.
        result: BackupResult,
    },
    /// Waiting for the snapshots of a region: how many are no longer
    /// pending, after each round of polling.
    Waiting {
        /// The region.
        region: Region,
        /// No longer pending.
        done: usize,
        /// Awaited in all.
        total: usize,
    },
}

/// The callback [`BackupEvent`]s are delivered to.
pub type BackupEventSink = Arc<dyn Fn(&BackupEvent) + Send + Sync>;

/// What a backup did (or, from [`Backup::plan`], would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackupReport {
    /// One result per instance or volume, and one per region whose
    /// instances could not be listed.
    pub results: Vec<BackupResult>,
    /// Instances asked for by id that no region has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<InstanceId>,
}

impl BackupReport {
    /// How many items failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.failed()).count()
    }

    /// This run as metrics: the snapshots created per region
    /// (`ektool_backup_snapshots_created`) and the failed items
    /// (`ektool_backup_failures`).
    pub fn add_metrics(&self, m: &mut crate::metrics::Metrics) {
        let created = m.gauge(
            "ektool_backup_snapshots_created",
            "Snapshots the last backup run created, by region.",
        );
        for (region, ids) in self.created() {
            created.sample(&[("region", region.as_str())], ids.len() as f64);
        }
        m.gauge(
            "ektool_backup_failures",
            "Instances or volumes the last backup run failed to snapshot.",
        )
        .sample(&[], self.failed() as f64);
    }

    /// The snapshots created, per region.
    pub fn created(&self) -> BTreeMap<Region, Vec<SnapshotId>> {
        let mut by_region: BTreeMap<Region, Vec<SnapshotId>> = BTreeMap::new();
        for r in &self.results {
            if let BackupStatus::Created { snapshots, .. } = &r.status {
                by_region
                    .entry(r.region.clone())
                    .or_default()
                    .extend(snapshots.iter().cloned());
            }
        }
        by_region
    }
}

/// How the snapshots of one region ended up after [`Backup::wait`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionWait {
    /// How many were awaited.
    pub awaited: usize,
    /// Where each ended up.
    pub report: WaitReport,
}

/// A backup: instances (by tag or id, per region) and volumes, each held
/// consistent when asked, one failure never stopping the others.
#[derive(Clone)]
pub struct Backup<'a> {
    ec2: &'a dyn Ec2,
    options: BackupOptions,
    regions: Vec<Region>,
    instances: Option<Instances>,
    hold: Option<InstanceHold>,
    volumes: Vec<VolumeBackup>,
    connect: Option<Connect>,
    cancel: CancellationToken,
    events: BackupEventSink,
}

impl std::fmt::Debug for Backup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("options", &self.options)
            .field("regions", &self.regions)
            .field("instances", &self.instances)
            .field("hold", &self.hold)
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

/// The failure of an item the job did not start because it was cancelled.
const NOT_STARTED: &str = "not started: interrupted";

/// Regions listed at once.
const REGIONS_AT_ONCE: usize = 8;

impl<'a> Backup<'a> {
    /// A backup of nothing yet, with these options.
    pub fn new(ec2: &'a dyn Ec2, options: BackupOptions) -> Self {
        Self {
            ec2,
            options,
            regions: Vec::new(),
            instances: None,
            hold: None,
            volumes: Vec::new(),
            connect: None,
            cancel: CancellationToken::new(),
            events: Arc::new(|_| {}),
        }
    }

    /// Backs up `which` instances in `regions` (one filtered, paginated
    /// `DescribeInstances` per region).
    #[must_use]
    pub fn instances(mut self, regions: Vec<Region>, which: Instances) -> Self {
        self.regions = regions;
        self.instances = Some(which);
        self
    }

    /// Holds each instance consistent around its snapshot call (one
    /// instance at a time then, each on its own host).
    #[must_use]
    pub fn consistent(mut self, hold: InstanceHold) -> Self {
        self.hold = Some(hold);
        self
    }

    /// Backs up these volumes too (before the instances).
    #[must_use]
    pub fn volumes(mut self, volumes: impl IntoIterator<Item = VolumeBackup>) -> Self {
        self.volumes.extend(volumes);
        self
    }

    /// How the hosts of held items are reached.
    #[must_use]
    pub fn connect(mut self, connect: Connect) -> Self {
        self.connect = Some(connect);
        self
    }

    /// Stops starting items when `token` is cancelled: a hold being taken
    /// is released, items not started are reported as interrupted; a
    /// snapshot call already made finishes and is reported.
    #[must_use]
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Where progress goes.
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&BackupEvent) + Send + Sync + 'static) -> Self {
        self.events = Arc::new(f);
        self
    }

    /// The dry run: every item checked as far as it can be without a
    /// change — what the window already has, EC2's `DryRun` of each
    /// create (permissions and parameters), each held host reached (its
    /// host key checked) with what would be held in the notes. Nothing is
    /// frozen, locked or created.
    pub async fn plan(&self) -> BackupReport {
        let options = BackupOptions {
            dry_run: true,
            ..self.options.clone()
        };
        self.execute(&options).await
    }

    /// Runs the backup.
    pub async fn run(&self) -> BackupReport {
        self.execute(&self.options).await
    }

    /// Waits until every snapshot `report` created is no longer pending,
    /// region by region, polling every 15 seconds, for at most `timeout`
    /// in each ([`BackupEvent::Waiting`] after each round).
    pub async fn wait(
        &self,
        report: &BackupReport,
        timeout: Duration,
    ) -> Result<Vec<(Region, RegionWait)>, Ec2Error> {
        let poll = Duration::from_secs(15);
        let mut out = Vec::new();
        for (region, ids) in report.created() {
            let forward = |e: &WaitEvent| {
                let WaitEvent::Progress {
                    region,
                    done,
                    total,
                } = e;
                self.emit(BackupEvent::Waiting {
                    region: region.clone(),
                    done: *done,
                    total: *total,
                });
            };
            let waited = wait_for(self.ec2, &region, &ids, poll, timeout, &forward).await?;
            out.push((
                region,
                RegionWait {
                    awaited: ids.len(),
                    report: waited,
                },
            ));
        }
        Ok(out)
    }

    fn emit(&self, event: BackupEvent) {
        (self.events)(&event);
    }

    fn done(&self, report: &mut BackupReport, results: Vec<BackupResult>) {
        for result in results {
            self.emit(BackupEvent::Done {
                result: result.clone(),
            });
            report.results.push(result);
        }
    }

    async fn execute(&self, options: &BackupOptions) -> BackupReport {
        let mut report = BackupReport::default();
        self.back_up_volumes(options, &mut report).await;
        if let Some(which) = &self.instances {
            self.back_up_instances(which, options, &mut report).await;
        }
        report
    }

    /// Volumes, region by region: those not held in one pass, the held
    /// ones one by one.
    async fn back_up_volumes(&self, options: &BackupOptions, report: &mut BackupReport) {
        let mut by_region: BTreeMap<&Region, Vec<&VolumeBackup>> = BTreeMap::new();
        for v in &self.volumes {
            by_region.entry(&v.region).or_default().push(v);
        }
        for (region, volumes) in by_region {
            let plain: Vec<VolumeId> = volumes
                .iter()
                .filter(|v| v.hold.is_none())
                .map(|v| v.volume.clone())
                .collect();
            if !plain.is_empty() {
                let results = backup_volumes(self.ec2, region, &plain, options).await;
                self.done(report, results);
            }
            for v in volumes {
                let Some(hold) = &v.hold else { continue };
                let item = BackupItem::volume(region, &v.volume);
                let run =
                    || backup_volumes(self.ec2, region, std::slice::from_ref(&v.volume), options);
                let results = self
                    .held(&hold.host, &hold.consistency, &item, options, run)
                    .await;
                self.done(report, results);
            }
        }
    }

    /// Instances, region by region: all of a region in one pass, or one by
    /// one when held.
    async fn back_up_instances(
        &self,
        which: &Instances,
        options: &BackupOptions,
        report: &mut BackupReport,
    ) {
        let filters = match which {
            Instances::Tagged(tag) => vec![
                Filter::tag(tag),
                Filter::new("instance-state-name", fleet::LIVE_STATES.iter().copied()),
            ],
            Instances::Ids(ids) => vec![Filter::new(
                "instance-id",
                ids.iter().map(|i| i.to_string()),
            )],
        };
        let found = fleet::each_region(&self.regions, REGIONS_AT_ONCE, |r| {
            self.ec2.describe_instances(r, &filters)
        })
        .await;
        let mut seen: Vec<InstanceId> = Vec::new();
        for listed in found {
            let region = listed.region;
            let instances = match listed.result {
                Ok(i) => i,
                Err(e) => {
                    let mut failed = BackupItem::region(&region).failed(e.to_string());
                    if let BackupStatus::Failed { code, .. } = &mut failed.status {
                        code.clone_from(&e.code);
                    }
                    failed
                        .notes
                        .push("could not list the region's instances".into());
                    self.done(report, vec![failed]);
                    continue;
                }
            };
            self.emit(BackupEvent::Listed {
                region: region.clone(),
                instances: instances.len(),
            });
            seen.extend(instances.iter().map(|i| i.id.clone()));
            let Some(hold) = &self.hold else {
                let results = backup_instances(self.ec2, &region, &instances, options).await;
                self.done(report, results);
                continue;
            };
            for instance in &instances {
                let results = self.held_instance(&region, instance, hold, options).await;
                self.done(report, results);
            }
        }
        if let Instances::Ids(ids) = which {
            report.not_found = ids.iter().filter(|i| !seen.contains(i)).cloned().collect();
        }
    }

    async fn held_instance(
        &self,
        region: &Region,
        instance: &Instance,
        hold: &InstanceHold,
        options: &BackupOptions,
    ) -> Vec<BackupResult> {
        let item = BackupItem::instance(instance);
        // Interrupted before its address is even looked at.
        if self.cancel.is_cancelled() {
            return vec![item.failed(NOT_STARTED)];
        }
        let Some(address) = instance.address(hold.address) else {
            return vec![item.failed(format!("no {} to reach it over SSH", hold.address))];
        };
        let run = || backup_instances(self.ec2, region, std::slice::from_ref(instance), options);
        self.held(address, &hold.consistency, &item, options, run)
            .await
    }

    /// One item with its host held (the library's consistent step); a
    /// failure to reach the host or take the hold fails the item (nothing
    /// was snapshotted), not the job.
    async fn held<F, Fut>(
        &self,
        host: &str,
        consistency: &Consistency,
        item: &BackupItem,
        options: &BackupOptions,
        run: F,
    ) -> Vec<BackupResult>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Vec<BackupResult>>,
    {
        if self.cancel.is_cancelled() {
            return vec![item.failed(NOT_STARTED)];
        }
        self.emit(BackupEvent::Holding {
            host: host.to_owned(),
        });
        let remote = match &self.connect {
            Some(connect) => reach(connect, host),
            None => Err(ConnectError {
                host: host.to_owned(),
                source: "no way to reach hosts was given (Backup::connect)".into(),
            }),
        };
        match remote {
            Ok(remote) => {
                consistently(
                    remote.as_ref(),
                    consistency,
                    &self.cancel,
                    options.dry_run,
                    item,
                    run,
                )
                .await
            }
            Err(e) => vec![item.failed(format!("not consistent, not snapshotted: {e}"))],
        }
    }
}
