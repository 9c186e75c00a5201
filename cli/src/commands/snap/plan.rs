//! `ektool snap plan`: a policy over an inventory file, offline.

use std::path::PathBuf;

use ec2kit::Snapshot;
use snapkit::retention::{Guards, Plan};

use super::policy::PolicyArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap plan`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The inventory: a JSON array as `ektool snap list --output json`
    /// writes (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Plan as of this time (RFC 3339, or a date for its midnight UTC):
    /// what would still exist then. Default: now.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// Also plan snapshots ektool did not make (as `trim --adopt` would).
    #[arg(long)]
    pub adopt: bool,
    /// `text`: the table (or JSON with `--output json`); `html`: one
    /// self-contained HTML page, a timeline per lineage.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// With `--format html`: also draw what will still exist at this time
    /// (RFC 3339 or a date), if the plan is carried out and the policy runs
    /// again then, with no new backups. Repeatable.
    #[arg(long = "at", value_name = "TIME")]
    pub at: Vec<String>,
    /// Policy selection.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// How `snap plan` and `snap trim --dry-run` show a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PlanFormat {
    /// The table, or JSON with `--output json`.
    Text,
    /// One self-contained HTML page (inline SVG, CSS and script).
    Html,
}

impl PlanFormat {
    /// Refuses `--format html` with `--output json`: two outputs.
    pub(crate) fn check(self, ctx: &Context) -> Result<(), CliError> {
        if self == Self::Html && ctx.output() == OutputFormat::Json {
            return Err(CliError::Usage(
                "--format html and --output json are two outputs: choose one".into(),
            ));
        }
        Ok(())
    }
}

/// Parses `--now`.
pub(crate) fn parse_now(s: Option<&str>) -> Result<jiff::Timestamp, CliError> {
    match s {
        None => Ok(jiff::Timestamp::now()),
        Some(s) => parse_time("--now", s),
    }
}

/// Parses a time flag: RFC 3339, or a date for its midnight UTC.
fn parse_time(flag: &str, s: &str) -> Result<jiff::Timestamp, CliError> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| CliError::Usage(format!("invalid {flag} {s:?}: expected RFC 3339 (2026-01-31T00:00:00Z) or a date (2026-01-31)")))
}

/// Writes a plan as HTML (see `snapkit::retention::html`) to stdout.
pub(crate) fn print_html(plan: &Plan, projections: &[Plan]) -> Result<(), CliError> {
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    output::write(snapkit::retention::html::render(plan, projections).as_bytes())
}

/// Prints a plan: JSON array of decisions, or a table and a summary.
pub(crate) fn print_plan(ctx: &Context, plan: &Plan) -> Result<(), CliError> {
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    match ctx.output() {
        OutputFormat::Json => output::json_array(&plan.decisions),
        OutputFormat::Table => {
            // A row at a time: a million-line table held whole took 2 GB.
            output::long_table(
                &["SNAPSHOT", "LINEAGE", "TAKEN", "ACTION", "REASON"],
                || {
                    plan.decisions.iter().map(|d| {
                        vec![
                            d.id.to_string(),
                            d.lineage.to_string(),
                            d.start_time.strftime("%Y-%m-%d %H:%M").to_string(),
                            format!("{:?}", d.action).to_lowercase(),
                            d.reason.to_string(),
                        ]
                    })
                },
            )?;
            let (keep, delete) = plan.counts();
            let archive = plan.archives().count();
            let archive = if archive > 0 {
                format!(" ({archive} to the archive tier)")
            } else {
                String::new()
            };
            println!(
                "\nkeep {keep}{archive}, delete {delete} (policy {})",
                plan.decisions.first().map_or("-", |d| &*d.policy)
            );
            Ok(())
        }
    }
}

/// Reads the inventory and prints the plan.
pub(crate) fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let now = parse_now(args.now.as_deref())?;
    args.format.check(ctx)?;
    if !args.at.is_empty() && args.format != PlanFormat::Html {
        return Err(CliError::Usage(
            "--at draws projections: it needs --format html".into(),
        ));
    }
    let mut at = Vec::with_capacity(args.at.len());
    for s in &args.at {
        let t = parse_time("--at", s)?;
        if t <= now {
            return Err(CliError::Usage(format!(
                "--at {s}: a projection is of a time after the plan's ({})",
                now.strftime("%Y-%m-%dT%H:%M:%SZ")
            )));
        }
        at.push(t);
    }
    let policies = args.policy.resolve(&ctx.config)?;
    let not_inventory = |e: snapkit::inventory::InventoryError| {
        CliError::Usage(format!(
            "{}:{}:{}: not a snapshot inventory: {}",
            args.inventory.display(),
            e.line,
            e.column,
            e.source
        ))
    };
    let snapshots: Vec<Snapshot> = if args.inventory.as_os_str() == "-" {
        // Standard input cannot be read twice (see `read_file`): all of it.
        let text = std::io::read_to_string(std::io::stdin()).map_err(|source| CliError::Io {
            path: "<stdin>".into(),
            source,
        })?;
        snapkit::inventory::parse(&text).map_err(not_inventory)?
    } else {
        // A file the user named that cannot be read (missing, a
        // directory, not UTF-8) is bad input, like a bad config file.
        snapkit::inventory::read_file(&args.inventory).map_err(|e| match e {
            snapkit::inventory::ReadError::Inventory(e) => not_inventory(e),
            e => CliError::Usage(format!("{}: {e}", args.inventory.display())),
        })?
    };
    let guards = Guards {
        adopt_unowned: args.adopt,
        ..Guards::default()
    };
    let plan = policies.plan(&snapshots, now, guards.clone());
    let printed = match args.format {
        PlanFormat::Text => print_plan(ctx, &plan),
        PlanFormat::Html => {
            let projections: Vec<Plan> = at
                .into_iter()
                .map(|t| policies.project(&snapshots, &plan, t, guards.clone()))
                .collect();
            print_html(&plan, &projections)
        }
    };
    // The process ends right after this command: freeing a million
    // snapshots and decisions one by one would only delay the exit.
    std::mem::forget((snapshots, plan));
    printed
}
