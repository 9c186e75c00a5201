//! Restart and maintenance mode: hooks run in the live release of every
//! host, under the deploy lock so they cannot interleave with a deploy.

use super::Deployer;
use crate::audit::{AuditAction, AuditEntry};
use crate::environment::Phase;
use crate::error::{DeployError, HostFailure, Stage};
use crate::hooks::{self, HookContext};
use crate::shell::{GUARDS, describe, q};
use crate::state::HostState;

impl Deployer {
    /// Runs the restart hooks in the live release of every host (under the
    /// lock, so it cannot interleave with a deploy).
    pub async fn restart(&self) -> Result<(), DeployError> {
        self.locked_phase(
            "restart",
            Phase::Restart,
            Vec::new(),
            None,
            self.audit_entry(AuditAction::Restart, "restart hooks"),
        )
        .await
    }

    /// Turns maintenance mode on or off: the flag file in `shared/` (for the
    /// web server to test, e.g. to serve a 503 page), then the maintenance
    /// hooks with `MAINTENANCE=on|off`. Tracked files are never edited.
    ///
    /// The flag is made by renaming a new file over its name, so a link
    /// planted there (`shared/maintenance -> /etc/nologin`) is replaced,
    /// never followed; such a link is refused anyway.
    pub async fn maintenance(&self, on: bool) -> Result<(), DeployError> {
        let flag = format!("shared/{}", self.config.maintenance_file);
        let script = if on {
            format!(
                "{GUARDS}ek_file {f}\n\
                 d=$(dirname {f}) && mkdir -p \"$d\" && t=$(mktemp \"$d/.maintenance.XXXXXX\") && mv -fT \"$t\" {f}",
                f = q(&flag)
            )
        } else {
            format!("{GUARDS}ek_file {f}\nrm -f {f}", f = q(&flag))
        };
        self.locked_phase(
            "maintenance",
            Phase::Maintenance,
            vec![("MAINTENANCE".into(), if on { "on" } else { "off" }.into())],
            Some(script),
            if on {
                self.audit_entry(AuditAction::MaintenanceOn, "maintenance on")
            } else {
                self.audit_entry(AuditAction::MaintenanceOff, "maintenance off")
            },
        )
        .await
    }

    async fn locked_phase(
        &self,
        action: &str,
        phase: Phase,
        extra: Vec<(String, String)>,
        script: Option<String>,
        audit: AuditEntry,
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
                        if self.cancelled() {
                            return Err(self.host_failed(
                                h,
                                Stage::AfterSwitch,
                                "interrupted".into(),
                            ));
                        }
                        if let Some(s) = script {
                            let command = ec2kit::Command::shell(s)
                                .cwd(h.root().to_owned())
                                .timeout(self.timeouts().switch.get());
                            h.run_checked(&command).await.map_err(|e| {
                                self.host_failed(h, Stage::AfterSwitch, describe(&e))
                            })?;
                        }
                        let list = self.config.hooks.of(phase);
                        // None for this host's roles: nothing to run.
                        if hooks::for_host(h, list).is_empty() {
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
                            path: None,
                        };
                        hooks::run_phase(h, phase, list, &ctx)
                            .await
                            .map_err(|e| self.host_failed(h, Stage::AfterSwitch, e.to_string()))
                    }
                })
                .await;
            // Every host's outcome goes to its audit file (still under the
            // lock: the entries are in the order the actions happened).
            let outcomes: Vec<_> = self
                .hosts
                .iter()
                .zip(&results)
                .map(|(h, r)| (h, r.clone().map_err(|f| f.error)))
                .collect();
            self.record(&audit, &outcomes).await;
            let failures: Vec<HostFailure> = results.into_iter().filter_map(Result::err).collect();
            if self.cancelled() {
                Err(self.interrupted(Stage::AfterSwitch))
            } else if failures.is_empty() {
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
}
