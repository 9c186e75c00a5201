//! `ektool maintenance on|off`.

use super::{Target, deployer, environment, hosts, lock_wait};
use crate::context::Context;
use crate::error::CliError;

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Switch {
    /// Set the flag file, run the maintenance hooks with MAINTENANCE=on.
    On,
    /// Remove the flag file, run the maintenance hooks with MAINTENANCE=off.
    Off,
}

/// Arguments of `ektool maintenance`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// `on` or `off`.
    pub state: Switch,
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Wait this long for another deploy's lock: a duration with a unit
    /// (`90s`, `15m`), 0s to 24h (default: fail at once).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    pub lock_wait: Option<std::time::Duration>,
}

/// Runs `ektool maintenance`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let on = args.state == Switch::On;
    if ctx.global.dry_run {
        println!(
            "would {} shared/{} on {} host(s) and run {} maintenance hook(s)",
            if on { "create" } else { "remove" },
            env.maintenance_file,
            hosts.len(),
            env.hooks.maintenance.len()
        );
        return Ok(());
    }
    let d = deployer(ctx, &name, env, hosts).lock_wait(lock_wait(args.lock_wait));
    d.maintenance(on).await?;
    eprintln!("maintenance {} on {}", if on { "on" } else { "off" }, name);
    Ok(())
}
