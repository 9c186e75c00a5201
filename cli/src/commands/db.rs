//! `ektool db dump` / `db load`: pg_dump and psql through SSH; the SQL
//! travels over the channel, never as a file on the server, and is
//! streamed both ways (memory stays bounded whatever the database size).

use std::path::PathBuf;

use deploykit::db;

use super::deploy::{Target, environment, targets};
use crate::context::Context;
use crate::error::CliError;

/// `ektool db …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DbCommand {
    /// Dump the environment's database (plain SQL, no owners) to a local file.
    Dump(DumpArgs),
    /// Load a SQL file (as `db dump` writes it) into the environment's
    /// database, in one transaction: a truncated file or an interrupted
    /// load commits nothing.
    Load(LoadArgs),
}

/// Arguments of `ektool db dump`.
#[derive(Debug, clap::Args)]
pub(crate) struct DumpArgs {
    /// Environment and host (the first host by default).
    #[command(flatten)]
    pub target: Target,
    /// Where to write (mode 0600); `-` for standard output. Default:
    /// `<db>-<env>-<UTC time>.sql`.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

/// Arguments of `ektool db load`.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Environment and host (the first host by default).
    #[command(flatten)]
    pub target: Target,
    /// The SQL file (as `db dump` writes it).
    pub file: PathBuf,
    /// Load into a protected environment (production) anyway.
    #[arg(long)]
    pub allow_production: bool,
}

/// Runs `ektool db …`.
pub(crate) async fn exec(ctx: &Context, cmd: DbCommand) -> Result<(), CliError> {
    let target = match &cmd {
        DbCommand::Dump(a) => &a.target,
        DbCommand::Load(a) => &a.target,
    };
    let (env_name, env) = environment(ctx, target)?;
    let cfg = env.database.clone().ok_or_else(|| {
        CliError::Usage(format!(
            "environment {env_name} has no [environments.{env_name}.database] section"
        ))
    })?;
    // The first host (of --host, else of the environment).
    let reach = targets(ctx, env, target, None).await?.remove(0);
    let host = reach.selected.target;
    let remote = ec2kit::connect_via(&host, &ctx.ssh_options(), reach.jump.as_ref());
    match cmd {
        DbCommand::Dump(args) => {
            if ctx.global.dry_run {
                println!("would run on {}: {}", host, cfg.dump_command());
                return Ok(());
            }
            let cancel = Some(ctx.interrupt.clone());
            match args.output_file {
                Some(p) if p.as_os_str() == "-" => {
                    db::dump(remote.as_ref(), &cfg, std::io::stdout(), cancel).await?;
                    Ok(())
                }
                other => {
                    let path = other.unwrap_or_else(|| {
                        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
                        PathBuf::from(format!("{}-{env_name}-{now}.sql", cfg.name))
                    });
                    let bytes = db::dump_to_file(remote.as_ref(), &cfg, &path, cancel).await?;
                    eprintln!(
                        "dumped {} from {} to {} ({bytes} bytes)",
                        cfg.name,
                        host,
                        path.display(),
                    );
                    Ok(())
                }
            }
        }
        DbCommand::Load(args) => {
            if !db::is_complete_dump_file(&args.file)? {
                return Err(CliError::Usage(format!(
                    "{} is not a complete pg_dump file (its end lacks \"-- PostgreSQL database dump complete\"): truncated?",
                    args.file.display()
                )));
            }
            if cfg.is_protected(&env_name) && !args.allow_production {
                return Err(db::DbError::Protected {
                    env: env_name,
                    name: cfg.name,
                }
                .into());
            }
            if ctx.global.dry_run {
                println!(
                    "would load {} into {} on {}: {}",
                    args.file.display(),
                    cfg.name,
                    host,
                    cfg.load_command()
                );
                return Ok(());
            }
            let bytes = db::load(
                remote.as_ref(),
                &env_name,
                &cfg,
                std::io::BufReader::with_capacity(
                    256 * 1024,
                    std::fs::File::open(&args.file).map_err(|source| CliError::Io {
                        path: args.file.clone(),
                        source,
                    })?,
                ),
                args.allow_production,
                Some(ctx.interrupt.clone()),
            )
            .await?;
            eprintln!(
                "loaded {} into {} on {} ({bytes} bytes)",
                args.file.display(),
                cfg.name,
                host
            );
            Ok(())
        }
    }
}
