//! Provisioning: bring a fresh (or existing) server under configuration.
//!
//! The seed tool (Caktus' masterless Salt fabfile) rsynced `conf/` over
//! `/srv` after `rm -rf /srv/*`, exited 0 when states failed, crashed on
//! Salt's render errors and left rendered secrets in `output.json` on both
//! sides. Here:
//!
//! - the configuration tree (states and **this** environment's pillar only)
//!   is written to a fresh staging directory and switched in by renaming a
//!   symlink ([`tree`]); no shared directory is ever removed;
//! - the secrets file travels on standard input into a 0600 root-owned
//!   file, its diff is shown with every value masked, and overwriting needs
//!   a confirmation ([`secrets`]);
//! - developers' accounts and keys come from the config, keys of removed
//!   developers are revoked, and a change that would leave nobody able to
//!   log in is refused before anything is touched ([`users`]);
//! - a [`Provisioner`] applies the tree: masterless Salt ([`salt`]) whose
//!   per-state results are parsed, so **any failed state is a failure** and
//!   a render error is reported as such, or a plain script ([`script`]).
//!
//! A run is plan, then apply: [`plan`] reads every host and decides
//! everything that can refuse before [`apply`] changes any of them, and
//! [`run`] conducts the two under every host's lock, asking the caller to
//! confirm a secrets overwrite ([`dry_run`] plans and tests instead). A
//! team's own provisioning binary is a few calls:
//!
//! ```no_run
//! # async fn demo(env: deploykit::Environment, shell: std::sync::Arc<dyn ec2kit::Remote>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use deploykit::provision::{self, Inputs, LockSpec, Node};
//!
//! let cfg = env.provision.clone().unwrap_or_default();
//! let lock = LockSpec::for_environment("staging", &env, Duration::from_secs(60));
//! let inputs = Inputs::read("staging", &cfg, lock)?;
//! let nodes = [Node::new(shell, "root")];
//! // Overwrite differing secrets only after a look at the keys that differ.
//! let confirm = |plan: &provision::HostPlan| {
//!     eprintln!("{}: secrets differ: {:?}", plan.host, plan.secrets);
//!     false
//! };
//! let report = provision::run(&nodes, &cfg, &inputs, &confirm, &|e| eprintln!("{e}")).await?;
//! for (host, state) in report.failures() {
//!     eprintln!("{host}: {state}");
//! }
//! # Ok(()) }
//! ```

mod apply;
mod event;
pub mod lock;
mod plan;
mod run;
pub mod salt;
pub mod script;
pub mod secrets;
pub mod tree;
pub mod users;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use ec2kit::{Remote, RemoteError};
use serde::{Deserialize, Serialize};

pub use apply::{HostReport, apply, test};
pub use event::Event;
pub use lock::{LockSpec, ProvisionLock};
pub use plan::{HostPlan, Inputs, LocalSecrets, Node, ProvisionPlan, SecretsPlan, plan, plan_host};
pub use run::{ProvisionReport, dry_run, run};
pub use salt::SaltProvisioner;
pub use script::ScriptProvisioner;
pub use users::Developer;

/// The pinned Salt release installed on hosts that have none.
pub const SALT_VERSION: &str = "3007.8";

/// `[environments.<name>.provision]`: how an environment's servers are
/// configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    /// The local configuration tree: `states/`, `pillar/<env>/`,
    /// `secrets/<env>.sls` (git-ignored) and `secrets/<env>.sls.example`.
    /// Relative to the current directory as a library value; `ektool`'s
    /// config file makes it relative to the file.
    #[serde(default = "default_tree")]
    pub tree: PathBuf,
    /// Where provisioning keeps its files on the host (tree, secrets, Salt
    /// cache). Created 0700.
    #[serde(default = "default_path")]
    pub path: String,
    /// Which provisioner applies the tree.
    #[serde(default)]
    pub provisioner: ProvisionerKind,
    /// The script provisioner's script, relative to the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// `salt-call` on the host. When it is missing, the pinned Salt
    /// ([`SALT_VERSION`], or `salt_version`) is installed into a virtualenv
    /// beside it (`<dir>/..`).
    #[serde(default = "default_salt_call")]
    pub salt_call: String,
    /// The Salt release to install where none is.
    #[serde(default = "default_salt_version")]
    pub salt_version: String,
    /// The minion id (pillar top files can match on it). Default: the
    /// environment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minion_id: Option<String>,
    /// Kill the provisioner after this long.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Developers: accounts, groups and SSH keys kept in step with this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Developer>,
    /// The root of the user database that `useradd --prefix` works on
    /// (for chroots and tests); `/` (the default) is the host itself.
    #[serde(default = "default_users_root")]
    pub users_root: String,
}

fn default_tree() -> PathBuf {
    PathBuf::from("provision")
}
fn default_path() -> String {
    "/srv/ektool".into()
}
fn default_salt_call() -> String {
    "/opt/ektool-salt/bin/salt-call".into()
}
fn default_salt_version() -> String {
    SALT_VERSION.into()
}
fn default_timeout() -> u64 {
    1800
}
fn default_users_root() -> String {
    "/".into()
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            tree: default_tree(),
            path: default_path(),
            provisioner: ProvisionerKind::default(),
            script: None,
            salt_call: default_salt_call(),
            salt_version: default_salt_version(),
            minion_id: None,
            timeout_seconds: default_timeout(),
            users: Vec::new(),
            users_root: default_users_root(),
        }
    }
}

impl ProvisionConfig {
    /// Checks what serde cannot: absolute remote paths, a script for the
    /// script provisioner, valid user names and keys.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        let invalid = |m: String| Err(ProvisionError::Invalid(m));
        for (what, p) in [
            ("path", &self.path),
            ("salt_call", &self.salt_call),
            ("users_root", &self.users_root),
        ] {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return invalid(format!(
                    "provision.{what} must be an absolute path without `..`: {p:?}"
                ));
            }
        }
        if self.path.trim_end_matches('/').is_empty() {
            return invalid("provision.path must not be `/`".into());
        }
        if self.provisioner == ProvisionerKind::Script {
            match &self.script {
                Some(s) if tree::is_safe_relative(s) => {}
                Some(s) => {
                    return invalid(format!(
                        "provision.script must be a relative path inside the tree: {s:?}"
                    ));
                }
                None => return invalid("provisioner = \"script\" needs provision.script".into()),
            }
        }
        for d in &self.users {
            d.validate()?;
        }
        Ok(())
    }

    /// The remote layout under [`ProvisionConfig::path`].
    pub fn layout(&self) -> RemoteLayout {
        RemoteLayout::new(&self.path)
    }

    /// The provisioner's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// The configured provisioner for environment `env`.
    pub fn provisioner(&self, env: &str) -> Box<dyn Provisioner> {
        match self.provisioner {
            ProvisionerKind::Salt => Box::new(
                SaltProvisioner::new(&self.salt_call, &self.salt_version)
                    .minion_id(self.minion_id.clone().unwrap_or_else(|| env.to_owned()))
                    .timeout(self.timeout()),
            ),
            ProvisionerKind::Script => Box::new(
                ScriptProvisioner::new(self.script.clone().unwrap_or_default())
                    .env(env)
                    .timeout(self.timeout()),
            ),
        }
    }
}

/// The built-in provisioners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionerKind {
    /// Masterless `salt-call --local state.apply`.
    #[default]
    Salt,
    /// A shell script from the tree, run as the login user.
    Script,
}

/// Where provisioning's files live on a host, all under one private root:
///
/// ```text
/// <path>/                 0700
///   trees/<id>/           one uploaded configuration tree each
///     states/ pillar/ .salt/minion
///   tree -> trees/<id>    the tree in force (switched by rename)
///   secrets/secrets.sls   0600, outside the trees: a tree switch never touches it
///   salt-root/            Salt's private root_dir (cache, pki, logs)
///   users.json            the developers this tool manages
/// ```
///
/// A dry run changes nothing under the root: it stages its tree and keeps
/// Salt's cache in a temporary *scratch* directory instead
/// ([`RemoteLayout::with_scratch`], [`tree::stage_scratch`]), removed at
/// the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayout {
    /// The root.
    pub root: String,
    /// A dry run's temporary directory, outside the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
    /// Whether the secrets are read from the scratch directory: a dry run
    /// whose plan sends them stages them there, so the tree renders as
    /// the real run's would.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scratch_secrets: bool,
}

impl RemoteLayout {
    /// The layout under `root`.
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_owned(),
            scratch: None,
            scratch_secrets: false,
        }
    }

    /// The same layout for a dry run whose tree and Salt cache live in
    /// `scratch`; secrets are still read from the root (see
    /// [`RemoteLayout::with_scratch_secrets`]).
    #[must_use]
    pub fn with_scratch(&self, scratch: &str) -> Self {
        Self {
            root: self.root.clone(),
            scratch: Some(scratch.trim_end_matches('/').to_owned()),
            scratch_secrets: false,
        }
    }

    /// The same layout with the secrets read from (and staged in) the
    /// scratch directory, when there is one: a dry run of a plan that
    /// sends secrets tests with the file the real run would send, and
    /// never touches the host's own.
    #[must_use]
    pub fn with_scratch_secrets(mut self) -> Self {
        self.scratch_secrets = self.scratch.is_some();
        self
    }

    /// `<root>/trees/<id>`.
    pub fn tree_dir(&self, id: &str) -> String {
        format!("{}/trees/{id}", self.root)
    }

    /// `<root>/tree`, the link to the tree in force.
    pub fn current_tree(&self) -> String {
        format!("{}/tree", self.root)
    }

    /// The directory holding the secrets pillar file.
    pub fn secrets_dir(&self) -> String {
        match &self.scratch {
            Some(scratch) if self.scratch_secrets => format!("{scratch}/secrets"),
            _ => format!("{}/secrets", self.root),
        }
    }

    /// The secrets pillar file (`secrets.sls`, so pillar top files name it
    /// `secrets`).
    pub fn secrets_file(&self) -> String {
        format!("{}/secrets.sls", self.secrets_dir())
    }

    /// Salt's `root_dir` (in the scratch directory on a dry run).
    pub fn salt_root(&self) -> String {
        format!(
            "{}/salt-root",
            self.scratch.as_deref().unwrap_or(&self.root)
        )
    }

    /// The managed-users record.
    pub fn users_file(&self) -> String {
        format!("{}/users.json", self.root)
    }
}

/// How one state (or script) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResult {
    /// The state's id declaration.
    pub id: String,
    /// The state function (`file.managed`).
    pub function: String,
    /// Its `name` argument.
    pub name: String,
    /// `Some(true)` ok, `Some(false)` failed, `None` would change (test mode).
    pub result: Option<bool>,
    /// Salt's comment.
    pub comment: String,
    /// The names of what changed (never the values: they may hold secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// The order Salt ran it in.
    pub run_num: u64,
}

impl StateResult {
    /// Whether the state failed.
    pub fn failed(&self) -> bool {
        self.result == Some(false)
    }
}

impl fmt::Display for StateResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.result {
            Some(true) if self.changed.is_empty() => "ok",
            Some(true) => "changed",
            Some(false) => "FAILED",
            None => "would change",
        };
        write!(
            f,
            "{mark:>12}  {} ({} {})",
            self.id, self.function, self.name
        )?;
        if !self.changed.is_empty() {
            write!(f, " [{}]", self.changed.join(", "))?;
        }
        if self.failed() || self.result.is_none() {
            write!(f, ": {}", self.comment.lines().next().unwrap_or_default())?;
        }
        Ok(())
    }
}

/// What a provisioner did on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Which provisioner.
    pub provisioner: String,
    /// Whether it only tested (`test=True`).
    pub test: bool,
    /// Each state, in run order.
    pub states: Vec<StateResult>,
}

impl ApplyReport {
    /// The failed states.
    pub fn failures(&self) -> Vec<&StateResult> {
        self.states.iter().filter(|s| s.failed()).collect()
    }

    /// Counts: (ok, changed, failed, would change).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for s in &self.states {
            match s.result {
                Some(true) if s.changed.is_empty() => c.0 += 1,
                Some(true) => c.1 += 1,
                Some(false) => c.2 += 1,
                None => c.3 += 1,
            }
        }
        c
    }
}

/// Applies a configuration tree already on the host.
///
/// Implementations never see the secrets' values: those are in the 0600
/// file at [`RemoteLayout::secrets_file`], read on the host.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// A short name for reports (`salt`, `script`).
    fn name(&self) -> &str;

    /// Makes sure the host can run this provisioner (installing it if
    /// missing). Returns whether something was installed.
    async fn ensure_installed(&self, host: &dyn Remote) -> Result<bool, ProvisionError>;

    /// Applies the tree at `tree_dir` (a directory of
    /// [`RemoteLayout::tree_dir`]); with `test`, only reports what would
    /// change.
    async fn apply(
        &self,
        host: &dyn Remote,
        layout: &RemoteLayout,
        tree_dir: &str,
        test: bool,
    ) -> Result<ApplyReport, ProvisionError>;
}

/// Why provisioning did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The configuration cannot work.
    #[error("invalid provision config: {0}")]
    Invalid(String),
    /// A run was given no host.
    #[error("no hosts to provision")]
    NoHosts,
    /// The local configuration tree could not be read.
    #[error("{}: {source}", path.display())]
    Tree {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A symbolic link in the local tree leads somewhere it must not
    /// (outside `states/` or this environment's pillar, or in a loop).
    #[error("{}: {reason}; refused", path.display())]
    TreeLink {
        /// The link.
        path: PathBuf,
        /// Where it leads and why that is refused.
        reason: String,
    },
    /// A host failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Neither this machine nor the host has the environment's secrets.
    #[error(
        "no secrets for {env} here ({local}) or on the host: copy {example} to {local} and fill it in, or get it from a colleague"
    )]
    NoSecrets {
        /// The environment.
        env: String,
        /// The local secrets file.
        local: String,
        /// Its template.
        example: String,
    },
    /// The host has secrets and this machine does not: uploading nothing
    /// would silently keep them, so ask for them first.
    #[error(
        "{host} has secrets for {env} but {local} is missing: fetch them with `ektool secrets get --env {env}`"
    )]
    SecretsOnlyRemote {
        /// The host.
        host: String,
        /// The environment.
        env: String,
        /// The local secrets file.
        local: String,
    },
    /// The local secrets differ from the host's and the overwrite was not
    /// confirmed.
    #[error("{host}: local secrets differ from the host's; not confirmed, nothing was changed")]
    SecretsNotConfirmed {
        /// The host.
        host: String,
    },
    /// A developer's account may not be touched: root, a system account
    /// this tool did not create, or a home (or `~/.ssh`, or a key file)
    /// that is a link or not the developer's own.
    #[error("{host}: refusing to manage {user}: {reason}")]
    Refused {
        /// The host.
        host: String,
        /// The account.
        user: String,
        /// What is wrong, naming the path.
        reason: String,
    },
    /// Another provision, or a deploy of the environment, holds a lock on
    /// the host.
    #[error("{lock} (lock {path})")]
    Locked {
        /// The lock found.
        lock: Box<crate::lock::HeldLock>,
        /// The lock directory on the host.
        path: String,
    },
    /// The user change would leave nobody able to log in.
    #[error("refusing a user change that would leave nobody able to log in: {0}")]
    LockOut(String),
    /// Installing the provisioner failed.
    #[error("{host}: could not install {what}: {detail}")]
    Install {
        /// The host.
        host: String,
        /// What.
        what: String,
        /// The end of its output.
        detail: String,
    },
    /// Salt could not render the states or pillar: nothing was applied.
    #[error("{host}: salt could not render the configuration:\n  {}", .errors.join("\n  "))]
    Render {
        /// The host.
        host: String,
        /// Salt's messages.
        errors: Vec<String>,
    },
    /// The provisioner's output was not what it should be.
    #[error("{host}: {what} ended with {status} without a result: {detail}")]
    NoResult {
        /// The host.
        host: String,
        /// The provisioner.
        what: String,
        /// How it ended.
        status: ec2kit::remote::ExitStatus,
        /// The end of its output.
        detail: String,
    },
}
