//! Guarded jobs: long-lived commands on a host whose end is guaranteed.
//!
//! A filesystem freeze must be thawed even if the SSH connection drops or
//! ektool dies. A [`GuardedJob`] is started *detached* on the host (its own
//! session, no controlling connection) under coreutils `timeout`, so the
//! host itself ends it after `limit`, whatever happens to the caller. The
//! caller can still poll it, read its output, and stop it early.
//!
//! Needs a POSIX shell, `setsid`, `nohup`, `mktemp` and GNU `timeout` on the
//! host (all in Debian's base system).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::remote::{Command, ExitStatus, Remote, RemoteError, quote, run_checked};

/// Grace period between `timeout`'s TERM and its KILL.
const KILL_AFTER_SECS: u64 = 5;

/// A job started by [`GuardedJob::start`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardedJob {
    /// The job's state directory on the host (pid, exit code, output).
    pub dir: String,
    /// The hard limit after which the host ends the job.
    pub limit: Duration,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Still running.
    Running,
    /// Finished with this status; `124` means the limit ended it.
    Finished(ExitStatus),
    /// Gone without leaving a status (killed together with its guard).
    Vanished,
}

impl GuardedJob {
    /// Starts `command` detached on the host, ended by the host after `limit`.
    pub async fn start(
        remote: &dyn Remote,
        command: &Command,
        limit: Duration,
    ) -> Result<Self, RemoteError> {
        let secs = limit.as_secs().max(1);
        // The guard shell records timeout's pid (to stop it early) and its
        // exit code (124 when the limit struck); timeout runs the job in
        // its own process group and kills that whole group.
        let guard = format!(
            "timeout -k {KILL_AFTER_SECS} {secs} sh -c \"$2\" & echo $! > \"$1/pid\"; wait $!; echo $? > \"$1/rc\""
        );
        let script = format!(
            "set -e; d=$(mktemp -d \"${{TMPDIR:-/tmp}}/ektool-job.XXXXXX\"); \
             setsid nohup sh -c {guard} sh \"$d\" {inner} > \"$d/out\" 2> \"$d/err\" < /dev/null & \
             i=0; while [ ! -s \"$d/pid\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; echo \"$d\"",
            guard = quote(&guard),
            inner = quote(&command.to_shell_line()),
        );
        let out = run_checked(remote, &Command::shell(script)).await?;
        let dir = out.stdout_str().trim().to_owned();
        Ok(Self {
            dir,
            limit: Duration::from_secs(secs),
        })
    }

    /// Where the job is now.
    pub async fn state(&self, remote: &dyn Remote) -> Result<JobState, RemoteError> {
        let d = quote(&self.dir);
        // `timeout` (the pid) exits a moment before its guard shell writes
        // `rc`: a dead pid without `rc` gets a second to show one before
        // the job counts as vanished.
        let script = format!(
            "if [ -f {d}/rc ]; then echo rc $(cat {d}/rc); \
             elif [ -s {d}/pid ] && kill -0 $(cat {d}/pid) 2>/dev/null; then echo running; \
             else i=0; while [ ! -f {d}/rc ] && [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; \
             if [ -f {d}/rc ]; then echo rc $(cat {d}/rc); else echo vanished; fi; fi"
        );
        let out = run_checked(remote, &Command::shell(script)).await?;
        let text = out.stdout_str();
        let text = text.trim();
        Ok(match text.strip_prefix("rc ") {
            Some(code) => JobState::Finished(
                code.trim()
                    .parse()
                    .map(ExitStatus::Code)
                    .unwrap_or(ExitStatus::Unknown),
            ),
            None if text == "running" => JobState::Running,
            None => JobState::Vanished,
        })
    }

    /// Polls until the job ends or `timeout` passes (then `Ok(None)`).
    pub async fn wait(
        &self,
        remote: &dyn Remote,
        poll: Duration,
        timeout: Duration,
    ) -> Result<Option<JobState>, RemoteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.state(remote).await? {
                JobState::Running => {}
                done => return Ok(Some(done)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Stops the job early (TERM to the guard's `timeout`, which passes it
    /// on to the job's process group) and waits briefly for it to end.
    pub async fn stop(&self, remote: &dyn Remote) -> Result<JobState, RemoteError> {
        let d = quote(&self.dir);
        let script = format!("[ -s {d}/pid ] && kill -TERM $(cat {d}/pid) 2>/dev/null; true");
        run_checked(remote, &Command::shell(script)).await?;
        let waited = self
            .wait(
                remote,
                Duration::from_millis(100),
                Duration::from_secs(KILL_AFTER_SECS + 2),
            )
            .await?;
        Ok(waited.unwrap_or(JobState::Running))
    }

    /// The job's standard output so far.
    pub async fn stdout(&self, remote: &dyn Remote) -> Result<Vec<u8>, RemoteError> {
        remote.read_file(&format!("{}/out", self.dir)).await
    }

    /// The job's standard error so far.
    pub async fn stderr(&self, remote: &dyn Remote) -> Result<Vec<u8>, RemoteError> {
        remote.read_file(&format!("{}/err", self.dir)).await
    }

    /// Removes the job's state directory (after it ended).
    pub async fn cleanup(&self, remote: &dyn Remote) -> Result<(), RemoteError> {
        run_checked(remote, &Command::argv(["rm", "-rf", "--", &self.dir]))
            .await
            .map(|_| ())
    }
}
