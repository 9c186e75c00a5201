//! Environments: where and how one named target (development, staging,
//! production, ...) is deployed. Plain serde types, so a config file
//! (`[environments.<name>]` in the CLI's TOML) maps onto them directly, and
//! invalid values (a relative deploy path, a bad version pattern, a shared
//! path that escapes the release) fail while the file is read, with a
//! location.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ec2kit::{Address, HumanDuration};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Static hosts: `user@host:port` (user and port optional), or
    /// `localhost` for this machine; each either as a plain string (no
    /// roles) or as `{ host = "…", roles = ["web", …] }` (see
    /// [`HostEntry`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
    /// Hosts found by EC2 tag instead (or as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<HostSource>,
    /// The bastion every SSH host of the environment is reached through
    /// (OpenSSH's `ProxyJump`): `[user@]host[:port]`, the user defaulting
    /// as for the hosts. Its host key is checked like theirs; see
    /// [`hosts::jump`](crate::hosts::jump).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "jump_target"
    )]
    pub jump: Option<String>,
    /// The deploy root on every host: `releases/`, `shared/`, `current`,
    /// `repo.git` and `.ektool/` (lock, release log) live under it.
    pub path: DeployPath,
    /// The git URL the hosts fetch from. Default: the URL of `remote` in
    /// the local repository. A URL with credentials in it
    /// (`https://user:TOKEN@…`) is refused: give the hosts a deploy key or
    /// a credential helper instead.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "repository_url"
    )]
    pub repository: Option<String>,
    /// The local repository's remote that must have what is deployed.
    #[serde(default = "default_remote")]
    pub remote: String,
    /// What to deploy when nothing is named: this branch's head on the remote.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Only deploy tags matching `version_pattern` (production). An
    /// explicit override is needed to deploy anything else.
    #[serde(default)]
    pub require_tag: bool,
    /// Valid release tags.
    #[serde(default)]
    pub version_pattern: VersionPattern,
    /// Create release tags signed (`git tag -s`).
    #[serde(default)]
    pub sign_tags: bool,
    /// How releases are laid out on the hosts.
    #[serde(default)]
    pub layout: LayoutKind,
    /// Complete releases to keep with the timestamped layout (the current
    /// and the previous one are never removed, whatever this says).
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Directories under `shared/` linked into every release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_dirs: Vec<SharedPath>,
    /// Files under `shared/` linked into every release; a missing one
    /// fails the deploy before the switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_files: Vec<SharedPath>,
    /// Commands run at each phase of a deploy.
    #[serde(default)]
    pub hooks: Hooks,
    /// The check that decides whether a switched release is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Where to announce deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyConfig>,
    /// Hosts prepared at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// A lock older than this is stale (its deploy was killed).
    #[serde(default = "default_lock_stale")]
    pub lock_stale_seconds: u64,
    /// A private key **on the hosts** for fetching the repository (a
    /// read-only deploy key). Host keys of the git server are checked
    /// strictly: record them in the deploy user's known_hosts, or in
    /// `git_known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ssh_key: Option<String>,
    /// A known_hosts file on the hosts holding the git server's host key
    /// (e.g. GitHub's published keys), instead of the deploy user's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_known_hosts: Option<String>,
    /// The maintenance flag file, relative to `shared/`.
    #[serde(default = "default_maintenance_file")]
    pub maintenance_file: SharedPath,
    /// Deadlines of the commands sent to the hosts (`[environments.<name>.timeouts]`).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// How the environment's servers are provisioned
    /// (`[environments.<name>.provision]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<crate::provision::ProvisionConfig>,
    /// The application database, for `db dump` / `db load`
    /// (`[environments.<name>.database]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::db::DatabaseConfig>,
    /// The free space `deploy check` wants on the filesystem of the deploy
    /// root (`"1GiB"`, `"500MB"`; default [`ByteSize::DEFAULT_MIN_FREE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free: Option<ByteSize>,
    /// Hosts switched first, alone, and checked before the rest (0: no
    /// canary; see [`crate::rollout`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canary: usize,
    /// How long the canary runs the new release, healthy, before the rest
    /// switch (`"5m"`; default 0s).
    #[serde(default, skip_serializing_if = "is_no_wait")]
    pub canary_wait: HumanDuration,
    /// After the canary, switch this many hosts at a time (`2`, `"25%"`);
    /// default: the rest at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::rollout::BatchSize>,
    /// The ALB/NLB target group the hosts serve in
    /// (`[environments.<name>.load_balancer]`): each wave is drained from it
    /// while it switches (see [`crate::balancer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<crate::balancer::LoadBalancer>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_no_wait(d: &HumanDuration) -> bool {
    d.0.is_zero()
}

fn default_remote() -> String {
    "origin".into()
}
fn default_branch() -> String {
    "main".into()
}
fn default_keep() -> usize {
    5
}
fn default_parallel() -> usize {
    10
}
fn default_lock_stale() -> u64 {
    2 * 3600
}
fn default_maintenance_file() -> SharedPath {
    SharedPath("maintenance".into())
}

impl Environment {
    /// A minimal environment: these hosts, this deploy root, defaults for
    /// the rest (timestamped layout, keep 5, no hooks).
    pub fn new(hosts: Vec<String>, path: &str) -> Result<Self, InvalidValue> {
        Ok(Self {
            hosts: hosts.into_iter().map(HostEntry::from).collect(),
            ec2: None,
            jump: None,
            path: DeployPath::new(path)?,
            repository: None,
            remote: default_remote(),
            branch: default_branch(),
            require_tag: false,
            version_pattern: VersionPattern::default(),
            sign_tags: false,
            layout: LayoutKind::default(),
            keep: default_keep(),
            shared_dirs: Vec::new(),
            shared_files: Vec::new(),
            hooks: Hooks::default(),
            health: None,
            notify: None,
            parallel: default_parallel(),
            lock_stale_seconds: default_lock_stale(),
            git_ssh_key: None,
            git_known_hosts: None,
            maintenance_file: default_maintenance_file(),
            timeouts: Timeouts::default(),
            provision: None,
            database: None,
            min_free: None,
            canary: 0,
            canary_wait: HumanDuration(Duration::ZERO),
            batch: None,
            load_balancer: None,
        })
    }

    /// The layout this environment asks for.
    pub fn release_layout(&self) -> Box<dyn crate::ReleaseLayout> {
        match self.layout {
            LayoutKind::Ab => Box::new(crate::AbSlots),
            LayoutKind::Timestamped => Box::new(crate::Timestamped { keep: self.keep }),
        }
    }

    /// The order hosts switch in: [`canary`](Self::canary),
    /// [`canary_wait`](Self::canary_wait), [`batch`](Self::batch). Behind a
    /// [`load_balancer`](Self::load_balancer) without a `batch`, one host at
    /// a time ([`crate::balancer::DEFAULT_BATCH`]).
    pub fn rollout(&self) -> crate::rollout::Rollout {
        crate::rollout::Rollout {
            canary: self.canary,
            canary_wait: self.canary_wait.0,
            batch: self.batch.or_else(|| {
                self.load_balancer
                    .as_ref()
                    .map(|_| crate::balancer::DEFAULT_BATCH)
            }),
        }
    }

    /// How long a lock may live before it counts as stale.
    pub fn lock_stale_after(&self) -> Duration {
        Duration::from_secs(self.lock_stale_seconds)
    }
}

fn jump_target<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let jump = String::deserialize(d)?;
    if jump == ec2kit::HostTarget::LOCALHOST {
        return Err(serde::de::Error::custom(
            "jump: a bastion is an SSH host, not this machine",
        ));
    }
    ec2kit::SshTarget::parse_with_user(&jump, "user").map_err(serde::de::Error::custom)?;
    Ok(Some(jump))
}

fn repository_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    crate::git::check_repository_url(&url).map_err(serde::de::Error::custom)?;
    Ok(Some(url))
}

/// Deadlines of the commands a deploy, rollback, restart, maintenance or
/// unlock sends to a host. A host that stops answering (or a git server
/// that accepts and never answers) fails that host within its deadline,
/// and the operation takes its failure path. Each is a duration with a
/// unit (`"30s"`, `"10m"`), between 1 second and 24 hours. Hooks have
/// their own `timeout_seconds`; a health check its `deadline_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Taking the lock (with the state read that rides along), releasing
    /// it, and appending to the release log (default 30s).
    #[serde(deserialize_with = "bounded")]
    pub lock: HumanDuration,
    /// Reading the hosts' state, release logs and locks (default 30s).
    #[serde(deserialize_with = "bounded")]
    pub state: HumanDuration,
    /// Switching `current` and switching it back, and the maintenance flag
    /// (default 30s; a scheduled switch waits at most 3 s more).
    #[serde(deserialize_with = "bounded")]
    pub switch: HumanDuration,
    /// Cloning or fetching the repository into a host's mirror (default
    /// 10m).
    #[serde(deserialize_with = "bounded")]
    pub fetch: HumanDuration,
    /// Checking out the release with its submodules and linking shared
    /// paths (default 5m).
    #[serde(deserialize_with = "bounded")]
    pub checkout: HumanDuration,
    /// Recording a finished deploy, removing old releases and unlocking
    /// (default 5m).
    #[serde(deserialize_with = "bounded")]
    pub cleanup: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            lock: HumanDuration::from_secs(30),
            state: HumanDuration::from_secs(30),
            switch: HumanDuration::from_secs(30),
            fetch: HumanDuration::from_secs(600),
            checkout: HumanDuration::from_secs(300),
            cleanup: HumanDuration::from_secs(300),
        }
    }
}

/// The range every [`Timeouts`] value must lie in.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

fn bounded<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    let text = String::deserialize(d)?;
    ec2kit::duration::parse_in(&text, TIMEOUT_RANGE.0, TIMEOUT_RANGE.1)
        .map(HumanDuration)
        .map_err(serde::de::Error::custom)
}

/// A number of bytes, written with a unit: `1GiB`, `512MiB`, `2G` (binary:
/// `K`, `M`, `G`, `T` and `KiB` … `TiB`), `500MB` (decimal: `KB` … `TB`),
/// or plain bytes (`1048576`, `10B`). A fraction is allowed (`1.5GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The free space `deploy check` wants when nothing says otherwise.
    pub const DEFAULT_MIN_FREE: Self = Self(1 << 30);

    /// Parses a size (see the type's docs).
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let t = text.trim();
        let bad = || {
            InvalidValue(format!(
                "size {text:?} is not a number with a unit such as 1GiB, 500MiB or 2GB"
            ))
        };
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kib" => 1024.0,
            "m" | "mib" => 1024f64.powi(2),
            "g" | "gib" => 1024f64.powi(3),
            "t" | "tib" => 1024f64.powi(4),
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            _ => return Err(bad()),
        };
        let bytes = number * factor;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Self(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// Binary units with one decimal (`1.0GiB`), plain bytes below 1 KiB.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut value = self.0 as f64;
        if value < 1024.0 {
            return write!(f, "{}B", self.0);
        }
        let mut unit = units[0];
        for u in units {
            value /= 1024.0;
            unit = u;
            if value < 1024.0 {
                break;
            }
        }
        write!(f, "{value:.1}{unit}")
    }
}

impl std::str::FromStr for ByteSize {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ByteSize {
    /// Exactly: in the largest binary unit that divides it (`1GiB`), else
    /// in bytes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let exact = ["TiB", "GiB", "MiB", "KiB"]
            .iter()
            .zip([40u32, 30, 20, 10])
            .find(|(_, shift)| self.0 != 0 && self.0.is_multiple_of(1u64 << shift))
            .map(|(u, shift)| format!("{}{u}", self.0 >> shift));
        s.serialize_str(&exact.unwrap_or_else(|| format!("{}B", self.0)))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A value in an environment that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// An absolute deploy root without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeployPath(String);

impl DeployPath {
    /// Checks and wraps a path.
    pub fn new(path: &str) -> Result<Self, InvalidValue> {
        let p = path.trim_end_matches('/');
        if !p.starts_with('/') || p.is_empty() {
            return Err(InvalidValue(format!(
                "deploy path {path:?} must be absolute and not `/`"
            )));
        }
        if p.split('/').any(|c| c == ".." || c == ".") || p.contains('\n') {
            return Err(InvalidValue(format!(
                "deploy path {path:?} must not contain `.`, `..` or newlines"
            )));
        }
        Ok(Self(p.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeployPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DeployPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeployPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A relative path inside `shared/` and inside every release: no leading
/// `/`, no `..`, no empty components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedPath(String);

impl SharedPath {
    /// Checks and wraps a path.
    pub fn new(path: &str) -> Result<Self, InvalidValue> {
        let p = path.trim_end_matches('/');
        let ok = !p.is_empty()
            && !p.starts_with('/')
            && !p.contains('\n')
            && p.split('/').all(|c| !c.is_empty() && c != ".." && c != ".");
        if !ok {
            return Err(InvalidValue(format!(
                "shared path {path:?} must be relative, without `.`, `..` or empty parts"
            )));
        }
        Ok(Self(p.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many directories deep it is (`log` is 0, `public/uploads` is 1).
    pub fn depth(&self) -> usize {
        self.0.matches('/').count()
    }
}

impl fmt::Display for SharedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A regular expression release tags must match (default `^v\d+\.\d+\.\d+$`).
#[derive(Debug, Clone)]
pub struct VersionPattern {
    source: String,
    regex: regex_lite::Regex,
}

/// The default: `v1.2.3`.
pub const DEFAULT_VERSION_PATTERN: &str = r"^v\d+\.\d+\.\d+$";

impl VersionPattern {
    /// Compiles a pattern.
    pub fn new(source: &str) -> Result<Self, InvalidValue> {
        let regex = regex_lite::Regex::new(source)
            .map_err(|e| InvalidValue(format!("invalid version pattern {source:?}: {e}")))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether a tag name is a valid release tag.
    pub fn matches(&self, tag: &str) -> bool {
        self.regex.is_match(tag)
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl Default for VersionPattern {
    fn default() -> Self {
        match Self::new(DEFAULT_VERSION_PATTERN) {
            Ok(p) => p,
            // The constant is a valid regex (a unit test says so).
            Err(e) => unreachable!("{e}"),
        }
    }
}

impl PartialEq for VersionPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for VersionPattern {}

impl Serialize for VersionPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for VersionPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Instances found by an EC2 tag: the running ones carrying it in one
/// region, reached at their `address` (see [`crate::hosts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSource {
    /// `Key=Value` (a value may be empty; the key may not).
    #[serde(deserialize_with = "tag_text")]
    pub tag: String,
    /// The region to look in: its name, or a prefix only it has
    /// (`eu-west-1`, `eu-north`).
    pub region: String,
    /// Login user (default: the `[ssh]` user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Which address to connect to (default: the private IP).
    #[serde(default)]
    pub address: Address,
    /// The roles of every host it finds (see [`HostEntry::roles`]).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "role_list"
    )]
    pub roles: Vec<String>,
}

fn default_port() -> u16 {
    22
}

/// A tag that is `Key=Value`, refused where the file is read otherwise.
fn tag_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<ec2kit::Tag>()
        .map_err(serde::de::Error::custom)?;
    Ok(text)
}

/// Release layouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutKind {
    /// Two slots, `releases/a` and `releases/b`, each with its own checkout
    /// and build products (kept between deploys, so builds are incremental).
    Ab,
    /// `releases/<UTC timestamp>`, old ones cleaned beyond `keep`.
    #[default]
    Timestamped,
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ab => "ab",
            Self::Timestamped => "timestamped",
        })
    }
}

/// One hook: a shell command run in the release directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// The shell command (`sh -c`).
    pub run: String,
    /// Kill it and fail after this many seconds.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u64,
    /// Run it only on hosts having one of these roles (empty: on every
    /// host; a host without roles runs only hooks without them). Not for
    /// `before_switch` hooks, which run once: see [`once_on`](Self::once_on).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "role_list"
    )]
    pub roles: Vec<String>,
    /// For a `before_switch` hook (they run once per deploy): run it on the
    /// first host, in lock order, having this role, instead of on the
    /// first host. A deploy whose selected hosts have none with it is
    /// refused before anything changes
    /// ([`DeployError::NoHostWithRole`](crate::DeployError::NoHostWithRole)).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "one_role"
    )]
    pub once_on: Option<String>,
}

fn default_hook_timeout() -> u64 {
    600
}

impl Hook {
    /// A hook with the default timeout (10 minutes).
    pub fn new(run: impl Into<String>) -> Self {
        Self {
            run: run.into(),
            timeout_seconds: default_hook_timeout(),
            roles: Vec::new(),
            once_on: None,
        }
    }

    /// Only on hosts having one of `roles` (see [`Hook::roles`]).
    #[must_use]
    pub fn on_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Once, on the first host having `role` (see [`Hook::once_on`]).
    #[must_use]
    pub fn once_on(mut self, role: impl Into<String>) -> Self {
        self.once_on = Some(role.into());
        self
    }

    /// Whether the hook runs on a host with these roles: it has no
    /// [`roles`](Self::roles), or shares one with the host.
    pub fn runs_on(&self, host_roles: &[String]) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| host_roles.contains(r))
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.max(1))
    }
}

/// When hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// After the checkout, on every host, in the new release (install
    /// requirements into the release's own virtualenv, compile assets).
    Build,
    /// Once per deploy, on the first host, in the new release, before any
    /// host switches (database migrations: keep them backward compatible,
    /// the old release still serves).
    BeforeSwitch,
    /// On every host after a switch, a rollback, or `restart` (reload the
    /// application server).
    Restart,
    /// On every host after the switch and restart of a deploy (install the
    /// release's crontab).
    AfterSwitch,
    /// On every host when a deploy fails (in the release that is live).
    OnFailure,
    /// On every host after a rollback, manual or automatic.
    AfterRollback,
    /// On every host when maintenance mode is turned on or off
    /// (`MAINTENANCE=on|off`).
    Maintenance,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Build => "build",
            Self::BeforeSwitch => "before_switch",
            Self::Restart => "restart",
            Self::AfterSwitch => "after_switch",
            Self::OnFailure => "on_failure",
            Self::AfterRollback => "after_rollback",
            Self::Maintenance => "maintenance",
        })
    }
}

/// The hooks of every phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// See [`Phase::Build`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_everywhere"
    )]
    pub build: Vec<Hook>,
    /// See [`Phase::BeforeSwitch`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_once"
    )]
    pub before_switch: Vec<Hook>,
    /// See [`Phase::Restart`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_everywhere"
    )]
    pub restart: Vec<Hook>,
    /// See [`Phase::AfterSwitch`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_everywhere"
    )]
    pub after_switch: Vec<Hook>,
    /// See [`Phase::OnFailure`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_everywhere"
    )]
    pub on_failure: Vec<Hook>,
    /// See [`Phase::AfterRollback`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_everywhere"
    )]
    pub after_rollback: Vec<Hook>,
    /// See [`Phase::Maintenance`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "hooks_everywhere"
    )]
    pub maintenance: Vec<Hook>,
}

impl Hooks {
    /// The hooks of one phase.
    pub fn of(&self, phase: Phase) -> &[Hook] {
        match phase {
            Phase::Build => &self.build,
            Phase::BeforeSwitch => &self.before_switch,
            Phase::Restart => &self.restart,
            Phase::AfterSwitch => &self.after_switch,
            Phase::OnFailure => &self.on_failure,
            Phase::AfterRollback => &self.after_rollback,
            Phase::Maintenance => &self.maintenance,
        }
    }

    /// Refuses `once_on` outside `before_switch`, and `roles` on a
    /// `before_switch` hook (the config file refuses both where it is
    /// read; this is for environments built in code).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_once(&self.before_switch)?;
        for phase in [
            Phase::Build,
            Phase::Restart,
            Phase::AfterSwitch,
            Phase::OnFailure,
            Phase::AfterRollback,
            Phase::Maintenance,
        ] {
            check_everywhere(self.of(phase))?;
        }
        Ok(())
    }
}

fn check_once(hooks: &[Hook]) -> Result<(), InvalidValue> {
    match hooks.iter().find(|h| !h.roles.is_empty()) {
        Some(h) => Err(InvalidValue(format!(
            "before_switch hook {:?}: before_switch hooks run once, so they take \
             `once_on = \"<role>\"` (the first host with that role), not `roles`",
            h.run
        ))),
        None => Ok(()),
    }
}

fn check_everywhere(hooks: &[Hook]) -> Result<(), InvalidValue> {
    match hooks.iter().find(|h| h.once_on.is_some()) {
        Some(h) => Err(InvalidValue(format!(
            "hook {:?}: `once_on` is for before_switch hooks (they run once); \
             narrow this one with `roles`",
            h.run
        ))),
        None => Ok(()),
    }
}

fn hooks_once<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hook>, D::Error> {
    let hooks = Vec::<Hook>::deserialize(d)?;
    check_once(&hooks).map_err(serde::de::Error::custom)?;
    Ok(hooks)
}

fn hooks_everywhere<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hook>, D::Error> {
    let hooks = Vec::<Hook>::deserialize(d)?;
    check_everywhere(&hooks).map_err(serde::de::Error::custom)?;
    Ok(hooks)
}

/// Checks a role's name: letters, digits, `-`, `_` and `.`, starting with
/// a letter or digit (`web`, `db-primary`).
pub fn check_role(role: &str) -> Result<(), InvalidValue> {
    if role.is_empty() {
        return Err(InvalidValue("a role name must not be empty".into()));
    }
    let ok = role
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && role
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "role {role:?}: letters, digits, `-`, `_` and `.` only, starting with a letter or digit"
        )))
    }
}

fn role_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let roles = Vec::<String>::deserialize(d)?;
    for r in &roles {
        check_role(r).map_err(serde::de::Error::custom)?;
    }
    Ok(roles)
}

fn one_role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let role = String::deserialize(d)?;
    check_role(&role).map_err(serde::de::Error::custom)?;
    Ok(Some(role))
}

/// One static host of an environment, with its roles. In a config file
/// either a string (`"deploy@web1:22"`: no roles) or a table
/// (`{ host = "db1", roles = ["db"] }`).
///
/// Roles decide which hooks run on the host ([`Hook::roles`],
/// [`Hook::once_on`]) and which hosts `--role` selects
/// ([`hosts::select`](crate::hosts::select)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// `[user@]host[:port]`, or `localhost`.
    pub host: String,
    /// Its roles (`web`, `worker`, `db`); none by default.
    pub roles: Vec<String>,
    /// The bastion this host is reached through, over the environment's
    /// `jump` (`[user@]host[:port]`; see
    /// [`hosts::jump_for`](crate::hosts::jump_for)).
    pub jump: Option<String>,
}

impl HostEntry {
    /// A host with these roles.
    pub fn new<S: Into<String>>(
        host: impl Into<String>,
        roles: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            host: host.into(),
            roles: roles.into_iter().map(Into::into).collect(),
            jump: None,
        }
    }

    /// The host reached through `jump`.
    #[must_use]
    pub fn via(mut self, jump: impl Into<String>) -> Self {
        self.jump = Some(jump.into());
        self
    }
}

impl From<String> for HostEntry {
    fn from(host: String) -> Self {
        Self {
            host,
            roles: Vec::new(),
            jump: None,
        }
    }
}

impl From<&str> for HostEntry {
    fn from(host: &str) -> Self {
        host.to_owned().into()
    }
}

/// The table form of a [`HostEntry`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostTable {
    host: String,
    #[serde(default, deserialize_with = "role_list")]
    roles: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "jump_target"
    )]
    jump: Option<String>,
}

impl Serialize for HostEntry {
    /// A plain string without roles or bastion, else the table.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.roles.is_empty() && self.jump.is_none() {
            s.serialize_str(&self.host)
        } else {
            HostTable {
                host: self.host.clone(),
                roles: self.roles.clone(),
                jump: self.jump.clone(),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for HostEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = HostEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a host (\"user@host:port\") or { host = \"…\", roles = [\"…\"], jump = \"…\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HostEntry, E> {
                Ok(v.into())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<HostEntry, A::Error> {
                let t = HostTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HostEntry {
                    host: t.host,
                    roles: t.roles,
                    jump: t.jump,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// How to tell that a switched release works. Checked **on each host**
/// (curl to a local URL, or a command), so it tests that host, not a load
/// balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP(S) URL fetched with `curl` on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The status the URL must answer with.
    #[serde(default = "default_status")]
    pub status: u16,
    /// A shell command (in the release) that must exit 0, instead of a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Time between attempts.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Give up (and roll back) when no attempt passed within this long.
    #[serde(default = "default_deadline")]
    pub deadline_seconds: u64,
}

fn default_status() -> u16 {
    200
}
fn default_interval_ms() -> u64 {
    500
}
fn default_deadline() -> u64 {
    30
}

impl HealthCheck {
    /// An HTTP check with default status (200), interval and deadline.
    pub fn http(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            status: default_status(),
            command: None,
            interval_ms: default_interval_ms(),
            deadline_seconds: default_deadline(),
        }
    }

    /// A command check with default interval and deadline.
    pub fn command(command: impl Into<String>) -> Self {
        Self {
            url: None,
            status: default_status(),
            command: Some(command.into()),
            interval_ms: default_interval_ms(),
            deadline_seconds: default_deadline(),
        }
    }
}

/// Where deploys are announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The environment variable holding the webhook URL. The URL is a
    /// secret (it is the credential), so it is never written in the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_env: Option<String>,
    /// Or a file holding the webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_file: Option<PathBuf>,
    /// Accept a plain `http://` webhook URL for a host other than this
    /// machine (the URL is the credential: over http anyone on the path
    /// reads it). Loopback URLs (`127.0.0.1`, `::1`, `localhost`) are
    /// always accepted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_sizes_parse_and_round_trip() {
        use super::ByteSize;
        for (text, bytes) in [
            ("1GiB", 1u64 << 30),
            ("1G", 1 << 30),
            ("512MiB", 512 << 20),
            ("1.5GiB", 3 << 29),
            ("2GB", 2_000_000_000),
            ("10", 10),
            ("10B", 10),
            (" 3 tib ", 3 << 40),
        ] {
            assert_eq!(ByteSize::parse(text).unwrap(), ByteSize(bytes), "{text}");
        }
        for bad in ["", "GiB", "1 parsec", "-1G", "1e400"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteSize(1 << 30).to_string(), "1.0GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        for size in [ByteSize(1 << 30), ByteSize(1_000_000_001), ByteSize(0)] {
            let json = serde_json::to_string(&size).unwrap();
            assert_eq!(
                serde_json::from_str::<ByteSize>(&json).unwrap(),
                size,
                "{json}"
            );
        }
    }

    use super::*;

    #[test]
    fn default_pattern_compiles_and_matches_versions() {
        let p = VersionPattern::default();
        assert!(p.matches("v1.2.3"));
        assert!(p.matches("v10.0.12"));
        assert!(!p.matches("v1.2"));
        assert!(!p.matches("1.2.3"));
        assert!(!p.matches("v1.2.3-rc1"));
    }

    #[test]
    fn deploy_paths_must_be_absolute_and_plain() {
        assert_eq!(DeployPath::new("/srv/app/").unwrap().as_str(), "/srv/app");
        for bad in ["srv/app", "/", "", "/srv/../etc", "/srv/./app"] {
            assert!(DeployPath::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_paths_stay_inside() {
        assert_eq!(SharedPath::new("public/uploads").unwrap().depth(), 1);
        for bad in ["", "/etc", "../x", "a/../../x", "a//b", "."] {
            assert!(SharedPath::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_have_units_and_bounds() {
        #[derive(Deserialize)]
        struct C {
            t: Timeouts,
        }
        let c: C = toml::from_str("t = { fetch = \"2m\" }").unwrap();
        assert_eq!(c.t.fetch.get(), Duration::from_secs(120));
        assert_eq!(c.t.lock, Timeouts::default().lock);
        for bad in [
            "t = { lock = 30 }",
            "t = { lock = \"0s\" }",
            "t = { lock = \"2d\" }",
            "t = { nope = \"1s\" }",
        ] {
            assert!(toml::from_str::<C>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_urls_with_credentials_are_refused_without_echoing_them() {
        #[derive(Debug, Deserialize)]
        struct C {
            #[serde(deserialize_with = "repository_url")]
            #[allow(dead_code)]
            r: Option<String>,
        }
        // The message (what the CLI shows, with file:line:column; not
        // toml's own rendering, which quotes the line).
        let e = toml::from_str::<C>("r = \"https://ci:SECRET@git.example.com/app.git\"")
            .unwrap_err()
            .message()
            .to_owned();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("credential"), "{e}");
        assert!(toml::from_str::<C>("r = \"git@github.com:acme/app.git\"").is_ok());
        assert!(toml::from_str::<C>("r = \"--upload-pack=touch /tmp/x\"").is_err());
    }

    #[test]
    fn bad_pattern_is_rejected() {
        assert!(VersionPattern::new("v(").is_err());
    }
}
