//! The change half of a provision: one host brought to its
//! [`HostPlan`] ([`apply`]), or the same tested in a scratch directory
//! that is removed afterwards ([`test`], for a dry run).

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::plan::{HostPlan, Inputs, Node, SecretsPlan};
use super::users::{self, UsersPlan};
use super::{ApplyReport, ProvisionConfig, ProvisionError, secrets, tree};

/// What a run did (or, tested, would do) on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The host.
    pub host: String,
    /// What happened to its secrets (tested: what would).
    pub secrets: SecretsPlan,
    /// The accounts ensured and revoked (tested: to be).
    pub users: UsersPlan,
    /// The tree id put in force (`trees/<id>`); none when tested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    /// Whether the provisioner was installed first.
    pub installed: bool,
    /// The provisioner's per-state results.
    pub report: ApplyReport,
}

impl HostReport {
    /// Whether a state failed here.
    pub fn failed(&self) -> bool {
        !self.report.failures().is_empty()
    }
}

/// Brings one host to `plan` (made by [`super::plan`] for this host, with
/// the host locked since): installs the provisioner if missing, stages
/// the tree in a fresh `trees/<id>`, uploads the secrets when the plan
/// sends them, applies the users plan, switches `tree` to the new
/// directory, and applies that directory. Failed states are in the
/// report, not an error.
pub async fn apply(
    node: &Node,
    cfg: &ProvisionConfig,
    inputs: &Inputs,
    plan: &HostPlan,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<HostReport, ProvisionError> {
    let layout = cfg.layout();
    let host = node.remote.as_ref();
    let name = &node.name;
    let sent = match (&plan.secrets, &inputs.secrets.bytes) {
        (s, Some(bytes)) if s.sends() => Some(bytes),
        (s, None) if s.sends() => {
            return Err(ProvisionError::Invalid(format!(
                "{name}: the plan sends secrets, and {} was not read",
                inputs.secrets.path.display()
            )));
        }
        _ => None,
    };
    let provisioner = cfg.provisioner(&inputs.environment);
    let installed = provisioner.ensure_installed(host).await?;
    if installed {
        on_event(&Event::Installed {
            host: name.clone(),
            provisioner: provisioner.name().to_owned(),
        });
    }
    let id = tree::new_tree_id();
    let dir = tree::stage(host, &layout, &inputs.tree, &id).await?;
    on_event(&Event::Staged {
        host: name.clone(),
        files: inputs.tree.files.len(),
        dir: dir.clone(),
        scratch: false,
    });
    if let Some(bytes) = sent {
        secrets::upload(host, &layout, bytes).await?;
        on_event(&Event::SecretsSent {
            host: name.clone(),
            secrets: plan.secrets.clone(),
        });
    }
    if !plan.users.is_empty() {
        users::apply(host, &layout, &plan.users, &cfg.users_root).await?;
        on_event(&Event::UsersApplied {
            host: name.clone(),
            ensured: plan.users.ensure.len(),
            revoked: plan.users.revoke.len(),
        });
    }
    tree::switch(host, &layout, &id).await?;
    // The resolved directory, not the `tree` link: what this run staged
    // is what it applies, whatever the link says meanwhile.
    let report = provisioner.apply(host, &layout, &dir, false).await?;
    Ok(HostReport {
        host: name.clone(),
        secrets: plan.secrets.clone(),
        users: plan.users.clone(),
        tree: Some(id),
        installed,
        report,
    })
}

/// Tests `plan` on one host and changes nothing there: the tree is
/// staged in a fresh temporary directory outside the provision root (the
/// tree, Salt's cache, secrets and users stay exactly as they were), the
/// provisioner runs in test mode on it, and the directory is removed.
/// When the plan sends secrets, the local file is staged in that
/// directory too (0600), so the tree renders with what the real run
/// would send — a host never provisioned has none of its own; users are
/// not applied.
pub async fn test(
    node: &Node,
    cfg: &ProvisionConfig,
    inputs: &Inputs,
    plan: &HostPlan,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<HostReport, ProvisionError> {
    let layout = cfg.layout();
    let host = node.remote.as_ref();
    let scratch = tree::stage_scratch(host, &inputs.tree).await?;
    let dir = format!("{scratch}/tree");
    on_event(&Event::Staged {
        host: node.name.clone(),
        files: inputs.tree.files.len(),
        dir: dir.clone(),
        scratch: true,
    });
    let report = async {
        let mut layout = layout.with_scratch(&scratch);
        if let (Some(bytes), true) = (&inputs.secrets.bytes, plan.secrets.sends()) {
            layout = layout.with_scratch_secrets();
            secrets::upload(host, &layout, bytes).await?;
        }
        cfg.provisioner(&inputs.environment)
            .apply(host, &layout, &dir, true)
            .await
    }
    .await;
    // The scratch directory goes whatever the test said.
    tree::discard_scratch(host, &scratch).await?;
    Ok(HostReport {
        host: node.name.clone(),
        secrets: plan.secrets.clone(),
        users: plan.users.clone(),
        tree: None,
        installed: false,
        report: report?,
    })
}
