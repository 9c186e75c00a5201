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
use crate::shell::{GUARDS, q};

/// The log file, relative to the deploy root. What it says about a host's
/// releases (history, rollback target) is read with the host's state
/// ([`HostState::history`](crate::HostState::history)).
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A log entry with everything but what a test looks at fixed.
    pub(crate) fn entry(
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

    use LogAction::*;
    use LogResult::*;

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
