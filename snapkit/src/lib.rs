//! # snapkit — snapshot lifecycle
//!
//! Backups of EC2 instances and EBS volumes, and everything after them:
//!
//! - [`lineage`]: the tags ektool writes on every snapshot, and how
//!   snapshots group into lineages (copies group with their source);
//! - [`retention`]: a pure [`RetentionPolicy`](retention::RetentionPolicy)
//!   with logarithmic (the seed's trim, as intended), GFS (restic's
//!   semantics) and max-age policies, and safety guards no policy can
//!   override;
//! - [`check`]: the freshness of every lineage (newest completed
//!   snapshot and its age, in the source and replica regions) and
//!   [`metrics`] (Prometheus text format for node_exporter);
//! - [`backup`] and [`consistency`] (filesystem freeze and DB lock with a
//!   host-side watchdog), [`trim`] against EC2, [`inventory`] files;
//! - [`replicate`] (native `CopySnapshot` with a slot scheduler, lag),
//!   [`ami`] (AMIs from snapshots), [`instances`] (protection, volume tags,
//!   launch), [`mount`] (a snapshot mounted read-only on an instance) and
//!   [`rsync`] (file-level sync between hosts), [`verify`] (restore tests:
//!   the newest snapshot of each lineage mounted and checked);
//! - [`vault`]: copies into a vault account (the source shared for the
//!   copy, the copy made by the vault, the share taken back).
//!
//! snapkit depends only on ec2kit's traits and domain types
//! (`default-features = false`), never on the AWS SDK: its logic is tested
//! against mocks and in-memory inventories, and runs against the real API
//! through whatever [`ec2kit::Ec2`] the caller passes in.
//!
//! ```
//! use snapkit::retention::{Logarithmic, RetentionPolicy, Verdict};
//! # let inventory: Vec<ec2kit::Snapshot> = Vec::new();
//! let plan = Logarithmic::default().plan(&inventory, jiff::Timestamp::now());
//! for d in plan.deletions() {
//!     println!("{} {}: {}", d.id, d.lineage, d.reason);
//! }
//! ```

pub mod ami;
pub mod ami_trim;
pub mod backup;
pub mod check;
pub mod connect;
pub mod consistency;
pub mod instances;
pub mod inventory;
pub mod lineage;
pub mod metrics;
pub mod mount;
pub mod replicate;
pub mod retention;
pub mod rsync;
pub mod trim;
pub mod vault;
pub mod verify;
pub mod wait;

pub use lineage::tags::OWNER as OWNER_TAG;
