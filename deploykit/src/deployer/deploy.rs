//! Deploying a release: plan, then carry it out.
//!
//! ```text
//! lock every host (fixed order)
//!  → read every host's state
//!  → plan every host (the same pure function `deploy_plan` uses)
//!  → prepare the release on every host, in parallel (bounded):
//!    fetch into the mirror, check out, link shared paths, build hooks,
//!    completion marker
//!  → run-once hooks on the run-once host (migrations)
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ec2kit::{Target, TargetGroups};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Deployer, spread_ms};
use crate::balancer::{self, BalancerError, Members};
use crate::environment::{Environment, Hook, Phase};
use crate::error::{DeployError, HostFailure, Stage};
use crate::event::Event;
use crate::health;
use crate::hooks::{self, HookContext};
use crate::host::Host;
use crate::layout::{Placement, ReleaseLayout, Timestamped};
use crate::lock;
use crate::log::{self, LogAction, LogEntry, LogResult};
use crate::notify::NotificationKind;
use crate::plan::{DeployPlan, HostPlan, LoadBalancerPlan, Mirror, PhaseHooks, PrepareAction};
use crate::release::{self, Marker, Release};
use crate::shell::{GUARDS, describe};
use crate::state::{self, HostState, ReleaseDir};
use crate::switch;

/// The result of a successful deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    /// The environment.
    pub environment: String,
    /// The release.
    pub release: Release,
    /// Per host.
    pub hosts: Vec<HostOutcome>,
    /// Milliseconds between the first and the last host's switch (of one
    /// wave: the largest, with a canary or batches).
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

/// One host's part of a run: what it has, and its plan.
struct Slot<'a> {
    host: &'a Host,
    state: HostState,
    plan: HostPlan,
}

/// A run's load balancer (see [`crate::balancer`]).
struct Drain {
    client: Arc<dyn TargetGroups>,
    arn: String,
    members: Members,
    /// The longest a wave waits for its targets to drain.
    drain_wait: Duration,
    healthy_timeout: Duration,
}

impl Drain {
    /// The targets of a wave's hosts, each with its host.
    fn of(&self, wave: &[Slot<'_>]) -> Vec<(String, Target)> {
        wave.iter()
            .flat_map(|s| {
                let name = s.host.name();
                self.members
                    .targets
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(move |t| (name.to_owned(), t.clone()))
            })
            .collect()
    }

    /// What the plan shows.
    fn plan(&self, hosts: &[Host]) -> LoadBalancerPlan {
        LoadBalancerPlan {
            target_group_arn: self.arn.clone(),
            target_type: self.members.group.target_type.to_string(),
            deregistration_delay_seconds: self.members.group.deregistration_delay.as_secs(),
            drain_wait_seconds: self.drain_wait.as_secs(),
            healthy_timeout_seconds: self.healthy_timeout.as_secs(),
            targets: self
                .members
                .targets
                .iter()
                .map(|(h, t)| (h.clone(), t.iter().map(ToString::to_string).collect()))
                .collect(),
            not_targets: hosts
                .iter()
                .filter(|h| !self.members.targets.contains_key(h.name()))
                .map(|h| h.name().to_owned())
                .collect(),
        }
    }
}

/// A wave's hosts (once each, in order), its targets as shown, and the
/// targets.
fn wave_parts(targets: &[(String, Target)]) -> (Vec<String>, Vec<String>, Vec<Target>) {
    (
        hosts_of(targets),
        targets.iter().map(|(_, t)| t.to_string()).collect(),
        targets.iter().map(|(_, t)| t.clone()).collect(),
    )
}

fn hosts_of(targets: &[(String, Target)]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for (h, _) in targets {
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    hosts
}

impl Deployer {
    /// Refuses what cannot work before anything is read; returns the URL
    /// hosts fetch from.
    fn refuse_unworkable(&self) -> Result<String, DeployError> {
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
        self.config
            .hooks
            .validate()
            .map_err(|e| DeployError::Invalid(e.0))?;
        self.once_hosts()?;
        let url = self.repository.clone().ok_or(DeployError::NoRepository)?;
        crate::git::check_repository_url(&url).map_err(DeployError::Invalid)?;
        Ok(url)
    }

    /// The host (index, lock order) of each `before_switch` hook (see
    /// [`hooks::once_host`]); a `once_on` role no host has is refused.
    fn once_hosts(&self) -> Result<Vec<usize>, DeployError> {
        self.config
            .hooks
            .before_switch
            .iter()
            .map(|hook| {
                hooks::once_host(hook, &self.hosts).ok_or_else(|| {
                    let mut have: Vec<String> =
                        self.hosts.iter().flat_map(|h| h.roles().to_vec()).collect();
                    have.sort();
                    have.dedup();
                    DeployError::NoHostWithRole {
                        hook: hook.run.clone(),
                        role: hook.once_on.clone().unwrap_or_default(),
                        have,
                    }
                })
            })
            .collect()
    }

    /// This run's name for a new timestamped release: after every name on
    /// every host, so all hosts build into the same one.
    fn fresh_name(&self, states: &[HostState]) -> String {
        Timestamped::fresh_name(
            Timestamp::now(),
            states
                .iter()
                .flat_map(|s| s.releases.iter().map(|r| r.name.as_str())),
        )
    }

    /// Every host with its plan for `commit` (see [`host_plan`]); each
    /// run-once hook goes to its host ([`hooks::once_host`]: the first in
    /// lock order, or the first with its `once_on` role).
    fn slots<'a>(
        &'a self,
        layout: &dyn ReleaseLayout,
        states: Vec<HostState>,
        commit: &str,
    ) -> Vec<Slot<'a>> {
        let fresh = self.fresh_name(&states);
        let once = self.once_hosts().unwrap_or_default();
        let before = &self.config.hooks.before_switch;
        self.hosts
            .iter()
            .zip(states)
            .enumerate()
            .map(|(i, (host, state))| {
                let placement = layout.place(&state, commit, &fresh);
                let plan = host_plan(
                    &self.config,
                    layout,
                    host,
                    &state,
                    placement,
                    commit,
                    &once_on(before, &once, i),
                );
                Slot { host, state, plan }
            })
            .collect()
    }

    /// What [`deploy`](Self::deploy) of `release` would do, host by host
    /// (each operation's preview is `<verb>_plan`, as `rollback_plan` and
    /// `unlock_plan`). Reads the hosts; changes nothing (no lock either).
    pub async fn deploy_plan(&self, release: &Release) -> Result<DeployPlan, DeployError> {
        let url = self.refuse_unworkable()?;
        let drain = self.drain_setup().await?;
        let layout = self.config.release_layout();
        let states = self.inspect(Some(&release.commit)).await?;
        let slots = self.slots(layout.as_ref(), states, &release.commit);
        for s in &slots {
            state::report_skew(&self.events, s.host, s.state.clock_skew_ms);
        }
        Ok(DeployPlan {
            environment: self.environment.clone(),
            release: release.clone(),
            layout: layout.name().to_owned(),
            repository: crate::git::redact(&url),
            run_once_host: slots
                .iter()
                .find(|s| s.plan.runs(Phase::BeforeSwitch))
                .map(|s| s.host.name().to_owned()),
            waves: self
                .config
                .rollout()
                .waves(slots.len())
                .into_iter()
                .map(|w| slots[w].iter().map(|s| s.host.name().to_owned()).collect())
                .collect(),
            canary_wait_seconds: if self.config.canary > 0 {
                self.config.canary_wait.0.as_secs()
            } else {
                0
            },
            hosts: slots.into_iter().map(|s| s.plan).collect(),
            load_balancer: drain.map(|d| d.plan(&self.hosts)),
        })
    }

    /// Deploys `release` to every host. See the module docs for the flow.
    pub async fn deploy(&self, release: &Release) -> Result<DeployReport, DeployError> {
        let started = Instant::now();
        let url = self.refuse_unworkable()?;
        // The target group is read before anything changes.
        let drain = self.drain_setup().await?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (states, latency) = self
            .lock_all(
                format!("deploy {}", release.describe),
                &token,
                Some(&release.commit),
                false,
            )
            .await?;
        for (h, s) in self.hosts.iter().zip(&states) {
            self.emit(Event::Inspected {
                host: h.name().to_owned(),
                current: s.current.clone(),
            });
        }
        // The commit live before, for the notifications.
        let old_commit = states
            .first()
            .and_then(|s| s.current_release())
            .and_then(|r| r.commit())
            .map(str::to_owned);
        self.notify(NotificationKind::Started, release, old_commit.clone(), None)
            .await;
        let result = self
            .deploy_locked(
                release,
                &url,
                &token,
                started,
                (states, latency),
                drain.as_ref(),
            )
            .await;
        // On success each host's last command released its lock.
        if result.is_err() {
            self.unlock_all(&token).await;
        }
        let (kind, error) = match &result {
            Ok(_) => (NotificationKind::Succeeded, None),
            Err(e) => (NotificationKind::Failed, Some(e.to_string())),
        };
        self.notify(kind, release, old_commit, error).await;
        result
    }

    /// The deploy, every host locked: plan every host from the states the
    /// lock round read (with the hosts' observed latency), then carry the
    /// plan out.
    async fn deploy_locked(
        &self,
        release: &Release,
        url: &str,
        token: &str,
        started: Instant,
        (states, latency): (Vec<HostState>, Duration),
        drain: Option<&Drain>,
    ) -> Result<DeployReport, DeployError> {
        let layout = self.config.release_layout();
        let slots = self.slots(layout.as_ref(), states, &release.commit);

        // A shared file missing (the lock round looked): nothing is built.
        let missing: Vec<HostFailure> = slots
            .iter()
            .filter(|s| !s.state.missing_shared_files.is_empty())
            .map(|s| {
                let files: Vec<String> = s
                    .state
                    .missing_shared_files
                    .iter()
                    .map(|f| format!("shared/{f}"))
                    .collect();
                let error = format!(
                    "shared file(s) {} missing on this host; create them before deploying",
                    files.join(", ")
                );
                self.host_failed(s.host, Stage::Checkout, error)
            })
            .collect();
        if !missing.is_empty() {
            return Err(self.fail_before_switch(&slots, release, missing).await);
        }

        // Prepare everywhere; nothing is live-visible yet.
        let prepared = self
            .each(self.config.parallel, |i, _| {
                self.prepare(&slots[i], release, url)
            })
            .await;
        let failures: Vec<HostFailure> = prepared.into_iter().filter_map(Result::err).collect();
        if self.cancelled() {
            return Err(self
                .interrupted_before_switch(&slots, release, Stage::Build)
                .await);
        }
        if !failures.is_empty() {
            return Err(self.fail_before_switch(&slots, release, failures).await);
        }

        // Run-once hooks (migrations), in order, each on its host (runs of
        // consecutive hooks on one host together), old code still live.
        let once = self.once_hosts()?;
        let before = &self.config.hooks.before_switch;
        let mut start = 0;
        while start < before.len() {
            let i = once[start];
            let end = (start..before.len())
                .find(|&j| once[j] != i)
                .unwrap_or(before.len());
            let first = &slots[i];
            let ctx = self.context(first, release, "deploy");
            let t = Instant::now();
            let list = &before[start..end];
            if let Err(e) = hooks::run_phase(first.host, Phase::BeforeSwitch, list, &ctx).await {
                let f = HostFailure {
                    host: first.host.name().to_owned(),
                    stage: Stage::BeforeSwitch,
                    error: e.to_string(),
                };
                return Err(self.fail_before_switch(&slots, release, vec![f]).await);
            }
            self.hooks_ran_n(first.host, Phase::BeforeSwitch, list.len(), t);
            start = end;
        }
        if self.cancelled() {
            return Err(self
                .interrupted_before_switch(&slots, release, Stage::BeforeSwitch)
                .await);
        }

        // Barrier passed: every host is prepared. Switch in waves (see
        // `switch_waves`); behind a load balancer, targets a failure left
        // out of the group are registered again once every host is back.
        let mut out = Vec::new();
        let spread = match self
            .switch_waves(&slots, release, token, latency, drain, &mut out)
            .await
        {
            Ok(spread) => spread,
            Err(e) => {
                if let Some(d) = drain {
                    self.register_again(d, &out).await;
                }
                return Err(e);
            }
        };

        // Live everywhere: record, clean up and unlock, one command per host.
        let slots = &slots;
        let outcomes = self
            .each(self.config.parallel, |i, _| async move {
                let s = &slots[i];
                let name = s.plan.prepare.release();
                let entry = self.entry(
                    LogAction::Deploy,
                    s,
                    release,
                    Some(LogResult::Success),
                    None,
                );
                let removed = s.plan.cleanup.clone();
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
                    reused: matches!(s.plan.prepare, PrepareAction::Reuse { .. }),
                    removed,
                    clock_skew_ms: s.state.clock_skew_ms,
                }
            })
            .await;
        Ok(DeployReport {
            environment: self.environment.clone(),
            release: release.clone(),
            hosts: outcomes,
            switch_spread_ms: spread.max(0.0),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn context(&self, slot: &Slot<'_>, release: &Release, action: &str) -> HookContext {
        HookContext {
            environment: self.environment.clone(),
            release: slot.plan.prepare.release().to_owned(),
            commit: release.commit.clone(),
            tag: release.tag.clone(),
            previous: slot.state.current.clone(),
            action: action.to_owned(),
            extra: Vec::new(),
            path: None,
        }
    }

    fn hooks_ran(&self, host: &Host, phase: Phase, t: Instant) {
        let count = hooks::for_host(host, self.config.hooks.of(phase)).len();
        self.hooks_ran_n(host, phase, count, t);
    }

    fn hooks_ran_n(&self, host: &Host, phase: Phase, count: usize, t: Instant) {
        self.emit(Event::HooksRan {
            host: host.name().to_owned(),
            phase,
            count,
            seconds: t.elapsed().as_secs_f64(),
        });
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
            slot.plan.prepare.release(),
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
        let PrepareAction::Build {
            release: name,
            mirror,
            in_place,
        } = &slot.plan.prepare
        else {
            self.emit(Event::Prepared {
                host: host.name().to_owned(),
                release: slot.plan.prepare.release().to_owned(),
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
        let hooks: &[_] = if slot.plan.runs(Phase::Build) {
            &self.config.hooks.build
        } else {
            &[]
        };
        // One command: fetch (only if the mirror lacks the commit),
        // checkout, shared links, and the marker when no hook follows.
        if self.cancelled() {
            return Err(fail(Stage::Checkout, "interrupted".into()));
        }
        let mut script = GUARDS.to_owned();
        let mut timeout = self.timeouts().checkout.get();
        if *mirror != Mirror::None {
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
        let stage = if *mirror == Mirror::None {
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

    /// Switches the prepared hosts in waves: all at once by default, else
    /// the canary, then batches (see `crate::rollout`). Each wave switches
    /// at one scheduled moment and is restarted and checked before the
    /// next; a failure in any wave puts every host back, the earlier waves'
    /// too. Behind a load balancer each wave is drained first and healthy
    /// in the group again after (see `crate::balancer`); `out` holds the
    /// targets out of the group. Returns the largest switch spread.
    async fn switch_waves(
        &self,
        slots: &[Slot<'_>],
        release: &Release,
        token: &str,
        latency: Duration,
        drain: Option<&Drain>,
        out: &mut Vec<(String, Target)>,
    ) -> Result<f64, DeployError> {
        let rollout = self.config.rollout();
        let waves = rollout.waves(slots.len());
        let mut spread = 0.0f64;
        for (n, wave) in waves.iter().enumerate() {
            let earlier = n > 0;
            let wave_slots = &slots[wave.clone()];
            if waves.len() > 1 {
                self.emit(Event::Wave {
                    number: n + 1,
                    of: waves.len(),
                    hosts: wave_slots
                        .iter()
                        .map(|s| s.host.name().to_owned())
                        .collect(),
                });
            }
            let wave_targets = drain.map(|d| d.of(wave_slots)).unwrap_or_default();
            if let Some(d) = drain
                && !wave_targets.is_empty()
            {
                out.extend(wave_targets.iter().cloned());
                self.drain_wave(d, slots, release, earlier, &wave_targets)
                    .await?;
            }
            let results = self
                .switch_all(
                    wave_slots
                        .iter()
                        .map(|s| (s.host, s.plan.prepare.release(), s.state.current.clone())),
                    token,
                    latency,
                )
                .await;
            let mut failures = Vec::new();
            let mut times = Vec::new();
            for (s, r) in wave_slots.iter().zip(results) {
                match r {
                    Ok(t) => times.extend(t),
                    Err(e) => failures.push(self.host_failed(s.host, Stage::Switch, describe(&e))),
                }
            }
            if !failures.is_empty() {
                return Err(self
                    .fail_after_switch(slots, release, Stage::Switch, failures)
                    .await);
            }
            if self.cancelled() {
                return Err(self
                    .interrupted_after_switch(slots, release, Stage::Switch)
                    .await);
            }
            spread = spread.max(spread_ms(&times));

            // Restart, after-switch hooks and health checks, the wave's hosts.
            let after =
                futures::future::join_all(wave_slots.iter().map(|s| self.after_switch(s, release)))
                    .await;
            let failures: Vec<HostFailure> = after.into_iter().filter_map(Result::err).collect();
            if self.cancelled() {
                return Err(self
                    .interrupted_after_switch(slots, release, Stage::AfterSwitch)
                    .await);
            }
            if !failures.is_empty() {
                let stage = if failures.iter().any(|f| f.stage == Stage::Health) {
                    Stage::Health
                } else {
                    Stage::AfterSwitch
                };
                return Err(self
                    .fail_after_switch(slots, release, stage, failures)
                    .await);
            }
            if let Some(d) = drain
                && !wave_targets.is_empty()
            {
                self.fill_wave(d, slots, release, &wave_targets).await?;
                out.retain(|o| !wave_targets.contains(o));
            }
            let canary_done = n == 0 && rollout.canary > 0 && waves.len() > 1;
            if canary_done && !rollout.canary_wait.is_zero() {
                self.emit(Event::CanaryWait {
                    hosts: wave_slots.len(),
                    seconds: rollout.canary_wait.as_secs_f64(),
                });
                tokio::select! {
                    () = tokio::time::sleep(rollout.canary_wait) => {}
                    () = self.cancel.cancelled() => {}
                }
                if self.cancelled() {
                    return Err(self
                        .interrupted_after_switch(slots, release, Stage::AfterSwitch)
                        .await);
                }
            }
        }

        Ok(spread)
    }

    /// Takes a wave's targets out of the group and waits for them to drain
    /// (at most the drain wait). A failure here fails the deploy: before
    /// any switch if no earlier wave switched, else switching every host
    /// back.
    async fn drain_wave(
        &self,
        d: &Drain,
        slots: &[Slot<'_>],
        release: &Release,
        earlier: bool,
        targets: &[(String, Target)],
    ) -> Result<(), DeployError> {
        let (hosts, shown, flat) = wave_parts(targets);
        let fail = |error: String| async move {
            let failures = self.lb_failures(slots, &hosts_of(targets), &error);
            if earlier {
                self.fail_after_switch(slots, release, Stage::LoadBalancer, failures)
                    .await
            } else {
                self.fail_before_switch(slots, release, failures).await
            }
        };
        if flat.len() >= d.members.registered {
            self.emit(Event::Warning {
                host: None,
                message: format!(
                    "this wave takes every target out of target group {}: nothing serves until it is back (set a smaller batch)",
                    d.arn
                ),
            });
        }
        if let Err(e) = d.client.deregister_targets(&d.arn, &flat).await {
            return Err(fail(format!("could not deregister: {e}")).await);
        }
        self.emit(Event::Deregistered {
            hosts: hosts.clone(),
            targets: shown,
            wait_seconds: d.drain_wait.as_secs_f64(),
        });
        let waited =
            balancer::wait_drained(d.client.as_ref(), &d.arn, &flat, d.drain_wait, &self.cancel)
                .await;
        if self.cancelled() {
            return Err(if earlier {
                self.interrupted_after_switch(slots, release, Stage::LoadBalancer)
                    .await
            } else {
                self.interrupted_before_switch(slots, release, Stage::LoadBalancer)
                    .await
            });
        }
        match waited {
            Ok(w) => self.emit(Event::Drained {
                hosts,
                complete: w.done,
                seconds: w.seconds,
            }),
            Err(e) => return Err(fail(format!("could not read target health: {e}")).await),
        }
        Ok(())
    }

    /// Registers a switched, healthy wave's targets again and waits until
    /// every one is `healthy` in the group (at most `healthy_timeout`);
    /// else fails the deploy, switching every host back (the targets stay
    /// registered).
    async fn fill_wave(
        &self,
        d: &Drain,
        slots: &[Slot<'_>],
        release: &Release,
        targets: &[(String, Target)],
    ) -> Result<(), DeployError> {
        let (hosts, shown, flat) = wave_parts(targets);
        let fail = |error: String| async move {
            let failures = self.lb_failures(slots, &hosts_of(targets), &error);
            self.fail_after_switch(slots, release, Stage::LoadBalancer, failures)
                .await
        };
        if let Err(e) = d.client.register_targets(&d.arn, &flat).await {
            return Err(fail(format!("could not register again: {e}")).await);
        }
        self.emit(Event::Registered {
            hosts: hosts.clone(),
            targets: shown,
        });
        let waited = balancer::wait_healthy(
            d.client.as_ref(),
            &d.arn,
            &flat,
            d.healthy_timeout,
            &self.cancel,
        )
        .await;
        if self.cancelled() {
            return Err(self
                .interrupted_after_switch(slots, release, Stage::LoadBalancer)
                .await);
        }
        match waited {
            Ok(w) if w.done => {
                self.emit(Event::InService {
                    hosts,
                    seconds: w.seconds,
                });
                Ok(())
            }
            Ok(w) => Err(fail(format!(
                "not healthy in target group {} after {:.0}s",
                d.arn, w.seconds
            ))
            .await),
            Err(e) => Err(fail(format!("could not read target health: {e}")).await),
        }
    }

    /// After a failure: registers again every target still out of the
    /// group (best effort: a failure is a warning).
    async fn register_again(&self, d: &Drain, out: &[(String, Target)]) {
        if out.is_empty() {
            return;
        }
        let (hosts, shown, flat) = wave_parts(out);
        match d.client.register_targets(&d.arn, &flat).await {
            Ok(()) => self.emit(Event::Registered {
                hosts,
                targets: shown,
            }),
            Err(e) => self.emit(Event::Warning {
                host: None,
                message: format!(
                    "could not register {} in target group {} again: {e}",
                    shown.join(", "),
                    d.arn
                ),
            }),
        }
    }

    /// One failure per host of a wave, at the load balancer stage.
    fn lb_failures(&self, slots: &[Slot<'_>], hosts: &[String], error: &str) -> Vec<HostFailure> {
        slots
            .iter()
            .filter(|s| hosts.iter().any(|h| h == s.host.name()))
            .map(|s| self.host_failed(s.host, Stage::LoadBalancer, error.to_owned()))
            .collect()
    }

    /// The environment's load balancer, read before anything changes:
    /// which targets each host is, how long waves wait.
    async fn drain_setup(&self) -> Result<Option<Drain>, DeployError> {
        let Some(lb) = &self.config.load_balancer else {
            return Ok(None);
        };
        let client = self
            .target_groups
            .clone()
            .ok_or_else(|| BalancerError::NoClient {
                arn: lb.target_group_arn.clone(),
            })?;
        let members =
            balancer::members(lb, client.as_ref(), self.ec2.as_deref(), &self.hosts).await?;
        let mut drain_wait = members.group.deregistration_delay;
        if let Some(limit) = self.drain_timeout.or(lb.drain_timeout.map(|d| d.0)) {
            drain_wait = drain_wait.min(limit);
        }
        Ok(Some(Drain {
            client,
            arn: lb.target_group_arn.clone(),
            members,
            drain_wait,
            healthy_timeout: lb.healthy_timeout.0,
        }))
    }

    /// Restart and after-switch hooks, then the health check, on one host.
    async fn after_switch(&self, slot: &Slot<'_>, release: &Release) -> Result<(), HostFailure> {
        let host = slot.host;
        let ctx = self.context(slot, release, "deploy");
        let interrupted = || self.host_failed(host, Stage::AfterSwitch, "interrupted".into());
        for phase in [Phase::Restart, Phase::AfterSwitch] {
            if !slot.plan.runs(phase) {
                continue;
            }
            let list = self.config.hooks.of(phase);
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
                None => switch::unset(s.host, s.plan.prepare.release(), timeout).await,
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
                    ctx.previous = Some(s.plan.prepare.release().to_owned());
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

/// The run-once hooks of `hooks` whose host (`once`, per hook) is host `i`.
fn once_on<'h>(hooks: &'h [Hook], once: &[usize], i: usize) -> Vec<&'h Hook> {
    hooks
        .iter()
        .zip(once)
        .filter(|&(_, &at)| at == i)
        .map(|(h, _)| h)
        .collect()
}

/// One host's plan: where the release goes (`layout`, from its `state`),
/// what its mirror does, which hooks run there (build hooks only for a
/// build, the `run_once` hooks given, and of the others those for the
/// host's roles), and what a success removes. Pure: `deploy_plan` and
/// `deploy` both call it, so a deploy does exactly what its plan says for
/// the state it found under the lock.
fn host_plan(
    config: &Environment,
    layout: &dyn ReleaseLayout,
    host: &Host,
    state: &HostState,
    placement: Placement,
    commit: &str,
    run_once: &[&Hook],
) -> HostPlan {
    let name = placement.release().to_owned();
    let builds = matches!(placement, Placement::Build { .. });
    let prepare = match placement {
        Placement::Reuse { release } => PrepareAction::Reuse { release },
        Placement::Build { release, in_place } => PrepareAction::Build {
            release,
            mirror: if !state.mirror_exists {
                Mirror::Clone
            } else if state.mirror_has_commit {
                Mirror::None
            } else {
                Mirror::Fetch
            },
            in_place,
        },
    };
    let hooks = [
        Phase::Build,
        Phase::BeforeSwitch,
        Phase::Restart,
        Phase::AfterSwitch,
    ]
    .into_iter()
    .filter(|&phase| phase != Phase::Build || builds)
    .filter_map(|phase| {
        let list = match phase {
            Phase::BeforeSwitch => run_once.to_vec(),
            _ => hooks::for_host(host, config.hooks.of(phase)),
        };
        (!list.is_empty()).then(|| PhaseHooks {
            phase,
            commands: list.iter().map(|h| h.run.clone()).collect(),
        })
    })
    .collect();
    HostPlan {
        host: host.name().to_owned(),
        root: host.root().to_owned(),
        roles: host.roles().to_vec(),
        current: state.current.clone(),
        current_link: state
            .current_link
            .clone()
            .filter(|_| state.current_release().is_none_or(|r| !r.is_complete())),
        current_commit: state
            .current_release()
            .and_then(|r| r.commit())
            .map(str::to_owned),
        prepare,
        hooks,
        switch: format!("current -> releases/{name}"),
        cleanup: cleanup_after(layout, state, &name, commit),
        clock_skew_ms: state.clock_skew_ms,
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
