//! `ektool run --env E [--host H] [--role R] [--once] -- COMMAND…`: a command in the
//! live release of every host, in parallel ([`deploykit::exec`]), output
//! prefixed by host (`--output json`: one object per host), exit 1 if any
//! host failed.

use std::time::Duration;

use deploykit::exec::{Exec, HostRun};

use super::deploy::{Target, environment, hosts};
use crate::context::Context;
use crate::error::CliError;
use crate::output::OutputFormat;

/// The fleet half of `ektool run`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct FleetArgs {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Only on one host (a migration, a one-off task): the first in lock
    /// order (by name), of those `--role` leaves.
    #[arg(long)]
    pub once: bool,
    /// How long the command may take on each host: a duration with a unit
    /// (`90s`, `15m`), 1s to 24h.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

impl FleetArgs {
    /// Refuses fleet flags given with a job.
    pub(crate) fn refuse_with_job(&self) -> Result<(), CliError> {
        if !self.target.hosts.is_empty() || !self.target.roles.is_empty() || self.once {
            return Err(CliError::Usage(
                "--host, --role and --once are for a command after `--`, not for a job".into(),
            ));
        }
        Ok(())
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    ec2kit::duration::parse_in(text, Duration::from_secs(1), Duration::from_secs(86_400))
        .map_err(|e| e.to_string())
}

/// Connects, runs, renders.
pub(crate) async fn exec(
    ctx: &Context,
    args: FleetArgs,
    command: Vec<String>,
) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    if hosts.is_empty() {
        return Err(CliError::Usage(format!(
            "no hosts in environment {name}: list them in `hosts`, or find them by EC2 tag with `ec2`"
        )));
    }
    let mut exec = Exec::new(&name, command);
    exec.timeout = args.timeout;
    exec.once = args.once;
    let shown = if exec.once { 1 } else { hosts.len() };
    if ctx.global.dry_run {
        println!(
            "would run {} in the live release of {shown} host(s) of {name}",
            exec.argv.join(" ")
        );
        return Ok(());
    }
    let json = ctx.output() == OutputFormat::Json;
    let report = deploykit::exec::run(&hosts, &exec, &|run| {
        if !json {
            print_run(run);
        }
    })
    .await;
    if json {
        crate::output::json(&report.hosts)?;
    }
    for run in &report.hosts {
        if let Some(e) = &run.audit_error {
            eprintln!("{}: warning: audit log not written: {e}", run.host);
        }
    }
    let failed: Vec<String> = report.failed().map(describe).collect();
    if failed.is_empty() {
        eprintln!("ran on {} host(s)", report.hosts.len());
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "failed on {} of {} host(s): {}",
            failed.len(),
            report.hosts.len(),
            failed.join(", ")
        )))
    }
}

/// A host's output, each line prefixed with the host (standard error's on
/// standard error).
fn print_run(run: &HostRun) {
    for line in run.stdout.lines() {
        println!("{} | {line}", run.host);
    }
    for line in run.stderr.lines() {
        eprintln!("{} | {line}", run.host);
    }
}

fn describe(run: &HostRun) -> String {
    match (&run.error, run.exit_code) {
        (Some(e), _) => format!("{} ({e})", run.host),
        (None, Some(code)) => format!("{} (exit {code})", run.host),
        (None, None) => run.host.clone(),
    }
}
