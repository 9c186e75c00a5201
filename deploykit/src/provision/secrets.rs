//! The environment's secrets file: compared with the host's copy with
//! every value masked, uploaded 0600 root-owned through standard input,
//! fetched back on request.
//!
//! Values never reach a command line, a log line, an event or an error
//! message: comparisons print keys only.

use std::fmt;
use std::path::{Path, PathBuf};

use ec2kit::{Command, Remote};
use serde::{Deserialize, Serialize};

use super::{ProvisionError, RemoteLayout};
use crate::shell::q;

/// The local secrets file of `env` in the tree: `secrets/<env>.sls`.
pub fn local_path(tree: &Path, env: &str) -> PathBuf {
    tree.join("secrets").join(format!("{env}.sls"))
}

/// Its committed template: `secrets/<env>.sls.example`.
pub fn example_path(tree: &Path, env: &str) -> PathBuf {
    tree.join("secrets").join(format!("{env}.sls.example"))
}

/// One difference between two secrets files, by key; values are never
/// kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", content = "key", rename_all = "snake_case")]
pub enum SecretChange {
    /// Only in the local file.
    Added(String),
    /// Only on the host.
    Removed(String),
    /// In both, with different values.
    Changed(String),
}

impl fmt::Display for SecretChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Added(k) => write!(f, "+ {k}: ********"),
            Self::Removed(k) => write!(f, "- {k}: ********"),
            Self::Changed(k) => write!(f, "~ {k}: ******** (changed)"),
        }
    }
}

/// The lines of a YAML-ish secrets file as `(key path, value)`: the key
/// path joins the keys of enclosing mappings with `.` (by indentation);
/// lines without a key are keyed by their line number. Comments and blank
/// lines are skipped. Good enough to say *what* differs without a YAML
/// parser and without ever printing a value.
fn entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let prefix: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        match trimmed.split_once(':') {
            Some((k, v)) if !k.contains(' ') || k.starts_with(['"', '\'']) => {
                let key = k.trim().trim_matches(['"', '\'']).to_owned();
                let full = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", prefix.join("."))
                };
                let v = v.trim();
                if v.is_empty() {
                    stack.push((indent, key));
                } else {
                    out.push((full, v.to_owned()));
                }
            }
            _ => {
                let at = if prefix.is_empty() {
                    format!("line {}", n + 1)
                } else {
                    format!("{} (line {})", prefix.join("."), n + 1)
                };
                out.push((at, trimmed.to_owned()));
            }
        }
    }
    out
}

/// What differs between the host's secrets and the local ones, by key.
pub fn diff(remote: &str, local: &str) -> Vec<SecretChange> {
    let r = entries(remote);
    let l = entries(local);
    let mut changes = Vec::new();
    for (k, v) in &l {
        match r.iter().find(|(rk, _)| rk == k) {
            None => changes.push(SecretChange::Added(k.clone())),
            Some((_, rv)) if rv != v => changes.push(SecretChange::Changed(k.clone())),
            Some(_) => {}
        }
    }
    for (k, _) in &r {
        if !l.iter().any(|(lk, _)| lk == k) {
            changes.push(SecretChange::Removed(k.clone()));
        }
    }
    // Same keys and values but different bytes (comments, order): still an
    // overwrite, so it is still shown.
    if changes.is_empty() && remote != local {
        changes.push(SecretChange::Changed("(formatting or comments)".into()));
    }
    changes
}

/// How the local and remote secrets compare on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SecretsStatus {
    /// The host has exactly the local file.
    Same,
    /// The host has none: first upload.
    New,
    /// The host's differ: overwriting needs a confirmation.
    Differs {
        /// What differs (keys only).
        changes: Vec<SecretChange>,
    },
}

/// Reads the host's secrets file, if it has one.
pub async fn read_remote(
    host: &dyn Remote,
    layout: &RemoteLayout,
) -> Result<Option<Vec<u8>>, ProvisionError> {
    let path = layout.secrets_file();
    // One command, so "missing" and "unreadable" are told apart reliably.
    let script = format!(
        "if [ -e {p} ]; then cat -- {p}; else exit 3; fi",
        p = q(&path)
    );
    let out = host.run(&Command::shell(script)).await?;
    let stderr = out.stderr_str().trim().to_owned();
    match out.status {
        ec2kit::remote::ExitStatus::Code(0) => Ok(Some(out.stdout)),
        ec2kit::remote::ExitStatus::Code(3) => Ok(None),
        status => Err(ec2kit::RemoteError::Failed {
            host: host.host(),
            command: format!("cat {path}"),
            status,
            stderr,
        }
        .into()),
    }
}

/// Compares the local secrets with the host's.
pub async fn compare(
    host: &dyn Remote,
    layout: &RemoteLayout,
    local: &[u8],
) -> Result<SecretsStatus, ProvisionError> {
    Ok(match read_remote(host, layout).await? {
        None => SecretsStatus::New,
        Some(r) if r == local => SecretsStatus::Same,
        Some(r) => SecretsStatus::Differs {
            changes: diff(
                &String::from_utf8_lossy(&r),
                &String::from_utf8_lossy(local),
            ),
        },
    })
}

/// Uploads the secrets: standard input into a 0600 file (never a command
/// line), owned by root when the login user can make it so, in a 0700
/// directory.
pub async fn upload(
    host: &dyn Remote,
    layout: &RemoteLayout,
    bytes: &[u8],
) -> Result<(), ProvisionError> {
    let dir = layout.secrets_dir();
    let prepare = format!(
        "set -eu; umask 077; mkdir -p {d}; chmod 700 {d}",
        d = q(&dir)
    );
    ec2kit::remote::run_checked(host, &Command::shell(prepare)).await?;
    host.upload(&layout.secrets_file(), bytes, 0o600).await?;
    // As root this makes it root:root; as a developer with sudo-less
    // access the file stays theirs and still 0600.
    let own = format!(
        "if [ \"$(id -u)\" = 0 ]; then chown 0:0 {f} {d}; fi",
        f = q(&layout.secrets_file()),
        d = q(&dir)
    );
    ec2kit::remote::run_checked(host, &Command::shell(own)).await?;
    Ok(())
}

/// Writes `bytes` to a local file readable only by its owner, atomically
/// (a 0600 temporary file in the same directory, renamed over `path`).
pub fn write_local(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    use std::io::Write;
    let err = |source| ProvisionError::Tree {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // tempfile creates files 0600 whatever the umask.
    let mut tmp = tempfile::Builder::new()
        .prefix(".ektool-secrets.")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_by_key_never_shows_values() {
        let remote = "secrets:\n  DB_PASSWORD: old-pw\n  GONE: x\nhttp_auth:\n  admin: pw1\n";
        let local = "secrets:\n  DB_PASSWORD: new-pw\n  API_KEY: k\nhttp_auth:\n  admin: pw1\n";
        let d = diff(remote, local);
        assert_eq!(
            d,
            [
                SecretChange::Changed("secrets.DB_PASSWORD".into()),
                SecretChange::Added("secrets.API_KEY".into()),
                SecretChange::Removed("secrets.GONE".into()),
            ]
        );
        let shown: String = d.iter().map(|c| format!("{c}\n")).collect();
        for v in ["old-pw", "new-pw", "pw1", ": k"] {
            assert!(!shown.contains(v), "{v} leaked into {shown}");
        }
    }

    #[test]
    fn same_values_in_another_layout_still_count_as_a_change() {
        assert_eq!(
            diff("a: 1\n", "# note\na: 1\n"),
            [SecretChange::Changed("(formatting or comments)".into())]
        );
        assert!(diff("a: 1\n", "a: 1\n").is_empty());
    }

    #[test]
    fn lines_without_keys_are_keyed_by_line() {
        let d = diff("keys:\n  - one\n", "keys:\n  - two\n");
        assert_eq!(d.len(), 1);
        assert!(
            d.iter()
                .all(|c| !c.to_string().contains("one") && !c.to_string().contains("two"))
        );
    }
}
