//! The vault account's own side (issue 16) against moto: retention and
//! checks of the copies in the vault, `--account`, and `snap check`
//! covering the vault from a source account. moto keeps each account's
//! state apart (STS AssumeRole into `arn:aws:iam::ID:role/…`); the vault
//! copies are made here directly in the vault, tagged as `snap replicate
//! --to-account` tags them.

use std::collections::BTreeSet;

use ec2kit::requests::{CreateSnapshot, CreateVolume};
use ec2kit::{AwsEc2, Ec2, Filter, Region, Tags};
use ektool_tests::{moto_url, tempdir};
use snapkit::lineage::tags;

use crate::harness::Ektool;

const REGION: &str = "eu-west-3";

/// An account id no other test (nor an earlier run against the same
/// moto) uses.
fn fresh_account() -> String {
    crate::moto::fresh_accounts(1).remove(0)
}

/// The keep role in `account` (any role name: moto trusts every one).
fn keep_role(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/ektool-keep")
}

async fn ec2_in(account: &str) -> AwsEc2 {
    crate::moto::ec2_as(keep_role(account)).await
}

/// A volume in the vault: its copies' lineage (moto gives a copy the
/// volume id of its source, so the vault's own volume stands in for it).
async fn vault_volume(vault: &AwsEc2) -> String {
    vault
        .create_volume(
            &Region::new(REGION),
            &CreateVolume {
                availability_zone: format!("{REGION}a"),
                size_gib: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
        .to_string()
}

/// A vault copy of `source_account`'s lineage `volume` (a snapshot of
/// that volume in the vault, tagged like `snap replicate --to-account`
/// tags copies), its data taken `data_hours_ago`.
async fn vault_copy(
    vault: &AwsEc2,
    source_account: &str,
    volume: &str,
    data_hours_ago: i64,
) -> String {
    let data_time = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(data_hours_ago))
        .unwrap();
    let tags = Tags::new()
        .with(tags::OWNER, tags::OWNER_VALUE)
        .with(tags::VOLUME, volume)
        .with(tags::SOURCE_ACCOUNT, source_account)
        .with(tags::SOURCE_SNAPSHOT, "snap-0123456789abcdef0")
        .with(tags::SOURCE_REGION, REGION)
        .with(tags::SOURCE_TIME, data_time.to_string())
        .with(tags::ORIGIN_REGION, REGION);
    vault
        .create_snapshot(
            &Region::new(REGION),
            &CreateSnapshot {
                volume_id: Some(volume.parse().unwrap()),
                description: Some("vault copy".into()),
                tags,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
        .to_string()
}

/// The snapshots of the vault's `volume` that still exist.
async fn left(vault: &AwsEc2, volume: &str) -> BTreeSet<String> {
    vault
        .describe_snapshots(
            &Region::new(REGION),
            &[Filter::new("volume-id", [volume.to_owned()])],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect()
}

/// A directory with an `ektool.toml` naming `vault` as the vault account
/// (copies a day old at most), plus `extra`.
fn config(vault: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!("[vault]\naccount = \"{vault}\"\nmax_age = \"1d\"\n{extra}"),
    )
    .unwrap();
    dir
}

/// Keep one per lineage in the vault; everything (a hundred) elsewhere.
const KEEP_ONE_IN_THE_VAULT: &str = "\
[retention]\npolicy = \"gfs\"\n[retention.gfs]\nkeep_last = 100\n\
[vault.retention]\npolicy = \"gfs\"\n[vault.retention.gfs]\nkeep_last = 1\n";

/// Two source accounts' copies of the same lineage stay apart: account
/// A's only copy survives `keep_last = 1`, B's older copy goes (merged,
/// one of the three would be kept). The plan names each source account.
#[tokio::test]
async fn two_source_accounts_lineages_stay_apart_in_trim() {
    let (vault, a, b) = (fresh_account(), fresh_account(), fresh_account());
    let v = ec2_in(&vault).await;
    let volume = vault_volume(&v).await;
    let a1 = vault_copy(&v, &a, &volume, 30).await;
    let b1 = vault_copy(&v, &b, &volume, 20).await;
    let b2 = vault_copy(&v, &b, &volume, 1).await;
    let cfg = config(&vault, KEEP_ONE_IN_THE_VAULT);
    let out = Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
        .args(&["-r", REGION, "--output", "json", "snap", "trim", "--yes"])
        .run()
        .success()
        .json();
    assert_eq!(out[0]["account"], vault.as_str());
    let plan = out[0]["plan"].as_array().unwrap();
    let action = |id: &str| {
        let d = plan.iter().find(|d| d["id"] == id).unwrap();
        (
            d["lineage"].as_str().unwrap().to_owned(),
            d["action"].as_str().unwrap().to_owned(),
        )
    };
    let (la, lb) = (format!("{a}/{volume}"), format!("{b}/{volume}"));
    assert_eq!(action(&a1), (la.clone(), "keep".to_owned()));
    // B keeps its newest (moto's start times are whole seconds: which of
    // the two is newest is the plan's to say), deletes the other.
    let mut b_actions = [action(&b1), action(&b2)];
    b_actions.sort();
    assert_eq!(
        b_actions,
        [(lb.clone(), "delete".to_owned()), (lb, "keep".to_owned())]
    );
    let kept_b = if action(&b1).1 == "keep" { b1 } else { b2 };
    assert_eq!(left(&v, &volume).await, BTreeSet::from([a1, kept_b]));

    // `snap list` and `snap count` show the source account.
    let list = Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
        .args(&["-r", REGION, "snap", "list"])
        .run()
        .success();
    assert!(list.stdout.contains("SOURCE ACCOUNT"), "{}", list.stdout);
    assert!(list.stdout.contains(&la), "{}", list.stdout);
    let count = Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
        .args(&["-r", REGION, "--output", "json", "snap", "count"])
        .run()
        .success()
        .json();
    assert_eq!(count[0]["account"], vault.as_str());
    assert_eq!(count[0]["by_source_account"][&a], 1);
    assert_eq!(count[0]["by_source_account"][&b], 1);
}

/// `[vault.retention]` is the vault's policy (`[retention]` would keep
/// all three); `--dry-run` plans the same and deletes nothing.
#[tokio::test]
async fn trim_in_the_vault_keeps_per_the_vault_retention_and_dry_run_deletes_nothing() {
    let (vault, a) = (fresh_account(), fresh_account());
    let v = ec2_in(&vault).await;
    let volume = vault_volume(&v).await;
    let c1 = vault_copy(&v, &a, &volume, 50).await;
    let c2 = vault_copy(&v, &a, &volume, 26).await;
    let c3 = vault_copy(&v, &a, &volume, 2).await;
    let all = BTreeSet::from([c1, c2, c3]);
    let cfg = config(&vault, KEEP_ONE_IN_THE_VAULT);
    let run = |dry: bool| {
        let mut e = Ektool::moto()
            .current_dir(cfg.path())
            .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
            .args(&["-r", REGION, "--output", "json"]);
        if dry {
            e = e.arg("--dry-run");
        }
        e.args(&["snap", "trim", "--yes"]).run().success().json()
    };
    let deletes = |out: &serde_json::Value| -> BTreeSet<String> {
        out[0]["plan"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["action"] == "delete")
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // One of the three is the newest (moto's start times are whole
    // seconds: the plan says which); the other two go.
    let planned = run(true);
    let planned_deletes = deletes(&planned);
    assert_eq!(planned_deletes.len(), 2, "{planned}");
    assert!(planned[0].get("applied").is_none());
    assert_eq!(left(&v, &volume).await, all, "the dry run deleted");
    let applied = run(false);
    assert_eq!(deletes(&applied), planned_deletes);
    let kept: BTreeSet<String> = all.difference(&planned_deletes).cloned().collect();
    assert_eq!(left(&v, &volume).await, kept);
}

/// `--account` with the ambient credentials of another account: exit 2,
/// one error line naming both accounts, nothing called or deleted. The
/// vault's copy role is refused too (it cannot delete by design).
#[tokio::test]
async fn trim_in_the_vault_refuses_other_credentials_and_the_copy_role() {
    let (vault, a) = (fresh_account(), fresh_account());
    let v = ec2_in(&vault).await;
    let volume = vault_volume(&v).await;
    let c1 = vault_copy(&v, &a, &volume, 50).await;
    let c2 = vault_copy(&v, &a, &volume, 2).await;
    let cfg = config(&vault, KEEP_ONE_IN_THE_VAULT);
    let actions = cfg.path().join("actions");
    // The bench's ambient credentials are moto's default account's.
    let out = Ektool::moto()
        .current_dir(cfg.path())
        .env("EKTOOL_RECORD_ACTIONS", actions.to_str().unwrap())
        .args(&["--account", &vault, "-r", REGION, "snap", "trim", "--yes"])
        .run()
        .code(2);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains(&vault) && errors[0].contains("123456789012"),
        "{}",
        out.stderr
    );
    assert!(crate::harness::recorded_actions(&actions).is_empty());
    // A role ARN of another account.
    Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &keep_role(&a)])
        .args(&["-r", REGION, "snap", "trim", "--yes"])
        .run()
        .code(2)
        .stderr_has(&format!("is not a role in account {vault}"));
    // The copy role.
    let copy_role = format!("arn:aws:iam::{vault}:role/ektool-vault-copy");
    Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &copy_role])
        .args(&["-r", REGION, "snap", "trim", "--yes"])
        .run()
        .code(2)
        .stderr_has("the vault's copy role");
    // The same without --account: the role's account is the vault.
    Ektool::moto()
        .current_dir(cfg.path())
        .args(&[
            "--role-arn",
            &copy_role,
            "-r",
            REGION,
            "snap",
            "trim",
            "--yes",
        ])
        .run()
        .code(2)
        .stderr_has("the vault's copy role");
    assert_eq!(left(&v, &volume).await, BTreeSet::from([c1, c2]));
}

/// With the vault's own ambient credentials (a job inside the vault: a
/// profile whose role is in the vault), `--account VAULT` works.
#[tokio::test]
async fn trim_in_the_vault_runs_with_the_vaults_own_credentials() {
    let (vault, a) = (fresh_account(), fresh_account());
    let v = ec2_in(&vault).await;
    let volume = vault_volume(&v).await;
    let c1 = vault_copy(&v, &a, &volume, 50).await;
    let c2 = vault_copy(&v, &a, &volume, 2).await;
    let cfg = config(&vault, KEEP_ONE_IN_THE_VAULT);
    let aws = cfg.path().join("aws-config");
    let credentials = cfg.path().join("aws-credentials");
    std::fs::write(&credentials, "").unwrap();
    std::fs::write(
        &aws,
        format!(
            "[profile base]\naws_access_key_id = testing\naws_secret_access_key = testing\n\
             region = us-east-1\n\n[profile vault]\nrole_arn = {}\nsource_profile = base\n\
             region = us-east-1\nendpoint_url = {}\n",
            keep_role(&vault),
            moto_url()
        ),
    )
    .unwrap();
    Ektool::moto()
        .current_dir(cfg.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_CONFIG_FILE", aws.to_str().unwrap())
        .env("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap())
        .env("AWS_PROFILE", "vault")
        .args(&["--account", &vault, "-r", REGION, "snap", "trim", "--yes"])
        .run()
        .success()
        .stdout_has(&format!("== {vault} {REGION}"));
    let left = left(&v, &volume).await;
    assert_eq!(left.len(), 1, "one of {c1} and {c2} stays: {left:?}");
}

/// `snap check --account VAULT`: a lineage whose newest copy's data is
/// older than `[vault] max_age` fails (exit 1, one line), per source
/// account; `--max-age` overrides.
#[tokio::test]
async fn check_in_the_vault_fails_a_stale_lineage() {
    let (vault, a, b) = (fresh_account(), fresh_account(), fresh_account());
    let v = ec2_in(&vault).await;
    let volume = vault_volume(&v).await;
    vault_copy(&v, &a, &volume, 2).await;
    // B's newest copy was made now, but of data three days old.
    vault_copy(&v, &b, &volume, 80).await;
    let stale = vault_copy(&v, &b, &volume, 72).await;
    let cfg = config(&vault, "");
    let out = Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
        .args(&["-r", REGION, "snap", "check"])
        .run()
        .code(1);
    // One line, `account VAULT: ` first as every labelled check's.
    let failures: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(": stale:") || l.contains(": missing:"))
        .collect();
    assert_eq!(failures.len(), 1, "{}", out.stderr);
    let want = format!("account {vault}: stale: {REGION} {b}/{volume} vault: newest {stale} is 3d");
    assert!(
        failures[0].starts_with(&want) && failures[0].ends_with("old, more than 1d"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("SOURCE ACCOUNT"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("{a}/{volume}")),
        "{}",
        out.stdout
    );
    let metrics = cfg.path().join("vault.prom");
    Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
        .args(&["-r", REGION, "snap", "check", "--max-age", "4d"])
        .args(&["--metrics", metrics.to_str().unwrap()])
        .run()
        .success();
    let text = std::fs::read_to_string(&metrics).unwrap();
    let sample = format!("lineage=\"{b}/{volume}\"");
    assert!(
        text.lines().any(
            |l| l.starts_with("ektool_snapshot_newest_completed_timestamp_seconds")
                && l.contains(&sample)
                && l.contains("place=\"vault\"")
        ),
        "{text}"
    );
}

/// From a source account, `snap check` with `[vault] max_age` checks the
/// vault too, through the vault's copy role: a source lineage without a
/// copy of its own account there fails; with one, it passes. (moto gives
/// copies their source's volume id, so the lineage is named the seed's
/// way, by the JSON description, on both sides.)
#[tokio::test]
async fn the_source_check_covers_the_vault() {
    let (vault, other) = (fresh_account(), fresh_account());
    let source = "123456789012"; // moto's account of the bench's credentials
    let lineage = format!("vol-{:017x}", fastrand_u64());
    let described = |ec2: AwsEc2, account: Option<String>| {
        let lineage = lineage.clone();
        async move {
            let volume = vault_volume(&ec2).await;
            let mut tags = Tags::new().with(tags::OWNER, tags::OWNER_VALUE);
            if let Some(a) = &account {
                tags = tags
                    .with(tags::SOURCE_ACCOUNT, a)
                    .with(tags::SOURCE_TIME, jiff::Timestamp::now().to_string());
            }
            ec2.create_snapshot(
                &Region::new(REGION),
                &CreateSnapshot {
                    volume_id: Some(volume.parse().unwrap()),
                    description: Some(format!(r#"{{"Volume": "{lineage}"}}"#)),
                    tags,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    // The source's own backup of the lineage, fresh.
    described(crate::moto::ec2().await, None).await;
    // Another account's copy of the same lineage in the vault: not ours.
    described(ec2_in(&vault).await, Some(other)).await;
    // A job's check step covers the vault the same way (instances of a
    // tag nothing carries: only the alias is checked).
    let cfg = config(
        &vault,
        &format!(
            "\n[volumes.db]\nvolume_id = \"{lineage}\"\nregion = \"{REGION}\"\n\
             [jobs.verify]\nsteps = [\"check\"]\n"
        ),
    );
    let text = std::fs::read_to_string(cfg.path().join("ektool.toml")).unwrap();
    std::fs::write(
        cfg.path().join("ektool.toml"),
        format!(
            "[defaults]\ntag = \"{}=yes\"\n{text}",
            ektool_tests::unique("nothing")
        ),
    )
    .unwrap();
    std::fs::create_dir(cfg.path().join("run")).unwrap();
    let check = || {
        Ektool::moto()
            .current_dir(cfg.path())
            .args(&["-r", REGION, "snap", "check", "--aliases-only"])
            .run()
    };
    let job = || {
        Ektool::moto()
            .current_dir(cfg.path())
            .env("XDG_RUNTIME_DIR", cfg.path().join("run").to_str().unwrap())
            .args(&["-r", REGION, "--output", "json", "run", "verify"])
            .run()
    };
    let missing = format!("missing: {REGION} {source}/{lineage} (db) vault: no completed snapshot");
    check().code(1).stderr_has(&missing);
    let failed = job().code(1);
    let step = &failed.json()["steps"][0];
    assert_eq!(step["status"], "failed", "{step}");
    assert!(
        step["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains(&missing)),
        "{step}"
    );
    described(ec2_in(&vault).await, Some(source.to_owned())).await;
    check()
        .success()
        .stdout_has(&format!("{source}/{lineage}"))
        .stdout_has("vault");
    let passed = job().success();
    assert_eq!(
        passed.json()["steps"][0]["status"],
        "ok",
        "{}",
        passed.stdout
    );
}

/// A random number (no two runs against one moto share a lineage).
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish() >> 4
}

/// `iam-policy vault-keep` is what retention and checks in the vault
/// call: the union of the actions `snap trim|check|list|count --account
/// VAULT` really call, recorded against moto; `--archive-after` adds its
/// own. GetCallerIdentity needs no permission (IAM cannot deny it).
#[tokio::test]
async fn the_vault_keep_policy_is_what_the_vault_commands_call() {
    let (vault, a) = (fresh_account(), fresh_account());
    let v = ec2_in(&vault).await;
    let volume = vault_volume(&v).await;
    for hours in [50, 26, 2] {
        vault_copy(&v, &a, &volume, hours).await;
    }
    let cfg = config(&vault, KEEP_ONE_IN_THE_VAULT);
    let policies = crate::iam::Policies::load();
    let role = keep_role(&vault);
    let base = [
        "--account",
        vault.as_str(),
        "--role-arn",
        role.as_str(),
        "-r",
        REGION,
    ];
    let mut got = BTreeSet::new();
    for command in [
        &["snap", "list"][..],
        &["snap", "count"],
        &["snap", "check"],
        &["snap", "trim", "--yes"],
    ] {
        let argv: Vec<&str> = base.iter().chain(command).copied().collect();
        got.extend(crate::iam::recorded(cfg.path(), &argv));
    }
    assert_eq!(got, policies.expected("vault-keep", &[]));
    assert!(got.contains("ec2:DeleteSnapshot"), "{got:?}");
    // Archiving: the flag's actions, nothing outside the policy.
    vault_copy(&v, &a, &volume, 1).await;
    let argv: Vec<&str> = base
        .iter()
        .chain(&[
            "snap",
            "trim",
            "--yes",
            "--keep-last",
            "3",
            "--archive-after",
            "0d",
        ])
        .copied()
        .collect();
    let archived = crate::iam::recorded(cfg.path(), &argv);
    let want = policies.expected("vault-keep", &["--archive-after"]);
    assert!(archived.is_subset(&want), "{archived:?} not in {want:?}");
    assert!(archived.contains("ec2:ModifySnapshotTier"), "{archived:?}");
}

/// The keep role is trusted by the vault account only: a trust policy
/// for any other account is refused.
#[test]
fn the_keep_role_is_trusted_by_nobody_outside_the_vault() {
    let vault = fresh_account();
    let cfg = config(&vault, "");
    let doc = Ektool::new()
        .current_dir(cfg.path())
        .args(&[
            "iam-policy",
            "vault-keep",
            "--restrict-by-tag",
            "--trust",
            &vault,
        ])
        .run()
        .success()
        .json();
    assert_eq!(
        doc["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{vault}:root")
    );
    Ektool::new()
        .current_dir(cfg.path())
        .args(&["iam-policy", "vault-keep", "--trust", "123456789012"])
        .run()
        .code(2)
        .stderr_has("trusted by the vault account");
}

/// Fanned out over accounts, `snap check` covers the vault for each
/// account: its instances' lineages need copies of that account there.
#[tokio::test]
async fn the_check_over_accounts_covers_the_vault_for_each() {
    use ec2kit::requests::RunInstances;
    let (vault, s1, s2) = (fresh_account(), fresh_account(), fresh_account());
    let key = ektool_tests::unique("vault");
    let region = Region::new(REGION);
    // Each source account: one tagged instance, its root volume backed up
    // now; the vault holds a recent copy of s1's only.
    let mut roots = Vec::new();
    for account in [&s1, &s2] {
        let ec2 = ec2_in(account).await;
        let instance = ec2
            .run_instances(
                &region,
                &RunInstances {
                    image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
                    instance_type: "t3.micro".into(),
                    count: 1,
                    tags: Tags::new().with(&key, "prod"),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .remove(0);
        let root = instance.root_volume().unwrap().to_string();
        ec2.create_snapshot(
            &region,
            &CreateSnapshot {
                volume_id: Some(root.parse().unwrap()),
                tags: Tags::new()
                    .with(tags::OWNER, tags::OWNER_VALUE)
                    .with(tags::VOLUME, &root),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        roots.push(root);
    }
    let v = ec2_in(&vault).await;
    let stand_in = vault_volume(&v).await;
    v.create_snapshot(
        &region,
        &CreateSnapshot {
            volume_id: Some(stand_in.parse().unwrap()),
            // moto gives copies their source's volume id: the seed's JSON
            // description names the lineage.
            description: Some(format!(r#"{{"Volume": "{}"}}"#, roots[0])),
            tags: Tags::new()
                .with(tags::OWNER, tags::OWNER_VALUE)
                .with(tags::SOURCE_ACCOUNT, &s1)
                .with(tags::SOURCE_TIME, jiff::Timestamp::now().to_string()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cfg = config(&vault, "");
    let tag = format!("{key}=prod");
    let out = Ektool::moto()
        .current_dir(cfg.path())
        .args(&["--accounts", &format!("{s1},{s2}"), "-r", REGION])
        .args(&["snap", "check", "--tag", &tag])
        .run()
        .code(1);
    let failures: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("account "))
        .collect();
    assert_eq!(failures.len(), 1, "{}", out.stderr);
    let want = format!("account {s2}: missing: {REGION} {s2}/{} (", roots[1]);
    assert!(
        failures[0].starts_with(&want) && failures[0].ends_with(") vault: no completed snapshot"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains(&format!("{s1}/{}", roots[0])),
        "{}",
        out.stdout
    );
}

/// End to end with real vault copies (`snap replicate --to-account`, the
/// bench's moto patch copying a shared snapshot): the source account's
/// check finds its copy in the vault, and the vault's own check and trim
/// see the lineage as the source account's.
#[tokio::test]
async fn copies_made_by_replicate_are_checked_and_kept_in_the_vault() {
    let (vault, source) = (fresh_account(), fresh_account());
    let key = ektool_tests::unique("keep");
    let region = Region::new(REGION);
    let s = ec2_in(&source).await;
    let volume = vault_volume(&s).await;
    s.create_snapshot(
        &region,
        &CreateSnapshot {
            volume_id: Some(volume.parse().unwrap()),
            tags: Tags::new()
                .with(tags::OWNER, tags::OWNER_VALUE)
                .with(tags::VOLUME, &volume)
                .with(&key, "prod"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cfg = config(
        &vault,
        &format!("\n[volumes.db]\nvolume_id = \"{volume}\"\nregion = \"{REGION}\"\n"),
    );
    let as_source = || {
        Ektool::moto().current_dir(cfg.path()).args(&[
            "--role-arn",
            &keep_role(&source),
            "-r",
            REGION,
        ])
    };
    let lineage = format!("{source}/{volume}");
    // Before any copy: the source's check misses its vault copy.
    as_source()
        .args(&["snap", "check", "--aliases-only"])
        .run()
        .code(1)
        .stderr_has(&format!("missing: {REGION} {lineage} (db) vault"));
    as_source()
        .args(&["snap", "replicate", "--from", REGION, "--to-account"])
        .args(&["--tag", &format!("{key}=prod"), "--wait"])
        .run()
        .success();
    as_source()
        .args(&["snap", "check", "--aliases-only"])
        .run()
        .success()
        .stdout_has(&lineage);
    let as_vault = || {
        Ektool::moto()
            .current_dir(cfg.path())
            .args(&["--account", &vault, "--role-arn", &keep_role(&vault)])
            .args(&["-r", REGION, "--output", "json"])
    };
    let check = as_vault().args(&["snap", "check"]).run().success().json();
    let lineages = check[0]["lineages"].as_array().unwrap();
    assert_eq!(lineages.len(), 1, "{check}");
    assert_eq!(lineages[0]["lineage"], lineage.as_str());
    assert_eq!(lineages[0]["source_account"], source.as_str());
    assert_eq!(lineages[0]["status"], "fresh");
    let plan = as_vault()
        .args(&["--dry-run", "snap", "trim"])
        .run()
        .success()
        .json();
    assert_eq!(plan[0]["plan"][0]["lineage"], lineage.as_str());
    assert_eq!(plan[0]["plan"][0]["action"], "keep");
}
