//! `ektool regions`: the account's regions, or what `--region` resolves to.

use ec2kit::fleet;

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool regions`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Include regions the account has not opted in to.
    #[arg(long)]
    pub all: bool,
}

/// Lists regions. With `--region`, only the ones those names resolve to.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let catalog = fleet::region_catalog(&ec2).await?;
    let selected = if ctx.global.regions.is_empty() {
        None
    } else {
        Some(catalog.resolve_all(&ctx.global.regions)?)
    };
    let regions: Vec<_> = catalog
        .regions()
        .iter()
        .filter(|r| match &selected {
            Some(sel) => sel.contains(&r.name),
            None => args.all || r.is_enabled(),
        })
        .collect();
    match ctx.output() {
        OutputFormat::Json => output::json(&regions),
        OutputFormat::Table => {
            output::table(
                &["REGION", "OPT-IN", "ENDPOINT"],
                regions.iter().map(|r| {
                    vec![
                        r.name.to_string(),
                        output::or_dash(r.opt_in_status.as_deref()),
                        output::or_dash(r.endpoint.as_deref()),
                    ]
                }),
            );
            Ok(())
        }
    }
}
