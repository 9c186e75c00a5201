//! `ektool snap check` against moto: fresh, missing, replicas, JSON, the
//! config's thresholds.

use ec2kit::Tags;

use crate::harness::Ektool;
use crate::moto;

/// Regions no other test uses.
const FROM: &str = "us-gov-east-1";
const TO: &str = "us-gov-west-1";

fn root(i: &ec2kit::Instance) -> String {
    i.root_volume().unwrap().to_string()
}

#[tokio::test]
async fn check_finds_missing_lineages_then_passes_once_everything_is_backed_up_and_copied() {
    let key = ektool_tests::unique("check");
    let tag = format!("{key}=prod");
    let first = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let backup = || {
        Ektool::moto()
            .args(&["-r", FROM, "snap", "backup", "--tag", &tag])
            .run()
            .success();
    };
    backup();
    // Tagged after the backup: never backed up.
    let second = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let check = |extra: &[&str]| {
        Ektool::moto()
            .args(&["-r", FROM, "snap", "check", "--tag", &tag])
            .args(extra)
    };

    let out = check(&[]).run().code(1);
    let missing = format!(
        "missing: {FROM} {} ({} {}): no completed snapshot",
        root(&second),
        second.id,
        second.block_devices[0].device_name
    );
    assert!(out.stderr.contains(&missing), "{}", out.stderr);
    assert!(!out.stderr.contains(&root(&first)), "{}", out.stderr);
    assert!(
        out.stderr.contains("1 check failure(s) in 2 lineage(s)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("MISSING") && out.stdout.contains(" ok"),
        "{}",
        out.stdout
    );

    let json = check(&[]).arg("--output").arg("json").run().code(1).json();
    let status = |v: &serde_json::Value, vol: &str, place: &str| {
        v["lineages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["lineage"] == vol && l["place"] == place)
            .map(|l| l["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        status(&json, &root(&first), "source").as_deref(),
        Some("fresh")
    );
    assert_eq!(
        status(&json, &root(&second), "source").as_deref(),
        Some("missing")
    );
    assert_eq!(json["failures"].as_array().unwrap().len(), 1);
    let newest = json["lineages"][0]["newest"].as_str().unwrap();
    assert!(newest.starts_with("snap-"), "{json}");

    // Everything backed up: the check passes.
    backup();
    check(&["--max-age", "1h"]).run().success().stdout_has("ok");

    // Replicas: none yet in the destination.
    let out = check(&["--to", TO, "--replica-max-age", "2h"])
        .run()
        .code(1);
    assert_eq!(out.stderr.matches("missing: ").count(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("missing: {TO} {}", root(&first))),
        "{}",
        out.stderr
    );
    Ektool::moto()
        .args(&[
            "snap",
            "replicate",
            "--from",
            FROM,
            "--to",
            TO,
            "--tag",
            &tag,
            "--wait",
            "--poll",
            "1s",
        ])
        .run()
        .success();
    let json = check(&["--to", TO, "--replica-max-age", "2h", "--output", "json"])
        .run()
        .success()
        .json();
    assert_eq!(
        status(&json, &root(&first), "replica").as_deref(),
        Some("fresh")
    );
    assert_eq!(
        status(&json, &root(&second), "replica").as_deref(),
        Some("fresh")
    );
}

#[tokio::test]
async fn aliases_carry_their_thresholds_and_bad_thresholds_are_errors_at_their_place() {
    let key = ektool_tests::unique("check-alias");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let dir = ektool_tests::tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!(
            "[check]\nmax_age = \"2h\"\n\n[volumes.data]\nvolume_id = \"{}\"\nregion = \"{FROM}\"\nmax_age = \"5m\"\n",
            root(&inst)
        ),
    )
    .unwrap();
    let check = || {
        Ektool::moto()
            .args(&["-r", FROM, "snap", "check", "--aliases-only"])
            .current_dir(dir.path())
    };
    let out = check().run().code(1);
    assert!(
        out.stderr.contains(&format!(
            "missing: {FROM} {} (data): no completed snapshot",
            root(&inst)
        )),
        "{}",
        out.stderr
    );
    Ektool::moto()
        .args(&["-r", FROM, "snap", "backup", "--volume", "data"])
        .current_dir(dir.path())
        .run()
        .success();
    let json = check().args(&["--output", "json"]).run().success().json();
    let lineages = json["lineages"].as_array().unwrap();
    assert_eq!(lineages.len(), 1, "{json}");
    assert_eq!(lineages[0]["alias"], "data");
    assert_eq!(lineages[0]["max_age_seconds"], 300);

    for (toml, place, says) in [
        (
            "[check]\nmax_age = \"3x\"\n",
            "ektool.toml:2:11: ",
            "max_age",
        ),
        (
            "[check.tags]\n\"Tier=db\" = \"0s\"\n",
            "ektool.toml:2:13: ",
            "`0s` is out of range",
        ),
        (
            "[check.tags]\n\"nokey\" = \"1h\"\n",
            "ektool.toml:2:1: ",
            "nokey",
        ),
    ] {
        std::fs::write(dir.path().join("ektool.toml"), toml).unwrap();
        let out = Ektool::new()
            .args(&["-r", FROM, "snap", "check"])
            .current_dir(dir.path())
            .run()
            .code(2);
        assert!(
            out.stderr.contains(place) && out.stderr.contains(says),
            "{toml}: {}",
            out.stderr
        );
    }
    Ektool::new()
        .args(&["snap", "check", "--replica-max-age", "1h"])
        .run()
        .code(2)
        .stderr_has("--replica-max-age needs a destination");
}

/// `--metrics`: the file passes `promtool check metrics` (Prometheus's own
/// parser and linter) and carries the newest snapshot's timestamp, the
/// region's count and the run's outcome.
#[tokio::test]
async fn metrics_pass_promtool_and_carry_the_newest_timestamp() {
    let key = ektool_tests::unique("check-metrics");
    let tag = format!("{key}=prod");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    Ektool::moto()
        .args(&["-r", FROM, "snap", "backup", "--tag", &tag])
        .run()
        .success();
    let dir = ektool_tests::tempdir();
    let file = dir.path().join("ektool.prom");
    let before = jiff::Timestamp::now().as_second();
    Ektool::moto()
        .args(&["-r", FROM, "snap", "check", "--tag", &tag, "--metrics"])
        .arg(file.to_str().unwrap())
        .run()
        .success();
    let text = std::fs::read_to_string(&file).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let newest = line(&format!(
        "ektool_snapshot_newest_completed_timestamp_seconds{{region=\"{FROM}\",lineage=\"{}\",place=\"source\",instance=\"{}\"",
        root(&inst),
        inst.id
    ));
    assert!(
        (before - 600..=before + 60).contains(&(newest as i64)),
        "{newest}"
    );
    assert_eq!(line("ektool_last_run_success{command=\"snap check\"}"), 1.0);
    assert!(line(&format!("ektool_snapshots{{region=\"{FROM}\"}}")) >= 1.0);
    assert_eq!(line("ektool_check_failures"), 0.0);
    // Nothing but the file in its directory: the temporary was renamed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A failing check still writes its metrics, with success 0.
    let out = Ektool::moto()
        .args(&[
            "-r",
            FROM,
            "snap",
            "check",
            "--tag",
            &tag,
            "--to",
            TO,
            "--metrics",
        ])
        .arg(file.to_str().unwrap())
        .run()
        .code(1);
    assert!(out.stderr.contains("missing: "), "{}", out.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("ektool_last_run_success{command=\"snap check\"} 0\n"),
        "{text}"
    );

    promtool_accepts(&file);
}

/// `promtool check metrics` (Prometheus's own parser and linter) accepts
/// the file; skipped, with the reason printed, without promtool.
pub(crate) fn promtool_accepts(file: &std::path::Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let Ok(promtool) = which_promtool() else {
        println!(
            "skipped: promtool is not installed (scripts/testbed install adds Debian's prometheus)"
        );
        return;
    };
    let out = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--metrics` on `snap backup`, `replicate` and `trim`: what each did and
/// the run's outcome, in files promtool accepts.
#[tokio::test]
async fn backup_replicate_and_trim_write_metrics_too() {
    use ec2kit::Ec2;
    use snapkit::lineage::tags;

    let key = ektool_tests::unique("check-runs");
    let tag = format!("{key}=prod");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let dir = ektool_tests::tempdir();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let text = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();

    Ektool::moto()
        .args(&[
            "-r",
            FROM,
            "snap",
            "backup",
            "--tag",
            &tag,
            "--metrics",
            &file("backup.prom"),
        ])
        .run()
        .success();
    let t = text("backup.prom");
    assert!(
        t.contains(&format!(
            "ektool_backup_snapshots_created{{region=\"{FROM}\"}} 1\n"
        )),
        "{t}"
    );
    assert!(t.contains("ektool_backup_failures 0\n"), "{t}");
    assert!(
        t.contains("ektool_last_run_success{command=\"snap backup\"} 1\n"),
        "{t}"
    );
    promtool_accepts(&dir.path().join("backup.prom"));

    Ektool::moto()
        .args(&[
            "snap",
            "replicate",
            "--from",
            FROM,
            "--to",
            TO,
            "--tag",
            &tag,
            "--metrics",
            &file("replicate.prom"),
        ])
        .run()
        .success();
    let t = text("replicate.prom");
    assert!(t.contains("ektool_replicate_copies_started 1\n"), "{t}");
    assert!(
        t.contains("ektool_last_run_success{command=\"snap replicate\"} 1\n"),
        "{t}"
    );
    promtool_accepts(&dir.path().join("replicate.prom"));

    // A second snapshot of the lineage: trim --keep-last 1 deletes one.
    let vol = inst.root_volume().unwrap().clone();
    moto::ec2()
        .await
        .create_snapshot(
            &ec2kit::Region::new(FROM),
            &ec2kit::requests::CreateSnapshot {
                volume_id: Some(vol.clone()),
                tags: Tags::new()
                    .with(tags::OWNER, tags::OWNER_VALUE)
                    .with(tags::VOLUME, vol.to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Ektool::moto()
        .args(&[
            "-r",
            FROM,
            "snap",
            "trim",
            "--yes",
            "--keep-last",
            "1",
            "--metrics",
            &file("trim.prom"),
        ])
        .run()
        .success();
    let t = text("trim.prom");
    // At least ours (a run interrupted earlier may have left another).
    let deleted: f64 = t
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "ektool_trim_deleted_snapshots{{region=\"{FROM}\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("{t}"))
        .parse()
        .unwrap();
    assert!(deleted >= 1.0, "{t}");
    assert!(
        t.contains("ektool_last_run_success{command=\"snap trim\"} 1\n"),
        "{t}"
    );
    promtool_accepts(&dir.path().join("trim.prom"));

    // A failed run still writes its outcome.
    Ektool::moto()
        .args(&[
            "snap",
            "replicate",
            "--from",
            FROM,
            "--to",
            FROM,
            "--metrics",
            &file("bad.prom"),
        ])
        .run()
        .code(2);
    assert!(text("bad.prom").contains("ektool_last_run_success{command=\"snap replicate\"} 0\n"));
}

fn which_promtool() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .ok_or(())
}
