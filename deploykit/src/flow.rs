//! The deploy flow.
//!
//! ```text
//! lock every host (fixed order)
//!  → read every host's state
//!  → prepare the release on every host, in parallel (bounded):
//!    fetch into the mirror, check out, link shared paths, build hooks,
//!    completion marker
//!  → run-once hooks on the first host (migrations)
//!  → barrier, then switch `current` on every host at once
//!  → restart and after-switch hooks, health checks, on every host
//!  → on any failure after the first switch: switch every host back to its
//!    previous release, run restart and after-rollback hooks
//!  → release log, cleanup, unlock, notify
//! ```
//!
//! A failure before the switch leaves `current` untouched everywhere; the
//! half-built release has no completion marker, is never switched to, and
//! is removed by the next successful deploy. A failure after the switch
//! puts back exactly the link each host had (relative or absolute, one of
//! ektool's releases or another tool's directory), and removes `current`
//! only on a host that had none.
//!
//! Every command sent to a host has a deadline
//! ([`Timeouts`](crate::environment::Timeouts)), so a host or git server
//! that stops answering fails that host, and the run takes its failure
//! path instead of hanging with the locks held. A cancellation token
//! ([`Deployer::cancel_on`], the CLI's SIGINT/SIGTERM) makes the run stop
//! starting new work and take the same failure path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ec2kit::CancellationToken;
use futures::stream::{self, StreamExt};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::environment::{Environment, Phase};
use crate::error::{DeployError, HostFailure, Stage};
use crate::event::{Event, EventSink};
use crate::hooks::{self, HookContext};
use crate::host::{Actor, Host};
use crate::layout::{HostState, Placement, ReleaseDir, ReleaseLayout, Timestamped};
use crate::lock::{self, Attempt, HeldLock, LockOwner};
use crate::log::{self, LogAction, LogEntry, LogResult};
use crate::notify::{Notification, NotificationKind, Notifier};
use crate::plan::{DeployPlan, HostPlan, PrepareAction};
use crate::release::{self, Marker, Release};
use crate::shell::{GUARDS, describe, short};
use crate::{health, switch};

/// Runs deploy operations for one environment on its hosts.
#[derive(Clone)]
pub struct Deployer {
    pub(crate) environment: String,
    pub(crate) config: Environment,
    /// Sorted by (name, root): the lock order, and the first one runs the
    /// run-once hooks.
    pub(crate) hosts: Vec<Host>,
    pub(crate) actor: Actor,
    pub(crate) notifier: Option<Arc<dyn Notifier>>,
    pub(crate) events: EventSink,
    pub(crate) lock_wait: Duration,
    pub(crate) message: Option<String>,
    pub(crate) repository: Option<String>,
    pub(crate) cancel: CancellationToken,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("environment", &self.environment)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The result of a successful deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The environment.
    pub environment: String,
    /// The release.
    pub release: Release,
    /// Per host.
    pub hosts: Vec<HostOutcome>,
    /// Milliseconds between the first and the last host's switch.
    pub switch_spread_ms: f64,
    /// Total seconds.
    pub seconds: f64,
}

/// What a deploy did on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostOutcome {
    /// The host.
    pub host: String,
    /// The release directory now live.
    pub release: String,
    /// The one live before.
    pub previous: Option<String>,
    /// An existing build was reused.
    pub reused: bool,
    /// Old releases removed.
    pub removed: Vec<String>,
    /// How far the host's clock is ahead of this machine's, in
    /// milliseconds (negative: behind), measured when it was locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

/// One host's part of a run, after inspection.
struct Slot<'a> {
    host: &'a Host,
    state: HostState,
    placement: Placement,
}

impl Deployer {
    /// A deployer for `environment` (its name) with `config`, on `hosts`.
    pub fn new(environment: impl Into<String>, config: Environment, mut hosts: Vec<Host>) -> Self {
        hosts.sort_by(|a, b| (a.name(), a.root()).cmp(&(b.name(), b.root())));
        hosts.dedup_by(|a, b| a.name() == b.name() && a.root() == b.root());
        Self {
            environment: environment.into(),
            repository: config.repository.clone(),
            config,
            hosts,
            actor: Actor::current(),
            notifier: None,
            events: Arc::new(|_| {}),
            lock_wait: Duration::ZERO,
            message: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Stops the operation when `token` is cancelled (SIGINT/SIGTERM in
    /// the CLI): no new work starts, and the operation takes its failure
    /// path (hosts that switched are switched back, locks released, the
    /// log written) and returns [`DeployError::Interrupted`]. Commands
    /// already running on hosts finish first (each within its deadline).
    #[must_use]
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Who is deploying (default: this process as `$USER`).
    #[must_use]
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// Where to announce deploys.
    #[must_use]
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Receives every [`Event`].
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.events = Arc::new(f);
        self
    }

    /// Waits this long for a held lock (default: fail at once).
    #[must_use]
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The operator's message (in the lock, log and notifications).
    #[must_use]
    pub fn message(mut self, message: Option<String>) -> Self {
        self.message = message;
        self
    }

    /// The git URL hosts fetch from, when the environment does not say.
    #[must_use]
    pub fn repository(mut self, url: impl Into<String>) -> Self {
        if self.config.repository.is_none() {
            self.repository = Some(url.into());
        }
        self
    }

    /// The hosts, in lock order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The environment's configuration.
    pub fn config(&self) -> &Environment {
        &self.config
    }

    pub(crate) fn emit(&self, event: Event) {
        (self.events)(&event);
    }

    fn check(&self) -> Result<String, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        if let Some(h) = &self.config.health {
            health::check_script(h).map_err(|e| DeployError::Invalid(e.to_string()))?;
        }
        if self.config.keep < 2 && self.config.layout == crate::LayoutKind::Timestamped {
            return Err(DeployError::Invalid(
                "keep must be at least 2 (the current and the previous release)".into(),
            ));
        }
        let url = self.repository.clone().ok_or(DeployError::NoRepository)?;
        crate::git::check_repository_url(&url).map_err(DeployError::Invalid)?;
        Ok(url)
    }

    /// The environment's command deadlines.
    pub(crate) fn timeouts(&self) -> crate::environment::Timeouts {
        self.config.timeouts
    }

    /// Whether the run was asked to stop.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The error of a run interrupted before any host switched (the caller
    /// releases the locks).
    pub(crate) fn interrupted(&self, stage: Stage) -> DeployError {
        self.emit(Event::Interrupted { stage });
        DeployError::Interrupted {
            stage,
            rolled_back: Vec::new(),
            inconsistent: Vec::new(),
        }
    }

    pub(crate) async fn each<'a, T, F, Fut>(&'a self, limit: usize, f: F) -> Vec<T>
    where
        F: Fn(usize, &'a Host) -> Fut,
        Fut: std::future::Future<Output = T> + 'a,
    {
        let mut out: Vec<(usize, T)> = stream::iter(self.hosts.iter().enumerate())
            .map(|(i, h)| {
                let fut = f(i, h);
                async move { (i, fut.await) }
            })
            .buffer_unordered(limit.max(1))
            .collect()
            .await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, t)| t).collect()
    }

    /// Reads every host's state (in parallel).
    pub(crate) async fn inspect(
        &self,
        commit: Option<&str>,
    ) -> Result<Vec<HostState>, DeployError> {
        let maint = self.config.maintenance_file.as_str();
        let timeout = self.timeouts().state.get();
        let results = self
            .each(
                self.config.parallel.max(self.hosts.len()),
                |_, h| async move {
                    let sent = switch::now_ns();
                    let t = Instant::now();
                    let mut state = HostState::read_within(h, commit, maint, timeout)
                        .await
                        .map_err(|e| HostFailure {
                            host: h.name().to_owned(),
                            stage: Stage::Inspect,
                            error: describe(&e),
                        })?;
                    state.clock_skew_ms = skew_ms(&state, sent, t.elapsed());
                    Ok(state)
                },
            )
            .await;
        let mut states = Vec::new();
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(s) => states.push(s),
                Err(f) => failures.push(f),
            }
        }
        if failures.is_empty() {
            Ok(states)
        } else {
            Err(failed(Stage::Inspect, failures))
        }
    }

    /// Takes the lock on every host and reads their state in the same
    /// command, all hosts at once (one round, however many hosts).
    ///
    /// Two runs racing for the same hosts may each take some. The run that
    /// takes the first host (in lock order) proceeds: the other releases
    /// each host it took as soon as it learns the first one is held, then
    /// fails naming the owner (or waits, with `lock_wait`), while the first
    /// waits briefly for those hosts to come free. Racers are told apart by
    /// the first host recorded in the lock's owner file; a host held by
    /// anyone else (a run on other hosts, a stale lock) makes this run
    /// release everything at once and fail or wait. A lock is only ever
    /// released by the run that took it.
    ///
    /// Returns the states (in host order) and how long the round took (an
    /// estimate of the hosts' command latency, used to schedule the
    /// switch).
    pub(crate) async fn lock_all(
        &self,
        action: String,
        token: &str,
        commit: Option<&str>,
        with_log: bool,
    ) -> Result<(Vec<HostState>, Duration), DeployError> {
        let first = self.hosts[0].name().to_owned();
        let owner = LockOwner {
            actor: self.actor.clone(),
            environment: self.environment.clone(),
            since: Timestamp::now(),
            action,
            message: self.message.clone(),
            token: token.to_owned(),
            first_host: Some(first.clone()),
        };
        let deadline = Instant::now() + self.lock_wait;
        let attempt = |i: usize| self.try_lock(&self.hosts[i], &owner, commit, with_log);
        // A racing run over the same hosts, which lets go when it sees the
        // first host held (an unreadable owner may be one, just starting).
        let racer = |l: &HeldLock| {
            l.stale.is_none()
                && l.owner
                    .as_ref()
                    .is_none_or(|o| o.first_host.as_deref() == Some(first.as_str()))
        };
        loop {
            if self.cancelled() {
                return Err(self.interrupted(Stage::Lock));
            }
            let t = Instant::now();
            let sent = switch::now_ns();
            let (mut outcome, yielded) = self.lock_round(&attempt, token).await;
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
                && !self.cancelled()
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
            if outcome.held.is_empty() && outcome.error.is_none() && !self.cancelled() {
                self.emit(Event::Locked {
                    hosts: self.hosts.len(),
                });
                let mut states: Vec<HostState> = outcome.states.into_iter().flatten().collect();
                for (h, s) in self.hosts.iter().zip(&mut states) {
                    s.clock_skew_ms = skew_ms(s, sent, latency);
                    self.report_skew(h, s.clock_skew_ms);
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
            self.unlock_hosts(&mine, token).await;
            if self.cancelled() {
                return Err(self.interrupted(Stage::Lock));
            }
            if let Some(f) = outcome.error {
                return Err(failed(Stage::Lock, vec![f]));
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
            self.emit(Event::LockWaiting {
                holder: lock.to_string(),
            });
            tokio::select! {
                () = tokio::time::sleep((deadline - now).min(Duration::from_millis(500))) => {}
                () = self.cancel.cancelled() => {}
            }
        }
    }

    /// Emits [`Event::ClockSkew`] for a host whose clock is off by more than
    /// half a second.
    pub(crate) fn report_skew(&self, host: &Host, skew_ms: Option<i64>) {
        if let Some(ms) = skew_ms.filter(|ms| ms.unsigned_abs() > 500) {
            self.emit(Event::ClockSkew {
                host: host.name().to_owned(),
                skew_ms: ms,
            });
        }
    }

    /// One lock attempt on every host at once. Answers are handled as they
    /// arrive: once the first host is known to be held by another run,
    /// every host taken (then or later in the round) is given back at
    /// once, so a run holding the first host is not kept waiting on this
    /// run's slowest host. Returns what was found and the hosts given back.
    async fn lock_round<'a, F, Fut>(&'a self, attempt: &F, token: &str) -> (LockRound, Vec<usize>)
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt, ec2kit::RemoteError>> + 'a,
    {
        let n = self.hosts.len();
        let mut outcome = LockRound::new(n);
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
                            (j, lock::release(&self.hosts[j], token, self.timeouts().lock.get()).await)
                        });
                    }
                    sent = yielded.len();
                }
                Some((j, r)) = giving_back.next(), if !giving_back.is_empty() => {
                    if let Err(e) = r {
                        self.warn(&self.hosts[j], format!("could not release the lock: {e}"));
                    }
                }
                else => break,
            }
        }
        (outcome, yielded)
    }

    async fn try_lock(
        &self,
        host: &Host,
        owner: &LockOwner,
        commit: Option<&str>,
        with_log: bool,
    ) -> Result<Attempt, ec2kit::RemoteError> {
        let script = HostState::script_with(
            host,
            commit,
            self.config.maintenance_file.as_str(),
            with_log,
        );
        lock::try_acquire(
            host,
            owner,
            self.config.lock_stale_after(),
            &script,
            self.timeouts().lock.get(),
        )
        .await
    }

    async fn unlock_hosts(&self, hosts: &[&Host], token: &str) {
        let timeout = self.timeouts().lock.get();
        let results =
            futures::future::join_all(hosts.iter().map(|h| lock::release(h, token, timeout))).await;
        for (h, r) in hosts.iter().zip(results) {
            if let Err(e) = r {
                self.emit(Event::Warning {
                    host: Some(h.name().to_owned()),
                    message: format!("could not release the lock: {e}"),
                });
            }
        }
    }

    pub(crate) async fn unlock_all(&self, token: &str) {
        let all: Vec<&Host> = self.hosts.iter().collect();
        self.unlock_hosts(&all, token).await;
    }

    fn fresh_name(&self, states: &[HostState]) -> String {
        Timestamped::fresh_name(
            Timestamp::now(),
            states
                .iter()
                .flat_map(|s| s.releases.iter().map(|r| r.name.as_str())),
        )
    }

    fn slots<'a>(
        &'a self,
        layout: &dyn ReleaseLayout,
        states: Vec<HostState>,
        commit: &str,
    ) -> Vec<Slot<'a>> {
        let fresh = self.fresh_name(&states);
        self.hosts
            .iter()
            .zip(states)
            .map(|(host, state)| {
                let placement = layout.place(&state, commit, &fresh);
                Slot {
                    host,
                    state,
                    placement,
                }
            })
            .collect()
    }

    /// What a deploy of `release` would do, host by host. Reads the hosts;
    /// changes nothing (no lock either).
    pub async fn plan(&self, release: &Release) -> Result<DeployPlan, DeployError> {
        let url = self.check()?;
        let layout = self.config.release_layout();
        let states = self.inspect(Some(&release.commit)).await?;
        let slots = self.slots(layout.as_ref(), states, &release.commit);
        let hosts = slots
            .iter()
            .map(|s| {
                let name = s.placement.release().to_owned();
                let prepare = match &s.placement {
                    Placement::Reuse { release } => PrepareAction::Reuse {
                        release: release.clone(),
                    },
                    Placement::Build { release, in_place } => PrepareAction::Build {
                        release: release.clone(),
                        mirror: if !s.state.mirror_exists {
                            "clone"
                        } else if s.state.mirror_has_commit {
                            "none"
                        } else {
                            "fetch"
                        }
                        .to_owned(),
                        in_place: *in_place,
                    },
                };
                let mut hooks = Vec::new();
                for phase in [
                    Phase::Build,
                    Phase::BeforeSwitch,
                    Phase::Restart,
                    Phase::AfterSwitch,
                ] {
                    let list = self.config.hooks.of(phase);
                    let runs_here =
                        phase != Phase::BeforeSwitch || std::ptr::eq(s.host, &self.hosts[0]);
                    if !list.is_empty() && runs_here {
                        hooks.push((
                            phase.to_string(),
                            list.iter().map(|h| h.run.clone()).collect(),
                        ));
                    }
                }
                let needs_build = matches!(s.placement, Placement::Build { .. });
                HostPlan {
                    host: s.host.name().to_owned(),
                    root: s.host.root().to_owned(),
                    current: s.state.current.clone(),
                    current_link: s
                        .state
                        .current_link
                        .clone()
                        .filter(|_| s.state.current_release().is_none_or(|r| !r.is_complete())),
                    current_commit: s
                        .state
                        .current_release()
                        .and_then(|r| r.commit())
                        .map(str::to_owned),
                    prepare,
                    hooks: if needs_build {
                        hooks
                    } else {
                        hooks.into_iter().filter(|(p, _)| p != "build").collect()
                    },
                    switch: format!("current -> releases/{name}"),
                    cleanup: cleanup_after(layout.as_ref(), &s.state, &name, &release.commit),
                    clock_skew_ms: s.state.clock_skew_ms,
                }
            })
            .collect();
        for s in &slots {
            self.report_skew(s.host, s.state.clock_skew_ms);
        }
        Ok(DeployPlan {
            environment: self.environment.clone(),
            release: release.clone(),
            layout: layout.name().to_owned(),
            repository: crate::git::redact(&url),
            run_once_host: (!self.config.hooks.before_switch.is_empty())
                .then(|| self.hosts[0].name().to_owned()),
            hosts,
        })
    }

    /// Deploys `release` to every host. See the module docs for the flow.
    pub async fn deploy(&self, release: &Release) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let url = self.check()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (states, latency) = self
            .lock_all(
                format!("deploy {}", release.describe),
                &token,
                Some(&release.commit),
                false,
            )
            .await?;
        let result = self
            .deploy_locked(release, &url, &token, started, states, latency)
            .await;
        // On success each host's last command released its lock.
        if result.is_err() {
            self.unlock_all(&token).await;
        }
        let (kind, error, old) = match &result {
            Ok((_, old)) => (NotificationKind::Succeeded, None, old.clone()),
            Err((e, old)) => (NotificationKind::Failed, Some(e.to_string()), old.clone()),
        };
        self.notify(kind, release, old, error).await;
        result.map(|(r, _)| r).map_err(|(e, _)| e)
    }

    pub(crate) async fn notify(
        &self,
        kind: NotificationKind,
        release: &Release,
        old_commit: Option<String>,
        error: Option<String>,
    ) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let n = Notification {
            kind,
            environment: self.environment.clone(),
            who: self.actor.to_string(),
            release: release.describe.clone(),
            old_commit: old_commit.map(|c| short(&c).to_owned()),
            new_commit: release.short().to_owned(),
            hosts: self.hosts.len(),
            error: error.map(|e| crate::git::redact(&e)),
            message: self.message.clone(),
        };
        if let Err(e) = notifier.notify(&n).await {
            self.emit(Event::NotifyFailed {
                error: e.to_string(),
            });
        }
    }

    #[allow(clippy::type_complexity)]
    async fn deploy_locked(
        &self,
        release: &Release,
        url: &str,
        token: &str,
        started: Instant,
        states: Vec<HostState>,
        latency: Duration,
    ) -> Result<(DeployReport, Option<String>), (DeployError, Option<String>)> {
        let layout = self.config.release_layout();
        for (h, s) in self.hosts.iter().zip(&states) {
            self.emit(Event::Inspected {
                host: h.name().to_owned(),
                current: s.current.clone(),
            });
        }
        let old_commit = states
            .first()
            .and_then(|s| s.current_release())
            .and_then(|r| r.commit())
            .map(str::to_owned);
        self.notify(NotificationKind::Started, release, old_commit.clone(), None)
            .await;
        let slots = self.slots(layout.as_ref(), states, &release.commit);
        let fail = |e: DeployError| (e, old_commit.clone());

        // Prepare everywhere; nothing is live-visible yet.
        let prepared = self
            .each(self.config.parallel, |i, _| {
                self.prepare(&slots[i], release, url)
            })
            .await;
        let failures: Vec<HostFailure> = prepared.into_iter().filter_map(Result::err).collect();
        if self.cancelled() {
            return Err(fail(
                self.interrupted_before_switch(&slots, release, Stage::Build)
                    .await,
            ));
        }
        if !failures.is_empty() {
            return Err(fail(
                self.fail_before_switch(&slots, release, failures).await,
            ));
        }

        // Run-once hooks (migrations) on the first host, old code still live.
        if !self.config.hooks.before_switch.is_empty() {
            let first = &slots[0];
            let ctx = self.context(first, release, "deploy");
            let t = Instant::now();
            if let Err(e) = hooks::run_phase(
                first.host,
                Phase::BeforeSwitch,
                &self.config.hooks.before_switch,
                &ctx,
            )
            .await
            {
                let f = HostFailure {
                    host: first.host.name().to_owned(),
                    stage: Stage::BeforeSwitch,
                    error: e.to_string(),
                };
                return Err(fail(
                    self.fail_before_switch(&slots, release, vec![f]).await,
                ));
            }
            self.hooks_ran(first.host, Phase::BeforeSwitch, t);
        }
        if self.cancelled() {
            return Err(fail(
                self.interrupted_before_switch(&slots, release, Stage::BeforeSwitch)
                    .await,
            ));
        }

        // Barrier passed: every host is prepared. Switch them all at once,
        // at one scheduled moment.
        let results = self
            .switch_all(
                slots
                    .iter()
                    .map(|s| (s.host, s.placement.release(), s.state.current.clone())),
                token,
                latency,
            )
            .await;
        let mut failures = Vec::new();
        let mut times = Vec::new();
        for (s, r) in slots.iter().zip(results) {
            match r {
                Ok(t) => times.extend(t),
                Err(e) => failures.push(self.host_failed(s.host, Stage::Switch, describe(&e))),
            }
        }
        if !failures.is_empty() {
            return Err(fail(
                self.fail_after_switch(&slots, release, Stage::Switch, failures)
                    .await,
            ));
        }
        if self.cancelled() {
            return Err(fail(
                self.interrupted_after_switch(&slots, release, Stage::Switch)
                    .await,
            ));
        }
        let spread = spread_ms(&times);

        // Restart, after-switch hooks and health checks, every host.
        let after = self
            .each(self.hosts.len(), |i, _| {
                self.after_switch(&slots[i], release)
            })
            .await;
        let failures: Vec<HostFailure> = after.into_iter().filter_map(Result::err).collect();
        if self.cancelled() {
            return Err(fail(
                self.interrupted_after_switch(&slots, release, Stage::AfterSwitch)
                    .await,
            ));
        }
        if !failures.is_empty() {
            let stage = if failures.iter().any(|f| f.stage == Stage::Health) {
                Stage::Health
            } else {
                Stage::AfterSwitch
            };
            return Err(fail(
                self.fail_after_switch(&slots, release, stage, failures)
                    .await,
            ));
        }

        // Live everywhere: record, clean up and unlock, one command per host.
        let mut outcomes = Vec::new();
        let (slots, layout) = (&slots, &layout);
        let results = self
            .each(self.config.parallel, |i, _| async move {
                let s = &slots[i];
                let name = s.placement.release();
                let entry = self.entry(
                    LogAction::Deploy,
                    s,
                    release,
                    Some(LogResult::Success),
                    None,
                );
                let removed = cleanup_after(layout.as_ref(), &s.state, name, &release.commit);
                let script = format!(
                    "{GUARDS}{}{}{}",
                    log::append_fragment(s.host),
                    release::remove_fragment(s.host, &removed),
                    lock::release_fragment(s.host, token)
                );
                let line = log::line(&entry);
                let command = ec2kit::Command::shell(script)
                    .stdin(line)
                    .timeout(self.timeouts().cleanup.get());
                match s.host.run_checked(&command).await {
                    Ok(_) if !removed.is_empty() => self.emit(Event::Cleaned {
                        host: s.host.name().to_owned(),
                        removed: removed.clone(),
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        self.warn(
                            s.host,
                            format!("could not record the release, clean up or unlock: {e}"),
                        );
                        if let Err(e) =
                            lock::release(s.host, token, self.timeouts().lock.get()).await
                        {
                            self.warn(s.host, format!("could not release the lock: {e}"));
                        }
                    }
                }
                HostOutcome {
                    host: s.host.name().to_owned(),
                    release: name.to_owned(),
                    previous: s.state.current.clone(),
                    reused: matches!(s.placement, Placement::Reuse { .. }),
                    removed,
                    clock_skew_ms: s.state.clock_skew_ms,
                }
            })
            .await;
        outcomes.extend(results);
        Ok((
            DeployReport {
                environment: self.environment.clone(),
                release: release.clone(),
                hosts: outcomes,
                switch_spread_ms: spread.max(0.0),
                seconds: started.elapsed().as_secs_f64(),
            },
            old_commit,
        ))
    }

    /// Switches hosts to releases at one scheduled moment (see
    /// [`switch::switch_command`]): far enough ahead for every command to
    /// have started (1.5 × the hosts' observed latency), emitting an event
    /// per host with its offset from the first rename. Returns each host's
    /// rename time (host clock, ns) or its error.
    pub(crate) async fn switch_all<'h>(
        &self,
        targets: impl Iterator<Item = (&'h Host, &'h str, Option<String>)>,
        token: &str,
        latency: Duration,
    ) -> Vec<Result<Option<i128>, ec2kit::RemoteError>> {
        let margin = (latency * 3 / 2 + Duration::from_millis(20)).min(Duration::from_secs(3));
        let at = switch::now_ns() + i128::try_from(margin.as_nanos()).unwrap_or(0);
        let targets: Vec<_> = targets.collect();
        let timeout = self.timeouts().switch.get();
        let results = futures::future::join_all(
            targets
                .iter()
                .map(|(h, r, _)| switch::switch(h, r, token, Some(at), timeout)),
        )
        .await;
        let first = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied().flatten())
            .min()
            .unwrap_or(at);
        for ((h, r, previous), result) in targets.iter().zip(&results) {
            if let Ok(t) = result {
                self.emit(Event::Switched {
                    host: h.name().to_owned(),
                    release: (*r).to_owned(),
                    previous: previous.clone(),
                    at_ms: t.map_or(0.0, |t| t.saturating_sub(first) as f64 / 1e6),
                });
            }
        }
        results
    }

    fn context(&self, slot: &Slot<'_>, release: &Release, action: &str) -> HookContext {
        HookContext {
            environment: self.environment.clone(),
            release: slot.placement.release().to_owned(),
            commit: release.commit.clone(),
            tag: release.tag.clone(),
            previous: slot.state.current.clone(),
            action: action.to_owned(),
            extra: Vec::new(),
            path: None,
        }
    }

    fn hooks_ran(&self, host: &Host, phase: Phase, t: Instant) {
        self.emit(Event::HooksRan {
            host: host.name().to_owned(),
            phase,
            count: self.config.hooks.of(phase).len(),
            seconds: t.elapsed().as_secs_f64(),
        });
    }

    pub(crate) fn warn(&self, host: &Host, message: String) {
        self.emit(Event::Warning {
            host: Some(host.name().to_owned()),
            message,
        });
    }

    pub(crate) fn host_failed(&self, host: &Host, stage: Stage, error: String) -> HostFailure {
        // Errors quote the failing script and git's output: never a
        // credential from a URL.
        let error = crate::git::redact(&error);
        self.emit(Event::HostFailed {
            host: host.name().to_owned(),
            stage,
            error: error.clone(),
        });
        HostFailure {
            host: host.name().to_owned(),
            stage,
            error,
        }
    }

    fn entry(
        &self,
        action: LogAction,
        slot: &Slot<'_>,
        release: &Release,
        result: Option<LogResult>,
        message: Option<String>,
    ) -> LogEntry {
        let mut entry = self.log_entry(
            action,
            slot.placement.release(),
            &release.commit,
            release.tag.clone(),
            slot.state.current.clone(),
            result,
        );
        if message.is_some() {
            entry.message = message;
        }
        entry
    }

    /// Builds (or reuses) the release on one host.
    async fn prepare(
        &self,
        slot: &Slot<'_>,
        release: &Release,
        url: &str,
    ) -> Result<(), HostFailure> {
        let host = slot.host;
        let t = Instant::now();
        let fail = |stage: Stage, e: String| self.host_failed(host, stage, e);
        let Placement::Build {
            release: name,
            in_place,
        } = &slot.placement
        else {
            self.emit(Event::Prepared {
                host: host.name().to_owned(),
                release: slot.placement.release().to_owned(),
                reused: true,
                seconds: t.elapsed().as_secs_f64(),
            });
            return Ok(());
        };
        let marker = Marker {
            release: name.clone(),
            commit: release.commit.clone(),
            tag: release.tag.clone(),
            built_at: Timestamp::now(),
        };
        let hooks = &self.config.hooks.build;
        // One command: fetch (only if the mirror lacks the commit),
        // checkout, shared links, and the marker when no hook follows.
        if self.cancelled() {
            return Err(fail(Stage::Checkout, "interrupted".into()));
        }
        let mut script = GUARDS.to_owned();
        let mut timeout = self.timeouts().checkout.get();
        if !slot.state.mirror_has_commit {
            script.push_str(&release::fetch_script(host, url, &release.commit));
            timeout = timeout.saturating_add(self.timeouts().fetch.get());
        }
        script.push_str(&release::checkout_script(
            host,
            &self.config,
            url,
            name,
            &release.commit,
            *in_place,
        ));
        if hooks.is_empty() {
            script.push_str(&release::marker_fragment(&marker));
        }
        let mut c = ec2kit::Command::shell(script).timeout(timeout);
        for (k, v) in release::git_env(&self.config) {
            c = c.env(k, v);
        }
        let stage = if slot.state.mirror_has_commit {
            Stage::Checkout
        } else {
            Stage::Fetch
        };
        host.run_checked(&c)
            .await
            .map_err(|e| fail(stage, describe(&e)))?;
        self.emit(Event::CheckedOut {
            host: host.name().to_owned(),
            release: name.clone(),
        });
        if self.cancelled() {
            return Err(fail(Stage::Build, "interrupted".into()));
        }
        if !hooks.is_empty() {
            let th = Instant::now();
            let ctx = self.context(slot, release, "deploy");
            // The marker is written by the last hook's command, right
            // after it succeeds.
            let then = format!(
                "rel=\"$RELEASE_PATH\"\n{}",
                release::marker_fragment(&marker)
            );
            hooks::run_phase_then(host, Phase::Build, hooks, &ctx, Some(&then))
                .await
                .map_err(|e| fail(Stage::Build, e.to_string()))?;
            self.hooks_ran(host, Phase::Build, th);
        }
        self.emit(Event::Prepared {
            host: host.name().to_owned(),
            release: name.clone(),
            reused: false,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Restart and after-switch hooks, then the health check, on one host.
    async fn after_switch(&self, slot: &Slot<'_>, release: &Release) -> Result<(), HostFailure> {
        let host = slot.host;
        let ctx = self.context(slot, release, "deploy");
        let interrupted = || self.host_failed(host, Stage::AfterSwitch, "interrupted".into());
        for phase in [Phase::Restart, Phase::AfterSwitch] {
            let list = self.config.hooks.of(phase);
            if list.is_empty() {
                continue;
            }
            if self.cancelled() {
                return Err(interrupted());
            }
            let t = Instant::now();
            hooks::run_phase(host, phase, list, &ctx)
                .await
                .map_err(|e| self.host_failed(host, Stage::AfterSwitch, e.to_string()))?;
            self.hooks_ran(host, phase, t);
        }
        if let Some(check) = &self.config.health {
            if self.cancelled() {
                return Err(interrupted());
            }
            health::check(host, check, &ctx)
                .await
                .map_err(|e| self.host_failed(host, Stage::Health, e.to_string()))?;
            self.emit(Event::Healthy {
                host: host.name().to_owned(),
            });
        }
        Ok(())
    }

    /// A failure before any switch: log it, run on-failure hooks in the
    /// live release. `current` was not touched.
    async fn fail_before_switch(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        failures: Vec<HostFailure>,
    ) -> DeployError {
        let stage = failures.first().map_or(Stage::Checkout, |f| f.stage);
        let reason = failures.first().map(|f| f.to_string());
        self.record_before_switch(slots, release, reason).await;
        DeployError::Failed {
            stage,
            failures,
            rolled_back: Vec::new(),
            inconsistent: Vec::new(),
        }
    }

    /// Interrupted before any switch: the same as a failure there.
    async fn interrupted_before_switch(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        stage: Stage,
    ) -> DeployError {
        let e = self.interrupted(stage);
        self.record_before_switch(slots, release, Some(e.to_string()))
            .await;
        e
    }

    async fn record_before_switch(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        reason: Option<String>,
    ) {
        let reason = &reason;
        self.each(self.config.parallel, |i, _| async move {
            let s = &slots[i];
            let entry = self.entry(
                LogAction::Deploy,
                s,
                release,
                Some(LogResult::Failed),
                reason.clone(),
            );
            if let Err(e) = log::append(s.host, &[entry], self.timeouts().lock.get()).await {
                self.warn(s.host, format!("could not write the release log: {e}"));
            }
            self.on_failure(s, release).await;
        })
        .await;
    }

    async fn on_failure(&self, slot: &Slot<'_>, release: &Release) {
        let hooks = &self.config.hooks.on_failure;
        let Some(live) = &slot.state.current else {
            return;
        };
        if hooks.is_empty() {
            return;
        }
        let mut ctx = self.context(slot, release, "deploy");
        ctx.release = live.clone();
        if let Err(e) = hooks::run_phase(slot.host, Phase::OnFailure, hooks, &ctx).await {
            self.warn(slot.host, format!("on_failure hook: {e}"));
        }
    }

    /// A failure after the first switch: switch **every** host back (an
    /// unswitched host is re-pointed at the link it has, a no-op), restart
    /// the old release, run after-rollback and on-failure hooks.
    async fn fail_after_switch(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        stage: Stage,
        failures: Vec<HostFailure>,
    ) -> DeployError {
        let reason = failures.first().map(|f| f.to_string());
        let (rolled_back, inconsistent) = self.switch_back(slots, release, reason).await;
        DeployError::Failed {
            stage,
            failures,
            rolled_back,
            inconsistent,
        }
    }

    /// Interrupted after the first switch: the same as a failure there.
    async fn interrupted_after_switch(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        stage: Stage,
    ) -> DeployError {
        self.emit(Event::Interrupted { stage });
        let (rolled_back, inconsistent) = self
            .switch_back(slots, release, Some(format!("interrupted during {stage}")))
            .await;
        DeployError::Interrupted {
            stage,
            rolled_back,
            inconsistent,
        }
    }

    /// Puts every host's `current` back to exactly the link it had (its
    /// raw target: relative or absolute, an ektool release or another
    /// tool's directory, complete or not — it was live), or removes it on
    /// a host that had none. Then logs the release as rolled back and runs
    /// the restart, after-rollback and on-failure hooks.
    async fn switch_back(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        reason: Option<String>,
    ) -> (Vec<String>, Vec<HostFailure>) {
        let timeout = self.timeouts().switch.get();
        let back = futures::future::join_all(slots.iter().map(|s| async move {
            let token = format!("back{}", uuid::Uuid::new_v4().simple());
            let r = match &s.state.current_link {
                Some(link) => switch::restore(s.host, link, &token, timeout).await,
                // It had no `current`: take the new one out again.
                None => switch::unset(s.host, s.placement.release(), timeout).await,
            };
            (s, r)
        }))
        .await;
        let mut rolled_back = Vec::new();
        let mut inconsistent = Vec::new();
        for (s, r) in &back {
            match r {
                Ok(()) => {
                    rolled_back.push(s.host.name().to_owned());
                    self.emit(Event::SwitchedBack {
                        host: s.host.name().to_owned(),
                        release: s.state.current.clone(),
                        link: s
                            .state
                            .current_link
                            .clone()
                            .filter(|_| s.state.current.is_none()),
                    });
                }
                Err(e) => inconsistent.push(HostFailure {
                    host: s.host.name().to_owned(),
                    stage: Stage::Switch,
                    error: describe(e),
                }),
            }
        }
        let ok: HashMap<&str, bool> = back
            .iter()
            .map(|(s, r)| (s.host.name(), r.is_ok()))
            .collect();
        self.each(self.config.parallel, |i, _| {
            let reason = reason.clone();
            let ok = ok.get(slots[i].host.name()).copied().unwrap_or(false);
            async move {
                let s = &slots[i];
                let entry = self.entry(
                    LogAction::Deploy,
                    s,
                    release,
                    Some(LogResult::RolledBack),
                    reason,
                );
                if let Err(e) = log::append(s.host, &[entry], self.timeouts().lock.get()).await {
                    self.warn(s.host, format!("could not write the release log: {e}"));
                }
                if ok && let Some(link) = &s.state.current_link {
                    let mut ctx = self.context(s, release, "rollback");
                    match &s.state.current {
                        Some(prev) => ctx.release = prev.clone(),
                        // Another tool's directory: the hooks run in it,
                        // through `current`.
                        None => {
                            ctx.release = link.clone();
                            ctx.path = Some(s.host.path(crate::CURRENT));
                        }
                    }
                    ctx.commit = s
                        .state
                        .current_release()
                        .and_then(|r| r.commit())
                        .unwrap_or_default()
                        .to_owned();
                    ctx.previous = Some(s.placement.release().to_owned());
                    for phase in [Phase::Restart, Phase::AfterRollback] {
                        let list = self.config.hooks.of(phase);
                        if !list.is_empty()
                            && let Err(e) = hooks::run_phase(s.host, phase, list, &ctx).await
                        {
                            self.warn(s.host, format!("{phase} hook after switching back: {e}"));
                        }
                    }
                }
                self.on_failure(s, release).await;
            }
        })
        .await;
        (rolled_back, inconsistent)
    }
}

/// What one lock round found, per host.
struct LockRound {
    /// The state of each host taken, by index.
    states: Vec<Option<HostState>>,
    /// Hosts found held, with their lock.
    held: Vec<(usize, HeldLock)>,
    /// Hosts whose answer was lost.
    failed: Vec<usize>,
    /// The first of those failures.
    error: Option<HostFailure>,
}

impl LockRound {
    fn new(n: usize) -> Self {
        Self {
            states: vec![None; n],
            held: Vec::new(),
            failed: Vec::new(),
            error: None,
        }
    }

    fn record(&mut self, i: usize, r: Result<Attempt, ec2kit::RemoteError>, host: &Host) {
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

/// Releases a successful deploy of `commit` into `name` removes: the
/// layout's cleanup of the host's state with the new release complete and
/// current, the old current as previous.
pub(crate) fn cleanup_after(
    layout: &dyn ReleaseLayout,
    state: &HostState,
    name: &str,
    commit: &str,
) -> Vec<String> {
    let mut after = state.clone();
    let marker = Some(Marker {
        release: name.to_owned(),
        commit: commit.to_owned(),
        tag: None,
        built_at: Timestamp::UNIX_EPOCH,
    });
    match after.releases.iter_mut().find(|r| r.name == name) {
        Some(r) => r.marker = marker,
        None => after.releases.push(ReleaseDir {
            name: name.to_owned(),
            marker,
            made: true,
        }),
    }
    let previous = state.current.as_deref().filter(|p| *p != name);
    layout.cleanup(&after, name, previous)
}

/// How far a host's clock (read into `state`) is ahead of ours: its clock
/// against ours halfway through the round trip that read it.
pub(crate) fn skew_ms(state: &HostState, sent_ns: i128, round_trip: Duration) -> Option<i64> {
    let host = state.clock_ns?;
    let half = i128::try_from(round_trip.as_nanos() / 2).unwrap_or(0);
    // The host's text is not trusted: saturate instead of overflowing.
    i64::try_from(host.saturating_sub(sent_ns).saturating_sub(half) / 1_000_000).ok()
}

/// Milliseconds between the first and the last of the hosts' rename times.
pub(crate) fn spread_ms(times: &[i128]) -> f64 {
    match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) => b.saturating_sub(*a) as f64 / 1e6,
        _ => 0.0,
    }
}

fn failed(stage: Stage, failures: Vec<HostFailure>) -> DeployError {
    DeployError::Failed {
        stage,
        failures,
        rolled_back: Vec::new(),
        inconsistent: Vec::new(),
    }
}
