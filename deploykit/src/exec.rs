//! A command in the live release of every host, in parallel: `manage.py
//! migrate` or `rake db:seed` across a fleet (`ektool run --env E -- CMD`).
//!
//! On each host the command runs in `<root>/current` (the release it points
//! to), with the variables hooks get that make sense outside a deploy:
//!
//! | variable | value |
//! |---|---|
//! | `RELEASE_PATH` | the live release's directory (`current` resolved) |
//! | `RELEASE` | its name |
//! | `ENVIRONMENT` | the environment's name |
//! | `DEPLOY_ROOT` | the deploy root |
//! | `SHARED_PATH` | `<root>/shared` |
//! | `DEPLOY_ACTION` | `run` |
//!
//! The arguments are passed as words, each quoted for the remote shell: what
//! is given is what runs (`sh -c '…'` for shell syntax). One SSH command a
//! host; a host without a live release, unreachable, or past the deadline is
//! reported and the others go on.
//!
//! Each host's run is recorded in its audit file ([`crate::audit`]): who,
//! when, the command's words, its exit code (or why it did not run), by a
//! second command once the first has ended (nothing on a host without the
//! deploy root). An append that fails is
//! reported in [`HostRun::audit_error`]; the run's result stands.

use std::time::Duration;

use ec2kit::{Command, ExitStatus};
use futures::StreamExt;
use serde::Serialize;

use crate::audit::{self, AuditAction, AuditEntry, AuditResult};
use crate::host::{Actor, Host};
use crate::shell::{q, tail};

/// What to run, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Exec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The environment's name (`ENVIRONMENT`).
    pub environment: String,
    /// How long the command may take on each host.
    pub timeout: Duration,
    /// Only on one host (a migration, a one-off task): the first in lock
    /// order (by name, then root), the host a deploy's run-once hooks
    /// pick; narrow the hosts by role first for the first host of a role,
    /// as a `before_switch` hook's `once_on` does.
    pub once: bool,
    /// Hosts worked on at once.
    pub concurrency: usize,
    /// Who runs it (recorded in each host's audit file).
    pub who: Actor,
}

impl Exec {
    /// `argv` in `environment`'s live releases, on every host, 10 minutes
    /// each, 16 hosts at a time.
    pub fn new(environment: impl Into<String>, argv: Vec<String>) -> Self {
        Self {
            argv,
            environment: environment.into(),
            timeout: Duration::from_secs(600),
            once: false,
            concurrency: 16,
            who: Actor::current(),
        }
    }

    /// The shell script one host runs.
    fn script(&self, host: &Host) -> String {
        let words: Vec<String> = self.argv.iter().map(|a| q(a)).collect();
        format!(
            "cd {current} 2>/dev/null || {{ echo {missing} >&2; exit {NO_RELEASE}; }}\n\
             RELEASE_PATH=$(pwd -P); RELEASE=${{RELEASE_PATH##*/}}\n\
             ENVIRONMENT={env}; DEPLOY_ROOT={root}; SHARED_PATH={shared}; DEPLOY_ACTION=run\n\
             export RELEASE_PATH RELEASE ENVIRONMENT DEPLOY_ROOT SHARED_PATH DEPLOY_ACTION\n\
             exec {words}",
            current = q(&host.path("current")),
            missing = q(NO_RELEASE_TEXT),
            env = q(&self.environment),
            root = q(host.root()),
            shared = q(&host.path("shared")),
            words = words.join(" "),
        )
    }
}

/// The exit code and the line of the script when `current` is missing.
const NO_RELEASE: i32 = 97;
const NO_RELEASE_TEXT: &str = "ektool: no live release (current is missing)";

/// How much of each stream a report keeps (the end of it).
const KEEP_BYTES: usize = 1 << 20;

/// How the command ended on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HostRun {
    /// The host.
    pub host: String,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Its standard output (the last megabyte).
    pub stdout: String,
    /// Its standard error (the last megabyte).
    pub stderr: String,
    /// Why it did not run or finish: no live release, a signal, the
    /// deadline, an unreachable host.
    pub error: Option<String>,
    /// Why the run could not be recorded in the host's audit file (the
    /// run's result stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_error: Option<String>,
}

impl HostRun {
    /// Whether the command ran and exited 0.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.exit_code == Some(0)
    }
}

/// Every host's run, in the order of the hosts given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExecReport {
    /// One per host the command was sent to.
    pub hosts: Vec<HostRun>,
}

impl ExecReport {
    /// The hosts where it did not run or did not exit 0.
    pub fn failed(&self) -> impl Iterator<Item = &HostRun> {
        self.hosts.iter().filter(|h| !h.ok())
    }

    /// Whether it ran and exited 0 everywhere.
    pub fn ok(&self) -> bool {
        self.failed().next().is_none()
    }
}

/// Runs `exec` on `hosts` (on the first in lock order only with
/// [`Exec::once`]), at most [`Exec::concurrency`] at once; `on_done` sees
/// each host's run as it ends.
pub async fn run(hosts: &[Host], exec: &Exec, on_done: &(dyn Fn(&HostRun) + Sync)) -> ExecReport {
    let hosts = if exec.once {
        match hosts
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| (a.name(), a.root()).cmp(&(b.name(), b.root())))
        {
            Some((i, _)) => &hosts[i..=i],
            None => hosts,
        }
    } else {
        hosts
    };
    let mut runs: Vec<(usize, HostRun)> = futures::stream::iter(hosts.iter().enumerate())
        .map(|(i, host)| async move {
            let run = run_one(host, exec).await;
            on_done(&run);
            (i, run)
        })
        .buffer_unordered(exec.concurrency.max(1))
        .collect()
        .await;
    runs.sort_by_key(|(i, _)| *i);
    ExecReport {
        hosts: runs.into_iter().map(|(_, run)| run).collect(),
    }
}

async fn run_one(host: &Host, exec: &Exec) -> HostRun {
    let command = Command::shell(exec.script(host)).timeout(exec.timeout);
    let mut run = HostRun {
        host: host.name().to_owned(),
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        audit_error: None,
    };
    let mut entry = AuditEntry::new(
        AuditAction::Run,
        exec.who.clone(),
        &exec.environment,
        exec.argv.join(" "),
    );
    entry.host = host.name().to_owned();
    match host.remote().run(&command).await {
        Ok(out) => {
            run.stdout = tail(&out.stdout, KEEP_BYTES);
            run.stderr = tail(&out.stderr, KEEP_BYTES);
            match out.status {
                ExitStatus::Code(NO_RELEASE)
                    if run.stderr.trim_end().ends_with(NO_RELEASE_TEXT) =>
                {
                    run.error = Some(format!(
                        "no live release: {} is missing",
                        host.path("current")
                    ));
                }
                ExitStatus::Code(code) => run.exit_code = Some(code),
                other => run.error = Some(format!("ended with {other}")),
            }
        }
        Err(e) => run.error = Some(crate::shell::describe(&e)),
    }
    entry.argv = Some(exec.argv.clone());
    entry.exit_code = run.exit_code;
    entry.result = Some(if run.ok() {
        AuditResult::Success
    } else {
        AuditResult::Failed
    });
    entry.message = run.error.clone();
    if let Err(e) = audit::append(host, &[entry], false, AUDIT_TIMEOUT).await {
        run.audit_error = Some(crate::shell::describe(&e));
    }
    run
}

/// The deadline of the audit append after a run.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_words_and_variables_are_quoted() {
        let host = Host::new(
            std::sync::Arc::new(ec2kit::LocalRemote::new()),
            "/srv/my app",
        );
        let exec = Exec::new("prod's", vec!["echo".into(), "$HOME; rm -rf /".into()]);
        let script = exec.script(&host);
        assert!(script.contains("cd '/srv/my app/current'"), "{script}");
        assert!(script.contains("ENVIRONMENT='prod'\\''s'"), "{script}");
        assert!(script.ends_with("exec echo '$HOME; rm -rf /'"), "{script}");
    }
}
