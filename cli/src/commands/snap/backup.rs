//! `ektool snap backup`: instances by tag, single instances, or volumes.

use std::time::Duration;

use ec2kit::{Filter, InstanceId, Region, Tag, VolumeId, fleet};
use snapkit::backup::{self, BackupItem, BackupOptions, BackupResult, BackupStatus};

use super::durations;

use crate::args::OutputFormat;
use crate::context::Context;
use crate::error::CliError;
use crate::output;

/// Arguments of `ektool snap backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Back up the instances carrying this tag (default: `defaults.tag`).
    #[arg(long, value_name = "KEY=VALUE", conflicts_with_all = ["instance", "volume"])]
    pub tag: Option<Tag>,
    /// Back up this instance (repeatable).
    #[arg(long, value_name = "ID")]
    pub instance: Vec<InstanceId>,
    /// Back up this volume: an id or a `[volumes]` alias (repeatable).
    #[arg(long, value_name = "ID|ALIAS")]
    pub volume: Vec<String>,
    /// Leave each instance's root volume out.
    #[arg(long)]
    pub exclude_boot: bool,
    /// Leave this data volume out (repeatable).
    #[arg(long, value_name = "ID")]
    pub exclude_volume: Vec<VolumeId>,
    /// A rerun within this window skips what is already backed up
    /// (1m to 31d, e.g. 1h, 12h, 1d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = durations::window)]
    pub window: Duration,
    /// Wait until every snapshot is completed (progress on a terminal);
    /// `error` snapshots and a timeout make the command fail.
    #[arg(long)]
    pub wait: bool,
    /// Freeze the filesystems (and lock the database) on each host around
    /// its snapshot call: `[consistency]` mountpoints for instances,
    /// `mountpoint`/`lock_db`/`host` for volume aliases. The host thaws by
    /// itself after `max_hold_seconds` whatever happens to ektool.
    /// SIGINT/SIGTERM release (thaw, unlock) before exiting 130/143; with
    /// `--dry-run` nothing is frozen or locked (the hosts are only reached,
    /// with their known host keys).
    #[arg(long)]
    pub consistent: bool,
    /// Give up waiting after this long (1m to 7d, e.g. 90m, 2h).
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = durations::backup_wait, requires = "wait")]
    pub wait_timeout: Duration,
}

/// Runs the backup and reports per instance or volume.
pub async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let options = BackupOptions {
        exclude_boot: args.exclude_boot,
        exclude_volumes: args.exclude_volume.clone(),
        policy: ctx.config.retention.policy.clone(),
        window: durations::signed(args.window),
        dry_run: ctx.global.dry_run,
        ..BackupOptions::default()
    };
    // Volumes: resolve aliases and ids before any call.
    let mut volumes: Vec<(Option<String>, VolumeId)> = Vec::new();
    for v in &args.volume {
        if let Some(alias) = ctx.config.volumes.get(v) {
            volumes.push((alias.region.clone(), alias.volume_id.clone()));
        } else {
            let id = VolumeId::parse(v).map_err(|e| {
                let aliases: Vec<&str> = ctx.config.volumes.keys().map(String::as_str).collect();
                CliError::Usage(format!(
                    "{e}; it is not a volume alias either (aliases: {})",
                    if aliases.is_empty() {
                        "none".into()
                    } else {
                        aliases.join(", ")
                    }
                ))
            })?;
            volumes.push((None, id));
        }
    }

    let ec2 = ctx.ec2().await;
    let mut results: Vec<BackupResult> = Vec::new();
    if !volumes.is_empty() {
        let selected = ctx.regions(&ec2).await?;
        let catalog = fleet::region_catalog(&ec2).await?;
        let mut by_region: std::collections::BTreeMap<Region, Vec<VolumeId>> = Default::default();
        for (region, id) in volumes {
            let region = match region {
                Some(r) => catalog.resolve(&r)?,
                None if selected.len() == 1 => selected[0].clone(),
                None => {
                    return Err(CliError::Usage(format!(
                        "volume {id}: name one region with --region (or use an alias that has one)"
                    )));
                }
            };
            by_region.entry(region).or_default().push(id);
        }
        for (region, ids) in by_region {
            if !args.consistent {
                results.extend(backup::backup_volumes(&ec2, &region, &ids, &options).await);
                continue;
            }
            for id in ids {
                let item = BackupItem::volume(&region, &id);
                if ctx.interrupt.is_cancelled() {
                    results.push(item.failed("not started: interrupted"));
                    continue;
                }
                let alias = ctx.config.volumes.values().find(|a| a.volume_id == id);
                let Some(host) = alias.and_then(|a| a.host.clone()) else {
                    return Err(CliError::Usage(format!(
                        "volume {id}: --consistent needs the alias's `host`"
                    )));
                };
                let c = consistency(
                    ctx,
                    alias
                        .and_then(|a| a.mountpoint.clone())
                        .into_iter()
                        .collect(),
                    alias.is_some_and(|a| a.lock_db),
                );
                let run =
                    || backup::backup_volumes(&ec2, &region, std::slice::from_ref(&id), &options);
                results.extend(around(ctx, &host, &c, &item, run).await?);
            }
        }
    } else {
        let regions = ctx.regions(&ec2).await?;
        let filters: Vec<Filter> = if args.instance.is_empty() {
            let tag = args
                .tag
                .clone()
                .unwrap_or_else(|| ctx.config.defaults.tag.clone());
            vec![
                Filter::tag(&tag),
                Filter::new("instance-state-name", fleet::LIVE_STATES.iter().copied()),
            ]
        } else {
            vec![Filter::new(
                "instance-id",
                args.instance.iter().map(|i| i.to_string()),
            )]
        };
        let found = fleet::each_region(&regions, 8, |r| {
            ec2kit::Ec2::describe_instances(&ec2, r, &filters)
        })
        .await;
        let mut seen = 0;
        for r in found {
            match r.result {
                Ok(instances) => {
                    seen += instances.len();
                    if !args.consistent {
                        results.extend(
                            backup::backup_instances(&ec2, &r.region, &instances, &options).await,
                        );
                        continue;
                    }
                    let c = consistency(
                        ctx,
                        ctx.config.consistency.mountpoints.clone(),
                        ctx.config.consistency.db_lock.is_some(),
                    );
                    for instance in &instances {
                        let item = BackupItem::instance(instance);
                        if ctx.interrupt.is_cancelled() {
                            results.push(item.failed("not started: interrupted"));
                            continue;
                        }
                        let address = match ctx.config.consistency.address.as_str() {
                            "public_ip" => instance.public_ip.clone(),
                            "public_dns" => instance.public_dns.clone(),
                            _ => instance.private_ip.clone(),
                        };
                        let Some(address) = address else {
                            results.push(item.failed(format!(
                                "no {} to reach it over SSH",
                                ctx.config.consistency.address
                            )));
                            continue;
                        };
                        let run = || {
                            backup::backup_instances(
                                &ec2,
                                &r.region,
                                std::slice::from_ref(instance),
                                &options,
                            )
                        };
                        results.extend(around(ctx, &address, &c, &item, run).await?);
                    }
                }
                Err(e) => results.push(BackupResult {
                    region: r.region.clone(),
                    instance: None,
                    volume: None,
                    name: None,
                    status: BackupStatus::Failed {
                        error: e.to_string(),
                        code: e.code.clone(),
                        snapshots: Vec::new(),
                    },
                    notes: vec!["could not list the region's instances".into()],
                }),
            }
        }
        if !args.instance.is_empty() && seen < args.instance.len() {
            eprintln!(
                "warning: {} of {} instances not found in {}",
                args.instance.len() - seen,
                args.instance.len(),
                regions
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }

    match ctx.output() {
        OutputFormat::Json => output::json(&results)?,
        OutputFormat::Table => {
            output::table(
                &["REGION", "SOURCE", "NAME", "STATUS", "SNAPSHOTS"],
                results.iter().map(|r| {
                    let source = r
                        .instance
                        .as_ref()
                        .map(|i| i.to_string())
                        .or_else(|| r.volume.as_ref().map(|v| v.to_string()))
                        .unwrap_or_else(|| "-".into());
                    let (status, snaps) = match &r.status {
                        BackupStatus::Created { snapshots, .. } => {
                            ("created".to_owned(), join(snapshots))
                        }
                        BackupStatus::AlreadyDone { snapshots } => {
                            ("already done in this window".to_owned(), join(snapshots))
                        }
                        BackupStatus::DryRunOk => ("dry run: would succeed".to_owned(), "-".into()),
                        BackupStatus::Failed {
                            error, snapshots, ..
                        } => (
                            format!("FAILED: {error}"),
                            if snapshots.is_empty() {
                                "-".into()
                            } else {
                                join(snapshots)
                            },
                        ),
                    };
                    vec![
                        r.region.to_string(),
                        source,
                        output::or_dash(r.name.as_deref()),
                        status,
                        snaps,
                    ]
                }),
            );
            for r in &results {
                for n in &r.notes {
                    eprintln!(
                        "note: {}: {n}",
                        r.instance
                            .as_ref()
                            .map_or("-".to_owned(), |i| i.to_string())
                    );
                }
            }
        }
    }
    let failed = results.iter().filter(|r| r.failed()).count();
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total: results.len(),
            what: "backups",
        });
    }
    if args.wait && !ctx.global.dry_run && !ctx.interrupt.is_cancelled() {
        wait(ctx, &ec2, &results, args.wait_timeout).await?;
    }
    Ok(())
}

/// Waits for every created snapshot, region by region.
async fn wait(
    ctx: &Context,
    ec2: &ec2kit::AwsEc2,
    results: &[BackupResult],
    timeout: std::time::Duration,
) -> Result<(), CliError> {
    let mut by_region: std::collections::BTreeMap<Region, Vec<ec2kit::SnapshotId>> =
        Default::default();
    for r in results {
        if let BackupStatus::Created { snapshots, .. } = &r.status {
            by_region
                .entry(r.region.clone())
                .or_default()
                .extend(snapshots.iter().cloned());
        }
    }
    let poll = std::time::Duration::from_secs(15);
    let mut problems = Vec::new();
    for (region, ids) in by_region {
        let bar = crate::progress::bar(ids.len() as u64, &format!("waiting in {region}"));
        let report = snapkit::wait::wait_for(ec2, &region, &ids, poll, timeout, &|event| {
            if let snapkit::wait::WaitEvent::Progress { done, .. } = event {
                bar.set_position(*done as u64);
            }
        })
        .await?;
        bar.finish_and_clear();
        for (id, msg) in &report.failed {
            problems.push(format!("{region} {id}: error: {msg}"));
        }
        for (id, p) in &report.pending {
            problems.push(format!(
                "{region} {id}: still pending ({}%) after {}",
                p.unwrap_or(0),
                ec2kit::duration::format(timeout)
            ));
        }
        for id in &report.missing {
            problems.push(format!("{region} {id}: gone"));
        }
        if ctx.output() == OutputFormat::Table {
            println!(
                "{region}: {} of {} snapshots completed",
                report.completed.len(),
                ids.len()
            );
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    Err(CliError::Failed(format!(
        "{} snapshot(s) did not complete",
        problems.len()
    )))
}

/// The consistency settings for some mountpoints, with the DB lock if asked.
fn consistency(
    ctx: &Context,
    mountpoints: Vec<String>,
    lock_db: bool,
) -> snapkit::consistency::Consistency {
    let cfg = &ctx.config.consistency;
    snapkit::consistency::Consistency {
        mountpoints,
        freeze: cfg.freeze.clone(),
        thaw: cfg.thaw.clone(),
        db_lock: lock_db.then(|| {
            cfg.db_lock
                .clone()
                .unwrap_or(snapkit::consistency::DbLock::Mysql {
                    client: "mysql".into(),
                    defaults_file: None,
                })
        }),
        max_hold: std::time::Duration::from_secs(cfg.max_hold_seconds.max(1)),
        acquire_timeout: std::time::Duration::from_secs(30),
    }
}

/// Runs `run` on `host` with the lock and freeze held (the library's
/// consistent step, watching the run's interrupt token); a failure to take
/// them fails the item (nothing was snapshotted), not the whole run.
async fn around<F, Fut>(
    ctx: &Context,
    host: &str,
    c: &snapkit::consistency::Consistency,
    item: &BackupItem,
    run: F,
) -> Result<Vec<BackupResult>, CliError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Vec<BackupResult>>,
{
    let target = ec2kit::SshTarget::parse_with_user(host, &ctx.ssh_user())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let remote = ec2kit::SshRemote::new(target, ctx.ssh_options());
    Ok(backup::consistently(&remote, c, &ctx.interrupt, ctx.global.dry_run, item, run).await)
}

fn join(ids: &[ec2kit::SnapshotId]) -> String {
    ids.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
