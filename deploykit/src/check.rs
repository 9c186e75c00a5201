//! Pre-flight checks (`ektool deploy check`, Capistrano's `deploy:check`):
//! what a deploy needs from every host, asked of all hosts at once, one
//! command per host, without changing anything but a probe directory made
//! and removed again in the deploy root.
//!
//! On each host ([`Deployer::check`](crate::Deployer::check)):
//!
//! - [`Check::Ssh`]: the host answers a command;
//! - [`Check::Sudo`]: `sudo -n true` works, when a hook or the health
//!   command of the environment uses `sudo`;
//! - [`Check::Root`]: the deploy root exists, is a directory the login user
//!   (or root) owns, and a directory can be made in it (and in `.ektool`);
//! - [`Check::DiskSpace`]: the deploy root's filesystem has at least the
//!   environment's `min_free` available (default 1 GiB);
//! - [`Check::SharedFiles`]: every `shared_files` entry is in `shared/`;
//! - [`Check::Git`]: `git ls-remote` of the repository works from the host,
//!   with the same git environment deploys use (the deploy key, strict host
//!   key checking, no prompts);
//! - [`Check::Clock`]: the host's clock is within
//!   [`CLOCK_SKEW_BOUND_MS`] of this machine's (beyond it the hosts'
//!   switches spread apart, and a deploy warns);
//! - [`Check::Lock`]: no deploy lock is held (the holder and message are
//!   shown when one is).
//!
//! ```no_run
//! # async fn demo(deployer: deploykit::Deployer) -> Result<(), deploykit::DeployError> {
//! let report = deployer.check(None).await?;
//! for row in report.failures() {
//!     eprintln!("{}: {}: {}", row.host, row.check, row.detail);
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use ec2kit::Command;
use serde::{Deserialize, Serialize};

use crate::environment::{ByteSize, Environment, Phase};
use crate::host::Host;
use crate::lock::HeldLock;
use crate::shell::{describe, q};

/// How far a host's clock may be from this machine's, in milliseconds: a
/// deploy warns ([`Event::ClockSkew`](crate::Event::ClockSkew)) beyond it,
/// as its hosts' scheduled switches spread apart by their skew.
pub const CLOCK_SKEW_BOUND_MS: u64 = 500;

/// One thing checked on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Check {
    /// The host answers a command over SSH.
    Ssh,
    /// `sudo -n` works (checked when the environment's commands use sudo).
    Sudo,
    /// The deploy root exists and can be written.
    Root,
    /// Free space on the deploy root's filesystem.
    DiskSpace,
    /// The environment's `shared_files` are present.
    SharedFiles,
    /// The git server answers the host, with the deploy key.
    Git,
    /// The host's clock agrees with this machine's.
    Clock,
    /// No deploy lock is held.
    Lock,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ssh => "ssh",
            Self::Sudo => "sudo",
            Self::Root => "root",
            Self::DiskSpace => "disk-space",
            Self::SharedFiles => "shared-files",
            Self::Git => "git",
            Self::Clock => "clock",
            Self::Lock => "lock",
        })
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Failed: a deploy would fail (or misbehave) here.
    Failed,
    /// Not checked (the host did not answer, or there is nothing to check).
    Skipped,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Failed => "FAILED",
            Self::Skipped => "skipped",
        })
    }
}

/// One check on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRow {
    /// The host.
    pub host: String,
    /// What was checked.
    pub check: Check,
    /// How it came out.
    pub result: Outcome,
    /// What was found (or why it failed).
    pub detail: String,
    /// The lock found held ([`Check::Lock`] only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<HeldLock>,
}

/// Every check on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The environment.
    pub environment: String,
    /// The rows, host by host (in lock order), each host's checks in a
    /// fixed order.
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    /// The rows that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckRow> {
        self.rows.iter().filter(|r| r.result == Outcome::Failed)
    }

    /// Whether every check passed (or was skipped for a reason that is not
    /// a failure).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }
}

/// What the check of one environment needs, from its configuration.
pub(crate) struct Spec<'a> {
    pub(crate) config: &'a Environment,
    pub(crate) repository: Option<&'a str>,
    pub(crate) min_free: ByteSize,
    pub(crate) stale_after: Duration,
    /// The deadline of the host's command (the git probe gets half).
    pub(crate) timeout: Duration,
}

/// Whether any command of the environment runs `sudo`.
#[cfg(test)]
pub(crate) fn needs_sudo(config: &Environment) -> bool {
    sudo_in(config, |_| true)
}

/// Whether a command that may run on `host` runs `sudo`: the hooks for
/// its roles (a `before_switch` hook's `once_on` role among them), and
/// the health check.
pub(crate) fn needs_sudo_on(config: &Environment, host: &Host) -> bool {
    sudo_in(config, |h| {
        h.runs_on(host.roles()) && h.once_on.as_ref().is_none_or(|r| host.has_role(r))
    })
}

fn sudo_in(config: &Environment, may_run: impl Fn(&crate::Hook) -> bool) -> bool {
    let uses = |cmd: &str| {
        cmd.split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | '`'))
            .any(|w| w == "sudo")
    };
    let phases = [
        Phase::Build,
        Phase::BeforeSwitch,
        Phase::Restart,
        Phase::AfterSwitch,
        Phase::OnFailure,
        Phase::AfterRollback,
        Phase::Maintenance,
    ];
    phases
        .iter()
        .flat_map(|&p| config.hooks.of(p))
        .any(|h| may_run(h) && uses(&h.run))
        || config
            .health
            .as_ref()
            .and_then(|h| h.command.as_deref())
            .is_some_and(uses)
}

/// The read-only script (but for the probe directory) that checks one
/// host; see [`parse`] for what it prints.
fn script(host: &Host, spec: &Spec<'_>) -> String {
    let root = q(host.root());
    let mut s = String::from("printf 't0\\t%s\\n' \"$(date +%s%N)\"\n");
    if needs_sudo_on(spec.config, host) {
        s.push_str(
            "if e=$(sudo -n true 2>&1 </dev/null); then echo sudo; else printf 'sudo\\t%s\\n' \"$(printf '%s' \"$e\" | tr '\\n\\t' '  ')\"; fi\n",
        );
    }
    s.push_str(&format!(
        "r={root}\n\
         if [ ! -e \"$r\" ]; then echo 'root\tabsent'\n\
         elif [ ! -d \"$r\" ]; then echo 'root\tnotdir'\n\
         else\n\
         \x20 o=$(stat -c %u -- \"$r\")\n\
         \x20 if [ \"$o\" != \"$(id -u)\" ] && [ \"$o\" != 0 ]; then printf 'root\\towner\\t%s\\n' \"$o\"\n\
         \x20 else\n\
         \x20   w=ok\n\
         \x20   for d in \"$r\" \"$r/.ektool\"; do\n\
         \x20     [ -d \"$d\" ] || continue\n\
         \x20     p=\"$d/.ektool-check.$$\"\n\
         \x20     if e=$(mkdir -- \"$p\" 2>&1); then rmdir -- \"$p\"; else w=$(printf '%s' \"$e\" | tr '\\n\\t' '  '); break; fi\n\
         \x20   done\n\
         \x20   if [ \"$w\" = ok ]; then echo root; else printf 'root\\treadonly\\t%s\\n' \"$w\"; fi\n\
         \x20 fi\n\
         fi\n\
         d=\"$r\"; while [ ! -e \"$d\" ]; do d=$(dirname -- \"$d\"); done\n\
         printf 'avail\\t%s\\t%s\\n' \"$(df -Pk -- \"$d\" | awk 'NR==2 {{print $4}}')\" \"$d\"\n"
    ));
    if !spec.config.shared_files.is_empty() {
        s.push_str("if [ -d \"$r\" ]; then\n");
        for f in &spec.config.shared_files {
            let path = q(&format!("shared/{f}"));
            s.push_str(&format!(
                "  [ -e \"$r\"/{path} ] || printf 'missing\\t%s\\n' {name}\n",
                name = q(f.as_str())
            ));
        }
        s.push_str("fi\n");
    }
    if let Some(url) = spec.repository {
        let secs = (spec.timeout / 2).as_secs().max(1);
        s.push_str(&format!(
            "if ! command -v git >/dev/null 2>&1; then printf 'git\\tgit is not installed\\n'\n\
             else\n\
             \x20 e=$(timeout -k 2 {secs} git ls-remote -q -- {url} HEAD 2>&1 >/dev/null </dev/null); c=$?\n\
             \x20 if [ $c = 0 ]; then echo git\n\
             \x20 elif [ $c = 124 ] || [ $c = 137 ]; then printf 'git\\tno answer within {secs}s\\n'\n\
             \x20 else printf 'git\\t%s\\n' \"$(printf '%s' \"$e\" | tail -n 3 | tr '\\n\\t' '  ')\"; fi\n\
             fi\n",
            url = q(url),
        ));
    }
    s.push_str(&format!(
        "printf 't1\\t%s\\n' \"$(date +%s%N)\"\n\
         cd \"$r\"/.ektool 2>/dev/null && [ -d lock ] || {{ echo free; exit 0; }}\n\
         echo held\n{}",
        crate::lock::held_fragment()
    ));
    s
}

/// What the script printed, judged.
fn parse(
    host: &Host,
    spec: &Spec<'_>,
    text: &str,
    sent_ns: i128,
    answered_ns: i128,
    elapsed: Duration,
) -> Vec<CheckRow> {
    let row = |check, result, detail: String| CheckRow {
        host: host.name().to_owned(),
        check,
        result,
        detail,
        lock: None,
    };
    let mut rows = vec![row(
        Check::Ssh,
        Outcome::Ok,
        format!("answered in {} ms", elapsed.as_millis()),
    )];
    let mut lines = text.lines();
    let mut t0 = None;
    let mut t1 = None;
    let mut missing = Vec::new();
    let mut held = None;
    let mut root_exists = true;
    while let Some(line) = lines.next() {
        let mut parts = line.splitn(3, '\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("t0"), Some(ns), _) => t0 = ns.trim().parse::<i128>().ok(),
            (Some("t1"), Some(ns), _) => t1 = ns.trim().parse::<i128>().ok(),
            (Some("sudo"), None, _) => {
                rows.push(row(Check::Sudo, Outcome::Ok, "sudo -n works".into()))
            }
            (Some("sudo"), Some(e), _) => rows.push(row(
                Check::Sudo,
                Outcome::Failed,
                format!("sudo -n true: {}", e.trim()),
            )),
            (Some("root"), what, detail) => {
                let (result, text) = match what {
                    None => (Outcome::Ok, format!("{} is writable", host.root())),
                    Some("absent") => {
                        root_exists = false;
                        (Outcome::Failed, format!("{} does not exist", host.root()))
                    }
                    Some("notdir") => (
                        Outcome::Failed,
                        format!("{} is not a directory", host.root()),
                    ),
                    Some("owner") => (
                        Outcome::Failed,
                        format!(
                            "{} belongs to uid {}, not to the login user or root",
                            host.root(),
                            detail.unwrap_or("?")
                        ),
                    ),
                    Some(_) => (
                        Outcome::Failed,
                        format!(
                            "{} is not writable: {}",
                            host.root(),
                            detail.unwrap_or_default().trim()
                        ),
                    ),
                };
                rows.push(row(Check::Root, result, text));
            }
            (Some("avail"), Some(kib), path) => {
                let path = path.unwrap_or_default();
                rows.push(match kib.trim().parse::<u64>() {
                    Ok(k) => {
                        let free = ByteSize(k.saturating_mul(1024));
                        let ok = free >= spec.min_free;
                        row(
                            Check::DiskSpace,
                            if ok { Outcome::Ok } else { Outcome::Failed },
                            format!(
                                "{free} free on {path} ({} {})",
                                if ok { "need" } else { "below" },
                                spec.min_free
                            ),
                        )
                    }
                    Err(_) => row(
                        Check::DiskSpace,
                        Outcome::Failed,
                        format!("could not read the free space of {path}"),
                    ),
                });
            }
            (Some("missing"), Some(name), _) => missing.push(name.to_owned()),
            (Some("git"), None, _) => rows.push(row(
                Check::Git,
                Outcome::Ok,
                format!(
                    "git ls-remote {} works",
                    crate::git::redact(spec.repository.unwrap_or_default())
                ),
            )),
            (Some("git"), Some(e), _) => rows.push(row(
                Check::Git,
                Outcome::Failed,
                crate::git::redact(&format!(
                    "git ls-remote {}: {}",
                    spec.repository.unwrap_or_default(),
                    e.trim()
                )),
            )),
            (Some("held"), _, _) => {
                held = Some(crate::lock::parse_held(host, &mut lines, spec.stale_after));
            }
            _ => {}
        }
    }
    let files = &spec.config.shared_files;
    rows.push(if files.is_empty() {
        row(
            Check::SharedFiles,
            Outcome::Skipped,
            "none configured".into(),
        )
    } else if !root_exists {
        row(Check::SharedFiles, Outcome::Failed, "no deploy root".into())
    } else if missing.is_empty() {
        row(
            Check::SharedFiles,
            Outcome::Ok,
            format!("{} present", files.len()),
        )
    } else {
        row(
            Check::SharedFiles,
            Outcome::Failed,
            format!("missing in shared/: {}", missing.join(", ")),
        )
    });
    if spec.repository.is_none() {
        rows.push(row(
            Check::Git,
            Outcome::Failed,
            "no repository URL: set `repository` in the environment".into(),
        ));
    }
    rows.push(match (t0, t1) {
        (Some(t0), Some(t1)) => {
            // The host's clock read t0 after we sent the command and t1
            // before we had the answer: its skew lies between t1 - answered
            // and t0 - sent. The start lags behind the send by the channel
            // set-up and the shell's start; the answer follows t1 within a
            // one-way trip. So t1 - answered is the estimate, and only a
            // skew the whole range puts beyond the bound fails.
            let low = t1.saturating_sub(answered_ns) / 1_000_000;
            let high = t0.saturating_sub(sent_ns) / 1_000_000;
            let bound = i128::from(CLOCK_SKEW_BOUND_MS);
            let ok = low <= bound && high >= -bound;
            let skew = i64::try_from(low).unwrap_or(i64::MAX);
            row(
                Check::Clock,
                if ok { Outcome::Ok } else { Outcome::Failed },
                format!(
                    "{} ms {} this machine's (bound {CLOCK_SKEW_BOUND_MS} ms)",
                    skew.unsigned_abs(),
                    if skew < 0 { "behind" } else { "ahead of" }
                ),
            )
        }
        _ => row(
            Check::Clock,
            Outcome::Failed,
            "the host did not print its clock (date +%s%N)".into(),
        ),
    });
    rows.push(match held {
        None => row(Check::Lock, Outcome::Ok, "not locked".into()),
        Some(lock) => CheckRow {
            detail: lock.to_string(),
            lock: Some(lock),
            ..row(Check::Lock, Outcome::Failed, String::new())
        },
    });
    rows.sort_by_key(|r| r.check as u8);
    rows
}

/// Checks one host: one command.
pub(crate) async fn host(
    host: &Host,
    spec: &Spec<'_>,
    git_env: &[(String, String)],
) -> Vec<CheckRow> {
    let mut command = Command::shell(script(host, spec)).timeout(spec.timeout);
    for (k, v) in git_env {
        command = command.env(k.clone(), v.clone());
    }
    let sent = crate::switch::now_ns();
    let t = Instant::now();
    match host.run_checked(&command).await {
        Ok(out) => {
            let answered = crate::switch::now_ns();
            parse(host, spec, &out.stdout_str(), sent, answered, t.elapsed())
        }
        Err(e) => {
            let mut rows = vec![CheckRow {
                host: host.name().to_owned(),
                check: Check::Ssh,
                result: Outcome::Failed,
                detail: describe(&e),
                lock: None,
            }];
            for check in [
                Check::Root,
                Check::DiskSpace,
                Check::SharedFiles,
                Check::Git,
                Check::Clock,
                Check::Lock,
            ] {
                rows.push(CheckRow {
                    host: host.name().to_owned(),
                    check,
                    result: Outcome::Skipped,
                    detail: "the host did not answer".into(),
                    lock: None,
                });
            }
            rows
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: &Environment) -> Spec<'_> {
        Spec {
            config,
            repository: Some("git@example.com:app.git"),
            min_free: ByteSize(1 << 30),
            stale_after: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
        }
    }

    fn clock(offset_ms: i128) -> CheckRow {
        let env = Environment::new(vec![], "/srv/app").unwrap();
        let host = Host::new(std::sync::Arc::new(ec2kit::LocalRemote::new()), "/srv/app");
        let sent: i128 = 1_700_000_000_000_000_000;
        // The script started 40 ms after the send and ended 10 ms before
        // the answer, by a clock `offset_ms` ahead.
        let t0 = sent + 40_000_000 + offset_ms * 1_000_000;
        let t1 = t0 + 20_000_000;
        let answered = sent + 70_000_000;
        let text = format!("t0\t{t0}\nroot\navail\t2000000\t/\ngit\nt1\t{t1}\nfree\n");
        let rows = parse(
            &host,
            &spec(&env),
            &text,
            sent,
            answered,
            Duration::from_millis(70),
        );
        assert!(
            rows.iter()
                .all(|r| r.check == Check::Clock || r.result != Outcome::Failed),
            "{rows:#?}"
        );
        rows.into_iter().find(|r| r.check == Check::Clock).unwrap()
    }

    #[test]
    fn a_clock_fails_only_beyond_the_bound() {
        assert_eq!(clock(0).result, Outcome::Ok);
        assert_eq!(
            clock(0).detail,
            "10 ms behind this machine's (bound 500 ms)"
        );
        assert_eq!(clock(450).result, Outcome::Ok);
        let ahead = clock(2000);
        assert_eq!(ahead.result, Outcome::Failed);
        assert!(
            ahead.detail.starts_with("1990 ms ahead of"),
            "{}",
            ahead.detail
        );
        assert_eq!(clock(-2000).result, Outcome::Failed);
        assert_eq!(
            clock(-520).result,
            Outcome::Ok,
            "within the range the round trip allows"
        );
    }

    #[test]
    fn sudo_is_needed_only_when_a_command_says_sudo() {
        let mut env = Environment::new(vec![], "/srv/app").unwrap();
        assert!(!needs_sudo(&env));
        env.hooks.build = vec![crate::Hook::new("pseudo-make; echo sudoku")];
        assert!(!needs_sudo(&env));
        env.hooks.restart = vec![crate::Hook::new("true && sudo systemctl restart app")];
        assert!(needs_sudo(&env));
    }

    #[test]
    fn sudo_is_checked_on_the_hosts_whose_hooks_say_sudo() {
        let host = |roles: &[&str]| {
            Host::new(std::sync::Arc::new(ec2kit::LocalRemote::new()), "/srv/app")
                .with_roles(roles.iter().copied())
        };
        let mut env = Environment::new(vec![], "/srv/app").unwrap();
        env.hooks.restart = vec![crate::Hook::new("sudo systemctl restart app").on_roles(["web"])];
        env.hooks.before_switch = vec![crate::Hook::new("sudo -u pg ./migrate").once_on("db")];
        assert!(needs_sudo(&env));
        assert!(needs_sudo_on(&env, &host(&["web"])));
        assert!(needs_sudo_on(&env, &host(&["db"])));
        assert!(!needs_sudo_on(&env, &host(&["worker"])));
        assert!(!needs_sudo_on(&env, &host(&[])));
    }
}
