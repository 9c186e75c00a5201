//! Freeze/thaw and DB lock over real SSH, with recording scripts standing
//! in for fsfreeze and the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2kit::{SshOptions, SshRemote, SshTarget};
use ektool_tests::{ssh_host, tempdir};
use snapkit::consistency::{self, Consistency, ConsistencyError, DbLock};

fn remote(dir: &Path) -> SshRemote {
    let host = ssh_host(1);
    let kh = host.write_known_hosts(dir);
    SshRemote::new(
        SshTarget::parse_with_user(&host.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![host.client_key.clone()],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(10),
        },
    )
}

/// A script that appends its arguments to `log`, failing for `fail_on`.
fn recorder(dir: &Path, fail_on: &str) -> (PathBuf, PathBuf) {
    let log = dir.join("log");
    let rec = dir.join("rec");
    std::fs::write(
        &rec,
        format!(
            "#!/bin/sh\n[ \"$2\" = '{fail_on}' ] && exit 1\necho \"$1 $2\" >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o755)).unwrap();
    (rec, log)
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn setup(dir: &Path, fail_on: &str, max_hold: u64) -> (Consistency, PathBuf) {
    let (rec, log) = recorder(dir, fail_on);
    let r = rec.display();
    let c = Consistency {
        mountpoints: vec!["/data".into(), "/logs".into()],
        freeze: format!("{r} freeze {{}}"),
        thaw: format!("{r} thaw {{}}"),
        db_lock: Some(DbLock::Commands {
            lock: format!("{r} lock db"),
            unlock: format!("{r} unlock db"),
        }),
        max_hold: Duration::from_secs(max_hold),
        acquire_timeout: Duration::from_secs(10),
    };
    (c, log)
}

#[tokio::test]
async fn lock_freeze_snapshot_thaw_unlock_in_order() {
    let dir = tempdir();
    let (c, log) = setup(dir.path(), "never", 60);
    let r = remote(dir.path());
    let log2 = log.clone();
    let (result, report) = consistency::around(&r, &c, || async move {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log2)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"snapshot taken\n"))?;
        Ok::<_, std::io::Error>("snap-1")
    })
    .await
    .unwrap();
    assert_eq!(result.unwrap(), "snap-1");
    assert_eq!(
        lines(&log),
        [
            "lock db",
            "freeze /data",
            "freeze /logs",
            "snapshot taken",
            "thaw /logs",
            "thaw /data",
            "unlock db"
        ]
    );
    let frozen = report
        .frozen_secs
        .expect("frozen time measured on the host");
    assert!(frozen > 0.0 && frozen < 30.0, "{frozen}");
    assert!(report.locked_secs.unwrap() >= frozen);
    assert!(!report.released_by_watchdog);
}

#[tokio::test]
async fn a_failed_snapshot_call_still_thaws_and_unlocks() {
    let dir = tempdir();
    let (c, log) = setup(dir.path(), "never", 60);
    let r = remote(dir.path());
    let (result, _) =
        consistency::around(&r, &c, || async { Err::<(), _>("CreateSnapshots failed") })
            .await
            .unwrap();
    assert!(result.is_err());
    let l = lines(&log);
    assert_eq!(l.last().map(String::as_str), Some("unlock db"));
    assert!(l.contains(&"thaw /data".to_owned()) && l.contains(&"thaw /logs".to_owned()));
}

#[tokio::test]
async fn a_failed_freeze_undoes_what_was_frozen_and_never_snapshots() {
    let dir = tempdir();
    let (c, log) = setup(dir.path(), "/logs", 60);
    let r = remote(dir.path());
    let err = consistency::around(&r, &c, || async {
        panic!("must not snapshot") as Result<(), ()>
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConsistencyError::Acquire {
                what: "freeze the filesystems",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        lines(&log),
        ["lock db", "freeze /data", "thaw /data", "unlock db"]
    );
}

#[tokio::test]
async fn the_host_thaws_by_itself_when_ektool_and_the_connection_die_mid_freeze() {
    let dir = tempdir();
    let (c, log) = setup(dir.path(), "never", 6);
    let r = remote(dir.path());
    // The snapshot call never returns; ektool "dies": the future is dropped
    // and the SSH connection closed, nothing is left to thaw.
    let stuck = consistency::around(&r, &c, std::future::pending::<Result<(), ()>>);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), stuck)
            .await
            .is_err()
    );
    drop(r);
    assert!(lines(&log).contains(&"freeze /logs".to_owned()));
    assert!(
        !lines(&log).contains(&"thaw /logs".to_owned()),
        "still frozen right after the drop: {:?}",
        lines(&log)
    );
    let mut thawed = false;
    for _ in 0..100 {
        let l = lines(&log);
        if l.contains(&"thaw /data".to_owned()) && l.contains(&"unlock db".to_owned()) {
            thawed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        thawed,
        "the watchdog thawed and unlocked: {:?}",
        lines(&log)
    );
}

#[tokio::test]
async fn mysql_lock_is_held_by_a_live_session_and_released_by_ending_it() {
    let dir = tempdir();
    let log = dir.path().join("mysql.log");
    let client = dir.path().join("mysql");
    // A stand-in client: records its arguments, "takes" the lock, then
    // sleeps like SELECT SLEEP(N) would; dies with the session.
    std::fs::write(
        &client,
        format!("#!/bin/sh\necho \"args: $*\" >> '{l}'\necho \"held $(date +%s)\"\ntrap 'echo session-ended >> \"{l}\"; exit 0' TERM\nsleep 60 & wait $!\n", l = log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Consistency {
        db_lock: Some(DbLock::Mysql {
            client: client.display().to_string(),
            defaults_file: Some("/etc/mysql/debian.cnf".into()),
        }),
        acquire_timeout: Duration::from_secs(10),
        ..Consistency::default()
    };
    let r = remote(dir.path());
    let (res, report) = consistency::around(&r, &c, || async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    assert!(res.is_ok());
    assert!(report.locked_secs.is_some());
    let l = lines(&log);
    assert!(
        l[0].contains("--defaults-extra-file=/etc/mysql/debian.cnf"),
        "{l:?}"
    );
    assert!(l[0].contains("FLUSH TABLES WITH READ LOCK"), "{l:?}");
    assert!(
        !l[0].contains("password"),
        "no credentials on the command line"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        lines(&log).contains(&"session-ended".to_owned()),
        "the session (and so the lock) ended"
    );
}
