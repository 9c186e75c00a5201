//! A release: the commit being deployed, and how it is built into a
//! release directory on a host.
//!
//! On each host, a bare mirror `repo.git` in the deploy root is fetched
//! (only when it lacks the commit), and the release directory gets exactly
//! that commit, submodules included, with the shared paths linked in. The
//! completion marker `.ektool-release` is written **last**: a directory
//! without it is unfinished, is never switched to, and is removed by the
//! next deploy.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::environment::{Environment, SharedPath};
use crate::host::Host;
use crate::shell::{q, short};

/// What is being deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The full commit id.
    pub commit: String,
    /// The release tag naming it, if any.
    pub tag: Option<String>,
    /// A short human name: the tag, or the abbreviated commit.
    pub describe: String,
    /// What the user asked for (`v1.2.3`, `main`, `HEAD`, a commit).
    pub reference: String,
}

impl Release {
    /// A release of a bare commit id (no tag).
    pub fn commit(commit: impl Into<String>) -> Self {
        let commit = commit.into();
        let describe = short(&commit).to_owned();
        Self {
            reference: commit.clone(),
            commit,
            tag: None,
            describe,
        }
    }

    /// The abbreviated commit.
    pub fn short(&self) -> &str {
        short(&self.commit)
    }
}

/// The completion marker's name inside a release directory.
pub(crate) const MARKER: &str = ".ektool-release";

/// What the completion marker of a release directory says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The release directory's name.
    pub release: String,
    /// The commit checked out in it (40 or 64 hex digits: a marker with
    /// anything else does not parse, and its release counts as unfinished).
    #[serde(deserialize_with = "crate::shell::commit_id")]
    pub commit: String,
    /// Its release tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// When the build finished.
    pub built_at: Timestamp,
}

/// Where ektool records the release directories it made (one empty file
/// per release, relative to `<root>/.ektool`): only those are ever removed
/// or rebuilt, so a deploy root laid out by another tool (Capistrano's
/// `releases/<stamp>`, buedafab's slots) keeps its releases.
pub(crate) const MADE: &str = "made";

/// The shell script (after [`GUARDS`]) that makes sure the host's mirror
/// has `commit`: clone it on first use, fetch only when the commit is
/// missing. The URL is passed after `--`, so it is never an option.
pub(crate) fn fetch_script(host: &Host, url: &str, commit: &str) -> String {
    let root = q(host.root());
    let url = q(url);
    let commit = q(commit);
    format!(
        "set -eu\n\
         cd {root}\n\
         ek_dir releases; ek_dir .ektool; ek_dir repo.git\n\
         mkdir -p releases .ektool\n\
         [ -e shared ] || mkdir shared\n\
         if [ ! -d repo.git ]; then\n\
         \x20 rm -rf repo.git.partial\n\
         \x20 git clone --quiet --mirror -- {url} repo.git.partial\n\
         \x20 mv -T repo.git.partial repo.git\n\
         fi\n\
         git -C repo.git remote set-url -- origin {url}\n\
         if ! git -C repo.git cat-file -e {commit}^{{commit}} 2>/dev/null; then\n\
         \x20 git -C repo.git fetch --quiet --prune --tags -- origin\n\
         fi\n\
         git -C repo.git cat-file -e {commit}^{{commit}} || {{ echo \"the repository has no commit {commit}\" >&2; exit 3; }}\n",
    )
}

/// Environment variables for git on the host: a deploy key when
/// configured, strict host key checking always (never `accept-new` or
/// `no`, which the seed's `~/.ssh/config` upload set for github.com), and
/// deadlines, so a git server that stops answering fails the fetch
/// instead of holding it until the command's own timeout: SSH gives up
/// connecting after 15 s and after a minute of unanswered keepalives,
/// HTTP(S) when less than 1 KB/s arrives for a minute.
pub(crate) fn git_env(env: &Environment) -> Vec<(String, String)> {
    let mut ssh = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 -o ServerAliveCountMax=4".to_owned();
    if let Some(key) = &env.git_ssh_key {
        ssh.push_str(&format!(" -i {} -o IdentitiesOnly=yes", q(key)));
    }
    if let Some(file) = &env.git_known_hosts {
        ssh.push_str(&format!(" -o UserKnownHostsFile={}", q(file)));
    }
    vec![
        ("GIT_SSH_COMMAND".into(), ssh),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_HTTP_LOW_SPEED_LIMIT".into(), "1000".into()),
        ("GIT_HTTP_LOW_SPEED_TIME".into(), "60".into()),
    ]
}

/// The shell script (after [`GUARDS`]) that builds release `name` from
/// the mirror: a fresh clone, or (`in_place`, the a/b layout) an update of
/// the slot's own checkout that keeps ignored build products such as a
/// virtualenv. It refuses to touch a live release (what `current` or
/// buedafab's `releases/current` points at), and a directory it did not
/// make unless it updates a slot in place.
pub(crate) fn checkout_script(
    host: &Host,
    env: &Environment,
    url: &str,
    name: &str,
    commit: &str,
    in_place: bool,
) -> String {
    let root = q(host.root());
    let rel = q(&format!("releases/{name}"));
    let qname = q(name);
    let commit = q(commit);
    let url = q(url);
    let mut s = format!(
        "set -eu\n\
         cd {root}\n\
         rel={rel}\n\
         ek_dir releases; ek_dir .ektool; ek_dir \"$rel\"\n\
         if ek_live | grep -qxF -- {qname}; then echo \"refusing to rebuild the live release $rel\" >&2; exit 4; fi\n\
         if [ -e \"$rel\" ] && [ ! -e \"$rel/{MARKER}\" ] && [ ! -e .ektool/{MADE}/{qname} ] && [ {in_place} = no ]; then\n\
         \x20 echo \"refusing to replace $rel: ektool did not make it\" >&2; exit 4\n\
         fi\n\
         mkdir -p releases\n\
         (ek_enter .ektool && ek_enter {MADE} && ek_file {qname} && : > {qname})\n\
         rm -f \"$rel/{MARKER}\" .current.*\n",
        in_place = if in_place { "yes" } else { "no" },
    );
    if in_place {
        s.push_str(&format!(
            "if [ -d \"$rel/.git\" ]; then\n\
             \x20 git -C \"$rel\" fetch --quiet \"$PWD/repo.git\" '+refs/heads/*:refs/remotes/mirror/*' '+refs/tags/*:refs/tags/*'\n\
             \x20 git -C \"$rel\" checkout --quiet --force --detach {commit}\n\
             \x20 git -C \"$rel\" clean -ffdq\n\
             else\n\
             \x20 rm -rf \"$rel\"\n\
             \x20 git clone --quiet --template= --no-checkout -- repo.git \"$rel\"\n\
             \x20 git -C \"$rel\" checkout --quiet --detach {commit}\n\
             fi\n"
        ));
    } else {
        s.push_str(&format!(
            "rm -rf \"$rel\"\n\
             git clone --quiet --template= --no-checkout -- repo.git \"$rel\"\n\
             git -C \"$rel\" checkout --quiet --detach {commit}\n"
        ));
    }
    // Relative submodule URLs resolve against origin: make it the real one.
    s.push_str(&format!(
        "git -C \"$rel\" remote set-url -- origin {url}\n\
         if [ -f \"$rel/.gitmodules\" ]; then\n\
         \x20 git -C \"$rel\" submodule --quiet sync --recursive\n\
         \x20 git -C \"$rel\" submodule --quiet update --init --recursive --force\n\
         fi\n"
    ));
    for dir in &env.shared_dirs {
        s.push_str(&link_shared(dir, true));
    }
    for file in &env.shared_files {
        s.push_str(&link_shared(file, false));
    }
    s.push_str(&format!(
        "rm -f \"$rel/REVISION\"\n\
         (set -C; printf '%s\\n' {commit} > \"$rel/REVISION\")\n"
    ));
    s
}

/// Links `shared/<path>` into the release with a relative target, so the
/// link survives the deploy root being mounted elsewhere. Nothing is
/// removed or created through a symlink inside the release (a committed
/// `public -> /` would otherwise aim `rm -rf` elsewhere).
fn link_shared(path: &SharedPath, is_dir: bool) -> String {
    let p = path.as_str();
    // From releases/<name>/<p>: up to the release, up two to the root.
    let up = "../".repeat(path.depth() + 2);
    let target = q(&format!("{up}shared/{p}"));
    let shared = q(&format!("shared/{p}"));
    let inside = q(p);
    let ensure = if is_dir {
        format!("[ -e {shared} ] || mkdir -p {shared}\n")
    } else {
        format!(
            "[ -e {shared} ] || {{ echo \"shared file {shared} is missing on this host; create it before deploying\" >&2; exit 5; }}\n"
        )
    };
    // Every directory above the link inside the release must be a real one.
    let mut parents = String::new();
    let parts: Vec<&str> = p.split('/').collect();
    for i in 1..parts.len() {
        parents.push_str(&format!("ek_file \"$rel\"/{}\n", q(&parts[..i].join("/"))));
    }
    format!(
        "{ensure}{parents}rm -rf \"$rel\"/{inside}\n\
         mkdir -p \"$(dirname \"$rel\"/{inside})\"\n\
         ln -s {target} \"$rel\"/{inside}\n"
    )
}

/// The shell fragment that writes the marker (inside a checkout script,
/// where `$rel` is the release directory): a temporary file (never
/// through a planted link: `set -C`) renamed into place, so a marker is
/// never half-written.
pub(crate) fn marker_fragment(marker: &Marker) -> String {
    let json = serde_json::to_string(marker).unwrap_or_default();
    format!(
        "{{ rm -f \"$rel/{MARKER}.tmp\" && (set -C; printf '%s' {json} > \"$rel/{MARKER}.tmp\") && mv -f \"$rel/{MARKER}.tmp\" \"$rel/{MARKER}\"; }} || exit 1\n",
        json = q(&json)
    )
}

/// The shell fragment (after [`GUARDS`]) that removes release directories
/// ektool made, never a live one (it reads `current` and
/// `releases/current` itself, relative or absolute links alike), and
/// their records.
pub(crate) fn remove_fragment(host: &Host, names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "(cd {} && ek_dir releases && ek_dir .ektool && live=$(ek_live)\n",
        q(host.root())
    );
    for n in names {
        let rel = q(&format!("releases/{n}"));
        let qn = q(n);
        s.push_str(&format!(
            "if ! printf '%s\\n' \"$live\" | grep -qxF -- {qn} && {{ [ -e {rel}/{MARKER} ] || [ -e .ektool/{MADE}/{qn} ]; }}; then rm -rf {rel} && rm -f .ektool/{MADE}/{qn}; fi\n"
        ));
    }
    s.push_str(")\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_links_are_relative() {
        let s = link_shared(&SharedPath::new("public/uploads").unwrap(), true);
        assert!(s.contains("ln -s ../../../shared/public/uploads"), "{s}");
        let s = link_shared(&SharedPath::new(".env").unwrap(), false);
        assert!(s.contains("ln -s ../../shared/.env"), "{s}");
        assert!(s.contains("is missing"), "{s}");
    }

    #[test]
    fn urls_are_never_options() {
        let host = Host::new(std::sync::Arc::new(ec2kit::LocalRemote::new()), "/srv/app");
        let s = fetch_script(&host, "/srv/git/app.git", &"a".repeat(40));
        assert!(
            s.contains("clone --quiet --mirror -- /srv/git/app.git"),
            "{s}"
        );
        assert!(s.contains("set-url -- origin /srv/git/app.git"), "{s}");
    }

    /// H5: with ektool's git environment, real `git` over real `ssh` to a
    /// server that accepts the connection and then never says a word gives
    /// up by itself (ConnectTimeout covers the SSH banner), rather than
    /// waiting for the fetch phase's own, much longer, deadline. Takes the
    /// 15 s ConnectTimeout.
    #[test]
    fn git_over_ssh_gives_up_on_a_server_that_never_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accept and hold every connection, silent.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in listener.incoming() {
                held.push(c);
            }
        });
        let env = Environment::new(vec!["localhost".into()], "/srv/app").unwrap();
        let mut git = std::process::Command::new("git");
        git.args([
            "ls-remote",
            "--",
            &format!("ssh://git@127.0.0.1:{port}/app.git"),
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        for (k, v) in git_env(&env) {
            git.env(k, v);
        }
        let mut child = git.spawn().unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > std::time::Duration::from_secs(90) {
                let _ = child.kill();
                panic!("git still waiting on a silent server after 90 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success());
        assert!(stderr.contains("timed out"), "{stderr}");
    }
}
