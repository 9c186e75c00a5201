//! Prometheus metrics in the text exposition format, for node_exporter's
//! textfile collector.
//!
//! [`Metrics`] is a small renderer: families with `# HELP` and `# TYPE`
//! lines, samples with escaped label values, integral values without a
//! fraction. [`write_atomic`] replaces a file in one rename, so the
//! collector never reads half of it. The reports build their own metrics
//! ([`crate::check::CheckReport::metrics`]); [`Metrics::run`] adds the
//! start, end and success of a run.
//!
//! ```
//! use snapkit::metrics::Metrics;
//!
//! let mut m = Metrics::new();
//! m.gauge("ektool_snapshots", "Snapshots ektool made, by region.")
//!     .sample(&[("region", "eu-west-1")], 42.0);
//! assert_eq!(
//!     m.render().lines().collect::<Vec<_>>(),
//!     [
//!         "# HELP ektool_snapshots Snapshots ektool made, by region.",
//!         "# TYPE ektool_snapshots gauge",
//!         "ektool_snapshots{region=\"eu-west-1\"} 42",
//!     ]
//! );
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A value that goes up and down (or a timestamp).
    Gauge,
    /// A value that only goes up; its name ends in `_total`.
    Counter,
}

/// One family: a name, its help, its type and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

impl Family {
    /// Adds a sample with these labels (names as given, values escaped
    /// when rendered).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.samples.push((
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        ));
        self
    }
}

/// A set of metric families, rendered in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    families: Vec<Family>,
}

/// A label value escaped for the text format: `\`, `"` and newlines.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 9e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 9e15 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

impl Metrics {
    /// No families.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }

    /// The gauge family `name` (created with `help` the first time).
    pub fn gauge(&mut self, name: &str, help: &str) -> &mut Family {
        self.family(name, help, Kind::Gauge)
    }

    /// The counter family `name` (its name should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str) -> &mut Family {
        self.family(name, help, Kind::Counter)
    }

    /// Appends every sample of `other` to the family of the same name here
    /// (created with `other`'s help and type the first time), with
    /// `label` put first among its labels: one account's metrics among
    /// many, each sample labelled `account="123456789012"`, so that two
    /// accounts' samples of one region never collide.
    ///
    /// ```
    /// use snapkit::metrics::Metrics;
    ///
    /// let mut one = Metrics::new();
    /// one.gauge("ektool_snapshots", "Snapshots.")
    ///     .sample(&[("region", "eu-west-1")], 3.0);
    /// let mut all = Metrics::new();
    /// all.extend_labelled(one, ("account", "111111111111"));
    /// assert!(all.render().contains(
    ///     "ektool_snapshots{account=\"111111111111\",region=\"eu-west-1\"} 3\n"
    /// ));
    /// ```
    pub fn extend_labelled(&mut self, other: Metrics, label: (&str, &str)) -> &mut Self {
        for f in other.families {
            let family = self.family(&f.name, &f.help, f.kind);
            for (labels, v) in f.samples {
                let mut with = Vec::with_capacity(labels.len() + 1);
                with.push((label.0.to_owned(), label.1.to_owned()));
                with.extend(labels.into_iter().filter(|(k, _)| k != label.0));
                family.samples.push((with, v));
            }
        }
        self
    }

    /// The start, end and success of a run of `command` (e.g. `snap
    /// check`): `ektool_last_run_{start,end}_timestamp_seconds` and
    /// `ektool_last_run_success`.
    pub fn run(
        &mut self,
        command: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
        success: bool,
    ) -> &mut Self {
        let secs = |t: jiff::Timestamp| t.as_millisecond() as f64 / 1000.0;
        let labels = [("command", command)];
        self.gauge(
            "ektool_last_run_start_timestamp_seconds",
            "When the last run of the command started (Unix time).",
        )
        .sample(&labels, secs(start));
        self.gauge(
            "ektool_last_run_end_timestamp_seconds",
            "When the last run of the command ended (Unix time).",
        )
        .sample(&labels, secs(end));
        self.gauge(
            "ektool_last_run_success",
            "Whether the last run of the command succeeded (1) or failed (0).",
        )
        .sample(&labels, if success { 1.0 } else { 0.0 });
        self
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let kind = match f.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, v) in &f.samples {
                out.push_str(&f.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", value(*v));
            }
        }
        out
    }
}

/// Writes `text` to `path` atomically: a temporary file in the same
/// directory, flushed, made readable (`0644`), then renamed over `path`.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_help_type_and_escaped_labels() {
        let mut m = Metrics::new();
        m.gauge("ektool_a_seconds", "A \\ help\nline.")
            .sample(&[("l", "back\\slash \"quoted\"\nnewline")], 1.5)
            .sample(&[], 1_700_000_000.0);
        m.counter("ektool_b_total", "B.")
            .sample(&[("x", "1"), ("y", "")], f64::NAN);
        // The same family again: samples join it, no second HELP.
        m.gauge("ektool_a_seconds", "ignored")
            .sample(&[("l", "2")], -0.25);
        assert_eq!(
            m.render(),
            "# HELP ektool_a_seconds A \\\\ help\\nline.\n\
             # TYPE ektool_a_seconds gauge\n\
             ektool_a_seconds{l=\"back\\\\slash \\\"quoted\\\"\\nnewline\"} 1.5\n\
             ektool_a_seconds 1700000000\n\
             ektool_a_seconds{l=\"2\"} -0.25\n\
             # HELP ektool_b_total B.\n\
             # TYPE ektool_b_total counter\n\
             ektool_b_total{x=\"1\",y=\"\"} NaN\n"
        );
    }

    #[test]
    fn values_integral_fractional_and_infinite() {
        assert_eq!(value(3.0), "3");
        assert_eq!(value(1_764_000_000.123), "1764000000.123");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(1e300), "1e300");
    }

    #[test]
    fn run_metrics_carry_the_command() {
        let mut m = Metrics::new();
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        m.run("snap check", t, t, false);
        let text = m.render();
        assert!(text.contains(
            "ektool_last_run_start_timestamp_seconds{command=\"snap check\"} 1800000000\n"
        ));
        assert!(text.contains("ektool_last_run_success{command=\"snap check\"} 0\n"));
    }

    #[test]
    fn labelled_samples_join_their_families_with_the_label_first() {
        let mut all = Metrics::new();
        all.gauge("ektool_a", "A.").sample(&[("region", "r1")], 1.0);
        for (account, v) in [("111111111111", 2.0), ("222222222222", 3.0)] {
            let mut one = Metrics::new();
            one.gauge("ektool_a", "A (ignored).")
                .sample(&[("region", "r1")], v);
            one.counter("ektool_b_total", "B.").sample(&[], v);
            all.extend_labelled(one, ("account", account));
        }
        assert_eq!(
            all.render(),
            "# HELP ektool_a A.\n\
             # TYPE ektool_a gauge\n\
             ektool_a{region=\"r1\"} 1\n\
             ektool_a{account=\"111111111111\",region=\"r1\"} 2\n\
             ektool_a{account=\"222222222222\",region=\"r1\"} 3\n\
             # HELP ektool_b_total B.\n\
             # TYPE ektool_b_total counter\n\
             ektool_b_total{account=\"111111111111\"} 2\n\
             ektool_b_total{account=\"222222222222\"} 3\n"
        );
    }

    #[test]
    fn writes_replace_the_file_in_one_rename_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ektool.prom");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ektool.prom"]);
        // A directory that does not exist: an error, nothing left behind.
        assert!(write_atomic(&dir.path().join("no/such.prom"), "x").is_err());
    }
}
