//! Restore tests: a backup you have not restored is a hope.
//!
//! A [`Verifier`] takes, for each selected lineage, its newest completed
//! snapshot, makes it into a volume in a scratch instance's zone, attaches
//! and mounts it read-only (the [`mount`] machinery), runs a
//! check command on the host with the mountpoint in `$MOUNT`, and then
//! unmounts, detaches and deletes the volume **on every path**: a failed
//! check, a failed mount, a host that stops answering (the volume is then
//! detached by force and deleted). The verdict is tagged on the snapshot
//! ([`tags::VERIFIED_AT`], [`tags::VERIFY_RESULT`]), which
//! [`check`](crate::check) reads for `max_unverified`.
//!
//! Every volume a verify run makes carries [`tags::VERIFY_RUN`]: a run
//! that was killed half-way leaves volumes that the next run on the same
//! scratch instance finds in [`VerifyPlan::leftovers`] and removes first
//! ([`Verifier::clean_up`] does only that, e.g. after an interrupt).
//!
//! ```no_run
//! # async fn demo(ec2: &dyn ec2kit::Ec2, connect: snapkit::connect::Connect)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::{InstanceId, Region};
//! use snapkit::verify::{VerifyRequest, Verifier};
//!
//! let verifier = Verifier::new(ec2);
//! let mut request = VerifyRequest::new(InstanceId::parse("i-0123456789abcdef0")?);
//! request.check = "test -s \"$MOUNT/var/lib/mysql/ibdata1\"".into();
//! let plan = verifier.plan(&Region::new("eu-west-1"), &request).await?;
//! let report = verifier.verify(&connect, "admin@10.0.0.5", &plan).await;
//! for item in &report.items {
//!     println!("{} {}: {:?}", item.lineage, item.snapshot, item.result);
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use ec2kit::{
    CancellationToken, Command, Ec2, Ec2Error, Filter, InstanceId, Region, Remote, SnapshotId,
    SnapshotState, Tags, VolumeId,
};
use jiff::Timestamp;
use serde::Serialize;

use crate::connect::{Connect, reach};
use crate::lineage;
use crate::mount::{
    self, MountCommands, MountError, MountEvent, MountRequest, MountVolume, Mounter, Selector,
    UnmountPlan, UnmountReport, Waits,
};
use crate::trim::{self, Scope};

/// The tags a verify run writes.
pub mod tags {
    /// On each volume a verify run makes: the run's id (how a later run
    /// finds what a killed one left).
    pub const VERIFY_RUN: &str = "ektool:verify-run";
    /// On a verified snapshot: when it was last tested (RFC 3339, UTC).
    pub const VERIFIED_AT: &str = "ektool:verified-at";
    /// On a verified snapshot: the outcome of that test, [`OK`] or
    /// [`FAILED`].
    pub const VERIFY_RESULT: &str = "ektool:verify-result";
    /// [`VERIFY_RESULT`] of a snapshot whose check passed.
    pub const OK: &str = "ok";
    /// [`VERIFY_RESULT`] of a snapshot whose volume did not mount or whose
    /// check failed.
    pub const FAILED: &str = "failed";
}

/// What a verify run calls (cleaning up is part of every run).
pub const PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::DescribeInstances,
    ec2kit::Action::DescribeVolumes,
    ec2kit::Action::CreateVolume,
    ec2kit::Action::AttachVolume,
    ec2kit::Action::DetachVolume,
    ec2kit::Action::DeleteVolume,
    ec2kit::Action::CreateTags,
])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// The default check: lists the filesystem (it must hold at least one
/// file) and reads a random sample of up to 64 files to the end.
pub const DEFAULT_CHECK: &str = "set -e; cd -- \"$MOUNT\"; \
    n=$(find . -xdev -type f | wc -l); \
    echo \"$n files\"; \
    if [ \"$n\" -eq 0 ]; then echo 'no files on the filesystem' >&2; exit 1; fi; \
    find . -xdev -type f -print0 | shuf -z -n 64 | xargs -0 -r cat -- > /dev/null; \
    echo \"read a sample of $(( n < 64 ? n : 64 )) files\"";

/// The environment variable the check finds the mountpoint in.
pub const MOUNT_VAR: &str = "MOUNT";

/// How much of the check's output a report keeps (the end of it).
pub const OUTPUT_TAIL: usize = 2000;

/// What to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    /// The scratch instance the volumes are attached to.
    pub instance: InstanceId,
    /// The lineages (keys as [`lineage::lineage_of`] gives them, i.e.
    /// source volume ids); empty: every lineage of ektool's snapshots in
    /// the region.
    pub lineages: Vec<String>,
    /// The check, a shell script run on the host with `$MOUNT` set:
    /// exit 0 passes ([`DEFAULT_CHECK`] unless given).
    pub check: String,
    /// The mount root on the host ([`mount::DEFAULT_ROOT`] unless given).
    pub root: String,
}

impl VerifyRequest {
    /// Every lineage, the default check, the default mount root.
    pub fn new(instance: InstanceId) -> Self {
        Self {
            instance,
            lineages: Vec::new(),
            check: DEFAULT_CHECK.to_owned(),
            root: mount::DEFAULT_ROOT.to_owned(),
        }
    }
}

/// One restore test to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyTarget {
    /// The lineage.
    pub lineage: String,
    /// Its newest completed snapshot.
    pub snapshot: SnapshotId,
    /// The point in time of its data.
    pub snapshot_time: Timestamp,
    /// Its size in GiB.
    pub size_gib: Option<i32>,
    /// Whether it is encrypted.
    pub encrypted: bool,
}

/// What [`Verifier::verify`] will do (a dry run shows it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyPlan {
    /// The region.
    pub region: Region,
    /// The scratch instance.
    pub instance: InstanceId,
    /// Its availability zone (where the volumes are made).
    pub availability_zone: String,
    /// Its private IP.
    pub private_ip: Option<String>,
    /// Its public DNS name.
    pub public_dns: Option<String>,
    /// The check.
    pub check: String,
    /// The mount root.
    pub root: String,
    /// The tests, by lineage.
    pub targets: Vec<VerifyTarget>,
    /// Volumes earlier verify runs left on the instance: removed first.
    pub leftovers: Vec<MountVolume>,
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerifyResult {
    /// Mounted, and the check passed. Tagged on the snapshot.
    Ok,
    /// The check failed, or the volume had no filesystem that mounts.
    /// Tagged on the snapshot.
    Failed,
    /// The test could not be carried out (EC2 or the host failed): says
    /// nothing about the snapshot, so nothing is tagged.
    Error,
}

/// The outcome of one restore test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyOutcome {
    /// The lineage.
    pub lineage: String,
    /// The snapshot tested.
    pub snapshot: SnapshotId,
    /// The volume made from it.
    pub volume: Option<VolumeId>,
    /// Where it was mounted.
    pub mountpoint: Option<String>,
    /// The verdict.
    pub result: VerifyResult,
    /// Why, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The end of the check's output (stdout then stderr).
    pub output: String,
    /// Whether the verdict was tagged on the snapshot.
    pub tagged: bool,
    /// Whether the volume is gone again (unmounted, detached, deleted).
    pub cleaned_up: bool,
    /// What went wrong cleaning up, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_error: Option<String>,
    /// Notes of the clean-up (e.g. detached by force).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A leftover volume, and whether removing it worked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cleaned {
    /// The volume.
    pub volume: VolumeId,
    /// What was done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<UnmountReport>,
    /// Why it could not be removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What [`Verifier::verify`] did: a plain value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// The region.
    pub region: Region,
    /// The scratch instance.
    pub instance: InstanceId,
    /// This run's id (the [`tags::VERIFY_RUN`] of its volumes).
    pub run: String,
    /// The time tagged on the snapshots.
    pub verified_at: Timestamp,
    /// Leftovers of earlier runs removed first.
    pub leftovers: Vec<Cleaned>,
    /// One per target tested (an interrupt stops before the next one).
    pub items: Vec<VerifyOutcome>,
    /// Whether the run was cancelled ([`Verifier::cancel_on`]): targets
    /// after the last item were not tested.
    pub interrupted: bool,
}

impl VerifyReport {
    /// Whether every test passed, everything was cleaned up, and nothing
    /// interrupted the run.
    pub fn ok(&self) -> bool {
        self.items
            .iter()
            .all(|i| i.result == VerifyResult::Ok && i.cleaned_up)
            && self.leftovers.iter().all(|l| l.error.is_none())
            && !self.interrupted
    }
}

/// Why a verify run could not be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// An EC2 call failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// Looking at the instance or the volumes failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A lineage asked for has no completed snapshot here.
    #[error("lineage {lineage} has no completed snapshot in {region}")]
    NoSnapshot {
        /// The lineage.
        lineage: String,
        /// The region.
        region: Region,
    },
    /// The check command is empty.
    #[error("the check command is empty")]
    EmptyCheck,
}

/// What a verify run is doing, as it goes (for progress output).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum VerifyEvent {
    /// A volume an earlier run left is being removed.
    CleaningUp {
        /// The volume.
        volume: VolumeId,
    },
    /// A restore test begins.
    Testing {
        /// The lineage.
        lineage: String,
        /// The snapshot.
        snapshot: SnapshotId,
    },
    /// A step of the mount or unmount.
    Mount(MountEvent),
    /// The check runs on the host.
    Checking {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Where it is mounted.
        mountpoint: String,
    },
    /// A restore test ended (before its clean-up).
    Tested {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The verdict.
        result: VerifyResult,
    },
}

/// The callback [`VerifyEvent`]s are delivered to.
pub type VerifyEventSink = Arc<dyn Fn(&VerifyEvent) + Send + Sync>;

/// Runs restore tests: the EC2 client, the host-side mount commands, the
/// waits, the run id, and who hears about progress.
#[derive(Clone)]
pub struct Verifier<'a> {
    ec2: &'a dyn Ec2,
    commands: MountCommands,
    waits: Waits,
    events: VerifyEventSink,
    run: String,
    now: Option<Timestamp>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Verifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("commands", &self.commands)
            .field("waits", &self.waits)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl<'a> Verifier<'a> {
    /// A verifier with the default mount commands and waits, a fresh run
    /// id, reporting to nobody.
    pub fn new(ec2: &'a dyn Ec2) -> Self {
        Self {
            ec2,
            commands: MountCommands::default(),
            waits: Waits::default(),
            events: Arc::new(|_| {}),
            run: uuid::Uuid::new_v4().to_string(),
            now: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Stop when `token` is cancelled (an interrupt): a check running is
    /// abandoned (its processes on the host are killed as its volume is
    /// unmounted), the test in progress is cleaned up over a new
    /// connection, and no further test starts.
    #[must_use]
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// The host-side mount commands.
    #[must_use]
    pub fn commands(mut self, commands: MountCommands) -> Self {
        self.commands = commands;
        self
    }

    /// How long to wait for EC2, and how often to look.
    #[must_use]
    pub fn waits(mut self, waits: Waits) -> Self {
        self.waits = waits;
        self
    }

    /// Where progress goes.
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&VerifyEvent) + Send + Sync + 'static) -> Self {
        self.events = Arc::new(f);
        self
    }

    /// The time tagged on the snapshots and volumes (default: the moment
    /// of the call).
    #[must_use]
    pub fn at(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// This run's id.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    fn now(&self) -> Timestamp {
        self.now.unwrap_or_else(Timestamp::now)
    }

    fn emit(&self, event: VerifyEvent) {
        (self.events)(&event);
    }

    fn mounter(&self) -> Mounter<'a> {
        let events = self.events.clone();
        let mut m = Mounter::new(self.ec2)
            .commands(self.commands.clone())
            .waits(self.waits)
            .on_event(move |e| events(&VerifyEvent::Mount(e.clone())))
            .volume_tags(Tags::new().with(tags::VERIFY_RUN, self.run.clone()));
        if let Some(t) = self.now {
            m = m.at(t);
        }
        m
    }

    /// Looks at the instance, the snapshots and the volumes earlier runs
    /// left on the instance. Only reads.
    pub async fn plan(
        &self,
        region: &Region,
        request: &VerifyRequest,
    ) -> Result<VerifyPlan, VerifyError> {
        if request.check.trim().is_empty() {
            return Err(VerifyError::EmptyCheck);
        }
        mount::check_mountpoint(&request.root)?;
        let (instance, zone) = mount::running_instance(self.ec2, region, &request.instance).await?;
        let snapshots = trim::inventory(self.ec2, region, Scope::Owned).await?;
        let targets = newest_per_lineage(&snapshots, &request.lineages, region)?;
        let leftovers = leftovers(self.ec2, region, &instance.id).await?;
        Ok(VerifyPlan {
            region: region.clone(),
            instance: instance.id,
            availability_zone: zone,
            private_ip: instance.private_ip,
            public_dns: instance.public_dns,
            check: request.check.clone(),
            root: request.root.trim_end_matches('/').to_owned(),
            targets,
            leftovers,
        })
    }

    /// Carries out a plan on `host` (the scratch instance's, reached
    /// through `connect`): the leftovers removed, then one restore test
    /// after the other, each cleaned up whatever happens (a host that
    /// stops answering: its volume is detached by force and deleted).
    /// Never fails as a whole: every problem is in the report.
    pub async fn verify(&self, connect: &Connect, host: &str, plan: &VerifyPlan) -> VerifyReport {
        // Whole seconds: the tag's precision.
        let now = self.now();
        let verified_at = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let remote = reach(connect, host);
        let leftovers = self
            .remove(
                remote.as_deref().ok(),
                &plan.leftovers,
                &plan.instance,
                &plan.root,
            )
            .await;
        let mut items = Vec::new();
        for t in &plan.targets {
            if self.cancel.is_cancelled() {
                break;
            }
            let item = match &remote {
                Ok(r) => self.test(&**r, connect, host, plan, t, verified_at).await,
                Err(e) => unreached(t, e),
            };
            items.push(item);
        }
        VerifyReport {
            region: plan.region.clone(),
            instance: plan.instance.clone(),
            run: self.run.clone(),
            verified_at,
            leftovers,
            items,
            interrupted: self.cancel.is_cancelled(),
        }
    }

    /// Removes every volume a verify run left on `instance` (of this run
    /// only, with `run`): unmounted on `remote` when it answers (what
    /// still uses a mount under `root` is killed first), else detached by
    /// force; then deleted.
    pub async fn clean_up(
        &self,
        remote: Option<&dyn Remote>,
        region: &Region,
        instance: &InstanceId,
        run: Option<&str>,
        root: &str,
    ) -> Result<Vec<Cleaned>, VerifyError> {
        let found: Vec<MountVolume> = leftovers_of(self.ec2, region, instance, run).await?;
        Ok(self.remove(remote, &found, instance, root).await)
    }

    async fn remove(
        &self,
        remote: Option<&dyn Remote>,
        volumes: &[MountVolume],
        instance: &InstanceId,
        root: &str,
    ) -> Vec<Cleaned> {
        let mut out = Vec::new();
        for v in volumes {
            self.emit(VerifyEvent::CleaningUp {
                volume: v.volume.clone(),
            });
            let (done, error) = match self.undo(remote, v, instance, root).await {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(ec2kit::one_line(&e))),
            };
            out.push(Cleaned {
                volume: v.volume.clone(),
                done,
                error,
            });
        }
        out
    }

    /// Unmounts (releasing what still uses the mount: a check a killed run
    /// left running), detaches (by force when the host does not answer)
    /// and deletes.
    async fn undo(
        &self,
        remote: Option<&dyn Remote>,
        volume: &MountVolume,
        instance: &InstanceId,
        root: &str,
    ) -> Result<UnmountReport, MountError> {
        let mounter = self.mounter();
        // Look again: the state may have moved on since the plan.
        let now = mounter
            .find(
                &volume.region,
                &Selector::Volume(volume.volume.clone()),
                None,
            )
            .await?;
        let Some(current) = now.into_iter().next() else {
            return Ok(UnmountReport {
                volume: volume.volume.clone(),
                unmounted: Vec::new(),
                detached: false,
                deleted: false,
                notes: vec!["gone already".into()],
            });
        };
        if current.instance.as_ref() != Some(instance) && current.attached {
            // Attached elsewhere: not this scratch instance's to undo.
            return Err(MountError::NotOurs {
                volume: current.volume,
            });
        }
        if let (Some(r), Some(mp)) = (remote, current.mountpoint.as_deref())
            && current.attached
            && mount::check_mountpoint_under(mp, root).is_ok()
        {
            // Whatever still holds the filesystem (a check left running
            // by an interrupted run) would keep it from unmounting. Only
            // under the mount root (a tag can be rewritten by anyone), and
            // only when something is mounted there (else `fuser -m` would
            // name the filesystem it lies on).
            let _ = r
                .run(
                    &Command::shell(
                        "command -v fuser >/dev/null 2>&1 && mountpoint -q -- \"$MP\" \
                     && fuser -k -M -m \"$MP\" >/dev/null 2>&1; true",
                    )
                    .env("MP", mp),
                )
                .await;
        }
        mounter
            .unmount_volume(remote, &UnmountPlan::of(&current), true)
            .await
    }

    async fn test(
        &self,
        remote: &dyn Remote,
        connect: &Connect,
        host: &str,
        plan: &VerifyPlan,
        target: &VerifyTarget,
        verified_at: Timestamp,
    ) -> VerifyOutcome {
        self.emit(VerifyEvent::Testing {
            lineage: target.lineage.clone(),
            snapshot: target.snapshot.clone(),
        });
        let mut out = VerifyOutcome {
            lineage: target.lineage.clone(),
            snapshot: target.snapshot.clone(),
            volume: None,
            mountpoint: None,
            result: VerifyResult::Error,
            reason: None,
            output: String::new(),
            tagged: false,
            cleaned_up: false,
            cleanup_error: None,
            notes: Vec::new(),
        };
        let mounter = self.mounter();
        let request = MountRequest {
            snapshot: target.snapshot.clone(),
            instance: plan.instance.clone(),
            mountpoint: None,
            root: plan.root.clone(),
            partition: None,
        };
        let mounted = match mounter.plan(&plan.region, &request).await {
            Ok(p) => mounter.mount(remote, &p).await,
            Err(e) => Err(e),
        };
        match mounted {
            Ok(m) => {
                out.volume = Some(m.volume.clone());
                out.mountpoint = Some(m.mountpoint.clone());
                self.emit(VerifyEvent::Checking {
                    snapshot: target.snapshot.clone(),
                    mountpoint: m.mountpoint.clone(),
                });
                let command = Command::shell(plan.check.clone()).env(MOUNT_VAR, m.mountpoint);
                let ran = tokio::select! {
                    r = remote.run(&command) => Some(r),
                    () = self.cancel.cancelled() => None,
                };
                match ran {
                    None => out.reason = Some("interrupted during the check".into()),
                    Some(Ok(o)) => {
                        let mut text = o.stdout_str();
                        text.push_str(&o.stderr_str());
                        out.output = tail(&text);
                        if o.status.success() {
                            out.result = VerifyResult::Ok;
                        } else {
                            out.result = VerifyResult::Failed;
                            out.reason = Some(format!("the check failed: {}", o.status));
                        }
                    }
                    Some(Err(e)) => out.reason = Some(format!("the check could not run: {e}")),
                }
            }
            Err(e) => {
                // A mount that failed after making its volume has rolled it
                // back; the clean-up below retries what that left.
                let cause = match &e {
                    MountError::Aborted { cause, rollback } => {
                        out.volume = Some(match rollback {
                            mount::Rollback::Deleted { volume }
                            | mount::Rollback::LeftBehind { volume, .. } => volume.clone(),
                        });
                        &**cause
                    }
                    other => other,
                };
                out.result = if says_nothing_about_the_snapshot(cause) {
                    VerifyResult::Error
                } else {
                    VerifyResult::Failed
                };
                let text = ec2kit::one_line(&e);
                out.reason = Some(if text.starts_with("mount failed") {
                    text
                } else {
                    format!("mount failed: {text}")
                });
            }
        }
        self.emit(VerifyEvent::Tested {
            snapshot: target.snapshot.clone(),
            result: out.result,
        });
        if out.result != VerifyResult::Error {
            let value = if out.result == VerifyResult::Ok {
                tags::OK
            } else {
                tags::FAILED
            };
            let t = Tags::new()
                .with(
                    tags::VERIFIED_AT,
                    verified_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                )
                .with(tags::VERIFY_RESULT, value);
            match self
                .ec2
                .create_tags(&plan.region, &[target.snapshot.to_string()], &t, false)
                .await
            {
                Ok(()) => out.tagged = true,
                Err(e) => out.notes.push(format!("verdict not tagged: {e}")),
            }
        }
        // Whatever happened: this run's volumes of this snapshot go (found
        // by their tags, so also one a failed rollback left). After an
        // interrupt the connection may still be busy with the abandoned
        // check: a new one is made.
        let fresh = if self.cancel.is_cancelled() {
            reach(connect, host).ok()
        } else {
            None
        };
        let remote: &dyn Remote = match &fresh {
            Some(r) => &**r,
            None => remote,
        };
        match leftovers_of(self.ec2, &plan.region, &plan.instance, Some(&self.run)).await {
            Ok(found) => {
                let mine: Vec<MountVolume> = found
                    .into_iter()
                    .filter(|v| v.snapshot.as_deref() == Some(target.snapshot.as_str()))
                    .collect();
                let cleaned = self
                    .remove(Some(remote), &mine, &plan.instance, &plan.root)
                    .await;
                out.cleaned_up = cleaned.iter().all(|c| c.error.is_none());
                out.cleanup_error = cleaned.iter().find_map(|c| c.error.clone());
                out.notes.extend(
                    cleaned
                        .iter()
                        .flat_map(|c| c.done.iter().flat_map(|d| d.notes.iter().cloned())),
                );
            }
            Err(e) => out.cleanup_error = Some(ec2kit::one_line(&e)),
        }
        out
    }
}

/// The outcome of a test whose host could not be reached at all.
fn unreached(t: &VerifyTarget, e: &crate::connect::ConnectError) -> VerifyOutcome {
    VerifyOutcome {
        lineage: t.lineage.clone(),
        snapshot: t.snapshot.clone(),
        volume: None,
        mountpoint: None,
        result: VerifyResult::Error,
        reason: Some(ec2kit::one_line(e)),
        output: String::new(),
        tagged: false,
        cleaned_up: true,
        cleanup_error: None,
        notes: Vec::new(),
    }
}

/// Whether a mount failure is the test's, not the snapshot's: EC2 or the
/// connection failed, or the host is not as expected.
fn says_nothing_about_the_snapshot(e: &MountError) -> bool {
    !matches!(
        e,
        MountError::NoFilesystem { .. }
            | MountError::NoSuchPartition { .. }
            | MountError::NotMounted { .. }
            | MountError::VolumeFailed { .. }
    )
}

/// The newest completed snapshot of each lineage asked for (each one of
/// ektool's snapshots when none is), by the point in time of its data.
fn newest_per_lineage(
    snapshots: &[ec2kit::Snapshot],
    wanted: &[String],
    region: &Region,
) -> Result<Vec<VerifyTarget>, VerifyError> {
    let mut newest: BTreeMap<String, &ec2kit::Snapshot> = BTreeMap::new();
    for s in snapshots
        .iter()
        .filter(|s| lineage::is_owned(s) && s.state == SnapshotState::Completed)
    {
        let key = lineage::lineage_of(s);
        if !wanted.is_empty() && !wanted.contains(&key) {
            continue;
        }
        let t = crate::replicate::data_time(s);
        match newest.get(&key) {
            Some(have) if (crate::replicate::data_time(have), &have.id) >= (t, &s.id) => {}
            _ => {
                newest.insert(key, s);
            }
        }
    }
    for l in wanted {
        if !newest.contains_key(l) {
            return Err(VerifyError::NoSnapshot {
                lineage: l.clone(),
                region: region.clone(),
            });
        }
    }
    Ok(newest
        .into_iter()
        .map(|(lineage, s)| VerifyTarget {
            lineage,
            snapshot: s.id.clone(),
            snapshot_time: crate::replicate::data_time(s),
            size_gib: s.volume_size_gib,
            encrypted: s.encrypted,
        })
        .collect())
}

/// The volumes verify runs made on `instance` (any run).
async fn leftovers(
    ec2: &dyn Ec2,
    region: &Region,
    instance: &InstanceId,
) -> Result<Vec<MountVolume>, VerifyError> {
    leftovers_of(ec2, region, instance, None).await
}

/// The volumes verify runs (or the run `run`) made on `instance`: owned,
/// made from the snapshot their mount tag names, not being deleted.
async fn leftovers_of(
    ec2: &dyn Ec2,
    region: &Region,
    instance: &InstanceId,
    run: Option<&str>,
) -> Result<Vec<MountVolume>, VerifyError> {
    let run_filter = match run {
        Some(r) => Filter::new(format!("tag:{}", tags::VERIFY_RUN), [r]),
        None => Filter::tag_key(tags::VERIFY_RUN),
    };
    let volumes = ec2
        .describe_volumes(
            region,
            &[
                Filter::new(
                    format!("tag:{}", lineage::tags::OWNER),
                    [lineage::tags::OWNER_VALUE],
                ),
                Filter::new(
                    format!("tag:{}", mount::tags::MOUNTED_ON),
                    [instance.as_str()],
                ),
                run_filter,
            ],
        )
        .await?;
    Ok(volumes
        .iter()
        .filter(|v| !matches!(v.state.as_str(), "deleting" | "deleted"))
        .filter_map(MountVolume::from_volume)
        .collect())
}

/// The last [`OUTPUT_TAIL`] bytes of `text` (on a character boundary).
fn tail(text: &str) -> String {
    if text.len() <= OUTPUT_TAIL {
        return text.to_owned();
    }
    let mut start = text.len() - OUTPUT_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests;
