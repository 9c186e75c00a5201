//! `ektool snap …` against moto, and `snap plan` offline.

use ec2kit::requests::CreateSnapshot;
use ec2kit::{Ec2, Region, Tags};
use ektool_tests::tempdir;
use snapkit::lineage::tags;

use crate::harness::Ektool;
use crate::moto::{self, ec2};

/// Launches an instance and snapshots its root volume `n` times with
/// ektool's tags (`owned`) or without.
async fn snapshots(region: &str, n: usize, owned: bool) -> Vec<String> {
    let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
    let ec2 = ec2().await;
    let region = Region::new(region);
    let vol = inst.root_volume().unwrap().clone();
    let mut t = Tags::new().with(tags::VOLUME, vol.to_string());
    if owned {
        t.insert(tags::OWNER, tags::OWNER_VALUE);
    }
    let mut ids = Vec::new();
    for _ in 0..n {
        let s = ec2
            .create_snapshot(
                &region,
                &CreateSnapshot {
                    volume_id: Some(vol.clone()),
                    tags: t.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        ids.push(s.id.to_string());
    }
    ids
}

async fn all_snapshot_ids(region: &str) -> Vec<String> {
    let mut ids: Vec<String> = ec2()
        .await
        .describe_snapshots(&Region::new(region), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    ids.sort();
    ids
}

fn ids_with(plan: &serde_json::Value, action: &str) -> Vec<String> {
    let mut v: Vec<String> = plan
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["plan"].as_array().unwrap().iter())
        .filter(|d| d["action"] == action)
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn trim_dry_run_changes_nothing_then_trim_deletes_only_what_the_plan_said() {
    let region = "ap-northeast-3";
    let owned = snapshots(region, 3, true).await;
    let foreign = snapshots(region, 2, false).await;
    let before = all_snapshot_ids(region).await;
    assert!(
        before.len() > 1000,
        "moto's preloaded AMI snapshots are listed as self-owned"
    );

    let dry = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--dry-run",
            "--output",
            "json",
            "snap",
            "trim",
            "--keep-last",
            "1",
        ])
        .run()
        .success();
    let plan = dry.json();
    // Earlier (failed) runs on a long-lived bench may have left lineages
    // of their own: count this run's.
    let deleted_here = |ids: Vec<String>| ids.into_iter().filter(|id| owned.contains(id)).count();
    assert_eq!(deleted_here(ids_with(&plan, "delete")), 2);
    let kept_here: Vec<String> = ids_with(&plan, "keep")
        .into_iter()
        .filter(|id| owned.contains(id))
        .collect();
    assert_eq!(kept_here.len(), 1);
    assert_eq!(
        all_snapshot_ids(region).await,
        before,
        "a dry run deletes nothing"
    );

    let real = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--output",
            "json",
            "snap",
            "trim",
            "--yes",
            "--keep-last",
            "1",
        ])
        .run()
        .success();
    let deleted = ids_with(&real.json(), "delete");
    assert_eq!(
        deleted,
        ids_with(&plan, "delete"),
        "apply did what the dry run showed"
    );
    let after = all_snapshot_ids(region).await;
    assert_eq!(after.len(), before.len() - deleted.len());
    // Everything ektool made in the region (earlier runs' too).
    let ours: Vec<String> = ec2()
        .await
        .describe_snapshots(
            &Region::new(region),
            &[ec2kit::Filter::new(
                format!("tag:{}", tags::OWNER),
                [tags::OWNER_VALUE],
            )],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .chain(deleted.iter().cloned())
        .collect();
    for id in &deleted {
        assert!(ours.contains(id));
        assert!(!after.contains(id));
    }
    for id in &foreign {
        assert!(
            after.contains(id),
            "a snapshot ektool did not make survives"
        );
    }
    // Every preloaded AMI snapshot survives too.
    let untouched: Vec<&String> = before.iter().filter(|id| !ours.contains(id)).collect();
    assert!(untouched.iter().all(|id| after.contains(id)));
}

#[tokio::test]
async fn list_writes_the_inventory_plan_reads() {
    let region = "af-south-1";
    let ours = snapshots(region, 4, true).await;
    snapshots(region, 1, false).await;
    let dir = tempdir();
    let inv = dir.path().join("inventory.json");
    let list = Ektool::moto()
        .args(&["-r", region, "--output", "json", "snap", "list"])
        .run()
        .success();
    let listed = list.json();
    let listed = listed.as_array().unwrap();
    assert!(
        listed
            .iter()
            .all(|s| s["tags"][tags::OWNER] == tags::OWNER_VALUE),
        "only ektool's snapshots are listed"
    );
    // This run's lineage (earlier runs on a long-lived bench left others).
    let mine: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|s| ours.contains(&s["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(mine.len(), 4);
    for s in &mine {
        for field in ["id", "volume_id", "start_time", "state", "tags"] {
            assert!(s.get(field).is_some(), "{field} missing in {s}");
        }
    }
    std::fs::write(&inv, serde_json::to_vec(&mine).unwrap()).unwrap();
    // Offline: no endpoint, no credentials.
    let plan = Ektool::new()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(&[
            "--output",
            "json",
            "snap",
            "plan",
            "--inventory",
            inv.to_str().unwrap(),
            "--keep-last",
            "2",
        ])
        .run()
        .success()
        .stderr_has("AMI-backed snapshots were not checked");
    let decisions = plan.json();
    let actions: Vec<&str> = decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "delete").count(), 2);
    assert!(
        decisions
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["reason"].is_string() && d["id"].is_string())
    );
}

#[test]
fn plan_offline_projects_into_the_future_and_validates_input() {
    let dir = tempdir();
    let inv = dir.path().join("inv.json");
    let rows: Vec<serde_json::Value> = (1..=9)
        .map(|d| {
            serde_json::json!({
                "id": format!("snap-0000000{d}"), "volume_id": "vol-00000001",
                "start_time": format!("2026-01-0{d}T00:00:00Z"), "state": "completed",
                "tags": {"ektool:owner": "ektool"}
            })
        })
        .collect();
    std::fs::write(&inv, serde_json::to_string(&rows).unwrap()).unwrap();
    let inv_s = inv.to_str().unwrap();
    // What will still exist on 2026-01-08 under a 2-day rolling policy?
    let out = Ektool::new()
        .args(&[
            "--output",
            "json",
            "snap",
            "plan",
            "--inventory",
            inv_s,
            "--policy",
            "twoday_rolling",
            "--now",
            "2026-01-08",
        ])
        .run()
        .success();
    let kept: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "keep")
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kept,
        [
            "snap-00000006",
            "snap-00000007",
            "snap-00000008",
            "snap-00000009"
        ]
    );

    Ektool::new()
        .args(&[
            "snap",
            "plan",
            "--inventory",
            inv_s,
            "--policy",
            "alternating_weekends",
        ])
        .run()
        .code(2)
        .stderr_has("unknown retention policy");
    Ektool::new()
        .args(&[
            "snap",
            "plan",
            "--inventory",
            inv_s,
            "--policy",
            "oneday_rolling",
            "--keep-daily",
            "3",
        ])
        .run()
        .code(2)
        .stderr_has("--keep-*");
    Ektool::new()
        .args(&["snap", "plan", "--inventory", inv_s, "--now", "yesterday"])
        .run()
        .code(2)
        .stderr_has("invalid --now");
    std::fs::write(&inv, "[{\"id\": 1}]").unwrap();
    Ektool::new()
        .args(&["snap", "plan", "--inventory", inv_s])
        .run()
        .code(2)
        .stderr_has("inv.json:1:");
    Ektool::new()
        .args(&["snap", "plan", "--inventory", "/nonexistent.json"])
        .run()
        .code(2)
        .stderr_has("/nonexistent.json");
}

#[tokio::test]
async fn count_warns_above_the_threshold() {
    let region = "eu-west-3";
    let count = || async {
        Ektool::moto()
            .args(&[
                "-r",
                region,
                "--output",
                "json",
                "snap",
                "count",
                "--warn-at",
                "100000",
            ])
            .run()
            .success()
            .json()[0]["snapshots"]
            .as_u64()
            .unwrap()
    };
    let before = count().await;
    snapshots(region, 2, true).await;
    let out = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--output",
            "json",
            "snap",
            "count",
            "--warn-at",
            "100",
        ])
        .run()
        .success();
    assert_eq!(out.json()[0]["snapshots"], before + 2);
    Ektool::moto()
        .args(&["-r", region, "snap", "count", "--warn-at", "1"])
        .run()
        .code(1)
        .stderr_has("over 1 in eu-west-3");
}

#[tokio::test]
async fn delete_broken_only_looks_at_the_regions_asked_for() {
    // moto never produces `error` snapshots: this pins the empty path and
    // the region scoping (the seed swept every region whatever it was told).
    let out = Ektool::moto()
        .args(&[
            "-r",
            "ap-south-1",
            "--output",
            "json",
            "snap",
            "delete-broken",
        ])
        .run()
        .success();
    let v = out.json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["region"], "ap-south-1");
}

async fn launch_tagged(region: &str, key: &str, value: &str, count: i32) -> Vec<ec2kit::Instance> {
    moto::launch(
        region,
        count,
        Tags::new().with(key, value).with("Name", "app"),
    )
    .await
}

#[tokio::test]
async fn backup_by_tag_tags_at_creation_and_a_rerun_creates_nothing() {
    let region = "us-west-1";
    let key = ektool_tests::unique("backup");
    let prod = launch_tagged(region, &key, "prod", 2).await;
    launch_tagged(region, &key, "staging", 1).await;
    let tag = format!("{key}=prod");

    let out = Ektool::moto()
        .args(&[
            "-r", region, "--output", "json", "snap", "backup", "--tag", &tag,
        ])
        .run()
        .success();
    let results = out.json();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r["status"] == "created"),
        "{results:?}"
    );

    let ec2 = ec2().await;
    for inst in &prod {
        let snaps = ec2
            .describe_snapshots(
                &Region::new(region),
                &[ec2kit::Filter::new(
                    "tag:ektool:instance",
                    [inst.id.to_string()],
                )],
            )
            .await
            .unwrap();
        assert_eq!(snaps.len(), inst.block_devices.len());
        for s in &snaps {
            assert_eq!(s.tags.get(tags::OWNER), Some(tags::OWNER_VALUE));
            assert_eq!(s.tags.get(tags::ORIGIN_REGION), Some(region));
            assert_eq!(s.tags.get(&key), Some("prod"), "instance tags copied");
            assert!(s.tags.get(tags::SET).is_some());
            assert_eq!(
                snapkit::backup::device_of(s).as_deref(),
                inst.root_device_name.as_deref()
            );
        }
    }

    let again = Ektool::moto()
        .args(&[
            "-r", region, "--output", "json", "snap", "backup", "--tag", &tag,
        ])
        .run()
        .success();
    assert!(
        again
            .json()
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "already_done")
    );
    Ektool::moto()
        .args(&["-r", region, "snap", "backup", "--tag", &tag])
        .run()
        .success()
        .stdout_has("already done in this window");
}

#[tokio::test]
async fn backup_of_a_volume_alias_and_bad_ids_are_rejected_before_any_call() {
    let region = "eu-north-1";
    let inst = launch_tagged(region, "alias-test", "x", 1).await.remove(0);
    let vol = inst.root_volume().unwrap().to_string();
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!("[volumes.db]\nvolume_id = \"{vol}\"\nregion = \"eu-north-1\"\n"),
    )
    .unwrap();
    let out = Ektool::moto()
        .args(&["--output", "json", "snap", "backup", "--volume", "db"])
        .current_dir(dir.path())
        .run()
        .success();
    let r = &out.json()[0];
    assert_eq!(r["status"], "created");
    assert_eq!(r["volume"], vol);
    let snaps = ec2()
        .await
        .describe_snapshots(
            &Region::new(region),
            &[ec2kit::Filter::new("tag:ektool:volume", [vol.clone()])],
        )
        .await
        .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].tags.get(tags::INSTANCE), Some(inst.id.as_str()));

    // An endpoint that does not exist proves nothing was called.
    let offline = || {
        Ektool::new().args(&[
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--no-rate-limit",
            "-r",
            "us-east-1",
        ])
    };
    offline()
        .args(&["snap", "backup", "--instance", "i-nothex!"])
        .run()
        .code(2)
        .stderr_has("invalid instance id");
    offline()
        .args(&["snap", "backup", "--volume", "dbx"])
        .current_dir(dir.path())
        .run()
        .code(2)
        .stderr_has("aliases: db");
    offline()
        .args(&["snap", "backup", "--window", "90"])
        .run()
        .code(2)
        .stderr_has("--window")
        .stderr_has("has no unit");
}

#[tokio::test]
async fn backup_wait_reports_completion() {
    let region = "us-east-2";
    let key = ektool_tests::unique("wait");
    launch_tagged(region, &key, "yes", 2).await;
    Ektool::moto()
        .args(&[
            "-r",
            region,
            "snap",
            "backup",
            "--tag",
            &format!("{key}=yes"),
            "--wait",
            "--wait-timeout",
            "5m",
        ])
        .run()
        .success()
        .stdout_has("us-east-2: 2 of 2 snapshots completed");
}

#[tokio::test]
async fn consistent_backup_of_an_alias_freezes_and_locks_around_the_snapshot() {
    let region = "eu-south-1";
    let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
    let vol = inst.root_volume().unwrap().to_string();
    let host = ektool_tests::ssh_host(1);
    let dir = tempdir();
    let log = dir.path().join("log");
    let rec = dir.path().join("rec");
    std::fs::write(
        &rec,
        format!("#!/bin/sh\necho \"$1 $2\" >> '{}'\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = |known_hosts: &str| {
        format!(
            "[ssh]\nknown_hosts = \"{known_hosts}\"\nidentity_files = [\"{key}\"]\nuse_agent = false\n\n\
             [consistency]\nfreeze = \"{r} freeze {{}}\"\nthaw = \"{r} thaw {{}}\"\nmax_hold_seconds = 30\n\
             db_lock = {{ kind = \"commands\", lock = \"{r} lock db\", unlock = \"{r} unlock db\" }}\n\n\
             [volumes.db]\nvolume_id = \"{vol}\"\nregion = \"{region}\"\nmountpoint = \"/var/lib/mysql\"\nlock_db = true\nhost = \"{target}\"\n",
            key = host.client_key.display(),
            r = rec.display(),
            target = host.target(),
        )
    };
    let kh = host.write_known_hosts(dir.path());
    std::fs::write(dir.path().join("ektool.toml"), config(kh.to_str().unwrap())).unwrap();
    let out = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "snap",
            "backup",
            "--volume",
            "db",
            "--consistent",
        ])
        .current_dir(dir.path())
        .run()
        .success();
    let r = &out.json()[0];
    assert_eq!(r["status"], "created", "{r}");
    assert!(
        r["notes"][0].as_str().unwrap().starts_with("held on"),
        "{r}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        [
            "lock db",
            "freeze /var/lib/mysql",
            "thaw /var/lib/mysql",
            "unlock db"
        ]
    );

    // An untrusted host: nothing frozen, nothing snapshotted, exit 1.
    std::fs::remove_file(&log).unwrap();
    std::fs::write(
        dir.path().join("ektool.toml"),
        config(dir.path().join("empty_known_hosts").to_str().unwrap()),
    )
    .unwrap();
    let out = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "snap",
            "backup",
            "--volume",
            "db",
            "--consistent",
            "--window",
            "2h",
        ])
        .current_dir(dir.path())
        .run()
        .code(1);
    assert!(
        out.json()[0]["error"]
            .as_str()
            .unwrap()
            .contains("host key is not known"),
        "{}",
        out.stdout
    );
    assert!(!log.exists(), "nothing was frozen");
    let snaps = ec2()
        .await
        .describe_snapshots(
            &Region::new(region),
            &[ec2kit::Filter::new("tag:ektool:volume", [vol])],
        )
        .await
        .unwrap();
    assert_eq!(snaps.len(), 1, "only the consistent backup exists");
}

/// H1: an instance (and its volume) tagged with a key whose 4th byte is
/// inside a character backs up: the run does not panic, and the tags are
/// copied onto the snapshot.
#[tokio::test]
async fn backup_of_an_instance_with_a_cjk_tag_key() {
    let region = "ap-northeast-1";
    let key = ektool_tests::unique("cjk");
    let inst = moto::launch(
        region,
        1,
        Tags::new()
            .with(&key, "yes")
            .with("部署", "本番")
            .with("Env€", "prod"),
    )
    .await
    .remove(0);
    let ec2 = ec2().await;
    let r = Region::new(region);
    ec2.create_tags(
        &r,
        &[inst.root_volume().unwrap().to_string()],
        &Tags::new().with("成本中心", "研究"),
        false,
    )
    .await
    .unwrap();
    let out = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--output",
            "json",
            "snap",
            "backup",
            "--tag",
            &format!("{key}=yes"),
        ])
        .run()
        .success();
    let results = out.json();
    assert_eq!(results[0]["status"], "created", "{results}");
    let snaps = ec2
        .describe_snapshots(
            &r,
            &[ec2kit::Filter::new(
                format!("tag:{}", tags::INSTANCE),
                [inst.id.as_str()],
            )],
        )
        .await
        .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].tags.get("部署"), Some("本番"));
    assert_eq!(snaps[0].tags.get("Env€"), Some("prod"));
}

/// A config for a consistent backup of the alias `db` (volume `vol`) on
/// bench host 1, with recording freeze/lock commands.
fn consistent_config(
    dir: &std::path::Path,
    vol: &str,
    region: &str,
    freeze: &str,
    lock: &str,
) -> std::path::PathBuf {
    let host = ektool_tests::ssh_host(1);
    let log = dir.join("log");
    let rec = dir.join("rec");
    std::fs::write(
        &rec,
        format!("#!/bin/sh\necho \"$1 $2\" >> '{}'\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kh = host.write_known_hosts(dir);
    let r = rec.display();
    std::fs::write(
        dir.join("ektool.toml"),
        format!(
            "[ssh]\nknown_hosts = \"{kh}\"\nidentity_files = [\"{key}\"]\nuse_agent = false\n\n\
             [consistency]\nfreeze = \"{freeze}\"\nthaw = \"{r} thaw {{}}\"\nmax_hold_seconds = 60\n\
             db_lock = {{ kind = \"commands\", lock = \"{lock}\", unlock = \"{r} unlock db\" }}\n\n\
             [volumes.db]\nvolume_id = \"{vol}\"\nregion = \"{region}\"\nmountpoint = \"/var/lib/mysql\"\nlock_db = true\nhost = \"{target}\"\n",
            kh = kh.display(),
            key = host.client_key.display(),
            freeze = freeze.replace("{rec}", &r.to_string()),
            lock = lock.replace("{rec}", &r.to_string()),
            target = host.target(),
        ),
    )
    .unwrap();
    log
}

fn lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn snapshots_of(region: &str, vol: &str) -> usize {
    ec2()
        .await
        .describe_snapshots(
            &Region::new(region),
            &[ec2kit::Filter::new("volume-id", [vol])],
        )
        .await
        .unwrap()
        .len()
}

/// M12: `--dry-run snap backup --consistent` reaches the host (strict host
/// key) and says what it would hold; nothing is frozen, locked or
/// snapshotted. An unknown host key still fails it.
#[tokio::test]
async fn a_dry_run_consistent_backup_freezes_and_locks_nothing() {
    let region = "eu-west-3";
    let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
    let vol = inst.root_volume().unwrap().to_string();
    let dir = tempdir();
    let log = consistent_config(dir.path(), &vol, region, "{rec} freeze {}", "{rec} lock db");
    let out = Ektool::moto()
        .args(&[
            "--dry-run",
            "--output",
            "json",
            "snap",
            "backup",
            "--volume",
            "db",
            "--consistent",
        ])
        .current_dir(dir.path())
        .run()
        .success();
    let r = &out.json()[0];
    assert_eq!(r["status"], "dry_run_ok", "{r}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("would hold on") && notes.contains("freeze /var/lib/mysql"),
        "{notes}"
    );
    assert!(lines(&log).is_empty(), "nothing ran: {:?}", lines(&log));
    assert_eq!(snapshots_of(region, &vol).await, 0);

    std::fs::write(dir.path().join("empty_known_hosts"), "").unwrap();
    let text = std::fs::read_to_string(dir.path().join("ektool.toml")).unwrap();
    let strict = text.replacen(
        &format!("known_hosts = \"{}", dir.path().display()),
        &format!(
            "known_hosts = \"{}/empty_known_hosts\" # \"{}",
            dir.path().display(),
            dir.path().display()
        ),
        1,
    );
    std::fs::write(dir.path().join("ektool.toml"), strict).unwrap();
    let out = Ektool::moto()
        .args(&[
            "--dry-run",
            "--output",
            "json",
            "snap",
            "backup",
            "--volume",
            "db",
            "--consistent",
        ])
        .current_dir(dir.path())
        .run()
        .code(1);
    assert!(
        out.json()[0]["error"]
            .as_str()
            .unwrap()
            .contains("host key is not known"),
        "{}",
        out.stdout
    );
    assert!(lines(&log).is_empty());
}

/// SIGINT while the database lock is being taken (the lock command has
/// run, and is slow to return) and SIGTERM while the freeze is: the real
/// binary releases what it holds, never goes on to freeze or snapshot, and
/// exits 130 / 143. (Without watching the signal it would finish taking
/// the hold a moment later and snapshot.)
#[tokio::test]
async fn a_signal_during_a_consistent_backup_releases_and_exits_128_plus_it() {
    let region = "us-gov-east-1";
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
        let vol = inst.root_volume().unwrap().to_string();
        let dir = tempdir();
        let marker = dir.path().join("holding");
        let slow = format!("&& touch '{}' && sleep 5", marker.display());
        let (freeze, lock, held, released): (String, String, &[&str], &[&str]) = if signal == "INT"
        {
            (
                "{rec} freeze {}".into(),
                format!("{{rec}} lock db {slow}"),
                &["lock db"],
                &["lock db", "unlock db"],
            )
        } else {
            (
                format!("{{rec}} freeze {{}} {slow}"),
                "{rec} lock db".into(),
                &["lock db", "freeze /var/lib/mysql"],
                &[
                    "lock db",
                    "freeze /var/lib/mysql",
                    "thaw /var/lib/mysql",
                    "unlock db",
                ],
            )
        };
        let log = consistent_config(dir.path(), &vol, region, &freeze, &lock);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ektool"))
            .args([
                "--no-rate-limit",
                "snap",
                "backup",
                "--volume",
                "db",
                "--consistent",
            ])
            .env("EKTOOL_ENDPOINT_URL", ektool_tests::moto_url())
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env_remove("EKTOOL_CONFIG")
            .env_remove("AWS_ENDPOINT_URL_EC2")
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded waits, not timing claims.
        for _ in 0..600 {
            if marker.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(marker.exists(), "SIG{signal}: the hold is being taken");
        assert_eq!(lines(&log), held);
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut status = None;
        for _ in 0..1200 {
            if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let Some(status) = status else {
            let _ = child.kill();
            panic!("ektool did not exit after SIG{signal}");
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(code), "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert_eq!(
            lines(&log),
            released,
            "SIG{signal}: released before exiting, never went on"
        );
        assert_eq!(snapshots_of(region, &vol).await, 0, "nothing snapshotted");
    }
}

/// `snap trim` deletes only when told: without a terminal it needs
/// `--yes` (or the config's opt-in), and a plan over `--max-delete` is
/// refused; both change nothing.
#[tokio::test]
async fn trim_needs_yes_without_a_terminal_and_honours_max_delete() {
    // A region no other test trims (trim acts on every lineage in it).
    let region = "cn-north-1";
    let owned = snapshots(region, 4, true).await;
    let trim = |extra: &[&str]| {
        let mut args = vec!["-r", region, "snap", "trim", "--keep-last", "1"];
        args.extend_from_slice(extra);
        Ektool::moto().args(&args)
    };
    trim(&[])
        .run()
        .code(2)
        .stderr_has("pass --yes")
        .stderr_has("no terminal");
    assert_eq!(present(region, &owned).await, 4, "nothing deleted");
    trim(&["--yes", "--max-delete", "2"])
        .run()
        .code(1)
        .stderr_has("more than the cap of 2");
    assert_eq!(present(region, &owned).await, 4, "nothing deleted");
    trim(&["--max-delete", "-1"]).run().code(2);

    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[retention]\nunattended_trim = true\nmax_delete = 100\n",
    )
    .unwrap();
    trim(&[]).current_dir(dir.path()).run().success();
    assert_eq!(present(region, &owned).await, 1);
}

/// How many of `ids` still exist in `region`.
async fn present(region: &str, ids: &[String]) -> usize {
    let all = all_snapshot_ids(region).await;
    ids.iter().filter(|i| all.contains(i)).count()
}

/// On a terminal, trim shows the plan and asks; anything but yes deletes
/// nothing. (`script` gives ektool a pseudo-terminal.)
#[tokio::test]
async fn trim_on_a_terminal_asks_first() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `script` (util-linux) to make a terminal");
        return;
    }
    let region = "cn-northwest-1";
    let owned = snapshots(region, 3, true).await;
    let run = |answer: &str| {
        let line = format!(
            "{} --no-rate-limit -r {region} snap trim --keep-last 1",
            env!("CARGO_BIN_EXE_ektool")
        );
        let mut child = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("EKTOOL_ENDPOINT_URL", ektool_tests::moto_url())
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env_remove("EKTOOL_CONFIG")
            .current_dir(std::env::temp_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let no = run("n\n");
    let text = String::from_utf8_lossy(&no.stdout);
    assert!(text.contains("[y/N]"), "{text}");
    assert!(text.contains("not confirmed"), "{text}");
    let all = all_snapshot_ids(region).await;
    assert_eq!(owned.iter().filter(|i| all.contains(i)).count(), 3);
    let yes = run("y\n");
    assert!(
        yes.status.success(),
        "{}",
        String::from_utf8_lossy(&yes.stdout)
    );
    let all = all_snapshot_ids(region).await;
    assert_eq!(owned.iter().filter(|i| all.contains(i)).count(), 1);
}

/// Bad input is one `error:` line and exit 2, before any AWS call.
#[test]
fn bad_retention_and_duration_input_is_refused() {
    let offline = || {
        Ektool::new().args(&[
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--no-rate-limit",
            "-r",
            "us-east-1",
        ])
    };
    for (args, says) in [
        (&["snap", "trim", "--keep-within", "20000y"][..], "20000y"),
        (&["snap", "trim", "--keep-daily", "-2"][..], "-2"),
        (
            &[
                "snap",
                "plan",
                "--keep-within",
                "99999999999h",
                "--inventory",
                "x",
            ][..],
            "invalid duration",
        ),
        (
            &["snap", "backup", "--wait", "--wait-timeout", "5"][..],
            "has no unit",
        ),
        (
            &[
                "snap",
                "replicate",
                "--from",
                "a",
                "--to",
                "b",
                "--poll",
                "15",
            ][..],
            "has no unit",
        ),
        (
            &["snap", "cleanup", "--older-than", "1y"][..],
            "months or years",
        ),
        (&["snap", "count", "--warn-at", "0"][..], "0"),
        (
            &[
                "snap",
                "mount",
                "snap-0123abcd",
                "--instance",
                "i-0123abcd",
                "--partition",
                "0",
            ][..],
            "0",
        ),
    ] {
        let out = offline().args(args).run().code(2);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(out.stderr.len() < 1000, "{}", out.stderr);
    }
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[retention]\npolicy = \"max-age:3x\"\n",
    )
    .unwrap();
    let out = offline()
        .args(&["snap", "trim", "--yes"])
        .current_dir(dir.path())
        .run()
        .code(2);
    assert!(
        out.stderr.contains("ektool.toml:2:10: ") && out.stderr.contains("invalid max-age"),
        "{}",
        out.stderr
    );
}
