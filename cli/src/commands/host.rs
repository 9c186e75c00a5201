//! `ektool host`: the explicit host-key trust step, and running a command.

pub(crate) mod sync;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{Command, Remote, SshRemote, SshTarget};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// `ektool host …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum HostCommand {
    /// Record a host's key in known_hosts. Shows the offered fingerprint;
    /// records it only if it equals --fingerprint (compare it with
    /// `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host), or
    /// after an interactive yes.
    Trust(TrustArgs),
    /// Run a command on a host whose key is trusted.
    Run(RunArgs),
    /// Copy a directory from one host to another with rsync, run on the
    /// source host (checksums, in place, --delete, the seed's excludes;
    /// host keys checked, a temporary restricted key).
    Sync(sync::Args),
}

/// Arguments of `ektool host trust`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrustArgs {
    /// `[user@]host[:port]`.
    pub target: String,
    /// The fingerprint you expect (`SHA256:…`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// known_hosts file to record into (default from config, then ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Reach the host through this bastion (`[user@]host[:port]`; its key
    /// must be trusted already).
    #[arg(long, value_name = "BASTION", env = "EKTOOL_JUMP")]
    pub jump: Option<String>,
}

/// Arguments of `ektool host run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// `[user@]host[:port]`.
    pub target: String,
    /// Private key to log in with (repeatable; before the agent).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// known_hosts file (default from config, then ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Kill the command after this long, e.g. `90s`, `15m` or `2h` (1s to
    /// 7d; a bare number is refused: say the unit).
    #[arg(long, value_name = "DURATION", value_parser = run_timeout)]
    pub timeout: Option<Duration>,
    /// The command: one argument is a shell script, several are a program and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn run_timeout(s: &str) -> Result<Duration, String> {
    ec2kit::duration::parse_in(s, Duration::from_secs(1), Duration::from_secs(7 * 86_400))
        .map_err(|e| e.to_string())
}

/// Runs `ektool host …`.
pub(crate) async fn exec(ctx: &Context, cmd: HostCommand) -> Result<(), CliError> {
    match cmd {
        HostCommand::Trust(args) => trust(ctx, args).await,
        HostCommand::Run(args) => run(ctx, args).await,
        HostCommand::Sync(args) => sync::exec(ctx, args).await,
    }
}

fn target(ctx: &Context, s: &str) -> Result<SshTarget, CliError> {
    SshTarget::parse_with_user(s, &ctx.ssh_user()).map_err(|e| CliError::Usage(e.to_string()))
}

async fn trust(ctx: &Context, args: TrustArgs) -> Result<(), CliError> {
    let t = target(ctx, &args.target)?;
    let options = ctx.ssh_options_with(args.known_hosts.as_deref(), &[]);
    let bastion = match &args.jump {
        Some(j) => Some(ec2kit::Bastion::shared(&target(ctx, j)?, &options)),
        None => None,
    };
    let bastion = bastion.as_ref();
    let (key, status) =
        ssh::fetch_host_key_via(&t, &options.known_hosts, options.connect_timeout, bastion).await?;
    if status == HostKeyStatus::Changed {
        return Err(ec2kit::RemoteError::HostKeyMismatch {
            host: key.host,
            key_type: key.key_type,
            fingerprint: key.fingerprint,
        }
        .into());
    }
    if ctx.global.dry_run {
        return trust_dry_run(
            ctx,
            &options.known_hosts,
            &key,
            status,
            args.fingerprint.as_deref(),
        );
    }
    let expected = match (&args.fingerprint, status) {
        (Some(fp), _) => fp.clone(),
        (None, HostKeyStatus::Trusted | HostKeyStatus::Changed) => key.fingerprint.clone(),
        (None, HostKeyStatus::Unknown) => {
            if !std::io::stdin().is_terminal() {
                return Err(CliError::Usage(format!(
                    "{} offers {} {}; to trust it non-interactively pass --fingerprint {}",
                    key.host, key.key_type, key.fingerprint, key.fingerprint
                )));
            }
            eprint!(
                "{} offers {} {}\nTrust this key and record it in {}? [y/N] ",
                key.host,
                key.key_type,
                key.fingerprint,
                options.known_hosts.display()
            );
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().lock().read_line(&mut answer);
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                return Err(CliError::Failed("not trusted; nothing recorded".into()));
            }
            key.fingerprint.clone()
        }
    };
    let (key, before) = ssh::trust_host_key_via(
        &t,
        &expected,
        &options.known_hosts,
        options.connect_timeout,
        bastion,
    )
    .await?;
    let state = if before == HostKeyStatus::Trusted {
        "already trusted"
    } else {
        "trusted"
    };
    match ctx.output() {
        OutputFormat::Json => output::json(&serde_json::json!({
            "host": key.host, "key_type": key.key_type, "fingerprint": key.fingerprint,
            "known_hosts": options.known_hosts, "status": state,
        })),
        OutputFormat::Table => {
            println!(
                "{} {} {} {state} in {}",
                key.host,
                key.key_type,
                key.fingerprint,
                options.known_hosts.display()
            );
            Ok(())
        }
    }
}

/// `host trust --dry-run`: says what a real run would do, asking nothing
/// and recording nothing.
fn trust_dry_run(
    ctx: &Context,
    known_hosts: &Path,
    key: &ssh::HostKey,
    status: HostKeyStatus,
    expected: Option<&str>,
) -> Result<(), CliError> {
    let normalise = |s: &str| {
        s.trim()
            .trim_start_matches("SHA256:")
            .trim_end_matches('=')
            .to_owned()
    };
    if let Some(fp) = expected
        && normalise(fp) != normalise(&key.fingerprint)
    {
        return Err(ec2kit::RemoteError::FingerprintMismatch {
            host: key.host.clone(),
            expected: fp.trim().to_owned(),
            actual: key.fingerprint.clone(),
        }
        .into());
    }
    let action = match (status, expected) {
        (HostKeyStatus::Trusted, _) => "already trusted; nothing to record",
        (_, Some(_)) => "would be recorded (dry run: not recorded)",
        (_, None) if std::io::stdin().is_terminal() => {
            "would be recorded after you confirm it (dry run: not asked, not recorded)"
        }
        (_, None) => {
            return Err(CliError::Usage(format!(
                "{} offers {} {}; to trust it non-interactively pass --fingerprint {}",
                key.host, key.key_type, key.fingerprint, key.fingerprint
            )));
        }
    };
    match ctx.output() {
        OutputFormat::Json => output::json(&serde_json::json!({
            "host": key.host, "key_type": key.key_type, "fingerprint": key.fingerprint,
            "known_hosts": known_hosts, "status": status, "dry_run": true,
        })),
        OutputFormat::Table => output::line(&format!(
            "{} {} {} {action} in {}",
            key.host,
            key.key_type,
            key.fingerprint,
            known_hosts.display()
        )),
    }
}

async fn run(ctx: &Context, args: RunArgs) -> Result<(), CliError> {
    let t = target(ctx, &args.target)?;
    let options = ctx.ssh_options_with(args.known_hosts.as_deref(), &args.identity);
    let mut command = match args.command.as_slice() {
        [script] => Command::shell(script.clone()),
        argv => Command::argv(argv.iter().cloned()),
    };
    if let Some(limit) = args.timeout {
        command = command.timeout(limit);
    }
    if ctx.global.dry_run {
        println!("would run on {t}: {command}");
        return Ok(());
    }
    let remote = SshRemote::new(t, options);
    let out = remote.run(&command).await?;
    std::io::stdout()
        .write_all(&out.stdout)
        .map_err(|source| CliError::Io {
            path: "<stdout>".into(),
            source,
        })?;
    std::io::stderr()
        .write_all(&out.stderr)
        .map_err(|source| CliError::Io {
            path: "<stderr>".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{}: command ended with {}",
            remote.host(),
            out.status
        )))
    }
}
