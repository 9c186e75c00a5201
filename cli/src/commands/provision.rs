//! `ektool provision`: host key, developers, secrets, configuration tree,
//! then the provisioner — host by host, stopping at the first host that
//! fails.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deploykit::provision::ApplyReport;
use deploykit::provision::secrets::{self, SecretsStatus};
use deploykit::provision::tree::{self, LocalTree, TreeSummary};
use deploykit::provision::users::{self, UsersPlan};
use deploykit::{Environment, ProvisionConfig, ProvisionError};
use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{LocalRemote, Remote, SshRemote, SshTarget};
use serde::Serialize;

use super::deploy::{Target, environment};
use crate::args::OutputFormat;
use crate::context::{Context, expand_home};
use crate::error::CliError;
use crate::output;

/// Arguments of `ektool provision`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Environment; `--host` may name a server not yet in the config (a
    /// fresh one).
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
}

/// Whether a provision error is the user's input or a refusal (exit 2).
pub fn is_usage(e: &ProvisionError) -> bool {
    matches!(
        e,
        ProvisionError::Invalid(_)
            | ProvisionError::NoSecrets { .. }
            | ProvisionError::SecretsOnlyRemote { .. }
            | ProvisionError::LockOut(_)
            | ProvisionError::Tree { .. }
            | ProvisionError::TreeLink { .. }
    )
}

/// One host to work on.
pub struct Node {
    /// Its name in messages.
    pub name: String,
    /// The login user.
    pub user: String,
    /// Its shell.
    pub remote: Arc<dyn Remote>,
    ssh: Option<SshTarget>,
}

/// The environment's provision config (or the defaults), validated, with
/// the tree path made absolute against the current directory.
pub fn config(env: &Environment) -> Result<ProvisionConfig, CliError> {
    let mut c = env.provision.clone().unwrap_or_default();
    c.tree = expand_home(&c.tree);
    c.validate()?;
    Ok(c)
}

/// The hosts: `--host` values as given (any `[user@]host[:port]`, so a
/// fresh server can be provisioned before it is listed), else the
/// environment's static hosts and the running instances its `ec2` tag
/// finds; `user` overrides each target's user.
pub async fn nodes(
    ctx: &Context,
    env: &Environment,
    target: &Target,
    user: Option<&str>,
) -> Result<Vec<Node>, CliError> {
    let names = if target.hosts.is_empty() {
        let mut names = env.hosts.clone();
        if let Some(source) = &env.ec2 {
            names.extend(super::deploy::ec2_hosts(ctx, source).await?);
        }
        names
    } else {
        target.hosts.clone()
    };
    if names.is_empty() {
        return Err(CliError::Usage(
            "no hosts: list them in the environment's `hosts` (or find them with `ec2`), or pass --host"
                .into(),
        ));
    }
    let options = ctx.ssh_options();
    names
        .iter()
        .map(|n| {
            if n == "localhost" {
                let me = deploykit::Actor::current().user;
                return Ok(Node {
                    name: n.clone(),
                    user: me,
                    remote: Arc::new(LocalRemote::new()),
                    ssh: None,
                });
            }
            let mut t = SshTarget::parse_with_user(n, &ctx.ssh_user())
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if let Some(u) = user {
                t.user = u.to_owned();
            }
            Ok(Node {
                name: t.to_string(),
                user: t.user.clone(),
                remote: Arc::new(SshRemote::new(t.clone(), options.clone())),
                ssh: Some(t),
            })
        })
        .collect()
}

/// Yes from the terminal; no when there is none.
pub fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// First contact: a host whose key is unknown is trusted only with the
/// matching `--trust-host-key` or an interactive yes; a changed key is
/// always refused. Afterwards every connection is strict.
async fn check_host_key(
    ctx: &Context,
    node: &Node,
    expected: Option<&str>,
) -> Result<(), CliError> {
    let Some(t) = &node.ssh else { return Ok(()) };
    let options = ctx.ssh_options();
    let (key, status) =
        ssh::fetch_host_key(t, &options.known_hosts, options.connect_timeout).await?;
    let fingerprint = match status {
        HostKeyStatus::Trusted => return Ok(()),
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
            None if confirm(&format!(
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
    ssh::trust_host_key(
        t,
        &fingerprint,
        &options.known_hosts,
        options.connect_timeout,
    )
    .await?;
    Ok(())
}

/// What happened on one host.
#[derive(Debug, Serialize)]
struct HostResult {
    host: String,
    secrets: String,
    users: UsersPlan,
    tree: String,
    installed: bool,
    report: ApplyReport,
}

/// The whole run, for `--output json`.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    environment: &'a str,
    dry_run: bool,
    tree: TreeSummary,
    hosts: Vec<HostResult>,
}

fn read_local_secrets(path: &Path) -> Result<Option<Vec<u8>>, CliError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) => {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: {} is readable by others; `chmod 600` it",
                    path.display()
                );
            }
            std::fs::read(path)
                .map(Some)
                .map_err(|source| CliError::Io {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CliError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Runs `ektool provision`.
pub async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (env_name, env) = environment(ctx, &args.target)?;
    let cfg = config(env)?;
    let dry_run = ctx.global.dry_run;
    let quiet = ctx.global.quiet || ctx.output() == OutputFormat::Json;
    let say = |m: &str| {
        if !quiet {
            eprintln!("{m}");
        }
    };
    let tree = LocalTree::collect(&cfg.tree, &env_name, cfg.script.as_deref())?;
    let local_secrets_path: PathBuf = secrets::local_path(&cfg.tree, &env_name);
    let example = secrets::example_path(&cfg.tree, &env_name);
    let local_secrets = read_local_secrets(&local_secrets_path)?;
    let layout = cfg.layout();
    let provisioner = cfg.provisioner(&env_name);
    let nodes = nodes(ctx, env, &args.target, args.user.as_deref()).await?;
    let mut results = Vec::new();
    for node in &nodes {
        check_host_key(ctx, node, args.trust_host_key.as_deref()).await?;
        let host = node.remote.as_ref();
        // Everything that can refuse is decided before anything changes.
        let managed = users::read_managed(host, &layout).await?;
        let users_plan = users::plan(&cfg.users, &managed, &node.user)?;
        let secrets_status = match &local_secrets {
            Some(local) => {
                let status = secrets::compare(host, &layout, local).await?;
                if let SecretsStatus::Differs { changes } = &status {
                    eprintln!(
                        "{}: the host's secrets differ from {}:",
                        node.name,
                        local_secrets_path.display()
                    );
                    for c in changes {
                        eprintln!("  {c}");
                    }
                    if !dry_run
                        && !args.yes
                        && !confirm("Overwrite the host's secrets with the local file?")
                    {
                        return Err(ProvisionError::SecretsNotConfirmed {
                            host: node.name.clone(),
                        }
                        .into());
                    }
                }
                status
            }
            None => match secrets::read_remote(host, &layout).await? {
                Some(_) => {
                    return Err(ProvisionError::SecretsOnlyRemote {
                        host: node.name.clone(),
                        env: env_name.clone(),
                        local: local_secrets_path.display().to_string(),
                    }
                    .into());
                }
                None if example.exists() => {
                    return Err(ProvisionError::NoSecrets {
                        env: env_name.clone(),
                        local: local_secrets_path.display().to_string(),
                        example: example.display().to_string(),
                    }
                    .into());
                }
                None => SecretsStatus::Same,
            },
        };
        let secrets_word = match (&secrets_status, &local_secrets) {
            (_, None) => "none",
            (SecretsStatus::Same, _) => "unchanged",
            (SecretsStatus::New, _) => "uploaded",
            (SecretsStatus::Differs { .. }, _) => "updated",
        };
        let installed = if dry_run {
            false
        } else {
            provisioner.ensure_installed(host).await?
        };
        if installed {
            say(&format!("{}: installed {}", node.name, provisioner.name()));
        }
        let id = tree::new_tree_id();
        let dir = tree::stage(host, &layout, &tree, &id).await?;
        say(&format!(
            "{}: staged {} files in {dir}",
            node.name,
            tree.files.len()
        ));
        let report = if dry_run {
            let r = provisioner.apply(host, &layout, &dir, true).await;
            tree::discard(host, &layout, &id).await?;
            r?
        } else {
            if let (Some(bytes), false) = (&local_secrets, secrets_status == SecretsStatus::Same) {
                secrets::upload(host, &layout, bytes).await?;
                say(&format!("{}: secrets {secrets_word} (0600)", node.name));
            }
            if !users_plan.is_empty() {
                users::apply(host, &layout, &users_plan, &cfg.users_root).await?;
                say(&format!(
                    "{}: users: {} ensured, {} revoked",
                    node.name,
                    users_plan.ensure.len(),
                    users_plan.revoke.len()
                ));
            }
            tree::switch(host, &layout, &id).await?;
            provisioner
                .apply(host, &layout, &layout.current_tree(), false)
                .await?
        };
        let failed = !report.failures().is_empty();
        results.push(HostResult {
            host: node.name.clone(),
            secrets: if dry_run {
                format!("{secrets_word} (dry run: not sent)")
            } else {
                secrets_word.into()
            },
            users: users_plan,
            tree: id,
            installed,
            report,
        });
        // A host that failed stops the run: the next ones are probably
        // going to fail the same way, and stay as they were.
        if failed {
            break;
        }
    }
    let summary = Summary {
        environment: &env_name,
        dry_run,
        tree: tree.summary(),
        hosts: results,
    };
    print(ctx, &summary)?;
    let failures: Vec<String> = summary
        .hosts
        .iter()
        .flat_map(|h| {
            h.report.failures().into_iter().map(move |s| {
                format!(
                    "{}: {} ({} {}): {}",
                    h.host,
                    s.id,
                    s.function,
                    s.name,
                    s.comment.lines().next().unwrap_or_default()
                )
            })
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
