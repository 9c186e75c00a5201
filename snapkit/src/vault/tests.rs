use std::sync::{Arc, Mutex};

use ec2kit::{KmsKey, MockEc2, VolumeId};

use super::*;

const SOURCE: &str = "111111111111";
const VAULT: &str = "999999999999";

fn acct(id: &str) -> AccountId {
    id.parse().unwrap()
}

fn snap(id: &str, volume: &str, state: SnapshotState, extra: &[(&str, &str)]) -> Snapshot {
    let mut s = Snapshot::new(
        SnapshotId::from_api(id),
        Some(VolumeId::from_api(volume)),
        Timestamp::from_second(1_700_000_000).unwrap(),
        state,
    );
    s.tags = Tags::new().with(tags::OWNER, tags::OWNER_VALUE);
    for (k, v) in extra {
        s.tags.insert(*k, *v);
    }
    s
}

fn target() -> VaultTarget {
    VaultTarget {
        account: acct(VAULT),
        region: Region::new("eu-west-1"),
        kms_key: Some("vault-key".into()),
    }
}

fn vault_copy(id: &str, source: &str, account: &str, state: SnapshotState) -> Snapshot {
    snap(
        id,
        "vol-ffffffff",
        state,
        &[
            (tags::SOURCE_SNAPSHOT, source),
            (tags::SOURCE_REGION, "eu-west-1"),
            (tags::SOURCE_ACCOUNT, account),
        ],
    )
}

/// The source account: lineages a (copied), b (copy pending), c (no copy,
/// shared by a crashed run), d (copy in error); snap-0000000e is an old
/// source still shared from an earlier run.
fn source_side() -> MockEc2 {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, filters| {
        if filters
            .iter()
            .any(|f| f.name == format!("tag:{}", tags::SHARED_WITH))
        {
            return Ok(vec![
                snap(
                    "snap-0000000c",
                    "vol-0000000c",
                    SnapshotState::Completed,
                    &[(tags::SHARED_WITH, VAULT)],
                ),
                snap(
                    "snap-0000000e",
                    "vol-0000000a",
                    SnapshotState::Completed,
                    &[(tags::SHARED_WITH, VAULT)],
                ),
                snap(
                    "snap-000000b0",
                    "vol-0000000b",
                    SnapshotState::Completed,
                    &[(tags::SHARED_WITH, VAULT)],
                ),
            ]);
        }
        Ok(vec![
            snap(
                "snap-000000a0",
                "vol-0000000a",
                SnapshotState::Completed,
                &[],
            ),
            snap(
                "snap-000000b0",
                "vol-0000000b",
                SnapshotState::Completed,
                &[],
            ),
            snap(
                "snap-0000000c",
                "vol-0000000c",
                SnapshotState::Completed,
                &[(tags::SHARED_WITH, VAULT)],
            ),
            snap(
                "snap-000000d0",
                "vol-0000000d",
                SnapshotState::Completed,
                &[],
            ),
        ])
    });
    ec2
}

fn vault_side() -> MockEc2 {
    let mut ec2 = MockEc2::new();
    ec2.expect_describe_snapshots().returning(|_, filters| {
        assert!(filters.contains(&Filter::new(
            format!("tag:{}", tags::SOURCE_ACCOUNT),
            [SOURCE]
        )));
        Ok(vec![
            vault_copy(
                "snap-100000a0",
                "snap-000000a0",
                SOURCE,
                SnapshotState::Completed,
            ),
            vault_copy(
                "snap-100000b0",
                "snap-000000b0",
                SOURCE,
                SnapshotState::Pending,
            ),
            vault_copy(
                "snap-100000d0",
                "snap-000000d0",
                SOURCE,
                SnapshotState::Error,
            ),
            // Another account's copy of a same-named source: not ours.
            vault_copy(
                "snap-200000c0",
                "snap-0000000c",
                "222222222222",
                SnapshotState::Completed,
            ),
        ])
    });
    ec2
}

#[tokio::test]
async fn plan_matches_vault_copies_by_source_tags_and_lists_stale_shares() {
    let plan = plan(
        &source_side(),
        &vault_side(),
        &acct(SOURCE),
        &Region::new("eu-west-1"),
        &target(),
        &Selection::default(),
    )
    .await
    .unwrap();
    let actions: Vec<_> = plan.items.iter().map(|i| i.action.clone()).collect();
    assert_eq!(
        actions,
        [
            VaultAction::Present {
                copy: SnapshotId::from_api("snap-100000a0")
            },
            VaultAction::InProgress {
                copy: SnapshotId::from_api("snap-100000b0")
            },
            VaultAction::Copy,
            VaultAction::Recopy {
                failed: SnapshotId::from_api("snap-100000d0")
            },
        ]
    );
    assert!(plan.items[2].shared, "a crash's share is reused");
    // Pending copy (b) and the copy to start (c) keep their shares.
    assert_eq!(plan.unshare, [SnapshotId::from_api("snap-0000000e")]);
    let request = plan.items[2].request.as_ref().unwrap();
    assert_eq!(request.tags.get(tags::SOURCE_ACCOUNT), Some(SOURCE));
    assert_eq!(
        request.tags.get(tags::SOURCE_SNAPSHOT),
        Some("snap-0000000c")
    );
    assert_eq!(request.tags.get(tags::SHARED_WITH), None);
    assert_eq!(request.kms_key_id.as_deref(), Some("vault-key"));
    assert!(request.encrypted);
}

#[tokio::test]
async fn the_vault_is_another_account() {
    let mut t = target();
    t.account = acct(SOURCE);
    let err = plan(
        &MockEc2::new(),
        &MockEc2::new(),
        &acct(SOURCE),
        &Region::new("eu-west-1"),
        &t,
        &Selection::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VaultError::SameAccount(_)), "{err}");
}

#[tokio::test]
async fn sources_under_the_aws_managed_key_are_refused_in_the_plan() {
    let mut source = MockEc2::new();
    source.expect_describe_snapshots().returning(|_, filters| {
        if filters
            .iter()
            .any(|f| f.name == format!("tag:{}", tags::SHARED_WITH))
        {
            return Ok(vec![]);
        }
        let mut aws = snap(
            "snap-000000a0",
            "vol-0000000a",
            SnapshotState::Completed,
            &[],
        );
        aws.encrypted = true;
        aws.kms_key_id = Some("aws-key".into());
        let mut mine = snap(
            "snap-000000b0",
            "vol-0000000b",
            SnapshotState::Completed,
            &[],
        );
        mine.encrypted = true;
        mine.kms_key_id = Some("my-key".into());
        // A second lineage under the AWS-managed key: refused too, without
        // a second lookup of the key.
        let mut aws_too = snap(
            "snap-000000c0",
            "vol-0000000c",
            SnapshotState::Completed,
            &[],
        );
        aws_too.encrypted = true;
        aws_too.kms_key_id = Some("aws-key".into());
        Ok(vec![aws, mine, aws_too])
    });
    source
        .expect_describe_kms_key()
        .times(2)
        .returning(|_, key| {
            let mut k = KmsKey::new(key, "Enabled");
            k.manager = Some(if key == "aws-key" { "AWS" } else { "CUSTOMER" }.into());
            Ok(k)
        });
    let mut vault = MockEc2::new();
    vault
        .expect_describe_snapshots()
        .returning(|_, _| Ok(vec![]));
    let plan = plan(
        &source,
        &vault,
        &acct(SOURCE),
        &Region::new("eu-west-1"),
        &target(),
        &Selection::default(),
    )
    .await
    .unwrap();
    match &plan.items[0].action {
        VaultAction::Refused { reason } => assert!(reason.contains("alias/aws/ebs"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(plan.items[0].request.is_none());
    assert_eq!(plan.items[1].action, VaultAction::Copy);
    assert!(
        matches!(&plan.items[2].action, VaultAction::Refused { .. }),
        "{:?}",
        plan.items[2]
    );
}

/// Every call of a run, in order, as `side:Action:resource`.
type Calls = Arc<Mutex<Vec<String>>>;

fn recording_source(calls: &Calls) -> MockEc2 {
    let mut ec2 = MockEc2::new();
    let c = calls.clone();
    ec2.expect_create_tags().returning(move |_, res, t, _| {
        assert_eq!(t.get(tags::SHARED_WITH), Some(VAULT));
        c.lock().unwrap().push(format!("source:tag:{}", res[0]));
        Ok(())
    });
    let c = calls.clone();
    ec2.expect_share_snapshot()
        .returning(move |_, id, account, share| {
            assert_eq!(account.as_str(), VAULT);
            let what = if share { "share" } else { "unshare" };
            c.lock().unwrap().push(format!("source:{what}:{id}"));
            Ok(())
        });
    let c = calls.clone();
    ec2.expect_delete_tags().returning(move |_, res, keys, _| {
        assert_eq!(keys, [tags::SHARED_WITH]);
        c.lock().unwrap().push(format!("source:untag:{}", res[0]));
        Ok(())
    });
    ec2
}

fn one_copy_plan(shared: bool) -> VaultPlan {
    let source = snap(
        "snap-000000a0",
        "vol-0000000a",
        SnapshotState::Completed,
        &[],
    );
    VaultPlan {
        source_account: acct(SOURCE),
        from: Region::new("eu-west-1"),
        target: target(),
        items: vec![VaultItem {
            lineage: "vol-0000000a".into(),
            source: source.id.clone(),
            taken: source.start_time,
            encrypted: false,
            shared,
            action: VaultAction::Copy,
            request: Some(copy_request(
                &source,
                &Region::new("eu-west-1"),
                &acct(SOURCE),
                "vol-0000000a",
                None,
            )),
        }],
        unshare: vec![SnapshotId::from_api("snap-0000000e")],
    }
}

#[tokio::test(start_paused = true)]
async fn apply_tags_shares_copies_in_the_vault_then_unshares_and_never_deletes_there() {
    let calls: Calls = Arc::default();
    let source = recording_source(&calls);
    // No delete_snapshot expectation: a call to it fails the test, and a
    // duplicate of another run is right there to tempt the race settling.
    let mut vault = MockEc2::new();
    let c = calls.clone();
    vault.expect_copy_snapshot().returning(move |_, r| {
        assert_eq!(r.tags.get(tags::SOURCE_ACCOUNT), Some(SOURCE));
        c.lock().unwrap().push(format!(
            "vault:copy:{}",
            r.source_snapshot_id.as_ref().unwrap()
        ));
        Ok(SnapshotId::from_api("snap-100000a1"))
    });
    vault.expect_describe_snapshots().returning(|_, _| {
        let mut earlier = vault_copy(
            "snap-100000a0",
            "snap-000000a0",
            SOURCE,
            SnapshotState::Completed,
        );
        earlier.start_time = Timestamp::UNIX_EPOCH;
        Ok(vec![
            earlier,
            vault_copy(
                "snap-100000a1",
                "snap-000000a0",
                SOURCE,
                SnapshotState::Completed,
            ),
        ])
    });
    let options = CopyOptions {
        wait: true,
        ..CopyOptions::default()
    };
    let report = apply(&source, &vault, &one_copy_plan(false), &options, &|_| {}).await;
    assert_eq!(report.failed(), 0, "{report:?}");
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "source:tag:snap-000000a0",
            "source:share:snap-000000a0",
            "vault:copy:snap-000000a0",
            "source:unshare:snap-0000000e",
            "source:untag:snap-0000000e",
            "source:unshare:snap-000000a0",
            "source:untag:snap-000000a0",
        ]
    );
    assert_eq!(
        report.results[0].outcome,
        CopyOutcome::Completed {
            copy: SnapshotId::from_api("snap-100000a1")
        }
    );
    assert_eq!(report.shared.len(), 1);
    assert_eq!(report.unshared.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_copy_still_in_flight_keeps_its_share() {
    let calls: Calls = Arc::default();
    let source = recording_source(&calls);
    let mut vault = MockEc2::new();
    vault
        .expect_copy_snapshot()
        .returning(|_, _| Ok(SnapshotId::from_api("snap-100000a1")));
    let mut plan = one_copy_plan(false);
    plan.unshare.clear();
    let report = apply(&source, &vault, &plan, &CopyOptions::default(), &|_| {}).await;
    assert_eq!(report.still_shared, [SnapshotId::from_api("snap-000000a0")]);
    assert!(report.unshared.is_empty());
    assert!(!calls.lock().unwrap().iter().any(|c| c.contains("unshare")));
}

#[tokio::test(start_paused = true)]
async fn a_failed_share_copies_nothing_and_fails_the_item() {
    let mut source = MockEc2::new();
    source.expect_create_tags().returning(|_, _, _, _| Ok(()));
    source.expect_share_snapshot().returning(|_, _, _, share| {
        if share {
            Err(Ec2Error::from_code(
                Action::ModifySnapshotAttribute,
                "eu-west-1",
                "UnauthorizedOperation",
                None,
            ))
        } else {
            Ok(())
        }
    });
    source.expect_delete_tags().returning(|_, _, _, _| Ok(()));
    let vault = MockEc2::new();
    let mut plan = one_copy_plan(false);
    plan.unshare.clear();
    let report = apply(&source, &vault, &plan, &CopyOptions::default(), &|_| {}).await;
    assert_eq!(report.failed(), 1);
    assert_eq!(report.started, 0);
    match &report.results[0].outcome {
        CopyOutcome::Failed { error } => assert!(error.contains("could not share"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_item_fails_without_any_call_and_an_earlier_copy_done_now_is_unshared() {
    let calls: Calls = Arc::default();
    let source = recording_source(&calls);
    let mut vault = MockEc2::new();
    // The earlier run's copy completes during this one (--wait).
    vault.expect_describe_snapshots().returning(|_, _| {
        Ok(vec![vault_copy(
            "snap-100000b0",
            "snap-000000b0",
            SOURCE,
            SnapshotState::Completed,
        )])
    });
    let mut plan = one_copy_plan(false);
    plan.unshare.clear();
    plan.items[0].action = VaultAction::Refused {
        reason: "encrypted with the AWS-managed key".into(),
    };
    plan.items[0].request = None;
    plan.items.push(VaultItem {
        lineage: "vol-0000000b".into(),
        source: SnapshotId::from_api("snap-000000b0"),
        taken: Timestamp::UNIX_EPOCH,
        encrypted: false,
        shared: true,
        action: VaultAction::InProgress {
            copy: SnapshotId::from_api("snap-100000b0"),
        },
        request: None,
    });
    let options = CopyOptions {
        wait: true,
        ..CopyOptions::default()
    };
    let report = apply(&source, &vault, &plan, &options, &|_| {}).await;
    assert_eq!(report.failed(), 1);
    match &report.results[0].outcome {
        CopyOutcome::Failed { error } => assert!(error.contains("AWS-managed"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        report.results[1].outcome,
        CopyOutcome::Completed {
            copy: SnapshotId::from_api("snap-100000b0")
        }
    );
    assert_eq!(
        *calls.lock().unwrap(),
        ["source:unshare:snap-000000b0", "source:untag:snap-000000b0"]
    );
}
