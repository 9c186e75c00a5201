//! `LocalRemote` on this machine.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ec2kit::{
    Command, ExitStatus, GuardedJob, JobState, LocalRemote, Remote, RemoteError, Streams,
};
use ektool_tests::tempdir;

use crate::{in_child, rerun_in_child};

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

#[tokio::test]
async fn commands_get_a_scrubbed_environment() {
    const NAME: &str = "local::commands_get_a_scrubbed_environment";
    if !in_child(NAME) {
        rerun_in_child(
            NAME,
            &[
                ("AWS_SECRET_ACCESS_KEY", "leak-aws"),
                ("AWS_SESSION_TOKEN", "leak-token"),
                ("EKTOOL_WEBHOOK_URL", "https://hooks.example/leak-hook"),
                ("LC_TIME", "C.UTF-8"),
                ("TZ", "UTC"),
            ],
            &[],
            false,
        );
        return;
    }
    let env_of = |out: ec2kit::Output| out.stdout_str();
    let env = env_of(
        LocalRemote::new()
            .run(&Command::argv(["env"]).env("RELEASE", "20260101000000"))
            .await
            .unwrap(),
    );
    assert!(!env.contains("leak-"), "secrets passed on:\n{env}");
    for wanted in ["RELEASE=20260101000000", "LC_TIME=C.UTF-8", "TZ=UTC"] {
        assert!(env.lines().any(|l| l == wanted), "{wanted} missing:\n{env}");
    }
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(env.lines().any(|l| l.starts_with("HOME=")), "{env}");
    // Streaming commands too.
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    LocalRemote::new()
        .run_streaming(&Command::argv(["env"]), Streams::new(Shared(buf.clone())))
        .await
        .unwrap();
    let env = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert!(!env.contains("leak-"), "secrets passed on:\n{env}");
    // A caller can pass one on knowingly.
    let env = env_of(
        LocalRemote::new()
            .pass_env("AWS_SESSION_TOKEN")
            .run(&Command::argv(["env"]))
            .await
            .unwrap(),
    );
    assert!(env.contains("AWS_SESSION_TOKEN=leak-token"), "{env}");
    assert!(!env.contains("leak-aws"), "{env}");
}

/// A reader that yields `len` bytes and then fails.
struct BreaksAfter(usize);

impl std::io::Read for BreaksAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("input cut"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(b'y');
        self.0 -= n;
        Ok(n)
    }
}

#[tokio::test]
async fn streams_both_ways_and_a_broken_input_never_ends_cleanly() {
    let r = LocalRemote::new();
    let dir = tempdir();
    let file = dir.path().join("out");
    let f = file.to_str().unwrap();
    // Complete input: the command sees its end and finishes.
    let streamed = r
        .run_streaming(
            &Command::shell(format!("cat > '{f}'; echo done; echo warn >&2")),
            Streams::new(std::io::sink())
                .stdin(std::io::Read::take(std::io::repeat(b'x'), 5_000_000)),
        )
        .await
        .unwrap();
    assert_eq!(streamed.status, ExitStatus::Code(0));
    assert_eq!(streamed.stdin_bytes, 5_000_000);
    assert_eq!(streamed.stdout_bytes, 5);
    assert_eq!(streamed.stderr_str(), "warn\n");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 5_000_000);

    // Broken input: the command is killed before its input ends, so it
    // never takes the cut input for a whole one.
    let marker = dir.path().join("finished");
    let err = r
        .run_streaming(
            &Command::shell(format!("cat > '{f}'; touch '{}'", marker.display())),
            Streams::new(std::io::sink()).stdin(BreaksAfter(1_000_000)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Io { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists(), "the command saw a clean end of input");
}

#[tokio::test]
async fn a_cancelled_stream_stops_the_command() {
    let r = LocalRemote::new();
    let token = ec2kit::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let tag = format!("sleep 62.{}", std::process::id());
    let err = r
        .run_streaming(
            &Command::shell(format!("sh -c '{tag}' & wait")),
            Streams::new(std::io::sink()).cancel(token),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Interrupted { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = r
        .run(&Command::shell(format!("pgrep -f '^{tag}' || true")))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "", "the command was stopped");
}

#[tokio::test]
async fn upload_syncs_the_file_before_the_rename_and_the_directory_after() {
    const NAME: &str = "local::upload_syncs_the_file_before_the_rename_and_the_directory_after";
    if let Ok(path) = std::env::var("EKTOOL_TEST_UPLOAD") {
        assert!(in_child(NAME));
        LocalRemote::new()
            .upload(&path, b"secret\n", 0o600)
            .await
            .unwrap();
        return;
    }
    let dir = tempdir();
    let log = dir.path().join("strace.log");
    let target = dir.path().join("app.env");
    rerun_in_child(
        NAME,
        &[("EKTOOL_TEST_UPLOAD", target.to_str().unwrap())],
        &[
            "strace",
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
            log.to_str().unwrap(),
        ],
        false,
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"secret\n");
    let events: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let rename = events
        .iter()
        .position(|l| l.contains("rename") && l.contains("/app.env\""))
        .unwrap_or_else(|| panic!("no rename into place: {events:#?}"));
    assert!(
        events[..rename].iter().any(|l| l.contains("fsync(")),
        "the content is synced before the rename: {events:#?}"
    );
    assert!(
        events[rename..].iter().any(|l| l.contains("fsync(")),
        "the directory is synced after the rename: {events:#?}"
    );
}
