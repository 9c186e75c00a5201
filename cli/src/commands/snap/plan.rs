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
    /// Policy selection.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Parses `--now`.
pub(crate) fn parse_now(s: Option<&str>) -> Result<jiff::Timestamp, CliError> {
    let Some(s) = s else {
        return Ok(jiff::Timestamp::now());
    };
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .ok_or_else(|| CliError::Usage(format!("invalid --now {s:?}: expected RFC 3339 (2026-01-31T00:00:00Z) or a date (2026-01-31)")))
}

/// Prints a plan: JSON array of decisions, or a table and a summary.
pub(crate) fn print_plan(ctx: &Context, plan: &Plan) -> Result<(), CliError> {
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    match ctx.output() {
        OutputFormat::Json => output::json_array(&plan.decisions),
        OutputFormat::Table => {
            output::table(
                &["SNAPSHOT", "LINEAGE", "TAKEN", "ACTION", "REASON"],
                plan.decisions.iter().map(|d| {
                    vec![
                        d.id.to_string(),
                        d.lineage.to_string(),
                        d.start_time.strftime("%Y-%m-%d %H:%M").to_string(),
                        format!("{:?}", d.action).to_lowercase(),
                        d.reason.to_string(),
                    ]
                }),
            );
            let (keep, delete) = plan.counts();
            println!(
                "\nkeep {keep}, delete {delete} (policy {})",
                plan.decisions.first().map_or("-", |d| &*d.policy)
            );
            Ok(())
        }
    }
}

/// Reads the inventory and prints the plan.
pub(crate) fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let now = parse_now(args.now.as_deref())?;
    let policies = args.policy.resolve(&ctx.config)?;
    let text = if args.inventory.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|source| CliError::Io {
            path: "<stdin>".into(),
            source,
        })?
    } else {
        // A file the user named that cannot be read (missing, a
        // directory, not UTF-8) is bad input, like a bad config file.
        std::fs::read_to_string(&args.inventory)
            .map_err(|source| CliError::Usage(format!("{}: {source}", args.inventory.display())))?
    };
    let snapshots: Vec<Snapshot> = snapkit::inventory::parse(&text).map_err(|e| {
        CliError::Usage(format!(
            "{}:{}:{}: not a snapshot inventory: {}",
            args.inventory.display(),
            e.line,
            e.column,
            e.source
        ))
    })?;
    drop(text);
    let guards = Guards {
        adopt_unowned: args.adopt,
        ..Guards::default()
    };
    let plan = policies.plan(&snapshots, now, guards);
    let printed = print_plan(ctx, &plan);
    // The process ends right after this command: freeing a million
    // snapshots and decisions one by one would only delay the exit.
    std::mem::forget((snapshots, plan));
    printed
}
