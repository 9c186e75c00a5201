//! A picture of a retention plan: one self-contained HTML page.
//!
//! [`render`] turns a [`Plan`] (and optional projections: the same
//! inventory planned for later dates, see
//! [`Policies::project`](super::Policies::project)) into a single HTML
//! document with inline CSS, SVG and a few lines of JavaScript: no network
//! access, nothing to install. Each lineage gets a timeline: every
//! snapshot is a mark placed by its start time, kept ones on one track and
//! deleted ones on another, in different colours, with the decision's
//! reason on hover (an SVG `<title>`). The buckets the reasons name
//! (`hourly`, `daily`, … for GFS; intervals for the logarithmic policy;
//! `within`/`younger than` for the age limits) are shaded on tracks of
//! their own, and each projection adds a track with what will still exist
//! on its date.
//!
//! Dense lineages stay readable: above [`DENSE_MARKS`] snapshots a
//! lineage's marks are aggregated into one mark per pixel column, whose
//! `data-n` attribute and hover text give the number of snapshots it
//! stands for. The page's script adds these up and writes the totals into
//! `data-rendered-kept`, `data-rendered-deleted` and
//! `data-rendered-projected` on `<body>` (and a line of text), so a
//! browser test can check the drawing against the plan.
//!
//! Every string from outside (lineages come from tag values, reasons from
//! user policies, notes) is escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;

use super::{Decision, Plan, Reason, Verdict};

/// Above this many snapshots in a lineage, its marks are aggregated by
/// pixel column.
pub const DENSE_MARKS: usize = 300;

/// Width of the plotting area, in pixels.
const PLOT_W: f64 = 960.0;
/// Left margin for the track labels.
const LABEL_W: f64 = 110.0;
/// Right margin.
const RIGHT_W: f64 = 20.0;
/// Height of a mark track.
const TRACK_H: f64 = 18.0;
/// Height of a bucket track.
const BUCKET_H: f64 = 12.0;
/// Height of the time axis.
const AXIS_H: f64 = 18.0;
/// Width of an aggregation column.
const COLUMN_W: f64 = 3.0;

/// The bucket kinds shaded, in drawing order, with their colours.
const BUCKETS: [(&str, &str); 9] = [
    ("last", "#9e9e9e"),
    ("within", "#80cbc4"),
    ("hourly", "#ffcc80"),
    ("daily", "#a5d6a7"),
    ("weekly", "#90caf9"),
    ("monthly", "#ce93d8"),
    ("yearly", "#f48fb1"),
    ("interval", "#b0bec5"),
    ("younger", "#80cbc4"),
];

const KEEP_COLOUR: &str = "#2e7d32";
const DELETE_COLOUR: &str = "#c62828";
const PROJ_COLOUR: &str = "#1565c0";

/// Escapes `s` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M").to_string()
}

/// The time axis shared by every lineage.
struct Scale {
    from: f64,
    to: f64,
}

impl Scale {
    fn x(&self, t: Timestamp) -> f64 {
        let s = t.as_millisecond() as f64 / 1000.0;
        LABEL_W + (s - self.from) / (self.to - self.from) * PLOT_W
    }

    fn at(&self, x: f64) -> Timestamp {
        let s = self.from + (x - LABEL_W) / PLOT_W * (self.to - self.from);
        Timestamp::from_second(s as i64).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// Key of a timeline: lineage, then region (a trim over several regions
/// has one timeline per lineage per region).
type Key<'a> = (&'a str, Option<&'a str>);

/// A logarithmic interval: `[from, to)`.
type Interval = (Timestamp, Timestamp);

fn key(d: &Decision) -> Key<'_> {
    (&d.lineage, d.region.as_ref().map(|r| r.as_str()))
}

/// The bucket kinds a reason names, with (for logarithmic intervals) the
/// interval itself.
fn buckets_of(reason: &Reason) -> Vec<(&'static str, Option<Interval>)> {
    match reason {
        Reason::OldestInInterval(i) => vec![("interval", parse_interval(i))],
        Reason::YoungerThan(_) => vec![("younger", None)],
        Reason::Rules(_) | Reason::Custom(_) => {
            let text = reason.to_string();
            BUCKETS
                .iter()
                .filter(|(k, _)| *k != "interval" && *k != "younger")
                .filter(|(k, _)| text.split([' ', ',']).any(|w| w == *k))
                .map(|(k, _)| (*k, None))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// `[2013-01-01 00:00, 2013-01-20 14:30)` → the two times.
fn parse_interval(s: &str) -> Option<Interval> {
    let inner = s.strip_prefix('[')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(", ")?;
    let p = |t: &str| {
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", t)
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    };
    Some((p(a)?, p(b)?))
}

/// Renders `plan` as one self-contained HTML page; `projections` are plans
/// of the same inventory for later dates (their `now`), each drawn as a
/// track of what will still exist then.
pub fn render(plan: &Plan, projections: &[Plan]) -> String {
    let mut groups: BTreeMap<Key<'_>, Vec<&Decision>> = BTreeMap::new();
    for d in &plan.decisions {
        groups.entry(key(d)).or_default().push(d);
    }
    let projected: Vec<BTreeMap<Key<'_>, Vec<&Decision>>> = projections
        .iter()
        .map(|p| {
            let mut m: BTreeMap<Key<'_>, Vec<&Decision>> = BTreeMap::new();
            for d in p.decisions.iter().filter(|d| d.action.is_kept()) {
                m.entry(key(d)).or_default().push(d);
            }
            m
        })
        .collect();

    let times = plan
        .decisions
        .iter()
        .map(|d| d.start_time)
        .chain(std::iter::once(plan.now))
        .chain(projections.iter().map(|p| p.now));
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for t in times {
        let s = t.as_millisecond() as f64 / 1000.0;
        lo = lo.min(s);
        hi = hi.max(s);
    }
    let pad = ((hi - lo) * 0.02).max(3600.0);
    let scale = Scale {
        from: lo - pad,
        to: hi + pad,
    };

    let (kept, deleted) = plan.counts();
    let mut policies: Vec<&str> = plan.decisions.iter().map(|d| &*d.policy).collect();
    policies.sort_unstable();
    policies.dedup();

    let mut h = String::with_capacity(4096 + plan.decisions.len() * 200);
    h.push_str(HEAD);
    let _ = write!(
        h,
        "<h1>Retention plan</h1>\n<p class=\"summary\">As of <b>{}</b> UTC · policy <b>{}</b> · \
         {} lineage(s) · <span class=\"keep\">keep {kept}</span>, \
         <span class=\"delete\">delete {deleted}</span></p>\n",
        escape(&when(plan.now)),
        if policies.is_empty() {
            "-".to_owned()
        } else {
            escape(&policies.join(", "))
        },
        groups.len(),
    );
    if !projections.is_empty() {
        h.push_str("<p class=\"summary\">Projections (no new backups, trim run on each date): ");
        let parts: Vec<String> = projections
            .iter()
            .map(|p| {
                format!(
                    "<span class=\"proj\">{}: {} still exist</span>",
                    escape(&when(p.now)),
                    p.decisions.iter().filter(|d| d.action.is_kept()).count()
                )
            })
            .collect();
        h.push_str(&parts.join(" · "));
        h.push_str("</p>\n");
    }
    for note in &plan.notes {
        let _ = writeln!(h, "<p class=\"note\">note: {}</p>", escape(note));
    }
    h.push_str(LEGEND);
    h.push_str("<p id=\"rendered\" class=\"summary\"></p>\n");

    for (k, decisions) in &groups {
        let projs: Vec<(&Plan, &[&Decision])> = projections
            .iter()
            .zip(&projected)
            .map(|(p, m)| (p, m.get(k).map_or(&[][..], Vec::as_slice)))
            .collect();
        timeline(&mut h, &scale, plan, *k, decisions, &projs);
    }
    h.push_str(SCRIPT);
    h.push_str("</body>\n</html>\n");
    h
}

/// One lineage's section.
fn timeline(
    h: &mut String,
    scale: &Scale,
    plan: &Plan,
    (lineage, region): Key<'_>,
    decisions: &[&Decision],
    projections: &[(&Plan, &[&Decision])],
) {
    // Bucket tracks: the kinds the reasons name, in BUCKETS order.
    let mut spans: BTreeMap<usize, Vec<(Timestamp, Option<Interval>)>> = BTreeMap::new();
    for d in decisions.iter().filter(|d| d.action.is_kept()) {
        for (kind, interval) in buckets_of(&d.reason) {
            if let Some(i) = BUCKETS.iter().position(|(k, _)| *k == kind) {
                spans.entry(i).or_default().push((d.start_time, interval));
            }
        }
    }
    let tracks = 2 + projections.len();
    let height = tracks as f64 * TRACK_H + spans.len() as f64 * BUCKET_H + AXIS_H + 4.0;
    let width = LABEL_W + PLOT_W + RIGHT_W;
    let keep = decisions.iter().filter(|d| d.action.is_kept()).count();
    let policy = decisions.first().map_or("-", |d| &*d.policy);
    let dense = decisions.len() > DENSE_MARKS;

    let _ = write!(
        h,
        "<section class=\"lineage\" data-lineage=\"{}\">\n<h2>{}{}</h2>\n<p class=\"meta\">policy \
         {} · {} snapshot(s): keep {}, delete {}{}</p>\n<svg class=\"timeline\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"timeline of {}\">\n",
        escape(lineage),
        escape(lineage),
        region.map_or(String::new(), |r| format!(" <small>{}</small>", escape(r))),
        escape(policy),
        decisions.len(),
        keep,
        decisions.len() - keep,
        if dense {
            " · dense: one mark per column, hover for counts"
        } else {
            ""
        },
        escape(lineage),
    );

    let mut y = 0.0;
    let label = |h: &mut String, y: f64, hh: f64, text: &str| {
        let _ = writeln!(
            h,
            "<text class=\"label\" x=\"4\" y=\"{:.1}\">{}</text>",
            y + hh * 0.75,
            escape(text)
        );
    };

    // Kept and deleted tracks.
    for (verdict, class, colour) in [
        (Verdict::Keep, "keep", KEEP_COLOUR),
        (Verdict::Delete, "delete", DELETE_COLOUR),
    ] {
        label(
            h,
            y,
            TRACK_H,
            if class == "keep" { "kept" } else { "deleted" },
        );
        let _ = writeln!(
            h,
            "<rect class=\"track\" x=\"{LABEL_W}\" y=\"{y}\" width=\"{PLOT_W}\" height=\"{TRACK_H}\"/>"
        );
        let these: Vec<&Decision> = decisions
            .iter()
            .copied()
            .filter(|d| d.action.is_kept() == (verdict == Verdict::Keep))
            .collect();
        marks(h, scale, &these, y, class, colour, dense, |d| {
            format!(
                "{} · {} · {}: {}",
                d.id,
                when(d.start_time),
                class,
                d.reason
            )
        });
        y += TRACK_H;
    }

    // Bucket tracks.
    for (i, list) in &spans {
        let (kind, colour) = BUCKETS[*i];
        label(h, y, BUCKET_H, kind);
        for (j, (t, interval)) in list.iter().enumerate() {
            // Intervals side by side: a gap and alternating shades.
            let (a, b, alt) = match interval {
                Some((a, b)) => (scale.x(*a), scale.x(*b) - 1.0, j % 2 == 1),
                None => (scale.x(*t) - 1.0, scale.x(*t) + 1.0, false),
            };
            let _ = writeln!(
                h,
                "<rect class=\"bucket{}\" fill=\"{colour}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                 height=\"{:.1}\"><title>{}</title></rect>",
                if alt { " alt" } else { "" },
                a.max(LABEL_W),
                y + 1.0,
                (b - a).max(1.0),
                BUCKET_H - 2.0,
                escape(&match interval {
                    Some((a, b)) => format!("{kind}: [{}, {})", when(*a), when(*b)),
                    None => format!("{kind}: {}", when(*t)),
                })
            );
        }
        // The whole span of the kind, lightly.
        if let (Some(first), Some(last)) = (list.first(), list.last()) {
            let (a, b) = (scale.x(first.0), scale.x(last.0));
            let _ = writeln!(
                h,
                "<rect class=\"span\" fill=\"{colour}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                 height=\"{:.1}\"><title>{}</title></rect>",
                a,
                y + 1.0,
                (b - a).max(1.0),
                BUCKET_H - 2.0,
                escape(&format!(
                    "{kind}: {} snapshot(s) kept, {} .. {}",
                    list.len(),
                    when(first.0),
                    when(last.0)
                ))
            );
        }
        y += BUCKET_H;
    }

    // Projection tracks.
    for (i, (p, still)) in projections.iter().enumerate() {
        label(h, y, TRACK_H, &format!("at {}", p.now.strftime("%Y-%m-%d")));
        let _ = writeln!(
            h,
            "<rect class=\"track\" x=\"{LABEL_W}\" y=\"{y}\" width=\"{PLOT_W}\" height=\"{TRACK_H}\"/>"
        );
        let class = format!("proj\" data-at=\"{i}");
        marks(h, scale, still, y, &class, PROJ_COLOUR, dense, |d| {
            format!(
                "{} · {}: still exists on {} ({})",
                d.id,
                when(d.start_time),
                when(p.now),
                d.reason
            )
        });
        y += TRACK_H;
    }

    // Time lines: now and the projection dates.
    let plot_bottom = y;
    let x = scale.x(plan.now);
    let _ = writeln!(
        h,
        "<line class=\"now\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"0\" y2=\"{plot_bottom}\"><title>now: {}</title></line>",
        escape(&when(plan.now))
    );
    for (p, _) in projections {
        let x = scale.x(p.now);
        let _ = writeln!(
            h,
            "<line class=\"at\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"0\" y2=\"{plot_bottom}\"><title>at {}</title></line>",
            escape(&when(p.now))
        );
    }

    // Axis: six ticks.
    for i in 0..=5 {
        let x = LABEL_W + PLOT_W * f64::from(i) / 5.0;
        let anchor = match i {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            h,
            "<text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            y + AXIS_H - 4.0,
            escape(&scale.at(x).strftime("%Y-%m-%d").to_string())
        );
    }
    h.push_str("</svg>\n</section>\n");
}

/// Draws the marks of one track: one per snapshot, or one per column when
/// `dense`.
#[allow(clippy::too_many_arguments)]
fn marks(
    h: &mut String,
    scale: &Scale,
    decisions: &[&Decision],
    y: f64,
    class: &str,
    colour: &str,
    dense: bool,
    hover: impl Fn(&Decision) -> String,
) {
    if !dense {
        for d in decisions {
            let x = scale.x(d.start_time);
            let _ = writeln!(
                h,
                "<rect class=\"mark {class}\" data-n=\"1\" fill=\"{colour}\" x=\"{:.1}\" y=\"{:.1}\" \
                 width=\"2\" height=\"{:.1}\"><title>{}</title></rect>",
                x - 1.0,
                y + 2.0,
                TRACK_H - 4.0,
                escape(&hover(d))
            );
        }
        return;
    }
    let mut columns: BTreeMap<i64, Vec<&Decision>> = BTreeMap::new();
    for d in decisions {
        let c = ((scale.x(d.start_time) - LABEL_W) / COLUMN_W).floor() as i64;
        columns.entry(c).or_default().push(d);
    }
    let most = columns.values().map(Vec::len).max().unwrap_or(1) as f64;
    for (c, list) in &columns {
        let n = list.len();
        let x = LABEL_W + *c as f64 * COLUMN_W;
        // Taller for more snapshots (log scale): density at a glance.
        let frac = 0.35 + 0.65 * ((n as f64).ln_1p() / most.ln_1p());
        let hh = (TRACK_H - 4.0) * frac;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for d in list {
            *reasons.entry(d.reason.to_string()).or_default() += 1;
        }
        let mut title = format!(
            "{n} snapshot(s), {} .. {}",
            when(list[0].start_time),
            when(list[n - 1].start_time)
        );
        for (r, k) in reasons.iter().take(4) {
            let _ = write!(title, "\n{k} × {r}");
        }
        if reasons.len() > 4 {
            let _ = write!(title, "\n… {} more reason(s)", reasons.len() - 4);
        }
        if n == 1 {
            title = hover(list[0]);
        }
        let _ = writeln!(
            h,
            "<rect class=\"mark agg {class}\" data-n=\"{n}\" fill=\"{colour}\" x=\"{x:.1}\" \
             y=\"{:.1}\" width=\"{:.1}\" height=\"{hh:.1}\"><title>{}</title></rect>",
            y + 2.0 + (TRACK_H - 4.0 - hh),
            COLUMN_W - 0.5,
            escape(&title)
        );
    }
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="ektool">
<title>Retention plan</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #212121; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 15px; margin: 14px 0 0; font-family: ui-monospace, monospace; }
h2 small { color: #616161; font-weight: normal; }
.summary, .meta, .note { margin: 2px 0; }
.meta, .note { color: #616161; font-size: 12px; }
.keep { color: #2e7d32; font-weight: bold; }
.delete { color: #c62828; font-weight: bold; }
.proj { color: #1565c0; }
.legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
svg.timeline { display: block; }
svg .track { fill: #f5f5f5; }
svg .label, svg .tick { font-size: 11px; fill: #616161; }
svg .mark:hover, svg .bucket:hover { stroke: #000; stroke-width: 1; }
svg .bucket { opacity: 0.9; }
svg .bucket.alt { opacity: 0.5; }
svg .span { opacity: 0.25; }
svg .now { stroke: #212121; stroke-width: 1.5; }
svg .at { stroke: #1565c0; stroke-width: 1; stroke-dasharray: 3 2; }
</style>
</head>
<body>
"#;

const LEGEND: &str = r##"<p class="legend"><span><i style="background:#2e7d32"></i>kept</span><span><i style="background:#c62828"></i>deleted</span><span><i style="background:#1565c0"></i>still exists on a projection date</span><span><i style="background:#ffcc80"></i>hourly</span><span><i style="background:#a5d6a7"></i>daily</span><span><i style="background:#90caf9"></i>weekly</span><span><i style="background:#ce93d8"></i>monthly</span><span><i style="background:#f48fb1"></i>yearly</span><span><i style="background:#80cbc4"></i>within / younger than</span><span><i style="background:#b0bec5"></i>interval</span> · hover a mark for its reason</p>
"##;

const SCRIPT: &str = r#"<script>
(function () {
  var kept = 0, deleted = 0, projected = [];
  document.querySelectorAll('svg.timeline .mark').forEach(function (m) {
    var n = parseInt(m.getAttribute('data-n'), 10) || 0;
    if (m.classList.contains('keep')) kept += n;
    else if (m.classList.contains('delete')) deleted += n;
    else if (m.classList.contains('proj')) {
      var i = parseInt(m.getAttribute('data-at'), 10);
      projected[i] = (projected[i] || 0) + n;
    }
  });
  var at = document.querySelectorAll('p.summary span.proj').length;
  for (var i = 0; i < at; i++) projected[i] = projected[i] || 0;
  document.body.setAttribute('data-rendered-kept', kept);
  document.body.setAttribute('data-rendered-deleted', deleted);
  document.body.setAttribute('data-rendered-projected', projected.join(','));
  document.getElementById('rendered').textContent =
    'drawn: ' + kept + ' kept, ' + deleted + ' deleted' +
    (projected.length ? '; still existing on the projection dates: ' + projected.join(', ') : '');
})();
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lineage::tags;
    use crate::retention::testutil::snap;
    use crate::retention::{Gfs, Logarithmic, Policies, PolicySpec, RetentionPolicy};

    fn count(h: &str, needle: &str) -> usize {
        h.matches(needle).count()
    }

    #[test]
    fn every_outside_string_is_escaped() {
        let mut s = snap(1, "vol-00000001", "2026-01-01T00:00:00Z");
        s.volume_id = None;
        s.tags
            .insert(tags::VOLUME, "<script>alert('x')</script>&\"");
        let mut t = snap(2, "vol-00000001", "2026-01-02T00:00:00Z");
        t.volume_id = None;
        t.tags
            .insert(tags::VOLUME, "<script>alert('x')</script>&\"");
        let mut plan =
            Logarithmic::default().plan(&[s, t], "2026-01-03T00:00:00Z".parse().unwrap());
        plan.notes.push("<img src=x onerror=alert(1)>".into());
        plan.decisions[0].reason = Reason::Custom("</title><script>bad()</script>".into());
        let h = render(&plan, &[]);
        assert!(!h.contains("<script>alert"), "{h}");
        assert!(!h.contains("<script>bad"), "{h}");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
        // The page's own script is the only one.
        assert_eq!(count(&h, "<script>"), 1);
    }

    #[test]
    fn one_mark_per_snapshot_and_per_projected_survivor() {
        let snaps: Vec<_> = (1..=9)
            .map(|d| snap(d, "vol-00000001", &format!("2026-01-0{d}T00:00:00Z")))
            .collect();
        let spec =
            PolicySpec::from_name("twoday_rolling", &Logarithmic::default(), &Gfs::default())
                .unwrap();
        let policies = Policies::new(spec);
        let now = "2026-01-09T12:00:00Z".parse().unwrap();
        let plan = policies.plan(&snaps, now, Default::default());
        let at = "2026-01-20T00:00:00Z".parse().unwrap();
        let proj = policies.project(&snaps, &plan, at, Default::default());
        let h = render(&plan, std::slice::from_ref(&proj));
        let (k, d) = plan.counts();
        assert_eq!(count(&h, "class=\"mark keep\""), k);
        assert_eq!(count(&h, "class=\"mark delete\""), d);
        let still = proj.decisions.iter().filter(|d| d.action.is_kept()).count();
        assert!(still >= 1 && still <= k, "{still} of {k}");
        assert_eq!(count(&h, "class=\"mark proj\""), still);
        assert!(h.contains("at 2026-01-20"));
    }

    #[test]
    fn gfs_buckets_are_shaded_and_dense_lineages_aggregate() {
        // Hourly snapshots for 60 days: 1440 in one lineage.
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let snaps: Vec<_> = (0..1440)
            .map(|i| {
                let t = start + jiff::SignedDuration::from_hours(i);
                snap(i as u64 + 1, "vol-00000001", &t.to_string())
            })
            .collect();
        let gfs = Gfs {
            keep_hourly: Some(24),
            keep_daily: Some(7),
            keep_weekly: Some(4),
            ..Gfs::default()
        };
        let spec = PolicySpec::from_name("gfs", &Logarithmic::default(), &gfs).unwrap();
        let plan = Policies::new(spec).plan(
            &snaps,
            "2026-03-02T00:00:00Z".parse().unwrap(),
            Default::default(),
        );
        let h = render(&plan, &[]);
        for kind in ["hourly", "daily", "weekly"] {
            assert!(h.contains(&format!(">{kind}</text>")), "no {kind} track");
        }
        assert!(!h.contains(">monthly</text>"));
        // Aggregated: far fewer marks than snapshots, but the counts add up.
        let marks = count(&h, "class=\"mark agg");
        assert!(marks < 700, "{marks} marks");
        let total: usize = h
            .split("data-n=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].parse::<usize>().unwrap())
            .sum();
        assert_eq!(total, 1440);
    }

    #[test]
    fn logarithmic_intervals_are_shaded_from_their_bounds() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let snaps: Vec<_> = (0..90)
            .map(|i| {
                let t = start + jiff::SignedDuration::from_hours(24 * i);
                snap(i as u64 + 1, "vol-00000001", &t.to_string())
            })
            .collect();
        let plan = Logarithmic::default().plan(&snaps, "2026-04-01T00:00:00Z".parse().unwrap());
        assert!(
            plan.decisions
                .iter()
                .any(|d| matches!(d.reason, Reason::OldestInInterval(_)))
        );
        let h = render(&plan, &[]);
        assert!(h.contains(">interval</text>"));
        assert!(h.contains("<title>interval: ["), "intervals not parsed");
    }
}
