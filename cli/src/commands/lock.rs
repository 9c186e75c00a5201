//! `ektool lock` / `ektool unlock`: hold an environment's deploy lock by
//! hand (an incident: nobody deploys) and release it
//! ([`deploykit::Deployer::hold`], [`deploykit::Deployer::release_hold`]).

use super::deploy::{Target, deployer, environment, hosts, lock_wait};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool lock`.
#[derive(Debug, clap::Args)]
pub(crate) struct LockArgs {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Why: shown to everyone whose deploy meets the lock.
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: String,
    /// Wait this long for a lock already held (a running deploy): a
    /// duration with a unit (`90s`, `15m`), 0s to 24h (default: fail at
    /// once).
    #[arg(long, value_name = "DURATION", value_parser = super::deploy::parse_lock_wait)]
    pub lock_wait: Option<std::time::Duration>,
}

/// Arguments of `ektool unlock`.
#[derive(Debug, clap::Args)]
pub(crate) struct UnlockArgs {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
}

/// Runs `ektool lock`.
pub(crate) async fn exec_lock(ctx: &Context, args: LockArgs) -> Result<(), CliError> {
    if args.message.trim().is_empty() {
        return Err(CliError::Usage(
            "say why with -m (it is shown to whoever meets the lock)".into(),
        ));
    }
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let d = deployer(ctx, &name, env, hosts)
        .message(Some(args.message.clone()))
        .lock_wait(lock_wait(args.lock_wait));
    let dry = ctx.global.dry_run;
    let report = if dry {
        d.hold_plan().await?
    } else {
        d.hold().await?
    };
    if ctx.output() == OutputFormat::Json {
        return output::json(&serde_json::json!({
            "event": if dry { "would_lock" } else { "held" },
            "report": report,
        }));
    }
    println!(
        "{} {} host{} of {} by hand: {:?}",
        if dry { "would lock" } else { "locked" },
        report.hosts.len(),
        if report.hosts.len() == 1 { "" } else { "s" },
        report.environment,
        args.message
    );
    for h in &report.hosts {
        println!("  {h}");
    }
    if dry {
        println!("dry run: nothing was changed");
    } else {
        println!(
            "deploys, rollbacks and restarts refuse (or wait) until `ektool unlock --env {name}`"
        );
    }
    Ok(())
}

/// Runs `ektool unlock`.
pub(crate) async fn exec_unlock(ctx: &Context, args: UnlockArgs) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let d = deployer(ctx, &name, env, hosts);
    let dry = ctx.global.dry_run;
    let outcomes = if dry {
        d.release_hold_plan().await?
    } else {
        d.release_hold().await?
    };
    super::deploy::unlock::render(ctx, &outcomes, dry)
}
