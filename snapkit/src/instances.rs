//! Instance chores (the seed's `instances.py`): termination protection by
//! tag, instance tags onto their volumes, launching from an AMI, reboots.
//! Each change is planned first, so `--dry-run` shows exactly what would
//! be modified.

use std::collections::BTreeSet;

use ec2kit::requests::RunInstances;
use ec2kit::{
    Ec2, Ec2Error, Filter, ImageId, Instance, InstanceId, Region, Tag, Tags, VolumeId,
    is_reserved_key,
};
use serde::Serialize;

use crate::lineage::tags;

/// What [`with_reservations`] calls.
pub const WITH_RESERVATIONS_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeInstances]);

/// What [`plan_protection`] and [`apply_protection`] call.
pub const PROTECTION_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeInstanceAttribute,
    ec2kit::Action::ModifyInstanceAttribute,
]);

/// What [`plan_volume_tags`] and [`apply_volume_tags`] call.
pub const VOLUME_TAGS_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeVolumes, ec2kit::Action::CreateTags]);

/// What [`launch`] calls.
pub const LAUNCH_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::RunInstances,
    ec2kit::Action::ModifyInstanceAttribute,
])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// The instances `ids` plus every other instance of their reservations
/// (the seed's `update_volumes_tags` worked per reservation).
pub async fn with_reservations(
    ec2: &dyn Ec2,
    region: &Region,
    ids: &[InstanceId],
) -> Result<Vec<Instance>, Ec2Error> {
    let named = ec2
        .describe_instances(
            region,
            &[Filter::new("instance-id", ids.iter().map(|i| i.as_str()))],
        )
        .await?;
    let reservations: BTreeSet<&str> = named
        .iter()
        .filter_map(|i| i.reservation_id.as_deref())
        .collect();
    if reservations.is_empty() {
        return Ok(named);
    }
    // Grouped here rather than with a `reservation-id` filter, which not
    // every EC2 implementation (moto, for one) supports.
    let mut all: Vec<Instance> = ec2
        .describe_instances(
            region,
            &[Filter::new(
                "instance-state-name",
                ec2kit::fleet::LIVE_STATES.iter().copied(),
            )],
        )
        .await?
        .into_iter()
        .filter(|i| {
            i.reservation_id
                .as_deref()
                .is_some_and(|r| reservations.contains(r))
        })
        .collect();
    for i in named {
        if !all.iter().any(|a| a.id == i.id) {
            all.push(i);
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

/// Termination protection for one instance: on when it carries the
/// production tag; off for the others only when asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Protection {
    /// The instance.
    pub instance: InstanceId,
    /// Its `Name` tag.
    pub name: Option<String>,
    /// Protection now.
    pub current: bool,
    /// Protection wanted.
    pub wanted: bool,
}

impl Protection {
    /// Whether applying changes something.
    pub fn changes(&self) -> bool {
        self.current != self.wanted
    }
}

/// Plans termination protection for `instances`: on for every instance
/// carrying `production`. The others keep theirs (an instance protected on
/// purpose stays protected) unless `unprotect_others`, which turns it off
/// for them (the seed's modify_instance_termination did so always).
pub async fn plan_protection(
    ec2: &dyn Ec2,
    region: &Region,
    instances: &[Instance],
    production: &Tag,
    unprotect_others: bool,
) -> Result<Vec<Protection>, Ec2Error> {
    let mut out = Vec::new();
    for i in instances {
        let current = ec2.termination_protection(region, &i.id).await?;
        let tagged = i.tags.matches(production);
        out.push(Protection {
            current,
            wanted: tagged || (current && !unprotect_others),
            name: i.name().map(str::to_owned),
            instance: i.id.clone(),
        });
    }
    Ok(out)
}

/// Applies the changing lines of a protection plan; per-instance results.
pub async fn apply_protection(
    ec2: &dyn Ec2,
    region: &Region,
    plan: &[Protection],
) -> Vec<(InstanceId, Result<(), Ec2Error>)> {
    let mut out = Vec::new();
    for p in plan.iter().filter(|p| p.changes()) {
        let r = ec2
            .set_termination_protection(region, &p.instance, p.wanted, false)
            .await;
        out.push((p.instance.clone(), r));
    }
    out
}

/// Tags to write on one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeTags {
    /// The volume.
    pub volume: VolumeId,
    /// The instance it is attached to.
    pub instance: InstanceId,
    /// Tags that are missing or differ on the volume.
    pub set: Tags,
}

/// Plans copying each instance's user tags (not `aws:*`, not ektool's own)
/// onto its attached volumes; volumes already carrying them are left out.
pub async fn plan_volume_tags(
    ec2: &dyn Ec2,
    region: &Region,
    instances: &[Instance],
) -> Result<Vec<VolumeTags>, Ec2Error> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let volumes = ec2
        .describe_volumes(
            region,
            &[Filter::new(
                "attachment.instance-id",
                instances.iter().map(|i| i.id.as_str()),
            )],
        )
        .await?;
    let mut out = Vec::new();
    for v in volumes {
        let Some(instance) = v
            .attachments
            .iter()
            .find_map(|a| instances.iter().find(|i| i.id == a.instance_id))
        else {
            continue;
        };
        let mut set = Tags::new();
        for (k, val) in instance.tags.iter() {
            if !is_reserved_key(k) && !k.starts_with("ektool:") && v.tags.get(k) != Some(val) {
                set.insert(k, val);
            }
        }
        if !set.is_empty() {
            out.push(VolumeTags {
                volume: v.id.clone(),
                instance: instance.id.clone(),
                set,
            });
        }
    }
    out.sort_by(|a, b| a.volume.cmp(&b.volume));
    Ok(out)
}

/// Applies a volume-tag plan: one `CreateTags` per volume.
pub async fn apply_volume_tags(
    ec2: &dyn Ec2,
    region: &Region,
    plan: &[VolumeTags],
) -> Vec<(VolumeId, Result<(), Ec2Error>)> {
    let mut out = Vec::new();
    for p in plan {
        let r = ec2
            .create_tags(region, &[p.volume.to_string()], &p.set, false)
            .await;
        out.push((p.volume.clone(), r));
    }
    out
}

/// What to launch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Launch {
    /// The AMI.
    pub image: Option<ImageId>,
    /// Instance type.
    pub instance_type: String,
    /// How many.
    pub count: i32,
    /// Key pair name.
    pub key_name: Option<String>,
    /// Security groups (ids). None given: the VPC's default group; ektool
    /// never creates a group, least of all one open to the world.
    pub security_group_ids: Vec<String>,
    /// Subnet.
    pub subnet_id: Option<String>,
    /// The primary private IPv4 address (one instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<std::net::Ipv4Addr>,
    /// User data (raw; encoded by the EC2 client).
    #[serde(skip)]
    pub user_data: Option<Vec<u8>>,
    /// Tags for the instances (and their volumes).
    pub tags: Tags,
}

/// Launches instances, tagged as made by ektool, then sets termination
/// protection from the production tag.
pub async fn launch(
    ec2: &dyn Ec2,
    region: &Region,
    launch: &Launch,
    production: &Tag,
    dry_run: bool,
) -> Result<Vec<Instance>, Ec2Error> {
    let mut t = launch.tags.clone();
    t.insert(tags::OWNER, tags::OWNER_VALUE);
    let request = RunInstances {
        image_id: launch.image.clone(),
        instance_type: launch.instance_type.clone(),
        count: launch.count.max(1),
        key_name: launch.key_name.clone(),
        security_group_ids: launch.security_group_ids.clone(),
        subnet_id: launch.subnet_id.clone(),
        private_ip: launch.private_ip,
        availability_zone: None,
        user_data: launch.user_data.clone(),
        client_token: Some(uuid::Uuid::new_v4().simple().to_string()),
        tags: t,
        dry_run,
    };
    let instances = ec2.run_instances(region, &request).await?;
    for i in &instances {
        if i.tags.matches(production) || launch.tags.matches(production) {
            ec2.set_termination_protection(region, &i.id, true, false)
                .await?;
        }
    }
    Ok(instances)
}

#[cfg(test)]
mod tests {
    use ec2kit::{MockEc2, Volume, VolumeAttachment};

    use super::*;

    fn instance(id: &str, tags: Tags) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "region": "eu-west-1", "availability_zone": null, "state": "running",
            "instance_type": null, "architecture": null, "root_device_name": null,
            "virtualization_type": null, "ena_support": null, "image_id": null, "key_name": null,
            "private_ip": null, "public_ip": null, "public_dns": null, "launch_time": null,
            "reservation_id": "r-1", "block_devices": [], "tags": {}
        }))
        .unwrap();
        i.tags = tags;
        i
    }

    #[tokio::test]
    async fn protection_is_turned_on_by_the_tag_and_off_only_when_asked() {
        let prod = Tag::new("Earmarking", "production");
        let a = instance("i-0000000a", Tags::new().with("Earmarking", "production"));
        let b = instance("i-0000000b", Tags::new().with("Earmarking", "staging"));
        let c = instance("i-0000000c", Tags::new().with("Earmarking", "production"));
        let mut ec2 = MockEc2::new();
        ec2.expect_termination_protection()
            .returning(|_, id| Ok(id.as_str() != "i-0000000a"));
        let set = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = set.clone();
        ec2.expect_set_termination_protection()
            .returning(move |_, id, on, _| {
                s.lock().unwrap().push((id.to_string(), on));
                Ok(())
            });
        let r = Region::new("eu-west-1");
        let all = [a, b, c];
        // By default b, untagged but protected on purpose, stays protected.
        let plan = plan_protection(&ec2, &r, &all, &prod, false).await.unwrap();
        let changes: Vec<(&str, bool)> = plan
            .iter()
            .filter(|p| p.changes())
            .map(|p| (p.instance.as_str(), p.wanted))
            .collect();
        assert_eq!(changes, [("i-0000000a", true)]);
        let plan = plan_protection(&ec2, &r, &all, &prod, true).await.unwrap();
        let changes: Vec<(&str, bool)> = plan
            .iter()
            .filter(|p| p.changes())
            .map(|p| (p.instance.as_str(), p.wanted))
            .collect();
        assert_eq!(changes, [("i-0000000a", true), ("i-0000000b", false)]);
        apply_protection(&ec2, &r, &plan).await;
        assert_eq!(
            *set.lock().unwrap(),
            [
                ("i-0000000a".to_owned(), true),
                ("i-0000000b".to_owned(), false)
            ]
        );
    }

    #[tokio::test]
    async fn volume_tags_skip_reserved_own_and_equal_tags() {
        let i = instance(
            "i-0000000a",
            Tags::new()
                .with("Name", "web")
                .with("team", "ops")
                .with("aws:cloudformation:stack-name", "s")
                .with("ektool:owner", "ektool"),
        );
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_volumes().returning(|_, _| {
            let v = |id: &str, tags: Tags| -> Volume {
                let mut v: Volume = serde_json::from_value(serde_json::json!({
                    "id": id, "region": "eu-west-1", "availability_zone": null, "state": "in-use",
                    "size_gib": null, "volume_type": null, "encrypted": false, "kms_key_id": null,
                    "snapshot_id": null, "create_time": null, "attachments": [], "tags": {}
                }))
                .unwrap();
                v.attachments = vec![
                    serde_json::from_value::<VolumeAttachment>(serde_json::json!({
                        "instance_id": "i-0000000a", "device": "/dev/sdf", "state": "attached"
                    }))
                    .unwrap(),
                ];
                v.tags = tags;
                v
            };
            Ok(vec![
                v(
                    "vol-0000000a",
                    Tags::new().with("Name", "web").with("team", "ops"),
                ),
                v("vol-0000000b", Tags::new().with("Name", "old")),
            ])
        });
        let plan = plan_volume_tags(&ec2, &Region::new("eu-west-1"), &[i])
            .await
            .unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].volume.as_str(), "vol-0000000b");
        let keys: Vec<(&str, &str)> = plan[0].set.iter().collect();
        assert_eq!(keys, [("Name", "web"), ("team", "ops")]);
    }
}
