//! The deploy lock: one per environment and deploy root, on every host.
//!
//! Taking it is an atomic `mkdir <root>/.ektool/lock` (never
//! check-then-write); the owner file inside says who, from where (machine
//! and process), since when, deploying what, and why. A second deploy
//! fails fast naming the owner, or waits (`lock_wait`). A lock is *stale*
//! when it is older than the environment's limit or its process is gone
//! (same machine only); stale locks are reported as such and removed with
//! an explicit unlock. A lock is only ever released by the run that took
//! it (its token must match): a deploy that fails *at* the lock never
//! removes someone else's.
//!
//! Every host is locked at once, in one round. Of two runs racing for the
//! same hosts, the one holding the first host in a fixed order (sorted by
//! name and root) proceeds and the other lets go of what it took, so they
//! cannot both end up holding half (see `Deployer::lock_all`).

use std::time::Duration;

use ec2kit::{Command, RemoteError};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::host::{Actor, Host, process_alive, this_machine};
use crate::layout::HostState;
use crate::shell::q;

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// Who.
    pub actor: Actor,
    /// The environment.
    pub environment: String,
    /// Since when.
    pub since: Timestamp,
    /// What is being done (`deploy v1.2.3`, `rollback`).
    pub action: String,
    /// The operator's message.
    #[serde(default)]
    pub message: Option<String>,
    /// This run's token: only the run holding it releases the lock.
    pub token: String,
    /// The first host of the run's hosts in lock order: runs racing for
    /// the same hosts share it, and the one holding it proceeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_host: Option<String>,
}

/// A lock found held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    /// The host.
    pub host: String,
    /// Its owner, when the owner file could be read (a run killed between
    /// `mkdir` and writing the file leaves none).
    pub owner: Option<LockOwner>,
    /// Its age by the host's clock.
    pub age_seconds: u64,
    /// Why it is stale, if it is.
    pub stale: Option<String>,
}

impl std::fmt::Display for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.owner {
            Some(o) => {
                write!(
                    f,
                    "{} is locked by {} (pid {}) since {} ({} ago): {}",
                    self.host,
                    o.actor,
                    o.actor.pid,
                    o.since.strftime("%Y-%m-%d %H:%M:%SZ"),
                    human_age(self.age_seconds),
                    o.action
                )?;
                if let Some(m) = &o.message {
                    write!(f, " — {m:?}")?;
                }
            }
            None => write!(
                f,
                "{} is locked by an unknown owner ({} ago)",
                self.host,
                human_age(self.age_seconds)
            )?,
        }
        if let Some(why) = &self.stale {
            write!(f, "; the lock looks stale ({why})")?;
        }
        Ok(())
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// The lock directory.
fn lock_dir(host: &Host) -> String {
    host.path(".ektool/lock")
}

/// What an attempt to lock one host found.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Taken; the host's state, read in the same command.
    Acquired(HostState),
    Held(HeldLock),
}

/// Tries to take the lock on one host, and reads its state in the same
/// round trip (`state_script`, from [`HostState::script`]).
pub(crate) async fn try_acquire(
    host: &Host,
    owner: &LockOwner,
    stale_after: Duration,
    state_script: &str,
) -> Result<Attempt, RemoteError> {
    let dir = q(&lock_dir(host));
    let script = format!(
        "mkdir -p {meta} || exit 1\n\
         if mkdir {dir} 2>/dev/null; then cat > {dir}/owner.json; echo acquired\n{state_script}exit 0; fi\n\
         echo held\n\
         [ -s {dir}/owner.json ] || sleep 0.2\n\
         {held}",
        meta = q(&host.path(".ektool")),
        held = held_fragment(&dir),
    );
    let json = serde_json::to_vec(owner).unwrap_or_default();
    let out = host
        .run_checked(&Command::shell(script).stdin(json))
        .await?;
    let text = out.stdout_str();
    match text.split_once('\n') {
        Some(("acquired", rest)) => Ok(Attempt::Acquired(HostState::parse(rest))),
        _ => Ok(Attempt::Held(parse_held(
            host,
            text.lines().skip(1),
            stale_after,
        ))),
    }
}

/// The shell fragment that prints a held lock (`dir`, quoted): its owner
/// file on one line, its time and the host's time (Unix seconds).
fn held_fragment(dir: &str) -> String {
    format!(
        "(tr -d '\\n' < {dir}/owner.json) 2>/dev/null; echo\n\
         stat -c %Y {dir} 2>/dev/null || date +%s\n\
         date +%s\n"
    )
}

/// Judges what [`held_fragment`] printed.
fn parse_held<'a>(
    host: &Host,
    mut lines: impl Iterator<Item = &'a str>,
    stale_after: Duration,
) -> HeldLock {
    let owner_line = lines.next().unwrap_or_default();
    let mut seconds = || -> i64 {
        lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    };
    let mtime = seconds();
    let now = seconds();
    judge(
        host,
        owner_line,
        u64::try_from(now - mtime).unwrap_or(0),
        stale_after,
    )
}

fn judge(host: &Host, owner_line: &str, age: u64, stale_after: Duration) -> HeldLock {
    let owner: Option<LockOwner> = serde_json::from_str(owner_line).ok();
    let stale = match &owner {
        _ if age > stale_after.as_secs() => {
            Some(format!("older than {}", human_age(stale_after.as_secs())))
        }
        Some(o) if o.actor.machine == this_machine() && !process_alive(o.actor.pid) => Some(
            format!("process {} on {} is gone", o.actor.pid, o.actor.machine),
        ),
        // mkdir happened, the owner file never did: the run died in between.
        None if age > 60 => Some("it has no owner file".to_owned()),
        _ => None,
    };
    HeldLock {
        host: host.name().to_owned(),
        owner,
        age_seconds: age,
        stale,
    }
}

/// Reads a host's lock without touching it.
pub async fn status(host: &Host, stale_after: Duration) -> Result<Option<HeldLock>, RemoteError> {
    let dir = q(&lock_dir(host));
    let script = format!(
        "[ -d {dir} ] || {{ echo free; exit 0; }}\n\
         echo held\n\
         {held}",
        held = held_fragment(&dir),
    );
    let out = host.run_checked(&Command::shell(script)).await?;
    let text = out.stdout_str();
    let mut lines = text.lines();
    if lines.next() != Some("held") {
        return Ok(None);
    }
    Ok(Some(parse_held(host, lines, stale_after)))
}

/// The shell fragment that releases the lock if this run's token holds it.
pub(crate) fn release_fragment(host: &Host, token: &str) -> String {
    let dir = q(&lock_dir(host));
    format!(
        "if grep -qF {token} {dir}/owner.json 2>/dev/null; then rm -rf {dir}; fi\n",
        token = q(token)
    )
}

/// Releases the lock if (and only if) this run's token holds it.
pub(crate) async fn release(host: &Host, token: &str) -> Result<(), RemoteError> {
    host.run_checked(&Command::shell(release_fragment(host, token)))
        .await
        .map(|_| ())
}

/// Removes a lock whoever holds it (the explicit `unlock --force`).
pub(crate) async fn remove(host: &Host) -> Result<(), RemoteError> {
    host.run_checked(&Command::argv(["rm", "-rf", &lock_dir(host)]))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn host() -> Host {
        Host::new(Arc::new(ec2kit::LocalRemote::new()), "/srv/x")
    }

    fn owner(machine: &str, pid: u32) -> String {
        serde_json::to_string(&LockOwner {
            actor: Actor {
                user: "alice".into(),
                machine: machine.into(),
                pid,
            },
            environment: "production".into(),
            since: Timestamp::UNIX_EPOCH,
            action: "deploy v1.2.3".into(),
            message: Some("hotfix".into()),
            token: "t".into(),
            first_host: None,
        })
        .unwrap()
    }

    #[test]
    fn fresh_lock_of_a_live_process_is_not_stale() {
        let h = judge(
            &host(),
            &owner(&this_machine(), std::process::id()),
            10,
            Duration::from_secs(3600),
        );
        assert_eq!(h.stale, None);
        let text = h.to_string();
        assert!(text.contains("alice@"), "{text}");
        assert!(text.contains("deploy v1.2.3"), "{text}");
        assert!(text.contains("hotfix"), "{text}");
    }

    #[test]
    fn old_or_orphaned_locks_are_stale() {
        let limit = Duration::from_secs(3600);
        assert!(
            judge(&host(), &owner("elsewhere", 1), 7200, limit)
                .stale
                .is_some()
        );
        // No process has pid u32::MAX (pid_max is far lower).
        let dead = judge(&host(), &owner(&this_machine(), u32::MAX), 5, limit);
        assert!(dead.stale.unwrap().contains("is gone"));
        // Another machine's process cannot be checked: only age counts.
        assert!(
            judge(&host(), &owner("elsewhere", u32::MAX), 5, limit)
                .stale
                .is_none()
        );
        assert!(judge(&host(), "", 61, limit).stale.is_some());
        assert!(judge(&host(), "", 5, limit).stale.is_none());
    }
}
