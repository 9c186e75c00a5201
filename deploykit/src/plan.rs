//! The plan of a deploy: per host, what will be fetched, built and
//! switched. `Deployer::deploy_plan` computes it from the hosts' state without
//! the lock, changing nothing (`--dry-run` prints it); `Deployer::deploy`
//! computes it the same way under the lock and carries it out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::environment::Phase;
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
        /// What the host's mirror of the repository does first.
        mirror: Mirror,
        /// Update the slot's checkout in place (a/b) or clone fresh.
        in_place: bool,
    },
}

impl PrepareAction {
    /// The release directory `current` will point at.
    pub fn release(&self) -> &str {
        match self {
            Self::Reuse { release } | Self::Build { release, .. } => release,
        }
    }
}

/// What a host's mirror (`repo.git`) does before a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mirror {
    /// There is none yet: clone it (the first deploy).
    Clone,
    /// It lacks the commit: fetch.
    Fetch,
    /// It has the commit: nothing.
    None,
}

impl std::fmt::Display for Mirror {
    /// `clone`, `fetch` or `none`, as in the plan's JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Clone => "clone",
            Self::Fetch => "fetch",
            Self::None => "none",
        })
    }
}

/// The hooks of one phase that run on a host, in order (as a JSON pair
/// `["build", ["make", …]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "(Phase, Vec<String>)", from = "(Phase, Vec<String>)")]
pub struct PhaseHooks {
    /// The phase.
    pub phase: Phase,
    /// Each hook's command.
    pub commands: Vec<String>,
}

impl From<PhaseHooks> for (Phase, Vec<String>) {
    fn from(h: PhaseHooks) -> Self {
        (h.phase, h.commands)
    }
}

impl From<(Phase, Vec<String>)> for PhaseHooks {
    fn from((phase, commands): (Phase, Vec<String>)) -> Self {
        Self { phase, commands }
    }
}

/// One host's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// The host.
    pub host: String,
    /// The deploy root.
    pub root: String,
    /// The host's roles (which decide its hooks; none: only the hooks
    /// without roles run on it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The release live now.
    pub current: Option<String>,
    /// `current`'s raw target when it is not one of ektool's releases (a
    /// host laid out by another tool): what a failed deploy puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_link: Option<String>,
    /// The commit of the release live now.
    pub current_commit: Option<String>,
    /// The preparation.
    pub prepare: PrepareAction,
    /// The hooks that run on this host, phase by phase in deploy order
    /// (build hooks only when it builds, each run-once hook only on its
    /// host, the others only when they have no roles or share one with
    /// the host).
    pub hooks: Vec<PhaseHooks>,
    /// The switch: `current -> releases/<name>`.
    pub switch: String,
    /// Releases removed after a successful deploy.
    pub cleanup: Vec<String>,
    /// How far the host's clock is ahead of this machine's, in
    /// milliseconds (negative: behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

impl HostPlan {
    /// Whether hooks of `phase` run on this host.
    pub fn runs(&self, phase: Phase) -> bool {
        self.hooks.iter().any(|h| h.phase == phase)
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// The environment.
    pub environment: String,
    /// The release.
    pub release: Release,
    /// The layout (`ab`, `timestamped`).
    pub layout: String,
    /// Where hosts fetch from (credentials are never shown; such URLs are
    /// refused anyway).
    pub repository: String,
    /// The first host that runs run-once hooks (with `once_on`, others may
    /// run some: see each host's `hooks`).
    pub run_once_host: Option<String>,
    /// Per host, in lock order.
    pub hosts: Vec<HostPlan>,
    /// The hosts of each wave, in switching order: one wave unless a
    /// canary or batches are set (see [`crate::rollout`]).
    pub waves: Vec<Vec<String>>,
    /// How long the rest wait after the canary wave, in seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canary_wait_seconds: u64,
    /// What each wave does in the load balancer's target group, when the
    /// environment has one (see [`crate::balancer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerPlan>,
}

/// The load balancer steps of a deploy: each wave's targets are
/// deregistered, drained, switched, registered again and waited on until
/// healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerPlan {
    /// The target group.
    pub target_group_arn: String,
    /// How it names targets (`instance`, `ip`).
    pub target_type: String,
    /// The group's `deregistration_delay`, in seconds.
    pub deregistration_delay_seconds: u64,
    /// The longest a wave waits for its targets to drain, in seconds: the
    /// delay, bounded by `drain_timeout`.
    pub drain_wait_seconds: u64,
    /// The longest a wave waits for its targets to be healthy again, in
    /// seconds.
    pub healthy_timeout_seconds: u64,
    /// Per host, its targets (`id` or `id:port`).
    pub targets: BTreeMap<String, Vec<String>>,
    /// Hosts that are no target of the group: switched without draining.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_targets: Vec<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
