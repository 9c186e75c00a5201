//! The atomic switch of `current`.
//!
//! A new symlink is created under a temporary name **in the deploy root**
//! (same directory, same filesystem) and renamed over `current` with
//! `mv -T`, i.e. `rename(2)`: every reader sees the old release or the new
//! one, never a missing link (`ln -sfn` is unlink + symlink, with a window
//! in between). The target is relative (`releases/<name>`), so the link
//! survives the root being mounted elsewhere. The script refuses a release
//! without its completion marker, so a half-built release can never go
//! live, whatever the caller does.

use std::time::Duration;

use ec2kit::{Command, RemoteError};

use crate::host::Host;
use crate::release::MARKER;
use crate::shell::q;

/// The longest a scheduled switch waits on a host for its moment, whatever
/// the host's clock says: a host whose clock is behind would otherwise
/// sleep by its lag while the others already serve the new release.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3);

/// The command that points `current` at `release`, at `at_ns` (Unix
/// nanoseconds, by the host's clock) if given, and prints the host's clock
/// right after the rename.
///
/// Scheduling is how every host flips at (nearly) the same moment: the
/// commands are sent together with a moment slightly in the future, each
/// host prepares the temporary link, sleeps until then and renames. The
/// spread is then the hosts' clock skew (NTP: milliseconds), not the
/// spread of command start-up times. A host whose command starts late
/// switches at once; a host whose clock is behind waits at most
/// [`MAX_WAIT`].
pub(crate) fn switch_command(
    host: &Host,
    release: &str,
    token: &str,
    at_ns: Option<i128>,
    timeout: Duration,
) -> Command {
    let rel = format!("releases/{release}");
    let wait = match at_ns {
        Some(at) => format!(
            "d=$(( ({at} - $(date +%s%N)) / 1000000 ))\n\
             if [ \"$d\" -gt {max} ]; then d={max}; fi\n\
             if [ \"$d\" -gt 0 ]; then sleep \"$((d / 1000)).$(printf %03d $((d % 1000)))\"; fi\n",
            max = MAX_WAIT.as_millis(),
        ),
        None => String::new(),
    };
    let check = format!(
        "test -f {marker} || {{ echo \"release {release} is not complete\" >&2; exit 3; }}\n",
        marker = q(&format!("{rel}/{MARKER}")),
        release = q(release),
    );
    link_command(host, &rel, token, &check, &wait, timeout)
}

/// The command that makes `current` a link to `target` (exactly that
/// text), by a rename of a temporary link in the deploy root: `rename(2)`
/// replaces whatever `current` is (a planted link included) without
/// following it.
fn link_command(
    host: &Host,
    target: &str,
    token: &str,
    check: &str,
    wait: &str,
    timeout: Duration,
) -> Command {
    let tmp = format!(".current.{token}");
    Command::shell(format!(
        "cd {root} || exit 1\n\
         {check}\
         rm -f {tmp} && ln -s {target} {tmp} || exit 1\n\
         {wait}\
         mv -T {tmp} current || {{ rm -f {tmp}; exit 1; }}\n\
         date +%s%N",
        root = q(host.root()),
        target = q(target),
        tmp = q(&tmp),
    ))
    .timeout(timeout + MAX_WAIT)
}

/// Points `current` at `release` (at `at_ns`, see [`switch_command`]).
/// Returns the host's clock (Unix nanoseconds) right after the rename.
pub(crate) async fn switch(
    host: &Host,
    release: &str,
    token: &str,
    at_ns: Option<i128>,
    timeout: Duration,
) -> Result<Option<i128>, RemoteError> {
    let out = host
        .run_checked(&switch_command(host, release, token, at_ns, timeout))
        .await?;
    Ok(out.stdout_str().trim().parse().ok())
}

/// Puts `current` back to exactly `link` (the raw target it had: relative
/// or absolute, one of ektool's releases or another tool's directory).
pub(crate) async fn restore(
    host: &Host,
    link: &str,
    token: &str,
    timeout: Duration,
) -> Result<(), RemoteError> {
    host.run_checked(&link_command(host, link, token, "", "", timeout))
        .await
        .map(|_| ())
}

/// Unix nanoseconds now, by this machine's clock.
pub(crate) fn now_ns() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// Removes `current` if it still points at `release` (undoing the very
/// first deploy of a host, which had no `current` at all).
pub(crate) async fn unset(
    host: &Host,
    release: &str,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let script = format!(
        "cd {root} && if [ \"$(readlink current 2>/dev/null)\" = {rel} ]; then rm -f current; fi",
        root = q(host.root()),
        rel = q(&format!("releases/{release}")),
    );
    host.run_checked(&Command::shell(script).timeout(timeout))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn switch_is_a_rename_of_a_relative_temporary_link() {
        let host = Host::new(Arc::new(ec2kit::LocalRemote::new()), "/srv/app");
        let c = switch_command(
            &host,
            "20240101000000",
            "tok",
            Some(1_700_000_000_000_000_000),
            Duration::from_secs(30),
        );
        let text = c.to_string();
        assert!(
            text.contains("ln -s releases/20240101000000 .current.tok"),
            "{text}"
        );
        assert!(text.contains("mv -T .current.tok current"), "{text}");
        assert!(
            text.contains("1700000000000000000 - $(date +%s%N)"),
            "{text}"
        );
        assert!(!text.contains("ln -sf"), "{text}");
        assert!(!text.contains("rm -f current"), "{text}");
        assert!(c.timeout.is_some());
    }

    /// A host whose clock is an hour behind still switches within
    /// `MAX_WAIT` of its command starting (the scheduled moment is an hour
    /// ahead by its clock).
    #[tokio::test]
    async fn a_host_whose_clock_is_behind_waits_at_most_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("releases/r1")).unwrap();
        std::fs::write(root.join("releases/r1").join(MARKER), "{}").unwrap();
        let host = Host::new(
            Arc::new(ec2kit::LocalRemote::new()),
            root.display().to_string(),
        );
        let an_hour_ahead = now_ns() + 3600 * 1_000_000_000;
        let text = switch_command(
            &host,
            "r1",
            "tok",
            Some(an_hour_ahead),
            Duration::from_secs(1),
        )
        .to_string();
        assert!(
            text.contains(&format!("d={}", MAX_WAIT.as_millis())),
            "{text}"
        );
        // The command's own timeout (1 s + the bound) would kill a longer sleep.
        switch(
            &host,
            "r1",
            "tok",
            Some(an_hour_ahead),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_link(root.join("current")).unwrap(),
            std::path::Path::new("releases/r1")
        );
    }
}
