//! `ektool snap …`: the snapshot lifecycle.

pub mod backup;
pub mod count;
pub mod list;
pub mod mount;
pub mod plan;
pub mod policy;
pub mod replicate;
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
    /// Copy the newest snapshot of every lineage into another region.
    Replicate(replicate::Args),
    /// Every other region into a primary, then the primary into a secondary.
    ReplicateAll(replicate::AllArgs),
    /// How far each lineage's copies in another region are behind.
    Lag(replicate::LagArgs),
    /// Mount a snapshot read-only on an instance (a new volume from it,
    /// attached on a free device, mounted without journal replay).
    Mount(mount::MountArgs),
    /// Undo a mount: unmount, detach, delete the volume (idempotent).
    Unmount(mount::UnmountArgs),
    /// Remove mount volumes left behind by crashed runs.
    Cleanup(mount::CleanupArgs),
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
        SnapCommand::Replicate(a) => replicate::exec(ctx, a).await,
        SnapCommand::ReplicateAll(a) => replicate::exec_all(ctx, a).await,
        SnapCommand::Lag(a) => replicate::exec_lag(ctx, a).await,
        SnapCommand::Mount(a) => mount::exec_mount(ctx, a).await,
        SnapCommand::Unmount(a) => mount::exec_unmount(ctx, a).await,
        SnapCommand::Cleanup(a) => mount::exec_cleanup(ctx, a).await,
    }
}
