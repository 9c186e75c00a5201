//! [`AwsEc2`]: the [`Ec2`] seam on aws-sdk-ec2 (feature `aws`).
//!
//! One SDK config is loaded once (default credential chain, optional
//! profile, optional endpoint override); one client per region is created
//! lazily and reused. Every request first passes the per-action, per-region
//! [`RateLimiter`]; what still bounces is retried with short jittered
//! backoff (the SDK's *standard* mode: its adaptive mode throttles the
//! client itself after one `RequestLimitExceeded` and spent ~20 s per
//! throttled call, although ektool already paces to AWS's buckets).
//! Pagination is done here by hand so each page is paced too.
//!
//! `CreateSnapshot`, `CreateSnapshots` and `CopySnapshot` take no client
//! token, so a retry after a lost response would make a second snapshot.
//! For them the SDK does not retry: each request carries a unique
//! [`TOKEN_TAG`], and before any retry that may follow an executed request
//! (a dropped connection, a timeout, a 5xx) the adapter looks the result
//! up by that tag and returns it if it exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig, retry::RetryConfig};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as sdk;

use crate::accounts::AccountId;
use crate::paginate::paginate;
use crate::requests::{
    CopyImage, CopySnapshot, CreateImage, CreateSnapshot, CreateSnapshots, CreateVolume,
    RegisterImage, RunInstances, TierRestore,
};
use crate::{
    Action, BlockDevice, Ec2, Ec2Error, ErrorKind, Filter, Image, ImageBlockDevice, ImageId,
    Instance, InstanceId, KmsKey, LaunchTemplateImage, RateLimiter, RateLimits, Region, RegionInfo,
    Snapshot, SnapshotId, SnapshotState, Tags, Volume, VolumeAttachment, VolumeId,
};

/// The region used for account-wide calls when none is configured.
pub const FALLBACK_REGION: &str = "us-east-1";

/// The tag a create call without a client token is found by after a lost
/// response: a fresh value per call, always (a value the request already
/// carries, e.g. copied over from a source snapshot's tags, is replaced:
/// it is not unique to this call).
pub const TOKEN_TAG: &str = "ektool:token";

/// Attempts per request when none is configured.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The most attempts per request accepted (more only stalls a failing run).
pub const MAX_ATTEMPTS_LIMIT: u32 = 20;

/// First retry waits up to this long (full jitter), doubling per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);

/// No retry waits longer than this.
const RETRY_CAP: Duration = Duration::from_secs(5);

/// An endpoint URL that cannot be used: empty, not `http(s)://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint URL {url:?}: {reason}")]
pub struct InvalidEndpoint {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks an endpoint override before the SDK sees it (the SDK panics on
/// an empty one and treats a malformed one as an unreachable endpoint,
/// retrying it).
pub fn check_endpoint_url(url: &str) -> Result<(), InvalidEndpoint> {
    let bad = |reason| {
        Err(InvalidEndpoint {
            url: url.to_owned(),
            reason,
        })
    };
    if url.trim().is_empty() {
        return bad("it is empty");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it holds spaces or control characters");
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return bad("it must start with http:// or https://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => return bad("an IPv6 address lacks its closing ]"),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("it names no host");
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return bad("the port is not a number from 0 to 65535");
    }
    Ok(())
}

/// How to reach EC2.
#[derive(Debug, Clone, Default)]
pub struct AwsEc2Options {
    /// Named profile from the shared AWS config files.
    pub profile: Option<String>,
    /// Endpoint override (e.g. a local moto server). The SDK's own
    /// `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL` work without this.
    pub endpoint_url: Option<String>,
    /// Region for account-wide calls (`DescribeRegions`); defaults to the
    /// SDK's region chain, then [`FALLBACK_REGION`].
    pub home_region: Option<String>,
    /// Client-side pacing.
    pub rate_limits: Option<RateLimits>,
    /// Attempts per request including the first (default
    /// [`DEFAULT_MAX_ATTEMPTS`]; clamped to 1..=[`MAX_ATTEMPTS_LIMIT`]).
    pub max_attempts: Option<u32>,
    /// Called before every request (each page too) with its action and
    /// region: an audit of what a command really calls (the IAM policy
    /// tests record with it).
    pub on_request: Option<RequestHook>,
    /// A role to assume (`sts:AssumeRole`) with the loaded credentials:
    /// every call then runs as that role, usually in another account
    /// (see [`crate::accounts`]). Its credentials are fetched on the first
    /// call and refreshed before they expire.
    pub role_arn: Option<String>,
    /// The external id the role's trust policy asks for (with `role_arn`).
    pub external_id: Option<String>,
    /// The session name CloudTrail shows for the assumed role (default
    /// [`DEFAULT_SESSION_NAME`]).
    pub session_name: Option<String>,
}

/// The session name of an assumed role when none is configured.
pub const DEFAULT_SESSION_NAME: &str = "ektool";

/// The function inside a [`RequestHook`].
pub type RequestFn = dyn Fn(Action, &Region) + Send + Sync;

/// A callback for [`AwsEc2Options::on_request`].
#[derive(Clone)]
pub struct RequestHook(pub Arc<RequestFn>);

impl std::fmt::Debug for RequestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHook")
    }
}

/// EC2 through aws-sdk-ec2.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What it was built from (for [`AwsEc2::with_role`]).
    options: AwsEc2Options,
    config: SdkConfig,
    home_region: Region,
    configured_region: Option<Region>,
    clients: Mutex<HashMap<String, Client>>,
    kms_clients: Mutex<HashMap<String, aws_sdk_kms::Client>>,
    elb_clients: Mutex<HashMap<String, aws_sdk_elasticloadbalancingv2::Client>>,
    limiter: RateLimiter,
    on_request: Option<RequestHook>,
    max_attempts: u32,
    /// An endpoint override that failed [`check_endpoint_url`]: every call
    /// fails with it instead of reaching a wrong or no endpoint.
    invalid_endpoint: Option<InvalidEndpoint>,
}

impl AwsEc2 {
    /// Loads the SDK configuration and builds the adapter. An invalid
    /// `endpoint_url` (see [`check_endpoint_url`]; check it first to
    /// report it as bad input) makes every call fail with
    /// [`ErrorKind::InvalidRequest`].
    pub async fn new(options: AwsEc2Options) -> Self {
        let kept = options.clone();
        let max_attempts = options
            .max_attempts
            .unwrap_or(DEFAULT_MAX_ATTEMPTS)
            .clamp(1, MAX_ATTEMPTS_LIMIT);
        let retry = RetryConfig::standard()
            .with_max_attempts(max_attempts)
            .with_initial_backoff(RETRY_BASE)
            .with_max_backoff(RETRY_CAP);
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(retry);
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        let mut invalid_endpoint = None;
        if let Some(url) = &options.endpoint_url {
            match check_endpoint_url(url) {
                Ok(()) => loader = loader.endpoint_url(url),
                Err(e) => invalid_endpoint = Some(e),
            }
        }
        if let Some(region) = &options.home_region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let mut config = loader.load().await;
        if let Some(role) = &options.role_arn {
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(role.clone())
                .session_name(
                    options
                        .session_name
                        .clone()
                        .unwrap_or_else(|| DEFAULT_SESSION_NAME.to_owned()),
                )
                .configure(&config);
            if let Some(id) = &options.external_id {
                provider = provider.external_id(id.clone());
            }
            if config.region().is_none() {
                provider = provider.region(aws_config::Region::new(FALLBACK_REGION));
            }
            let provider = provider.build().await;
            config = config
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
        }
        let configured_region = config.region().map(Region::new);
        let home = configured_region
            .clone()
            .unwrap_or_else(|| Region::new(FALLBACK_REGION));
        Self {
            inner: Arc::new(Inner {
                options: kept,
                config,
                home_region: home,
                configured_region,
                clients: Mutex::new(HashMap::new()),
                kms_clients: Mutex::new(HashMap::new()),
                elb_clients: Mutex::new(HashMap::new()),
                limiter: RateLimiter::new(options.rate_limits.unwrap_or_default()),
                on_request: options.on_request,
                max_attempts,
                invalid_endpoint,
            }),
        }
    }

    /// A client with the same settings (endpoint, profile, pacing, hook)
    /// working as `role_arn` instead, assumed with the same base
    /// credentials (not chained through this client's role): another
    /// account's client for an operation that spans two, like a source
    /// account's check reading its vault.
    pub async fn with_role(&self, role_arn: impl Into<String>) -> Self {
        let mut options = self.inner.options.clone();
        options.role_arn = Some(role_arn.into());
        Self::new(options).await
    }

    /// The region used for account-wide calls; also the natural default
    /// when the user names none.
    pub fn home_region(&self) -> &Region {
        &self.inner.home_region
    }

    /// The region the SDK's configuration chain named (`AWS_REGION`, the
    /// profile), if any.
    pub fn configured_region(&self) -> Option<&Region> {
        self.inner.configured_region.as_ref()
    }

    fn client(&self, region: &Region) -> Client {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.as_str().to_owned())
            .or_insert_with(|| {
                let conf = aws_sdk_ec2::config::Builder::from(&self.inner.config)
                    .region(aws_config::Region::new(region.as_str().to_owned()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }

    /// Paces, then hands a client for `region` to the call.
    async fn ready(&self, action: Action, region: &Region) -> Result<Client, Ec2Error> {
        self.attempt(action, region, 1).await
    }

    /// A client for attempt `n` of a call: the first is paced; a retry is
    /// not (it answers a refusal or a failure, like the SDK's own retries,
    /// and waits its backoff instead).
    async fn attempt(&self, action: Action, region: &Region, n: u32) -> Result<Client, Ec2Error> {
        if let Some(e) = &self.inner.invalid_endpoint {
            return Err(Ec2Error::new(
                action,
                region.as_str(),
                ErrorKind::InvalidRequest,
                e.to_string(),
            ));
        }
        if n <= 1 {
            self.inner.limiter.acquire(action, region.as_str()).await;
        }
        if let Some(hook) = &self.inner.on_request {
            (hook.0)(action, region);
        }
        Ok(self.client(region))
    }

    /// Runs a create call that has no client token at most once per
    /// attempt, retrying it here (never in the SDK: `send` disables its
    /// retries). Before a retry that may follow an executed request (no
    /// answer, a 5xx) the result is looked up with `lookup` (by the call's
    /// [`TOKEN_TAG`]) and returned if it exists; a throttled request was
    /// refused, so it is simply sent again. `lookup` is `None` when the
    /// request could not carry a token: then only refused requests are
    /// retried.
    async fn create_once<T, S, SF, L, LF>(&self, send: S, lookup: Option<L>) -> Result<T, Ec2Error>
    where
        S: Fn(u32) -> SF,
        SF: Future<Output = Result<T, Ec2Error>>,
        L: Fn() -> LF,
        LF: Future<Output = Result<Option<T>, Ec2Error>>,
    {
        let mut attempt = 1;
        loop {
            let err = match send(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let refused = matches!(err.kind, ErrorKind::Throttled);
            let maybe_done = matches!(err.kind, ErrorKind::Transport | ErrorKind::ServerError);
            if attempt >= self.inner.max_attempts || !(refused || maybe_done) {
                return Err(err);
            }
            if maybe_done {
                let Some(lookup) = &lookup else {
                    return Err(err);
                };
                if let Some(found) = look_up(lookup, &err).await? {
                    return Ok(found);
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn paced(&self, action: Action, region: &Region) {
        self.inner.limiter.acquire(action, region.as_str()).await;
        if let Some(hook) = &self.inner.on_request {
            (hook.0)(action, region);
        }
    }

    /// `DetachVolume`, naming the instance when known (some EC2
    /// implementations need it).
    async fn detach(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: Option<&InstanceId>,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::DetachVolume;
        self.ready(action, region)
            .await?
            .detach_volume()
            .volume_id(volume.as_str())
            .set_instance_id(instance.map(|i| i.as_str().to_owned()))
            .force(force)
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    /// The snapshots a create call with `token` made (see [`TOKEN_TAG`]).
    async fn by_token(&self, region: &Region, token: &str) -> Result<Vec<Snapshot>, Ec2Error> {
        self.describe_snapshots(region, &[Filter::new(format!("tag:{TOKEN_TAG}"), [token])])
            .await
    }

    /// Paces `action` (an Elastic Load Balancing one), then hands an ELBv2
    /// client for `region` to the call: the same SDK configuration
    /// (credentials, endpoint, retries), pacing and request hook as the
    /// EC2 calls.
    pub(crate) async fn elb_ready(
        &self,
        action: Action,
        region: &Region,
    ) -> Result<aws_sdk_elasticloadbalancingv2::Client, Ec2Error> {
        self.attempt(action, region, 1).await?;
        let mut clients = self
            .inner
            .elb_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(clients
            .entry(region.as_str().to_owned())
            .or_insert_with(|| {
                let conf =
                    aws_sdk_elasticloadbalancingv2::config::Builder::from(&self.inner.config)
                        .region(aws_config::Region::new(region.as_str().to_owned()))
                        .build();
                aws_sdk_elasticloadbalancingv2::Client::from_conf(conf)
            })
            .clone())
    }

    /// The account the credentials belong to (STS `GetCallerIdentity`, in
    /// the home region): with [`AwsEc2Options::role_arn`], the role's
    /// account. Paced like every call, but not passed to
    /// [`AwsEc2Options::on_request`]: IAM never denies it, so no policy
    /// lists it.
    pub async fn caller_account(&self) -> Result<AccountId, Ec2Error> {
        let action = Action::GetCallerIdentity;
        let region = self.home_region().clone();
        if let Some(e) = &self.inner.invalid_endpoint {
            return Err(Ec2Error::new(
                action,
                region.as_str(),
                ErrorKind::InvalidRequest,
                e.to_string(),
            ));
        }
        self.inner.limiter.acquire(action, region.as_str()).await;
        let conf = aws_sdk_sts::config::Builder::from(&self.inner.config)
            .region(aws_config::Region::new(region.as_str().to_owned()))
            .build();
        let out = aws_sdk_sts::Client::from_conf(conf)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        let account = out.account().unwrap_or_default();
        account.parse().map_err(|_| {
            Ec2Error::new(
                action,
                region.as_str(),
                ErrorKind::Other,
                format!("GetCallerIdentity answered no account id ({account:?})"),
            )
        })
    }

    fn kms_client(&self, region: &Region) -> aws_sdk_kms::Client {
        let mut clients = self
            .inner
            .kms_clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.as_str().to_owned())
            .or_insert_with(|| {
                let conf = aws_sdk_kms::config::Builder::from(&self.inner.config)
                    .region(aws_config::Region::new(region.as_str().to_owned()))
                    .build();
                aws_sdk_kms::Client::from_conf(conf)
            })
            .clone()
    }
}

/// A per-call override that turns the SDK's own retries off.
fn no_sdk_retry() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled())
}

/// Full-jitter exponential backoff: up to 100 ms, 200 ms, ... capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(RETRY_CAP);
    ceiling.mul_f64(fastrand::f64())
}

/// Whether the result of a maybe-executed create exists. EC2's listings
/// can lag its creates by a moment, so an empty answer is asked again
/// twice (1 s, then 2 s later) before the create is sent again. A lookup
/// that fails leaves the original error standing: without knowing, a
/// second create could make a duplicate.
async fn look_up<T, L, LF>(lookup: &L, original: &Ec2Error) -> Result<Option<T>, Ec2Error>
where
    L: Fn() -> LF,
    LF: Future<Output = Result<Option<T>, Ec2Error>>,
{
    for wait in [0u64, 1, 2] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        match lookup().await {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            Err(e) => {
                return Err(Ec2Error::new(
                    original.action,
                    original.region.clone(),
                    original.kind,
                    format!(
                        "{}; whether it was done is unknown (the lookup failed: {e})",
                        original.message.as_deref().unwrap_or("no answer")
                    ),
                )
                .with_source(e));
            }
        }
    }
    Ok(None)
}

/// A fresh token for a create request, set as its [`TOKEN_TAG`] (replacing
/// any value the tags brought along); `None` when the tag limit (50)
/// leaves no room for it.
fn with_token(tags: &mut Tags) -> Option<String> {
    if tags.get(TOKEN_TAG).is_none() && tags.len() >= 50 {
        return None;
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    tags.insert(TOKEN_TAG, token.clone());
    Some(token)
}

/// Whether a credentials provider failed somewhere in `err`'s sources:
/// the SDK reports missing or expired credentials as a dispatch failure.
fn credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            let mut text = c.to_string();
            let mut inner = std::error::Error::source(c);
            while let Some(i) = inner {
                text = format!("{text}: {i}");
                inner = i.source();
            }
            return Some(text);
        }
        cur = e.source();
    }
    None
}

pub(crate) fn map_err<E>(action: Action, region: &Region, err: SdkError<E>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let region = region.as_str();
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            match ctx.err().code() {
                Some(code) => {
                    let message = ctx.err().message().map(str::to_owned);
                    Ec2Error::from_code(action, region, code, message).with_source(err)
                }
                None if status >= 500 => Ec2Error::new(
                    action,
                    region,
                    ErrorKind::ServerError,
                    format!("HTTP {status}"),
                )
                .with_source(err),
                None => Ec2Error::new(action, region, ErrorKind::Other, format!("HTTP {status}"))
                    .with_source(err),
            }
        }
        SdkError::TimeoutError(_) => {
            Ec2Error::new(action, region, ErrorKind::Transport, "request timed out")
                .with_source(err)
        }
        SdkError::DispatchFailure(_) => match credentials_failure(&err) {
            Some(why) => Ec2Error::new(
                action,
                region,
                ErrorKind::Credentials,
                format!("no usable AWS credentials ({why})"),
            ),
            None => Ec2Error::new(
                action,
                region,
                ErrorKind::Transport,
                "could not reach the endpoint",
            )
            .with_source(err),
        },
        SdkError::ResponseError(_) => {
            Ec2Error::new(action, region, ErrorKind::Transport, "unreadable response")
                .with_source(err)
        }
        SdkError::ConstructionFailure(_) => Ec2Error::new(
            action,
            region,
            ErrorKind::InvalidRequest,
            "could not build the request",
        )
        .with_source(err),
        _ => Ec2Error::new(action, region, ErrorKind::Other, "request failed").with_source(err),
    }
}

// ---- conversions -----------------------------------------------------------

fn ts(t: Option<&aws_smithy_types::DateTime>) -> Option<jiff::Timestamp> {
    t.and_then(|t| jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok())
}

fn tags_from(tags: &[sdk::Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn tag_spec(kind: sdk::ResourceType, tags: &Tags) -> Option<sdk::TagSpecification> {
    if tags.is_empty() {
        return None;
    }
    let tags = tags
        .iter()
        .map(|(k, v)| sdk::Tag::builder().key(k).value(v).build())
        .collect();
    Some(
        sdk::TagSpecification::builder()
            .resource_type(kind)
            .set_tags(Some(tags))
            .build(),
    )
}

fn filters(filters: &[Filter]) -> Option<Vec<sdk::Filter>> {
    if filters.is_empty() {
        return None;
    }
    Some(
        filters
            .iter()
            .map(|f| {
                sdk::Filter::builder()
                    .name(&f.name)
                    .set_values(Some(f.values.clone()))
                    .build()
            })
            .collect(),
    )
}

fn progress(p: Option<&str>) -> Option<u8> {
    p.and_then(|p| p.trim_end_matches('%').trim().parse().ok())
}

fn state(s: Option<&sdk::SnapshotState>) -> SnapshotState {
    s.map(|s| {
        s.as_str()
            .parse()
            .unwrap_or(SnapshotState::Unknown(String::new()))
    })
    .unwrap_or(SnapshotState::Unknown(String::new()))
}

// The SDK has three snapshot shapes (Snapshot, CreateSnapshotOutput,
// SnapshotInfo) with the same accessors; one macro reads them all.
macro_rules! snapshot_from {
    ($s:expr, $region:expr) => {{
        let s = $s;
        let start_time = ts(s.start_time()).unwrap_or_else(jiff::Timestamp::now);
        Snapshot {
            id: SnapshotId::from_api(s.snapshot_id().unwrap_or_default()),
            volume_id: s.volume_id().map(VolumeId::from_api),
            start_time,
            state: state(s.state()),
            tags: tags_from(s.tags()),
            region: Some($region.clone()),
            progress: progress(s.progress()),
            state_message: s.state_message().map(Into::into),
            volume_size_gib: s.volume_size(),
            encrypted: s.encrypted().unwrap_or(false),
            kms_key_id: s.kms_key_id().map(Into::into),
            description: s.description().map(Into::into),
            owner_id: s.owner_id().map(Into::into),
            storage_tier: s
                .storage_tier()
                .map_or(crate::StorageTier::Standard, |t| t.as_str().into()),
        }
    }};
}

fn snapshot_info(s: &sdk::SnapshotInfo, region: &Region) -> Snapshot {
    let start_time = ts(s.start_time()).unwrap_or_else(jiff::Timestamp::now);
    Snapshot {
        id: SnapshotId::from_api(s.snapshot_id().unwrap_or_default()),
        volume_id: s.volume_id().map(VolumeId::from_api),
        start_time,
        state: state(s.state()),
        tags: tags_from(s.tags()),
        region: Some(region.clone()),
        progress: progress(s.progress()),
        state_message: None,
        volume_size_gib: s.volume_size(),
        encrypted: s.encrypted().unwrap_or(false),
        kms_key_id: None,
        description: s.description().map(Into::into),
        owner_id: s.owner_id().map(Into::into),
        storage_tier: crate::StorageTier::Standard,
    }
}

fn instance_from(i: &sdk::Instance, region: &Region, reservation: Option<&str>) -> Instance {
    Instance {
        id: InstanceId::from_api(i.instance_id().unwrap_or_default()),
        region: region.clone(),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_owned),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        instance_type: i.instance_type().map(|t| t.as_str().to_owned()),
        architecture: i.architecture().map(|a| a.as_str().to_owned()),
        root_device_name: i.root_device_name().map(str::to_owned),
        virtualization_type: i.virtualization_type().map(|v| v.as_str().to_owned()),
        ena_support: i.ena_support(),
        image_id: i.image_id().map(str::to_owned),
        key_name: i.key_name().map(str::to_owned),
        private_ip: i.private_ip_address().map(str::to_owned),
        public_ip: i.public_ip_address().map(str::to_owned),
        public_dns: i
            .public_dns_name()
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        private_dns: i
            .private_dns_name()
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        launch_time: ts(i.launch_time()),
        reservation_id: reservation.map(str::to_owned),
        block_devices: i
            .block_device_mappings()
            .iter()
            .filter_map(|b| {
                let ebs = b.ebs()?;
                Some(BlockDevice {
                    device_name: b.device_name()?.to_owned(),
                    volume_id: VolumeId::from_api(ebs.volume_id()?),
                    delete_on_termination: ebs.delete_on_termination(),
                })
            })
            .collect(),
        tags: tags_from(i.tags()),
    }
}

macro_rules! volume_from {
    ($v:expr, $region:expr) => {{
        let v = $v;
        Volume {
            id: VolumeId::from_api(v.volume_id().unwrap_or_default()),
            region: $region.clone(),
            availability_zone: v.availability_zone().map(str::to_owned),
            state: v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            size_gib: v.size(),
            volume_type: v.volume_type().map(|t| t.as_str().to_owned()),
            encrypted: v.encrypted().unwrap_or(false),
            kms_key_id: v.kms_key_id().map(str::to_owned),
            snapshot_id: v
                .snapshot_id()
                .filter(|s| !s.is_empty())
                .map(SnapshotId::from_api),
            create_time: ts(v.create_time()),
            attachments: v
                .attachments()
                .iter()
                .filter_map(|a| {
                    Some(VolumeAttachment {
                        instance_id: InstanceId::from_api(a.instance_id()?),
                        device: a.device().map(str::to_owned),
                        state: a.state().map(|s| s.as_str().to_owned()),
                    })
                })
                .collect(),
            tags: tags_from(v.tags()),
        }
    }};
}

fn image_from(i: &sdk::Image, region: &Region) -> Image {
    Image {
        id: ImageId::from_api(i.image_id().unwrap_or_default()),
        region: region.clone(),
        name: i.name().map(str::to_owned),
        description: i.description().map(str::to_owned),
        state: i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        architecture: i.architecture().map(|a| a.as_str().to_owned()),
        root_device_name: i.root_device_name().map(str::to_owned),
        virtualization_type: i.virtualization_type().map(|v| v.as_str().to_owned()),
        ena_support: i.ena_support(),
        creation_date: i.creation_date().map(str::to_owned),
        owner_id: i.owner_id().map(str::to_owned),
        block_devices: i
            .block_device_mappings()
            .iter()
            .map(|b| ImageBlockDevice {
                device_name: b.device_name().unwrap_or_default().to_owned(),
                snapshot_id: b
                    .ebs()
                    .and_then(|e| e.snapshot_id())
                    .map(SnapshotId::from_api),
                volume_size_gib: b.ebs().and_then(|e| e.volume_size()),
                volume_type: b
                    .ebs()
                    .and_then(|e| e.volume_type())
                    .map(|t| t.as_str().to_owned()),
                delete_on_termination: b.ebs().and_then(|e| e.delete_on_termination()),
            })
            .collect(),
        tags: tags_from(i.tags()),
    }
}

fn image_block_device(b: &ImageBlockDevice) -> sdk::BlockDeviceMapping {
    let mut ebs = sdk::EbsBlockDevice::builder()
        .set_snapshot_id(b.snapshot_id.as_ref().map(|s| s.to_string()))
        .set_volume_size(b.volume_size_gib)
        .set_delete_on_termination(b.delete_on_termination);
    if let Some(t) = &b.volume_type {
        ebs = ebs.volume_type(sdk::VolumeType::from(t.as_str()));
    }
    sdk::BlockDeviceMapping::builder()
        .device_name(&b.device_name)
        .ebs(ebs.build())
        .build()
}

fn ids<T: ToString>(ids: &[T]) -> Option<Vec<String>> {
    Some(ids.iter().map(ToString::to_string).collect())
}

// ---- the seam -------------------------------------------------------------

#[async_trait]
impl Ec2 for AwsEc2 {
    async fn describe_regions(&self) -> Result<Vec<RegionInfo>, Ec2Error> {
        let region = self.home_region().clone();
        let action = Action::DescribeRegions;
        let out = self
            .ready(action, &region)
            .await?
            .describe_regions()
            .all_regions(true)
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        Ok(out
            .regions()
            .iter()
            .filter_map(|r| {
                Some(RegionInfo {
                    name: Region::new(r.region_name()?),
                    endpoint: r.endpoint().map(str::to_owned),
                    opt_in_status: r.opt_in_status().map(str::to_owned),
                })
            })
            .collect())
    }

    async fn describe_instances(
        &self,
        region: &Region,
        f: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error> {
        let action = Action::DescribeInstances;
        paginate(action, region.as_str(), |token| async move {
            let page = self
                .ready(action, region)
                .await?
                .describe_instances()
                .set_filters(filters(f))
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            let items = page
                .reservations()
                .iter()
                .flat_map(|r| {
                    r.instances()
                        .iter()
                        .map(|i| instance_from(i, region, r.reservation_id()))
                })
                .collect();
            Ok((items, page.next_token().map(str::to_owned)))
        })
        .await
    }

    async fn termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
    ) -> Result<bool, Ec2Error> {
        let action = Action::DescribeInstanceAttribute;
        let out = self
            .ready(action, region)
            .await?
            .describe_instance_attribute()
            .instance_id(instance.as_str())
            .attribute(sdk::InstanceAttributeName::DisableApiTermination)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(out
            .disable_api_termination()
            .and_then(|v| v.value())
            .unwrap_or(false))
    }

    async fn describe_volumes(
        &self,
        region: &Region,
        f: &[Filter],
    ) -> Result<Vec<Volume>, Ec2Error> {
        let action = Action::DescribeVolumes;
        paginate(action, region.as_str(), |token| async move {
            let page = self
                .ready(action, region)
                .await?
                .describe_volumes()
                .set_filters(filters(f))
                .max_results(500)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok((
                page.volumes()
                    .iter()
                    .map(|v| volume_from!(v, region))
                    .collect(),
                page.next_token().map(str::to_owned),
            ))
        })
        .await
    }

    async fn describe_snapshots(
        &self,
        region: &Region,
        f: &[Filter],
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        let action = Action::DescribeSnapshots;
        paginate(action, region.as_str(), |token| async move {
            let page = self
                .ready(action, region)
                .await?
                .describe_snapshots()
                .owner_ids("self")
                .set_filters(filters(f))
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok((
                page.snapshots()
                    .iter()
                    .map(|s| snapshot_from!(s, region))
                    .collect(),
                page.next_token().map(str::to_owned),
            ))
        })
        .await
    }

    async fn describe_images(&self, region: &Region, f: &[Filter]) -> Result<Vec<Image>, Ec2Error> {
        let action = Action::DescribeImages;
        paginate(action, region.as_str(), |token| async move {
            let page = self
                .ready(action, region)
                .await?
                .describe_images()
                .owners("self")
                .set_filters(filters(f))
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok((
                page.images()
                    .iter()
                    .map(|i| image_from(i, region))
                    .collect(),
                page.next_token().map(str::to_owned),
            ))
        })
        .await
    }

    async fn create_snapshot(
        &self,
        region: &Region,
        r: &CreateSnapshot,
    ) -> Result<Snapshot, Ec2Error> {
        let action = Action::CreateSnapshot;
        let mut tags = r.tags.clone();
        let token = (!r.dry_run).then(|| with_token(&mut tags)).flatten();
        let tags = &tags;
        let send = |n| async move {
            let out = self
                .attempt(action, region, n)
                .await?
                .create_snapshot()
                .set_volume_id(r.volume_id.as_ref().map(|v| v.to_string()))
                .set_description(r.description.clone())
                .set_tag_specifications(
                    tag_spec(sdk::ResourceType::Snapshot, tags).map(|t| vec![t]),
                )
                .dry_run(r.dry_run)
                .customize()
                .config_override(no_sdk_retry())
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok(snapshot_from!(&out, region))
        };
        let lookup = token.map(|t| {
            move || {
                let t = t.clone();
                async move { Ok(self.by_token(region, &t).await?.into_iter().next()) }
            }
        });
        self.create_once(send, lookup).await
    }

    async fn create_snapshots(
        &self,
        region: &Region,
        r: &CreateSnapshots,
    ) -> Result<Vec<Snapshot>, Ec2Error> {
        let action = Action::CreateSnapshots;
        let mut tags = r.tags.clone();
        let token = (!r.dry_run).then(|| with_token(&mut tags)).flatten();
        let tags = &tags;
        let send = |n| async move {
            let spec = sdk::InstanceSpecification::builder()
                .set_instance_id(r.instance_id.as_ref().map(|i| i.to_string()))
                .exclude_boot_volume(r.exclude_boot_volume)
                .set_exclude_data_volume_ids(if r.exclude_data_volume_ids.is_empty() {
                    None
                } else {
                    ids(&r.exclude_data_volume_ids)
                })
                .build();
            let mut req = self
                .attempt(action, region, n)
                .await?
                .create_snapshots()
                .instance_specification(spec)
                .set_description(r.description.clone())
                .set_tag_specifications(
                    tag_spec(sdk::ResourceType::Snapshot, tags).map(|t| vec![t]),
                )
                .dry_run(r.dry_run);
            if r.copy_tags_from_volume {
                req = req.copy_tags_from_source(sdk::CopyTagsFromSource::Volume);
            }
            let out = req
                .customize()
                .config_override(no_sdk_retry())
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok(out
                .snapshots()
                .iter()
                .map(|s| snapshot_info(s, region))
                .collect())
        };
        let lookup = token.map(|t| {
            move || {
                let t = t.clone();
                async move {
                    let found = self.by_token(region, &t).await?;
                    Ok((!found.is_empty()).then_some(found))
                }
            }
        });
        self.create_once(send, lookup).await
    }

    async fn create_tags(
        &self,
        region: &Region,
        resources: &[String],
        tags: &Tags,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::CreateTags;
        let tags = tags
            .iter()
            .map(|(k, v)| sdk::Tag::builder().key(k).value(v).build())
            .collect();
        self.ready(action, region)
            .await?
            .create_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(tags))
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn delete_tags(
        &self,
        region: &Region,
        resources: &[String],
        keys: &[String],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::DeleteTags;
        let tags = keys
            .iter()
            .map(|k| sdk::Tag::builder().key(k).build())
            .collect();
        self.ready(action, region)
            .await?
            .delete_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(tags))
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn delete_snapshot(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::DeleteSnapshot;
        self.ready(action, region)
            .await?
            .delete_snapshot()
            .snapshot_id(snapshot.as_str())
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn copy_snapshot(
        &self,
        region: &Region,
        r: &CopySnapshot,
    ) -> Result<SnapshotId, Ec2Error> {
        let action = Action::CopySnapshot;
        let mut tags = r.tags.clone();
        let token = (!r.dry_run).then(|| with_token(&mut tags)).flatten();
        let tags = &tags;
        let send = |n| async move {
            let out = self
                .attempt(action, region, n)
                .await?
                .copy_snapshot()
                .set_source_region(r.source_region.as_ref().map(|r| r.to_string()))
                .set_source_snapshot_id(r.source_snapshot_id.as_ref().map(|s| s.to_string()))
                .set_description(r.description.clone())
                .set_encrypted(r.encrypted.then_some(true))
                .set_kms_key_id(r.kms_key_id.clone())
                .set_tag_specifications(
                    tag_spec(sdk::ResourceType::Snapshot, tags).map(|t| vec![t]),
                )
                .dry_run(r.dry_run)
                .customize()
                .config_override(no_sdk_retry())
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok(SnapshotId::from_api(out.snapshot_id().unwrap_or_default()))
        };
        let lookup = token.map(|t| {
            move || {
                let t = t.clone();
                async move {
                    Ok(self
                        .by_token(region, &t)
                        .await?
                        .into_iter()
                        .next()
                        .map(|s| s.id))
                }
            }
        });
        self.create_once(send, lookup).await
    }

    async fn register_image(
        &self,
        region: &Region,
        r: &RegisterImage,
    ) -> Result<ImageId, Ec2Error> {
        let action = Action::RegisterImage;
        let out = self
            .ready(action, region)
            .await?
            .register_image()
            .name(&r.name)
            .set_description(r.description.clone())
            .set_architecture(r.architecture.as_deref().map(sdk::ArchitectureValues::from))
            .set_root_device_name(r.root_device_name.clone())
            .set_virtualization_type(r.virtualization_type.clone())
            .set_ena_support(r.ena_support)
            .set_block_device_mappings(Some(
                r.block_devices.iter().map(image_block_device).collect(),
            ))
            .set_tag_specifications(tag_spec(sdk::ResourceType::Image, &r.tags).map(|t| vec![t]))
            .dry_run(r.dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(ImageId::from_api(out.image_id().unwrap_or_default()))
    }

    async fn deregister_image(
        &self,
        region: &Region,
        image: &ImageId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::DeregisterImage;
        self.ready(action, region)
            .await?
            .deregister_image()
            .image_id(image.as_str())
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn copy_image(&self, region: &Region, r: &CopyImage) -> Result<ImageId, Ec2Error> {
        let action = Action::CopyImage;
        let specs = [
            tag_spec(sdk::ResourceType::Image, &r.tags),
            tag_spec(sdk::ResourceType::Snapshot, &r.tags),
        ];
        let specs: Vec<_> = specs.into_iter().flatten().collect();
        let out = self
            .ready(action, region)
            .await?
            .copy_image()
            .set_source_region(r.source_region.as_ref().map(|r| r.to_string()))
            .set_source_image_id(r.source_image_id.as_ref().map(|i| i.to_string()))
            .name(&r.name)
            .set_description(r.description.clone())
            .set_encrypted(r.encrypted.then_some(true))
            .set_kms_key_id(r.kms_key_id.clone())
            .set_client_token(r.client_token.clone())
            .set_tag_specifications((!specs.is_empty()).then_some(specs))
            .dry_run(r.dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(ImageId::from_api(out.image_id().unwrap_or_default()))
    }

    async fn create_volume(&self, region: &Region, r: &CreateVolume) -> Result<Volume, Ec2Error> {
        let action = Action::CreateVolume;
        let out = self
            .ready(action, region)
            .await?
            .create_volume()
            .availability_zone(&r.availability_zone)
            .set_snapshot_id(r.snapshot_id.as_ref().map(|s| s.to_string()))
            .set_size(r.size_gib)
            .set_volume_type(r.volume_type.as_deref().map(sdk::VolumeType::from))
            .set_encrypted(r.encrypted.then_some(true))
            .set_kms_key_id(r.kms_key_id.clone())
            .set_client_token(r.client_token.clone())
            .set_tag_specifications(tag_spec(sdk::ResourceType::Volume, &r.tags).map(|t| vec![t]))
            .dry_run(r.dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(volume_from!(&out, region))
    }

    async fn attach_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::AttachVolume;
        self.ready(action, region)
            .await?
            .attach_volume()
            .volume_id(volume.as_str())
            .instance_id(instance.as_str())
            .device(device)
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn detach_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.detach(region, volume, None, force, dry_run).await
    }

    async fn detach_volume_from(
        &self,
        region: &Region,
        volume: &VolumeId,
        instance: &InstanceId,
        force: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        self.detach(region, volume, Some(instance), force, dry_run)
            .await
    }

    async fn delete_volume(
        &self,
        region: &Region,
        volume: &VolumeId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::DeleteVolume;
        self.ready(action, region)
            .await?
            .delete_volume()
            .volume_id(volume.as_str())
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn reboot_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::RebootInstances;
        self.ready(action, region)
            .await?
            .reboot_instances()
            .set_instance_ids(ids(instances))
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn set_termination_protection(
        &self,
        region: &Region,
        instance: &InstanceId,
        enabled: bool,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::ModifyInstanceAttribute;
        self.ready(action, region)
            .await?
            .modify_instance_attribute()
            .instance_id(instance.as_str())
            .disable_api_termination(sdk::AttributeBooleanValue::builder().value(enabled).build())
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn run_instances(
        &self,
        region: &Region,
        r: &RunInstances,
    ) -> Result<Vec<Instance>, Ec2Error> {
        let action = Action::RunInstances;
        let specs = [
            tag_spec(sdk::ResourceType::Instance, &r.tags),
            tag_spec(sdk::ResourceType::Volume, &r.tags),
        ];
        let specs: Vec<_> = specs.into_iter().flatten().collect();
        let count = r.count.max(1);
        let out = self
            .ready(action, region)
            .await?
            .run_instances()
            .set_image_id(r.image_id.as_ref().map(|i| i.to_string()))
            .instance_type(sdk::InstanceType::from(r.instance_type.as_str()))
            .min_count(count)
            .max_count(count)
            .set_key_name(r.key_name.clone())
            .set_security_group_ids(
                (!r.security_group_ids.is_empty()).then(|| r.security_group_ids.clone()),
            )
            .set_subnet_id(r.subnet_id.clone())
            .set_private_ip_address(r.private_ip.map(|ip| ip.to_string()))
            .set_placement(
                r.availability_zone
                    .as_ref()
                    .map(|az| sdk::Placement::builder().availability_zone(az).build()),
            )
            .set_user_data(r.user_data.as_deref().map(aws_smithy_types::base64::encode))
            .set_client_token(r.client_token.clone())
            .set_tag_specifications((!specs.is_empty()).then_some(specs))
            .dry_run(r.dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(out
            .instances()
            .iter()
            .map(|i| instance_from(i, region, out.reservation_id()))
            .collect())
    }

    async fn describe_kms_key(&self, region: &Region, key_id: &str) -> Result<KmsKey, Ec2Error> {
        let action = Action::DescribeKey;
        self.paced(action, region).await;
        let out = self
            .kms_client(region)
            .describe_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        let meta = out.key_metadata().ok_or_else(|| {
            Ec2Error::from_code(
                action,
                region.as_str(),
                "NotFoundException",
                Some(format!("no metadata for key {key_id}")),
            )
        })?;
        let mut key = KmsKey::new(
            meta.key_id(),
            meta.key_state().map_or("Unknown", |s| s.as_str()),
        );
        key.arn = meta.arn().map(str::to_owned);
        key.usage = meta.key_usage().map(|u| u.as_str().to_owned());
        key.spec = meta.key_spec().map(|u| u.as_str().to_owned());
        key.manager = meta.key_manager().map(|m| m.as_str().to_owned());
        Ok(key)
    }

    async fn terminate_instances(
        &self,
        region: &Region,
        instances: &[InstanceId],
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::TerminateInstances;
        self.ready(action, region)
            .await?
            .terminate_instances()
            .set_instance_ids(ids(instances))
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn modify_snapshot_tier(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::ModifySnapshotTier;
        self.ready(action, region)
            .await?
            .modify_snapshot_tier()
            .snapshot_id(snapshot.as_str())
            .storage_tier(sdk::TargetStorageTier::Archive)
            .dry_run(dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn restore_snapshot_tier(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        restore: &TierRestore,
        dry_run: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::RestoreSnapshotTier;
        let req = self
            .ready(action, region)
            .await?
            .restore_snapshot_tier()
            .snapshot_id(snapshot.as_str())
            .dry_run(dry_run);
        let req = match restore {
            TierRestore::Temporary { days } => req.temporary_restore_days(i32::from(*days)),
            TierRestore::Permanent => req.permanent_restore(true),
        };
        req.send().await.map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn share_snapshot(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
        account: &AccountId,
        share: bool,
    ) -> Result<(), Ec2Error> {
        let action = Action::ModifySnapshotAttribute;
        let operation = if share {
            sdk::OperationType::Add
        } else {
            sdk::OperationType::Remove
        };
        self.ready(action, region)
            .await?
            .modify_snapshot_attribute()
            .snapshot_id(snapshot.as_str())
            .attribute(sdk::SnapshotAttributeName::CreateVolumePermission)
            .operation_type(operation)
            .user_ids(account.as_str())
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(())
    }

    async fn snapshot_shared_with(
        &self,
        region: &Region,
        snapshot: &SnapshotId,
    ) -> Result<Vec<AccountId>, Ec2Error> {
        let action = Action::DescribeSnapshotAttribute;
        let out = self
            .ready(action, region)
            .await?
            .describe_snapshot_attribute()
            .snapshot_id(snapshot.as_str())
            .attribute(sdk::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(out
            .create_volume_permissions()
            .iter()
            .filter_map(|p| p.user_id()?.parse().ok())
            .collect())
    }

    async fn create_image(&self, region: &Region, r: &CreateImage) -> Result<ImageId, Ec2Error> {
        let action = Action::CreateImage;
        let specs = [
            tag_spec(sdk::ResourceType::Image, &r.tags),
            tag_spec(sdk::ResourceType::Snapshot, &r.snapshot_tags),
        ];
        let specs: Vec<_> = specs.into_iter().flatten().collect();
        let out = self
            .ready(action, region)
            .await?
            .create_image()
            .set_instance_id(r.instance_id.as_ref().map(|i| i.to_string()))
            .name(&r.name)
            .set_description(r.description.clone())
            .no_reboot(r.no_reboot)
            .set_tag_specifications((!specs.is_empty()).then_some(specs))
            .dry_run(r.dry_run)
            .send()
            .await
            .map_err(|e| map_err(action, region, e))?;
        Ok(ImageId::from_api(out.image_id().unwrap_or_default()))
    }

    async fn launch_template_images(
        &self,
        region: &Region,
    ) -> Result<Vec<LaunchTemplateImage>, Ec2Error> {
        let action = Action::DescribeLaunchTemplates;
        let templates = paginate(action, region.as_str(), |token| async move {
            let page = self
                .ready(action, region)
                .await?
                .describe_launch_templates()
                .max_results(200)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| map_err(action, region, e))?;
            Ok((
                page.launch_templates()
                    .iter()
                    .filter_map(|t| t.launch_template_id().map(str::to_owned))
                    .collect::<Vec<String>>(),
                page.next_token().map(str::to_owned),
            ))
        })
        .await?;
        let action = Action::DescribeLaunchTemplateVersions;
        let mut out = Vec::new();
        for id in &templates {
            let versions = paginate(action, region.as_str(), |token| async move {
                let page = self
                    .ready(action, region)
                    .await?
                    .describe_launch_template_versions()
                    .launch_template_id(id)
                    .max_results(200)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| map_err(action, region, e))?;
                Ok((
                    page.launch_template_versions()
                        .iter()
                        .filter_map(|v| {
                            let image = v.launch_template_data()?.image_id()?;
                            Some(LaunchTemplateImage {
                                template_id: id.clone(),
                                template_name: v.launch_template_name().map(str::to_owned),
                                version: v.version_number().unwrap_or_default(),
                                image: image.to_owned(),
                            })
                        })
                        .collect::<Vec<_>>(),
                    page.next_token().map(str::to_owned),
                ))
            })
            .await?;
            out.extend(versions);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_checked() {
        for ok in [
            "http://127.0.0.1:5000",
            "https://ec2.eu-west-1.amazonaws.com",
            "http://[::1]:5000/",
            "http://localhost",
        ] {
            check_endpoint_url(ok).unwrap();
        }
        for bad in [
            "",
            " ",
            "localhost:5000",
            "http://",
            "http://:80",
            "ftp://h",
            "http://h:x",
            "http://h:70000",
            "http://[::1",
            "http://h /x",
        ] {
            assert!(check_endpoint_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_is_short_jittered_and_capped() {
        for attempt in 1..40 {
            let b = backoff(attempt);
            assert!(b <= RETRY_CAP, "{attempt}: {b:?}");
        }
        assert!(backoff(1) <= RETRY_BASE);
    }

    #[test]
    fn every_request_gets_its_own_token_within_the_tag_limit() {
        let mut tags = Tags::new().with("a", "1");
        let t = with_token(&mut tags).unwrap();
        assert_eq!(tags.get(TOKEN_TAG), Some(t.as_str()));
        // A token carried over (from a source snapshot's tags) is replaced:
        // copies of one set's snapshots must not share one.
        let again = with_token(&mut tags).unwrap();
        assert_ne!(again, t);
        assert_eq!(tags.get(TOKEN_TAG), Some(again.as_str()));
        assert_eq!(tags.len(), 2);
        let mut full: Tags = (0..50).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(with_token(&mut full), None);
        assert_eq!(full.len(), 50);
    }

    proptest::proptest! {
        #[test]
        fn endpoint_checking_never_panics(url in "\\PC{0,40}|(https?://)?[a-z0-9:.\\[\\]@/]{0,30}") {
            let _ = check_endpoint_url(&url);
        }
    }
}
