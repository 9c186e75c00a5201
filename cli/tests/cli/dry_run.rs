//! `--dry-run` changes nothing anywhere: every command that would change
//! EC2, a host or a local file is run with it against a moto of this
//! test's own (so the *whole* EC2 state can be compared: the shared moto
//! changes under it while other tests run) and the bench's sshd hosts, and
//! the world is compared before and after each.
//!
//! The deploy verbs and provisioning have their own whole-host checks
//! (`deploy::dry_runs_of_every_deploy_verb_change_nothing_on_the_hosts`,
//! `provision::dry_runs_change_nothing_anywhere`), and the consistent backup
//! its freeze/lock check (`snap::a_dry_run_consistent_backup_freezes_and_locks_nothing`).

use std::path::Path;

use ec2kit::{AwsEc2, AwsEc2Options, Ec2, Filter, RateLimits, Region, Tags};
use ektool_tests::{PrivateMoto, SshHost, ssh_host, tempdir, unique};

use crate::harness::{Ektool, Outcome};
use crate::mount::Bench;

/// `ektool` against `moto`, unpaced, in `region`.
fn at(moto: &PrivateMoto, region: &str) -> Ektool {
    Ektool::moto()
        .env("EKTOOL_ENDPOINT_URL", &moto.url)
        .args(&["-r", region])
}

/// Everything a dry run must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct World {
    /// moto's whole state.
    ec2: serde_json::Value,
    /// The bench host's mount table entries under this test's mount root.
    mounts: Vec<String>,
    /// Files this test watches, with their contents (or absent).
    files: Vec<(String, Option<Vec<u8>>)>,
}

fn world(moto: &PrivateMoto, bench: &Bench, watched: &[&Path]) -> World {
    let mounts = bench.mounts_under_root();
    World {
        ec2: moto.state(),
        mounts,
        files: watched
            .iter()
            .map(|p| (p.display().to_string(), std::fs::read(p).ok()))
            .collect(),
    }
}

#[tokio::test]
async fn every_command_with_dry_run_changes_nothing_in_ec2_on_hosts_or_locally() {
    let moto = PrivateMoto::start();
    let (region, second) = ("eu-west-1", "eu-central-1");
    let ec2 = AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto.url.clone()),
        home_region: Some(region.into()),
        rate_limits: Some(RateLimits::disabled()),
        ..Default::default()
    })
    .await;
    let key = unique("dry");
    let tag = format!("{key}=prod");

    // A world with something of everything: tagged instances, ektool's
    // backups, a copy in a second region, an AMI, a mounted snapshot.
    let launched = ec2
        .run_instances(
            &Region::new(region),
            &ec2kit::requests::RunInstances {
                image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
                instance_type: "t3.micro".into(),
                count: 2,
                tags: Tags::new().with(&key, "prod").with("Name", "web"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let instance = launched[0].id.to_string();
    let root_volume = launched[0].root_volume().unwrap().to_string();
    at(&moto, region)
        .args(&["snap", "backup", "--tag", &tag])
        .run()
        .success();
    at(&moto, region)
        .args(&["snap", "replicate", "--from", region, "--to", second])
        .run()
        .success();
    // A newer instance's set, not copied yet: the replication dry runs
    // have work.
    ec2.run_instances(
        &Region::new(region),
        &ec2kit::requests::RunInstances {
            image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
            instance_type: "t3.micro".into(),
            count: 1,
            tags: Tags::new().with(&key, "prod"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    at(&moto, region)
        .args(&["snap", "backup", "--tag", &tag])
        .run()
        .success();
    let snapshots = ec2
        .describe_snapshots(
            &Region::new(region),
            &[Filter::new("volume-id", [root_volume.as_str()])],
        )
        .await
        .unwrap();
    let root_snapshot = snapshots[0].id.to_string();
    let image = at(&moto, region)
        .args(&[
            "--output",
            "json",
            "ami",
            "create",
            "--snapshot",
            &root_snapshot,
        ])
        .run()
        .success()
        .json()["image"]
        .as_str()
        .unwrap()
        .to_owned();
    let bench = Bench::new();
    let flags = bench.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mounted = bench.mountpoint();
    at(&moto, region)
        .args(&["snap", "mount", &root_snapshot, "--instance", &instance])
        .args(&["--mountpoint", &mounted])
        .args(&flags)
        .run()
        .success();
    assert!(bench.mounted(&mounted));

    // Local and host files the host commands could touch.
    let dir = tempdir();
    let (h1, h2) = (ssh_host(1), ssh_host(2));
    let fresh_known_hosts = dir.path().join("fresh_known_hosts");
    let known_hosts = crate::sync::known_hosts(dir.path(), &[&h1, &h2]);
    let name = unique("dry-sync");
    std::fs::create_dir_all(h1.local_path(&format!("{name}/src"))).unwrap();
    std::fs::write(h1.local_path(&format!("{name}/src/a")), "a\n").unwrap();
    let (sync_src, sync_dst) = crate::sync::paths(&h1, &h2, &name);
    let run_marker = format!("{}/{}", SshHost::MOUNT, unique("dry-run-marker"));
    let watched = [
        fresh_known_hosts.clone(),
        known_hosts.clone(),
        h2.local_path(&format!("{name}/dst")),
        h1.local_path(run_marker.trim_start_matches(&format!("{}/", SshHost::MOUNT))),
    ];
    let watched: Vec<&Path> = watched.iter().map(|p| p.as_path()).collect();

    // moto makes a region's backend (with its preloaded AMIs) on the first
    // call there: touch every region read-only first, so that is not
    // taken for a change.
    for r in [region, second] {
        at(&moto, r)
            .args(&["snap", "list", "--adopt"])
            .run()
            .success();
        at(&moto, r).arg("instances").run().success();
    }
    let before = world(&moto, &bench, &watched);
    assert!(
        before.ec2["ec2"]["Snapshot"]
            .as_array()
            .is_some_and(|s| s.len() > 10),
        "moto's state was read"
    );
    let other_mountpoint = bench.mountpoint();
    let kh = known_hosts.to_str().unwrap();
    let key_file = h1.client_key.to_str().unwrap();
    let trust_target = h1.target();
    let fingerprint = h1.fingerprint();
    let commands: Vec<Vec<&str>> = vec![
        vec!["snap", "backup", "--tag", &tag],
        vec!["snap", "backup", "--instance", &instance, "--exclude-boot"],
        vec!["snap", "backup", "--volume", &root_volume],
        vec!["snap", "trim", "--keep-last", "1", "--yes"],
        vec!["snap", "trim", "--keep-last", "1", "--adopt", "--yes"],
        vec!["snap", "delete-broken"],
        vec!["snap", "replicate", "--from", region, "--to", second],
        vec![
            "snap",
            "replicate-all",
            "--primary",
            region,
            "--secondary",
            second,
        ],
        vec!["ami", "create", "--snapshot", &root_snapshot],
        vec!["ami", "copy", &image, "--to", second],
        vec!["instance", "reboot", &instance],
        vec!["instance", "protect", "--all", "--unprotect-others"],
        vec!["instance", "protect", "--tag", &tag],
        vec!["instance", "launch", "--ami", "ami-0123456789abcdef0"],
        vec!["tags", "propagate", "--all"],
        vec![
            "host",
            "trust",
            &trust_target,
            "--fingerprint",
            &fingerprint,
            "--known-hosts",
        ],
        vec![
            "host",
            "run",
            &trust_target,
            "-i",
            key_file,
            "--known-hosts",
            kh,
            "--",
            "touch",
            &run_marker,
        ],
    ];
    let mut runs: Vec<Ektool> = Vec::new();
    for command in &commands {
        let mut e = at(&moto, region).arg("--dry-run").args(command);
        if command[..2] == ["host", "trust"] {
            e = e.arg(fresh_known_hosts.to_str().unwrap());
        }
        runs.push(e);
    }
    // The mount family on the bench host (with its host and command flags).
    for command in [
        vec![
            "snap",
            "mount",
            &root_snapshot,
            "--instance",
            &instance,
            "--mountpoint",
            &other_mountpoint,
        ],
        vec!["snap", "unmount", &root_snapshot, "--instance", &instance],
        vec![
            "snap",
            "cleanup",
            "--older-than",
            "0s",
            "--instance",
            &instance,
        ],
    ] {
        runs.push(
            at(&moto, region)
                .arg("--dry-run")
                .args(&command)
                .args(&flags),
        );
    }
    // File-level sync between two bench hosts.
    runs.push(crate::sync::sync_command(
        &h1,
        &known_hosts,
        &sync_src,
        &sync_dst,
        &["--dry-run"],
    ));

    let mut outcomes: Vec<Outcome> = Vec::new();
    for run in runs {
        let o = run.run();
        assert!(
            o.code == Some(0),
            "`{}` exited {:?}: {}{}",
            o.args,
            o.code,
            o.stdout,
            o.stderr
        );
        let now = world(&moto, &bench, &watched);
        assert_eq!(now.mounts, before.mounts, "`{}` changed a mount", o.args);
        assert_eq!(
            now.files, before.files,
            "`{}` changed a watched file",
            o.args
        );
        if let Some(difference) = ektool_tests::json_difference(&before.ec2, &now.ec2) {
            panic!("`{}` changed moto's state: {difference}", o.args);
        }
        outcomes.push(o);
    }
    // The dry runs said what they would do (they did not do nothing at all).
    let said: String = outcomes.iter().map(|o| o.stdout.as_str()).collect();
    assert!(said.contains(&instance), "{said}");
    assert!(bench.mounted(&mounted), "the real mount is still there");
    assert!(!bench.mounted(&other_mountpoint));
}
