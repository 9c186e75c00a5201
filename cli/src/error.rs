//! The CLI's error: every library error, plus what only the CLI knows, each
//! mapped to an exit code.

use std::error::Error as _;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::exit;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
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
    /// Mounting or unmounting a snapshot failed.
    #[error(transparent)]
    Mount(#[from] snapkit::mount::MountError),
    /// A file-level sync failed.
    #[error(transparent)]
    Sync(#[from] snapkit::rsync::SyncError),
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
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, Self::Io { source, .. } if crate::output::is_closed(source))
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::Region(_) => exit::USAGE,
            Self::Deploy(e) if crate::commands::deploy::is_usage(e) => exit::USAGE,
            Self::Git(e) if crate::commands::deploy::is_git_usage(e) => exit::USAGE,
            Self::Provision(e) if crate::commands::provision::is_usage(e) => exit::USAGE,
            Self::Db(deploykit::db::DbError::Protected { .. }) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
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
        CliError::Provision(e) => e,
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
/// that name ektool's own commands, which the libraries leave out.
/// `command` is the command as typed (`snap backup`).
pub fn hint(err: &CliError, command: &str) -> Option<String> {
    if let CliError::Provision(deploykit::ProvisionError::Locked { lock, path }) = err {
        return Some(if lock.stale.is_some() {
            format!(
                "hint: if no run holds it any more, remove it: `ektool deploy unlock` for a deploy's lock, `rm -r {path}` on the host for a provision's"
            )
        } else {
            "hint: wait for it with --lock-wait, e.g. --lock-wait 10m".to_owned()
        });
    }
    if let Some(h) = snap_hint(err) {
        return Some(h);
    }
    let e = access_denied(err)?;
    let known = crate::commands::iam::POLICIES
        .iter()
        .any(|p| p.command == command);
    let policy = if known {
        format!("ektool iam-policy {command}")
    } else {
        "ektool iam-policy".to_owned()
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

/// Prints the error, its whole source chain and a hint to stderr.
pub fn report_with_hint(err: &CliError, command: &str) {
    report(err);
    if let Some(h) = hint(err, command) {
        eprintln!("{h}");
    }
}

/// Prints the error and its whole source chain to stderr.
pub fn report(err: &CliError) {
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
