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
//! Every host is locked at once, in one round (`Round::lock_all`). Of two
//! runs racing for the same hosts, the one holding the first host in a
//! fixed order (sorted by name and root) proceeds and the other lets go of
//! what it took, so they cannot both end up holding half.

use std::time::{Duration, Instant};

use ec2kit::{CancellationToken, Command, RemoteError};
use futures::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, HostFailure, Stage};
use crate::event::{Event, EventSink};
use crate::host::{Actor, Host, process_alive, this_scope};
use crate::shell::{GUARDS, describe, q};
use crate::state::{self, HostState};

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
    /// Held by hand (`ektool lock`, [`Deployer::hold`](crate::Deployer::hold)),
    /// not by a running operation: never judged stale (its process has
    /// exited on purpose), removed by [`Deployer::release_hold`](crate::Deployer::release_hold).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hand_held: bool,
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
    /// The owner file's `cksum` as it was read (`none`: no owner file): an
    /// unlock removes the lock only while it is still this one.
    #[serde(default)]
    pub checksum: String,
}

impl std::fmt::Display for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.owner {
            Some(o) if o.hand_held => {
                write!(
                    f,
                    "{} is held by hand by {} since {} ({} ago)",
                    self.host,
                    o.actor,
                    o.since.strftime("%Y-%m-%d %H:%M:%SZ"),
                    human_age(self.age_seconds),
                )?;
                if let Some(m) = &o.message {
                    write!(f, ": {m:?}")?;
                }
            }
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

/// The lock directory, relative to `<root>/.ektool`.
const LOCK: &str = "lock";

/// A script run in `<root>/.ektool` (entered with the guards, see
/// [`GUARDS`]); `create`: make the deploy root and `.ektool` when missing,
/// else do nothing (exit 0) when there is no `.ektool`.
fn in_meta(host: &Host, create: bool, body: &str) -> String {
    let root = q(host.root());
    let enter = if create {
        format!("mkdir -p {root} && cd {root} || exit 1\nek_enter .ektool\n")
    } else {
        format!("cd {root} 2>/dev/null && [ -e .ektool ] || exit 0\nek_cd .ektool\n")
    };
    format!("{GUARDS}{enter}{body}")
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
    timeout: Duration,
) -> Result<Attempt, RemoteError> {
    let script = in_meta(
        host,
        true,
        &format!(
            "ek_file releases.jsonl; ek_file {LOCK}\n\
             if mkdir {LOCK} 2>/dev/null; then (set -C; cat > {LOCK}/owner.json) || exit 1; echo acquired\n{state_script}exit 0; fi\n\
             echo held\n\
             [ -s {LOCK}/owner.json ] || sleep 0.2\n\
             {held}",
            held = held_fragment(),
        ),
    );
    let json = serde_json::to_vec(owner).unwrap_or_default();
    let out = host
        .run_checked(&Command::shell(script).stdin(json).timeout(timeout))
        .await?;
    let text = out.stdout_str();
    match text.split_once('\n') {
        Some(("acquired", rest)) => Ok(Attempt::Acquired(HostState::parse(rest, host.root()))),
        _ => Ok(Attempt::Held(parse_held(
            host,
            text.lines().skip(1),
            stale_after,
        ))),
    }
}

/// The shell fragment (run in `.ektool`) that prints a held lock: its
/// owner file on one line, its time and the host's time (Unix seconds),
/// and the owner file's checksum.
pub(crate) fn held_fragment() -> String {
    format!(
        "(tr -d '\\n' < {LOCK}/owner.json) 2>/dev/null; echo\n\
         stat -c %Y {LOCK} 2>/dev/null || date +%s\n\
         date +%s\n\
         (cksum < {LOCK}/owner.json) 2>/dev/null || echo none\n"
    )
}

/// Judges what [`held_fragment`] printed.
pub(crate) fn parse_held<'a>(
    host: &Host,
    mut lines: impl Iterator<Item = &'a str>,
    stale_after: Duration,
) -> HeldLock {
    let owner_line = lines.next().unwrap_or_default();
    let seconds = |l: Option<&str>| -> i64 { l.and_then(|l| l.trim().parse().ok()).unwrap_or(0) };
    let mtime = seconds(lines.next());
    let now = seconds(lines.next());
    let checksum = lines.next().unwrap_or("none").trim().to_owned();
    let mut lock = judge(
        host,
        owner_line,
        u64::try_from(now.saturating_sub(mtime)).unwrap_or(0),
        stale_after,
    );
    lock.checksum = checksum;
    lock
}

fn judge(host: &Host, owner_line: &str, age: u64, stale_after: Duration) -> HeldLock {
    let owner: Option<LockOwner> = serde_json::from_str(owner_line).ok();
    let here = this_scope();
    let stale = match &owner {
        // Meant to outlive its process and any age limit.
        Some(o) if o.hand_held => None,
        _ if age > stale_after.as_secs() => {
            Some(format!("older than {}", human_age(stale_after.as_secs())))
        }
        // Only where its pid means the same process: the same machine,
        // boot and pid namespace (never the host name alone).
        Some(o) if here.is_some() && o.actor.scope == here && !process_alive(o.actor.pid) => Some(
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
        checksum: String::new(),
    }
}

/// Reads a host's lock without touching it.
pub async fn status(host: &Host, stale_after: Duration) -> Result<Option<HeldLock>, RemoteError> {
    status_within(
        host,
        stale_after,
        crate::environment::Timeouts::default().state.get(),
    )
    .await
}

/// [`status`], with a deadline for the command.
pub(crate) async fn status_within(
    host: &Host,
    stale_after: Duration,
    timeout: Duration,
) -> Result<Option<HeldLock>, RemoteError> {
    // Read-only: no guards needed, and nothing is created.
    let script = format!(
        "cd {root}/.ektool 2>/dev/null && [ -d {LOCK} ] || {{ echo free; exit 0; }}\n\
         echo held\n\
         {held}",
        root = q(host.root()),
        held = held_fragment(),
    );
    let out = host
        .run_checked(&Command::shell(script).timeout(timeout))
        .await?;
    let text = out.stdout_str();
    let mut lines = text.lines();
    if lines.next() != Some("held") {
        return Ok(None);
    }
    Ok(Some(parse_held(host, lines, stale_after)))
}

/// The shell fragment that releases the lock if this run's token holds
/// it (needs [`GUARDS`]; runs in a subshell, so it changes no directory).
pub(crate) fn release_fragment(host: &Host, token: &str) -> String {
    format!(
        "(cd {root} 2>/dev/null && [ -e .ektool ] || exit 0\n\
         ek_cd .ektool\n\
         if grep -qF {token} {LOCK}/owner.json 2>/dev/null; then rm -rf {LOCK}; fi)\n",
        root = q(host.root()),
        token = q(token)
    )
}

/// Releases the lock if (and only if) this run's token holds it.
pub(crate) async fn release(
    host: &Host,
    token: &str,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let script = format!("{GUARDS}{}", release_fragment(host, token));
    host.run_checked(&Command::shell(script).timeout(timeout))
        .await
        .map(|_| ())
}

/// Removes `lock` if the host still has exactly that lock (its owner file
/// unchanged since it was read), or whatever lock is there when `force`.
/// Returns whether a lock was removed.
pub(crate) async fn remove(
    host: &Host,
    lock: &HeldLock,
    force: bool,
    timeout: Duration,
) -> Result<bool, RemoteError> {
    let body = if force {
        format!("if [ -d {LOCK} ]; then rm -rf {LOCK}; echo removed; fi\n")
    } else {
        format!(
            "if [ \"$( (cksum < {LOCK}/owner.json) 2>/dev/null || echo none)\" = {sum} ]; then rm -rf {LOCK}; echo removed; fi\n",
            sum = q(&lock.checksum)
        )
    };
    let out = host
        .run_checked(&Command::shell(in_meta(host, false, &body)).timeout(timeout))
        .await?;
    Ok(out.stdout_str().trim() == "removed")
}

/// One run's attempt to lock every host of an environment, reading each
/// host's state in the same command.
pub(crate) struct Round<'a> {
    /// The hosts, in lock order (the first one decides races).
    pub(crate) hosts: &'a [Host],
    /// Who is asking; its `first_host` is `hosts[0]`.
    pub(crate) owner: LockOwner,
    /// A lock older than this is stale.
    pub(crate) stale_after: Duration,
    /// How long to wait for a held lock (zero: fail at once).
    pub(crate) wait: Duration,
    /// The deadline of each lock command.
    pub(crate) timeout: Duration,
    /// The commit to look for in the hosts' mirrors.
    pub(crate) commit: Option<&'a str>,
    /// The environment's maintenance flag file (part of the state).
    pub(crate) maintenance_file: &'a str,
    /// Read the newest release-log entries with the state.
    pub(crate) with_log: bool,
    /// Report which of these `shared/` files are missing, with the state.
    pub(crate) shared_files: &'a [crate::environment::SharedPath],
    /// Stops the round (and the waiting) early.
    pub(crate) cancel: &'a CancellationToken,
    /// Where `Locked`, `LockWaiting`, `ClockSkew` and warnings go.
    pub(crate) events: &'a EventSink,
}

impl Round<'_> {
    /// Takes the lock on every host and reads their state in the same
    /// command, all hosts at once (one round, however many hosts).
    ///
    /// Two runs racing for the same hosts may each take some. The run that
    /// takes the first host (in lock order) proceeds: the other releases
    /// each host it took as soon as it learns the first one is held, then
    /// fails naming the owner (or waits, with `wait`), while the first
    /// waits briefly for those hosts to come free. Racers are told apart by
    /// the first host recorded in the lock's owner file; a host held by
    /// anyone else (a run on other hosts, a stale lock) makes this run
    /// release everything at once and fail or wait. A lock is only ever
    /// released by the run that took it.
    ///
    /// Returns the states (in host order) and how long the round took (an
    /// estimate of the hosts' command latency, used to schedule the
    /// switch).
    pub(crate) async fn lock_all(&self) -> Result<(Vec<HostState>, Duration), DeployError> {
        let first = self.owner.first_host.clone().unwrap_or_default();
        let token = self.owner.token.as_str();
        let deadline = Instant::now() + self.wait;
        let attempt = |i: usize| self.try_lock(&self.hosts[i]);
        // A racing run over the same hosts, which lets go when it sees the
        // first host held (an unreadable owner may be one, just starting).
        let racer = |l: &HeldLock| {
            l.stale.is_none()
                && l.owner
                    .as_ref()
                    .is_none_or(|o| o.first_host.as_deref() == Some(first.as_str()))
        };
        loop {
            if self.cancel.is_cancelled() {
                return Err(self.interrupted());
            }
            let t = Instant::now();
            let sent = crate::switch::now_ns();
            let (mut outcome, yielded) = self.round(&attempt, token).await;
            let latency = t.elapsed();
            // Holding the first host: wait for racers to let go of the
            // rest, a few of their rounds at most.
            let grace = Instant::now()
                + (latency * 5).clamp(Duration::from_secs(2), Duration::from_secs(10));
            while outcome.states[0].is_some()
                && outcome.error.is_none()
                && !outcome.held.is_empty()
                && outcome.held.iter().all(|(_, l)| racer(l))
                && Instant::now() < grace
                && !self.cancel.is_cancelled()
            {
                tokio::time::sleep(
                    latency.clamp(Duration::from_millis(20), Duration::from_millis(250)),
                )
                .await;
                let pending: Vec<usize> = outcome.held.drain(..).map(|(i, _)| i).collect();
                let retried = futures::future::join_all(pending.iter().map(|&i| attempt(i))).await;
                for (i, r) in pending.into_iter().zip(retried) {
                    outcome.record(i, r, &self.hosts[i]);
                }
            }
            if outcome.held.is_empty() && outcome.error.is_none() && !self.cancel.is_cancelled() {
                (self.events)(&Event::Locked {
                    hosts: self.hosts.len(),
                });
                let mut states: Vec<HostState> = outcome.states.into_iter().flatten().collect();
                for (h, s) in self.hosts.iter().zip(&mut states) {
                    s.clock_skew_ms = state::skew_ms(s, sent, latency);
                    state::report_skew(self.events, h, s.clock_skew_ms);
                }
                return Ok((states, latency));
            }
            // Let go of every host this run may hold: those it took (not
            // already given back) and those whose answer was lost (the
            // `mkdir` may have happened). The token check makes it safe.
            let mine: Vec<&Host> = (0..self.hosts.len())
                .filter(|&i| !yielded.contains(&i))
                .filter(|&i| outcome.states[i].is_some() || outcome.failed.contains(&i))
                .map(|i| &self.hosts[i])
                .collect();
            release_all(&mine, token, self.timeout, self.events).await;
            if self.cancel.is_cancelled() {
                return Err(self.interrupted());
            }
            if let Some(f) = outcome.error {
                return Err(DeployError::Failed {
                    stage: Stage::Lock,
                    failures: vec![f],
                    rolled_back: Vec::new(),
                    inconsistent: Vec::new(),
                });
            }
            // Report a stale lock (it needs an unlock), else the first
            // host's holder, else the first held.
            let lock = outcome
                .held
                .iter()
                .find(|(_, l)| l.stale.is_some())
                .or_else(|| outcome.held.first())
                .map(|(_, l)| l.clone());
            let Some(lock) = lock else {
                unreachable!("held or error")
            };
            let now = Instant::now();
            if now >= deadline || lock.stale.is_some() {
                return Err(DeployError::Locked {
                    lock: Box::new(lock),
                });
            }
            (self.events)(&Event::LockWaiting {
                holder: lock.to_string(),
            });
            tokio::select! {
                () = tokio::time::sleep((deadline - now).min(Duration::from_millis(500))) => {}
                () = self.cancel.cancelled() => {}
            }
        }
    }

    /// Interrupted while locking: nothing was changed (the caller's hosts
    /// are already given back).
    fn interrupted(&self) -> DeployError {
        (self.events)(&Event::Interrupted { stage: Stage::Lock });
        DeployError::Interrupted {
            stage: Stage::Lock,
            rolled_back: Vec::new(),
            inconsistent: Vec::new(),
        }
    }

    /// One lock attempt on every host at once. Answers are handled as they
    /// arrive: once the first host is known to be held by another run,
    /// every host taken (then or later in the round) is given back at
    /// once, so a run holding the first host is not kept waiting on this
    /// run's slowest host. Returns what was found and the hosts given back.
    async fn round<'a, F, Fut>(&'a self, attempt: &F, token: &str) -> (Found, Vec<usize>)
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt, RemoteError>> + 'a,
    {
        let n = self.hosts.len();
        let mut outcome = Found::new(n);
        let mut answers: futures::stream::FuturesUnordered<_> = (0..n)
            .map(|i| {
                let fut = attempt(i);
                async move { (i, fut.await) }
            })
            .collect();
        let mut giving_back = futures::stream::FuturesUnordered::new();
        let mut yielded = Vec::new();
        let mut lost_first = false;
        let mut sent = 0;
        loop {
            tokio::select! {
                Some((i, r)) = answers.next() => {
                    outcome.record(i, r, &self.hosts[i]);
                    if !lost_first && i == 0 && outcome.states[0].is_none() {
                        lost_first = true;
                        yielded.extend((1..n).filter(|&j| outcome.states[j].is_some()));
                    } else if lost_first && outcome.states[i].is_some() {
                        yielded.push(i);
                    } else {
                        continue;
                    }
                    for &j in yielded.get(sent..).unwrap_or_default() {
                        giving_back.push(async move {
                            (j, release(&self.hosts[j], token, self.timeout).await)
                        });
                    }
                    sent = yielded.len();
                }
                Some((j, r)) = giving_back.next(), if !giving_back.is_empty() => {
                    if let Err(e) = r {
                        (self.events)(&Event::Warning {
                            host: Some(self.hosts[j].name().to_owned()),
                            message: format!("could not release the lock: {e}"),
                        });
                    }
                }
                else => break,
            }
        }
        (outcome, yielded)
    }

    async fn try_lock(&self, host: &Host) -> Result<Attempt, RemoteError> {
        let script = HostState::script_with(
            host,
            self.commit,
            self.maintenance_file,
            self.with_log,
            self.shared_files,
        );
        try_acquire(host, &self.owner, self.stale_after, &script, self.timeout).await
    }
}

/// What one lock round found, per host.
struct Found {
    /// The state of each host taken, by index.
    states: Vec<Option<HostState>>,
    /// Hosts found held, with their lock.
    held: Vec<(usize, HeldLock)>,
    /// Hosts whose answer was lost.
    failed: Vec<usize>,
    /// The first of those failures.
    error: Option<HostFailure>,
}

impl Found {
    fn new(n: usize) -> Self {
        Self {
            states: vec![None; n],
            held: Vec::new(),
            failed: Vec::new(),
            error: None,
        }
    }

    fn record(&mut self, i: usize, r: Result<Attempt, RemoteError>, host: &Host) {
        match r {
            Ok(Attempt::Acquired(state)) => self.states[i] = Some(state),
            Ok(Attempt::Held(l)) => {
                self.held.push((i, l));
                self.held.sort_by_key(|(i, _)| *i);
            }
            Err(e) => {
                self.failed.push(i);
                if self.error.is_none() {
                    self.error = Some(HostFailure {
                        host: host.name().to_owned(),
                        stage: Stage::Lock,
                        error: describe(&e),
                    });
                }
            }
        }
    }
}

/// Releases this run's lock (by `token`) on every one of `hosts` at once;
/// a host that cannot be reached is a warning, not an error.
pub(crate) async fn release_all(
    hosts: &[&Host],
    token: &str,
    timeout: Duration,
    events: &EventSink,
) {
    let results = futures::future::join_all(hosts.iter().map(|h| release(h, token, timeout))).await;
    for (h, r) in hosts.iter().zip(results) {
        if let Err(e) = r {
            events(&Event::Warning {
                host: Some(h.name().to_owned()),
                message: format!("could not release the lock: {e}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::this_machine;
    use std::sync::Arc;

    fn host() -> Host {
        Host::new(Arc::new(ec2kit::LocalRemote::new()), "/srv/x")
    }

    fn owner(machine: &str, scope: Option<String>, pid: u32) -> String {
        serde_json::to_string(&LockOwner {
            actor: Actor {
                user: "alice".into(),
                machine: machine.into(),
                pid,
                scope,
            },
            environment: "production".into(),
            since: Timestamp::UNIX_EPOCH,
            action: "deploy v1.2.3".into(),
            message: Some("hotfix".into()),
            token: "t".into(),
            first_host: None,
            hand_held: false,
        })
        .unwrap()
    }

    #[test]
    fn fresh_lock_of_a_live_process_is_not_stale() {
        let h = judge(
            &host(),
            &owner(&this_machine(), this_scope(), std::process::id()),
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
            judge(&host(), &owner("elsewhere", None, 1), 7200, limit)
                .stale
                .is_some()
        );
        assert!(this_scope().is_some(), "this machine has a scope");
        // No process has pid u32::MAX (pid_max is far lower).
        let dead = judge(
            &host(),
            &owner(&this_machine(), this_scope(), u32::MAX),
            5,
            limit,
        );
        assert!(dead.stale.unwrap().contains("is gone"));
        // Another machine's process cannot be checked: only age counts.
        assert!(
            judge(&host(), &owner("elsewhere", None, u32::MAX), 5, limit)
                .stale
                .is_none()
        );
        assert!(judge(&host(), "", 61, limit).stale.is_some());
        assert!(judge(&host(), "", 5, limit).stale.is_none());
    }

    /// A CI runner or container with this machine's host name (and its own
    /// pid namespace or boot) is another machine: its dead-looking pid
    /// proves nothing.
    #[test]
    fn the_same_host_name_alone_never_makes_a_lock_stale() {
        let limit = Duration::from_secs(3600);
        for scope in [None, Some("other-machine/other-boot/pid:[1]".to_owned())] {
            let lock = judge(
                &host(),
                &owner(&this_machine(), scope.clone(), u32::MAX),
                5,
                limit,
            );
            assert_eq!(lock.stale, None, "scope {scope:?}");
        }
    }
}
