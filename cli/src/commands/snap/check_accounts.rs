//! `ektool snap check` over many accounts: the instances carrying the tag
//! in each account's regions (and its replica region), each account
//! checked with its own client; every row, JSON object and failure line
//! names its account.

use ec2kit::{Region, fleet};
use snapkit::check::{self, CheckSpec, ReplicaCheck};

use super::check::{Args, Json, row};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Checks every account; the volume aliases of `[volumes]` (one account's
/// volumes) work in one account (`--role-arn`). `metrics` gets every
/// account's samples, each labelled with its account.
pub(super) async fn exec(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
    failure_lines: &mut Vec<String>,
) -> Result<(), CliError> {
    if args.aliases_only {
        return Err(CliError::Usage(
            "--aliases-only checks one account: use --role-arn instead of accounts".into(),
        ));
    }
    let cfg = &ctx.config.check;
    let max_age = args
        .max_age
        .or(cfg.max_age)
        .unwrap_or(check::DEFAULT_MAX_AGE);
    let replica_region = args.to.clone().or_else(|| cfg.replica_region.clone());
    let replica_max_age = args
        .replica_max_age
        .or(cfg.replica_max_age)
        .unwrap_or(max_age.saturating_mul(2));
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| ctx.config.defaults.tag.clone());
    let fleet = crate::fleet::fleet(ctx).await?;
    let now = jiff::Timestamp::now();
    // "snap check covers the vault": with `[vault] max_age`, each
    // account's lineages need a recent copy of that account in the vault,
    // read with the vault's copy role (DescribeSnapshots only).
    let vault = ctx.config.vault.as_ref().filter(|v| v.max_age.is_some());
    let reports = fleet
        .each(|t| {
            let (tag, replica_region) = (tag.clone(), replica_region.clone());
            async move {
                let replica = match replica_region {
                    Some(name) => Some(ReplicaCheck {
                        region: resolve(&t.ec2, &name).await?,
                        max_age: replica_max_age,
                    }),
                    None => None,
                };
                let spec = CheckSpec {
                    regions: t.regions.clone(),
                    tag: Some(tag),
                    max_age,
                    tag_max_age: cfg.tags.clone(),
                    replica,
                    concurrency: t.regions.len().max(1),
                    ..CheckSpec::default()
                };
                let mut report = check::check(&t.ec2, &spec, now).await;
                if let (Some(v), Some(account)) = (vault, &t.account)
                    && account != &v.account
                {
                    // The copy role of this source account (`{source}`).
                    let role = v.copy_role(account);
                    let vault_ec2 = ctx.ec2_as(Some(role)).await;
                    let spec = check::VaultCheck {
                        source_account: account.to_string(),
                        region: v.region.as_deref().map(Region::new),
                        max_age: v.max_age.unwrap_or(check::DEFAULT_MAX_AGE),
                    };
                    check::check_vault_copies(&vault_ec2, &spec, &mut report, now).await;
                }
                Ok::<_, CliError>(report)
            }
        })
        .await;
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for (t, r) in &reports {
        match r {
            Ok(report) => {
                crate::fleet::add_metrics(t.label(), metrics, |m| *m = report.metrics());
                let lines: Vec<String> = report
                    .failures()
                    .iter()
                    .map(|f| format!("{}{f}", t.prefix()))
                    .collect();
                failures.extend(lines.iter().cloned());
                checked.push((t.label(), report, lines));
            }
            Err(e) => failures.push(format!("{}{e}", t.prefix())),
        }
    }
    match ctx.output() {
        OutputFormat::Json => output::json(
            &checked
                .iter()
                .map(|(account, report, lines)| Json {
                    account: *account,
                    report,
                    failures: lines.clone(),
                })
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Table => crate::fleet::table(
            true,
            &[
                "REGION", "LINEAGE", "OF", "WHERE", "NEWEST", "AGE", "MAX AGE", "STATUS",
            ],
            checked
                .iter()
                .flat_map(|(a, report, _)| report.lineages.iter().map(move |l| (*a, row(l)))),
        ),
    }
    for f in &failures {
        eprintln!("{f}");
    }
    failure_lines.clone_from(&failures);
    let lineages: usize = checked.iter().map(|(_, r, _)| r.lineages.len()).sum();
    if !failures.is_empty() {
        return Err(CliError::Failed(format!(
            "{} check failure(s) in {lineages} lineage(s)",
            failures.len()
        )));
    }
    fleet.outcome(0)
}

/// The replica region `name` resolves to in one account.
async fn resolve(ec2: &ec2kit::AwsEc2, name: &str) -> Result<Region, CliError> {
    Ok(fleet::region_catalog(ec2).await?.resolve(name)?)
}
