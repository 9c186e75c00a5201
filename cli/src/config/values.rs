//! From the file's sections to the libraries' values: the one place the
//! settings of `ektool.toml` become an EC2 client's options, regions, SSH
//! options and a [`Connect`], consistency holds and retention policies —
//! so the CLI and a team's fabfile build them the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ec2kit::{AwsEc2, AwsEc2Options, Region, Remote, SshOptions, SshRemote, SshTarget, fleet};
use snapkit::backup::{BackupOptions, InstanceHold, VolumeBackup, VolumeHold};
use snapkit::connect::Connect;
use snapkit::consistency::Consistency;
use snapkit::retention::{ArchiveAfter, Policies, PolicyError, PolicySpec};

use super::{
    AwsConfig, Config, ConsistencyConfig, Defaults, RetentionConfig, SshConfig, VaultConfig,
    VolumeAlias,
};

/// The vault's copy role when `[vault] role` names none (`{account}` is
/// the vault).
pub const DEFAULT_VAULT_COPY_ROLE: &str = "arn:aws:iam::{account}:role/ektool-vault-copy";

/// The placeholder of a copy role that the source account's id replaces:
/// one copy role per source account.
pub const SOURCE_PLACEHOLDER: &str = "{source}";

/// The copy role `template` of `source` into `vault`: `{source}` and
/// `{account}` (the vault) replaced.
pub fn copy_role_of(
    template: &str,
    vault: &ec2kit::AccountId,
    source: &ec2kit::AccountId,
) -> String {
    template
        .replace(SOURCE_PLACEHOLDER, source.as_str())
        .replace(ec2kit::accounts::ACCOUNT_PLACEHOLDER, vault.as_str())
}

/// The regions a job works in could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionsError {
    /// A name matches no region, or several; or no region was named
    /// anywhere.
    #[error(transparent)]
    Names(#[from] ec2kit::RegionError),
    /// `DescribeRegions`, which names resolve against, failed.
    #[error(transparent)]
    Catalog(#[from] ec2kit::Ec2Error),
}

/// A retention policy of the config that cannot be built (e.g. `gfs`
/// without any `keep_*` rule in `[retention.gfs]`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoliciesError {
    /// `[retention] policy`.
    #[error("config retention.policy: {0}")]
    Default(#[source] PolicyError),
    /// A volume alias's `strategy`.
    #[error("volume alias {alias}: {source}")]
    Alias {
        /// The alias (`[volumes.<alias>]`).
        alias: String,
        /// Why its strategy is not a policy.
        #[source]
        source: PolicyError,
    },
}

impl Config {
    /// An EC2 client with the `[aws]` settings (see [`AwsConfig::options`]).
    pub async fn ec2(&self) -> AwsEc2 {
        AwsEc2::new(self.aws.options()).await
    }

    /// The `[defaults] regions` (or, when it names none, the SDK's
    /// configured region), resolved with one `DescribeRegions` call: an
    /// exact name, a unique prefix (`eu-west`), or `all`.
    pub async fn regions(&self, ec2: &AwsEc2) -> Result<Vec<Region>, RegionsError> {
        self.regions_or(ec2, &[]).await
    }

    /// [`Config::regions`], with `names` (a command line's `--region`)
    /// taking the config's place when not empty.
    pub async fn regions_or(
        &self,
        ec2: &AwsEc2,
        names: &[String],
    ) -> Result<Vec<Region>, RegionsError> {
        let mut wanted = if names.is_empty() {
            self.defaults.regions.clone()
        } else {
            names.to_vec()
        };
        if wanted.is_empty() {
            match ec2.configured_region() {
                Some(r) => wanted.push(r.to_string()),
                None => return Err(ec2kit::RegionError::NoneGiven.into()),
            }
        }
        let catalog = fleet::region_catalog(ec2).await?;
        Ok(catalog.resolve_all(&wanted)?)
    }

    /// Hosts over SSH with the `[ssh]` user and options (see
    /// [`SshConfig::connect`]).
    pub fn connect(&self) -> Connect {
        self.ssh.connect()
    }

    /// The backup job's options with the config's retention policy name
    /// (the `Policy` tag of new snapshots); everything else the library's
    /// default.
    pub fn backup_options(&self) -> BackupOptions {
        BackupOptions {
            policy: self.retention.policy.clone(),
            ..BackupOptions::default()
        }
    }

    /// The hold of instances backed up by tag, when `[consistency]` names
    /// mountpoints or a database lock; `None` when it names neither.
    pub fn instance_hold(&self) -> Option<InstanceHold> {
        let c = &self.consistency;
        (!c.mountpoints.is_empty() || c.db_lock.is_some()).then(|| c.instance_hold())
    }

    /// Every volume alias as a backup item (see [`VolumeAlias::backup`]);
    /// `home` is the region of aliases that name none.
    pub fn volume_backups(&self, home: &Region) -> Vec<VolumeBackup> {
        self.volumes
            .values()
            .map(|v| v.backup(home, &self.consistency))
            .collect()
    }

    /// The retention policies: `[retention] policy` for every lineage,
    /// each volume alias's `strategy` for its volume, and `min_keep`.
    pub fn policies(&self) -> Result<Policies, PoliciesError> {
        let r = &self.retention;
        let mut per_lineage = HashMap::new();
        for (alias, v) in &self.volumes {
            if let Some(strategy) = &v.strategy {
                let spec = r.spec(strategy).map_err(|source| PoliciesError::Alias {
                    alias: alias.clone(),
                    source,
                })?;
                per_lineage.insert(v.volume_id.to_string(), spec);
            }
        }
        let (archive_after, per_lineage_archive_after) = self.archive_after();
        Ok(Policies {
            default: r.spec(&r.policy).map_err(PoliciesError::Default)?,
            per_lineage,
            min_keep: r.min_keep.max(1),
            archive_after,
            per_lineage_archive_after,
        })
    }

    /// The vault account's retention (`snap trim --account VAULT`):
    /// `[vault.retention]`, else `[retention]`.
    pub fn vault_retention(&self) -> &RetentionConfig {
        self.vault
            .as_ref()
            .and_then(|v| v.retention.as_ref())
            .unwrap_or(&self.retention)
    }

    /// The vault's retention policies: [`Config::vault_retention`]'s
    /// policy and `archive_after` for every lineage. Volume aliases name
    /// one account's volumes, and a vault's lineages are `ACCOUNT/KEY`
    /// (see `snapkit::lineage`): their strategies do not apply there.
    pub fn vault_policies(&self) -> Result<Policies, PoliciesError> {
        let r = self.vault_retention();
        Ok(Policies {
            default: r.spec(&r.policy).map_err(PoliciesError::Default)?,
            per_lineage: HashMap::new(),
            min_keep: r.min_keep.max(1),
            archive_after: parse_archive_after(&r.archive_after),
            per_lineage_archive_after: HashMap::new(),
        })
    }

    /// `[retention] archive_after`, and each volume alias's own (by volume
    /// id; `never` is `None`).
    pub fn archive_after(&self) -> (Option<ArchiveAfter>, HashMap<String, Option<ArchiveAfter>>) {
        let archive = parse_archive_after;
        let per_lineage = self
            .volumes
            .values()
            .filter(|v| v.archive_after.is_some())
            .map(|v| (v.volume_id.to_string(), archive(&v.archive_after)))
            .collect();
        (archive(&self.retention.archive_after), per_lineage)
    }
}

/// An `archive_after` of the file (checked when it was read; `never`
/// and absent are `None`).
fn parse_archive_after(s: &Option<String>) -> Option<ArchiveAfter> {
    s.as_deref()
        .filter(|s| *s != "never")
        .and_then(|s| s.parse().ok())
}

impl Defaults {
    /// The `regions` as written, without a call: no prefix resolved, no
    /// check that a region exists or is enabled (see [`Config::regions`]
    /// for both).
    pub fn regions(&self) -> Vec<Region> {
        self.regions.iter().map(Region::new).collect()
    }
}

impl AwsConfig {
    /// The EC2 client's options: profile, endpoint, rate limits (see
    /// [`AwsConfig::rate_limits`]) and attempts; the rest the SDK's
    /// defaults (the home region from the environment or profile).
    pub fn options(&self) -> AwsEc2Options {
        AwsEc2Options {
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            rate_limits: Some(self.rate_limits()),
            max_attempts: self.max_attempts,
            ..AwsEc2Options::default()
        }
    }
}

impl SshConfig {
    /// SSH options: `known_hosts`, `identity_files` and `use_agent` over
    /// the `~/.ssh` defaults, a leading `~/` expanded.
    pub fn options(&self) -> SshOptions {
        let mut options = SshOptions::from_home();
        if let Some(k) = &self.known_hosts {
            options.known_hosts = super::expand_home(k);
        }
        if !self.identity_files.is_empty() {
            options.identity_files = self
                .identity_files
                .iter()
                .map(|p| super::expand_home(p))
                .collect();
        }
        if let Some(agent) = self.use_agent {
            options.use_agent = agent;
        }
        options
    }

    /// The login user for targets that name none: `user`, else `$USER`,
    /// else `root`.
    pub fn user(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".to_owned())
    }

    /// Hosts over SSH with this section's user and options.
    pub fn connect(&self) -> Connect {
        ssh_connect(self.user(), self.options())
    }
}

/// Hosts over SSH: each address (`[user@]host[:port]`, `user` when it names
/// none) becomes an [`SshRemote`] with `options`. For callers whose flags
/// change the options [`SshConfig::options`] gives.
pub fn ssh_connect(user: String, options: SshOptions) -> Connect {
    Arc::new(move |host: &str| {
        let target = SshTarget::parse_with_user(host, &user)?;
        Ok(Arc::new(SshRemote::new(target, options.clone())) as Arc<dyn Remote>)
    })
}

impl ConsistencyConfig {
    /// How to hold `mountpoints` (and the `db_lock`, or its defaults, when
    /// `lock_db`) around a snapshot call: the section's freeze and thaw
    /// commands and `max_hold_seconds`.
    pub fn consistency(&self, mountpoints: Vec<String>, lock_db: bool) -> Consistency {
        Consistency {
            mountpoints,
            freeze: self.freeze.clone(),
            thaw: self.thaw.clone(),
            db_lock: lock_db.then(|| self.db_lock.clone().unwrap_or_default()),
            max_hold: Duration::from_secs(self.max_hold_seconds.max(1)),
            ..Consistency::default()
        }
    }

    /// The hold of instances backed up by tag: the section's mountpoints,
    /// its `db_lock` if set, reached at its `address`.
    pub fn instance_hold(&self) -> InstanceHold {
        InstanceHold {
            consistency: self.consistency(self.mountpoints.clone(), self.db_lock.is_some()),
            address: self.address,
        }
    }
}

impl RetentionConfig {
    /// The policy named `name` (`logarithmic`, `gfs`, `max-age:36h`, …)
    /// with this section's `logarithmic` counts and `gfs` rules.
    pub fn spec(&self, name: &str) -> Result<PolicySpec, PolicyError> {
        PolicySpec::from_name(name, &self.logarithmic, &self.gfs)
    }

    /// `max_delete`, else the default limit of a trim plan's deletions.
    pub fn max_delete(&self) -> u64 {
        self.max_delete.unwrap_or(DEFAULT_MAX_DELETE)
    }
}

/// The most deletions a trim plan may hold when `[retention] max_delete`
/// does not say (a policy gone wrong stops there).
pub const DEFAULT_MAX_DELETE: u64 = 1000;

impl VolumeAlias {
    /// The region of the volume: the alias's `region`, else `home`.
    pub fn region_or(&self, home: &Region) -> Region {
        self.region
            .as_ref()
            .map_or_else(|| home.clone(), Region::new)
    }

    /// The hold on the alias's `host` (its `mountpoint` frozen, the
    /// database locked when `lock_db`); `None` without a `host`.
    pub fn hold(&self, consistency: &ConsistencyConfig) -> Option<VolumeHold> {
        let host = self.host.clone()?;
        Some(VolumeHold {
            host,
            consistency: consistency
                .consistency(self.mountpoint.iter().cloned().collect(), self.lock_db),
        })
    }

    /// The alias as a backup item: its volume in its region (else `home`),
    /// held on its `host` when it names one.
    pub fn backup(&self, home: &Region, consistency: &ConsistencyConfig) -> VolumeBackup {
        VolumeBackup {
            region: self.region_or(home),
            volume: self.volume_id.clone(),
            hold: self.hold(consistency),
        }
    }
}

impl VaultConfig {
    /// The copy role template: `role`, else [`DEFAULT_VAULT_COPY_ROLE`].
    pub fn copy_role_template(&self) -> &str {
        self.role.as_deref().unwrap_or(DEFAULT_VAULT_COPY_ROLE)
    }

    /// The role `snap replicate --to-account` copies with for the source
    /// account `source` (and a source account's `snap check` reads the
    /// vault with); `snap trim` never runs as it.
    pub fn copy_role(&self, source: &ec2kit::AccountId) -> String {
        copy_role_of(self.copy_role_template(), &self.account, source)
    }

    /// Whether `arn` is the copy role of any source account.
    pub fn is_copy_role(&self, arn: &str) -> bool {
        let template = self
            .copy_role_template()
            .replace(ec2kit::accounts::ACCOUNT_PLACEHOLDER, self.account.as_str());
        match template.split_once(SOURCE_PLACEHOLDER) {
            None => arn == template,
            Some((before, after)) => arn
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(after))
                .is_some_and(|id| id.parse::<ec2kit::AccountId>().is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use snapkit::retention::MaxAge;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("ektool.toml")).unwrap()
    }

    #[test]
    fn aws_options_carry_the_section() {
        let regions = parse("[defaults]\nregions = [\"eu-west\", \"us-east-1\"]\n")
            .defaults
            .regions();
        assert_eq!(regions, [Region::new("eu-west"), Region::new("us-east-1")]);
        let c = parse(
            "[aws]\nprofile = \"ops\"\nendpoint_url = \"http://127.0.0.1:5000\"\nmax_attempts = 3\nrate_limit = false\n",
        );
        let o = c.aws.options();
        assert_eq!(o.profile.as_deref(), Some("ops"));
        assert_eq!(o.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(o.max_attempts, Some(3));
        assert!(!o.rate_limits.unwrap().is_enabled());
        assert!(o.home_region.is_none());
        assert!(parse("").aws.options().rate_limits.unwrap().is_enabled());
    }

    #[test]
    fn ssh_options_and_user_fall_back_to_home_and_environment() {
        let c = parse(
            "[ssh]\nuser = \"deploy\"\nknown_hosts = \"/etc/kh\"\nidentity_files = [\"/k/id\"]\nuse_agent = false\n",
        );
        let o = c.ssh.options();
        assert_eq!(o.known_hosts, Path::new("/etc/kh"));
        assert_eq!(o.identity_files, vec![Path::new("/k/id").to_owned()]);
        assert!(!o.use_agent);
        assert_eq!(c.ssh.user(), "deploy");
        let defaults = parse("").ssh.options();
        assert_eq!(defaults.known_hosts, SshOptions::from_home().known_hosts);
        assert_eq!(defaults.use_agent, SshOptions::from_home().use_agent);
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        assert_eq!(parse("").ssh.user(), user);
    }

    #[test]
    fn connect_refuses_a_bad_address_before_any_connection() {
        let connect = parse("[ssh]\nuser = \"deploy\"\n").connect();
        assert!(connect("bad host:notaport").is_err());
        // A good address gives a remote; nothing is reached until it runs.
        assert!(connect("127.0.0.1:1").is_ok());
    }

    #[test]
    fn consistency_uses_the_section_and_the_database_lock_only_when_asked() {
        let c = parse(
            "[consistency]\nmountpoints = [\"/data\"]\nfreeze = \"f {}\"\nthaw = \"t {}\"\nmax_hold_seconds = 5\n",
        );
        let k = c.consistency.consistency(vec!["/x".into()], false);
        assert_eq!(k.mountpoints, vec!["/x".to_owned()]);
        assert_eq!((k.freeze.as_str(), k.thaw.as_str()), ("f {}", "t {}"));
        assert_eq!(k.max_hold, Duration::from_secs(5));
        assert!(k.db_lock.is_none());
        assert!(c.consistency.consistency(vec![], true).db_lock.is_some());
        let hold = c.instance_hold().unwrap();
        assert_eq!(hold.consistency.mountpoints, vec!["/data".to_owned()]);
        assert_eq!(hold.address, ec2kit::Address::PrivateIp);
        assert!(parse("").instance_hold().is_none(), "nothing to hold");
    }

    #[test]
    fn volume_aliases_become_backup_items_in_their_region_held_on_their_host() {
        let c = parse(
            "[volumes.db]\nvolume_id = \"vol-0123abcd\"\nhost = \"admin@db:2222\"\nmountpoint = \"/var/lib/pg\"\nlock_db = true\n\n\
             [volumes.logs]\nvolume_id = \"vol-0456abcd\"\nregion = \"eu-west-1\"\n",
        );
        let items = c.volume_backups(&Region::new("us-east-1"));
        assert_eq!(items.len(), 2);
        let (db, logs) = (&items[0], &items[1]);
        assert_eq!(db.region.as_str(), "us-east-1");
        let hold = db.hold.as_ref().unwrap();
        assert_eq!(hold.host, "admin@db:2222");
        assert_eq!(hold.consistency.mountpoints, vec!["/var/lib/pg".to_owned()]);
        assert!(hold.consistency.db_lock.is_some());
        assert_eq!(logs.region.as_str(), "eu-west-1");
        assert_eq!(logs.volume.as_str(), "vol-0456abcd");
        assert!(logs.hold.is_none(), "no host, no hold");
    }

    #[test]
    fn policies_are_the_default_the_alias_strategies_and_min_keep() {
        let c = parse(
            "[retention]\npolicy = \"twoday_rolling\"\nmin_keep = 3\nmax_delete = 50\n\
             [volumes.db]\nvolume_id = \"vol-0123abcd\"\nstrategy = \"oneweek_rolling\"\n",
        );
        let p = c.policies().unwrap();
        assert_eq!(p.default, PolicySpec::MaxAge(MaxAge::TWODAY_ROLLING));
        assert_eq!(
            p.per_lineage["vol-0123abcd"],
            PolicySpec::MaxAge(MaxAge::ONEWEEK_ROLLING)
        );
        assert_eq!(p.min_keep, 3);
        assert_eq!(c.retention.max_delete(), 50);
        assert_eq!(parse("").retention.max_delete(), DEFAULT_MAX_DELETE);
        assert_eq!(c.backup_options().policy, "twoday_rolling");
        let empty = parse("").policies().unwrap();
        assert!(matches!(empty.default, PolicySpec::Logarithmic(_)));
        assert_eq!(empty.min_keep, 1);
    }

    #[test]
    fn a_policy_that_cannot_be_built_names_its_key() {
        let e = parse("[retention]\npolicy = \"gfs\"\n")
            .policies()
            .unwrap_err();
        assert!(
            matches!(e, PoliciesError::Default(PolicyError::EmptyGfs)),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("config retention.policy: "),
            "{e}"
        );
        let e = parse("[volumes.db]\nvolume_id = \"vol-0123abcd\"\nstrategy = \"gfs\"\n")
            .policies()
            .unwrap_err();
        assert!(
            matches!(&e, PoliciesError::Alias { alias, .. } if alias == "db"),
            "{e}"
        );
    }
}
