//! `ektool host sync`: rsync a directory from one host to another, run on
//! the source host, with the destination's host key checked.

use std::path::PathBuf;
use std::time::Duration;

use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{RemoteError, SshRemote, SshTarget};
use snapkit::rsync::{self, Destination, SyncSpec};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool host sync`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The source: `[user@]host[:port]:/path` (the directory's contents are copied).
    #[arg(value_name = "SRC_HOST:/PATH")]
    pub source: String,
    /// The destination: `[user@]host[:port]:/path`. Its host key must be
    /// trusted (`ektool host trust`); the source host reaches it at the
    /// same address.
    #[arg(value_name = "DST_HOST:/PATH")]
    pub destination: String,
    /// Exclude a pattern (rsync syntax; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Leave out the default excludes (shell histories, SSH host keys and
    /// moduli, persistent-net rules, /var/lib/ec2, /mnt, /proc, /tmp).
    #[arg(long)]
    pub no_default_excludes: bool,
    /// Run rsync with --dry-run: report what would be copied and deleted,
    /// change no file (the temporary key is still added and removed).
    #[arg(long)]
    pub check: bool,
    /// The destination user's authorized_keys, where the temporary key
    /// goes (`~/` is that user's home).
    #[arg(long, value_name = "PATH", default_value = rsync::DEFAULT_AUTHORIZED_KEYS)]
    pub authorized_keys: String,
    /// rsync's I/O timeout: a copy that stalls this long fails (1s to 1d,
    /// e.g. 10m).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::commands::snap::durations::io_timeout)]
    pub io_timeout: Duration,
    /// Private key to log in to both hosts with (repeatable; before the agent).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// known_hosts file (default from config, then ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

/// Splits `[user@]host[:port]:/path` at the `:/` that starts the path.
fn split(ctx: &Context, s: &str) -> Result<(SshTarget, String), CliError> {
    let usage = || CliError::Usage(format!("{s:?}: expected [user@]host[:port]:/absolute/path"));
    let (host, path) = s.split_once(":/").ok_or_else(usage)?;
    let target = SshTarget::parse_with_user(host, &ctx.ssh_user())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok((target, format!("/{path}")))
}

/// Runs `ektool host sync`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (src, src_path) = split(ctx, &args.source)?;
    let (dst, dst_path) = split(ctx, &args.destination)?;
    let options = ctx.ssh_options_with(args.known_hosts.as_deref(), &args.identity);

    // The destination must be trusted already: its recorded key is what
    // the source host will check. Nothing runs anywhere before this.
    let (key, status) =
        ssh::fetch_host_key(&dst, &options.known_hosts, options.connect_timeout).await?;
    match status {
        HostKeyStatus::Trusted => {}
        HostKeyStatus::Unknown => {
            return Err(RemoteError::UnknownHostKey {
                host: dst.to_string(),
                key_type: key.key_type,
                fingerprint: key.fingerprint,
            }
            .into());
        }
        HostKeyStatus::Changed => {
            return Err(RemoteError::HostKeyMismatch {
                host: dst.to_string(),
                key_type: key.key_type,
                fingerprint: key.fingerprint,
            }
            .into());
        }
    }

    let mut spec = SyncSpec::new(
        src.to_string(),
        src_path,
        Destination {
            user: dst.user.clone(),
            host: dst.host.clone(),
            port: dst.port,
            key_type: key.key_type.clone(),
            key_base64: key.key_base64.clone(),
        },
        dst_path,
    );
    spec.excludes = args.exclude.clone();
    spec.default_excludes = !args.no_default_excludes;
    spec.authorized_keys = args.authorized_keys.clone();
    spec.check_only = args.check;
    spec.io_timeout = args.io_timeout;
    spec.validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;

    if ctx.global.dry_run {
        let plan = rsync::plan(&spec);
        return match ctx.output() {
            OutputFormat::Json => output::json(&plan),
            OutputFormat::Table => {
                println!(
                    "would copy {}:{}/ to {}:{}/",
                    plan.source_host,
                    plan.source_path.trim_end_matches('/'),
                    plan.destination_host,
                    plan.destination_path.trim_end_matches('/')
                );
                println!(
                    "  destination host key  {} {}",
                    key.key_type, key.fingerprint
                );
                println!(
                    "  temporary key         {} in {} on the destination",
                    plan.key_options, plan.authorized_keys
                );
                println!(
                    "                        (plus command=\"rrsync -wo …\" and from=… where the hosts allow)"
                );
                println!("  on the source         {}", plan.command);
                println!("dry run: nothing changed");
                Ok(())
            }
        };
    }

    let source = SshRemote::new(src, options.clone());
    let destination = SshRemote::new(dst, options);
    let report = rsync::sync(&source, &destination, &spec).await?;
    match ctx.output() {
        OutputFormat::Json => output::json(&report),
        OutputFormat::Table => {
            let s = &report.stats;
            let p = &report.plan;
            println!(
                "{} {}:{}/ -> {}:{}/",
                if p.check_only { "checked" } else { "synced" },
                p.source_host,
                p.source_path.trim_end_matches('/'),
                p.destination_host,
                p.destination_path.trim_end_matches('/')
            );
            let verb = if p.check_only { "would be " } else { "" };
            println!(
                "  files  {} considered, {} {verb}transferred, {} {verb}deleted",
                s.files, s.files_transferred, s.files_deleted
            );
            println!(
                "  bytes  {} in total, {} {verb}transferred; {} sent, {} received",
                s.total_size, s.transferred_size, s.bytes_sent, s.bytes_received
            );
            let stale = match report.stale_keys_removed {
                0 => String::new(),
                n => format!("; {n} stale key(s) of earlier runs removed"),
            };
            println!("  temporary key removed from the destination again{stale}");
            for n in &report.notes {
                eprintln!("note: {n}");
            }
            Ok(())
        }
    }
}
