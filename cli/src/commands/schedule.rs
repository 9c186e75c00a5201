//! `ektool schedule systemd|cron JOB`: the files a scheduler runs a job
//! from ([`ektool::jobs::systemd_units`], [`ektool::jobs::cron_line`]),
//! with this binary's and the config file's absolute paths.

use std::path::{Path, PathBuf};

use ektool::jobs;

use crate::context::Context;
use crate::error::CliError;

/// `ektool schedule`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Print (or write with --dir) a systemd service and timer running the job.
    Systemd(SystemdArgs),
    /// Print a crontab line running the job.
    Cron(CronArgs),
}

/// Arguments of `ektool schedule systemd`.
#[derive(Debug, clap::Args)]
pub(crate) struct SystemdArgs {
    /// The job: a `[jobs.<name>]` of the config.
    pub job: String,
    /// Write `ektool-JOB.service` and `ektool-JOB.timer` into this
    /// directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Arguments of `ektool schedule cron`.
#[derive(Debug, clap::Args)]
pub(crate) struct CronArgs {
    /// The job: a `[jobs.<name>]` of the config.
    pub job: String,
}

/// Renders the schedule asked for.
pub(crate) fn exec(ctx: &Context, command: ScheduleCommand) -> Result<(), CliError> {
    let name = match &command {
        ScheduleCommand::Systemd(a) => a.job.clone(),
        ScheduleCommand::Cron(a) => a.job.clone(),
    };
    let name = name.as_str();
    let job = jobs::job(&ctx.config, name).map_err(|e| CliError::Usage(e.to_string()))?;
    let binary = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| CliError::Failed(format!("the ektool binary's path: {e}")))?;
    let Some(config) = ctx.config.path.as_deref() else {
        return Err(CliError::Usage(
            "no config file: a scheduled job runs from one (--config FILE)".into(),
        ));
    };
    let config = absolute(config)?;
    match command {
        ScheduleCommand::Systemd(a) => {
            let units = jobs::systemd_units(name, job, &binary, &config);
            match &a.dir {
                Some(dir) => {
                    for (ext, text) in [("service", &units.service), ("timer", &units.timer)] {
                        let path = dir.join(format!("{}.{ext}", units.name));
                        std::fs::write(&path, text)
                            .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))?;
                        println!("{}", path.display());
                    }
                }
                None => {
                    println!("# {}.service\n{}", units.name, units.service);
                    print!("# {}.timer\n{}", units.name, units.timer);
                }
            }
        }
        ScheduleCommand::Cron(_) => {
            let line = jobs::cron_line(name, job, &binary, &config)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            println!("{line}");
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|e| CliError::Failed(format!("config {}: {e}", path.display())))
}
