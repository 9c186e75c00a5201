//! `ektool iam-policy [COMMAND…]`: the least-privilege IAM policy of each
//! command, as JSON. This module only says which library operations each
//! command runs ([`policies`]); the operations state what they call
//! (`snapkit::trim::PERMISSIONS`, …) and `ec2kit::iam` builds the
//! document. The CLI tests prove the table complete and minimal: they run
//! every command against moto with `EKTOOL_RECORD_ACTIONS` and compare
//! what it called with its policy.
//!
//! With `--restrict-by-tag` (the recommended policy) the same actions are
//! granted with conditions on the `ektool:owner=ektool` tag (see
//! `ec2kit::iam`): ektool decides from tags; these conditions keep a stolen
//! or misused ektool role from deleting what ektool never made.

use ec2kit::Action::{DescribeInstances, RebootInstances};
use ec2kit::fleet;
use ec2kit::iam::{self, Ownership, Permissions, Policy, When};
use serde_json::json;
use snapkit::{ami, ami_trim, backup, check, instances, mount, replicate, trim, vault, verify};

use crate::error::CliError;
use crate::output::OutputFormat;

/// Arguments of `ektool iam-policy`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The command, as typed after `ektool` (`snap backup`, `ami copy`),
    /// or the two sides of `snap replicate --to-account`: `vault-source`
    /// (the source account) and `vault-copy` (the vault's copy role);
    /// none: one policy for every command.
    pub command: Vec<String>,
    /// List the commands and the actions each calls.
    #[arg(long, conflicts_with = "command")]
    pub list: bool,
    /// The recommended policy: the same actions, deletes and detaches only
    /// on resources tagged `ektool:owner=ektool`, creates only with that
    /// tag in the request, `CreateTags` only at creation (`--adopt` runs
    /// then cannot delete untagged snapshots: that is the point).
    #[arg(long, conflicts_with = "list")]
    pub restrict_by_tag: bool,
    /// For a member account's role (StackSets): print its trust policy
    /// (ACCOUNT, the account ektool runs in, may assume it; with the
    /// external id of `--external-id` or `[accounts]`) next to its
    /// permissions, and the caller's `sts:AssumeRole` statement.
    #[arg(long, value_name = "ACCOUNT", conflicts_with = "list")]
    pub trust: Option<String>,
    /// With `vault-copy`: the policy of the copy role of this one source
    /// account (`[vault] role` naming `{source}`): it may copy, and tag at
    /// creation, only with `ektool:source-account` set to that account, so
    /// a compromised source account cannot plant copies in another
    /// account's vault lineages.
    #[arg(long, value_name = "ACCOUNT", conflicts_with = "list")]
    pub source_account: Option<String>,
}

/// The member role's documents, as CloudFormation names them.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct MemberRole {
    /// Who may assume the role.
    assume_role_policy_document: serde_json::Value,
    /// What the role may do.
    policy_document: iam::Document,
    /// What ektool's own identity needs to assume it.
    caller_policy_document: serde_json::Value,
}

/// What `--restrict-by-tag` conditions on: the tag on everything ektool
/// makes, and the keys only ektool writes.
const OWNERSHIP: Ownership<'static> = Ownership {
    key: snapkit::lineage::tags::OWNER,
    value: snapkit::lineage::tags::OWNER_VALUE,
    reserved_keys: "ektool:*",
};

/// The command's own EC2 calls (not a library operation's): instances
/// looked up by tag or id.
const FIND_INSTANCES: Permissions = Permissions::calls(&[DescribeInstances]);

/// Every command that calls AWS, as the operations it runs (in the order
/// it runs them). Commands in [`NO_AWS`] call none.
pub(crate) fn policies() -> Vec<Policy> {
    let regions = &fleet::REGION_CATALOG_PERMISSIONS;
    // Deploy verbs reach AWS only for an environment with `ec2 = {tag = …}`.
    // Or for hosts found from a load balancer's target group.
    let hosts = |p: Policy| {
        let by_tag = When::Chosen("hosts by EC2 tag");
        p.grant_when(by_tag, regions)
            .grant_when(by_tag, &fleet::INSTANCES_BY_TAG_PERMISSIONS)
            .grant_when(
                When::Chosen("hosts from a target group"),
                &deploykit::balancer::HOSTS_PERMISSIONS,
            )
    };
    vec![
        command("regions").grant(regions),
        command("instances")
            .grant(regions)
            .grant(&fleet::INSTANCES_BY_TAG_PERMISSIONS),
        command("snap backup")
            .grant(regions)
            .grant(&FIND_INSTANCES)
            .grant(&backup::INSTANCES_PERMISSIONS)
            .grant_when(When::Chosen("--volume"), &backup::VOLUMES_PERMISSIONS),
        command("snap list")
            .grant(regions)
            .grant(&trim::INVENTORY_PERMISSIONS),
        command("snap trim")
            .grant(regions)
            .grant(&trim::PERMISSIONS)
            // `--archive-after`, or `archive_after` in the config.
            .grant_when(When::Chosen("--archive-after"), &trim::ARCHIVE_PERMISSIONS),
        command("snap restore-tier")
            .grant(regions)
            .grant(&trim::RESTORE_TIER_PERMISSIONS),
        command("snap delete-broken")
            .grant(regions)
            .grant(&trim::BROKEN_PERMISSIONS),
        command("snap count")
            .grant(regions)
            .grant(&trim::INVENTORY_PERMISSIONS),
        command("snap check")
            .grant(regions)
            .grant(&check::PERMISSIONS),
        command("snap replicate")
            .grant(regions)
            .grant(&replicate::PERMISSIONS)
            .grant_when(When::Chosen("--kms-key"), &replicate::KMS_KEY_PERMISSIONS),
        command("snap replicate-all")
            .grant(regions)
            .grant(&replicate::PERMISSIONS)
            .grant_when(When::Chosen("--kms-key"), &replicate::KMS_KEY_PERMISSIONS),
        command("snap lag")
            .grant(regions)
            .grant(&replicate::LAG_PERMISSIONS),
        // `snap replicate --to-account`: two identities, two policies. The
        // source account's (the caller, `--role-arn` or each member
        // account's role) shares its snapshots for the copy and takes the
        // share back; the vault's copy role copies, and never deletes.
        Policy::new("vault-source")
            .with_sid("Ektool vault source")
            .grant(regions)
            .grant(&vault::SOURCE_PERMISSIONS),
        Policy::new("vault-copy")
            .with_sid("Ektool vault copy")
            .grant(&vault::VAULT_PERMISSIONS),
        command("snap mount")
            .grant(regions)
            .grant(&mount::PERMISSIONS),
        command("snap unmount")
            .grant(regions)
            .grant(&mount::FIND_PERMISSIONS)
            .grant(&mount::UNMOUNT_PERMISSIONS)
            // The instance's address, when no --host names the host.
            .grant_when(When::Chosen("without --host"), &FIND_INSTANCES),
        command("snap cleanup")
            .grant(regions)
            .grant(&mount::FIND_PERMISSIONS)
            .grant(&FIND_INSTANCES)
            .grant(&mount::UNMOUNT_PERMISSIONS),
        command("snap verify")
            .grant(regions)
            .grant(&verify::PERMISSIONS),
        command("ami create")
            .grant(regions)
            .grant(&ami::CREATE_PERMISSIONS)
            .grant_when(
                When::Chosen("--instance"),
                &ami_trim::FROM_INSTANCE_PERMISSIONS,
            ),
        command("ami trim")
            .grant(regions)
            .grant(&ami_trim::TRIM_PERMISSIONS),
        command("ami copy")
            .grant(regions)
            .grant(&ami::COPY_PERMISSIONS),
        command("instance reboot")
            .grant(regions)
            .grant(&Permissions::calls(&[RebootInstances])),
        command("instance protect")
            .grant(regions)
            .grant(&FIND_INSTANCES)
            .grant(&instances::PROTECTION_PERMISSIONS),
        command("instance launch")
            .grant(regions)
            .grant(&instances::LAUNCH_PERMISSIONS),
        command("tags propagate")
            .grant(regions)
            .grant(&FIND_INSTANCES)
            .grant(&instances::WITH_RESERVATIONS_PERMISSIONS)
            .grant(&instances::VOLUME_TAGS_PERMISSIONS),
        // A job: the policies of its steps (the backup's, trim's,
        // replicate's and check's).
        command("run")
            .grant(regions)
            .grant(&FIND_INSTANCES)
            .grant(&backup::INSTANCES_PERMISSIONS)
            .grant_when(When::Chosen("volume aliases"), &backup::VOLUMES_PERMISSIONS)
            .grant_when(When::Chosen("trim step"), &trim::PERMISSIONS)
            .grant_when(
                When::Chosen("trim step with archive_after"),
                &trim::ARCHIVE_PERMISSIONS,
            )
            .grant_when(When::Chosen("replicate step"), &replicate::PERMISSIONS)
            .grant_when(When::Chosen("check step"), &check::PERMISSIONS),
        // Behind a load balancer, each wave leaves its target group.
        hosts(command("deploy")).grant_when(
            When::Chosen("a load balancer"),
            &deploykit::balancer::DRAIN_PERMISSIONS,
        ),
        hosts(command("deploy unlock")),
        hosts(command("provision")),
        hosts(command("secrets get")),
        hosts(command("db dump")),
        hosts(command("db load")),
        hosts(command("rollback")),
        hosts(command("releases")),
        hosts(command("maintenance")),
        hosts(command("restart")),
        hosts(command("deploy check")),
        hosts(command("lock")),
        hosts(command("unlock")),
        hosts(command("audit")),
        // Not a command: the keep role of a vault account, which runs
        // `snap trim|check|list|count --account VAULT` there (the copy
        // role `snap replicate --to-account` assumes never deletes).
        command(VAULT_KEEP)
            .grant(regions)
            .grant(&trim::PERMISSIONS)
            .grant(&check::VAULT_PERMISSIONS)
            .grant_when(When::Chosen("--archive-after"), &trim::ARCHIVE_PERMISSIONS),
    ]
}

/// The policy of the vault account's keep role (`ektool iam-policy
/// vault-keep`): retention and checks of the vault's copies.
pub(crate) const VAULT_KEEP: &str = "vault-keep";

/// The keep role's name in the vault, for the caller's `sts:AssumeRole`
/// statement of `iam-policy vault-keep --trust VAULT`.
const VAULT_KEEP_ROLE: &str = "arn:aws:iam::{account}:role/ektool-vault-keep";

/// The empty policy of `ektool <words>`, its statements `Ektool<Words>…`.
fn command(words: &str) -> Policy {
    Policy::new(words).with_sid(&format!("Ektool {words}"))
}

/// The policy of `command` (words as typed).
pub(crate) fn policy_for(command: &str) -> Option<Policy> {
    policies().into_iter().find(|p| p.name == command)
}

fn names(actions: &[ec2kit::Action]) -> Vec<String> {
    let mut v: Vec<String> = actions.iter().map(|a| a.iam_action()).collect();
    v.sort();
    v.dedup();
    v
}

/// Prints the policy (or the list); with `--trust`, the member role's
/// trust policy beside it (`external_id`, `role` from the command line or
/// config).
pub(crate) fn exec(
    args: Args,
    format: OutputFormat,
    external_id: Option<&str>,
    role: &str,
    vault: Option<&ec2kit::AccountId>,
) -> Result<(), CliError> {
    let trusted: Option<ec2kit::AccountId> = args
        .trust
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--trust: {e}")))?;
    // The keep role deletes vault copies: no account outside the vault may
    // assume it (a compromised source account could otherwise delete them).
    if let (Some(t), Some(v)) = (&trusted, vault)
        && args.command.join(" ") == VAULT_KEEP
        && t != v
    {
        return Err(CliError::Usage(format!(
            "--trust {t}: the vault's keep role is trusted by the vault account ({v}) only"
        )));
    }
    let all = policies();
    if args.list && format == OutputFormat::Json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                json!({
                    "command": p.name,
                    "actions": names(&p.actions),
                    // `with_flag`: the key scripts know; `when` says
                    // whether it is chosen (a flag, a setting) or a case.
                    "with_flag": p.conditional.iter().map(|c| {
                        json!({
                            "flag": c.when.label(),
                            "when": c.when.kind(),
                            "actions": names(&c.actions),
                        })
                    }).collect::<Vec<_>>(),
                    "implied": p.implied.iter().map(|i| i.action).collect::<Vec<_>>(),
                })
            })
            .collect();
        return crate::output::json(&list);
    }
    if args.list {
        for p in &all {
            let actions: Vec<String> = p.actions.iter().map(|a| a.iam_action()).collect();
            println!("{:<20} {}", p.name, actions.join(" "));
            for c in &p.conditional {
                let extra: Vec<String> = c.actions.iter().map(|a| a.iam_action()).collect();
                println!("{:<20}   with {}: {}", "", c.when.label(), extra.join(" "));
            }
            for i in &p.implied {
                println!("{:<20}   implied {}: {}", "", i.action, i.why);
            }
        }
        return Ok(());
    }
    let chosen: Vec<Policy> = if args.command.is_empty() {
        all
    } else {
        let command = args.command.join(" ");
        let known: Vec<String> = all.iter().map(|p| p.name.clone()).collect();
        match all.into_iter().find(|p| p.name == command) {
            Some(p) => vec![p],
            None if NO_AWS.contains(&command.as_str()) => {
                return Err(CliError::Usage(format!(
                    "`ektool {command}` makes no AWS calls: it needs no IAM policy"
                )));
            }
            None => {
                return Err(CliError::Usage(format!(
                    "no command {command:?}; commands calling AWS: {}",
                    known.join(", ")
                )));
            }
        }
    };
    let source: Option<ec2kit::AccountId> = args
        .source_account
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--source-account: {e}")))?;
    let vault_copy = chosen.len() == 1 && chosen[0].name == "vault-copy";
    if source.is_some() && !vault_copy {
        return Err(CliError::Usage(
            "--source-account: only the vault's copy role has one (`iam-policy vault-copy`)".into(),
        ));
    }
    // The vault's copy role is the one a compromised source account can
    // use: it is always the restricted policy (tags only at creation,
    // copies only with the ownership tag), so it can never retag a copy
    // into another lineage.
    let restrict = args.restrict_by_tag || vault_copy;
    let mut doc = iam::document(&chosen, restrict.then_some(&OWNERSHIP));
    // The vault copy's source side tags its own snapshots with the share
    // journal, a key restricted policies otherwise reserve.
    if restrict && chosen.iter().any(|p| p.name == "vault-source") {
        doc.grant_journal_tags(
            "EktoolVaultSourceJournal",
            &OWNERSHIP,
            &[snapkit::lineage::tags::SHARED_WITH],
        );
    }
    if let Some(account) = &source {
        doc.require_request_tag(
            &["ec2:CopySnapshot", "ec2:CreateTags"],
            snapkit::lineage::tags::SOURCE_ACCOUNT,
            account.as_str(),
        );
    }
    // The keep role is assumed inside the vault, by its own jobs.
    let role = if chosen.len() == 1 && chosen[0].name == VAULT_KEEP {
        VAULT_KEEP_ROLE
    } else {
        role
    };
    let text = match &trusted {
        Some(account) => serde_json::to_string_pretty(&MemberRole {
            assume_role_policy_document: ec2kit::accounts::trust_policy(account, external_id),
            policy_document: doc,
            caller_policy_document: ec2kit::accounts::caller_policy(role),
        }),
        None => serde_json::to_string_pretty(&doc),
    }
    .map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Commands that call no AWS API at all.
pub(crate) const NO_AWS: &[&str] = &[
    "snap plan",
    "schedule systemd",
    "schedule cron",
    "host trust",
    "host run",
    "host sync",
    "config",
    "completions",
    "manpage",
    "iam-policy",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_snapshot_verb_has_a_policy_or_calls_nothing() {
        use clap::CommandFactory;
        let cli = crate::args::Cli::command();
        let mut missing = Vec::new();
        for top in cli.get_subcommands() {
            let subs: Vec<_> = top.get_subcommands().collect();
            let paths: Vec<String> = if subs.is_empty() {
                vec![top.get_name().to_owned()]
            } else {
                subs.iter()
                    .filter(|s| s.get_name() != "help")
                    .map(|s| format!("{} {}", top.get_name(), s.get_name()))
                    .collect()
            };
            for p in paths {
                if p != "help" && policy_for(&p).is_none() && !NO_AWS.contains(&p.as_str()) {
                    missing.push(p);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "commands without an IAM policy: {missing:?}"
        );
    }

    #[test]
    fn no_statement_is_empty() {
        let all = policies();
        for restrict in [None, Some(&OWNERSHIP)] {
            let doc = serde_json::to_value(iam::document(&all, restrict)).unwrap();
            for st in doc["Statement"].as_array().unwrap() {
                assert!(!st["Action"].as_array().unwrap().is_empty(), "{st}");
            }
        }
        // deploy calls AWS only for what an environment chooses: every
        // statement is a conditional one.
        let deploy = iam::document(&[policy_for("deploy").unwrap()], None);
        assert!(
            deploy
                .statement
                .iter()
                .all(|st| st.sid.starts_with("EktoolDeployWith")),
            "{:?}",
            deploy.statement
        );
    }

    /// The restricted policies grant the same actions as the plain ones,
    /// and no delete, detach or create without the owner tag condition
    /// (ec2kit's own tests check every condition; this is ektool's table).
    #[test]
    fn restricted_policies_condition_every_destructive_action_on_the_owner_tag() {
        for p in policies() {
            let granted = |doc: &iam::Document| -> std::collections::BTreeSet<String> {
                doc.statement
                    .iter()
                    .flat_map(|s| s.action.iter().cloned())
                    .collect()
            };
            let p = std::slice::from_ref(&p);
            let plain = iam::document(p, None);
            let strict = iam::document(p, Some(&OWNERSHIP));
            assert_eq!(granted(&plain), granted(&strict), "{}", p[0].name);
            for st in serde_json::to_value(&strict).unwrap()["Statement"]
                .as_array()
                .unwrap()
            {
                let sid = st["Sid"].as_str().unwrap();
                assert!(sid.chars().all(|c| c.is_ascii_alphanumeric()), "{sid}");
                let condition = st["Condition"].to_string();
                for a in st["Action"].as_array().unwrap() {
                    let a = a.as_str().unwrap();
                    let destructive = ["ec2:DeleteSnapshot", "ec2:DeleteVolume"].contains(&a)
                        || (["ec2:DetachVolume", "ec2:AttachVolume"].contains(&a)
                            && st["Resource"] != "arn:aws:ec2:*:*:instance/*");
                    if destructive {
                        assert!(
                            condition.contains("aws:ResourceTag/ektool:owner"),
                            "{}: {st}",
                            p[0].name
                        );
                    }
                    if iam::CREATES.iter().any(|c| c.iam_action() == a) {
                        assert!(condition.contains("aws:RequestTag/ektool:owner"), "{st}");
                    }
                    if a == "ec2:CreateTags" {
                        assert!(
                            condition.contains("ec2:CreateAction")
                                || condition.contains("ektool:*"),
                            "{st}"
                        );
                    }
                }
            }
        }
        let trim = iam::document(&[policy_for("snap trim").unwrap()], Some(&OWNERSHIP));
        let trim = serde_json::to_value(trim).unwrap();
        let delete = trim["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Action"] == json!(["ec2:DeleteSnapshot"]))
            .expect("a statement of its own");
        assert_eq!(delete["Resource"], "arn:aws:ec2:*:*:snapshot/*");
        assert_eq!(
            delete["Condition"],
            json!({ "StringEquals": { "aws:ResourceTag/ektool:owner": "ektool" } })
        );
    }

    #[test]
    fn documents_are_valid_iam_shapes() {
        let doc = iam::document(&[policy_for("snap replicate").unwrap()], None);
        let doc = serde_json::to_value(doc).unwrap();
        let st = doc["Statement"].as_array().unwrap();
        assert_eq!(st.len(), 3);
        assert_eq!(st[0]["Sid"], "EktoolSnapReplicate");
        assert_eq!(st[1]["Sid"], "EktoolSnapReplicateWithKmsKey");
        assert_eq!(st[2]["Sid"], "EktoolSnapReplicateWithAConcurrentRun");
        assert!(
            st[0]["Action"]
                .as_array()
                .unwrap()
                .contains(&json!("ec2:CopySnapshot"))
        );
        assert!(
            st[0]["Action"]
                .as_array()
                .unwrap()
                .contains(&json!("ec2:CreateTags"))
        );
        assert!(
            st[1]["Action"]
                .as_array()
                .unwrap()
                .contains(&json!("kms:DescribeKey"))
        );
        for s in st {
            let sid = s["Sid"].as_str().unwrap();
            assert!(sid.chars().all(|c| c.is_ascii_alphanumeric()), "{sid}");
        }
    }

    /// The labels that are not flags say so (`when: case`), the flags and
    /// settings are `chosen`.
    #[test]
    fn conditions_say_whether_they_are_chosen_or_met() {
        let all = policies();
        let when = |command: &str, label: &str| {
            all.iter()
                .find(|p| p.name == command)
                .unwrap()
                .conditional
                .iter()
                .find(|c| c.when.label() == label)
                .unwrap()
                .when
        };
        assert_eq!(when("snap mount", "on-failure"), When::Case("on-failure"));
        assert_eq!(
            when("snap backup", "a concurrent run"),
            When::Case("a concurrent run")
        );
        assert_eq!(when("snap backup", "--volume"), When::Chosen("--volume"));
        assert_eq!(
            when("deploy", "hosts by EC2 tag"),
            When::Chosen("hosts by EC2 tag")
        );
    }
}
