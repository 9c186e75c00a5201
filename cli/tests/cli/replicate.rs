//! `ektool snap replicate`, `replicate-all` and `lag` against moto (several
//! regions): copies found by lineage tags, reruns copy nothing.

use ec2kit::requests::CreateSnapshot;
use ec2kit::{Ec2, Filter, Region, Tags};
use snapkit::lineage::tags;

use crate::harness::Ektool;
use crate::moto::{self, ec2};

/// Launches `count` instances tagged `key=prod` and backs them up with
/// ektool; returns the instances' root volumes.
async fn backed_up(region: &str, key: &str, count: i32) -> Vec<String> {
    let instances = moto::launch(region, count, Tags::new().with(key, "prod")).await;
    Ektool::moto()
        .args(&[
            "-r",
            region,
            "snap",
            "backup",
            "--tag",
            &format!("{key}=prod"),
        ])
        .run()
        .success();
    let mut vols: Vec<String> = instances
        .iter()
        .flat_map(|i| i.block_devices.iter().map(|b| b.volume_id.to_string()))
        .collect();
    vols.sort();
    vols
}

async fn copies(region: &str, key: &str) -> Vec<ec2kit::Snapshot> {
    ec2()
        .await
        .describe_snapshots(
            &Region::new(region),
            &[
                Filter::tag_key(tags::SOURCE_SNAPSHOT),
                Filter::new(format!("tag:{key}"), ["prod"]),
            ],
        )
        .await
        .unwrap()
}

fn started(out: &serde_json::Value) -> u64 {
    out["applied"]["started"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn replicate_copies_each_lineage_once_with_its_tags_and_a_rerun_copies_nothing() {
    let (from, to) = ("ca-central-1", "sa-east-1");
    let key = ektool_tests::unique("repl");
    let tag = format!("{key}=prod");
    let vols = backed_up(from, &key, 2).await;

    // The plan first: nothing changes.
    let dry = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "--dry-run",
            "snap",
            "replicate",
            "--from",
            from,
            "--to",
            to,
            "--tag",
            &tag,
        ])
        .run()
        .success()
        .json();
    let items = dry["plans"][0]["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), vols.len());
    assert!(items.iter().all(|i| i["action"] == "copy"), "{items:?}");
    assert!(copies(to, &key).await.is_empty());

    let out = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "snap",
            "replicate",
            "--from",
            from,
            "--to",
            to,
            "--tag",
            &tag,
            "--wait",
            "--poll",
            "1s",
        ])
        .run()
        .success()
        .json();
    assert_eq!(started(&out), vols.len() as u64, "{out}");
    let got = copies(to, &key).await;
    assert_eq!(got.len(), vols.len());
    let mut lineages: Vec<String> = got
        .iter()
        .map(|c| c.tags.get(tags::VOLUME).unwrap().to_owned())
        .collect();
    lineages.sort();
    assert_eq!(
        lineages, vols,
        "copies carry their source volume as lineage"
    );
    for c in &got {
        assert_eq!(c.tags.get(tags::SOURCE_REGION), Some(from));
        assert_eq!(c.tags.get(tags::OWNER), Some(tags::OWNER_VALUE));
        assert_eq!(c.tags.get(&key), Some("prod"), "user tags copied");
        assert!(c.tags.get(tags::SOURCE_TIME).is_some());
    }

    // A rerun copies nothing.
    let again = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "snap",
            "replicate",
            "--from",
            from,
            "--to",
            to,
            "--tag",
            &tag,
        ])
        .run()
        .success()
        .json();
    assert_eq!(started(&again), 0);
    assert!(
        again["plans"][0]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "present")
    );
    assert_eq!(copies(to, &key).await.len(), vols.len());

    // Up to date: lag passes its threshold.
    let lag = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "snap",
            "lag",
            "--from",
            from,
            "--to",
            to,
            "--tag",
            &tag,
            "--max-lag",
            "1h",
        ])
        .run()
        .success()
        .json();
    assert!(
        lag.as_array()
            .unwrap()
            .iter()
            .all(|r| r["behind_seconds"] == 0),
        "{lag}"
    );

    // Retention in the destination groups copies with their source lineage.
    let trim = Ektool::moto()
        .args(&[
            "-r",
            to,
            "--output",
            "json",
            "--dry-run",
            "snap",
            "trim",
            "--keep-last",
            "1",
        ])
        .run()
        .success()
        .json();
    let planned: Vec<String> = trim[0]["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| vols.contains(&d["lineage"].as_str().unwrap().to_owned()))
        .map(|d| d["lineage"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(planned.len(), vols.len());

    // A lineage with no copy is behind whatever the threshold.
    let inst = moto::launch(from, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let vol = inst.root_volume().unwrap().clone();
    ec2()
        .await
        .create_snapshot(
            &Region::new(from),
            &CreateSnapshot {
                volume_id: Some(vol.clone()),
                tags: Tags::new()
                    .with(tags::OWNER, tags::OWNER_VALUE)
                    .with(tags::VOLUME, vol.to_string())
                    .with(&key, "prod"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Ektool::moto()
        .args(&[
            "snap",
            "lag",
            "--from",
            from,
            "--to",
            to,
            "--tag",
            &tag,
            "--max-lag",
            "30d",
        ])
        .run()
        .code(1)
        .stdout_has("no copy")
        .stderr_has(vol.as_str());
}

#[tokio::test]
async fn replicate_all_gathers_into_the_primary_and_forwards_to_the_secondary() {
    let (a, b, primary, secondary) = ("eu-west-2", "ap-southeast-3", "eu-central-1", "eu-south-1");
    let key = ektool_tests::unique("rall");
    let tag = format!("{key}=prod");
    let vols_a = backed_up(a, &key, 1).await;
    let vols_b = backed_up(b, &key, 1).await;
    let vols_p = backed_up(primary, &key, 1).await;

    let run = |forward: bool| {
        let mut args = vec![
            "-r",
            a,
            "-r",
            b,
            "--output",
            "json",
            "snap",
            "replicate-all",
            "--primary",
            primary,
            "--secondary",
            secondary,
            "--tag",
            &tag,
            "--wait",
            "--poll",
            "1s",
        ];
        if forward {
            args.push("--forward-replicas");
        }
        Ektool::moto().args(&args).run().success().json()
    };
    run(false);
    let lineages = |snaps: Vec<ec2kit::Snapshot>| {
        let mut v: Vec<String> = snaps
            .iter()
            .map(|c| c.tags.get(tags::VOLUME).unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let mut want_p = [vols_a.clone(), vols_b.clone()].concat();
    want_p.sort();
    assert_eq!(lineages(copies(primary, &key).await), want_p);
    // native_only: the secondary gets only what was taken in the primary.
    assert_eq!(lineages(copies(secondary, &key).await), vols_p);

    // Forwarding sends the gathered replicas on; nothing is copied twice.
    run(true);
    let mut want_s = [vols_a, vols_b, vols_p].concat();
    want_s.sort();
    assert_eq!(lineages(copies(secondary, &key).await), want_s);
    let twice = run(true);
    assert_eq!(twice.as_array().unwrap().len(), 2, "two stages");
    assert!(
        twice.as_array().unwrap().iter().all(|s| started(s) == 0),
        "{twice}"
    );
}

#[tokio::test]
async fn an_unknown_kms_key_fails_before_any_copy_and_bad_regions_are_usage_errors() {
    let (from, to) = ("ap-southeast-2", "ap-south-1");
    let key = ektool_tests::unique("kms");
    backed_up(from, &key, 1).await;
    Ektool::moto()
        .args(&[
            "snap",
            "replicate",
            "--from",
            from,
            "--to",
            to,
            "--tag",
            &format!("{key}=prod"),
            "--kms-key",
            "alias/does-not-exist",
        ])
        .run()
        .code(1)
        .stderr_has("alias/does-not-exist");
    assert!(copies(to, &key).await.is_empty());
    Ektool::moto()
        .args(&["snap", "replicate", "--from", from, "--to", "ap-"])
        .run()
        .code(2)
        .stderr_has("ap-south-1");
    Ektool::moto()
        .args(&["snap", "replicate", "--from", from, "--to", from])
        .run()
        .code(2);
}
