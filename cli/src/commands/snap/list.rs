//! `ektool snap list`: the snapshots ektool made, per region.

use ec2kit::Snapshot;
use snapkit::trim::{self, Scope};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap list`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// List every snapshot the account owns, not only ektool's.
    #[arg(long)]
    pub adopt: bool,
}

/// A vault copy with the account it came from.
#[derive(serde::Serialize)]
struct VaultCopy<'a> {
    source_account: Option<&'a str>,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
}

/// Lists the snapshots in scope in every selected region.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let fleet = crate::fleet::fleet(ctx).await?;
    let scope = Scope::adopting(args.adopt);
    let results = fleet
        .each(|t| trim::inventories(&t.ec2, &t.regions, scope, 8))
        .await;
    let mut all: Vec<(Option<&str>, Snapshot)> = Vec::new();
    let mut failed = 0;
    for (target, results) in results {
        for r in results {
            match r.result {
                Ok(s) => all.extend(s.into_iter().map(|s| (target.label(), s))),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {}{e}", target.prefix());
                }
            }
        }
    }
    // The lineage key borrows from the snapshot: no allocation per comparison.
    all.sort_by(|(x, a), (y, b)| {
        use snapkit::lineage::lineage_key;
        (x, &a.region, lineage_key(a), a.start_time).cmp(&(
            y,
            &b.region,
            lineage_key(b),
            b.start_time,
        ))
    });
    // Copies in a vault account: the account each came from, as a column
    // and a field.
    let vault = all
        .iter()
        .any(|(_, s)| snapkit::lineage::source_account(s).is_some());
    let copies: Vec<VaultCopy<'_>> = all
        .iter()
        .map(|(_, s)| VaultCopy {
            source_account: snapkit::lineage::source_account(s),
            snapshot: s,
        })
        .collect();
    match ctx.output() {
        OutputFormat::Json if fleet.labelled && vault => output::json(
            &all.iter()
                .zip(&copies)
                .map(|((a, _), c)| crate::fleet::Row::new(*a, c))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json if vault => output::json(&copies)?,
        OutputFormat::Json if fleet.labelled => output::json(
            &all.iter()
                .map(|(a, s)| crate::fleet::Row::new(*a, s))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json => output::json(&all.iter().map(|(_, s)| s).collect::<Vec<_>>())?,
        OutputFormat::Table => crate::fleet::table(
            fleet.labelled,
            &[
                "REGION",
                "SNAPSHOT",
                if vault { "SOURCE ACCOUNT" } else { "" },
                "LINEAGE",
                "TAKEN",
                "STATE",
                "TIER",
                "SIZE",
                "INSTANCE",
                "DEVICE",
            ]
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>(),
            all.iter().map(|(a, s)| {
                let source = vault.then(|| output::or_dash(snapkit::lineage::source_account(s)));
                (
                    *a,
                    [
                        Some(s.region.as_ref().map_or("-".into(), |r| r.to_string())),
                        Some(s.id.to_string()),
                        source,
                    ]
                    .into_iter()
                    .flatten()
                    .chain([
                        snapkit::lineage::lineage_of(s),
                        s.start_time.strftime("%Y-%m-%d %H:%M").to_string(),
                        s.state.to_string(),
                        s.storage_tier.to_string(),
                        s.volume_size_gib.map_or("-".into(), |g| format!("{g} GiB")),
                        output::or_dash(s.tags.get(snapkit::lineage::tags::INSTANCE)),
                        snapkit::backup::device_of(s).unwrap_or_else(|| "-".into()),
                    ])
                    .collect(),
                )
            }),
        ),
    }
    fleet.outcome(failed)
}
