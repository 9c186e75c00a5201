//! AMIs from snapshots (the seed's `create_ami` and
//! `create_and_distribute_ami`), done right: siblings found by snapshot set
//! (or same instance within a window, nearest in time per device), root
//! device and architecture from the lineage tags, HVM with ENA, no access
//! key id in the name, tags copied; copies to other regions idempotent by
//! tag and client token.

use std::collections::BTreeMap;
use std::time::Duration;

use ec2kit::requests::{CopyImage, RegisterImage};
use ec2kit::{
    Ec2, Ec2Error, Filter, ImageBlockDevice, ImageId, Region, Snapshot, SnapshotId, SnapshotState,
    Tags, is_reserved_key,
};
use serde::Serialize;

use crate::backup::device_of;
use crate::lineage::{SeedDescription, tags};

/// What making an AMI calls: [`plan`] and [`create`].
pub const CREATE_PERMISSIONS: ec2kit::iam::Permissions = ec2kit::iam::Permissions::calls(&[
    ec2kit::Action::DescribeSnapshots,
    ec2kit::Action::RegisterImage,
])
.implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// What [`copy`] calls.
pub const COPY_PERMISSIONS: ec2kit::iam::Permissions =
    ec2kit::iam::Permissions::calls(&[ec2kit::Action::DescribeImages, ec2kit::Action::CopyImage])
        .implied(&[ec2kit::iam::TAG_ON_CREATE]);

/// Choices for [`plan`], each overriding what the lineage tags say.
#[derive(Debug, Clone)]
pub struct AmiOptions {
    /// The AMI name (default `ektool-<instance>-<time of the snapshot>`).
    pub name: Option<String>,
    /// Root device name (default: the `ektool:root-device` tag).
    pub root_device: Option<String>,
    /// Architecture (default: the `ektool:architecture` tag, else x86_64).
    pub architecture: Option<String>,
    /// Virtualization type (`hvm`).
    pub virtualization: String,
    /// ENA support (on: every current instance type wants it).
    pub ena: bool,
    /// Snapshots of the same instance taken this close to the root one
    /// join it when they share no snapshot set (the seed's 10 minutes).
    pub sibling_window: Duration,
    /// Only the root snapshot, no siblings.
    pub root_only: bool,
}

impl Default for AmiOptions {
    fn default() -> Self {
        Self {
            name: None,
            root_device: None,
            architecture: None,
            virtualization: "hvm".into(),
            ena: true,
            sibling_window: Duration::from_secs(600),
            root_only: false,
        }
    }
}

/// Why an AMI cannot be made from a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmiError {
    /// An EC2 call failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// No such snapshot in the region.
    #[error("snapshot {0} not found in {1}")]
    NotFound(SnapshotId, Region),
    /// Only completed snapshots can back an AMI.
    #[error("snapshot {id} is {state:?}, not completed")]
    NotCompleted {
        /// The snapshot.
        id: SnapshotId,
        /// Its state.
        state: SnapshotState,
    },
    /// The root device name is not known.
    #[error("the root device of {0} is unknown: pass a root device name (e.g. /dev/xvda)")]
    NoRootDevice(SnapshotId),
    /// The snapshot was not the root volume.
    #[error(
        "snapshot {id} was taken of {device}, not of the root device {root}: pass the root device name to use it as root anyway"
    )]
    NotRoot {
        /// The snapshot.
        id: SnapshotId,
        /// The device it was attached as.
        device: String,
        /// The instance's root device.
        root: String,
    },
    /// The name is not a valid AMI name.
    #[error(
        "invalid AMI name {0:?}: 3 to 128 characters of letters, digits, ( ) [ ] space . / - ' @ _"
    )]
    InvalidName(String),
}

/// An AMI registration, as a reviewable value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmiPlan {
    /// Region.
    pub region: Region,
    /// The root snapshot.
    pub root: SnapshotId,
    /// The request (block devices, root device, tags).
    pub request: RegisterImage,
    /// What was inferred, and from where.
    pub notes: Vec<String>,
}

/// Whether `name` is a valid AMI name.
pub fn valid_name(name: &str) -> bool {
    (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c))
}

fn seed(s: &Snapshot) -> SeedDescription {
    s.description
        .as_deref()
        .and_then(SeedDescription::parse)
        .unwrap_or_default()
}

fn device(s: &Snapshot) -> Option<String> {
    device_of(s).or_else(|| seed(s).device)
}

/// Plans an AMI from root snapshot `id` in `region` and its siblings.
pub async fn plan(
    ec2: &dyn Ec2,
    region: &Region,
    id: &SnapshotId,
    options: &AmiOptions,
) -> Result<AmiPlan, AmiError> {
    let root = ec2
        .describe_snapshots(region, &[Filter::new("snapshot-id", [id.as_str()])])
        .await?
        .into_iter()
        .find(|s| &s.id == id)
        .ok_or_else(|| AmiError::NotFound(id.clone(), region.clone()))?;
    if root.state != SnapshotState::Completed {
        return Err(AmiError::NotCompleted {
            id: root.id,
            state: root.state,
        });
    }
    let mut notes = Vec::new();
    let desc = seed(&root);
    let root_device = match (
        &options.root_device,
        root.tags.get(tags::ROOT_DEVICE),
        &desc.root_dev_name,
    ) {
        (Some(r), _, _) => r.clone(),
        (None, Some(r), _) => r.to_owned(),
        (None, None, Some(r)) => {
            notes.push(format!("root device {r} from the seed description"));
            r.clone()
        }
        (None, None, None) => return Err(AmiError::NoRootDevice(root.id)),
    };
    if options.root_device.is_none()
        && let Some(d) = device(&root)
        && d != root_device
    {
        return Err(AmiError::NotRoot {
            id: root.id,
            device: d,
            root: root_device,
        });
    }
    let architecture = options
        .architecture
        .clone()
        .or_else(|| root.tags.get(tags::ARCHITECTURE).map(str::to_owned))
        .or(desc.arch.clone())
        .unwrap_or_else(|| {
            notes.push("architecture unknown: x86_64 assumed".into());
            "x86_64".into()
        });
    let instance = root
        .tags
        .get(tags::INSTANCE)
        .map(str::to_owned)
        .or(desc.instance.clone());

    let mut devices: BTreeMap<String, Snapshot> = BTreeMap::new();
    if !options.root_only {
        for s in siblings(ec2, region, &root, instance.as_deref(), options).await? {
            let Some(d) = device(&s) else { continue };
            if d == root_device {
                continue;
            }
            // Several candidates for one device: the nearest in time to the
            // root wins (the seed took the oldest).
            let gap = |x: &Snapshot| (x.start_time.as_second() - root.start_time.as_second()).abs();
            match devices.get(&d) {
                Some(have) if gap(have) <= gap(&s) => {}
                _ => {
                    devices.insert(d, s);
                }
            }
        }
    }
    let mut block_devices = vec![ImageBlockDevice {
        device_name: root_device.clone(),
        snapshot_id: Some(root.id.clone()),
        volume_size_gib: None,
        volume_type: None,
        delete_on_termination: Some(true),
    }];
    for (d, s) in &devices {
        notes.push(format!("{d}: sibling {}", s.id));
        block_devices.push(ImageBlockDevice {
            device_name: d.clone(),
            snapshot_id: Some(s.id.clone()),
            volume_size_gib: None,
            volume_type: None,
            delete_on_termination: Some(true),
        });
    }
    let name = match &options.name {
        Some(n) => n.clone(),
        None => format!(
            "ektool-{}-{}",
            instance.as_deref().unwrap_or(root.id.as_str()),
            root.start_time.strftime("%Y%m%dT%H%M%SZ")
        ),
    };
    if !valid_name(&name) {
        return Err(AmiError::InvalidName(name));
    }
    let mut t = Tags::new();
    for (k, v) in root.tags.iter() {
        if !is_reserved_key(k) && !k.starts_with("ektool:") {
            t.insert(k, v);
        }
    }
    t.insert(tags::OWNER, tags::OWNER_VALUE);
    t.insert(tags::SOURCE_SNAPSHOT, root.id.as_str());
    if let Some(i) = &instance {
        t.insert(tags::INSTANCE, i.as_str());
    }
    Ok(AmiPlan {
        region: region.clone(),
        root: root.id.clone(),
        request: RegisterImage {
            name,
            description: Some(format!(
                "ektool AMI from {} taken {}",
                root.id, root.start_time
            )),
            architecture: Some(architecture),
            root_device_name: Some(root_device),
            virtualization_type: Some(options.virtualization.clone()),
            ena_support: Some(options.ena),
            block_devices,
            tags: t,
            dry_run: false,
        },
        notes,
    })
}

/// Completed snapshots taken together with `root`: the same snapshot set,
/// else the same instance within the window.
async fn siblings(
    ec2: &dyn Ec2,
    region: &Region,
    root: &Snapshot,
    instance: Option<&str>,
    options: &AmiOptions,
) -> Result<Vec<Snapshot>, Ec2Error> {
    let filter = if let Some(set) = root.tags.get(tags::SET) {
        Filter::new(format!("tag:{}", tags::SET), [set])
    } else if let Some(i) = instance {
        Filter::new(format!("tag:{}", tags::INSTANCE), [i])
    } else {
        return Ok(Vec::new());
    };
    let window = i64::try_from(options.sibling_window.as_secs()).unwrap_or(i64::MAX);
    let same_set = root.tags.get(tags::SET);
    Ok(ec2
        .describe_snapshots(region, &[filter, Filter::new("status", ["completed"])])
        .await?
        .into_iter()
        .filter(|s| {
            s.id != root.id
                && s.state == SnapshotState::Completed
                // Copies pair with copies, originals with originals.
                && s.tags.contains_key(tags::SOURCE_SNAPSHOT)
                    == root.tags.contains_key(tags::SOURCE_SNAPSHOT)
                && match same_set {
                    Some(set) => s.tags.get(tags::SET) == Some(set),
                    None => (s.start_time.as_second() - root.start_time.as_second()).abs() <= window,
                }
        })
        .collect())
}

/// Registers the planned AMI.
pub async fn create(ec2: &dyn Ec2, plan: &AmiPlan) -> Result<ImageId, Ec2Error> {
    ec2.register_image(&plan.region, &plan.request).await
}

/// What copying an AMI into one region did (or would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AmiCopy {
    /// A copy exists already (found by its source-image tag).
    Present {
        /// The copy.
        image: ImageId,
    },
    /// Would copy (dry run).
    Planned,
    /// Copy started.
    Started {
        /// The new AMI.
        image: ImageId,
    },
    /// Failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// Copies AMI `image` of `from` into each of `to`, unless a copy is there
/// already. The client token makes a retried request idempotent too.
pub async fn copy(
    ec2: &dyn Ec2,
    from: &Region,
    image: &ImageId,
    to: &[Region],
    dry_run: bool,
) -> Result<Vec<(Region, AmiCopy)>, AmiError> {
    let source = ec2
        .describe_images(from, &[Filter::new("image-id", [image.as_str()])])
        .await?
        .into_iter()
        .find(|i| &i.id == image)
        .ok_or_else(|| {
            AmiError::Ec2(Ec2Error::from_code(
                ec2kit::Action::DescribeImages,
                from.as_str(),
                "InvalidAMIID.NotFound",
                Some(format!("no AMI {image} owned by this account in {from}")),
            ))
        })?;
    let mut out = Vec::new();
    for region in to.iter().filter(|r| *r != from) {
        // AMI names are unique per region and account, and copies keep the
        // source's name: a name match finds a copy even where tags at
        // creation were not applied; the tag finds renamed ones.
        let by_name = match &source.name {
            Some(name) => {
                ec2.describe_images(region, &[Filter::new("name", [name.as_str()])])
                    .await
            }
            None => Ok(Vec::new()),
        };
        let existing = match by_name {
            Ok(found) if !found.is_empty() => Ok(found),
            _ => {
                ec2.describe_images(
                    region,
                    &[Filter::new(
                        format!("tag:{}", tags::SOURCE_IMAGE),
                        [image.as_str()],
                    )],
                )
                .await
            }
        };
        let result = match existing {
            Err(e) => AmiCopy::Failed {
                error: e.to_string(),
            },
            Ok(found) if !found.is_empty() => AmiCopy::Present {
                image: found[0].id.clone(),
            },
            Ok(_) if dry_run => AmiCopy::Planned,
            Ok(_) => {
                let mut t = Tags::new();
                t.merge_user_tags(&source.tags);
                t.insert(tags::OWNER, tags::OWNER_VALUE);
                t.insert(tags::SOURCE_IMAGE, image.as_str());
                t.insert(tags::SOURCE_REGION, from.as_str());
                let request = CopyImage {
                    source_region: Some(from.clone()),
                    source_image_id: Some(image.clone()),
                    name: source.name.clone().unwrap_or_else(|| image.to_string()),
                    description: source.description.clone(),
                    encrypted: false,
                    kms_key_id: None,
                    client_token: Some(format!("ektool-{image}-{region}")),
                    tags: t,
                    dry_run: false,
                };
                match ec2.copy_image(region, &request).await {
                    Ok(image) => AmiCopy::Started { image },
                    Err(e) => AmiCopy::Failed {
                        error: e.to_string(),
                    },
                }
            }
        };
        out.push((region.clone(), result));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ec2kit::MockEc2;

    use super::*;

    fn snap(id: &str, device: &str, minutes: i64, set: Option<&str>) -> Snapshot {
        let mut s = Snapshot::new(
            SnapshotId::from_api(id),
            None,
            jiff::Timestamp::from_second(1_700_000_000 + minutes * 60).unwrap(),
            SnapshotState::Completed,
        );
        s.tags = Tags::new()
            .with(tags::OWNER, tags::OWNER_VALUE)
            .with(tags::INSTANCE, "i-0000000a")
            .with(tags::DEVICE, device)
            .with(tags::ROOT_DEVICE, "/dev/xvda")
            .with(tags::ARCHITECTURE, "arm64")
            .with("Name", "web")
            .with("aws:backup:source", "x");
        if let Some(set) = set {
            s.tags.insert(tags::SET, set);
        }
        s
    }

    fn ec2_with(snaps: Vec<Snapshot>) -> MockEc2 {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_snapshots()
            .returning(move |_, filters| {
                let by_id = filters.iter().find(|f| f.name == "snapshot-id");
                Ok(snaps
                    .iter()
                    .filter(|s| by_id.is_none_or(|f| f.values.contains(&s.id.to_string())))
                    .cloned()
                    .collect())
            });
        ec2
    }

    #[tokio::test]
    async fn siblings_nearest_in_time_per_device_join_the_root() {
        let ec2 = ec2_with(vec![
            snap("snap-00000001", "/dev/xvda", 0, None),
            snap("snap-00000002", "/dev/sdf", 3, None),
            // Same device, further away: the nearer one wins.
            snap("snap-00000003", "/dev/sdf", -8, None),
            // Outside the window.
            snap("snap-00000004", "/dev/sdg", 30, None),
            snap("snap-00000005", "/dev/sdh", -9, None),
        ]);
        let r = Region::new("eu-west-1");
        let p = plan(
            &ec2,
            &r,
            &SnapshotId::from_api("snap-00000001"),
            &AmiOptions::default(),
        )
        .await
        .unwrap();
        let devices: Vec<(&str, &str)> = p
            .request
            .block_devices
            .iter()
            .map(|b| {
                (
                    b.device_name.as_str(),
                    b.snapshot_id.as_ref().unwrap().as_str(),
                )
            })
            .collect();
        assert_eq!(
            devices,
            [
                ("/dev/xvda", "snap-00000001"),
                ("/dev/sdf", "snap-00000002"),
                ("/dev/sdh", "snap-00000005"),
            ]
        );
        assert_eq!(p.request.root_device_name.as_deref(), Some("/dev/xvda"));
        assert_eq!(p.request.architecture.as_deref(), Some("arm64"));
        assert_eq!(p.request.virtualization_type.as_deref(), Some("hvm"));
        assert_eq!(p.request.ena_support, Some(true));
        assert_eq!(p.request.name, "ektool-i-0000000a-20231114T221320Z");
        assert_eq!(p.request.tags.get("Name"), Some("web"));
        assert!(p.request.tags.get("aws:backup:source").is_none());
        assert!(!p.request.name.contains("AKIA"));
    }

    #[tokio::test]
    async fn a_snapshot_set_beats_the_time_window() {
        let ec2 = ec2_with(vec![
            snap("snap-00000001", "/dev/xvda", 0, Some("set-a")),
            snap("snap-00000002", "/dev/sdf", 0, Some("set-a")),
            // Nearer in time, but another set.
            snap("snap-00000003", "/dev/sdf", 0, Some("set-b")),
            snap("snap-00000004", "/dev/sdg", 0, Some("set-b")),
        ]);
        let p = plan(
            &ec2,
            &Region::new("eu-west-1"),
            &SnapshotId::from_api("snap-00000001"),
            &AmiOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(p.request.block_devices.len(), 2);
        assert_eq!(
            p.request.block_devices[1]
                .snapshot_id
                .as_ref()
                .unwrap()
                .as_str(),
            "snap-00000002"
        );
    }

    #[tokio::test]
    async fn a_data_volume_is_not_a_root_and_bad_names_are_refused() {
        let ec2 = ec2_with(vec![
            snap("snap-00000001", "/dev/xvda", 0, None),
            snap("snap-00000002", "/dev/sdf", 0, None),
        ]);
        let r = Region::new("eu-west-1");
        let err = plan(
            &ec2,
            &r,
            &SnapshotId::from_api("snap-00000002"),
            &AmiOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AmiError::NotRoot { .. }), "{err}");
        let opts = AmiOptions {
            name: Some("no:colons".into()),
            ..AmiOptions::default()
        };
        let err = plan(&ec2, &r, &SnapshotId::from_api("snap-00000001"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, AmiError::InvalidName(_)), "{err}");
    }
}
