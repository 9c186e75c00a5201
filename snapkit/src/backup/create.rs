//! Creating the snapshots: the tags and description of a set, and the
//! calls for instances (`CreateSnapshots`) and volumes (`CreateSnapshot`).

use std::collections::HashSet;

use ec2kit::requests::{CreateSnapshot, CreateSnapshots};
use ec2kit::{Ec2, Ec2Error, Filter, Instance, Region, Tags, Volume, VolumeId};
use futures::stream::{self, StreamExt};

use super::window::{done_in_window, settle_races};
use super::{BackupOptions, BackupResult, BackupStatus, DEVICES_TAG, WINDOW_TAG};
use crate::lineage::tags;

/// The tags every snapshot of one run shares.
fn base_tags(region: &Region, options: &BackupOptions, set: &str) -> Tags {
    Tags::new()
        .with(tags::OWNER, tags::OWNER_VALUE)
        .with(tags::SET, set)
        .with(tags::ORIGIN_REGION, region.as_str())
        .with(
            tags::CREATED,
            options.now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
        .with(tags::POLICY, options.policy.clone())
        .with(WINDOW_TAG, options.window_key())
}

/// The description: human-readable, and (like the seed's JSON) enough to
/// know where a snapshot came from without the tags.
pub(crate) fn description(what: &str, name: Option<&str>, options: &BackupOptions) -> String {
    match name {
        Some(n) => format!(
            "ektool backup of {what} ({n}) at {}",
            options.now.strftime("%Y-%m-%d %H:%M UTC")
        ),
        None => format!(
            "ektool backup of {what} at {}",
            options.now.strftime("%Y-%m-%d %H:%M UTC")
        ),
    }
}

/// The volumes a backup of `instance` with `options` snapshots: its
/// attached volumes minus the root (with `exclude_boot`) and minus the
/// excluded data volumes.
pub fn requested_volumes(instance: &Instance, options: &BackupOptions) -> Vec<VolumeId> {
    instance
        .block_devices
        .iter()
        .filter(|b| {
            !(options.exclude_boot
                && instance.root_device_name.as_deref() == Some(b.device_name.as_str()))
        })
        .filter(|b| !options.exclude_volumes.contains(&b.volume_id))
        .map(|b| b.volume_id.clone())
        .collect()
}

/// The tags and notes for one instance's set.
fn instance_tags(
    instance: &Instance,
    volumes: &[&Volume],
    options: &BackupOptions,
    set: &str,
) -> (Tags, bool, Vec<String>) {
    let mut t = base_tags(&instance.region, options, set);
    t.insert(tags::INSTANCE, instance.id.as_str());
    if let Some(root) = &instance.root_device_name {
        t.insert(tags::ROOT_DEVICE, root.clone());
    }
    if let Some(arch) = &instance.architecture {
        t.insert(tags::ARCHITECTURE, arch.clone());
    }
    let devices: Vec<String> = instance
        .block_devices
        .iter()
        .map(|b| format!("{}={}", b.volume_id, b.device_name))
        .collect();
    if !devices.is_empty() {
        t.insert(DEVICES_TAG, devices.join(" "));
    }
    t.merge_user_tags(&instance.tags);
    // Volume tags come through CopyTagsFromSource, per snapshot; only when
    // no key collides with the set's tags, so the instance always wins.
    let mut notes = Vec::new();
    let colliding: HashSet<&str> = volumes
        .iter()
        .flat_map(|v| v.tags.iter().map(|(k, _)| k))
        .filter(|k| !ec2kit::is_reserved_key(k) && t.contains_key(k))
        .collect();
    let copy_volume_tags = colliding.is_empty() && volumes.iter().any(|v| !v.tags.is_empty());
    if !colliding.is_empty() {
        let mut keys: Vec<&str> = colliding.into_iter().collect();
        keys.sort();
        notes.push(format!(
            "volume tags not copied: keys also on the instance ({})",
            keys.join(", ")
        ));
    }
    (t, copy_volume_tags, notes)
}

/// Backs up every instance in `instances` (all in `region`): one
/// `CreateSnapshots` each, at most `concurrency` at a time; one failure
/// does not stop the others.
pub async fn backup_instances(
    ec2: &dyn Ec2,
    region: &Region,
    instances: &[Instance],
    options: &BackupOptions,
) -> Vec<BackupResult> {
    if instances.is_empty() {
        return Vec::new();
    }
    let done = match done_in_window(ec2, region, options).await {
        Ok(d) => d,
        Err(e) => return instances.iter().map(|i| failed(i, &e)).collect(),
    };
    // One DescribeVolumes for the whole region (filtered by instance),
    // for the volumes' own tags.
    let ids: Vec<String> = instances.iter().map(|i| i.id.to_string()).collect();
    let volumes = if ids.len() <= 199 {
        ec2.describe_volumes(region, &[Filter::new("attachment.instance-id", ids)])
            .await
    } else {
        ec2.describe_volumes(
            region,
            &[Filter::new("attachment.status", ["attached", "attaching"])],
        )
        .await
    };
    let volumes = match volumes {
        Ok(v) => v,
        Err(e) => return instances.iter().map(|i| failed(i, &e)).collect(),
    };
    let mut results: Vec<BackupResult> = stream::iter(instances)
        .map(|instance| {
            let done = &done;
            let volumes = &volumes;
            async move {
                let mut result = BackupResult {
                    region: region.clone(),
                    instance: Some(instance.id.clone()),
                    volume: None,
                    name: instance.name().map(str::to_owned),
                    status: BackupStatus::DryRunOk,
                    notes: Vec::new(),
                };
                let wanted = requested_volumes(instance, options);
                if let Some(prev) = done.covering(&wanted) {
                    result.status = BackupStatus::AlreadyDone { snapshots: prev };
                    return result;
                }
                let mine: Vec<&Volume> = volumes
                    .iter()
                    .filter(|v| v.attachments.iter().any(|a| a.instance_id == instance.id))
                    .collect();
                let set = uuid::Uuid::new_v4().simple().to_string();
                let (tags, copy, notes) = instance_tags(instance, &mine, options, &set);
                result.notes = notes;
                let request = CreateSnapshots {
                    instance_id: Some(instance.id.clone()),
                    exclude_boot_volume: options.exclude_boot,
                    exclude_data_volume_ids: options
                        .exclude_volumes
                        .iter()
                        .filter(|v| instance.block_devices.iter().any(|b| &b.volume_id == *v))
                        .cloned()
                        .collect(),
                    description: Some(description(instance.id.as_str(), instance.name(), options)),
                    tags,
                    copy_tags_from_volume: copy,
                    dry_run: options.dry_run,
                };
                result.status = match ec2.create_snapshots(region, &request).await {
                    Ok(snaps) => BackupStatus::Created {
                        set,
                        snapshots: snaps.into_iter().map(|s| s.id).collect(),
                    },
                    Err(e) if e.is_dry_run_ok() => BackupStatus::DryRunOk,
                    Err(e) => BackupStatus::Failed {
                        error: e.to_string(),
                        code: e.code.clone(),
                        snapshots: Vec::new(),
                    },
                };
                result
            }
        })
        .buffered(options.concurrency.max(1))
        .collect()
        .await;
    let made: Vec<(usize, String, Vec<VolumeId>)> = results
        .iter()
        .zip(instances)
        .enumerate()
        .filter_map(|(i, (r, instance))| match &r.status {
            BackupStatus::Created { set, .. } => {
                Some((i, set.clone(), requested_volumes(instance, options)))
            }
            _ => None,
        })
        .collect();
    settle_races(ec2, region, options, &mut results, &made).await;
    results
}

fn failed(instance: &Instance, e: &Ec2Error) -> BackupResult {
    BackupResult {
        region: instance.region.clone(),
        instance: Some(instance.id.clone()),
        volume: None,
        name: instance.name().map(str::to_owned),
        status: BackupStatus::Failed {
            error: e.to_string(),
            code: e.code.clone(),
            snapshots: Vec::new(),
        },
        notes: Vec::new(),
    }
}

/// Backs up single volumes (by id or config alias) with `CreateSnapshot`.
pub async fn backup_volumes(
    ec2: &dyn Ec2,
    region: &Region,
    volume_ids: &[VolumeId],
    options: &BackupOptions,
) -> Vec<BackupResult> {
    let fail = |v: &VolumeId, e: &Ec2Error| BackupResult {
        region: region.clone(),
        instance: None,
        volume: Some(v.clone()),
        name: None,
        status: BackupStatus::Failed {
            error: e.to_string(),
            code: e.code.clone(),
            snapshots: Vec::new(),
        },
        notes: Vec::new(),
    };
    let done = match done_in_window(ec2, region, options).await {
        Ok(d) => d,
        Err(e) => return volume_ids.iter().map(|v| fail(v, &e)).collect(),
    };
    let ids: Vec<String> = volume_ids.iter().map(|v| v.to_string()).collect();
    let volumes = match ec2
        .describe_volumes(region, &[Filter::new("volume-id", ids)])
        .await
    {
        Ok(v) => v,
        Err(e) => return volume_ids.iter().map(|v| fail(v, &e)).collect(),
    };
    let mut out = Vec::new();
    for id in volume_ids {
        let mut result = BackupResult {
            region: region.clone(),
            instance: None,
            volume: Some(id.clone()),
            name: None,
            status: BackupStatus::DryRunOk,
            notes: Vec::new(),
        };
        if let Some(prev) = done.of_volume(id) {
            result.status = BackupStatus::AlreadyDone { snapshots: prev };
            out.push(result);
            continue;
        }
        let Some(volume) = volumes.iter().find(|v| &v.id == id) else {
            result.status = BackupStatus::Failed {
                error: format!("volume {id} not found in {region}"),
                code: None,
                snapshots: Vec::new(),
            };
            out.push(result);
            continue;
        };
        let set = uuid::Uuid::new_v4().simple().to_string();
        let mut t = base_tags(region, options, &set);
        t.insert(tags::VOLUME, id.as_str());
        if let Some(a) = volume.attachments.first() {
            t.insert(tags::INSTANCE, a.instance_id.as_str());
            if let Some(d) = &a.device {
                t.insert(tags::DEVICE, d.clone());
            }
        }
        t.merge_user_tags(&volume.tags);
        result.name = volume.tags.get("Name").map(str::to_owned);
        let request = CreateSnapshot {
            volume_id: Some(id.clone()),
            description: Some(description(id.as_str(), result.name.as_deref(), options)),
            tags: t,
            dry_run: options.dry_run,
        };
        result.status = match ec2.create_snapshot(region, &request).await {
            Ok(s) => BackupStatus::Created {
                set,
                snapshots: vec![s.id],
            },
            Err(e) if e.is_dry_run_ok() => BackupStatus::DryRunOk,
            Err(e) => BackupStatus::Failed {
                error: e.to_string(),
                code: e.code.clone(),
                snapshots: Vec::new(),
            },
        };
        out.push(result);
    }
    let made: Vec<(usize, String, Vec<VolumeId>)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match (&r.status, &r.volume) {
            (BackupStatus::Created { set, .. }, Some(v)) => Some((i, set.clone(), vec![v.clone()])),
            _ => None,
        })
        .collect();
    settle_races(ec2, region, options, &mut out, &made).await;
    out
}
