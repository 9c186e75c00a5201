//! Holding the deploy lock by hand (`ektool lock` / `ektool unlock`): the
//! same lock deploys, rollbacks, restarts and maintenance take, held on
//! every host so that they wait (`lock_wait`) or refuse, naming who holds
//! it and why, until it is released.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Deployer, UnlockOutcome};
use crate::audit::AuditAction;
use crate::error::DeployError;
use crate::lock::{self, HeldLock, LockOwner};
use crate::shell::describe;

/// What [`Deployer::hold`] took (or, from `hold_plan`, would take).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReport {
    /// The environment.
    pub environment: String,
    /// The hosts now locked, in lock order.
    pub hosts: Vec<String>,
    /// The owner written on every host (who, when, the message).
    pub owner: LockOwner,
}

impl Deployer {
    /// The owner a hand-held lock of this deployer records.
    fn hand_owner(&self, token: String) -> LockOwner {
        LockOwner {
            actor: self.actor.clone(),
            environment: self.environment.clone(),
            since: Timestamp::now(),
            action: "hand-held lock".into(),
            message: self.message.clone(),
            token,
            first_host: self.hosts.first().map(|h| h.name().to_owned()),
            hand_held: true,
        }
    }

    /// Takes the environment's deploy lock on every host, by hand, with
    /// this deployer's [`message`](Deployer::message): all or nothing (the
    /// lock round of a deploy, so a host that cannot be locked — held, or
    /// unreachable — makes it release the hosts it took, and a race with
    /// a deploy has one winner). Waits for a held lock with
    /// [`lock_wait`](Deployer::lock_wait), else fails with
    /// [`DeployError::Locked`]. The lock stays when this process ends; it
    /// is never judged stale, and [`release_hold`](Deployer::release_hold)
    /// removes it.
    pub async fn hold(&self) -> Result<HoldReport, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let owner = self.hand_owner(uuid::Uuid::new_v4().simple().to_string());
        let entry = self.audit_entry(AuditAction::Lock, "hand-held lock");
        lock::Round {
            hosts: &self.hosts,
            owner: owner.clone(),
            stale_after: self.config.lock_stale_after(),
            wait: self.lock_wait,
            timeout: self.timeouts().lock.get(),
            commit: None,
            maintenance_file: self.config.maintenance_file.as_str(),
            with_log: false,
            shared_files: &[],
            cancel: &self.cancel,
            events: &self.events,
        }
        .lock_all()
        .await?;
        let taken: Vec<_> = self.hosts.iter().map(|h| (h, Ok(()))).collect();
        self.record(&entry, &taken).await;
        Ok(self.hold_report(owner))
    }

    /// What [`hold`](Deployer::hold) would do (reads only): the same
    /// report, or [`DeployError::Locked`] naming a lock already held.
    pub async fn hold_plan(&self) -> Result<HoldReport, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        if let Some(held) = self.locks().await?.into_iter().flatten().next() {
            return Err(DeployError::Locked {
                lock: Box::new(held),
            });
        }
        Ok(self.hold_report(self.hand_owner(String::new())))
    }

    fn hold_report(&self, owner: LockOwner) -> HoldReport {
        HoldReport {
            environment: self.environment.clone(),
            hosts: self.hosts.iter().map(|h| h.name().to_owned()).collect(),
            owner,
        }
    }

    /// Every host's lock, read at once.
    async fn locks(&self) -> Result<Vec<Option<HeldLock>>, DeployError> {
        let stale_after = self.config.lock_stale_after();
        let timeout = self.timeouts().state.get();
        let found = self
            .each(self.hosts.len(), |_, h| {
                lock::status_within(h, stale_after, timeout)
            })
            .await;
        found
            .into_iter()
            .map(|r| r.map_err(DeployError::from))
            .collect()
    }

    /// Releases a hand-held lock on every host that has one. Every host is
    /// read first: when one cannot be read, or holds a lock that is not
    /// hand-held (a running deploy's, or a stale one: `unlock` is the tool
    /// for those), nothing is removed anywhere
    /// ([`DeployError::NotHandHeld`]). A lock is removed only while it is
    /// the one read (its owner file unchanged). No lock anywhere is not an
    /// error: nothing is removed.
    pub async fn release_hold(&self) -> Result<Vec<UnlockOutcome>, DeployError> {
        let mut out = self.release_hold_plan().await?;
        let entry = self.audit_entry(AuditAction::Unlock, "hand-held lock");
        let timeout = self.timeouts().lock.get();
        let removed =
            futures::future::join_all(self.hosts.iter().zip(&out).map(|(h, o)| async move {
                match &o.lock {
                    Some(l) => lock::remove(h, l, false, timeout).await,
                    None => Ok(false),
                }
            }))
            .await;
        let mut first_error = None;
        let mut outcomes = Vec::new();
        for ((o, r), h) in out.iter_mut().zip(removed).zip(&self.hosts) {
            match r {
                Ok(done) => {
                    o.removed = done;
                    if done {
                        outcomes.push((h, Ok(())));
                    }
                }
                Err(e) => {
                    outcomes.push((h, Err(describe(&e))));
                    first_error.get_or_insert(e);
                }
            }
        }
        // Only hosts whose lock was released (or failed to be) record it.
        self.record(&entry, &outcomes).await;
        match first_error {
            // The hosts not reached keep their lock: the environment stays
            // locked, and a second `release_hold` finishes the job.
            Some(e) => Err(DeployError::Remote(e)),
            None => Ok(out),
        }
    }

    /// What [`release_hold`](Deployer::release_hold) would do (reads only).
    pub async fn release_hold_plan(&self) -> Result<Vec<UnlockOutcome>, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let locks = self.locks().await?;
        if let Some(other) = locks
            .iter()
            .flatten()
            .find(|l| !l.owner.as_ref().is_some_and(|o| o.hand_held))
        {
            return Err(DeployError::NotHandHeld {
                lock: Box::new(other.clone()),
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
