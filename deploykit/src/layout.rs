//! Where releases live on a host and which one is current.
//!
//! ```text
//! <root>/current -> releases/<name>   relative symlink, replaced by rename(2)
//! <root>/releases/<name>/             one directory per release
//!        releases/<name>/.ektool-release   completion marker, written last
//! <root>/shared/                      linked into every release
//! <root>/repo.git                     mirror of the repository
//! <root>/.ektool/lock/                the deploy lock
//! <root>/.ektool/releases.jsonl       the release log
//! <root>/.ektool/made/<name>          the release directories ektool made
//! ```
//!
//! A deploy root laid out by another tool is taken over without harm:
//! `current` may be absolute (Capistrano) or point outside `releases/` (a
//! hand-made link), buedafab keeps its live pointer in `releases/current`.
//! The raw link is kept ([`HostState::current_link`]) so a failed deploy
//! puts back exactly that, and only directories ektool made are removed.
//!
//! The [`ReleaseLayout`] decides which directory a release is built in and
//! which ones a successful deploy may remove; [`HostState`] is what a host
//! has, read in one command.

use std::fmt;

use ec2kit::{Command, RemoteError};
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::release::{MARKER, Marker};
use crate::shell::{q, release_name_of_link};

/// One directory under `releases/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDir {
    /// Its name.
    pub name: String,
    /// Its completion marker; `None`: unfinished (never switched to).
    pub marker: Option<Marker>,
    /// Whether ektool recorded making it (`.ektool/made/<name>`).
    #[serde(default)]
    pub made: bool,
}

impl ReleaseDir {
    /// Whether the build finished.
    pub fn is_complete(&self) -> bool {
        self.marker.is_some()
    }

    /// Whether ektool made it (a completion marker, or the record written
    /// before its checkout): only those are ever cleaned up.
    pub fn is_ours(&self) -> bool {
        self.made || self.marker.is_some()
    }

    /// The commit it holds, when complete.
    pub fn commit(&self) -> Option<&str> {
        self.marker.as_ref().map(|m| m.commit.as_str())
    }
}

/// What a host has, read without changing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Whether the deploy root exists.
    pub exists: bool,
    /// The release `current` points to (from `readlink`, never guessed).
    pub current: Option<String>,
    /// The raw link target, when it is not under `releases/`.
    pub foreign_current: Option<String>,
    /// `current`'s raw target exactly as `readlink` printed it (relative or
    /// absolute, inside `releases/` or not): what a failed deploy puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_link: Option<String>,
    /// The release buedafab's `releases/current` link points at: live for
    /// the web server that still uses it, so never rebuilt or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_current: Option<String>,
    /// The host's clock (Unix nanoseconds) when the state was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_ns: Option<i128>,
    /// How far the host's clock is ahead of the reader's, in milliseconds
    /// (negative: behind), estimated from `clock_ns` and the round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
    /// Every release directory, sorted by name.
    pub releases: Vec<ReleaseDir>,
    /// Whether the mirror `repo.git` exists.
    pub mirror_exists: bool,
    /// Whether the mirror already has the commit asked about.
    pub mirror_has_commit: bool,
    /// Whether the maintenance flag is set.
    pub maintenance: bool,
    /// The newest entries of the release log, oldest first (read only
    /// when asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<crate::log::LogEntry>,
}

impl HostState {
    /// A release directory by name.
    pub fn release(&self, name: &str) -> Option<&ReleaseDir> {
        self.releases.iter().find(|r| r.name == name)
    }

    /// The current release's directory.
    pub fn current_release(&self) -> Option<&ReleaseDir> {
        self.current.as_deref().and_then(|c| self.release(c))
    }

    /// Reads a host's state (`commit`: the commit to look for in the mirror).
    pub async fn read(
        host: &Host,
        commit: Option<&str>,
        maintenance_file: &str,
    ) -> Result<Self, RemoteError> {
        Self::read_within(
            host,
            commit,
            maintenance_file,
            crate::environment::Timeouts::default().state.get(),
        )
        .await
    }

    /// [`HostState::read`], with a deadline for the command.
    pub(crate) async fn read_within(
        host: &Host,
        commit: Option<&str>,
        maintenance_file: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, RemoteError> {
        let script = Self::script(host, commit, maintenance_file);
        let out = host
            .run_checked(&Command::shell(script).timeout(timeout))
            .await?;
        Ok(Self::parse(&out.stdout_str(), host.root()))
    }

    /// The read-only script that prints a host's state (also run by the
    /// lock step, saving a round trip per host).
    pub(crate) fn script(host: &Host, commit: Option<&str>, maintenance_file: &str) -> String {
        Self::script_with(host, commit, maintenance_file, false)
    }

    /// [`HostState::script`], with the newest 1000 lines of the release log
    /// when `log`.
    pub(crate) fn script_with(
        host: &Host,
        commit: Option<&str>,
        maintenance_file: &str,
        log: bool,
    ) -> String {
        let log = if log {
            format!(
                "[ ! -f {file} ] || tail -n 1000 {file} | sed 's/^/log\t/'\n",
                file = q(crate::log::LOG_FILE)
            )
        } else {
            String::new()
        };
        // Builtins only in the loop (`read`, not `cat`): no fork per release.
        // Links inside releases/ (buedafab's `current`) are not releases.
        format!(
            "(printf 'clock\\t%s\\n' \"$(date +%s%N)\"\n\
             cd {root} 2>/dev/null || {{ echo absent; exit 0; }}\n\
             printf 'current\\t%s\\n' \"$(readlink current 2>/dev/null)\"\n\
             if [ -L releases/current ]; then printf 'legacy\\t%s\\n' \"$(readlink releases/current)\"; fi\n\
             for d in releases/*/; do\n\
             \x20 [ -d \"$d\" ] && [ ! -L \"${{d%/}}\" ] || continue\n\
             \x20 n=${{d#releases/}}; n=${{n%/}}\n\
             \x20 if [ -f \"$d{MARKER}\" ]; then m=; IFS= read -r m < \"$d{MARKER}\" || true; printf 'release\\t%s\\t%s\\n' \"$n\" \"$m\"; else printf 'unfinished\\t%s\\n' \"$n\"; fi\n\
             \x20 if [ -f \".ektool/{made}/$n\" ]; then printf 'made\\t%s\\n' \"$n\"; fi\n\
             done\n\
             if [ -d repo.git ]; then echo repo; fi\n\
             if [ -n {commit} ] && git -C repo.git cat-file -e {commit}^{{commit}} 2>/dev/null; then echo mirror; fi\n\
             if [ -e shared/{maint} ]; then echo maintenance; fi\n\
             {log})\n",
            made = crate::release::MADE,
            root = q(host.root()),
            commit = q(commit.unwrap_or("")),
            maint = q(maintenance_file),
        )
    }

    /// Parses what [`HostState::script`] printed on a host whose deploy
    /// root is `root`. Never fails: what does not parse is left out (a
    /// marker that does not parse, e.g. with a commit that is not a commit
    /// id, makes its release unfinished).
    pub(crate) fn parse(text: &str, root: &str) -> Self {
        let mut state = Self {
            exists: true,
            ..Self::default()
        };
        let mut made = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("absent"), _, _) => state.exists = false,
                (Some("clock"), Some(ns), _) => state.clock_ns = ns.trim().parse().ok(),
                (Some("current"), Some(target), _) if !target.is_empty() => {
                    state.current_link = Some(target.to_owned());
                    match release_name_of_link(target, root) {
                        Some(name) => state.current = Some(name),
                        None => state.foreign_current = Some(target.to_owned()),
                    }
                }
                (Some("legacy"), Some(target), _) => {
                    // `releases/current -> a` is relative to releases/.
                    let t = target.trim_end_matches('/');
                    state.legacy_current = if t.contains('/') {
                        release_name_of_link(t, root)
                            .or_else(|| t.strip_prefix("../releases/").map(str::to_owned))
                    } else {
                        Some(t.to_owned()).filter(|t| !t.is_empty() && t != "." && t != "..")
                    };
                }
                (Some("release"), Some(name), Some(json)) => state.releases.push(ReleaseDir {
                    name: name.to_owned(),
                    // A marker that does not parse is treated as unfinished.
                    marker: serde_json::from_str(json).ok(),
                    made: false,
                }),
                (Some("unfinished"), Some(name), _) => state.releases.push(ReleaseDir {
                    name: name.to_owned(),
                    marker: None,
                    made: false,
                }),
                (Some("made"), Some(name), _) => made.push(name.to_owned()),
                (Some("repo"), _, _) => state.mirror_exists = true,
                (Some("mirror"), _, _) => state.mirror_has_commit = true,
                (Some("maintenance"), _, _) => state.maintenance = true,
                (Some("log"), Some(first), rest) => {
                    let line = match rest {
                        Some(r) => format!("{first}\t{r}"),
                        None => first.to_owned(),
                    };
                    // A line cut by a crash is skipped.
                    if let Ok(e) = serde_json::from_str(&line) {
                        state.log.push(e);
                    }
                }
                _ => {}
            }
        }
        for r in &mut state.releases {
            r.made = made.contains(&r.name);
        }
        state.releases.sort_by(|a, b| a.name.cmp(&b.name));
        state
    }

    /// The release names a deploy must not rebuild or remove: `current`'s
    /// and `releases/current`'s.
    pub fn live(&self) -> impl Iterator<Item = &str> {
        self.current
            .as_deref()
            .into_iter()
            .chain(self.legacy_current.as_deref())
    }
}

/// Where a release goes on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Placement {
    /// A complete release of this commit is already there: switch to it
    /// without rebuilding.
    Reuse {
        /// The release directory.
        release: String,
    },
    /// Build into this directory.
    Build {
        /// The release directory.
        release: String,
        /// Update the directory's own checkout, keeping ignored build
        /// products (a/b slots), instead of a fresh clone.
        in_place: bool,
    },
}

impl Placement {
    /// The release directory.
    pub fn release(&self) -> &str {
        match self {
            Self::Reuse { release } | Self::Build { release, .. } => release,
        }
    }
}

/// Where releases live and which ones may go.
pub trait ReleaseLayout: Send + Sync + fmt::Debug {
    /// The layout's name (`ab`, `timestamped`).
    fn name(&self) -> &'static str;

    /// Where to put `commit` on a host in `state`; `fresh` is this run's
    /// new release name (the same on every host).
    fn place(&self, state: &HostState, commit: &str, fresh: &str) -> Placement;

    /// The release directories a successful deploy removes. Never the
    /// current release nor `previous`.
    fn cleanup(&self, state: &HostState, current: &str, previous: Option<&str>) -> Vec<String>;
}

/// buedafab's layout: two slots, `releases/a` and `releases/b`; a deploy
/// builds in the slot that is not live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbSlots;

impl AbSlots {
    /// The two slots.
    pub const SLOTS: [&'static str; 2] = ["a", "b"];
}

impl ReleaseLayout for AbSlots {
    fn name(&self) -> &'static str {
        "ab"
    }

    fn place(&self, state: &HostState, commit: &str, _fresh: &str) -> Placement {
        // The live slot first: redeploying what is live is a no-op switch.
        let mut slots = Self::SLOTS.to_vec();
        slots.sort_by_key(|s| Some(*s) != state.current.as_deref());
        if let Some(slot) = slots
            .iter()
            .find(|s| state.release(s).and_then(ReleaseDir::commit) == Some(commit))
        {
            return Placement::Reuse {
                release: (*slot).to_owned(),
            };
        }
        // Never the live slot (ektool's `current`, or buedafab's
        // `releases/current` on a host taken over); if both are live the
        // host refuses the build before anything changes.
        let live: Vec<&str> = state.live().collect();
        let target = Self::SLOTS
            .iter()
            .find(|s| !live.contains(s))
            .copied()
            .unwrap_or(match state.current.as_deref() {
                Some("a") => "b",
                _ => "a",
            });
        Placement::Build {
            release: target.to_owned(),
            in_place: true,
        }
    }

    fn cleanup(&self, _state: &HostState, _current: &str, _previous: Option<&str>) -> Vec<String> {
        // Both slots are always kept: one is live, the other is the rollback.
        Vec::new()
    }
}

/// Capistrano's layout: `releases/<UTC YYYYmmddHHMMSS>`, keeping the
/// newest `keep` complete releases (and always the current and previous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamped {
    /// Complete releases to keep.
    pub keep: usize,
}

impl Timestamped {
    /// Whether a directory name is one of ours (other directories under
    /// `releases/` are left alone).
    pub fn is_release_name(name: &str) -> bool {
        name.len() == 14 && name.bytes().all(|b| b.is_ascii_digit())
    }

    /// A new release name for `now`: later than every valid name in
    /// `existing` (so names grow even when two deploys share a second, or
    /// clocks disagree), and never one of them. A 14-digit name that is
    /// not a time (`99999999999999`) is ignored when looking for the
    /// newest, so it cannot make every later deploy reuse one name.
    pub fn fresh_name<'a>(
        now: jiff::Timestamp,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> String {
        let taken: std::collections::BTreeSet<&str> = existing
            .into_iter()
            .filter(|n| Self::is_release_name(n))
            .collect();
        let now = now.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let newest = taken.iter().rev().find_map(|n| parse_name(n));
        let mut at = match newest.and_then(next_second) {
            Some(next) if next > now => next,
            _ => now,
        };
        // Only a name of year 9999 has no next second: count down instead.
        let mut step_back = false;
        while taken.contains(format_name(at).as_str()) {
            let next = if step_back { None } else { next_second(at) };
            match next {
                Some(n) => at = n,
                None => {
                    step_back = true;
                    match at.checked_sub(jiff::Span::new().seconds(1)) {
                        Ok(p) => at = p,
                        Err(_) => break,
                    }
                }
            }
        }
        format_name(at)
    }
}

fn parse_name(name: &str) -> Option<jiff::civil::DateTime> {
    jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", name).ok()
}

fn format_name(at: jiff::civil::DateTime) -> String {
    at.strftime("%Y%m%d%H%M%S").to_string()
}

/// One second later (`…59` carries into minutes, and so on), if that is
/// still a 14-digit name.
fn next_second(at: jiff::civil::DateTime) -> Option<jiff::civil::DateTime> {
    at.checked_add(jiff::Span::new().seconds(1))
        .ok()
        .filter(|n| format_name(*n).len() == 14)
}

impl ReleaseLayout for Timestamped {
    fn name(&self) -> &'static str {
        "timestamped"
    }

    fn place(&self, state: &HostState, commit: &str, fresh: &str) -> Placement {
        let built = state
            .releases
            .iter()
            .rev()
            .find(|r| r.commit() == Some(commit));
        match built {
            Some(r) => Placement::Reuse {
                release: r.name.clone(),
            },
            None => Placement::Build {
                release: fresh.to_owned(),
                in_place: false,
            },
        }
    }

    fn cleanup(&self, state: &HostState, current: &str, previous: Option<&str>) -> Vec<String> {
        let mut remove = cleanup_plan(&state.releases, current, previous, self.keep);
        remove.retain(|r| state.legacy_current.as_deref() != Some(r.as_str()));
        remove
    }
}

/// Which releases to remove: every unfinished one ektool made, and
/// complete ones beyond the newest `keep`; never `current` nor `previous`,
/// never a directory whose name is not a release name, never one ektool
/// did not make (another tool's releases on a host taken over).
pub fn cleanup_plan(
    releases: &[ReleaseDir],
    current: &str,
    previous: Option<&str>,
    keep: usize,
) -> Vec<String> {
    let protected = |n: &str| n == current || Some(n) == previous;
    let mut ours: Vec<&ReleaseDir> = releases
        .iter()
        .filter(|r| Timestamped::is_release_name(&r.name) && r.is_ours())
        .collect();
    ours.sort_by(|a, b| a.name.cmp(&b.name));
    let mut remove: Vec<String> = ours
        .iter()
        .filter(|r| !r.is_complete() && !protected(&r.name))
        .map(|r| r.name.clone())
        .collect();
    let complete: Vec<&&ReleaseDir> = ours.iter().filter(|r| r.is_complete()).collect();
    // The protected ones count towards `keep`.
    let mut kept = complete.iter().filter(|r| protected(&r.name)).count();
    for r in complete.iter().rev() {
        if protected(&r.name) {
            continue;
        }
        if kept < keep {
            kept += 1;
        } else {
            remove.push(r.name.clone());
        }
    }
    remove.sort();
    remove
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str, commit: Option<&str>) -> ReleaseDir {
        ReleaseDir {
            name: name.into(),
            marker: commit.map(|c| Marker {
                release: name.into(),
                commit: c.into(),
                tag: None,
                built_at: jiff::Timestamp::UNIX_EPOCH,
            }),
            made: false,
        }
    }

    fn foreign(name: &str) -> ReleaseDir {
        dir(name, None)
    }

    fn unfinished(name: &str) -> ReleaseDir {
        ReleaseDir {
            made: true,
            ..dir(name, None)
        }
    }

    const C1: &str = "1111111111111111111111111111111111111111";

    #[test]
    fn parses_state() {
        let s = HostState::parse(
            &format!(
                "clock\t1700000000000000000\ncurrent\treleases/b\nrelease\ta\t{{\"release\":\"a\",\"commit\":\"{C1}\",\"built_at\":\"2024-01-01T00:00:00Z\"}}\nunfinished\tb\nmade\tb\nmirror\n"
            ),
            "/srv/app",
        );
        assert_eq!(s.current.as_deref(), Some("b"));
        assert_eq!(s.current_link.as_deref(), Some("releases/b"));
        assert_eq!(s.releases.len(), 2);
        assert_eq!(s.releases[0].commit(), Some(C1));
        assert!(!s.releases[1].is_complete());
        assert!(s.releases[1].is_ours());
        assert!(s.mirror_has_commit);
        assert_eq!(s.clock_ns, Some(1_700_000_000_000_000_000));
        assert!(!HostState::parse("absent\n", "/srv/app").exists);
    }

    #[test]
    fn parses_links_made_by_other_tools() {
        // Capistrano: absolute; a hand-made link elsewhere; buedafab.
        let s = HostState::parse(
            "current\t/srv/app/releases/20200101000000\nunfinished\t20200101000000\n",
            "/srv/app",
        );
        assert_eq!(s.current.as_deref(), Some("20200101000000"));
        assert_eq!(
            s.current_link.as_deref(),
            Some("/srv/app/releases/20200101000000")
        );
        assert!(!s.releases[0].is_ours());
        let s = HostState::parse("current\t/var/www/app-v7\n", "/srv/app");
        assert_eq!(s.current, None);
        assert_eq!(s.current_link.as_deref(), Some("/var/www/app-v7"));
        for link in ["/srv/app/releases/a", "a", "../releases/a"] {
            let s = HostState::parse(&format!("legacy\t{link}\n"), "/srv/app");
            assert_eq!(s.legacy_current.as_deref(), Some("a"), "{link}");
        }
    }

    #[test]
    fn a_marker_whose_commit_is_not_a_commit_id_is_unfinished() {
        let s = HostState::parse(
            &format!(
                "release\ta\t{{\"release\":\"a\",\"commit\":\"{}\",\"built_at\":\"2024-01-01T00:00:00Z\"}}\n",
                "é".repeat(20)
            ),
            "/srv/app",
        );
        assert!(!s.releases[0].is_complete());
    }

    #[test]
    fn ab_never_builds_in_buedafabs_live_slot() {
        let state = HostState {
            exists: true,
            legacy_current: Some("a".into()),
            releases: vec![foreign("a"), foreign("b")],
            ..HostState::default()
        };
        assert_eq!(AbSlots.place(&state, C1, "x").release(), "b");
    }

    #[test]
    fn ab_builds_in_the_other_slot_and_reuses_built_commits() {
        let state = HostState {
            exists: true,
            current: Some("a".into()),
            releases: vec![dir("a", Some("c1")), dir("b", Some("c0"))],
            ..HostState::default()
        };
        assert_eq!(
            AbSlots.place(&state, "c2", "x"),
            Placement::Build {
                release: "b".into(),
                in_place: true
            }
        );
        assert_eq!(
            AbSlots.place(&state, "c0", "x"),
            Placement::Reuse {
                release: "b".into()
            }
        );
        assert_eq!(
            AbSlots.place(&HostState::default(), "c0", "x"),
            Placement::Build {
                release: "a".into(),
                in_place: true
            }
        );
    }

    #[test]
    fn timestamped_reuses_or_builds_fresh() {
        let state = HostState {
            exists: true,
            current: Some("20240102000000".into()),
            releases: vec![
                dir("20240101000000", Some("c1")),
                dir("20240102000000", Some("c2")),
            ],
            ..HostState::default()
        };
        let t = Timestamped { keep: 3 };
        assert_eq!(
            t.place(&state, "c1", "20240103000000"),
            Placement::Reuse {
                release: "20240101000000".into()
            }
        );
        assert_eq!(
            t.place(&state, "c3", "20240103000000").release(),
            "20240103000000"
        );
    }

    #[test]
    fn a_name_that_is_not_a_time_is_never_reused() {
        let now: jiff::Timestamp = "2024-05-06T07:08:09Z".parse().unwrap();
        let mut names = vec!["99999999999999".to_owned()];
        for _ in 0..3 {
            let n = Timestamped::fresh_name(now, names.iter().map(String::as_str));
            assert!(!names.contains(&n), "{n} reused");
            assert!(parse_name(&n).is_some(), "{n} is a time");
            names.push(n);
        }
        // Nothing comes after the last second of year 9999: still a new name.
        let last = "99991231235959";
        let n = Timestamped::fresh_name(now, [last, "20240506070809"]);
        assert!(n != last && n != "20240506070809", "{n}");
    }

    #[test]
    fn fresh_names_grow() {
        let now: jiff::Timestamp = "2024-05-06T07:08:09Z".parse().unwrap();
        assert_eq!(Timestamped::fresh_name(now, []), "20240506070809");
        assert_eq!(
            Timestamped::fresh_name(now, ["20240506070809"]),
            "20240506070810"
        );
        assert_eq!(
            Timestamped::fresh_name(now, ["20240506070859", "a"]),
            "20240506070900"
        );
    }

    #[test]
    fn cleanup_keeps_newest_and_protected() {
        let rs = vec![
            dir("20240101000000", Some("1")),
            dir("20240102000000", Some("2")),
            unfinished("20240103000000"),
            dir("20240104000000", Some("4")),
            dir("20240105000000", Some("5")),
            dir("notours", None),
        ];
        assert_eq!(
            cleanup_plan(&rs, "20240105000000", Some("20240101000000"), 3),
            vec!["20240102000000", "20240103000000"]
        );
    }

    /// Capistrano's releases (no marker, no record) are never removed and
    /// never count towards `keep`.
    #[test]
    fn cleanup_leaves_releases_ektool_did_not_make() {
        let rs = vec![
            foreign("20200101000000"),
            foreign("20200102000000"),
            dir("20240104000000", Some("4")),
            dir("20240105000000", Some("5")),
            dir("20240106000000", Some("6")),
        ];
        assert_eq!(
            cleanup_plan(&rs, "20240106000000", Some("20240105000000"), 2),
            vec!["20240104000000"]
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn name(n: u32) -> String {
            format!("2024{:010}", n)
        }

        proptest! {
            #[test]
            fn cleanup_never_removes_current_or_previous_and_keeps_the_newest(
                dirs in proptest::collection::btree_map(0u32..500, any::<bool>(), 1..40),
                foreign in any::<bool>(),
                keep in 2usize..8,
                cur in any::<Index>(),
                prev in any::<Option<Index>>(),
            ) {
                let mut releases: Vec<ReleaseDir> = dirs
                    .iter()
                    .map(|(n, complete)| ReleaseDir { made: true, ..dir(&name(*n), complete.then_some("c")) })
                    .collect();
                if foreign {
                    releases.push(dir("shared-cache", None));
                }
                let names: Vec<String> = dirs.keys().map(|n| name(*n)).collect();
                let current = names[cur.index(names.len())].clone();
                let previous = prev.map(|p| names[p.index(names.len())].clone());
                let removed = cleanup_plan(&releases, &current, previous.as_deref(), keep);

                prop_assert!(!removed.contains(&current));
                if let Some(p) = &previous {
                    prop_assert!(!removed.contains(p));
                }
                prop_assert!(!removed.iter().any(|r| r == "shared-cache"));
                prop_assert!(removed.iter().all(|r| names.contains(r)));
                let complete: Vec<&String> = releases
                    .iter()
                    .filter(|r| r.is_complete() && names.contains(&r.name))
                    .map(|r| &r.name)
                    .collect();
                let kept: Vec<&&String> = complete.iter().filter(|n| !removed.contains(n)).collect();
                prop_assert!(kept.len() >= keep.min(complete.len()));
                // Unfinished ones go, unless protected.
                for r in releases.iter().filter(|r| !r.is_complete() && names.contains(&r.name)) {
                    let protected = r.name == current || Some(&r.name) == previous.as_ref();
                    prop_assert_eq!(removed.contains(&r.name), !protected);
                }
                // Complete releases removed are older than every unprotected one kept.
                let protected = |n: &str| n == current || Some(n) == previous.as_deref();
                for gone in removed.iter().filter(|r| complete.contains(r)) {
                    for k in kept.iter().filter(|k| !protected(k.as_str())) {
                        prop_assert!(gone < **k, "{} removed but {} kept", gone, k);
                    }
                }
            }
        }
    }
}
