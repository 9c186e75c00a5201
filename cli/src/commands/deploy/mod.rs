//! `ektool deploy`, `rollback`, `releases`, `maintenance`, `restart`: release
//! deploys with deploykit. This module holds what they share: picking the
//! environment, building its hosts, and showing events.

pub mod maintenance;
pub mod releases;
pub mod restart;
pub mod rollback;
pub mod run;
pub mod unlock;

use std::sync::Arc;
use std::time::Duration;

use deploykit::{Deployer, Environment, Event, Host};
use ec2kit::{LocalRemote, Remote, SshRemote, SshTarget};

use crate::context::{Context, expand_home};
use crate::error::CliError;
use crate::output::OutputFormat;

/// `ektool deploy …`: deploys, or (with a subcommand) manages the lock.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    /// What to deploy.
    #[command(flatten)]
    pub run: run::Args,
    /// Lock management.
    #[command(subcommand)]
    pub command: Option<DeployCommand>,
}

/// `ektool deploy <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Remove the deploy lock: stale locks (killed deploys), or any with --force.
    Unlock(unlock::Args),
}

/// Runs `ektool deploy …`.
pub async fn exec(ctx: &Context, args: DeployArgs) -> Result<(), CliError> {
    match args.command {
        Some(DeployCommand::Unlock(a)) => unlock::exec(ctx, a).await,
        None => run::exec(ctx, args.run).await,
    }
}

/// The options every deploy verb takes: which environment, which hosts.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The environment (`[environments.<name>]`); optional when the config
    /// has only one.
    #[arg(long = "env", short = 'e', value_name = "NAME", env = "EKTOOL_ENV")]
    pub env: Option<String>,
    /// Only these hosts of the environment (repeatable; a host as written
    /// in the config, or its host name).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
}

/// The chosen environment's name and configuration.
pub fn environment<'a>(
    ctx: &'a Context,
    target: &Target,
) -> Result<(String, &'a Environment), CliError> {
    let envs = &ctx.config.environments;
    let name = match &target.env {
        Some(n) => n.clone(),
        None if envs.len() == 1 => envs.keys().next().cloned().unwrap_or_default(),
        None if envs.is_empty() => {
            return Err(CliError::Usage(
                "no environments in the config: add an [environments.<name>] section".into(),
            ));
        }
        None => {
            return Err(CliError::Usage(format!(
                "choose an environment with --env: {}",
                envs.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let env = envs.get(&name).ok_or_else(|| {
        CliError::Usage(format!(
            "no environment {name:?} in the config (have: {})",
            envs.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok((name, env))
}

/// The environment's hosts (static list and EC2 tag), narrowed by
/// `--host`, each with a strict-host-key SSH remote (or this machine for
/// `localhost`).
pub async fn hosts(
    ctx: &Context,
    env: &Environment,
    wanted: &[String],
) -> Result<Vec<Host>, CliError> {
    let mut names: Vec<String> = env.hosts.clone();
    if let Some(source) = &env.ec2 {
        names.extend(ec2_hosts(ctx, source).await?);
    }
    if !wanted.is_empty() {
        let user = ctx.ssh_user();
        let matches = |n: &str, w: &str| {
            n == w
                || SshTarget::parse_with_user(n, &user)
                    .is_ok_and(|t| t.host == w || t.to_string() == w)
        };
        for w in wanted {
            if !names.iter().any(|n| matches(n, w)) {
                return Err(CliError::Usage(format!(
                    "--host {w} is not a host of this environment (have: {})",
                    names.join(", ")
                )));
            }
        }
        names.retain(|n| wanted.iter().any(|w| matches(n, w)));
    }
    let options = ctx.ssh_options();
    let mut hosts = Vec::new();
    for n in names {
        let remote: Arc<dyn Remote> = if n == "localhost" {
            Arc::new(LocalRemote::new())
        } else {
            let t = SshTarget::parse_with_user(&n, &ctx.ssh_user())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            Arc::new(SshRemote::new(t, options.clone()))
        };
        hosts.push(Host::new(remote, env.path.as_str()));
    }
    Ok(hosts)
}

/// The running instances carrying the source's tag, as SSH targets
/// (`user@address:port`), sorted.
pub async fn ec2_hosts(
    ctx: &Context,
    source: &deploykit::HostSource,
) -> Result<Vec<String>, CliError> {
    let ec2 = ctx.ec2().await;
    let tag: ec2kit::Tag = source
        .tag
        .parse()
        .map_err(|e: ec2kit::InvalidTag| CliError::Usage(e.to_string()))?;
    let catalog = ec2kit::fleet::region_catalog(&ec2).await?;
    let region = catalog.resolve(&source.region)?;
    let mut out = Vec::new();
    for r in ec2kit::fleet::instances_by_tag(&ec2, &[region], &tag, 1).await {
        for i in r.result? {
            if i.state != "running" {
                continue;
            }
            let Some(addr) = source.address.of(&i) else {
                tracing::warn!(instance = %i.id, "no {:?} address; skipped", source.address);
                continue;
            };
            let user = source.user.clone().unwrap_or_else(|| ctx.ssh_user());
            out.push(format!("{user}@{addr}:{}", source.port));
        }
    }
    out.sort();
    Ok(out)
}

/// A deployer for the environment, printing events: JSON lines on stdout
/// with `--output json`, one line each on stderr otherwise (unless -q).
pub fn deployer(ctx: &Context, name: &str, env: &Environment, hosts: Vec<Host>) -> Deployer {
    let json = ctx.output() == OutputFormat::Json;
    let quiet = ctx.global.quiet;
    let mut d = Deployer::new(name, env.clone(), hosts)
        .cancel_on(ctx.interrupt.clone())
        .on_event(move |e: &Event| {
            if json {
                if let Ok(line) = serde_json::to_string(e) {
                    println!("{line}");
                }
            } else if !quiet {
                eprintln!("{e}");
            }
        });
    if let Some(n) = notifier(env) {
        d = d.notifier(n);
    }
    d
}

/// The webhook notifier, if configured and its URL is available. The URL
/// comes from an environment variable or a file, never the command line.
fn notifier(env: &Environment) -> Option<Arc<dyn deploykit::Notifier>> {
    let cfg = env.notify.as_ref()?;
    let url = match (&cfg.webhook_url_env, &cfg.webhook_url_file) {
        (Some(var), _) => std::env::var(var).ok(),
        (None, Some(file)) => std::fs::read_to_string(expand_home(file)).ok(),
        (None, None) => None,
    };
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        tracing::warn!("notify: the webhook URL is not set; no notifications");
        return None;
    };
    match deploykit::notify::WebhookNotifier::with_http(&url, cfg.allow_http) {
        Ok(n) => Some(Arc::new(n)),
        Err(e @ deploykit::notify::NotifyError::InsecureUrl) => {
            eprintln!(
                "warning: notify: {e} (or set notify.allow_http = true to accept it); no notifications"
            );
            None
        }
        Err(e) => {
            eprintln!("warning: notify: {e}; no notifications");
            None
        }
    }
}

/// The longest `--lock-wait`.
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Parses `--lock-wait`: a duration with a unit (`90s`, `15m`), 0s to 24h.
pub fn parse_lock_wait(text: &str) -> Result<Duration, String> {
    ec2kit::duration::parse_in(text, Duration::ZERO, MAX_LOCK_WAIT).map_err(|e| e.to_string())
}

/// `--lock-wait`, default: fail at once.
pub fn lock_wait(wait: Option<Duration>) -> Duration {
    wait.unwrap_or(Duration::ZERO)
}
