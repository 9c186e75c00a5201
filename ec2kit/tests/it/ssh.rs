//! `SshRemote` against OpenSSH sshd on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{
    Command, ExitStatus, GuardedJob, JobState, Remote, RemoteError, SshOptions, SshRemote,
    SshTarget,
};
use ektool_tests::{SshHost, ssh_host, tempdir, unique};

fn options(host: &SshHost, known_hosts: &Path) -> SshOptions {
    SshOptions {
        identity_files: vec![host.client_key.clone()],
        use_agent: false,
        known_hosts: known_hosts.to_owned(),
        connect_timeout: Duration::from_secs(10),
    }
}

fn target(host: &SshHost) -> SshTarget {
    SshTarget::parse_with_user(&host.target(), "unused").unwrap()
}

/// A remote for host `n` that trusts its key.
fn trusted(n: usize) -> (SshRemote, SshHost, tempfile::TempDir) {
    let host = ssh_host(n);
    let dir = tempdir();
    let kh = host.write_known_hosts(dir.path());
    (
        SshRemote::new(target(&host), options(&host, &kh)),
        host,
        dir,
    )
}

#[tokio::test]
async fn runs_commands_with_separate_streams_env_cwd_and_stdin() {
    let (remote, _host, _d) = trusted(1);
    let out = remote
        .run(&Command::argv([
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");

    let out = remote
        .run(
            &Command::shell("printf '%s|%s|' \"$GREETING\" \"$(pwd)\"; cat")
                .env("GREETING", "hello world")
                .cwd("/tmp")
                .stdin("from stdin"),
        )
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout_str(), "hello world|/tmp|from stdin");

    // Arguments are passed verbatim, never interpreted by the remote shell.
    let out = remote
        .run(&Command::argv(["echo", "$HOME", "a'b", "; rm -rf /"]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "$HOME a'b ; rm -rf /\n");
}

#[tokio::test]
async fn large_outputs_on_both_streams_do_not_deadlock() {
    let (remote, _h, _d) = trusted(1);
    let script =
        "head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2";
    let out = remote
        .run(&Command::shell(script).timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(out.stderr.len(), 3_000_000);
}

#[tokio::test]
async fn connection_is_reused_between_calls() {
    let (remote, _h, _d) = trusted(2);
    let mut seen = Vec::new();
    for _ in 0..5 {
        // SSH_CONNECTION holds the client's source port: one connection, one port.
        let out = remote
            .run(&Command::shell("echo $SSH_CONNECTION"))
            .await
            .unwrap();
        seen.push(out.stdout_str());
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test]
async fn unknown_host_key_is_refused_before_anything_runs() {
    let host = ssh_host(1);
    let dir = tempdir();
    let marker = format!("/tmp/{}", unique("must-not-exist"));
    let remote = SshRemote::new(
        target(&host),
        options(&host, &dir.path().join("known_hosts")),
    );
    let err = remote
        .run(&Command::argv(["touch", &marker]))
        .await
        .unwrap_err();
    match &err {
        RemoteError::UnknownHostKey {
            fingerprint,
            key_type,
            ..
        } => {
            assert_eq!(fingerprint, &host.fingerprint());
            assert_eq!(key_type, "ssh-ed25519");
        }
        other => panic!("expected UnknownHostKey, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&host.fingerprint()),
        "the message shows the fingerprint: {err}"
    );
    assert!(!Path::new(&marker).exists(), "nothing ran");
}

#[tokio::test]
async fn changed_host_key_is_refused() {
    let host = ssh_host(1);
    let dir = tempdir();
    // Record a different ed25519 key for the same [host]:port.
    let other = dir.path().join("other");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let pubkey = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let blob = pubkey.split_whitespace().nth(1).unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} ssh-ed25519 {blob}\n", host.port),
    )
    .unwrap();

    let remote = SshRemote::new(target(&host), options(&host, &kh));
    let err = remote.run(&Command::argv(["true"])).await.unwrap_err();
    assert!(
        matches!(err, RemoteError::HostKeyMismatch { .. }),
        "{err:?}"
    );

    // The trust step refuses too, even with the right fingerprint: the old
    // entry has to be removed knowingly.
    let err = ssh::trust_host_key(
        &target(&host),
        &host.fingerprint(),
        &kh,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RemoteError::HostKeyMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap().lines().count(),
        1,
        "known_hosts unchanged"
    );
}

#[tokio::test]
async fn trust_records_only_the_expected_fingerprint() {
    let host = ssh_host(2);
    let dir = tempdir();
    let kh = dir.path().join("ssh").join("known_hosts");

    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let err = ssh::trust_host_key(&target(&host), wrong, &kh, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::FingerprintMismatch { .. }),
        "{err:?}"
    );
    assert!(!kh.exists(), "nothing recorded");

    let (key, before) = ssh::trust_host_key(
        &target(&host),
        &host.fingerprint(),
        &kh,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(before, HostKeyStatus::Unknown);
    assert_eq!(key.fingerprint, host.fingerprint());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kh).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Now strict checking passes, and trusting again changes nothing.
    let remote = SshRemote::new(target(&host), options(&host, &kh));
    assert!(
        remote
            .run(&Command::argv(["true"]))
            .await
            .unwrap()
            .status
            .success()
    );
    let (_, again) = ssh::trust_host_key(
        &target(&host),
        &host.fingerprint(),
        &kh,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(again, HostKeyStatus::Trusted);
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn wrong_client_key_fails_authentication() {
    let host = ssh_host(1);
    let dir = tempdir();
    let kh = host.write_known_hosts(dir.path());
    let stranger = dir.path().join("stranger");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    let mut opts = options(&host, &kh);
    opts.identity_files = vec![stranger];
    let err = SshRemote::new(target(&host), opts)
        .run(&Command::argv(["true"]))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn upload_is_atomic_with_mode_and_read_back() {
    let (remote, host, _d) = trusted(1);
    let dir = format!("/tmp/{}", unique("upload"));
    remote
        .run(&Command::argv(["mkdir", "-p", &dir]))
        .await
        .unwrap();
    let path = format!("{dir}/app.env");
    remote.upload(&path, b"first\n", 0o640).await.unwrap();
    remote.upload(&path, b"second\n", 0o600).await.unwrap();
    assert_eq!(remote.read_file(&path).await.unwrap(), b"second\n");
    let out = remote
        .run(&Command::argv(["stat", "-c", "%a", &path]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "600");
    let out = remote
        .run(&Command::argv(["ls", "-A", &dir]))
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "app.env\n",
        "no temporary files left behind"
    );
    // On a namespaced host, the host's view of its mount is its own directory.
    if host.namespaced {
        let name = unique("probe");
        remote
            .upload(&format!("{}/{name}", SshHost::MOUNT), b"x", 0o644)
            .await
            .unwrap();
        assert!(host.local_path(&name).exists());
    }
    let err = remote
        .read_file(&format!("{dir}/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Failed { .. }), "{err:?}");
}

#[tokio::test]
async fn timeout_kills_the_remote_command() {
    let (remote, _h, _d) = trusted(2);
    let tag = format!("sleep 61.{}", std::process::id());
    let started = std::time::Instant::now();
    let err = remote
        .run(&Command::shell(tag.clone()).timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = remote
        .run(&Command::shell(format!("pgrep -f '^{tag}' || true")))
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str().trim(),
        "",
        "the command is gone on the host"
    );
}

#[tokio::test]
async fn a_dropped_connection_is_never_success() {
    let (remote, _h, _d) = trusted(1);
    // Kill this session's sshd process: the channel dies mid-command.
    let result = remote
        .run(&Command::shell("kill -9 $PPID; sleep 5; exit 0"))
        .await;
    match result {
        Err(_) => {}
        Ok(out) => assert_ne!(out.status, ExitStatus::Code(0), "{out:?}"),
    }
    // The next call reconnects.
    assert!(
        remote
            .run(&Command::argv(["true"]))
            .await
            .unwrap()
            .status
            .success()
    );
}

#[tokio::test]
async fn guarded_job_ends_at_its_limit_even_after_the_connection_dies() {
    let (remote, _h, _d) = trusted(2);
    let marker = format!("/tmp/{}", unique("job"));
    let job = GuardedJob::start(
        &remote,
        &Command::shell(format!(
            "touch {marker}.started; sleep 600; touch {marker}.never"
        )),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(job.state(&remote).await.unwrap(), JobState::Running);
    // Drop every connection to the host; the job must not care.
    drop(remote);
    let (remote, _h2, _d2) = trusted(2);
    let state = job
        .wait(&remote, Duration::from_millis(200), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        state,
        Some(JobState::Finished(ExitStatus::Code(124))),
        "the limit ended it"
    );
    assert!(Path::new(&format!("{marker}.started")).exists());
    assert!(!Path::new(&format!("{marker}.never")).exists());
    job.cleanup(&remote).await.unwrap();
}

#[tokio::test]
async fn guarded_job_can_be_stopped_early_and_reports_output() {
    let (remote, _h, _d) = trusted(1);
    let job = GuardedJob::start(
        &remote,
        &Command::shell("echo started; sleep 600"),
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    let state = job.stop(&remote).await.unwrap();
    assert!(
        matches!(state, JobState::Finished(ref s) if !s.success()),
        "{state:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&job.stdout(&remote).await.unwrap()),
        "started\n"
    );

    let quick = GuardedJob::start(&remote, &Command::argv(["true"]), Duration::from_secs(30))
        .await
        .unwrap();
    let state = quick
        .wait(&remote, Duration::from_millis(50), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(state, Some(JobState::Finished(ExitStatus::Code(0))));
    job.cleanup(&remote).await.unwrap();
    quick.cleanup(&remote).await.unwrap();
}
