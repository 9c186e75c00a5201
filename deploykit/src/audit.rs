//! The audit log: who did what to a host, when, and how it ended.
//!
//! Deploys, rollbacks and bad marks are in the release log
//! ([`crate::log`], `.ektool/releases.jsonl`); every other action — a
//! restart, maintenance on or off, a hand-held lock taken or released, a
//! command run with [`crate::exec`] — appends one JSON line to a sibling
//! file, `<root>/.ektool/audit.jsonl`, with the same guards (a `.ektool`
//! the SSH user owns, never through a link, one `O_APPEND` write).
//!
//! They are separate files so that the release log stays what rollbacks
//! read: its readers take its newest 1000 lines, and a thousand `run`s must
//! not push the last good release out of that window (nor break an older
//! ektool, which reads the same lines). [`read`] reads both files of a host
//! in one command and merges them into [`AuditEntry`] values; [`merge`]
//! puts several hosts' entries into one timeline. An action this version
//! does not know (written by a newer ektool) is kept as
//! [`AuditAction::Other`]; a line that does not parse (cut by a crash) is
//! skipped.
//!
//! Appending is best effort: an append that fails never changes the
//! outcome of the action it records; the operation reports it (a
//! [`Event::Warning`](crate::Event::Warning), or
//! [`HostRun::audit_error`](crate::exec::HostRun::audit_error)).

use std::time::Duration;

use ec2kit::{Command, RemoteError};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::host::{Actor, Host};
use crate::log::{LogAction, LogEntry, LogResult};
use crate::shell::{GUARDS, q, short};

/// The audit file, relative to the deploy root.
pub const AUDIT_FILE: &str = ".ektool/audit.jsonl";

/// The audit file's name inside `.ektool`.
const AUDIT_NAME: &str = "audit.jsonl";

/// What was done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A deploy (from the release log).
    Deploy,
    /// A rollback (from the release log).
    Rollback,
    /// A release marked bad (from the release log).
    Bad,
    /// The restart hooks ran.
    Restart,
    /// Maintenance mode turned on.
    MaintenanceOn,
    /// Maintenance mode turned off.
    MaintenanceOff,
    /// The deploy lock taken by hand.
    Lock,
    /// A hand-held lock released.
    Unlock,
    /// The host was provisioned.
    Provision,
    /// A command ran in the live release.
    Run,
    /// An action this version does not know (a newer ektool wrote it).
    #[serde(untagged)]
    Other(String),
}

impl AuditAction {
    /// Its name in the log (`maintenance_on`, …).
    pub fn name(&self) -> String {
        match self {
            Self::Other(s) => s.clone(),
            a => serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    /// It did what was asked (a command: it exited 0).
    Success,
    /// It failed on this host (a command: it exited non-zero, or did not
    /// run).
    Failed,
    /// A deploy or rollback switched to, then switched back.
    RolledBack,
    /// A result this version does not know.
    #[serde(untagged)]
    Other(String),
}

impl AuditResult {
    /// Its name in the log.
    pub fn name(&self) -> String {
        match self {
            Self::Other(s) => s.clone(),
            r => serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        }
    }
}

/// One line of a host's audit timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it started.
    pub at: Timestamp,
    /// The host (as the reader names it; set by [`read`]).
    #[serde(default)]
    pub host: String,
    /// What.
    pub action: AuditAction,
    /// Who.
    pub who: Actor,
    /// The environment.
    pub environment: String,
    /// What it was done to or with, in words: the release, the command.
    #[serde(default)]
    pub what: String,
    /// How it ended (none for a bad mark).
    #[serde(default)]
    pub result: Option<AuditResult>,
    /// A command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A command's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// The operator's message, or why it failed.
    #[serde(default)]
    pub message: Option<String>,
}

impl AuditEntry {
    /// An entry for `action` by `who` in `environment`, now.
    pub fn new(
        action: AuditAction,
        who: Actor,
        environment: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        Self {
            at: Timestamp::now(),
            host: String::new(),
            action,
            who,
            environment: environment.into(),
            what: what.into(),
            result: None,
            exit_code: None,
            argv: None,
            message: None,
        }
    }

    /// With a result.
    #[must_use]
    pub fn result(mut self, result: AuditResult, message: Option<String>) -> Self {
        self.result = Some(result);
        self.message = message;
        self
    }

    /// A release-log line as an audit entry.
    pub fn from_release_log(e: &LogEntry) -> Self {
        let what = match &e.tag {
            Some(t) => format!("{} {} ({t})", e.release, short(&e.commit)),
            None => format!("{} {}", e.release, short(&e.commit)),
        };
        Self {
            at: e.at,
            host: String::new(),
            action: match e.action {
                LogAction::Deploy => AuditAction::Deploy,
                LogAction::Rollback => AuditAction::Rollback,
                LogAction::Bad => AuditAction::Bad,
            },
            who: e.who.clone(),
            environment: e.environment.clone(),
            what,
            result: e.result.map(|r| match r {
                LogResult::Success => AuditResult::Success,
                LogResult::Failed => AuditResult::Failed,
                LogResult::RolledBack => AuditResult::RolledBack,
            }),
            exit_code: None,
            argv: None,
            message: e.message.clone(),
        }
    }
}

/// Appends entries to a host's audit file (making the deploy root when
/// `make_root`; else a host without one records nothing: nothing of the
/// environment is there).
pub(crate) async fn append(
    host: &Host,
    entries: &[AuditEntry],
    make_root: bool,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let mut lines = Vec::new();
    for e in entries {
        let mut l = serde_json::to_vec(e).unwrap_or_default();
        l.push(b'\n');
        lines.extend(l);
    }
    let enter = if make_root {
        format!("mkdir -p {root} && cd {root}", root = q(host.root()))
    } else {
        format!(
            "{{ cd {root} 2>/dev/null || exit 0; }}",
            root = q(host.root())
        )
    };
    let script = format!(
        "{GUARDS}({enter} && ek_enter .ektool && ek_file {file} && cat >> {file}) || exit $?\n",
        file = q(AUDIT_NAME),
    );
    host.run_checked(&Command::shell(script).stdin(lines).timeout(timeout))
        .await
        .map(|_| ())
}

/// Reads a host's release log and audit file in one command (nothing when
/// there are none), as one list sorted by time, each entry naming `host`.
/// A last line cut by a crash (no newline) is skipped, never joined to the
/// next file's first.
pub async fn read(host: &Host, timeout: Duration) -> Result<Vec<AuditEntry>, RemoteError> {
    let script = format!(
        "cd {root} 2>/dev/null || exit 0\n\
         [ ! -f {log} ] || {{ sed 's/^/r\\t/' {log}; echo; }}\n\
         [ ! -f {audit} ] || {{ sed 's/^/a\\t/' {audit}; echo; }}\n",
        root = q(host.root()),
        log = q(crate::log::LOG_FILE),
        audit = q(AUDIT_FILE),
    );
    let out = host
        .run_checked(&Command::shell(script).timeout(timeout))
        .await?;
    let mut entries = parse(&out.stdout_str());
    for e in &mut entries {
        e.host = host.name().to_owned();
    }
    Ok(entries)
}

/// Parses what [`read`] printed: `r<TAB>` release-log lines and `a<TAB>`
/// audit lines; what does not parse is skipped. Sorted by time (stable).
pub(crate) fn parse(text: &str) -> Vec<AuditEntry> {
    let mut out: Vec<AuditEntry> = text
        .lines()
        .filter_map(|l| match l.split_once('\t') {
            Some(("r", rest)) => serde_json::from_str::<LogEntry>(rest)
                .ok()
                .map(|e| AuditEntry::from_release_log(&e)),
            Some(("a", rest)) => serde_json::from_str(rest).ok(),
            _ => None,
        })
        .collect();
    out.sort_by_key(|e| e.at);
    out
}

/// Which entries [`merge`] keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only the newest this many (after `since`).
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// Every entry.
    pub fn all() -> Self {
        Self::default()
    }

    /// Entries at or after `since`.
    #[must_use]
    pub fn since(mut self, since: Option<Timestamp>) -> Self {
        self.since = since;
        self
    }

    /// The newest `limit` entries.
    #[must_use]
    pub fn limit(mut self, limit: Option<usize>) -> Self {
        self.limit = limit;
        self
    }
}

/// Several hosts' entries as one timeline, oldest first (ties: in host
/// order), narrowed by `query`.
pub fn merge(per_host: Vec<Vec<AuditEntry>>, query: &AuditQuery) -> Vec<AuditEntry> {
    let mut all: Vec<AuditEntry> = per_host.into_iter().flatten().collect();
    // Stable: equal times keep host order, then each host's file order.
    all.sort_by_key(|e| e.at);
    if let Some(since) = query.since {
        all.retain(|e| e.at >= since);
    }
    if let Some(n) = query.limit {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    all
}

/// What [`Deployer::audit`](crate::Deployer::audit) read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditReport {
    /// The environment.
    pub environment: String,
    /// Every readable host's entries, one timeline, oldest first.
    pub entries: Vec<AuditEntry>,
    /// The hosts that could not be read, and why.
    pub unreadable: Vec<crate::HostFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            user: "u".into(),
            machine: "m".into(),
            pid: 1,
            scope: None,
        }
    }

    #[test]
    fn old_release_log_lines_and_unknown_actions_parse() {
        // A release-log line as ektool wrote it before the audit log.
        let old = r#"{"at":"2024-03-01T10:00:00Z","action":"deploy","who":{"user":"ann","machine":"lap","pid":7},"environment":"prod","release":"20240301100000","commit":"1111111111111111111111111111111111111111","tag":"v1","previous":null,"result":"success","message":null}"#;
        let newer = r#"{"at":"2024-03-01T09:00:00Z","action":"reboot_fleet","who":{"user":"bob","machine":"ci","pid":8},"environment":"prod","what":"all","result":"half_done","shiny":1}"#;
        let text = format!("r\t{old}\na\t{newer}\na\t{{\"at\":\"2024-\nr\tnot json\n");
        let entries = parse(&text);
        assert_eq!(entries.len(), 2, "{entries:#?}");
        assert_eq!(entries[0].action, AuditAction::Other("reboot_fleet".into()));
        assert_eq!(
            entries[0].result,
            Some(AuditResult::Other("half_done".into()))
        );
        assert_eq!(entries[1].action, AuditAction::Deploy);
        assert_eq!(entries[1].what, "20240301100000 111111111111 (v1)");
        assert_eq!(entries[1].result, Some(AuditResult::Success));
        assert_eq!(entries[1].who.user, "ann");
    }

    #[test]
    fn new_actions_are_skipped_by_the_release_log_reader() {
        // An older ektool reads the release log only; even if an audit
        // line ended up there it would be skipped, never misread.
        let e = AuditEntry::new(AuditAction::Restart, actor(), "prod", "restart")
            .result(AuditResult::Success, None);
        let line = serde_json::to_string(&e).unwrap();
        assert!(crate::log::parse(&line).is_empty());
        let back: AuditEntry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        assert!(line.contains("\"action\":\"restart\""), "{line}");
    }

    #[test]
    fn merge_sorts_by_time_then_filters_and_limits() {
        let at = |s: &str, host: &str| {
            let mut e = AuditEntry::new(AuditAction::Run, actor(), "e", host);
            e.at = s.parse().unwrap();
            e.host = host.into();
            e
        };
        let h1 = vec![
            at("2024-01-01T00:00:01Z", "h1"),
            at("2024-01-01T00:00:04Z", "h1"),
        ];
        let h2 = vec![
            at("2024-01-01T00:00:02Z", "h2"),
            at("2024-01-01T00:00:03Z", "h2"),
        ];
        let all = merge(vec![h1.clone(), h2.clone()], &AuditQuery::all());
        let hosts: Vec<&str> = all.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(hosts, ["h1", "h2", "h2", "h1"]);
        let q = AuditQuery::all()
            .since(Some("2024-01-01T00:00:02Z".parse().unwrap()))
            .limit(Some(2));
        let some = merge(vec![h1, h2], &q);
        let times: Vec<String> = some.iter().map(|e| e.at.to_string()).collect();
        assert_eq!(times, ["2024-01-01T00:00:03Z", "2024-01-01T00:00:04Z"]);
    }
}
