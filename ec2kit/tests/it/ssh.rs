//! `SshRemote` against OpenSSH sshd on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use ec2kit::ssh::{self, HostKeyStatus};
use ec2kit::{
    Command, ExitStatus, GuardedJob, JobState, Keepalive, Remote, RemoteError, SshOptions,
    SshRemote, SshTarget, Streams,
};
use ektool_tests::{PrivateSshd, SshHost, ssh_host, tempdir, unique};

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

/// What prints the process that started it: the connection's command
/// shell when there is one (each `exec` has a new one).
fn runner_probe() -> Command {
    Command::argv(["sh", "-c", "echo $PPID"])
}

#[tokio::test]
async fn commands_share_one_shell_per_connection_and_keep_their_framing() {
    let (remote, _h, _d) = trusted(2);
    let runner = |r: &SshRemote| {
        let r = r.clone();
        async move {
            let out = r.run(&runner_probe()).await.unwrap();
            assert!(out.status.success(), "{out:?}");
            out.stdout_str()
        }
    };
    let first = runner(&remote).await;
    // Output without a final newline, on both streams; input the command
    // never reads; input that looks like a request; a failing status.
    let out = remote
        .run(&Command::shell("printf partial; printf oops >&2; exit 7").stdin("ignored\n"))
        .await
        .unwrap();
    assert_eq!(
        (out.status.clone(), out.stdout_str(), out.stderr_str()),
        (ExitStatus::Code(7), "partial".into(), "oops".into())
    );
    let tricky = b"ektool-end-0 1 2\nx\0y\n\n".to_vec();
    let out = remote
        .run(&Command::argv(["cat"]).stdin(tricky.clone()))
        .await
        .unwrap();
    assert_eq!(out.stdout, tricky);
    assert_eq!(runner(&remote).await, first, "one shell ran every command");

    // Commands see what they would over `exec`: the umask, the
    // environment (names a shell cannot export too), the working directory.
    let probe = Command::shell("umask; echo \"$A|$(pwd)\"")
        .env("A", "x y")
        .cwd("/tmp");
    let via_shell = remote.run(&probe).await.unwrap();
    let streamed = remote
        .run_streaming(&probe, Streams::new(Vec::new()))
        .await
        .unwrap();
    assert_eq!(via_shell.stdout_str().lines().next(), Some("0022"));
    assert_eq!(via_shell.stdout_str().lines().nth(1), Some("x y|/tmp"));
    assert_eq!(via_shell.status, streamed.status);
    let odd = remote
        .run(&Command::argv(["env"]).env("B-C", "1"))
        .await
        .unwrap();
    assert!(odd.stdout_str().lines().any(|l| l == "B-C=1"), "{odd:?}");

    // A command's input is a private file only while the command runs.
    let out = remote
        .run(
            &Command::shell("f=$(readlink /proc/self/fd/0); echo \"$f\"; stat -c %a \"${f%/*}\"")
                .stdin("secret"),
        )
        .await
        .unwrap();
    let text = out.stdout_str();
    let mut lines = text.lines();
    let (path, mode) = (lines.next().unwrap().to_owned(), lines.next().unwrap());
    assert_eq!(mode, "700", "{text}");
    let (other, _h2, _d2) = trusted(2);
    let left = other
        .run(&Command::argv(["wc", "-c", &path]))
        .await
        .unwrap();
    assert!(left.stdout_str().starts_with("0 "), "{left:?}");
}

#[tokio::test]
async fn a_killed_command_shell_fails_its_command_and_the_next_gets_a_new_one() {
    let (remote, _h, _d) = trusted(2);
    let before = remote.run(&runner_probe()).await.unwrap().stdout_str();
    let out = remote
        // Only ever the command shell (never, say, a namespace's sshd).
        .run(&Command::argv([
            "sh",
            "-c",
            "grep -q ektool-shell /proc/$PPID/cmdline && kill -9 $PPID; sleep 1; echo done",
        ]))
        .await;
    match out {
        Err(_) => {}
        Ok(out) => assert!(!out.status.success(), "{out:?}"),
    }
    let after = remote.run(&runner_probe()).await.unwrap();
    assert!(after.status.success(), "{after:?}");
    assert_ne!(after.stdout_str(), before, "a new shell");
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

// ---- dead peers --------------------------------------------------------------

/// A generous guard so a hang fails the test instead of blocking the suite.
/// (How fast a dead peer is found out is the keepalive's business, not a
/// test assertion.)
const HANG: Duration = Duration::from_secs(90);

fn quick_keepalive() -> Keepalive {
    Keepalive {
        interval: Duration::from_secs(2),
        max_missed: 2,
    }
}

async fn private_remote(sshd: &PrivateSshd, dir: &Path) -> SshRemote {
    let kh = sshd.host.write_known_hosts(dir);
    let remote = SshRemote::new(target(&sshd.host), options(&sshd.host, &kh));
    remote.connect().await.unwrap();
    remote
}

/// Waits until a process matching `pattern` runs (on the private sshd).
async fn running(remote: &SshRemote, pattern: &str) {
    for _ in 0..200 {
        let out = std::process::Command::new("pgrep")
            .args(["-f", pattern])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{pattern} never started on {}", remote.host());
}

#[tokio::test]
async fn a_stopped_host_fails_a_command_without_timeout_instead_of_hanging() {
    let sshd = PrivateSshd::start();
    let dir = tempdir();
    let remote = private_remote(&sshd, dir.path())
        .await
        .keepalive(quick_keepalive());
    let tag = format!("sleep 600.{}", std::process::id());
    let run = {
        let (remote, tag) = (remote.clone(), tag.clone());
        tokio::spawn(async move { remote.run(&Command::shell(tag)).await })
    };
    running(&remote, &format!("^{tag}")).await;
    sshd.freeze();
    let result = tokio::time::timeout(HANG, run)
        .await
        .expect("ektool hung on a stopped host")
        .unwrap();
    match result {
        Err(RemoteError::Unresponsive { host, silent_for }) => {
            assert_eq!(host, remote.host());
            assert!(silent_for >= quick_keepalive().limit());
        }
        other => panic!("expected Unresponsive, got {other:?}"),
    }
    // The host comes back: the next call reconnects.
    sshd.thaw();
    let out = remote.run(&Command::argv(["true"])).await.unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn a_stopped_host_cannot_hold_a_command_past_its_deadline() {
    let sshd = PrivateSshd::start();
    let dir = tempdir();
    // Keepalives slower than the deadline: the deadline is what ends it.
    let remote = private_remote(&sshd, dir.path())
        .await
        .keepalive(Keepalive {
            interval: Duration::from_secs(60),
            max_missed: 10,
        });
    let tag = format!("sleep 601.{}", std::process::id());
    let run = {
        let (remote, tag) = (remote.clone(), tag.clone());
        tokio::spawn(async move {
            remote
                .run(&Command::shell(tag).timeout(Duration::from_secs(1)))
                .await
        })
    };
    running(&remote, &tag).await;
    sshd.freeze();
    let result = tokio::time::timeout(HANG, run)
        .await
        .expect("ektool hung past the command's deadline")
        .unwrap();
    assert!(
        matches!(result, Err(RemoteError::Timeout { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_stopped_host_streaming_input_fails_instead_of_hanging() {
    let sshd = PrivateSshd::start();
    let dir = tempdir();
    let remote = private_remote(&sshd, dir.path())
        .await
        .keepalive(quick_keepalive());
    let tag = format!("sleep 602.{}", std::process::id());
    // Input that never ends; the host stops reading it.
    let endless = std::io::repeat(b'x');
    let run = {
        let (remote, tag) = (remote.clone(), tag.clone());
        tokio::spawn(async move {
            remote
                .run_streaming(
                    &Command::shell(format!("{tag}; cat > /dev/null")),
                    Streams::new(std::io::sink()).stdin(endless),
                )
                .await
        })
    };
    running(&remote, &tag).await;
    sshd.freeze();
    let result = tokio::time::timeout(HANG, run)
        .await
        .expect("ektool hung on a stopped host")
        .unwrap();
    assert!(
        matches!(result, Err(RemoteError::Unresponsive { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn connecting_to_a_stopped_host_is_bounded() {
    let sshd = PrivateSshd::start();
    sshd.freeze();
    let dir = tempdir();
    let kh = sshd.host.write_known_hosts(dir.path());
    let mut opts = options(&sshd.host, &kh);
    opts.connect_timeout = Duration::from_secs(2);
    let remote = SshRemote::new(target(&sshd.host), opts);
    let result = tokio::time::timeout(HANG, remote.run(&Command::argv(["true"])))
        .await
        .expect("the handshake hung");
    assert!(matches!(result, Err(RemoteError::Ssh { .. })), "{result:?}");
    let result = tokio::time::timeout(
        HANG,
        ssh::fetch_host_key(&target(&sshd.host), &kh, Duration::from_secs(2)),
    )
    .await
    .expect("fetching the host key hung");
    assert!(result.is_err(), "{result:?}");
}

// ---- streaming -----------------------------------------------------------------

/// A reader that yields `len` bytes and then fails.
struct BreaksAfter(usize);

impl std::io::Read for BreaksAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "input cut",
            ));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(b'y');
        self.0 -= n;
        Ok(n)
    }
}

/// A writer that counts and keeps a checksum-ish fingerprint, not the bytes.
#[derive(Clone, Default)]
struct Counter(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn streams_input_and_output_both_ways_at_once() {
    let (remote, _h, _d) = trusted(1);
    // `cat` echoes while it reads: 24 MB in, 24 MB out, both far larger
    // than the SSH window and the pipes, so neither side may wait for the
    // other to finish.
    let len = 24 * 1024 * 1024;
    let counter = Counter::default();
    let streamed = remote
        .run_streaming(
            &Command::argv(["cat"]),
            Streams::new(counter.clone()).stdin(std::io::Read::take(std::io::repeat(b'z'), len)),
        )
        .await
        .unwrap();
    assert_eq!(streamed.status, ExitStatus::Code(0));
    assert_eq!(streamed.stdin_bytes, len);
    assert_eq!(streamed.stdout_bytes, len);
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::Relaxed), len);
}

#[tokio::test]
async fn a_command_that_reads_its_input_late_is_not_cut_by_a_blocking_timeout() {
    // libssh2's blocking calls give up after the session timeout (here 2 s):
    // the input must be written from the polling loop, so a command that
    // waits (psql behind a lock) before reading it is waited for.
    let host = ssh_host(3);
    let dir = tempdir();
    let kh = host.write_known_hosts(dir.path());
    let mut opts = options(&host, &kh);
    opts.connect_timeout = Duration::from_secs(2);
    let remote = SshRemote::new(target(&host), opts);
    let input = vec![b'q'; 8 * 1024 * 1024];
    let out = remote
        .run(&Command::shell("sleep 5; wc -c").stdin(input))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout_str().trim(), "8388608");
}

#[tokio::test]
async fn a_broken_input_fails_the_streamed_command() {
    let (remote, _h, _d) = trusted(2);
    let out = format!("/tmp/{}", unique("stream"));
    let err = remote
        .run_streaming(
            &Command::shell(format!("cat > {out}")),
            Streams::new(std::io::sink()).stdin(BreaksAfter(3 * 1024 * 1024)),
        )
        .await
        .unwrap_err();
    match &err {
        RemoteError::Io { context, .. } => assert!(context.contains("input"), "{err}"),
        other => panic!("expected an input error, got {other:?}"),
    }
    // The connection was dropped; the next command reconnects.
    assert!(
        remote
            .run(&Command::argv(["true"]))
            .await
            .unwrap()
            .status
            .success()
    );
    let _ = std::fs::remove_file(&out);
}

// ---- known_hosts ---------------------------------------------------------------

fn other_key_blob(dir: &Path) -> String {
    let other = dir.join(unique("other"));
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let pubkey = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    pubkey.split_whitespace().nth(1).unwrap().to_owned()
}

fn host_blob(host: &SshHost) -> String {
    host.known_hosts_line()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_revoked_host_key_is_refused_even_when_also_trusted() {
    let host = ssh_host(1);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    let marker = format!("/tmp/{}", unique("revoked"));
    std::fs::write(
        &kh,
        format!(
            "{}\n@revoked * ssh-ed25519 {}\n",
            host.known_hosts_line(),
            host_blob(&host)
        ),
    )
    .unwrap();
    let err = SshRemote::new(target(&host), options(&host, &kh))
        .run(&Command::argv(["touch", &marker]))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::HostKeyRevoked { .. }), "{err:?}");
    assert!(err.to_string().contains("@revoked"), "{err}");
    assert!(!Path::new(&marker).exists(), "nothing ran");
    // The trust step refuses it too.
    let err = ssh::trust_host_key(
        &target(&host),
        &host.fingerprint(),
        &kh,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RemoteError::HostKeyRevoked { .. }), "{err:?}");
}

#[tokio::test]
async fn markers_for_other_keys_and_long_lines_do_not_break_connections() {
    let host = ssh_host(2);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    let many_names: Vec<String> = (0..400).map(|i| format!("web{i}.example.com")).collect();
    let long_entry = format!(
        "{} ssh-ed25519 {}",
        many_names.join(","),
        other_key_blob(dir.path())
    );
    assert!(long_entry.len() > 4092, "longer than libssh2's line buffer");
    let huge = format!("# {}", "x".repeat(5000));
    let oversized = format!(
        "big.example.com ssh-ed25519 {}",
        "A".repeat(2 * 1024 * 1024)
    );
    std::fs::write(
        &kh,
        format!(
            "{long_entry}\n{huge}\n@revoked * ssh-ed25519 {revoked}\n\
             @cert-authority *.example.com ssh-ed25519 {ca}\n\
             lonelyhostname\n{oversized}\n{mine}\n",
            revoked = other_key_blob(dir.path()),
            ca = other_key_blob(dir.path()),
            mine = host.known_hosts_line(),
        ),
    )
    .unwrap();
    let remote = SshRemote::new(target(&host), options(&host, &kh));
    let out = remote.run(&Command::argv(["true"])).await.unwrap();
    assert!(out.status.success());
    // The bad line is reported, by number, not silently dropped.
    let problems = ssh::known_hosts_problems(&kh).unwrap();
    assert_eq!(
        problems.iter().map(|p| p.line).collect::<Vec<_>>(),
        vec![5, 6],
        "{problems:?}"
    );
    assert!(problems[1].reason.contains("bytes long"), "{problems:?}");
    // The long entry (line 1) and the long comment (line 2) are read
    // whole: neither is reported.
}

#[tokio::test]
async fn a_host_covered_only_by_a_certificate_authority_is_refused_clearly() {
    let host = ssh_host(1);
    let dir = tempdir();
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "@cert-authority [127.0.0.1]:* ssh-ed25519 {}\n",
            other_key_blob(dir.path())
        ),
    )
    .unwrap();
    let err = SshRemote::new(target(&host), options(&host, &kh))
        .run(&Command::argv(["true"]))
        .await
        .unwrap_err();
    match &err {
        RemoteError::HostCertificateUnsupported { lines, .. } => assert_eq!(lines, &vec![1]),
        other => panic!("expected HostCertificateUnsupported, got {other:?}"),
    }
    assert!(err.to_string().contains("@cert-authority"), "{err}");
}

#[tokio::test]
async fn a_host_name_with_a_nul_byte_is_an_error_not_a_panic() {
    assert!(SshTarget::parse_with_user("127.0.0.1\0evil", "u").is_err());
    let host = ssh_host(1);
    let dir = tempdir();
    let kh = host.write_known_hosts(dir.path());
    let mut t = target(&host);
    t.host.push('\0');
    let err = SshRemote::new(t.clone(), options(&host, &kh))
        .run(&Command::argv(["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::Ssh { .. } | RemoteError::Connect { .. }),
        "{err:?}"
    );
    assert!(
        ssh::fetch_host_key(&t, &kh, Duration::from_secs(2))
            .await
            .is_err()
    );
}

// ---- durability ------------------------------------------------------------------

/// Lines of an strace log that touch `needle` or sync a file descriptor.
fn trace_events(log: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle) || l.contains("fsync(") || l.contains("fdatasync("))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn upload_flushes_the_file_before_the_rename_and_the_directory_after() {
    let dir = tempdir();
    let log = dir.path().join("strace.log");
    let sshd = PrivateSshd::start_traced(&log);
    let remote = private_remote(&sshd, dir.path()).await;
    let target_dir = dir.path().join(unique("keys"));
    std::fs::create_dir(&target_dir).unwrap();
    let path = target_dir.join("authorized_keys");
    remote
        .upload(path.to_str().unwrap(), b"ssh-ed25519 AAAA key\n", 0o600)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"ssh-ed25519 AAAA key\n");
    drop(remote);
    drop(sshd);
    let events = trace_events(&log, target_dir.to_str().unwrap());
    let rename = events
        .iter()
        .position(|l| l.contains("rename") && l.contains("/authorized_keys\""))
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

/// A login that greets on both streams before running anything: the
/// command shell still starts (its banner ends the greeting), and no
/// command's output carries the greeting.
#[tokio::test]
async fn a_greeting_login_still_gets_a_command_shell() {
    let sshd = PrivateSshd::with_force_command(
        "echo 'Welcome to db1'; echo 'motd: be careful' >&2\nexec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"",
    );
    let dir = tempdir();
    let remote = private_remote(&sshd, dir.path()).await;
    let first = remote.run(&runner_probe()).await.unwrap();
    let out = remote
        .run(&Command::shell("echo out; echo err >&2"))
        .await
        .unwrap();
    assert_eq!(
        (out.stdout_str(), out.stderr_str()),
        ("out\n".into(), "err\n".into())
    );
    let again = remote.run(&runner_probe()).await.unwrap();
    assert_eq!(first.stdout_str(), again.stdout_str(), "one command shell");
}
