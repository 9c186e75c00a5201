//! [`Paced`]: the rate limiter around any [`Ec2`].
//!
//! [`AwsEc2`](crate::AwsEc2) paces every request (each page of a listing
//! too) by itself. `Paced` gives the same pacing, one token per call, to
//! any other implementation: a team's own, or a mock that simulates
//! AWS's throttling in a test.

use async_trait::async_trait;

use crate::requests::{
    CopyImage, CopySnapshot, CreateImage, CreateSnapshot, CreateSnapshots, CreateVolume,
    RegisterImage, RunInstances, TierRestore,
};
use crate::{
    AccountId, Action, Ec2, Ec2Error, Filter, Image, ImageId, Instance, InstanceId, KmsKey,
    LaunchTemplateImage, RateLimiter, RateLimits, Region, RegionInfo, Snapshot, SnapshotId, Tags,
    Volume, VolumeId,
};

/// An [`Ec2`] whose calls first pass a [`RateLimiter`].
#[derive(Debug)]
pub struct Paced<E> {
    inner: E,
    limiter: RateLimiter,
    home: Region,
}

impl<E: Ec2> Paced<E> {
    /// Paces `inner` to `limits`; account-wide calls count against `home`.
    pub fn new(inner: E, limits: RateLimits, home: Region) -> Self {
        Self {
            inner,
            limiter: RateLimiter::new(limits),
            home,
        }
    }

    /// The wrapped implementation.
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

#[async_trait]
impl<E: Ec2> Ec2 for Paced<E> {
    async fn describe_regions(&self) -> Result<Vec<RegionInfo>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeRegions, self.home.as_str())
            .await;
        self.inner.describe_regions().await
    }

    async fn describe_instances(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeInstances, region.as_str())
            .await;
        self.inner.describe_instances(region, filters).await
    }

    async fn termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
    ) -> Result<bool, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeInstanceAttribute, region.as_str())
            .await;
        self.inner.termination_protection(region, instance).await
    }

    async fn describe_volumes(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Volume>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeVolumes, region.as_str())
            .await;
        self.inner.describe_volumes(region, filters).await
    }

    async fn describe_snapshots(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeSnapshots, region.as_str())
            .await;
        self.inner.describe_snapshots(region, filters).await
    }

    async fn describe_images(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Image>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeImages, region.as_str())
            .await;
        self.inner.describe_images(region, filters).await
    }

    async fn create_snapshot(
        &self,
        region: &Region,
        request: &CreateSnapshot,
    ) -> Result<Snapshot, Ec2Error> {
        self.limiter
            .acquire(Action::CreateSnapshot, region.as_str())
            .await;
        self.inner.create_snapshot(region, request).await
    }

    async fn create_snapshots(
        &self,
        region: &Region,
        request: &CreateSnapshots,
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        self.limiter
            .acquire(Action::CreateSnapshots, region.as_str())
            .await;
        self.inner.create_snapshots(region, request).await
    }

    async fn create_tags(
        &self,
        region: &Region,
        resources: &[String],
        tags: &Tags,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::CreateTags, region.as_str())
            .await;
        self.inner
            .create_tags(region, resources, tags, dry_run)
            .await
    }

    async fn delete_tags(
        &self,
        region: &Region,
        resources: &[String],
        keys: &[String],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::DeleteTags, region.as_str())
            .await;
        self.inner
            .delete_tags(region, resources, keys, dry_run)
            .await
    }

    async fn delete_snapshot(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::DeleteSnapshot, region.as_str())
            .await;
        self.inner.delete_snapshot(region, snapshot, dry_run).await
    }

    async fn copy_snapshot(
        &self,
        region: &Region,
        request: &CopySnapshot,
    ) -> Result<SnapshotId, Ec2Error> {
        self.limiter
            .acquire(Action::CopySnapshot, region.as_str())
            .await;
        self.inner.copy_snapshot(region, request).await
    }

    async fn register_image(
        &self,
        region: &Region,
        request: &RegisterImage,
    ) -> Result<ImageId, Ec2Error> {
        self.limiter
            .acquire(Action::RegisterImage, region.as_str())
            .await;
        self.inner.register_image(region, request).await
    }

    async fn deregister_image(
        &self,
        region: &Region,
        image: &ImageId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::DeregisterImage, region.as_str())
            .await;
        self.inner.deregister_image(region, image, dry_run).await
    }

    async fn copy_image(&self, region: &Region, request: &CopyImage) -> Result<ImageId, Ec2Error> {
        self.limiter
            .acquire(Action::CopyImage, region.as_str())
            .await;
        self.inner.copy_image(region, request).await
    }

    async fn create_volume(
        &self,
        region: &Region,
        request: &CreateVolume,
    ) -> Result<Volume, Ec2Error> {
        self.limiter
            .acquire(Action::CreateVolume, region.as_str())
            .await;
        self.inner.create_volume(region, request).await
    }

    async fn attach_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::AttachVolume, region.as_str())
            .await;
        self.inner
            .attach_volume(region, volume, instance, device, dry_run)
            .await
    }

    async fn detach_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::DetachVolume, region.as_str())
            .await;
        self.inner
            .detach_volume(region, volume, force, dry_run)
            .await
    }

    async fn detach_volume_from(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::DetachVolume, region.as_str())
            .await;
        self.inner
            .detach_volume_from(region, volume, instance, force, dry_run)
            .await
    }

    async fn delete_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::DeleteVolume, region.as_str())
            .await;
        self.inner.delete_volume(region, volume, dry_run).await
    }

    async fn reboot_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::RebootInstances, region.as_str())
            .await;
        self.inner
            .reboot_instances(region, instances, dry_run)
            .await
    }

    async fn set_termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
        enabled: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::ModifyInstanceAttribute, region.as_str())
            .await;
        self.inner
            .set_termination_protection(region, instance, enabled, dry_run)
            .await
    }

    async fn run_instances(
        &self,
        region: &Region,
        request: &RunInstances,
    ) -> Result<Vec<Instance>, Ec2Error> {
        self.limiter
            .acquire(Action::RunInstances, region.as_str())
            .await;
        self.inner.run_instances(region, request).await
    }

    async fn describe_kms_key(&self, region: &Region, key_id: &str) -> Result<KmsKey, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeKey, region.as_str())
            .await;
        self.inner.describe_kms_key(region, key_id).await
    }

    async fn terminate_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::TerminateInstances, region.as_str())
            .await;
        self.inner
            .terminate_instances(region, instances, dry_run)
            .await
    }

    async fn modify_snapshot_tier(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::ModifySnapshotTier, region.as_str())
            .await;
        self.inner
            .modify_snapshot_tier(region, snapshot, dry_run)
            .await
    }

    async fn restore_snapshot_tier(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        restore: &TierRestore,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::RestoreSnapshotTier, region.as_str())
            .await;
        self.inner
            .restore_snapshot_tier(region, snapshot, restore, dry_run)
            .await
    }

    async fn share_snapshot(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        account: &AccountId,
        share: bool,
    ) -> Result<(), Ec2Error> {
        self.limiter
            .acquire(Action::ModifySnapshotAttribute, region.as_str())
            .await;
        self.inner
            .share_snapshot(region, snapshot, account, share)
            .await
    }

    async fn snapshot_shared_with(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
    ) -> Result<Vec<AccountId>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeSnapshotAttribute, region.as_str())
            .await;
        self.inner.snapshot_shared_with(region, snapshot).await
    }

    async fn create_image(
        &self,
        region: &Region,
        request: &CreateImage,
    ) -> Result<ImageId, Ec2Error> {
        self.limiter
            .acquire(Action::CreateImage, region.as_str())
            .await;
        self.inner.create_image(region, request).await
    }

    async fn launch_template_images(
        &self,
        region: &Region,
    ) -> Result<Vec<LaunchTemplateImage>, Ec2Error> {
        self.limiter
            .acquire(Action::DescribeLaunchTemplateVersions, region.as_str())
            .await;
        self.inner.launch_template_images(region).await
    }
}
