//! The CLI's error: every library error, plus what only the CLI knows, each
//! mapped to an exit code.

use std::error::Error as _;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::exit;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad command-line input caught after parsing.
    #[error("{0}")]
    Usage(String),
    /// The configuration file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A region name did not resolve.
    #[error(transparent)]
    Region(#[from] ec2kit::RegionError),
    /// An EC2 call failed.
    #[error(transparent)]
    Ec2(#[from] ec2kit::Ec2Error),
    /// A host failed.
    #[error(transparent)]
    Remote(#[from] ec2kit::RemoteError),
    /// A KMS key cannot encrypt snapshot copies.
    #[error(transparent)]
    Kms(#[from] snapkit::replicate::KmsCheckError),
    /// A vault copy could not be planned.
    #[error(transparent)]
    Vault(#[from] snapkit::vault::VaultError),
    /// Mounting or unmounting a snapshot failed.
    #[error(transparent)]
    Mount(#[from] snapkit::mount::MountError),
    /// A file-level sync failed.
    #[error(transparent)]
    Sync(#[from] snapkit::rsync::SyncError),
    /// An environment's hosts could not be resolved.
    #[error(transparent)]
    Hosts(#[from] deploykit::hosts::HostsError),
    /// A deploy operation failed.
    #[error(transparent)]
    Deploy(#[from] deploykit::DeployError),
    /// What to deploy could not be resolved, or a git rule refused it.
    #[error(transparent)]
    Git(#[from] deploykit::GitError),
    /// Provisioning failed.
    #[error(transparent)]
    Provision(#[from] deploykit::ProvisionError),
    /// A database chore failed.
    #[error(transparent)]
    Db(#[from] deploykit::db::DbError),
    /// Some items of a fleet job failed; the others were done and reported.
    #[error("{failed} of {total} {what} failed")]
    Partial {
        /// How many failed.
        failed: usize,
        /// Out of how many.
        total: usize,
        /// What the items are ("regions", "hosts").
        what: &'static str,
    },
    /// A command's own failure, already explained.
    #[error("{0}")]
    Failed(String),
    /// Local I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// Whether this is a write to a standard output whose reader went
    /// away: not worth a message (see [`crate::output`]).
    pub(crate) fn is_closed_pipe(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::Region(_) => exit::USAGE,
            Self::Deploy(e) if e.is_input_error() => exit::USAGE,
            Self::Git(e) if e.is_input_error() => exit::USAGE,
            Self::Provision(e) if provision_refused(e) => exit::USAGE,
            // What the config or --host says; an EC2 failure is not.
            Self::Hosts(e) => match e {
                deploykit::hosts::HostsError::Ec2 { .. } => exit::FAILURE,
                // The target group's API failed; a missing client is the
                // user's setup.
                deploykit::hosts::HostsError::LoadBalancer(
                    deploykit::balancer::BalancerError::Api { .. },
                ) => exit::FAILURE,
                _ => exit::USAGE,
            },
            Self::Db(deploykit::db::DbError::Protected { .. }) => exit::USAGE,
            Self::Vault(snapkit::vault::VaultError::SameAccount(_)) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// Whether a provision error is the user's input or a refusal (exit 2):
/// nothing was changed.
fn provision_refused(e: &deploykit::ProvisionError) -> bool {
    use deploykit::ProvisionError;
    matches!(
        e,
        ProvisionError::Invalid(_)
            | ProvisionError::NoHosts
            | ProvisionError::NoSecrets { .. }
            | ProvisionError::SecretsOnlyRemote { .. }
            | ProvisionError::LockOut(_)
            | ProvisionError::Tree { .. }
            | ProvisionError::TreeLink { .. }
            | ProvisionError::Refused { .. }
    )
}

/// The EC2 error that refused this run's credentials, if that is what
/// ended it (`UnauthorizedOperation`, `AccessDenied`, ...), wherever it
/// sits in the chain.
fn access_denied(err: &CliError) -> Option<&ec2kit::Ec2Error> {
    use ec2kit::{Ec2Error, ErrorKind};
    let first: &(dyn std::error::Error + 'static) = match err {
        // `transparent` forwards `source()` past the wrapped error itself.
        CliError::Ec2(e) => e,
        CliError::Deploy(e) => e,
        CliError::Mount(e) => e,
        CliError::Sync(e) => e,
        CliError::Kms(e) => e,
        CliError::Vault(e) => e,
        CliError::Provision(e) => e,
        CliError::Hosts(e) => e,
        other => other,
    };
    let mut next = Some(first);
    while let Some(e) = next {
        if let Some(ec2) = e.downcast_ref::<Ec2Error>()
            && ec2.kind == ErrorKind::AccessDenied
        {
            return Some(ec2);
        }
        next = e.source();
    }
    None
}

/// What to do about an error, for the person at the terminal: the hints
/// that name ektool's own commands and flags, which the libraries leave
/// out. `policy` is the command as typed (`snap backup`) when it has an
/// IAM policy of its own (`ektool iam-policy snap backup`).
pub(crate) fn hint(err: &CliError, policy: Option<&str>) -> Option<String> {
    use deploykit::{DeployError, GitError, ProvisionError};
    let fixed = match err {
        CliError::Provision(ProvisionError::Locked { lock, path }) => {
            return Some(if lock.stale.is_some() {
                format!(
                    "hint: if no run holds it any more, remove it: `ektool deploy unlock` for a deploy's lock, `rm -r {path}` on the host for a provision's"
                )
            } else {
                "hint: wait for it with --lock-wait, e.g. --lock-wait 10m".to_owned()
            });
        }
        CliError::Deploy(DeployError::Locked { lock })
            if lock.owner.as_ref().is_some_and(|o| o.hand_held) =>
        {
            Some("hint: it was locked by hand (`ektool lock`); `ektool unlock` releases it")
        }
        CliError::Deploy(DeployError::NotHandHeld { lock }) if lock.stale.is_some() => {
            Some("hint: a lock left by a killed run is removed with `ektool deploy unlock`")
        }
        CliError::Deploy(DeployError::NotHandHeld { .. }) => {
            Some("hint: wait for that run to finish; `ektool unlock` only releases `ektool lock`'s")
        }
        CliError::Deploy(DeployError::Locked { lock }) if lock.stale.is_some() => {
            Some("hint: remove it with `ektool deploy unlock` (add --force if it is not stale)")
        }
        CliError::Deploy(DeployError::Locked { .. }) => {
            Some("hint: wait for it with --lock-wait (e.g. 5m)")
        }
        CliError::Deploy(DeployError::LockNotStale { .. }) => {
            Some("hint: if you are sure that deploy is dead, use `ektool deploy unlock --force`")
        }
        CliError::Deploy(DeployError::RollbackTargetMissing { .. }) => {
            Some("hint: name a release with --to, or deploy it there first")
        }
        CliError::Git(GitError::TagRequired { .. }) => {
            Some("hint: tag it with --tag next-patch, or pass --allow-untagged to override")
        }
        CliError::Git(GitError::NotSemver(_)) => {
            Some("hint: name the new tag with --tag <name> instead of a bump")
        }
        CliError::Db(deploykit::db::DbError::Protected { .. }) => {
            Some("hint: pass --allow-production if you really mean it")
        }
        _ => None,
    };
    if let Some(h) = fixed {
        return Some(h.to_owned());
    }
    if let Some(h) = snap_hint(err) {
        return Some(h);
    }
    let e = access_denied(err)?;
    let policy = match policy {
        Some(command) => format!("ektool iam-policy {command}"),
        None => "ektool iam-policy".to_owned(),
    };
    Some(format!(
        "hint: these credentials may not call {}; the least-privilege policy for this command is printed by `{policy}`",
        e.action.iam_action()
    ))
}

/// The hints for snapkit's errors: what ektool command deals with it.
fn snap_hint(err: &CliError) -> Option<String> {
    use snapkit::mount::{MountError, Rollback};
    match err {
        CliError::Mount(MountError::Aborted {
            rollback: Rollback::LeftBehind { .. },
            ..
        }) => Some("hint: `ektool snap cleanup` removes it (it keeps its mount tags)".to_owned()),
        CliError::Mount(MountError::NotOurs { .. }) => {
            Some("hint: `ektool snap unmount` only undoes what `ektool snap mount` made".to_owned())
        }
        _ => None,
    }
}

/// Prints the error, its whole source chain and a hint to stderr (see
/// [`hint`] for `policy`).
pub(crate) fn report_with_hint(err: &CliError, policy: Option<&str>) {
    report(err);
    if let Some(h) = hint(err, policy) {
        eprintln!("{h}");
    }
}

/// Prints the error and its whole source chain to stderr.
pub(crate) fn report(err: &CliError) {
    let mut msg = format!("error: {err}");
    // `transparent` variants forward `source()` to the inner error, so the
    // chain starts below what the message already said.
    let mut source = err.source();
    let mut last = err.to_string();
    while let Some(s) = source {
        let text = s.to_string();
        // SDK errors often repeat themselves one level down; skip echoes.
        if !last.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        last = text;
        source = s.source();
    }
    if let CliError::Ec2(e) = err
        && e.kind == ec2kit::ErrorKind::Credentials
    {
        msg.push_str(
            "\n  hint: give ektool credentials: --profile or AWS_PROFILE (after `aws sso login` for SSO profiles), or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        );
    }
    eprintln!("{msg}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn lock(stale: Option<&str>) -> Box<deploykit::lock::HeldLock> {
        Box::new(deploykit::lock::HeldLock {
            host: "web1".into(),
            owner: None,
            age_seconds: 30,
            stale: stale.map(str::to_owned),
            checksum: "none".into(),
        })
    }

    /// The libraries state facts; the flags to type come from the CLI.
    #[test]
    fn hints_name_the_flags_the_library_errors_leave_out() {
        use deploykit::{DeployError, GitError};
        let cases: Vec<(CliError, &str)> = vec![
            (
                DeployError::Locked { lock: lock(None) }.into(),
                "--lock-wait",
            ),
            (
                DeployError::Locked {
                    lock: lock(Some("its process is gone")),
                }
                .into(),
                "`ektool deploy unlock`",
            ),
            (
                DeployError::LockNotStale { lock: lock(None) }.into(),
                "`ektool deploy unlock --force`",
            ),
            (
                DeployError::RollbackTargetMissing {
                    host: "web1".into(),
                    commit: "abc1234".into(),
                }
                .into(),
                "--to",
            ),
            (
                GitError::TagRequired {
                    environment: "production".into(),
                    pattern: "^v".into(),
                    what: "main".into(),
                }
                .into(),
                "--allow-untagged",
            ),
            (
                deploykit::db::DbError::Protected {
                    env: "production".into(),
                    name: "app".into(),
                }
                .into(),
                "--allow-production",
            ),
            (GitError::NotSemver("v1.02.3".into()).into(), "--tag"),
        ];
        for (err, flag) in cases {
            assert!(!err.to_string().contains("--"), "{err}");
            assert!(!err.to_string().contains("ektool "), "{err}");
            let hint = hint(&err, Some("deploy")).unwrap();
            assert!(hint.starts_with("hint: ") && hint.contains(flag), "{hint}");
        }
    }

    #[test]
    fn input_errors_exit_2() {
        assert_eq!(
            CliError::Deploy(deploykit::DeployError::NoHosts).exit_code(),
            exit::USAGE
        );
        assert_eq!(
            CliError::Git(deploykit::GitError::NotSemver("v1".into())).exit_code(),
            exit::USAGE
        );
        assert_eq!(
            CliError::Deploy(deploykit::DeployError::LockNotStale { lock: lock(None) }).exit_code(),
            exit::FAILURE
        );
    }
}
