//! Many accounts, one run, against moto: moto keeps the state of the
//! account a role names apart, so each account sees its own instances and
//! snapshots.

use ec2kit::requests::{CreateSnapshot, CreateVolume, RunInstances};
use ec2kit::{Ec2, Region, Tags};
use ektool_tests::{Fault, FaultProxy, moto_url, tempdir, unique};

use crate::harness::Ektool;

pub(crate) use crate::moto::{ec2_in, fresh_accounts, role};

pub(crate) async fn launch(account: &str, region: &str, tags: Tags) -> String {
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count: 1,
        tags,
        ..Default::default()
    };
    let ec2 = ec2_in(account).await;
    ec2.run_instances(&Region::new(region), &request)
        .await
        .unwrap()
        .remove(0)
        .id
        .to_string()
}

async fn snapshot(account: &str, region: &str) -> String {
    let ec2 = ec2_in(account).await;
    let region = Region::new(region);
    let volume = ec2
        .create_volume(
            &region,
            &CreateVolume {
                availability_zone: format!("{region}a"),
                size_gib: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    ec2.create_snapshot(
        &region,
        &CreateSnapshot {
            volume_id: Some(volume.id.clone()),
            description: Some("accounts test".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .id
    .to_string()
}

/// `(account, region, id)` of each JSON row.
fn rows(out: &serde_json::Value, id: &str) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["account"].as_str().unwrap().to_owned(),
                r["region"].as_str().unwrap().to_owned(),
                r[id].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn instances_fan_out_over_accounts_and_regions_each_row_with_its_account() {
    let ids = fresh_accounts(2);
    let (a, b) = (&ids[0], &ids[1]);
    let key = unique("acct");
    let tags = Tags::new().with(key.clone(), "production");
    let a1 = launch(a, "eu-west-1", tags.clone()).await;
    let b1 = launch(b, "eu-west-1", tags.clone()).await;
    let b2 = launch(b, "us-east-2", tags.clone()).await;
    // The caller's own account is not one of them.
    crate::moto::launch("eu-west-1", 1, tags.clone()).await;
    // Nor is a region left out.
    launch(a, "ap-south-1", tags.clone()).await;

    let list = format!("{a},{b}");
    let tag = format!("{key}=production");
    let out = Ektool::moto()
        .args(&["--accounts", &list, "-r", "eu-west-1,us-east-2,ap-south-1"])
        .args(&["--exclude-region", "ap-south", "--output", "json"])
        .args(&["instances", "--tag", &tag])
        .run()
        .success();
    let mut want = vec![
        (a.clone(), "eu-west-1".to_owned(), a1),
        (b.clone(), "eu-west-1".to_owned(), b1),
        (b.clone(), "us-east-2".to_owned(), b2.clone()),
    ];
    want.sort();
    assert_eq!(rows(&out.json(), "id"), want);

    // A table too, with the account first.
    Ektool::moto()
        .args(&[
            "--accounts",
            &list,
            "-r",
            "us-east-2",
            "instances",
            "--tag",
            &tag,
        ])
        .run()
        .success()
        .stdout_has("ACCOUNT")
        .stdout_has(&format!("{b}  us-east-2  {b2}"));

    // One role: the account of its ARN on every row.
    let one = Ektool::moto()
        .args(&[
            "--role-arn",
            &role(b),
            "-r",
            "us-east-2",
            "--output",
            "json",
        ])
        .args(&["instances", "--tag", &tag])
        .run()
        .success();
    assert_eq!(
        rows(&one.json(), "id"),
        vec![(b.clone(), "us-east-2".to_owned(), b2)]
    );
}

#[tokio::test]
async fn snapshots_are_listed_and_counted_per_account_from_a_file_of_ids() {
    let ids = fresh_accounts(3);
    let s0 = snapshot(&ids[0], "eu-west-1").await;
    let s2 = snapshot(&ids[2], "eu-west-1").await;
    let s2b = snapshot(&ids[2], "eu-west-1").await;
    let dir = tempdir();
    let file = dir.path().join("accounts.txt");
    std::fs::write(
        &file,
        format!("# members\n{}\n{}  # staging\n{}\n", ids[0], ids[1], ids[2]),
    )
    .unwrap();
    let at = format!("@{}", file.display());
    let out = Ektool::moto()
        .args(&["--accounts", &at, "-r", "eu-west-1", "--output", "json"])
        .args(&["snap", "list", "--adopt"])
        .run()
        .success();
    // moto gives every account the snapshots of its stock AMIs too: ours
    // must be listed under their own account, and only there.
    let ours = [s0.as_str(), s2.as_str(), s2b.as_str()];
    let got: Vec<(String, String)> = rows(&out.json(), "id")
        .into_iter()
        .filter(|(_, _, s)| ours.contains(&s.as_str()))
        .map(|(a, _, s)| (a, s))
        .collect();
    let mut want = vec![
        (ids[0].clone(), s0),
        (ids[2].clone(), s2),
        (ids[2].clone(), s2b),
    ];
    want.sort();
    assert_eq!(got, want);

    let counted = Ektool::moto()
        .args(&["--accounts", &at, "-r", "eu-west-1", "--output", "json"])
        .args(&["snap", "count", "--adopt"])
        .run()
        .success();
    let counts: Vec<(String, u64)> = counted
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["account"].as_str().unwrap().to_owned(),
                r["snapshots"].as_u64().unwrap(),
            )
        })
        .collect();
    let stock = counts[1].1;
    assert_eq!(
        counts,
        vec![
            (ids[0].clone(), stock + 1),
            (ids[1].clone(), stock),
            (ids[2].clone(), stock + 2)
        ]
    );
    // Over the threshold: the account and region are named, exit 1.
    let warn_at = (stock + 1).to_string();
    Ektool::moto()
        .args(&["--accounts", &at, "-r", "eu-west-1"])
        .args(&["snap", "count", "--adopt", "--warn-at", &warn_at])
        .run()
        .code(1)
        .stdout_has("ACCOUNT")
        .stderr_has(&format!(
            "snapshot count over {warn_at} in {} eu-west-1",
            ids[2]
        ));
}

#[tokio::test]
async fn an_account_whose_role_is_denied_is_reported_and_the_rest_go_on() {
    let ids = fresh_accounts(3);
    let key = unique("deny");
    let tags = Tags::new().with(key.clone(), "production");
    let first = launch(&ids[0], "eu-west-1", tags.clone()).await;
    let last = launch(&ids[2], "eu-west-1", tags.clone()).await;
    let proxy = FaultProxy::start(&moto_url());
    proxy.set(
        "AssumeRole",
        Fault::DenyIf {
            needle: role(&ids[1]),
        },
    );
    let list = ids.join(",");
    let out = Ektool::new()
        .args(&["--endpoint-url", &proxy.url(), "--no-rate-limit"])
        .args(&["--accounts", &list, "-r", "eu-west-1", "--output", "json"])
        .args(&["instances", "--tag", &format!("{key}=production")])
        .run()
        .code(1)
        .stderr_has(&format!("error: account {}", ids[1]))
        .stderr_has("AccessDenied")
        .stderr_has("1 of 3 account-regions failed");
    let mut want = vec![
        (ids[0].clone(), "eu-west-1".to_owned(), first),
        (ids[2].clone(), "eu-west-1".to_owned(), last),
    ];
    want.sort();
    assert_eq!(rows(&out.json(), "id"), want);
}

#[test]
fn bad_account_input_is_refused_with_exit_2() {
    Ektool::moto()
        .args(&["--accounts", "12345,222222222222", "instances"])
        .run()
        .code(2)
        .stderr_has("invalid account id \"12345\"");
    Ektool::moto()
        .args(&["--accounts", "@/nonexistent/accounts.txt", "instances"])
        .run()
        .code(2)
        .stderr_has("/nonexistent/accounts.txt");
    Ektool::moto()
        .args(&["--accounts", "111111111111,111111111111", "instances"])
        .run()
        .code(2)
        .stderr_has("listed twice");
    Ektool::moto()
        .args(&["--role-arn", "ektool", "instances"])
        .run()
        .code(2)
        .stderr_has("not a role ARN");
    let dir = tempdir();
    let config = dir.path().join("ektool.toml");
    std::fs::write(
        &config,
        "[accounts]\nids = [\"111111111111\"]\nrole = \"arn:aws:iam::111111111111:role/ektool\"\n",
    )
    .unwrap();
    Ektool::moto()
        .args(&["--config", config.to_str().unwrap(), "instances"])
        .run()
        .code(2)
        .stderr_has("{account}");
}

#[test]
fn a_command_that_does_not_fan_out_refuses_accounts_rather_than_use_the_callers() {
    Ektool::moto()
        .args(&["--accounts", "111111111111", "-r", "eu-west-1", "regions"])
        .run()
        .code(2)
        .stderr_has("--accounts: `ektool regions` works in one account");
    let dir = tempdir();
    let config = dir.path().join("ektool.toml");
    std::fs::write(&config, "[accounts]\nids = [\"111111111111\"]\n").unwrap();
    let with = |args: &[&str]| {
        Ektool::moto()
            .args(&["--config", config.to_str().unwrap(), "-r", "eu-west-1"])
            .args(args)
            .run()
    };
    // `run -- COMMAND` (an environment's hosts) does not fan out.
    with(&["run", "--env", "prod", "--", "uptime"])
        .code(2)
        .stderr_has("config [accounts]: `ektool run -- COMMAND` runs on an environment's hosts");
    // Not a fleet command: the caller's own account, as before.
    with(&["regions"]).success();
    // A fanning-out command takes the config's accounts.
    with(&["--output", "json", "snap", "count"])
        .success()
        .stdout_has("\"account\":\"111111111111\"");
}

#[test]
fn iam_policy_trust_prints_the_member_role_trust_next_to_its_permissions() {
    let out = Ektool::new()
        .args(&["--external-id", "org-ektool", "--output", "json"])
        .args(&["iam-policy", "snap", "list", "--trust", "123456789012"])
        .run()
        .success()
        .json();
    let trust = &out["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(trust["Principal"]["AWS"], "arn:aws:iam::123456789012:root");
    assert_eq!(trust["Action"], "sts:AssumeRole");
    assert_eq!(
        trust["Condition"]["StringEquals"]["sts:ExternalId"],
        "org-ektool"
    );
    // The permissions are the command's own policy, unchanged.
    let alone = Ektool::new()
        .args(&["iam-policy", "snap", "list"])
        .run()
        .success()
        .json();
    assert_eq!(out["PolicyDocument"], alone);
    assert_eq!(
        out["CallerPolicyDocument"]["Statement"][0]["Resource"],
        "arn:aws:iam::*:role/ektool"
    );
    // The config's role template and external id, when no flag says.
    let dir = tempdir();
    let config = dir.path().join("ektool.toml");
    std::fs::write(
        &config,
        "[accounts]\nids = [\"111111111111\"]\nrole = \"arn:aws:iam::{account}:role/backup\"\nexternal_id = \"from-config\"\n",
    )
    .unwrap();
    let out = Ektool::new()
        .args(&["--config", config.to_str().unwrap()])
        .args(&["iam-policy", "--trust", "123456789012"])
        .run()
        .success()
        .json();
    assert_eq!(
        out["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        "from-config"
    );
    assert_eq!(
        out["CallerPolicyDocument"]["Statement"][0]["Resource"],
        "arn:aws:iam::*:role/backup"
    );
    Ektool::new()
        .args(&["iam-policy", "--trust", "ektool"])
        .run()
        .code(2)
        .stderr_has("--trust: invalid account id");
}

#[test]
fn a_fanned_out_run_calls_in_each_account_only_what_the_policy_grants() {
    let ids = fresh_accounts(2);
    let list = ids.join(",");
    for command in [&["instances"][..], &["snap", "list"], &["snap", "count"]] {
        let dir = tempdir();
        let file = dir.path().join("actions");
        Ektool::moto()
            .env("EKTOOL_RECORD_ACTIONS", file.to_str().unwrap())
            .args(&["--accounts", &list, "-r", "eu-west-1,us-east-2"])
            .args(command)
            .run()
            .success();
        let recorded = crate::harness::recorded_actions(&file);
        let policy = Ektool::new()
            .args(&["iam-policy"])
            .args(command)
            .run()
            .success()
            .json();
        let granted: std::collections::BTreeSet<String> = policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(recorded, granted, "{command:?}");
    }
}

/// `n` snapshots of one new volume with ektool's tags, in `account`.
pub(crate) async fn owned_snapshots(
    account: &str,
    region: &str,
    n: usize,
) -> (String, Vec<String>) {
    use snapkit::lineage::tags;
    let ec2 = ec2_in(account).await;
    let region = Region::new(region);
    let volume = ec2
        .create_volume(
            &region,
            &CreateVolume {
                availability_zone: format!("{region}a"),
                size_gib: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t = Tags::new()
        .with(tags::VOLUME, volume.id.to_string())
        .with(tags::OWNER, tags::OWNER_VALUE);
    let mut ids = Vec::new();
    for _ in 0..n {
        let s = ec2
            .create_snapshot(
                &region,
                &CreateSnapshot {
                    volume_id: Some(volume.id.clone()),
                    tags: t.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        ids.push(s.id.to_string());
    }
    (volume.id.to_string(), ids)
}

#[tokio::test]
async fn trim_plans_and_applies_each_account_with_its_own_credentials() {
    let ids = fresh_accounts(2);
    let (_, a) = owned_snapshots(&ids[0], "eu-west-1", 3).await;
    let (_, b) = owned_snapshots(&ids[1], "eu-west-1", 2).await;
    let list = ids.join(",");
    let trim = |extra: &[&str]| {
        Ektool::moto()
            .args(&["--accounts", &list, "-r", "eu-west-1"])
            .args(extra)
            .args(&["snap", "trim", "--keep-last", "1", "--yes"])
            .run()
    };
    trim(&["--dry-run"])
        .success()
        .stdout_has(&format!("== {} eu-west-1", ids[0]))
        .stdout_has(&format!("== {} eu-west-1", ids[1]));
    let out = trim(&["--output", "json"]).success().json();
    let runs = out.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, (account, snaps)) in runs.iter().zip([(&ids[0], &a), (&ids[1], &b)]) {
        assert_eq!(run["account"], account.as_str());
        let deleted: Vec<&str> = run["plan"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["action"] == "delete")
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(deleted.len(), snaps.len() - 1, "{run}");
        assert!(deleted.iter().all(|d| snaps.iter().any(|s| s == d)));
    }
    // delete-broken goes over every account too (moto makes no `error`
    // snapshot: none to delete).
    Ektool::moto()
        .args(&["--accounts", &list, "-r", "eu-west-1"])
        .args(&["snap", "delete-broken"])
        .run()
        .success()
        .stdout_has(&format!("== {} eu-west-1: 0 broken snapshot(s)", ids[0]))
        .stdout_has(&format!("== {} eu-west-1: 0 broken snapshot(s)", ids[1]));
    // What is left in each account: its newest snapshot only.
    for (account, snaps) in [(&ids[0], &a), (&ids[1], &b)] {
        let left: Vec<String> = ec2_in(account)
            .await
            .describe_snapshots(&Region::new("eu-west-1"), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id.to_string())
            .filter(|s| snaps.contains(s))
            .collect();
        assert_eq!(left.len(), 1, "{account}: {left:?}");
    }
}

#[tokio::test]
async fn backup_snapshots_each_accounts_tagged_instances_in_that_account() {
    use ec2kit::Filter;
    let ids = fresh_accounts(2);
    let key = unique("backup");
    let tags = Tags::new().with(key.clone(), "production");
    let a = launch(&ids[0], "eu-west-1", tags.clone()).await;
    let b = launch(&ids[1], "eu-west-1", tags.clone()).await;
    let list = ids.join(",");
    let tag = format!("{key}=production");
    let out = Ektool::moto()
        .args(&["--accounts", &list, "-r", "eu-west-1", "--output", "json"])
        .args(&["snap", "backup", "--tag", &tag])
        .run()
        .success()
        .json();
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    for (row, (account, instance)) in rows.iter().zip([(&ids[0], &a), (&ids[1], &b)]) {
        assert_eq!(row["account"], account.as_str(), "{row}");
        assert_eq!(row["instance"], instance.as_str(), "{row}");
        assert!(row.to_string().contains("created"), "{row}");
        // The snapshot is in the instance's own account.
        let mine: Vec<String> = ec2_in(account)
            .await
            .describe_snapshots(
                &Region::new("eu-west-1"),
                &[Filter::new("tag:ektool:instance", [instance.as_str()])],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(mine.len(), 1, "{account}: {mine:?}");
        assert!(row.to_string().contains(&mine[0]), "{row}");
    }
    Ektool::moto()
        .args(&["--accounts", &list, "-r", "eu-west-1"])
        .args(&["snap", "backup", "--volume", "vol-0123456789abcdef0"])
        .run()
        .code(2)
        .stderr_has("--role-arn");
}

#[tokio::test]
async fn check_names_the_account_of_a_missing_backup_and_the_rest_pass() {
    let ids = fresh_accounts(2);
    let key = unique("check");
    let tags = Tags::new().with(key.clone(), "production");
    let backed = launch(&ids[0], "eu-west-1", tags.clone()).await;
    let bare = launch(&ids[1], "eu-west-1", tags.clone()).await;
    let tag = format!("{key}=production");
    Ektool::moto()
        .args(&["--role-arn", &role(&ids[0]), "-r", "eu-west-1"])
        .args(&["snap", "backup", "--tag", &tag])
        .run()
        .success();
    let list = ids.join(",");
    let out = Ektool::moto()
        .args(&["--accounts", &list, "-r", "eu-west-1", "--output", "json"])
        .args(&["snap", "check", "--tag", &tag])
        .run()
        .code(1)
        .stderr_has(&format!("account {}: ", ids[1]))
        .stderr_has(&bare);
    assert!(
        !out.stderr.contains(&format!("account {}: ", ids[0])),
        "{}",
        out.stderr
    );
    let json = out.json();
    let reports = json.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["account"], ids[0].as_str());
    assert_eq!(
        reports[0]["failures"].as_array().unwrap().len(),
        0,
        "{json}"
    );
    assert!(reports[0].to_string().contains(&backed), "{json}");
    assert_eq!(reports[1]["account"], ids[1].as_str());
    assert_eq!(
        reports[1]["failures"].as_array().unwrap().len(),
        1,
        "{json}"
    );
    Ektool::moto()
        .args(&["--accounts", &list, "-r", "eu-west-1"])
        .args(&["snap", "check", "--tag", &tag])
        .run()
        .code(1)
        .stdout_has("ACCOUNT")
        .stdout_has(&ids[1]);
}

#[tokio::test]
async fn lag_is_measured_in_each_account_and_names_the_account_behind() {
    let ids = fresh_accounts(2);
    let (volume, _) = owned_snapshots(&ids[0], "eu-west-1", 1).await;
    let list = ids.join(",");
    let lag = |extra: &[&str]| {
        Ektool::moto()
            .args(&["--accounts", &list, "--output", "json"])
            .args(&["snap", "lag", "--from", "eu-west-1", "--to", "us-east-1"])
            .args(&["--all-lineages"])
            .args(extra)
            .run()
    };
    let out = lag(&[]).success().json();
    let rows: Vec<(String, String)> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["account"].as_str().unwrap().to_owned(),
                r["lineage"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rows, vec![(ids[0].clone(), volume.clone())], "{out}");
    lag(&["--max-lag", "1h"])
        .code(1)
        .stderr_has(&format!("{} {volume}", ids[0]));
}

#[tokio::test]
async fn replicate_copies_within_each_account() {
    use snapkit::lineage::tags;
    let ids = fresh_accounts(2);
    let (volume, snaps) = owned_snapshots(&ids[0], "eu-west-1", 1).await;
    let list = ids.join(",");
    let out = Ektool::moto()
        .args(&["--accounts", &list, "--output", "json"])
        .args(&[
            "snap",
            "replicate",
            "--from",
            "eu-west-1",
            "--to",
            "us-east-1",
        ])
        .args(&["--all-lineages"])
        .run()
        .success()
        .json();
    let stages = out.as_array().unwrap();
    assert_eq!(stages.len(), 2, "{out}");
    assert_eq!(stages[0]["account"], ids[0].as_str());
    assert_eq!(stages[1]["account"], ids[1].as_str());
    // The copy is in the first account's destination, and only there.
    let source = snaps[0].clone();
    let mut copies = Vec::new();
    for account in &ids {
        let n = ec2_in(account)
            .await
            .describe_snapshots(&Region::new("us-east-1"), &[])
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.tags.get(tags::SOURCE_SNAPSHOT) == Some(source.as_str()))
            .count();
        copies.push(n);
    }
    assert_eq!(copies, [1, 0], "{volume}");
}
