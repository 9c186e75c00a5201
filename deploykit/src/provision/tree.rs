//! The configuration tree: collected locally (states and this
//! environment's pillar, nothing else), written to a fresh directory on the
//! host, then switched in by renaming a symlink.

use std::path::{Path, PathBuf};

use ec2kit::{Command, Remote};
use serde::{Deserialize, Serialize};

use super::{ProvisionError, RemoteLayout};
use crate::shell::q;

/// One file of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Its path on the host, relative to the tree directory
    /// (`states/web/init.sls`, `pillar/top.sls`).
    pub path: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Whether it is executable.
    pub executable: bool,
}

/// What goes to the host for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTree {
    /// The local root.
    pub root: PathBuf,
    /// The files, sorted by path.
    pub files: Vec<TreeFile>,
    /// What was left out on purpose (other environments' pillars, all
    /// secrets), relative to the root: shown in the plan.
    pub excluded: Vec<String>,
}

/// Summary of a tree for plans (no contents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSummary {
    /// The files sent, as they will be on the host.
    pub files: Vec<String>,
    /// What was left out, relative to the local tree.
    pub excluded: Vec<String>,
}

/// Whether `p` is a relative path that stays inside its base.
pub(crate) fn is_safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl LocalTree {
    /// Collects the tree at `root` for environment `env`:
    ///
    /// - `states/**` as `states/**`;
    /// - `pillar/<env>/**` as `pillar/**`; every other `pillar/*` is left out;
    /// - `script` (a script provisioner's script, relative to the root);
    /// - nothing else: `secrets/` never (secrets travel separately, 0600),
    ///   and no other file that happens to sit in the tree (a README, a
    ///   config with credentials) leaves this machine.
    pub fn collect(root: &Path, env: &str, script: Option<&str>) -> Result<Self, ProvisionError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| ProvisionError::Tree { path, source }
        };
        let mut files = Vec::new();
        let mut excluded = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(root)
            .map_err(err(root))?
            .collect::<Result<_, _>>()
            .map_err(err(root))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            match name.as_str() {
                "states" => Walk::new(&path)?.walk(&path, "states", &mut files)?,
                "pillar" => {
                    refuse_link(&path)?;
                    let mut envs: Vec<_> = std::fs::read_dir(&path)
                        .map_err(err(&path))?
                        .collect::<Result<_, _>>()
                        .map_err(err(&path))?;
                    envs.sort_by_key(|e| e.file_name());
                    for p in envs {
                        let pname = p.file_name().to_string_lossy().into_owned();
                        if pname == env {
                            // `pillar/staging -> production` would ship
                            // another environment's pillar.
                            let dir = p.path();
                            Walk::new(&dir)?.walk(&dir, "pillar", &mut files)?;
                        } else {
                            excluded.push(format!("pillar/{pname}"));
                        }
                    }
                }
                _ if name.starts_with('.') => {}
                _ if script.is_some_and(|s| s.split('/').next() == Some(name.as_str())) => {}
                _ if path.is_dir() => excluded.push(format!("{name}/")),
                _ => excluded.push(name),
            }
        }
        if let Some(s) = script {
            let path = root.join(s);
            // The script is one file of the tree: no link anywhere on its
            // path (`bootstrap.sh -> secrets/production.sls`).
            let canonical = path.canonicalize().map_err(err(&path))?;
            let real_root = root.canonicalize().map_err(err(root))?;
            if canonical != real_root.join(s) {
                return Err(ProvisionError::TreeLink {
                    path,
                    reason: format!(
                        "leads to {}; the script must be a plain file of the tree",
                        canonical.display()
                    ),
                });
            }
            Walk::new(&path)?.walk(&path, s, &mut files)?;
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self {
            root: root.to_owned(),
            files,
            excluded,
        })
    }

    /// The summary for plans.
    pub fn summary(&self) -> TreeSummary {
        TreeSummary {
            files: self.files.iter().map(|f| f.path.clone()).collect(),
            excluded: self.excluded.clone(),
        }
    }

    /// The script that writes the tree into `$1` on the host: one
    /// here-document of base64 per file, sent on standard input (no size
    /// limit from argv, nothing in the process list).
    pub fn install_script(&self) -> String {
        use base64::Engine as _;
        let mut s = String::from("set -eu\numask 077\nd=$1\nmkdir -p \"$d\"\n");
        for f in &self.files {
            let (dir, _) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
            if !dir.is_empty() {
                s.push_str(&format!("mkdir -p \"$d\"/{}\n", q(dir)));
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&f.bytes);
            s.push_str(&format!(
                "base64 -d > \"$d\"/{} <<'EKTOOL_EOF'\n",
                q(&f.path)
            ));
            for chunk in b64.as_bytes().chunks(76) {
                s.push_str(&String::from_utf8_lossy(chunk));
                s.push('\n');
            }
            s.push_str("EKTOOL_EOF\n");
            if f.executable {
                s.push_str(&format!("chmod 700 \"$d\"/{}\n", q(&f.path)));
            }
        }
        s
    }
}

/// The top of an allowed subtree (`states/`, `pillar/<env>/`) must not be
/// a link itself: its links are judged against where it really is.
fn refuse_link(path: &Path) -> Result<(), ProvisionError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| ProvisionError::Tree {
        path: path.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Err(ProvisionError::TreeLink {
            path: path.to_owned(),
            reason: format!("is a symbolic link (to {target}); it must be a directory of the tree"),
        });
    }
    Ok(())
}

/// A walk of one allowed subtree. Links are followed only when they stay
/// inside it (a committed `states/x.sls -> ../secrets/production.sls`
/// would otherwise ship production secrets to whatever host is being
/// provisioned), and a link back to a directory being walked is a loop,
/// reported instead of recursing until the stack overflows.
struct Walk {
    /// The subtree's real path.
    base: PathBuf,
    /// The real paths of the directories being walked (innermost last).
    ancestors: Vec<PathBuf>,
}

impl Walk {
    fn new(top: &Path) -> Result<Self, ProvisionError> {
        refuse_link(top)?;
        let base = top.canonicalize().map_err(|source| ProvisionError::Tree {
            path: top.to_owned(),
            source,
        })?;
        Ok(Self {
            base,
            ancestors: Vec::new(),
        })
    }

    fn walk(
        &mut self,
        path: &Path,
        rel: &str,
        out: &mut Vec<TreeFile>,
    ) -> Result<(), ProvisionError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| ProvisionError::Tree {
            path: path.to_owned(),
            source,
        };
        let link = std::fs::symlink_metadata(path).map_err(err)?;
        let real = path.canonicalize().map_err(err)?;
        if link.file_type().is_symlink() && !real.starts_with(&self.base) {
            return Err(ProvisionError::TreeLink {
                path: path.to_owned(),
                reason: format!(
                    "leads to {}, outside {}",
                    real.display(),
                    self.base.display()
                ),
            });
        }
        let meta = std::fs::metadata(path).map_err(err)?;
        if meta.is_dir() {
            if self.ancestors.contains(&real) {
                return Err(ProvisionError::TreeLink {
                    path: path.to_owned(),
                    reason: format!("is a loop back to {}", real.display()),
                });
            }
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;
            entries.sort_by_key(|e| e.file_name());
            self.ancestors.push(real);
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                // Editor droppings and VCS files are not configuration.
                if name.starts_with('.') || name.ends_with('~') {
                    continue;
                }
                self.walk(&e.path(), &format!("{rel}/{name}"), out)?;
            }
            self.ancestors.pop();
        } else if meta.is_file() {
            out.push(TreeFile {
                path: rel.to_owned(),
                bytes: std::fs::read(path).map_err(err)?,
                executable: meta.permissions().mode() & 0o100 != 0,
            });
        }
        Ok(())
    }
}

/// A fresh tree id: sortable by time, unique.
pub fn new_tree_id() -> String {
    let now = jiff::Timestamp::now().strftime("%Y%m%d%H%M%S");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{now}-{}", &rand[..8])
}

/// Writes `tree` into a new directory `trees/<id>` under the layout (the
/// layout root is created 0700 if missing). Nothing in force changes.
pub async fn stage(
    host: &dyn Remote,
    layout: &RemoteLayout,
    tree: &LocalTree,
    id: &str,
) -> Result<String, ProvisionError> {
    let dir = layout.tree_dir(id);
    let prepare = format!(
        "set -eu; umask 077; mkdir -p {root}/trees {secrets}; chmod 700 {root} {secrets}",
        root = q(&layout.root),
        secrets = q(&layout.secrets_dir()),
    );
    ec2kit::remote::run_checked(host, &Command::shell(prepare)).await?;
    let command = Command::argv(["sh", "-s", "--", &dir]).stdin(tree.install_script());
    ec2kit::remote::run_checked(host, &command).await?;
    Ok(dir)
}

/// Writes `tree` into a fresh temporary directory on the host (outside
/// the provision root, which stays untouched) for a dry run; returns the
/// directory. The tree is in its `tree/`; remove it all with
/// [`discard_scratch`].
pub async fn stage_scratch(host: &dyn Remote, tree: &LocalTree) -> Result<String, ProvisionError> {
    let make = "set -eu; umask 077; mktemp -d \"${TMPDIR:-/tmp}/ektool-provision.XXXXXXXX\"";
    let out = ec2kit::remote::run_checked(host, &Command::shell(make)).await?;
    let dir = out.stdout_str().trim().to_owned();
    if !is_scratch(&dir) {
        return Err(ProvisionError::Invalid(format!(
            "{}: mktemp printed {dir:?}, not a temporary directory",
            host.host()
        )));
    }
    let command =
        Command::argv(["sh", "-s", "--", &format!("{dir}/tree")]).stdin(tree.install_script());
    if let Err(e) = ec2kit::remote::run_checked(host, &command).await {
        let _ = discard_scratch(host, &dir).await;
        return Err(e.into());
    }
    Ok(dir)
}

/// Whether `dir` is what [`stage_scratch`] makes (never remove anything
/// else).
fn is_scratch(dir: &str) -> bool {
    dir.starts_with('/')
        && !dir.contains("/../")
        && dir
            .rsplit_once('/')
            .is_some_and(|(_, name)| name.starts_with("ektool-provision.") && name.len() == 25)
}

/// Removes a dry run's scratch directory.
pub async fn discard_scratch(host: &dyn Remote, dir: &str) -> Result<(), ProvisionError> {
    if !is_scratch(dir) {
        return Err(ProvisionError::Invalid(format!(
            "not a scratch directory: {dir:?}"
        )));
    }
    ec2kit::remote::run_checked(host, &Command::argv(["rm", "-rf", "--", dir])).await?;
    Ok(())
}

/// Puts `trees/<id>` in force: a new symlink renamed over `tree` (readers
/// see the old tree or the new one, never none), then removes older
/// uploads except the one just replaced (kept for inspection).
pub async fn switch(
    host: &dyn Remote,
    layout: &RemoteLayout,
    id: &str,
) -> Result<(), ProvisionError> {
    let script = format!(
        "set -eu; cd {root}\n\
         prev=$(readlink tree 2>/dev/null || true)\n\
         ln -s trees/{id} .tree.new.$$ && mv -T .tree.new.$$ tree\n\
         for t in trees/*; do\n\
           [ \"$t\" = trees/{id} ] || [ \"$t\" = \"$prev\" ] || rm -rf -- \"$t\"\n\
         done",
        root = q(&layout.root),
        id = q(id),
    );
    ec2kit::remote::run_checked(host, &Command::shell(script)).await?;
    Ok(())
}

/// Removes a staged tree that was only tested (a dry run): it is this
/// run's own directory, never a shared one.
pub async fn discard(
    host: &dyn Remote,
    layout: &RemoteLayout,
    id: &str,
) -> Result<(), ProvisionError> {
    let dir = layout.tree_dir(id);
    ec2kit::remote::run_checked(host, &Command::argv(["rm", "-rf", "--", &dir])).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn other_environments_and_secrets_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for (p, c) in [
            ("states/top.sls", "base: {}"),
            ("states/web/init.sls", "x"),
            ("pillar/staging/top.sls", "s"),
            ("pillar/production/top.sls", "p"),
            ("secrets/staging.sls", "SECRET"),
            ("secrets/production.sls", "SECRET"),
            ("states/.hidden.swp", "junk"),
        ] {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), c).unwrap();
        }
        std::fs::write(r.join("ektool.toml"), "x").unwrap();
        let t = LocalTree::collect(r, "staging", None).unwrap();
        let s = t.summary();
        assert_eq!(
            s.files,
            ["pillar/top.sls", "states/top.sls", "states/web/init.sls"]
        );
        assert_eq!(s.excluded, ["ektool.toml", "pillar/production", "secrets/"]);
        assert!(
            !t.install_script().contains("U0VDUkVU"),
            "no secret in the script"
        );
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for (p, c) in [
            ("states/top.sls", "base: {}"),
            ("states/web/init.sls", "x"),
            ("pillar/staging/top.sls", "s"),
            ("pillar/production/top.sls", "PRODUCTION"),
            ("secrets/production.sls", "SECRET"),
        ] {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), c).unwrap();
        }
        dir
    }

    fn refused(r: &Path, env: &str, script: Option<&str>) -> String {
        match LocalTree::collect(r, env, script) {
            Err(e @ ProvisionError::TreeLink { .. }) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn links_out_of_states_or_pillar_are_refused() {
        use std::os::unix::fs::symlink;
        // Into secrets/.
        let d = tree();
        symlink("../secrets/production.sls", d.path().join("states/x.sls")).unwrap();
        let e = refused(d.path(), "staging", None);
        assert!(e.contains("states/x.sls") && e.contains("outside"), "{e}");
        // Into another environment's pillar, from inside this one's.
        let d = tree();
        symlink(
            "../production/top.sls",
            d.path().join("pillar/staging/p.sls"),
        )
        .unwrap();
        assert!(refused(d.path(), "staging", None).contains("pillar/staging/p.sls"));
        // This environment's pillar is itself a link to another's.
        let d = tree();
        std::fs::remove_dir_all(d.path().join("pillar/staging")).unwrap();
        symlink("production", d.path().join("pillar/staging")).unwrap();
        assert!(refused(d.path(), "staging", None).contains("symbolic link"));
        // A directory link out of states/.
        let d = tree();
        symlink("../secrets", d.path().join("states/s")).unwrap();
        refused(d.path(), "staging", None);
        // A script that is a link into secrets/.
        let d = tree();
        symlink("secrets/production.sls", d.path().join("boot.sh")).unwrap();
        assert!(refused(d.path(), "staging", Some("boot.sh")).contains("boot.sh"));
    }

    #[test]
    fn links_inside_a_subtree_are_followed() {
        use std::os::unix::fs::symlink;
        let d = tree();
        symlink("web/init.sls", d.path().join("states/alias.sls")).unwrap();
        let t = LocalTree::collect(d.path(), "staging", None).unwrap();
        assert!(t.summary().files.contains(&"states/alias.sls".to_owned()));
    }

    #[test]
    fn link_loops_are_reported_not_recursed() {
        use std::os::unix::fs::symlink;
        let d = tree();
        symlink(".", d.path().join("states/loop")).unwrap();
        assert!(refused(d.path(), "staging", None).contains("loop"));
        let d = tree();
        symlink("..", d.path().join("states/web/up")).unwrap();
        assert!(refused(d.path(), "staging", None).contains("loop"));
    }

    #[test]
    fn safe_relative_paths() {
        assert!(is_safe_relative("bootstrap.sh"));
        assert!(is_safe_relative("bin/x.sh"));
        assert!(!is_safe_relative("../x"));
        assert!(!is_safe_relative("/x"));
        assert!(!is_safe_relative("a//b"));
    }
}
