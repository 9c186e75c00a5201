//! The AMI lifecycle against moto: `ami create --instance`, `ami trim`
//! (policies by creation date per name family; never an AMI an instance
//! or a launch template version uses, never one ektool did not make), and
//! the actions each calls against its `iam-policy`.

use std::time::Duration;

use ec2kit::requests::{RegisterImage, RunInstances};
use ec2kit::{Ec2, Filter, Region, Tags};

use crate::harness::Ektool;
use crate::iam::{Policies, recorded};
use crate::moto::{self, ec2};

/// A launch template whose version 1 launches `image`, through the
/// bench's boto3 (ec2kit does not create launch templates).
fn launch_template(region: &str, name: &str, image: &str) {
    let server = std::env::var("EKTOOL_TEST_MOTO_SERVER").unwrap();
    let python = std::path::Path::new(&server).with_file_name("python");
    let script = format!(
        "import boto3\n\
         c = boto3.client('ec2', region_name='{region}', endpoint_url='{}')\n\
         c.create_launch_template(LaunchTemplateName='{name}', LaunchTemplateData={{'ImageId': '{image}'}})\n",
        ektool_tests::moto_url()
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn ami_create_from_an_instance_and_trim_a_family() {
    let region = "us-gov-west-1";
    let cfg = ektool_tests::tempdir();
    let c = cfg.path();
    let policies = Policies::load();
    let family = ektool_tests::unique("ektool-web").to_lowercase();
    let inst = moto::launch(region, 1, Tags::new()).await.remove(0);
    let r = Region::new(region);
    let ec2 = ec2().await;

    // Four AMIs of the instance, a second apart (EC2 dates them to the
    // second); the first records its calls against the policy.
    let mut images = Vec::new();
    for n in 1..=4 {
        let name = format!("{family}-{n}");
        let argv = [
            "-r",
            region,
            "--output",
            "json",
            "ami",
            "create",
            "--instance",
            inst.id.as_str(),
            "--no-reboot",
            "--no-snapshot-tags",
            "--name",
            &name,
        ];
        if n == 1 {
            let got = recorded(c, &argv);
            let want = policies.expected("ami create", &["--instance"]);
            assert!(got.is_subset(&want), "{got:?} not in {want:?}");
            assert!(got.contains("ec2:CreateImage"), "{got:?}");
        } else {
            Ektool::moto().current_dir(c).args(&argv).run().success();
        }
        let found = ec2
            .describe_images(&r, &[Filter::new("name", [name.as_str()])])
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        // Tagged as ektool's at creation.
        assert_eq!(found[0].tags.get("ektool:owner"), Some("ektool"));
        assert_eq!(found[0].tags.get("ektool:instance"), Some(inst.id.as_str()));
        images.push(found.into_iter().next().unwrap());
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Not ektool's, of the same family, the newest.
    let stranger = ec2
        .register_image(
            &r,
            &RegisterImage {
                name: format!("{family}-0"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The first runs an instance; the second is a launch template's.
    ec2.run_instances(
        &r,
        &RunInstances {
            image_id: Some(images[0].id.clone()),
            instance_type: "t3.micro".into(),
            count: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    launch_template(region, &family, images[1].id.as_str());

    let pattern = format!("{family}-*");
    let dry = Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "--dry-run",
            "--output",
            "json",
            "ami",
            "trim",
            "--family",
            &pattern,
            "--keep-last",
            "1",
        ])
        .run()
        .success()
        .json();
    let decision = |id: &str| {
        dry["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["image"] == id)
            .unwrap_or_else(|| panic!("{id} not in {dry}"))
            .clone()
    };
    let d = decision(images[0].id.as_str());
    assert_eq!(d["action"], "keep");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .starts_with("guard: used by instance i-"),
        "{d}"
    );
    let d = decision(images[1].id.as_str());
    assert_eq!(d["action"], "keep");
    assert_eq!(
        d["reason"],
        format!("guard: used by launch template {family} version 1")
    );
    let d = decision(images[2].id.as_str());
    assert_eq!(d["action"], "delete", "{d}");
    let doomed_snapshots: Vec<String> = d["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(doomed_snapshots.len(), 1);
    assert_eq!(decision(images[3].id.as_str())["action"], "keep");
    let d = decision(stranger.as_str());
    assert_eq!(d["action"], "keep");
    assert_eq!(d["reason"], "guard: not made by ektool");
    // The human plan.
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "--dry-run",
            "ami",
            "trim",
            "--family",
            &pattern,
            "--keep-last",
            "1",
        ])
        .run()
        .success()
        .stdout_has("deregister")
        .stdout_has("keep 4, deregister 1")
        .stdout_has("dry run: nothing deregistered");
    // Nothing changed; without a terminal it needs --yes.
    assert_eq!(
        ec2.describe_images(&r, &[Filter::new("name", [pattern.as_str()])])
            .await
            .unwrap()
            .len(),
        5
    );
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "ami",
            "trim",
            "--family",
            &pattern,
            "--keep-last",
            "1",
        ])
        .run()
        .code(2)
        .stderr_has("--yes");

    // Applied, recording its calls: deregistered, then its snapshot gone.
    let got = recorded(
        c,
        &[
            "-r",
            region,
            "ami",
            "trim",
            "--family",
            &pattern,
            "--keep-last",
            "1",
            "--yes",
        ],
    );
    assert_eq!(
        got,
        policies.expected("ami trim", &["launch templates exist"])
    );
    let left: Vec<String> = ec2
        .describe_images(&r, &[Filter::new("name", [pattern.as_str()])])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(left.len(), 4);
    assert!(!left.contains(&images[2].id.to_string()));
    let snaps = ec2
        .describe_snapshots(
            &r,
            &[Filter::new("snapshot-id", [doomed_snapshots[0].as_str()])],
        )
        .await
        .unwrap_or_default();
    assert!(snaps.is_empty(), "{snaps:?}");
    // A rerun deregisters nothing.
    Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "ami",
            "trim",
            "--family",
            &pattern,
            "--keep-last",
            "1",
            "--yes",
        ])
        .run()
        .success()
        .stdout_has("keep 4, deregister 0");
    // --adopt: the stranger counts like ektool's AMIs: made last, it is
    // now the one keep-last keeps, and ektool's newest may go.
    let adopt = Ektool::moto()
        .current_dir(c)
        .args(&[
            "-r",
            region,
            "--dry-run",
            "--output",
            "json",
            "ami",
            "trim",
            "--family",
            &pattern,
            "--keep-last",
            "1",
            "--adopt",
        ])
        .run()
        .success()
        .json();
    let action = |id: &str| {
        adopt["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["image"] == id)
            .unwrap()["action"]
            .clone()
    };
    assert_eq!(action(stranger.as_str()), "keep");
    assert_eq!(action(images[3].id.as_str()), "delete");
    assert_eq!(action(images[0].id.as_str()), "keep");
    assert_eq!(action(images[1].id.as_str()), "keep");
}
