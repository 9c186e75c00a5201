//! The audit timeline ([`Deployer::audit`]) and the appends of the
//! operations that are not in the release log ([`Deployer`]'s `record`).

use super::Deployer;
use crate::audit::{self, AuditAction, AuditEntry, AuditQuery, AuditReport, AuditResult};
use crate::error::{DeployError, HostFailure, Stage};
use crate::event::Event;
use crate::host::Host;
use crate::shell::describe;

impl Deployer {
    /// Every host's release log and audit file, read in parallel (one
    /// command per host, within the state deadline) and merged into one
    /// timeline, oldest first, narrowed by `query`. A host that cannot be
    /// read is listed in [`AuditReport::unreadable`]; the others are shown.
    pub async fn audit(&self, query: &AuditQuery) -> Result<AuditReport, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let timeout = self.timeouts().state.get();
        let results = self
            .each(self.hosts.len(), |_, h| audit::read(h, timeout))
            .await;
        let mut logs = Vec::new();
        let mut unreadable = Vec::new();
        for (h, r) in self.hosts.iter().zip(results) {
            match r {
                Ok(l) => logs.push(l),
                Err(e) => unreadable.push(HostFailure {
                    host: h.name().to_owned(),
                    stage: Stage::Inspect,
                    error: describe(&e),
                }),
            }
        }
        Ok(AuditReport {
            environment: self.environment.clone(),
            entries: audit::merge(logs, query),
            unreadable,
        })
    }

    /// An audit entry of this deployer's actor and environment.
    pub(super) fn audit_entry(&self, action: AuditAction, what: &str) -> AuditEntry {
        let mut e = AuditEntry::new(action, self.actor.clone(), &self.environment, what);
        e.message = self.message.clone();
        e
    }

    /// Appends `entry` (with each host's result) to every host's audit
    /// file in parallel. Best effort: a failed append is a
    /// [`Event::Warning`], never the action's failure.
    pub(super) async fn record(&self, entry: &AuditEntry, results: &[(&Host, Result<(), String>)]) {
        let timeout = self.timeouts().lock.get();
        let appends = results.iter().map(|(h, r)| {
            let mut e = entry.clone();
            e.host = h.name().to_owned();
            match r {
                Ok(()) => e.result = Some(AuditResult::Success),
                Err(why) => {
                    e.result = Some(AuditResult::Failed);
                    e.message = Some(why.clone());
                }
            }
            async move { (h, audit::append(h, &[e], true, timeout).await) }
        });
        for (h, r) in futures::future::join_all(appends).await {
            if let Err(e) = r {
                self.emit(Event::Warning {
                    host: Some(h.name().to_owned()),
                    message: format!("audit log not written: {}", describe(&e)),
                });
            }
        }
    }
}
