//! Rollback: back to the previous good release, or a named one.
//!
//! The target comes from the release log and `readlink current`, never from
//! directory times or "the other slot": the newest successful deploy or
//! rollback that is not live, not marked bad, and whose directory still
//! holds that commit, complete. The release being left is marked bad, so
//! the next rollback does not come back to it. Every host switches at
//! once; restart and after-rollback hooks run after.

use std::time::Instant;

use futures::future::join_all;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::environment::Phase;
use crate::error::{DeployError, HostFailure, Stage};
use crate::flow::Deployer;
use crate::hooks::{self, HookContext};
use crate::layout::HostState;
use crate::lock;
use crate::log::{self, LogAction, LogEntry, LogResult};
use crate::notify::NotificationKind;
use crate::release::Release;
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

fn step(
    host: &str,
    state: &HostState,
    log: &[LogEntry],
    to: Option<&str>,
) -> Result<RollbackStep, DeployError> {
    let from = state
        .current
        .clone()
        .ok_or_else(|| DeployError::NotDeployed {
            host: host.to_owned(),
        })?;
    let from_commit = state
        .current_release()
        .and_then(|r| r.commit())
        .map(str::to_owned);
    let (to, commit, tag) = match to {
        Some(name) => {
            let dir = state
                .release(name)
                .filter(|r| r.is_complete() && r.name != from)
                .ok_or_else(|| DeployError::UnknownRelease {
                    host: host.to_owned(),
                    release: name.to_owned(),
                })?;
            let marker = dir
                .marker
                .clone()
                .unwrap_or_else(|| unreachable!("complete"));
            (dir.name.clone(), marker.commit, marker.tag)
        }
        None => {
            let e =
                log::rollback_target(log, state).ok_or_else(|| DeployError::NothingToRollBack {
                    host: host.to_owned(),
                })?;
            (e.release.clone(), e.commit.clone(), e.tag.clone())
        }
    };
    Ok(RollbackStep {
        host: host.to_owned(),
        from,
        from_commit,
        to,
        commit,
        tag,
    })
}

impl Deployer {
    /// What a rollback would do, host by host (reads only).
    pub async fn rollback_plan(&self, to: Option<&str>) -> Result<Vec<RollbackStep>, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let states = self.inspect(None).await?;
        let logs = self.read_logs().await?;
        self.hosts
            .iter()
            .zip(states.iter().zip(&logs))
            .map(|(h, (s, l))| step(h.name(), s, l, to))
            .collect()
    }

    pub(crate) async fn read_logs(&self) -> Result<Vec<Vec<LogEntry>>, DeployError> {
        let results = self.each(self.hosts.len(), |_, h| log::read(h)).await;
        let mut logs = Vec::new();
        let mut failures = Vec::new();
        for (h, r) in self.hosts.iter().zip(results) {
            match r {
                Ok(l) => logs.push(l),
                Err(e) => failures.push(HostFailure {
                    host: h.name().to_owned(),
                    stage: Stage::Inspect,
                    error: e.to_string(),
                }),
            }
        }
        if failures.is_empty() {
            Ok(logs)
        } else {
            Err(DeployError::Failed {
                stage: Stage::Inspect,
                failures,
                rolled_back: Vec::new(),
                inconsistent: Vec::new(),
            })
        }
    }

    /// Rolls every host back to its previous good release (or `to`).
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
            && let Some(first) = report.hosts.first()
        {
            let release = Release {
                commit: first.commit.clone(),
                describe: first
                    .tag
                    .clone()
                    .unwrap_or_else(|| first.commit[..12.min(first.commit.len())].to_owned()),
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
        let steps: Vec<RollbackStep> = self
            .hosts
            .iter()
            .zip(&states)
            .map(|(h, s)| step(h.name(), s, &s.log, to))
            .collect::<Result<_, _>>()?;

        let results = self
            .switch_all(
                self.hosts
                    .iter()
                    .zip(&steps)
                    .map(|(h, st)| (h, st.to.as_str(), Some(st.from.clone()))),
                token,
                latency,
            )
            .await;
        let mut failures = Vec::new();
        let mut times = Vec::new();
        for (h, r) in self.hosts.iter().zip(results) {
            match r {
                Ok(t) => times.extend(t),
                Err(e) => failures.push(self.host_failed(h, Stage::Switch, e.to_string())),
            }
        }
        if !failures.is_empty() {
            // Put every host back where it was, so the fleet stays on one release.
            let back = join_all(self.hosts.iter().zip(&steps).map(|(h, st)| async move {
                (
                    h,
                    switch::switch(h, &st.from, &format!("back{token}"), None).await,
                )
            }))
            .await;
            let mut rolled_back = Vec::new();
            let mut inconsistent = Vec::new();
            for (h, r) in back {
                match r {
                    Ok(_) => rolled_back.push(h.name().to_owned()),
                    Err(e) => inconsistent.push(HostFailure {
                        host: h.name().to_owned(),
                        stage: Stage::Switch,
                        error: e.to_string(),
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
        let spread = crate::flow::spread_ms(&times);

        // Per host: restart and after-rollback hooks (under the lock), then
        // one command that records the rollback and releases the lock.
        let hook_failures = join_all(self.hosts.iter().zip(&steps).map(|(h, st)| async move {
            let ctx = HookContext {
                environment: self.environment.clone(),
                release: st.to.clone(),
                commit: st.commit.clone(),
                tag: st.tag.clone(),
                previous: Some(st.from.clone()),
                action: "rollback".into(),
                extra: Vec::new(),
            };
            let mut failure = None;
            for phase in [Phase::Restart, Phase::AfterRollback] {
                let list = self.config.hooks.of(phase);
                if list.is_empty() {
                    continue;
                }
                let t = Instant::now();
                if let Err(e) = hooks::run_phase(h, phase, list, &ctx).await {
                    failure = Some(self.host_failed(h, Stage::AfterSwitch, e.to_string()));
                    break;
                }
                self.emit(crate::event::Event::HooksRan {
                    host: h.name().to_owned(),
                    phase,
                    count: list.len(),
                    seconds: t.elapsed().as_secs_f64(),
                });
            }
            let mut lines = Vec::new();
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
            let script = format!(
                "{}\n{}",
                log::append_fragment(h),
                lock::release_fragment(h, token)
            );
            if let Err(e) = h
                .run_checked(&ec2kit::Command::shell(script).stdin(lines))
                .await
            {
                self.warn(h, format!("could not record the rollback or unlock: {e}"));
                if let Err(e) = lock::release(h, token).await {
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

    pub(crate) fn log_entry(
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
