//! The command line (clap derive). One module per verb lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::output::OutputFormat;

/// ektool: snapshots, deploys and provisioning for web applications on EC2.
#[derive(Debug, Parser)]
#[command(name = "ektool", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the command line (clap's usage errors exit 2), and says which
/// command was asked for, as typed after `ektool` (`snap backup`).
pub(crate) fn parse() -> (Cli, String) {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let mut words = Vec::new();
    let mut m = &matches;
    while let Some((name, sub)) = m.subcommand() {
        words.push(name.to_owned());
        m = sub;
    }
    (cli, words.join(" "))
}

/// Options every command takes (listed apart from each command's own in
/// `--help`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// AWS named profile (shared config/credentials files).
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,

    /// Region(s): exact names, unique prefixes (`eu-north`), or `all`.
    /// Repeatable or comma-separated. Default: `regions` from the config,
    /// then the SDK's region (AWS_REGION, profile).
    #[arg(
        long = "region",
        short = 'r',
        global = true,
        value_name = "REGION",
        value_delimiter = ','
    )]
    pub regions: Vec<String>,

    /// Leave out these regions (exact names or prefixes; repeatable or
    /// comma-separated), e.g. from `--region all`.
    #[arg(long, global = true, value_name = "REGION", value_delimiter = ',')]
    pub exclude_region: Vec<String>,

    /// Assume this IAM role for every EC2 call (one account).
    #[arg(long, global = true, value_name = "ARN", conflicts_with = "accounts")]
    pub role_arn: Option<String>,

    /// The external id the role's trust policy asks for.
    #[arg(long, global = true, value_name = "ID")]
    pub external_id: Option<String>,

    /// The assumed role's session name (CloudTrail). Default: ektool.
    #[arg(long, global = true, value_name = "NAME")]
    pub role_session_name: Option<String>,

    /// Fan fleet commands out over these accounts (comma-separated ids, or
    /// @FILE of ids), each through the `[accounts] role` template.
    /// Default: `[accounts]` from the config.
    #[arg(long, global = true, value_name = "ID,ID|@FILE")]
    pub accounts: Option<String>,

    /// Work in this one account (12 digits): with `--role-arn` (which
    /// must name it), else with the ambient credentials, which must belong
    /// to it (checked with STS GetCallerIdentity before anything else).
    /// Rows carry `account`. `--account` naming `[vault] account` works on
    /// the vault's copies with the vault's retention (`snap trim`, `snap
    /// check`, `snap list`, `snap count`).
    #[arg(long, global = true, value_name = "ID", conflicts_with = "accounts")]
    pub account: Option<String>,

    /// EC2 endpoint URL (e.g. a local moto server). AWS_ENDPOINT_URL_EC2
    /// works too.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "EKTOOL_ENDPOINT_URL",
        hide_env_values = true
    )]
    pub endpoint_url: Option<String>,

    /// Config file. Default: the nearest ektool.toml in this directory or
    /// a parent, layered over the user's $XDG_CONFIG_HOME/ektool/config.toml.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "EKTOOL_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Show what would be done, change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Turn off client-side pacing of EC2 calls (for local endpoints).
    #[arg(long, global = true)]
    pub no_rate_limit: bool,

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log format on stderr: `text` (coloured only on a terminal, never
    /// with NO_COLOR) or `json` (one object per line, for log pipelines).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "EKTOOL_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check the config file and show the effective configuration.
    Config,
    /// List regions (or check what --region resolves to).
    Regions(commands::regions::Args),
    /// List the instances carrying a tag.
    Instances(commands::instances::Args),
    /// Snapshots: backup, list, plan, trim, delete-broken, count, check,
    /// replicate, replicate-all, lag, mount, unmount, cleanup.
    #[command(subcommand)]
    Snap(commands::snap::SnapCommand),
    /// AMIs from snapshots, and copies to other regions.
    #[command(subcommand)]
    Ami(commands::ami::AmiCommand),
    /// Instance chores: reboot, termination protection by tag, launch.
    #[command(subcommand)]
    Instance(commands::instance::InstanceCommand),
    /// Tags: instance tags onto their volumes.
    #[command(subcommand)]
    Tags(commands::instance::TagsCommand),
    /// SSH hosts: trust a host key, run a command, sync files between hosts.
    #[command(subcommand)]
    Host(commands::host::HostCommand),
    /// Print the least-privilege IAM policy of a command (or of all).
    IamPolicy(commands::iam::Args),
    /// Deploy a release to an environment (`deploy unlock` removes a stale lock).
    Deploy(commands::deploy::DeployArgs),
    /// Switch an environment back to its previous good release.
    Rollback(commands::deploy::rollback::Args),
    /// The release log of an environment, with current and bad marks.
    Releases(commands::deploy::releases::Args),
    /// Turn maintenance mode on or off (a flag file in shared/, plus hooks).
    Maintenance(commands::deploy::maintenance::Args),
    /// Run the restart hooks in the live release.
    Restart(commands::deploy::restart::Args),
    /// Hold an environment's deploy lock by hand (-m says why): deploys,
    /// rollbacks and restarts refuse or wait until `unlock`.
    Lock(commands::lock::LockArgs),
    /// Release a lock taken with `ektool lock` (never a running deploy's).
    Unlock(commands::lock::UnlockArgs),
    /// Who did what to an environment's hosts: every host's release log
    /// and audit file, merged into one timeline.
    Audit(commands::audit::Args),
    /// Configure servers: host key, developers, secrets, then Salt or a script.
    Provision(commands::provision::Args),
    /// An environment's secrets file: fetch it from a host.
    #[command(subcommand)]
    Secrets(commands::secrets::SecretsCommand),
    /// Database chores: dump and load over SSH, no copies on the server.
    #[command(subcommand)]
    Db(commands::db::DbCommand),
    /// Run a job of the config (`[jobs.<name>]`): backup, trim, replicate, check.
    Run(commands::run::Args),
    /// Print the files a scheduler runs a job from: systemd units, a cron line.
    #[command(subcommand)]
    Schedule(commands::schedule::ScheduleCommand),
    /// Print shell completions.
    Completions(commands::completions::Args),
    /// Write the man pages.
    Manpage(commands::manpage::Args),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn regions_are_repeatable_and_comma_separated() {
        let cli = Cli::try_parse_from([
            "ektool",
            "-r",
            "eu-north",
            "--region",
            "us-east-1,ap-s",
            "regions",
        ])
        .unwrap();
        assert_eq!(cli.global.regions, ["eu-north", "us-east-1", "ap-s"]);
    }

    #[test]
    fn verbose_and_quiet_conflict() {
        let err = Cli::try_parse_from(["ektool", "-v", "-q", "regions"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
