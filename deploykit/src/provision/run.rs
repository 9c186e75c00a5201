//! A whole provision run, conducted: [`run`] locks every host, plans every
//! host, asks for the secrets overwrites, then applies host by host;
//! [`dry_run`] plans and tests the same without changing anything.

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditAction, AuditEntry, AuditResult};

use super::apply::{self, HostReport};
use super::event::Event;
use super::lock::ProvisionLock;
use super::plan::{self, HostPlan, Inputs, Node, ProvisionPlan, SecretsPlan};
use super::{ProvisionConfig, ProvisionError, StateResult};

/// What a run did, host by host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionReport {
    /// The environment.
    pub environment: String,
    /// Whether it was a dry run (tested, nothing changed).
    pub dry_run: bool,
    /// The hosts done, in order. A host whose states failed ends the
    /// run: it is the last one here, and the later hosts stay as they
    /// were.
    pub hosts: Vec<HostReport>,
    /// The plan the run followed (a dry run: would follow), every host's,
    /// decided before any host changed.
    pub plan: ProvisionPlan,
}

impl ProvisionReport {
    /// Every failed state, with its host.
    pub fn failures(&self) -> Vec<(&str, &StateResult)> {
        self.hosts
            .iter()
            .flat_map(|h| {
                h.report
                    .failures()
                    .into_iter()
                    .map(move |s| (h.host.as_str(), s))
            })
            .collect()
    }
}

/// Provisions `nodes` with `cfg` and `inputs`:
///
/// 1. takes every host's provision lock (and its deploy lock, see
///    [`ProvisionLock`]), waiting up to `inputs.lock.wait`;
/// 2. plans every host ([`plan::plan`]): every refusal comes here,
///    before any host is changed;
/// 3. for each host whose secrets differ from the local file, reports
///    [`Event::SecretsDiffer`] and asks `confirm`; a no ends the run
///    ([`ProvisionError::SecretsNotConfirmed`]), nothing changed;
/// 4. applies each host in order ([`apply::apply`]), stopping after the
///    first whose states fail (the next ones would probably fail the same
///    way, and stay as they were);
/// 5. records each host's run in its audit file ([`crate::audit`], when
///    the environment's deploy root exists there; a failed append is an
///    [`Event::AuditNotWritten`], never the run's failure);
/// 6. releases every lock, whatever happened.
///
/// An error from a host ends the run with that error.
pub async fn run(
    nodes: &[Node],
    cfg: &ProvisionConfig,
    inputs: &Inputs,
    confirm: &(dyn Fn(&HostPlan) -> bool + Sync),
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<ProvisionReport, ProvisionError> {
    if nodes.is_empty() {
        return Err(ProvisionError::NoHosts);
    }
    let layout = cfg.layout();
    let mut held = Vec::with_capacity(nodes.len());
    for node in nodes {
        match ProvisionLock::acquire(node.remote.clone(), &layout, &inputs.lock).await {
            Ok(lock) => held.push((node.name.clone(), lock)),
            Err(e) => {
                release(held, on_event).await;
                return Err(e);
            }
        }
    }
    let outcome = locked(nodes, cfg, inputs, confirm, on_event).await;
    let failed_release = release(held, on_event).await;
    match (outcome, failed_release) {
        // A run that did its work and cannot give a lock back says so: the
        // next run would find it.
        (Ok(_), Some(e)) => Err(e),
        (outcome, _) => outcome,
    }
}

/// Steps 2 to 4 of [`run`], with every host locked.
async fn locked(
    nodes: &[Node],
    cfg: &ProvisionConfig,
    inputs: &Inputs,
    confirm: &(dyn Fn(&HostPlan) -> bool + Sync),
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<ProvisionReport, ProvisionError> {
    let plan = plan::plan(nodes, cfg, inputs).await?;
    for host in &plan.hosts {
        if let SecretsPlan::Overwrite { changes } = &host.secrets {
            on_event(&Event::SecretsDiffer {
                host: host.host.clone(),
                local: inputs.secrets.path.clone(),
                changes: changes.clone(),
            });
            if !confirm(host) {
                return Err(ProvisionError::SecretsNotConfirmed {
                    host: host.host.clone(),
                });
            }
        }
    }
    let mut hosts = Vec::with_capacity(nodes.len());
    for (node, host_plan) in nodes.iter().zip(&plan.hosts) {
        let entry = AuditEntry::new(
            AuditAction::Provision,
            inputs.lock.actor.clone(),
            &inputs.environment,
            "provision",
        );
        let result = apply::apply(node, cfg, inputs, host_plan, on_event).await;
        record(node, inputs, entry, &result, on_event).await;
        let report = result?;
        let failed = report.failed();
        hosts.push(report);
        if failed {
            break;
        }
    }
    Ok(ProvisionReport {
        environment: inputs.environment.clone(),
        dry_run: false,
        hosts,
        plan,
    })
}

/// Appends a host's provision to its audit file (when the environment's
/// deploy root exists there); a failed append is an
/// [`Event::AuditNotWritten`].
async fn record(
    node: &Node,
    inputs: &Inputs,
    mut entry: AuditEntry,
    result: &Result<HostReport, ProvisionError>,
    on_event: &(dyn Fn(&Event) + Sync),
) {
    let Some(root) = &inputs.lock.deploy_root else {
        return;
    };
    match result {
        Ok(r) if r.failed() => {
            entry.result = Some(AuditResult::Failed);
            entry.message = Some(format!("{} state(s) failed", r.report.failures().len()));
        }
        Ok(r) => {
            entry.result = Some(AuditResult::Success);
            if let Some(tree) = &r.tree {
                entry.what = format!("provision (tree {tree})");
            }
        }
        Err(e) => {
            entry.result = Some(AuditResult::Failed);
            entry.message = Some(e.to_string());
        }
    }
    entry.host = node.name.clone();
    let host = crate::Host::new(node.remote.clone(), root.clone()).named(node.name.clone());
    if let Err(e) = audit::append(&host, &[entry], false, inputs.lock.timeout).await {
        on_event(&Event::AuditNotWritten {
            host: node.name.clone(),
            error: crate::shell::describe(&e),
        });
    }
}

/// Gives back every lock taken (newest first); the first failure is
/// returned, each one reported.
async fn release(
    held: Vec<(String, ProvisionLock)>,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Option<ProvisionError> {
    let mut first = None;
    for (host, lock) in held.into_iter().rev() {
        if let Err(e) = lock.release().await {
            on_event(&Event::LockNotReleased {
                host,
                error: e.to_string(),
            });
            first.get_or_insert(e);
        }
    }
    first
}

/// What [`run`] would do, changing nothing anywhere (no lock either):
/// reports each lock a real run would find held ([`Event::LockHeld`]),
/// plans every host (the same refusals as a real run), reports secrets
/// that differ, and tests each host's plan in a scratch directory
/// ([`apply::test`]), stopping after the first whose states fail.
pub async fn dry_run(
    nodes: &[Node],
    cfg: &ProvisionConfig,
    inputs: &Inputs,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<ProvisionReport, ProvisionError> {
    if nodes.is_empty() {
        return Err(ProvisionError::NoHosts);
    }
    let layout = cfg.layout();
    for node in nodes {
        for (lock, path) in ProvisionLock::held(node.remote.clone(), &layout, &inputs.lock).await? {
            on_event(&Event::LockHeld {
                host: node.name.clone(),
                lock: Box::new(lock),
                path,
            });
        }
    }
    let plan = plan::plan(nodes, cfg, inputs).await?;
    let mut hosts = Vec::with_capacity(nodes.len());
    for (node, host_plan) in nodes.iter().zip(&plan.hosts) {
        if let SecretsPlan::Overwrite { changes } = &host_plan.secrets {
            on_event(&Event::SecretsDiffer {
                host: host_plan.host.clone(),
                local: inputs.secrets.path.clone(),
                changes: changes.clone(),
            });
        }
        let report = apply::test(node, cfg, inputs, host_plan, on_event).await?;
        let failed = report.failed();
        hosts.push(report);
        if failed {
            break;
        }
    }
    Ok(ProvisionReport {
        environment: inputs.environment.clone(),
        dry_run: true,
        hosts,
        plan,
    })
}
