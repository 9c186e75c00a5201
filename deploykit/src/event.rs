//! Events: what a running operation reports as it goes, as serialisable
//! values delivered to a callback (the CLI streams them as JSON lines or
//! shows progress; a test records them).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::environment::Phase;
use crate::error::Stage;

/// The callback events are delivered to.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum Event {
    /// The lock is held elsewhere; waiting.
    LockWaiting {
        /// Who holds it, as text.
        holder: String,
    },
    /// Every host is locked.
    Locked {
        /// How many hosts.
        hosts: usize,
    },
    /// A host's state was read.
    Inspected {
        /// The host.
        host: String,
        /// Its current release.
        current: Option<String>,
    },
    /// A host's mirror was brought up to date.
    Fetched {
        /// The host.
        host: String,
    },
    /// A release was checked out on a host.
    CheckedOut {
        /// The host.
        host: String,
        /// The release directory.
        release: String,
    },
    /// A phase's hooks ran on a host.
    HooksRan {
        /// The host.
        host: String,
        /// The phase.
        phase: Phase,
        /// How many hooks.
        count: usize,
        /// How long they took.
        seconds: f64,
    },
    /// A host's release is ready to switch to.
    Prepared {
        /// The host.
        host: String,
        /// The release directory.
        release: String,
        /// An existing build was reused.
        reused: bool,
        /// How long it took.
        seconds: f64,
    },
    /// A host's `current` now points at a release.
    Switched {
        /// The host.
        host: String,
        /// The release.
        release: String,
        /// The release before.
        previous: Option<String>,
        /// Milliseconds since the switch barrier opened.
        at_ms: f64,
    },
    /// A host passed its health check.
    Healthy {
        /// The host.
        host: String,
    },
    /// Something failed on a host.
    HostFailed {
        /// The host.
        host: String,
        /// Where.
        stage: Stage,
        /// What.
        error: String,
    },
    /// A host was switched back after a failure.
    SwitchedBack {
        /// The host.
        host: String,
        /// The release it is on again (`None`: it had none, and `current`
        /// was removed; or `link` says where `current` points again).
        release: Option<String>,
        /// `current`'s target put back, when it is not one of ektool's
        /// releases (a host taken over from another tool).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
    },
    /// A wave of a canary or batched deploy starts switching (see
    /// [`crate::rollout`]).
    Wave {
        /// Its number, from 1.
        number: usize,
        /// How many waves there are.
        of: usize,
        /// Its hosts.
        hosts: Vec<String>,
    },
    /// The canary hosts are live and healthy; the rest wait this long.
    CanaryWait {
        /// How many hosts are the canary.
        hosts: usize,
        /// The wait, in seconds.
        seconds: f64,
    },
    /// A host's clock differs from this machine's by more than half a
    /// second (measured when its state was read; positive: ahead). The
    /// scheduled switch bounds its wait, so the fleet still switches
    /// together, but hook times and logs will disagree.
    ClockSkew {
        /// The host.
        host: String,
        /// Milliseconds the host's clock is ahead (negative: behind).
        skew_ms: i64,
    },
    /// A signal (or the caller's cancellation) arrived: the operation
    /// stops starting new work and takes its failure path.
    Interrupted {
        /// Where it was.
        stage: Stage,
    },
    /// Old releases were removed on a host.
    Cleaned {
        /// The host.
        host: String,
        /// The removed release directories.
        removed: Vec<String>,
    },
    /// A best-effort step failed (log, unlock, on-failure hook, cleanup);
    /// the operation's outcome does not change.
    Warning {
        /// The host, if any.
        host: Option<String>,
        /// What.
        message: String,
    },
    /// A host's pre-flight checks are done ([`crate::Deployer::check`]).
    HostChecked {
        /// The host.
        host: String,
        /// How many of its checks failed.
        failed: usize,
    },
    /// A wave's targets were deregistered from the load balancer's target
    /// group (see [`crate::balancer`]).
    Deregistered {
        /// The wave's hosts that are targets.
        hosts: Vec<String>,
        /// Their targets (`id` or `id:port`).
        targets: Vec<String>,
        /// The longest the deploy waits for them to drain, in seconds.
        wait_seconds: f64,
    },
    /// A wave's targets are out of the group (`complete`), or the drain
    /// wait ran out and the wave switches anyway.
    Drained {
        /// The hosts.
        hosts: Vec<String>,
        /// Whether every target was out of the group.
        complete: bool,
        /// How long the wait took.
        seconds: f64,
    },
    /// Targets were registered in the group again (after their wave, or
    /// after a failure put their hosts back).
    Registered {
        /// The hosts.
        hosts: Vec<String>,
        /// Their targets.
        targets: Vec<String>,
    },
    /// A wave's targets are `healthy` in the group again.
    InService {
        /// The hosts.
        hosts: Vec<String>,
        /// How long it took after registering them.
        seconds: f64,
    },
    /// A notification could not be delivered (the deploy goes on).
    NotifyFailed {
        /// Why (never the webhook URL).
        error: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LockWaiting { holder } => write!(f, "waiting for the lock: {holder}"),
            Self::Locked { hosts } => write!(f, "locked {hosts} host(s)"),
            Self::Inspected { host, current } => write!(
                f,
                "{host}: current is {}",
                current.as_deref().unwrap_or("(none)")
            ),
            Self::Fetched { host } => write!(f, "{host}: fetched"),
            Self::CheckedOut { host, release } => {
                write!(f, "{host}: checked out releases/{release}")
            }
            Self::HooksRan {
                host,
                phase,
                count,
                seconds,
            } => write!(f, "{host}: {count} {phase} hook(s) ran in {seconds:.1}s"),
            Self::Prepared {
                host,
                release,
                reused,
                seconds,
            } => write!(
                f,
                "{host}: releases/{release} {} in {seconds:.1}s",
                if *reused {
                    "already built, reused"
                } else {
                    "ready"
                }
            ),
            Self::Switched {
                host,
                release,
                previous,
                at_ms,
            } => write!(
                f,
                "{host}: current -> releases/{release} (was {}) at +{at_ms:.0}ms",
                previous.as_deref().unwrap_or("none")
            ),
            Self::Healthy { host } => write!(f, "{host}: healthy"),
            Self::Wave { number, of, hosts } => {
                write!(f, "wave {number}/{of}: {}", hosts.join(", "))
            }
            Self::CanaryWait { hosts, seconds } => write!(
                f,
                "canary live and healthy on {hosts} host(s): the rest switch in {seconds:.0}s"
            ),
            Self::HostFailed { host, stage, error } => write!(f, "{host}: {stage} failed: {error}"),
            Self::SwitchedBack {
                host,
                release,
                link,
            } => match (release, link) {
                (Some(r), _) => write!(f, "{host}: switched back to releases/{r}"),
                (None, Some(l)) => write!(f, "{host}: current -> {l} again"),
                (None, None) => write!(f, "{host}: removed current (it had no previous release)"),
            },
            Self::ClockSkew { host, skew_ms } => write!(
                f,
                "{host}: clock is {:.1}s {} this machine's",
                skew_ms.unsigned_abs() as f64 / 1000.0,
                if *skew_ms < 0 { "behind" } else { "ahead of" }
            ),
            Self::Interrupted { stage } => {
                write!(f, "interrupted during {stage}: taking the failure path")
            }
            Self::Cleaned { host, removed } => {
                write!(f, "{host}: removed old releases {}", removed.join(", "))
            }
            Self::Warning { host, message } => match host {
                Some(h) => write!(f, "{h}: warning: {message}"),
                None => write!(f, "warning: {message}"),
            },
            Self::HostChecked { host, failed: 0 } => write!(f, "{host}: checked, all passed"),
            Self::HostChecked { host, failed } => write!(f, "{host}: checked, {failed} failed"),
            Self::NotifyFailed { error } => write!(f, "notification not sent: {error}"),
            Self::Deregistered {
                hosts,
                targets,
                wait_seconds,
            } => write!(
                f,
                "load balancer: deregistered {} ({}); draining up to {wait_seconds:.0}s",
                hosts.join(", "),
                targets.join(", ")
            ),
            Self::Drained {
                hosts,
                complete: true,
                seconds,
            } => write!(
                f,
                "load balancer: {} drained in {seconds:.1}s",
                hosts.join(", ")
            ),
            Self::Drained { hosts, seconds, .. } => write!(
                f,
                "load balancer: {} still draining after {seconds:.1}s; switching anyway",
                hosts.join(", ")
            ),
            Self::Registered { hosts, targets } => write!(
                f,
                "load balancer: registered {} ({}) again",
                hosts.join(", "),
                targets.join(", ")
            ),
            Self::InService { hosts, seconds } => write!(
                f,
                "load balancer: {} healthy in the target group after {seconds:.1}s",
                hosts.join(", ")
            ),
        }
    }
}
