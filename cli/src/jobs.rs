//! Jobs: the steps of a `[jobs.<name>]` (backup, trim, replicate, check)
//! run in order from the config's values, one [`JobReport`], and the files
//! a scheduler runs them from (a systemd service and timer, a cron line).
//!
//! The conductor only composes library calls ([`snapkit::backup::Backup`],
//! [`snapkit::trim`], [`snapkit::replicate`], [`snapkit::check`]) with the
//! values [`Config`] builds; a step that fails does not stop the later
//! ones unless the job says `stop_on_failure = true`. [`JobLock`] keeps two
//! runs of one job on one machine from overlapping. [`run_in_accounts`]
//! runs a job in many accounts at once, one [`AccountsReport`].
//!
//! ```no_run
//! # async fn night() -> Result<(), Box<dyn std::error::Error>> {
//! use ektool::config::Config;
//! use ektool::jobs::{self, JobLock, RunOptions};
//!
//! let config = Config::load(None)?;
//! let _lock = JobLock::acquire("nightly")?;
//! let report = jobs::run(&config, "nightly", &RunOptions::default(), &|_| {}).await?;
//! println!("{} step(s) failed", report.failed());
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2kit::Region;
use ec2kit::accounts::AccountId;
use futures::StreamExt as _;
use serde::Serialize;
use snapkit::backup::{Backup, Instances};
use snapkit::check::{self, CheckSpec, VolumeTarget};
use snapkit::replicate::{self, CopyOptions, Selection};
use snapkit::trim::{self, Scope};

use crate::config::{Config, DEFAULT_SCHEDULE, JobConfig, PoliciesError, RegionsError, Step};

/// How long the backup step waits for its snapshots when the job does not
/// say (`[jobs.<name>.backup] wait`).
pub const DEFAULT_BACKUP_WAIT: Duration = Duration::from_secs(7200);

/// A job that cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// No `[jobs.<name>]` of that name.
    #[error("no job {name:?} in the config; jobs: {}", if known.is_empty() { "none (add a [jobs.<name>] section)".to_owned() } else { known.join(", ") })]
    UnknownJob {
        /// The name asked for.
        name: String,
        /// The jobs the config has.
        known: Vec<String>,
    },
    /// The regions could not be resolved.
    #[error(transparent)]
    Regions(#[from] RegionsError),
    /// The retention policies could not be built.
    #[error(transparent)]
    Policies(#[from] PoliciesError),
    /// The job cannot run across accounts as it is: its backup or check
    /// step would take the `[volumes]` aliases (one account's volumes) to
    /// every account.
    #[error(
        "job {job}: its {step} step covers the [volumes] aliases, which are one account's \
         volumes; run it in one account (--role-arn), or leave the aliases out of this config"
    )]
    NotAcrossAccounts {
        /// The job.
        job: String,
        /// The step that cannot fan out.
        step: Step,
    },
}

impl JobError {
    /// Whether the input (the name, the config) is at fault rather than
    /// AWS: the CLI's exit 2.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::UnknownJob { .. }
                | Self::Policies(_)
                | Self::Regions(RegionsError::Names(_))
                | Self::NotAcrossAccounts { .. }
        )
    }
}

/// How to run a job.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Plan every step, change nothing.
    pub dry_run: bool,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepStatus {
    /// Everything it did (or planned) succeeded.
    Ok,
    /// Something failed (see [`StepReport::failures`]).
    Failed,
    /// Not run: an earlier step failed and the job stops on failure.
    Skipped,
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// How it ended.
    pub status: StepStatus,
    /// One line: what it did.
    pub summary: String,
    /// One line per failure.
    pub failures: Vec<String>,
    /// The library's own report(s) of the step, as JSON.
    pub detail: serde_json::Value,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// The job's name.
    pub job: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// When it started and ended.
    pub started: jiff::Timestamp,
    /// When it ended.
    pub ended: jiff::Timestamp,
    /// One report per step, in order.
    pub steps: Vec<StepReport>,
    /// The check step's report, typed (also in its step's `detail`), for
    /// [`JobReport::metrics`].
    #[serde(skip)]
    pub check: Option<check::CheckReport>,
}

impl JobReport {
    /// How many steps failed.
    pub fn failed(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .count()
    }

    /// Whether every step that ran succeeded.
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    /// The run's Prometheus metrics, once for the whole job: the check
    /// step's (newest completed snapshot per lineage, counts and bytes per
    /// region, failures) when it ran, `ektool_job_step_success{job,step}`
    /// per step that ran, and the run's start, end and success as command
    /// `run <job>`.
    pub fn metrics(&self) -> snapkit::metrics::Metrics {
        let mut m = self.step_metrics();
        m.run(
            &format!("run {}", self.job),
            self.started,
            self.ended,
            self.ok(),
        );
        m
    }

    /// [`JobReport::metrics`] without the run's own start, end and success.
    fn step_metrics(&self) -> snapkit::metrics::Metrics {
        let mut m = self
            .check
            .as_ref()
            .map(check::CheckReport::metrics)
            .unwrap_or_default();
        for s in self
            .steps
            .iter()
            .filter(|s| s.status != StepStatus::Skipped)
        {
            m.gauge(
                "ektool_job_step_success",
                "Whether the step succeeded (1) or failed (0) in the job's last run.",
            )
            .sample(
                &[("job", self.job.as_str()), ("step", s.step.as_str())],
                if s.status == StepStatus::Ok { 1.0 } else { 0.0 },
            );
        }
        m
    }
}

/// One account's run of a job in [`run_in_accounts`].
#[derive(Debug, Clone, Serialize)]
pub struct AccountRun {
    /// The account.
    pub account: AccountId,
    /// Its report, when the job could start there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<JobReport>,
    /// Why it could not (its role could not be assumed, its regions not
    /// listed): the account failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AccountRun {
    /// Whether the job ran in the account and every step that ran there
    /// succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.report.as_ref().is_some_and(JobReport::ok)
    }
}

/// A job run in many accounts: one [`AccountRun`] per account, in the
/// order given.
#[derive(Debug, Clone, Serialize)]
pub struct AccountsReport {
    /// The job's name.
    pub job: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// When it started.
    pub started: jiff::Timestamp,
    /// When it ended.
    pub ended: jiff::Timestamp,
    /// Each account's outcome.
    pub accounts: Vec<AccountRun>,
}

impl AccountsReport {
    /// How many accounts failed (a step failed there, or the job could not
    /// start there).
    pub fn failed(&self) -> usize {
        self.accounts.iter().filter(|a| !a.ok()).count()
    }

    /// Whether the job succeeded in every account.
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    /// The run's Prometheus metrics: each account's [`JobReport::metrics`]
    /// (its check step's, its steps' success) with an `account` label,
    /// `ektool_job_account_success{account,job}` per account, and the
    /// whole run's start, end and success as command `run <job>`.
    pub fn metrics(&self) -> snapkit::metrics::Metrics {
        let mut m = snapkit::metrics::Metrics::new();
        for a in &self.accounts {
            if let Some(r) = &a.report {
                m.extend_labelled(r.step_metrics(), ("account", a.account.as_str()));
            }
        }
        for a in &self.accounts {
            m.gauge(
                "ektool_job_account_success",
                "Whether the job succeeded (1) or failed (0) in the account in its last run.",
            )
            .sample(
                &[("account", a.account.as_str()), ("job", self.job.as_str())],
                if a.ok() { 1.0 } else { 0.0 },
            );
        }
        m.run(
            &format!("run {}", self.job),
            self.started,
            self.ended,
            self.ok(),
        );
        m
    }
}

/// One account a job runs in: its id, its EC2 client (assuming its role,
/// with its own rate-limit buckets) and its regions.
#[derive(Debug, Clone, Copy)]
pub struct AccountTarget<'a> {
    /// The account.
    pub account: &'a AccountId,
    /// Its client.
    pub ec2: &'a ec2kit::AwsEc2,
    /// Its regions.
    pub regions: &'a [Region],
}

/// Runs the job `name` in every account of `targets` at once (at most
/// [`ec2kit::accounts::DEFAULT_ACCOUNT_CONCURRENCY`]), each with
/// [`run_with`] and its own client and regions: a failing account does
/// not stop the others, and its failures are in its [`AccountRun`].
/// Errors only when the job cannot start at all: an unknown job, bad
/// policies, or a job that cannot fan out
/// ([`JobError::NotAcrossAccounts`]: a backup or check step with
/// `[volumes]` aliases, which name one account's volumes).
pub async fn run_in_accounts(
    config: &Config,
    targets: &[AccountTarget<'_>],
    name: &str,
    options: &RunOptions,
    on_event: &(dyn Fn(JobEvent<'_>) + Sync),
) -> Result<AccountsReport, JobError> {
    let spec = job(config, name)?;
    config.policies()?;
    if !config.volumes.is_empty()
        && let Some(&step) = spec
            .steps
            .iter()
            .find(|s| matches!(s, Step::Backup | Step::Check))
    {
        return Err(JobError::NotAcrossAccounts {
            job: name.to_owned(),
            step,
        });
    }
    let started = jiff::Timestamp::now();
    let runs = futures::stream::iter(targets.iter())
        .map(|t| async move {
            match run_with(config, t.ec2, t.regions, name, options, on_event).await {
                Ok(report) => AccountRun {
                    account: t.account.clone(),
                    report: Some(report),
                    error: None,
                },
                Err(e) => AccountRun {
                    account: t.account.clone(),
                    report: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .buffered(ec2kit::accounts::DEFAULT_ACCOUNT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    Ok(AccountsReport {
        job: name.to_owned(),
        dry_run: options.dry_run,
        started,
        ended: jiff::Timestamp::now(),
        accounts: runs,
    })
}

/// What a run reports as it goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobEvent<'a> {
    /// A step starts.
    Started(Step),
    /// A step ended.
    Finished(&'a StepReport),
}

/// The job named `name` in `config`.
pub fn job<'a>(config: &'a Config, name: &str) -> Result<&'a JobConfig, JobError> {
    config.jobs.get(name).ok_or_else(|| JobError::UnknownJob {
        name: name.to_owned(),
        known: config.jobs.keys().cloned().collect(),
    })
}

/// Runs the job `name` of `config` with the config's own EC2 client and
/// regions (see [`run_with`]).
pub async fn run(
    config: &Config,
    name: &str,
    options: &RunOptions,
    on_event: &(dyn Fn(JobEvent<'_>) + Sync),
) -> Result<JobReport, JobError> {
    job(config, name)?;
    let ec2 = config.ec2().await;
    let regions = config.regions(&ec2).await?;
    run_with(config, &ec2, &regions, name, options, on_event).await
}

/// Runs the job `name` of `config` in `regions` with `ec2`: its steps in
/// order, each a library call with the config's values. Errors only when
/// the job cannot start; a step's failure is in its [`StepReport`].
pub async fn run_with(
    config: &Config,
    ec2: &ec2kit::AwsEc2,
    regions: &[Region],
    name: &str,
    options: &RunOptions,
    on_event: &(dyn Fn(JobEvent<'_>) + Sync),
) -> Result<JobReport, JobError> {
    let spec = job(config, name)?;
    let policies = config.policies()?;
    let started = jiff::Timestamp::now();
    let mut steps: Vec<StepReport> = Vec::new();
    let mut checked = None;
    for &step in &spec.steps {
        if spec.stop_on_failure && steps.iter().any(|s| s.status != StepStatus::Ok) {
            steps.push(StepReport {
                step,
                status: StepStatus::Skipped,
                summary: "skipped: an earlier step failed (stop_on_failure)".into(),
                failures: Vec::new(),
                detail: serde_json::Value::Null,
            });
            on_event(JobEvent::Finished(steps.last().expect("just pushed")));
            continue;
        }
        on_event(JobEvent::Started(step));
        let ctx = StepContext {
            config,
            spec,
            ec2,
            regions,
            policies: &policies,
            dry_run: options.dry_run,
        };
        let report = match step {
            Step::Backup => ctx.backup().await,
            Step::Trim => ctx.trim().await,
            Step::Replicate => ctx.replicate().await,
            Step::Check => {
                let (report, typed) = ctx.check().await;
                checked = Some(typed);
                report
            }
        };
        steps.push(report);
        on_event(JobEvent::Finished(steps.last().expect("just pushed")));
    }
    Ok(JobReport {
        job: name.to_owned(),
        dry_run: options.dry_run,
        started,
        ended: jiff::Timestamp::now(),
        steps,
        check: checked,
    })
}

/// `backup: REGION ITEM: ERROR`, one line.
fn backup_failure(r: &snapkit::backup::BackupResult) -> String {
    let item = match (&r.instance, &r.volume) {
        (Some(i), _) => i.to_string(),
        (None, Some(v)) => v.to_string(),
        (None, None) => "(the region's instances)".to_owned(),
    };
    let error = match &r.status {
        snapkit::backup::BackupStatus::Failed { error, .. } => error.clone(),
        other => format!("{other:?}"),
    };
    format!("backup: {} {item}: {error}", r.region)
}

struct StepContext<'a> {
    config: &'a Config,
    spec: &'a JobConfig,
    ec2: &'a ec2kit::AwsEc2,
    regions: &'a [Region],
    policies: &'a snapkit::retention::Policies,
    dry_run: bool,
}

fn json(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn finish(
    step: Step,
    summary: String,
    failures: Vec<String>,
    detail: serde_json::Value,
) -> StepReport {
    StepReport {
        step,
        status: if failures.is_empty() {
            StepStatus::Ok
        } else {
            StepStatus::Failed
        },
        summary,
        failures,
        detail,
    }
}

impl StepContext<'_> {
    fn to(&self) -> Option<Region> {
        self.spec.replicate.to.as_deref().map(Region::new)
    }

    async fn backup(&self) -> StepReport {
        let c = self.config;
        let Some(home) = self.regions.first() else {
            return finish(
                Step::Backup,
                "no region".into(),
                vec!["no region".into()],
                serde_json::Value::Null,
            );
        };
        let tagged = Instances::Tagged(c.defaults.tag.clone());
        let mut job = Backup::new(self.ec2, c.backup_options())
            .instances(self.regions.to_vec(), tagged)
            .connect(c.connect())
            .volumes(c.volume_backups(home));
        if let Some(hold) = c.instance_hold() {
            job = job.consistent(hold);
        }
        let report = if self.dry_run {
            job.plan().await
        } else {
            job.run().await
        };
        let mut failures: Vec<String> = report
            .results
            .iter()
            .filter(|r| r.failed())
            .map(backup_failure)
            .collect();
        let created: usize = report.created().values().map(Vec::len).sum();
        let mut waited = serde_json::Value::Null;
        if !self.dry_run && created > 0 {
            let timeout = self.spec.backup.wait.unwrap_or(DEFAULT_BACKUP_WAIT);
            match job.wait(&report, timeout).await {
                Ok(w) => {
                    for (region, rw) in &w {
                        let unfinished = rw.awaited.saturating_sub(rw.report.completed.len());
                        if unfinished > 0 {
                            failures.push(format!(
                                "backup: {region}: {unfinished} snapshot(s) not completed"
                            ));
                        }
                    }
                    waited = json(&w);
                }
                Err(e) => failures.push(format!("backup: waiting: {e}")),
            }
        }
        let verb = if self.dry_run {
            "would back up"
        } else {
            "created"
        };
        let summary = if self.dry_run {
            format!("{verb} {} item(s)", report.results.len())
        } else {
            format!(
                "{verb} {created} snapshot(s) of {} item(s)",
                report.results.len()
            )
        };
        let detail = serde_json::json!({ "backup": report, "waited": waited });
        finish(Step::Backup, summary, failures, detail)
    }

    async fn trim(&self) -> StepReport {
        let now = jiff::Timestamp::now();
        let mut regions = self.regions.to_vec();
        if let Some(to) = self.to().filter(|t| !regions.contains(t)) {
            regions.push(to);
        }
        let (mut failures, mut details, mut deleted, mut planned) = (Vec::new(), Vec::new(), 0, 0);
        let (mut archived, mut to_archive) = (0, 0);
        let max = self.config.retention.max_delete();
        for region in &regions {
            let plan =
                match trim::plan_region(self.ec2, region, self.policies, Scope::Owned, now).await {
                    Ok(p) => p,
                    Err(e) => {
                        failures.push(format!("trim: {region}: {e}"));
                        continue;
                    }
                };
            let n = plan.deletions().count();
            planned += n;
            to_archive += plan.archives().count();
            if n as u64 > max {
                failures.push(format!(
                    "trim: {region}: the plan deletes {n} snapshots, over retention.max_delete ({max})"
                ));
                continue;
            }
            if self.dry_run {
                details.push(serde_json::json!({ "region": region, "plan": plan }));
                continue;
            }
            let report = trim::apply(self.ec2, &plan, region, 8, &|_| {}).await;
            deleted += report.deleted();
            archived += report.archived();
            if report.failed() > 0 {
                failures.push(format!(
                    "trim: {region}: {} deletion(s) failed",
                    report.failed()
                ));
            }
            details.push(serde_json::json!({ "region": region, "report": report }));
        }
        let mut summary = if self.dry_run {
            format!(
                "would delete {planned} snapshot(s) in {} region(s)",
                regions.len()
            )
        } else {
            format!(
                "deleted {deleted} snapshot(s) in {} region(s)",
                regions.len()
            )
        };
        // `archive_after` in the config: the archives too.
        if self.dry_run && to_archive > 0 {
            summary.push_str(&format!(", would archive {to_archive}"));
        } else if archived > 0 {
            summary.push_str(&format!(", archived {archived}"));
        }
        finish(
            Step::Trim,
            summary,
            failures,
            serde_json::Value::Array(details),
        )
    }

    async fn replicate(&self) -> StepReport {
        let Some(to) = self.to() else {
            return finish(
                Step::Replicate,
                "no destination".into(),
                vec!["replicate: no `to` region".into()],
                serde_json::Value::Null,
            );
        };
        let selection = Selection {
            tag: Some(self.config.defaults.tag.clone()),
            ..Default::default()
        };
        let (mut failures, mut plans) = (Vec::new(), Vec::new());
        for from in self.regions.iter().filter(|r| **r != to) {
            match replicate::plan(self.ec2, from, &to, &selection, None).await {
                Ok(p) => plans.push(p),
                Err(e) => failures.push(format!("replicate: {from} -> {to}: {e}")),
            }
        }
        let planned: usize = plans.iter().map(|p| p.to_copy().count()).sum();
        if self.dry_run {
            let summary = format!("would copy {planned} snapshot(s) to {to}");
            return finish(Step::Replicate, summary, failures, json(&plans));
        }
        let report = replicate::apply(self.ec2, &plans, &CopyOptions::default(), &|_| {}).await;
        if report.failed() > 0 {
            failures.push(format!(
                "replicate: {} copy(ies) failed to {to}",
                report.failed()
            ));
        }
        let summary = format!(
            "copied {} snapshot(s) to {to}",
            planned - report.failed().min(planned)
        );
        finish(Step::Replicate, summary, failures, json(&report))
    }

    async fn check(&self) -> (StepReport, check::CheckReport) {
        let c = self.config;
        let max_age = self
            .spec
            .check
            .max_age
            .or(c.check.max_age)
            .unwrap_or(check::DEFAULT_MAX_AGE);
        let home = self.regions.first().cloned();
        let volumes = c
            .volumes
            .iter()
            .filter_map(|(alias, v)| {
                let region = v.region.as_deref().map(Region::new).or(home.clone())?;
                Some(VolumeTarget {
                    alias: alias.clone(),
                    region,
                    volume: v.volume_id.clone(),
                    max_age: v.max_age,
                })
            })
            .collect();
        let replica = c
            .check
            .replica_region
            .as_deref()
            .map(|r| check::ReplicaCheck {
                region: Region::new(r),
                max_age: c.check.replica_max_age.unwrap_or(max_age.saturating_mul(2)),
            });
        let spec = CheckSpec {
            regions: self.regions.to_vec(),
            tag: Some(c.defaults.tag.clone()),
            volumes,
            max_age,
            tag_max_age: c.check.tags.clone(),
            replica,
            max_unverified: c.check.max_unverified,
            ..CheckSpec::default()
        };
        let now = jiff::Timestamp::now();
        let mut report = check::check(self.ec2, &spec, now).await;
        let mut vault_failure = None;
        // As `snap check`: with `[vault] max_age`, every lineage needs a
        // copy that recent in the vault, read as this account's copy role.
        if let Some(vault) = c.vault.as_ref()
            && let Some(max_age) = vault.max_age
        {
            match self.ec2.caller_account().await {
                Ok(source) => {
                    let vault_ec2 = self.ec2.with_role(vault.copy_role(&source)).await;
                    let spec = check::VaultCheck {
                        source_account: source.to_string(),
                        region: vault.region.as_deref().map(Region::new),
                        max_age,
                    };
                    check::check_vault_copies(&vault_ec2, &spec, &mut report, now).await;
                }
                Err(e) => vault_failure = Some(format!("check: vault: {e}")),
            }
        }
        let failures: Vec<String> = report
            .failures()
            .iter()
            .map(|f| format!("check: {f}"))
            .chain(vault_failure)
            .collect();
        let summary = format!(
            "{} lineage(s) checked, {} failure(s)",
            report.lineages.len(),
            failures.len()
        );
        (
            finish(Step::Check, summary, failures, json(&report)),
            report,
        )
    }
}

/// A lock held while a job runs, so a scheduler that fires twice does not
/// run it twice at once on this machine: an exclusive `flock` on
/// `ektool/job-<name>.lock` under `$XDG_RUNTIME_DIR` (else the cache
/// directory), with the holder's pid in the file. Released on drop (and
/// by the kernel when the process dies).
#[derive(Debug)]
pub struct JobLock {
    _file: File,
    path: PathBuf,
}

/// The lock of a job could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another run holds it.
    #[error("job {job} is already running (lock {} held by {holder})", path.display())]
    Held {
        /// The job.
        job: String,
        /// The lock file.
        path: PathBuf,
        /// What the file says of the holder (`pid 1234 on host`).
        holder: String,
    },
    /// The lock file could not be created or locked.
    #[error("lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl JobLock {
    /// The lock file of job `name`.
    pub fn path(name: &str) -> PathBuf {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        base.join("ektool").join(format!("job-{safe}.lock"))
    }

    /// Takes the lock of job `name` without waiting.
    pub fn acquire(name: &str) -> Result<Self, LockError> {
        let path = Self::path(name);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    job: name.to_owned(),
                    path: path.clone(),
                    holder: if holder.is_empty() {
                        "another process".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "pid {} on {}", std::process::id(), host.trim()).map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }
}

/// A systemd service and timer that run a job.
#[derive(Debug, Clone, Serialize)]
pub struct SystemdUnits {
    /// The unit name stem: `ektool-<job>`.
    pub name: String,
    /// The `.service` file.
    pub service: String,
    /// The `.timer` file.
    pub timer: String,
}

/// The service and timer running `ektool --config CONFIG run JOB` (both
/// paths absolute) on the job's `schedule` (else [`DEFAULT_SCHEDULE`]),
/// `Persistent=true` (a missed run runs at boot), a random delay of up to
/// 15 minutes, and a hardened sandbox (read-only system, private `/tmp`,
/// no new privileges; the runtime and cache directories for the lock).
pub fn systemd_units(name: &str, job: &JobConfig, binary: &Path, config: &Path) -> SystemdUnits {
    let unit = format!("ektool-{name}");
    let schedule = job.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let service = format!(
        "[Unit]\n\
         Description=ektool job {name}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={bin} --config {cfg} run {name}\n\
         RuntimeDirectory={unit}\n\
         CacheDirectory={unit}\n\
         Environment=XDG_RUNTIME_DIR=%t/{unit}\n\
         Environment=XDG_CACHE_HOME=%C/{unit}\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=read-only\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n",
        bin = binary.display(),
        cfg = config.display(),
    );
    let timer = format!(
        "[Unit]\n\
         Description=ektool job {name} on schedule\n\
         \n\
         [Timer]\n\
         OnCalendar={schedule}\n\
         Persistent=true\n\
         RandomizedDelaySec=15min\n\
         Unit={unit}.service\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    );
    SystemdUnits {
        name: unit,
        service,
        timer,
    }
}

/// A schedule that has no cron form.
#[derive(Debug, thiserror::Error)]
#[error("schedule {schedule:?} has no cron form: use `*-*-* HH:MM[:SS]`, `daily` or `hourly`")]
pub struct CronError {
    /// The schedule.
    pub schedule: String,
}

/// A crontab line running `ektool --config CONFIG run JOB` on the job's
/// schedule: `*-*-* HH:MM[:SS]` (seconds dropped), `daily` or `hourly`.
pub fn cron_line(
    name: &str,
    job: &JobConfig,
    binary: &Path,
    config: &Path,
) -> Result<String, CronError> {
    let schedule = job.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE);
    let err = || CronError {
        schedule: schedule.to_owned(),
    };
    let fields = match schedule.trim() {
        "daily" => "0 0 * * *".to_owned(),
        "hourly" => "0 * * * *".to_owned(),
        s => {
            let time = s.strip_prefix("*-*-* ").ok_or_else(err)?;
            let mut parts = time.split(':');
            let hour: u8 = parts.next().and_then(|h| h.parse().ok()).ok_or_else(err)?;
            let minute: u8 = parts.next().and_then(|m| m.parse().ok()).ok_or_else(err)?;
            let rest: Vec<&str> = parts.collect();
            if hour > 23 || minute > 59 || rest.len() > 1 || rest.iter().any(|s| *s != "00") {
                return Err(err());
            }
            format!("{minute} {hour} * * *")
        }
    };
    Ok(format!(
        "{fields} {} --config {} run {name}",
        binary.display(),
        config.display()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, Path::new("ektool.toml"))
    }

    fn step(step: Step, status: StepStatus) -> StepReport {
        StepReport {
            step,
            status,
            summary: String::new(),
            failures: Vec::new(),
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn an_accounts_report_fails_with_any_account_and_labels_each_accounts_metrics() {
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let report = |steps| JobReport {
            job: "nightly".into(),
            dry_run: false,
            started: t,
            ended: t,
            steps,
            check: None,
        };
        let run = |account: &str, report, error: Option<&str>| AccountRun {
            account: account.parse().unwrap(),
            report,
            error: error.map(str::to_owned),
        };
        let mut all = AccountsReport {
            job: "nightly".into(),
            dry_run: false,
            started: t,
            ended: t,
            accounts: vec![
                run(
                    "111111111111",
                    Some(report(vec![step(Step::Backup, StepStatus::Ok)])),
                    None,
                ),
                run(
                    "222222222222",
                    Some(report(vec![
                        step(Step::Backup, StepStatus::Failed),
                        step(Step::Check, StepStatus::Skipped),
                    ])),
                    None,
                ),
            ],
        };
        assert_eq!(all.failed(), 1);
        let text = all.metrics().render();
        for want in [
            "ektool_job_step_success{account=\"111111111111\",job=\"nightly\",step=\"backup\"} 1\n",
            "ektool_job_step_success{account=\"222222222222\",job=\"nightly\",step=\"backup\"} 0\n",
            "ektool_job_account_success{account=\"222222222222\",job=\"nightly\"} 0\n",
            "ektool_last_run_success{command=\"run nightly\"} 0\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        // A skipped step has no sample; the run's own samples no account.
        assert!(!text.contains("step=\"check\""), "{text}");
        assert!(!text.contains("ektool_last_run_success{account"), "{text}");
        // An account the job could not start in is a failed account.
        all.accounts.remove(1);
        assert!(all.ok());
        all.accounts
            .push(run("333333333333", None, Some("AccessDenied")));
        assert_eq!(all.failed(), 1);
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json["accounts"][1]["account"], "333333333333");
        assert_eq!(json["accounts"][1]["error"], "AccessDenied");
        assert!(json["accounts"][1].get("report").is_none(), "{json}");
    }

    #[test]
    fn jobs_are_read_with_their_steps_and_options_checked_at_their_place() {
        let c = parse(
            "[jobs.n]\nsteps = [\"backup\", \"check\"]\nstop_on_failure = true\n\
             [jobs.n.backup]\nwait = \"30m\"\n[jobs.n.check]\nmax_age = \"6h\"\n",
        )
        .unwrap();
        let j = job(&c, "n").unwrap();
        assert_eq!(j.steps, [Step::Backup, Step::Check]);
        assert!(j.stop_on_failure);
        assert_eq!(j.backup.wait, Some(Duration::from_secs(1800)));
        assert_eq!(j.check.max_age, Some(Duration::from_secs(6 * 3600)));
        let e = job(&c, "m").unwrap_err();
        assert!(e.is_input_error());
        assert_eq!(e.to_string(), "no job \"m\" in the config; jobs: n");
        for (text, place) in [
            ("[jobs.n]\nsteps = [\"trim\", \"fly\"]\n", "ektool.toml:2:"),
            ("[jobs.n]\nsteps = []\n", "at least one step"),
            ("[jobs.n]\nsteps = [\"trim\", \"trim\"]\n", "listed twice"),
            (
                "[jobs.n]\nsteps = [\"replicate\"]\n",
                "needs `[jobs.<name>.replicate] to",
            ),
            (
                "[jobs.n]\nsteps = [\"check\"]\n[jobs.n.check]\nmax_age = \"1s\"\n",
                "ektool.toml:4:",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(place), "{text}: {e}");
        }
    }

    #[test]
    fn cron_lines_come_from_simple_calendar_expressions_only() {
        let (bin, cfg) = (Path::new("/usr/bin/ektool"), Path::new("/etc/ektool.toml"));
        let line = |schedule: &str| {
            let text = format!("[jobs.n]\nsteps = [\"check\"]\nschedule = \"{schedule}\"\n");
            let c = parse(&text).unwrap();
            cron_line("n", job(&c, "n").unwrap(), bin, cfg)
        };
        assert_eq!(
            line("*-*-* 03:30:00").unwrap(),
            "30 3 * * * /usr/bin/ektool --config /etc/ektool.toml run n"
        );
        assert!(line("*-*-* 3:05").unwrap().starts_with("5 3 * * * "));
        assert!(line("hourly").unwrap().starts_with("0 * * * * "));
        for bad in ["Mon *-*-* 02:00", "*-*-* 24:00", "*-*-* 02:00:30", "weekly"] {
            assert!(line(bad).is_err(), "{bad}");
        }
        let c = parse("[jobs.n]\nsteps = [\"check\"]\n").unwrap();
        let units = systemd_units("n", job(&c, "n").unwrap(), bin, cfg);
        assert_eq!(units.name, "ektool-n");
        assert!(units.timer.contains("OnCalendar=*-*-* 02:00:00\n"));
        assert!(
            units
                .service
                .contains("ExecStart=/usr/bin/ektool --config /etc/ektool.toml run n\n")
        );
    }
}
