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
    match ctx.output() {
        OutputFormat::Json if fleet.labelled => output::json(
            &all.iter()
                .map(|(a, s)| crate::fleet::Row::new(*a, s))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json => output::json(&all.iter().map(|(_, s)| s).collect::<Vec<_>>())?,
        OutputFormat::Table => crate::fleet::table(
            fleet.labelled,
            &[
                "REGION", "SNAPSHOT", "LINEAGE", "TAKEN", "STATE", "TIER", "SIZE", "INSTANCE",
                "DEVICE",
            ],
            all.iter().map(|(a, s)| {
                (
                    *a,
                    vec![
                        s.region.as_ref().map_or("-".into(), |r| r.to_string()),
                        s.id.to_string(),
                        snapkit::lineage::lineage_of(s),
                        s.start_time.strftime("%Y-%m-%d %H:%M").to_string(),
                        s.state.to_string(),
                        s.storage_tier.to_string(),
                        s.volume_size_gib.map_or("-".into(), |g| format!("{g} GiB")),
                        output::or_dash(s.tags.get(snapkit::lineage::tags::INSTANCE)),
                        snapkit::backup::device_of(s).unwrap_or_else(|| "-".into()),
                    ],
                )
            }),
        ),
    }
    fleet.outcome(failed)
}
