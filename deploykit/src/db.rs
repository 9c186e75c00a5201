//! Database chores: `pg_dump` from and `psql` into an environment's
//! PostgreSQL, through the host's shell.
//!
//! The seed wrote the dump to the project user's home on the server and
//! left it there (and did the same with every dump it loaded). Here the
//! dump travels over the SSH channel only — standard output out, standard
//! input in — so no copy is ever written on the server, and it is streamed
//! both ways: memory stays bounded whatever the size of the database.
//! Loading into a protected environment (`production`, or
//! `protected = true`) needs an explicit override.
//!
//! A load is one transaction that ektool frames itself: `BEGIN`, the dump,
//! and `COMMIT` only once the whole dump was read and ends with pg_dump's
//! completion line. Input that ends early — a truncated file, a broken
//! pipe, Ctrl-C, a dropped connection — never reaches `COMMIT`, so psql's
//! end of input rolls everything back. (`psql --single-transaction` would
//! commit whatever arrived before the end of its input.)

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use ec2kit::{CancellationToken, Command, Remote, RemoteError, Streams};
use serde::{Deserialize, Deserializer, Serialize};

use crate::shell::tail;

/// `[environments.<name>.database]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The database name: a plain name (letters, digits, `_`, `-`, `.`,
    /// `$`), never a connection string.
    #[serde(deserialize_with = "de_database_name")]
    pub name: String,
    /// Run `pg_dump`/`psql` as this OS user on the host (e.g. `postgres`
    /// for peer authentication): `runuser` as root, `sudo -n` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// The server's host (default: the local socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The server's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The database role. Passwords belong in the host's `~/.pgpass`, never
    /// here or on a command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Refuse `db load` without an override (always on for an environment
    /// named `production`).
    #[serde(default)]
    pub protected: bool,
    /// Kill a dump or load after this long.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    3600
}

/// The longest name PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_NAME: usize = 63;

/// Checks a database name: `psql --dbname` and `pg_dump --dbname` read a
/// value holding `=` (or starting `postgres://`) as a whole connection
/// string, so a name must be a plain identifier.
pub fn check_database_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_-.$".contains(c);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "database name {name:?} must be 1 to {MAX_NAME} characters"
        ));
    }
    if name.starts_with('-') || !name.chars().all(ok_char) {
        return Err(format!(
            "database name {name:?} is not a plain name (letters, digits, _ - . $; not starting with -): connection strings are not accepted here, use host, port and user"
        ));
    }
    Ok(())
}

fn de_database_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_database_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

/// Why a database chore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The environment is protected and the caller did not allow
    /// replacing its database.
    #[error("{env} is protected: loading would replace its database {name}")]
    Protected {
        /// The environment.
        env: String,
        /// The database.
        name: String,
    },
    /// The database name is not a plain name.
    #[error("{0}")]
    InvalidName(String),
    /// The input ended without pg_dump's completion line (truncated, or
    /// not a pg_dump file). Nothing was committed.
    #[error(
        "the input ended after {read} bytes without pg_dump's completion line (truncated?); nothing was committed"
    )]
    Incomplete {
        /// Bytes of dump read.
        read: u64,
    },
    /// The host could not be reached, or the input or output failed. For
    /// a load, nothing was committed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `pg_dump` or `psql` failed.
    #[error("{host}: {tool} failed ({status}): {stderr}")]
    Failed {
        /// The host.
        host: String,
        /// Which tool.
        tool: &'static str,
        /// How it ended.
        status: ec2kit::remote::ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
}

impl DatabaseConfig {
    /// A database by name, defaults for the rest.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            run_as: None,
            host: None,
            port: None,
            user: None,
            protected: false,
            timeout_seconds: default_timeout(),
        }
    }

    /// Whether loading into environment `env` needs an override.
    pub fn is_protected(&self, env: &str) -> bool {
        self.protected || env == "production"
    }

    fn argv(&self, tool: &str, extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = vec![tool.into()];
        // Each value follows its option as a separate word, so one that
        // starts with `-` is still a value, never an option.
        if let Some(h) = &self.host {
            argv.extend(["-h".into(), h.clone()]);
        }
        if let Some(p) = self.port {
            argv.extend(["-p".into(), p.to_string()]);
        }
        if let Some(u) = &self.user {
            argv.extend(["-U".into(), u.clone()]);
        }
        // Never prompt for a password: there is nobody to answer.
        argv.push("--no-password".into());
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    fn command(&self, argv: Vec<String>) -> Command {
        let cmd = match &self.run_as {
            None => Command::argv(argv),
            Some(user) => {
                let line = argv
                    .iter()
                    .map(|a| ec2kit::remote::quote(a))
                    .collect::<Vec<_>>()
                    .join(" ");
                let user = ec2kit::remote::quote(user);
                Command::shell(format!(
                    "if [ \"$(id -u)\" = 0 ]; then exec runuser -u {user} -- {line}; else exec sudo -n -u {user} -- {line}; fi"
                ))
            }
        };
        cmd.timeout(Duration::from_secs(self.timeout_seconds))
    }

    /// The dump command: plain SQL without owners or privileges, with
    /// `DROP … IF EXISTS` so it loads over an existing schema.
    pub fn dump_command(&self) -> Command {
        self.command(self.argv(
            "pg_dump",
            &[
                "--no-owner",
                "--no-privileges",
                "--clean",
                "--if-exists",
                "--dbname",
                &self.name,
            ],
        ))
    }

    /// The load command: `psql` stopping at the first error, reading
    /// standard input, which [`load`] frames as one transaction.
    pub fn load_command(&self) -> Command {
        self.command(self.argv(
            "psql",
            &[
                "--quiet",
                "--no-psqlrc",
                "-v",
                "ON_ERROR_STOP=1",
                "--dbname",
                &self.name,
            ],
        ))
    }
}

/// Dumps the database into `out` as it arrives (nothing is written on the
/// host, nothing is held in memory); returns the bytes written. On an
/// error `out` holds a partial dump: the caller discards it.
pub async fn dump(
    host: &dyn Remote,
    db: &DatabaseConfig,
    out: impl std::io::Write + Send + 'static,
    cancel: Option<CancellationToken>,
) -> Result<u64, DbError> {
    check_database_name(&db.name).map_err(DbError::InvalidName)?;
    let mut streams = Streams::new(out);
    streams.cancel = cancel;
    let done = host.run_streaming(&db.dump_command(), streams).await?;
    if !done.status.success() {
        return Err(DbError::Failed {
            host: host.host(),
            tool: "pg_dump",
            status: done.status,
            stderr: tail(&done.stderr, 600),
        });
    }
    Ok(done.stdout_bytes)
}

/// Dumps the database into the local file `path`, created 0600 (dumps
/// hold user data) under a temporary name and renamed into place only once
/// the dump is whole and on disk: a failed or interrupted dump leaves no
/// file behind and never replaces an earlier one. Returns the bytes written.
pub async fn dump_to_file(
    host: &dyn Remote,
    db: &DatabaseConfig,
    path: &Path,
    cancel: Option<CancellationToken>,
) -> Result<u64, DbError> {
    let io = |source| DbError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates files 0600 whatever the umask.
    let tmp = tempfile::Builder::new()
        .prefix(".ektool-dump.")
        .tempfile_in(dir)
        .map_err(io)?;
    let file = tmp.as_file().try_clone().map_err(io)?;
    let out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let bytes = dump(host, db, out, cancel).await?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(bytes)
}

/// Whether the file at `path` ends with pg_dump's completion line: a quick
/// check before connecting (the load checks the end it really streams).
pub fn is_complete_dump_file(path: &Path) -> Result<bool, DbError> {
    use std::io::{Seek, SeekFrom};
    let io = |source| DbError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TRAILER_WINDOW as u64)))
        .map_err(io)?;
    let mut end = Vec::new();
    file.read_to_end(&mut end).map_err(io)?;
    Ok(is_complete_dump(&end))
}

/// What pg_dump writes at the very end of a complete plain dump.
const DUMP_COMPLETE: &[u8] = b"\n-- PostgreSQL database dump complete\n";

/// How far from the end the completion line may be (pg_dump ≥ 17.6, 16.10,
/// 15.14, ... add a `\unrestrict` line after it).
const TRAILER_WINDOW: usize = 1024;

/// Whether `end` (the last bytes of a dump) holds pg_dump's completion line.
pub fn is_complete_dump(end: &[u8]) -> bool {
    let start = end.len().saturating_sub(TRAILER_WINDOW);
    end[start..]
        .windows(DUMP_COMPLETE.len())
        .any(|w| w == DUMP_COMPLETE)
}

/// The marker error of an input that ended before pg_dump's last line.
#[derive(Debug)]
struct IncompleteInput(u64);

impl std::fmt::Display for IncompleteInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input incomplete after {} bytes", self.0)
    }
}

impl std::error::Error for IncompleteInput {}

/// `BEGIN;`, the dump, then `COMMIT;` — the last only after the dump was
/// read to its end and that end is pg_dump's completion line. Otherwise
/// reading fails, so the transport stops the command before any `COMMIT`.
struct Framed<R> {
    inner: R,
    phase: Phase,
    /// The last bytes of the dump read so far.
    end: Vec<u8>,
    read: u64,
}

enum Phase {
    Begin(usize),
    Body,
    Commit(usize),
    Done,
}

const BEGIN: &[u8] = b"BEGIN;\n";
const COMMIT: &[u8] = b"\nCOMMIT;\n";

impl<R: Read> Framed<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            phase: Phase::Begin(0),
            end: Vec::new(),
            read: 0,
        }
    }
}

fn emit(from: &[u8], pos: &mut usize, buf: &mut [u8]) -> usize {
    let n = (from.len() - *pos).min(buf.len());
    buf[..n].copy_from_slice(&from[*pos..*pos + n]);
    *pos += n;
    n
}

impl<R: Read> Read for Framed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match &mut self.phase {
                Phase::Begin(pos) => {
                    if *pos < BEGIN.len() {
                        return Ok(emit(BEGIN, pos, buf));
                    }
                    self.phase = Phase::Body;
                }
                Phase::Body => {
                    let n = self.inner.read(buf)?;
                    if n == 0 {
                        if !is_complete_dump(&self.end) {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                IncompleteInput(self.read),
                            ));
                        }
                        self.phase = Phase::Commit(0);
                        continue;
                    }
                    self.read += n as u64;
                    self.end.extend_from_slice(&buf[..n]);
                    if self.end.len() > 2 * TRAILER_WINDOW {
                        self.end.drain(..self.end.len() - TRAILER_WINDOW);
                    }
                    return Ok(n);
                }
                Phase::Commit(pos) => {
                    if *pos < COMMIT.len() {
                        return Ok(emit(COMMIT, pos, buf));
                    }
                    self.phase = Phase::Done;
                }
                Phase::Done => return Ok(0),
            }
        }
    }
}

/// The [`IncompleteInput`] behind a streaming error, if that is what it is.
fn incomplete(err: &RemoteError) -> Option<u64> {
    match err {
        RemoteError::Io { source, .. } => source
            .get_ref()
            .and_then(|e| e.downcast_ref::<IncompleteInput>())
            .map(|i| i.0),
        _ => None,
    }
}

/// Loads the dump read from `input` into the database of environment
/// `env`, refusing a protected one unless `allow_protected`. Streams: the
/// dump is never held in memory, and psql's output is read while it is
/// written. One transaction: it commits only if the whole dump was read
/// (see the module notes); `cancel` stops it, uncommitted. Returns the
/// bytes of dump loaded.
pub async fn load(
    host: &dyn Remote,
    env: &str,
    db: &DatabaseConfig,
    input: impl Read + Send + 'static,
    allow_protected: bool,
    cancel: Option<CancellationToken>,
) -> Result<u64, DbError> {
    if db.is_protected(env) && !allow_protected {
        return Err(DbError::Protected {
            env: env.to_owned(),
            name: db.name.clone(),
        });
    }
    check_database_name(&db.name).map_err(DbError::InvalidName)?;
    let mut streams = Streams::new(std::io::sink()).stdin(Framed::new(input));
    streams.cancel = cancel;
    let done = match host.run_streaming(&db.load_command(), streams).await {
        Ok(done) => done,
        Err(e) => {
            return Err(match incomplete(&e) {
                Some(read) => DbError::Incomplete { read },
                None => e.into(),
            });
        }
    };
    if !done.status.success() {
        return Err(DbError::Failed {
            host: host.host(),
            tool: "psql",
            status: done.status,
            stderr: tail(&done.stderr, 600),
        });
    }
    let framing = (BEGIN.len() + COMMIT.len()) as u64;
    Ok(done.stdin_bytes.saturating_sub(framing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_is_always_protected() {
        let db = DatabaseConfig::new("app");
        assert!(db.is_protected("production"));
        assert!(!db.is_protected("staging"));
        let db = DatabaseConfig {
            protected: true,
            ..db
        };
        assert!(db.is_protected("staging"));
    }

    #[test]
    fn run_as_goes_through_runuser_or_sudo() {
        let db = DatabaseConfig {
            run_as: Some("postgres".into()),
            ..DatabaseConfig::new("app_db")
        };
        let line = db.dump_command().to_string();
        assert!(line.contains("runuser -u postgres -- pg_dump"), "{line}");
        assert!(line.contains("sudo -n -u postgres"), "{line}");
        assert!(line.contains("--dbname app_db"), "{line}");
    }

    #[test]
    fn the_load_frames_its_own_transaction() {
        let line = DatabaseConfig::new("app").load_command().to_string();
        assert!(!line.contains("--single-transaction"), "{line}");
        assert!(line.contains("ON_ERROR_STOP=1"), "{line}");
    }

    #[test]
    fn database_names_are_plain_names_not_connection_strings() {
        for ok in ["app", "app_prod", "App-2", "my.db", "x$y"] {
            check_database_name(ok).unwrap();
        }
        for bad in [
            "",
            "host=evil.example dbname=app",
            "postgres://u@evil/app",
            "-app",
            "app db",
            "app;drop",
            "naïve",
            &"a".repeat(64),
        ] {
            assert!(check_database_name(bad).is_err(), "{bad:?}");
        }
        let err = serde_json::from_str::<DatabaseConfig>(r#"{"name": "host=evil dbname=app"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("connection strings"), "{err}");
    }

    fn framed(input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Framed::new(input).read_to_end(&mut out).map(|_| out)
    }

    const DUMP: &str = "--\n-- PostgreSQL database dump\n--\nCOPY t (id) FROM stdin;\n1\n2\n\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n";

    #[test]
    fn commit_is_sent_only_after_a_complete_dump() {
        let out = String::from_utf8(framed(DUMP.as_bytes()).unwrap()).unwrap();
        assert!(out.starts_with("BEGIN;\n--\n"), "{out}");
        assert!(out.ends_with("\\unrestrict abc\n\n\nCOMMIT;\n"), "{out}");
        // Cut anywhere before the completion line: no COMMIT, an error.
        let cut = DUMP.find("-- PostgreSQL database dump complete").unwrap();
        for at in [0, 10, cut - 5, cut + 3] {
            let err = framed(&DUMP.as_bytes()[..at]).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        }
    }

    proptest::proptest! {
        #[test]
        fn a_cut_dump_never_carries_commit(
            body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..3000),
            cut in 0usize..4000,
        ) {
            let mut whole = body.clone();
            whole.extend_from_slice(DUMP.as_bytes());
            let cut = cut.min(whole.len());
            let part = &whole[..cut];
            match framed(part) {
                Ok(out) => {
                    proptest::prop_assert!(is_complete_dump(part));
                    proptest::prop_assert!(out.ends_with(COMMIT));
                }
                Err(_) => proptest::prop_assert!(!is_complete_dump(part)),
            }
        }
    }

    #[tokio::test]
    async fn refuses_production_before_touching_the_host() {
        let remote = ec2kit::remote::MockRemote::new(); // any call would panic
        let e = load(
            &remote,
            "production",
            &DatabaseConfig::new("app"),
            &b"x"[..],
            false,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DbError::Protected { .. }), "{e}");
    }
}
