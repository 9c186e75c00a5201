//! An EC2 with a delay on every call: for simulations and benchmarks of
//! how the toolkit's fleet operations overlap their calls.

use std::time::Duration;

use async_trait::async_trait;

use crate::requests::{
    CopyImage, CopySnapshot, CreateImage, CreateSnapshot, CreateSnapshots, CreateVolume,
    RegisterImage, RunInstances, TierRestore,
};
use crate::{
    AccountId, Ec2, Ec2Error, Filter, Image, ImageId, Instance, InstanceId, KmsKey,
    LaunchTemplateImage, Region, RegionInfo, Snapshot, SnapshotId, Tags, Volume, VolumeId,
};

/// `inner`, with every call taking `latency` longer (on tokio's clock, so a
/// paused clock makes the delay free and exact).
#[derive(Debug, Clone)]
pub struct Latency<E> {
    /// The EC2 that answers.
    pub inner: E,
    /// How long each call waits before it is answered.
    pub latency: Duration,
}

impl<E> Latency<E> {
    /// `inner`, `latency` slower per call.
    pub fn new(inner: E, latency: Duration) -> Self {
        Self { inner, latency }
    }
}

#[async_trait]
impl<E: Ec2> Ec2 for Latency<E> {
    async fn describe_regions(&self) -> Result<Vec<RegionInfo>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.describe_regions().await
    }
    async fn describe_instances(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.describe_instances(region, filters).await
    }
    async fn termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
    ) -> Result<bool, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.termination_protection(region, instance).await
    }
    async fn describe_volumes(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Volume>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.describe_volumes(region, filters).await
    }
    async fn describe_snapshots(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.describe_snapshots(region, filters).await
    }
    async fn describe_images(
        &self,
        region: &Region,
        filters: &[Filter],
    ) -> Result<Vec<Image>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.describe_images(region, filters).await
    }
    async fn create_snapshot(
        &self,
        region: &Region,
        request: &CreateSnapshot,
    ) -> Result<Snapshot, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.create_snapshot(region, request).await
    }
    async fn create_snapshots(
        &self,
        region: &Region,
        request: &CreateSnapshots,
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.create_snapshots(region, request).await
    }
    async fn create_tags(
        &self,
        region: &Region,
        resources: &[String],
        tags: &Tags,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
        self.inner.delete_snapshot(region, snapshot, dry_run).await
    }
    async fn copy_snapshot(
        &self,
        region: &Region,
        request: &CopySnapshot,
    ) -> Result<SnapshotId, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.copy_snapshot(region, request).await
    }
    async fn register_image(
        &self,
        region: &Region,
        request: &RegisterImage,
    ) -> Result<ImageId, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.register_image(region, request).await
    }
    async fn deregister_image(
        &self,
        region: &Region,
        image: &ImageId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.deregister_image(region, image, dry_run).await
    }
    async fn copy_image(&self, region: &Region, request: &CopyImage) -> Result<ImageId, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.copy_image(region, request).await
    }
    async fn create_volume(
        &self,
        region: &Region,
        request: &CreateVolume,
    ) -> Result<Volume, Ec2Error> {
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
        self.inner.delete_volume(region, volume, dry_run).await
    }
    async fn reboot_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
        self.inner
            .set_termination_protection(region, instance, enabled, dry_run)
            .await
    }
    async fn run_instances(
        &self,
        region: &Region,
        request: &RunInstances,
    ) -> Result<Vec<Instance>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.run_instances(region, request).await
    }
    async fn describe_kms_key(&self, region: &Region, key_id: &str) -> Result<KmsKey, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.describe_kms_key(region, key_id).await
    }
    async fn terminate_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
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
        tokio::time::sleep(self.latency).await;
        self.inner
            .share_snapshot(region, snapshot, account, share)
            .await
    }

    async fn snapshot_shared_with(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
    ) -> Result<Vec<AccountId>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.snapshot_shared_with(region, snapshot).await
    }

    async fn create_image(
        &self,
        region: &Region,
        request: &CreateImage,
    ) -> Result<ImageId, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.create_image(region, request).await
    }

    async fn launch_template_images(
        &self,
        region: &Region,
    ) -> Result<Vec<LaunchTemplateImage>, Ec2Error> {
        tokio::time::sleep(self.latency).await;
        self.inner.launch_template_images(region).await
    }
}
