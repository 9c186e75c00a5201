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

/// The command that points `current` at `release`.
pub(crate) fn switch_command(host: &Host, release: &str, token: &str) -> Command {
    let rel = format!("releases/{release}");
    let tmp = format!(".current.{token}");
    Command::shell(format!(
        "cd {root} && test -f {marker} || {{ echo \"release {release} is not complete\" >&2; exit 3; }}\n\
         ln -s {rel} {tmp} && mv -T {tmp} current || {{ rm -f {tmp}; exit 1; }}",
        root = q(host.root()),
        marker = q(&format!("{rel}/{MARKER}")),
        release = q(release),
        rel = q(&rel),
        tmp = q(&tmp),
    ))
}

/// Points `current` at `release`.
pub(crate) async fn switch(host: &Host, release: &str, token: &str) -> Result<(), RemoteError> {
    host.run_checked(&switch_command(host, release, token))
        .await
        .map(|_| ())
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
        let c = switch_command(&host, "20240101000000", "tok");
        let text = c.to_string();
        assert!(
            text.contains(
                "ln -s releases/20240101000000 .current.tok && mv -T .current.tok current"
            ),
            "{text}"
        );
        assert!(!text.contains("ln -sf"), "{text}");
        assert!(!text.contains("rm -f current"), "{text}");
    }
}
