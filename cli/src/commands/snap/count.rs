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
    /// In a vault account: the copies per source account.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    by_source_account: std::collections::BTreeMap<String, usize>,
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
            let (n, by_source_account) = match r.result {
                Ok(list) => {
                    let mut by = std::collections::BTreeMap::new();
                    for s in &list {
                        if let Some(a) = snapkit::lineage::source_account(s) {
                            *by.entry(a.to_owned()).or_insert(0) += 1;
                        }
                    }
                    (list.len(), by)
                }
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
                by_source_account,
            });
        }
    }
    let vault = rows.iter().any(|r| !r.by_source_account.is_empty());
    let mut headers = vec!["REGION", "SNAPSHOTS", "STATUS"];
    if vault {
        headers.push("BY SOURCE ACCOUNT");
    }
    match ctx.output() {
        OutputFormat::Json => output::json(&rows)?,
        OutputFormat::Table => crate::fleet::table(
            fleet.labelled,
            &headers,
            rows.iter().map(|r| {
                let mut row = vec![
                    r.region.clone(),
                    r.snapshots.to_string(),
                    if r.over {
                        format!("over {}", args.warn_at)
                    } else {
                        "ok".into()
                    },
                ];
                if vault {
                    let by: Vec<String> = r
                        .by_source_account
                        .iter()
                        .map(|(a, n)| format!("{a}: {n}"))
                        .collect();
                    row.push(if by.is_empty() {
                        "-".into()
                    } else {
                        by.join(", ")
                    });
                }
                (r.account.as_deref(), row)
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
