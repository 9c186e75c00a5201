//! The pure parts of a verify run: which snapshot of each lineage is
//! tested, and what a report says. The EC2 and host halves run end to end
//! against moto and a bench sshd host (`cli/tests/cli/verify.rs`).

use super::*;
use crate::lineage::tags as lineage_tags;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn snap(id: &str, volume: &str, t: i64, state: SnapshotState) -> ec2kit::Snapshot {
    let mut s = ec2kit::Snapshot::new(
        SnapshotId::from_api(id),
        Some(VolumeId::from_api(volume)),
        at(t),
        state,
    );
    s.tags
        .insert(lineage_tags::OWNER, lineage_tags::OWNER_VALUE);
    s.tags.insert(lineage_tags::VOLUME, volume);
    s
}

#[test]
fn the_newest_completed_snapshot_of_each_lineage_is_tested() {
    let r = Region::new("eu-west-1");
    let mut foreign = snap("snap-f", "vol-a", 900, SnapshotState::Completed);
    foreign.tags = Tags::new();
    let all = [
        snap("snap-a1", "vol-a", 100, SnapshotState::Completed),
        snap("snap-a2", "vol-a", 200, SnapshotState::Completed),
        // Newer, but not completed: never tested.
        snap("snap-a3", "vol-a", 300, SnapshotState::Pending),
        snap("snap-a4", "vol-a", 400, SnapshotState::Error),
        // Not ektool's.
        foreign,
        snap("snap-b1", "vol-b", 50, SnapshotState::Completed),
    ];
    let every = newest_per_lineage(&all, &[], &r).unwrap();
    let got: Vec<(&str, &str)> = every
        .iter()
        .map(|t| (t.lineage.as_str(), t.snapshot.as_str()))
        .collect();
    assert_eq!(got, [("vol-a", "snap-a2"), ("vol-b", "snap-b1")]);

    let one = newest_per_lineage(&all, &["vol-b".into()], &r).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].snapshot.as_str(), "snap-b1");

    let err = newest_per_lineage(&all, &["vol-c".into()], &r).unwrap_err();
    assert!(matches!(err, VerifyError::NoSnapshot { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "lineage vol-c has no completed snapshot in eu-west-1"
    );
}

#[test]
fn a_report_is_ok_only_when_every_test_passed_and_was_cleaned_up() {
    let item = |result, cleaned_up| VerifyOutcome {
        lineage: "vol-a".into(),
        snapshot: SnapshotId::from_api("snap-a"),
        volume: None,
        mountpoint: None,
        result,
        reason: None,
        output: String::new(),
        tagged: true,
        cleaned_up,
        cleanup_error: None,
        notes: Vec::new(),
    };
    let report = |items| VerifyReport {
        region: Region::new("eu-west-1"),
        instance: InstanceId::from_api("i-1"),
        run: "r".into(),
        verified_at: at(0),
        leftovers: Vec::new(),
        items,
        interrupted: false,
    };
    assert!(report(vec![item(VerifyResult::Ok, true)]).ok());
    assert!(report(vec![]).ok());
    assert!(!report(vec![item(VerifyResult::Ok, false)]).ok());
    assert!(
        !report(vec![
            item(VerifyResult::Ok, true),
            item(VerifyResult::Failed, true)
        ])
        .ok()
    );
    assert!(!report(vec![item(VerifyResult::Error, true)]).ok());
    let mut cut = report(vec![item(VerifyResult::Ok, true)]);
    cut.interrupted = true;
    assert!(!cut.ok(), "an interrupted run tested less than planned");
}

#[test]
fn only_failures_of_the_volume_itself_fail_the_snapshot() {
    let host = || "h".to_owned();
    assert!(!says_nothing_about_the_snapshot(
        &MountError::NoFilesystem {
            host: host(),
            device: "/dev/x".into(),
            found: "-".into(),
        }
    ));
    assert!(says_nothing_about_the_snapshot(&MountError::NoFreeDevice {
        instance: InstanceId::from_api("i-1"),
    }));
}

#[test]
fn the_output_kept_is_its_end() {
    assert_eq!(tail("short"), "short");
    let long = format!("{}end", "é".repeat(OUTPUT_TAIL));
    let t = tail(&long);
    assert!(t.ends_with("end") && t.starts_with('…'), "{t}");
    assert!(t.len() <= OUTPUT_TAIL + '…'.len_utf8());
}
