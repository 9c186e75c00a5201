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
