//! The example runs against the bench's moto: a tagged instance is backed
//! up, its set replicated to the second region, its own step counts the
//! region, a rerun creates nothing, a `[jobs.nightly]` in the config is the
//! night; a volume alias whose host cannot be reached makes the run fail,
//! one on a bench host is locked and frozen around its snapshot call.

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use ec2kit::requests::RunInstances;
use ec2kit::{AwsEc2, AwsEc2Options, Ec2, Filter, RateLimits, Region, Snapshot, Tags};
use ektool_tests::{moto_url, tempdir, unique};

async fn ec2() -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await
}

async fn ours(ec2: &AwsEc2, region: &str, tag: &str) -> Vec<Snapshot> {
    let filter = Filter::new(format!("tag:{tag}"), ["yes"]);
    ec2.describe_snapshots(&Region::new(region), &[filter])
        .await
        .unwrap()
}

/// Runs the example in `dir` (where its `ektool.toml` is).
fn nightly(dir: &std::path::Path, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nightly-backup"))
        .args(["--to", to])
        .current_dir(dir)
        // The job's lock: one per test (they run in parallel).
        .env("XDG_RUNTIME_DIR", dir)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env_remove("EKTOOL_CONFIG")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_nightly_job_backs_up_trims_and_replicates() {
    // Regions no other test uses: the trim acts on all of a region.
    let (from, to) = ("me-south-1", "ap-east-1");
    let tag = unique("nightly");
    let ec2 = ec2().await;
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count: 1,
        tags: Tags::new().with(&tag, "yes"),
        ..Default::default()
    };
    let inst = ec2
        .run_instances(&Region::new(from), &request)
        .await
        .unwrap()
        .remove(0);
    let dir = tempdir();
    let config = format!(
        "[defaults]\ntag = \"{tag}=yes\"\nregions = [\"{from}\"]\n\n\
         [aws]\nendpoint_url = \"{url}\"\nrate_limit = false\n\n\
         [retention]\npolicy = \"gfs\"\ngfs = {{ keep_last = 5 }}\n",
        url = moto_url(),
    );
    std::fs::write(dir.path().join("ektool.toml"), &config).unwrap();

    let report = run(&nightly(dir.path(), to), true);
    let backup = &step(&report, 0, "backup")["backup"];
    assert_eq!(backup["results"][0]["instance"], inst.id.as_str());
    assert_eq!(backup["results"][0]["status"], "created", "{report}");
    assert_eq!(
        step(&report, 1, "trim")[1]["region"],
        to,
        "the second region is trimmed too"
    );
    assert_eq!(step(&report, 2, "replicate")["started"], 1, "{report}");
    // The team's own step: the region's count, within the quota.
    assert_eq!(report["count"][0]["region"], from, "{report}");
    assert!(report["count"][0]["snapshots"].as_u64().unwrap() >= 1);
    assert_eq!(report["count"][0]["ok"], true);
    let made = ours(&ec2, from, &tag).await;
    assert_eq!(made.len(), 1, "one volume, one snapshot");
    assert_eq!(ours(&ec2, to, &tag).await.len(), 1, "one copy");

    // A rerun in the same window: nothing new, nothing copied twice.
    let report = run(&nightly(dir.path(), to), true);
    let backup = &step(&report, 0, "backup")["backup"];
    assert_eq!(backup["results"][0]["status"], "already_done");
    assert_eq!(ours(&ec2, from, &tag).await.len(), 1);
    assert_eq!(ours(&ec2, to, &tag).await.len(), 1);

    // The config's own `[jobs.nightly]` is the night: here only a check.
    let own = format!("{config}\n[jobs.nightly]\nsteps = [\"check\"]\n");
    std::fs::write(dir.path().join("ektool.toml"), own).unwrap();
    let report = run(&nightly(dir.path(), to), true);
    let steps = report["job"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{report}");
    assert_eq!(step(&report, 0, "check")["lineages"][0]["status"], "fresh");

    // A held alias whose host cannot be reached: reported, exit non-zero,
    // and that volume not snapshotted.
    let vol = inst.block_devices[0].volume_id.clone();
    let held = format!(
        "{config}\n[volumes.db]\nvolume_id = \"{vol}\"\nmountpoint = \"/data\"\n\
         host = \"nobody@127.0.0.1:1\"\n\n[ssh]\nknown_hosts = \"{kh}\"\nuse_agent = false\n",
        kh = dir.path().join("known_hosts").display(),
    );
    std::fs::write(dir.path().join("ektool.toml"), held).unwrap();
    let report = run(&nightly(dir.path(), to), false);
    let results = step(&report, 0, "backup")["backup"]["results"]
        .as_array()
        .unwrap();
    let held = results
        .iter()
        .find(|r| r["volume"] == vol.as_str())
        .unwrap();
    assert_eq!(held["status"], "failed", "{held}");
    assert_eq!(ours(&ec2, from, &tag).await.len(), 1);
}

/// The JSON report of a run, its exit status as expected.
fn run(out: &std::process::Output, success: bool) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.success(), success, "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// The library's report (`detail`) of the job's step `i`, which is `name`.
fn step<'a>(report: &'a serde_json::Value, i: usize, name: &str) -> &'a serde_json::Value {
    let step = &report["job"]["steps"][i];
    assert_eq!(step["step"], name, "{report}");
    &step["detail"]
}

/// A volume alias held on a bench host: locked and frozen around its
/// snapshot call, released after, and the hold noted in the report.
#[tokio::test]
async fn a_held_alias_is_locked_and_frozen_around_its_snapshot() {
    let (from, to) = ("me-south-1", "ap-east-1");
    let ec2 = ec2().await;
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count: 1,
        ..Default::default()
    };
    let inst = ec2
        .run_instances(&Region::new(from), &request)
        .await
        .unwrap()
        .remove(0);
    let vol = inst.block_devices[0].volume_id.clone();
    let host = ektool_tests::ssh_host(1);
    let dir = tempdir();
    let (log, rec) = (dir.path().join("log"), dir.path().join("rec"));
    let script = format!("#!/bin/sh\necho \"$1 $2\" >> '{}'\n", log.display());
    std::fs::write(&rec, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[defaults]\ntag = \"{tag}=yes\"\nregions = [\"{from}\"]\n\n\
         [aws]\nendpoint_url = \"{url}\"\nrate_limit = false\n\n\
         [ssh]\nknown_hosts = \"{kh}\"\nidentity_files = [\"{key}\"]\nuse_agent = false\n\n\
         [consistency]\nfreeze = \"{r} freeze {{}}\"\nthaw = \"{r} thaw {{}}\"\n\
         db_lock = {{ kind = \"commands\", lock = \"{r} lock db\", unlock = \"{r} unlock db\" }}\n\n\
         [volumes.db]\nvolume_id = \"{vol}\"\nmountpoint = \"/var/lib/mysql\"\nlock_db = true\n\
         host = \"{target}\"\n",
        tag = unique("held"),
        url = moto_url(),
        kh = host.write_known_hosts(dir.path()).display(),
        key = host.client_key.display(),
        r = rec.display(),
        target = host.target(),
    );
    std::fs::write(dir.path().join("ektool.toml"), config).unwrap();
    let report = run(&nightly(dir.path(), to), true);
    let results = step(&report, 0, "backup")["backup"]["results"]
        .as_array()
        .unwrap();
    let held = results
        .iter()
        .find(|r| r["volume"] == vol.as_str())
        .unwrap();
    assert_eq!(held["status"], "created", "{held}");
    assert!(held["notes"][0].as_str().unwrap().starts_with("held on"));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        [
            "lock db",
            "freeze /var/lib/mysql",
            "thaw /var/lib/mysql",
            "unlock db"
        ]
    );
}
