//! `ektool provision`: the host-key trust step (interactive UI, here),
//! then deploykit's provision run — every host locked and planned before
//! any is changed, then host by host, stopping at the first host that
//! fails (`--dry-run`: planned and tested, nothing changed).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploykit::provision::{
    self, Event, HostPlan, HostReport, Inputs, LockSpec, Node, ProvisionReport, SecretsPlan,
};
use deploykit::provision::{tree::TreeSummary, users::UsersPlan};
use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{HostTarget, SshRemote, SshTarget};
use serde::Serialize;

use super::deploy::{Target, environment, provision_config, targets};
use crate::context::Context;
use crate::error::CliError;
use crate::output::OutputFormat;
use crate::{output, prompt};

/// Arguments of `ektool provision`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts (`--host` narrows the environment's hosts,
    /// as for deploys).
    #[command(flatten)]
    pub target: Target,
    /// Log in as this user (e.g. `root` on a fresh server).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Trust a new host whose key has this fingerprint (`SHA256:…`, from
    /// the provider's console or `ssh-keygen -lf` on the host).
    #[arg(long, value_name = "FINGERPRINT")]
    pub trust_host_key: Option<String>,
    /// Overwrite the host's secrets without asking when they differ.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Wait this long for another provision's (or a deploy's) lock on a
    /// host, e.g. `90s` or `10m` (0s to 1h; default: fail at once, naming
    /// the holder).
    #[arg(long, value_name = "DURATION", value_parser = lock_wait_arg)]
    pub lock_wait: Option<Duration>,
}

fn lock_wait_arg(s: &str) -> Result<Duration, String> {
    ec2kit::duration::parse_in(s, Duration::ZERO, Duration::from_secs(3600))
        .map_err(|e| e.to_string())
}

/// Runs `ektool provision`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (env_name, env) = environment(ctx, &args.target)?;
    let cfg = provision_config(env)?;
    let dry_run = ctx.global.dry_run;
    let quiet = ctx.global.quiet || ctx.output() == OutputFormat::Json;
    let say = |m: &str| {
        if !quiet {
            eprintln!("{m}");
        }
    };
    let lock = LockSpec::for_environment(&env_name, env, args.lock_wait.unwrap_or_default());
    let inputs = Inputs::read(&env_name, &cfg, lock)?;
    if inputs.secrets.readable_by_others {
        eprintln!(
            "warning: {} is readable by others; `chmod 600` it",
            inputs.secrets.path.display()
        );
    }
    // The bastion's key is checked against the real known_hosts, also on
    // a dry run (a new host's key may go to a private copy: see below).
    let targets = targets(ctx, env, &args.target, args.user.as_deref()).await?;
    // First contact with every host before the run: the trust step asks
    // at the terminal. A dry run's private known_hosts copies live until
    // the run is over.
    let mut nodes = Vec::with_capacity(targets.len());
    let mut known_hosts_copies = Vec::new();
    for t in &targets {
        // One connection per bastion, shared by every host behind it.
        let bastion = t
            .jump
            .as_ref()
            .map(|j| ec2kit::Bastion::shared(j, &ctx.ssh_options()));
        let (node, scratch) = node(
            ctx,
            &t.selected.target,
            args.trust_host_key.as_deref(),
            bastion.as_ref(),
            &say,
        )
        .await?;
        nodes.push(node);
        known_hosts_copies.extend(scratch);
    }
    let on_event = |e: &Event| match e {
        Event::LockHeld { .. } => {
            say(&format!(
                "{e}; a real run would stop here, or wait with --lock-wait"
            ));
        }
        // Shown even with -q: they are what a confirmation is about.
        Event::SecretsDiffer { .. } => eprintln!("{e}"),
        Event::LockNotReleased { .. } | Event::AuditNotWritten { .. } => {
            eprintln!("warning: {e}");
        }
        _ => say(&e.to_string()),
    };
    let report = if dry_run {
        provision::dry_run(&nodes, &cfg, &inputs, &on_event).await?
    } else {
        let yes = args.yes;
        let confirm = |_: &HostPlan| {
            yes || prompt::confirm("Overwrite the host's secrets with the local file?")
        };
        provision::run(&nodes, &cfg, &inputs, &confirm, &on_event).await?
    };
    print(ctx, &Summary::of(&report))?;
    let failures: Vec<String> = report
        .failures()
        .into_iter()
        .map(|(host, s)| {
            format!(
                "{host}: {} ({} {}): {}",
                s.id,
                s.function,
                s.name,
                s.comment.lines().next().unwrap_or_default()
            )
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} state{} failed:\n  {}",
            failures.len(),
            if failures.len() == 1 { "" } else { "s" },
            failures.join("\n  ")
        )))
    }
}

/// One host to provision: this machine as the current user, or an SSH
/// host whose key was checked (and trusted when asked), logged in, its
/// login key known. On a dry run, the private known_hosts it connects
/// with, if the trust step needed one.
async fn node(
    ctx: &Context,
    target: &HostTarget,
    expected: Option<&str>,
    bastion: Option<&ec2kit::Bastion>,
    say: &dyn Fn(&str),
) -> Result<(Node, Option<tempfile::NamedTempFile>), CliError> {
    let mut options = ctx.ssh_options();
    let HostTarget::Ssh(t) = target else {
        let me = deploykit::Actor::current().user;
        return Ok((Node::new(ec2kit::connect(target, &options), me), None));
    };
    let scratch = check_host_key(ctx, t, expected, bastion, say).await?;
    if let Some(s) = &scratch {
        options.known_hosts = s.path().to_owned();
    }
    let mut remote = SshRemote::new(t.clone(), options);
    if let Some(b) = bastion {
        remote = remote.via(b.clone());
    }
    let key = remote
        .authenticated_key()
        .await?
        .map(|k| k.authorized_keys_line());
    Ok((Node::new(Arc::new(remote), &t.user).login_key(key), scratch))
}

/// First contact: a host whose key is unknown is trusted only with the
/// matching `--trust-host-key` or an interactive yes; a changed key is
/// always refused. Afterwards every connection is strict.
///
/// A dry run records nothing and asks nothing: a new host is trusted only
/// with a matching `--trust-host-key`, and only in a private copy of
/// known_hosts that the rest of the dry run connects with (returned, so it
/// lives as long as the run).
async fn check_host_key(
    ctx: &Context,
    t: &SshTarget,
    expected: Option<&str>,
    bastion: Option<&ec2kit::Bastion>,
    say: &dyn Fn(&str),
) -> Result<Option<tempfile::NamedTempFile>, CliError> {
    let dry_run = ctx.global.dry_run;
    let options = ctx.ssh_options();
    let (key, status) =
        ssh::fetch_host_key_via(t, &options.known_hosts, options.connect_timeout, bastion).await?;
    let fingerprint = match status {
        HostKeyStatus::Trusted => return Ok(None),
        HostKeyStatus::Changed => {
            return Err(ec2kit::RemoteError::HostKeyMismatch {
                host: key.host,
                key_type: key.key_type,
                fingerprint: key.fingerprint,
            }
            .into());
        }
        HostKeyStatus::Unknown => match expected {
            Some(fp) => fp.to_owned(),
            None if !dry_run
                && prompt::confirm(&format!(
                    "{} is new: it offers {} {}. Trust it and record it in {}?",
                    key.host,
                    key.key_type,
                    key.fingerprint,
                    options.known_hosts.display()
                )) =>
            {
                key.fingerprint.clone()
            }
            None => {
                return Err(CliError::Usage(format!(
                    "{} is a new host offering {} {}; check that fingerprint out of band, then pass --trust-host-key {}",
                    key.host, key.key_type, key.fingerprint, key.fingerprint
                )));
            }
        },
    };
    if !dry_run {
        ssh::trust_host_key_via(
            t,
            &fingerprint,
            &options.known_hosts,
            options.connect_timeout,
            bastion,
        )
        .await?;
        return Ok(None);
    }
    let scratch = scratch_known_hosts(&options.known_hosts)?;
    ssh::trust_host_key_via(
        t,
        &fingerprint,
        scratch.path(),
        options.connect_timeout,
        bastion,
    )
    .await?;
    say(&format!(
        "{t}: would trust {} {} and record it in {} (dry run: not recorded)",
        key.key_type,
        key.fingerprint,
        options.known_hosts.display()
    ));
    Ok(Some(scratch))
}

/// A private copy of `known_hosts` (empty if it does not exist).
fn scratch_known_hosts(known_hosts: &Path) -> Result<tempfile::NamedTempFile, CliError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CliError::Io { path, source }
    };
    let mut scratch = tempfile::NamedTempFile::new().map_err(io(Path::new("<tempfile>")))?;
    match std::fs::read(known_hosts) {
        Ok(bytes) => scratch.write_all(&bytes).map_err(io(scratch.path()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CliError::Io {
                path: known_hosts.to_owned(),
                source,
            });
        }
    }
    Ok(scratch)
}

/// What happened on one host, for `--output json` and the table.
#[derive(Debug, Serialize)]
struct HostResult<'a> {
    host: &'a str,
    secrets: String,
    users: &'a UsersPlan,
    tree: &'a str,
    installed: bool,
    report: &'a provision::ApplyReport,
}

/// The whole run, for `--output json`.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    environment: &'a str,
    dry_run: bool,
    tree: &'a TreeSummary,
    hosts: Vec<HostResult<'a>>,
    /// Every host's plan (users ensured and revoked, secrets), decided
    /// before any host changed: what a dry run shows.
    plan: &'a provision::ProvisionPlan,
}

impl<'a> Summary<'a> {
    fn of(report: &'a ProvisionReport) -> Self {
        let host = |h: &'a HostReport| {
            let word = match h.secrets {
                SecretsPlan::None => "none",
                SecretsPlan::Unchanged => "unchanged",
                SecretsPlan::Upload => "uploaded",
                SecretsPlan::Overwrite { .. } => "updated",
            };
            HostResult {
                host: &h.host,
                secrets: if report.dry_run {
                    format!("{word} (dry run: not sent)")
                } else {
                    word.to_owned()
                },
                users: &h.users,
                tree: h.tree.as_deref().unwrap_or_default(),
                installed: h.installed,
                report: &h.report,
            }
        };
        Self {
            environment: &report.environment,
            dry_run: report.dry_run,
            tree: &report.plan.tree,
            hosts: report.hosts.iter().map(host).collect(),
            plan: &report.plan,
        }
    }
}

fn print(ctx: &Context, s: &Summary<'_>) -> Result<(), CliError> {
    if ctx.output() == OutputFormat::Json {
        return output::json(s);
    }
    if s.dry_run {
        println!(
            "dry run: {} files would be sent; left out: {}",
            s.tree.files.len(),
            if s.tree.excluded.is_empty() {
                "nothing".to_owned()
            } else {
                s.tree.excluded.join(", ")
            }
        );
        for h in &s.plan.hosts {
            let names = |v: Vec<&str>| {
                if v.is_empty() {
                    "nobody".to_owned()
                } else {
                    v.join(", ")
                }
            };
            let secrets = match h.secrets {
                SecretsPlan::None => "none",
                SecretsPlan::Unchanged => "unchanged",
                SecretsPlan::Upload => "upload",
                SecretsPlan::Overwrite { .. } => "overwrite (asks first)",
            };
            println!(
                "plan for {} as {}: users ensure {}, revoke {}; secrets {secrets}",
                h.host,
                h.user,
                names(h.users.ensure.iter().map(|d| d.name.as_str()).collect()),
                names(h.users.revoke.iter().map(String::as_str).collect()),
            );
        }
    }
    for h in &s.hosts {
        println!(
            "{} ({}, secrets {}):",
            h.host, h.report.provisioner, h.secrets
        );
        for st in &h.report.states {
            println!("  {st}");
        }
        let (ok, changed, failed, would) = h.report.counts();
        if h.report.test {
            println!("  {ok} ok, {would} would change, {failed} failed");
        } else {
            println!("  {ok} ok, {changed} changed, {failed} failed");
        }
    }
    Ok(())
}
