//! `LocalRemote` on this machine.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ec2kit::{Command, ExitStatus, GuardedJob, JobState, LocalRemote, Remote, RemoteError};
use ektool_tests::tempdir;

#[tokio::test]
async fn runs_and_reports_status() {
    let r = LocalRemote::new();
    let out = r
        .run(&Command::argv(["sh", "-c", "echo o; echo e >&2; exit 7"]))
        .await
        .unwrap();
    assert_eq!(
        (out.status.clone(), out.stdout_str(), out.stderr_str()),
        (ExitStatus::Code(7), "o\n".into(), "e\n".into())
    );
    let out = r.run(&Command::shell("kill -9 $$")).await.unwrap();
    assert_eq!(out.status, ExitStatus::Signal("9".into()));
    let out = r
        .run(
            &Command::shell("cat; echo \"$X\"")
                .stdin("in|")
                .env("X", "y"),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "in|y\n");
}

#[tokio::test]
async fn timeout_kills_the_process_tree() {
    let r = LocalRemote::new();
    // A unique duration tags the sleeper so pgrep finds only this one.
    let tag = format!("sleep 60.{}", std::process::id());
    let err = r
        .run(&Command::shell(format!("sh -c '{tag}' & wait")).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = r
        .run(&Command::shell(format!("pgrep -f '^{tag}' || true")))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "");
}

#[tokio::test]
async fn upload_replaces_atomically_with_mode() {
    let r = LocalRemote::new();
    let dir = tempdir();
    let path = dir.path().join("secret.env");
    let p = path.to_str().unwrap();
    r.upload(p, b"a", 0o644).await.unwrap();
    r.upload(p, b"b", 0o600).await.unwrap();
    assert_eq!(r.read_file(p).await.unwrap(), b"b");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[tokio::test]
async fn guarded_job_limit_is_enforced_locally() {
    let r = LocalRemote::new();
    let job = GuardedJob::start(&r, &Command::argv(["sleep", "600"]), Duration::from_secs(1))
        .await
        .unwrap();
    let state = job
        .wait(&r, Duration::from_millis(100), Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(state, Some(JobState::Finished(ExitStatus::Code(124))));
    job.cleanup(&r).await.unwrap();
}
