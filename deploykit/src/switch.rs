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

use ec2kit::{Command, RemoteError};

use crate::host::Host;
use crate::release::MARKER;
use crate::shell::q;

/// The command that points `current` at `release`, at `at_ns` (Unix
/// nanoseconds, by the host's clock) if given, and prints the host's clock
/// right after the rename.
///
/// Scheduling is how every host flips at (nearly) the same moment: the
/// commands are sent together with a moment slightly in the future, each
/// host prepares the temporary link, sleeps until then and renames. The
/// spread is then the hosts' clock skew (NTP: milliseconds), not the
/// spread of command start-up times. A host whose command starts late
/// switches at once.
pub(crate) fn switch_command(
    host: &Host,
    release: &str,
    token: &str,
    at_ns: Option<i128>,
) -> Command {
    let rel = format!("releases/{release}");
    let tmp = format!(".current.{token}");
    let wait = match at_ns {
        Some(at) => format!(
            "d=$(( ({at} - $(date +%s%N)) / 1000000 ))\n\
             if [ \"$d\" -gt 0 ]; then sleep \"$((d / 1000)).$(printf %03d $((d % 1000)))\"; fi\n"
        ),
        None => String::new(),
    };
    Command::shell(format!(
        "cd {root} && test -f {marker} || {{ echo \"release {release} is not complete\" >&2; exit 3; }}\n\
         rm -f {tmp} && ln -s {rel} {tmp} || exit 1\n\
         {wait}\
         mv -T {tmp} current || {{ rm -f {tmp}; exit 1; }}\n\
         date +%s%N",
        root = q(host.root()),
        marker = q(&format!("{rel}/{MARKER}")),
        release = q(release),
        rel = q(&rel),
        tmp = q(&tmp),
    ))
}

/// Points `current` at `release` (at `at_ns`, see [`switch_command`]).
/// Returns the host's clock (Unix nanoseconds) right after the rename.
pub(crate) async fn switch(
    host: &Host,
    release: &str,
    token: &str,
    at_ns: Option<i128>,
) -> Result<Option<i128>, RemoteError> {
    let out = host
        .run_checked(&switch_command(host, release, token, at_ns))
        .await?;
    Ok(out.stdout_str().trim().parse().ok())
}

/// Unix nanoseconds now, by this machine's clock.
pub(crate) fn now_ns() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// Removes `current` if it still points at `release` (undoing the very
/// first deploy of a host, which had nothing to switch back to).
pub(crate) async fn unset(host: &Host, release: &str) -> Result<(), RemoteError> {
    let script = format!(
        "cd {root} && if [ \"$(readlink current 2>/dev/null)\" = {rel} ]; then rm -f current; fi",
        root = q(host.root()),
        rel = q(&format!("releases/{release}")),
    );
    host.run_checked(&Command::shell(script)).await.map(|_| ())
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
    }
}
