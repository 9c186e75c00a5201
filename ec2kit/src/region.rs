//! Regions and how a user's region names resolve.
//!
//! Users type `eu-north` or `ap-southeast-1`; the seed matched a regex
//! prefix and re-listed regions on every lookup. Here a [`RegionCatalog`] is
//! built from *one* `DescribeRegions` call and resolves names without
//! further calls: an exact name wins, a unique prefix expands, anything
//! else is an error that lists the candidates.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An AWS region name, e.g. `eu-west-1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Region(Arc<str>);

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(crate::ids::RecentArcStr(0)).map(Self)
    }
}

impl Region {
    /// A region from its name (not checked against the catalog).
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(name.as_ref().into())
    }

    /// The region's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Region {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One region as `DescribeRegions` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The region.
    pub name: Region,
    /// The regional EC2 endpoint host.
    pub endpoint: Option<String>,
    /// `opt-in-not-required`, `opted-in` or `not-opted-in`.
    pub opt_in_status: Option<String>,
}

impl RegionInfo {
    /// Whether the account can use the region.
    pub fn is_enabled(&self) -> bool {
        self.opt_in_status.as_deref() != Some("not-opted-in")
    }
}

/// A region name that did not resolve to exactly one region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// No region has this name or prefix.
    #[error("unknown region {input:?}; known regions: {}", candidates.join(", "))]
    Unknown {
        /// What the user typed.
        input: String,
        /// Every enabled region.
        candidates: Vec<String>,
    },
    /// Several regions start with this prefix.
    #[error("ambiguous region {input:?}: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// What the user typed.
        input: String,
        /// The regions it matches.
        candidates: Vec<String>,
    },
    /// No region names were given and there is no default.
    #[error("no region given: pass --region, set `regions` in the config, or set AWS_REGION")]
    NoneGiven,
}

/// The regions of an account, from one `DescribeRegions` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCatalog {
    regions: Vec<RegionInfo>,
}

impl RegionCatalog {
    /// A catalog of the given regions.
    pub fn new(mut regions: Vec<RegionInfo>) -> Self {
        regions.sort_by(|a, b| a.name.cmp(&b.name));
        regions.dedup_by(|a, b| a.name == b.name);
        Self { regions }
    }

    /// Every region the account can use.
    pub fn enabled(&self) -> impl Iterator<Item = &Region> {
        self.regions
            .iter()
            .filter(|r| r.is_enabled())
            .map(|r| &r.name)
    }

    /// Every region in the catalog.
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// Resolves one name: exact, then unique prefix. `all` is not accepted
    /// here; see [`RegionCatalog::resolve_all`].
    pub fn resolve(&self, input: &str) -> Result<Region, RegionError> {
        let input = input.trim();
        let enabled: Vec<&Region> = self.enabled().collect();
        if let Some(exact) = enabled.iter().find(|r| r.as_str() == input) {
            return Ok((*exact).clone());
        }
        let matches: Vec<&Region> = if input.is_empty() {
            Vec::new()
        } else {
            enabled
                .iter()
                .copied()
                .filter(|r| r.as_str().starts_with(input))
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RegionError::Unknown {
                input: input.to_owned(),
                candidates: enabled.iter().map(|r| r.to_string()).collect(),
            }),
            many => Err(RegionError::Ambiguous {
                input: input.to_owned(),
                candidates: many.iter().map(|r| r.to_string()).collect(),
            }),
        }
    }

    /// Resolves a list of names; `all` means every enabled region. The
    /// result is sorted and free of duplicates.
    pub fn resolve_all<S: AsRef<str>>(&self, inputs: &[S]) -> Result<Vec<Region>, RegionError> {
        if inputs.is_empty() {
            return Err(RegionError::NoneGiven);
        }
        let mut out = Vec::new();
        for input in inputs {
            let input = input.as_ref();
            if input.eq_ignore_ascii_case("all") {
                out.extend(self.enabled().cloned());
            } else {
                out.push(self.resolve(input)?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> RegionCatalog {
        let info = |n: &str, opt: &str| RegionInfo {
            name: Region::new(n),
            endpoint: None,
            opt_in_status: Some(opt.to_owned()),
        };
        RegionCatalog::new(vec![
            info("us-east-1", "opt-in-not-required"),
            info("us-east-2", "opt-in-not-required"),
            info("eu-north-1", "opt-in-not-required"),
            info("ap-southeast-1", "opt-in-not-required"),
            info("ap-southeast-2", "opt-in-not-required"),
            info("me-south-1", "not-opted-in"),
        ])
    }

    #[test]
    fn exact_name_wins_over_prefix() {
        assert_eq!(
            catalog().resolve("ap-southeast-1").unwrap().as_str(),
            "ap-southeast-1"
        );
    }

    #[test]
    fn unique_prefix_expands() {
        assert_eq!(
            catalog().resolve("eu-north").unwrap().as_str(),
            "eu-north-1"
        );
        assert_eq!(catalog().resolve("eu").unwrap().as_str(), "eu-north-1");
    }

    #[test]
    fn ambiguous_prefix_lists_matches() {
        let err = catalog().resolve("ap-s").unwrap_err();
        assert_eq!(
            err,
            RegionError::Ambiguous {
                input: "ap-s".into(),
                candidates: vec!["ap-southeast-1".into(), "ap-southeast-2".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            "ambiguous region \"ap-s\": it matches ap-southeast-1, ap-southeast-2"
        );
    }

    #[test]
    fn unknown_lists_enabled_regions_only() {
        let err = catalog().resolve("mars-1").unwrap_err();
        let RegionError::Unknown { candidates, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(candidates.len(), 5);
        assert!(!candidates.contains(&"me-south-1".to_owned()));
        // A regex metacharacter is just a character (the seed used re.match).
        assert!(catalog().resolve("us.east").is_err());
        assert!(catalog().resolve("").is_err());
    }

    #[test]
    fn not_opted_in_region_is_not_resolvable() {
        assert!(catalog().resolve("me-south-1").is_err());
    }

    #[test]
    fn all_expands_and_dedups() {
        let all = catalog().resolve_all(&["all", "eu-north"]).unwrap();
        assert_eq!(all.len(), 5);
        assert!(matches!(
            catalog().resolve_all::<&str>(&[]),
            Err(RegionError::NoneGiven)
        ));
    }
}
