//! Freeze/thaw and DB lock over real SSH, with recording scripts standing
//! in for fsfreeze and the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2kit::{Command, Output, Remote, RemoteError, SshOptions, SshRemote, SshTarget};
use ektool_tests::{ssh_host, tempdir, unique};
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

/// A hold whose limit is shorter than the snapshot call has ended before
/// the call returned: reported, so the backup can fail the item (L14).
#[tokio::test]
async fn a_hold_that_ends_before_the_snapshot_returns_is_reported() {
    let dir = tempdir();
    let (c, log) = setup(dir.path(), "never", 1);
    let r = remote(dir.path());
    let (result, report) = consistency::around(&r, &c, || async {
        // Longer than max_hold (1 s): wait until the host's own limit has
        // thawed, as the log shows.
        for _ in 0..200 {
            if lines(&log).contains(&"unlock db".to_owned()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, ()>("snap-1")
    })
    .await
    .unwrap();
    assert_eq!(result.unwrap(), "snap-1");
    assert!(report.released_before_snapshot, "{report:?}");
    assert!(report.released_by_watchdog, "{report:?}");
    assert!(!report.is_clean());
}

/// A `Remote` that forwards to the bench host until `broken` is set, then
/// fails every call: a connection lost after the snapshot call (a fault
/// sshd cannot be made to produce at a chosen moment).
struct Breakable {
    inner: SshRemote,
    broken: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Remote for Breakable {
    fn host(&self) -> String {
        self.inner.host()
    }
    async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        self.check()?;
        self.inner.run(command).await
    }
    async fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), RemoteError> {
        self.check()?;
        self.inner.upload(path, bytes, mode).await
    }
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, RemoteError> {
        self.check()?;
        self.inner.read_file(path).await
    }
}

impl Breakable {
    fn check(&self) -> Result<(), RemoteError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RemoteError::Connect {
                host: self.host(),
                source: std::io::Error::other("connection reset"),
            });
        }
        Ok(())
    }
}

/// L14: the connection breaks after the snapshot call; the release fails,
/// and the snapshot's result is still returned, with the release errors
/// next to it. The host's watchdog thaws and unlocks by itself.
#[tokio::test]
async fn a_release_that_fails_after_the_snapshot_keeps_the_snapshot_result() {
    let dir = tempdir();
    let (c, log) = setup(dir.path(), "never", 3);
    let r = Breakable {
        inner: remote(dir.path()),
        broken: false.into(),
    };
    let (result, report) = consistency::around(&r, &c, || async {
        r.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, ()>("snap-1")
    })
    .await
    .unwrap();
    assert_eq!(result.unwrap(), "snap-1", "the snapshots made are not lost");
    assert!(!report.release_errors.is_empty(), "{report:?}");
    assert!(!report.is_clean());
    let mut thawed = false;
    for _ in 0..200 {
        let l = lines(&log);
        if l.contains(&"thaw /data".to_owned()) && l.contains(&"unlock db".to_owned()) {
            thawed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(thawed, "the watchdog released: {:?}", lines(&log));
}

/// SIGINT/SIGTERM while the lock is held and the freeze is being taken:
/// everything taken is released, nothing is snapshotted, and the error
/// says interrupted.
#[tokio::test]
async fn cancelled_while_acquiring_releases_everything_and_never_snapshots() {
    let dir = tempdir();
    let (mut c, log) = setup(dir.path(), "never", 60);
    let marker = dir.path().join("freezing");
    // The second freeze takes a while: the lock and /data are held then.
    c.freeze = format!(
        "{rec} freeze {{}} && if [ {{}} = /logs ]; then touch '{m}'; sleep 30; fi",
        rec = dir.path().join("rec").display(),
        m = marker.display()
    );
    let r = remote(dir.path());
    let cancel = ec2kit::CancellationToken::new();
    let trigger = cancel.clone();
    let watcher = async {
        while !marker.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trigger.cancel();
    };
    let (err, ()) = tokio::join!(
        async {
            consistency::around_until(&r, &c, &cancel, || async {
                panic!("must not snapshot") as Result<(), ()>
            })
            .await
            .unwrap_err()
        },
        watcher
    );
    assert!(matches!(err, ConsistencyError::Interrupted { .. }), "{err}");
    let l = lines(&log);
    assert!(l.contains(&"freeze /logs".to_owned()), "{l:?}");
    assert!(l.contains(&"thaw /data".to_owned()), "{l:?}");
    assert_eq!(l.last().map(String::as_str), Some("unlock db"), "{l:?}");
}

/// M7: a mountpoint on the filesystem that holds the freeze job's own
/// state (here the tmpfs the job directory is on) is refused before
/// anything is frozen; the job state is on a tmpfs in the first place.
#[tokio::test]
async fn a_mountpoint_holding_the_jobs_own_state_is_refused_before_any_freeze() {
    let dir = tempdir();
    let (mut c, log) = setup(dir.path(), "never", 60);
    c.db_lock = None;
    c.mountpoints = vec!["/data".into(), "/dev/shm".into()];
    let r = remote(dir.path());
    let job = ec2kit::GuardedJob::start(&r, &Command::argv(["true"]), Duration::from_secs(5))
        .await
        .unwrap();
    let fs = r
        .run(&Command::argv(["stat", "-f", "-c", "%T", &job.dir]))
        .await
        .unwrap();
    assert_eq!(fs.stdout_str().trim(), "tmpfs", "job state on tmpfs");
    assert!(job.dir.starts_with("/dev/shm/"), "{}", job.dir);
    job.cleanup(&r).await.unwrap();

    let err = consistency::around(&r, &c, || async {
        panic!("must not snapshot") as Result<(), ()>
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("refused /dev/shm"), "{err}");
    assert!(lines(&log).is_empty(), "nothing frozen: {:?}", lines(&log));
}

// ---- MySQL: the bench's real MariaDB ---------------------------------------

/// The bench's MariaDB client options file, or `None` (printed) when
/// `scripts/testbed up` could not start it.
fn mysql_cnf() -> Option<String> {
    match std::env::var("EKTOOL_TEST_MYSQL_CNF") {
        Ok(p) => Some(p),
        Err(_) => {
            eprintln!(
                "SKIPPED: EKTOOL_TEST_MYSQL_CNF is not set: the bench's MariaDB did not start \
                 (see scripts/testbed up); MySQL tests cannot run here"
            );
            None
        }
    }
}

/// The MariaDB client (`mariadb`, else `mysql`).
fn client() -> &'static str {
    if std::process::Command::new("mariadb")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "mariadb"
    } else {
        "mysql"
    }
}

fn sql(cnf: &str, statement: &str) -> String {
    let out = std::process::Command::new(client())
        .arg(format!("--defaults-extra-file={cnf}"))
        .args(["--batch", "--skip-column-names", "-e", statement])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A table of its own, and an INSERT into it started in the background.
struct Writer {
    child: std::process::Child,
}

fn start_insert(cnf: &str, table: &str) -> Writer {
    let child = std::process::Command::new(client())
        .arg(format!("--defaults-extra-file={cnf}"))
        .args(["-e", &format!("INSERT INTO {table} VALUES (1)")])
        .spawn()
        .unwrap();
    Writer { child }
}

/// Waits (bounded) until an INSERT into `table` is seen waiting for the
/// global read lock: the lock is held, and writes block.
fn wait_until_blocked(cnf: &str, table: &str) -> bool {
    for _ in 0..300 {
        let n = sql(
            cnf,
            &format!(
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE (state LIKE '%global read lock%' OR state LIKE '%backup lock%') \
                 AND info LIKE '%INSERT INTO {table}%'"
            ),
        );
        if n != "0" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits (at most `bound`) for the writer to finish; whether it succeeded.
fn insert_finishes(w: &mut Writer, bound: Duration) -> bool {
    let end = std::time::Instant::now() + bound;
    while std::time::Instant::now() < end {
        if let Some(status) = w.child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = w.child.kill();
    false
}

fn new_table(cnf: &str) -> String {
    let db = unique("ektool").replace('-', "_");
    sql(cnf, &format!("CREATE DATABASE {db}"));
    let table = format!("{db}.t");
    sql(cnf, &format!("CREATE TABLE {table} (a INT)"));
    table
}

fn mysql_consistency(cnf: &str, max_hold: u64) -> Consistency {
    Consistency {
        db_lock: Some(DbLock::Mysql {
            client: client().into(),
            defaults_file: Some(cnf.into()),
        }),
        max_hold: Duration::from_secs(max_hold),
        acquire_timeout: Duration::from_secs(10),
        ..Consistency::default()
    }
}

/// H2: with a real server, the lock is seen as held (the client flushes
/// its output), writes block during the hold and resume after it.
#[tokio::test]
async fn mysql_lock_blocks_writes_while_held_and_they_resume_after() {
    let Some(cnf) = mysql_cnf() else { return };
    let dir = tempdir();
    let table = new_table(&cnf);
    let c = mysql_consistency(&cnf, 60);
    let r = remote(dir.path());
    let (res, report) = consistency::around(&r, &c, || {
        let cnf = cnf.clone();
        let table = table.clone();
        async move {
            let mut w = start_insert(&cnf, &table);
            let blocked = tokio::task::spawn_blocking({
                let cnf = cnf.clone();
                let table = table.clone();
                move || wait_until_blocked(&cnf, &table)
            })
            .await
            .unwrap();
            if !blocked {
                let _ = w.child.kill();
            }
            Ok::<_, ()>((blocked, w))
        }
    })
    .await
    .unwrap();
    let (blocked, mut w) = res.unwrap();
    assert!(
        blocked,
        "an INSERT waits for the global read lock while held"
    );
    assert!(report.is_clean(), "{report:?}");
    assert!(
        tokio::task::spawn_blocking(move || insert_finishes(&mut w, Duration::from_secs(30)))
            .await
            .unwrap(),
        "the INSERT went through once the lock was released"
    );
    assert_eq!(sql(&cnf, &format!("SELECT COUNT(*) FROM {table}")), "1");
    sql(
        &cnf,
        &format!("DROP DATABASE {}", table.split('.').next().unwrap()),
    );
}

/// H2: ektool dies (and its SSH connection with it) while the lock is
/// held: the server is unlocked by the host within `max_hold`, and the
/// blocked write goes through.
#[tokio::test]
async fn a_killed_ektool_releases_the_mysql_lock_within_max_hold() {
    let Some(cnf) = mysql_cnf() else { return };
    let dir = tempdir();
    let table = new_table(&cnf);
    let max_hold = 4;
    let c = mysql_consistency(&cnf, max_hold);
    let r = remote(dir.path());
    let held = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = held.clone();
    let stuck = consistency::around(&r, &c, move || async move {
        signal.notify_one();
        std::future::pending::<Result<(), ()>>().await
    });
    // ektool "dies" once the lock is held: the future is dropped, the
    // connection closed; nothing is left on our side to release it.
    tokio::select! {
        _ = stuck => unreachable!("the snapshot call never returns"),
        () = held.notified() => {}
    }
    drop(r);
    let mut w = start_insert(&cnf, &table);
    let cnf2 = cnf.clone();
    let t2 = table.clone();
    assert!(
        tokio::task::spawn_blocking(move || wait_until_blocked(&cnf2, &t2))
            .await
            .unwrap(),
        "still locked right after ektool died"
    );
    // Bounded by max_hold plus the guard's margin, not a timing claim.
    assert!(
        tokio::task::spawn_blocking(move || insert_finishes(
            &mut w,
            Duration::from_secs(max_hold + 20)
        ))
        .await
        .unwrap(),
        "the host released the lock by itself"
    );
    sql(
        &cnf,
        &format!("DROP DATABASE {}", table.split('.').next().unwrap()),
    );
}

/// H2: the client holding the lock dies (a dropped database connection):
/// the server releases the lock at once, writes go through, and the lock
/// job ends, so ektool reports the hold as ended before the snapshot call
/// returned instead of a clean hold.
#[tokio::test]
async fn a_dropped_mysql_session_releases_the_lock_and_is_reported() {
    let Some(shared) = mysql_cnf() else { return };
    let dir = tempdir();
    // An options file of this test's own: its path names this test's lock
    // client (and lock job) among the machine's processes.
    let cnf = dir.path().join("client.cnf");
    std::fs::copy(&shared, &cnf).unwrap();
    let cnf = cnf.display().to_string();
    let table = new_table(&cnf);
    let c = mysql_consistency(&cnf, 60);
    let r = remote(dir.path());
    let (res, report) = consistency::around(&r, &c, || {
        let cnf = cnf.clone();
        let table = table.clone();
        async move {
            let mut w = start_insert(&cnf, &table);
            let blocked = {
                let (c2, t2) = (cnf.clone(), table.clone());
                tokio::task::spawn_blocking(move || wait_until_blocked(&c2, &t2))
                    .await
                    .unwrap()
            };
            let arg = format!("--defaults-extra-file={cnf}");
            let killed = processes(|args| {
                args.contains(&arg.as_bytes()) && args.contains(&b"--skip-reconnect".as_slice())
            });
            for pid in &killed {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let went_through = tokio::task::spawn_blocking(move || {
                insert_finishes(&mut w, Duration::from_secs(30))
            })
            .await
            .unwrap();
            // Wait (bounded) until the lock job has noticed and ended.
            let needle = cnf.as_bytes().to_vec();
            for _ in 0..300 {
                let left = processes(|args| {
                    args.iter()
                        .any(|a| a.windows(needle.len()).any(|w| w == needle))
                });
                if left.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, ()>((blocked, killed.len(), went_through))
        }
    })
    .await
    .unwrap();
    let (blocked, killed, went_through) = res.unwrap();
    assert!(blocked, "the lock was held before the client died");
    assert_eq!(killed, 1, "one lock client");
    assert!(
        went_through,
        "writes went through once the session was gone"
    );
    assert!(report.released_before_snapshot, "{report:?}");
    sql(
        &cnf,
        &format!("DROP DATABASE {}", table.split('.').next().unwrap()),
    );
}

/// The pids of this machine's processes whose arguments match (the bench
/// hosts share its process table).
fn processes(matches: impl Fn(&[&[u8]]) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            matches(&args).then_some(pid)
        })
        .collect()
}
