//! `ektool snap replicate --to-account VAULT`: the newest snapshot of every
//! lineage copied into a vault account (`snapkit::vault`). The source side
//! runs with the caller's credentials (or `--role-arn`, or each account of
//! `--accounts`/`[accounts]`); the copies are made by the vault's copy
//! role (`--vault-role`, `[vault] role`, default
//! `arn:aws:iam::VAULT:role/ektool-vault-copy`). A role naming `{source}`
//! is one role per source account (`ektool-vault-copy-{source}`), whose
//! policy (`iam-policy vault-copy --source-account ID`) lets it tag copies
//! with that source account only.

use ec2kit::{AccountId, AwsEc2};
use serde::Serialize;
use snapkit::replicate::{self, CopyEvent, CopyOutcome};
use snapkit::vault::{self, VaultAction, VaultEvent, VaultPlan, VaultReport, VaultTarget};

use super::replicate::Args;
use crate::config::{DEFAULT_VAULT_COPY_ROLE, copy_role_of};
use crate::context::Context;
use crate::error::CliError;
use crate::fleet::Target;
use crate::output::{self, OutputFormat};

/// Where the copies go, before regions are resolved.
struct Vault {
    account: AccountId,
    /// The copy role, maybe naming `{source}`.
    role: String,
    region: Option<String>,
    kms_key: Option<String>,
}

/// The vault from the flags over `[vault]`; bad input without either.
fn vault_of(ctx: &Context, args: &Args) -> Result<Vault, CliError> {
    let config = ctx.config.vault.as_ref();
    let flag = args.to_account.as_ref().and_then(|a| a.as_deref());
    let account: AccountId = match (flag, config) {
        (Some(a), _) => a
            .parse()
            .map_err(|e| CliError::Usage(format!("--to-account: {e}")))?,
        (None, Some(c)) => c.account.clone(),
        (None, None) => {
            return Err(CliError::Usage(
                "--to-account: name the vault account (--to-account ACCOUNT) or configure [vault]"
                    .into(),
            ));
        }
    };
    let role = args
        .vault_role
        .clone()
        .or_else(|| config.and_then(|c| c.role.clone()))
        .unwrap_or_else(|| DEFAULT_VAULT_COPY_ROLE.to_owned());
    Ok(Vault {
        account,
        role,
        region: args
            .to
            .clone()
            .or_else(|| config.and_then(|c| c.region.clone())),
        kms_key: args
            .copy
            .kms_key
            .clone()
            .or_else(|| config.and_then(|c| c.kms_key.clone())),
    })
}

/// One source account's vault copy: its plan and what applying did.
#[derive(Serialize)]
struct Stage {
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    plan: VaultPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<VaultReport>,
}

/// Plans, shows and (without --dry-run) copies into the vault, for every
/// source account.
pub(crate) async fn exec(
    ctx: &Context,
    args: Args,
    metrics: &mut snapkit::metrics::Metrics,
) -> Result<(), CliError> {
    let vault = vault_of(ctx, &args)?;
    let fleet = crate::fleet::fleet_in(ctx, false).await?;
    let mut stages = Vec::new();
    let mut failed = 0;
    for t in &fleet.targets {
        match one(ctx, &args, &vault, t).await {
            Ok(mut stage) => {
                if fleet.labelled {
                    stage.account = Some(stage.plan.source_account.to_string());
                }
                stages.push(stage);
            }
            Err(e @ CliError::Usage(_)) => return Err(e),
            Err(e) if !fleet.labelled => return Err(e),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}{e}", t.prefix());
            }
        }
    }
    match ctx.output() {
        OutputFormat::Json if fleet.labelled => output::json(&stages)?,
        OutputFormat::Json => match stages.first() {
            Some(s) => output::json(s)?,
            None => output::json(&stages)?,
        },
        OutputFormat::Table => print_table(ctx, fleet.labelled, &stages),
    }
    for s in &stages {
        if let Some(r) = &s.applied {
            crate::fleet::add_metrics(s.account.as_deref(), metrics, |m| r.add_metrics(m));
        }
    }
    let copies_failed: usize = stages
        .iter()
        .filter_map(|s| s.applied.as_ref())
        .map(VaultReport::failed)
        .sum();
    fleet.accounts_outcome(failed)?;
    if copies_failed > 0 {
        return Err(CliError::Failed(format!(
            "{copies_failed} vault copies failed"
        )));
    }
    Ok(())
}

/// The vault copy of one source account.
async fn one(ctx: &Context, args: &Args, vault: &Vault, t: &Target) -> Result<Stage, CliError> {
    let me = t.ec2.caller_account().await?;
    if me == vault.account {
        return Err(CliError::Usage(format!(
            "--to-account {} is the source account itself: a vault is another account",
            vault.account
        )));
    }
    let vault_ec2: AwsEc2 = ctx
        .ec2_as(Some(copy_role_of(&vault.role, &vault.account, &me)))
        .await;
    let vault_ec2 = &vault_ec2;
    let catalog = ec2kit::fleet::region_catalog(&t.ec2).await?;
    let from = catalog.resolve(&args.from)?;
    let to = match &vault.region {
        Some(r) => catalog.resolve(r)?,
        None => from.clone(),
    };
    if let Some(key) = &vault.kms_key {
        replicate::check_kms_key(vault_ec2, &to, key).await?;
    }
    let target = VaultTarget {
        account: vault.account.clone(),
        region: to,
        kms_key: vault.kms_key.clone(),
    };
    let selection = args.select.selection(ctx);
    let plan = vault::plan(&t.ec2, vault_ec2, &me, &from, &target, &selection).await?;
    let applied = if ctx.global.dry_run {
        None
    } else {
        let wait = args.copy.wait;
        let bar = crate::progress::bar(plan.to_copy().count() as u64, "vault copies");
        let report = vault::apply(
            &t.ec2,
            vault_ec2,
            &plan,
            &args.copy.options(),
            &|e| match e {
                VaultEvent::Copy(CopyEvent::Started { .. }) if !wait => bar.inc(1),
                VaultEvent::Copy(CopyEvent::Completed { .. }) if wait => bar.inc(1),
                VaultEvent::Copy(CopyEvent::WaitingForSlot { region }) => {
                    bar.set_message(format!("vault copies (waiting for a slot in {region})"));
                }
                _ => {}
            },
        )
        .await;
        bar.finish_and_clear();
        Some(report)
    };
    Ok(Stage {
        account: None,
        plan,
        applied,
    })
}

fn print_table(ctx: &Context, labelled: bool, stages: &[Stage]) {
    let rows = stages.iter().flat_map(|s| {
        let label = s.account.as_deref();
        s.plan.items.iter().map(move |i| {
            let action = match &i.action {
                VaultAction::Copy => "copy".to_owned(),
                VaultAction::Present { copy } => format!("present {copy}"),
                VaultAction::InProgress { copy } => format!("in progress {copy}"),
                VaultAction::Recopy { failed } => format!("recopy ({failed} failed)"),
                VaultAction::Refused { reason } => format!("refused: {reason}"),
                _ => "?".to_owned(),
            };
            let result = s
                .applied
                .as_ref()
                .and_then(|r| r.results.iter().find(|r| r.source == i.source))
                .map_or("-".to_owned(), |r| match &r.outcome {
                    CopyOutcome::InFlight { copy } => format!("started {copy}"),
                    CopyOutcome::Completed { copy } => format!("completed {copy}"),
                    CopyOutcome::Failed { error } => format!("failed: {error}"),
                    _ => "-".to_owned(),
                });
            (
                label,
                vec![
                    s.plan.from.to_string(),
                    format!("{}/{}", s.plan.target.account, s.plan.target.region),
                    i.lineage.clone(),
                    i.source.to_string(),
                    i.taken.strftime("%Y-%m-%d %H:%M").to_string(),
                    action,
                    result,
                ],
            )
        })
    });
    crate::fleet::table(
        labelled,
        &[
            "FROM", "TO", "LINEAGE", "SOURCE", "TAKEN", "ACTION", "RESULT",
        ],
        rows,
    );
    for s in stages {
        let who = s
            .account
            .as_deref()
            .map_or_else(String::new, |a| format!("{a}: "));
        let to_copy = s.plan.to_copy().count();
        match &s.applied {
            Some(r) => {
                println!(
                    "\n{who}{} vault copies started, {} failed; {} shares taken back, {} still shared (copies in flight)",
                    r.started,
                    r.failed(),
                    r.unshared.len(),
                    r.still_shared.len()
                );
            }
            None if ctx.global.dry_run => println!(
                "\n{who}dry run: {to_copy} vault copies would start, {} shares would be taken back",
                s.plan.unshare.len()
            ),
            None => println!("\n{who}nothing to copy"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_copy_role_naming_the_source_is_one_role_per_source_account() {
        let source: AccountId = "111111111111".parse().unwrap();
        let vault: AccountId = "999999999999".parse().unwrap();
        assert_eq!(
            copy_role_of(
                "arn:aws:iam::{account}:role/ektool-vault-copy-{source}",
                &vault,
                &source
            ),
            "arn:aws:iam::999999999999:role/ektool-vault-copy-111111111111"
        );
        let shared = "arn:aws:iam::999999999999:role/ektool-vault-copy";
        assert_eq!(copy_role_of(shared, &vault, &source), shared);
    }
}
