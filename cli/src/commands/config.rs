//! `ektool config`: check the config file and show what is in force.

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Prints the effective configuration (loading it already validated it).
pub(crate) fn exec(ctx: &Context) -> Result<(), CliError> {
    let config = &ctx.config;
    match ctx.output() {
        OutputFormat::Json => output::json(config),
        OutputFormat::Table => {
            let from = config
                .path
                .as_ref()
                .map_or("built-in defaults (no config file found)".to_owned(), |p| {
                    p.display().to_string()
                });
            println!("config:   {from}");
            println!("tag:      {}", config.defaults.tag);
            let regions = if config.defaults.regions.is_empty() {
                "-".to_owned()
            } else {
                config.defaults.regions.join(", ")
            };
            println!("regions:  {regions}");
            let limits = config.aws.rate_limits();
            println!(
                "pacing:   {}",
                if limits.is_enabled() {
                    "AWS token buckets"
                } else {
                    "off"
                }
            );
            if !config.volumes.is_empty() {
                println!();
                output::table(
                    &[
                        "ALIAS",
                        "VOLUME",
                        "REGION",
                        "MOUNTPOINT",
                        "LOCK-DB",
                        "STRATEGY",
                    ],
                    config.volumes.iter().map(|(alias, v)| {
                        vec![
                            alias.clone(),
                            v.volume_id.to_string(),
                            output::or_dash(v.region.as_deref()),
                            output::or_dash(v.mountpoint.as_deref()),
                            v.lock_db.to_string(),
                            output::or_dash(v.strategy.as_deref()),
                        ]
                    }),
                );
            }
            Ok(())
        }
    }
}
