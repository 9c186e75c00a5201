//! The EC2 API actions the toolkit calls.
//!
//! One enum serves three purposes: rate-limit buckets are keyed by it, errors
//! name it, and the IAM policy of a command is the set of actions it calls.

use std::fmt;

macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// An AWS API action (also its IAM action name without the service
        /// prefix, [`Action::service`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[non_exhaustive]
        pub enum Action {
            $($(#[$doc])* $name,)*
        }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &'static [Action] = &[$(Action::$name,)*];

            /// The API action name, e.g. `DeleteSnapshot`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$name => stringify!($name),)*
                }
            }
        }
    };
}

actions! {
    /// `DescribeRegions`.
    DescribeRegions,
    /// `DescribeInstances`.
    DescribeInstances,
    /// `DescribeInstanceAttribute`.
    DescribeInstanceAttribute,
    /// `DescribeVolumes`.
    DescribeVolumes,
    /// `DescribeSnapshots`.
    DescribeSnapshots,
    /// `DescribeImages`.
    DescribeImages,
    /// `CreateSnapshot`.
    CreateSnapshot,
    /// `CreateSnapshots`.
    CreateSnapshots,
    /// `CreateTags`.
    CreateTags,
    /// `DeleteTags`.
    DeleteTags,
    /// `DeleteSnapshot`.
    DeleteSnapshot,
    /// `CopySnapshot`.
    CopySnapshot,
    /// `RegisterImage`.
    RegisterImage,
    /// `DeregisterImage`.
    DeregisterImage,
    /// `CopyImage`.
    CopyImage,
    /// `CreateVolume`.
    CreateVolume,
    /// `AttachVolume`.
    AttachVolume,
    /// `DetachVolume`.
    DetachVolume,
    /// `DeleteVolume`.
    DeleteVolume,
    /// `RebootInstances`.
    RebootInstances,
    /// `ModifyInstanceAttribute`.
    ModifyInstanceAttribute,
    /// `RunInstances`.
    RunInstances,
    /// `TerminateInstances`.
    TerminateInstances,
    /// `ModifySnapshotTier` (a snapshot to the archive tier).
    ModifySnapshotTier,
    /// `RestoreSnapshotTier` (an archived snapshot back, for a while or for good).
    RestoreSnapshotTier,
    /// `CreateImage` (an AMI of a running or stopped instance).
    CreateImage,
    /// `DescribeLaunchTemplates` (the templates whose versions are read).
    DescribeLaunchTemplates,
    /// `DescribeLaunchTemplateVersions` (which AMIs launch templates use).
    DescribeLaunchTemplateVersions,
    /// `ModifySnapshotAttribute` (a snapshot shared with, or unshared from,
    /// another account: `createVolumePermission`).
    ModifySnapshotAttribute,
    /// `DescribeSnapshotAttribute` (the accounts a snapshot is shared with).
    DescribeSnapshotAttribute,
    /// KMS `DescribeKey` (the pre-flight check of a key before copies
    /// are encrypted with it).
    DescribeKey,
    /// Elastic Load Balancing `DescribeTargetGroups`.
    DescribeTargetGroups,
    /// Elastic Load Balancing `DescribeTargetGroupAttributes`
    /// (`deregistration_delay.timeout_seconds`).
    DescribeTargetGroupAttributes,
    /// Elastic Load Balancing `DescribeTargetHealth`.
    DescribeTargetHealth,
    /// Elastic Load Balancing `RegisterTargets`.
    RegisterTargets,
    /// Elastic Load Balancing `DeregisterTargets`.
    DeregisterTargets,
    /// STS `GetCallerIdentity` (the caller's account). IAM never denies
    /// it: no policy needs to grant it.
    GetCallerIdentity,
}

impl Action {
    /// The AWS service the action belongs to (`ec2`, `kms`, `sts`,
    /// `elasticloadbalancing`).
    pub fn service(self) -> &'static str {
        match self {
            Action::DescribeKey => "kms",
            Action::GetCallerIdentity => "sts",
            Action::DescribeTargetGroups
            | Action::DescribeTargetGroupAttributes
            | Action::DescribeTargetHealth
            | Action::RegisterTargets
            | Action::DeregisterTargets => "elasticloadbalancing",
            _ => "ec2",
        }
    }

    /// The IAM action, e.g. `ec2:DeleteSnapshot`.
    pub fn iam_action(self) -> String {
        format!("{}:{}", self.service(), self.as_str())
    }

    /// Whether the action only reads.
    pub fn is_describe(self) -> bool {
        self.as_str().starts_with("Describe")
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
