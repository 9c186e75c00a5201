//! `ektool deploy unlock`: remove a lock left by a killed deploy.

use super::{Target, deployer, environment, hosts};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool deploy unlock`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Remove the lock even if its deploy looks alive.
    #[arg(long)]
    pub force: bool,
}

/// Runs `ektool deploy unlock`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let d = deployer(ctx, &name, env, hosts);
    let dry = ctx.global.dry_run;
    let outcomes = if dry {
        d.unlock_plan(args.force).await?
    } else {
        d.unlock(args.force).await?
    };
    render(ctx, &outcomes, dry)
}

/// What was (or would be, `dry`) removed on each host: a table, or JSON.
pub(crate) fn render(
    ctx: &Context,
    outcomes: &[deploykit::UnlockOutcome],
    dry: bool,
) -> Result<(), CliError> {
    if ctx.output() == OutputFormat::Json {
        return output::json(outcomes);
    }
    output::table(
        &["HOST", "LOCK", if dry { "WOULD REMOVE" } else { "REMOVED" }],
        outcomes.iter().map(|o| {
            vec![
                o.host.clone(),
                o.lock.as_ref().map_or("-".to_owned(), ToString::to_string),
                if o.removed { "yes" } else { "-" }.to_owned(),
            ]
        }),
    );
    if dry {
        println!("dry run: nothing was changed");
    }
    Ok(())
}
