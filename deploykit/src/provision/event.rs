//! What a provision run reports as it goes ([`Event`]), delivered to the
//! caller's `on_event` callback: the CLI prints them, a test records them.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::plan::SecretsPlan;
use super::secrets::SecretChange;
use crate::lock::HeldLock;

/// One event of a provision run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum Event {
    /// A dry run found a lock held on a host: a real run would stop
    /// there (or wait for it).
    LockHeld {
        /// The host.
        host: String,
        /// The lock.
        lock: Box<HeldLock>,
        /// Its directory on the host.
        path: String,
    },
    /// The host's secrets differ from the local file (keys only).
    SecretsDiffer {
        /// The host.
        host: String,
        /// The local secrets file.
        local: PathBuf,
        /// What differs.
        changes: Vec<SecretChange>,
    },
    /// The provisioner was missing and is now installed.
    Installed {
        /// The host.
        host: String,
        /// Which (`salt`).
        provisioner: String,
    },
    /// The tree was written to the host.
    Staged {
        /// The host.
        host: String,
        /// How many files.
        files: usize,
        /// The tree directory.
        dir: String,
        /// A dry run's temporary directory, removed afterwards.
        scratch: bool,
    },
    /// The secrets were sent (0600).
    SecretsSent {
        /// The host.
        host: String,
        /// Uploaded, or overwritten.
        secrets: SecretsPlan,
    },
    /// The developers' accounts were brought in step.
    UsersApplied {
        /// The host.
        host: String,
        /// Accounts ensured.
        ensured: usize,
        /// Accounts revoked.
        revoked: usize,
    },
    /// A host's locks could not be released after the run (they go stale
    /// like a killed run's); the run's own outcome stands.
    LockNotReleased {
        /// The host.
        host: String,
        /// Why.
        error: String,
    },
    /// A host's run could not be recorded in its audit file
    /// ([`crate::audit`]); the run's own outcome stands.
    AuditNotWritten {
        /// The host.
        host: String,
        /// Why.
        error: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LockHeld { lock, path, .. } => write!(f, "{lock} (lock {path})"),
            Self::SecretsDiffer {
                host,
                local,
                changes,
            } => {
                write!(
                    f,
                    "{host}: the host's secrets differ from {}:",
                    local.display()
                )?;
                for c in changes {
                    write!(f, "\n  {c}")?;
                }
                Ok(())
            }
            Self::Installed { host, provisioner } => write!(f, "{host}: installed {provisioner}"),
            Self::Staged {
                host,
                files,
                dir,
                scratch,
            } => {
                write!(f, "{host}: staged {files} files in {dir}")?;
                if *scratch {
                    f.write_str(" (dry run: removed afterwards)")?;
                }
                Ok(())
            }
            Self::SecretsSent { host, secrets } => {
                let how = match secrets {
                    SecretsPlan::Overwrite { .. } => "updated",
                    _ => "uploaded",
                };
                write!(f, "{host}: secrets {how} (0600)")
            }
            Self::UsersApplied {
                host,
                ensured,
                revoked,
            } => write!(f, "{host}: users: {ensured} ensured, {revoked} revoked"),
            Self::LockNotReleased { host, error } => {
                write!(f, "{host}: could not release the provision lock: {error}")
            }
            Self::AuditNotWritten { host, error } => {
                write!(f, "{host}: audit log not written: {error}")
            }
        }
    }
}
