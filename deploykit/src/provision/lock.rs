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
//!    root's owner, so the deploy user can still take its own lock. When
//!    the provisioning user is root and the deploy root belongs to someone
//!    else, this lock is taken and released **as the deploy root's owner**
//!    (`setpriv`): root never writes into a directory another user controls
//!    (the deploy lock's own guards refuse it), and the kernel enforces it.
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

impl LockSpec {
    /// The locks of a provision of environment `name` by this process:
    /// the environment's deploy root locked too, its stale age and lock
    /// deadline, waiting up to `wait` for a held lock.
    pub fn for_environment(name: &str, env: &crate::Environment, wait: Duration) -> Self {
        Self {
            environment: name.to_owned(),
            deploy_root: Some(env.path.as_str().to_owned()),
            actor: Actor::current(),
            stale_after: env.lock_stale_after(),
            wait,
            timeout: env.timeouts.lock.get(),
        }
    }
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
            hand_held: false,
        };
        // The provision root is private (0700) from the start: its lock
        // directory is the first thing made in it.
        let prepare = format!(
            "set -eu; umask 077; mkdir -p {root}; chmod 700 {root}",
            root = q(&layout.root)
        );
        ec2kit::remote::run_checked(remote.as_ref(), &Command::shell(prepare)).await?;
        let mut roots = vec![(layout.root.clone(), remote.clone())];
        if let Some(deploy) = &spec.deploy_root
            && let Some(owner) = prepare_deploy_root(remote.as_ref(), deploy).await?
        {
            let as_owner: Arc<dyn Remote> = match owner {
                Some((uid, gid)) => Arc::new(AsOwner {
                    inner: remote.clone(),
                    uid,
                    gid,
                }),
                None => remote.clone(),
            };
            roots.push((deploy.clone(), as_owner));
        }
        let deadline = Instant::now() + spec.wait;
        loop {
            let mut this = Self {
                held: Vec::new(),
                token: token.clone(),
                timeout: spec.timeout,
            };
            let mut found = None;
            for (root, remote) in &roots {
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

/// Whether the deploy root exists (and so is locked): `None` when it does
/// not; `Some(None)` when its lock is taken as the provisioning user;
/// `Some(Some((uid, gid)))` when the provisioning user is root and the
/// deploy root belongs to that uid, as whom the lock is taken. A missing
/// `.ektool` in it is made with the deploy root's owner: `chown -h` never
/// follows a link the deploy user could have put there.
async fn prepare_deploy_root(
    remote: &dyn Remote,
    root: &str,
) -> Result<Option<Option<(u32, u32)>>, ProvisionError> {
    let script = format!(
        "[ -d {root} ] || {{ echo absent; exit 0; }}\n\
         if [ ! -e {meta} ] && [ ! -L {meta} ]; then\n\
           mkdir {meta} 2>/dev/null && chown -h --reference={root} -- {meta} 2>/dev/null || true\n\
         fi\n\
         echo present $(id -u) $(stat -c '%u %g' -- {root})",
        root = q(root),
        meta = q(&format!("{root}/.ektool")),
    );
    let out = ec2kit::remote::run_checked(remote, &Command::shell(script)).await?;
    let text = out.stdout_str();
    let mut words = text.split_whitespace();
    if words.next() != Some("present") {
        return Ok(None);
    }
    let ids: Vec<u32> = words.filter_map(|w| w.parse().ok()).collect();
    Ok(Some(match ids.as_slice() {
        [0, uid, gid] if *uid != 0 => Some((*uid, *gid)),
        _ => None,
    }))
}

/// A host seen as another user: every command runs under `setpriv` with
/// that uid and gid and no supplementary groups. Only root can do this,
/// and it is used only when the provisioning user is root.
struct AsOwner {
    inner: Arc<dyn Remote>,
    uid: u32,
    gid: u32,
}

impl std::fmt::Debug for AsOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsOwner({}, uid {})", self.inner.host(), self.uid)
    }
}

impl AsOwner {
    fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::argv([
            "setpriv".to_owned(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".to_owned(),
            "--".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            command.to_shell_line(),
        ]);
        if let Some(stdin) = &command.stdin {
            wrapped = wrapped.stdin(stdin.clone());
        }
        if let Some(timeout) = command.timeout {
            wrapped = wrapped.timeout(timeout);
        }
        wrapped
    }
}

#[async_trait::async_trait]
impl Remote for AsOwner {
    fn host(&self) -> String {
        self.inner.host()
    }

    async fn run(&self, command: &Command) -> Result<ec2kit::Output, ec2kit::RemoteError> {
        self.inner.run(&self.wrap(command)).await
    }

    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), ec2kit::RemoteError> {
        // The lock never uploads; refuse rather than write as root.
        let _ = (bytes, mode);
        Err(ec2kit::RemoteError::Ssh {
            host: self.inner.host(),
            message: format!("upload of {path} as uid {} is not supported", self.uid),
        })
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, ec2kit::RemoteError> {
        let out = ec2kit::remote::run_checked(self, &Command::argv(["cat", "--", path])).await?;
        Ok(out.stdout)
    }
}
