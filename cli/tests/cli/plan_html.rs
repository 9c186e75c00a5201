//! `snap plan --format html` in a real browser: headless chromium loads the
//! page, runs its script, dumps the DOM and takes a screenshot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ektool_tests::tempdir;

use crate::harness::Ektool;

/// A hostile lineage name: the `ektool:volume` tag of a copy.
const EVIL: &str = "<script>alert('owned')</script>";

/// An inventory of two lineages: `vol-0000000a`, hourly for 40 days (960
/// snapshots: dense, aggregated), and a copy lineage whose volume tag
/// holds a `<script>` element, daily for 20 days.
fn inventory() -> Vec<serde_json::Value> {
    let start: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut rows = Vec::new();
    for h in 0..960 {
        let t = start + jiff::SignedDuration::from_hours(h);
        rows.push(serde_json::json!({
            "id": format!("snap-{:017x}", h + 1), "volume_id": "vol-0000000a",
            "start_time": t.to_string(), "state": "completed",
            "tags": {"ektool:owner": "ektool"}
        }));
    }
    for d in 0..20 {
        let t = start + jiff::SignedDuration::from_hours(24 * d + 3);
        rows.push(serde_json::json!({
            "id": format!("snap-{:017x}", 0x10000 + d), "volume_id": "vol-ffffffff",
            "start_time": t.to_string(), "state": "completed",
            "tags": {"ektool:owner": "ektool", "ektool:volume": EVIL}
        }));
    }
    rows
}

/// The chromium binary, if installed (`scripts/testbed install`).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Runs headless chromium on `page` with `extra` arguments; its stdout.
fn browse(chromium: &Path, page: &Path, extra: &[&str]) -> String {
    let profile = tempdir();
    // Output into files: a pipe nobody reads while waiting would fill up
    // with a large DOM and wedge the browser.
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start chromium");
    // A watchdog, not a speed check: a wedged browser fails the test
    // instead of hanging it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium failed: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    std::fs::read_to_string(&out_path).expect("chromium's output")
}

/// The value of attribute `name` on the `<body>` of a dumped DOM.
fn body_attr<'a>(dom: &'a str, name: &str) -> &'a str {
    let body = &dom[dom.find("<body").expect("a body")..];
    let body = &body[..body.find('>').unwrap()];
    let at = body
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("<body> has no {name} (did the script run?): {body}"));
    let rest = &body[at + name.len() + 2..];
    &rest[..rest.find('"').unwrap()]
}

#[test]
fn plan_html_draws_the_plan_in_a_real_browser() {
    let dir = tempdir();
    let inv = dir.path().join("inv.json");
    std::fs::write(&inv, serde_json::to_string(&inventory()).unwrap()).unwrap();
    let inv_s = inv.to_str().unwrap();
    let policy = [
        "--policy",
        "gfs",
        "--keep-hourly",
        "48",
        "--keep-daily",
        "10",
        "--keep-weekly",
        "4",
        "--now",
        "2026-02-10T00:00:00Z",
    ];

    // The plan's own counts.
    let json = Ektool::new()
        .args(&["--output", "json", "snap", "plan", "--inventory", inv_s])
        .args(&policy)
        .run()
        .success()
        .json();
    let decisions = json.as_array().unwrap();
    let count = |a: &str| decisions.iter().filter(|d| d["action"] == a).count();
    let (kept, deleted) = (count("keep"), count("delete"));
    assert_eq!(kept + deleted, 980);
    assert!(kept > 10 && deleted > 500, "keep {kept}, delete {deleted}");

    let html = Ektool::new()
        .args(&["snap", "plan", "--inventory", inv_s, "--format", "html"])
        .args(&policy)
        .args(&["--at", "2026-02-20", "--at", "2026-04-01"])
        .run()
        .success()
        .stdout;
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: nothing fetched.
    for outside in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(outside), "the page refers to {outside}");
    }
    assert!(!html.contains(EVIL), "the tag value is not escaped");
    assert!(html.contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"));
    // The projections: what still exists on each date, from the plan.
    let still: Vec<usize> = html
        .split(" still exist</span>")
        .filter_map(|s| s.rsplit(": ").next()?.parse().ok())
        .collect();
    assert_eq!(still.len(), 2, "{still:?}");
    assert!(still[0] <= kept && still[1] <= still[0], "{still:?}");
    assert!(still[1] >= 2, "one per lineage at least: {still:?}");

    let Some(chromium) = chromium() else {
        eprintln!(
            "skipping the browser half: chromium is not installed (scripts/testbed install \
             installs it)"
        );
        return;
    };
    let page = dir.path().join("plan.html");
    std::fs::write(&page, &html).unwrap();

    // The DOM after the page's script ran: it counted the marks it drew.
    let dom = browse(&chromium, &page, &["--dump-dom"]);
    assert_eq!(body_attr(&dom, "data-rendered-kept"), kept.to_string());
    assert_eq!(
        body_attr(&dom, "data-rendered-deleted"),
        deleted.to_string()
    );
    assert_eq!(
        body_attr(&dom, "data-rendered-projected"),
        format!("{},{}", still[0], still[1])
    );
    assert!(dom.contains(&format!("drawn: {kept} kept, {deleted} deleted")));
    // The tag value stayed text: the page's own script is the only one.
    assert_eq!(dom.matches("<script").count(), 1, "an injected script");
    assert_eq!(dom.matches("<section class=\"lineage\"").count(), 2);

    // A screenshot that shows something: kept and deleted marks in their
    // colours on a white page.
    let shot = dir.path().join("plan.png");
    browse(
        &chromium,
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("a screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!((info.width, info.height), (1200, 800));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let near = |c: [u8; 3], want: [u8; 3]| {
        c.iter()
            .zip(want)
            .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 12)
    };
    let keep_px = pixels
        .iter()
        .filter(|p| near(**p, [0x2e, 0x7d, 0x32]))
        .count();
    let delete_px = pixels
        .iter()
        .filter(|p| near(**p, [0xc6, 0x28, 0x28]))
        .count();
    let blank = pixels.iter().filter(|p| **p == [255, 255, 255]).count();
    let colours: std::collections::HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(keep_px > 50, "{keep_px} kept-green pixels");
    assert!(delete_px > 200, "{delete_px} deleted-red pixels");
    assert!(blank < pixels.len() * 97 / 100, "the page is nearly blank");
    assert!(colours.len() > 20, "{} colours", colours.len());
}

#[test]
fn html_output_is_refused_where_it_cannot_be_right() {
    let dir = tempdir();
    let inv = dir.path().join("inv.json");
    std::fs::write(&inv, serde_json::to_string(&inventory()).unwrap()).unwrap();
    let inv_s = inv.to_str().unwrap();
    let base = [
        "snap",
        "plan",
        "--inventory",
        inv_s,
        "--policy",
        "oneweek_rolling",
    ];
    Ektool::new()
        .args(&base)
        .args(&["--at", "2030-01-01"])
        .run()
        .code(2)
        .stderr_has("--at draws projections: it needs --format html");
    Ektool::new()
        .args(&base)
        .args(&[
            "--format",
            "html",
            "--now",
            "2026-02-01",
            "--at",
            "2026-01-01",
        ])
        .run()
        .code(2)
        .stderr_has("a projection is of a time after");
    Ektool::new()
        .args(&base)
        .args(&["--format", "html", "--at", "soon"])
        .run()
        .code(2)
        .stderr_has("invalid --at");
    Ektool::new()
        .args(&["--output", "json"])
        .args(&base)
        .args(&["--format", "html"])
        .run()
        .code(2)
        .stderr_has("choose one");
    Ektool::new()
        .args(&["--region", "eu-west-1", "snap", "trim", "--format", "html"])
        .run()
        .code(2)
        .stderr_has("it needs --dry-run");
}

/// Launches an untagged instance in `region` and snapshots its root
/// volume `n` times with ektool's tags: the volume and the snapshot ids.
async fn owned_snapshots(region: &str, n: usize) -> (String, Vec<String>) {
    use ec2kit::requests::CreateSnapshot;
    use ec2kit::{Ec2, Region, Tags};
    use snapkit::lineage::tags;

    let inst = crate::moto::launch(region, 1, Tags::new()).await.remove(0);
    let ec2 = crate::moto::ec2().await;
    let region = Region::new(region);
    let vol = inst.root_volume().unwrap().clone();
    let t = Tags::new()
        .with(tags::VOLUME, vol.to_string())
        .with(tags::OWNER, tags::OWNER_VALUE);
    let mut ids = Vec::new();
    for _ in 0..n {
        let s = ec2
            .create_snapshot(
                &region,
                &CreateSnapshot {
                    volume_id: Some(vol.clone()),
                    tags: t.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        ids.push(s.id.to_string());
    }
    (vol.to_string(), ids)
}

/// A number in `html` right after `prefix`.
fn number_after(html: &str, prefix: &str) -> usize {
    let at = html.find(prefix).unwrap_or_else(|| panic!("no {prefix:?}")) + prefix.len();
    let digits: String = html[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test]
async fn trim_dry_run_html_shows_every_region_and_deletes_nothing() {
    // Regions where no other test trims, counts or replicates snapshots
    // (trim --dry-run plans every lineage of the region; only ours are
    // asserted on).
    let regions = ["us-gov-west-1", "us-west-2"];
    let mut ours = Vec::new();
    for r in regions {
        let (vol, ids) = owned_snapshots(r, 3).await;
        ours.push((r, vol, ids));
    }
    let html = Ektool::moto()
        .args(&[
            "-r",
            &regions.join(","),
            "--dry-run",
            "snap",
            "trim",
            "--keep-last",
            "1",
            "--format",
            "html",
        ])
        .run()
        .success()
        .stdout;
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("dry run: nothing deleted"), "the table too");
    // One timeline per lineage per region; ours: one kept, two deleted.
    for (region, vol, ids) in &ours {
        assert!(
            html.contains(&format!("<h2>{vol} <small>{region}</small></h2>")),
            "no timeline for {vol} in {region}"
        );
        let verdict = |id: &str| {
            let at = html
                .find(&format!("<title>{id} · "))
                .unwrap_or_else(|| panic!("{id} not drawn"));
            let title = &html[at..at + html[at..].find("</title>").unwrap()];
            if title.contains(" · delete: ") {
                "delete"
            } else {
                "keep"
            }
        };
        // moto gives snapshots taken in one second the same start time:
        // which one is "newest" is the planner's tie-break, not ours.
        let mut got: Vec<&str> = ids.iter().map(|id| verdict(id)).collect();
        got.sort_unstable();
        assert_eq!(got, ["delete", "delete", "keep"], "{region}");
    }
    // A dry run: everything is still there.
    let ec2 = crate::moto::ec2().await;
    for (region, _, ids) in &ours {
        use ec2kit::Ec2;
        let all: Vec<String> = ec2
            .describe_snapshots(&ec2kit::Region::new(*region), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id.to_string())
            .collect();
        assert!(ids.iter().all(|id| all.contains(id)), "a dry run deleted");
    }

    let Some(chromium) = chromium() else {
        eprintln!(
            "skipping the browser half: chromium is not installed (scripts/testbed install \
             installs it)"
        );
        return;
    };
    // The drawing adds up to the plan's own summary (every region).
    let kept = number_after(&html, "<span class=\"keep\">keep ");
    let deleted = number_after(&html, "<span class=\"delete\">delete ");
    assert!(deleted >= 4, "{deleted}");
    let dir = tempdir();
    let page = dir.path().join("trim.html");
    std::fs::write(&page, &html).unwrap();
    let dom = browse(&chromium, &page, &["--dump-dom"]);
    assert_eq!(body_attr(&dom, "data-rendered-kept"), kept.to_string());
    assert_eq!(
        body_attr(&dom, "data-rendered-deleted"),
        deleted.to_string()
    );
}
