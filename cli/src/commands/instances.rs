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
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let results =
        fleet::instances_by_tag(&ec2, &regions, &tag, usize::from(args.concurrency)).await;

    let mut instances: Vec<Instance> = Vec::new();
    let mut failed = 0;
    for r in results {
        match r.result {
            Ok(list) => instances.extend(list),
            Err(e) => {
                failed += 1;
                tracing::error!("{e}");
                eprintln!("error: {}: {e}", r.region);
            }
        }
    }
    instances.sort_by(|a, b| (&a.region, a.name(), &a.id).cmp(&(&b.region, b.name(), &b.id)));

    match ctx.output() {
        OutputFormat::Json => output::json(&instances)?,
        OutputFormat::Table => output::table(
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
            instances.iter().map(|i| {
                vec![
                    i.region.to_string(),
                    i.id.to_string(),
                    output::or_dash(i.name()),
                    i.state.clone(),
                    output::or_dash(i.instance_type.as_deref()),
                    output::or_dash(i.availability_zone.as_deref()),
                    output::or_dash(i.private_ip.as_deref()),
                    output::or_dash(i.public_ip.as_deref()),
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
    if instances.is_empty() {
        tracing::info!(%tag, "no instances carry the tag");
    }
    Ok(())
}
