//! What a host has: its release directories, where `current` points, the
//! mirror, the maintenance flag and (when asked) the newest release-log
//! entries, read in one command without changing anything. What the log
//! says about those releases (the history table, the rollback target) is
//! answered here too, from the state and the log together.

use ec2kit::{Command, RemoteError};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventSink};
use crate::host::Host;
use crate::log::{LogAction, LogEntry, LogResult, is_bad};
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
    /// `shared_files` entries missing under `shared/` (checked only when
    /// asked for: by a deploy's lock round).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_shared_files: Vec<String>,
    /// The newest entries of the release log, oldest first (read only
    /// when asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogEntry>,
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
        Self::script_with(host, commit, maintenance_file, false, &[])
    }

    /// [`HostState::script`], with the newest 1000 lines of the release log
    /// when `log`, and which of `shared_files` are missing.
    pub(crate) fn script_with(
        host: &Host,
        commit: Option<&str>,
        maintenance_file: &str,
        log: bool,
        shared_files: &[crate::environment::SharedPath],
    ) -> String {
        let shared: String = shared_files
            .iter()
            .map(|f| {
                let f = q(f.as_str());
                format!("[ -e shared/{f} ] || printf 'missing\\t%s\\n' {f}\n")
            })
            .collect();
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
             {shared}{log})\n",
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
                (Some("missing"), Some(path), _) => {
                    state.missing_shared_files.push(path.to_owned());
                }
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

/// One release in the history of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The release directory.
    pub release: String,
    /// The commit.
    pub commit: String,
    /// Its tag.
    pub tag: Option<String>,
    /// When it was last deployed or rolled back to.
    pub at: Timestamp,
    /// By whom.
    pub who: String,
    /// What that was.
    pub action: LogAction,
    /// How it ended.
    pub result: Option<LogResult>,
    /// `current` points at it (and holds this commit).
    pub current: bool,
    /// Marked bad.
    pub bad: bool,
    /// Its directory still holds this commit, complete (a rollback target).
    pub available: bool,
    /// The operator's message.
    pub message: Option<String>,
}

impl HostState {
    /// The log as a table: one row per deploy or rollback, newest first, with
    /// current/bad/available marks from this state.
    pub fn history(&self, log: &[LogEntry]) -> Vec<HistoryRow> {
        let state = self;
        let current_commit = state.current_release().and_then(|r| r.commit());
        let mut rows: Vec<HistoryRow> = log
            .iter()
            .filter(|e| e.action != LogAction::Bad)
            .map(|e| HistoryRow {
                release: e.release.clone(),
                commit: e.commit.clone(),
                tag: e.tag.clone(),
                at: e.at,
                who: e.who.to_string(),
                action: e.action,
                result: e.result,
                current: false,
                bad: is_bad(log, &e.release, &e.commit),
                available: state.release(&e.release).and_then(|r| r.commit())
                    == Some(e.commit.as_str()),
                message: e.message.clone(),
            })
            .collect();
        rows.reverse();
        // Only the newest row of the live release carries the mark.
        if let Some(row) = rows.iter_mut().find(|r| {
            Some(r.release.as_str()) == state.current.as_deref()
                && Some(r.commit.as_str()) == current_commit
                && r.result == Some(LogResult::Success)
        }) {
            row.current = true;
        }
        rows
    }

    /// The release to roll back to: the newest successful deploy or rollback
    /// in the log that is not what is live, not marked bad, and still complete
    /// on the host with the same commit.
    pub fn rollback_target<'a>(&self, log: &'a [LogEntry]) -> Option<&'a LogEntry> {
        let state = self;
        let live = state.current_release();
        log.iter().rev().find(|e| {
            matches!(e.action, LogAction::Deploy | LogAction::Rollback)
                && e.result == Some(LogResult::Success)
                && !(Some(e.release.as_str()) == live.map(|r| r.name.as_str())
                    && Some(e.commit.as_str()) == live.and_then(|r| r.commit()))
                && Some(e.release.as_str()) != state.current.as_deref()
                && !is_bad(log, &e.release, &e.commit)
                && state.release(&e.release).and_then(|r| r.commit()) == Some(e.commit.as_str())
        })
    }
}

/// How far a host's clock (read into `state`) is ahead of ours: its clock
/// against ours halfway through the round trip that read it.
pub(crate) fn skew_ms(
    state: &HostState,
    sent_ns: i128,
    round_trip: std::time::Duration,
) -> Option<i64> {
    let host = state.clock_ns?;
    let half = i128::try_from(round_trip.as_nanos() / 2).unwrap_or(0);
    // The host's text is not trusted: saturate instead of overflowing.
    i64::try_from(host.saturating_sub(sent_ns).saturating_sub(half) / 1_000_000).ok()
}

/// Emits [`Event::ClockSkew`] for a host whose clock is off by more than
/// [`CLOCK_SKEW_BOUND_MS`](crate::check::CLOCK_SKEW_BOUND_MS) (half a
/// second).
pub(crate) fn report_skew(events: &EventSink, host: &Host, skew_ms: Option<i64>) {
    if let Some(ms) = skew_ms.filter(|ms| ms.unsigned_abs() > crate::check::CLOCK_SKEW_BOUND_MS) {
        events(&Event::ClockSkew {
            host: host.name().to_owned(),
            skew_ms: ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::entry;

    const C1: &str = "1111111111111111111111111111111111111111";

    fn state(current: &str, dirs: &[(&str, &str)]) -> HostState {
        HostState {
            exists: true,
            current: Some(current.into()),
            releases: dirs
                .iter()
                .map(|(n, c)| ReleaseDir {
                    name: (*n).into(),
                    marker: Some(Marker {
                        release: (*n).into(),
                        commit: (*c).into(),
                        tag: None,
                        built_at: Timestamp::UNIX_EPOCH,
                    }),
                    made: true,
                })
                .collect(),
            ..HostState::default()
        }
    }

    use LogAction::*;
    use LogResult::*;

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
    fn rollback_skips_bad_failed_and_overwritten_releases() {
        let log = vec![
            entry(Deploy, "r1", "c1", Some(Success)),
            entry(Deploy, "r2", "c2", Some(Success)),
            entry(Deploy, "r3", "c3", Some(RolledBack)),
            entry(Bad, "r3", "c3", None),
            entry(Deploy, "r4", "c4", Some(Success)),
            entry(Bad, "r2", "c2", None),
            entry(Deploy, "r5", "c5", Some(Success)),
        ];
        let s = state(
            "r5",
            &[
                ("r1", "c1"),
                ("r2", "c2"),
                ("r3", "c3"),
                ("r4", "c4"),
                ("r5", "c5"),
            ],
        );
        assert_eq!(s.rollback_target(&log).unwrap().release, "r4");
        // r4 gone: r3 rolled back and bad, r2 bad → r1.
        let s = state(
            "r5",
            &[("r1", "c1"), ("r2", "c2"), ("r3", "c3"), ("r5", "c5")],
        );
        assert_eq!(s.rollback_target(&log).unwrap().release, "r1");
    }

    #[test]
    fn ab_slot_rebuilt_with_another_commit_is_not_a_target() {
        let log = vec![
            entry(Deploy, "a", "c1", Some(Success)),
            entry(Deploy, "b", "c2", Some(Success)),
        ];
        // Slot a was being rebuilt with c3 and holds it now (deploy failed).
        let s = state("b", &[("a", "c3"), ("b", "c2")]);
        assert!(s.rollback_target(&log).is_none());
        let s = state("b", &[("a", "c1"), ("b", "c2")]);
        assert_eq!(s.rollback_target(&log).unwrap().release, "a");
    }
}
