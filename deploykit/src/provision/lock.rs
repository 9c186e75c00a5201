//! The provision lock: one provision at a time per host, and never while
//! a deploy of the environment runs there.
//!
//! Two runs provisioning one host (two operators, a CI retry) would delete
//! each other's staged trees and retarget `tree` under a running
//! `salt-call`; a provision during a deploy would change the deploy root
//! (Salt states commonly manage it) under the deploy. So a provision takes,
//! with the deploy lock's own mechanism ([`crate::lock`]: an atomic `mkdir`,
//! an owner file, release by token only, stale locks reported and never
//! taken over):
//!
//! 1. the provision root's lock, `<provision path>/.ektool/lock`;
//! 2. the environment's deploy lock, `<deploy root>/.ektool/lock`, when the
//!    deploy root exists (on a fresh host there is nothing to deploy to
//!    yet, and creating it as the provisioning user would give it the
//!    wrong owner). A `.ektool` directory made here is given the deploy
//!    root's owner, so the deploy user can still take its own lock.
//!
//! A second run fails fast naming the holder, or waits up to a limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ec2kit::{Command, Remote};

use super::{ProvisionError, RemoteLayout};
use crate::host::{Actor, Host};
use crate::lock::{self, Attempt, HeldLock, LockOwner};
use crate::shell::q;

/// How to take the provision lock.
#[derive(Debug, Clone)]
pub struct LockSpec {
    /// The environment (recorded in the owner file).
    pub environment: String,
    /// The environment's deploy root, locked too when it exists.
    pub deploy_root: Option<String>,
    /// Who is provisioning.
    pub actor: Actor,
    /// A lock older than this is reported as stale.
    pub stale_after: Duration,
    /// How long to wait for a held lock (zero: fail at once).
    pub wait: Duration,
    /// The deadline of each lock command on the host (the environment's
    /// `timeouts.lock`).
    pub timeout: Duration,
}

/// The locks one provision holds on one host. Release them with
/// [`ProvisionLock::release`] on every path; a run killed before that
/// leaves them, and they go stale like a killed deploy's.
#[derive(Debug)]
pub struct ProvisionLock {
    held: Vec<Host>,
    token: String,
    timeout: Duration,
}

impl ProvisionLock {
    /// Takes the locks on `remote` (see the module docs).
    pub async fn acquire(
        remote: Arc<dyn Remote>,
        layout: &RemoteLayout,
        spec: &LockSpec,
    ) -> Result<Self, ProvisionError> {
        let token = uuid::Uuid::new_v4().to_string();
        let owner = LockOwner {
            actor: spec.actor.clone(),
            environment: spec.environment.clone(),
            since: jiff::Timestamp::now(),
            action: "provision".into(),
            message: None,
            token: token.clone(),
            first_host: None,
        };
        // The provision root is private (0700) from the start: its lock
        // directory is the first thing made in it.
        let prepare = format!(
            "set -eu; umask 077; mkdir -p {root}; chmod 700 {root}",
            root = q(&layout.root)
        );
        ec2kit::remote::run_checked(remote.as_ref(), &Command::shell(prepare)).await?;
        let mut roots = vec![layout.root.clone()];
        if let Some(deploy) = &spec.deploy_root
            && prepare_deploy_root(remote.as_ref(), deploy).await?
        {
            roots.push(deploy.clone());
        }
        let deadline = Instant::now() + spec.wait;
        loop {
            let mut this = Self {
                held: Vec::new(),
                token: token.clone(),
                timeout: spec.timeout,
            };
            let mut found = None;
            for root in &roots {
                let host = Host::new(remote.clone(), root.clone());
                match lock::try_acquire(&host, &owner, spec.stale_after, "", spec.timeout).await {
                    Ok(Attempt::Acquired(_)) => this.held.push(host),
                    Ok(Attempt::Held(held)) => {
                        found = Some((held, host.path(".ektool/lock")));
                        break;
                    }
                    Err(e) => {
                        this.release().await?;
                        return Err(e.into());
                    }
                }
            }
            let Some((held, path)) = found else {
                return Ok(this);
            };
            // Never hold half: give back what this round took.
            this.release().await?;
            let now = Instant::now();
            if now >= deadline || held.stale.is_some() {
                return Err(ProvisionError::Locked {
                    lock: Box::new(held),
                    path,
                });
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(500))).await;
        }
    }

    /// The locks a real run would find held on `remote`, read without
    /// touching anything (for a dry run): each with its directory.
    pub async fn held(
        remote: Arc<dyn Remote>,
        layout: &RemoteLayout,
        spec: &LockSpec,
    ) -> Result<Vec<(HeldLock, String)>, ProvisionError> {
        let mut roots = vec![layout.root.clone()];
        roots.extend(spec.deploy_root.clone());
        let mut found = Vec::new();
        for root in roots {
            let host = Host::new(remote.clone(), root);
            if let Some(held) = lock::status(&host, spec.stale_after).await? {
                found.push((held, host.path(".ektool/lock")));
            }
        }
        Ok(found)
    }

    /// The lock directories held, on the host.
    pub fn paths(&self) -> Vec<String> {
        self.held.iter().map(|h| h.path(".ektool/lock")).collect()
    }

    /// Releases every lock this run holds (only if its token is still
    /// there: never someone else's).
    pub async fn release(self) -> Result<(), ProvisionError> {
        let timeout = self.timeout;
        let mut first_error = None;
        for host in self.held.iter().rev() {
            if let Err(e) = lock::release(host, &self.token, timeout).await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Whether the deploy root exists (and so is locked). A missing `.ektool`
/// in it is made with the deploy root's owner: `chown -h` never follows a
/// link the deploy user could have put there.
async fn prepare_deploy_root(remote: &dyn Remote, root: &str) -> Result<bool, ProvisionError> {
    let script = format!(
        "[ -d {root} ] || {{ echo absent; exit 0; }}\n\
         if [ ! -e {meta} ] && [ ! -L {meta} ]; then\n\
           mkdir {meta} 2>/dev/null && chown -h --reference={root} -- {meta} 2>/dev/null || true\n\
         fi\n\
         echo present",
        root = q(root),
        meta = q(&format!("{root}/.ektool")),
    );
    let out = ec2kit::remote::run_checked(remote, &Command::shell(script)).await?;
    Ok(out.stdout_str().trim() == "present")
}
