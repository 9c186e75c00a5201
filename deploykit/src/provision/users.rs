//! Developers' accounts: created with their groups and SSH keys from the
//! config; keys of developers dropped from the list are revoked; a change
//! that would leave nobody able to log in is refused before anything runs.
//!
//! `authorized_keys` of a managed developer is **owned by this tool**: it
//! is rewritten from the config on every run (atomically), so a key removed
//! from the config is removed from the host.

use ec2kit::{Command, Remote};
use serde::{Deserialize, Serialize};

use super::{ProvisionError, RemoteLayout};
use crate::shell::q;

/// One developer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Developer {
    /// The login name.
    pub name: String,
    /// Supplementary groups (created if missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// SSH public keys, one `authorized_keys` line each.
    #[serde(default)]
    pub keys: Vec<String>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && n.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_key(k: &str) -> bool {
    let mut parts = k.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    !k.contains(['\n', '\r'])
        && (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && parts.next().is_some_and(|b| b.len() > 16)
}

impl Developer {
    /// Checks the name, groups and keys (a key must be one
    /// `authorized_keys` line: `type base64 [comment]`).
    pub fn validate(&self) -> Result<(), ProvisionError> {
        if !valid_name(&self.name) {
            return Err(ProvisionError::Invalid(format!(
                "bad user name {:?}",
                self.name
            )));
        }
        if let Some(g) = self.groups.iter().find(|g| !valid_name(g)) {
            return Err(ProvisionError::Invalid(format!(
                "{}: bad group name {g:?}",
                self.name
            )));
        }
        if let Some(k) = self.keys.iter().find(|k| !valid_key(k)) {
            let shown: String = k.chars().take(24).collect();
            return Err(ProvisionError::Invalid(format!(
                "{}: not an SSH public key line: {shown:?}…",
                self.name
            )));
        }
        Ok(())
    }
}

/// What a run does to accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersPlan {
    /// Created if missing; groups added; `authorized_keys` set to exactly
    /// their keys.
    pub ensure: Vec<Developer>,
    /// Managed before, gone from the config: their keys are revoked (the
    /// account and home stay, for its files).
    pub revoke: Vec<String>,
}

impl UsersPlan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ensure.is_empty() && self.revoke.is_empty()
    }
}

/// Plans the change from `managed_before` (the names this tool managed on
/// the host) to `wanted`, refusing one that would leave nobody able to log
/// in. `login_user` is who runs the provision: a developer who would lose
/// their own keys is refused too (root is not a managed developer).
pub fn plan(
    wanted: &[Developer],
    managed_before: &[String],
    login_user: &str,
) -> Result<UsersPlan, ProvisionError> {
    for d in wanted {
        d.validate()?;
    }
    let revoke: Vec<String> = managed_before
        .iter()
        .filter(|n| !wanted.iter().any(|d| &d.name == *n))
        .cloned()
        .collect();
    let plan = UsersPlan {
        ensure: wanted.to_vec(),
        revoke,
    };
    if plan.is_empty() {
        return Ok(plan);
    }
    let able: Vec<&str> = wanted
        .iter()
        .filter(|d| !d.keys.is_empty())
        .map(|d| d.name.as_str())
        .collect();
    if able.is_empty() {
        return Err(ProvisionError::LockOut(
            "no developer in the list would have an SSH key; keep at least one".into(),
        ));
    }
    if plan.revoke.iter().any(|n| n == login_user)
        || wanted
            .iter()
            .any(|d| d.name == login_user && d.keys.is_empty())
    {
        return Err(ProvisionError::LockOut(format!(
            "it would revoke the keys of {login_user}, who is running it; provision as {} instead",
            able.join(" or ")
        )));
    }
    Ok(plan)
}

/// The names this tool managed on the host (empty on a fresh host).
pub async fn read_managed(
    host: &dyn Remote,
    layout: &RemoteLayout,
) -> Result<Vec<String>, ProvisionError> {
    let script = format!(
        "cat -- {f} 2>/dev/null || true",
        f = q(&layout.users_file())
    );
    let out = ec2kit::remote::run_checked(host, &Command::shell(script)).await?;
    let text = out.stdout_str();
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text)
        .map_err(|e| ProvisionError::Invalid(format!("{}: {e}", layout.users_file())))
}

/// The script that applies `plan` to the user database under `root` (`/`
/// for the host itself; another directory goes through `--prefix`).
pub fn script(plan: &UsersPlan, root: &str) -> String {
    let root = root.trim_end_matches('/');
    let mut s = format!(
        "set -eu\nR={r}\nP={p}\n\
         field() {{ awk -F: -v u=\"$1\" -v f=\"$2\" '$1==u{{print $f}}' \"$R/etc/passwd\"; }}\n\
         setkeys() {{ # user, keys on stdin\n\
           h=\"$R$(field \"$1\" 6)\"; uid=$(field \"$1\" 3); gid=$(field \"$1\" 4)\n\
           mkdir -p \"$h/.ssh\"; chmod 700 \"$h/.ssh\"; chown \"$uid:$gid\" \"$h/.ssh\"\n\
           t=$(mktemp \"$h/.ssh/.authorized_keys.XXXXXX\"); cat > \"$t\"\n\
           chmod 600 \"$t\"; chown \"$uid:$gid\" \"$t\"; mv -f \"$t\" \"$h/.ssh/authorized_keys\"\n\
         }}\n",
        r = q(root),
        p = if root.is_empty() {
            "''".to_owned()
        } else {
            q(&format!("--prefix={root}"))
        },
    );
    for d in &plan.ensure {
        let name = q(&d.name);
        for g in &d.groups {
            s.push_str(&format!(
                "grep -q '^{g}:' \"$R/etc/group\" || groupadd $P {g}\n",
                g = g
            ));
        }
        let groups = if d.groups.is_empty() {
            String::new()
        } else {
            format!(" -G {}", q(&d.groups.join(",")))
        };
        s.push_str(&format!(
            "if grep -q '^{n}:' \"$R/etc/passwd\"; then {mod_}else useradd $P -m -s /bin/bash{groups} {name}; fi\n",
            n = d.name,
            mod_ = if groups.is_empty() {
                String::new()
            } else {
                format!("usermod $P -a{groups} {name}; ")
            },
        ));
        s.push_str(&format!("setkeys {name} <<'EKTOOL_KEYS'\n"));
        for k in &d.keys {
            s.push_str(k.trim());
            s.push('\n');
        }
        s.push_str("EKTOOL_KEYS\n");
    }
    for n in &plan.revoke {
        s.push_str(&format!(
            "if grep -q '^{n}:' \"$R/etc/passwd\"; then setkeys {name} </dev/null; fi\n",
            name = q(n)
        ));
    }
    s
}

/// Applies `plan` and records the managed names.
pub async fn apply(
    host: &dyn Remote,
    layout: &RemoteLayout,
    plan: &UsersPlan,
    root: &str,
) -> Result<(), ProvisionError> {
    let command = Command::argv(["sh", "-s"]).stdin(script(plan, root));
    ec2kit::remote::run_checked(host, &command).await?;
    let names: Vec<&str> = plan.ensure.iter().map(|d| d.name.as_str()).collect();
    let json = serde_json::to_vec(&names).unwrap_or_default();
    host.upload(&layout.users_file(), &json, 0o600).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ alice@laptop";

    fn dev(name: &str, keys: &[&str]) -> Developer {
        Developer {
            name: name.into(),
            groups: vec!["login".into()],
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn removed_developers_are_revoked() {
        let p = plan(
            &[dev("alice", &[KEY])],
            &["alice".into(), "bob".into()],
            "root",
        )
        .unwrap();
        assert_eq!(p.revoke, ["bob"]);
    }

    #[test]
    fn nobody_left_is_refused() {
        let e = plan(&[], &["alice".into()], "root").unwrap_err();
        assert!(matches!(e, ProvisionError::LockOut(_)), "{e}");
        let e = plan(&[dev("alice", &[])], &[], "root").unwrap_err();
        assert!(matches!(e, ProvisionError::LockOut(_)), "{e}");
    }

    #[test]
    fn revoking_yourself_is_refused() {
        let e = plan(
            &[dev("alice", &[KEY])],
            &["alice".into(), "bob".into()],
            "bob",
        )
        .unwrap_err();
        assert!(e.to_string().contains("provision as alice"), "{e}");
    }

    #[test]
    fn unmanaged_hosts_stay_unmanaged() {
        assert!(plan(&[], &[], "root").unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(dev("Alice", &[KEY]).validate().is_err());
        assert!(
            dev("alice", &["ssh-ed25519 AAAA\nrm -rf /"])
                .validate()
                .is_err()
        );
        assert!(dev("alice", &["not a key"]).validate().is_err());
        assert!(dev("alice", &[KEY]).validate().is_ok());
    }
}
