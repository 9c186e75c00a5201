//! Choosing the retention policy: command line > volume alias > config
//! default > built-in default (the seed had this backwards).

use std::collections::HashMap;

use snapkit::retention::{ArchiveAfter, Gfs, GfsDuration, Policies, PolicyError, PolicySpec};

use crate::config::{Config, PoliciesError};
use crate::error::CliError;

/// Policy flags shared by `plan` and `trim`; the `--keep-*` names are
/// restic's, and any of them implies `--policy gfs`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Policy: logarithmic, gfs, oneday_rolling, twoday_rolling,
    /// oneweek_rolling, max-age:DURATION. Default: the config's
    /// `retention.policy`, per volume alias its `strategy`.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Keep the N newest snapshots (-1: unlimited, 0: off; below -1 is refused).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep_last: Option<i64>,
    /// Keep the newest snapshot of each of the last N hours (-1: unlimited, 0: off; below -1 is refused).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep_hourly: Option<i64>,
    /// Keep the newest snapshot of each of the last N days (-1: unlimited, 0: off; below -1 is refused).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep_daily: Option<i64>,
    /// Keep the newest snapshot of each of the last N ISO weeks (-1: unlimited, 0: off; below -1 is refused).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep_weekly: Option<i64>,
    /// Keep the newest snapshot of each of the last N months (-1: unlimited, 0: off; below -1 is refused).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep_monthly: Option<i64>,
    /// Keep the newest snapshot of each of the last N years (-1: unlimited, 0: off; below -1 is refused).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub keep_yearly: Option<i64>,
    /// Keep everything within this long of the newest snapshot (restic's
    /// units: `1y6m3d`, `36h`, where `m` is months; at most 1000 years).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<GfsDuration>,
    /// Time zone for gfs calendar periods (IANA name; default UTC).
    #[arg(long, value_name = "TZ")]
    pub time_zone: Option<String>,
    /// Keep at least N completed snapshots per lineage, 1 to 1000
    /// (default: config, 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub min_keep: Option<u16>,
    /// Move kept snapshots older than this to the archive tier (`90d`;
    /// never the newest of a lineage nor an AMI's), or `never`; for every
    /// lineage. Default: the config's `retention.archive_after`, per
    /// volume alias its own.
    #[arg(long, value_name = "DURATION|never", value_parser = archive_after)]
    pub archive_after: Option<ArchiveFlag>,
}

/// `--archive-after`: a duration or `never`.
#[derive(Debug, Clone)]
pub(crate) struct ArchiveFlag(Option<ArchiveAfter>);

fn archive_after(s: &str) -> Result<ArchiveFlag, String> {
    if s.trim() == "never" {
        return Ok(ArchiveFlag(None));
    }
    s.parse()
        .map(|a| ArchiveFlag(Some(a)))
        .map_err(|e: PolicyError| e.to_string())
}

impl PolicyArgs {
    fn gfs_flags(&self) -> Gfs {
        Gfs {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            time_zone: self.time_zone.clone(),
        }
    }

    /// Resolves the policies, command line first.
    pub(crate) fn resolve(&self, config: &Config) -> Result<Policies, CliError> {
        self.resolve_in(config, false)
    }

    /// [`PolicyArgs::resolve`]; in the vault account (`vault`), over
    /// `[vault.retention]` (else `[retention]`) and without the volume
    /// aliases' own policies (they name one account's volumes).
    pub(crate) fn resolve_in(&self, config: &Config, vault: bool) -> Result<Policies, CliError> {
        let r = if vault {
            config.vault_retention()
        } else {
            &config.retention
        };
        let flags = self.gfs_flags();
        let has_keep = !flags.is_empty();
        if let Some(tz) = &self.time_zone {
            jiff::tz::TimeZone::get(tz)
                .map_err(|e| CliError::Usage(format!("unknown time zone {tz:?}: {e}")))?;
        }
        let mut gfs = if has_keep { flags } else { r.gfs.clone() };
        if gfs.time_zone.is_none() {
            gfs.time_zone = self.time_zone.clone();
        }
        let usage = |e: PolicyError| CliError::Usage(with_flags(&e));
        let cli_policy = match (&self.policy, has_keep) {
            (Some(p), true) if p != "gfs" => {
                return Err(CliError::Usage(format!(
                    "--keep-* flags select the gfs policy; they do not go with --policy {p}"
                )));
            }
            (_, true) => Some(PolicySpec::from_name("gfs", &r.logarithmic, &gfs).map_err(usage)?),
            (Some(p), false) => {
                Some(PolicySpec::from_name(p, &r.logarithmic, &gfs).map_err(usage)?)
            }
            (None, false) => None,
        };
        let min_keep = self.min_keep.map_or(r.min_keep, usize::from).max(1);
        let policies = match cli_policy {
            // An explicit policy applies to every lineage.
            Some(default) => {
                let (archive_after, per_lineage_archive_after) = if vault {
                    // Checked when the file was read.
                    let a = r.archive_after.as_deref().filter(|s| *s != "never");
                    (a.and_then(|s| s.parse().ok()), HashMap::new())
                } else {
                    config.archive_after()
                };
                Policies {
                    per_lineage: HashMap::new(),
                    archive_after,
                    per_lineage_archive_after,
                    ..Policies::new(default)
                }
            }
            None => if vault {
                config.vault_policies()
            } else {
                config.policies()
            }
            .map_err(|e| match e {
                PoliciesError::Alias { alias, source } => {
                    CliError::Usage(format!("volume alias {alias}: {}", with_flags(&source)))
                }
                PoliciesError::Default(e) if vault => {
                    CliError::Usage(format!("config vault.retention.policy: {}", with_flags(&e)))
                }
                PoliciesError::Default(e) => {
                    CliError::Usage(format!("config retention.policy: {}", with_flags(&e)))
                }
                e => CliError::Usage(e.to_string()),
            })?,
        };
        let policies = match &self.archive_after {
            // An explicit archive_after applies to every lineage.
            Some(ArchiveFlag(a)) => Policies {
                archive_after: a.clone(),
                per_lineage_archive_after: HashMap::new(),
                ..policies
            },
            None => policies,
        };
        Ok(Policies {
            min_keep,
            ..policies
        })
    }
}

/// A policy error, with the flags and config keys that set what it lacks.
fn with_flags(e: &PolicyError) -> String {
    match e {
        PolicyError::EmptyGfs => format!(
            "{e}: --keep-last, --keep-daily, ..., --keep-within (or keep_* in [retention.gfs])"
        ),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use snapkit::retention::{MaxAge, PolicySpec};

    use super::*;

    fn config() -> Config {
        Config::parse(
            "[retention]\npolicy = \"twoday_rolling\"\n[volumes.db]\nvolume_id = \"vol-0123abcd\"\nstrategy = \"oneweek_rolling\"\n",
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn command_line_wins_over_alias_and_config() {
        let p = PolicyArgs {
            policy: Some("oneday_rolling".into()),
            ..Default::default()
        }
        .resolve(&config())
        .unwrap();
        assert_eq!(p.default, PolicySpec::MaxAge(MaxAge::ONEDAY_ROLLING));
        assert!(
            p.per_lineage.is_empty(),
            "an explicit policy applies to every lineage"
        );
    }

    #[test]
    fn alias_wins_over_config_default() {
        let p = PolicyArgs::default().resolve(&config()).unwrap();
        assert_eq!(p.default, PolicySpec::MaxAge(MaxAge::TWODAY_ROLLING));
        assert_eq!(
            p.per_lineage["vol-0123abcd"],
            PolicySpec::MaxAge(MaxAge::ONEWEEK_ROLLING)
        );
    }

    #[test]
    fn archive_after_comes_from_the_flag_else_the_config_and_aliases() {
        let c = Config::parse(
            "[retention]\narchive_after = \"90d\"\n\
             [retention.prices.\"eu-west-1\"]\nstandard_gb_month = 0.06\narchive_gb_month = 0.015\n\
             [volumes.db]\nvolume_id = \"vol-0123abcd\"\narchive_after = \"never\"\n\
             [volumes.logs]\nvolume_id = \"vol-0456abcd\"\narchive_after = \"30d\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let days = |d: i64| jiff::SignedDuration::from_hours(24 * d);
        let p = PolicyArgs::default().resolve(&c).unwrap();
        assert_eq!(p.archive_after.as_ref().map(|a| a.age), Some(days(90)));
        assert_eq!(p.per_lineage_archive_after["vol-0123abcd"], None);
        assert_eq!(
            p.per_lineage_archive_after["vol-0456abcd"]
                .as_ref()
                .map(|a| a.age),
            Some(days(30))
        );
        // An explicit policy keeps the archive settings.
        let p = PolicyArgs {
            policy: Some("oneday_rolling".into()),
            ..Default::default()
        }
        .resolve(&c)
        .unwrap();
        assert_eq!(p.archive_after.as_ref().map(|a| a.age), Some(days(90)));
        assert_eq!(p.per_lineage_archive_after.len(), 2);
        // The flag wins for every lineage.
        let p = PolicyArgs {
            archive_after: Some(archive_after("never").unwrap()),
            ..Default::default()
        }
        .resolve(&c)
        .unwrap();
        assert_eq!(p.archive_after, None);
        assert!(p.per_lineage_archive_after.is_empty());
        assert!(archive_after("soon").is_err());
        // Prices: the table's, us-east-1's defaults, none elsewhere.
        let r = &c.retention;
        assert_eq!(r.tier_prices("eu-west-1").unwrap().standard_gb_month, 0.06);
        assert_eq!(
            r.tier_prices("us-east-1"),
            Some(snapkit::retention::TierPrices::US_EAST_1)
        );
        assert_eq!(r.tier_prices("ap-south-1"), None);
        // A bad value is an error where it is written.
        let e = Config::parse(
            "[retention]\narchive_after = \"soon\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("archive_after"), "{e}");
    }

    #[test]
    fn built_in_default_is_logarithmic_and_keep_flags_imply_gfs() {
        let empty = Config::parse("", Path::new("t.toml")).unwrap();
        assert!(matches!(
            PolicyArgs::default().resolve(&empty).unwrap().default,
            PolicySpec::Logarithmic(_)
        ));
        let p = PolicyArgs {
            keep_daily: Some(7),
            ..Default::default()
        }
        .resolve(&config())
        .unwrap();
        assert!(matches!(p.default, PolicySpec::Gfs(ref g) if g.keep_daily == Some(7)));
        assert!(
            PolicyArgs {
                time_zone: Some("Mars/Olympus".into()),
                keep_daily: Some(1),
                ..Default::default()
            }
            .resolve(&config())
            .is_err()
        );
    }
}
