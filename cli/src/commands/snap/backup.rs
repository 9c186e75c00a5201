//! `ektool snap backup`: instances by tag, single instances, or volumes —
//! the flags and config made into a [`snapkit::backup::Backup`], run, and
//! rendered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2kit::{InstanceId, Region, SshTarget, Tag, VolumeId, fleet};
use snapkit::backup::{
    Backup, BackupEvent, BackupOptions, BackupReport, BackupStatus, Instances, RegionWait,
    VolumeBackup, VolumeHold,
};

use super::durations;

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap backup`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
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
    /// Also write Prometheus metrics (text format, for node_exporter's
    /// textfile collector) to this file, atomically, whatever the outcome.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

/// Builds the backup job from the flags and the config, runs it (or its
/// dry run), renders the report, and waits when asked. Each failed item
/// (and each snapshot the wait found failed) is a line in `failures`
/// (`REGION ITEM: ERROR`), for the notification.
pub(crate) async fn exec(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
    failures: &mut Vec<String>,
) -> Result<(), CliError> {
    let options = BackupOptions {
        exclude_boot: args.exclude_boot,
        exclude_volumes: args.exclude_volume.clone(),
        window: durations::signed(args.window),
        ..ctx.config.backup_options()
    };
    if crate::fleet::accounts(ctx)?.is_some() {
        return exec_accounts(ctx, args, options, metrics, failures).await;
    }
    // Bad input before any call: ids and aliases, and the hosts of held
    // volumes.
    let volumes = volume_args(ctx, &args)?;
    let ec2 = ctx.ec2().await;
    let bar = WaitBar::default();
    let regions = ctx.regions(&ec2).await?;
    let mut job = Backup::new(&ec2, options)
        .connect(ctx.config.connect())
        .cancel_on(ctx.interrupt.clone())
        .on_event(bar.sink());
    if volumes.is_empty() {
        job = job.instances(regions.clone(), instances(ctx, &args));
        if args.consistent {
            job = job.consistent(ctx.config.consistency.instance_hold());
        }
    } else {
        let catalog = fleet::region_catalog(&ec2).await?;
        let mut resolved = Vec::new();
        for VolumeArg {
            region,
            volume,
            hold,
        } in volumes
        {
            let region = match region {
                Some(r) => catalog.resolve(&r)?,
                None if regions.len() == 1 => regions[0].clone(),
                None => {
                    return Err(CliError::Usage(format!(
                        "volume {volume}: name one region with --region (or use an alias that has one)"
                    )));
                }
            };
            resolved.push(VolumeBackup {
                region,
                volume,
                hold,
            });
        }
        job = job.volumes(resolved);
    }

    let report = if ctx.global.dry_run {
        job.plan().await
    } else {
        job.run().await
    };
    // `--role-arn` alone: rows and samples carry its account.
    let account = ctx.role_account();
    let account = account.as_ref().map(ec2kit::accounts::AccountId::as_str);
    crate::fleet::add_metrics(account, metrics, |m| report.add_metrics(m));
    render(ctx, &report, account)?;
    if !report.not_found.is_empty() {
        eprintln!(
            "warning: {} of {} instances not found in {}",
            report.not_found.len(),
            args.instance.len(),
            regions
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    failures.extend(report.results.iter().filter_map(failure_line));
    let failed = report.failed();
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total: report.results.len(),
            what: "backups",
        });
    }
    if args.wait && !ctx.global.dry_run && !ctx.interrupt.is_cancelled() {
        let waited = job.wait(&report, args.wait_timeout).await?;
        bar.finish();
        return wait_outcome(ctx, &waited, args.wait_timeout, failures);
    }
    Ok(())
}

/// `snap backup` over many accounts: each account's instances (by tag or
/// `--instance`) in its regions, with its own client; a row per instance
/// with its account. Volumes (`--volume`) and `--wait` work in one account
/// (`--role-arn`).
async fn exec_accounts(
    ctx: &Context,
    args: Args,
    options: BackupOptions,
    metrics: &mut snapkit::metrics::Metrics,
    failures: &mut Vec<String>,
) -> Result<(), CliError> {
    if !args.volume.is_empty() || args.wait {
        return Err(CliError::Usage(
            "--volume and --wait back up in one account: use --role-arn instead of accounts".into(),
        ));
    }
    let which = instances(ctx, &args);
    let fleet = crate::fleet::fleet(ctx).await?;
    let reports = fleet
        .each(|t| {
            let (options, which) = (options.clone(), which.clone());
            async move {
                let mut job = Backup::new(&t.ec2, options)
                    .connect(ctx.config.connect())
                    .cancel_on(ctx.interrupt.clone())
                    .instances(t.regions.clone(), which);
                if args.consistent {
                    job = job.consistent(ctx.config.consistency.instance_hold());
                }
                if ctx.global.dry_run {
                    job.plan().await
                } else {
                    job.run().await
                }
            }
        })
        .await;
    let mut rows = Vec::new();
    let mut failed = 0;
    let mut total = 0;
    for (target, report) in &reports {
        crate::fleet::add_metrics(target.label(), metrics, |m| report.add_metrics(m));
        failures.extend(report.results.iter().filter_map(failure_line));
        failed += report.failed();
        total += report.results.len();
        rows.extend(report.results.iter().map(|r| (target.label(), r)));
    }
    match ctx.output() {
        OutputFormat::Json => output::json(
            &rows
                .iter()
                .map(|(a, r)| crate::fleet::Row::new(*a, *r))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Table => crate::fleet::table(
            true,
            &["REGION", "SOURCE", "NAME", "STATUS", "SNAPSHOTS"],
            rows.iter().map(|(a, r)| (*a, cells(r))),
        ),
    }
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total,
            what: "backups",
        });
    }
    fleet.outcome(0)
}

/// One `--volume`: an id, or an alias resolved from the config.
struct VolumeArg {
    /// The alias's region, if it names one.
    region: Option<String>,
    volume: VolumeId,
    /// With `--consistent`: from the alias's `host`, `mountpoint`, `lock_db`.
    hold: Option<VolumeHold>,
}

/// The `--volume` arguments, checked before any call.
fn volume_args(ctx: &Context, args: &Args) -> Result<Vec<VolumeArg>, CliError> {
    let mut out = Vec::new();
    for v in &args.volume {
        let (region, id) = if let Some(alias) = ctx.config.volumes.get(v) {
            (alias.region.clone(), alias.volume_id.clone())
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
            (None, id)
        };
        let hold = if args.consistent {
            let alias = ctx.config.volumes.values().find(|a| a.volume_id == id);
            let Some(hold) = alias.and_then(|a| a.hold(&ctx.config.consistency)) else {
                return Err(CliError::Usage(format!(
                    "volume {id}: --consistent needs the alias's `host`"
                )));
            };
            SshTarget::parse_with_user(&hold.host, &ctx.ssh_user())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            Some(hold)
        } else {
            None
        };
        out.push(VolumeArg {
            region,
            volume: id,
            hold,
        });
    }
    Ok(out)
}

/// The progress bar of the region being waited for (on a terminal only;
/// one region after another).
#[derive(Clone, Default)]
struct WaitBar(Arc<Mutex<Option<(Region, indicatif::ProgressBar)>>>);

impl WaitBar {
    /// The job's event sink: [`BackupEvent::Waiting`] moves the bar.
    fn sink(&self) -> impl Fn(&BackupEvent) + Send + Sync + 'static {
        let bar = self.clone();
        move |event: &BackupEvent| {
            let BackupEvent::Waiting {
                region,
                done,
                total,
            } = event
            else {
                return;
            };
            let Ok(mut current) = bar.0.lock() else {
                return;
            };
            if current.as_ref().is_none_or(|(r, _)| r != region) {
                if let Some((_, b)) = current.take() {
                    b.finish_and_clear();
                }
                let b = crate::progress::bar(*total as u64, &format!("waiting in {region}"));
                *current = Some((region.clone(), b));
            }
            if let Some((_, b)) = current.as_ref() {
                b.set_position(*done as u64);
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut current) = self.0.lock()
            && let Some((_, b)) = current.take()
        {
            b.finish_and_clear();
        }
    }
}

/// The report: JSON, or a table with the notes on stderr; each row with
/// `account` when there is one (`--role-arn`).
fn render(ctx: &Context, report: &BackupReport, account: Option<&str>) -> Result<(), CliError> {
    let results = &report.results;
    match ctx.output() {
        OutputFormat::Json if account.is_some() => output::json(
            &results
                .iter()
                .map(|r| crate::fleet::Row::new(account, r))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json => output::json(results)?,
        OutputFormat::Table => {
            crate::fleet::table(
                account.is_some(),
                &["REGION", "SOURCE", "NAME", "STATUS", "SNAPSHOTS"],
                results.iter().map(|r| (account, cells(r))),
            );
            for r in results {
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
    Ok(())
}

/// A row of the backup table.
fn cells(r: &snapkit::backup::BackupResult) -> Vec<String> {
    let source = r
        .instance
        .as_ref()
        .map(|i| i.to_string())
        .or_else(|| r.volume.as_ref().map(|v| v.to_string()))
        .unwrap_or_else(|| "-".into());
    let (status, snaps) = match &r.status {
        BackupStatus::Created { snapshots, .. } => ("created".to_owned(), join(snapshots)),
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
}

/// What the wait found: a line per region; `error` snapshots, ones still
/// pending and ones gone fail the command.
fn wait_outcome(
    ctx: &Context,
    waited: &[(Region, RegionWait)],
    timeout: Duration,
    failures: &mut Vec<String>,
) -> Result<(), CliError> {
    let mut problems = Vec::new();
    for (region, wait) in waited {
        let report = &wait.report;
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
                wait.awaited
            );
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    failures.extend(problems.iter().cloned());
    Err(CliError::Failed(format!(
        "{} snapshot(s) did not complete",
        problems.len()
    )))
}

/// `REGION ITEM: ERROR` for a failed item.
fn failure_line(r: &snapkit::backup::BackupResult) -> Option<String> {
    let BackupStatus::Failed { error, .. } = &r.status else {
        return None;
    };
    let item = r
        .instance
        .as_ref()
        .map(|i| i.to_string())
        .or_else(|| r.volume.as_ref().map(|v| v.to_string()))
        .unwrap_or_else(|| "(the region's instances)".into());
    Some(format!("{} {item}: {error}", r.region))
}

fn join(ids: &[ec2kit::SnapshotId]) -> String {
    ids.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The instances `--instance` names, else those carrying `--tag` (default
/// `defaults.tag`).
fn instances(ctx: &Context, args: &Args) -> Instances {
    if args.instance.is_empty() {
        Instances::Tagged(
            args.tag
                .clone()
                .unwrap_or_else(|| ctx.config.defaults.tag.clone()),
        )
    } else {
        Instances::Ids(args.instance.clone())
    }
}
