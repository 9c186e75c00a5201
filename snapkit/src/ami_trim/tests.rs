use std::sync::{Arc, Mutex};

use ec2kit::{Action, ImageBlockDevice, Instance, LaunchTemplateImage, MockEc2};

use super::*;
use crate::retention::{Gfs, Logarithmic, PolicySpec};

fn image(n: u32, day: u32, owned: bool, state: &str) -> Image {
    let mut tags = Tags::new();
    if owned {
        tags.insert(tags::OWNER, tags::OWNER_VALUE);
    }
    Image {
        id: ImageId::from_api(format!("ami-{n:08x}")),
        region: Region::new("r"),
        name: Some(format!("ektool-web-{n}")),
        description: None,
        state: state.into(),
        architecture: None,
        root_device_name: None,
        virtualization_type: None,
        ena_support: None,
        creation_date: Some(format!("2026-01-{day:02}T00:00:00.000Z")),
        owner_id: None,
        block_devices: vec![ImageBlockDevice {
            device_name: "/dev/xvda".into(),
            snapshot_id: Some(SnapshotId::from_api(format!("snap-{n:08x}"))),
            volume_size_gib: None,
            volume_type: None,
            delete_on_termination: None,
        }],
        tags,
    }
}

fn keep_last(n: i64) -> Policies {
    let gfs = Gfs {
        keep_last: Some(n),
        ..Gfs::default()
    };
    Policies::new(PolicySpec::from_name("gfs", &Logarithmic::default(), &gfs).unwrap())
}

#[test]
fn the_ami_a_create_image_snapshot_was_made_for() {
    assert_eq!(
        created_for("Created by CreateImage(i-0abc) for ami-0123abcd from vol-1"),
        Some("ami-0123abcd")
    );
    assert_eq!(
        created_for("Created by CreateImage(i-0abc) for ami-0123abcd"),
        Some("ami-0123abcd")
    );
    assert_eq!(
        created_for("Copied for DestinationAmi ami-1 from SourceAmi ami-2"),
        None
    );
    assert_eq!(created_for("Created by CreateImage(i-0abc) for ami-"), None);
}

#[test]
fn families_match_like_ec2s_name_filter() {
    assert!(matches_family("ektool-web-*", "ektool-web-2026"));
    assert!(matches_family("ektool-web-*", "ektool-web-"));
    assert!(!matches_family("ektool-web-*", "ektool-db-1"));
    assert!(matches_family("a?c", "abc"));
    assert!(!matches_family("a?c", "ac"));
    assert!(matches_family("*", ""));
    assert!(!matches_family("exact", "exact-not"));
}

#[test]
fn create_image_tags_the_ami_and_its_snapshots_as_ektools() {
    let mut image = FromInstance {
        instance: InstanceId::from_api("i-0123456789abcdef0"),
        name: "ektool-web-1".into(),
        description: None,
        no_reboot: true,
        tag_snapshots: true,
        tags: Tags::new()
            .with("team", "web")
            .with("ektool:owner", "someone")
            .with("aws:x", "y"),
    };
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let r = image.request(now);
    assert_eq!(r.tags.get(tags::OWNER), Some(tags::OWNER_VALUE));
    assert_eq!(r.tags.get(tags::INSTANCE), Some("i-0123456789abcdef0"));
    assert_eq!(r.tags.get(tags::CREATED), Some("2027-01-15T08:00:00Z"));
    assert_eq!(r.tags.get("team"), Some("web"));
    assert_eq!(r.tags.get("aws:x"), None);
    assert_eq!(r.snapshot_tags, r.tags);
    assert!(r.no_reboot);
    image.tag_snapshots = false;
    assert!(image.request(now).snapshot_tags.is_empty());
}

#[tokio::test]
async fn from_instance_sends_one_create_image() {
    let mut ec2 = MockEc2::new();
    ec2.expect_create_image().times(1).returning(|_, r| {
        assert_eq!(r.name, "ektool-web-1");
        assert!(!r.snapshot_tags.is_empty());
        Ok(ImageId::from_api("ami-00000001"))
    });
    let image = FromInstance {
        instance: InstanceId::from_api("i-0123456789abcdef0"),
        name: "ektool-web-1".into(),
        description: None,
        no_reboot: false,
        tag_snapshots: true,
        tags: Tags::new(),
    };
    let id = from_instance(&ec2, &Region::new("r"), &image, false)
        .await
        .unwrap();
    assert_eq!(id.unwrap().as_str(), "ami-00000001");
}

/// Seven AMIs, keep the newest one by policy: the newest, a pending one,
/// one not ektool's, one an instance runs and one a launch template names
/// stay; the rest go.
#[tokio::test]
async fn the_plan_keeps_what_is_in_use_or_not_ours() {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_images().times(1).returning(|_, f| {
        assert!(f.is_empty(), "every AMI: orphans are checked against all");
        let mut stranger = image(9, 9, true, "available");
        stranger.name = Some("other-9".into());
        Ok(vec![
            image(1, 1, true, "available"),
            image(2, 2, true, "available"),
            image(3, 3, false, "available"),
            image(4, 4, true, "available"),
            image(5, 5, true, "available"),
            image(6, 6, true, "pending"),
            image(7, 7, true, "available"),
            // A filter the server ignored: not of the family.
            stranger,
        ])
    });
    ec2.expect_describe_instances()
        .times(1)
        .returning(|region, f| {
            assert_eq!(f[0].name, "instance-state-name");
            assert!(f[0].values.contains(&"stopped".to_owned()));
            let mut i = Instance::new(InstanceId::from_api("i-00000001"), region.clone());
            i.image_id = Some("ami-00000004".into());
            i.state = "stopped".into();
            Ok(vec![i])
        });
    ec2.expect_launch_template_images().times(1).returning(|_| {
        Ok(vec![LaunchTemplateImage {
            template_id: "lt-1".into(),
            template_name: Some("web".into()),
            version: 3,
            image: "ami-00000005".into(),
        }])
    });
    ec2.expect_describe_snapshots().times(1).returning(|_, f| {
        assert_eq!(f, [Filter::new("tag:ektool:owner", ["ektool"])]);
        let s = |id: &str, description: &str, owned: bool| {
            let mut s = Snapshot::new(
                SnapshotId::from_api(id),
                None,
                jiff::Timestamp::UNIX_EPOCH,
                SnapshotState::Completed,
            );
            s.description = Some(description.into());
            if owned {
                s.tags.insert(tags::OWNER, tags::OWNER_VALUE);
            }
            s
        };
        Ok(vec![
            // Its AMI is gone: an orphan.
            s(
                "snap-000000a1",
                "Created by CreateImage(i-1) for ami-000000aa from vol-1",
                true,
            ),
            // Its AMI (of another family) is registered.
            s(
                "snap-000000a2",
                "Created by CreateImage(i-1) for ami-00000009",
                true,
            ),
            // Not ektool's (a filter the server ignored).
            s(
                "snap-000000a3",
                "Created by CreateImage(i-1) for ami-000000bb",
                false,
            ),
            // A backup, not an AMI's.
            s("snap-000000a4", "daily backup", true),
        ])
    });
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let plan = plan(
        &ec2,
        &Region::new("r"),
        "ektool-web-*",
        &keep_last(1),
        Scope::Owned,
        now,
    )
    .await
    .unwrap();
    let got: Vec<(String, Verdict, String)> = plan
        .decisions
        .iter()
        .map(|d| (d.image.to_string(), d.action, d.reason.to_string()))
        .collect();
    let want = [
        ("ami-00000001", Verdict::Delete, "no keep rule wants it"),
        ("ami-00000002", Verdict::Delete, "no keep rule wants it"),
        ("ami-00000003", Verdict::Keep, "guard: not made by ektool"),
        (
            "ami-00000004",
            Verdict::Keep,
            "guard: used by instance i-00000001 (stopped)",
        ),
        (
            "ami-00000005",
            Verdict::Keep,
            "guard: used by launch template web version 3",
        ),
        ("ami-00000006", Verdict::Keep, "guard: pending"),
        ("ami-00000007", Verdict::Keep, "last snapshot"),
    ];
    let want: Vec<(String, Verdict, String)> = want
        .iter()
        .map(|(a, v, r)| ((*a).to_owned(), *v, (*r).to_owned()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(plan.deregistrations().count(), 2);
    assert_eq!(
        plan.decisions[0].snapshots,
        [SnapshotId::from_api("snap-00000001")]
    );
    assert_eq!(
        plan.orphans,
        [Orphan {
            snapshot: SnapshotId::from_api("snap-000000a1"),
            image: "ami-000000aa".into(),
        }]
    );
}

#[tokio::test]
async fn apply_deregisters_then_deletes_the_snapshots_and_spares_those_of_a_failure() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut ec2 = MockEc2::new();
    let c = calls.clone();
    ec2.expect_deregister_image()
        .returning(move |region, id, _| {
            c.lock().unwrap().push(format!("deregister {id}"));
            match id.as_str() {
                "ami-00000002" => Err(Ec2Error::from_code(
                    Action::DeregisterImage,
                    region.as_str(),
                    "UnauthorizedOperation",
                    None,
                )),
                "ami-00000003" => Err(Ec2Error::from_code(
                    Action::DeregisterImage,
                    region.as_str(),
                    "InvalidAMIID.NotFound",
                    None,
                )),
                _ => Ok(()),
            }
        });
    let c = calls.clone();
    ec2.expect_delete_snapshot()
        .returning(move |region, id, _| {
            c.lock().unwrap().push(format!("delete {id}"));
            if id.as_str() == "snap-00000003" {
                return Err(Ec2Error::from_code(
                    Action::DeleteSnapshot,
                    region.as_str(),
                    "InvalidSnapshot.NotFound",
                    None,
                ));
            }
            Ok(())
        });
    let images: Vec<Image> = (1..=4).map(|n| image(n, n, true, "available")).collect();
    let mut plan = plan_images(
        &Region::new("r"),
        "ektool-web-*",
        &images,
        &BTreeMap::new(),
        &keep_last(1),
        Scope::Owned,
        jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    );
    assert_eq!(plan.deregistrations().count(), 3);
    plan.orphans = vec![Orphan {
        snapshot: SnapshotId::from_api("snap-000000a1"),
        image: "ami-000000aa".into(),
    }];
    let report = apply(&ec2, &plan, &|_| {}).await;
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "deregister ami-00000001",
            "delete snap-00000001",
            "deregister ami-00000002",
            "deregister ami-00000003",
            "delete snap-00000003",
            "delete snap-000000a1",
        ]
    );
    assert_eq!(
        report.orphans_deleted,
        [SnapshotId::from_api("snap-000000a1")]
    );
    assert_eq!(
        (
            report.deregistered(),
            report.deleted_snapshots(),
            report.failed()
        ),
        (2, 2, 1)
    );
    // Keeps are never sent.
    for d in &mut plan.decisions {
        d.action = Verdict::Keep;
    }
    plan.orphans.clear();
    calls.lock().unwrap().clear();
    assert!(apply(&ec2, &plan, &|_| {}).await.results.is_empty());
    assert!(calls.lock().unwrap().is_empty());
}
