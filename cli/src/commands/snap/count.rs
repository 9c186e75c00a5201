//! `ektool snap count`: snapshots per region against a threshold
//! (django-ec2tools' snapshot-limit check).

use serde::Serialize;
use snapkit::trim::{self, Scope};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap count`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Warn (exit 1) when a region holds more than this many (1 to
    /// 100,000,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub warn_at: u64,
    /// Count every snapshot the account owns, not only ektool's.
    #[arg(long)]
    pub adopt: bool,
}

#[derive(Serialize)]
struct Row {
    region: String,
    snapshots: usize,
    over: bool,
}

/// Counts and compares.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let scope = Scope::adopting(args.adopt);
    let results = trim::inventories(&ec2, &regions, scope, 8).await;
    let mut rows = Vec::new();
    for r in results {
        let n = r.result?.len();
        rows.push(Row {
            region: r.region.to_string(),
            snapshots: n,
            over: n as u64 > args.warn_at,
        });
    }
    match ctx.output() {
        OutputFormat::Json => output::json(&rows)?,
        OutputFormat::Table => output::table(
            &["REGION", "SNAPSHOTS", "STATUS"],
            rows.iter().map(|r| {
                vec![
                    r.region.clone(),
                    r.snapshots.to_string(),
                    if r.over {
                        format!("over {}", args.warn_at)
                    } else {
                        "ok".into()
                    },
                ]
            }),
        ),
    }
    let over: Vec<&str> = rows
        .iter()
        .filter(|r| r.over)
        .map(|r| r.region.as_str())
        .collect();
    if !over.is_empty() {
        return Err(CliError::Failed(format!(
            "snapshot count over {} in {}",
            args.warn_at,
            over.join(", ")
        )));
    }
    Ok(())
}
