//! The plan of a deploy: per host, what will be fetched, built and
//! switched. `--dry-run` prints it; computing it reads the hosts and
//! changes nothing.

use serde::{Deserialize, Serialize};

use crate::release::Release;

/// What happens to one host's release before the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PrepareAction {
    /// A complete build of the commit is there; switch to it.
    Reuse {
        /// The release directory.
        release: String,
    },
    /// Build the release.
    Build {
        /// The release directory.
        release: String,
        /// What the mirror does: `clone` (first deploy), `fetch` (commit
        /// missing) or `none` (it has the commit).
        mirror: String,
        /// Update the slot's checkout in place (a/b) or clone fresh.
        in_place: bool,
    },
}

/// One host's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// The host.
    pub host: String,
    /// The deploy root.
    pub root: String,
    /// The release live now.
    pub current: Option<String>,
    /// `current`'s raw target when it is not one of ektool's releases (a
    /// host laid out by another tool): what a failed deploy puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_link: Option<String>,
    /// Its commit.
    pub current_commit: Option<String>,
    /// The preparation.
    pub prepare: PrepareAction,
    /// Hooks per phase, in order.
    pub hooks: Vec<(String, Vec<String>)>,
    /// The switch: `current -> releases/<name>`.
    pub switch: String,
    /// Releases removed after a successful deploy.
    pub cleanup: Vec<String>,
    /// How far the host's clock is ahead of this machine's, in
    /// milliseconds (negative: behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// The environment.
    pub environment: String,
    /// The release.
    pub release: Release,
    /// The layout.
    pub layout: String,
    /// Where hosts fetch from (credentials are never shown; such URLs are
    /// refused anyway).
    pub repository: String,
    /// The host that runs the run-once hooks.
    pub run_once_host: Option<String>,
    /// Per host.
    pub hosts: Vec<HostPlan>,
}
