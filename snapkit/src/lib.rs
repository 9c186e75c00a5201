//! # snapkit — snapshot lifecycle
//!
//! Backups of EC2 instances and EBS volumes, and everything after them:
//!
//! - **backup**: every instance carrying a tag, in one region or all, with
//!   one crash-consistent `CreateSnapshots` per instance and lineage tags
//!   applied at creation;
//! - **consistency**: filesystem freeze and database lock around the
//!   snapshot call, over [`ec2kit::Remote`], with a host-side watchdog;
//! - **retention**: a pure `RetentionPolicy::plan(snapshots, now)` with
//!   logarithmic, GFS (restic-compatible) and max-age policies, and safety
//!   guards no policy can override;
//! - **replication** across regions, **AMIs** from snapshots, and instance
//!   chores.
//!
//! snapkit depends only on ec2kit's traits and domain types
//! (`default-features = false`), never on the AWS SDK: its logic is tested
//! against mocks and in-memory inventories, and runs against the real API
//! through whatever [`ec2kit::Ec2`] the caller passes in.
//!
//! Status: the crate exists so the workspace layout is real; its modules
//! arrive with the backup/retention and replication work.

/// The tag key that marks a snapshot as made (owned) by this toolkit.
///
/// Retention and cleanup only ever consider snapshots carrying it, unless
/// the user explicitly adopts others.
pub const OWNER_TAG: &str = "ektool:owner";
