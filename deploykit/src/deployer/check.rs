//! Pre-flight checks of every host (see [`crate::check`]).

use super::Deployer;
use crate::check::{self, CheckReport, Outcome};
use crate::environment::ByteSize;
use crate::error::DeployError;
use crate::event::Event;

impl Deployer {
    /// Checks every host at once, one command each, within the
    /// environment's state deadline (see [`crate::check`] for what is
    /// checked). `min_free` overrides the environment's `min_free`.
    /// Changes nothing on the hosts (a probe directory is made and removed
    /// in the deploy root); failed checks are rows of the report, not
    /// errors. Fails only without hosts.
    pub async fn check(&self, min_free: Option<ByteSize>) -> Result<CheckReport, DeployError> {
        if self.hosts.is_empty() {
            return Err(DeployError::NoHosts);
        }
        let spec = check::Spec {
            config: &self.config,
            repository: self.repository.as_deref(),
            min_free: min_free
                .or(self.config.min_free)
                .unwrap_or(ByteSize::DEFAULT_MIN_FREE),
            stale_after: self.config.lock_stale_after(),
            timeout: self.timeouts().state.get(),
        };
        let git_env = crate::release::git_env(&self.config);
        let spec = &spec;
        let git_env = &git_env;
        let per_host = self
            .each(self.hosts.len(), |_, h| async move {
                let rows = check::host(h, spec, git_env).await;
                self.emit(Event::HostChecked {
                    host: h.name().to_owned(),
                    failed: rows.iter().filter(|r| r.result == Outcome::Failed).count(),
                });
                rows
            })
            .await;
        Ok(CheckReport {
            environment: self.environment.clone(),
            rows: per_host.into_iter().flatten().collect(),
        })
    }
}
