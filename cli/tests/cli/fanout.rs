//! The last fleet commands fanned out over accounts, against moto (two or
//! three accounts assumed through STS, one of them denied by a fault
//! proxy): `snap replicate-all`, `ektool run JOB`, `--metrics` with an
//! `account` label, the `account` of `--role-arn` alone, and the actions
//! the write commands call in each account.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ec2kit::{Ec2, Filter, Region, Tags};
use ektool_tests::{Fault, FaultProxy, moto_url, tempdir, unique};
use snapkit::lineage::tags;

use crate::accounts::{ec2_in, fresh_accounts, launch, owned_snapshots, role};
use crate::check::promtool_accepts;
use crate::harness::{Ektool, Recorder};

/// The copies in `account`'s `region` of the snapshot `source`.
async fn copies_of(account: &str, region: &str, source: &str) -> usize {
    ec2_in(account)
        .await
        .describe_snapshots(&Region::new(region), &[])
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.tags.get(tags::SOURCE_SNAPSHOT) == Some(source))
        .count()
}

/// `ektool` through a fault proxy in front of moto that denies
/// `AssumeRole` of `denied`'s role.
fn through_proxy(proxy: &FaultProxy) -> Ektool {
    Ektool::new().args(&["--endpoint-url", &proxy.url(), "--no-rate-limit"])
}

fn deny(account: &str) -> FaultProxy {
    let proxy = FaultProxy::start(&moto_url());
    proxy.set(
        "AssumeRole",
        Fault::DenyIf {
            needle: role(account),
        },
    );
    proxy
}

#[tokio::test]
async fn replicate_all_runs_in_every_account_with_its_own_stages_and_one_denied_fails_it() {
    let ids = fresh_accounts(3);
    let (_, a) = owned_snapshots(&ids[0], "eu-west-1", 1).await;
    let (_, b) = owned_snapshots(&ids[1], "us-east-2", 1).await;
    let proxy = deny(&ids[2]);
    let list = ids.join(",");
    let out = through_proxy(&proxy)
        .args(&["--accounts", &list, "-r", "eu-west-1,us-east-2"])
        .args(&["--output", "json", "snap", "replicate-all"])
        .args(&["--primary", "us-east-1", "--secondary", "ap-south-1"])
        .args(&["--all-lineages"])
        .run()
        .code(1)
        .stderr_has(&format!("error: account {}: ", ids[2]))
        .stderr_has("AccessDenied")
        .stderr_has("1 of 3 accounts failed");
    // Each account's two stages, each object with its account.
    let json = out.json();
    let stages: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["account"].as_str().unwrap(),
                s["plans"][0]["to"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            (ids[0].as_str(), "us-east-1"),
            (ids[0].as_str(), "ap-south-1"),
            (ids[1].as_str(), "us-east-1"),
            (ids[1].as_str(), "ap-south-1"),
        ],
        "{json}"
    );
    // Each account's snapshot went into its own primary, and only there.
    assert_eq!(copies_of(&ids[0], "us-east-1", &a[0]).await, 1);
    assert_eq!(copies_of(&ids[1], "us-east-1", &b[0]).await, 1);
    assert_eq!(copies_of(&ids[1], "us-east-1", &a[0]).await, 0);
    assert_eq!(copies_of(&ids[0], "us-east-1", &b[0]).await, 0);

    // The table: a header per account and stage; a rerun copies nothing.
    let table = Ektool::moto()
        .args(&["--accounts", &format!("{},{}", ids[0], ids[1])])
        .args(&["-r", "eu-west-1,us-east-2", "snap", "replicate-all"])
        .args(&["--primary", "us-east-1", "--all-lineages"])
        .run()
        .success()
        .stdout_has(&format!("== {} stage 1: into us-east-1", ids[0]))
        .stdout_has(&format!("== {} stage 1: into us-east-1", ids[1]));
    assert!(!table.stdout.contains("started "), "{}", table.stdout);
    assert_eq!(copies_of(&ids[0], "us-east-1", &a[0]).await, 1);
}

/// A project directory with `ektool.toml` = `text` and a private runtime
/// directory for the job lock.
fn project(text: &str) -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::write(dir.path().join("ektool.toml"), text).unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    dir
}

fn in_project(e: Ektool, dir: &Path) -> Ektool {
    e.current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir.join("run").to_str().unwrap())
}

/// `(step, status)` of an account's run.
type Steps<'a> = Vec<(&'a str, &'a str)>;

#[tokio::test]
async fn a_job_runs_in_every_account_and_a_failing_account_fails_it_while_the_rest_run() {
    let ids = fresh_accounts(3);
    let key = unique("fan-job");
    let tags = Tags::new().with(key.clone(), "prod");
    let a = launch(&ids[0], "eu-west-1", tags.clone()).await;
    let b = launch(&ids[1], "eu-west-1", tags.clone()).await;
    let server = Recorder::start();
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"eu-west-1\"]\n\n\
         [notify]\nwebhook_url_env = \"EKTOOL_TEST_HOOK\"\n\n\
         [jobs.nightly]\nsteps = [\"backup\", \"trim\", \"replicate\", \"check\"]\n\n\
         [jobs.nightly.replicate]\nto = \"us-east-1\"\n"
    ));
    let proxy = deny(&ids[2]);
    let list = ids.join(",");
    let metrics = dir.path().join("job.prom");
    let out = in_project(through_proxy(&proxy), dir.path())
        .env("EKTOOL_TEST_HOOK", &server.url("/hook"))
        .args(&["--accounts", &list, "--output", "json", "run", "nightly"])
        .args(&["--metrics", metrics.to_str().unwrap()])
        .run()
        .code(1)
        .stderr_has(&format!("error: account {}: ", ids[2]))
        .stderr_has("job nightly: failed in 1 of 3 account(s)");
    let json = out.json();
    assert_eq!(json["job"], "nightly");
    let accounts = json["accounts"].as_array().unwrap();
    let outcome: Vec<(&str, Steps<'_>, bool)> = accounts
        .iter()
        .map(|a| {
            let steps = a["report"]["steps"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|s| (s["step"].as_str().unwrap(), s["status"].as_str().unwrap()))
                        .collect()
                })
                .unwrap_or_default();
            (
                a["account"].as_str().unwrap(),
                steps,
                a["error"].is_string(),
            )
        })
        .collect();
    let all_ok = vec![
        ("backup", "ok"),
        ("trim", "ok"),
        ("replicate", "ok"),
        ("check", "ok"),
    ];
    assert_eq!(
        outcome,
        vec![
            (ids[0].as_str(), all_ok.clone(), false),
            (ids[1].as_str(), all_ok, false),
            (ids[2].as_str(), vec![], true),
        ],
        "{json}"
    );
    // Each account's instance was backed up, in its own account, and the
    // backup copied to that account's destination.
    for (account, instance) in [(&ids[0], &a), (&ids[1], &b)] {
        let ec2 = ec2_in(account).await;
        let snaps = ec2
            .describe_snapshots(
                &Region::new("eu-west-1"),
                &[Filter::new("tag:ektool:instance", [instance.as_str()])],
            )
            .await
            .unwrap();
        assert_eq!(snaps.len(), 1, "{account}");
        assert_eq!(
            copies_of(account, "us-east-1", snaps[0].id.as_str()).await,
            1,
            "{account}"
        );
    }
    // One notification with each account's outcome.
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let body = requests[0].splitn(3, ' ').nth(2).unwrap();
    let text: serde_json::Value = serde_json::from_str(body).unwrap();
    let text = text["text"].as_str().unwrap();
    assert!(
        text.starts_with("ektool run nightly: FAILED in 1 of 3 account(s)"),
        "{text}"
    );
    for want in [
        format!(
            "\naccount {}: ok\n  backup: ok: created 1 snapshot(s)",
            ids[0]
        ),
        format!("\naccount {}: ok\n", ids[1]),
        format!("\naccount {}: FAILED: ", ids[2]),
    ] {
        assert!(text.contains(&want), "{want:?} in {text}");
    }
    // The metrics: each account's steps labelled with it, the whole run once.
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for want in [
        format!(
            "ektool_job_step_success{{account=\"{}\",job=\"nightly\",step=\"backup\"}} 1\n",
            ids[0]
        ),
        format!(
            "ektool_job_step_success{{account=\"{}\",job=\"nightly\",step=\"check\"}} 1\n",
            ids[1]
        ),
        format!(
            "ektool_job_account_success{{account=\"{}\",job=\"nightly\"}} 0\n",
            ids[2]
        ),
        "ektool_last_run_success{command=\"run nightly\"} 0\n".to_owned(),
    ] {
        assert!(prom.contains(&want), "{want:?} in {prom}");
    }
    promtool_accepts(&metrics);

    // The table: a row per account and step.
    in_project(Ektool::moto(), dir.path())
        .args(&["--accounts", &format!("{},{}", ids[0], ids[1])])
        .args(&["--dry-run", "run", "nightly"])
        .run()
        .success()
        .stdout_has("ACCOUNT")
        .stdout_has(&format!("{}  backup", ids[1]));
}

#[test]
fn what_cannot_fan_out_over_accounts_is_refused_with_exit_2() {
    // A job whose backup step would take one account's volumes everywhere.
    let dir = project(
        "[volumes.db]\nvolume_id = \"vol-0123456789abcdef0\"\nregion = \"eu-west-1\"\n\n\
         [jobs.nightly]\nsteps = [\"trim\", \"backup\"]\n",
    );
    in_project(Ektool::moto(), dir.path())
        .args(&["--accounts", "111111111111", "run", "nightly"])
        .run()
        .code(2)
        .stderr_has("job nightly: its backup step covers the [volumes] aliases");
    // A command on an environment's hosts, with the flag or the config.
    Ektool::moto()
        .args(&[
            "--accounts",
            "111111111111",
            "run",
            "--env",
            "prod",
            "--",
            "uptime",
        ])
        .run()
        .code(2)
        .stderr_has("--accounts: `ektool run -- COMMAND` runs on an environment's hosts");
    let dir = project("[accounts]\nids = [\"111111111111\"]\n");
    in_project(Ektool::moto(), dir.path())
        .args(&["run", "--env", "prod", "--", "uptime"])
        .run()
        .code(2)
        .stderr_has("config [accounts]: `ektool run -- COMMAND`");
}

/// The lines of `text` that start with `prefix`.
fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[tokio::test]
async fn metrics_across_accounts_label_every_sample_with_its_account() {
    let ids = fresh_accounts(2);
    let key = unique("fan-metrics");
    let tags = Tags::new().with(key.clone(), "prod");
    launch(&ids[0], "eu-west-1", tags.clone()).await;
    launch(&ids[1], "eu-west-1", tags.clone()).await;
    let list = ids.join(",");
    let tag = format!("{key}=prod");
    let dir = tempdir();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |args: &[&str], prom: &str| {
        Ektool::moto()
            .args(&["--accounts", &list, "-r", "eu-west-1"])
            .args(args)
            .args(&["--metrics", &file(prom)])
            .run()
            .success();
        let text = std::fs::read_to_string(dir.path().join(prom)).unwrap();
        promtool_accepts(&dir.path().join(prom));
        text
    };
    let backup = run(&["snap", "backup", "--tag", &tag], "backup.prom");
    for account in &ids {
        let want = format!(
            "ektool_backup_snapshots_created{{account=\"{account}\",region=\"eu-west-1\"}} 1"
        );
        assert!(backup.contains(&want), "{want} in {backup}");
    }
    // Every sample of the run carries an account, but the run's own.
    for l in backup.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            l.contains("account=\"") || l.starts_with("ektool_last_run_"),
            "{l} in {backup}"
        );
    }
    let check = run(&["snap", "check", "--tag", &tag], "check.prom");
    assert_eq!(
        lines(&check, "ektool_check_failures{account=").len(),
        2,
        "{check}"
    );
    let replicate = run(
        &[
            "snap",
            "replicate",
            "--from",
            "eu-west-1",
            "--to",
            "us-east-1",
            "--tag",
            &tag,
        ],
        "replicate.prom",
    );
    for account in &ids {
        let want = format!("ektool_replicate_copies_started{{account=\"{account}\"}} 1\n");
        assert!(replicate.contains(&want), "{want} in {replicate}");
    }
    // A lineage of two snapshots in each account: trim deletes one there.
    for account in &ids {
        owned_snapshots(account, "eu-west-1", 2).await;
    }
    let trim = run(&["snap", "trim", "--yes", "--keep-last", "1"], "trim.prom");
    for account in &ids {
        let prefix =
            format!("ektool_trim_deleted_snapshots{{account=\"{account}\",region=\"eu-west-1\"}} ");
        assert_eq!(lines(&trim, &prefix).len(), 1, "{prefix} in {trim}");
    }
}

#[tokio::test]
async fn role_arn_alone_labels_backup_check_and_replicate_with_its_account() {
    let ids = fresh_accounts(1);
    let account = ids[0].as_str();
    let key = unique("fan-role");
    let instance = launch(account, "eu-west-1", Tags::new().with(key.clone(), "prod")).await;
    let tag = format!("{key}=prod");
    let with_role = || Ektool::moto().args(&["--role-arn", &role(account), "-r", "eu-west-1"]);
    let backup = with_role()
        .args(&["--output", "json", "snap", "backup", "--tag", &tag])
        .run()
        .success()
        .json();
    assert_eq!(backup[0]["account"], account, "{backup}");
    assert_eq!(backup[0]["instance"], instance.as_str(), "{backup}");
    with_role()
        .args(&["snap", "backup", "--tag", &tag])
        .run()
        .success()
        .stdout_has("ACCOUNT")
        .stdout_has(&format!("{account}  eu-west-1  {instance}"));
    let check = with_role()
        .args(&["--output", "json", "snap", "check", "--tag", &tag])
        .run()
        .success()
        .json();
    assert_eq!(check[0]["account"], account, "{check}");
    assert!(check[0].to_string().contains(&instance), "{check}");
    with_role()
        .args(&["snap", "check", "--tag", &tag])
        .run()
        .success()
        .stdout_has("ACCOUNT")
        .stdout_has(&format!("{account}  eu-west-1"));
    let replicate = with_role()
        .args(&["--output", "json", "snap", "replicate"])
        .args(&["--from", "eu-west-1", "--to", "us-east-1", "--tag", &tag])
        .run()
        .success()
        .json();
    assert_eq!(replicate[0]["account"], account, "{replicate}");
    assert_eq!(replicate[0]["plans"][0]["to"], "us-east-1", "{replicate}");
    // The metrics of `--role-arn` carry its account as well.
    let dir = tempdir();
    let prom = dir.path().join("check.prom");
    with_role()
        .args(&["snap", "check", "--tag", &tag, "--metrics"])
        .arg(prom.to_str().unwrap())
        .run()
        .success();
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        lines(
            &text,
            &format!("ektool_check_failures{{account=\"{account}\"}} 0")
        )
        .len(),
        1,
        "{text}"
    );
    promtool_accepts(&prom);
}

/// `(account, action)` pairs an `ektool` run recorded
/// (`EKTOOL_RECORD_ACCOUNT_ACTIONS`).
fn account_actions(file: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut by = BTreeMap::<String, BTreeSet<String>>::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let (account, action) = line.split_once(' ').unwrap();
        by.entry(account.to_owned())
            .or_default()
            .insert(action.to_owned());
    }
    by
}

/// The actions `ektool iam-policy COMMAND…` grants.
fn granted(command: &[&str]) -> BTreeSet<String> {
    let policy = Ektool::new()
        .args(&["iam-policy"])
        .args(command)
        .run()
        .success()
        .json();
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn write_commands_across_accounts_call_in_each_account_only_what_their_policy_grants() {
    let ids = fresh_accounts(2);
    let key = unique("fan-iam");
    let tags = Tags::new().with(key.clone(), "prod");
    for account in &ids {
        launch(account, "eu-west-1", tags.clone()).await;
        owned_snapshots(account, "eu-west-1", 2).await;
    }
    let tag = format!("{key}=prod");
    let list = ids.join(",");
    let commands: [&[&str]; 5] = [
        &["snap", "backup", "--tag", &tag],
        &["snap", "trim", "--yes", "--keep-last", "1"],
        &[
            "snap",
            "replicate",
            "--from",
            "eu-west-1",
            "--to",
            "us-east-1",
            "--all-lineages",
        ],
        &["snap", "delete-broken"],
        &[
            "snap",
            "replicate-all",
            "--primary",
            "us-east-2",
            "--secondary",
            "us-east-1",
            "--all-lineages",
        ],
    ];
    for command in commands {
        let dir = tempdir();
        let file = dir.path().join("actions");
        Ektool::moto()
            .env("EKTOOL_RECORD_ACCOUNT_ACTIONS", file.to_str().unwrap())
            .args(&["--accounts", &list, "-r", "eu-west-1"])
            .args(command)
            .run()
            .success();
        let by = account_actions(&file);
        // Every call went to one of the accounts, none to the caller's own.
        assert_eq!(
            by.keys().cloned().collect::<Vec<_>>(),
            ids.to_vec(),
            "{command:?}: {by:?}"
        );
        // The policy's name for the command: its first two words.
        let policy = granted(&command[..2]);
        for (account, actions) in &by {
            assert!(
                actions.is_subset(&policy),
                "{command:?} in {account}: {:?} not in iam-policy",
                actions.difference(&policy).collect::<Vec<_>>()
            );
        }
        // The write itself happened in each account.
        let write = match command[1] {
            "backup" => "ec2:CreateSnapshots",
            "trim" => "ec2:DeleteSnapshot",
            "replicate" | "replicate-all" => "ec2:CopySnapshot",
            _ => "ec2:DescribeSnapshots",
        };
        for (account, actions) in &by {
            assert!(
                actions.contains(write),
                "{command:?}: no {write} in {account}: {actions:?}"
            );
        }
    }
}
