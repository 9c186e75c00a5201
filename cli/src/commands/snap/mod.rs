//! `ektool snap …`: the snapshot lifecycle.

pub mod backup;
pub mod count;
pub mod list;
pub mod plan;
pub mod policy;
pub mod trim;

use crate::context::Context;
use crate::error::CliError;

/// `ektool snap …`.
#[derive(Debug, clap::Subcommand)]
pub enum SnapCommand {
    /// Back up instances by tag (one crash-consistent set each), or volumes.
    Backup(backup::Args),
    /// List the snapshots ektool made (the inventory format `plan` reads).
    List(list::Args),
    /// Run a retention policy offline over an inventory file.
    Plan(plan::Args),
    /// Apply a retention policy: plan, show (--dry-run), delete.
    Trim(trim::Args),
    /// Delete the snapshots in `error` state that ektool made.
    DeleteBroken(trim::BrokenArgs),
    /// Count snapshots per region against a warning threshold.
    Count(count::Args),
}

/// Runs `ektool snap …`.
pub async fn exec(ctx: &Context, cmd: SnapCommand) -> Result<(), CliError> {
    match cmd {
        SnapCommand::Backup(a) => backup::exec(ctx, a).await,
        SnapCommand::List(a) => list::exec(ctx, a).await,
        SnapCommand::Plan(a) => plan::exec(ctx, a),
        SnapCommand::Trim(a) => trim::exec(ctx, a).await,
        SnapCommand::DeleteBroken(a) => trim::exec_broken(ctx, a).await,
        SnapCommand::Count(a) => count::exec(ctx, a).await,
    }
}
