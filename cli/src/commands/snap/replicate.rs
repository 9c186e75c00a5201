//! `ektool snap replicate`, `snap replicate-all` and `snap lag`.

use std::time::Duration;

use ec2kit::{AwsEc2, Region, Tag};
use serde::Serialize;
use snapkit::replicate::{
    self, CopyEvent, CopyOptions, ReplicationPlan, ReplicationReport, Selection,
};
use snapkit::trim::Scope;

use super::durations;
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Which lineages replicate.
#[derive(Debug, clap::Args)]
pub(crate) struct SelectArgs {
    /// Lineages whose snapshots carry this tag (default: `defaults.tag`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Option<Tag>,
    /// Every lineage in scope, whatever its tags.
    #[arg(long, conflicts_with = "tag")]
    pub all_lineages: bool,
    /// Only snapshots taken in the source region (`false`: copies that
    /// arrived there too).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_only: bool,
    /// Also snapshots ektool did not make (explicit adoption).
    #[arg(long)]
    pub adopt: bool,
}

impl SelectArgs {
    pub(super) fn selection(&self, ctx: &Context) -> Selection {
        Selection {
            tag: (!self.all_lineages).then(|| {
                self.tag
                    .clone()
                    .unwrap_or_else(|| ctx.config.defaults.tag.clone())
            }),
            scope: Scope::adopting(self.adopt),
            native_only: self.native_only,
        }
    }
}

/// How copies run.
#[derive(Debug, clap::Args)]
pub(crate) struct CopyArgs {
    /// Copies of this run in flight per destination region (EC2 allows 20
    /// per destination, shared with any other copies).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub max_in_flight: u16,
    /// Encrypt the copies with this KMS key (id, ARN or alias), checked in
    /// the destination before any copy starts.
    #[arg(long, value_name = "KEY")]
    pub kms_key: Option<String>,
    /// Wait until every copy has completed (else return once all have
    /// started; a rerun picks up what is still in flight).
    #[arg(long)]
    pub wait: bool,
    /// Time between polls of the copies in flight (1s to 10m, e.g. 15s).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = durations::poll)]
    pub poll: Duration,
}

impl CopyArgs {
    pub(super) fn options(&self) -> CopyOptions {
        CopyOptions {
            max_in_flight: usize::from(self.max_in_flight),
            poll: self.poll,
            wait: self.wait,
            ..CopyOptions::default()
        }
    }
}

/// Arguments of `ektool snap replicate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Source region.
    #[arg(long, value_name = "REGION")]
    pub from: String,
    /// Destination region (with --to-account: the vault's region, default
    /// `[vault] region`, else the source region).
    #[arg(long, value_name = "REGION", required_unless_present = "to_account")]
    pub to: Option<String>,
    /// Copy into this vault account instead (alone: `[vault] account`):
    /// the source shared with it for the copy, the copy made there by the
    /// vault's copy role, the share taken back.
    #[arg(long, value_name = "ACCOUNT", num_args = 0..=1)]
    pub to_account: Option<Option<String>>,
    /// The vault's copy role (default: `[vault] role`, else
    /// `arn:aws:iam::VAULT:role/ektool-vault-copy`); `{source}` in it
    /// stands for the source account (one copy role per source account).
    #[arg(long, value_name = "ARN", requires = "to_account")]
    pub vault_role: Option<String>,
    /// Selection.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Copies.
    #[command(flatten)]
    pub copy: CopyArgs,
    /// Also write Prometheus metrics (text format, for node_exporter's
    /// textfile collector) to this file, atomically, whatever the outcome.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
}

/// Arguments of `ektool snap replicate-all`.
#[derive(Debug, clap::Args)]
pub(crate) struct AllArgs {
    /// Every other region (or those given with --region) replicates here.
    #[arg(long, value_name = "REGION")]
    pub primary: String,
    /// The primary then replicates here.
    #[arg(long, value_name = "REGION")]
    pub secondary: Option<String>,
    /// Also forward the replicas gathered in the primary to the secondary
    /// (the seed could not); those that arrive during this run go on the
    /// next one unless --wait.
    #[arg(long, requires = "secondary")]
    pub forward_replicas: bool,
    /// Lineages whose snapshots carry this tag (default: `defaults.tag`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Option<Tag>,
    /// Every lineage in scope, whatever its tags.
    #[arg(long, conflicts_with = "tag")]
    pub all_lineages: bool,
    /// Also snapshots ektool did not make (explicit adoption).
    #[arg(long)]
    pub adopt: bool,
    /// Copies.
    #[command(flatten)]
    pub copy: CopyArgs,
}

/// Arguments of `ektool snap lag`.
#[derive(Debug, clap::Args)]
pub(crate) struct LagArgs {
    /// Source region.
    #[arg(long, value_name = "REGION")]
    pub from: String,
    /// Destination region.
    #[arg(long, value_name = "REGION")]
    pub to: String,
    /// Exit 1 when a lineage's newest copy is further behind its newest
    /// source than this (or has no copy): 1m to 10 years, e.g. `12h`, `1d`,
    /// `2d12h`.
    #[arg(long, value_name = "DURATION", value_parser = durations::max_lag)]
    pub max_lag: Option<Duration>,
    /// Selection.
    #[command(flatten)]
    pub select: SelectArgs,
}

/// `--to` (clap requires it without `--to-account`).
fn to_of(args: &Args) -> Result<&str, CliError> {
    args.to
        .as_deref()
        .ok_or_else(|| CliError::Usage("--to: the destination region is required".into()))
}

/// `--from` and `--to`, resolved against one `DescribeRegions`.
async fn from_to(ec2: &AwsEc2, from: &str, to: &str) -> Result<(Region, Region), CliError> {
    let catalog = ec2kit::fleet::region_catalog(ec2).await?;
    Ok((catalog.resolve(from)?, catalog.resolve(to)?))
}

/// Plans, shows, and (without --dry-run) copies.
pub(crate) async fn exec(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
) -> Result<(), CliError> {
    if args.to_account.is_some() {
        return super::vault::exec(ctx, args, metrics).await;
    }
    // Accounts, or one `--role-arn` or `--account`: the accounts' form
    // (each stage with its account).
    if crate::fleet::accounts(ctx)?.is_some() || ctx.role_account().is_some() {
        return exec_accounts(ctx, args, metrics).await;
    }
    let ec2 = ctx.ec2().await;
    let (from, to) = from_to(&ec2, &args.from, to_of(&args)?).await?;
    if from == to {
        return Err(CliError::Usage(format!("--from and --to are both {from}")));
    }
    if let Some(key) = &args.copy.kms_key {
        replicate::check_kms_key(&ec2, &to, key).await?;
    }
    let selection = args.select.selection(ctx);
    let plan = replicate::plan(&ec2, &from, &to, &selection, args.copy.kms_key.as_deref()).await?;
    let stage = apply(ctx, &ec2, vec![plan], &args.copy).await;
    if let Some(r) = &stage.applied {
        r.add_metrics(metrics);
    }
    render(ctx, &stage)?;
    outcome([&stage])
}

/// A stage of one account.
#[derive(Serialize)]
struct AccountStage<'a> {
    account: Option<&'a str>,
    #[serde(flatten)]
    stage: &'a Stage,
}

/// `snap replicate` in every account, one after the other (each its own
/// client, regions and copy slots); a failing account is reported and the
/// rest go on.
async fn exec_accounts(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
) -> Result<(), CliError> {
    let fleet = crate::fleet::fleet_in(ctx, false).await?;
    let selection = args.select.selection(ctx);
    let mut stages = Vec::new();
    let mut failed = 0;
    for t in &fleet.targets {
        let one = async {
            let (from, to) = from_to(&t.ec2, &args.from, to_of(&args)?).await?;
            if from == to {
                return Err(CliError::Usage(format!("--from and --to are both {from}")));
            }
            if let Some(key) = &args.copy.kms_key {
                replicate::check_kms_key(&t.ec2, &to, key).await?;
            }
            let kms = args.copy.kms_key.as_deref();
            let plan = replicate::plan(&t.ec2, &from, &to, &selection, kms).await?;
            Ok(apply(ctx, &t.ec2, vec![plan], &args.copy).await)
        };
        match one.await {
            Ok(stage) => {
                if let Some(r) = &stage.applied {
                    crate::fleet::add_metrics(t.label(), metrics, |m| r.add_metrics(m));
                }
                stages.push((t, stage));
            }
            Err(e @ CliError::Usage(_)) => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}{e}", t.prefix());
            }
        }
    }
    match ctx.output() {
        OutputFormat::Json => output::json(
            &stages
                .iter()
                .map(|(t, stage)| AccountStage {
                    account: t.label(),
                    stage,
                })
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Table => {
            for (t, stage) in &stages {
                println!("== {}", t.label().unwrap_or("-"));
                print_table(ctx, stage);
            }
        }
    }
    let stages: Vec<Stage> = stages.into_iter().map(|(_, s)| s).collect();
    outcome(&stages)?;
    fleet.accounts_outcome(failed)
}

/// The seed's rsync_all_regions: every other region into the primary, then
/// the primary into the secondary — in every account at once (with
/// accounts in play or `--role-arn`), each with its own client, region
/// catalog, stages and copy slots; a failing account is reported and the
/// rest go on.
pub(crate) async fn exec_all(ctx: &Context, args: AllArgs) -> Result<(), CliError> {
    let fleet = crate::fleet::fleet_in(ctx, false).await?;
    let runs = fleet
        .each(|t| {
            let args = &args;
            async move { all_in(ctx, args, &t.ec2, &t.prefix()).await }
        })
        .await;
    let mut done = Vec::new();
    let mut failed = 0;
    for (t, run) in runs {
        match run {
            Ok(run) => done.push((t, run)),
            Err(e) if !fleet.labelled => return Err(e),
            Err(e @ CliError::Usage(_)) => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}{e}", t.prefix());
            }
        }
    }
    match ctx.output() {
        OutputFormat::Json if fleet.labelled => output::json(
            &done
                .iter()
                .flat_map(|(t, run)| {
                    run.stages.iter().map(|stage| AccountStage {
                        account: t.label(),
                        stage,
                    })
                })
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json => {
            output::json(&done.iter().flat_map(|(_, r)| &r.stages).collect::<Vec<_>>())?;
        }
        OutputFormat::Table => {
            for (t, run) in &done {
                for (n, stage) in run.stages.iter().enumerate() {
                    let into = if n == 0 {
                        &run.primary
                    } else {
                        run.secondary.as_ref().unwrap_or(&run.primary)
                    };
                    match t.label() {
                        Some(a) => println!("== {a} stage {}: into {into}", n + 1),
                        None => println!("== stage {}: into {into}", n + 1),
                    }
                    print_table(ctx, stage);
                }
            }
        }
    }
    let failed_regions: Vec<&str> = done
        .iter()
        .flat_map(|(_, r)| r.failed_regions.iter().map(String::as_str))
        .collect();
    if !failed_regions.is_empty() {
        return Err(CliError::Failed(format!(
            "could not list {}",
            failed_regions.join(", ")
        )));
    }
    outcome(done.iter().flat_map(|(_, r)| &r.stages))?;
    fleet.accounts_outcome(failed)
}

/// `snap replicate-all` in one account.
struct AllRun {
    primary: Region,
    secondary: Option<Region>,
    stages: Vec<Stage>,
    /// The source regions that could not be listed (`prefix` + name).
    failed_regions: Vec<String>,
}

/// Both stages in the account of `ec2`; `prefix` starts its error lines.
async fn all_in(
    ctx: &Context,
    args: &AllArgs,
    ec2: &AwsEc2,
    prefix: &str,
) -> Result<AllRun, CliError> {
    let catalog = ec2kit::fleet::region_catalog(ec2).await?;
    let primary = catalog.resolve(&args.primary)?;
    let secondary = args
        .secondary
        .as_deref()
        .map(|s| catalog.resolve(s))
        .transpose()?;
    if secondary.as_ref() == Some(&primary) {
        return Err(CliError::Usage(format!(
            "--primary and --secondary are both {primary}"
        )));
    }
    let sources: Vec<Region> = if ctx.global.regions.is_empty() {
        catalog.enabled().cloned().collect()
    } else {
        catalog.resolve_all(&ctx.global.regions)?
    };
    let sources = crate::fleet::exclude(sources, &ctx.global.exclude_region);
    let select = SelectArgs {
        tag: args.tag.clone(),
        all_lineages: args.all_lineages,
        native_only: true,
        adopt: args.adopt,
    };
    let selection = select.selection(ctx);
    let kms = args.copy.kms_key.as_deref();
    for to in std::iter::once(&primary).chain(secondary.as_ref()) {
        if let Some(key) = kms {
            replicate::check_kms_key(ec2, to, key).await?;
        }
    }
    // Stage 1: every other region into the primary, sharing its slots.
    let mut plans = Vec::new();
    let mut failed_regions = Vec::new();
    for from in sources
        .iter()
        .filter(|r| **r != primary && Some(*r) != secondary.as_ref())
    {
        match replicate::plan(ec2, from, &primary, &selection, kms).await {
            Ok(p) => plans.push(p),
            Err(e) => {
                eprintln!("error: {prefix}{from}: {e}");
                failed_regions.push(format!("{prefix}{from}"));
            }
        }
    }
    let mut stages = vec![apply(ctx, ec2, plans, &args.copy).await];
    // Stage 2: the primary into the secondary.
    if let Some(s) = &secondary {
        let selection = Selection {
            native_only: !args.forward_replicas,
            ..selection.clone()
        };
        let plan = replicate::plan(ec2, &primary, s, &selection, kms).await?;
        stages.push(apply(ctx, ec2, vec![plan], &args.copy).await);
    }
    Ok(AllRun {
        primary,
        secondary,
        stages,
        failed_regions,
    })
}

/// One source-to-destination stage: its plans and what applying did.
#[derive(Serialize)]
struct Stage {
    plans: Vec<ReplicationPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<ReplicationReport>,
}

impl Stage {
    fn failed(&self) -> usize {
        self.applied.as_ref().map_or(0, ReplicationReport::failed)
    }
}

/// Shows a stage applied (or, with --dry-run, planned).
fn render(ctx: &Context, stage: &Stage) -> Result<(), CliError> {
    match ctx.output() {
        OutputFormat::Json => output::json(stage)?,
        OutputFormat::Table => print_table(ctx, stage),
    }
    Ok(())
}

async fn apply(ctx: &Context, ec2: &AwsEc2, plans: Vec<ReplicationPlan>, copy: &CopyArgs) -> Stage {
    let to_copy: usize = plans.iter().map(|p| p.to_copy().count()).sum();
    let applied = if ctx.global.dry_run || to_copy == 0 {
        None
    } else {
        let bar = crate::progress::bar(to_copy as u64, "copies");
        let report = replicate::apply(ec2, &plans, &copy.options(), &|e| match e {
            CopyEvent::Started { .. } if !copy.wait => bar.inc(1),
            CopyEvent::Completed { .. } if copy.wait => bar.inc(1),
            CopyEvent::WaitingForSlot { region } => {
                bar.set_message(format!("copies (waiting for a slot in {region})"));
            }
            _ => {}
        })
        .await;
        bar.finish_and_clear();
        Some(report)
    };
    Stage { plans, applied }
}

fn outcome<'a>(stages: impl IntoIterator<Item = &'a Stage>) -> Result<(), CliError> {
    let failed: usize = stages.into_iter().map(Stage::failed).sum();
    if failed > 0 {
        return Err(CliError::Failed(format!("{failed} copies failed")));
    }
    Ok(())
}

fn print_table(ctx: &Context, stage: &Stage) {
    let (plans, report) = (&stage.plans, stage.applied.as_ref());
    let mut outcome = std::collections::HashMap::new();
    if let Some(r) = report {
        for res in &r.results {
            outcome.insert((&res.to, &res.source), &res.outcome);
        }
    }
    output::table(
        &[
            "FROM", "TO", "LINEAGE", "SOURCE", "TAKEN", "ACTION", "RESULT",
        ],
        plans.iter().flat_map(|p| {
            let outcome = &outcome;
            p.items.iter().map(move |i| {
                let action = match &i.action {
                    replicate::CopyAction::Copy => "copy".to_owned(),
                    replicate::CopyAction::Present { copy } => format!("present {copy}"),
                    replicate::CopyAction::InProgress { copy } => format!("in progress {copy}"),
                    replicate::CopyAction::Recopy { failed } => format!("recopy ({failed} failed)"),
                    _ => "?".to_owned(),
                };
                let result = match outcome.get(&(&p.to, &i.source)) {
                    Some(replicate::CopyOutcome::InFlight { copy }) => format!("started {copy}"),
                    Some(replicate::CopyOutcome::Completed { copy }) => format!("completed {copy}"),
                    Some(replicate::CopyOutcome::Failed { error }) => format!("failed: {error}"),
                    _ => "-".to_owned(),
                };
                vec![
                    p.from.to_string(),
                    p.to.to_string(),
                    i.lineage.clone(),
                    i.source.to_string(),
                    i.taken.strftime("%Y-%m-%d %H:%M").to_string(),
                    action,
                    result,
                ]
            })
        }),
    );
    let to_copy: usize = plans.iter().map(|p| p.to_copy().count()).sum();
    match report {
        Some(r) => {
            println!(
                "\n{} copies started, {} failed, {} waits for a free slot",
                r.started,
                r.failed(),
                r.slot_waits
            );
            if r.duplicates_removed > 0 {
                println!(
                    "{} copies deleted again: a concurrent run had started the same ones first",
                    r.duplicates_removed
                );
            }
        }
        None if ctx.global.dry_run => println!("\ndry run: {to_copy} copies would start"),
        None => println!("\nnothing to copy"),
    }
}

/// Per lineage: newest source, newest copy, how far behind.
pub(crate) async fn exec_lag(ctx: &Context, args: LagArgs) -> Result<(), CliError> {
    let max = args.max_lag;
    // With accounts in play, each account's lag with its own client (its
    // own `--from`/`--to`); one account alone fails the command as ever.
    let fleet = crate::fleet::fleet_in(ctx, false).await?;
    let selection = args.select.selection(ctx);
    let results = fleet
        .each(|t| {
            let (args, selection) = (&args, &selection);
            async move {
                let (from, to) = from_to(&t.ec2, &args.from, &args.to).await?;
                let rows = replicate::lag(&t.ec2, &from, &to, selection).await?;
                Ok::<_, CliError>((to, rows))
            }
        })
        .await;
    let mut rows = Vec::new();
    let mut to = None;
    let mut failed = 0;
    for (t, r) in results {
        match r {
            Ok((region, list)) => {
                to = Some(region);
                rows.extend(list.into_iter().map(|row| (t.label(), row)));
            }
            Err(e) if !fleet.labelled => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}{e}", t.prefix());
            }
        }
    }
    let to = to.map_or_else(|| args.to.clone(), |r| r.to_string());
    match ctx.output() {
        OutputFormat::Json if fleet.labelled => output::json(
            &rows
                .iter()
                .map(|(a, r)| crate::fleet::Row::new(*a, r))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json => output::json(&rows.iter().map(|(_, r)| r).collect::<Vec<_>>())?,
        OutputFormat::Table => crate::fleet::table(
            fleet.labelled,
            &[
                "LINEAGE",
                "NEWEST SOURCE",
                "TAKEN",
                "NEWEST COPY",
                "DATA OF",
                "BEHIND",
            ],
            rows.iter().map(|(a, r)| {
                let cells = vec![
                    r.lineage.clone(),
                    r.newest_source.to_string(),
                    r.source_taken.strftime("%Y-%m-%d %H:%M").to_string(),
                    r.newest_copy
                        .as_ref()
                        .map_or("-".into(), ToString::to_string),
                    r.copy_taken
                        .map_or("-".into(), |t| t.strftime("%Y-%m-%d %H:%M").to_string()),
                    match (r.behind_seconds, &r.in_progress) {
                        (None, Some(c)) => format!("no copy yet ({c} in progress)"),
                        (None, None) => "no copy".into(),
                        (Some(0), _) => "up to date".into(),
                        (Some(s), Some(c)) => format!("{} ({c} in progress)", human(s)),
                        (Some(s), None) => human(s),
                    },
                ];
                (*a, cells)
            }),
        ),
    }
    if let Some(max) = max {
        let behind: Vec<String> = rows
            .iter()
            .filter(|(_, r)| r.is_behind(max))
            .map(|(a, r)| match a {
                Some(a) => format!("{a} {}", r.lineage),
                None => r.lineage.clone(),
            })
            .collect();
        if !behind.is_empty() {
            return Err(CliError::Failed(format!(
                "{} lineage(s) more than {} behind in {to}: {}",
                behind.len(),
                ec2kit::duration::format(max),
                behind.join(", ")
            )));
        }
    }
    fleet.accounts_outcome(failed)
}

/// `2d 3h`, `5h 10m`, `42m`.
fn human(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}
