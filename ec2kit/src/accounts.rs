//! Many accounts, one run: account ids, the role assumed in each, and the
//! same work over every account, concurrently.
//!
//! AWS throttles per account and region, so each account gets an EC2
//! client of its own (with the `aws` feature: an [`crate::AwsEc2`] whose
//! [`crate::AwsEc2Options::role_arn`] is [`Accounts::role_arn`]), and with
//! it rate-limit buckets of its own: a busy account never slows another.
//!
//! ```
//! use ec2kit::accounts::{Accounts, DEFAULT_ROLE_TEMPLATE};
//!
//! let accounts = Accounts::new(
//!     Accounts::parse_ids("111111111111, 222222222222")?,
//!     DEFAULT_ROLE_TEMPLATE,
//! )?;
//! assert_eq!(
//!     accounts.role_arn(&accounts.ids()[1]),
//!     "arn:aws:iam::222222222222:role/ektool"
//! );
//! # Ok::<(), ec2kit::accounts::AccountsError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Ec2Error;

/// The role assumed in each account when none is configured.
pub const DEFAULT_ROLE_TEMPLATE: &str = "arn:aws:iam::{account}:role/ektool";

/// The placeholder of a role template the account id replaces.
pub const ACCOUNT_PLACEHOLDER: &str = "{account}";

/// How many accounts are worked on at once by default (each with its own
/// region concurrency). Accounts are paced apart (AWS's buckets are per
/// account), so one waiting on its buckets never needs to hold another
/// back: the bound is only there to cap open connections.
pub const DEFAULT_ACCOUNT_CONCURRENCY: usize = 64;

/// A list of accounts, or one of them, that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountsError {
    /// Not an AWS account id.
    #[error("invalid account id {0:?}: an account id is 12 digits")]
    InvalidId(String),
    /// The role template does not name the account.
    #[error("invalid role template {0:?}: it must contain {{account}}")]
    InvalidTemplate(String),
    /// The list names no account.
    #[error("no account ids given")]
    Empty,
    /// The same account twice.
    #[error("account {0} is listed twice")]
    Duplicate(AccountId),
}

/// An AWS account id: 12 digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account of a role ARN (`arn:aws:iam::123456789012:role/x`),
    /// if it names one.
    pub fn of_arn(arn: &str) -> Option<Self> {
        arn.split(':').nth(4).and_then(|a| a.parse().ok())
    }
}

impl FromStr for AccountId {
    type Err = AccountsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(AccountsError::InvalidId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for AccountId {
    type Error = AccountsError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AccountId> for String {
    fn from(a: AccountId) -> Self {
        a.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The accounts of a run and the role assumed in each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    ids: Vec<AccountId>,
    role: String,
}

impl Accounts {
    /// Accounts in the given order, each reached through `role` with its
    /// `{account}` replaced. Errors: no ids, an id twice, a template
    /// without `{account}`.
    pub fn new(ids: Vec<AccountId>, role: &str) -> Result<Self, AccountsError> {
        if !role.contains(ACCOUNT_PLACEHOLDER) {
            return Err(AccountsError::InvalidTemplate(role.to_owned()));
        }
        if ids.is_empty() {
            return Err(AccountsError::Empty);
        }
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                return Err(AccountsError::Duplicate(id.clone()));
            }
        }
        Ok(Self {
            ids,
            role: role.to_owned(),
        })
    }

    /// Account ids from text: separated by commas, spaces or newlines;
    /// `#` starts a comment to the end of its line (a file of ids).
    pub fn parse_ids(text: &str) -> Result<Vec<AccountId>, AccountsError> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .flat_map(|l| l.split([',', ' ', '\t']))
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::parse)
            .collect()
    }

    /// The accounts, in order.
    pub fn ids(&self) -> &[AccountId] {
        &self.ids
    }

    /// The role template.
    pub fn role_template(&self) -> &str {
        &self.role
    }

    /// The role assumed in `account`.
    pub fn role_arn(&self, account: &AccountId) -> String {
        self.role.replace(ACCOUNT_PLACEHOLDER, account.as_str())
    }
}

/// The trust policy of the role ektool assumes in a member account
/// (`AssumeRolePolicyDocument` in CloudFormation / StackSets): the
/// account ektool runs in may call `sts:AssumeRole` on it, with the
/// external id when one is given.
pub fn trust_policy(trusted: &AccountId, external_id: Option<&str>) -> serde_json::Value {
    let mut statement = serde_json::json!({
        "Sid": "EktoolAssumeRole",
        "Effect": "Allow",
        "Principal": { "AWS": format!("arn:aws:iam::{trusted}:root") },
        "Action": "sts:AssumeRole",
    });
    if let Some(id) = external_id {
        statement["Condition"] = serde_json::json!({
            "StringEquals": { "sts:ExternalId": id }
        });
    }
    serde_json::json!({ "Version": "2012-10-17", "Statement": [statement] })
}

/// The statement the identity ektool runs as needs in its own account to
/// assume the member roles: `sts:AssumeRole` on the role template with
/// any account (`{account}` as `*`).
pub fn caller_policy(role_template: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "EktoolAssumeMemberRoles",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": role_template.replace(ACCOUNT_PLACEHOLDER, "*"),
        }]
    })
}

/// One account's answer: a failing account does not hide the others.
#[derive(Debug)]
pub struct AccountResult<T, E = Ec2Error> {
    /// The account.
    pub account: AccountId,
    /// Its result.
    pub result: Result<T, E>,
}

/// Runs `f` for every account, at most `concurrency` at a time, and
/// returns the results in the order of `accounts`. A failing account is a
/// result like any other: the rest go on.
pub async fn each_account<'a, T, E, F, Fut>(
    accounts: &'a [AccountId],
    concurrency: usize,
    f: F,
) -> Vec<AccountResult<T, E>>
where
    F: Fn(&'a AccountId) -> Fut,
    Fut: Future<Output = Result<T, E>> + 'a,
{
    crate::fleet::in_order(accounts, concurrency, |account| {
        let fut = f(account);
        async move {
            AccountResult {
                account: account.clone(),
                result: fut.await,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, ErrorKind};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn ids(n: usize) -> Vec<AccountId> {
        (0..n)
            .map(|i| format!("{:012}", 100_000_000_000 + i).parse().unwrap())
            .collect()
    }

    #[test]
    fn account_ids_are_twelve_digits() {
        assert!("123456789012".parse::<AccountId>().is_ok());
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901a",
            " 123456789012",
        ] {
            assert_eq!(
                bad.parse::<AccountId>(),
                Err(AccountsError::InvalidId(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            AccountId::of_arn("arn:aws:iam::123456789012:role/ektool").map(String::from),
            Some("123456789012".to_owned())
        );
        assert_eq!(AccountId::of_arn("arn:aws:iam::role/ektool"), None);
    }

    #[test]
    fn the_template_must_name_the_account_and_ids_must_be_unique() {
        let two = ids(2);
        assert_eq!(
            Accounts::new(two.clone(), "arn:aws:iam::111111111111:role/ektool"),
            Err(AccountsError::InvalidTemplate(
                "arn:aws:iam::111111111111:role/ektool".into()
            ))
        );
        assert_eq!(
            Accounts::new(vec![], DEFAULT_ROLE_TEMPLATE),
            Err(AccountsError::Empty)
        );
        assert_eq!(
            Accounts::new(
                vec![two[0].clone(), two[1].clone(), two[0].clone()],
                DEFAULT_ROLE_TEMPLATE
            ),
            Err(AccountsError::Duplicate(two[0].clone()))
        );
        let a = Accounts::new(two.clone(), "arn:aws:iam::{account}:role/backup-{account}").unwrap();
        assert_eq!(
            a.role_arn(&two[1]),
            "arn:aws:iam::100000000001:role/backup-100000000001"
        );
    }

    #[test]
    fn a_file_of_ids_takes_commas_spaces_lines_and_comments() {
        let text = "# prod\n111111111111, 222222222222\n\n333333333333 # staging\n\t444444444444\n";
        let got: Vec<String> = Accounts::parse_ids(text)
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            got,
            [
                "111111111111",
                "222222222222",
                "333333333333",
                "444444444444"
            ]
        );
        assert_eq!(
            Accounts::parse_ids("111111111111\n22222\n"),
            Err(AccountsError::InvalidId("22222".into()))
        );
    }

    #[test]
    fn the_trust_policy_names_the_ektool_account_and_the_external_id() {
        let ektool: AccountId = "123456789012".parse().unwrap();
        let plain = trust_policy(&ektool, None);
        assert_eq!(
            plain["Statement"][0]["Principal"]["AWS"],
            "arn:aws:iam::123456789012:root"
        );
        assert_eq!(plain["Statement"][0]["Action"], "sts:AssumeRole");
        assert!(plain["Statement"][0].get("Condition").is_none());
        let with_id = trust_policy(&ektool, Some("s3cret-id"));
        assert_eq!(
            with_id["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
            "s3cret-id"
        );
        assert_eq!(
            caller_policy(DEFAULT_ROLE_TEMPLATE)["Statement"][0]["Resource"],
            "arn:aws:iam::*:role/ektool"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_account_answers_in_order_with_bounded_concurrency_and_failures_as_results() {
        let accounts = ids(10);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let out = each_account(&accounts, 3, |account| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Later accounts finish first: the order is still theirs.
                let n: u64 = account.as_str().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(100 - (n % 100) * 5)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if n % 100 == 4 {
                    return Err(Ec2Error::from_code(
                        Action::DescribeRegions,
                        "us-east-1",
                        "AccessDenied",
                        None,
                    ));
                }
                Ok(n)
            }
        })
        .await;
        assert_eq!(
            out.iter().map(|r| r.account.clone()).collect::<Vec<_>>(),
            accounts
        );
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        for (i, r) in out.iter().enumerate() {
            match &r.result {
                Ok(n) => assert_eq!(*n, 100_000_000_000 + i as u64),
                Err(e) => {
                    assert_eq!(i, 4);
                    assert_eq!(e.kind, ErrorKind::AccessDenied);
                }
            }
        }
        assert_eq!(out.iter().filter(|r| r.result.is_err()).count(), 1);
    }
}
