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
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    region: String,
    snapshots: usize,
    over: bool,
}

impl Row {
    /// `account region` (or just the region) in a message.
    fn place(&self) -> String {
        match &self.account {
            Some(a) => format!("{a} {}", self.region),
            None => self.region.clone(),
        }
    }
}

/// Counts and compares.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let fleet = crate::fleet::fleet(ctx).await?;
    let scope = Scope::adopting(args.adopt);
    let results = fleet
        .each(|t| trim::inventories(&t.ec2, &t.regions, scope, 8))
        .await;
    let mut rows = Vec::new();
    let mut failed = 0;
    for (target, results) in results {
        for r in results {
            let n = match r.result {
                Ok(list) => list.len(),
                // One account: a failing region fails the count, as ever.
                Err(e) if !fleet.labelled => return Err(e.into()),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {}{e}", target.prefix());
                    continue;
                }
            };
            rows.push(Row {
                account: target.label().map(str::to_owned),
                region: r.region.to_string(),
                snapshots: n,
                over: n as u64 > args.warn_at,
            });
        }
    }
    match ctx.output() {
        OutputFormat::Json => output::json(&rows)?,
        OutputFormat::Table => crate::fleet::table(
            fleet.labelled,
            &["REGION", "SNAPSHOTS", "STATUS"],
            rows.iter().map(|r| {
                (
                    r.account.as_deref(),
                    vec![
                        r.region.clone(),
                        r.snapshots.to_string(),
                        if r.over {
                            format!("over {}", args.warn_at)
                        } else {
                            "ok".into()
                        },
                    ],
                )
            }),
        ),
    }
    let over: Vec<String> = rows.iter().filter(|r| r.over).map(Row::place).collect();
    if !over.is_empty() {
        return Err(CliError::Failed(format!(
            "snapshot count over {} in {}",
            args.warn_at,
            over.join(", ")
        )));
    }
    fleet.outcome(failed)
}
