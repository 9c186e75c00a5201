//! The smaller operations: the releases table, restart, maintenance mode,
//! and unlocking.

use serde::{Deserialize, Serialize};

use crate::environment::Phase;
use crate::error::{DeployError, HostFailure, Stage};
use crate::flow::Deployer;
use crate::hooks::{self, HookContext};
use crate::layout::HostState;
use crate::lock::{self, HeldLock};
use crate::log::{self, HistoryRow};
use crate::shell::q;

/// One host's releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReleases {
    /// The host.
    pub host: String,
    /// The release `current` points at.
    pub current: Option<String>,
    /// Whether maintenance mode is on.
    pub maintenance: bool,
    /// The log, newest first, with marks.
    pub history: Vec<HistoryRow>,
    /// Release directories without a completion marker.
    pub unfinished: Vec<String>,
}

/// What `unlock` did on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockOutcome {
    /// The host.
    pub host: String,
    /// The lock found, if any.
    pub lock: Option<HeldLock>,
    /// Whether it was removed.
    pub removed: bool,
}

impl Deployer {
    /// The release history of every host (reads only).
    pub async fn releases(&self) -> Result<Vec<HostReleases>, DeployError> {
        let states = self.inspect(None).await?;
        let logs = self.read_logs().await?;
        Ok(self
            .hosts
            .iter()
            .zip(states.iter().zip(&logs))
            .map(|(h, (s, l))| HostReleases {
                host: h.name().to_owned(),
                current: s.current.clone(),
                maintenance: s.maintenance,
                history: log::history(l, s),
                unfinished: s
                    .releases
                    .iter()
                    .filter(|r| !r.is_complete())
                    .map(|r| r.name.clone())
                    .collect(),
            })
            .collect())
    }

    /// Runs the restart hooks in the live release of every host (under the
    /// lock, so it cannot interleave with a deploy).
    pub async fn restart(&self) -> Result<(), DeployError> {
        self.locked_phase("restart", Phase::Restart, Vec::new(), None)
            .await
    }

    /// Turns maintenance mode on or off: the flag file in `shared/` (for the
    /// web server to test, e.g. to serve a 503 page), then the maintenance
    /// hooks with `MAINTENANCE=on|off`. Tracked files are never edited.
    pub async fn maintenance(&self, on: bool) -> Result<(), DeployError> {
        let flag = format!("shared/{}", self.config.maintenance_file);
        let script = if on {
            format!("mkdir -p \"$(dirname {f})\" && touch {f}", f = q(&flag))
        } else {
            format!("rm -f {}", q(&flag))
        };
        self.locked_phase(
            "maintenance",
            Phase::Maintenance,
            vec![("MAINTENANCE".into(), if on { "on" } else { "off" }.into())],
            Some(script),
        )
        .await
    }

    async fn locked_phase(
        &self,
        action: &str,
        phase: Phase,
        extra: Vec<(String, String)>,
        script: Option<String>,
    ) -> Result<(), DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (states, _) = self
            .lock_all(action.to_owned(), &token, None, false)
            .await?;
        let result = async {
            let results = self
                .each(self.config.parallel.max(1), |i, h| {
                    let state: &HostState = &states[i];
                    let extra = extra.clone();
                    let script = script.clone();
                    async move {
                        if let Some(s) = script {
                            h.run_checked(&ec2kit::Command::shell(s).cwd(h.root().to_owned()))
                                .await
                                .map_err(|e| {
                                    self.host_failed(h, Stage::AfterSwitch, e.to_string())
                                })?;
                        }
                        let list = self.config.hooks.of(phase);
                        if list.is_empty() {
                            return Ok(());
                        }
                        let current = state.current_release().ok_or_else(|| {
                            self.host_failed(
                                h,
                                Stage::AfterSwitch,
                                "nothing is deployed yet".into(),
                            )
                        })?;
                        let marker = current.marker.clone();
                        let ctx = HookContext {
                            environment: self.environment.clone(),
                            release: current.name.clone(),
                            commit: marker
                                .as_ref()
                                .map(|m| m.commit.clone())
                                .unwrap_or_default(),
                            tag: marker.and_then(|m| m.tag),
                            previous: None,
                            action: action.to_owned(),
                            extra,
                        };
                        hooks::run_phase(h, phase, list, &ctx)
                            .await
                            .map_err(|e| self.host_failed(h, Stage::AfterSwitch, e.to_string()))
                    }
                })
                .await;
            let failures: Vec<HostFailure> = results.into_iter().filter_map(Result::err).collect();
            if failures.is_empty() {
                Ok(())
            } else {
                Err(DeployError::Failed {
                    stage: Stage::AfterSwitch,
                    failures,
                    rolled_back: Vec::new(),
                    inconsistent: Vec::new(),
                })
            }
        }
        .await;
        self.unlock_all(&token).await;
        result
    }

    /// Removes locks: stale ones always, live ones only with `force`. A
    /// live lock without `force` is an error naming its owner (nothing is
    /// removed anywhere then).
    pub async fn unlock(&self, force: bool) -> Result<Vec<UnlockOutcome>, DeployError> {
        let stale_after = self.config.lock_stale_after();
        let found = self
            .each(self.hosts.len(), |_, h| lock::status(h, stale_after))
            .await;
        let mut locks = Vec::new();
        for r in found {
            locks.push(r?);
        }
        if !force && let Some(live) = locks.iter().flatten().find(|l| l.stale.is_none()) {
            return Err(DeployError::LockNotStale {
                lock: Box::new(live.clone()),
            });
        }
        let mut out = Vec::new();
        for (h, l) in self.hosts.iter().zip(locks) {
            let removed = if l.is_some() {
                lock::remove(h).await?;
                true
            } else {
                false
            };
            out.push(UnlockOutcome {
                host: h.name().to_owned(),
                lock: l,
                removed,
            });
        }
        Ok(out)
    }
}
