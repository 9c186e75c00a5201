//! Developers' accounts: created with their groups and SSH keys from the
//! config; developers dropped from the list are revoked; a change that
//! would leave nobody able to log in, or lock out the very key this run
//! logged in with, is refused before anything runs.
//!
//! `authorized_keys` of a managed developer is **owned by this tool**: it
//! is rewritten from the config on every run (atomically), so a key removed
//! from the config is removed from the host; `authorized_keys2` (which
//! OpenSSH also reads) is removed.
//!
//! A developer's home belongs to the developer, who can replace `~/.ssh`
//! with a link to `/etc`: root must never follow it. So the key files are
//! written **as the developer** (`setpriv` with their uid and gid, which
//! also works for accounts of a `useradd --prefix` user database that the
//! host's own `/etc/passwd` does not know, where `runuser` cannot), and the
//! kernel refuses what the developer could not do. On top, a home that is a
//! link or not the developer's own, and a `.ssh` or key file that is a link
//! or someone else's, make the run refuse that account, naming the path,
//! before anything changes.
//!
//! Revoking a developer empties `authorized_keys`, removes
//! `authorized_keys2`, locks the password, expires the account, sets the
//! shell to `nologin` and drops the supplementary groups the config had
//! granted. The account and its files stay.

use std::collections::BTreeMap;

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

/// The key blob (base64) of an `authorized_keys` line.
fn key_blob(line: &str) -> Option<&str> {
    line.split_whitespace().nth(1)
}

/// The lowest uid of an ordinary account. System accounts (below it) that
/// ektool did not create are never taken over; the host's
/// `etc/login.defs` `UID_MIN` wins when it says otherwise.
pub const UID_MIN: u32 = 1000;

impl Developer {
    /// Checks the name, groups and keys (a key must be one
    /// `authorized_keys` line: `type base64 [comment]`). `root` is never a
    /// developer: its keys are not this tool's to rewrite.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        if !valid_name(&self.name) {
            return Err(ProvisionError::Invalid(format!(
                "bad user name {:?}",
                self.name
            )));
        }
        if self.name == "root" {
            return Err(ProvisionError::Invalid(
                "`root` cannot be a developer: its keys are not provision's to manage".into(),
            ));
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

/// A developer this tool manages on a host, as recorded there: the name
/// and the supplementary groups the config granted (so they can be taken
/// away again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ManagedRecord")]
pub struct Managed {
    /// The login name.
    pub name: String,
    /// The groups the config granted.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Older hosts record bare names.
#[derive(Deserialize)]
#[serde(untagged)]
enum ManagedRecord {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        groups: Vec<String>,
    },
}

impl From<ManagedRecord> for Managed {
    fn from(r: ManagedRecord) -> Self {
        match r {
            ManagedRecord::Name(name) => Self {
                name,
                groups: Vec::new(),
            },
            ManagedRecord::Full { name, groups } => Self { name, groups },
        }
    }
}

impl From<&Developer> for Managed {
    fn from(d: &Developer) -> Self {
        Self {
            name: d.name.clone(),
            groups: d.groups.clone(),
        }
    }
}

/// What a run does to accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersPlan {
    /// Created if missing; groups added; `authorized_keys` set to exactly
    /// their keys.
    pub ensure: Vec<Developer>,
    /// Managed before, gone from the config: revoked (keys removed,
    /// password locked, account expired, shell `nologin`); the account and
    /// home stay, for its files.
    pub revoke: Vec<String>,
    /// Supplementary groups the config granted before and no longer does,
    /// by user: taken away (all of them for a revoked developer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drop_groups: BTreeMap<String, Vec<String>>,
    /// Who was managed before this run (the system-account guard trusts
    /// only accounts this tool created).
    #[serde(skip)]
    pub managed_before: Vec<String>,
}

impl UsersPlan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ensure.is_empty() && self.revoke.is_empty()
    }
}

/// Who runs the provision: the login user and, over SSH, the public key
/// the connection authenticated with (`type base64 [comment]`; `None`
/// when unknown, e.g. a local run).
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The login user.
    pub user: &'a str,
    /// The key in use.
    pub key: Option<&'a str>,
}

/// Plans the change from `managed_before` (who this tool managed on the
/// host) to `wanted`, refusing one that would leave nobody able to log in,
/// and one that would take from the login user the key this very
/// connection uses (or, when that key is unknown, all their keys).
pub fn plan(
    wanted: &[Developer],
    managed_before: &[Managed],
    login: Login<'_>,
) -> Result<UsersPlan, ProvisionError> {
    for d in wanted {
        d.validate()?;
    }
    let revoke: Vec<String> = managed_before
        .iter()
        .filter(|m| !wanted.iter().any(|d| d.name == m.name))
        .map(|m| m.name.clone())
        .collect();
    let mut drop_groups = BTreeMap::new();
    for m in managed_before {
        let keep: &[String] = wanted
            .iter()
            .find(|d| d.name == m.name)
            .map(|d| d.groups.as_slice())
            .unwrap_or_default();
        let gone: Vec<String> = m
            .groups
            .iter()
            .filter(|g| !keep.contains(g))
            .cloned()
            .collect();
        if !gone.is_empty() {
            drop_groups.insert(m.name.clone(), gone);
        }
    }
    let plan = UsersPlan {
        ensure: wanted.to_vec(),
        revoke,
        drop_groups,
        managed_before: managed_before.iter().map(|m| m.name.clone()).collect(),
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
    let others = || {
        let o: Vec<&str> = able.iter().copied().filter(|n| *n != login.user).collect();
        if o.is_empty() {
            "root".to_owned()
        } else {
            o.join(" or ")
        }
    };
    if plan.revoke.iter().any(|n| n == login.user) {
        return Err(ProvisionError::LockOut(format!(
            "it would revoke {}, who is running it; provision as {} instead",
            login.user,
            others()
        )));
    }
    if let Some(me) = wanted.iter().find(|d| d.name == login.user) {
        let keeps_mine = match login.key.and_then(key_blob) {
            Some(mine) => me.keys.iter().any(|k| key_blob(k) == Some(mine)),
            None => !me.keys.is_empty(),
        };
        if !keeps_mine {
            let which = match login.key {
                Some(k) => format!("the key this run logged in with ({})", shorten_key(k)),
                None => "every key".to_owned(),
            };
            return Err(ProvisionError::LockOut(format!(
                "it would take {which} from {}, who is running it; keep that key in the list, or provision as {} instead",
                login.user,
                others()
            )));
        }
    }
    Ok(plan)
}

/// `type AAAA…last8 comment`: enough to recognise a key.
fn shorten_key(line: &str) -> String {
    let mut parts = line.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let comment: Vec<&str> = parts.collect();
    let tail: String = blob
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let mut s = format!("{kind} …{tail}");
    if !comment.is_empty() {
        s.push(' ');
        s.push_str(&comment.join(" "));
    }
    s
}

/// Who this tool managed on the host (empty on a fresh host).
pub async fn read_managed(
    host: &dyn Remote,
    layout: &RemoteLayout,
) -> Result<Vec<Managed>, ProvisionError> {
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

/// What marks a refusal on the script's standard error:
/// `ektool-refuse:<user>:<reason>`.
const REFUSE: &str = "ektool-refuse:";
/// The exit code of a refusal.
const REFUSE_CODE: i32 = 3;

/// The shell functions the scripts share: `field`, `check` (the refusal
/// rules), `asuser`, `setkeys`, `member`, `dropgroups`.
fn prelude(root: &str) -> String {
    let root = root.trim_end_matches('/');
    // Written by the developer, so it only ever runs as the developer.
    let keys_sh = "set -eu; umask 077; cd -- \"$1\"; \
        if [ -L .ssh ]; then echo \"$1/.ssh is a symbolic link\" >&2; exit 3; fi; \
        mkdir -p .ssh; chmod 700 .ssh; \
        t=$(mktemp .ssh/.authorized_keys.XXXXXX); cat > \"$t\"; chmod 600 \"$t\"; \
        mv -f \"$t\" .ssh/authorized_keys; rm -f .ssh/authorized_keys2";
    format!(
        "set -eu\nR={r}\nP={p}\n\
         uid_min=$(awk '$1==\"UID_MIN\"{{print $2}}' \"$R/etc/login.defs\" 2>/dev/null || true)\n\
         case \"$uid_min\" in ''|*[!0-9]*) uid_min={min};; esac\n\
         field() {{ awk -F: -v u=\"$1\" -v f=\"$2\" '$1==u{{print $f}}' \"$R/etc/passwd\"; }}\n\
         refuse() {{ printf '{REFUSE}%s:%s\\n' \"$1\" \"$2\" >&2; exit {REFUSE_CODE}; }}\n\
         check() {{ # user, new|managed: whose home root may touch, as that user\n\
           uid=$(field \"$1\" 3)\n\
           [ -n \"$uid\" ] || return 0\n\
           [ \"$uid\" != 0 ] || refuse \"$1\" \"it has uid 0\"\n\
           [ \"$2\" = managed ] || [ \"$uid\" -ge \"$uid_min\" ] || refuse \"$1\" \"it is a system account (uid $uid, below $uid_min) that ektool did not create\"\n\
           h=\"$R$(field \"$1\" 6)\"\n\
           [ ! -L \"$h\" ] || refuse \"$1\" \"its home $h is a symbolic link\"\n\
           [ -d \"$h\" ] || refuse \"$1\" \"its home $h is not a directory\"\n\
           o=$(stat -c %u -- \"$h\")\n\
           [ \"$o\" = \"$uid\" ] || refuse \"$1\" \"its home $h is not its own (owner uid $o)\"\n\
           for f in .ssh .ssh/authorized_keys .ssh/authorized_keys2; do\n\
             [ ! -L \"$h/$f\" ] || refuse \"$1\" \"$h/$f is a symbolic link\"\n\
             [ ! -e \"$h/$f\" ] || [ \"$(stat -c %u -- \"$h/$f\")\" = \"$uid\" ] || refuse \"$1\" \"$h/$f is not its own\"\n\
           done\n\
         }}\n\
         asuser() {{ # user, script, its \\$0 and arguments: with the user's uid and gid only\n\
           u=$1; shift\n\
           if [ \"$(id -u)\" = \"$(field \"$u\" 3)\" ]; then sh -c \"$@\"; else\n\
             setpriv --reuid=\"$(field \"$u\" 3)\" --regid=\"$(field \"$u\" 4)\" --clear-groups --no-new-privs -- sh -c \"$@\"\n\
           fi\n\
         }}\n\
         setkeys() {{ # user, keys on stdin\n\
           check \"$1\" managed\n\
           asuser \"$1\" {keys_sh} sh \"$R$(field \"$1\" 6)\" || refuse \"$1\" \"could not write its keys as the user\"\n\
         }}\n\
         member() {{ awk -F: -v u=\"$1\" -v g=\"$2\" '$1==g{{n=split($4,m,\",\");for(i=1;i<=n;i++)if(m[i]==u)f=1}}END{{exit !f}}' \"$R/etc/group\"; }}\n\
         dropgroups() {{ # user, groups\n\
           u=$1; shift\n\
           for g; do if member \"$u\" \"$g\"; then usermod $P -r -G \"$g\" \"$u\"; fi; done\n\
         }}\n\
         nologin=$(command -v nologin || echo /usr/sbin/nologin)\n",
        r = q(root),
        p = if root.is_empty() {
            "''".to_owned()
        } else {
            q(&format!("--prefix={root}"))
        },
        min = UID_MIN,
        keys_sh = q(keys_sh),
    )
}

/// The read-only checks: every account the plan touches, refused (exit 3,
/// `ektool-refuse:` on stderr) before anything changes.
fn checks(plan: &UsersPlan) -> String {
    let mut s = String::new();
    for d in &plan.ensure {
        let how = if plan.managed_before.contains(&d.name) {
            "managed"
        } else {
            "new"
        };
        s.push_str(&format!("check {} {how}\n", q(&d.name)));
    }
    for n in &plan.revoke {
        s.push_str(&format!("check {} managed\n", q(n)));
    }
    s
}

/// The script that checks every account the plan touches, changing
/// nothing.
pub fn check_script(plan: &UsersPlan, root: &str) -> String {
    prelude(root) + &checks(plan)
}

/// The script that applies `plan` to the user database under `root` (`/`
/// for the host itself; another directory goes through `--prefix`). It
/// checks every account first, so a refusal changes nothing.
pub fn script(plan: &UsersPlan, root: &str) -> String {
    let mut s = check_script(plan, root);
    let no_groups = Vec::new();
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
        // Back in the list after a revoke: the account works again.
        s.push_str(&format!(
            "if [ \"$(field {name} 7)\" = \"$nologin\" ]; then usermod $P -e '' -s /bin/bash {name}; fi\n"
        ));
        let dropped = plan.drop_groups.get(&d.name).unwrap_or(&no_groups);
        if !dropped.is_empty() {
            let g: Vec<String> = dropped.iter().map(|g| q(g)).collect();
            s.push_str(&format!("dropgroups {name} {}\n", g.join(" ")));
        }
        s.push_str(&format!("setkeys {name} <<'EKTOOL_KEYS'\n"));
        for k in &d.keys {
            s.push_str(k.trim());
            s.push('\n');
        }
        s.push_str("EKTOOL_KEYS\n");
    }
    for n in &plan.revoke {
        let name = q(n);
        let dropped = plan.drop_groups.get(n).unwrap_or(&no_groups);
        let g: Vec<String> = dropped.iter().map(|g| q(g)).collect();
        s.push_str(&format!(
            "if grep -q '^{n}:' \"$R/etc/passwd\"; then\n\
             setkeys {name} </dev/null\n\
             usermod $P -L -e 1 -s \"$nologin\" {name}\n\
             dropgroups {name} {g}\n\
             fi\n",
            g = g.join(" "),
        ));
    }
    s
}

/// Runs a users script; a refusal becomes [`ProvisionError::Refused`].
async fn run(host: &dyn Remote, script: String) -> Result<(), ProvisionError> {
    let command = Command::argv(["sh", "-s"]).stdin(script);
    let out = host.run(&command).await?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = out.stderr_str();
    if out.status == ec2kit::remote::ExitStatus::Code(REFUSE_CODE)
        && let Some((user, reason)) = stderr
            .lines()
            .find_map(|l| l.strip_prefix(REFUSE))
            .and_then(|l| l.split_once(':'))
    {
        return Err(ProvisionError::Refused {
            host: host.host(),
            user: user.to_owned(),
            reason: reason.to_owned(),
        });
    }
    Err(ec2kit::RemoteError::Failed {
        host: host.host(),
        command: "sh -s (developers' accounts)".into(),
        status: out.status,
        stderr: crate::shell::tail(&out.stderr, 600),
    }
    .into())
}

/// Checks, changing nothing, that every account `plan` touches may be
/// touched (see the module docs): the home is the user's own directory,
/// `~/.ssh` and the key files are not links nor someone else's, the
/// account is not root nor a system account this tool did not create.
pub async fn check(host: &dyn Remote, plan: &UsersPlan, root: &str) -> Result<(), ProvisionError> {
    if plan.is_empty() {
        return Ok(());
    }
    run(host, check_script(plan, root)).await
}

/// Applies `plan` and records the managed developers.
pub async fn apply(
    host: &dyn Remote,
    layout: &RemoteLayout,
    plan: &UsersPlan,
    root: &str,
) -> Result<(), ProvisionError> {
    run(host, script(plan, root)).await?;
    let managed: Vec<Managed> = plan.ensure.iter().map(Managed::from).collect();
    let json = serde_json::to_vec(&managed).unwrap_or_default();
    host.upload(&layout.users_file(), &json, 0o600).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ alice@laptop";
    const KEY2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK alice@desktop";

    fn dev(name: &str, keys: &[&str]) -> Developer {
        Developer {
            name: name.into(),
            groups: vec!["login".into()],
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn managed(names: &[&str]) -> Vec<Managed> {
        names
            .iter()
            .map(|n| Managed {
                name: (*n).into(),
                groups: vec!["login".into(), "sudo".into()],
            })
            .collect()
    }

    fn root() -> Login<'static> {
        Login {
            user: "root",
            key: None,
        }
    }

    #[test]
    fn removed_developers_are_revoked_and_lose_their_groups() {
        let p = plan(&[dev("alice", &[KEY])], &managed(&["alice", "bob"]), root()).unwrap();
        assert_eq!(p.revoke, ["bob"]);
        assert_eq!(p.drop_groups["bob"], ["login", "sudo"]);
        // Alice keeps `login`, which the config still grants.
        assert_eq!(p.drop_groups["alice"], ["sudo"]);
        let s = script(&p, "/");
        assert!(s.contains("usermod $P -L -e 1 -s \"$nologin\" bob"), "{s}");
        assert!(s.contains("dropgroups bob login sudo"), "{s}");
        assert!(s.contains("dropgroups alice sudo"), "{s}");
    }

    #[test]
    fn older_records_of_bare_names_are_read() {
        let m: Vec<Managed> =
            serde_json::from_str(r#"["alice", {"name": "bob", "groups": ["x"]}]"#).unwrap();
        assert_eq!(m[0].name, "alice");
        assert!(m[0].groups.is_empty());
        assert_eq!(m[1].groups, ["x"]);
    }

    #[test]
    fn nobody_left_is_refused() {
        let e = plan(&[], &managed(&["alice"]), root()).unwrap_err();
        assert!(matches!(e, ProvisionError::LockOut(_)), "{e}");
        let e = plan(&[dev("alice", &[])], &[], root()).unwrap_err();
        assert!(matches!(e, ProvisionError::LockOut(_)), "{e}");
    }

    #[test]
    fn revoking_yourself_is_refused() {
        let bob = Login {
            user: "bob",
            key: None,
        };
        let e = plan(&[dev("alice", &[KEY])], &managed(&["alice", "bob"]), bob).unwrap_err();
        assert!(e.to_string().contains("provision as alice"), "{e}");
    }

    #[test]
    fn dropping_the_key_in_use_is_refused() {
        let alice = Login {
            user: "alice",
            key: Some(KEY),
        };
        // Alice keeps a key, but not the one this run logged in with.
        let e = plan(&[dev("alice", &[KEY2])], &managed(&["alice"]), alice).unwrap_err();
        assert!(matches!(e, ProvisionError::LockOut(_)), "{e}");
        assert!(e.to_string().contains("alice@laptop"), "{e}");
        // Keeping it (whatever its comment) is fine.
        let same_blob = KEY.replace("alice@laptop", "renamed");
        plan(
            &[dev("alice", &[KEY2, &same_blob])],
            &managed(&["alice"]),
            alice,
        )
        .unwrap();
        // Unknown key in use: at least one key must stay.
        let unknown = Login {
            user: "alice",
            key: None,
        };
        plan(&[dev("alice", &[KEY2])], &managed(&["alice"]), unknown).unwrap();
        assert!(plan(&[dev("alice", &[]), dev("bob", &[KEY])], &[], unknown).is_err());
    }

    #[test]
    fn unmanaged_hosts_stay_unmanaged() {
        assert!(plan(&[], &[], root()).unwrap().is_empty());
    }

    #[test]
    fn accounts_are_checked_before_anything_changes() {
        let p = plan(&[dev("alice", &[KEY])], &managed(&["bob"]), root()).unwrap();
        let s = script(&p, "/srv/x");
        let first_change = s.find("groupadd").unwrap();
        assert!(s.find("check alice new").unwrap() < first_change, "{s}");
        assert!(s.find("check bob managed").unwrap() < first_change, "{s}");
        // Keys are written as the user, never by root.
        assert!(s.contains("setpriv --reuid="), "{s}");
        assert!(!s.contains("chown"), "{s}");
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
        let e = dev("root", &[KEY]).validate().unwrap_err();
        assert!(e.to_string().contains("`root`"), "{e}");
    }
}
