//! `ektool snap check`: is the newest completed snapshot of every volume
//! recent enough? The flags and `[check]` made into a
//! [`snapkit::check::CheckSpec`], checked, rendered; any failure exits 1
//! with one line each on stderr.

use std::time::Duration;

use ec2kit::{Region, Tag, fleet};
use serde::Serialize;
use snapkit::check::{self, CheckReport, CheckSpec, Freshness, Place, ReplicaCheck, VolumeTarget};

use super::durations;
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap check`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The threshold of lineages without their own (`[volumes.X] max_age`,
    /// `[check.tags]`): 1m to 10 years (default: `[check] max_age`, then
    /// 26h).
    #[arg(long, value_name = "DURATION", value_parser = durations::max_lag)]
    pub max_age: Option<Duration>,
    /// Check the volumes of the instances carrying this tag (default:
    /// `defaults.tag`).
    #[arg(long, value_name = "KEY=VALUE", conflicts_with = "aliases_only")]
    pub tag: Option<Tag>,
    /// Check only the `[volumes]` aliases, no instances.
    #[arg(long)]
    pub aliases_only: bool,
    /// Also check the copies in this replication destination (default:
    /// `[check] replica_region`).
    #[arg(long, value_name = "REGION")]
    pub to: Option<String>,
    /// How old the data of the newest copy in the destination may be: 1m
    /// to 10 years (default: `[check] replica_max_age`, then twice the
    /// source threshold).
    #[arg(long, value_name = "DURATION", value_parser = durations::max_lag)]
    pub replica_max_age: Option<Duration>,
    /// Also fail lineages without a successful restore test (`snap
    /// verify`) this recent: 1m to 10 years, e.g. 7d (default: `[check]
    /// max_unverified`, else not checked).
    #[arg(long, value_name = "DURATION", value_parser = durations::max_lag)]
    pub max_unverified: Option<Duration>,
    /// Also write Prometheus metrics (text format, for node_exporter's
    /// textfile collector) to this file, atomically, whatever the outcome.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
pub(super) struct Json<'a> {
    /// With `--account`, `--role-arn` or accounts: its account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) account: Option<&'a str>,
    #[serde(flatten)]
    pub(super) report: &'a CheckReport,
    pub(super) failures: Vec<String>,
}

/// Builds the spec, checks, renders.
pub(crate) async fn exec(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
    failure_lines: &mut Vec<String>,
) -> Result<(), CliError> {
    if crate::fleet::accounts(ctx)?.is_some() {
        return super::check_accounts::exec(ctx, args, metrics, failure_lines).await;
    }
    if let Some(vault) = ctx.in_vault() {
        return exec_vault(ctx, vault, &args, metrics, failure_lines).await;
    }
    let cfg = &ctx.config.check;
    let max_age = args
        .max_age
        .or(cfg.max_age)
        .unwrap_or(check::DEFAULT_MAX_AGE);
    let replica_region = args.to.clone().or_else(|| cfg.replica_region.clone());
    let replica_max_age = args.replica_max_age.or(cfg.replica_max_age);
    if replica_region.is_none() && args.replica_max_age.is_some() {
        return Err(CliError::Usage(
            "--replica-max-age needs a destination: --to REGION (or `[check] replica_region`)"
                .into(),
        ));
    }
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let needs_catalog =
        replica_region.is_some() || ctx.config.volumes.values().any(|v| v.region.is_some());
    let catalog = if needs_catalog {
        Some(fleet::region_catalog(&ec2).await?)
    } else {
        None
    };
    let resolve = |name: &str| -> Result<Region, CliError> {
        match &catalog {
            Some(c) => Ok(c.resolve(name)?),
            None => Ok(Region::new(name)),
        }
    };
    let mut volumes = Vec::new();
    for (alias, v) in &ctx.config.volumes {
        let region = match &v.region {
            Some(r) => resolve(r)?,
            None if regions.len() == 1 => regions[0].clone(),
            None => {
                return Err(CliError::Usage(format!(
                    "volume alias {alias} names no region: give it `region = …` or check one \
                     region with --region"
                )));
            }
        };
        volumes.push(VolumeTarget {
            alias: alias.clone(),
            region,
            volume: v.volume_id.clone(),
            max_age: v.max_age,
        });
    }
    let replica = match &replica_region {
        Some(r) => Some(ReplicaCheck {
            region: resolve(r)?,
            max_age: replica_max_age.unwrap_or(max_age.saturating_mul(2)),
        }),
        None => None,
    };
    let regions_len = regions.len();
    let spec = CheckSpec {
        regions,
        tag: (!args.aliases_only).then(|| {
            args.tag
                .clone()
                .unwrap_or_else(|| ctx.config.defaults.tag.clone())
        }),
        volumes,
        max_age,
        tag_max_age: cfg.tags.clone(),
        replica,
        // Every region at once: each lists with two calls, paced per region.
        concurrency: regions_len.max(1),
        max_unverified: args.max_unverified.or(cfg.max_unverified),
        ..CheckSpec::default()
    };
    let now = jiff::Timestamp::now();
    let mut report = check::check(&ec2, &spec, now).await;
    // `--account` or `--role-arn` alone: the accounts' form, with its
    // account.
    let account = ctx.role_account();
    // "snap check covers the vault": with `[vault] max_age`, every source
    // lineage needs a copy that recent in the vault, read with the vault's
    // copy role (DescribeSnapshots only).
    if let Some(vault) = ctx.config.vault.as_ref()
        && let Some(max_age) = vault.max_age
    {
        let source_account = match &account {
            Some(a) => a.clone(),
            None => ec2.caller_account().await?,
        };
        let vault_ec2 = ctx.ec2_as(Some(vault.copy_role(&source_account))).await;
        let spec = check::VaultCheck {
            source_account: source_account.to_string(),
            region: vault.region.as_deref().map(Region::new),
            max_age,
        };
        check::check_vault_copies(&vault_ec2, &spec, &mut report, now).await;
    }
    let account = account.as_ref().map(ec2kit::accounts::AccountId::as_str);
    finish(
        ctx,
        account,
        &report,
        spec.max_unverified.is_some(),
        "lineage(s)",
        metrics,
        failure_lines,
    )
}

/// The failure lines of a report, `account ID: ` first with an account.
fn failure_lines_of(account: Option<&str>, report: &CheckReport) -> Vec<String> {
    let prefix = account.map_or_else(String::new, |a| format!("account {a}: "));
    report
        .failures()
        .iter()
        .map(|f| format!("{prefix}{f}"))
        .collect()
}

/// The table or JSON of a report (`account`: `--account`'s, a column
/// and a field).
fn render(
    ctx: &Context,
    account: Option<&str>,
    report: &CheckReport,
    failures: &[String],
    verify: bool,
) -> Result<(), CliError> {
    let vault = report.lineages.iter().any(|l| l.place == Place::Vault);
    let mut headers = vec!["REGION", "LINEAGE", "OF", "WHERE"];
    if vault {
        headers.push("SOURCE ACCOUNT");
    }
    headers.extend(["NEWEST", "AGE", "MAX AGE", "STATUS"]);
    if verify {
        headers.push("VERIFIED");
    }
    let json = Json {
        account,
        report,
        failures: failures.to_vec(),
    };
    match ctx.output() {
        // With an account: the accounts' form, an array.
        OutputFormat::Json if account.is_some() => output::json(&[json])?,
        OutputFormat::Json => output::json(&json)?,
        OutputFormat::Table => crate::fleet::table(
            account.is_some(),
            &headers,
            report.lineages.iter().map(|l| {
                let mut r = row(l);
                if vault {
                    r.insert(4, output::or_dash(l.source_account.as_deref()));
                }
                if verify {
                    r.push(verified(l));
                }
                (account, r)
            }),
        ),
    }
    Ok(())
}

/// `snap check --account VAULT`: every vault lineage (`ACCOUNT/KEY`)
/// has a copy younger than `--max-age`, `[vault] max_age`, `[check]
/// max_age` or 26h, by its data time.
async fn exec_vault(
    ctx: &Context,
    vault: &crate::config::VaultConfig,
    args: &Args,
    metrics: &mut snapkit::metrics::Metrics,
    failure_lines: &mut Vec<String>,
) -> Result<(), CliError> {
    if args.tag.is_some() || args.aliases_only || args.to.is_some() || args.max_unverified.is_some()
    {
        return Err(CliError::Usage(
            "snap check --account VAULT checks the vault's copies: --tag, --aliases-only, --to \
             and --max-unverified are about a source account"
                .into(),
        ));
    }
    let max_age = args
        .max_age
        .or(vault.max_age)
        .or(ctx.config.check.max_age)
        .unwrap_or(check::DEFAULT_MAX_AGE);
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let concurrency = regions.len().max(1);
    let report =
        check::check_vault(&ec2, &regions, max_age, concurrency, jiff::Timestamp::now()).await;
    let account = Some(vault.account.as_str());
    finish(
        ctx,
        account,
        &report,
        false,
        "vault lineage(s)",
        metrics,
        failure_lines,
    )
}

/// Renders a report, its failures one line each on stderr (and in
/// `failure_lines`, for the notification), its metrics; exit 1 on any
/// failure.
fn finish(
    ctx: &Context,
    account: Option<&str>,
    report: &CheckReport,
    verified: bool,
    lineages: &str,
    metrics: &mut snapkit::metrics::Metrics,
    failure_lines: &mut Vec<String>,
) -> Result<(), CliError> {
    let failures = failure_lines_of(account, report);
    crate::fleet::add_metrics(account, metrics, |m| *m = report.metrics());
    render(ctx, account, report, &failures, verified)?;
    for f in &failures {
        eprintln!("{f}");
    }
    failure_lines.clone_from(&failures);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} check failure(s) in {} {lineages}",
            failures.len(),
            report.lineages.len()
        )))
    }
}

/// The last successful restore test: its age, or `never`; `STALE` past
/// the threshold.
fn verified(l: &check::LineageCheck) -> String {
    match &l.verified {
        None => "-".into(),
        Some(v) => {
            let age = v.age_seconds.map_or_else(
                || "NEVER".to_owned(),
                |a| {
                    format!(
                        "{} ago",
                        ec2kit::duration::format(Duration::from_secs(a.max(0) as u64))
                    )
                },
            );
            match (v.ok, v.age_seconds) {
                (true, _) | (false, None) => age,
                (false, Some(_)) => format!("{age} (STALE)"),
            }
        }
    }
}

pub(super) fn row(l: &check::LineageCheck) -> Vec<String> {
    let of = match (&l.alias, &l.instance, &l.device) {
        (Some(a), _, _) => a.clone(),
        (None, Some(i), Some(d)) => format!("{i} {d}"),
        (None, Some(i), None) => i.to_string(),
        _ => "-".into(),
    };
    let human = |s: u64| ec2kit::duration::format(Duration::from_secs(s));
    vec![
        l.region.to_string(),
        l.lineage.clone(),
        of,
        match l.place {
            Place::Source => "source".into(),
            Place::Replica => "replica".into(),
            _ => "vault".into(),
        },
        output::or_dash(l.newest.as_ref().map(|s| s.as_str())),
        l.age_seconds
            .map_or_else(|| "-".into(), |a| human(a.max(0) as u64)),
        human(l.max_age_seconds),
        match l.status {
            Freshness::Fresh if l.errors.is_empty() => "ok".into(),
            Freshness::Fresh => format!("ok, {} error", l.errors.len()),
            Freshness::Stale => "STALE".into(),
            _ => "MISSING".into(),
        },
    ]
}
