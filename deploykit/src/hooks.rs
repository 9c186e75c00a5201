//! Hooks: shell commands run in a release directory at a [`Phase`], with
//! the deploy described in environment variables and a timeout each.
//!
//! | variable | value |
//! |---|---|
//! | `RELEASE_PATH` | the release directory the hook runs in |
//! | `RELEASE` | its name (`a`, `20240101120000`) |
//! | `COMMIT` | the full commit id |
//! | `TAG` | the release tag, or empty |
//! | `ENVIRONMENT` | the environment's name |
//! | `PREVIOUS_RELEASE` | the release that was live before, or empty |
//! | `DEPLOY_ROOT` | the deploy root |
//! | `SHARED_PATH` | `<root>/shared` |
//! | `DEPLOY_ACTION` | `deploy`, `rollback`, `restart` or `maintenance` |
//! | `DEPLOY_PHASE` | the phase |
//!
//! Hooks are told whether they run for a deploy or a rollback, so a
//! maintenance or migration hook can behave accordingly.
//!
//! A hook with [`roles`](Hook::roles) runs only on hosts having one of
//! them ([`Host::roles`]); one without runs on every host. [`run_phase`]
//! skips the others itself, so every operation (deploy, rollback,
//! restart, maintenance) honours roles the same way. `before_switch`
//! hooks run once per deploy, on the host the deploy picks for each
//! ([`Hook::once_on`]).

use std::time::Duration;

use ec2kit::{Command, ExitStatus, RemoteError};
use serde::{Deserialize, Serialize};

use crate::environment::{Hook, Phase};
use crate::host::Host;
use crate::shell::tail;

/// What hooks are told about the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookContext {
    /// The environment's name.
    pub environment: String,
    /// The release directory's name.
    pub release: String,
    /// The commit.
    pub commit: String,
    /// The release tag.
    pub tag: Option<String>,
    /// The release live before.
    pub previous: Option<String>,
    /// `deploy`, `rollback`, `restart`, `maintenance`.
    pub action: String,
    /// Extra variables (e.g. `MAINTENANCE=on`).
    pub extra: Vec<(String, String)>,
    /// The directory the hooks run in when it is not
    /// `<root>/releases/<release>`: after a failed first deploy onto a host
    /// whose `current` pointed outside `releases/`, the restart hooks run
    /// in `<root>/current` (that old target again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A hook that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// It exited non-zero or was killed.
    #[error("{phase} hook `{run}` failed with {status}: {output}")]
    Failed {
        /// The phase.
        phase: Phase,
        /// The command.
        run: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its output.
        output: String,
    },
    /// It ran longer than its timeout and was killed.
    #[error("{phase} hook `{run}` timed out after {after:?}")]
    Timeout {
        /// The phase.
        phase: Phase,
        /// The command.
        run: String,
        /// The timeout.
        after: Duration,
    },
    /// The host could not be reached.
    #[error(transparent)]
    Remote(RemoteError),
}

/// The command for one hook.
pub(crate) fn hook_command(host: &Host, phase: Phase, hook: &Hook, ctx: &HookContext) -> Command {
    let release_path = ctx
        .path
        .clone()
        .unwrap_or_else(|| host.release_path(&ctx.release));
    let mut c = Command::shell(hook.run.clone())
        .cwd(release_path.clone())
        .timeout(hook.timeout())
        .env("RELEASE_PATH", release_path)
        .env("RELEASE", ctx.release.clone())
        .env("COMMIT", ctx.commit.clone())
        .env("TAG", ctx.tag.clone().unwrap_or_default())
        .env("ENVIRONMENT", ctx.environment.clone())
        .env("PREVIOUS_RELEASE", ctx.previous.clone().unwrap_or_default())
        .env("DEPLOY_ROOT", host.root().to_owned())
        .env("SHARED_PATH", host.path("shared"))
        .env("DEPLOY_ACTION", ctx.action.clone())
        .env("DEPLOY_PHASE", phase.to_string());
    for (k, v) in &ctx.extra {
        c = c.env(k.clone(), v.clone());
    }
    c
}

/// The hooks of `hooks` that run on `host` (see [`Hook::runs_on`]), in
/// order.
pub fn for_host<'h>(host: &Host, hooks: &'h [Hook]) -> Vec<&'h Hook> {
    hooks.iter().filter(|h| h.runs_on(host.roles())).collect()
}

/// Where a run-once (`before_switch`) hook runs among `hosts`, given in
/// lock order: the first host having its [`once_on`](Hook::once_on) role,
/// or, without one, the first host. `None`: no host has the role (or
/// there are no hosts).
pub fn once_host(hook: &Hook, hosts: &[Host]) -> Option<usize> {
    match &hook.once_on {
        Some(role) => hosts.iter().position(|h| h.has_role(role)),
        None => (!hosts.is_empty()).then_some(0),
    }
}

/// Runs the hooks of a phase that run on `host` (those without roles, and
/// those sharing one of its roles) one after another; the first failure
/// stops.
pub async fn run_phase(
    host: &Host,
    phase: Phase,
    hooks: &[Hook],
    ctx: &HookContext,
) -> Result<(), HookError> {
    run_phase_then(host, phase, hooks, ctx, None).await
}

/// [`run_phase`], with `then` (a shell fragment) run in the last hook's
/// command once that hook has succeeded: one round trip less per host for
/// a step that must follow the hooks (the build's completion marker).
/// `then` runs in the release directory with the hooks' variables, under
/// the last hook's timeout; its failure is reported as that hook's.
pub(crate) async fn run_phase_then(
    host: &Host,
    phase: Phase,
    hooks: &[Hook],
    ctx: &HookContext,
    then: Option<&str>,
) -> Result<(), HookError> {
    run_hooks(host, phase, hooks, ctx, then).await.map(drop)
}

/// What the last hook's command prints once `finish` has succeeded.
const FINISHED: &str = "ektool-finished";

/// [`run_phase`], then `finish` (a shell script) in the last hook's
/// command once every hook has succeeded: the bookkeeping that follows a
/// rollback's restart costs no round trip of its own. Unlike
/// [`run_phase_then`], a failing `finish` never fails the hooks: it
/// returns `Ok(false)` (as do no hooks), and the caller runs `finish` on
/// its own.
pub(crate) async fn run_phase_and_finish(
    host: &Host,
    phase: Phase,
    hooks: &[Hook],
    ctx: &HookContext,
    finish: &str,
) -> Result<bool, HookError> {
    let then = format!("if ( {finish}\n) >&2; then echo {FINISHED}; fi");
    let last = run_hooks(host, phase, hooks, ctx, Some(&then)).await?;
    Ok(last.is_some_and(|out| {
        out.stdout
            .strip_suffix(b"\n")
            .is_some_and(|s| s.ends_with(FINISHED.as_bytes()))
    }))
}

/// Runs `hooks` in order, `then` in the last one's command; returns the
/// last command's output (`None`: no hooks).
async fn run_hooks(
    host: &Host,
    phase: Phase,
    hooks: &[Hook],
    ctx: &HookContext,
    then: Option<&str>,
) -> Result<Option<ec2kit::Output>, HookError> {
    // Only the hooks for the host's roles.
    let hooks = for_host(host, hooks);
    let mut last = None;
    for (i, hook) in hooks.iter().enumerate() {
        let mut command = hook_command(host, phase, hook, ctx);
        if let Some(then) = then.filter(|_| i + 1 == hooks.len()) {
            // The hook in a shell of its own, exactly as it runs alone: its
            // `exit`, `cd` or `set` cannot skip or change what follows, and
            // its `set -e` still works (a subshell on the left of `||`
            // would run with `set -e` ignored).
            command.program = ec2kit::Program::Shell(format!(
                "sh -c {} || exit $?\n{then}",
                crate::shell::q(&hook.run)
            ));
        }
        let out = match host.run(&command).await {
            Ok(out) => out,
            Err(RemoteError::Timeout { after, .. }) => {
                return Err(HookError::Timeout {
                    phase,
                    run: hook.run.clone(),
                    after,
                });
            }
            Err(e) => return Err(HookError::Remote(e)),
        };
        if !out.status.success() {
            let mut output = out.stderr.clone();
            if output.iter().all(u8::is_ascii_whitespace) {
                output = out.stdout.clone();
            }
            return Err(HookError::Failed {
                phase,
                run: hook.run.clone(),
                status: out.status,
                output: tail(&output, 800),
            });
        }
        last = Some(out);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ctx() -> HookContext {
        HookContext {
            environment: "test".into(),
            release: "r1".into(),
            commit: "c".into(),
            tag: None,
            previous: None,
            action: "deploy".into(),
            extra: Vec::new(),
            path: None,
        }
    }

    /// What `run_phase_then` returns for `hooks`, and whether `then` ran.
    async fn then_after(hooks: &[&str]) -> (bool, bool) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("releases/r1")).unwrap();
        let host = Host::new(
            Arc::new(ec2kit::LocalRemote::new()),
            dir.path().display().to_string(),
        );
        let hooks: Vec<Hook> = hooks.iter().map(|h| Hook::new(*h)).collect();
        let ok = run_phase_then(&host, Phase::Build, &hooks, &ctx(), Some("touch then-ran"))
            .await
            .is_ok();
        (ok, dir.path().join("releases/r1/then-ran").exists())
    }

    #[tokio::test]
    async fn then_runs_only_after_the_last_hook_succeeds_as_it_would_alone() {
        assert_eq!(then_after(&["true", "echo built > b"]).await, (true, true));
        // `set -e` keeps working in the hook that `then` follows.
        assert_eq!(
            then_after(&["set -e\nfalse\necho on"]).await,
            (false, false)
        );
        assert_eq!(then_after(&["exit 3"]).await, (false, false));
        assert_eq!(then_after(&["false", "true"]).await, (false, false));
        // The hook's own syntax cannot reach `then`.
        assert_eq!(then_after(&["false ) ; ( true"]).await, (false, false));
        assert_eq!(then_after(&["cd /; exit 0"]).await, (true, true));
        assert_eq!(then_after(&["# nothing to do"]).await, (true, true));
    }
}
