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
    /// `--account`: the one account the command works in.
    pub account: Option<ec2kit::AccountId>,
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
        let account = match &global.account {
            Some(id) => Some(
                id.parse::<ec2kit::AccountId>()
                    .map_err(|e| CliError::Usage(format!("--account: {e}")))?,
            ),
            None => None,
        };
        if let (Some(id), Some(arn)) = (&account, &global.role_arn)
            && ec2kit::AccountId::of_arn(arn).as_ref() != Some(id)
        {
            return Err(CliError::Usage(format!(
                "--role-arn {arn} is not a role in account {id} (--account)"
            )));
        }
        Ok(Self {
            global,
            config,
            account,
            interrupt,
        })
    }

    /// With `--account` and no `--role-arn`: checks that the ambient
    /// credentials belong to that account (STS GetCallerIdentity), before
    /// any other call. Another account's credentials are bad input.
    pub(crate) async fn check_account(&self) -> Result<(), CliError> {
        let Some(id) = &self.account else {
            return Ok(());
        };
        if self.global.role_arn.is_some() {
            // Checked in `load`: the role is in the account.
            return Ok(());
        }
        let caller = self.ec2_as(None).await.caller_account().await?;
        if &caller != id {
            return Err(CliError::Usage(format!(
                "--account {id}: the credentials in use belong to account {caller}; run with \
                 {id}'s own credentials or --role-arn arn:aws:iam::{id}:role/NAME"
            )));
        }
        Ok(())
    }

    /// `[vault]`, when `--account` (or the account of `--role-arn`) is the
    /// vault account: the command works on the vault's copies (its own
    /// retention, lineages per source account).
    pub(crate) fn in_vault(&self) -> Option<&crate::config::VaultConfig> {
        let vault = self.config.vault.as_ref()?;
        (self.role_account()? == vault.account).then_some(vault)
    }

    /// The account `--account` (or `--role-arn`) names when no accounts
    /// are in play (rows, JSON objects and metrics then carry it, as with
    /// accounts).
    pub(crate) fn role_account(&self) -> Option<ec2kit::AccountId> {
        self.account.clone().or_else(|| {
            self.global
                .role_arn
                .as_deref()
                .and_then(ec2kit::AccountId::of_arn)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vault(role: Option<&str>) -> crate::config::VaultConfig {
        let role = role.map_or_else(String::new, |r| format!("role = \"{r}\"\n"));
        let text = format!("[vault]\naccount = \"999999999999\"\n{role}");
        Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .vault
            .unwrap()
    }

    /// Trim in the vault refuses the copy role of any source account.
    #[test]
    fn the_copy_role_is_recognised_with_or_without_a_source() {
        let source: ec2kit::AccountId = "111111111111".parse().unwrap();
        let plain = vault(None);
        let arn = "arn:aws:iam::999999999999:role/ektool-vault-copy";
        assert_eq!(plain.copy_role(&source), arn);
        assert!(plain.is_copy_role(arn));
        assert!(!plain.is_copy_role("arn:aws:iam::999999999999:role/ektool-vault-keep"));
        let per_source = vault(Some(
            "arn:aws:iam::{account}:role/ektool-vault-copy-{source}",
        ));
        let arn = "arn:aws:iam::999999999999:role/ektool-vault-copy-111111111111";
        assert_eq!(per_source.copy_role(&source), arn);
        assert!(per_source.is_copy_role(arn));
        assert!(
            per_source
                .is_copy_role("arn:aws:iam::999999999999:role/ektool-vault-copy-222222222222")
        );
        assert!(!per_source.is_copy_role("arn:aws:iam::999999999999:role/ektool-vault-copy-keep"));
    }
}
