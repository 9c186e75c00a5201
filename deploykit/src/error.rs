//! The errors of deploy operations.

use std::fmt;

use ec2kit::RemoteError;
use serde::{Deserialize, Serialize};

use crate::lock::HeldLock;

/// The step of a deploy where something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Taking the lock.
    Lock,
    /// Reading the hosts' state.
    Inspect,
    /// Fetching into the hosts' mirrors.
    Fetch,
    /// Checking out the release and linking shared paths.
    Checkout,
    /// The build hooks.
    Build,
    /// The run-once hooks before the switch.
    BeforeSwitch,
    /// Switching `current`.
    Switch,
    /// Restart and after-switch hooks.
    AfterSwitch,
    /// Health checks.
    Health,
    /// Taking a wave out of the load balancer's target group, or putting
    /// it back and waiting until it is healthy there.
    LoadBalancer,
}

impl Stage {
    /// Whether a failure at this stage happens after hosts were switched.
    pub fn after_switch(self) -> bool {
        matches!(
            self,
            Self::Switch | Self::AfterSwitch | Self::Health | Self::LoadBalancer
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lock => "lock",
            Self::Inspect => "inspect",
            Self::Fetch => "fetch",
            Self::Checkout => "checkout",
            Self::Build => "build",
            Self::BeforeSwitch => "before-switch hooks",
            Self::Switch => "switch",
            Self::AfterSwitch => "after-switch hooks",
            Self::Health => "health check",
            Self::LoadBalancer => "load balancer",
        })
    }
}

/// What went wrong on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFailure {
    /// The host.
    pub host: String,
    /// The step.
    pub stage: Stage,
    /// The error, as text.
    pub error: String,
}

impl fmt::Display for HostFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.host, self.stage, self.error)
    }
}

/// Why a deploy operation did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The environment has no hosts (or the caller's selection of them
    /// matched none).
    #[error("no hosts to work on")]
    NoHosts,
    /// No git URL for the hosts to fetch from.
    #[error(
        "no repository URL: set `repository` in the environment, or deploy from a clone with the remote configured"
    )]
    NoRepository,
    /// The environment's configuration cannot work.
    #[error("invalid environment: {0}")]
    Invalid(String),
    /// A `before_switch` hook runs `once_on` a role no host of the
    /// operation has (the environment's, or those a caller selected):
    /// refused before anything was read or changed.
    #[error(
        "before_switch hook `{hook}` runs once_on role {role:?}, and no selected host has it{}",
        roles_have(.have)
    )]
    NoHostWithRole {
        /// The hook's command.
        hook: String,
        /// The role.
        role: String,
        /// The roles the selected hosts have.
        have: Vec<String>,
    },
    /// The load balancer's target group could not be read or used, before
    /// anything was changed.
    #[error(transparent)]
    LoadBalancer(#[from] crate::balancer::BalancerError),
    /// Another run holds the lock (`lock.stale` says whether it looks
    /// abandoned); nothing was changed.
    #[error("{lock}")]
    Locked {
        /// The lock found.
        lock: Box<HeldLock>,
    },
    /// `release_hold` found a lock that is not hand-held (a running
    /// operation's, or one it left behind): nothing was removed.
    #[error("{lock}; it was not taken by hand, so it is left in place")]
    NotHandHeld {
        /// The lock found.
        lock: Box<HeldLock>,
    },
    /// A host could not be reached or a command failed outside a deploy's
    /// stages (locking, reading state).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A deploy failed. Before the switch nothing changed; after it, every
    /// host that switched was switched back (except those listed in
    /// `inconsistent`).
    #[error("{}", failed_message(.stage, .failures, .rolled_back, .inconsistent))]
    Failed {
        /// Where it failed.
        stage: Stage,
        /// What failed, per host.
        failures: Vec<HostFailure>,
        /// Hosts switched back to their previous release.
        rolled_back: Vec<String>,
        /// Hosts that could not be switched back: check them.
        inconsistent: Vec<HostFailure>,
    },
    /// A host has no release to roll back to.
    #[error("{host}: no earlier complete release that is not marked bad; nothing was changed")]
    NothingToRollBack {
        /// The host.
        host: String,
    },
    /// A named release is not on a host (or not complete).
    #[error("{host}: release {release} is not there or not complete; nothing was changed")]
    UnknownRelease {
        /// The host.
        host: String,
        /// The release.
        release: String,
    },
    /// An operation needs a live release and a host has none.
    #[error("{host}: nothing is deployed yet")]
    NotDeployed {
        /// The host.
        host: String,
    },
    /// A signal (or the caller's cancellation token) interrupted the
    /// operation; it took its failure path: hosts that had switched were
    /// switched back (except `inconsistent`), locks released.
    #[error("{}", interrupted_message(.stage, .rolled_back, .inconsistent))]
    Interrupted {
        /// Where it was.
        stage: Stage,
        /// Hosts switched back to their previous release.
        rolled_back: Vec<String>,
        /// Hosts that could not be switched back: check them.
        inconsistent: Vec<HostFailure>,
    },
    /// A fleet rollback's target is not on a host (not complete there, or
    /// gone): nothing was changed.
    #[error(
        "{host}: has no complete release of {commit}, the environment's rollback target; nothing was changed"
    )]
    RollbackTargetMissing {
        /// The host.
        host: String,
        /// The target commit (short).
        commit: String,
    },
    /// `unlock` found a live lock and was not forced; nothing was removed.
    #[error("{lock}; it is not stale")]
    LockNotStale {
        /// The lock.
        lock: Box<HeldLock>,
    },
}

impl DeployError {
    /// Whether the caller's input is wrong (no hosts, no repository, an
    /// invalid environment, a release that is not there) rather than a
    /// host or a step failing; nothing was changed either way.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::NoHosts
                | Self::NoRepository
                | Self::Invalid(_)
                | Self::NoHostWithRole { .. }
                | Self::UnknownRelease { .. }
        )
    }
}

fn roles_have(have: &[String]) -> String {
    if have.is_empty() {
        " (they have no roles)".to_owned()
    } else {
        format!(" (they have: {})", have.join(", "))
    }
}

fn interrupted_message(
    stage: &Stage,
    rolled_back: &[String],
    inconsistent: &[HostFailure],
) -> String {
    let mut s = format!("interrupted during {stage}");
    if !stage.after_switch() {
        s.push_str("; no host was switched, `current` is unchanged everywhere");
    } else if !rolled_back.is_empty() {
        s.push_str(&format!(
            "; switched {} host{} back to the previous release",
            rolled_back.len(),
            if rolled_back.len() == 1 { "" } else { "s" }
        ));
    }
    for i in inconsistent {
        s.push_str(&format!("; COULD NOT SWITCH BACK {i}"));
    }
    s
}

fn failed_message(
    stage: &Stage,
    failures: &[HostFailure],
    rolled_back: &[String],
    inconsistent: &[HostFailure],
) -> String {
    let mut s = format!("deploy failed at {stage}");
    match failures {
        [] => {}
        [one] => s.push_str(&format!(": {one}")),
        [first, rest @ ..] => s.push_str(&format!(
            " on {} hosts: {first} (and {} more)",
            failures.len(),
            rest.len()
        )),
    }
    if !stage.after_switch() {
        s.push_str("; no host was switched, `current` is unchanged everywhere");
    } else if !rolled_back.is_empty() {
        s.push_str(&format!(
            "; switched {} host{} back to the previous release",
            rolled_back.len(),
            if rolled_back.len() == 1 { "" } else { "s" }
        ));
    }
    for i in inconsistent {
        s.push_str(&format!("; COULD NOT SWITCH BACK {i}"));
    }
    s
}
