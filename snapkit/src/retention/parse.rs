//! Choosing a policy by name (command line, config, volume alias), and the
//! policies in force for a trim.

use std::collections::HashMap;

use ec2kit::Snapshot;
use jiff::{SignedDuration, Timestamp};

use super::{
    ArchiveAfter, Gfs, GfsDuration, Guards, Logarithmic, MaxAge, Plan, Planner, RetentionPolicy,
};

/// A policy that could not be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No such policy.
    #[error("unknown retention policy {name:?}; known: {}", PolicySpec::NAMES.join(", "))]
    Unknown {
        /// The name given.
        name: String,
    },
    /// A `max-age:` duration that could not be read.
    #[error("invalid max-age {0:?}: expected days and/or hours, e.g. max-age:36h or max-age:3d")]
    MaxAge(String),
    /// GFS without any keep rule would delete everything.
    #[error(
        "the gfs policy needs at least one keep rule (last, hourly, daily, weekly, monthly, yearly or within)"
    )]
    EmptyGfs,
    /// A keep count below restic's -1.
    #[error("{rule} {count}: a keep count is -1 (unlimited), 0 (off) or more")]
    Count {
        /// The rule (`keep-daily`, ...).
        rule: &'static str,
        /// The count given.
        count: i64,
    },
    /// An `archive_after` that is not a positive duration.
    #[error("invalid archive_after {0:?}: expected days and/or hours, e.g. 90d")]
    ArchiveAfter(String),
    /// A `within` duration out of range.
    #[error("keep-within {0}: at most {max} years in all", max = super::gfs::MAX_YEARS)]
    Within(String),
}

/// A chosen policy with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySpec {
    /// The seed's logarithmic trim.
    Logarithmic(Logarithmic),
    /// restic-style GFS.
    Gfs(Gfs),
    /// A maximum age.
    MaxAge(MaxAge),
}

impl PolicySpec {
    /// The names [`PolicySpec::from_name`] accepts (plus `max-age:DURATION`).
    pub const NAMES: &'static [&'static str] = &[
        "logarithmic",
        "gfs",
        "oneday_rolling",
        "twoday_rolling",
        "oneweek_rolling",
        "max-age:DURATION",
    ];

    /// A policy by name; `logarithmic` and `gfs` take their settings from
    /// the arguments.
    pub fn from_name(
        name: &str,
        logarithmic: &Logarithmic,
        gfs: &Gfs,
    ) -> Result<Self, PolicyError> {
        let name = name.trim();
        Ok(match name {
            "logarithmic" => Self::Logarithmic(*logarithmic),
            "gfs" => {
                gfs.validate()?;
                if gfs.is_empty() {
                    return Err(PolicyError::EmptyGfs);
                }
                Self::Gfs(gfs.clone())
            }
            "oneday_rolling" => Self::MaxAge(MaxAge::ONEDAY_ROLLING),
            "twoday_rolling" => Self::MaxAge(MaxAge::TWODAY_ROLLING),
            "oneweek_rolling" => Self::MaxAge(MaxAge::ONEWEEK_ROLLING),
            other => match other
                .strip_prefix("max-age:")
                .or_else(|| other.strip_prefix("max-age="))
            {
                Some(d) => Self::MaxAge(MaxAge::new(parse_age(d)?)),
                None => {
                    let mut shown: String = other.chars().take(40).collect();
                    if other.chars().nth(40).is_some() {
                        shown.push('…');
                    }
                    return Err(PolicyError::Unknown { name: shown });
                }
            },
        })
    }

    /// Checks a policy name (and a `max-age:` duration) without the
    /// settings of `logarithmic` and `gfs`: what a config file can check
    /// while it is read.
    pub fn check_name(name: &str) -> Result<(), PolicyError> {
        let gfs = Gfs {
            keep_last: Some(1),
            ..Gfs::default()
        };
        Self::from_name(name, &Logarithmic::default(), &gfs).map(|_| ())
    }

    /// The policy.
    pub fn policy(&self) -> &dyn RetentionPolicy {
        match self {
            Self::Logarithmic(p) => p,
            Self::Gfs(p) => p,
            Self::MaxAge(p) => p,
        }
    }
}

/// The policies in force: a default, a policy of its own for some
/// lineages (a volume alias's strategy), and the minimum kept per lineage.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    /// For lineages without their own.
    pub default: PolicySpec,
    /// Per lineage (a volume id).
    pub per_lineage: HashMap<String, PolicySpec>,
    /// Completed snapshots kept per lineage whatever the policy (at least 1).
    pub min_keep: usize,
    /// Kept snapshots older than this move to the archive tier; `None`:
    /// never.
    pub archive_after: Option<ArchiveAfter>,
    /// Per lineage (a volume id): its own `archive_after` (`None`: never).
    pub per_lineage_archive_after: HashMap<String, Option<ArchiveAfter>>,
}

impl Policies {
    /// `default` for every lineage, keeping at least one per lineage.
    pub fn new(default: PolicySpec) -> Self {
        Self {
            default,
            per_lineage: HashMap::new(),
            min_keep: 1,
            archive_after: None,
            per_lineage_archive_after: HashMap::new(),
        }
    }

    /// Moves kept snapshots older than `after` to the archive tier.
    #[must_use]
    pub fn with_archive_after(mut self, after: Option<ArchiveAfter>) -> Self {
        self.archive_after = after;
        self
    }

    /// Uses `after` for `lineage` (a volume id; `None`: never archive it).
    #[must_use]
    pub fn with_lineage_archive_after(
        mut self,
        lineage: impl Into<String>,
        after: Option<ArchiveAfter>,
    ) -> Self {
        self.per_lineage_archive_after.insert(lineage.into(), after);
        self
    }

    /// Uses `policy` for `lineage` (a volume id).
    #[must_use]
    pub fn with_lineage(mut self, lineage: impl Into<String>, policy: PolicySpec) -> Self {
        self.per_lineage.insert(lineage.into(), policy);
        self
    }

    /// Keeps at least `n` completed snapshots per lineage (0 counts as 1:
    /// the newest completed is always kept).
    #[must_use]
    pub fn with_min_keep(mut self, n: usize) -> Self {
        self.min_keep = n.max(1);
        self
    }

    /// Plans `snapshots` with these policies and `guards` (whose
    /// `min_keep` these policies set).
    pub fn plan(&self, snapshots: &[Snapshot], now: Timestamp, mut guards: Guards) -> Plan {
        guards.min_keep = self.min_keep;
        let mut planner = Planner::new(self.default.policy())
            .with_guards(guards)
            .with_archive_after(self.archive_after.clone());
        for (lineage, spec) in &self.per_lineage {
            planner = planner.with_lineage_policy(lineage.clone(), spec.policy());
        }
        for (lineage, after) in &self.per_lineage_archive_after {
            planner = planner.with_lineage_archive_after(lineage.clone(), after.clone());
        }
        planner.plan(snapshots, now)
    }

    /// What of `snapshots` will still exist at `at` if `plan` is carried
    /// out and these policies run again at `at`, with no new backups in
    /// between: `snapshots` minus `plan`'s deletions, planned at `at`.
    /// The returned plan's kept decisions are the survivors.
    pub fn project(
        &self,
        snapshots: &[Snapshot],
        plan: &Plan,
        at: Timestamp,
        guards: Guards,
    ) -> Plan {
        let gone: std::collections::HashSet<&ec2kit::SnapshotId> =
            plan.deletions().map(|d| &d.id).collect();
        let left: Vec<Snapshot> = snapshots
            .iter()
            .filter(|s| !gone.contains(&s.id))
            .cloned()
            .collect();
        self.plan(&left, at, guards)
    }
}

pub(crate) fn parse_age(s: &str) -> Result<SignedDuration, PolicyError> {
    s.parse::<GfsDuration>()
        .map_err(|e| PolicyError::MaxAge(e.0))?
        .fixed()
        .ok_or_else(|| PolicyError::MaxAge(s.chars().take(40).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_counts_and_durations_are_refused() {
        let l = Logarithmic::default();
        let gfs = |g: Gfs| PolicySpec::from_name("gfs", &l, &g);
        assert!(matches!(
            gfs(Gfs {
                keep_daily: Some(-2),
                ..Gfs::default()
            }),
            Err(PolicyError::Count { count: -2, .. })
        ));
        assert!(
            gfs(Gfs {
                keep_daily: Some(-1),
                ..Gfs::default()
            })
            .is_ok()
        );
        assert!(matches!(
            gfs(Gfs {
                keep_within: Some(GfsDuration {
                    years: i32::MAX,
                    ..GfsDuration::default()
                }),
                ..Gfs::default()
            }),
            Err(PolicyError::Within(_))
        ));
        for bad in ["20000y", "1001y", "2147483648h", "99999999999d", "12000m1d"] {
            assert!(bad.parse::<GfsDuration>().is_err(), "{bad}");
        }
        assert!("1000y".parse::<GfsDuration>().is_ok());
        assert!(matches!(
            PolicySpec::check_name("max-age:abc"),
            Err(PolicyError::MaxAge(_))
        ));
        assert!(PolicySpec::check_name("max-age:3d").is_ok());
        assert!(PolicySpec::check_name("gfs").is_ok());
        let long = "x".repeat(10_000);
        let e = PolicySpec::check_name(&long).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
    }

    proptest! {
        /// Arbitrary text never panics the policy and duration parsers,
        /// and their errors stay one short line.
        #[test]
        fn policy_parsers_take_any_text(text in "\\PC{0,80}", bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            for t in [&text, &lossy, &format!("max-age:{text}"), &format!("max-age:{lossy}")] {
                if let Err(e) = PolicySpec::check_name(t) {
                    let e = e.to_string();
                    prop_assert!(e.len() < 400 && !e.contains('\n'), "{}", e);
                }
                match t.parse::<GfsDuration>() {
                    Ok(d) => prop_assert!(d.is_in_range()),
                    Err(e) => prop_assert!(e.to_string().len() < 400),
                }
            }
        }
    }
}
