//! `db dump` streams: a ~1 GB database dumped over SSH (bench host 1) to a
//! local file by `deploykit::db::dump_to_file`, as `ektool db dump` does.
//! Prints the dump's size, the time, and this process's peak resident
//! memory (`VmHWM`); the target is ≤ 64 MiB whatever the dump's size.
//!
//! Needs the bench with PostgreSQL (`scripts/testbed up`):
//! `cargo bench -p ektool-tests --bench db_dump` (`-- MB` for another
//! size, default 1024).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use deploykit::db::{self, DatabaseConfig};
use ec2kit::{SshOptions, SshRemote, SshTarget};
use ektool_tests::{pg_port, ssh_host, tempdir, unique};

fn psql(port: u16, database: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let mb: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if ektool_tests::full_bench() { 1024 } else { 16 });
    let Some(port) = pg_port() else {
        return;
    };
    let name = unique("dumpbench").replace('-', "_");
    psql(port, "postgres", &format!("CREATE DATABASE {name}"));
    // Rows of ~1 KiB (inline, uncompressed: under the TOAST threshold).
    let rows = mb * 1024;
    let fill = Instant::now();
    psql(
        port,
        &name,
        &format!(
            "CREATE TABLE big (id bigint, body text); \
             INSERT INTO big SELECT g, md5(g::text) || repeat('x', 990) FROM generate_series(1, {rows}) g"
        ),
    );
    let fill = fill.elapsed();

    let host = ssh_host(1);
    let dir = tempdir();
    let kh = host.write_known_hosts(dir.path());
    let remote = SshRemote::new(
        SshTarget::parse_with_user(&host.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![host.client_key.clone()],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(10),
        },
    );
    let config = DatabaseConfig {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        user: Some("postgres".into()),
        ..DatabaseConfig::new(name.clone())
    };
    let file = dir.path().join("dump.sql");
    let before = peak_rss_kib();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = Instant::now();
    let bytes = rt
        .block_on(db::dump_to_file(&remote, &config, &file, None))
        .unwrap();
    let took = start.elapsed();
    let peak = peak_rss_kib();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), bytes);
    println!(
        "db dump: {:.0} MiB in {:.1} s ({:.0} MiB/s) over SSH; peak RSS {:.1} MiB \
         (before the dump {:.1} MiB); target ≤ 64 MiB; table filled in {:.1} s",
        bytes as f64 / 1048576.0,
        took.as_secs_f64(),
        bytes as f64 / 1048576.0 / took.as_secs_f64(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        fill.as_secs_f64(),
    );
    drop(rt);
    psql(
        port,
        "postgres",
        &format!("DROP DATABASE {name} WITH (FORCE)"),
    );
}
