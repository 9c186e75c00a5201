//! What every command needs: the config, an EC2 client, resolved regions,
//! SSH options, and the output format.

use std::path::{Path, PathBuf};

use ec2kit::{AwsEc2, Region, SshOptions};

use crate::args::GlobalArgs;
use crate::config::{Config, RegionsError};
use crate::error::CliError;
use crate::output::OutputFormat;

/// The run's settings: command line over config over built-in defaults.
#[derive(Debug)]
pub(crate) struct Context {
    /// Global flags.
    pub global: GlobalArgs,
    /// The loaded config.
    pub config: Config,
    /// Cancelled on SIGINT/SIGTERM: long operations watch it and take
    /// their failure path.
    pub interrupt: ec2kit::CancellationToken,
}

impl Context {
    /// Loads the config named by (or found for) the command line.
    pub(crate) fn load(
        global: GlobalArgs,
        interrupt: ec2kit::CancellationToken,
    ) -> Result<Self, CliError> {
        let config = Config::load(global.config.as_deref())?;
        if let Some(path) = &config.path {
            tracing::debug!(config = %path.display(), "loaded config");
        }
        // Bad input stops here (exit 2), before anything is called: the
        // SDK panics on an empty endpoint and retries a malformed one as
        // if it were unreachable.
        if let Some(url) = &global.endpoint_url {
            ec2kit::aws::check_endpoint_url(url)
                .map_err(|e| CliError::Usage(format!("--endpoint-url: {e}")))?;
        }
        if let Some(arn) = &global.role_arn
            && !arn.starts_with("arn:")
        {
            return Err(CliError::Usage(format!(
                "--role-arn: {arn:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
            )));
        }
        if global
            .profile
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(CliError::Usage("--profile: empty profile name".into()));
        }
        Ok(Self {
            global,
            config,
            interrupt,
        })
    }

    /// The output format.
    pub(crate) fn output(&self) -> OutputFormat {
        self.global.output
    }

    /// An EC2 client configured from flags over the config's `[aws]`
    /// (assuming `--role-arn` when given).
    pub(crate) async fn ec2(&self) -> AwsEc2 {
        self.ec2_as(self.global.role_arn.clone()).await
    }

    /// An EC2 client that assumes `role` (none: the caller's own
    /// credentials), with an account's own rate-limit buckets.
    pub(crate) async fn ec2_as(&self, role: Option<String>) -> AwsEc2 {
        let mut options = self.config.aws.options();
        if role.is_some() {
            options.role_arn = role;
            options.external_id = self.global.external_id.clone().or_else(|| {
                self.config
                    .accounts
                    .as_ref()
                    .and_then(|a| a.external_id.clone())
            });
            options.session_name = self.global.role_session_name.clone();
        }
        if let Some(profile) = &self.global.profile {
            options.profile = Some(profile.clone());
        }
        if let Some(url) = &self.global.endpoint_url {
            options.endpoint_url = Some(url.clone());
        }
        if self.global.no_rate_limit {
            options.rate_limits = Some(ec2kit::RateLimits::disabled());
        }
        options.on_request = action_recorder(options.role_arn.as_deref());
        AwsEc2::new(options).await
    }

    /// The regions to work on: `--region`, else the config's `regions`,
    /// else the SDK's configured region. Names are resolved against one
    /// `DescribeRegions` call (exact, unique prefix, or `all`).
    pub(crate) async fn regions(&self, ec2: &AwsEc2) -> Result<Vec<Region>, CliError> {
        match self.config.regions_or(ec2, &self.global.regions).await {
            Ok(regions) => Ok(crate::fleet::exclude(regions, &self.global.exclude_region)),
            Err(RegionsError::Names(e)) => Err(e.into()),
            Err(RegionsError::Catalog(e)) => Err(e.into()),
            // A kind of failure this CLI does not know yet: bad input.
            Err(e) => Err(CliError::Usage(e.to_string())),
        }
    }

    /// The one region a command works in (`--region` naming one, or the
    /// config's or SDK's only region).
    pub(crate) async fn single_region(&self, ec2: &AwsEc2) -> Result<Region, CliError> {
        let mut regions = self.regions(ec2).await?;
        if regions.len() != 1 {
            let names: Vec<String> = regions.iter().map(ToString::to_string).collect();
            return Err(CliError::Usage(format!(
                "this command works in one region; got {}: pick one with --region",
                names.join(", ")
            )));
        }
        Ok(regions.remove(0))
    }

    /// SSH options: config over `~/.ssh` defaults.
    pub(crate) fn ssh_options(&self) -> SshOptions {
        self.config.ssh.options()
    }

    /// SSH options with a command's `--known-hosts` and `-i` flags over
    /// the config's (`~/` expanded).
    pub(crate) fn ssh_options_with(
        &self,
        known_hosts: Option<&Path>,
        identity: &[PathBuf],
    ) -> SshOptions {
        let mut options = self.ssh_options();
        if let Some(k) = known_hosts {
            options.known_hosts = expand_home(k);
        }
        if !identity.is_empty() {
            options.identity_files = identity.iter().map(|p| expand_home(p)).collect();
        }
        options
    }

    /// The login user for targets that name none.
    pub(crate) fn ssh_user(&self) -> String {
        self.config.ssh.user()
    }
}

/// With `EKTOOL_RECORD_ACTIONS=FILE`, every AWS request appends its IAM
/// action (`ec2:DescribeSnapshots`) to FILE: an audit of what a command
/// really calls, and how the IAM policy tests prove `ektool iam-policy`.
/// With `EKTOOL_RECORD_ACCOUNT_ACTIONS=FILE`, each line is `ACCOUNT ACTION`
/// (the account of the role the client assumes, `-` for the caller's
/// own): which account each call went to, in a run across accounts.
fn action_recorder(role: Option<&str>) -> Option<ec2kit::RequestHook> {
    let plain = std::env::var_os("EKTOOL_RECORD_ACTIONS");
    let by_account = std::env::var_os("EKTOOL_RECORD_ACCOUNT_ACTIONS");
    if plain.is_none() && by_account.is_none() {
        return None;
    }
    let account = role
        .and_then(ec2kit::accounts::AccountId::of_arn)
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    Some(ec2kit::RequestHook(std::sync::Arc::new(
        move |action: ec2kit::Action, _region: &Region| {
            let action = action.iam_action();
            if let Some(path) = &plain {
                append(path, &format!("{action}\n"));
            }
            if let Some(path) = &by_account {
                append(path, &format!("{account} {action}\n"));
            }
        },
    )))
}

/// Appends `line` to `path`: one write with O_APPEND, so concurrent
/// requests never interleave inside a line.
fn append(path: &std::ffi::OsStr, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the action");
    }
}

pub(crate) use crate::config::expand_home;
