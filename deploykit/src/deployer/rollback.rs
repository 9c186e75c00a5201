//! Rollback: back to the previous good release, or a named one.
//!
//! The target comes from the release log and `readlink current`, never from
//! directory times or "the other slot": the newest successful deploy or
//! rollback that is not live, not marked bad, and whose directory still
//! holds that commit, complete. The environment has **one** target: the
//! one of the host whose live release went live last (after a `--host`
//! canary deploy, the canary's previous release), so hosts already on it
//! are left alone, and no host is sent further back. The release a host
//! leaves is marked bad, so the next rollback does not come back to it.
//! Every host switches at once; restart and after-rollback hooks run after.

use std::time::Instant;

use futures::future::join_all;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Deployer, spread_ms};
use crate::environment::Phase;
use crate::error::{DeployError, HostFailure, Stage};
use crate::hooks::{self, HookContext};
use crate::host::Host;
use crate::lock;
use crate::log::{self, LogAction, LogEntry, LogResult};
use crate::notify::NotificationKind;
use crate::release::Release;
use crate::shell::{GUARDS, describe, short};
use crate::state::HostState;
use crate::switch;

/// One host's rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStep {
    /// The host.
    pub host: String,
    /// The release being left.
    pub from: String,
    /// Its commit.
    pub from_commit: Option<String>,
    /// The release going live.
    pub to: String,
    /// Its commit.
    pub commit: String,
    /// Its tag.
    pub tag: Option<String>,
    /// The host is already on the target: it is left alone.
    #[serde(default)]
    pub unchanged: bool,
}

/// The result of a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackReport {
    /// The environment.
    pub environment: String,
    /// Per host.
    pub hosts: Vec<RollbackStep>,
    /// Restart or after-rollback hooks that failed (the switch stands).
    pub hook_failures: Vec<HostFailure>,
    /// Milliseconds between the first and last switch.
    pub switch_spread_ms: f64,
    /// Total seconds.
    pub seconds: f64,
}

/// When a host's live release went live: the newest successful deploy or
/// rollback to it in the host's log.
fn live_since(state: &HostState, log: &[LogEntry]) -> Option<Timestamp> {
    let live = state.current_release()?;
    let commit = live.commit()?;
    log.iter()
        .rev()
        .find(|e| {
            matches!(e.action, LogAction::Deploy | LogAction::Rollback)
                && e.result == Some(LogResult::Success)
                && e.release == live.name
                && e.commit == commit
        })
        .map(|e| e.at)
}

/// The rollback of every host to one target: `to` (a release name) or the
/// previous good release of the host whose live release is the newest.
/// Hosts already on the target stay; a host that cannot reach it stops
/// the whole rollback before anything changes.
pub(crate) fn fleet_steps(
    hosts: &[Host],
    states: &[HostState],
    logs: &[&[LogEntry]],
    to: Option<&str>,
) -> Result<Vec<RollbackStep>, DeployError> {
    let mut froms = Vec::new();
    for (h, s) in hosts.iter().zip(states) {
        let from = s.current.clone().ok_or_else(|| DeployError::NotDeployed {
            host: h.name().to_owned(),
        })?;
        let from_commit = s
            .current_release()
            .and_then(|r| r.commit())
            .map(str::to_owned);
        froms.push((from, from_commit));
    }
    let step =
        |i: usize, to: String, commit: String, tag: Option<String>, unchanged: bool| RollbackStep {
            host: hosts[i].name().to_owned(),
            from: froms[i].0.clone(),
            from_commit: froms[i].1.clone(),
            to,
            commit,
            tag,
            unchanged,
        };
    if let Some(name) = to {
        return hosts
            .iter()
            .zip(states)
            .enumerate()
            .map(|(i, (h, s))| {
                let marker = s
                    .release(name)
                    .and_then(|r| r.marker.clone())
                    .ok_or_else(|| DeployError::UnknownRelease {
                        host: h.name().to_owned(),
                        release: name.to_owned(),
                    })?;
                let unchanged = froms[i].0 == name;
                Ok(step(
                    i,
                    name.to_owned(),
                    marker.commit,
                    marker.tag,
                    unchanged,
                ))
            })
            .collect();
    }
    // The host whose live release is the newest decides (the first in lock
    // order on a tie, or when no log says).
    let newest = (0..hosts.len())
        .rev()
        .max_by_key(|&i| live_since(&states[i], logs[i]))
        .unwrap_or(0);
    let target = states[newest]
        .rollback_target(logs[newest])
        .ok_or_else(|| DeployError::NothingToRollBack {
            host: hosts[newest].name().to_owned(),
        })?;
    hosts
        .iter()
        .zip(states)
        .enumerate()
        .map(|(i, (h, s))| {
            if froms[i].1.as_deref() == Some(target.commit.as_str()) {
                let tag = s
                    .current_release()
                    .and_then(|r| r.marker.as_ref()?.tag.clone());
                return Ok(step(
                    i,
                    froms[i].0.clone(),
                    target.commit.clone(),
                    tag,
                    true,
                ));
            }
            // The same directory as the deciding host's when it holds the
            // commit here, else this host's newest complete one with it.
            let holds = |name: &str| {
                s.release(name).and_then(|r| r.commit()) == Some(target.commit.as_str())
                    && name != froms[i].0
            };
            let name = if holds(&target.release) {
                Some(target.release.clone())
            } else {
                s.releases
                    .iter()
                    .rev()
                    .find(|r| holds(&r.name))
                    .map(|r| r.name.clone())
            };
            let name = name.ok_or_else(|| DeployError::RollbackTargetMissing {
                host: h.name().to_owned(),
                commit: short(&target.commit).to_owned(),
            })?;
            let tag = s
                .release(&name)
                .and_then(|r| r.marker.as_ref()?.tag.clone());
            Ok(step(i, name, target.commit.clone(), tag, false))
        })
        .collect()
}

impl Deployer {
    /// What a rollback would do, host by host (reads only).
    pub async fn rollback_plan(&self, to: Option<&str>) -> Result<Vec<RollbackStep>, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let states = self.inspect(None).await?;
        let logs = self.read_logs().await?;
        let logs: Vec<&[LogEntry]> = logs.iter().map(Vec::as_slice).collect();
        fleet_steps(&self.hosts, &states, &logs, to)
    }

    /// Rolls the environment back to one release: the previous good
    /// release of the host that deployed last, or `to`. Hosts already on
    /// it are left alone (they are unlocked, nothing else).
    ///
    /// Interrupted ([`Deployer::cancel_on`]) before the switch, nothing
    /// changes; after it, the rollback completes its bookkeeping (undoing
    /// it would put the bad release back).
    pub async fn rollback(&self, to: Option<&str>) -> Result<RollbackReport, DeployError> {
        let started = Instant::now();
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let action = match to {
            Some(t) => format!("rollback to {t}"),
            None => "rollback".to_owned(),
        };
        let (states, latency) = self.lock_all(action, &token, None, true).await?;
        let result = self
            .rollback_locked(to, &token, started, states, latency)
            .await;
        // On success each host's last command released its lock.
        if result.is_err() {
            self.unlock_all(&token).await;
        }
        if let Ok(report) = &result
            && let Some(first) = report.hosts.iter().find(|s| !s.unchanged)
        {
            let release = Release {
                commit: first.commit.clone(),
                describe: first
                    .tag
                    .clone()
                    .unwrap_or_else(|| short(&first.commit).to_owned()),
                tag: first.tag.clone(),
                reference: first.to.clone(),
            };
            self.notify(
                NotificationKind::RolledBack,
                &release,
                first.from_commit.clone(),
                None,
            )
            .await;
        }
        result
    }

    async fn rollback_locked(
        &self,
        to: Option<&str>,
        token: &str,
        started: Instant,
        states: Vec<HostState>,
        latency: std::time::Duration,
    ) -> Result<RollbackReport, DeployError> {
        let logs: Vec<&[LogEntry]> = states.iter().map(|s| s.log.as_slice()).collect();
        let steps = fleet_steps(&self.hosts, &states, &logs, to)?;
        if self.cancelled() {
            return Err(self.interrupted(Stage::Inspect));
        }
        let moving: Vec<usize> = (0..steps.len()).filter(|&i| !steps[i].unchanged).collect();

        let results = self
            .switch_all(
                moving.iter().map(|&i| {
                    (
                        &self.hosts[i],
                        steps[i].to.as_str(),
                        Some(steps[i].from.clone()),
                    )
                }),
                token,
                latency,
            )
            .await;
        let mut failures = Vec::new();
        let mut times = Vec::new();
        for (&i, r) in moving.iter().zip(results) {
            match r {
                Ok(t) => times.extend(t),
                Err(e) => {
                    failures.push(self.host_failed(&self.hosts[i], Stage::Switch, describe(&e)));
                }
            }
        }
        if !failures.is_empty() {
            // Put every host back where it was, so the fleet stays on one release.
            let timeout = self.timeouts().switch.get();
            let back = join_all(moving.iter().map(|&i| {
                let h = &self.hosts[i];
                let link = states[i].current_link.clone().unwrap_or_default();
                async move {
                    (
                        h,
                        switch::restore(h, &link, &format!("back{token}"), timeout).await,
                    )
                }
            }))
            .await;
            let mut rolled_back = Vec::new();
            let mut inconsistent = Vec::new();
            for (h, r) in back {
                match r {
                    Ok(()) => rolled_back.push(h.name().to_owned()),
                    Err(e) => inconsistent.push(HostFailure {
                        host: h.name().to_owned(),
                        stage: Stage::Switch,
                        error: describe(&e),
                    }),
                }
            }
            return Err(DeployError::Failed {
                stage: Stage::Switch,
                failures,
                rolled_back,
                inconsistent,
            });
        }
        let spread = spread_ms(&times);

        // Per host: restart and after-rollback hooks (under the lock), then
        // the bookkeeping that records the rollback and releases the lock,
        // in the last hook's command when there are hooks (one round trip),
        // else on its own.
        let hook_failures = join_all(self.hosts.iter().zip(&steps).map(|(h, st)| async move {
            let mut failure = None;
            let mut lines = Vec::new();
            let mut finished = false;
            if !st.unchanged {
                if let Some(c) = &st.from_commit {
                    lines.extend(log::line(&self.log_entry(
                        LogAction::Bad,
                        &st.from,
                        c,
                        None,
                        None,
                        None,
                    )));
                }
                lines.extend(log::line(&self.log_entry(
                    LogAction::Rollback,
                    &st.to,
                    &st.commit,
                    st.tag.clone(),
                    Some(st.from.clone()),
                    Some(LogResult::Success),
                )));
            }
            // The log entries (when the host moved), then the unlock.
            let mut finish = GUARDS.to_owned();
            if !lines.is_empty() {
                finish.push_str(&format!(
                    "printf '%s' {} | {}",
                    crate::shell::q(&String::from_utf8_lossy(&lines)),
                    log::append_fragment(h)
                ));
            }
            finish.push_str(&lock::release_fragment(h, token));
            if !st.unchanged {
                let ctx = HookContext {
                    environment: self.environment.clone(),
                    release: st.to.clone(),
                    commit: st.commit.clone(),
                    tag: st.tag.clone(),
                    previous: Some(st.from.clone()),
                    action: "rollback".into(),
                    extra: Vec::new(),
                    path: None,
                };
                // The phases with hooks for this host's roles.
                let phases: Vec<_> = [Phase::Restart, Phase::AfterRollback]
                    .into_iter()
                    .map(|p| (p, self.config.hooks.of(p)))
                    .filter(|(_, list)| !hooks::for_host(h, list).is_empty())
                    .collect();
                for (k, (phase, list)) in phases.iter().enumerate() {
                    let t = Instant::now();
                    let ran = if k + 1 == phases.len() {
                        hooks::run_phase_and_finish(h, *phase, list, &ctx, &finish).await
                    } else {
                        hooks::run_phase(h, *phase, list, &ctx)
                            .await
                            .map(|()| false)
                    };
                    match ran {
                        Ok(done) => finished = done,
                        Err(e) => {
                            failure = Some(self.host_failed(h, Stage::AfterSwitch, e.to_string()));
                            break;
                        }
                    }
                    self.emit(crate::event::Event::HooksRan {
                        host: h.name().to_owned(),
                        phase: *phase,
                        count: hooks::for_host(h, list).len(),
                        seconds: t.elapsed().as_secs_f64(),
                    });
                }
            }
            if finished {
                return failure;
            }
            let command = ec2kit::Command::shell(finish).timeout(self.timeouts().lock.get());
            if let Err(e) = h.run_checked(&command).await {
                self.warn(h, format!("could not record the rollback or unlock: {e}"));
                if let Err(e) = lock::release(h, token, self.timeouts().lock.get()).await {
                    self.warn(h, format!("could not release the lock: {e}"));
                }
            }
            failure
        }))
        .await
        .into_iter()
        .flatten()
        .collect();

        Ok(RollbackReport {
            environment: self.environment.clone(),
            hosts: steps,
            hook_failures,
            switch_spread_ms: spread.max(0.0),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
