//! `ektool rollback`: back to the previous good release, or `--to NAME`.

use deploykit::RollbackStep;

use super::{Target, deployer, environment, hosts, lock_wait};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool rollback`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// The release directory to go to (default: the previous good one in
    /// the release log).
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    /// Wait this long for another deploy's lock: a duration with a unit
    /// (`90s`, `15m`), 0s to 24h (default: fail at once).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    pub lock_wait: Option<std::time::Duration>,
    /// Why: recorded in the log and notifications.
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
}

/// Runs `ektool rollback`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let d = deployer(ctx, &name, env, hosts)
        .lock_wait(lock_wait(args.lock_wait))
        .message(args.message.clone());
    if ctx.global.dry_run {
        let steps = d.rollback_plan(args.to.as_deref()).await?;
        if ctx.output() == OutputFormat::Json {
            return output::json(&steps);
        }
        table(&steps);
        println!("dry run: nothing was changed");
        return Ok(());
    }
    let report = d.rollback(args.to.as_deref()).await?;
    if ctx.output() == OutputFormat::Json {
        output::json(&serde_json::json!({ "event": "rolled_back", "report": report }))?;
    } else {
        println!(
            "{} rolled back on {} host(s) in {:.1}s",
            report.environment,
            report.hosts.len(),
            report.seconds
        );
        table(&report.hosts);
    }
    if report.hook_failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "switched back, but hooks failed: {}",
            report
                .hook_failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }
}

fn table(steps: &[RollbackStep]) {
    output::table(
        &["HOST", "FROM", "TO", "COMMIT", "TAG", "ACTION"],
        steps.iter().map(|s| {
            vec![
                s.host.clone(),
                s.from.clone(),
                s.to.clone(),
                deploykit::short_commit(&s.commit).to_owned(),
                output::or_dash(s.tag.as_deref()),
                if s.unchanged {
                    "already there"
                } else {
                    "switched"
                }
                .to_owned(),
            ]
        }),
    );
}
