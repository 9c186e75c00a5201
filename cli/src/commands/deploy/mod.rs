//! `ektool deploy`, `rollback`, `releases`, `maintenance`, `restart`: release
//! deploys with deploykit. This module holds what they share (and
//! `provision`, `secrets` and `db` with them): picking the environment,
//! its hosts, and showing events.

pub(crate) mod check;
pub(crate) mod maintenance;
pub(crate) mod releases;
pub(crate) mod restart;
pub(crate) mod rollback;
pub(crate) mod run;
pub(crate) mod unlock;

use std::sync::Arc;
use std::time::Duration;

use deploykit::{Deployer, Environment, Event, Host, ProvisionConfig};

use crate::context::{Context, expand_home};
use crate::error::CliError;
use crate::output::OutputFormat;

/// `ektool deploy …`: deploys, or (with a subcommand) manages the lock.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DeployArgs {
    /// What to deploy.
    #[command(flatten)]
    pub run: run::Args,
    /// Lock management.
    #[command(subcommand)]
    pub command: Option<DeployCommand>,
}

/// `ektool deploy <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeployCommand {
    /// Remove the deploy lock: stale locks (killed deploys), or any with --force.
    Unlock(unlock::Args),
    /// Pre-flight checks on every host: SSH, sudo, deploy root, disk space,
    /// shared files, git access, clock, lock.
    Check(check::Args),
}

/// Runs `ektool deploy …`.
pub(crate) async fn exec(ctx: &Context, args: DeployArgs) -> Result<(), CliError> {
    match args.command {
        Some(DeployCommand::Unlock(a)) => unlock::exec(ctx, a).await,
        Some(DeployCommand::Check(a)) => check::exec(ctx, a).await,
        None => run::exec(ctx, args.run).await,
    }
}

/// The options every deploy verb takes: which environment, which hosts.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// The environment (`[environments.<name>]`); optional when the config
    /// has only one.
    #[arg(long = "env", short = 'e', value_name = "NAME", env = "EKTOOL_ENV")]
    pub env: Option<String>,
    /// Only these hosts of the environment (repeatable): a host as written
    /// in the config, its host name or address, `user@host:port`, or the
    /// instance id or `Name` of one found by EC2 tag. Any other is refused.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only the hosts having this role (repeatable: any of them; with
    /// `--host`, among those). A role no such host has is refused.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Reach the SSH hosts through this bastion (`[user@]host[:port]`),
    /// over the environment's `jump`: one connection to it serves them all.
    #[arg(long = "jump", value_name = "BASTION", env = "EKTOOL_JUMP")]
    pub jump: Option<String>,
}

/// The chosen environment's name and configuration.
pub(crate) fn environment<'a>(
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

/// The environment's hosts (its static list, then the running instances
/// its `ec2` tag finds, then its load balancer's registered targets when
/// it finds hosts there) with their roles, narrowed by `--host` and
/// `--role` (the same for every command: see [`deploykit::hosts`]). An
/// AWS client is made only for an environment that finds hosts by tag or
/// target group.
async fn resolve(
    ctx: &Context,
    env: &Environment,
    target: &Target,
) -> Result<Vec<deploykit::hosts::Selected>, CliError> {
    let by_group = env
        .load_balancer
        .as_ref()
        .is_some_and(|lb| lb.hosts.is_some());
    let aws = if env.ec2.is_some() || by_group {
        Some(ctx.ec2().await)
    } else {
        None
    };
    let ec2 = aws.as_ref().map(|e| e as &dyn ec2kit::Ec2);
    let groups = aws.as_ref().map(|e| e as &dyn ec2kit::TargetGroups);
    Ok(deploykit::hosts::select_with(
        env,
        ec2,
        groups,
        &ctx.ssh_user(),
        &target.hosts,
        &target.roles,
    )
    .await?)
}

/// The environment's hosts as deploy hosts: a strict-host-key SSH shell
/// each (or this machine for `localhost`), through the bastion of
/// `--jump`, else the host's own `jump`, else the environment's, if any.
pub(crate) async fn hosts(
    ctx: &Context,
    env: &Environment,
    target: &Target,
) -> Result<Vec<Host>, CliError> {
    let reach = targets_via(ctx, env, target, None, false).await?;
    let options = ctx.ssh_options();
    let selected: Vec<_> = reach.iter().map(|r| r.selected.clone()).collect();
    Ok(deploykit::hosts::connect_selected(env, &selected, |s| {
        let jump = reach
            .iter()
            .find(|r| r.selected == *s)
            .and_then(|r| r.jump.as_ref());
        ec2kit::connect_via(&s.target, &options, jump)
    }))
}

/// One selected host and the bastion it is reached through.
pub(crate) struct Reach {
    /// The host (its target with `--user` applied).
    pub selected: deploykit::hosts::Selected,
    /// Its bastion: `--jump`, else its own `jump`, else the environment's.
    pub jump: Option<ec2kit::SshTarget>,
}

/// The environment's hosts for `provision`, `secrets get` and `db`
/// (narrowed by `--host` and `--role`; none is an error), `user` (`--user`)
/// logging in on each, with the bastion each is reached through.
pub(crate) async fn targets(
    ctx: &Context,
    env: &Environment,
    target: &Target,
    user: Option<&str>,
) -> Result<Vec<Reach>, CliError> {
    targets_via(ctx, env, target, user, true).await
}

async fn targets_via(
    ctx: &Context,
    env: &Environment,
    target: &Target,
    user: Option<&str>,
    required: bool,
) -> Result<Vec<Reach>, CliError> {
    let found = resolve(ctx, env, target).await?;
    if required && found.is_empty() {
        return Err(CliError::Usage(
            "no hosts: list them in the environment's `hosts`, or find them by EC2 tag with `ec2`"
                .into(),
        ));
    }
    found
        .into_iter()
        .map(|mut selected| {
            let jump = deploykit::hosts::jump_for(
                env,
                &selected,
                target.jump.as_deref(),
                &ctx.ssh_user(),
            )?;
            if let Some(u) = user {
                selected.target = selected.target.with_user(u);
            }
            Ok(Reach { selected, jump })
        })
        .collect()
}

/// The environment's provision config (or the defaults), validated, with
/// a leading `~/` of the tree expanded (`provision`, `secrets get`).
pub(crate) fn provision_config(env: &Environment) -> Result<ProvisionConfig, CliError> {
    let mut c = env.provision.clone().unwrap_or_default();
    c.tree = expand_home(&c.tree);
    c.validate()?;
    Ok(c)
}

/// A deployer for the environment, printing events: JSON lines on stdout
/// with `--output json`, one line each on stderr otherwise (unless -q).
pub(crate) fn deployer(ctx: &Context, name: &str, env: &Environment, hosts: Vec<Host>) -> Deployer {
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
    // An environment without its own `notify` falls back to `[notify]`.
    let fallback = ctx.config.notify.as_ref().map(|n| n.webhook());
    if let Some(n) = notifier(env.notify.as_ref().or(fallback.as_ref())) {
        d = d.notifier(n);
    }
    d
}

/// The webhook notifier, if configured and its URL is available. The URL
/// comes from an environment variable or a file, never the command line.
fn notifier(
    cfg: Option<&deploykit::environment::NotifyConfig>,
) -> Option<Arc<dyn deploykit::Notifier>> {
    let cfg = cfg?;
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
pub(crate) const MAX_LOCK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Parses `--lock-wait`: a duration with a unit (`90s`, `15m`), 0s to 24h.
pub(crate) fn parse_lock_wait(text: &str) -> Result<Duration, String> {
    ec2kit::duration::parse_in(text, Duration::ZERO, MAX_LOCK_WAIT).map_err(|e| e.to_string())
}

/// `--lock-wait`, default: fail at once.
pub(crate) fn lock_wait(wait: Option<Duration>) -> Duration {
    wait.unwrap_or(Duration::ZERO)
}
