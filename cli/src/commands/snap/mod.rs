//! `ektool snap …`: the snapshot lifecycle.

pub(crate) mod backup;
pub(crate) mod check;
mod check_accounts;
pub(crate) mod count;
pub(crate) mod list;
pub(crate) mod mount;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod replicate;
pub(crate) mod tier;
pub(crate) mod trim;
pub(crate) mod vault;
pub(crate) mod verify;

use crate::notify::Watch;
use std::path::PathBuf;
use std::time::Duration;

use snapkit::metrics::Metrics;

use crate::context::Context;
use crate::error::CliError;

/// `--metrics FILE` of `snap backup`, `trim`, `replicate` and `check`:
/// what the run adds, then the run's start, end and success, written
/// atomically whatever the outcome.
pub(crate) struct MetricsOut {
    path: Option<PathBuf>,
    started: jiff::Timestamp,
    /// What the command adds while it runs.
    pub(crate) metrics: Metrics,
}

impl MetricsOut {
    /// Starts the clock.
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            started: jiff::Timestamp::now(),
            metrics: Metrics::new(),
        }
    }

    /// Writes the file (when asked) and passes the result on; a file that
    /// cannot be written fails a run that succeeded.
    pub(crate) fn finish(
        mut self,
        command: &str,
        result: Result<(), CliError>,
    ) -> Result<(), CliError> {
        let Some(path) = &self.path else {
            return result;
        };
        self.metrics.run(
            command,
            self.started,
            jiff::Timestamp::now(),
            result.is_ok(),
        );
        let written = snapkit::metrics::write_atomic(path, &self.metrics.render())
            .map_err(|e| CliError::Failed(format!("--metrics {}: {e}", path.display())));
        match (result, written) {
            (Ok(()), w) => w,
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(w)) => {
                eprintln!("error: {w}");
                Err(e)
            }
        }
    }
}

/// Duration flags of the snapshot, AMI, instance and sync commands: one
/// parser (`ec2kit::duration`: `90s`, `15m`, `2h`, `7d`; a bare number is
/// refused with a hint) and a documented range per flag. Each function is
/// a clap `value_parser`.
pub(crate) mod durations {
    use super::Duration;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn within(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
        ec2kit::duration::parse_in(s, min, max).map_err(|e| e.to_string())
    }

    /// `snap backup --window`: 1m to 31d.
    pub(crate) fn window(s: &str) -> Result<Duration, String> {
        within(s, MINUTE, 31 * DAY)
    }

    /// `snap backup --wait-timeout`: 1m to 7d.
    pub(crate) fn backup_wait(s: &str) -> Result<Duration, String> {
        within(s, MINUTE, 7 * DAY)
    }

    /// `snap mount|unmount|cleanup --wait-timeout`: 10s to 1h.
    pub(crate) fn mount_wait(s: &str) -> Result<Duration, String> {
        within(s, Duration::from_secs(10), HOUR)
    }

    /// `snap cleanup --older-than`: 0s (every age) to 10 years.
    pub(crate) fn older_than(s: &str) -> Result<Duration, String> {
        within(s, Duration::ZERO, 3653 * DAY)
    }

    /// `snap replicate --poll`: 1s to 10m.
    pub(crate) fn poll(s: &str) -> Result<Duration, String> {
        within(s, Duration::from_secs(1), 10 * MINUTE)
    }

    /// `snap lag --max-lag` and `replicate --max-lag`: 1m to 10 years.
    pub(crate) fn max_lag(s: &str) -> Result<Duration, String> {
        within(s, MINUTE, 3653 * DAY)
    }

    /// `ami … --sibling-window`: 0s to 1d.
    pub(crate) fn sibling_window(s: &str) -> Result<Duration, String> {
        within(s, Duration::ZERO, DAY)
    }

    /// `host sync --io-timeout`: 1s to 1d.
    pub(crate) fn io_timeout(s: &str) -> Result<Duration, String> {
        within(s, Duration::from_secs(1), DAY)
    }

    /// A `Duration` as jiff's signed duration (every range above fits).
    pub(crate) fn signed(d: Duration) -> jiff::SignedDuration {
        jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
    }
}

/// `ektool snap …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SnapCommand {
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
    /// Is the newest completed snapshot of every volume recent enough?
    /// (missing, stale and `error` ones exit 1, one line each)
    Check(check::Args),
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
    /// Bring an archived snapshot back from the archive tier, for some days
    /// (--days) or for good (--permanent).
    RestoreTier(tier::RestoreArgs),
    /// Restore tests: the newest snapshot of each lineage mounted on a
    /// scratch instance and checked, then removed; the verdict is tagged
    /// on the snapshot (a test that did not pass exits 1).
    Verify(verify::Args),
}

/// Runs `ektool snap …`: `backup`, `trim`, `check` and `replicate` with
/// `[notify]`'s heartbeat and webhook ([`Watch`]) and `--metrics`.
pub(crate) async fn exec(ctx: &Context, cmd: SnapCommand) -> Result<(), CliError> {
    match cmd {
        SnapCommand::Backup(a) => {
            let watch = Watch::new(&ctx.config);
            watch.start().await;
            let mut m = MetricsOut::new(a.metrics.clone());
            let mut lines = Vec::new();
            let r = backup::exec(ctx, a, &mut m.metrics, &mut lines).await;
            watch.finish_command("snap backup", &r, &lines).await;
            m.finish("snap backup", r)
        }
        SnapCommand::List(a) => list::exec(ctx, a).await,
        SnapCommand::Plan(a) => plan::exec(ctx, a),
        SnapCommand::Trim(a) => {
            let watch = Watch::new(&ctx.config);
            watch.start().await;
            let mut m = MetricsOut::new(a.metrics.clone());
            let r = trim::exec(ctx, a, &mut m.metrics).await;
            watch.finish_command("snap trim", &r, &[]).await;
            m.finish("snap trim", r)
        }
        SnapCommand::DeleteBroken(a) => trim::exec_broken(ctx, a).await,
        SnapCommand::Count(a) => count::exec(ctx, a).await,
        SnapCommand::Check(a) => {
            let watch = Watch::new(&ctx.config);
            watch.start().await;
            let mut m = MetricsOut::new(a.metrics.clone());
            let mut lines = Vec::new();
            let r = check::exec(ctx, a, &mut m.metrics, &mut lines).await;
            watch.finish_command("snap check", &r, &lines).await;
            m.finish("snap check", r)
        }
        SnapCommand::Replicate(a) => {
            let watch = Watch::new(&ctx.config);
            watch.start().await;
            let mut m = MetricsOut::new(a.metrics.clone());
            let r = replicate::exec(ctx, a, &mut m.metrics).await;
            watch.finish_command("snap replicate", &r, &[]).await;
            m.finish("snap replicate", r)
        }
        SnapCommand::ReplicateAll(a) => replicate::exec_all(ctx, a).await,
        SnapCommand::Lag(a) => replicate::exec_lag(ctx, a).await,
        SnapCommand::Mount(a) => mount::exec_mount(ctx, a).await,
        SnapCommand::Unmount(a) => mount::exec_unmount(ctx, a).await,
        SnapCommand::Cleanup(a) => mount::exec_cleanup(ctx, a).await,
        SnapCommand::RestoreTier(a) => tier::exec_restore(ctx, a).await,
        SnapCommand::Verify(a) => verify::exec(ctx, a).await,
    }
}
