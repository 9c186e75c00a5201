//! One module per verb: each has clap `Args` and an `exec` that calls the
//! libraries.

pub(crate) mod ami;
pub(crate) mod audit;
pub(crate) mod completions;
pub(crate) mod config;
pub(crate) mod db;
pub(crate) mod deploy;
pub(crate) mod fleet_run;
pub(crate) mod host;
pub(crate) mod iam;
pub(crate) mod instance;
pub(crate) mod instances;
pub(crate) mod lock;
pub(crate) mod manpage;
pub(crate) mod provision;
pub(crate) mod regions;
pub(crate) mod run;
pub(crate) mod schedule;
pub(crate) mod secrets;
pub(crate) mod snap;

use clap::CommandFactory;

use crate::args::{Cli, Command};
use crate::context::Context;
use crate::error::CliError;

/// Runs the parsed command line.
pub(crate) async fn run(cli: Cli, interrupt: ec2kit::CancellationToken) -> Result<(), CliError> {
    match cli.command {
        // These need no config: they must work even when the config is broken.
        Command::Completions(args) => completions::exec(args, Cli::command()),
        Command::Manpage(args) => manpage::exec(args, Cli::command()),
        Command::IamPolicy(args) => {
            // `--trust` takes the external id and role template from the
            // config when it loads (the policy itself never needs it).
            let config = args
                .trust
                .as_ref()
                .and_then(|_| crate::config::Config::load(cli.global.config.as_deref()).ok());
            let vault = config
                .as_ref()
                .and_then(|c| c.vault.as_ref())
                .map(|v| v.account.clone());
            let accounts = config.and_then(|c| c.accounts);
            let external_id = cli
                .global
                .external_id
                .clone()
                .or_else(|| accounts.as_ref().and_then(|a| a.external_id.clone()));
            let role = accounts
                .and_then(|a| a.role)
                .unwrap_or_else(|| ec2kit::accounts::DEFAULT_ROLE_TEMPLATE.to_owned());
            iam::exec(
                args,
                cli.global.output,
                external_id.as_deref(),
                &role,
                vault.as_ref(),
            )
        }
        command => {
            let ctx = Context::load(cli.global, interrupt)?;
            if !matches!(command, Command::Config | Command::Schedule(_)) {
                // `--account`: whose credentials these are, before any
                // other call.
                ctx.check_account().await?;
            }
            match command {
                Command::Config => config::exec(&ctx),
                Command::Regions(args) => regions::exec(&ctx, args).await,
                Command::Instances(args) => instances::exec(&ctx, args).await,
                Command::Host(args) => host::exec(&ctx, args).await,
                Command::Snap(args) => snap::exec(&ctx, args).await,
                Command::Ami(args) => ami::exec(&ctx, args).await,
                Command::Instance(args) => instance::exec(&ctx, args).await,
                Command::Tags(args) => instance::exec_tags(&ctx, args).await,
                Command::Completions(_) | Command::Manpage(_) | Command::IamPolicy(_) => {
                    unreachable!("handled above")
                }
                Command::Deploy(args) => deploy::exec(&ctx, args).await,
                Command::Rollback(args) => deploy::rollback::exec(&ctx, args).await,
                Command::Releases(args) => deploy::releases::exec(&ctx, args).await,
                Command::Maintenance(args) => deploy::maintenance::exec(&ctx, args).await,
                Command::Restart(args) => deploy::restart::exec(&ctx, args).await,
                Command::Lock(args) => lock::exec_lock(&ctx, args).await,
                Command::Unlock(args) => lock::exec_unlock(&ctx, args).await,
                Command::Audit(args) => audit::exec(&ctx, args).await,
                Command::Provision(args) => provision::exec(&ctx, args).await,
                Command::Secrets(args) => secrets::exec(&ctx, args).await,
                Command::Db(args) => db::exec(&ctx, args).await,
                Command::Run(args) => run::exec(&ctx, args).await,
                Command::Schedule(args) => schedule::exec(&ctx, args),
            }
        }
    }
}
