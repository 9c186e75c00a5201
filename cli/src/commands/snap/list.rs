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
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let scope = Scope::adopting(args.adopt);
    let results = trim::inventories(&ec2, &regions, scope, 8).await;
    let mut all: Vec<Snapshot> = Vec::new();
    let mut failed = 0;
    for r in results {
        match r.result {
            Ok(s) => all.extend(s),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    // The lineage key borrows from the snapshot: no allocation per comparison.
    all.sort_by(|a, b| {
        use snapkit::lineage::lineage_key;
        (&a.region, lineage_key(a), a.start_time).cmp(&(&b.region, lineage_key(b), b.start_time))
    });
    match ctx.output() {
        OutputFormat::Json => output::json(&all)?,
        OutputFormat::Table => output::table(
            &[
                "REGION", "SNAPSHOT", "LINEAGE", "TAKEN", "STATE", "TIER", "SIZE", "INSTANCE",
                "DEVICE",
            ],
            all.iter().map(|s| {
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
                ]
            }),
        ),
    }
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total: regions.len(),
            what: "regions",
        });
    }
    Ok(())
}
