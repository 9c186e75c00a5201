//! The releases table: every host's release log, with current, bad and
//! available marks (reads only).

use serde::{Deserialize, Serialize};

use super::Deployer;
use crate::error::DeployError;
use crate::state::HistoryRow;

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
                history: s.history(l),
                unfinished: s
                    .releases
                    .iter()
                    .filter(|r| !r.is_complete())
                    .map(|r| r.name.clone())
                    .collect(),
            })
            .collect())
    }
}
