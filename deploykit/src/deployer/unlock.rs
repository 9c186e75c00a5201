//! Unlocking: removing a deploy lock a killed run left behind (or, when
//! forced, any).

use serde::{Deserialize, Serialize};

use super::Deployer;
use crate::audit::AuditAction;
use crate::error::DeployError;
use crate::lock::{self, HeldLock};
use crate::shell::describe;

/// What `unlock` did on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockOutcome {
    /// The host.
    pub host: String,
    /// The lock found, if any.
    pub lock: Option<HeldLock>,
    /// Whether it was removed (by `unlock_plan`: whether it would be).
    pub removed: bool,
}

impl Deployer {
    /// Removes locks: stale ones always, live ones only with `force`. A
    /// live lock without `force` is an error naming its owner (nothing is
    /// removed anywhere then). A lock is removed only while it is the one
    /// that was judged (its owner file unchanged): a deploy that takes the
    /// lock in between keeps it. Each removal is recorded in the host's
    /// audit file ([`crate::audit`]).
    pub async fn unlock(&self, force: bool) -> Result<Vec<UnlockOutcome>, DeployError> {
        let mut out = self.unlock_plan(force).await?;
        let timeout = self.timeouts().lock.get();
        let entry = self.audit_entry(
            AuditAction::Unlock,
            if force { "lock (forced)" } else { "stale lock" },
        );
        let mut outcomes = Vec::new();
        let mut error = None;
        for (h, o) in self.hosts.iter().zip(&mut out) {
            if let Some(l) = &o.lock {
                match lock::remove(h, l, force, timeout).await {
                    Ok(removed) => {
                        o.removed = removed;
                        if removed {
                            outcomes.push((h, Ok(())));
                        }
                    }
                    Err(e) => {
                        outcomes.push((h, Err(describe(&e))));
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        // The hosts whose lock was removed (or failed to be) record it.
        self.record(&entry, &outcomes).await;
        match error {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// What [`Deployer::unlock`] would do (reads only): each host's lock,
    /// with `removed` saying whether it would go; the same error as
    /// `unlock` for a live lock without `force`.
    pub async fn unlock_plan(&self, force: bool) -> Result<Vec<UnlockOutcome>, DeployError> {
        let stale_after = self.config.lock_stale_after();
        let timeout = self.timeouts().state.get();
        let found = self
            .each(self.hosts.len(), |_, h| {
                lock::status_within(h, stale_after, timeout)
            })
            .await;
        let mut locks = Vec::new();
        for r in found {
            locks.push(r?);
        }
        if !force && let Some(live) = locks.iter().flatten().find(|l| l.stale.is_none()) {
            return Err(DeployError::LockNotStale {
                lock: Box::new(live.clone()),
            });
        }
        Ok(self
            .hosts
            .iter()
            .zip(locks)
            .map(|(h, l)| UnlockOutcome {
                host: h.name().to_owned(),
                removed: l.is_some(),
                lock: l,
            })
            .collect())
    }
}
