//! How a deploy switches its hosts: all at once (the default), a canary
//! first, and the rest in batches.
//!
//! Every host is prepared before any switches (the barrier stays). Then the
//! hosts switch in **waves**: the canary hosts, then batches of the rest;
//! each wave is switched, restarted and health-checked before the next
//! starts, and after the canary wave the deploy waits `canary_wait`. A
//! failure in any wave switches **every** host already switched back (all
//! waves), so the environment never stays mixed.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many hosts switch at once after the canary: a count or a share of
/// the environment's hosts (`batch = 2`, `batch = "25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// This many hosts (at least 1).
    Hosts(usize),
    /// This percentage of all hosts, rounded up (1 to 100).
    Percent(u8),
}

impl BatchSize {
    /// The hosts of a batch among `total` (at least 1).
    pub fn of(self, total: usize) -> usize {
        match self {
            Self::Hosts(n) => n.max(1),
            Self::Percent(p) => (total * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hosts(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A batch size that is neither a positive count nor a percentage from 1
/// to 100.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid batch size {0:?}: expected a number of hosts (2) or a percentage (\"25%\")")]
pub struct InvalidBatchSize(pub String);

impl std::str::FromStr for BatchSize {
    type Err = InvalidBatchSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidBatchSize(s.to_owned());
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Self::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.trim().parse::<usize>() {
                Ok(n @ 1..) => Ok(Self::Hosts(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl Serialize for BatchSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Hosts(n) => s.serialize_u64(*n as u64),
            Self::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of hosts (2) or a percentage (\"25%\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BatchSize, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BatchSize, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BatchSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The switching order of a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Rollout {
    /// Hosts switched first, alone (0: no canary).
    pub canary: usize,
    /// How long the canary runs the new release before the rest switch.
    pub canary_wait: Duration,
    /// The size of each later wave (`None`: the rest at once).
    pub batch: Option<BatchSize>,
}

impl Rollout {
    /// The waves among `hosts` hosts, in order: index ranges that cover
    /// every host exactly once (the canary first).
    pub fn waves(&self, hosts: usize) -> Vec<Range<usize>> {
        let mut waves = Vec::new();
        let canary = self.canary.min(hosts);
        if canary > 0 {
            waves.push(0..canary);
        }
        let size = self.batch.map_or(hosts, |b| b.of(hosts)).max(1);
        let mut start = canary;
        while start < hosts {
            let end = (start + size).min(hosts);
            waves.push(start..end);
            start = end;
        }
        waves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batch_sizes_parse_and_round_up() {
        assert_eq!("25%".parse(), Ok(BatchSize::Percent(25)));
        assert_eq!("3".parse(), Ok(BatchSize::Hosts(3)));
        for bad in ["0", "0%", "101%", "-1", "x", "", "2.5"] {
            assert!(bad.parse::<BatchSize>().is_err(), "{bad}");
        }
        assert_eq!(BatchSize::Percent(25).of(10), 3);
        assert_eq!(BatchSize::Percent(1).of(3), 1);
        let r = Rollout {
            canary: 1,
            canary_wait: Duration::ZERO,
            batch: Some(BatchSize::Percent(50)),
        };
        assert_eq!(r.waves(5), vec![0..1, 1..4, 4..5]);
        assert_eq!(Rollout::default().waves(4), vec![0..4]);
        assert!(Rollout::default().waves(0).is_empty());
    }

    proptest! {
        /// Waves cover every host once, in order; the canary comes first
        /// and alone; no later wave is bigger than the batch.
        #[test]
        fn waves_cover_every_host_once_in_order(
            hosts in 0usize..60,
            canary in 0usize..8,
            batch in prop_oneof![Just(None), (1usize..10).prop_map(|n| Some(BatchSize::Hosts(n))), (1u8..=100).prop_map(|p| Some(BatchSize::Percent(p)))],
        ) {
            let r = Rollout { canary, canary_wait: Duration::ZERO, batch };
            let waves = r.waves(hosts);
            let flat: Vec<usize> = waves.iter().flat_map(Clone::clone).collect();
            prop_assert_eq!(flat, (0..hosts).collect::<Vec<_>>());
            prop_assert!(waves.iter().all(|w| !w.is_empty()));
            if canary > 0 && hosts > 0 {
                prop_assert_eq!(waves[0].clone(), 0..canary.min(hosts));
            }
            let size = batch.map_or(hosts, |b| b.of(hosts));
            let skip = usize::from(canary > 0);
            prop_assert!(waves.iter().skip(skip).all(|w| w.len() <= size.max(1)));
        }
    }
}
