//! The release log: an append-only JSON-lines file on every host
//! (`<root>/.ektool/releases.jsonl`), one line per deploy, rollback or
//! "bad" mark: who, when, which release, which commit and tag, and how it
//! ended. Together with `readlink current` it answers "what is live, what
//! was before it, which releases are bad" without guessing from directory
//! times. Each line is written with a single `O_APPEND` write; a line cut
//! by a crash is skipped when reading, and so is a line whose commit is not
//! a commit id (the log is on the host: its text is not trusted). The log
//! is only written inside a `.ektool` directory the SSH user (or root)
//! owns, never through a symlink.

use std::time::Duration;

use ec2kit::{Command, RemoteError};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::host::{Actor, Host};
use crate::layout::HostState;
use crate::shell::{GUARDS, q};

/// The log file, relative to the deploy root.
pub const LOG_FILE: &str = ".ektool/releases.jsonl";

/// What a log line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogAction {
    /// A deploy.
    Deploy,
    /// A rollback (manual or automatic).
    Rollback,
    /// A release marked bad: rollbacks skip it.
    Bad,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogResult {
    /// It is live.
    Success,
    /// It failed before the switch; nothing changed.
    Failed,
    /// It was switched to, then switched back.
    RolledBack,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When.
    pub at: Timestamp,
    /// What.
    pub action: LogAction,
    /// Who.
    pub who: Actor,
    /// The environment.
    pub environment: String,
    /// The release directory.
    pub release: String,
    /// Its commit (40 or 64 hex digits).
    #[serde(deserialize_with = "crate::shell::commit_id")]
    pub commit: String,
    /// Its release tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// The release live before.
    #[serde(default)]
    pub previous: Option<String>,
    /// How it ended (none for a `bad` mark).
    #[serde(default)]
    pub result: Option<LogResult>,
    /// The operator's message, or why it failed.
    #[serde(default)]
    pub message: Option<String>,
}

/// Appends entries to a host's log.
pub(crate) async fn append(
    host: &Host,
    entries: &[LogEntry],
    timeout: Duration,
) -> Result<(), RemoteError> {
    let mut lines = Vec::new();
    for e in entries {
        lines.extend(line(e));
    }
    let script = format!("{GUARDS}{}", append_fragment(host));
    host.run_checked(&Command::shell(script).stdin(lines).timeout(timeout))
        .await
        .map(|_| ())
}

/// The shell fragment (after [`GUARDS`]) that appends standard input to
/// the log: in a subshell that enters `.ektool` only if it is the SSH
/// user's (or root's) own directory, and never through a link.
pub(crate) fn append_fragment(host: &Host) -> String {
    format!(
        "(mkdir -p {root} && cd {root} && ek_enter .ektool && ek_file {file} && cat >> {file}) || exit $?\n",
        root = q(host.root()),
        file = q(LOG_NAME),
    )
}

/// The log's file name inside `.ektool`.
const LOG_NAME: &str = "releases.jsonl";

/// One entry as a log line.
pub(crate) fn line(entry: &LogEntry) -> Vec<u8> {
    let mut l = serde_json::to_vec(entry).unwrap_or_default();
    l.push(b'\n');
    l
}

/// Reads a host's log (empty when there is none), oldest first.
pub async fn read(host: &Host) -> Result<Vec<LogEntry>, RemoteError> {
    read_within(host, crate::environment::Timeouts::default().state.get()).await
}

/// [`read`], with a deadline for the command.
pub(crate) async fn read_within(
    host: &Host,
    timeout: Duration,
) -> Result<Vec<LogEntry>, RemoteError> {
    let script = format!(
        "[ ! -f {file} ] || cat {file}",
        file = q(&host.path(LOG_FILE))
    );
    let out = host
        .run_checked(&Command::shell(script).timeout(timeout))
        .await?;
    Ok(parse(&out.stdout_str()))
}

/// Parses log text, skipping lines that are not entries.
pub fn parse(text: &str) -> Vec<LogEntry> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Whether (release, commit) is marked bad: a `bad` mark not followed by a
/// successful deploy of the same release and commit.
pub fn is_bad(log: &[LogEntry], release: &str, commit: &str) -> bool {
    let mut bad = false;
    for e in log
        .iter()
        .filter(|e| e.release == release && e.commit == commit)
    {
        match (e.action, e.result) {
            (LogAction::Bad, _) => bad = true,
            (LogAction::Deploy, Some(LogResult::Success)) => bad = false,
            _ => {}
        }
    }
    bad
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

/// The log as a table: one row per deploy or rollback, newest first, with
/// current/bad/available marks from the host's state.
pub fn history(log: &[LogEntry], state: &HostState) -> Vec<HistoryRow> {
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
pub fn rollback_target<'a>(log: &'a [LogEntry], state: &HostState) -> Option<&'a LogEntry> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ReleaseDir;
    use crate::release::Marker;

    fn entry(
        action: LogAction,
        release: &str,
        commit: &str,
        result: Option<LogResult>,
    ) -> LogEntry {
        LogEntry {
            at: Timestamp::UNIX_EPOCH,
            action,
            who: Actor {
                user: "u".into(),
                machine: "m".into(),
                pid: 1,
                scope: None,
            },
            environment: "e".into(),
            release: release.into(),
            commit: commit.into(),
            tag: None,
            previous: None,
            result,
            message: None,
        }
    }

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
        assert_eq!(rollback_target(&log, &s).unwrap().release, "r4");
        // r4 gone: r3 rolled back and bad, r2 bad → r1.
        let s = state(
            "r5",
            &[("r1", "c1"), ("r2", "c2"), ("r3", "c3"), ("r5", "c5")],
        );
        assert_eq!(rollback_target(&log, &s).unwrap().release, "r1");
    }

    #[test]
    fn ab_slot_rebuilt_with_another_commit_is_not_a_target() {
        let log = vec![
            entry(Deploy, "a", "c1", Some(Success)),
            entry(Deploy, "b", "c2", Some(Success)),
        ];
        // Slot a was being rebuilt with c3 and holds it now (deploy failed).
        let s = state("b", &[("a", "c3"), ("b", "c2")]);
        assert!(rollback_target(&log, &s).is_none());
        let s = state("b", &[("a", "c1"), ("b", "c2")]);
        assert_eq!(rollback_target(&log, &s).unwrap().release, "a");
    }

    #[test]
    fn a_successful_redeploy_clears_the_bad_mark() {
        let log = vec![
            entry(Deploy, "r1", "c1", Some(Success)),
            entry(Bad, "r1", "c1", None),
            entry(Deploy, "r1", "c1", Some(Success)),
        ];
        assert!(!is_bad(&log, "r1", "c1"));
        assert!(is_bad(&log[..2], "r1", "c1"));
    }

    #[test]
    fn cut_lines_and_lines_without_a_commit_id_are_skipped() {
        let good = "a".repeat(40);
        let line = serde_json::to_string(&entry(Deploy, "r1", &good, Some(Success))).unwrap();
        let text = format!("{line}\n{{\"at\":\"2024-");
        assert_eq!(parse(&text).len(), 1);
        let multibyte =
            serde_json::to_string(&entry(Deploy, "r1", &"é".repeat(20), Some(Success))).unwrap();
        assert!(parse(&multibyte).is_empty());
    }
}
