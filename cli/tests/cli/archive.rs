//! The archive tier against moto: `snap trim` with `archive_after`,
//! `snap list`'s tier, `snap restore-tier`. moto moves a snapshot between
//! tiers at once (AWS takes hours): timing is not shown here.

use std::time::Duration;

use ec2kit::requests::{CopySnapshot, CreateSnapshot, RegisterImage};
use ec2kit::{Ec2, Filter, Region, Tags};
use snapkit::lineage::tags;

use crate::harness::Ektool;
use crate::moto::{self, ec2};

/// A config that keeps everything (ten years) and archives every kept
/// snapshot but the newest, with this region's list prices.
fn config(region: &str) -> tempfile::TempDir {
    let dir = ektool_tests::tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!(
            "[retention]\npolicy = \"max-age:3650d\"\narchive_after = \"0d\"\n\n\
             [retention.prices.\"{region}\"]\nstandard_gb_month = 0.05\narchive_gb_month = 0.0125\n"
        ),
    )
    .unwrap();
    dir
}

/// The action the region's plan gives each of `ids`.
fn actions(out: &serde_json::Value, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            out[0]["plan"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id.as_str())
                .map_or("absent".to_owned(), |d| {
                    d["action"].as_str().unwrap().to_owned()
                })
        })
        .collect()
}

/// The tier `snap list --output json` shows for each of `ids`.
fn tiers(region: &str, cfg: &std::path::Path, ids: &[String]) -> Vec<String> {
    let list = Ektool::moto()
        .current_dir(cfg)
        .args(&["-r", region, "--output", "json", "snap", "list"])
        .run()
        .success()
        .json();
    ids.iter()
        .map(|id| {
            let s = list
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["id"] == id.as_str())
                .unwrap();
            s["storage_tier"].as_str().unwrap_or("standard").to_owned()
        })
        .collect()
}

const OWNED: [(&str, &str); 1] = [(tags::OWNER, tags::OWNER_VALUE)];

#[tokio::test]
async fn trim_archives_what_the_policy_keeps_but_the_newest_and_an_amis() {
    // Shared with check.rs and a signal test of snap.rs, whose lineages
    // have one snapshot each: archiving all but the newest leaves them be.
    let region = "us-gov-east-1";
    let cfg = config(region);
    let c = cfg.path();
    let ec2 = ec2().await;
    let r = Region::new(region);
    let owned = || {
        let mut t = Tags::new();
        for (k, v) in OWNED {
            t.insert(k, v);
        }
        t
    };

    // An AMI (moto makes its snapshot, of a volume of its own), tagged as
    // ektool's: its lineage then gets two copies, a second later.
    let image = ec2
        .register_image(
            &r,
            &RegisterImage {
                name: ektool_tests::unique("archive-ami"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ami_snap = ec2
        .describe_images(&r, &[Filter::new("image-id", [image.as_str()])])
        .await
        .unwrap()[0]
        .snapshot_ids()
        .next()
        .unwrap()
        .to_string();
    ec2.create_tags(&r, std::slice::from_ref(&ami_snap), &owned(), false)
        .await
        .unwrap();
    // EC2 times snapshots to the second: the copies are strictly newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut ami_lineage = vec![ami_snap.clone()];
    for _ in 0..2 {
        let copy = ec2
            .copy_snapshot(
                &r,
                &CopySnapshot {
                    source_region: Some(r.clone()),
                    source_snapshot_id: Some(ami_snap.parse().unwrap()),
                    tags: owned(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        ami_lineage.push(copy.to_string());
    }

    // A plain lineage of four.
    let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
    let vol = inst.root_volume().unwrap().clone();
    let mut plain = Vec::new();
    for _ in 0..4 {
        let s = ec2
            .create_snapshot(
                &r,
                &CreateSnapshot {
                    volume_id: Some(vol.clone()),
                    tags: owned().with(tags::VOLUME, vol.to_string()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        plain.push(s.id.to_string());
    }
    let ids: Vec<String> = plain.iter().chain(&ami_lineage).cloned().collect();

    let dry = Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "--dry-run",
            "--output",
            "json",
            "snap",
            "trim",
        ])
        .run()
        .success()
        .json();
    let plan = dry[0]["plan"].as_array().unwrap();
    let action = |id: &str| {
        plan.iter().find(|d| d["id"] == id).unwrap()["action"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let archived: Vec<String> = ids
        .iter()
        .filter(|id| action(id) == "archive")
        .cloned()
        .collect();
    // The plain lineage: all but its newest (snapshots of one second tie:
    // the newest is the one the plan keeps).
    let kept_plain: Vec<&String> = plain.iter().filter(|id| action(id) == "keep").collect();
    assert_eq!(kept_plain.len(), 1, "{plan:?}");
    assert_eq!(
        actions(&dry, &plain)
            .iter()
            .filter(|a| *a == "archive")
            .count(),
        3
    );
    // The AMI's lineage: never the AMI's snapshot (the oldest), the older
    // copy, never the newest copy.
    assert_eq!(action(&ami_snap), "keep", "{plan:?}");
    assert_eq!(
        actions(&dry, &ami_lineage[1..])
            .iter()
            .filter(|a| *a == "archive")
            .count(),
        1,
        "{plan:?}"
    );
    assert_eq!(archived.len(), 4);
    for id in &archived {
        let d = plan.iter().find(|d| d["id"] == id.as_str()).unwrap();
        assert_eq!(
            d["reason"],
            "younger than 87600h; older than 0d: to the archive tier"
        );
    }
    // The cost line: bytes of every archive of the region (a long-lived
    // bench may hold other lineages), priced from the config's table.
    let cost = &dry[0]["archive_cost"];
    assert!(cost["snapshots"].as_u64().unwrap() >= 4, "{cost}");
    let gib: u64 = plan
        .iter()
        .filter(|d| d["action"] == "archive")
        .map(|d| d["size_gib"].as_u64().unwrap())
        .sum();
    assert_eq!(cost["bytes"].as_u64().unwrap(), gib * (1 << 30), "{cost}");
    let diff = cost["monthly_difference"].as_f64().unwrap();
    assert!((diff - gib as f64 * (0.0125 - 0.05)).abs() < 1e-6, "{cost}");
    // The human plan says the same, with the cost line.
    Ektool::moto()
        .current_dir(c)
        .args(&["-r", region, "--dry-run", "snap", "trim"])
        .run()
        .success()
        .stdout_has("to the archive tier)")
        .stdout_has("to the archive tier: -$")
        .stdout_has("dry run: nothing deleted, nothing archived");
    // --dry-run changed nothing.
    assert_eq!(tiers(region, c, &ids), vec!["standard"; ids.len()]);

    // Without a terminal or --yes, trim refuses.
    Ektool::moto()
        .current_dir(c)
        .args(&["-r", region, "snap", "trim"])
        .run()
        .code(2)
        .stderr_has("would archive");
    let done = Ektool::moto()
        .current_dir(c)
        .args(&["-r", region, "--output", "json", "snap", "trim", "--yes"])
        .run()
        .success()
        .json();
    let applied = done[0]["applied"]["results"].as_array().unwrap();
    for id in &archived {
        let a = applied.iter().find(|a| a["id"] == id.as_str()).unwrap();
        assert_eq!(a["outcome"], "archived", "{a}");
    }
    let want: Vec<&str> = ids
        .iter()
        .map(|id| {
            if archived.contains(id) {
                "archive"
            } else {
                "standard"
            }
        })
        .collect();
    assert_eq!(tiers(region, c, &ids), want);
    // `snap list` shows the tier.
    Ektool::moto()
        .current_dir(c)
        .args(&["-r", region, "snap", "list"])
        .run()
        .success()
        .stdout_has("TIER")
        .stdout_has(" archive ");

    // Idempotent: a rerun archives nothing more of ours, and archived
    // snapshots count like standard ones (still kept, nothing deleted).
    let again = Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "--dry-run",
            "--output",
            "json",
            "snap",
            "trim",
        ])
        .run()
        .success()
        .json();
    assert_eq!(actions(&again, &ids), vec!["keep"; ids.len()]);

    // restore-tier: a standard snapshot is refused, no --days nor
    // --permanent is refused, an archived one comes back (temporarily:
    // still archived; permanently: standard again).
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "snap",
            "restore-tier",
            kept_plain[0],
            "--days",
            "3",
        ])
        .run()
        .code(2)
        .stderr_has("not archived");
    Ektool::moto()
        .current_dir(c)
        .args(&["-r", region, "snap", "restore-tier", &archived[0]])
        .run()
        .code(2);
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "--dry-run",
            "snap",
            "restore-tier",
            &archived[1],
            "--permanent",
        ])
        .run()
        .success()
        .stdout_has("dry run: would restore");
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "snap",
            "restore-tier",
            &archived[0],
            "--days",
            "3",
        ])
        .run()
        .success()
        .stdout_has("restoring for 3 day(s)");
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "snap",
            "restore-tier",
            &archived[1],
            "--permanent",
        ])
        .run()
        .success();
    let want: Vec<&str> = ids
        .iter()
        .map(|id| {
            if archived.contains(id) && *id != archived[1] {
                "archive"
            } else {
                "standard"
            }
        })
        .collect();
    assert_eq!(tiers(region, c, &ids), want);
}
