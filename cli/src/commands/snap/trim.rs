//! `ektool snap trim` and `ektool snap delete-broken`.

use std::io::{BufRead, IsTerminal, Write};

use ec2kit::{Ec2, Region};
use serde::Serialize;
use snapkit::retention::{ArchiveCost, Decision, Plan};
use snapkit::trim::{self, Scope, TrimEvent, TrimReport};

use super::plan::{PlanFormat, parse_now, print_html, print_plan};
use super::policy::PolicyArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap trim`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Also trim snapshots ektool did not make (explicit adoption; the
    /// guards still protect AMI-backing, pending and preserved ones).
    #[arg(long)]
    pub adopt: bool,
    /// Deletions in flight at once, 1 to 64 (the pacing to AWS's bucket
    /// still applies).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Delete without asking. On a terminal trim shows the plan and asks;
    /// without a terminal it needs this (or `retention.unattended_trim =
    /// true` in the config).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Refuse (delete nothing) when the plan, over all regions, deletes
    /// more than this many snapshots: 0 to 10,000,000 (default:
    /// `retention.max_delete`, then 1000). A policy gone wrong stops here.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub max_delete: Option<u64>,
    /// With `--dry-run`: `text` (the table, or JSON with `--output json`)
    /// or `html`, one self-contained HTML page of every region's plan.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Policy selection.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Also write Prometheus metrics (text format, for node_exporter's
    /// textfile collector) to this file, atomically, whatever the outcome.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

/// Asks `question` on `out` and reads one line from `input`: only `y` or
/// `yes` (any case) is a yes; end of input is a no.
pub(crate) fn confirm(question: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> bool {
    let _ = write!(out, "{question} [y/N] ");
    let _ = out.flush();
    let mut answer = String::new();
    match input.read_line(&mut answer) {
        Ok(0) | Err(_) => false,
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
    }
}

/// Arguments of `ektool snap delete-broken`.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokenArgs {
    /// Also delete `error` snapshots ektool did not make.
    #[arg(long)]
    pub adopt: bool,
}

#[derive(Serialize)]
struct RegionTrim<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    region: &'a Region,
    plan: &'a [Decision],
    /// Only when the plan archives.
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_cost: Option<ArchiveCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a TrimReport>,
}

/// The cost line of a plan that archives: `None` when it archives nothing.
fn archive_cost(ctx: &Context, region: &Region, plan: &Plan) -> Option<ArchiveCost> {
    plan.archives().next()?;
    Some(plan.archive_cost(retention(ctx).tier_prices(region.as_str())))
}

/// The retention settings of the run: `[vault.retention]` (else
/// `[retention]`) in the vault account, `[retention]` elsewhere.
fn retention(ctx: &Context) -> &crate::config::RetentionConfig {
    if ctx.in_vault().is_some() {
        ctx.config.vault_retention()
    } else {
        &ctx.config.retention
    }
}

/// Trim in the vault never runs as the vault's copy role: that role
/// cannot delete by design (a compromised source account can assume it),
/// so retention runs with the vault's own credentials or a keep role.
fn refuse_copy_role(ctx: &Context) -> Result<(), CliError> {
    let (Some(vault), Some(arn)) = (ctx.in_vault(), ctx.global.role_arn.as_deref()) else {
        return Ok(());
    };
    if vault.is_copy_role(arn) {
        return Err(CliError::Usage(format!(
            "--role-arn {arn} is the vault's copy role, which cannot delete by design: trim the \
             vault with its own credentials or its keep role (`ektool iam-policy vault-keep`)"
        )));
    }
    Ok(())
}

/// `archive 3 snapshots, 24 GiB (25769803776 bytes): -$0.90/month at list prices`.
fn cost_line(region: &Region, cost: &ArchiveCost) -> String {
    let gib = cost.bytes as f64 / f64::from(1u32 << 30);
    let mut line = format!(
        "archive {} snapshot(s), {gib:.0} GiB ({} bytes) to the archive tier",
        cost.snapshots, cost.bytes
    );
    if cost.unknown_size > 0 {
        line.push_str(&format!(" (+{} of unknown size)", cost.unknown_size));
    }
    match (cost.monthly_difference, cost.prices) {
        (Some(d), Some(p)) => line.push_str(&format!(
            ": {}${:.2}/month at list prices (standard ${}/GB-month, archive ${}/GB-month; \
             at most: the standard tier bills only changed blocks)",
            if d < 0.0 { "-" } else { "+" },
            d.abs(),
            p.standard_gb_month,
            p.archive_gb_month
        )),
        _ => line.push_str(&format!(
            ": no list prices for {region} (set [retention.prices.\"{region}\"])"
        )),
    }
    line
}

/// Plans per region, prints, and (without --dry-run) deletes.
pub(crate) async fn exec(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
) -> Result<(), CliError> {
    refuse_copy_role(ctx)?;
    // In the vault account: the vault's retention, lineages per source
    // account (`ACCOUNT/KEY`, see `snapkit::lineage`).
    let policies = args
        .policy
        .resolve_in(&ctx.config, ctx.in_vault().is_some())?;
    args.format.check(ctx)?;
    if args.format == PlanFormat::Html && !ctx.global.dry_run {
        return Err(CliError::Usage(
            "--format html shows a plan: it needs --dry-run".into(),
        ));
    }
    // Each account (with accounts in play) is planned and applied with its
    // own client; `owners[i]` is the account of `plans[i]`.
    let fleet = crate::fleet::fleet(ctx).await?;
    let now = parse_now(None)?;
    let mut json = Vec::new();
    let mut plans: Vec<(Region, Plan, Option<TrimReport>)> = Vec::new();
    let mut owners: Vec<&crate::fleet::Target> = Vec::new();
    let mut failed = 0;
    let mut failed_regions = Vec::new();
    for target in &fleet.targets {
        for region in &target.regions {
            // One region that cannot be listed is reported; the others go on.
            let scope = Scope::adopting(args.adopt);
            match trim::plan_region(&target.ec2, region, &policies, scope, now).await {
                Ok(plan) => {
                    plans.push((region.clone(), plan, None));
                    owners.push(target);
                }
                Err(e) => {
                    eprintln!("error: {}{region}: {e}", target.prefix());
                    failed_regions.push(format!("{}{region}", target.prefix()));
                }
            }
        }
    }
    if fleet.failed > 0 {
        failed_regions.push(format!("{} account(s)", fleet.failed));
    }
    let header = |i: usize, region: &Region| match owners[i].label() {
        Some(a) => format!("== {a} {region}"),
        None => format!("== {region}"),
    };

    if args.format == PlanFormat::Html {
        // One page for every region (a timeline per lineage per region).
        let mut all = Plan {
            now,
            decisions: Vec::new(),
            notes: Vec::new(),
        };
        for (_, plan, _) in plans {
            all.decisions.extend(plan.decisions);
            for note in plan.notes {
                if !all.notes.contains(&note) {
                    all.notes.push(note);
                }
            }
        }
        print_html(&all, &[])?;
        return outcome(0, &failed_regions);
    }

    // Every region is planned before anything is deleted: the cap and the
    // question are about the whole run.
    let total: usize = plans.iter().map(|(_, p, _)| p.deletions().count()).sum();
    let archives: usize = plans.iter().map(|(_, p, _)| p.archives().count()).sum();
    let mut refused = None;
    let mut shown = false;
    if !ctx.global.dry_run
        && total == 0
        && archives > 0
        && !args.yes
        && !retention(ctx).unattended_trim
    {
        // Archiving only: it changes the bill and the restore time, so it
        // asks like deleting does.
        if std::io::stdin().is_terminal() {
            for (region, plan, _) in &plans {
                if ctx.output() == OutputFormat::Table {
                    println!("== {region}");
                    print_plan(ctx, plan)?;
                    if let Some(c) = archive_cost(ctx, region, plan) {
                        println!("{}", cost_line(region, &c));
                    }
                }
            }
            shown = true;
            let question = format!("archive {archives} snapshot(s)?");
            let stdin = std::io::stdin();
            if !confirm(&question, &mut stdin.lock(), &mut std::io::stderr()) {
                return Err(CliError::Failed("not confirmed; nothing archived".into()));
            }
        } else {
            refused = Some(CliError::Usage(format!(
                "snap trim would archive {archives} snapshot(s) and there is no terminal to \
                 ask: pass --yes (or set retention.unattended_trim = true); see the plan \
                 with --dry-run"
            )));
        }
    }
    if !ctx.global.dry_run && total > 0 {
        let cap = args
            .max_delete
            .unwrap_or_else(|| retention(ctx).max_delete());
        let regions_with = plans
            .iter()
            .filter(|(_, p, _)| p.deletions().next().is_some())
            .count();
        if total as u64 > cap {
            refused = Some(CliError::Failed(format!(
                "the plan deletes {total} snapshots, more than the cap of {cap} (--max-delete, \
                 retention.max_delete); nothing deleted. Check the plan with --dry-run; if it \
                 is right, rerun with --max-delete {total}"
            )));
        } else if !args.yes && !retention(ctx).unattended_trim {
            if std::io::stdin().is_terminal() {
                for (i, (region, plan, _)) in plans.iter().enumerate() {
                    if ctx.output() == OutputFormat::Table {
                        println!("{}", header(i, region));
                        print_plan(ctx, plan)?;
                        if let Some(c) = archive_cost(ctx, region, plan) {
                            println!("{}", cost_line(region, &c));
                        }
                    }
                }
                shown = true;
                let question = if archives > 0 {
                    format!(
                        "delete {total} and archive {archives} snapshot(s) in {regions_with} region(s)?"
                    )
                } else {
                    format!("delete {total} snapshot(s) in {regions_with} region(s)?")
                };
                let stdin = std::io::stdin();
                if !confirm(&question, &mut stdin.lock(), &mut std::io::stderr()) {
                    return Err(CliError::Failed("not confirmed; nothing deleted".into()));
                }
            } else {
                refused = Some(CliError::Usage(format!(
                    "snap trim would delete {total} snapshot(s) and there is no terminal to \
                     ask: pass --yes (or set retention.unattended_trim = true); see the plan \
                     with --dry-run"
                )));
            }
        }
    }
    if refused.is_none() && !ctx.global.dry_run {
        for (i, (region, plan, report)) in plans.iter_mut().enumerate() {
            if plan.deletions().next().is_some() || plan.archives().next().is_some() {
                let ec2 = &owners[i].ec2;
                let r = apply_with_progress(ec2, plan, region, usize::from(args.concurrency)).await;
                failed += r.failed();
                crate::fleet::add_metrics(owners[i].label(), metrics, |m| {
                    r.add_metrics(m, region);
                });
                *report = Some(r);
            }
        }
    }
    for (i, (region, plan, report)) in plans.iter().enumerate() {
        match ctx.output() {
            OutputFormat::Json => json.push(RegionTrim {
                account: owners[i].label(),
                region,
                plan: &plan.decisions,
                archive_cost: archive_cost(ctx, region, plan),
                applied: report.as_ref(),
            }),
            OutputFormat::Table => {
                if !shown {
                    println!("{}", header(i, region));
                    print_plan(ctx, plan)?;
                    if let Some(c) = archive_cost(ctx, region, plan) {
                        println!("{}", cost_line(region, &c));
                    }
                }
                if let Some(r) = report {
                    if plan.archives().next().is_some() {
                        println!(
                            "{region}: deleted {}, archived {}, failed {}",
                            r.deleted(),
                            r.archived(),
                            r.failed()
                        );
                    } else {
                        println!("{region}: deleted {}, failed {}", r.deleted(), r.failed());
                    }
                    for f in r.results.iter().filter(|x| {
                        !matches!(
                            x.outcome,
                            trim::Outcome::Deleted
                                | trim::Outcome::AlreadyGone
                                | trim::Outcome::Archived
                        )
                    }) {
                        eprintln!("error: {}: {:?}", f.id, f.outcome);
                    }
                } else if ctx.global.dry_run {
                    if plan.archives().next().is_some() {
                        println!("dry run: nothing deleted, nothing archived");
                    } else {
                        println!("dry run: nothing deleted");
                    }
                }
            }
        }
    }
    if ctx.output() == OutputFormat::Json {
        output::json(&json)?;
    }
    if let Some(e) = refused {
        return Err(e);
    }
    outcome(failed, &failed_regions)
}

/// Exit status of a multi-region run: any failed deletion or region fails it.
fn outcome(failed: usize, failed_regions: &[String]) -> Result<(), CliError> {
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{failed} deletions failed"));
    }
    if !failed_regions.is_empty() {
        problems.push(format!("could not list {}", failed_regions.join(", ")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(problems.join("; ")))
    }
}

async fn apply_with_progress(
    ec2: &dyn Ec2,
    plan: &Plan,
    region: &Region,
    concurrency: usize,
) -> TrimReport {
    let n = (plan.deletions().count() + plan.archives().count()) as u64;
    let verb = if plan.archives().next().is_some() {
        "trimming"
    } else {
        "deleting"
    };
    let bar = crate::progress::bar(n, &format!("{verb} in {region}"));
    let report = trim::apply(ec2, plan, region, concurrency, &|event| {
        if let TrimEvent::Applied(_) = event {
            bar.inc(1);
        }
    })
    .await;
    bar.finish_and_clear();
    report
}

/// Deletes `error` snapshots in the selected regions only.
pub(crate) async fn exec_broken(ctx: &Context, args: BrokenArgs) -> Result<(), CliError> {
    // With accounts in play, each account's regions with its own client;
    // `owners[i]` is the account of `out[i]`.
    let fleet = crate::fleet::fleet(ctx).await?;
    let mut failed = 0;
    let mut out = Vec::new();
    let mut owners: Vec<&crate::fleet::Target> = Vec::new();
    let mut failed_regions = Vec::new();
    if fleet.failed > 0 {
        failed_regions.push(format!("{} account(s)", fleet.failed));
    }
    for (target, region) in fleet
        .targets
        .iter()
        .flat_map(|t| t.regions.iter().map(move |r| (t, r)))
    {
        let ec2 = &target.ec2;
        let scope = Scope::adopting(args.adopt);
        let plan = match trim::plan_broken(ec2, region, scope, jiff::Timestamp::now()).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {}{region}: {e}", target.prefix());
                failed_regions.push(format!("{}{region}", target.prefix()));
                continue;
            }
        };
        let report = if ctx.global.dry_run {
            None
        } else {
            Some(trim::apply(ec2, &plan, region, 4, &|_| {}).await)
        };
        failed += report.as_ref().map_or(0, TrimReport::failed);
        out.push((region.clone(), plan, report));
        owners.push(target);
    }
    match ctx.output() {
        OutputFormat::Json => {
            let v: Vec<RegionTrim<'_>> = out
                .iter()
                .zip(&owners)
                .map(|((r, p, a), t)| RegionTrim {
                    account: t.label(),
                    region: r,
                    plan: &p.decisions,
                    archive_cost: None,
                    applied: a.as_ref(),
                })
                .collect();
            output::json(&v)?;
        }
        OutputFormat::Table => {
            for ((region, plan, report), t) in out.iter().zip(&owners) {
                let account = t.label().map_or_else(String::new, |a| format!("{a} "));
                println!(
                    "== {account}{region}: {} broken snapshot(s)",
                    plan.decisions.len()
                );
                for d in &plan.decisions {
                    println!("{}  {}  {}", d.id, d.lineage, d.reason);
                }
                match report {
                    Some(r) => println!("deleted {}, failed {}", r.deleted(), r.failed()),
                    None if ctx.global.dry_run => println!("dry run: nothing deleted"),
                    None => {}
                }
            }
        }
    }
    outcome(failed, &failed_regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_confirms() {
        for (input, want) in [
            ("y\n", true),
            ("YES\n", true),
            (" yes \n", true),
            ("n\n", false),
            ("\n", false),
            ("", false),
            ("yep\n", false),
        ] {
            let mut out = Vec::new();
            assert_eq!(
                confirm("delete?", &mut input.as_bytes(), &mut out),
                want,
                "{input:?}"
            );
            assert_eq!(out, b"delete? [y/N] ");
        }
    }
}
