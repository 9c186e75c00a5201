//! The configuration file (`ektool.toml`).
//!
//! Strict: unknown keys are errors, booleans are booleans (the seed read
//! `lock_db = False` as true), ids and tags are validated while reading,
//! and every error names the file, line and column.
//!
//! Each section also turns itself into the libraries' values
//! ([`Config::ec2`], [`Config::regions`], [`SshConfig::connect`],
//! [`ConsistencyConfig::consistency`], [`Config::volume_backups`],
//! [`Config::policies`], …): one implementation for the CLI and a
//! team's fabfile.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ec2kit::{Action, Bucket, RateLimits, Tag, VolumeId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod values;

pub use values::{
    DEFAULT_MAX_DELETE, DEFAULT_VAULT_COPY_ROLE, PoliciesError, RegionsError, SOURCE_PLACEHOLDER,
    copy_role_of, ssh_connect,
};

/// The whole file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What commands use when the command line does not say.
    #[serde(default)]
    pub defaults: Defaults,
    /// How to reach EC2.
    #[serde(default)]
    pub aws: AwsConfig,
    /// Many accounts, one run: `[accounts]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<AccountsConfig>,
    /// The vault account backups are copied into: `[vault]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultConfig>,
    /// How to reach hosts.
    #[serde(default)]
    pub ssh: SshConfig,
    /// Volume aliases (django-ec2tools style): alias → volume definition.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeAlias>,
    /// Retention defaults.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Consistent snapshots (`snap backup --consistent`).
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    /// Host-side settings of `snap mount`/`unmount`/`cleanup`.
    #[serde(default)]
    pub mount: MountConfig,
    /// Freshness thresholds of `snap check`.
    #[serde(default)]
    pub check: CheckConfig,
    /// Where jobs (and deploys of environments without their own
    /// `[environments.<name>.notify]`) are announced: `[notify]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyConfig>,
    /// Jobs `ektool run` runs: `[jobs.<name>]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, JobConfig>,
    /// Deploy environments: `[environments.<name>]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, deploykit::Environment>,
    /// Where the file was read from: the last (highest) layer; `None`
    /// means built-in defaults.
    #[serde(skip_deserializing)]
    pub path: Option<PathBuf>,
    /// Every file read, lowest layer first.
    #[serde(skip)]
    pub layers: Vec<PathBuf>,
}

/// `[defaults]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// The tag that marks instances to back up (the seed's `Earmarking=production`).
    #[serde(
        default = "default_tag",
        deserialize_with = "de_tag",
        serialize_with = "se_display"
    )]
    pub tag: Tag,
    /// Regions used when `--region` is not given.
    #[serde(default)]
    pub regions: Vec<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            tag: default_tag(),
            regions: Vec::new(),
        }
    }
}

fn default_tag() -> Tag {
    Tag::new("Earmarking", "production")
}

/// `[aws]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Named profile.
    #[serde(default, deserialize_with = "de_profile")]
    pub profile: Option<String>,
    /// Endpoint override (`http(s)://host[:port]`).
    #[serde(default, deserialize_with = "de_endpoint_url")]
    pub endpoint_url: Option<String>,
    /// Pace EC2 calls to AWS's token buckets (default true).
    pub rate_limit: Option<bool>,
    /// Per-action bucket overrides, e.g. `DeleteSnapshot = { burst = 100, per_second = 5 }`.
    #[serde(
        default,
        deserialize_with = "de_rate_limits",
        serialize_with = "se_rate_limits"
    )]
    pub rate_limits: Vec<(Action, Bucket)>,
    /// Attempts per request, including the first (1 to 20).
    #[serde(default, deserialize_with = "de_max_attempts")]
    pub max_attempts: Option<u32>,
}

fn de_profile<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let p = String::deserialize(d)?;
    if p.trim().is_empty() {
        return Err(serde::de::Error::custom("empty profile name"));
    }
    Ok(Some(p))
}

fn de_endpoint_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    ec2kit::aws::check_endpoint_url(&url).map_err(serde::de::Error::custom)?;
    Ok(Some(url))
}

fn de_max_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = i64::deserialize(d)?;
    let max = ec2kit::aws::MAX_ATTEMPTS_LIMIT;
    match u32::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "max_attempts must be from 1 to {max} (attempts per request, the first included), not {n}"
        ))),
    }
}

impl AwsConfig {
    /// The rate limits this section asks for.
    pub fn rate_limits(&self) -> RateLimits {
        if self.rate_limit == Some(false) {
            return RateLimits::disabled();
        }
        self.rate_limits
            .iter()
            .fold(RateLimits::aws(), |l, (a, b)| l.with(*a, *b))
    }
}

/// `[accounts]`: the accounts fleet commands fan out over, and the role
/// assumed in each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// Account ids (12 digits each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<ec2kit::AccountId>,
    /// A file of account ids (commas, spaces or lines; `#` comments),
    /// instead of `ids`; relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The role assumed in each account, `{account}` standing for its id
    /// (default `arn:aws:iam::{account}:role/ektool`).
    #[serde(default, deserialize_with = "de_role_template")]
    pub role: Option<String>,
    /// The external id the roles' trust policy asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// `[vault]`: a separate account holding copies of the backups, so they
/// survive the loss or compromise of the account they were taken in.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The vault account (`--to-account` overrides).
    pub account: ec2kit::AccountId,
    /// The role in the vault account that `snap replicate --to-account`
    /// assumes to copy (it can copy and tag, never delete; `--vault-role`
    /// overrides). Default: `arn:aws:iam::{account}:role/ektool-vault-copy`.
    /// `{source}` in it stands for the source account's id: one copy role
    /// per source account, each allowed to tag copies with its own account
    /// only (`ektool iam-policy vault-copy --source-account ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The vault region copies go to (`--to` overrides; default: the
    /// source region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The vault's KMS key (id, ARN or alias in the vault account) that
    /// copies are encrypted with (`--kms-key` overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// How old the newest vault copy of a lineage may be before `snap
    /// check` fails (default: the vault is not checked).
    #[serde(
        default,
        deserialize_with = "de_max_age",
        serialize_with = "se_max_age"
    )]
    pub max_age: Option<std::time::Duration>,
    /// The vault's own retention (`snap trim --account VAULT`); default:
    /// `[retention]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionConfig>,
}

fn de_role_template<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let role = String::deserialize(d)?;
    if !role.contains(ec2kit::accounts::ACCOUNT_PLACEHOLDER) {
        return Err(serde::de::Error::custom(
            ec2kit::accounts::AccountsError::InvalidTemplate(role),
        ));
    }
    Ok(Some(role))
}

/// `[ssh]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Login user when a target names none.
    pub user: Option<String>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Private keys to try before the agent.
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
    /// Try the ssh-agent's identities (default true).
    pub use_agent: Option<bool>,
}

/// `[retention]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// The default policy: `logarithmic`, `gfs`, `oneday_rolling`,
    /// `twoday_rolling`, `oneweek_rolling` or `max-age:DURATION`.
    #[serde(default = "default_policy", deserialize_with = "de_policy")]
    pub policy: String,
    /// Keep at least this many completed snapshots per lineage.
    #[serde(default = "one")]
    pub min_keep: usize,
    /// Counts of the logarithmic policy.
    #[serde(default)]
    pub logarithmic: snapkit::retention::Logarithmic,
    /// Rules of the gfs policy (restic's names, without `--`).
    #[serde(default)]
    pub gfs: snapkit::retention::Gfs,
    /// `snap trim` refuses a plan deleting more than this many snapshots
    /// (default 1000; `--max-delete` overrides).
    pub max_delete: Option<u64>,
    /// `snap trim` deletes without a terminal to ask on and without
    /// `--yes` (for cron jobs that want it).
    #[serde(default)]
    pub unattended_trim: bool,
    /// Kept snapshots older than this move to the archive tier (days
    /// and/or hours: `90d`); absent: never (`--archive-after` overrides,
    /// a volume alias's own `archive_after` wins for its volume).
    #[serde(
        default,
        deserialize_with = "de_archive_after",
        skip_serializing_if = "Option::is_none"
    )]
    pub archive_after: Option<String>,
    /// List prices of snapshot storage per region (`[retention.prices.
    /// "eu-west-1"]` with `standard_gb_month` and `archive_gb_month`, USD),
    /// for the cost line of plans that archive; us-east-1 has defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, snapkit::retention::TierPrices>,
}

impl RetentionConfig {
    /// The list prices of `region`: the `prices` table's, else the
    /// built-in us-east-1 ones there; elsewhere none.
    pub fn tier_prices(&self, region: &str) -> Option<snapkit::retention::TierPrices> {
        self.prices.get(region).copied().or_else(|| {
            (region == "us-east-1").then_some(snapkit::retention::TierPrices::US_EAST_1)
        })
    }
}

/// `archive_after`: a positive duration, or `never` (a volume alias
/// turning the default off).
fn de_archive_after<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() != "never" {
        s.parse::<snapkit::retention::ArchiveAfter>()
            .map_err(serde::de::Error::custom)?;
    }
    Ok(Some(s.trim().to_owned()))
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            min_keep: 1,
            logarithmic: Default::default(),
            gfs: Default::default(),
            max_delete: None,
            unattended_trim: false,
            archive_after: None,
            prices: BTreeMap::new(),
        }
    }
}

fn default_policy() -> String {
    "logarithmic".to_owned()
}

fn one() -> usize {
    1
}

/// `[consistency]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// Mountpoints to freeze on instances backed up by tag.
    #[serde(default)]
    pub mountpoints: Vec<String>,
    /// Freeze command; `{}` is the mountpoint.
    #[serde(default = "default_freeze")]
    pub freeze: String,
    /// Thaw command; `{}` is the mountpoint.
    #[serde(default = "default_thaw")]
    pub thaw: String,
    /// The host thaws and unlocks by itself after this long (1 to 86400).
    #[serde(default = "default_max_hold", deserialize_with = "de_max_hold")]
    pub max_hold_seconds: u64,
    /// Which address to reach instances at over SSH: `private_ip` (the
    /// default), `public_ip`, `public_dns` or `private_dns`; any other word
    /// is an error at its line and column.
    #[serde(default)]
    pub address: ec2kit::Address,
    /// The database lock for `lock_db` volumes and `db_lock = true`.
    pub db_lock: Option<snapkit::consistency::DbLock>,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            mountpoints: Vec::new(),
            freeze: default_freeze(),
            thaw: default_thaw(),
            max_hold_seconds: default_max_hold(),
            address: ec2kit::Address::default(),
            db_lock: None,
        }
    }
}

fn default_freeze() -> String {
    "fsfreeze -f {}".into()
}
fn default_thaw() -> String {
    "fsfreeze -u {}".into()
}
fn default_max_hold() -> u64 {
    60
}
fn de_max_hold<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if (1..=86_400).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_hold_seconds {n}: between 1 and 86400 (a day)"
        )))
    }
}

/// `[mount]`: where snapshot mounts go and the host-side commands.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// The mount root: every mountpoint lies under it (default
    /// `/mnt/ektool`, made `0700` on the host).
    #[serde(default = "default_mount_root")]
    pub root: String,
    /// Prints the local block device (see `ektool snap mount --help`).
    #[serde(default = "default_resolve")]
    pub resolve: String,
    /// Lists the device and its partitions.
    #[serde(default = "default_probe")]
    pub probe: String,
    /// Mounts a filesystem.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Unmounts a filesystem.
    #[serde(default = "default_unmount")]
    pub unmount: String,
}

impl Default for MountConfig {
    fn default() -> Self {
        let c = snapkit::mount::MountCommands::default();
        Self {
            root: default_mount_root(),
            resolve: c.resolve,
            probe: c.probe,
            mount: c.mount,
            unmount: c.unmount,
        }
    }
}

fn default_mount_root() -> String {
    snapkit::mount::DEFAULT_ROOT.to_owned()
}
fn default_resolve() -> String {
    snapkit::mount::MountCommands::default().resolve
}
fn default_probe() -> String {
    snapkit::mount::MountCommands::default().probe
}
fn default_mount() -> String {
    snapkit::mount::MountCommands::default().mount
}
fn default_unmount() -> String {
    snapkit::mount::MountCommands::default().unmount
}

/// `[check]`: freshness thresholds of `snap check` (durations as
/// `ec2kit::duration` reads them, 1m to 10 years; an invalid one is an
/// error at its line and column).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// The threshold of every lineage without a more specific one
    /// (default 26h; `--max-age` overrides this one only).
    #[serde(
        default,
        deserialize_with = "de_max_age",
        serialize_with = "se_max_age"
    )]
    pub max_age: Option<std::time::Duration>,
    /// How old the newest copy in the replication destination may be
    /// (`--replica-max-age` overrides).
    #[serde(
        default,
        deserialize_with = "de_max_age",
        serialize_with = "se_max_age"
    )]
    pub replica_max_age: Option<std::time::Duration>,
    /// The replication destination to check (`--to` overrides).
    pub replica_region: Option<String>,
    /// Every lineage must have passed a restore test (`snap verify`) this
    /// recently (`--max-unverified` overrides; default: not checked).
    #[serde(
        default,
        deserialize_with = "de_max_unverified",
        serialize_with = "se_max_age"
    )]
    pub max_unverified: Option<std::time::Duration>,
    /// Per instance tag (`"KEY=VALUE" = "DURATION"`): the volumes of
    /// instances carrying it; the smallest matching one wins.
    #[serde(
        default,
        deserialize_with = "de_tag_max_age",
        serialize_with = "se_tag_max_age"
    )]
    pub tags: Vec<(Tag, std::time::Duration)>,
}

/// The range of every freshness threshold.
fn max_age_of(s: &str) -> Result<std::time::Duration, String> {
    ec2kit::duration::parse_in(
        s,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(3653 * 86_400),
    )
    .map_err(|e| e.to_string())
}

fn de_max_age<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    max_age_of(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("max_age: {e}")))
}

fn de_max_unverified<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    max_age_of(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("max_unverified: {e}")))
}

fn se_max_age<S: Serializer>(v: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.collect_str(&ec2kit::duration::format(*d)),
        None => s.serialize_none(),
    }
}

/// A threshold read on its own, so an error names its line and column.
struct MaxAge(std::time::Duration);

impl<'de> Deserialize<'de> for MaxAge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        max_age_of(&s).map(Self).map_err(serde::de::Error::custom)
    }
}

/// A `KEY=VALUE` map key read on its own, for the same reason.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TagKey(String);

impl<'de> Deserialize<'de> for TagKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Tag>()
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))?;
        Ok(Self(s))
    }
}

fn de_tag_max_age<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(Tag, std::time::Duration)>, D::Error> {
    let map = BTreeMap::<TagKey, MaxAge>::deserialize(d)?;
    map.into_iter()
        .map(|(tag, age)| {
            let t: Tag = tag.0.parse().map_err(serde::de::Error::custom)?;
            Ok((t, age.0))
        })
        .collect()
}

fn se_tag_max_age<S: Serializer>(
    v: &[(Tag, std::time::Duration)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        v.iter()
            .map(|(t, d)| (t.to_string(), ec2kit::duration::format(*d))),
    )
}

/// A step of a job (`[jobs.<name>] steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Step {
    /// Back up the tagged instances and the volume aliases, and wait for
    /// the snapshots.
    Backup,
    /// Trim every region (and the replication destination) by the
    /// retention policy.
    Trim,
    /// Copy the newest set of each lineage to `[jobs.<name>.replicate] to`.
    Replicate,
    /// Check that the newest completed snapshot of every lineage is recent.
    Check,
}

impl Step {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Trim => "trim",
            Self::Replicate => "replicate",
            Self::Check => "check",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[jobs.<name>]`: the steps `ektool run <name>` runs, in order, and
/// their few options.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawJob")]
pub struct JobConfig {
    /// The steps, in order (each at most once).
    pub steps: Vec<Step>,
    /// Skip the remaining steps after one fails (default: run them all).
    pub stop_on_failure: bool,
    /// When a scheduler runs it: a systemd `OnCalendar` expression
    /// (default [`DEFAULT_SCHEDULE`]).
    pub schedule: Option<String>,
    /// `[jobs.<name>.backup]`.
    pub backup: BackupStepConfig,
    /// `[jobs.<name>.replicate]`.
    pub replicate: ReplicateStepConfig,
    /// `[jobs.<name>.check]`.
    pub check: CheckStepConfig,
}

/// The schedule of a job that names none: every night at 02:00.
pub const DEFAULT_SCHEDULE: &str = "*-*-* 02:00:00";

/// `[jobs.<name>.backup]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupStepConfig {
    /// How long to wait for the new snapshots to complete (default 2h).
    #[serde(
        default,
        deserialize_with = "de_max_age",
        serialize_with = "se_max_age"
    )]
    pub wait: Option<std::time::Duration>,
}

/// `[jobs.<name>.replicate]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateStepConfig {
    /// The destination region (required with the `replicate` step).
    pub to: Option<String>,
}

/// `[jobs.<name>.check]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckStepConfig {
    /// The threshold of lineages without their own (default: `[check]
    /// max_age`, then 26h).
    #[serde(
        default,
        deserialize_with = "de_max_age",
        serialize_with = "se_max_age"
    )]
    pub max_age: Option<std::time::Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    steps: Vec<Step>,
    #[serde(default)]
    stop_on_failure: bool,
    schedule: Option<String>,
    #[serde(default)]
    backup: BackupStepConfig,
    #[serde(default)]
    replicate: ReplicateStepConfig,
    #[serde(default)]
    check: CheckStepConfig,
}

impl TryFrom<RawJob> for JobConfig {
    type Error = String;

    fn try_from(r: RawJob) -> Result<Self, String> {
        if r.steps.is_empty() {
            return Err("a job needs at least one step in `steps`".into());
        }
        for (i, s) in r.steps.iter().enumerate() {
            if r.steps[..i].contains(s) {
                return Err(format!("step {s:?} is listed twice", s = s.as_str()));
            }
        }
        if r.steps.contains(&Step::Replicate) && r.replicate.to.is_none() {
            return Err(
                "the replicate step needs `[jobs.<name>.replicate] to = \"REGION\"`".into(),
            );
        }
        if let Some(s) = &r.schedule
            && (s.trim().is_empty() || s.contains(['\n', '\r']))
        {
            return Err("schedule: one line, a systemd OnCalendar expression".into());
        }
        Ok(Self {
            steps: r.steps,
            stop_on_failure: r.stop_on_failure,
            schedule: r.schedule,
            backup: r.backup,
            replicate: r.replicate,
            check: r.check,
        })
    }
}

/// One `[volumes.<alias>]` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeAlias {
    /// The volume.
    #[serde(deserialize_with = "de_volume_id")]
    pub volume_id: VolumeId,
    /// Its region.
    pub region: Option<String>,
    /// Where it is mounted (the freeze target).
    pub mountpoint: Option<String>,
    /// Hold a database lock while snapshotting.
    #[serde(default)]
    pub lock_db: bool,
    /// Retention policy name for this volume.
    #[serde(default, deserialize_with = "de_strategy")]
    pub strategy: Option<String>,
    /// This volume's own `archive_after` (`never`: its snapshots stay in
    /// the standard tier).
    #[serde(
        default,
        deserialize_with = "de_archive_after",
        skip_serializing_if = "Option::is_none"
    )]
    pub archive_after: Option<String>,
    /// The host to freeze and lock on (`user@host:port`); default: the
    /// instance the volume is attached to.
    pub host: Option<String>,
    /// `snap check`'s threshold for this volume (over `[check] max_age`
    /// and `--max-age`).
    #[serde(
        default,
        deserialize_with = "de_max_age",
        serialize_with = "se_max_age",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<std::time::Duration>,
}

fn se_display<S: Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn se_rate_limits<S: Serializer>(v: &[(Action, Bucket)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(a, b)| (a.as_str(), b)))
}

fn de_tag<'de, D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A policy name, checked while the file is read (an invalid `max-age:`
/// duration is an error at its line and column, not at backup time).
fn de_policy<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    snapkit::retention::PolicySpec::check_name(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn de_strategy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_policy(d).map(Some)
}

fn de_volume_id<'de, D: Deserializer<'de>>(d: D) -> Result<VolumeId, D::Error> {
    let s = String::deserialize(d)?;
    VolumeId::parse(&s).map_err(serde::de::Error::custom)
}

fn de_rate_limits<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Action, Bucket)>, D::Error> {
    let map = BTreeMap::<String, Bucket>::deserialize(d)?;
    map.into_iter()
        .map(|(name, bucket)| {
            let action = Action::ALL
                .iter()
                .copied()
                .find(|a| a.as_str() == name)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "unknown EC2 action {name:?}; known: {}",
                        Action::ALL
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            if !(bucket.burst >= 1.0
                && bucket.per_second > 0.0
                && bucket.burst.is_finite()
                && bucket.per_second.is_finite())
            {
                return Err(serde::de::Error::custom(format!(
                    "{name}: burst must be >= 1 and per_second > 0 (both finite)"
                )));
            }
            Ok((action, bucket))
        })
        .collect()
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with --config does not exist or cannot be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{}", Located(self))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

struct Located<'a>(&'a ConfigError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let ConfigError::Invalid {
            path,
            line,
            column,
            message,
        } = self.0
        {
            write!(f, "{}", path.display())?;
            if let Some(l) = line {
                write!(f, ":{l}")?;
            }
            if let Some(c) = column {
                write!(f, ":{c}")?;
            }
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// serde's message for an unknown key lists every key of the section
/// (thirty for an environment): past a handful, the nearest one instead.
fn tidy(message: &str) -> String {
    const LIST_MAX: usize = 8;
    let Some((head, list)) = message.split_once(", expected one of ") else {
        return message.to_owned();
    };
    let Some(unknown) = head
        .strip_prefix("unknown field `")
        .and_then(|r| r.strip_suffix('`'))
    else {
        return message.to_owned();
    };
    let keys: Vec<&str> = list.split(", ").map(|k| k.trim_matches('`')).collect();
    if keys.len() <= LIST_MAX {
        return message.to_owned();
    }
    let nearest = keys
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .min()
        .filter(|(d, k)| *d <= k.chars().count().max(unknown.chars().count()) / 2);
    match nearest {
        Some((_, k)) => format!(
            "{head}: did you mean `{k}`? (this section has {} keys; see docs/configuration.md)",
            keys.len()
        ),
        None => format!(
            "{head} (this section has {} keys, none close; see docs/configuration.md)",
            keys.len()
        ),
    }
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

impl Config {
    /// Parses a config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message: tidy(e.message().trim()),
            }
        })?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Loads the configuration the way `ektool` does: the user file
    /// (`$XDG_CONFIG_HOME/ektool/config.toml`) as the lowest layer, then the
    /// project file over it: `explicit` (`--config`, or `EKTOOL_CONFIG`)
    /// when given — it must exist — else the nearest `ektool.toml` in the
    /// current directory or one of its parents (as git finds a
    /// repository). Built-in defaults fill what no file sets. See
    /// [`Config::load_layers`].
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let explicit = explicit.map(Path::to_owned).or_else(|| {
            std::env::var_os(CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let mut layers = Vec::new();
        if let Some(user) = Self::user_path().filter(|p| p.is_file()) {
            layers.push(user);
        }
        match explicit {
            Some(p) => layers.push(p),
            None => layers.extend(Self::discover(&cwd)),
        }
        layers.dedup();
        Self::load_layers(&layers)
    }

    /// Loads `layers` (lowest first) and merges them: each file is read
    /// and validated on its own (so errors name its line and column), then
    /// a later file's settings win over an earlier one's key by key within
    /// each section, while a volume alias or an environment is taken whole
    /// from the last file that defines it. Relative paths in a file
    /// (`ssh.known_hosts`, `ssh.identity_files`, an environment's
    /// `provision.tree` and `notify.webhook_url_file`) are relative to that
    /// file's directory, and a leading `~/` is the home directory. No layers
    /// gives the built-in defaults.
    pub fn load_layers(layers: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut merged = toml::Table::new();
        let mut last = None;
        for path in layers {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            // Each file alone first: its own errors, at its own place.
            Self::parse(&text, path)?;
            let mut table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Invalid {
                        path: path.clone(),
                        line: None,
                        column: None,
                        message: e.message().trim().to_owned(),
                    })?;
            resolve_paths(&mut table, path.parent().unwrap_or(Path::new(".")));
            merge(&mut merged, table);
            last = Some(path.clone());
        }
        let Some(last) = last else {
            return Ok(Self::default());
        };
        let mut config: Self =
            merged
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    path: last.clone(),
                    line: None,
                    column: None,
                    message: format!(
                        "{} (after layering {})",
                        e.message().trim(),
                        layers
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" under ")
                    ),
                })?;
        // A default the files did not write (the provision tree) is
        // relative to the project file, like the paths it did write.
        let base = last.parent().unwrap_or(Path::new(".")).to_owned();
        for env in config.environments.values_mut() {
            if let Some(p) = env.provision.as_mut() {
                p.tree = resolve_path(&p.tree, &base);
            }
        }
        config.path = Some(last);
        config.layers = layers.to_vec();
        Ok(config)
    }

    /// The nearest `ektool.toml` in `start` or one of its parents.
    pub fn discover(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .map(|dir| dir.join(FILE_NAME))
            .find(|p| p.is_file())
    }

    /// The user's own config file, whether or not it exists:
    /// `$XDG_CONFIG_HOME/ektool/config.toml`, else
    /// `~/.config/ektool/config.toml`.
    pub fn user_path() -> Option<PathBuf> {
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|base| base.join("ektool").join("config.toml"))
    }
}

/// The project config file's name, looked for from the current directory
/// upwards.
pub const FILE_NAME: &str = "ektool.toml";

/// The environment variable naming the config file (like `--config`).
pub const CONFIG_ENV: &str = "EKTOOL_CONFIG";

/// Expands a leading `~/` to the home directory.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_owned(),
    }
}

fn resolve_path(p: &Path, base: &Path) -> PathBuf {
    let p = expand_home(p);
    if p.is_relative() { base.join(p) } else { p }
}

/// `[notify]`: a webhook for job results and a heartbeat URL. Both URLs
/// are secrets (whoever has them can post or ping), so the config names
/// an environment variable or a file holding each, never the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The environment variable holding the webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_env: Option<String>,
    /// Or a file holding the webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_file: Option<PathBuf>,
    /// Accept plain `http://` URLs to hosts other than this machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
    /// Also post when a job succeeds (failures are always posted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_success: bool,
    /// The environment variable holding the heartbeat URL
    /// (healthchecks.io style: `<url>/start`, `<url>`, `<url>/fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_url_env: Option<String>,
    /// Or a file holding the heartbeat URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_url_file: Option<PathBuf>,
}

impl NotifyConfig {
    /// The webhook part, as a deploy environment's `notify` (what deploys
    /// of environments without their own fall back to).
    pub fn webhook(&self) -> deploykit::environment::NotifyConfig {
        deploykit::environment::NotifyConfig {
            webhook_url_env: self.webhook_url_env.clone(),
            webhook_url_file: self.webhook_url_file.clone(),
            allow_http: self.allow_http,
        }
    }
}

/// Makes a file's relative local paths (as written) relative to `base`,
/// its directory, and expands `~/`: `ssh.known_hosts`,
/// `ssh.identity_files`, and each environment's `notify.webhook_url_file`
/// and `provision.tree`.
fn resolve_paths(table: &mut toml::Table, base: &Path) {
    fn fix(v: &mut toml::Value, base: &Path) {
        if let toml::Value::String(s) = v {
            *s = resolve_path(Path::new(s.as_str()), base)
                .to_string_lossy()
                .into_owned();
        }
    }
    if let Some(toml::Value::Table(ssh)) = table.get_mut("ssh") {
        if let Some(k) = ssh.get_mut("known_hosts") {
            fix(k, base);
        }
        if let Some(toml::Value::Array(files)) = ssh.get_mut("identity_files") {
            files.iter_mut().for_each(|f| fix(f, base));
        }
    }
    if let Some(toml::Value::Table(accounts)) = table.get_mut("accounts")
        && let Some(f) = accounts.get_mut("file")
    {
        fix(f, base);
    }
    if let Some(toml::Value::Table(notify)) = table.get_mut("notify") {
        for key in ["webhook_url_file", "heartbeat_url_file"] {
            if let Some(v) = notify.get_mut(key) {
                fix(v, base);
            }
        }
    }
    if let Some(toml::Value::Table(envs)) = table.get_mut("environments") {
        for (_, env) in envs.iter_mut() {
            let toml::Value::Table(env) = env else {
                continue;
            };
            for (section, key) in [("notify", "webhook_url_file"), ("provision", "tree")] {
                if let Some(toml::Value::Table(t)) = env.get_mut(section)
                    && let Some(v) = t.get_mut(key)
                {
                    fix(v, base);
                }
            }
        }
    }
}

/// Merges `upper` (a file's table, as written) into `lower`: within each
/// section key by key, but an entry of `volumes` or `environments` whole
/// (half of one environment from each file would be neither).
fn merge(lower: &mut toml::Table, upper: toml::Table) {
    for (section, value) in upper {
        match (lower.get_mut(&section), value) {
            (Some(toml::Value::Table(low)), toml::Value::Table(up)) => {
                for (key, v) in up {
                    low.insert(key, v);
                }
            }
            (_, value) => {
                lower.insert(section, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) -> PathBuf {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
        path.to_owned()
    }

    #[test]
    fn discovery_walks_up_to_the_nearest_file() {
        let dir = tempfile::tempdir().unwrap();
        let top = write(&dir.path().join("ektool.toml"), "");
        let near = write(&dir.path().join("a/ektool.toml"), "");
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        assert_eq!(Config::discover(&dir.path().join("a/b/c")), Some(near));
        assert_eq!(Config::discover(dir.path()), Some(top));
    }

    #[test]
    fn later_layers_win_key_by_key_and_entries_whole() {
        let dir = tempfile::tempdir().unwrap();
        let user = write(
            &dir.path().join("user/config.toml"),
            "[defaults]\ntag = \"Backup=user\"\nregions = [\"eu-west-1\"]\n\n\
             [aws]\nprofile = \"mine\"\n\n\
             [volumes.db]\nvolume_id = \"vol-0123abcd\"\nlock_db = true\n\n\
             [environments.staging]\nhosts = [\"a\"]\npath = \"/srv/user\"\n",
        );
        let project = write(
            &dir.path().join("project/ektool.toml"),
            "[defaults]\ntag = \"Backup=project\"\n\n\
             [volumes.db]\nvolume_id = \"vol-0456abcd\"\n\n\
             [environments.staging]\nhosts = [\"b\"]\npath = \"/srv/project\"\n",
        );
        let c = Config::load_layers(&[user.clone(), project.clone()]).unwrap();
        assert_eq!(c.defaults.tag.to_string(), "Backup=project");
        assert_eq!(c.defaults.regions, vec!["eu-west-1".to_owned()]);
        assert_eq!(c.aws.profile.as_deref(), Some("mine"));
        // An alias comes whole from the last file that defines it.
        assert_eq!(c.volumes["db"].volume_id.as_str(), "vol-0456abcd");
        assert!(!c.volumes["db"].lock_db);
        assert_eq!(c.environments["staging"].path.as_str(), "/srv/project");
        assert_eq!(c.path.as_deref(), Some(project.as_path()));
        assert_eq!(c.layers, vec![user, project]);
    }

    #[test]
    fn relative_paths_are_relative_to_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir.path().join("team/ektool.toml"),
            "[ssh]\nknown_hosts = \"keys/known_hosts\"\nidentity_files = [\"keys/id\", \"/abs/id\"]\n\n\
             [environments.staging]\nhosts = [\"a\"]\npath = \"/srv/app\"\n\n\
             [environments.staging.provision]\n",
        );
        let c = Config::load_layers(&[file]).unwrap();
        let team = dir.path().join("team");
        assert_eq!(c.ssh.known_hosts, Some(team.join("keys/known_hosts")));
        assert_eq!(
            c.ssh.identity_files,
            vec![team.join("keys/id"), PathBuf::from("/abs/id")]
        );
        let tree = &c.environments["staging"].provision.as_ref().unwrap().tree;
        assert_eq!(tree, &team.join("provision"));
    }

    #[test]
    fn each_layer_reports_its_own_errors_at_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let user = write(&dir.path().join("user.toml"), "[defaults]\nregions = 3\n");
        let project = write(&dir.path().join("ektool.toml"), "");
        let e = Config::load_layers(&[user, project])
            .unwrap_err()
            .to_string();
        assert!(e.contains("user.toml:2:11:"), "{e}");
        assert_eq!(
            Config::load_layers(&[]).unwrap().defaults.tag,
            Config::default().defaults.tag
        );
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("ektool.toml"))
    }

    /// Whether `text` parses, or fails with one short line naming the file.
    fn short_located_or_ok(text: &str) -> bool {
        parse(text).map_or_else(
            |e| {
                let m = e.to_string();
                m.starts_with("ektool.toml") && !m.contains('\n') && m.len() <= 400
            },
            |_| true,
        )
    }

    /// A config value of every awkward kind.
    fn odd_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("\"\"".to_owned()),
            Just("\"20000y\"".to_owned()),
            Just("\"-1\"".to_owned()),
            Just("-2".to_owned()),
            Just("0".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("1e309".to_owned()),
            Just("nan".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("true".to_owned()),
            Just("\"vol-ffffffff\"".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z0-9:=,./~ -]{0,12}".prop_map(|v| format!("{v:?}")),
            "\\PC{0,8}".prop_map(|v| format!("{v:?}")),
        ]
    }

    #[test]
    fn an_unknown_key_of_a_long_section_names_the_nearest() {
        let err = parse("[environments.prod]\nhosts = []\npath = \"/srv/a\"\nshared_file = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `shared_file`: did you mean `shared_files`?"),
            "{err}"
        );
        assert!(err.len() <= 200, "{err}");
        let far = parse("[environments.prod]\nzzzzzzzz = 1\n")
            .unwrap_err()
            .to_string();
        assert!(far.contains("none close"), "{far}");
        // A short list is serde's own.
        let ssh = parse("[ssh]\nusr = \"x\"\n").unwrap_err().to_string();
        assert!(ssh.contains("expected one of"), "{ssh}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    proptest::proptest! {
        /// Whatever a file holds, loading it gives a config or one short
        /// line naming the file (and the place, when there is one) —
        /// never a panic, never the input echoed back.
        #[test]
        fn any_bytes_give_a_config_or_one_short_located_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let text = String::from_utf8_lossy(&bytes);
            proptest::prop_assert!(short_located_or_ok(&text), "{:?}", parse(&text).err().map(|e| e.to_string()));
        }

        /// Config-shaped input reaches the validation of every section:
        /// known keys with odd values, same rule.
        #[test]
        fn every_known_key_with_any_value_is_validated_without_panic(
            entries in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        ("defaults", "tag"), ("defaults", "regions"),
                        ("aws", "profile"), ("aws", "rate_limit"), ("aws", "max_attempts"),
                        ("aws", "endpoint_url"),
                        ("retention", "policy"), ("retention.gfs", "keep_daily"),
                        ("retention.gfs", "keep_within"), ("retention.gfs", "keep_last"),
                        ("consistency", "max_hold_seconds"), ("consistency", "address"),
                        ("ssh", "user"), ("ssh", "port"), ("ssh", "identity_files"),
                        ("ssh", "known_hosts"),
                        ("volumes.db", "volume_id"), ("volumes.db", "lock_db"),
                        ("volumes.db", "strategy"), ("volumes.db", "mountpoint"),
                        ("environments.prod", "hosts"), ("environments.prod", "repo"),
                        ("environments.prod", "keep"), ("environments.prod", "lock_wait"),
                        ("environments.prod.timeouts", "build"),
                    ]),
                    odd_value(),
                ),
                1..6,
            ),
        ) {
            // One table per section and one value per key, so most inputs
            // get past TOML itself into ektool's own validation.
            let mut sections = std::collections::BTreeMap::<&str, BTreeMap<&str, &str>>::new();
            for ((section, key), value) in &entries {
                sections.entry(section).or_default().insert(key, value);
            }
            let mut text = String::new();
            for (section, keys) in &sections {
                text.push_str(&format!("[{section}]\n"));
                for (key, value) in keys {
                    text.push_str(&format!("{key} = {value}\n"));
                }
            }
            proptest::prop_assert!(short_located_or_ok(&text), "{:?}", parse(&text).err().map(|e| e.to_string()));
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.defaults.tag, Tag::new("Earmarking", "production"));
        assert!(c.aws.rate_limits().is_enabled());
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
[defaults]
tag = "Backup=nightly"
regions = ["eu-west", "us-east-1"]

[aws]
profile = "ops"
rate_limit = true
rate_limits = { DeleteSnapshot = { burst = 50, per_second = 2.5 } }

[ssh]
user = "deploy"
identity_files = ["~/.ssh/deploy"]

[volumes.db]
volume_id = "vol-0123456789abcdef0"
region = "eu-west-1"
mountpoint = "/var/lib/mysql"
lock_db = true
strategy = "oneday_rolling"
"#,
        )
        .unwrap();
        assert_eq!(c.defaults.tag.to_string(), "Backup=nightly");
        assert_eq!(c.volumes["db"].volume_id.as_str(), "vol-0123456789abcdef0");
        assert!(c.volumes["db"].lock_db);
        assert_eq!(
            c.aws.rate_limits().bucket(Action::DeleteSnapshot),
            Some(Bucket::new(50.0, 2.5))
        );
    }

    #[test]
    fn hosts_take_roles_and_hooks_take_roles_or_once_on() {
        let c = parse(
            "[environments.prod]\npath = \"/srv/app\"\n\
             hosts = [\"a\", { host = \"deploy@b:2222\", roles = [\"web\", \"worker\"] }]\n\
             ec2 = { tag = \"Role=db\", region = \"eu-west-1\", roles = [\"db\"] }\n\
             [environments.prod.hooks]\n\
             build = [{ run = \"make\" }, { run = \"make assets\", roles = [\"web\"] }]\n\
             before_switch = [{ run = \"./migrate\", once_on = \"db\" }]\n",
        )
        .unwrap();
        let env = &c.environments["prod"];
        assert_eq!(
            env.hosts,
            [
                deploykit::HostEntry::from("a"),
                deploykit::HostEntry::new("deploy@b:2222", ["web", "worker"]),
            ]
        );
        assert_eq!(env.ec2.as_ref().unwrap().roles, ["db"]);
        assert!(env.hooks.build[0].roles.is_empty());
        assert_eq!(env.hooks.build[1].roles, ["web"]);
        assert_eq!(env.hooks.before_switch[0].once_on.as_deref(), Some("db"));
        // Written back as read: a plain string without roles, a table with.
        let back = toml::to_string(env).unwrap();
        let again: deploykit::Environment = toml::from_str(&back).unwrap();
        assert_eq!(&again, env);
    }

    #[test]
    fn bad_roles_are_errors_at_their_place() {
        let env = "[environments.prod]\npath = \"/srv/app\"\n";
        for (text, at, what) in [
            (
                "hosts = [\"a\", { host = \"b\", role = [\"web\"] }]\n",
                "ektool.toml:3:",
                "unknown field `role`",
            ),
            (
                "hosts = [{ host = \"b\", roles = \"web\" }]\n",
                "ektool.toml:3:",
                "sequence",
            ),
            (
                "hosts = [{ host = \"b\", roles = [\"\"] }]\n",
                "ektool.toml:3:",
                "role name must not be empty",
            ),
            (
                "hosts = [{ roles = [\"web\"] }]\n",
                "ektool.toml:3:",
                "host",
            ),
            ("hosts = [3]\n", "ektool.toml:3:", "a host"),
            (
                "ec2 = { tag = \"Role=web\", region = \"eu\", roles = [\"a b\"] }\n",
                "ektool.toml:3:",
                "letters, digits",
            ),
            (
                "[environments.prod.hooks]\nrestart = [{ run = \"x\", once_on = \"db\" }]\n",
                "ektool.toml:4:",
                "`once_on` is for before_switch hooks",
            ),
            (
                "[environments.prod.hooks]\nbefore_switch = [{ run = \"x\", roles = [\"db\"] }]\n",
                "ektool.toml:4:",
                "once_on",
            ),
            (
                "[environments.prod.hooks]\nbefore_switch = [{ run = \"x\", once_on = \"\" }]\n",
                "ektool.toml:4:",
                "role name must not be empty",
            ),
        ] {
            let text = format!("{env}{text}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(at), "{text}: {err}");
            assert!(err.contains(what), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
    }

    #[test]
    fn string_boolean_is_an_error_with_line_and_column() {
        let err =
            parse("[volumes.db]\nvolume_id = \"vol-0123abcd\"\nlock_db = \"False\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("ektool.toml:3:11: "), "{text}");
        assert!(text.contains("bool"), "{text}");
    }

    #[test]
    fn invalid_volume_id_points_at_the_value() {
        let err = parse("[volumes.db]\nvolume_id = \"vol-nothex!\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("ektool.toml:2:13: "), "{text}");
        assert!(text.contains("invalid volume id"), "{text}");
    }

    #[test]
    fn bad_policies_and_keep_rules_are_errors_at_their_place() {
        for (text, at, what) in [
            (
                "[retention]\npolicy = \"max-age:3x\"\n",
                "ektool.toml:2:10: ",
                "invalid max-age",
            ),
            (
                "[volumes.db]\nvolume_id = \"vol-0123abcd\"\nstrategy = \"nope\"\n",
                "ektool.toml:3:12: ",
                "unknown retention policy",
            ),
            (
                "[retention.gfs]\nkeep_daily = -5\n",
                "ektool.toml:2:14: ",
                "below -1",
            ),
            (
                "[retention.gfs]\nkeep_within = \"20000y\"\n",
                "ektool.toml:2:15: ",
                "invalid duration",
            ),
            (
                "[consistency]\nmax_hold_seconds = 18446744073709551615\n",
                "ektool.toml:2:20: ",
                "between 1 and 86400",
            ),
            // A typo once fell back to the private IP silently.
            (
                "[consistency]\naddress = \"public-ip\"\n",
                "ektool.toml:2:11: ",
                "unknown variant `public-ip`",
            ),
            (
                "[environments.web]\npath = \"/srv/app\"\nec2 = { tag = \"Role\", region = \"eu-west-1\" }\n",
                "ektool.toml:3:",
                "expected KEY=VALUE",
            ),
            (
                "[environments.web]\npath = \"/srv/app\"\nec2 = { tag = \"Role=web\", region = \"eu-west-1\", address = \"public-dns\" }\n",
                "ektool.toml:3:",
                "unknown variant `public-dns`",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(at), "{err}");
            assert!(err.contains(what), "{err}");
        }
        assert!(parse("[retention]\npolicy = \"max-age:36h\"\n").is_ok());
        let c = parse("[consistency]\naddress = \"public_dns\"\n").unwrap();
        assert_eq!(c.consistency.address, ec2kit::Address::PublicDns);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("[defaults]\ntags = \"a=b\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("ektool.toml:2:1: "), "{text}");
        assert!(text.contains("unknown field `tags`"), "{text}");
    }

    #[test]
    fn unknown_action_lists_known_ones() {
        let err =
            parse("[aws]\nrate_limits = { DeleteSnapshots = { burst = 1, per_second = 1 } }\n")
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown EC2 action \"DeleteSnapshots\""),
            "{text}"
        );
        assert!(text.contains("DeleteSnapshot,"), "{text}");
    }

    #[test]
    fn out_of_range_aws_settings_are_refused_with_their_place() {
        for (text, col, what) in [
            (
                "[aws]\nmax_attempts = 0\n",
                16,
                "max_attempts must be from 1 to 20",
            ),
            ("[aws]\nmax_attempts = 100\n", 16, "not 100"),
            ("[aws]\nmax_attempts = -1\n", 16, "not -1"),
            ("[aws]\nendpoint_url = \"\"\n", 16, "it is empty"),
            ("[aws]\nendpoint_url = \"localhost:5000\"\n", 16, "http://"),
            ("[aws]\nprofile = \" \"\n", 11, "empty profile"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("ektool.toml:2:{col}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(what), "{text:?}: {err}");
        }
        let ok =
            parse("[aws]\nmax_attempts = 3\nendpoint_url = \"http://127.0.0.1:5000\"\n").unwrap();
        assert_eq!(ok.aws.max_attempts, Some(3));
    }

    #[test]
    fn a_database_name_is_not_a_connection_string() {
        let err = parse(
            "[environments.staging]\nhosts = [\"h\"]\npath = \"/srv/app\"\n\
             [environments.staging.database]\nname = \"host=evil.example dbname=app\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("ektool.toml:5:8: "), "{err}");
        assert!(err.contains("connection strings"), "{err}");
    }

    #[test]
    fn rate_limit_off() {
        let c = parse("[aws]\nrate_limit = false\n").unwrap();
        assert!(!c.aws.rate_limits().is_enabled());
    }

    #[test]
    fn the_readme_config_examples_are_valid() {
        // The README's configuration reference now lives in docs/.
        let page = include_str!("../../docs/configuration.md");
        let blocks: Vec<&str> = page
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap_or_default())
            .collect();
        assert!(blocks.len() >= 2, "docs have config examples");
        for block in &blocks {
            parse(block).unwrap_or_else(|e| panic!("docs config example: {e}\n{block}"));
        }
        let main = parse(blocks[0]).unwrap();
        assert_eq!(
            main.volumes["db"].strategy.as_deref(),
            Some("oneday_rolling")
        );
        assert_eq!(main.retention.gfs.keep_daily, Some(7));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/ektool.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}
