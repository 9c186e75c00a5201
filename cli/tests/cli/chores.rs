//! `ektool ami`, `instance` and `tags` against moto.

use ec2kit::{Ec2, Filter, ImageId, InstanceId, Region, Tags};
use ektool_tests::tempdir;
use snapkit::lineage::tags;

use crate::harness::Ektool;
use crate::moto::{self, ec2};

/// A config whose production tag is `key=prod`.
fn config(key: &str) -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!("[defaults]\ntag = \"{key}=prod\"\n"),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn ami_from_a_backed_up_root_snapshot_then_copied_once() {
    let (region, other) = ("us-east-2", "us-west-2");
    let key = ektool_tests::unique("ami");
    let inst = moto::launch(
        region,
        1,
        Tags::new().with(&key, "prod").with("Name", "web"),
    )
    .await;
    let root_vol = inst[0].root_volume().unwrap().clone();
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
    let snaps = ec2()
        .await
        .describe_snapshots(
            &Region::new(region),
            &[Filter::new("volume-id", [root_vol.as_str()])],
        )
        .await
        .unwrap();
    let root = snaps
        .iter()
        .find(|s| s.tags.get(tags::INSTANCE).is_some())
        .unwrap();

    let dry = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--dry-run",
            "--output",
            "json",
            "ami",
            "create",
            "--snapshot",
            root.id.as_str(),
        ])
        .run()
        .success()
        .json();
    assert!(dry["image"].is_null());
    let out = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--output",
            "json",
            "ami",
            "create",
            "--snapshot",
            root.id.as_str(),
        ])
        .run()
        .success()
        .json();
    let image: ImageId = out["image"].as_str().unwrap().parse().unwrap();
    let images = ec2()
        .await
        .describe_images(
            &Region::new(region),
            &[Filter::new("image-id", [image.as_str()])],
        )
        .await
        .unwrap();
    let img = &images[0];
    // moto registers its own placeholder mapping, so the mapping sent is
    // checked in the printed plan (the mock tests check it call by call).
    let sent = &out["plan"]["request"];
    assert_eq!(sent["block_devices"][0]["snapshot_id"], root.id.as_str());
    assert_eq!(
        sent["root_device_name"].as_str(),
        root.tags.get(tags::ROOT_DEVICE)
    );
    assert_eq!(sent["virtualization_type"], "hvm");
    // moto drops TagSpecifications on RegisterImage: the tags sent.
    assert_eq!(sent["tags"][&key], "prod", "tags copied");
    assert_eq!(sent["tags"][tags::SOURCE_SNAPSHOT], root.id.as_str());
    assert!(img.name.as_deref().unwrap().starts_with("ektool-i-"));

    let copy = |expect: &str| {
        let out = Ektool::moto()
            .args(&[
                "-r",
                region,
                "--output",
                "json",
                "ami",
                "copy",
                image.as_str(),
                "--to",
                other,
            ])
            .run()
            .success()
            .json();
        assert_eq!(out[0]["status"], expect, "{out}");
        out
    };
    copy("started");
    copy("present");
}

#[tokio::test]
async fn protect_follows_the_production_tag_and_dry_run_changes_nothing() {
    // L5: the dev instance is protected on purpose; only
    // --unprotect-others turns that off.
    let region = "eu-west-1";
    let key = ektool_tests::unique("prot");
    let prod = moto::launch(region, 2, Tags::new().with(&key, "prod")).await;
    let dev = moto::launch(region, 1, Tags::new().with(&key, "dev")).await;
    let ec2 = ec2().await;
    let r = Region::new(region);
    ec2.set_termination_protection(&r, &dev[0].id, true, false)
        .await
        .unwrap();
    let dir = config(&key);
    let ids: Vec<String> = prod.iter().chain(&dev).map(|i| i.id.to_string()).collect();
    let mut args = vec!["-r", region, "--output", "json", "instance", "protect"];
    for id in &ids {
        args.extend(["--instance", id.as_str()]);
    }
    let mut dry = args.clone();
    dry.insert(0, "--dry-run");
    let plan = Ektool::moto()
        .args(&dry)
        .current_dir(dir.path())
        .run()
        .success()
        .json();
    assert_eq!(
        plan["plan"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["current"] != p["wanted"])
            .count(),
        2
    );
    assert!(!ec2.termination_protection(&r, &prod[0].id).await.unwrap());

    Ektool::moto()
        .args(&args)
        .current_dir(dir.path())
        .run()
        .success();
    for i in &prod {
        assert!(ec2.termination_protection(&r, &i.id).await.unwrap());
    }
    assert!(
        ec2.termination_protection(&r, &dev[0].id).await.unwrap(),
        "protected on purpose: kept"
    );
    // Settled: a rerun changes nothing.
    let again = Ektool::moto()
        .args(&args)
        .current_dir(dir.path())
        .run()
        .success()
        .json();
    assert!(
        again["plan"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["current"] == p["wanted"])
    );
    let mut off = args.clone();
    off.push("--unprotect-others");
    Ektool::moto()
        .args(&off)
        .current_dir(dir.path())
        .run()
        .success();
    assert!(!ec2.termination_protection(&r, &dev[0].id).await.unwrap());
    assert!(ec2.termination_protection(&r, &prod[0].id).await.unwrap());
}

#[tokio::test]
async fn propagate_copies_instance_tags_to_every_volume_of_the_reservation() {
    let region = "eu-north-1";
    let key = ektool_tests::unique("prop");
    let insts = moto::launch(
        region,
        2,
        Tags::new().with(&key, "prod").with("team", "web"),
    )
    .await;
    Ektool::moto()
        .args(&[
            "-r",
            region,
            "tags",
            "propagate",
            "--instance",
            insts[0].id.as_str(),
        ])
        .run()
        .success()
        .stdout_has("volume(s) of 2 instance(s)");
    let vols = ec2()
        .await
        .describe_volumes(
            &Region::new(region),
            &[Filter::new(
                "attachment.instance-id",
                insts.iter().map(|i| i.id.as_str()),
            )],
        )
        .await
        .unwrap();
    assert_eq!(vols.len(), 2);
    for v in &vols {
        assert_eq!(v.tags.get("team"), Some("web"));
        assert_eq!(v.tags.get(&key), Some("prod"));
    }
    let again = Ektool::moto()
        .args(&[
            "-r",
            region,
            "--output",
            "json",
            "tags",
            "propagate",
            "--instance",
            insts[1].id.as_str(),
        ])
        .run()
        .success()
        .json();
    assert!(again["plan"].as_array().unwrap().is_empty(), "{again}");
}

#[tokio::test]
async fn launch_tags_and_protects_production_and_reboot_checks_ids_first() {
    let region = "ap-northeast-1";
    let key = ektool_tests::unique("launch");
    let dir = config(&key);
    // `ektool -r REGION --output json instance launch --ami … EXTRA…`.
    let launch = |extra: &[&str]| {
        let base = ["-r", region, "--output", "json", "instance", "launch"];
        Ektool::moto()
            .args(&base)
            .args(&["--ami", "ami-0123456789abcdef0"])
            .args(extra)
            .current_dir(dir.path())
            .run()
    };
    let out = launch(&["--name", "fresh", "--tag", &format!("{key}=prod")])
        .success()
        .json();
    let id: InstanceId = out[0]["id"].as_str().unwrap().parse().unwrap();
    let ec2 = ec2().await;
    let r = Region::new(region);
    assert!(ec2.termination_protection(&r, &id).await.unwrap());
    let inst = ec2
        .describe_instances(&r, &[Filter::new("instance-id", [id.as_str()])])
        .await
        .unwrap();
    assert_eq!(inst[0].tags.get("Name"), Some("fresh"));
    assert_eq!(inst[0].tags.get(tags::OWNER), Some(tags::OWNER_VALUE));

    // A chosen private address: one instance only, a valid IPv4.
    let out = launch(&["--private-ip", "172.31.9.9"]).success().json();
    assert_eq!(out[0]["private_ip"], "172.31.9.9");
    launch(&["--count", "2", "--private-ip", "172.31.9.10"]).code(2);
    launch(&["--private-ip", "172.31.9"]).code(2);

    Ektool::moto()
        .args(&["-r", region, "instance", "reboot", id.as_str()])
        .run()
        .success()
        .stdout_has("rebooting");
    Ektool::moto()
        .args(&["-r", region, "instance", "reboot", "i-not-hex!"])
        .run()
        .code(2);
    Ektool::moto()
        .args(&[
            "-r",
            region,
            "-r",
            "eu-west-1",
            "instance",
            "reboot",
            id.as_str(),
        ])
        .run()
        .code(2)
        .stderr_has("one region");
}
