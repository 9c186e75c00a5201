//! The nightly job a team copies: back up the instances carrying the
//! config's tag (held consistent when `[consistency]` names mountpoints or
//! a database lock) and the volume aliases (held on their `host`), trim
//! every region by the retention policy, replicate the newest set of each
//! lineage to a second region, print the report as JSON, and exit non-zero
//! if anything failed.
//!
//! From cron, in the directory of the team's `ektool.toml`:
//! `nightly-backup --to eu-central-1`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ec2kit::Region;
use ektool::config::Config;
use serde_json::json;
use snapkit::backup::{Backup, Instances, RegionWait};
use snapkit::replicate::{self, CopyOptions, Selection};
use snapkit::trim::{self, Scope};

/// Back up, trim, replicate (the config: `EKTOOL_CONFIG`, else as `ektool` finds it).
#[derive(Parser)]
struct Args {
    /// The region the night's snapshots are copied to.
    #[arg(long)]
    to: String,
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let failed = run(Args::parse()).await?;
    Ok(ExitCode::from(u8::from(failed > 0)))
}

/// The whole night; `Ok(n)` with the number of items that failed.
async fn run(args: Args) -> Result<usize, Box<dyn std::error::Error>> {
    let config = Config::load(None)?;
    let ec2 = config.ec2().await;
    let regions = config.defaults.regions();
    let (Some(home), to) = (regions.first().cloned(), Region::new(&args.to)) else {
        return Err("no regions to back up: set `[defaults] regions` in the config".into());
    };

    // 1. Back up (instances by tag, held when `[consistency]` says so; the
    //    volume aliases, held on their `host`), and wait for the snapshots
    //    so tonight's sets replicate.
    let tagged = Instances::Tagged(config.defaults.tag.clone());
    let mut job = Backup::new(&ec2, config.backup_options())
        .instances(regions.clone(), tagged)
        .connect(config.connect())
        .volumes(config.volume_backups(&home));
    if let Some(hold) = config.instance_hold() {
        job = job.consistent(hold);
    }
    let backup = job.run().await;
    let waited = job.wait(&backup, Duration::from_secs(7200)).await?;
    let unfinished = |(_, w): &(Region, RegionWait)| w.awaited - w.report.completed.len();
    let mut failed = backup.failed() + waited.iter().map(unfinished).sum::<usize>();

    // 2. Trim every region by the policy (aliases by their own strategy).
    let (policies, now) = (config.policies()?, jiff::Timestamp::now());
    let mut trimmed = Vec::new();
    for region in regions.iter().chain([&to]) {
        let plan = trim::plan_region(&ec2, region, &policies, Scope::Owned, now).await?;
        if plan.deletions().count() as u64 > config.retention.max_delete() {
            return Err(format!("{region}: the trim plan is over retention.max_delete").into());
        }
        let report = trim::apply(&ec2, &plan, region, 8, &|_| {}).await;
        failed += report.failed();
        trimmed.push(json!({ "region": region, "deleted": report.deleted(), "report": report }));
    }

    // 3. Replicate the newest set of each lineage to the second region.
    let tag = Some(config.defaults.tag.clone());
    let selection = Selection {
        tag,
        ..Default::default()
    };
    let mut plans = Vec::new();
    for from in regions.iter().filter(|r| **r != to) {
        plans.push(replicate::plan(&ec2, from, &to, &selection, None).await?);
    }
    let copied = replicate::apply(&ec2, &plans, &CopyOptions::default(), &|_| {}).await;
    failed += copied.failed();

    let report =
        json!({ "backup": backup, "waited": waited, "trim": trimmed, "replicate": copied });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(failed)
}
