//! # deploykit — releases and provisioning
//!
//! Deploys of web applications to many hosts, and bringing fresh hosts
//! under configuration:
//!
//! - **layout**: a `ReleaseLayout` trait with a/b slots (`releases/a`,
//!   `releases/b`) or timestamped releases, and a `shared/` directory;
//! - **release**: what to deploy, resolved locally with git (a pushed tag or
//!   commit), built on every host in parallel;
//! - **switch**: the `current` symlink replaced atomically by `rename(2)`,
//!   with hooks, health checks, and rollback of every host on failure;
//! - **lock and log**: a per-environment lock and an append-only release
//!   log on the hosts, so any machine can pick up where another stopped;
//! - **provision**: masterless Salt (or a plain script) with
//!   per-environment secrets that never appear in argv or logs.
//!
//! deploykit reaches hosts only through [`ec2kit::Remote`]
//! (`default-features = false`): SSH in production, `LocalRemote` for
//! `localhost`, mocks in unit tests.
//!
//! Status: the crate exists so the workspace layout is real; its modules
//! arrive with the deploy and provisioning work.

/// The name of the symlink that points at the live release.
pub const CURRENT: &str = "current";
