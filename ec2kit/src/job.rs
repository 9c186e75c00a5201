//! Guarded jobs: long-lived commands on a host whose end is guaranteed.
//!
//! A filesystem freeze must be thawed even if the SSH connection drops or
//! ektool dies. A [`GuardedJob`] is started *detached* on the host (its own
//! session, no controlling connection) under coreutils `timeout`, so the
//! host itself ends it after `limit`, whatever happens to the caller. The
//! caller can still poll it, read its output, and stop it early.
//!
//! Needs a POSIX shell, `setsid`, `nohup`, `mktemp` and GNU `timeout` on the
//! host (all in Debian's base system). The job's state lives on a tmpfs
//! (`/dev/shm`) where the host has one, so freezing a disk filesystem never
//! blocks the job's own bookkeeping.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::remote::{Command, ExitStatus, Remote, RemoteError, quote, run_checked};

/// Grace period between `timeout`'s TERM and its KILL.
const KILL_AFTER_SECS: u64 = 5;

/// The job directory on the last line of the start command's output:
/// `/…/ektool-job.<letters and digits>`, an absolute path without `.`/`..`
/// components or control characters.
fn job_dir(stdout: &str) -> Option<&str> {
    let line = stdout.lines().last()?.trim();
    let (parent, name) = line.rsplit_once('/')?;
    let suffix = name.strip_prefix("ektool-job.")?;
    let ok = line.starts_with('/')
        && !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        && !line.chars().any(char::is_control)
        && parent
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then_some(line)
}

/// At most a line of `text`, for an error message (never megabytes of a
/// host's output).
fn shorten_for_error(text: &str) -> String {
    const LIMIT: usize = 120;
    let mut out: String = text.chars().take(LIMIT).collect();
    if text.chars().nth(LIMIT).is_some() {
        out.push('…');
    }
    format!("{out:?}")
}

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
    ///
    /// The job's state directory goes on a tmpfs when the host has one the
    /// login user can write (`/dev/shm`, then `$XDG_RUNTIME_DIR`), else in
    /// `${TMPDIR:-/tmp}`: a job that freezes filesystems must not keep its
    /// own state on one of them. The job sees the directory as
    /// `$EKTOOL_JOB_DIR`.
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
            "EKTOOL_JOB_DIR=\"$1\" timeout -k {KILL_AFTER_SECS} {secs} sh -c \"$2\" & echo $! > \"$1/pid\"; wait $!; echo $? > \"$1/rc\""
        );
        let script = format!(
            "set -e; d=; \
             for b in /dev/shm \"${{XDG_RUNTIME_DIR:-}}\" \"${{TMPDIR:-/tmp}}\"; do \
             [ -n \"$b\" ] && [ -d \"$b\" ] && [ -w \"$b\" ] || continue; \
             d=$(mktemp -d \"$b/ektool-job.XXXXXX\" 2>/dev/null) && break; done; \
             [ -n \"$d\" ] || {{ echo 'no writable directory for the job state' >&2; exit 1; }}; \
             setsid nohup sh -c {guard} sh \"$d\" {inner} > \"$d/out\" 2> \"$d/err\" < /dev/null & \
             i=0; while [ ! -s \"$d/pid\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; echo \"$d\"",
            guard = quote(&guard),
            inner = quote(&command.to_shell_line()),
        );
        let shell = Command::shell(script);
        let out = run_checked(remote, &shell).await?;
        let text = out.stdout_str();
        // A login shell may print a banner (or anything) before our line:
        // only a last line naming a job directory is taken, never a
        // garbage path that state, stop and cleanup would then use.
        let dir = job_dir(&text).ok_or_else(|| RemoteError::UnexpectedOutput {
            host: remote.host(),
            command: "start a guarded job".into(),
            detail: format!(
                "expected a job directory (/…/ektool-job.XXXXXX) on the last line, got {}",
                shorten_for_error(text.trim_end())
            ),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
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
        let now = tokio::time::Instant::now();
        // Checked: a caller may pass any Duration.
        let deadline = now
            .checked_add(timeout)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{ExitStatus, MockRemote, Output};

    #[test]
    fn job_dir_is_the_last_line_and_must_look_like_one() {
        assert_eq!(
            job_dir("/dev/shm/ektool-job.Ab12Cd\n"),
            Some("/dev/shm/ektool-job.Ab12Cd")
        );
        assert_eq!(
            job_dir("Welcome to web1!\nlast login: yesterday\n/tmp/ektool-job.x1\n"),
            Some("/tmp/ektool-job.x1")
        );
        for bad in [
            "",
            "\n",
            "Welcome to web1!\n",
            "/tmp/ektool-job.x1\nmotd after the path\n",
            "/tmp/ektool-job.\n",
            "/tmp/ektool-job.a b\n",
            "/tmp/../etc/ektool-job.abc\n",
            "tmp/ektool-job.abc\n",
            "/tmp/ektool-job.abc/..\n",
            "/tmp/other.abc\n",
            "/ektool-job.abc\u{1b}\n",
        ] {
            assert_eq!(job_dir(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_start_that_prints_no_job_directory_is_an_error_not_a_path() {
        let mut remote = MockRemote::new();
        remote.expect_host().return_const("web1".to_owned());
        remote.expect_run().times(1).returning(|_| {
            Ok(Output {
                status: ExitStatus::Code(0),
                stdout: b"/tmp/ektool-job.abc\nThis system is managed by Puppet\n".to_vec(),
                stderr: vec![],
            })
        });
        let err = GuardedJob::start(&remote, &Command::argv(["true"]), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, RemoteError::UnexpectedOutput { .. }), "{err}");
        assert!(err.to_string().contains("Puppet"), "{err}");
    }

    #[tokio::test]
    async fn the_start_script_keeps_state_on_tmpfs_first_and_exports_the_dir() {
        let mut remote = MockRemote::new();
        remote.expect_host().return_const("web1".to_owned());
        remote
            .expect_run()
            .times(1)
            .withf(|c| {
                let line = c.to_shell_line();
                line.contains("/dev/shm") && line.contains("EKTOOL_JOB_DIR")
            })
            .returning(|_| {
                Ok(Output {
                    status: ExitStatus::Code(0),
                    stdout: b"/dev/shm/ektool-job.abc\n".to_vec(),
                    stderr: vec![],
                })
            });
        let job = GuardedJob::start(&remote, &Command::argv(["true"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(job.dir, "/dev/shm/ektool-job.abc");
    }
}
