//! `ektool snap replicate --to-account VAULT` against moto: moto keeps the
//! state of each account a role names apart, and the bench's moto patch
//! (`scripts/moto-patches`) copies another account's snapshot only while
//! that account shares it, as EC2 does.

use ec2kit::requests::{CreateSnapshot, CreateVolume};
use ec2kit::{AccountId, AwsEc2, Ec2, Filter, Region, Snapshot, Tags};
use ektool_tests::{moto_url, tempdir, unique};
use snapkit::lineage::tags;

use crate::harness::Ektool;
use crate::moto::{ec2_in, role};

/// A source account and a vault account no other test uses.
fn fresh_pair() -> (String, String) {
    let mut two = crate::moto::fresh_accounts(2);
    let vault = two.pop().unwrap();
    (two.pop().unwrap(), vault)
}

/// A snapshot of a new volume in `account`, made and tagged as ektool's
/// backups are (`key=prod` selects it).
async fn backup(account: &str, region: &Region, key: &str, encrypted: bool) -> Snapshot {
    let ec2 = ec2_in(account).await;
    let volume = ec2
        .create_volume(
            region,
            &CreateVolume {
                availability_zone: format!("{region}a"),
                size_gib: Some(1),
                encrypted,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    snapshot_of(&ec2, region, volume.id.as_str(), key).await
}

async fn snapshot_of(ec2: &AwsEc2, region: &Region, volume: &str, key: &str) -> Snapshot {
    ec2.create_snapshot(
        region,
        &CreateSnapshot {
            volume_id: Some(volume.parse().unwrap()),
            tags: Tags::new()
                .with(tags::OWNER, tags::OWNER_VALUE)
                .with(tags::VOLUME, volume)
                .with(key, "prod"),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// The vault's copies of `source`.
async fn vault_copies(vault: &str, region: &Region, source: &Snapshot) -> Vec<Snapshot> {
    ec2_in(vault)
        .await
        .describe_snapshots(
            region,
            &[Filter::new(
                format!("tag:{}", tags::SOURCE_SNAPSHOT),
                [source.id.as_str()],
            )],
        )
        .await
        .unwrap()
}

/// Whom `snapshot` is shared with, and its shared-with tag.
async fn share_state(
    account: &str,
    region: &Region,
    snapshot: &Snapshot,
) -> (Vec<String>, Option<String>) {
    let ec2 = ec2_in(account).await;
    let shared = ec2
        .snapshot_shared_with(region, &snapshot.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.to_string())
        .collect();
    let now = ec2
        .describe_snapshots(
            region,
            &[Filter::new("snapshot-id", [snapshot.id.as_str()])],
        )
        .await
        .unwrap();
    (
        shared,
        now[0].tags.get(tags::SHARED_WITH).map(str::to_owned),
    )
}

/// `ektool --role-arn SOURCE snap replicate --from R --to-account VAULT …`.
fn replicate(source: &str, vault: &str, region: &Region, key: &str) -> Ektool {
    Ektool::moto().args(&[
        "--role-arn",
        &role(source),
        "--output",
        "json",
        "snap",
        "replicate",
        "--from",
        region.as_str(),
        "--to-account",
        vault,
        "--tag",
        &format!("{key}=prod"),
    ])
}

#[tokio::test]
async fn a_vault_copy_is_made_by_the_vault_tagged_with_its_source_and_the_share_is_taken_back() {
    let (source, vault) = fresh_pair();
    let region = Region::new("eu-west-2");
    let key = unique("vault");
    let snap = backup(&source, &region, &key, false).await;

    // The plan first: nothing changes (no tag, no share, no copy).
    let dry = replicate(&source, &vault, &region, &key)
        .arg("--dry-run")
        .run()
        .success()
        .json();
    let plan = &dry[0]["plan"];
    assert_eq!(dry[0]["account"], source.as_str());
    assert_eq!(plan["items"][0]["action"], "copy", "{dry}");
    assert_eq!(
        plan["items"][0]["request"]["tags"][tags::SOURCE_ACCOUNT],
        source.as_str()
    );
    assert!(dry[0].get("applied").is_none());
    assert_eq!(share_state(&source, &region, &snap).await, (vec![], None));
    assert!(vault_copies(&vault, &region, &snap).await.is_empty());

    let dir = tempdir();
    let metrics = dir.path().join("vault.prom");
    let out = replicate(&source, &vault, &region, &key)
        .args(&["--wait", "--metrics", metrics.to_str().unwrap()])
        .run()
        .success()
        .json();
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains(&format!(
            "ektool_vault_copies_started{{account=\"{source}\",vault=\"{vault}\"}} 1"
        )),
        "{prom}"
    );
    let applied = &out[0]["applied"];
    assert_eq!(applied["started"], 1, "{out}");
    assert_eq!(applied["results"][0]["outcome"], "completed", "{out}");
    let copies = vault_copies(&vault, &region, &snap).await;
    assert_eq!(copies.len(), 1, "one copy, in the vault");
    let copy = &copies[0];
    assert_eq!(copy.state, ec2kit::SnapshotState::Completed);
    assert_eq!(copy.tags.get(tags::SOURCE_ACCOUNT), Some(source.as_str()));
    assert_eq!(copy.tags.get(tags::SOURCE_REGION), Some(region.as_str()));
    assert_eq!(copy.tags.get(tags::SOURCE_SNAPSHOT), Some(snap.id.as_str()));
    assert_eq!(
        copy.tags.get(tags::VOLUME),
        snap.volume_id.as_ref().map(|v| v.as_str())
    );
    assert_eq!(copy.tags.get(tags::OWNER), Some(tags::OWNER_VALUE));
    assert_eq!(copy.tags.get(tags::SHARED_WITH), None);
    // The source account has no copy of its own.
    let own = ec2_in(&source)
        .await
        .describe_snapshots(&region, &[Filter::tag_key(tags::SOURCE_SNAPSHOT)])
        .await
        .unwrap();
    assert!(own.is_empty(), "{own:?}");
    // Shared no more, and the journal tag is gone.
    assert_eq!(share_state(&source, &region, &snap).await, (vec![], None));

    // A rerun copies nothing.
    let again = replicate(&source, &vault, &region, &key)
        .arg("--wait")
        .run()
        .success()
        .json();
    assert_eq!(again[0]["plan"]["items"][0]["action"], "present", "{again}");
    assert_eq!(again[0]["applied"]["started"], 0);
    assert_eq!(vault_copies(&vault, &region, &snap).await.len(), 1);

    // The human table names the copy.
    Ektool::moto()
        .args(&[
            "--role-arn",
            &role(&source),
            "snap",
            "replicate",
            "--from",
            region.as_str(),
            "--to-account",
            &vault,
            "--tag",
            &format!("{key}=prod"),
            "--dry-run",
        ])
        .run()
        .success()
        .stdout_has(&format!("present {}", copy.id))
        .stdout_has("dry run: 0 vault copies would start");
}

#[tokio::test]
async fn shares_a_crash_left_behind_are_reused_or_taken_back() {
    let (source, vault) = fresh_pair();
    let region = Region::new("eu-west-3");
    let key = unique("vault");
    let first = backup(&source, &region, &key, false).await;
    let ec2 = ec2_in(&source).await;
    let volume = first.volume_id.as_ref().unwrap().to_string();
    let second = snapshot_of(&ec2, &region, &volume, &key).await;
    // moto's start times may tie within a second: the plan says which
    // one is the lineage's newest.
    let plan = replicate(&source, &vault, &region, &key)
        .arg("--dry-run")
        .run()
        .success()
        .json();
    let (newest, old) = if plan[0]["plan"]["items"][0]["source"] == first.id.as_str() {
        (first, second)
    } else {
        (second, first)
    };
    // A crashed run: tag and share set, no copy; on the newest (to copy
    // now) and on an older one (no copy needs it).
    let vault_id: AccountId = vault.parse().unwrap();
    for s in [&old, &newest] {
        ec2.create_tags(
            &region,
            &[s.id.to_string()],
            &Tags::new().with(tags::SHARED_WITH, vault.as_str()),
            false,
        )
        .await
        .unwrap();
        ec2.share_snapshot(&region, &s.id, &vault_id, true)
            .await
            .unwrap();
    }
    let dry = replicate(&source, &vault, &region, &key)
        .arg("--dry-run")
        .run()
        .success()
        .json();
    assert_eq!(
        dry[0]["plan"]["unshare"],
        serde_json::json!([old.id.as_str()])
    );
    assert_eq!(dry[0]["plan"]["items"][0]["shared"], true);
    assert_eq!(
        share_state(&source, &region, &old).await,
        (vec![vault.clone()], Some(vault.clone())),
        "a dry run changes nothing"
    );

    let out = replicate(&source, &vault, &region, &key)
        .arg("--wait")
        .run()
        .success()
        .json();
    assert_eq!(out[0]["applied"]["started"], 1, "{out}");
    assert_eq!(vault_copies(&vault, &region, &newest).await.len(), 1);
    assert!(vault_copies(&vault, &region, &old).await.is_empty());
    for s in [&old, &newest] {
        assert_eq!(
            share_state(&source, &region, s).await,
            (vec![], None),
            "{}",
            s.id
        );
    }
}

#[tokio::test]
async fn an_encrypted_source_is_copied_under_the_vaults_key() {
    let (source, vault) = fresh_pair();
    let region = Region::new("eu-north-1");
    let key = unique("vault");
    let snap = backup(&source, &region, &key, true).await;
    assert!(snap.encrypted);
    let vault_key = create_kms_key(&vault, &region).await;
    replicate(&source, &vault, &region, &key)
        .args(&["--kms-key", &vault_key, "--wait"])
        .run()
        .success();
    let copies = vault_copies(&vault, &region, &snap).await;
    assert_eq!(copies.len(), 1);
    assert!(copies[0].encrypted);
    assert_eq!(copies[0].kms_key_id.as_deref(), Some(vault_key.as_str()));

    // A key the vault does not have stops the run before any share.
    let other = backup(&source, &region, &key, true).await;
    replicate(&source, &vault, &region, &key)
        .args(&["--kms-key", "alias/no-such-key"])
        .run()
        .code(1)
        .stderr_has("alias/no-such-key");
    assert_eq!(share_state(&source, &region, &other).await, (vec![], None));
}

/// A KMS key made in `account` (moto keeps keys per account too).
async fn create_kms_key(account: &str, region: &Region) -> String {
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_url())
        .region(aws_config::Region::new(region.to_string()))
        .load()
        .await;
    let provider = aws_config::sts::AssumeRoleProvider::builder(role(account))
        .session_name("ektool-test")
        .configure(&base)
        .build()
        .await;
    let conf = base
        .into_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        )
        .build();
    aws_sdk_kms::Client::new(&conf)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned()
}

#[tokio::test]
async fn the_vault_is_another_account_and_must_be_named() {
    let (source, _) = fresh_pair();
    let region = Region::new("eu-west-2");
    let key = unique("vault");
    let snap = backup(&source, &region, &key, false).await;
    let out = replicate(&source, &source, &region, &key).run().code(2);
    out.stderr_has("is the source account");
    assert_eq!(share_state(&source, &region, &snap).await, (vec![], None));
    // `--to-account` alone takes `[vault]`, which this config lacks.
    let cfg = tempdir();
    std::fs::write(cfg.path().join("ektool.toml"), "").unwrap();
    Ektool::moto()
        .current_dir(cfg.path())
        .args(&["snap", "replicate", "--from", "eu-west-2", "--to-account"])
        .run()
        .code(2)
        .stderr_has("configure [vault]");
    // Without --to-account, --to is still required.
    Ektool::moto()
        .args(&["snap", "replicate", "--from", "eu-west-2"])
        .run()
        .code(2)
        .stderr_has("--to");
}

/// What a vault copy calls, recorded: the source account's actions and
/// the vault's together are exactly `iam-policy vault-source` and
/// `iam-policy vault-copy`, and never `DeleteSnapshot`.
#[tokio::test]
async fn a_vault_copy_calls_exactly_the_actions_of_its_two_policies() {
    let (source, vault) = fresh_pair();
    let region = Region::new("ap-south-1");
    let key = unique("vault");
    let old = backup(&source, &region, &key, false).await;
    let volume = old.volume_id.as_ref().unwrap().to_string();
    let ec2 = ec2_in(&source).await;
    snapshot_of(&ec2, &region, &volume, &key).await;
    // A share to take back, so every source action is called.
    ec2.create_tags(
        &region,
        &[old.id.to_string()],
        &Tags::new().with(tags::SHARED_WITH, vault.as_str()),
        false,
    )
    .await
    .unwrap();
    let dir = tempdir();
    let file = dir.path().join("actions");
    replicate(&source, &vault, &region, &key)
        .env("EKTOOL_RECORD_ACTIONS", file.to_str().unwrap())
        .arg("--wait")
        .run()
        .success();
    let got = crate::harness::recorded_actions(&file);
    let policies = crate::iam::Policies::load();
    let mut want = policies.expected("vault-source", &[]);
    want.extend(policies.expected("vault-copy", &[]));
    assert_eq!(got, want);
    assert!(!got.contains("ec2:DeleteSnapshot"));
}

#[tokio::test]
async fn every_member_account_copies_into_the_one_vault() {
    let (a, vault) = fresh_pair();
    let (b, _) = fresh_pair();
    let region = Region::new("ca-central-1");
    let key = unique("vault");
    let snap_a = backup(&a, &region, &key, false).await;
    let snap_b = backup(&b, &region, &key, false).await;
    let out = Ektool::moto()
        .args(&[
            "--accounts",
            &format!("{a},{b}"),
            "--output",
            "json",
            "snap",
            "replicate",
            "--from",
            region.as_str(),
            "--to-account",
            &vault,
            "--tag",
            &format!("{key}=prod"),
            "--wait",
        ])
        .run()
        .success()
        .json();
    let accounts: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, [a.as_str(), b.as_str()], "{out}");
    for (account, snap) in [(&a, &snap_a), (&b, &snap_b)] {
        let copies = vault_copies(&vault, &region, snap).await;
        assert_eq!(copies.len(), 1, "{account}");
        assert_eq!(
            copies[0].tags.get(tags::SOURCE_ACCOUNT),
            Some(account.as_str())
        );
        assert_eq!(share_state(account, &region, snap).await, (vec![], None));
    }
    // The table has an ACCOUNT column.
    Ektool::moto()
        .args(&[
            "--accounts",
            &format!("{a},{b}"),
            "snap",
            "replicate",
            "--from",
            region.as_str(),
            "--to-account",
            &vault,
            "--tag",
            &format!("{key}=prod"),
            "--dry-run",
        ])
        .run()
        .success()
        .stdout_has("ACCOUNT")
        .stdout_has(&format!("{b}  ca-central-1"));
}
