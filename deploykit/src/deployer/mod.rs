//! The [`Deployer`]: one environment's hosts, and every operation on them.
//!
//! Each file is one thing a `Deployer` does: [`deploy`](Deployer::deploy)
//! and its [`deploy_plan`](Deployer::deploy_plan) (`deploy.rs`), [`rollback`](Deployer::rollback)
//! (`rollback.rs`), the [`releases`](Deployer::releases) table
//! (`releases.rs`), [`restart`](Deployer::restart) and
//! [`maintenance`](Deployer::maintenance) (`maintenance.rs`), and
//! [`unlock`](Deployer::unlock) (`unlock.rs`). This file holds the builder
//! and what they share: reading the hosts, locking them (the round
//! protocol itself is in `crate::lock`), switching them, notifying.
//!
//! Every command sent to a host has a deadline
//! ([`Timeouts`](crate::environment::Timeouts)), so a host or git server
//! that stops answering fails that host, and the run takes its failure
//! path instead of hanging with the locks held. A cancellation token
//! ([`Deployer::cancel_on`], the CLI's SIGINT/SIGTERM) makes the run stop
//! starting new work and take the same failure path.

mod audit;
mod check;
mod deploy;
mod hold;
mod maintenance;
mod releases;
#[cfg(test)]
mod roles_tests;
mod rollback;
mod unlock;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ec2kit::CancellationToken;
use futures::stream::{self, StreamExt};
use jiff::Timestamp;

use crate::environment::Environment;
use crate::error::{DeployError, HostFailure, Stage};
use crate::event::{Event, EventSink};
use crate::host::{Actor, Host};
use crate::lock::{self, LockOwner};
use crate::log::{self, LogAction, LogEntry, LogResult};
use crate::notify::{Notification, NotificationKind, Notifier};
use crate::release::Release;
use crate::shell::{describe, short};
use crate::state::{self, HostState};
use crate::switch;

pub use deploy::{DeployReport, HostOutcome};
pub use hold::HoldReport;
pub use releases::HostReleases;
pub use rollback::{RollbackReport, RollbackStep};
pub use unlock::UnlockOutcome;

#[cfg(test)]
pub(crate) use deploy::cleanup_after;
#[cfg(test)]
pub(crate) use rollback::fleet_steps;

/// Runs deploy operations for one environment on its hosts.
#[derive(Clone)]
pub struct Deployer {
    environment: String,
    config: Environment,
    /// Sorted by (name, root): the lock order, and the first one runs the
    /// run-once hooks.
    hosts: Vec<Host>,
    actor: Actor,
    notifier: Option<Arc<dyn Notifier>>,
    events: EventSink,
    lock_wait: Duration,
    message: Option<String>,
    repository: Option<String>,
    cancel: CancellationToken,
    target_groups: Option<Arc<dyn ec2kit::TargetGroups>>,
    ec2: Option<Arc<dyn ec2kit::Ec2>>,
    drain_timeout: Option<Duration>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("environment", &self.environment)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
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
            target_groups: None,
            ec2: None,
            drain_timeout: None,
        }
    }

    /// The ELB client the environment's
    /// [`load_balancer`](Environment::load_balancer) is drained with (see
    /// [`crate::balancer`]); needed when it has one.
    #[must_use]
    pub fn target_groups(mut self, client: Arc<dyn ec2kit::TargetGroups>) -> Self {
        self.target_groups = Some(client);
        self
    }

    /// The EC2 client that finds the addresses of an `instance` target
    /// group's instances.
    #[must_use]
    pub fn ec2(mut self, client: Arc<dyn ec2kit::Ec2>) -> Self {
        self.ec2 = Some(client);
        self
    }

    /// The longest a wave waits for its targets to drain, over the
    /// environment's `drain_timeout` (ektool's `--drain-timeout`).
    #[must_use]
    pub fn drain_timeout(mut self, limit: Duration) -> Self {
        self.drain_timeout = Some(limit);
        self
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

    /// Waits this long for a held lock (default: fail at once with
    /// [`DeployError::Locked`]).
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

    fn emit(&self, event: Event) {
        (self.events)(&event);
    }

    /// The environment's command deadlines.
    fn timeouts(&self) -> crate::environment::Timeouts {
        self.config.timeouts
    }

    /// Whether the run was asked to stop.
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The error of a run interrupted before any host switched (the caller
    /// releases the locks).
    fn interrupted(&self, stage: Stage) -> DeployError {
        self.emit(Event::Interrupted { stage });
        DeployError::Interrupted {
            stage,
            rolled_back: Vec::new(),
            inconsistent: Vec::new(),
        }
    }

    /// Runs `f` for every host, at most `limit` at once; results in host
    /// order.
    async fn each<'a, T, F, Fut>(&'a self, limit: usize, f: F) -> Vec<T>
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

    /// Reads every host's state (in parallel), without the lock.
    async fn inspect(&self, commit: Option<&str>) -> Result<Vec<HostState>, DeployError> {
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
                    state.clock_skew_ms = state::skew_ms(&state, sent, t.elapsed());
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

    /// Reads every host's release log (in parallel), without the lock.
    async fn read_logs(&self) -> Result<Vec<Vec<LogEntry>>, DeployError> {
        let timeout = self.timeouts().state.get();
        let results = self
            .each(self.hosts.len(), |_, h| log::read_within(h, timeout))
            .await;
        let mut logs = Vec::new();
        let mut failures = Vec::new();
        for (h, r) in self.hosts.iter().zip(results) {
            match r {
                Ok(l) => logs.push(l),
                Err(e) => failures.push(HostFailure {
                    host: h.name().to_owned(),
                    stage: Stage::Inspect,
                    error: describe(&e),
                }),
            }
        }
        if failures.is_empty() {
            Ok(logs)
        } else {
            Err(failed(Stage::Inspect, failures))
        }
    }

    /// Takes the lock on every host for `action`, reading their states in
    /// the same round (see [`lock::Round::lock_all`]); `token` is this
    /// run's, the only one that releases it. A deploy's round (the one
    /// looking for a `commit`) also finds missing `shared_files`.
    async fn lock_all(
        &self,
        action: String,
        token: &str,
        commit: Option<&str>,
        with_log: bool,
    ) -> Result<(Vec<HostState>, Duration), DeployError> {
        let owner = LockOwner {
            actor: self.actor.clone(),
            environment: self.environment.clone(),
            since: Timestamp::now(),
            action,
            message: self.message.clone(),
            token: token.to_owned(),
            first_host: Some(self.hosts[0].name().to_owned()),
            hand_held: false,
        };
        lock::Round {
            hosts: &self.hosts,
            owner,
            stale_after: self.config.lock_stale_after(),
            wait: self.lock_wait,
            timeout: self.timeouts().lock.get(),
            commit,
            maintenance_file: self.config.maintenance_file.as_str(),
            with_log,
            shared_files: if commit.is_some() {
                &self.config.shared_files
            } else {
                &[]
            },
            cancel: &self.cancel,
            events: &self.events,
        }
        .lock_all()
        .await
    }

    /// Releases this run's lock on every host.
    async fn unlock_all(&self, token: &str) {
        let all: Vec<&Host> = self.hosts.iter().collect();
        lock::release_all(&all, token, self.timeouts().lock.get(), &self.events).await;
    }

    /// Announces `kind` of `release` (best effort: a failing notifier is
    /// an event, never the operation's failure).
    async fn notify(
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

    /// Switches hosts to releases at one scheduled moment (see
    /// [`switch::switch_command`]): far enough ahead for every command to
    /// have started: half the hosts' observed latency (the lock round's
    /// whole round trip and script; a switch needs only the way there and
    /// a few processes) and 25 ms. A host whose command arrives later
    /// switches on arrival (a wider spread, never a missed switch). Emits an event
    /// per host with its offset from the first rename. Returns each host's
    /// rename time (host clock, ns) or its error.
    async fn switch_all<'h>(
        &self,
        targets: impl Iterator<Item = (&'h Host, &'h str, Option<String>)>,
        token: &str,
        latency: Duration,
    ) -> Vec<Result<Option<i128>, ec2kit::RemoteError>> {
        let margin = (latency / 2 + Duration::from_millis(25)).min(Duration::from_secs(3));
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

    fn warn(&self, host: &Host, message: String) {
        self.emit(Event::Warning {
            host: Some(host.name().to_owned()),
            message,
        });
    }

    fn host_failed(&self, host: &Host, stage: Stage, error: String) -> HostFailure {
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

    fn log_entry(
        &self,
        action: LogAction,
        release: &str,
        commit: &str,
        tag: Option<String>,
        previous: Option<String>,
        result: Option<LogResult>,
    ) -> LogEntry {
        LogEntry {
            at: Timestamp::now(),
            action,
            who: self.actor.clone(),
            environment: self.environment.clone(),
            release: release.to_owned(),
            commit: commit.to_owned(),
            tag,
            previous,
            result,
            message: self.message.clone(),
        }
    }
}

/// Milliseconds between the first and the last of the hosts' rename times.
fn spread_ms(times: &[i128]) -> f64 {
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
