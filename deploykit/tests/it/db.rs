//! `db dump` / `db load` against the bench's PostgreSQL, through a bench
//! sshd host: streamed both ways, and a load that ends early commits
//! nothing.

use std::io::Read;
use std::path::Path;

use deploykit::db::{self, DatabaseConfig, DbError};
use ec2kit::{LocalRemote, Remote};
use ektool_tests::{tempdir, unique};

use crate::support::ssh_remote;

/// A database of the test's own on the bench server; dropped at the end.
struct Db {
    port: u16,
    name: String,
}

impl Db {
    fn new(port: u16) -> Self {
        let name = unique("db").replace('-', "_");
        let db = Self { port, name };
        db.admin(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn admin(&self, sql: &str) -> String {
        self.psql("postgres", sql)
    }

    fn sql(&self, sql: &str) -> String {
        self.psql(&self.name, sql)
    }

    fn config(&self) -> DatabaseConfig {
        DatabaseConfig {
            host: Some("127.0.0.1".into()),
            port: Some(self.port),
            user: Some("postgres".into()),
            ..DatabaseConfig::new(self.name.clone())
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// A database with `rows` notes, dumped to `dir/dump.sql`; then every body
/// is changed to `changed`, so a load that commits shows.
async fn dumped(remote: &dyn Remote, port: u16, rows: u32, dir: &Path) -> (Db, std::path::PathBuf) {
    let db = Db::new(port);
    db.sql(&format!(
        "CREATE TABLE notes (id int primary key, body text); \
         INSERT INTO notes SELECT g, 'original ' || g FROM generate_series(1, {rows}) g"
    ));
    let file = dir.join("dump.sql");
    let bytes = db::dump_to_file(remote, &db.config(), &file, None)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    db.sql("UPDATE notes SET body = 'changed'");
    (db, file)
}

/// The dump cut inside the notes' COPY data, at a row boundary (psql ends
/// a COPY at the end of its input as if `\.` had come).
fn cut_in_copy(dump: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(dump);
    let copy = text.find("COPY public.notes").expect("COPY in the dump");
    let first_row = copy + text[copy..].find('\n').unwrap() + 1;
    let after_two = first_row + text[first_row..].match_indices('\n').nth(1).unwrap().0 + 1;
    dump[..after_two].to_vec()
}

#[tokio::test]
async fn a_dump_loads_back_streamed_both_ways_over_ssh() {
    let Some(port) = ektool_tests::pg_port() else {
        return;
    };
    let dir = tempdir();
    let remote = ssh_remote(1, dir.path());
    let (db, file) = dumped(remote.as_ref(), port, 20_000, dir.path()).await;
    let loaded = db::load(
        remote.as_ref(),
        "staging",
        &db.config(),
        std::fs::File::open(&file).unwrap(),
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(loaded, std::fs::metadata(&file).unwrap().len());
    assert_eq!(
        db.sql("SELECT count(*) FROM notes WHERE body LIKE 'original %'"),
        "20000"
    );
}

#[tokio::test]
async fn a_truncated_dump_commits_nothing() {
    let Some(port) = ektool_tests::pg_port() else {
        return;
    };
    let dir = tempdir();
    let remote = ssh_remote(2, dir.path());
    let (db, file) = dumped(remote.as_ref(), port, 50, dir.path()).await;
    let truncated = cut_in_copy(&std::fs::read(&file).unwrap());
    let err = db::load(
        remote.as_ref(),
        "staging",
        &db.config(),
        std::io::Cursor::new(truncated),
        false,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DbError::Incomplete { .. }), "{err}");
    // The DROP TABLE and the partial COPY were rolled back: the table is
    // as it was before the load.
    assert_eq!(db.sql("SELECT count(*) FROM notes"), "50");
    assert_eq!(db.sql("SELECT count(DISTINCT body) FROM notes"), "1");
    assert_eq!(db.sql("SELECT min(body) FROM notes"), "changed");
}

/// A reader that gives the first `n` bytes of `data`, then fails (a
/// dropped pipe, a read error, an interrupted upload).
struct BreaksAfter {
    data: std::io::Cursor<Vec<u8>>,
    left: usize,
}

impl Read for BreaksAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "input cut",
            ));
        }
        let max = buf.len().min(self.left);
        let n = self.data.read(&mut buf[..max])?;
        self.left -= n;
        Ok(n)
    }
}

#[tokio::test]
async fn an_input_that_breaks_off_commits_nothing_over_ssh_or_locally() {
    let Some(port) = ektool_tests::pg_port() else {
        return;
    };
    let dir = tempdir();
    let ssh = ssh_remote(3, dir.path());
    let (db, file) = dumped(ssh.as_ref(), port, 50, dir.path()).await;
    let whole = std::fs::read(&file).unwrap();
    let cut = cut_in_copy(&whole).len();
    let local = LocalRemote::new();
    for remote in [ssh.as_ref() as &dyn Remote, &local] {
        let err = db::load(
            remote,
            "staging",
            &db.config(),
            BreaksAfter {
                data: std::io::Cursor::new(whole.clone()),
                left: cut,
            },
            false,
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, DbError::Remote(_)),
            "{}: {err}",
            remote.host()
        );
        assert_eq!(
            db.sql("SELECT count(*) FROM notes"),
            "50",
            "{}",
            remote.host()
        );
        assert_eq!(
            db.sql("SELECT min(body) FROM notes"),
            "changed",
            "{}",
            remote.host()
        );
    }
}
