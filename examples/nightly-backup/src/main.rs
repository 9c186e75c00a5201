//! The nightly job a team copies: one call to [`ektool::jobs`]. Back up
//! the instances carrying the config's tag (held consistent when
//! `[consistency]` names mountpoints or a database lock) and the volume
//! aliases (held on their `host`) and wait for the snapshots, trim every
//! region and the destination by the retention policy, replicate the
//! newest set of each lineage to a second region — then a step of the
//! team's own (the snapshot count of each region against a quota), print
//! the report as JSON, and exit non-zero if anything failed.
//!
//! The job is the config's `[jobs.nightly]` when it has one (its `steps`,
//! `stop_on_failure`, `[jobs.nightly.replicate] to`, ...), else backup,
//! trim and replicate; `--to` names the destination either way. A local
//! lock ([`JobLock`]) keeps a scheduler that fires twice from running two
//! nights at once.
//!
//! From cron, in the directory of the team's `ektool.toml`:
//! `nightly-backup --to eu-central-1`.

use std::process::ExitCode;

use clap::Parser;
use ec2kit::Region;
use ektool::config::{Config, JobConfig, Step};
use ektool::jobs::{self, JobEvent, JobLock, RunOptions};
use serde::Serialize;
use snapkit::trim::{self, Scope};

/// The job's name: its `[jobs.<name>]` and its lock.
const JOB: &str = "nightly";

/// Back up, trim, replicate, count (the config: `EKTOOL_CONFIG`, else as
/// `ektool` finds it).
#[derive(Parser)]
struct Args {
    /// The region the night's snapshots are copied to (else the job's
    /// `[jobs.nightly.replicate] to`).
    #[arg(long)]
    to: Option<String>,
    /// The team's own step fails when a region holds more snapshots than
    /// this (EC2's default quota is 100,000 per region).
    #[arg(long, default_value_t = 50_000)]
    quota: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    match night(Args::parse()).await {
        Ok(failed) => ExitCode::from(u8::from(failed)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The whole night; `Ok(true)` when something failed.
async fn night(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let mut config = Config::load(None)?;
    let job = config.jobs.entry(JOB.to_owned()).or_insert_with(the_night);
    if let Some(to) = args.to {
        job.replicate.to = Some(to);
    }
    if job.steps.contains(&Step::Replicate) && job.replicate.to.is_none() {
        return Err("name the destination: --to REGION or [jobs.nightly.replicate] to".into());
    }

    let _lock = JobLock::acquire(JOB)?;
    // `run_with` rather than `run`: the regions as the config writes them
    // (no DescribeRegions call), and the team's own step below uses the
    // same client and regions.
    let ec2 = config.ec2().await;
    let regions = config.defaults.regions();
    if regions.is_empty() {
        return Err("no regions to back up: set `[defaults] regions` in the config".into());
    }
    let report = jobs::run_with(
        &config,
        &ec2,
        &regions,
        JOB,
        &RunOptions::default(),
        &|event| {
            if let JobEvent::Finished(step) = event {
                eprintln!("{}: {:?}: {}", step.step, step.status, step.summary);
            }
        },
    )
    .await?;
    let count = count(&ec2, &regions, args.quota).await;

    let failed = !report.ok() || count.iter().any(|c| !c.ok);
    let report = serde_json::json!({ "job": report, "count": count });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(failed)
}

/// The night when the config has no `[jobs.nightly]`: back up (and wait),
/// trim, replicate; every step runs even if an earlier one failed.
fn the_night() -> JobConfig {
    JobConfig {
        steps: vec![Step::Backup, Step::Trim, Step::Replicate],
        stop_on_failure: false,
        schedule: None,
        backup: Default::default(),
        replicate: Default::default(),
        check: Default::default(),
    }
}

/// One region's line of the team's own step.
#[derive(Serialize)]
struct Count {
    region: Region,
    /// The snapshots ektool owns there (`None`: they could not be listed).
    snapshots: Option<usize>,
    /// Listed, and within the quota.
    ok: bool,
    /// Why not.
    error: Option<String>,
}

/// The team's own step: how many snapshots each region holds, against the
/// quota (a trim that stopped working shows here long before EC2 refuses
/// new snapshots).
async fn count(ec2: &ec2kit::AwsEc2, regions: &[Region], quota: usize) -> Vec<Count> {
    let listed = trim::inventories(ec2, regions, Scope::Owned, 8).await;
    listed
        .into_iter()
        .map(|r| match r.result {
            Ok(snapshots) => Count {
                ok: snapshots.len() <= quota,
                error: (snapshots.len() > quota)
                    .then(|| format!("{} snapshots, over the quota {quota}", snapshots.len())),
                snapshots: Some(snapshots.len()),
                region: r.region,
            },
            Err(e) => Count {
                region: r.region,
                snapshots: None,
                ok: false,
                error: Some(e.to_string()),
            },
        })
        .collect()
}
