//! # deploykit — release deploys
//!
//! Capistrano-style deploys of a web application to many hosts, with the
//! parts those tools get wrong done right:
//!
//! - the `current` symlink is replaced **atomically** (a temporary link
//!   renamed over it), with a relative target;
//! - a release is prepared on **every** host before any host switches, and
//!   a failure after the first switch switches **every** host back;
//! - which release is live is read from the symlink and an append-only
//!   release log on each host, never guessed from directory times;
//! - a deploy takes a per-environment lock on every host (atomic `mkdir`,
//!   with an owner file, stale detection and a wait option);
//! - what is deployed is resolved locally with git and must be pushed; the
//!   developer's working copy is never touched.
//!
//! deploykit reaches hosts only through [`ec2kit::Remote`] (SSH in
//! production, [`ec2kit::LocalRemote`] for `localhost`), so a team's own
//! deploy binary is a few lines:
//!
//! ```no_run
//! # async fn demo(config: deploykit::Environment, hosts: Vec<deploykit::Host>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use deploykit::{Deployer, RefSpec, git::LocalRepo};
//!
//! let repo = LocalRepo::open(".")?;
//! let release = repo.release_for(&RefSpec::parse("v1.4.2"), &config, "production")?;
//! let deployer = Deployer::new("production", config, hosts)
//!     .on_event(|event| eprintln!("{event}"));
//! let report = deployer.deploy(&release).await?;
//! println!("{} is live on {} hosts", report.release.describe, report.hosts.len());
//! # Ok(()) }
//! ```
//!
//! The crate root holds the deploy API: [`Deployer`], what its operations
//! take and return, the [`Environment`] it is built from, and the errors
//! and events — one path each. Modules are public where they are a
//! sub-API of their own, used without a `Deployer`:
//!
//! - [`environment`]: the configuration of an environment (the root
//!   re-exports what a `Deployer` is built from);
//! - [`git`]: what to deploy, resolved and tagged in the local clone;
//! - [`layout`], [`log`] and [`lock`]: where releases live on a host, the
//!   release log, and the deploy lock;
//! - [`hooks`], [`health`] and [`notify`]: the commands of each phase, the
//!   health check, announcements;
//! - [`check`]: pre-flight checks of every host (`deploy check`);
//! - [`provision`] and [`db`]: configuring servers, and database chores;
//! - [`exec`]: a command in the live release of every host;
//! - [`rollout`]: canary and batches, the order hosts switch in;
//! - [`balancer`]: each wave drained from a load balancer's target group;
//! - [`audit`]: who did what to each host, merged into one timeline.

pub mod audit;
pub mod balancer;
pub mod check;
pub mod db;
mod deployer;
pub mod environment;
mod error;
mod event;
pub mod exec;
pub mod git;
pub mod health;
pub mod hooks;
mod host;
#[cfg(test)]
mod host_text;
pub mod hosts;
pub mod layout;
pub mod lock;
pub mod log;
pub mod notify;
mod plan;
pub mod provision;
mod release;
pub mod rollout;
mod shell;
mod state;
mod switch;

pub use deployer::{
    DeployReport, Deployer, HoldReport, HostOutcome, HostReleases, RollbackReport, RollbackStep,
    UnlockOutcome,
};
pub use environment::{
    Environment, HealthCheck, Hook, Hooks, HostEntry, HostSource, LayoutKind, Phase, Timeouts,
};
pub use error::{DeployError, HostFailure, Stage};
pub use event::{Event, EventSink};
pub use git::{Bump, GitError, RefSpec};
pub use host::{Actor, Host};
pub use layout::{AbSlots, ReleaseLayout, Timestamped};
pub use lock::LockOwner;
pub use log::{LogAction, LogEntry, LogResult};
pub use notify::{Notification, NotificationKind, Notifier};
pub use plan::{DeployPlan, HostPlan, LoadBalancerPlan, Mirror, PhaseHooks, PrepareAction};
pub use provision::{ProvisionConfig, ProvisionError, Provisioner};
pub use release::{Marker, Release};
pub use shell::{is_commit_id, short as short_commit};
pub use state::{HistoryRow, HostState, ReleaseDir};

/// The name of the symlink that points at the live release.
pub const CURRENT: &str = "current";
