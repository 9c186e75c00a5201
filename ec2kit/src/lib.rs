//! # ec2kit — the machines
//!
//! EC2 API access in domain types, and a shell on a host. The two seams
//! every other ektool crate builds on:
//!
//! - [`Ec2`]: the EC2 calls the toolkit needs (describe with server-side
//!   filters and full pagination, snapshots, images, volumes, instances),
//!   taking and returning the domain types below, never SDK types.
//!   [`AwsEc2`] implements it on aws-sdk-ec2 (feature `aws`), with a
//!   per-action, per-region [`RateLimiter`] sized to AWS's token buckets.
//! - [`Remote`]: run a command, upload a file atomically, read a file on
//!   one host. [`SshRemote`] (feature `ssh`) checks host keys strictly;
//!   [`LocalRemote`] is this machine; [`GuardedJob`] runs a long-lived
//!   command whose end the host itself guarantees.
//!
//! - [`TargetGroups`]: the Elastic Load Balancing target group calls a
//!   deploy drains hosts with ([`elb`]); [`AwsEc2`] implements it too, on
//!   aws-sdk-elasticloadbalancingv2.
//!
//! [`iam`] turns what operations call into least-privilege IAM policies:
//! each operation states its [`iam::Permissions`] next to it.
//!
//! Which machine to reach is plain data, compiled without any feature: a
//! [`HostTarget`] is this machine or an [`SshTarget`] (`user@host:port`),
//! and [`Instance::address`] picks the [`Address`] an instance is reached
//! at. `connect` (feature `ssh`) turns a target and [`SshOptions`] into a
//! shell:
//!
//! ```no_run
//! # #[cfg(feature = "ssh")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::{Command, HostTarget, SshOptions};
//!
//! let options = SshOptions::from_home();
//! for written in ["localhost", "deploy@web1.example.com:2222"] {
//!     let target = HostTarget::parse_with_user(written, "deploy")?;
//!     let shell = ec2kit::connect(&target, &options);
//!     let out = shell.run(&Command::argv(["uname", "-n"])).await?;
//!     println!("{target}: {}", out.stdout_str().trim());
//! }
//! # Ok(()) }
//! ```
//!
//! With `default-features = false` only the traits and types compile, so
//! crates that build on them (snapkit, deploykit) test their logic without
//! compiling the AWS SDK. Feature `mock` adds mockall mocks of both seams.
//!
//! ```no_run
//! # #[cfg(feature = "aws")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::{AwsEc2, AwsEc2Options, Tag, fleet};
//!
//! let ec2 = AwsEc2::new(AwsEc2Options::default()).await;
//! let catalog = fleet::region_catalog(&ec2).await?;
//! let regions = catalog.resolve_all(&["eu-west", "us-east-1"])?;
//! let tag: Tag = "Earmarking=production".parse()?;
//! for region in fleet::instances_by_tag(&ec2, &regions, &tag, 4).await {
//!     for instance in region.result? {
//!         println!("{} {} {}", region.region, instance.id, instance.name().unwrap_or("-"));
//!     }
//! }
//! # Ok(()) }
//! ```

mod action;
mod ec2;
mod error;
mod filter;
mod ids;
mod image;
mod instance;
mod kms;
mod paginate;
mod region;
mod snapshot;
mod tags;
mod volume;

pub mod accounts;
pub mod duration;
pub mod elb;
pub mod fleet;
pub mod iam;
pub mod job;
pub mod latency;
pub mod local;
pub mod paced;
pub mod ratelimit;
pub mod remote;
pub mod requests;
pub mod rfc3339;
pub mod target;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "aws")]
mod aws_elb;
#[cfg(feature = "ssh")]
pub mod ssh;
#[cfg(feature = "ssh")]
pub mod ssh_key;

pub use accounts::{AccountId, Accounts};
pub use action::Action;
pub use duration::HumanDuration;
pub use ec2::Ec2;
#[cfg(any(test, feature = "mock"))]
pub use ec2::MockEc2;
#[cfg(any(test, feature = "mock"))]
pub use elb::MockTargetGroups;
pub use elb::{Target, TargetGroup, TargetGroups, TargetHealth, TargetState, TargetType};
pub use error::{BoxError, Ec2Error, ErrorKind, dry_run_ok, one_line};
pub use filter::Filter;
pub use ids::{ImageId, InstanceId, InvalidId, SnapshotId, VolumeId};
pub use image::{Image, ImageBlockDevice, LaunchTemplateImage};
pub use instance::{Address, BlockDevice, Instance};
pub use job::{GuardedJob, JobState};
pub use kms::KmsKey;
pub use latency::Latency;
pub use local::LocalRemote;
pub use paced::Paced;
pub use ratelimit::{Bucket, RateLimiter, RateLimits};
pub use region::{Region, RegionCatalog, RegionError, RegionInfo};
#[cfg(any(test, feature = "mock"))]
pub use remote::MockRemote;
pub use remote::{Command, ExitStatus, Output, Program, Remote, RemoteError, Streamed, Streams};
pub use snapshot::{Snapshot, SnapshotState, StorageTier};
pub use tags::{InvalidTag, Tag, Tags, is_reserved_key};
pub use target::{HostTarget, InvalidTarget, SshOptions, SshTarget};
pub use volume::{Volume, VolumeAttachment};

/// How a caller asks a long operation to stop and take its failure path
/// (ektool cancels it on SIGINT/SIGTERM). Every crate of the toolkit takes
/// this one type, re-exported here so a fabfile needs no tokio-util of its
/// own.
pub use tokio_util::sync::CancellationToken;

#[cfg(feature = "aws")]
pub use aws::{AwsEc2, AwsEc2Options, RequestHook};
#[cfg(feature = "ssh")]
pub use ssh::{Bastion, HostKey, HostKeyStatus, Keepalive, SshRemote};
#[cfg(feature = "ssh")]
pub use target::{connect, connect_via};
