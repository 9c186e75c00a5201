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
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ec2kit::{AwsEc2, AwsEc2Options, Region, Remote, SshOptions, SshRemote, SshTarget};
use ektool::config::{Config, expand_home};
use serde_json::json;
use snapkit::backup::{
    Backup, BackupOptions, InstanceHold, Instances, RegionWait, VolumeBackup, VolumeHold,
};
use snapkit::consistency::Consistency;
use snapkit::replicate::{self, CopyOptions, Selection};
use snapkit::retention::{Policies, PolicySpec};
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
    let (aws, c, r) = (&config.aws, &config.consistency, &config.retention);
    let ec2 = AwsEc2::new(AwsEc2Options {
        profile: aws.profile.clone(),
        endpoint_url: aws.endpoint_url.clone(),
        rate_limits: Some(aws.rate_limits()),
        max_attempts: aws.max_attempts,
        ..Default::default()
    })
    .await;
    let regions: Vec<Region> = config.defaults.regions.iter().map(Region::new).collect();
    let (Some(home), to) = (regions.first().cloned(), Region::new(&args.to)) else {
        return Err("no regions to back up: set `[defaults] regions` in the config".into());
    };
    let hold = |mountpoints: Vec<String>, lock_db: bool| Consistency {
        mountpoints,
        freeze: c.freeze.clone(),
        thaw: c.thaw.clone(),
        db_lock: lock_db.then(|| c.db_lock.clone().unwrap_or_default()),
        max_hold: Duration::from_secs(c.max_hold_seconds),
        ..Consistency::default()
    };

    // 1. Back up, and wait for the snapshots so tonight's sets replicate.
    let mut options = BackupOptions::default();
    options.policy.clone_from(&r.policy);
    let mut job = Backup::new(&ec2, options)
        .instances(
            regions.clone(),
            Instances::Tagged(config.defaults.tag.clone()),
        )
        .connect(connect(&config))
        .volumes(config.volumes.values().map(|v| VolumeBackup {
            region: v.region.as_ref().map_or(home.clone(), Region::new),
            volume: v.volume_id.clone(),
            hold: (v.host.clone()).map(|host| VolumeHold {
                host,
                consistency: hold(v.mountpoint.iter().cloned().collect(), v.lock_db),
            }),
        }));
    if !c.mountpoints.is_empty() || c.db_lock.is_some() {
        job = job.consistent(InstanceHold {
            consistency: hold(c.mountpoints.clone(), c.db_lock.is_some()),
            address: c.address,
        });
    }
    let backup = job.run().await;
    let waited = job.wait(&backup, Duration::from_secs(7200)).await?;
    let unfinished = |(_, w): &(Region, RegionWait)| w.awaited - w.report.completed.len();
    let mut failed = backup.failed() + waited.iter().map(unfinished).sum::<usize>();

    // 2. Trim every region by the policy (aliases by their own strategy).
    let spec = |name: &str| PolicySpec::from_name(name, &r.logarithmic, &r.gfs);
    let mut policies = Policies::new(spec(&r.policy)?).with_min_keep(r.min_keep);
    for v in config.volumes.values() {
        if let Some(s) = &v.strategy {
            policies = policies.with_lineage(v.volume_id.to_string(), spec(s)?);
        }
    }
    let (mut trimmed, now) = (Vec::new(), jiff::Timestamp::now());
    for region in regions.iter().chain([&to]) {
        let plan = trim::plan_region(&ec2, region, &policies, Scope::Owned, now).await?;
        if plan.deletions().count() as u64 > r.max_delete.unwrap_or(1000) {
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

/// Hosts over SSH with the config's `[ssh]` settings.
fn connect(config: &Config) -> snapkit::connect::Connect {
    let ssh = &config.ssh;
    let mut options = SshOptions::from_home();
    if let Some(k) = &ssh.known_hosts {
        options.known_hosts = expand_home(k);
    }
    if !ssh.identity_files.is_empty() {
        options.identity_files = ssh.identity_files.iter().map(|p| expand_home(p)).collect();
    }
    options.use_agent = ssh.use_agent.unwrap_or(options.use_agent);
    let user = ssh.user.clone().or_else(|| std::env::var("USER").ok());
    let user = user.unwrap_or_else(|| "root".into());
    Arc::new(move |host: &str| {
        let target = SshTarget::parse_with_user(host, &user)?;
        Ok(Arc::new(SshRemote::new(target, options.clone())) as Arc<dyn Remote>)
    })
}
