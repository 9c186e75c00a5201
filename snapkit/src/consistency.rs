//! Consistent snapshots: database lock and filesystem freeze around the
//! snapshot call, released on every path.
//!
//! Both are held by [`GuardedJob`]s on the host: a detached shell that
//! takes the lock or freeze, reports it, waits, and releases it when
//! stopped (TERM) **or when its own limit strikes** — so a dropped SSH
//! connection or a killed ektool still ends with the host thawed and
//! unlocked after `max_hold`. The order is the seed's: lock the database,
//! freeze the filesystems, snapshot, thaw, unlock.

use std::time::{Duration, Instant};

use ec2kit::remote::quote;
use ec2kit::{CancellationToken, Command, GuardedJob, JobState, Remote, RemoteError};
use serde::{Deserialize, Serialize};

/// A database lock held while the snapshot is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DbLock {
    /// MySQL: `FLUSH TABLES WITH READ LOCK`, held by a live client session
    /// until the snapshot call returns; ending the session unlocks.
    Mysql {
        /// The client (default `mysql`).
        #[serde(default = "mysql")]
        client: String,
        /// A client options file with the credentials (kept on the host,
        /// never on a command line), e.g. `/etc/mysql/debian.cnf`.
        defaults_file: Option<String>,
    },
    /// Any pair of commands.
    Commands {
        /// Takes the lock; must return once the lock is held.
        lock: String,
        /// Releases it.
        unlock: String,
    },
}

fn mysql() -> String {
    "mysql".into()
}

/// MySQL through the `mysql` client with its own defaults (the lock a
/// `lock_db` volume gets when no other is configured).
impl Default for DbLock {
    fn default() -> Self {
        Self::Mysql {
            client: mysql(),
            defaults_file: None,
        }
    }
}

/// What to do around the snapshot call on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    /// Mountpoints to freeze (in this order; thawed in reverse).
    pub mountpoints: Vec<String>,
    /// Freeze command; `{}` is replaced by the quoted mountpoint.
    pub freeze: String,
    /// Thaw command; `{}` is replaced by the quoted mountpoint.
    pub thaw: String,
    /// Optional database lock.
    pub db_lock: Option<DbLock>,
    /// The longest the host may stay frozen or locked (the watchdog).
    pub max_hold: Duration,
    /// How long to wait for the lock or freeze to be taken.
    pub acquire_timeout: Duration,
}

impl Default for Consistency {
    fn default() -> Self {
        Self {
            mountpoints: Vec::new(),
            freeze: "fsfreeze -f {}".into(),
            thaw: "fsfreeze -u {}".into(),
            db_lock: None,
            max_hold: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// Errors around the snapshot call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsistencyError {
    /// The host failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The lock or freeze could not be taken; everything taken was released.
    #[error("{host}: could not {what}: {detail}")]
    Acquire {
        /// The host.
        host: String,
        /// "lock the database" / "freeze the filesystems".
        what: &'static str,
        /// What the host said.
        detail: String,
    },
    /// The caller's cancellation token fired (SIGINT/SIGTERM) before the
    /// snapshot call; everything taken was released, nothing snapshotted.
    #[error("{host}: interrupted before the snapshot; everything taken was released")]
    Interrupted {
        /// The host.
        host: String,
    },
}

/// How long the host stayed frozen and locked, from the host's clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HoldReport {
    /// Seconds the filesystems were frozen.
    pub frozen_secs: Option<f64>,
    /// Seconds the database was locked.
    pub locked_secs: Option<f64>,
    /// Whether the watchdog (the host's own limit), not ektool, released
    /// something.
    pub released_by_watchdog: bool,
    /// Whether a hold had already ended when the snapshot call returned:
    /// the snapshot may not be consistent.
    pub released_before_snapshot: bool,
    /// Releases that failed after the snapshot call (the host's watchdog
    /// still ends them after `max_hold`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub release_errors: Vec<String>,
}

impl HoldReport {
    /// Whether the hold went as it should: held across the whole snapshot
    /// call and released by ektool.
    pub fn is_clean(&self) -> bool {
        !self.released_before_snapshot && self.release_errors.is_empty()
    }
}

fn fill(template: &str, mountpoint: &str) -> String {
    template.replace("{}", &quote(mountpoint))
}

/// The freeze job: refuse a mountpoint that holds the job's own state,
/// freeze each mountpoint (undoing on failure), report, hold until TERM or
/// the limit, then thaw in reverse.
pub fn freeze_script(c: &Consistency) -> String {
    let thaw_all: Vec<String> = c
        .mountpoints
        .iter()
        .rev()
        .map(|m| format!("{} || true", fill(&c.thaw, m)))
        .collect();
    let mut s = String::new();
    s.push_str("done_=0\nrelease() { [ \"$done_\" = 1 ] && return; done_=1; ");
    s.push_str(&thaw_all.join("; "));
    s.push_str("; echo \"released $(date +%s.%N)\"; }\n");
    s.push_str("trap 'release; exit 0' TERM INT HUP\n");
    // Before anything is frozen: the job writes `held` to its stdout and
    // keeps its pid/rc files in $EKTOOL_JOB_DIR. A write to a frozen
    // filesystem blocks uninterruptibly, and then neither TERM nor the
    // watchdog could thaw it: refuse a mountpoint on the same device. (A
    // mountpoint that cannot be looked at is left to the freeze command,
    // which then fails on it.)
    s.push_str(
        "own=\" $(stat -L -c %d /dev/stdout ${EKTOOL_JOB_DIR:+\"$EKTOOL_JOB_DIR\"} | tr '\\n' ' ')\"\n\
         own_fs() { d=$(stat -L -c %d -- \"$1\" 2>/dev/null) || return 0; \
         case \"$own\" in *\" $d \"*) echo \"refused $1: the freeze job's own state is on that filesystem (freeze would block its own thaw)\" >&2; exit 4;; esac; }\n",
    );
    for m in &c.mountpoints {
        s.push_str(&format!("own_fs {}\n", quote(m)));
    }
    for (i, m) in c.mountpoints.iter().enumerate() {
        let undo: Vec<String> = c
            .mountpoints
            .iter()
            .take(i)
            .rev()
            .map(|m| format!("{} || true", fill(&c.thaw, m)))
            .collect();
        s.push_str(&format!(
            // Grouped: a template with `&&` or `||` is one command here.
            "if ! {{ {freeze}; }}; then echo failed {mp} >&2; {undo} exit 3; fi\n",
            freeze = fill(&c.freeze, m),
            // Quoted like every other value: a mountpoint is text, never
            // shell syntax, in this root shell.
            mp = quote(m),
            undo = undo.iter().map(|u| format!("{u};")).collect::<String>(),
        ));
    }
    s.push_str(&format!(
        "echo \"held $(date +%s.%N)\"\nsleep {} & wait $!\nrelease\n",
        c.max_hold.as_secs().max(1)
    ));
    s
}

/// The lock job.
///
/// MySQL: the client reads its statements from a FIFO, so it sits idle,
/// waiting for input, while the session holds `FLUSH TABLES WITH READ
/// LOCK`. Idle is what makes every ending prompt: closing the FIFO (our
/// release, or the watchdog's) ends the session, and so does killing the
/// client (the server is blocked reading that session's socket and sees
/// the close at once). `--unbuffered` makes the client flush `held` as soon
/// as the lock is taken (stdout is a file, block-buffered otherwise), and
/// `lock_wait_timeout` bounds the wait for the lock itself. A `SELECT 1`
/// each second, without reconnecting, ends the job when the session is
/// lost (the lock went with it), so ektool sees the hold ended.
pub fn lock_script(lock: &DbLock, max_hold: Duration, acquire_timeout: Duration) -> String {
    let secs = max_hold.as_secs().max(1);
    match lock {
        DbLock::Mysql {
            client,
            defaults_file,
        } => {
            // `--defaults-extra-file` must be the client's first option.
            let defaults = defaults_file
                .as_deref()
                .map(|f| format!(" --defaults-extra-file={}", quote(f)))
                .unwrap_or_default();
            let wait = acquire_timeout.as_secs().max(1);
            format!(
                "d=${{EKTOOL_JOB_DIR:-}}; [ -n \"$d\" ] || d=$(mktemp -d); f=\"$d/sql\"; rm -f \"$f\"; mkfifo -m 600 \"$f\" || exit 3\n\
                 trap '' PIPE\n\
                 {client}{defaults} --unbuffered --batch --skip-column-names --skip-reconnect < \"$f\" & c=$!\n\
                 exec 3> \"$f\"\n\
                 done_=0\n\
                 release() {{ [ \"$done_\" = 1 ] && return; done_=1; exec 3>&-; \
                 i=0; while kill -0 $c 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
                 kill $c 2>/dev/null; wait $c 2>/dev/null; echo \"released $(date +%s.%N)\"; }}\n\
                 trap 'release; exit 0' TERM INT HUP\n\
                 echo \"SET SESSION lock_wait_timeout = {wait}; FLUSH TABLES WITH READ LOCK; SELECT CONCAT('held ', UNIX_TIMESTAMP(NOW(6)));\" >&3\n\
                 end=$(( $(date +%s) + {secs} ))\n\
                 while [ \"$(date +%s)\" -lt \"$end\" ]; do\n\
                 if ! kill -0 $c 2>/dev/null; then echo 'the database session ended' >&2; exit 5; fi\n\
                 echo 'SELECT 1;' >&3 2>/dev/null || true\n\
                 sleep 1 & wait $!\n\
                 done\n\
                 release\n",
                client = quote(client),
            )
        }
        DbLock::Commands { lock, unlock } => format!(
            "done_=0\nrelease() {{ [ \"$done_\" = 1 ] && return; done_=1; {unlock}; echo \"released $(date +%s.%N)\"; }}\n\
             trap 'release; exit 0' TERM INT HUP\n\
             if ! {{ {lock}; }}; then echo 'lock failed' >&2; exit 3; fi\n\
             echo \"held $(date +%s.%N)\"\nsleep {secs} & wait $!\nrelease\n"
        ),
    }
}

/// A lock or freeze being held on a host.
struct Hold {
    job: GuardedJob,
}

/// How a hold ended.
struct Released {
    /// Seconds held, from the host's clock.
    held: Option<f64>,
    /// Whether it had ended before ektool asked (the script's own limit or
    /// the guard's).
    by_watchdog: bool,
}

impl Hold {
    async fn take(
        remote: &dyn Remote,
        script: String,
        limit: Duration,
        timeout: Duration,
        what: &'static str,
        cancel: &CancellationToken,
    ) -> Result<Self, ConsistencyError> {
        if cancel.is_cancelled() {
            return Err(ConsistencyError::Interrupted {
                host: remote.host(),
            });
        }
        // The guard's own limit is a little longer than the script's sleep,
        // so the script's orderly release normally wins.
        let job = GuardedJob::start(
            remote,
            &Command::shell(script),
            limit.saturating_add(Duration::from_secs(5)),
        )
        .await?;
        let started = Instant::now();
        loop {
            let out =
                String::from_utf8_lossy(&job.stdout(remote).await.unwrap_or_default()).into_owned();
            if out.lines().any(|l| l.starts_with("held")) {
                return Ok(Self { job });
            }
            if let JobState::Finished(_) | JobState::Vanished = job.state(remote).await? {
                let err = String::from_utf8_lossy(&job.stderr(remote).await.unwrap_or_default())
                    .trim()
                    .to_owned();
                let _ = job.cleanup(remote).await;
                return Err(ConsistencyError::Acquire {
                    host: remote.host(),
                    what,
                    detail: if err.is_empty() { out } else { err },
                });
            }
            let interrupted = cancel.is_cancelled();
            if interrupted || started.elapsed() > timeout {
                let _ = job.stop(remote).await;
                let _ = job.cleanup(remote).await;
                if interrupted {
                    return Err(ConsistencyError::Interrupted {
                        host: remote.host(),
                    });
                }
                return Err(ConsistencyError::Acquire {
                    host: remote.host(),
                    what,
                    detail: format!("not held after {timeout:?}"),
                });
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = cancel.cancelled() => {}
            }
        }
    }

    /// Whether the hold is still in place (the job still running).
    async fn still_held(&self, remote: &dyn Remote) -> Result<bool, RemoteError> {
        Ok(self.job.state(remote).await? == JobState::Running)
    }

    /// Releases (TERM → the script's trap) and returns how long it was held.
    async fn release(self, remote: &dyn Remote) -> Result<Released, RemoteError> {
        let before = self.job.state(remote).await?;
        let ended_before = before != JobState::Running;
        let state = match before {
            JobState::Running => self.job.stop(remote).await?,
            ended => ended,
        };
        let out = String::from_utf8_lossy(&self.job.stdout(remote).await.unwrap_or_default())
            .into_owned();
        let stamp = |prefix: &str| -> Option<f64> {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|t| t.trim().parse().ok())
        };
        let held = match (stamp("held "), stamp("released ")) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        // Ended before we asked (the script's own limit), or exit 124 (the
        // guard's limit ended it, not our TERM): the watchdog released it.
        let by_watchdog =
            ended_before || matches!(state, JobState::Finished(ec2kit::ExitStatus::Code(124)));
        let _ = self.job.cleanup(remote).await;
        Ok(Released { held, by_watchdog })
    }
}

/// What a consistent snapshot would hold on one host: the `--dry-run`
/// report, made without freezing or locking anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldPlan {
    /// The host (reached over SSH with its known host key).
    pub host: String,
    /// The mountpoints that would be frozen, in order.
    pub would_freeze: Vec<String>,
    /// The database lock that would be taken (`mysql` or `commands`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_lock: Option<&'static str>,
}

/// The dry run of [`around`]: reaches the host (so an unknown host key or
/// a refused login shows now) and reports what would be held. Freezes
/// nothing, locks nothing, starts no job.
pub async fn plan(remote: &dyn Remote, c: &Consistency) -> Result<HoldPlan, ConsistencyError> {
    ec2kit::remote::run_checked(remote, &Command::argv(["true"])).await?;
    Ok(HoldPlan {
        host: remote.host(),
        would_freeze: c.mountpoints.clone(),
        would_lock: c.db_lock.as_ref().map(|l| match l {
            DbLock::Mysql { .. } => "mysql",
            DbLock::Commands { .. } => "commands",
        }),
    })
}

/// Runs `snapshot` with the database locked and the filesystems frozen on
/// `remote`, releasing both afterwards whatever `snapshot` returned.
pub async fn around<T, E, F, Fut>(
    remote: &dyn Remote,
    c: &Consistency,
    snapshot: F,
) -> Result<(Result<T, E>, HoldReport), ConsistencyError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    around_until(remote, c, &CancellationToken::new(), snapshot).await
}

/// [`around`], watching `cancel` (SIGINT/SIGTERM): cancelled while the lock
/// or freeze is being taken, everything taken is released and the result
/// is [`ConsistencyError::Interrupted`]. Once the snapshot call has begun
/// it is let finish (it is one bounded EC2 call, and its snapshots must be
/// reported), then everything is released as usual.
///
/// Errors releasing after the snapshot call do not hide its result: they
/// are in [`HoldReport::release_errors`], next to it.
pub async fn around_until<T, E, F, Fut>(
    remote: &dyn Remote,
    c: &Consistency,
    cancel: &CancellationToken,
    snapshot: F,
) -> Result<(Result<T, E>, HoldReport), ConsistencyError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let lock = match &c.db_lock {
        Some(l) => Some(
            Hold::take(
                remote,
                lock_script(l, c.max_hold, c.acquire_timeout),
                c.max_hold,
                c.acquire_timeout,
                "lock the database",
                cancel,
            )
            .await?,
        ),
        None => None,
    };
    let freeze = if c.mountpoints.is_empty() {
        None
    } else {
        match Hold::take(
            remote,
            freeze_script(c),
            c.max_hold,
            c.acquire_timeout,
            "freeze the filesystems",
            cancel,
        )
        .await
        {
            Ok(h) => Some(h),
            Err(e) => {
                if let Some(l) = lock {
                    let _ = l.release(remote).await;
                }
                return Err(e);
            }
        }
    };
    if cancel.is_cancelled() {
        if let Some(f) = freeze {
            let _ = f.release(remote).await;
        }
        if let Some(l) = lock {
            let _ = l.release(remote).await;
        }
        return Err(ConsistencyError::Interrupted {
            host: remote.host(),
        });
    }
    let result = snapshot().await;
    let mut report = HoldReport::default();
    // A hold that ended before the snapshot call returned (its limit was
    // too short, or the host killed it) did not cover the snapshot.
    for hold in freeze.iter().chain(lock.iter()) {
        match hold.still_held(remote).await {
            Ok(true) => {}
            Ok(false) => report.released_before_snapshot = true,
            Err(e) => report.release_errors.push(e.to_string()),
        }
    }
    if let Some(f) = freeze {
        match f.release(remote).await {
            Ok(r) => {
                report.frozen_secs = r.held;
                report.released_by_watchdog |= r.by_watchdog;
            }
            Err(e) => report.release_errors.push(format!("thaw: {e}")),
        }
    }
    if let Some(l) = lock {
        match l.release(remote).await {
            Ok(r) => {
                report.locked_secs = r.held;
                report.released_by_watchdog |= r.by_watchdog;
            }
            Err(e) => report.release_errors.push(format!("unlock: {e}")),
        }
    }
    Ok((result, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H2: the client gets its options file first (credentials stay there,
    /// never on a command line), flushes each result, and reads from the
    /// FIFO rather than `-e`.
    #[test]
    fn the_mysql_lock_script_keeps_credentials_in_the_file_and_flushes() {
        let s = lock_script(
            &DbLock::Mysql {
                client: "mysql".into(),
                defaults_file: Some("/etc/mysql/debian.cnf".into()),
            },
            Duration::from_secs(60),
            Duration::from_secs(30),
        );
        assert!(
            s.contains("mysql --defaults-extra-file=/etc/mysql/debian.cnf --unbuffered"),
            "{s}"
        );
        assert!(
            s.contains("--skip-reconnect") && s.contains("< \"$f\""),
            "{s}"
        );
        assert!(s.contains("lock_wait_timeout = 30"), "{s}");
        assert!(
            !s.contains(" -e ") && !s.contains("--password") && !s.contains(" -p"),
            "{s}"
        );
    }

    /// L1: a configured mountpoint is text in the root freeze shell, never
    /// shell syntax, in every message too.
    #[test]
    fn a_mountpoint_with_shell_syntax_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("m$(touch pwned)`touch pwned2`");
        std::fs::create_dir(&mp).unwrap();
        let c = Consistency {
            mountpoints: vec![mp.display().to_string()],
            freeze: "false {}".into(),
            thaw: "true {}".into(),
            max_hold: Duration::from_secs(1),
            ..Consistency::default()
        };
        let out = std::process::Command::new("sh")
            .args(["-c", &freeze_script(&c)])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "the freeze failed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("failed ") && stderr.contains("$(touch pwned)"),
            "{stderr}"
        );
        assert!(!dir.path().join("pwned").exists(), "$(…) ran");
        assert!(!dir.path().join("pwned2").exists(), "`…` ran");
    }
}
