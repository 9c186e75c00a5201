//! `ektool deploy check`: pre-flight checks of every host of an
//! environment (see [`deploykit::check`]), one table, exit 1 on any
//! failure.

use std::path::PathBuf;

use deploykit::environment::ByteSize;
use deploykit::git::LocalRepo;

use super::{Target, deployer, environment, hosts};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool deploy check`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// The free space wanted on each host's deploy-root filesystem
    /// (`1GiB`, `500MB`; default: the environment's `min_free`, else 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub min_free: Option<ByteSize>,
    /// The local git repository whose remote hosts fetch from, when the
    /// environment has no `repository` (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub repo: PathBuf,
}

fn parse_size(text: &str) -> Result<ByteSize, String> {
    ByteSize::parse(text).map_err(|e| e.to_string())
}

/// Runs `ektool deploy check`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let json = ctx.output() == OutputFormat::Json;
    let quiet = ctx.global.quiet;
    // Progress on stderr; with --output json stdout holds the rows only.
    let mut d = deployer(ctx, &name, env, hosts).on_event(move |e| {
        if !json && !quiet {
            eprintln!("{e}");
        }
    });
    if env.repository.is_none() {
        // The same URL a deploy from here would give the hosts; without a
        // clone the git row says what is missing.
        if let Ok(url) = LocalRepo::open(&args.repo).and_then(|r| r.remote_url(&env.remote)) {
            d = d.repository(url);
        }
    }
    let report = d.check(args.min_free).await?;
    if json {
        output::json_array(&report.rows)?;
    } else {
        output::table(
            &["HOST", "CHECK", "RESULT", "DETAIL"],
            report.rows.iter().map(|r| {
                vec![
                    r.host.clone(),
                    r.check.to_string(),
                    r.result.to_string(),
                    r.detail.clone(),
                ]
            }),
        );
    }
    let failed: Vec<_> = report.failures().collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut hosts: Vec<&str> = failed.iter().map(|r| r.host.as_str()).collect();
    hosts.dedup();
    Err(CliError::Failed(format!(
        "{} check{} failed on {} host{} of {}",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        report.environment
    )))
}
