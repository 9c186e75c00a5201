//! `AwsEc2` against moto.

use ec2kit::requests::{CopySnapshot, CreateSnapshot, CreateSnapshots, RunInstances};
use ec2kit::{
    AwsEc2, AwsEc2Options, Ec2, ErrorKind, Filter, RateLimits, Region, SnapshotId, SnapshotState,
    Tag, Tags, fleet,
};
use ektool_tests::{Fault, FaultProxy, moto_url, tempdir, unique};

use crate::{in_child, rerun_in_child};

async fn ec2() -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await
}

async fn launch(ec2: &AwsEc2, region: &Region, count: i32, tags: Tags) -> Vec<ec2kit::Instance> {
    ec2.run_instances(
        region,
        &RunInstances {
            image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
            instance_type: "t3.micro".into(),
            count,
            tags,
            ..Default::default()
        },
    )
    .await
    .expect("run instances")
}

#[tokio::test]
async fn regions_resolve_from_one_catalog() {
    let ec2 = ec2().await;
    let catalog = fleet::region_catalog(&ec2).await.unwrap();
    assert!(catalog.enabled().count() > 10);
    assert_eq!(catalog.resolve("eu-north").unwrap().as_str(), "eu-north-1");
    assert_eq!(catalog.resolve("us-east-1").unwrap().as_str(), "us-east-1");
    let err = catalog.resolve("us-west").unwrap_err().to_string();
    assert!(
        err.contains("us-west-1") && err.contains("us-west-2"),
        "{err}"
    );
}

#[tokio::test]
async fn instances_by_tag_finds_exactly_the_tagged_live_instances_in_each_region() {
    let ec2 = ec2().await;
    let tag = Tag::new(unique("fleet"), "production");
    let (r1, r2) = (Region::new("eu-west-1"), Region::new("ap-southeast-2"));
    let tagged = Tags::new()
        .with(tag.key.clone(), "production")
        .with("Name", "web");
    let a = launch(&ec2, &r1, 2, tagged.clone()).await;
    let b = launch(&ec2, &r2, 1, tagged.clone()).await;
    // Same key, other value; and no tag at all: neither may be listed.
    launch(&ec2, &r1, 1, Tags::new().with(tag.key.clone(), "staging")).await;
    launch(&ec2, &r1, 1, Tags::new()).await;
    // A terminated instance is not part of the fleet.
    ec2.terminate_instances(&r1, &[a[1].id.clone()], false)
        .await
        .unwrap();

    let regions = vec![r1.clone(), r2.clone(), Region::new("us-west-2")];
    let out = fleet::instances_by_tag(&ec2, &regions, &tag, 3).await;
    let ids = |i: usize| {
        let mut v: Vec<String> = out[i]
            .result
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| i.id.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(0), vec![a[0].id.to_string()]);
    assert_eq!(ids(1), vec![b[0].id.to_string()]);
    assert!(ids(2).is_empty());
    let first = &out[0].result.as_ref().unwrap()[0];
    assert_eq!(first.name(), Some("web"));
    assert_eq!(first.region, r1);
    assert!(first.root_device_name.is_some());
    assert!(!first.block_devices.is_empty(), "EBS root volume listed");
}

#[tokio::test]
async fn snapshots_carry_tags_from_creation_and_tag_scoped_queries_see_only_them() {
    let ec2 = ec2().await;
    let region = Region::new("us-east-1");
    let key = unique("owner");
    let inst = launch(&ec2, &region, 1, Tags::new().with("Name", "db"))
        .await
        .remove(0);
    let vol = inst.root_volume().expect("root volume").clone();

    let single = ec2
        .create_snapshot(
            &region,
            &CreateSnapshot {
                volume_id: Some(vol.clone()),
                description: Some("single".into()),
                tags: Tags::new().with(key.clone(), "yes").with("kind", "single"),
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(single.tags.get("kind"), Some("single"));
    assert_eq!(single.volume_id.as_ref(), Some(&vol));

    let set = ec2
        .create_snapshots(
            &region,
            &CreateSnapshots {
                instance_id: Some(inst.id.clone()),
                tags: Tags::new().with(key.clone(), "yes").with("kind", "set"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(set.len(), inst.block_devices.len());

    let ours = ec2
        .describe_snapshots(&region, &[Filter::tag_key(key.clone())])
        .await
        .unwrap();
    let mut ids: Vec<_> = ours.iter().map(|s| s.id.to_string()).collect();
    ids.sort();
    let mut want: Vec<_> = set
        .iter()
        .map(|s| s.id.to_string())
        .chain([single.id.to_string()])
        .collect();
    want.sort();
    assert_eq!(
        ids, want,
        "a tag-scoped query returns exactly the snapshots we made"
    );
    assert!(
        ours.iter()
            .all(|s| s.state == SnapshotState::Completed && s.region.as_ref() == Some(&region))
    );
}

#[tokio::test]
async fn unscoped_snapshot_listing_paginates_past_1000_and_includes_moto_preloads() {
    // moto preloads ~1,200 AMI-backing snapshots and (unlike AWS) returns
    // them for OwnerIds=self. So this query must page (MaxResults=1000)
    // and shows why every toolkit query is scoped by its own tags.
    let ec2 = ec2().await;
    let all = ec2
        .describe_snapshots(&Region::new("us-west-1"), &[])
        .await
        .unwrap();
    assert!(
        all.len() > 1000,
        "got {} snapshots; the second page was not fetched",
        all.len()
    );
    let mut ids: Vec<_> = all.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "no page was fetched twice");
}

#[tokio::test]
async fn error_codes_are_kept_and_classified() {
    let ec2 = ec2().await;
    let region = Region::new("us-east-1");
    let missing = SnapshotId::parse("snap-0123456789abcdef0").unwrap();
    let err = ec2
        .delete_snapshot(&region, &missing, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidSnapshot.NotFound"));
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("DeleteSnapshot in us-east-1: InvalidSnapshot.NotFound"),
        "{err}"
    );

    let inst = launch(&ec2, &region, 1, Tags::new()).await.remove(0);
    let dry = ec2
        .reboot_instances(&region, std::slice::from_ref(&inst.id), true)
        .await
        .unwrap_err();
    assert!(dry.is_dry_run_ok(), "{dry}");
    assert!(
        ec2kit::dry_run_ok(
            ec2.reboot_instances(&region, std::slice::from_ref(&inst.id), true)
                .await
        )
        .unwrap()
        .is_none()
    );
}

#[tokio::test]
async fn termination_protection_round_trip() {
    let ec2 = ec2().await;
    let region = Region::new("eu-central-1");
    let inst = launch(&ec2, &region, 1, Tags::new()).await.remove(0);
    assert!(!ec2.termination_protection(&region, &inst.id).await.unwrap());
    ec2.set_termination_protection(&region, &inst.id, true, false)
        .await
        .unwrap();
    assert!(ec2.termination_protection(&region, &inst.id).await.unwrap());
}

#[tokio::test]
async fn unreachable_endpoint_is_a_retryable_transport_error() {
    let ec2 = AwsEc2::new(AwsEc2Options {
        endpoint_url: Some("http://127.0.0.1:9".into()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        max_attempts: Some(1),
        ..Default::default()
    })
    .await;
    let err = ec2.describe_regions().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transport, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn kms_keys_are_described_with_their_state() {
    let region = Region::new("eu-west-1");
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_url())
        .region(aws_config::Region::new("eu-west-1"))
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&conf);
    let key = kms.create_key().send().await.unwrap();
    let id = key.key_metadata().unwrap().key_id().to_owned();
    let ec2 = ec2().await;
    let found = ec2.describe_kms_key(&region, &id).await.unwrap();
    assert_eq!(found.key_id, id);
    assert_eq!(found.unusable_because(), None, "{found:?}");
    kms.disable_key().key_id(&id).send().await.unwrap();
    let found = ec2.describe_kms_key(&region, &id).await.unwrap();
    assert!(found.unusable_because().unwrap().contains("Disabled"));
    let err = ec2
        .describe_kms_key(&region, "alias/no-such-key")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("DescribeKey"), "{err}");
}

// ---- lost responses ------------------------------------------------------------

async fn through(proxy: &FaultProxy) -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(proxy.url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await
}

async fn ours(ec2: &AwsEc2, region: &Region, key: &str) -> Vec<ec2kit::Snapshot> {
    ec2.describe_snapshots(region, &[Filter::tag_key(key.to_owned())])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lost_create_snapshots_response_makes_exactly_one_set() {
    let direct = ec2().await;
    let region = Region::new("us-east-1");
    let inst = launch(&direct, &region, 1, Tags::new()).await.remove(0);
    let proxy = FaultProxy::start(&moto_url());
    proxy.set("CreateSnapshots", Fault::DropAfterForward { times: 1 });
    let key = unique("set");
    let set = through(&proxy)
        .await
        .create_snapshots(
            &region,
            &CreateSnapshots {
                instance_id: Some(inst.id.clone()),
                tags: Tags::new().with(key.clone(), "yes"),
                ..Default::default()
            },
        )
        .await
        .expect("the set made before the lost response is found");
    let counts = proxy.counts("CreateSnapshots");
    assert_eq!((counts.dropped, counts.forwarded), (1, 0), "{counts:?}");
    let made = ours(&direct, &region, &key).await;
    assert_eq!(
        made.len(),
        inst.block_devices.len(),
        "exactly one set: {made:#?}"
    );
    let mut got: Vec<_> = set.iter().map(|s| s.id.to_string()).collect();
    let mut want: Vec<_> = made.iter().map(|s| s.id.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the call returns the set that exists");
}

#[tokio::test]
async fn a_lost_create_snapshot_response_makes_exactly_one_snapshot() {
    let direct = ec2().await;
    let region = Region::new("us-east-2");
    let inst = launch(&direct, &region, 1, Tags::new()).await.remove(0);
    let proxy = FaultProxy::start(&moto_url());
    proxy.set("CreateSnapshot", Fault::DropAfterForward { times: 1 });
    let key = unique("single");
    let snap = through(&proxy)
        .await
        .create_snapshot(
            &region,
            &CreateSnapshot {
                volume_id: inst.root_volume().cloned(),
                tags: Tags::new().with(key.clone(), "yes"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let made = ours(&direct, &region, &key).await;
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0].id, snap.id);
    assert_eq!(proxy.counts("CreateSnapshot").dropped, 1);
}

#[tokio::test]
async fn a_lost_copy_snapshot_response_makes_exactly_one_copy() {
    let direct = ec2().await;
    let (from, to) = (Region::new("us-east-1"), Region::new("eu-west-3"));
    let inst = launch(&direct, &from, 1, Tags::new()).await.remove(0);
    let source = direct
        .create_snapshot(
            &from,
            &CreateSnapshot {
                volume_id: inst.root_volume().cloned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(source.tags.get(ec2kit::aws::TOKEN_TAG).is_some());
    let key = unique("copy");
    // Like replication, the request carries the source's tags, its token
    // included; and an earlier run already copied this source.
    let request = CopySnapshot {
        source_region: Some(from.clone()),
        source_snapshot_id: Some(source.id.clone()),
        tags: source.tags.clone().with(key.clone(), "yes"),
        ..Default::default()
    };
    let earlier = direct.copy_snapshot(&to, &request).await.unwrap();
    let proxy = FaultProxy::start(&moto_url());
    proxy.set("CopySnapshot", Fault::DropAfterForward { times: 1 });
    let copy = through(&proxy)
        .await
        .copy_snapshot(&to, &request)
        .await
        .unwrap();
    assert_ne!(copy, earlier, "the earlier copy is not taken for this one");
    let mut made: Vec<_> = ours(&direct, &to, &key)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    made.sort();
    let mut want = vec![earlier, copy];
    want.sort();
    assert_eq!(made, want, "exactly one copy more");
    assert_eq!(proxy.counts("CopySnapshot").dropped, 1);
}

#[tokio::test]
async fn throttled_creates_are_sent_again_and_still_make_one_set() {
    let direct = ec2().await;
    let region = Region::new("us-west-1");
    let inst = launch(&direct, &region, 1, Tags::new()).await.remove(0);
    let proxy = FaultProxy::start(&moto_url());
    proxy.set("CreateSnapshots", Fault::Throttle { rate: 0.7 });
    let key = unique("throttled");
    let ec2 = through(&proxy).await;
    for _ in 0..3 {
        let set = ec2
            .create_snapshots(
                &region,
                &CreateSnapshots {
                    instance_id: Some(inst.id.clone()),
                    tags: Tags::new().with(key.clone(), "yes"),
                    ..Default::default()
                },
            )
            .await;
        // Attempts are bounded: a call may still fail, but never twice over.
        if let Err(e) = set {
            assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
        }
    }
    let counts = proxy.counts("CreateSnapshots");
    assert!(counts.throttled > 0, "{counts:?}");
    let made = ours(&direct, &region, &key).await;
    assert_eq!(
        made.len(),
        counts.forwarded * inst.block_devices.len(),
        "one set per forwarded request, none from a retry of an executed one"
    );
}

// ---- clear errors --------------------------------------------------------------

#[tokio::test]
async fn missing_credentials_are_a_credentials_error_not_a_network_one() {
    const NAME: &str = "aws::missing_credentials_are_a_credentials_error_not_a_network_one";
    if !in_child(NAME) {
        let home = tempdir();
        let moto = moto_url();
        rerun_in_child(
            NAME,
            &[
                ("HOME", home.path().to_str().unwrap()),
                ("EKTOOL_TEST_MOTO_URL", &moto),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_CONFIG_FILE", "/nonexistent/ektool/config"),
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "/nonexistent/ektool/credentials",
                ),
            ],
            &[],
            true,
        );
        return;
    }
    let ec2 = AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await;
    let err = ec2.describe_regions().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Credentials, "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("could not reach"), "{text}");
}

#[tokio::test]
async fn an_invalid_endpoint_is_an_invalid_request_never_a_panic() {
    for url in [
        "",
        "  ",
        "not a url",
        "http://",
        "ftp://x",
        "http://[::1",
        "http://h:99999",
    ] {
        assert!(ec2kit::aws::check_endpoint_url(url).is_err(), "{url:?}");
        let ec2 = AwsEc2::new(AwsEc2Options {
            endpoint_url: Some(url.into()),
            home_region: Some("us-east-1".into()),
            rate_limits: Some(RateLimits::disabled()),
            ..Default::default()
        })
        .await;
        let err = ec2.describe_regions().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{url:?}: {err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("endpoint"), "{err}");
    }
    ec2kit::aws::check_endpoint_url(&moto_url()).unwrap();
}

/// The archive tier, `CreateImage` and launch template images, as moto
/// answers them (moto moves tiers at once; AWS takes hours).
#[tokio::test]
async fn tiers_images_of_instances_and_launch_template_images() {
    use ec2kit::StorageTier;
    use ec2kit::requests::{CreateImage, TierRestore};

    let ec2 = ec2().await;
    let region = Region::new("ap-east-1");
    let inst = launch(&ec2, &region, 1, Tags::new()).await.remove(0);
    let vol = inst.root_volume().unwrap().clone();
    let snap = ec2
        .create_snapshot(
            &region,
            &CreateSnapshot {
                volume_id: Some(vol),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(snap.storage_tier, StorageTier::Standard);
    let tier = |id: SnapshotId| {
        let ec2 = &ec2;
        let region = &region;
        async move {
            ec2.describe_snapshots(region, &[Filter::new("snapshot-id", [id.as_str()])])
                .await
                .unwrap()[0]
                .storage_tier
                .clone()
        }
    };
    // Dry runs check and change nothing.
    let e = ec2
        .modify_snapshot_tier(&region, &snap.id, true)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DryRunOk);
    assert_eq!(tier(snap.id.clone()).await, StorageTier::Standard);
    ec2.modify_snapshot_tier(&region, &snap.id, false)
        .await
        .unwrap();
    assert_eq!(tier(snap.id.clone()).await, StorageTier::Archive);
    ec2.restore_snapshot_tier(
        &region,
        &snap.id,
        &TierRestore::Temporary { days: 2 },
        false,
    )
    .await
    .unwrap();
    assert_eq!(tier(snap.id.clone()).await, StorageTier::Archive);
    ec2.restore_snapshot_tier(&region, &snap.id, &TierRestore::Permanent, false)
        .await
        .unwrap();
    assert_eq!(tier(snap.id.clone()).await, StorageTier::Standard);
    let gone = ec2
        .modify_snapshot_tier(
            &region,
            &SnapshotId::from_api("snap-00000000000000000"),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(gone.kind, ErrorKind::NotFound, "{gone}");

    // CreateImage with tags on the AMI (moto refuses snapshot tags).
    let name = unique("ami-of-instance");
    let image = ec2
        .create_image(
            &region,
            &CreateImage {
                instance_id: Some(inst.id.clone()),
                name: name.clone(),
                no_reboot: true,
                tags: Tags::new().with("k", "v"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let found = ec2
        .describe_images(&region, &[Filter::new("image-id", [image.as_str()])])
        .await
        .unwrap();
    assert_eq!(found[0].name.as_deref(), Some(name.as_str()));
    assert_eq!(found[0].tags.get("k"), Some("v"));
    assert_eq!(found[0].snapshot_ids().count(), 1);

    // No launch template in this region yet: nothing, and no error.
    let before = ec2.launch_template_images(&region).await.unwrap();
    assert!(before.iter().all(|t| t.image != image.as_str()));
}

/// An `AwsEc2` that assumes `role` (moto keeps the state of the account
/// the role names apart from every other account's).
async fn ec2_as(role: &str) -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        role_arn: Some(role.to_owned()),
        external_id: Some("ektool-test".into()),
        session_name: Some("ektool-it".into()),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn an_assumed_role_works_in_its_own_account_only() {
    use ec2kit::accounts::{AccountId, Accounts, DEFAULT_ROLE_TEMPLATE, each_account};
    use ec2kit::requests::CreateVolume;

    // Fresh account ids per run: moto's state outlives a test.
    let base = 100_000_000_000u64 + u64::from(std::process::id()) * 10;
    let ids: Vec<AccountId> = (0..3)
        .map(|i| format!("{:012}", base + i).parse().unwrap())
        .collect();
    let accounts = Accounts::new(ids.clone(), DEFAULT_ROLE_TEMPLATE).unwrap();
    let region = Region::new("eu-west-1");
    let first = ec2_as(&accounts.role_arn(&ids[0])).await;
    let volume = first
        .create_volume(
            &region,
            &CreateVolume {
                availability_zone: "eu-west-1a".into(),
                size_gib: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let seen = each_account(accounts.ids(), 2, |account| {
        let role = accounts.role_arn(account);
        let region = region.clone();
        async move {
            let ec2 = ec2_as(&role).await;
            let volumes = ec2.describe_volumes(&region, &[]).await?;
            Ok::<_, ec2kit::Ec2Error>(volumes.into_iter().map(|v| v.id).collect::<Vec<_>>())
        }
    })
    .await;
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].account, ids[0]);
    assert_eq!(seen[0].result.as_ref().unwrap(), &vec![volume.id.clone()]);
    assert!(seen[1].result.as_ref().unwrap().is_empty());
    assert!(seen[2].result.as_ref().unwrap().is_empty());
    // And the caller's own account (no role) does not see it either.
    let own = ec2().await.describe_volumes(&region, &[]).await.unwrap();
    assert!(own.iter().all(|v| v.id != volume.id));
}

#[tokio::test]
async fn the_caller_account_is_the_assumed_roles_account() {
    use ec2kit::accounts::AccountId;

    // moto's default account answers for the bench's own credentials.
    let own = ec2().await.caller_account().await.unwrap();
    assert_eq!(own.as_str(), "123456789012");
    let vault: AccountId = format!("{:012}", 200_000_000_000u64 + u64::from(std::process::id()))
        .parse()
        .unwrap();
    let role = format!("arn:aws:iam::{vault}:role/ektool-vault-copy");
    assert_eq!(ec2_as(&role).await.caller_account().await.unwrap(), vault);
}

/// The bench's moto is patched (`scripts/moto-patches`) to copy a snapshot
/// of another account as EC2 does: only once that account shared it.
#[tokio::test]
async fn a_snapshot_of_another_account_is_copied_only_while_shared() {
    use ec2kit::accounts::AccountId;
    use ec2kit::requests::CreateVolume;

    let base = 300_000_000_000u64 + u64::from(std::process::id()) * 10;
    let (source_id, vault_id): (AccountId, AccountId) = (
        format!("{base:012}").parse().unwrap(),
        format!("{:012}", base + 1).parse().unwrap(),
    );
    let source = ec2_as(&format!("arn:aws:iam::{source_id}:role/r")).await;
    let vault = ec2_as(&format!("arn:aws:iam::{vault_id}:role/r")).await;
    let region = Region::new("eu-west-1");
    let volume = source
        .create_volume(
            &region,
            &CreateVolume {
                availability_zone: "eu-west-1a".into(),
                size_gib: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let snap = source
        .create_snapshot(
            &region,
            &CreateSnapshot {
                volume_id: Some(volume.id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = CopySnapshot {
        source_region: Some(region.clone()),
        source_snapshot_id: Some(snap.id.clone()),
        kms_key_id: Some("vault-key".into()),
        encrypted: true,
        ..Default::default()
    };
    let unshared = vault.copy_snapshot(&region, &request).await.unwrap_err();
    assert_eq!(unshared.kind, ErrorKind::NotFound, "{unshared}");

    source
        .share_snapshot(&region, &snap.id, &vault_id, true)
        .await
        .unwrap();
    assert_eq!(
        source
            .snapshot_shared_with(&region, &snap.id)
            .await
            .unwrap(),
        vec![vault_id.clone()]
    );
    let copy = vault.copy_snapshot(&region, &request).await.unwrap();
    let copies = vault
        .describe_snapshots(&region, &[Filter::new("snapshot-id", [copy.as_str()])])
        .await
        .unwrap();
    assert_eq!(copies.len(), 1, "the copy is the vault's");
    assert_eq!(copies[0].kms_key_id.as_deref(), Some("vault-key"));
    assert!(copies[0].encrypted);
    let theirs = source
        .describe_snapshots(&region, &[Filter::new("snapshot-id", [copy.as_str()])])
        .await
        .unwrap();
    assert!(theirs.is_empty(), "not the source account's");

    source
        .share_snapshot(&region, &snap.id, &vault_id, false)
        .await
        .unwrap();
    assert!(
        source
            .snapshot_shared_with(&region, &snap.id)
            .await
            .unwrap()
            .is_empty()
    );
    let again = vault.copy_snapshot(&region, &request).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::NotFound, "{again}");
}
