//! Small helpers for the shell scripts sent to hosts, and for the text
//! hosts send back.

pub(crate) use ec2kit::remote::quote as q;

/// The last `max` bytes of a command's output, as text, for error messages.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", text.get(start..).unwrap_or_default())
}

/// A host command's failure in a few words, for [`HostFailure`]s: what it
/// said on stderr (or how it ended), never the whole script sent (the host
/// and the stage are said next to it), and with URL credentials redacted.
///
/// [`HostFailure`]: crate::HostFailure
pub(crate) fn describe(e: &ec2kit::RemoteError) -> String {
    let text = match e {
        ec2kit::RemoteError::Failed { status, stderr, .. } if stderr.is_empty() => {
            format!("failed with {status}")
        }
        ec2kit::RemoteError::Failed { status, stderr, .. } => {
            format!("{} ({status})", tail(stderr.as_bytes(), 800))
        }
        ec2kit::RemoteError::Timeout { after, .. } => {
            format!("timed out after {}", ec2kit::duration::format(*after))
        }
        other => other.to_string(),
    };
    crate::git::redact(&text)
}

/// The release directory name out of what `readlink current` printed:
/// `releases/<name>` (relative, as deploykit writes it) or
/// `<root>/releases/<name>` (absolute, as Capistrano writes it). Any other
/// target (outside the deploy root's `releases/`) is foreign: `None`.
pub(crate) fn release_name_of_link(target: &str, root: &str) -> Option<String> {
    let t = target.trim_end_matches(['\n', '/']);
    let rest = t
        .strip_prefix("releases/")
        .or_else(|| t.strip_prefix(&format!("{}/releases/", root.trim_end_matches('/'))))?;
    let plain = !rest.is_empty() && !rest.contains('/') && rest != "." && rest != "..";
    plain.then(|| rest.to_owned())
}

/// The first 12 characters of a commit id for display (never a byte slice
/// of text that came from a host: that can cut a character in two).
pub fn short(commit: &str) -> &str {
    match commit.char_indices().nth(12) {
        Some((cut, _)) => commit.get(..cut).unwrap_or(commit),
        None => commit,
    }
}

/// Whether `s` is a full commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A serde `deserialize_with` for commit ids read back from hosts (markers,
/// release-log lines): anything but 40/64 hex digits is refused, so the
/// marker counts as unfinished and the log line as cut.
pub(crate) fn commit_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    if is_commit_id(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom("not a commit id"))
    }
}

/// Exit code of the host-side guards ([`GUARDS`]): a path ektool would
/// write through is not what it must be.
#[cfg(test)]
pub(crate) const REFUSED: i32 = 6;

/// Shell functions every script that writes in a deploy root starts with.
///
/// The SSH user may be more privileged than whoever owns the deploy root
/// (`root@host` deploying an app user's tree): a symlink the app user
/// plants must never redirect one of ektool's writes. So
///
/// - `ek_dir D` refuses (exit 6) unless `D` is absent or a real directory
///   (not a symlink) owned by the SSH user or root, who are the only ones
///   who can then change what is inside it;
/// - `ek_file F` refuses unless `F` is not a symlink;
/// - `ek_cd D` enters `D` after `ek_dir`, and checks that it entered `D`
///   itself (the physical `$PWD` that `cd -P` sets), not what a link
///   swapped in meanwhile points at;
///   `ek_enter D` creates `D` first when it is missing;
/// - `ek_live` prints the release names `current` and buedafab's
///   `releases/current` point at (relative or absolute links), which must
///   never be rebuilt or removed.
///
/// The common case costs no process: a directory the user owns passes
/// `test -O`; `stat` and `id` run only for the others (root's). Every
/// process a script starts is about a millisecond of the host's CPU, and
/// a deploy runs these checks many times on every host.
///
/// Files are written only inside directories `ek_dir` accepted (after
/// `cd` into them, so a rename of the directory afterwards changes
/// nothing), with `set -C` (`O_EXCL`: a planted link makes the write
/// fail), or by `rename(2)`, which replaces a link instead of following it.
pub(crate) const GUARDS: &str = r#"ek_refuse() { echo "refusing to write through $PWD/$1: $2" >&2; exit 6; }
ek_dir() {
  if [ -L "$1" ]; then ek_refuse "$1" "it is a symbolic link"; fi
  [ -e "$1" ] || return 0
  [ -d "$1" ] || ek_refuse "$1" "it is not a directory"
  [ ! -O "$1" ] || return 0
  ek_o=$(stat -c %u -- "$1") || ek_refuse "$1" "cannot read its owner"
  if [ "$ek_o" != "$(id -u)" ] && [ "$ek_o" != 0 ]; then
    ek_refuse "$1" "it belongs to uid $ek_o, not to $(id -un) or root (deploy as its owner, or chown it)"
  fi
}
ek_file() { if [ -L "$1" ]; then ek_refuse "$1" "it is a symbolic link"; fi; }
ek_cd() {
  ek_dir "$1"; cd -P . || exit 1; ek_here=$PWD
  cd -P -- "$1" || ek_refuse "$1" "cannot enter it"
  [ "$PWD" = "${ek_here%/}/$1" ] || ek_refuse "$1" "it was replaced while checked"
  ek_dir .
}
ek_enter() { ek_dir "$1"; mkdir -p -- "$1" || exit 1; ek_cd "$1"; }
ek_live() {
  for ek_l in current releases/current; do
    ek_t=$(readlink "$ek_l" 2>/dev/null) || continue
    ek_t=${ek_t%/}; ek_n=${ek_t##*/}; ek_p=${ek_t%/*}
    [ "$ek_p" != "$ek_t" ] || ek_p=.
    case $ek_l:$ek_p in
      current:releases|current:*/releases|releases/current:.|releases/current:../releases|releases/current:*/releases) printf '%s\n' "$ek_n" ;;
    esac
  done
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        let root = "/srv/app";
        assert_eq!(
            release_name_of_link("releases/a\n", root).as_deref(),
            Some("a")
        );
        assert_eq!(
            release_name_of_link("/srv/app/releases/20240101000000", root).as_deref(),
            Some("20240101000000")
        );
        // Another tree's releases are not this root's.
        assert_eq!(
            release_name_of_link("/srv/other/releases/20240101000000", root),
            None
        );
        assert_eq!(release_name_of_link("/var/www/app-v7", root), None);
        assert_eq!(release_name_of_link("elsewhere/a", root), None);
        assert_eq!(release_name_of_link("releases/a/b", root), None);
        assert_eq!(release_name_of_link("", root), None);
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail(b"  abc  ", 10), "abc");
        assert_eq!(tail(b"0123456789", 4), "…6789");
    }

    #[test]
    fn short_never_cuts_a_character() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(&"é".repeat(20)), "é".repeat(12));
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0".repeat(64)));
        assert!(!is_commit_id(&"é".repeat(20)));
        assert!(!is_commit_id("c1"));
    }

    /// The guards, run by a real shell.
    #[test]
    fn guards_refuse_links_and_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("releases/a")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), d.join("linked")).unwrap();
        std::os::unix::fs::symlink("releases/a", d.join("current")).unwrap();
        std::os::unix::fs::symlink(d.join("releases/b"), d.join("releases/current")).unwrap();
        let run = |script: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{GUARDS}{script}"))
                .current_dir(d)
                .output()
                .unwrap()
        };
        assert!(run("ek_dir releases && ek_dir missing").status.success());
        assert!(run("ek_enter .ektool && ek_enter made && test \"$(pwd -P)\" = \"$(cd ../.. && pwd -P)/.ektool/made\"").status.success());
        assert_eq!(run("ek_cd linked").status.code(), Some(REFUSED));
        let out = run("ek_dir linked; echo after");
        assert_eq!(out.status.code(), Some(REFUSED));
        assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("after"));
        assert_eq!(run("ek_file linked").status.code(), Some(REFUSED));
        assert!(run("ek_file releases").status.success());
        let live = run("ek_live");
        assert_eq!(String::from_utf8_lossy(&live.stdout), "a\nb\n");
    }
}
