//! Health checks, run **on each host** after the switch: an HTTP URL
//! fetched with curl there (expecting a status), or a command in the
//! release. The retry loop runs on the host too, in one command, so a
//! check costs one round trip however many attempts it takes.

use std::time::Duration;

use ec2kit::{Command, RemoteError};

use crate::environment::HealthCheck;
use crate::hooks::HookContext;
use crate::host::Host;
use crate::shell::{q, tail};

/// A failed health check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// No attempt passed before the deadline.
    #[error("unhealthy after {deadline:?}: {last}")]
    Unhealthy {
        /// The deadline.
        deadline: Duration,
        /// What the last attempt said.
        last: String,
    },
    /// The check is misconfigured.
    #[error("health check needs exactly one of `url` and `command`")]
    Invalid,
    /// The URL is not an http(s) URL.
    #[error("health check url must start with http:// or https://")]
    InvalidUrl,
    /// The host could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// The shell script of a check.
pub(crate) fn check_script(check: &HealthCheck) -> Result<String, HealthError> {
    let attempt = match (&check.url, &check.command) {
        (Some(url), None) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            return Err(HealthError::InvalidUrl);
        }
        (Some(url), None) => format!(
            "code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -- {url} 2>/dev/null) || true\n\
             \x20 [ \"$code\" = {status} ] && exit 0\n\
             \x20 last=\"HTTP status ${{code:-none}}, expected {status}\"\n",
            url = q(url),
            status = check.status,
        ),
        (None, Some(cmd)) => format!(
            "if out=$(sh -c {cmd} 2>&1); then exit 0; fi\n\
             \x20 last=\"command failed: $(printf '%s' \"$out\" | tail -c 300)\"\n",
            cmd = q(cmd),
        ),
        _ => return Err(HealthError::Invalid),
    };
    let interval = format!("{:.3}", check.interval_ms as f64 / 1000.0);
    Ok(format!(
        "end=$(( $(date +%s) + {deadline} ))\n\
         while :; do\n\
         \x20 {attempt}\
         \x20 [ \"$(date +%s)\" -ge \"$end\" ] && {{ echo \"$last\" >&2; exit 1; }}\n\
         \x20 sleep {interval}\n\
         done\n",
        deadline = check.deadline_seconds,
    ))
}

/// Runs a check on a host, in the given release.
pub async fn check(host: &Host, check: &HealthCheck, ctx: &HookContext) -> Result<(), HealthError> {
    let script = check_script(check)?;
    let deadline = Duration::from_secs(check.deadline_seconds);
    let path = ctx
        .path
        .clone()
        .unwrap_or_else(|| host.release_path(&ctx.release));
    let command = Command::shell(script)
        .cwd(path.clone())
        .env("RELEASE_PATH", path)
        .env("RELEASE", ctx.release.clone())
        .env("COMMIT", ctx.commit.clone())
        .env("ENVIRONMENT", ctx.environment.clone())
        .timeout(deadline.saturating_add(Duration::from_secs(15)));
    let out = host.run(&command).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HealthError::Unhealthy {
            deadline,
            last: tail(&out.stderr, 400),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_an_http_url_after_the_options() {
        let s = check_script(&HealthCheck::http("http://127.0.0.1:8000/up")).unwrap();
        assert!(
            s.contains("--max-time 5 -- http://127.0.0.1:8000/up"),
            "{s}"
        );
        assert!(matches!(
            check_script(&HealthCheck::http("--config=/etc/passwd")),
            Err(HealthError::InvalidUrl)
        ));
    }
}
