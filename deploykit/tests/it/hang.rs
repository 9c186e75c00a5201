//! Hosts and git servers that stop answering, and a host whose clock is
//! behind: every command has a deadline, the run takes its failure path
//! and ends, and a rerun works.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploykit::environment::LayoutKind;
use deploykit::{DeployError, Environment, Event, Host, Stage};
use ec2kit::{HumanDuration, Remote, SshOptions, SshRemote, SshTarget};
use ektool_tests::PrivateSshd;

use crate::support::Fixture;

/// The longest any of these runs may take before the test calls it hung
/// (their deadlines below add up to well under it).
const HUNG: Duration = Duration::from_secs(120);

fn remote_to(server: &PrivateSshd) -> Arc<dyn Remote> {
    let kh = server.dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{}\n", server.known_hosts_line())).unwrap();
    Arc::new(SshRemote::new(
        SshTarget::parse_with_user(&server.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![ektool_tests::ssh_host(1).client_key],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(2),
        },
    ))
}

fn short_timeouts(env: &mut Environment) {
    let s = HumanDuration::from_secs(2);
    env.timeouts.lock = s;
    env.timeouts.state = s;
    env.timeouts.switch = s;
    env.timeouts.fetch = s;
    env.timeouts.checkout = s;
    env.timeouts.cleanup = s;
}

/// Waits for `file` to appear.
async fn appears(file: &Path) {
    while !file.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A host's sshd (and everything it runs) is stopped while the host is in
/// the middle of its checkout. That host fails at its deadline, the other
/// is unlocked with `current` untouched, and after the host is resumed a
/// rerun deploys everywhere.
#[tokio::test]
async fn a_host_stopped_mid_checkout_fails_within_its_deadline_and_a_rerun_works() {
    let f = Fixture::new(1);
    let signal = f.dir.path().join("in-checkout");
    // `git clone` on that host says it started, then takes a second. (A
    // wrapper in its PATH: commands reach the host through its command
    // shell, not one SSH command each.)
    let bin = f.dir.path().join("clone-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let git = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(
        bin.join("git"),
        format!(
            "#!/bin/sh\ncase \" $* \" in *' clone '*) touch '{}'; sleep 1;; esac\nexec '{}' \"$@\"\n",
            signal.display(),
            git.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("git"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = PrivateSshd::with_force_command(&format!(
        "PATH='{}':$PATH; export PATH\nexec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"",
        bin.display()
    ));
    let proot = server.dir.path().join("root");
    let mut hosts = f.hosts();
    hosts.push(Host::new(remote_to(&server), proot.display().to_string()).named("stopped"));
    let mut env = f.env(LayoutKind::Timestamped);
    short_timeouts(&mut env);
    let d = f.deployer_on(env, hosts);
    let c = f.commit("x");
    let rel = f.release(&c);
    let run = d.deploy(&rel);
    let stopper = async {
        appears(&signal).await;
        server.freeze();
    };
    let (result, ()) = tokio::time::timeout(HUNG, async { tokio::join!(run, stopper) })
        .await
        .expect("the deploy hung on a stopped host");
    let err = result.unwrap_err();
    let DeployError::Failed {
        stage, failures, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(matches!(stage, Stage::Fetch | Stage::Checkout), "{err}");
    assert_eq!(failures[0].host, "stopped", "{err}");
    assert_eq!(f.current(0), None, "h1 never switched");
    assert!(!f.local(0, ".ektool/lock").exists(), "h1 unlocked");

    server.thaw();
    // The stopped host's lock is this (failed) run's: the operator unlocks.
    d.unlock(true).await.unwrap();
    let report = tokio::time::timeout(HUNG, d.deploy(&rel))
        .await
        .expect("the rerun hung")
        .unwrap();
    assert_eq!(report.hosts.len(), 2);
    assert_eq!(f.live_commit(0).as_deref(), Some(c.as_str()));
    assert_eq!(
        std::fs::read_to_string(proot.join("current/REVISION"))
            .unwrap()
            .trim(),
        c
    );
}

/// A host whose clock is ten minutes behind: the scheduled switch waits
/// at most its bound there (the fleet switches together instead of that
/// host sleeping ten minutes), and the skew is measured and reported.
#[tokio::test]
async fn a_host_whose_clock_is_behind_switches_with_the_others_and_the_skew_is_reported() {
    let f = Fixture::new(1);
    let fake = f.dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("date"),
        "#!/bin/sh\ncase \"$1\" in\n+%s%N) echo $(( $(/bin/date +%s%N) - 600000000000 ));;\n+%s) echo $(( $(/bin/date +%s) - 600 ));;\n*) exec /bin/date \"$@\";;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.join("date"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = PrivateSshd::with_force_command(&format!(
        "PATH='{}':$PATH; export PATH\nexec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"",
        fake.display()
    ));
    let proot = server.dir.path().join("root");
    let mut hosts = f.hosts();
    hosts.push(Host::new(remote_to(&server), proot.display().to_string()).named("behind"));
    let mut env = f.env(LayoutKind::Timestamped);
    short_timeouts(&mut env);
    let d = f.deployer_on(env, hosts);
    let c = f.commit("x");
    let plan = d.deploy_plan(&f.release(&c)).await.unwrap();
    let of = |name: &str| plan.hosts.iter().find(|h| h.host == name).unwrap();
    let skew = of("behind").clock_skew_ms.unwrap();
    assert!(of("h1").clock_skew_ms.unwrap().abs() < 5_000);
    assert!((-610_000..-590_000).contains(&skew), "{skew}");
    let report = tokio::time::timeout(HUNG, d.deploy(&f.release(&c)))
        .await
        .expect("the switch slept by the host's lag")
        .unwrap();
    let skew = report
        .hosts
        .iter()
        .find(|h| h.host == "behind")
        .unwrap()
        .clock_skew_ms
        .unwrap();
    assert!((-610_000..-590_000).contains(&skew), "{skew}");
    assert!(f.take_events().iter().any(|e| matches!(
        e,
        Event::ClockSkew { host, skew_ms } if host == "behind" && *skew_ms < -590_000
    )));
    assert_eq!(
        std::fs::read_to_string(proot.join("current/REVISION"))
            .unwrap()
            .trim(),
        c
    );
}
