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
use ec2kit::{Command, GuardedJob, JobState, Remote, RemoteError};
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
}

/// How long the host stayed frozen and locked, from the host's clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HoldReport {
    /// Seconds the filesystems were frozen.
    pub frozen_secs: Option<f64>,
    /// Seconds the database was locked.
    pub locked_secs: Option<f64>,
    /// Whether the watchdog, not ektool, released something.
    pub released_by_watchdog: bool,
}

fn fill(template: &str, mountpoint: &str) -> String {
    template.replace("{}", &quote(mountpoint))
}

/// The freeze job: freeze each mountpoint (undoing on failure), report,
/// hold until TERM or the limit, then thaw in reverse.
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
    for (i, m) in c.mountpoints.iter().enumerate() {
        let undo: Vec<String> = c.mountpoints[..i]
            .iter()
            .rev()
            .map(|m| format!("{} || true", fill(&c.thaw, m)))
            .collect();
        s.push_str(&format!(
            "if ! {freeze}; then echo \"failed {mp}\" >&2; {undo} exit 3; fi\n",
            freeze = fill(&c.freeze, m),
            mp = m.replace('"', ""),
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
pub fn lock_script(lock: &DbLock, max_hold: Duration) -> String {
    let secs = max_hold.as_secs().max(1);
    match lock {
        DbLock::Mysql {
            client,
            defaults_file,
        } => {
            let defaults = defaults_file
                .as_deref()
                .map(|f| format!(" --defaults-extra-file={}", quote(f)))
                .unwrap_or_default();
            // The client holds the lock while it sleeps; killing it ends the
            // session, which releases the lock.
            format!(
                "trap 'echo \"released $(date +%s.%N)\"; kill $c 2>/dev/null; exit 0' TERM INT HUP\n\
                 {client}{defaults} -N -e \"FLUSH TABLES WITH READ LOCK; SELECT CONCAT('held ', UNIX_TIMESTAMP(NOW(6))); SELECT SLEEP({secs});\" & c=$!\n\
                 wait $c; echo \"released $(date +%s.%N)\"\n",
                client = quote(client),
            )
        }
        DbLock::Commands { lock, unlock } => format!(
            "done_=0\nrelease() {{ [ \"$done_\" = 1 ] && return; done_=1; {unlock}; echo \"released $(date +%s.%N)\"; }}\n\
             trap 'release; exit 0' TERM INT HUP\n\
             if ! {lock}; then echo 'lock failed' >&2; exit 3; fi\n\
             echo \"held $(date +%s.%N)\"\nsleep {secs} & wait $!\nrelease\n"
        ),
    }
}

/// A lock or freeze being held on a host.
struct Hold {
    job: GuardedJob,
}

impl Hold {
    async fn take(
        remote: &dyn Remote,
        script: String,
        limit: Duration,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Self, ConsistencyError> {
        // The guard's own limit is a little longer than the script's sleep,
        // so the script's orderly release normally wins.
        let job = GuardedJob::start(
            remote,
            &Command::shell(script),
            limit + Duration::from_secs(5),
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
            if started.elapsed() > timeout {
                let _ = job.stop(remote).await;
                let _ = job.cleanup(remote).await;
                return Err(ConsistencyError::Acquire {
                    host: remote.host(),
                    what,
                    detail: format!("not held after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Releases (TERM → the script's trap) and returns how long it was held.
    async fn release(self, remote: &dyn Remote) -> Result<(Option<f64>, bool), RemoteError> {
        let state = self.job.stop(remote).await?;
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
        // Exit 124: the guard's limit ended it, not our TERM.
        let watchdog = matches!(state, JobState::Finished(ec2kit::ExitStatus::Code(124)));
        let _ = self.job.cleanup(remote).await;
        Ok((held, watchdog))
    }
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
    let lock = match &c.db_lock {
        Some(l) => Some(
            Hold::take(
                remote,
                lock_script(l, c.max_hold),
                c.max_hold,
                c.acquire_timeout,
                "lock the database",
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
    let result = snapshot().await;
    let mut report = HoldReport::default();
    let mut first_err = None;
    if let Some(f) = freeze {
        match f.release(remote).await {
            Ok((held, wd)) => {
                report.frozen_secs = held;
                report.released_by_watchdog |= wd;
            }
            Err(e) => first_err = Some(e),
        }
    }
    if let Some(l) = lock {
        match l.release(remote).await {
            Ok((held, wd)) => {
                report.locked_secs = held;
                report.released_by_watchdog |= wd;
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    match first_err {
        // The watchdog still releases what we could not: report, do not hide.
        Some(e) => Err(e.into()),
        None => Ok((result, report)),
    }
}
