//! Many accounts, one run: which accounts a fleet command works in (the
//! `--accounts` flag or `[accounts]`, one `--role-arn`, or the caller's
//! own), each account's EC2 client (its own rate-limit buckets) and
//! regions, and the `account` column of rows.

use std::path::Path;

use ec2kit::accounts::{self, AccountId, Accounts, DEFAULT_ROLE_TEMPLATE};
use ec2kit::{AwsEc2, Region};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::context::Context;
use crate::error::CliError;
use crate::output;

/// One account's client and regions.
pub(crate) struct Target {
    /// The account, when a role is in play (`None`: the caller's own,
    /// unlabelled).
    pub account: Option<AccountId>,
    /// Its EC2 client.
    pub ec2: AwsEc2,
    /// Its regions (`all` is the account's own enabled regions).
    pub regions: Vec<Region>,
}

impl Target {
    /// The account as a cell or a field.
    pub(crate) fn label(&self) -> Option<&str> {
        self.account.as_ref().map(AccountId::as_str)
    }

    /// The prefix of an error line about this account.
    pub(crate) fn prefix(&self) -> String {
        self.label()
            .map_or_else(String::new, |a| format!("account {a}: "))
    }
}

/// The accounts of a run, resolved.
pub(crate) struct Fleet {
    /// The accounts that could be set up, in order.
    pub targets: Vec<Target>,
    /// Accounts whose setup failed (already reported).
    pub failed: usize,
    /// Those accounts and why, for a report (`(account, error)`).
    pub setup_errors: Vec<(AccountId, String)>,
    /// Whether rows carry `account`.
    pub labelled: bool,
}

impl Fleet {
    /// The work's outcome: `failed` of the account-regions failed (each
    /// already reported), plus the accounts that could not be set up.
    pub(crate) fn outcome(&self, failed: usize) -> Result<(), CliError> {
        let failed = failed + self.failed;
        if failed == 0 {
            return Ok(());
        }
        let total = self.targets.iter().map(|t| t.regions.len()).sum::<usize>() + self.failed;
        Err(CliError::Partial {
            failed,
            total,
            what: if self.labelled {
                "account-regions"
            } else {
                "regions"
            },
        })
    }

    /// The outcome of work counted per account: `failed` accounts failed
    /// (each already reported), plus those that could not be set up.
    pub(crate) fn accounts_outcome(&self, failed: usize) -> Result<(), CliError> {
        let failed = failed + self.failed;
        if failed == 0 {
            return Ok(());
        }
        Err(CliError::Partial {
            failed,
            total: self.targets.len() + self.failed,
            what: "accounts",
        })
    }

    /// Runs `f` for every account at once (at most
    /// [`accounts::DEFAULT_ACCOUNT_CONCURRENCY`]); results in order.
    pub(crate) async fn each<'a, T, F, Fut>(&'a self, f: F) -> Vec<(&'a Target, T)>
    where
        F: Fn(&'a Target) -> Fut,
        Fut: Future<Output = T> + 'a,
    {
        let mut out: Vec<(usize, &Target, T)> = stream::iter(self.targets.iter().enumerate())
            .map(|(i, t)| {
                let fut = f(t);
                async move { (i, t, fut.await) }
            })
            .buffer_unordered(accounts::DEFAULT_ACCOUNT_CONCURRENCY)
            .collect()
            .await;
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, t, v)| (t, v)).collect()
    }
}

/// The accounts `--accounts` or `[accounts]` name, with the role template;
/// `None` when neither does.
pub(crate) fn accounts(ctx: &Context) -> Result<Option<Accounts>, CliError> {
    if ctx.account.is_some() {
        // `--account`: one account, whatever `[accounts]` says.
        return Ok(None);
    }
    let config = ctx.config.accounts.as_ref();
    let role = config
        .and_then(|a| a.role.as_deref())
        .unwrap_or(DEFAULT_ROLE_TEMPLATE);
    let ids = match &ctx.global.accounts {
        Some(list) => match list.strip_prefix('@') {
            Some(file) => read_ids(Path::new(file), "--accounts")?,
            None => Accounts::parse_ids(list)
                .map_err(|e| CliError::Usage(format!("--accounts: {e}")))?,
        },
        None => match config {
            None => return Ok(None),
            Some(c) => match (&c.file, c.ids.is_empty()) {
                (Some(_), false) => {
                    return Err(CliError::Usage(
                        "config [accounts]: give ids or file, not both".into(),
                    ));
                }
                (Some(file), true) => read_ids(file, "config [accounts] file")?,
                (None, _) => c.ids.clone(),
            },
        },
    };
    Accounts::new(ids, role)
        .map(Some)
        .map_err(|e| CliError::Usage(format!("accounts: {e}")))
}

fn read_ids(path: &Path, what: &str) -> Result<Vec<AccountId>, CliError> {
    let text = std::fs::read_to_string(crate::context::expand_home(path))
        .map_err(|e| CliError::Usage(format!("{what}: {}: {e}", path.display())))?;
    Accounts::parse_ids(&text)
        .map_err(|e| CliError::Usage(format!("{what}: {}: {e}", path.display())))
}

/// Every account's client and regions. An account whose regions cannot be
/// had (its role cannot be assumed, `DescribeRegions` is denied) is
/// reported on stderr and counted; the rest go on. Bad input (a region
/// name that resolves nowhere) stops the run.
pub(crate) async fn fleet(ctx: &Context) -> Result<Fleet, CliError> {
    fleet_in(ctx, true).await
}

/// [`fleet`], the regions resolved only when `regions` (a command naming
/// its own, like `snap lag --from --to`, gets none and makes no call).
pub(crate) async fn fleet_in(ctx: &Context, regions: bool) -> Result<Fleet, CliError> {
    let want_regions = regions;
    let Some(accounts) = accounts(ctx)? else {
        let ec2 = ctx.ec2().await;
        let regions = if want_regions {
            ctx.regions(&ec2).await?
        } else {
            Vec::new()
        };
        let account = ctx.role_account();
        let labelled = ctx.global.role_arn.is_some() || ctx.account.is_some();
        return Ok(Fleet {
            targets: vec![Target {
                account,
                ec2,
                regions,
            }],
            failed: 0,
            setup_errors: Vec::new(),
            labelled,
        });
    };
    let results = accounts::each_account(
        accounts.ids(),
        accounts::DEFAULT_ACCOUNT_CONCURRENCY,
        |account| {
            let role = accounts.role_arn(account);
            async move {
                let ec2 = ctx.ec2_as(Some(role)).await;
                let regions = if want_regions {
                    ctx.regions(&ec2).await?
                } else {
                    Vec::new()
                };
                Ok::<_, CliError>((ec2, regions))
            }
        },
    )
    .await;
    let mut targets = Vec::new();
    let mut failed = 0;
    let mut setup_errors = Vec::new();
    for r in results {
        match r.result {
            Ok((ec2, regions)) => targets.push(Target {
                account: Some(r.account),
                ec2,
                regions,
            }),
            Err(e @ CliError::Usage(_)) => return Err(e),
            Err(e) => {
                failed += 1;
                tracing::error!(account = %r.account, "{e}");
                eprintln!("error: account {}: {e}", r.account);
                setup_errors.push((r.account, e.to_string()));
            }
        }
    }
    Ok(Fleet {
        targets,
        failed,
        setup_errors,
        labelled: true,
    })
}

/// The commands that fan out over accounts.
pub(crate) const FANS_OUT: &[&str] = &[
    "instances",
    "snap list",
    "snap count",
    "snap trim",
    "snap backup",
    "snap check",
    "snap delete-broken",
    "snap lag",
    "snap replicate",
    "snap replicate-all",
    "run",
];

/// Fleet commands that work in one account only so far: with accounts in
/// play (the flag or the config) they refuse to run rather than quietly
/// work in the caller's own account. None left: every fleet command fans
/// out (`run -- COMMAND`, on an environment's hosts, refuses accounts by
/// itself).
const ONE_ACCOUNT_FLEET: &[&str] = &[];

/// Refuses `--accounts` on a command that does not fan out, and a
/// fleet command that does not fan out yet when the config names
/// `[accounts]` (`accounts_in_config`): bad input, before any call.
pub(crate) fn check_fan_out(
    command: &str,
    flag: bool,
    accounts_in_config: bool,
) -> Result<(), CliError> {
    if FANS_OUT.contains(&command) || command == "iam-policy" {
        return Ok(());
    }
    let why = if flag {
        "--accounts"
    } else if accounts_in_config && ONE_ACCOUNT_FLEET.contains(&command) {
        "config [accounts]"
    } else {
        return Ok(());
    };
    Err(CliError::Usage(format!(
        "{why}: `ektool {command}` works in one account (commands fanning out over accounts: {}); \
         use --role-arn for another account, or --config a file without [accounts]",
        FANS_OUT.join(", ")
    )))
}

/// Adds what `add` makes to `into`: as it is without an account (byte for
/// byte what a one-account run writes), else with an `account` label
/// first on every sample, so two accounts' regions never collide.
pub(crate) fn add_metrics(
    account: Option<&str>,
    into: &mut snapkit::metrics::Metrics,
    add: impl FnOnce(&mut snapkit::metrics::Metrics),
) {
    match account {
        None => add(into),
        Some(a) => {
            let mut one = snapkit::metrics::Metrics::new();
            add(&mut one);
            into.extend_labelled(one, ("account", a));
        }
    }
}

/// Leaves out the regions `excluded` names (exactly or by prefix).
pub(crate) fn exclude(regions: Vec<Region>, excluded: &[String]) -> Vec<Region> {
    regions
        .into_iter()
        .filter(|r| !excluded.iter().any(|x| r.as_str().starts_with(x.as_str())))
        .collect()
}

/// A row with the account it belongs to (a JSON object's first field,
/// left out when no role is in play).
#[derive(Serialize)]
pub(crate) struct Row<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    #[serde(flatten)]
    item: &'a T,
}

impl<'a, T: Serialize> Row<'a, T> {
    /// `item` of `account`.
    pub(crate) fn new(account: Option<&'a str>, item: &'a T) -> Self {
        Self { account, item }
    }
}

/// A table with an `ACCOUNT` column first when `labelled`.
pub(crate) fn table<'a>(
    labelled: bool,
    headers: &[&str],
    rows: impl IntoIterator<Item = (Option<&'a str>, Vec<String>)>,
) {
    if !labelled {
        output::table(headers, rows.into_iter().map(|(_, r)| r));
        return;
    }
    let mut h = vec!["ACCOUNT"];
    h.extend_from_slice(headers);
    output::table(
        &h,
        rows.into_iter().map(|(a, r)| {
            let mut row = vec![a.unwrap_or("-").to_owned()];
            row.extend(r);
            row
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_regions_go_by_name_or_prefix() {
        let all: Vec<Region> = ["us-east-1", "us-east-2", "eu-west-1", "ap-south-1"]
            .map(Region::new)
            .to_vec();
        let left = exclude(all, &["us-east".into(), "ap-south-1".into()]);
        assert_eq!(left, vec![Region::new("eu-west-1")]);
    }

    #[test]
    fn metrics_without_an_account_are_added_as_they_are_and_with_one_labelled() {
        let add = |m: &mut snapkit::metrics::Metrics| {
            m.gauge("ektool_a", "A.").sample(&[("region", "r1")], 1.0);
        };
        let mut direct = snapkit::metrics::Metrics::new();
        add(&mut direct);
        let mut none = snapkit::metrics::Metrics::new();
        add_metrics(None, &mut none, add);
        assert_eq!(none.render(), direct.render());
        let mut one = snapkit::metrics::Metrics::new();
        add_metrics(Some("111111111111"), &mut one, add);
        assert!(
            one.render()
                .contains("ektool_a{account=\"111111111111\",region=\"r1\"} 1\n"),
            "{}",
            one.render()
        );
    }

    #[test]
    fn a_row_carries_its_account_only_when_labelled() {
        #[derive(Serialize)]
        struct Item {
            region: &'static str,
        }
        let item = Item {
            region: "eu-west-1",
        };
        assert_eq!(
            serde_json::to_string(&Row::new(Some("111111111111"), &item)).unwrap(),
            r#"{"account":"111111111111","region":"eu-west-1"}"#
        );
        assert_eq!(
            serde_json::to_string(&Row::new(None, &item)).unwrap(),
            r#"{"region":"eu-west-1"}"#
        );
    }
}
