//! The nightly job a team copies: back up the instances carrying the
//! config's tag (held consistent where `[consistency]` says so) and the
//! volume aliases (held on their `host`), trim every region by the
//! retention policy, replicate tonight's sets to a second region, print a
//! report, and exit non-zero if anything failed.
//!
//! It reads the same `ektool.toml` as `ektool` (found the same way):
//! `nightly-backup --to eu-central-1` from cron, in the config's directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ec2kit::{AwsEc2, AwsEc2Options, Region, Remote, SshOptions, SshRemote, SshTarget};
use ektool::config::{Config, expand_home};
use snapkit::backup::{Backup, BackupOptions, InstanceHold, Instances, VolumeBackup, VolumeHold};
use snapkit::consistency::Consistency;
use snapkit::replicate::{self, CopyOptions, Selection};
use snapkit::retention::{Policies, PolicySpec};
use snapkit::trim::{self, Scope};

/// Back up, trim, replicate.
#[derive(Parser)]
struct Args {
    /// The region the night's snapshots are copied to.
    #[arg(long)]
    to: String,
    /// The config file (default: as `ektool` finds it).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("nightly-backup: {failed} failure(s)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("nightly-backup: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The whole night; `Ok(n)` with the number of items that failed.
async fn run(args: Args) -> Result<usize, Box<dyn std::error::Error>> {
    let config = Config::load(args.config.as_deref())?;
    let aws = &config.aws;
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
    let c = &config.consistency;
    let hold = |mountpoints: Vec<String>, lock_db: bool| Consistency {
        mountpoints,
        freeze: c.freeze.clone(),
        thaw: c.thaw.clone(),
        db_lock: lock_db.then(|| c.db_lock.clone().unwrap_or_default()),
        max_hold: Duration::from_secs(c.max_hold_seconds),
        ..Consistency::default()
    };

    // 1. Back up: instances by tag, and every volume alias.
    let mut job = Backup::new(
        &ec2,
        BackupOptions {
            policy: config.retention.policy.clone(),
            ..Default::default()
        },
    )
    .instances(
        regions.clone(),
        Instances::Tagged(config.defaults.tag.clone()),
    )
    .connect(connect(&config));
    if !c.mountpoints.is_empty() || c.db_lock.is_some() {
        job = job.consistent(InstanceHold {
            consistency: hold(c.mountpoints.clone(), c.db_lock.is_some()),
            address: c.address.parse().unwrap_or_default(),
        });
    }
    job = job.volumes(config.volumes.values().map(|v| {
        VolumeBackup {
            region: v
                .region
                .as_deref()
                .map_or_else(|| home.clone(), Region::new),
            volume: v.volume_id.clone(),
            hold: v.host.clone().map(|host| VolumeHold {
                host,
                consistency: hold(v.mountpoint.iter().cloned().collect(), v.lock_db),
            }),
        }
    }));
    let backup = job.run().await;
    for r in &backup.results {
        let what = r
            .instance
            .as_ref()
            .map(|i| i.to_string())
            .or(r.volume.as_ref().map(|v| v.to_string()));
        println!(
            "backup {} {}: {:?}",
            r.region,
            what.unwrap_or_default(),
            r.status
        );
    }
    let mut failed = backup.failed();
    for (region, wait) in job.wait(&backup, Duration::from_secs(7200)).await? {
        failed += wait.awaited - wait.report.completed.len();
        println!(
            "backup {region}: {} of {} completed",
            wait.report.completed.len(),
            wait.awaited
        );
    }

    // 2. Trim every region by the policy (aliases by their own strategy).
    let r = &config.retention;
    let mut policies = Policies::new(PolicySpec::from_name(&r.policy, &r.logarithmic, &r.gfs)?)
        .with_min_keep(r.min_keep);
    for v in config.volumes.values() {
        if let Some(s) = &v.strategy {
            policies = policies.with_lineage(
                v.volume_id.to_string(),
                PolicySpec::from_name(s, &r.logarithmic, &r.gfs)?,
            );
        }
    }
    let now = jiff::Timestamp::now();
    for region in regions.iter().chain([&to]) {
        let plan = trim::plan_region(&ec2, region, &policies, Scope::Owned, now).await?;
        let cap = r.max_delete.unwrap_or(1000);
        if plan.deletions().count() as u64 > cap {
            return Err(format!("{region}: the trim plan deletes more than {cap}; check it with `ektool snap trim --dry-run`").into());
        }
        let report = trim::apply(&ec2, &plan, region, 8, &|_| {}).await;
        failed += report.failed();
        println!(
            "trim {region}: {} deleted, {} failed",
            report.deleted(),
            report.failed()
        );
    }

    // 3. Replicate the newest set of each lineage to the second region.
    let selection = Selection {
        tag: Some(config.defaults.tag.clone()),
        ..Selection::default()
    };
    let mut plans = Vec::new();
    for from in regions.iter().filter(|r| **r != to) {
        plans.push(replicate::plan(&ec2, from, &to, &selection, None).await?);
    }
    let copied = replicate::apply(&ec2, &plans, &CopyOptions::default(), &|_| {}).await;
    for c in &copied.results {
        println!(
            "replicate {} {} -> {}: {:?}",
            c.lineage, c.from, c.to, c.outcome
        );
    }
    Ok(failed + copied.failed())
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
    let user = ssh
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into());
    Arc::new(move |host: &str| {
        let target = SshTarget::parse_with_user(host, &user)?;
        Ok(Arc::new(SshRemote::new(target, options.clone())) as Arc<dyn Remote>)
    })
}
