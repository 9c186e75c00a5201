//! Choosing a policy by name (command line, config, volume alias).

use jiff::SignedDuration;

use super::{Gfs, GfsDuration, Logarithmic, MaxAge, RetentionPolicy};

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
        "the gfs policy needs at least one keep rule (--keep-last, --keep-daily, ..., --keep-within)"
    )]
    EmptyGfs,
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
                    return Err(PolicyError::Unknown {
                        name: other.to_owned(),
                    });
                }
            },
        })
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

fn parse_age(s: &str) -> Result<SignedDuration, PolicyError> {
    s.parse::<GfsDuration>()
        .ok()
        .and_then(|d| d.fixed())
        .ok_or_else(|| PolicyError::MaxAge(s.to_owned()))
}
