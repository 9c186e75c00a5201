//! `SshRemote::via(Bastion)` against real OpenSSH: a bastion in front of a
//! host in a network namespace of its own, reachable only through it (see
//! `ektool_tests::jump`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ec2kit::{Bastion, Command, Keepalive, Remote, RemoteError, SshOptions, SshRemote, SshTarget};
use ektool_tests::jump::{Bastion as BenchBastion, HiddenSshd};
use ektool_tests::{SshHost, tempdir};

fn options(host: &SshHost, known_hosts: &Path) -> SshOptions {
    SshOptions {
        identity_files: vec![host.client_key.clone()],
        use_agent: false,
        known_hosts: known_hosts.to_owned(),
        connect_timeout: Duration::from_secs(5),
    }
}

fn target(host: &SshHost) -> SshTarget {
    SshTarget::parse_with_user(&host.target(), "unused").unwrap()
}

/// A known_hosts trusting `hosts`.
fn known_hosts(dir: &Path, hosts: &[&SshHost]) -> PathBuf {
    let path = dir.join("known_hosts");
    let lines: String = hosts
        .iter()
        .map(|h| format!("{}\n", h.known_hosts_line()))
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

#[tokio::test]
async fn commands_run_on_a_hidden_host_through_the_bastion_and_hosts_share_its_connection() {
    let hidden = HiddenSshd::start();
    let bench_bastion = BenchBastion::start(&hidden);
    let dir = tempdir();
    let kh = known_hosts(
        dir.path(),
        &[&bench_bastion.host, &hidden.host, &hidden.second],
    );
    let opts = options(&hidden.host, &kh);

    // The host is not reachable from here.
    let direct = SshRemote::new(target(&hidden.host), opts.clone())
        .run(&Command::argv(["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(direct, RemoteError::Connect { .. }),
        "a direct connection fails: {direct:?}"
    );

    let bastion = Bastion::new(target(&bench_bastion.host), opts.clone());
    let one = SshRemote::new(target(&hidden.host), opts.clone()).via(bastion.clone());
    let two = SshRemote::new(target(&hidden.second), opts.clone()).via(bastion.clone());
    let (ca, cb) = (
        Command::shell("echo one; echo $SSH_CONNECTION"),
        Command::shell("echo two; echo $SSH_CONNECTION"),
    );
    let (a, b) = tokio::join!(one.run(&ca), two.run(&cb));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.status.success() && b.status.success());
    assert!(a.stdout_str().starts_with("one\n"), "{}", a.stdout_str());
    assert!(b.stdout_str().starts_with("two\n"), "{}", b.stdout_str());
    // Each host saw its own port: two sessions, one on each.
    assert!(
        a.stdout_str()
            .trim_end()
            .ends_with(&format!(" {}", hidden.host.port))
    );
    assert!(
        b.stdout_str()
            .trim_end()
            .ends_with(&format!(" {}", hidden.second.port))
    );

    // Big outputs and inputs cross the tunnel intact, both ways at once.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = one
        .run(
            &Command::shell("cat; head -c 2000000 /dev/zero | tr '\\0' e >&2")
                .stdin(input.clone())
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, input);
    assert_eq!(out.stderr.len(), 2_000_000);
    for _ in 0..3 {
        two.run(&Command::argv(["true"])).await.unwrap();
    }

    // One bastion connection and login served both hosts.
    assert_eq!(bastion.connections(), 1);
    assert_eq!(bench_bastion.accepted(), 1, "{}", bench_bastion.log());
    assert_eq!(bench_bastion.logins(), 1, "{}", bench_bastion.log());
    assert_eq!(hidden.connections(), 2, "{}", hidden.log());

    // The process-wide bastion is one per target and options.
    let shared = Bastion::shared(&target(&bench_bastion.host), &opts);
    let again = Bastion::shared(&target(&bench_bastion.host), &opts);
    let three = SshRemote::new(target(&hidden.host), opts.clone()).via(shared.clone());
    let four = SshRemote::new(target(&hidden.second), opts.clone()).via(again.clone());
    three.run(&Command::argv(["true"])).await.unwrap();
    four.run(&Command::argv(["true"])).await.unwrap();
    assert_eq!((shared.connections(), again.connections()), (1, 1));
    assert_eq!(bench_bastion.logins(), 2, "{}", bench_bastion.log());
}

#[tokio::test]
async fn an_unknown_bastion_key_is_refused_before_anything_reaches_the_host() {
    let hidden = HiddenSshd::start();
    let bench_bastion = BenchBastion::start(&hidden);
    let dir = tempdir();
    // The host is trusted; the bastion is not.
    let kh = known_hosts(dir.path(), &[&hidden.host]);
    let opts = options(&hidden.host, &kh);
    let bastion = Bastion::new(target(&bench_bastion.host), opts.clone());
    let remote = SshRemote::new(target(&hidden.host), opts).via(bastion);
    let err = remote.run(&Command::argv(["true"])).await.unwrap_err();
    match &err {
        RemoteError::UnknownHostKey { host, .. } => {
            assert_eq!(host, &bench_bastion.host.target(), "names the bastion");
        }
        other => panic!("expected UnknownHostKey, got {other:?}"),
    }
    assert_eq!(bench_bastion.logins(), 0, "{}", bench_bastion.log());
    assert_eq!(hidden.connections(), 0, "{}", hidden.log());

    // A changed bastion key is refused the same way.
    let other_key = std::fs::read_to_string(&hidden.host.host_public_key).unwrap();
    let mut parts = other_key.split_whitespace();
    std::fs::write(
        &kh,
        format!(
            "{}\n[127.0.0.1]:{} {} {}\n",
            hidden.host.known_hosts_line(),
            bench_bastion.host.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let opts = options(&hidden.host, &kh);
    let remote = SshRemote::new(target(&hidden.host), opts.clone())
        .via(Bastion::new(target(&bench_bastion.host), opts));
    let err = remote.run(&Command::argv(["true"])).await.unwrap_err();
    assert!(
        matches!(err, RemoteError::HostKeyMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(hidden.connections(), 0, "{}", hidden.log());
}

#[tokio::test]
async fn a_dead_bastion_fails_within_the_connect_deadline() {
    let hidden = HiddenSshd::start();
    let dir = tempdir();
    let kh = known_hosts(dir.path(), &[&hidden.host]);
    let mut opts = options(&hidden.host, &kh);
    opts.connect_timeout = Duration::from_secs(2);
    // A bastion that accepts TCP (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bastion_target = SshTarget::parse_with_user(
        &format!("u@127.0.0.1:{}", silent.local_addr().unwrap().port()),
        "u",
    )
    .unwrap();
    let remote = SshRemote::new(target(&hidden.host), opts.clone())
        .via(Bastion::new(bastion_target, opts.clone()));
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        remote.run(&Command::argv(["true"])),
    )
    .await
    .expect("the call ends")
    .unwrap_err();
    // The handshake's deadline, with room for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(12), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(hidden.connections(), 0);
    drop(silent);

    // Nobody listening: refused at once.
    let closed =
        SshTarget::parse_with_user(&format!("u@127.0.0.1:{}", ektool_tests::free_port()), "u")
            .unwrap();
    let remote = SshRemote::new(target(&hidden.host), opts.clone()).via(Bastion::new(closed, opts));
    let err = remote.run(&Command::argv(["true"])).await.unwrap_err();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn a_bastion_that_drops_fails_the_command_and_the_next_call_reconnects() {
    let hidden = HiddenSshd::start();
    let bench_bastion = BenchBastion::start(&hidden);
    let dir = tempdir();
    let kh = known_hosts(dir.path(), &[&bench_bastion.host, &hidden.host]);
    let opts = options(&hidden.host, &kh);
    let bastion = Bastion::new(target(&bench_bastion.host), opts.clone()).keepalive(Keepalive {
        interval: Duration::from_secs(2),
        max_missed: 2,
    });
    let remote = SshRemote::new(target(&hidden.host), opts)
        .keepalive(Keepalive {
            interval: Duration::from_secs(2),
            max_missed: 2,
        })
        .via(bastion.clone());
    remote.run(&Command::argv(["true"])).await.unwrap();

    // The bastion drops its connection while a command runs.
    let running = {
        let remote = remote.clone();
        tokio::spawn(async move {
            remote
                .run(&Command::shell("sleep 30").timeout(Duration::from_secs(60)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    bench_bastion.kill_sessions();
    let err = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the command ends")
        .unwrap()
        .unwrap_err();
    assert!(
        !matches!(err, RemoteError::Timeout { .. }),
        "the command failed with its connection, not its timeout: {err:?}"
    );

    // The next call connects to the bastion again.
    let out = remote.run(&Command::argv(["echo", "back"])).await.unwrap();
    assert_eq!(out.stdout_str(), "back\n");
    assert_eq!(bastion.connections(), 2);
    assert_eq!(bench_bastion.logins(), 2, "{}", bench_bastion.log());
}
