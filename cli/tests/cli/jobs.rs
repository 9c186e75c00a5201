//! `ektool run JOB` against moto (all four steps, a failing step that does
//! not stop the next, the local lock, bad names) and `ektool schedule`
//! (systemd units checked by `systemd-analyze verify`, a cron line).

use std::path::Path;
use std::process::Command;

use ec2kit::Tags;

use crate::harness::{Ektool, Recorder};
use crate::moto;

/// Regions no other test uses.
const FROM: &str = "cn-north-1";
const TO: &str = "cn-northwest-1";

/// A project directory with `ektool.toml` = `text`, and a private
/// runtime directory for the job locks.
fn project(text: &str) -> tempfile::TempDir {
    let dir = ektool_tests::tempdir();
    std::fs::write(dir.path().join("ektool.toml"), text).unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    dir
}

fn ektool(dir: &Path) -> Ektool {
    Ektool::moto()
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", dir.join("run").to_str().unwrap())
}

fn steps(json: &serde_json::Value) -> Vec<(String, String)> {
    json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_job_backs_up_trims_replicates_and_checks_in_one_run() {
    let key = ektool_tests::unique("job");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let root = inst.root_volume().unwrap().to_string();
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n\
         [jobs.nightly]\nsteps = [\"backup\", \"trim\", \"replicate\", \"check\"]\n\n\
         [jobs.nightly.replicate]\nto = \"{TO}\"\n\n\
         [jobs.nightly.check]\nmax_age = \"26h\"\n"
    ));

    // A dry run plans every step and creates nothing.
    let dry = ektool(dir.path())
        .args(&["--dry-run", "--output", "json", "run", "nightly"])
        .run();
    let json = dry.json();
    assert_eq!(json["dry_run"], true);
    assert_eq!(steps(&json)[0], ("backup".into(), "ok".into()), "{json}");
    assert_eq!(steps(&json)[2], ("replicate".into(), "ok".into()), "{json}");
    // Nothing was backed up: the check finds the lineage missing.
    assert_eq!(steps(&json)[3], ("check".into(), "failed".into()), "{json}");
    assert!(
        dry.stderr
            .contains(&format!("check: missing: {FROM} {root}")),
        "{}",
        dry.stderr
    );

    let actions = dir.path().join("actions");
    let out = ektool(dir.path())
        .env("EKTOOL_RECORD_ACTIONS", actions.to_str().unwrap())
        .args(&["run", "nightly", "--metrics"])
        .arg(dir.path().join("job.prom").to_str().unwrap())
        .run()
        .success();
    // The metrics, once for the run: its success, each step's, the check's.
    let text = std::fs::read_to_string(dir.path().join("job.prom")).unwrap();
    for want in [
        "ektool_last_run_success{command=\"run nightly\"} 1\n",
        "ektool_job_step_success{job=\"nightly\",step=\"replicate\"} 1\n",
        &format!("lineage=\"{root}\""),
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let promtool = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    match promtool {
        None => println!("skipped promtool: not installed (scripts/testbed install adds it)"),
        Some(promtool) => {
            let out = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::fs::File::open(dir.path().join("job.prom")).unwrap())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Every call is in `iam-policy run` (the policies of its steps).
    let policy = Ektool::new()
        .args(&["--output", "json", "iam-policy", "run"])
        .run()
        .success()
        .stdout;
    let recorded = crate::harness::recorded_actions(&actions);
    assert!(
        recorded.contains("ec2:CreateSnapshots") || recorded.contains("ec2:CreateSnapshot"),
        "{recorded:?}"
    );
    assert!(recorded.contains("ec2:CopySnapshot"), "{recorded:?}");
    for action in &recorded {
        assert!(
            policy.contains(&format!("\"{action}\"")),
            "{action} not in {policy}"
        );
    }
    for (step, line) in [
        ("backup", "created 1 snapshot(s) of 1 item(s)"),
        ("trim", "deleted 0 snapshot(s) in 2 region(s)"),
        ("replicate", &format!("copied 1 snapshot(s) to {TO}")),
        ("check", "1 lineage(s) checked, 0 failure(s)"),
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains(step) && l.contains(" ok ") && l.contains(line)),
            "{step}: {}",
            out.stdout
        );
    }
    // The copy is in the destination: `snap check --to` finds it fresh.
    Ektool::moto()
        .args(&[
            "-r",
            FROM,
            "snap",
            "check",
            "--tag",
            &format!("{key}=prod"),
            "--to",
            TO,
        ])
        .run()
        .success()
        .stdout_has("replica");
}

#[tokio::test]
async fn a_failing_step_fails_the_run_but_later_steps_still_run_unless_told() {
    let key = ektool_tests::unique("job-fail");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let root = inst.root_volume().unwrap().to_string();
    let config = |stop: bool| {
        format!(
            "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n\
             [jobs.night]\nsteps = [\"check\", \"trim\"]\nstop_on_failure = {stop}\n"
        )
    };
    let dir = project(&config(false));
    let out = ektool(dir.path())
        .args(&["--output", "json", "run", "night"])
        .run()
        .code(1);
    assert_eq!(
        steps(&out.json()),
        [
            ("check".into(), "failed".into()),
            ("trim".into(), "ok".into())
        ]
    );
    assert!(
        out.stderr
            .contains(&format!("check: missing: {FROM} {root}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("job night: 1 of 2 step(s) failed"),
        "{}",
        out.stderr
    );

    std::fs::write(dir.path().join("ektool.toml"), config(true)).unwrap();
    let out = ektool(dir.path())
        .args(&["--output", "json", "run", "night"])
        .run()
        .code(1);
    assert_eq!(
        steps(&out.json()),
        [
            ("check".into(), "failed".into()),
            ("trim".into(), "skipped".into())
        ]
    );
}

#[test]
fn a_second_run_of_a_job_is_refused_while_the_first_holds_its_lock() {
    let dir = project("[jobs.nightly]\nsteps = [\"check\"]\n");
    let lock_dir = dir.path().join("run/ektool");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let path = lock_dir.join("job-nightly.lock");
    let mut held = std::fs::File::create(&path).unwrap();
    held.try_lock().unwrap();
    std::io::Write::write_all(&mut held, b"pid 4242 on testhost").unwrap();
    let out = ektool(dir.path()).args(&["run", "nightly"]).run().code(1);
    assert!(
        out.stderr.contains("job nightly is already running (lock")
            && out.stderr.contains("held by pid 4242 on testhost"),
        "{}",
        out.stderr
    );
    // Released: the run gets past the lock (and fails later, on no region
    // or the check, not on the lock).
    drop(held);
    let out = ektool(dir.path()).args(&["run", "nightly"]).run();
    assert!(!out.stderr.contains("already running"), "{}", out.stderr);
}

#[test]
fn bad_job_names_and_steps_are_usage_errors() {
    let dir = project("[jobs.nightly]\nsteps = [\"check\"]\n");
    ektool(dir.path())
        .args(&["run", "weekly"])
        .run()
        .code(2)
        .stderr_has("no job \"weekly\" in the config; jobs: nightly");
    for (toml, says) in [
        (
            "[jobs.n]\nsteps = [\"backup\", \"defrag\"]\n",
            "ektool.toml:2:",
        ),
        (
            "[jobs.n]\nsteps = [\"replicate\"]\n",
            "needs `[jobs.<name>.replicate] to",
        ),
        (
            "[jobs.n]\nsteps = [\"check\"]\n[jobs.n.check]\nmax_age = \"soon\"\n",
            "ektool.toml:4:",
        ),
        (
            "[jobs.n]\nsteps = [\"check\"]\ncolour = \"red\"\n",
            "unknown field `colour`",
        ),
    ] {
        std::fs::write(dir.path().join("ektool.toml"), toml).unwrap();
        let out = ektool(dir.path()).args(&["run", "n"]).run().code(2);
        assert!(out.stderr.contains(says), "{toml}: {}", out.stderr);
    }
    std::fs::write(
        dir.path().join("ektool.toml"),
        "[jobs.n]\nsteps = [\"check\"]\nschedule = \"Mon *-*-* 02:00\"\n",
    )
    .unwrap();
    ektool(dir.path())
        .args(&["schedule", "cron", "n"])
        .run()
        .code(2)
        .stderr_has("has no cron form");
}

#[test]
fn schedule_systemd_writes_units_that_systemd_analyze_verifies() {
    let dir =
        project("[jobs.nightly]\nsteps = [\"backup\", \"check\"]\nschedule = \"*-*-* 03:30:00\"\n");
    let printed = ektool(dir.path())
        .args(&["schedule", "systemd", "nightly"])
        .run()
        .success()
        .stdout;
    for want in [
        "# ektool-nightly.service",
        "# ektool-nightly.timer",
        "OnCalendar=*-*-* 03:30:00",
        "Persistent=true",
        "RandomizedDelaySec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ] {
        assert!(printed.contains(want), "{want}: {printed}");
    }
    let config = dir.path().join("ektool.toml").canonicalize().unwrap();
    assert!(
        printed.contains(&format!(" --config {} run nightly", config.display())),
        "{printed}"
    );
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    ektool(dir.path())
        .args(&[
            "schedule",
            "systemd",
            "nightly",
            "--dir",
            units.to_str().unwrap(),
        ])
        .run()
        .success();
    let service = units.join("ektool-nightly.service");
    let timer = units.join("ektool-nightly.timer");
    let exec = std::fs::read_to_string(&service).unwrap();
    let exec = exec.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    let binary = exec["ExecStart=".len()..].split(' ').next().unwrap();
    assert!(
        Path::new(binary).is_absolute() && Path::new(binary).is_file(),
        "{exec}"
    );
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&service)
        .arg(&timer)
        .output()
        .expect("systemd-analyze (the systemd package) is installed");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("ektool-nightly"),
        "warnings on our units: {stderr}"
    );
}

#[test]
fn schedule_cron_prints_five_fields_and_the_run_command() {
    let dir = project("[jobs.nightly]\nsteps = [\"check\"]\n");
    let line = ektool(dir.path())
        .args(&["schedule", "cron", "nightly"])
        .run()
        .success()
        .stdout;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (field, (lo, hi)) in fields[..5].iter().zip(ranges) {
        assert!(
            *field == "*" || field.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n)),
            "{field}: {line}"
        );
    }
    // The default schedule: 02:00 every day.
    assert_eq!(fields[..5], ["0", "2", "*", "*", "*"], "{line}");
    assert!(Path::new(fields[5]).is_absolute(), "{line}");
    assert_eq!(
        fields[6..],
        [
            "--config",
            dir.path()
                .join("ektool.toml")
                .canonicalize()
                .unwrap()
                .to_str()
                .unwrap(),
            "run",
            "nightly"
        ]
    );
    // The command runs: `ektool run nightly` (here: no region, exit 2).
    let out = Command::new(fields[5])
        .args(&fields[6..])
        .env("XDG_RUNTIME_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("unrecognized") && !stderr.contains("no job"),
        "{stderr}"
    );
}

/// The fenced block of `lang` in docs/scheduling.md containing `needle`.
fn doc_block(lang: &str, needle: &str) -> String {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/scheduling.md"),
    )
    .unwrap();
    let open = format!("```{lang}\n");
    page.split(&open)
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap().to_owned())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("no {lang} block with {needle}"))
}

#[test]
fn the_cluster_examples_in_the_docs_parse_and_run_the_job() {
    // ECS: the EventBridge Scheduler schedule, and the command in its input.
    let ecs: serde_json::Value = serde_json::from_str(&doc_block("json", "EcsParameters")).unwrap();
    assert_eq!(ecs["Target"]["EcsParameters"]["LaunchType"], "FARGATE");
    assert!(
        ecs["ScheduleExpression"]
            .as_str()
            .unwrap()
            .starts_with("cron(")
    );
    let input: serde_json::Value =
        serde_json::from_str(ecs["Target"]["Input"].as_str().unwrap()).unwrap();
    let command = &input["containerOverrides"][0]["command"];
    assert_eq!(
        *command,
        serde_json::json!(["--config", "/etc/ektool/ektool.toml", "run", "nightly"])
    );

    // Kubernetes: parsed with PyYAML, printed back as JSON.
    let yaml = doc_block("yaml", "kind: CronJob");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 with PyYAML");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["kind"], "CronJob");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(
        job["spec"]["schedule"].as_str().unwrap().split(' ').count(),
        5
    );
    let container = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["--config", "/etc/ektool/ektool.toml", "run", "nightly"])
    );
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/ektool");
}

const NOTIFY: &str = "[notify]\nwebhook_url_env = \"EKTOOL_TEST_HOOK\"\n\
                      heartbeat_url_env = \"EKTOOL_TEST_HEARTBEAT\"\n";

#[tokio::test]
async fn a_failed_run_posts_its_failures_once_and_pings_the_heartbeat_fail() {
    let key = ektool_tests::unique("job-notify");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let root = inst.root_volume().unwrap().to_string();
    let server = Recorder::start();
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n{NOTIFY}\n\
         [jobs.night]\nsteps = [\"check\", \"trim\"]\n"
    ));
    let out = ektool(dir.path())
        .env("EKTOOL_TEST_HOOK", &server.url("/hook/secret"))
        .env("EKTOOL_TEST_HEARTBEAT", &server.url("/ping/uuid"))
        .args(&["run", "night"])
        .run()
        .code(1);
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[0], "POST /ping/uuid/start ");
    assert_eq!(requests[1], "POST /ping/uuid/fail ");
    let (method, body) = requests[2].split_once(' ').unwrap();
    assert_eq!(method, "POST");
    let (path, body) = body.split_once(' ').unwrap();
    assert_eq!(path, "/hook/secret");
    let text: serde_json::Value = serde_json::from_str(body).unwrap();
    let text = text["text"].as_str().unwrap();
    assert!(
        text.starts_with("ektool run night: FAILED (1 of 2 step(s) failed)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n- check: missing: {FROM} {root}")),
        "{text}"
    );
    assert!(!out.stderr.contains("secret"), "{}", out.stderr);
}

#[tokio::test]
async fn a_good_run_pings_the_heartbeat_and_posts_only_with_on_success() {
    let key = ektool_tests::unique("job-notify-ok");
    moto::launch(FROM, 1, Tags::new().with(&key, "prod")).await;
    let server = Recorder::start();
    let config = |on_success: bool| {
        format!(
            "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n{NOTIFY}\
             on_success = {on_success}\n\n[jobs.night]\nsteps = [\"trim\"]\n"
        )
    };
    let dir = project(&config(false));
    let run = || {
        ektool(dir.path())
            .env("EKTOOL_TEST_HOOK", &server.url("/hook"))
            .env("EKTOOL_TEST_HEARTBEAT", &server.url("/ping/uuid/"))
            .args(&["run", "night"])
            .run()
            .code(0)
    };
    run();
    assert_eq!(
        server.requests(),
        ["POST /ping/uuid/start ", "POST /ping/uuid "]
    );
    std::fs::write(dir.path().join("ektool.toml"), config(true)).unwrap();
    run();
    let requests = server.requests();
    assert_eq!(requests.len(), 5, "{requests:#?}");
    assert!(
        requests[4]
            .starts_with("POST /hook {\"text\":\"ektool run night: ok (1 step(s))\\ntrim: ok: "),
        "{requests:#?}"
    );
}

/// The URLs can come from files (a secret mounted by the scheduler),
/// relative to the config file, trimmed of their newline.
#[tokio::test]
async fn notify_urls_are_read_from_files_next_to_the_config() {
    let key = ektool_tests::unique("job-notify-file");
    moto::launch(FROM, 1, Tags::new().with(&key, "prod")).await;
    let server = Recorder::start();
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n\
         [notify]\nwebhook_url_file = \"secrets/hook.url\"\n\
         heartbeat_url_file = \"secrets/beat.url\"\non_success = true\n\n\
         [jobs.night]\nsteps = [\"trim\"]\n"
    ));
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/hook.url"),
        format!("{}\n", server.url("/hook/from-file")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("secrets/beat.url"),
        format!("{}\n", server.url("/ping/from-file")),
    )
    .unwrap();
    let out = ektool(dir.path()).args(&["run", "night"]).run().code(0);
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[0], "POST /ping/from-file/start ");
    assert_eq!(requests[1], "POST /ping/from-file ");
    assert!(
        requests[2].starts_with("POST /hook/from-file {\"text\":\"ektool run night: ok"),
        "{requests:#?}"
    );
    assert!(!out.stderr.contains("from-file"), "{}", out.stderr);
}

#[tokio::test]
async fn an_unreachable_webhook_only_warns() {
    let key = ektool_tests::unique("job-notify-down");
    moto::launch(FROM, 1, Tags::new().with(&key, "prod")).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n{NOTIFY}\
         on_success = true\n\n[jobs.night]\nsteps = [\"trim\"]\n"
    ));
    let url = format!("http://127.0.0.1:{port}/hook/secret");
    let out = ektool(dir.path())
        .env("EKTOOL_TEST_HOOK", &url)
        .env("EKTOOL_TEST_HEARTBEAT", &url)
        .args(&["run", "night"])
        .run()
        .code(0);
    // What docs/scheduling.md shows.
    print!("$ ektool run night >/dev/null\n{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: notify: webhook: webhook request failed: could not connect")
            && out.stderr.contains("warning: notify: heartbeat: "),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("secret"), "{}", out.stderr);
}

#[test]
fn notify_config_errors_point_at_their_place() {
    let dir = project("[notify]\nwebhook_url = \"https://hooks.example.com/x\"\n");
    ektool(dir.path())
        .args(&["run", "night"])
        .run()
        .code(2)
        .stderr_has("ektool.toml:2:1:");
}

#[tokio::test]
async fn snap_check_posts_a_missing_lineage_and_pings_the_heartbeat_fail() {
    let key = ektool_tests::unique("check-notify");
    let inst = moto::launch(FROM, 1, Tags::new().with(&key, "prod"))
        .await
        .remove(0);
    let root = inst.root_volume().unwrap().to_string();
    let server = Recorder::start();
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n{NOTIFY}"
    ));
    ektool(dir.path())
        .env("EKTOOL_TEST_HOOK", &server.url("/hook"))
        .env("EKTOOL_TEST_HEARTBEAT", &server.url("/ping/uuid"))
        .args(&["snap", "check"])
        .run()
        .code(1);
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[0], "POST /ping/uuid/start ");
    assert_eq!(requests[1], "POST /ping/uuid/fail ");
    let body = requests[2].strip_prefix("POST /hook ").unwrap();
    let text: serde_json::Value = serde_json::from_str(body).unwrap();
    let text = text["text"].as_str().unwrap();
    assert!(
        text.starts_with("ektool snap check: FAILED: 1 check failure(s) in 1 lineage(s)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n- missing: {FROM} {root}")),
        "{text}"
    );
}

/// The requests of one `snap` command run with `[notify]` (heartbeat and
/// webhook on `server`) in `dir`; asserts its exit code.
fn notified(dir: &Path, server: &Recorder, args: &[&str], code: i32) -> Vec<String> {
    ektool(dir)
        .env("EKTOOL_TEST_HOOK", &server.url("/hook"))
        .env("EKTOOL_TEST_HEARTBEAT", &server.url("/ping/uuid"))
        .args(args)
        .run()
        .code(code);
    server.requests()
}

/// The `text` of a webhook post recorded as `POST /hook BODY`.
fn posted(request: &str) -> String {
    let body = request
        .strip_prefix("POST /hook ")
        .unwrap_or_else(|| panic!("not a webhook post: {request}"));
    let text: serde_json::Value = serde_json::from_str(body).unwrap();
    text["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_failing_snap_backup_posts_once_and_pings_the_heartbeat_fail() {
    // A volume moto does not have: CreateSnapshot fails
    // (InvalidVolume.NotFound), a real failure of the backup.
    let missing = "vol-0123456789abcdef0";
    let server = Recorder::start();
    let dir = project(&format!("[defaults]\nregions = [\"{FROM}\"]\n\n{NOTIFY}"));
    let requests = notified(
        dir.path(),
        &server,
        &["snap", "backup", "--volume", missing],
        1,
    );
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[0], "POST /ping/uuid/start ");
    assert_eq!(requests[1], "POST /ping/uuid/fail ");
    // The whole text, as docs/scheduling.md shows it.
    assert_eq!(
        posted(&requests[2]),
        format!(
            "ektool snap backup: FAILED: 1 of 1 backups failed\n\
             - {FROM} {missing}: volume {missing} not found in {FROM}"
        )
    );
}

#[tokio::test]
async fn a_good_snap_trim_pings_the_heartbeat_and_posts_only_with_on_success() {
    let key = ektool_tests::unique("trim-notify");
    moto::launch(FROM, 1, Tags::new().with(&key, "prod")).await;
    let server = Recorder::start();
    let config = |on_success: bool| {
        format!(
            "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n{NOTIFY}\
             on_success = {on_success}\n"
        )
    };
    let dir = project(&config(false));
    let trim = ["snap", "trim", "--yes"];
    let requests = notified(dir.path(), &server, &trim, 0);
    assert_eq!(requests, ["POST /ping/uuid/start ", "POST /ping/uuid "]);
    std::fs::write(dir.path().join("ektool.toml"), config(true)).unwrap();
    let requests = notified(dir.path(), &server, &trim, 0);
    assert_eq!(requests.len(), 5, "{requests:#?}");
    assert_eq!(
        requests[2..4],
        ["POST /ping/uuid/start ", "POST /ping/uuid "]
    );
    assert_eq!(posted(&requests[4]), "ektool snap trim: ok");
}

#[tokio::test]
async fn snap_replicate_pings_the_heartbeat_and_posts_with_on_success() {
    let key = ektool_tests::unique("replicate-notify");
    moto::launch(FROM, 1, Tags::new().with(&key, "prod")).await;
    let dir = project(&format!(
        "[defaults]\ntag = \"{key}=prod\"\nregions = [\"{FROM}\"]\n\n{NOTIFY}on_success = true\n"
    ));
    // Something to copy (its own notifications on a recorder of its own).
    let backup = Recorder::start();
    notified(dir.path(), &backup, &["snap", "backup"], 0);
    let server = Recorder::start();
    let requests = notified(
        dir.path(),
        &server,
        &[
            "snap",
            "replicate",
            "--from",
            FROM,
            "--to",
            TO,
            "--tag",
            &format!("{key}=prod"),
        ],
        0,
    );
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(
        requests[..2],
        ["POST /ping/uuid/start ", "POST /ping/uuid "]
    );
    assert_eq!(posted(&requests[2]), "ektool snap replicate: ok");
}
