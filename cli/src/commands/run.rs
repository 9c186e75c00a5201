//! `ektool run JOB`: the steps of `[jobs.JOB]` run by
//! [`ektool::jobs::run_with`] under the job's local lock, one report, one
//! exit code (1 when a step failed, each failure on stderr).
//!
//! `ektool run --env E -- CMD…`: a command in the live release of every
//! host of an environment ([`fleet`](super::fleet_run)).

use ektool::jobs::{self, AccountRun, AccountsReport, JobLock, JobReport, RunOptions, StepStatus};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The job: a `[jobs.<name>]` of the config. Not with `-- COMMAND`.
    pub job: Option<String>,
    /// With `-- COMMAND`: the environment and hosts it runs on.
    #[command(flatten)]
    pub fleet: super::fleet_run::FleetArgs,
    /// A command to run in the live release of every host of `--env`
    /// (after `--`, as words: `-- python manage.py migrate`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Also write the run's Prometheus metrics (text format, for
    /// node_exporter's textfile collector) to this file, atomically.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

/// A job, or a command on the fleet.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    match (args.job, args.command.is_empty()) {
        (Some(job), true) => {
            args.fleet.refuse_with_job()?;
            run_job(ctx, job, args.metrics).await
        }
        (None, false) => {
            if args.metrics.is_some() {
                return Err(CliError::Usage(
                    "--metrics is for jobs, not for a command on the hosts".into(),
                ));
            }
            // An environment's hosts are not an account's: a command on
            // them does not fan out.
            if let Some(why) = accounts_in_play(ctx)? {
                return Err(CliError::Usage(format!(
                    "{why}: `ektool run -- COMMAND` runs on an environment's hosts and does not \
                     fan out over accounts; run it without accounts (a --config without \
                     [accounts])"
                )));
            }
            super::fleet_run::exec(ctx, args.fleet, args.command).await
        }
        (Some(job), false) => Err(CliError::Usage(format!(
            "a job ({job}) or a command after `--`, not both"
        ))),
        (None, true) => Err(CliError::Usage(
            "give a job (`ektool run nightly`) or a command after `--` (`ektool run --env prod -- uptime`)".into(),
        )),
    }
}

/// What puts accounts in play (`--accounts` or `[accounts]`), if anything.
fn accounts_in_play(ctx: &Context) -> Result<Option<&'static str>, CliError> {
    Ok(crate::fleet::accounts(ctx)?.map(|_| {
        if ctx.global.accounts.is_some() {
            "--accounts"
        } else {
            "config [accounts]"
        }
    }))
}

/// Locks, runs, renders a job.
async fn run_job(
    ctx: &Context,
    job: String,
    metrics: Option<std::path::PathBuf>,
) -> Result<(), CliError> {
    let args = JobArgs { job, metrics };
    let spec = jobs::job(&ctx.config, &args.job).map_err(|e| CliError::Usage(e.to_string()))?;
    // Held (another run) or unusable: a failure, exit 1, naming the holder.
    let _lock = JobLock::acquire(&args.job).map_err(|e| CliError::Failed(e.to_string()))?;
    if crate::fleet::accounts(ctx)?.is_some() {
        return run_job_in_accounts(ctx, &args).await;
    }
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let mut options = RunOptions::default();
    options.dry_run = ctx.global.dry_run;
    let watch = crate::notify::Watch::new(&ctx.config);
    watch.start().await;
    let report = jobs::run_with(&ctx.config, &ec2, &regions, &args.job, &options, &|e| {
        if let jobs::JobEvent::Started(step) = e {
            tracing::info!(job = %args.job, %step, "step starts");
        }
    })
    .await;
    let report = match report {
        Ok(report) => report,
        Err(e) => return Err(could_not_start(&watch, &args.job, e).await),
    };
    watch.finish(report.ok(), &message(&report)).await;
    write_metrics(args.metrics.as_deref(), &report.metrics())?;
    render(ctx, &report);
    let failed = report.failed();
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "job {}: {failed} of {} step(s) failed",
            args.job,
            spec.steps.len()
        )))
    }
}

/// A job that could not start: announced as failed; bad input is exit 2.
async fn could_not_start(watch: &crate::notify::Watch, job: &str, e: jobs::JobError) -> CliError {
    watch
        .finish(false, &format!("ektool run {job}: FAILED: {e}"))
        .await;
    if e.is_input_error() {
        CliError::Usage(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}

/// `--metrics FILE`: the run's metrics, written atomically.
fn write_metrics(
    path: Option<&std::path::Path>,
    metrics: &snapkit::metrics::Metrics,
) -> Result<(), CliError> {
    if let Some(path) = path {
        snapkit::metrics::write_atomic(path, &metrics.render())
            .map_err(|e| CliError::Failed(format!("--metrics {}: {e}", path.display())))?;
    }
    Ok(())
}

/// A job in every account (`--accounts`, `[accounts]`): each account's
/// steps with its own client and regions, at once; one report with each
/// account's outcome, one notification; a failing account fails the run
/// (exit 1) and the others still run.
async fn run_job_in_accounts(ctx: &Context, args: &JobArgs) -> Result<(), CliError> {
    let spec = jobs::job(&ctx.config, &args.job).map_err(|e| CliError::Usage(e.to_string()))?;
    let fleet = crate::fleet::fleet(ctx).await?;
    let targets: Vec<jobs::AccountTarget<'_>> = fleet
        .targets
        .iter()
        .filter_map(|t| {
            Some(jobs::AccountTarget {
                account: t.account.as_ref()?,
                ec2: &t.ec2,
                regions: &t.regions,
            })
        })
        .collect();
    let mut options = RunOptions::default();
    options.dry_run = ctx.global.dry_run;
    let watch = crate::notify::Watch::new(&ctx.config);
    watch.start().await;
    let report = jobs::run_in_accounts(&ctx.config, &targets, &args.job, &options, &|e| {
        if let jobs::JobEvent::Started(step) = e {
            tracing::info!(job = %args.job, %step, "step starts");
        }
    })
    .await;
    let mut report = match report {
        Ok(report) => report,
        Err(e) => return Err(could_not_start(&watch, &args.job, e).await),
    };
    // The accounts that could not be set up (already on stderr) are
    // failed accounts of the report too.
    report
        .accounts
        .extend(fleet.setup_errors.iter().map(|(account, e)| AccountRun {
            account: account.clone(),
            report: None,
            error: Some(e.clone()),
        }));
    watch.finish(report.ok(), &accounts_message(&report)).await;
    write_metrics(args.metrics.as_deref(), &report.metrics())?;
    render_accounts(ctx, &report);
    let failed = report.failed();
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "job {}: failed in {failed} of {} account(s) ({} step(s) each)",
            args.job,
            report.accounts.len(),
            spec.steps.len()
        )))
    }
}

/// The notification of a run across accounts: the job, its outcome, each
/// account's outcome and steps, then every failure line with its account.
fn accounts_message(report: &AccountsReport) -> String {
    let n = report.accounts.len();
    let mut text = if report.ok() {
        format!("ektool run {}: ok in {n} account(s)", report.job)
    } else {
        format!(
            "ektool run {}: FAILED in {} of {n} account(s)",
            report.job,
            report.failed()
        )
    };
    for a in &report.accounts {
        let account = &a.account;
        match (&a.report, &a.error) {
            (_, Some(e)) => text.push_str(&format!("\naccount {account}: FAILED: {e}")),
            (Some(r), None) => {
                let status = if r.ok() { "ok" } else { "FAILED" };
                text.push_str(&format!("\naccount {account}: {status}"));
                for s in &r.steps {
                    text.push_str(&format!(
                        "\n  {}: {}: {}",
                        s.step,
                        status_word(s.status),
                        s.summary
                    ));
                }
            }
            (None, None) => {}
        }
    }
    for a in &report.accounts {
        for f in a
            .report
            .iter()
            .flat_map(|r| &r.steps)
            .flat_map(|s| &s.failures)
        {
            text.push_str(&format!("\n- account {}: {f}", a.account));
        }
    }
    text
}

fn status_word(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Ok => "ok",
        StepStatus::Failed => "FAILED",
        _ => "skipped",
    }
}

fn render_accounts(ctx: &Context, report: &AccountsReport) {
    match ctx.output() {
        OutputFormat::Json => {
            if let Err(e) = output::json(report) {
                eprintln!("error: {e}");
            }
        }
        OutputFormat::Table => output::table(
            &["ACCOUNT", "STEP", "STATUS", "SUMMARY"],
            report.accounts.iter().flat_map(|a| {
                let account = a.account.to_string();
                let rows: Vec<Vec<String>> = match (&a.report, &a.error) {
                    (_, Some(e)) => vec![vec![account, "-".into(), "FAILED".into(), e.clone()]],
                    (Some(r), None) => r
                        .steps
                        .iter()
                        .map(|s| {
                            vec![
                                account.clone(),
                                s.step.to_string(),
                                status_word(s.status).to_owned(),
                                s.summary.clone(),
                            ]
                        })
                        .collect(),
                    (None, None) => Vec::new(),
                };
                rows
            }),
        ),
    }
    for a in &report.accounts {
        for f in a
            .report
            .iter()
            .flat_map(|r| &r.steps)
            .flat_map(|s| &s.failures)
        {
            eprintln!("account {}: {f}", a.account);
        }
    }
}

/// What a job run needs of the command line.
struct JobArgs {
    job: String,
    metrics: Option<std::path::PathBuf>,
}

/// The notification: the job, its outcome and counts, each step's summary,
/// then every failure line.
fn message(report: &JobReport) -> String {
    let failed = report.failed();
    let mut text = if report.ok() {
        format!(
            "ektool run {}: ok ({} step(s))",
            report.job,
            report.steps.len()
        )
    } else {
        format!(
            "ektool run {}: FAILED ({failed} of {} step(s) failed)",
            report.job,
            report.steps.len()
        )
    };
    for s in &report.steps {
        let status = match s.status {
            StepStatus::Ok => "ok",
            StepStatus::Failed => "FAILED",
            _ => "skipped",
        };
        text.push_str(&format!("\n{}: {status}: {}", s.step, s.summary));
    }
    for f in report.steps.iter().flat_map(|s| &s.failures) {
        text.push_str(&format!("\n- {f}"));
    }
    text
}

fn render(ctx: &Context, report: &JobReport) {
    match ctx.output() {
        OutputFormat::Json => {
            if let Err(e) = output::json(report) {
                eprintln!("error: {e}");
            }
        }
        OutputFormat::Table => output::table(
            &["STEP", "STATUS", "SUMMARY"],
            report.steps.iter().map(|s| {
                vec![
                    s.step.to_string(),
                    match s.status {
                        StepStatus::Ok => "ok".to_owned(),
                        StepStatus::Failed => "FAILED".to_owned(),
                        _ => "skipped".to_owned(),
                    },
                    s.summary.clone(),
                ]
            }),
        ),
    }
    for s in &report.steps {
        for f in &s.failures {
            eprintln!("{f}");
        }
    }
}
