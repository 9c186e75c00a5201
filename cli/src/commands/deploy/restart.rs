//! `ektool restart`: the restart hooks, in the live release, on every host.

use super::{Target, deployer, environment, hosts, lock_wait};
use crate::context::Context;
use crate::error::CliError;

/// Arguments of `ektool restart`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Wait this long for another deploy's lock: a duration with a unit
    /// (`90s`, `15m`), 0s to 24h (default: fail at once).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    pub lock_wait: Option<std::time::Duration>,
}

/// Runs `ektool restart`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    if ctx.global.dry_run {
        println!(
            "would run {} restart hook(s) on {} host(s)",
            env.hooks.restart.len(),
            hosts.len()
        );
        return Ok(());
    }
    deployer(ctx, &name, env, hosts)
        .lock_wait(lock_wait(args.lock_wait))
        .restart()
        .await?;
    eprintln!("restarted {name}");
    Ok(())
}
