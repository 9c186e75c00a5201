//! `ektool snap restore-tier`: an archived snapshot back from the archive
//! tier, for some days or for good.

use ec2kit::SnapshotId;
use ec2kit::requests::TierRestore;
use snapkit::trim::{self, RestoreTierError};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap restore-tier`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["days", "permanent"])))]
pub(crate) struct RestoreArgs {
    /// The archived snapshot (in --region).
    pub snapshot: SnapshotId,
    /// A temporary restore: usable for N days (1 to 180), then back in the
    /// archive tier only.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=180))]
    pub days: Option<u16>,
    /// A permanent restore: back to the standard tier for good.
    #[arg(long)]
    pub permanent: bool,
}

/// Restores one snapshot's tier (`RestoreSnapshotTier`); with --dry-run EC2
/// only checks the request.
pub(crate) async fn exec_restore(ctx: &Context, args: RestoreArgs) -> Result<(), CliError> {
    let restore = match args.days {
        Some(days) => TierRestore::Temporary { days },
        None => TierRestore::Permanent,
    };
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let done = trim::restore_tier(&ec2, &region, &args.snapshot, restore, ctx.global.dry_run)
        .await
        .map_err(|e| match e {
            RestoreTierError::Ec2(e) => CliError::Ec2(e),
            e @ RestoreTierError::NotFound { .. } => CliError::Usage(e.to_string()),
            e @ RestoreTierError::NotArchived { .. } => CliError::Usage(e.to_string()),
            e => CliError::Failed(e.to_string()),
        })?;
    match ctx.output() {
        OutputFormat::Json => output::json(&done)?,
        OutputFormat::Table => {
            let what = match done.restore {
                TierRestore::Temporary { days } => format!("for {days} day(s)"),
                TierRestore::Permanent => "permanently (to the standard tier)".to_owned(),
            };
            if done.dry_run {
                println!("dry run: would restore {} {what}", done.id);
            } else {
                println!(
                    "{}: restoring {what} (EC2 accepted; on AWS a restore takes hours)",
                    done.id
                );
            }
        }
    }
    Ok(())
}
