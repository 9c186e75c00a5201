//! The EC2 side of a mount volume: waiting for a state, detaching,
//! deleting, and removing a volume a failed mount made.

use std::time::Duration;

use ec2kit::{Ec2, Ec2Error, ErrorKind, Filter, InstanceId, Region, Volume, VolumeId};

use super::{MountError, MountEvent, Mounter, Rollback};

/// How long to wait for EC2, and how often to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// Between two looks.
    pub poll: Duration,
    /// For each wait (available, attached, detached).
    pub timeout: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(3),
            timeout: Duration::from_secs(300),
        }
    }
}

pub(crate) async fn describe_volume(
    ec2: &dyn Ec2,
    region: &Region,
    volume: &VolumeId,
) -> Result<Option<Volume>, Ec2Error> {
    // A filter (not VolumeIds) so a deleted volume is an empty answer,
    // not an error.
    Ok(ec2
        .describe_volumes(region, &[Filter::new("volume-id", [volume.as_str()])])
        .await?
        .into_iter()
        .next())
}

pub(crate) fn attached_to(v: &Volume, instance: &InstanceId) -> Option<String> {
    v.attachments
        .iter()
        .find(|a| &a.instance_id == instance && a.state.as_deref() == Some("attached"))
        .map(|a| a.device.clone().unwrap_or_default())
}

pub(crate) fn is_device_taken(e: &Ec2Error) -> bool {
    e.code() == Some("InvalidParameterValue")
        && e.message
            .as_deref()
            .is_some_and(|m| m.contains("already in use"))
}

impl Mounter<'_> {
    /// Polls `volume` until `done` says so; `error` state, disappearance and
    /// the timeout are errors.
    pub(crate) async fn wait_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        waiting_for: &'static str,
        done: impl Fn(&Volume) -> bool,
    ) -> Result<Volume, MountError> {
        let waits = self.waits;
        // Checked: a library caller may pass any Duration.
        let deadline = crate::wait::deadline(waits.timeout);
        loop {
            let Some(v) = describe_volume(self.ec2, region, volume).await? else {
                return Err(MountError::VolumeGone {
                    volume: volume.clone(),
                });
            };
            if done(&v) {
                return Ok(v);
            }
            if v.state == "error" {
                return Err(MountError::VolumeFailed {
                    volume: volume.clone(),
                    state: v.state,
                });
            }
            self.emit(MountEvent::Waiting {
                volume: volume.clone(),
                state: v.state.clone(),
                waiting_for,
            });
            if crate::wait::deadline(waits.poll) > deadline {
                return Err(MountError::Timeout {
                    volume: volume.clone(),
                    waiting_for,
                    state: v.state,
                    after: waits.timeout,
                });
            }
            tokio::time::sleep(waits.poll).await;
        }
    }

    /// Detaches `volume` from `instance` if attached, waits, deletes. Never
    /// fails: says what it could not do.
    pub(crate) async fn remove_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
    ) -> Rollback {
        let left = |reason: String| Rollback::LeftBehind {
            volume: volume.clone(),
            reason,
        };
        match self
            .detach_and_delete(region, volume, Some(instance), false)
            .await
        {
            Ok(_) => Rollback::Deleted {
                volume: volume.clone(),
            },
            Err(e) => left(e.to_string()),
        }
    }

    /// Detaches and waits until the volume is `available`; `false` if it
    /// was not attached (any more).
    pub(crate) async fn detach(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        force: bool,
    ) -> Result<bool, MountError> {
        let detached = match self
            .ec2
            .detach_volume_from(region, volume, instance, force, false)
            .await
        {
            Ok(()) => true,
            // Not attached (any more), or gone: nothing to detach.
            Err(e) if e.kind == ErrorKind::NotFound => false,
            Err(e) if e.code() == Some("IncorrectState") => false,
            Err(e) => return Err(e.into()),
        };
        match self
            .wait_volume(region, volume, "detached", |v| v.state == "available")
            .await
        {
            Ok(_) | Err(MountError::VolumeGone { .. }) => Ok(detached),
            Err(e) => Err(e),
        }
    }

    /// Deletes; `false` if it was gone already.
    pub(crate) async fn delete(
        &self,
        region: &Region,
        volume: &VolumeId,
    ) -> Result<bool, MountError> {
        match self.ec2.delete_volume(region, volume, false).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Detaches (if attached to `instance`) and deletes, waiting in between.
    pub(crate) async fn detach_and_delete(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: Option<&InstanceId>,
        force: bool,
    ) -> Result<bool, MountError> {
        let Some(v) = describe_volume(self.ec2, region, volume).await? else {
            return Ok(false);
        };
        if v.state == "creating" {
            self.wait_volume(region, volume, "available", |x| x.state != "creating")
                .await?;
        }
        let attached = v
            .attachments
            .iter()
            .find(|a| instance.is_none_or(|i| &a.instance_id == i));
        if let Some(a) = attached {
            self.detach(region, volume, &a.instance_id, force).await?;
        }
        self.delete(region, volume).await
    }
}
