//! `ektool instances --tag K=V`: the instances carrying a tag, per region.

use ec2kit::{Instance, Tag, fleet};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool instances`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The tag to select by. Default: `defaults.tag` from the config
    /// (`Earmarking=production`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Option<Tag>,

    /// How many regions to query at once.
    #[arg(long, default_value_t = fleet::DEFAULT_REGION_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
}

/// Lists the live instances carrying the tag in every selected region.
/// A failing region is reported and the others still listed (exit 1).
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let tag = args.tag.unwrap_or_else(|| ctx.config.defaults.tag.clone());
    let fleet = crate::fleet::fleet(ctx).await?;
    let results = fleet
        .each(|t| fleet::instances_by_tag(&t.ec2, &t.regions, &tag, usize::from(args.concurrency)))
        .await;

    let mut instances: Vec<(Option<&str>, Instance)> = Vec::new();
    let mut failed = 0;
    for (target, results) in results {
        for r in results {
            match r.result {
                Ok(list) => instances.extend(list.into_iter().map(|i| (target.label(), i))),
                Err(e) => {
                    failed += 1;
                    tracing::error!("{e}");
                    eprintln!("error: {}{}: {e}", target.prefix(), r.region);
                }
            }
        }
    }
    instances.sort_by(|(x, a), (y, b)| {
        (x, &a.region, a.name(), &a.id).cmp(&(y, &b.region, b.name(), &b.id))
    });

    match ctx.output() {
        OutputFormat::Json if fleet.labelled => output::json(
            &instances
                .iter()
                .map(|(a, i)| crate::fleet::Row::new(*a, i))
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Json => output::json(&instances.iter().map(|(_, i)| i).collect::<Vec<_>>())?,
        OutputFormat::Table => crate::fleet::table(
            fleet.labelled,
            &[
                "REGION",
                "INSTANCE",
                "NAME",
                "STATE",
                "TYPE",
                "ZONE",
                "PRIVATE-IP",
                "PUBLIC-IP",
            ],
            instances.iter().map(|(a, i)| {
                (
                    *a,
                    vec![
                        i.region.to_string(),
                        i.id.to_string(),
                        output::or_dash(i.name()),
                        i.state.clone(),
                        output::or_dash(i.instance_type.as_deref()),
                        output::or_dash(i.availability_zone.as_deref()),
                        output::or_dash(i.private_ip.as_deref()),
                        output::or_dash(i.public_ip.as_deref()),
                    ],
                )
            }),
        ),
    }
    fleet.outcome(failed)?;
    if instances.is_empty() {
        tracing::info!(%tag, "no instances carry the tag");
    }
    Ok(())
}
