//! Where releases live on a host and which one is current.
//!
//! ```text
//! <root>/current -> releases/<name>   relative symlink, replaced by rename(2)
//! <root>/releases/<name>/             one directory per release
//!        releases/<name>/.ektool-release   completion marker, written last
//! <root>/shared/                      linked into every release
//! <root>/repo.git                     mirror of the repository
//! <root>/.ektool/lock/                the deploy lock
//! <root>/.ektool/releases.jsonl       the release log
//! <root>/.ektool/made/<name>          the release directories ektool made
//! ```
//!
//! A deploy root laid out by another tool is taken over without harm:
//! `current` may be absolute (Capistrano) or point outside `releases/` (a
//! hand-made link), buedafab keeps its live pointer in `releases/current`.
//! The raw link is kept ([`HostState::current_link`](crate::HostState::current_link)) so a failed deploy
//! puts back exactly that, and only directories ektool made are removed.
//!
//! The [`ReleaseLayout`] decides which directory a release is built in and
//! which ones a successful deploy may remove, from a host's
//! [`HostState`]: pure policy, no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{HostState, ReleaseDir};

/// Where a release goes on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Placement {
    /// A complete release of this commit is already there: switch to it
    /// without rebuilding.
    Reuse {
        /// The release directory.
        release: String,
    },
    /// Build into this directory.
    Build {
        /// The release directory.
        release: String,
        /// Update the directory's own checkout, keeping ignored build
        /// products (a/b slots), instead of a fresh clone.
        in_place: bool,
    },
}

impl Placement {
    /// The release directory.
    pub fn release(&self) -> &str {
        match self {
            Self::Reuse { release } | Self::Build { release, .. } => release,
        }
    }
}

/// Where releases live and which ones may go.
pub trait ReleaseLayout: Send + Sync + fmt::Debug {
    /// The layout's name (`ab`, `timestamped`).
    fn name(&self) -> &'static str;

    /// Where to put `commit` on a host in `state`; `fresh` is this run's
    /// new release name (the same on every host).
    fn place(&self, state: &HostState, commit: &str, fresh: &str) -> Placement;

    /// The release directories a successful deploy removes. Never the
    /// current release nor `previous`.
    fn cleanup(&self, state: &HostState, current: &str, previous: Option<&str>) -> Vec<String>;
}

/// buedafab's layout: two slots, `releases/a` and `releases/b`; a deploy
/// builds in the slot that is not live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbSlots;

impl AbSlots {
    /// The two slots.
    pub const SLOTS: [&'static str; 2] = ["a", "b"];
}

impl ReleaseLayout for AbSlots {
    fn name(&self) -> &'static str {
        "ab"
    }

    fn place(&self, state: &HostState, commit: &str, _fresh: &str) -> Placement {
        // The live slot first: redeploying what is live is a no-op switch.
        let mut slots = Self::SLOTS.to_vec();
        slots.sort_by_key(|s| Some(*s) != state.current.as_deref());
        if let Some(slot) = slots
            .iter()
            .find(|s| state.release(s).and_then(ReleaseDir::commit) == Some(commit))
        {
            return Placement::Reuse {
                release: (*slot).to_owned(),
            };
        }
        // Never the live slot (ektool's `current`, or buedafab's
        // `releases/current` on a host taken over); if both are live the
        // host refuses the build before anything changes.
        let live: Vec<&str> = state.live().collect();
        let target = Self::SLOTS
            .iter()
            .find(|s| !live.contains(s))
            .copied()
            .unwrap_or(match state.current.as_deref() {
                Some("a") => "b",
                _ => "a",
            });
        Placement::Build {
            release: target.to_owned(),
            in_place: true,
        }
    }

    fn cleanup(&self, _state: &HostState, _current: &str, _previous: Option<&str>) -> Vec<String> {
        // Both slots are always kept: one is live, the other is the rollback.
        Vec::new()
    }
}

/// Capistrano's layout: `releases/<UTC YYYYmmddHHMMSS>`, keeping the
/// newest `keep` complete releases (and always the current and previous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamped {
    /// Complete releases to keep.
    pub keep: usize,
}

impl Timestamped {
    /// Whether a directory name is one of ours (other directories under
    /// `releases/` are left alone).
    pub fn is_release_name(name: &str) -> bool {
        name.len() == 14 && name.bytes().all(|b| b.is_ascii_digit())
    }

    /// A new release name for `now`: later than every valid name in
    /// `existing` (so names grow even when two deploys share a second, or
    /// clocks disagree), and never one of them. A 14-digit name that is
    /// not a time (`99999999999999`) is ignored when looking for the
    /// newest, so it cannot make every later deploy reuse one name.
    pub fn fresh_name<'a>(
        now: jiff::Timestamp,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> String {
        let taken: std::collections::BTreeSet<&str> = existing
            .into_iter()
            .filter(|n| Self::is_release_name(n))
            .collect();
        let now = now.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let newest = taken.iter().rev().find_map(|n| parse_name(n));
        let mut at = match newest.and_then(next_second) {
            Some(next) if next > now => next,
            _ => now,
        };
        // Only a name of year 9999 has no next second: count down instead.
        let mut step_back = false;
        while taken.contains(format_name(at).as_str()) {
            let next = if step_back { None } else { next_second(at) };
            match next {
                Some(n) => at = n,
                None => {
                    step_back = true;
                    match at.checked_sub(jiff::Span::new().seconds(1)) {
                        Ok(p) => at = p,
                        Err(_) => break,
                    }
                }
            }
        }
        format_name(at)
    }
}

fn parse_name(name: &str) -> Option<jiff::civil::DateTime> {
    jiff::civil::DateTime::strptime("%Y%m%d%H%M%S", name).ok()
}

fn format_name(at: jiff::civil::DateTime) -> String {
    at.strftime("%Y%m%d%H%M%S").to_string()
}

/// One second later (`…59` carries into minutes, and so on), if that is
/// still a 14-digit name.
fn next_second(at: jiff::civil::DateTime) -> Option<jiff::civil::DateTime> {
    at.checked_add(jiff::Span::new().seconds(1))
        .ok()
        .filter(|n| format_name(*n).len() == 14)
}

impl ReleaseLayout for Timestamped {
    fn name(&self) -> &'static str {
        "timestamped"
    }

    fn place(&self, state: &HostState, commit: &str, fresh: &str) -> Placement {
        let built = state
            .releases
            .iter()
            .rev()
            .find(|r| r.commit() == Some(commit));
        match built {
            Some(r) => Placement::Reuse {
                release: r.name.clone(),
            },
            None => Placement::Build {
                release: fresh.to_owned(),
                in_place: false,
            },
        }
    }

    fn cleanup(&self, state: &HostState, current: &str, previous: Option<&str>) -> Vec<String> {
        let mut remove = cleanup_plan(&state.releases, current, previous, self.keep);
        remove.retain(|r| state.legacy_current.as_deref() != Some(r.as_str()));
        remove
    }
}

/// Which releases to remove: every unfinished one ektool made, and
/// complete ones beyond the newest `keep`; never `current` nor `previous`,
/// never a directory whose name is not a release name, never one ektool
/// did not make (another tool's releases on a host taken over).
pub fn cleanup_plan(
    releases: &[ReleaseDir],
    current: &str,
    previous: Option<&str>,
    keep: usize,
) -> Vec<String> {
    let protected = |n: &str| n == current || Some(n) == previous;
    let mut ours: Vec<&ReleaseDir> = releases
        .iter()
        .filter(|r| Timestamped::is_release_name(&r.name) && r.is_ours())
        .collect();
    ours.sort_by(|a, b| a.name.cmp(&b.name));
    let mut remove: Vec<String> = ours
        .iter()
        .filter(|r| !r.is_complete() && !protected(&r.name))
        .map(|r| r.name.clone())
        .collect();
    let complete: Vec<&&ReleaseDir> = ours.iter().filter(|r| r.is_complete()).collect();
    // The protected ones count towards `keep`.
    let mut kept = complete.iter().filter(|r| protected(&r.name)).count();
    for r in complete.iter().rev() {
        if protected(&r.name) {
            continue;
        }
        if kept < keep {
            kept += 1;
        } else {
            remove.push(r.name.clone());
        }
    }
    remove.sort();
    remove
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Marker;

    fn dir(name: &str, commit: Option<&str>) -> ReleaseDir {
        ReleaseDir {
            name: name.into(),
            marker: commit.map(|c| Marker {
                release: name.into(),
                commit: c.into(),
                tag: None,
                built_at: jiff::Timestamp::UNIX_EPOCH,
            }),
            made: false,
        }
    }

    fn foreign(name: &str) -> ReleaseDir {
        dir(name, None)
    }

    fn unfinished(name: &str) -> ReleaseDir {
        ReleaseDir {
            made: true,
            ..dir(name, None)
        }
    }

    const C1: &str = "1111111111111111111111111111111111111111";

    #[test]
    fn ab_never_builds_in_buedafabs_live_slot() {
        let state = HostState {
            exists: true,
            legacy_current: Some("a".into()),
            releases: vec![foreign("a"), foreign("b")],
            ..HostState::default()
        };
        assert_eq!(AbSlots.place(&state, C1, "x").release(), "b");
    }

    #[test]
    fn ab_builds_in_the_other_slot_and_reuses_built_commits() {
        let state = HostState {
            exists: true,
            current: Some("a".into()),
            releases: vec![dir("a", Some("c1")), dir("b", Some("c0"))],
            ..HostState::default()
        };
        assert_eq!(
            AbSlots.place(&state, "c2", "x"),
            Placement::Build {
                release: "b".into(),
                in_place: true
            }
        );
        assert_eq!(
            AbSlots.place(&state, "c0", "x"),
            Placement::Reuse {
                release: "b".into()
            }
        );
        assert_eq!(
            AbSlots.place(&HostState::default(), "c0", "x"),
            Placement::Build {
                release: "a".into(),
                in_place: true
            }
        );
    }

    #[test]
    fn timestamped_reuses_or_builds_fresh() {
        let state = HostState {
            exists: true,
            current: Some("20240102000000".into()),
            releases: vec![
                dir("20240101000000", Some("c1")),
                dir("20240102000000", Some("c2")),
            ],
            ..HostState::default()
        };
        let t = Timestamped { keep: 3 };
        assert_eq!(
            t.place(&state, "c1", "20240103000000"),
            Placement::Reuse {
                release: "20240101000000".into()
            }
        );
        assert_eq!(
            t.place(&state, "c3", "20240103000000").release(),
            "20240103000000"
        );
    }

    #[test]
    fn a_name_that_is_not_a_time_is_never_reused() {
        let now: jiff::Timestamp = "2024-05-06T07:08:09Z".parse().unwrap();
        let mut names = vec!["99999999999999".to_owned()];
        for _ in 0..3 {
            let n = Timestamped::fresh_name(now, names.iter().map(String::as_str));
            assert!(!names.contains(&n), "{n} reused");
            assert!(parse_name(&n).is_some(), "{n} is a time");
            names.push(n);
        }
        // Nothing comes after the last second of year 9999: still a new name.
        let last = "99991231235959";
        let n = Timestamped::fresh_name(now, [last, "20240506070809"]);
        assert!(n != last && n != "20240506070809", "{n}");
    }

    #[test]
    fn fresh_names_grow() {
        let now: jiff::Timestamp = "2024-05-06T07:08:09Z".parse().unwrap();
        assert_eq!(Timestamped::fresh_name(now, []), "20240506070809");
        assert_eq!(
            Timestamped::fresh_name(now, ["20240506070809"]),
            "20240506070810"
        );
        assert_eq!(
            Timestamped::fresh_name(now, ["20240506070859", "a"]),
            "20240506070900"
        );
    }

    #[test]
    fn cleanup_keeps_newest_and_protected() {
        let rs = vec![
            dir("20240101000000", Some("1")),
            dir("20240102000000", Some("2")),
            unfinished("20240103000000"),
            dir("20240104000000", Some("4")),
            dir("20240105000000", Some("5")),
            dir("notours", None),
        ];
        assert_eq!(
            cleanup_plan(&rs, "20240105000000", Some("20240101000000"), 3),
            vec!["20240102000000", "20240103000000"]
        );
    }

    /// Capistrano's releases (no marker, no record) are never removed and
    /// never count towards `keep`.
    #[test]
    fn cleanup_leaves_releases_ektool_did_not_make() {
        let rs = vec![
            foreign("20200101000000"),
            foreign("20200102000000"),
            dir("20240104000000", Some("4")),
            dir("20240105000000", Some("5")),
            dir("20240106000000", Some("6")),
        ];
        assert_eq!(
            cleanup_plan(&rs, "20240106000000", Some("20240105000000"), 2),
            vec!["20240104000000"]
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn name(n: u32) -> String {
            format!("2024{:010}", n)
        }

        proptest! {
            #[test]
            fn cleanup_never_removes_current_or_previous_and_keeps_the_newest(
                dirs in proptest::collection::btree_map(0u32..500, any::<bool>(), 1..40),
                foreign in any::<bool>(),
                keep in 2usize..8,
                cur in any::<Index>(),
                prev in any::<Option<Index>>(),
            ) {
                let mut releases: Vec<ReleaseDir> = dirs
                    .iter()
                    .map(|(n, complete)| ReleaseDir { made: true, ..dir(&name(*n), complete.then_some("c")) })
                    .collect();
                if foreign {
                    releases.push(dir("shared-cache", None));
                }
                let names: Vec<String> = dirs.keys().map(|n| name(*n)).collect();
                let current = names[cur.index(names.len())].clone();
                let previous = prev.map(|p| names[p.index(names.len())].clone());
                let removed = cleanup_plan(&releases, &current, previous.as_deref(), keep);

                prop_assert!(!removed.contains(&current));
                if let Some(p) = &previous {
                    prop_assert!(!removed.contains(p));
                }
                prop_assert!(!removed.iter().any(|r| r == "shared-cache"));
                prop_assert!(removed.iter().all(|r| names.contains(r)));
                let complete: Vec<&String> = releases
                    .iter()
                    .filter(|r| r.is_complete() && names.contains(&r.name))
                    .map(|r| &r.name)
                    .collect();
                let kept: Vec<&&String> = complete.iter().filter(|n| !removed.contains(n)).collect();
                prop_assert!(kept.len() >= keep.min(complete.len()));
                // Unfinished ones go, unless protected.
                for r in releases.iter().filter(|r| !r.is_complete() && names.contains(&r.name)) {
                    let protected = r.name == current || Some(&r.name) == previous.as_ref();
                    prop_assert_eq!(removed.contains(&r.name), !protected);
                }
                // Complete releases removed are older than every unprotected one kept.
                let protected = |n: &str| n == current || Some(n) == previous.as_deref();
                for gone in removed.iter().filter(|r| complete.contains(r)) {
                    for k in kept.iter().filter(|k| !protected(k.as_str())) {
                        prop_assert!(gone < **k, "{} removed but {} kept", gone, k);
                    }
                }
            }
        }
    }
}
