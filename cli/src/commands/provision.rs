//! `ektool provision`: host key, developers, secrets, configuration tree,
//! then the provisioner — host by host, stopping at the first host that
//! fails.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deploykit::provision::ApplyReport;
use deploykit::provision::secrets::{self, SecretsStatus};
use deploykit::provision::tree::{self, LocalTree, TreeSummary};
use deploykit::provision::users::{self, UsersPlan};
use deploykit::provision::{LockSpec, ProvisionLock};
use deploykit::{Environment, ProvisionConfig, ProvisionError};
use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{LocalRemote, Remote, SshRemote, SshTarget};
use serde::Serialize;

use super::deploy::{Target, environment};
use crate::context::{Context, expand_home};
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

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

/// One host to work on.
pub struct Node {
    /// Its name in messages.
    pub name: String,
    /// The login user.
    pub user: String,
    /// Its shell.
    pub remote: Arc<dyn Remote>,
    ssh: Option<SshRemote>,
}

impl Node {
    /// The key this run logs in with (`type base64 source`), when it can
    /// be told.
    async fn login_key(&self) -> Result<Option<String>, CliError> {
        Ok(match &self.ssh {
            Some(r) => r
                .authenticated_key()
                .await?
                .map(|k| k.authorized_keys_line()),
            None => None,
        })
    }
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
            let remote = SshRemote::new(t.clone(), options.clone());
            Ok(Node {
                name: t.to_string(),
                user: t.user.clone(),
                remote: Arc::new(remote.clone()),
                ssh: Some(remote),
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
///
/// A dry run records nothing and asks nothing: a new host is trusted only
/// with a matching `--trust-host-key`, and only in a private copy of
/// known_hosts that the rest of the dry run connects with (returned, so it
/// lives as long as the run).
async fn check_host_key(
    ctx: &Context,
    node: &mut Node,
    expected: Option<&str>,
    say: &dyn Fn(&str),
) -> Result<Option<tempfile::NamedTempFile>, CliError> {
    let Some(remote) = &node.ssh else {
        return Ok(None);
    };
    let t = remote.target().clone();
    let dry_run = ctx.global.dry_run;
    let options = ctx.ssh_options();
    let (key, status) =
        ssh::fetch_host_key(&t, &options.known_hosts, options.connect_timeout).await?;
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
                && confirm(&format!(
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
        ssh::trust_host_key(
            &t,
            &fingerprint,
            &options.known_hosts,
            options.connect_timeout,
        )
        .await?;
        return Ok(None);
    }
    let scratch = scratch_known_hosts(&options.known_hosts)?;
    ssh::trust_host_key(&t, &fingerprint, scratch.path(), options.connect_timeout).await?;
    say(&format!(
        "{}: would trust {} {} and record it in {} (dry run: not recorded)",
        node.name,
        key.key_type,
        key.fingerprint,
        options.known_hosts.display()
    ));
    let mut options = options;
    options.known_hosts = scratch.path().to_owned();
    let remote = SshRemote::new(t, options);
    node.remote = Arc::new(remote.clone());
    node.ssh = Some(remote);
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
    let local_secrets = read_local_secrets(&local_secrets_path)?;
    let run = Run {
        env_name: &env_name,
        cfg: &cfg,
        tree: &tree,
        example: secrets::example_path(&cfg.tree, &env_name),
        local_secrets_path: &local_secrets_path,
        local_secrets: local_secrets.as_deref(),
        provisioner: cfg.provisioner(&env_name),
        yes: args.yes,
        dry_run,
        say: &say,
    };
    let lock = LockSpec {
        environment: env_name.clone(),
        deploy_root: Some(env.path.as_str().to_owned()),
        actor: deploykit::Actor::current(),
        stale_after: env.lock_stale_after(),
        wait: args.lock_wait.unwrap_or_default(),
        timeout: env.timeouts.lock.get(),
    };
    let layout = cfg.layout();
    let mut nodes = nodes(ctx, env, &args.target, args.user.as_deref()).await?;
    let mut results = Vec::new();
    for node in &mut nodes {
        // Lives until this host is done: a dry run's private known_hosts.
        let _scratch = check_host_key(ctx, node, args.trust_host_key.as_deref(), &say).await?;
        let login_key = node.login_key().await?;
        // A dry run changes nothing, not even a lock directory: it only
        // says what a real run would wait for.
        let held = if dry_run {
            for (lock, path) in ProvisionLock::held(node.remote.clone(), &layout, &lock).await? {
                say(&format!(
                    "{lock} (lock {path}); a real run would stop here, or wait with --lock-wait"
                ));
            }
            None
        } else {
            Some(ProvisionLock::acquire(node.remote.clone(), &layout, &lock).await?)
        };
        let outcome = run.host(node, login_key.as_deref()).await;
        if let Some(held) = held {
            let released = held.release().await;
            match (&outcome, released) {
                (Ok(_), Err(e)) => return Err(e.into()),
                (Err(_), Err(e)) => eprintln!(
                    "warning: {}: could not release the provision lock: {e}",
                    node.name
                ),
                (_, Ok(())) => {}
            }
        }
        let result = outcome?;
        let failed = !result.report.failures().is_empty();
        results.push(result);
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

/// What every host of one run shares.
struct Run<'a> {
    env_name: &'a str,
    cfg: &'a ProvisionConfig,
    tree: &'a LocalTree,
    example: PathBuf,
    local_secrets_path: &'a Path,
    local_secrets: Option<&'a [u8]>,
    provisioner: Box<dyn deploykit::Provisioner>,
    yes: bool,
    dry_run: bool,
    say: &'a dyn Fn(&str),
}

impl Run<'_> {
    /// One host, under its provision lock (none on a dry run).
    async fn host(&self, node: &Node, login_key: Option<&str>) -> Result<HostResult, CliError> {
        let (cfg, dry_run, say) = (self.cfg, self.dry_run, self.say);
        let layout = cfg.layout();
        let host = node.remote.as_ref();
        // Everything that can refuse is decided before anything changes.
        let managed = users::read_managed(host, &layout).await?;
        let login = users::Login {
            user: &node.user,
            key: login_key,
        };
        let users_plan = users::plan(&cfg.users, &managed, login)?;
        users::check(host, &users_plan, &cfg.users_root).await?;
        let secrets_status = match self.local_secrets {
            Some(local) => {
                let status = secrets::compare(host, &layout, local).await?;
                if let SecretsStatus::Differs { changes } = &status {
                    eprintln!(
                        "{}: the host's secrets differ from {}:",
                        node.name,
                        self.local_secrets_path.display()
                    );
                    for c in changes {
                        eprintln!("  {c}");
                    }
                    if !dry_run
                        && !self.yes
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
                        env: self.env_name.to_owned(),
                        local: self.local_secrets_path.display().to_string(),
                    }
                    .into());
                }
                None if self.example.exists() => {
                    return Err(ProvisionError::NoSecrets {
                        env: self.env_name.to_owned(),
                        local: self.local_secrets_path.display().to_string(),
                        example: self.example.display().to_string(),
                    }
                    .into());
                }
                None => SecretsStatus::Same,
            },
        };
        let secrets_word = match (&secrets_status, self.local_secrets) {
            (_, None) => "none",
            (SecretsStatus::Same, _) => "unchanged",
            (SecretsStatus::New, _) => "uploaded",
            (SecretsStatus::Differs { .. }, _) => "updated",
        };
        let provisioner = self.provisioner.as_ref();
        if dry_run {
            // Tested in a temporary directory: the provision root (tree,
            // Salt's cache, secrets, users) stays exactly as it was.
            let scratch = tree::stage_scratch(host, self.tree).await?;
            say(&format!(
                "{}: staged {} files in {scratch}/tree (dry run: removed afterwards)",
                node.name,
                self.tree.files.len()
            ));
            let report = provisioner
                .apply(
                    host,
                    &layout.with_scratch(&scratch),
                    &format!("{scratch}/tree"),
                    true,
                )
                .await;
            tree::discard_scratch(host, &scratch).await?;
            return Ok(HostResult {
                host: node.name.clone(),
                secrets: format!("{secrets_word} (dry run: not sent)"),
                users: users_plan,
                tree: String::new(),
                installed: false,
                report: report?,
            });
        }
        let installed = provisioner.ensure_installed(host).await?;
        if installed {
            say(&format!("{}: installed {}", node.name, provisioner.name()));
        }
        let id = tree::new_tree_id();
        let dir = tree::stage(host, &layout, self.tree, &id).await?;
        say(&format!(
            "{}: staged {} files in {dir}",
            node.name,
            self.tree.files.len()
        ));
        if let (Some(bytes), false) = (self.local_secrets, secrets_status == SecretsStatus::Same) {
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
        // The resolved directory, not the `tree` link: what this run
        // staged is what it applies, whatever the link says meanwhile.
        let report = provisioner.apply(host, &layout, &dir, false).await?;
        Ok(HostResult {
            host: node.name.clone(),
            secrets: secrets_word.into(),
            users: users_plan,
            tree: id,
            installed,
            report,
        })
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
