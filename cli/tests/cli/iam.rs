//! `ektool iam-policy`: each command's policy is complete and minimal.
//! Every command runs against moto with `EKTOOL_RECORD_ACTIONS`; the IAM
//! actions it really called must equal its policy's own actions (plus the
//! actions of the flags used).

use std::collections::{BTreeMap, BTreeSet};

use ec2kit::requests::CreateSnapshot;
use ec2kit::{Ec2, Region, Tags};
use snapkit::lineage::tags;

use crate::harness::Ektool;
use crate::moto::{self, ec2};

pub(crate) struct Policies(BTreeMap<String, serde_json::Value>);

impl Policies {
    pub(crate) fn load() -> Self {
        let list = Ektool::new()
            .args(&["--output", "json", "iam-policy", "--list"])
            .run()
            .success()
            .json();
        Self(
            list.as_array()
                .unwrap()
                .iter()
                .map(|p| (p["command"].as_str().unwrap().to_owned(), p.clone()))
                .collect(),
        )
    }

    /// `command`'s own actions and those of `flags`.
    pub(crate) fn expected(&self, command: &str, flags: &[&str]) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = strings(&self.0[command]["actions"]);
        set.extend(self.of_flags(command, flags));
        set
    }

    /// The actions `flags` add to `command` (whatever it calls anyway
    /// included).
    pub(crate) fn of_flags(&self, command: &str, flags: &[&str]) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for f in self.0[command]["with_flag"].as_array().unwrap() {
            if flags.contains(&f["flag"].as_str().unwrap()) {
                set.extend(strings(&f["actions"]));
            }
        }
        set
    }
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Runs `ektool ARGS` recording its calls; returns the set of IAM actions.
pub(crate) fn recorded(config: &std::path::Path, args: &[&str]) -> BTreeSet<String> {
    let dir = ektool_tests::tempdir();
    let file = dir.path().join("actions");
    Ektool::moto()
        .env("EKTOOL_RECORD_ACTIONS", file.to_str().unwrap())
        .current_dir(config)
        .args(args)
        .run()
        .success();
    crate::harness::recorded_actions(&file)
}

#[tokio::test]
async fn every_command_calls_exactly_the_actions_of_its_policy() {
    let (from, to) = ("ap-southeast-1", "ap-northeast-2");
    let key = ektool_tests::unique("iam");
    let tag = format!("{key}=prod");
    let cfg = ektool_tests::tempdir();
    std::fs::write(
        cfg.path().join("ektool.toml"),
        format!("[defaults]\ntag = \"{tag}\"\n"),
    )
    .unwrap();
    let c = cfg.path();
    let policies = Policies::load();
    let insts = moto::launch(from, 2, Tags::new().with(&key, "prod").with("team", "web")).await;
    let vol = insts[0].root_volume().unwrap().to_string();
    // A volume of an untagged instance, for `snap backup --volume`.
    let loose = moto::launch(from, 1, Tags::new()).await.remove(0);
    let loose_vol = loose.root_volume().unwrap().to_string();
    let inst = insts[0].id.to_string();
    let inst2 = insts[1].id.to_string();

    // (command, flags, argv): one run each, in an order that leaves each
    // command something to do.
    let mut runs: Vec<(&str, Vec<&str>, Vec<String>)> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    runs.push(("regions", vec![], s(&["regions"])));
    runs.push(("instances", vec![], s(&["-r", from, "instances"])));
    runs.push(("snap backup", vec![], s(&["-r", from, "snap", "backup"])));
    runs.push((
        "snap backup",
        vec!["--volume"],
        s(&["-r", from, "snap", "backup", "--volume", &loose_vol]),
    ));
    runs.push(("snap list", vec![], s(&["-r", from, "snap", "list"])));
    runs.push(("snap count", vec![], s(&["-r", from, "snap", "count"])));
    runs.push(("snap check", vec![], s(&["-r", from, "snap", "check"])));
    for (cmd, flags, argv) in &runs {
        let got = recorded(c, &argv.iter().map(String::as_str).collect::<Vec<_>>());
        let want = policies.expected(cmd, flags);
        if flags.is_empty() {
            assert_eq!(got, want, "ektool {}", argv.join(" "));
        } else {
            // A mode flag: complete (nothing outside the policy), and the
            // flag's own actions all used.
            assert!(
                got.is_subset(&want),
                "ektool {}: {got:?} not in {want:?}",
                argv.join(" ")
            );
            let extra = &want - &policies.expected(cmd, &[]);
            assert!(
                extra.is_subset(&got),
                "ektool {}: {extra:?} unused",
                argv.join(" ")
            );
        }
    }

    // A second snapshot per lineage, so trim has something to delete.
    let ec2 = ec2().await;
    let r = Region::new(from);
    ec2.create_snapshot(
        &r,
        &CreateSnapshot {
            volume_id: Some(vol.parse().unwrap()),
            tags: Tags::new()
                .with(tags::OWNER, tags::OWNER_VALUE)
                .with(tags::VOLUME, vol.clone())
                .with(&key, "prod"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let root = ec2
        .describe_snapshots(
            &r,
            &[ec2kit::Filter::new("tag:ektool:instance", [inst.as_str()])],
        )
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.tags.get(tags::ROOT_DEVICE).is_some())
        .unwrap();
    let root_id = root.id.to_string();
    // A tag the volumes lack, so `tags propagate` has work.
    ec2.create_tags(
        &r,
        std::slice::from_ref(&inst),
        &Tags::new().with("cost-centre", "42"),
        false,
    )
    .await
    .unwrap();
    let later: Vec<(&str, Vec<&str>, Vec<String>)> = vec![
        (
            "snap replicate",
            vec![],
            s(&["snap", "replicate", "--from", from, "--to", to]),
        ),
        (
            "snap replicate-all",
            vec![],
            s(&[
                "-r",
                from,
                "snap",
                "replicate-all",
                "--primary",
                to,
                "--secondary",
                "us-east-1",
                "--forward-replicas",
            ]),
        ),
        (
            "snap lag",
            vec![],
            s(&["snap", "lag", "--from", from, "--to", to]),
        ),
        (
            "ami create",
            vec![],
            s(&["-r", from, "ami", "create", "--snapshot", &root_id]),
        ),
        (
            "instance protect",
            vec![],
            s(&[
                "-r",
                from,
                "instance",
                "protect",
                "--instance",
                &inst,
                "--instance",
                &inst2,
            ]),
        ),
        (
            "tags propagate",
            vec![],
            s(&["-r", from, "tags", "propagate", "--instance", &inst]),
        ),
        (
            "instance reboot",
            vec![],
            s(&["-r", from, "instance", "reboot", &inst]),
        ),
        (
            "instance launch",
            vec![],
            s(&[
                "-r",
                from,
                "instance",
                "launch",
                "--ami",
                "ami-0123456789abcdef0",
                "--tag",
                &tag,
            ]),
        ),
    ];
    for (cmd, flags, argv) in &later {
        let got = recorded(c, &argv.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            got,
            policies.expected(cmd, flags),
            "ektool {}",
            argv.join(" ")
        );
    }
    // Copy the AMI just made.
    let images = ec2
        .describe_images(
            &r,
            &[ec2kit::Filter::new(
                "tag:ektool:source-snapshot",
                [root_id.as_str()],
            )],
        )
        .await
        .unwrap();
    let image = match images.first() {
        Some(i) => i.id.to_string(),
        // moto drops tags on RegisterImage: find it by name instead.
        None => ec2
            .describe_images(&r, &[])
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.name.as_deref().is_some_and(|n| n.contains(inst.as_str())))
            .unwrap()
            .id
            .to_string(),
    };
    let got = recorded(c, &["-r", from, "ami", "copy", &image, "--to", to]);
    assert_eq!(got, policies.expected("ami copy", &[]));

    // trim archiving (everything kept, all but the newest per lineage
    // archived), then restore-tier of one archived snapshot.
    let argv = [
        "-r",
        from,
        "snap",
        "trim",
        "--yes",
        "--policy",
        "max-age:3650d",
        "--archive-after",
        "0d",
    ];
    let got = recorded(c, &argv);
    let want = policies.expected("snap trim", &["--archive-after"]);
    assert!(got.is_subset(&want), "{got:?} not in {want:?}");
    assert!(got.contains("ec2:ModifySnapshotTier"), "{got:?}");
    assert!(!got.contains("ec2:DeleteSnapshot"), "{got:?}");
    let archived = ec2
        .describe_snapshots(&r, &[])
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.storage_tier == ec2kit::StorageTier::Archive)
        .expect("an archived snapshot")
        .id
        .to_string();
    let got = recorded(
        c,
        &["-r", from, "snap", "restore-tier", &archived, "--days", "1"],
    );
    assert_eq!(got, policies.expected("snap restore-tier", &[]));

    // trim with deletions (keep the newest per lineage).
    let got = recorded(
        c,
        &["-r", from, "snap", "trim", "--yes", "--keep-last", "1"],
    );
    assert_eq!(got, policies.expected("snap trim", &[]));

    // delete-broken: moto makes no `error` snapshots, so DeleteSnapshot
    // is never reached here (snapkit's mock tests cover it): the calls
    // must be the policy minus exactly that.
    let got = recorded(c, &["-r", from, "snap", "delete-broken"]);
    let mut want = policies.expected("snap delete-broken", &[]);
    assert!(want.remove("ec2:DeleteSnapshot"));
    assert_eq!(got, want);
}

#[test]
fn policies_print_as_iam_documents_and_offline_commands_need_none() {
    let doc = Ektool::new()
        .args(&["iam-policy", "snap", "trim"])
        .run()
        .success()
        .json();
    assert_eq!(doc["Version"], "2012-10-17");
    assert_eq!(doc["Statement"][0]["Effect"], "Allow");
    Ektool::new()
        .args(&["iam-policy", "snap", "plan"])
        .run()
        .code(2)
        .stderr_has("no AWS calls");
    Ektool::new()
        .args(&["iam-policy", "snap", "nope"])
        .run()
        .code(2)
        .stderr_has("snap backup");
}

/// The vault's copy role is the identity a compromised source account can
/// use: its policy is always the restricted one (tags only at creation,
/// so no existing vault copy can be retagged), and per source account
/// (`--source-account`) it copies and tags only with that account in
/// `ektool:source-account`.
#[test]
fn the_vault_copy_role_tags_only_at_creation_and_per_source_account() {
    let statements = |args: &[&str]| -> Vec<serde_json::Value> {
        Ektool::new().args(args).run().success().json()["Statement"]
            .as_array()
            .unwrap()
            .clone()
    };
    let granting = |sts: &[serde_json::Value], action: &str| -> Vec<serde_json::Value> {
        sts.iter()
            .filter(|s| s["Action"].as_array().unwrap().iter().any(|a| a == action))
            .cloned()
            .collect()
    };
    let plain = statements(&["iam-policy", "vault-copy"]);
    for s in granting(&plain, "ec2:CreateTags") {
        assert_eq!(
            s["Condition"]["StringEquals"]["ec2:CreateAction"],
            serde_json::json!([
                "CreateSnapshot",
                "CreateSnapshots",
                "CopySnapshot",
                "CreateVolume",
                "RegisterImage",
                "CopyImage"
            ]),
            "{s}"
        );
    }
    let per_source = statements(&[
        "iam-policy",
        "vault-copy",
        "--source-account",
        "111111111111",
    ]);
    for action in ["ec2:CopySnapshot", "ec2:CreateTags"] {
        let sts = granting(&per_source, action);
        assert!(!sts.is_empty(), "{action}");
        for s in sts {
            assert_eq!(
                s["Condition"]["StringEquals"]["aws:RequestTag/ektool:source-account"],
                "111111111111",
                "{s}"
            );
        }
    }
    for s in granting(&per_source, "ec2:DescribeSnapshots") {
        assert!(s["Condition"].is_null(), "{s}");
    }
    Ektool::new()
        .args(&[
            "iam-policy",
            "snap",
            "trim",
            "--source-account",
            "111111111111",
        ])
        .run()
        .code(2)
        .stderr_has("only the vault's copy role");
    Ektool::new()
        .args(&["iam-policy", "vault-copy", "--source-account", "1111"])
        .run()
        .code(2)
        .stderr_has("--source-account");
}

/// The vault copy's source side under `--restrict-by-tag`: its share
/// journal (`ektool:shared-with`) is the one reserved key it may write,
/// and only on ektool's own snapshots.
#[test]
fn the_restricted_vault_source_may_write_only_its_journal_tag_on_its_snapshots() {
    let doc = Ektool::new()
        .args(&["iam-policy", "vault-source", "--restrict-by-tag"])
        .run()
        .success()
        .json();
    let journal: Vec<&serde_json::Value> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"].is_array())
        .collect();
    assert_eq!(journal.len(), 1, "{doc}");
    let s = journal[0];
    assert_eq!(s["Action"], serde_json::json!(["ec2:CreateTags"]));
    assert_eq!(s["Resource"], "arn:aws:ec2:*:*:snapshot/*");
    assert_eq!(
        s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"],
        serde_json::json!(["ektool:shared-with"])
    );
    assert_eq!(
        s["Condition"]["StringEquals"]["aws:ResourceTag/ektool:owner"],
        "ektool"
    );
    // Other commands' restricted policies reserve every ektool key.
    let trim = Ektool::new()
        .args(&["iam-policy", "snap", "trim", "--restrict-by-tag"])
        .run()
        .success()
        .json();
    assert!(!trim.to_string().contains("ektool:shared-with"), "{trim}");
}

/// M14: `--restrict-by-tag` grants the same actions, but every delete,
/// deregister, detach and modify only on resources tagged as ektool's own
/// (`aws:ResourceTag/ektool:owner`), and creates only with that tag in the
/// request; the security page recommends it and says why.
#[test]
fn restricted_policies_guard_destructive_actions_by_the_owner_tag() {
    let actions = |doc: &serde_json::Value| -> BTreeSet<String> {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["Action"] {
                serde_json::Value::String(a) => vec![a.clone()],
                v => strings(v).into_iter().collect(),
            })
            .collect()
    };
    for command in [
        &["snap", "trim"][..],
        &["snap", "delete-broken"],
        &["snap", "cleanup"],
        &["ami", "create"],
    ] {
        let plain = Ektool::new()
            .arg("iam-policy")
            .args(command)
            .run()
            .success()
            .json();
        let strict = Ektool::new()
            .arg("iam-policy")
            .args(command)
            .arg("--restrict-by-tag")
            .run()
            .success()
            .json();
        assert_eq!(actions(&plain), actions(&strict), "{command:?}");
        let mut guarded = 0;
        for s in strict["Statement"].as_array().unwrap() {
            let named: Vec<String> = match &s["Action"] {
                serde_json::Value::String(a) => vec![a.clone()],
                v => strings(v).into_iter().collect(),
            };
            let destructive = named.iter().any(|a| {
                ["Delete", "Deregister", "Detach", "Modify"]
                    .iter()
                    .any(|verb| a.starts_with(&format!("ec2:{verb}")))
            });
            // Detaching a volume also needs the instance, which is not
            // ektool's: only what ektool made is guarded by its tag.
            let on_instance = s["Resource"].as_str() == Some("arn:aws:ec2:*:*:instance/*");
            if destructive && !on_instance {
                let condition = s["Condition"].to_string();
                assert!(
                    condition.contains("aws:ResourceTag/ektool:owner"),
                    "{command:?}: {s}"
                );
                guarded += 1;
            }
        }
        if command[..2] != ["ami", "create"] {
            assert!(guarded > 0, "{command:?} deletes something: {strict}");
        }
    }
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md"),
    )
    .unwrap();
    assert!(docs.contains("--restrict-by-tag"));
    assert!(docs.contains("Anyone who can call `ec2:CreateTags`"));
}
