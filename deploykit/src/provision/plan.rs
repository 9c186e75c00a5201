//! The decision half of a provision: what this machine brings
//! ([`Inputs`]), the hosts it goes to ([`Node`]), and, read from every
//! host without changing anything, what a run would do there
//! ([`ProvisionPlan`]) — or why it must not run at all.
//!
//! Every refusal is decided here, for every host, before [`super::apply`]
//! changes anything anywhere: a user change that would lock out the login
//! user, an account that may not be touched, secrets only the host has
//! (or nobody has), links leading out of the tree (when the tree is read).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ec2kit::Remote;
use serde::{Deserialize, Serialize};

use super::lock::LockSpec;
use super::secrets::{self, SecretChange, SecretsStatus};
use super::tree::{LocalTree, TreeSummary};
use super::users::{self, UsersPlan};
use super::{ProvisionConfig, ProvisionError};

/// One host to provision: its shell, and who that shell is logged in as.
///
/// The login matters to the users step: a run never revokes the user it
/// logs in as, nor takes from them the key it logged in with
/// ([`Node::login_key`]; without it, it only keeps them *some* key).
#[derive(Clone)]
pub struct Node {
    /// The host's name in plans, events and errors (the remote's, e.g.
    /// `root@10.0.1.10:22`, `localhost`).
    pub name: String,
    /// The user the shell runs as.
    pub user: String,
    /// The public key (`type base64 [comment]`) the shell authenticated
    /// with, when known.
    pub login_key: Option<String>,
    /// The shell.
    pub remote: Arc<dyn Remote>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("login_key", &self.login_key)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A host reached through `remote` as `user`, named after the remote,
    /// its login key unknown.
    pub fn new(remote: Arc<dyn Remote>, user: impl Into<String>) -> Self {
        Self {
            name: remote.host(),
            user: user.into(),
            login_key: None,
            remote,
        }
    }

    /// The key the shell logged in with (e.g. from
    /// `SshRemote::authenticated_key`), so the users step keeps exactly
    /// that key for the login user.
    #[must_use]
    pub fn login_key(mut self, key: Option<String>) -> Self {
        self.login_key = key;
        self
    }
}

/// The environment's secrets file on this machine.
#[derive(Clone)]
pub struct LocalSecrets {
    /// Where it is (`<tree>/secrets/<env>.sls`).
    pub path: PathBuf,
    /// Its committed template (`<tree>/secrets/<env>.sls.example`): when
    /// it exists the tree needs secrets, so having none is refused.
    pub example: PathBuf,
    /// Its bytes, when it exists. Never printed, logged or planned.
    pub bytes: Option<Vec<u8>>,
    /// Whether group or others may read it (it should be 0600).
    pub readable_by_others: bool,
}

impl fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSecrets")
            .field("path", &self.path)
            .field("example", &self.example)
            .field(
                "bytes",
                &self.bytes.as_ref().map(|b| format!("<{} bytes>", b.len())),
            )
            .field("readable_by_others", &self.readable_by_others)
            .finish()
    }
}

impl LocalSecrets {
    /// Reads environment `env`'s secrets file of the tree at `tree` (a
    /// missing file is `bytes: None`, not an error).
    pub fn read(tree: &Path, env: &str) -> Result<Self, ProvisionError> {
        use std::os::unix::fs::PermissionsExt;
        let path = secrets::local_path(tree, env);
        let example = secrets::example_path(tree, env);
        let err = |source| ProvisionError::Tree {
            path: path.clone(),
            source,
        };
        let (bytes, readable_by_others) = match std::fs::metadata(&path) {
            Ok(m) => (
                Some(std::fs::read(&path).map_err(err)?),
                m.permissions().mode() & 0o077 != 0,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, false),
            Err(e) => return Err(err(e)),
        };
        Ok(Self {
            path,
            example,
            bytes,
            readable_by_others,
        })
    }
}

/// What one provision run brings from this machine, the same for every
/// host.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The environment (its pillar, secrets, minion id and locks).
    pub environment: String,
    /// The configuration tree to send.
    pub tree: LocalTree,
    /// The environment's secrets.
    pub secrets: LocalSecrets,
    /// How each host is locked for the run.
    pub lock: LockSpec,
}

impl Inputs {
    /// Reads the tree (states and this environment's pillar, refusing
    /// links that lead out of it) and the secrets file for `environment`.
    pub fn read(
        environment: &str,
        cfg: &ProvisionConfig,
        lock: LockSpec,
    ) -> Result<Self, ProvisionError> {
        Ok(Self {
            environment: environment.to_owned(),
            tree: LocalTree::collect(&cfg.tree, environment, cfg.script.as_deref())?,
            secrets: LocalSecrets::read(&cfg.tree, environment)?,
            lock,
        })
    }
}

/// What a run does with a host's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SecretsPlan {
    /// No secrets here nor on the host, and the tree needs none.
    None,
    /// The host has exactly the local file: nothing is sent.
    Unchanged,
    /// The host has none: the local file is uploaded.
    Upload,
    /// The host's differ: the local file replaces them, once confirmed.
    Overwrite {
        /// What differs (keys only).
        changes: Vec<SecretChange>,
    },
}

impl SecretsPlan {
    /// Whether the local file is sent.
    pub fn sends(&self) -> bool {
        matches!(self, Self::Upload | Self::Overwrite { .. })
    }
}

/// What a run does on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// The host.
    pub host: String,
    /// The user the run logs in as.
    pub user: String,
    /// Accounts ensured and revoked.
    pub users: UsersPlan,
    /// The secrets.
    pub secrets: SecretsPlan,
}

/// What a run does on every host, decided before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionPlan {
    /// The environment.
    pub environment: String,
    /// Which provisioner applies the tree (`salt`, `script`).
    pub provisioner: String,
    /// The files sent, and what was left out on purpose.
    pub tree: TreeSummary,
    /// Each host, in run order.
    pub hosts: Vec<HostPlan>,
}

/// Plans the run on every host, changing nothing: reads the managed
/// users and the host's secrets, checks the accounts the users step
/// touches, and refuses (the first refusal, in host order) what must not
/// run. [`super::run`] calls it with every host locked, so the plan holds
/// when it is applied.
pub async fn plan(
    nodes: &[Node],
    cfg: &ProvisionConfig,
    inputs: &Inputs,
) -> Result<ProvisionPlan, ProvisionError> {
    let mut hosts = Vec::with_capacity(nodes.len());
    for node in nodes {
        hosts.push(plan_host(node, cfg, inputs).await?);
    }
    Ok(ProvisionPlan {
        environment: inputs.environment.clone(),
        provisioner: cfg.provisioner(&inputs.environment).name().to_owned(),
        tree: inputs.tree.summary(),
        hosts,
    })
}

/// Plans one host (see [`plan`]).
pub async fn plan_host(
    node: &Node,
    cfg: &ProvisionConfig,
    inputs: &Inputs,
) -> Result<HostPlan, ProvisionError> {
    let layout = cfg.layout();
    let host = node.remote.as_ref();
    let managed = users::read_managed(host, &layout).await?;
    let login = users::Login {
        user: &node.user,
        key: node.login_key.as_deref(),
    };
    let users_plan = users::plan(&cfg.users, &managed, login)?;
    users::check(host, &users_plan, &cfg.users_root).await?;
    let local = &inputs.secrets;
    let secrets = match &local.bytes {
        Some(bytes) => match secrets::compare(host, &layout, bytes).await? {
            SecretsStatus::Same => SecretsPlan::Unchanged,
            SecretsStatus::New => SecretsPlan::Upload,
            SecretsStatus::Differs { changes } => SecretsPlan::Overwrite { changes },
        },
        // Uploading nothing would silently keep the host's secrets; a
        // tree with a template needs some.
        None => match secrets::read_remote(host, &layout).await? {
            Some(_) => {
                return Err(ProvisionError::SecretsOnlyRemote {
                    host: node.name.clone(),
                    env: inputs.environment.clone(),
                    local: local.path.display().to_string(),
                });
            }
            None if local.example.exists() => {
                return Err(ProvisionError::NoSecrets {
                    env: inputs.environment.clone(),
                    local: local.path.display().to_string(),
                    example: local.example.display().to_string(),
                });
            }
            None => SecretsPlan::None,
        },
    };
    Ok(HostPlan {
        host: node.name.clone(),
        user: node.user.clone(),
        users: users_plan,
        secrets,
    })
}
