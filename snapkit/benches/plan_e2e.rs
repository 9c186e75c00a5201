//! `snap plan` end to end on a 1,000,000-snapshot inventory file: read,
//! parse, plan, write JSON — the same steps `ektool snap plan --output
//! json` takes (target for the binary: <= 0.8 s and <= 400 MiB peak).
//! Prints its figures, peak memory included.
//!
//! `cargo bench -p snapkit --bench plan_e2e`; with
//! `EKTOOL_PLAN_INVENTORY=FILE` the inventory is written to FILE and kept,
//! for timing the binary on it (`/usr/bin/time -v ektool snap plan
//! --inventory FILE --now 2024-05-01T00:00:00Z --output json >/dev/null`).

use std::io::Write;
use std::time::Instant;

use ec2kit::Snapshot;
use snapkit::retention::{Logarithmic, RetentionPolicy};

fn main() {
    let dir = std::env::temp_dir().join(format!("ektool-plan-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let inventory = std::env::var_os("EKTOOL_PLAN_INVENTORY")
        .map_or_else(|| dir.join("inventory.json"), std::path::PathBuf::from);
    {
        // 10,000 lineages x 100 daily snapshots, as `snap list` writes them.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&inventory).expect("create"));
        f.write_all(b"[").expect("write");
        // Under `cargo test` (the suite): 100 lineages, a smoke run.
        let lineages = if ektool_tests::full_bench() {
            10_000u64
        } else {
            100
        };
        for l in 0..lineages {
            for d in 0..100u64 {
                if l + d > 0 {
                    f.write_all(b",").expect("write");
                }
                let day = 1 + d % 28;
                let month = 1 + d / 28;
                write!(
                    f,
                    r#"{{"id":"snap-{:017x}","volume_id":"vol-{l:017x}","start_time":"2024-{month:02}-{day:02}T02:00:00Z","state":"completed","tags":{{"ektool:owner":"ektool","ektool:instance":"i-{l:017x}","Name":"web-{l}"}},"region":"eu-west-1"}}"#,
                    l * 100 + d
                )
                .expect("write");
            }
        }
        f.write_all(b"]").expect("write");
    }
    let size = std::fs::metadata(&inventory).map(|m| m.len()).unwrap_or(0);

    let t0 = Instant::now();
    let snapshots: Vec<Snapshot> = snapkit::inventory::read_file(&inventory).expect("read");
    let t1 = Instant::now();
    let rss_read = memory("VmHWM");
    let plan =
        Logarithmic::default().plan(&snapshots, "2024-05-01T00:00:00Z".parse().expect("now"));
    let t2 = Instant::now();
    let rss_plan = memory("VmHWM");
    let out = std::io::BufWriter::new(std::io::sink());
    snapkit::inventory::write_json_array(&plan.decisions, out).expect("write");
    let t3 = Instant::now();

    let (keep, delete) = plan.counts();
    println!(
        "inventory: {} snapshots, {:.0} MB",
        snapshots.len(),
        size as f64 / 1e6
    );
    println!(
        "parse {:.2}s, plan {:.2}s, write {:.2}s, total {:.2}s (keep {keep}, delete {delete})",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        (t3 - t0).as_secs_f64()
    );
    println!(
        "peak memory (VmHWM): after read {rss_read} MiB, after plan {rss_plan} MiB, at the end {} MiB",
        memory("VmHWM")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `/proc/self/status` figure in MiB (0 where there is none).
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
