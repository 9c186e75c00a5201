//! `ektool snap trim` and `ektool snap delete-broken`.

use ec2kit::{Ec2, Region};
use serde::Serialize;
use snapkit::retention::{Decision, Guards, Plan};
use snapkit::trim::{self, Scope, TrimReport};

use super::plan::{parse_now, print_plan};
use super::policy::PolicyArgs;
use crate::args::OutputFormat;
use crate::context::Context;
use crate::error::CliError;
use crate::output;

/// Arguments of `ektool snap trim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also trim snapshots ektool did not make (explicit adoption; the
    /// guards still protect AMI-backing, pending and preserved ones).
    #[arg(long)]
    pub adopt: bool,
    /// Deletions in flight at once (the pacing to AWS's bucket still applies).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Policy selection.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Arguments of `ektool snap delete-broken`.
#[derive(Debug, clap::Args)]
pub struct BrokenArgs {
    /// Also delete `error` snapshots ektool did not make.
    #[arg(long)]
    pub adopt: bool,
}

#[derive(Serialize)]
struct RegionTrim<'a> {
    region: &'a Region,
    plan: &'a [Decision],
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a TrimReport>,
}

/// Plans per region, prints, and (without --dry-run) deletes.
pub async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let policies = args.policy.resolve(&ctx.config)?;
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let now = parse_now(None)?;
    let mut json = Vec::new();
    let mut plans: Vec<(Region, Plan, Option<TrimReport>)> = Vec::new();
    let mut failed = 0;
    let mut failed_regions = Vec::new();
    for region in &regions {
        // One region that cannot be listed is reported; the others go on.
        let listed = async {
            let snapshots = trim::inventory(&ec2, region, Scope::adopting(args.adopt)).await?;
            let ami = trim::ami_backed(&ec2, region).await?;
            Ok::<_, ec2kit::Ec2Error>((snapshots, ami))
        };
        let (snapshots, ami) = match listed.await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {region}: {e}");
                failed_regions.push(region.to_string());
                continue;
            }
        };
        let guards = Guards {
            adopt_unowned: args.adopt,
            ami_backed: Some(ami),
            ..Guards::default()
        };
        let plan = policies.plan(&snapshots, now, guards);
        let report = if ctx.global.dry_run || plan.deletions().next().is_none() {
            None
        } else {
            Some(apply_with_progress(&ec2, &plan, region, args.concurrency).await)
        };
        failed += report.as_ref().map_or(0, TrimReport::failed);
        plans.push((region.clone(), plan, report));
    }
    for (region, plan, report) in &plans {
        match ctx.output() {
            OutputFormat::Json => json.push(RegionTrim {
                region,
                plan: &plan.decisions,
                applied: report.as_ref(),
            }),
            OutputFormat::Table => {
                println!("== {region}");
                print_plan(ctx, plan)?;
                if let Some(r) = report {
                    println!("deleted {}, failed {}", r.deleted(), r.failed());
                    for f in r.results.iter().filter(|x| {
                        !matches!(
                            x.outcome,
                            trim::Outcome::Deleted | trim::Outcome::AlreadyGone
                        )
                    }) {
                        eprintln!("error: {}: {:?}", f.id, f.outcome);
                    }
                } else if ctx.global.dry_run {
                    println!("dry run: nothing deleted");
                }
            }
        }
    }
    if ctx.output() == OutputFormat::Json {
        output::json(&json)?;
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
    let n = plan.deletions().count() as u64;
    let bar = crate::progress::bar(n, &format!("deleting in {region}"));
    let report = trim::apply(ec2, plan, region, concurrency, &|_| bar.inc(1)).await;
    bar.finish_and_clear();
    report
}

/// Deletes `error` snapshots in the selected regions only.
pub async fn exec_broken(ctx: &Context, args: BrokenArgs) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let mut failed = 0;
    let mut out = Vec::new();
    let mut failed_regions = Vec::new();
    for region in &regions {
        let broken = match trim::broken(&ec2, region, Scope::adopting(args.adopt)).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {region}: {e}");
                failed_regions.push(region.to_string());
                continue;
            }
        };
        let plan = trim::broken_plan(&broken, region, jiff::Timestamp::now());
        let report = if ctx.global.dry_run {
            None
        } else {
            Some(trim::apply(&ec2, &plan, region, 4, &|_| {}).await)
        };
        failed += report.as_ref().map_or(0, TrimReport::failed);
        out.push((region.clone(), plan, report));
    }
    match ctx.output() {
        OutputFormat::Json => {
            let v: Vec<RegionTrim<'_>> = out
                .iter()
                .map(|(r, p, a)| RegionTrim {
                    region: r,
                    plan: &p.decisions,
                    applied: a.as_ref(),
                })
                .collect();
            output::json(&v)?;
        }
        OutputFormat::Table => {
            for (region, plan, report) in &out {
                println!("== {region}: {} broken snapshot(s)", plan.decisions.len());
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
