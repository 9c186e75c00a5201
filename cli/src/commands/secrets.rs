//! `ektool secrets get`: fetch an environment's secrets file from a host
//! into the local tree, 0600.

use deploykit::provision::secrets;

use super::deploy::{Target, environment, provision_config, targets};
use crate::context::Context;
use crate::error::CliError;
use crate::prompt::confirm;

/// `ektool secrets …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SecretsCommand {
    /// Download the environment's secrets file from its first host into
    /// `<tree>/secrets/<env>.sls` (mode 0600).
    Get(GetArgs),
}

/// Arguments of `ektool secrets get`.
#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// Environment and host.
    #[command(flatten)]
    pub target: Target,
    /// Log in as this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Replace a different local file without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Runs `ektool secrets …`.
pub(crate) async fn exec(ctx: &Context, cmd: SecretsCommand) -> Result<(), CliError> {
    let SecretsCommand::Get(args) = cmd;
    let (env_name, env) = environment(ctx, &args.target)?;
    let cfg = provision_config(env)?;
    // The first host (of --host, else of the environment).
    let reach = targets(ctx, env, &args.target, args.user.as_deref())
        .await?
        .remove(0);
    let host = reach.selected.target;
    let shell = ec2kit::connect_via(&host, &ctx.ssh_options(), reach.jump.as_ref());
    let Some(remote) = secrets::read_remote(shell.as_ref(), &cfg.layout()).await? else {
        return Err(CliError::Failed(format!(
            "{}: has no secrets for {env_name}",
            host
        )));
    };
    let path = secrets::local_path(&cfg.tree, &env_name);
    if let Ok(local) = std::fs::read(&path) {
        if local == remote {
            eprintln!("{} is already the same as on {}", path.display(), host);
            return Ok(());
        }
        eprintln!("{} differs from {}'s:", path.display(), host);
        for c in secrets::diff(
            &String::from_utf8_lossy(&local),
            &String::from_utf8_lossy(&remote),
        ) {
            eprintln!("  {c}");
        }
        if ctx.global.dry_run {
            println!(
                "would replace {} (0600) with {}'s{}",
                path.display(),
                host,
                if args.yes {
                    ""
                } else {
                    " after you confirm it (dry run: not asked)"
                }
            );
            return Ok(());
        }
        if !args.yes && !confirm("Replace the local file with the host's?") {
            return Err(CliError::Failed(
                "not confirmed; the local file is unchanged".into(),
            ));
        }
    }
    if ctx.global.dry_run {
        println!("would write {} (0600)", path.display());
        return Ok(());
    }
    secrets::write_local(&path, &remote)?;
    println!("wrote {} (0600) from {}", path.display(), host);
    Ok(())
}
