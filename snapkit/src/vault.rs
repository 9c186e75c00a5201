//! Copies into a vault account: the newest snapshot of every selected
//! lineage, copied from the source account into another account that the
//! source account's credentials cannot delete from (see `docs/vault.md`
//! for the threat model).
//!
//! A copy across accounts needs the source snapshot shared with the vault
//! (`createVolumePermission`). Per copy, [`apply`]:
//!
//! 1. tags the source [`SHARED_WITH`](tags::SHARED_WITH)`=VAULT` — the
//!    journal: a share is only ever made on a tagged snapshot, so a run
//!    that crashed after it leaves a trace the next run finds;
//! 2. shares the source with the vault account;
//! 3. starts `CopySnapshot` **in the vault** (with the vault's
//!    credentials), encrypted when the source is or a vault key is given,
//!    tagged like a replicated copy ([`replicate::copy_request`]) plus
//!    [`SOURCE_ACCOUNT`](tags::SOURCE_ACCOUNT);
//! 4. once the copy completed or failed, removes the share, then the tag.
//!
//! Copies still in flight when the run ends keep their share; the next
//! run's [`plan`] lists their sources in [`VaultPlan::unshare`] once no
//! pending copy needs them any more, and so are shares a crash left
//! behind. The copies are the scheduler of [`replicate::apply`] (slots,
//! `ResourceLimitExceeded`, polling, waiting) on the vault's client, with
//! [`CopyOptions::settle_races`] off: the vault's copy role never calls
//! `DeleteSnapshot`, so two runs racing may leave a duplicate copy, which
//! the vault's retention ages out.
//!
//! A vault copy is recognised by its tags — source snapshot, source
//! region and source account — never by its lineage key, so a rerun
//! copies nothing twice.
//!
//! Snapshots encrypted with the AWS-managed EBS key (`alias/aws/ebs`)
//! cannot be shared with another account: the plan refuses them
//! ([`VaultAction::Refused`]) with the reason, instead of letting the copy
//! fail asynchronously.
//!
//! ```no_run
//! # async fn demo(source: &dyn ec2kit::Ec2, vault: &dyn ec2kit::Ec2) -> Result<(), Box<dyn std::error::Error>> {
//! use ec2kit::{AccountId, Region};
//! use snapkit::replicate::{CopyOptions, Selection};
//! use snapkit::vault::{self, VaultTarget};
//!
//! let me: AccountId = "111111111111".parse()?;
//! let target = VaultTarget {
//!     account: "999999999999".parse()?,
//!     region: Region::new("eu-central-1"),
//!     kms_key: None,
//! };
//! let from = Region::new("eu-central-1");
//! let plan = vault::plan(source, vault, &me, &from, &target, &Selection::default()).await?;
//! println!("{} lineages to copy", plan.to_copy().count());
//! let report = vault::apply(source, vault, &plan, &CopyOptions::default(), &|_| {}).await;
//! if report.failed() > 0 {
//!     return Err(format!("{} vault copies failed", report.failed()).into());
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};

use ec2kit::iam::{self, Implied, Permissions, Sometimes, When};
use ec2kit::requests::CopySnapshot;
use ec2kit::{
    AccountId, Action, Ec2, Ec2Error, Filter, Region, Snapshot, SnapshotId, SnapshotState, Tags,
};
use jiff::Timestamp;
use serde::Serialize;

use crate::lineage::{self, tags};
use crate::replicate::{
    self, CopyAction, CopyEvent, CopyItem, CopyOptions, CopyOutcome, ReplicationPlan, Selection,
};

/// What the source account calls: the sources and their shares (tag,
/// share, unshare, untag), and the key of encrypted sources.
pub const SOURCE_PERMISSIONS: Permissions = Permissions::calls(&[
    Action::DescribeSnapshots,
    Action::CreateTags,
    Action::DeleteTags,
    Action::ModifySnapshotAttribute,
])
.sometimes(&[Sometimes {
    when: When::Case("encrypted sources"),
    actions: &[Action::DescribeKey],
}]);

const VAULT_IMPLIED: &[Implied] = &[
    iam::TAG_ON_CREATE,
    iam::KMS_FOR_COPIES[0],
    iam::KMS_FOR_COPIES[1],
    iam::KMS_FOR_COPIES[2],
    iam::KMS_FOR_COPIES[3],
];

/// What the vault's copy role calls: its copies (looked up, started with
/// their tags, polled) and the KMS grants EBS uses for encrypted copies.
/// Never `DeleteSnapshot`.
pub const VAULT_PERMISSIONS: Permissions =
    Permissions::calls(&[Action::DescribeSnapshots, Action::CopySnapshot])
        .sometimes(&[Sometimes {
            when: When::Chosen("--kms-key"),
            actions: &[Action::DescribeKey],
        }])
        .implied(VAULT_IMPLIED);

/// Where the copies go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultTarget {
    /// The vault account.
    pub account: AccountId,
    /// The region the copies are made in.
    pub region: Region,
    /// The vault's KMS key for the copies (`None`: encrypted sources are
    /// copied under the vault's default EBS key).
    pub kms_key: Option<String>,
}

/// What a vault copy does for one lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum VaultAction {
    /// No copy in the vault yet: share and copy.
    Copy,
    /// A completed copy is in the vault.
    Present {
        /// The copy.
        copy: SnapshotId,
    },
    /// A copy is under way (an earlier run started it).
    InProgress {
        /// The copy.
        copy: SnapshotId,
    },
    /// The only copy ended in `error`: copy again.
    Recopy {
        /// The broken copy.
        failed: SnapshotId,
    },
    /// The source cannot be copied into another account.
    Refused {
        /// Why.
        reason: String,
    },
}

/// One lineage's line of a [`VaultPlan`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultItem {
    /// The lineage key (in the source account).
    pub lineage: String,
    /// The newest completed snapshot of the lineage in the source region.
    pub source: SnapshotId,
    /// When it was taken.
    pub taken: Timestamp,
    /// Whether the source is encrypted (its copy will be too).
    pub encrypted: bool,
    /// Whether the source is tagged as shared with the vault already (an
    /// earlier run's share).
    pub shared: bool,
    /// What happens.
    #[serde(flatten)]
    pub action: VaultAction,
    /// The request the vault sends for a `Copy`/`Recopy`, for review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<CopySnapshot>,
}

/// A vault copy from one source region, as a reviewable value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultPlan {
    /// The source account.
    pub source_account: AccountId,
    /// The source region.
    pub from: Region,
    /// Where the copies go.
    pub target: VaultTarget,
    /// One item per lineage, in lineage order.
    pub items: Vec<VaultItem>,
    /// Source snapshots shared with the vault (tagged
    /// [`SHARED_WITH`](tags::SHARED_WITH)) that no pending vault copy
    /// needs any more: left by a run whose copies were still in flight,
    /// or by a crash. [`apply`] takes their shares back.
    pub unshare: Vec<SnapshotId>,
}

impl VaultPlan {
    /// Items that start a copy.
    pub fn to_copy(&self) -> impl Iterator<Item = &VaultItem> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, VaultAction::Copy | VaultAction::Recopy { .. }))
    }

    /// Whether running the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.to_copy().next().is_none() && self.unshare.is_empty()
    }
}

/// Why a vault copy could not be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The vault is the source account itself.
    #[error("the vault account {0} is the source account: a vault is another account")]
    SameAccount(AccountId),
    /// Listing the source account's snapshots failed.
    #[error("source account {account}")]
    Source {
        /// The source account.
        account: AccountId,
        /// What EC2 said.
        #[source]
        source: Box<Ec2Error>,
    },
    /// Listing the vault's copies failed.
    #[error("vault account {account}")]
    Vault {
        /// The vault account.
        account: AccountId,
        /// What EC2 said.
        #[source]
        source: Box<Ec2Error>,
    },
}

/// The `CopySnapshot` request the vault sends for `source`: the tags of
/// [`replicate::copy_request`], plus [`SOURCE_ACCOUNT`](tags::SOURCE_ACCOUNT),
/// without the source's [`SHARED_WITH`](tags::SHARED_WITH).
pub fn copy_request(
    source: &Snapshot,
    from: &Region,
    source_account: &AccountId,
    lineage_key: &str,
    kms_key: Option<&str>,
) -> CopySnapshot {
    let mut request = replicate::copy_request(source, from, lineage_key, kms_key);
    request.tags.remove(tags::SHARED_WITH);
    request
        .tags
        .insert(tags::SOURCE_ACCOUNT, source_account.as_str());
    request.description = Some(format!(
        "ektool vault copy of {} from {source_account} {from} (lineage {lineage_key})",
        source.id
    ));
    request
}

/// The vault's copies from `source_account` in `from`, by source snapshot.
async fn vault_copies(
    vault: &dyn Ec2,
    region: &Region,
    source_account: &AccountId,
    from: &Region,
) -> Result<HashMap<String, Vec<Snapshot>>, Ec2Error> {
    let filters = [
        Filter::new(format!("tag:{}", tags::OWNER), [tags::OWNER_VALUE]),
        Filter::new(
            format!("tag:{}", tags::SOURCE_ACCOUNT),
            [source_account.as_str()],
        ),
        Filter::new(format!("tag:{}", tags::SOURCE_REGION), [from.as_str()]),
    ];
    let mut by_source: HashMap<String, Vec<Snapshot>> = HashMap::new();
    for c in vault.describe_snapshots(region, &filters).await? {
        // Re-checked: a listing is never trusted to have applied filters.
        if lineage::is_owned(&c)
            && c.tags.get(tags::SOURCE_ACCOUNT) == Some(source_account.as_str())
            && c.tags.get(tags::SOURCE_REGION) == Some(from.as_str())
            && let Some(src) = c.tags.get(tags::SOURCE_SNAPSHOT)
        {
            by_source.entry(src.to_owned()).or_default().push(c);
        }
    }
    Ok(by_source)
}

/// Why `source` cannot be shared, if its key says so: snapshots under an
/// AWS-managed key (`alias/aws/ebs`) cannot be. A key that cannot be
/// looked up is not held against the source (the copy then tells). Each
/// key is looked up once per plan (`seen`): a region's lineages mostly
/// share one or two keys.
async fn refusal(
    source_ec2: &dyn Ec2,
    from: &Region,
    source: &Snapshot,
    seen: &mut HashMap<String, Option<String>>,
) -> Option<String> {
    if !source.encrypted {
        return None;
    }
    let key = source.kms_key_id.as_deref()?;
    if let Some(verdict) = seen.get(key) {
        return verdict.clone();
    }
    let verdict = key_refusal(source_ec2, from, source, key).await;
    seen.insert(key.to_owned(), verdict.clone());
    verdict
}

/// [`refusal`] of one key, looked up.
async fn key_refusal(
    source_ec2: &dyn Ec2,
    from: &Region,
    source: &Snapshot,
    key: &str,
) -> Option<String> {
    match source_ec2.describe_kms_key(from, key).await {
        Ok(k) if k.is_aws_managed() => Some(format!(
            "encrypted with the AWS-managed key {key} (alias/aws/ebs), which cannot be shared \
             with another account; re-encrypt the volume's snapshots under a customer-managed key"
        )),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(snapshot = %source.id, key, error = %e, "could not look up the source's KMS key");
            None
        }
    }
}

/// Plans the vault copy of the selected lineages of `from` (in the source
/// account, `source`) into `target` (the vault account, `vault`).
pub async fn plan(
    source: &dyn Ec2,
    vault: &dyn Ec2,
    source_account: &AccountId,
    from: &Region,
    target: &VaultTarget,
    selection: &Selection,
) -> Result<VaultPlan, VaultError> {
    if &target.account == source_account {
        return Err(VaultError::SameAccount(target.account.clone()));
    }
    let src_err = |source| VaultError::Source {
        account: source_account.clone(),
        source: Box::new(source),
    };
    let sources = replicate::latest_per_lineage(source, from, selection)
        .await
        .map_err(src_err)?;
    let copies = vault_copies(vault, &target.region, source_account, from)
        .await
        .map_err(|source| VaultError::Vault {
            account: target.account.clone(),
            source: Box::new(source),
        })?;
    let shared_filter = [Filter::new(
        format!("tag:{}", tags::SHARED_WITH),
        [target.account.as_str()],
    )];
    let shared: BTreeSet<SnapshotId> = source
        .describe_snapshots(from, &shared_filter)
        .await
        .map_err(src_err)?
        .into_iter()
        .filter(|s| s.tags.get(tags::SHARED_WITH) == Some(target.account.as_str()))
        .map(|s| s.id)
        .collect();
    let mut items = Vec::new();
    let mut keys = HashMap::new();
    for (lineage_key, snap) in sources {
        let found = copies.get(snap.id.as_str());
        let pick = |state: SnapshotState| {
            found
                .into_iter()
                .flatten()
                .find(|c| c.state == state)
                .map(|c| c.id.clone())
        };
        let mut action = if let Some(copy) = pick(SnapshotState::Completed) {
            VaultAction::Present { copy }
        } else if let Some(copy) = pick(SnapshotState::Pending) {
            VaultAction::InProgress { copy }
        } else if let Some(failed) = pick(SnapshotState::Error) {
            VaultAction::Recopy { failed }
        } else {
            VaultAction::Copy
        };
        if matches!(action, VaultAction::Copy | VaultAction::Recopy { .. })
            && let Some(reason) = refusal(source, from, &snap, &mut keys).await
        {
            action = VaultAction::Refused { reason };
        }
        let request = matches!(action, VaultAction::Copy | VaultAction::Recopy { .. }).then(|| {
            copy_request(
                &snap,
                from,
                source_account,
                &lineage_key,
                target.kms_key.as_deref(),
            )
        });
        items.push(VaultItem {
            lineage: lineage_key,
            encrypted: snap.encrypted,
            taken: snap.start_time,
            shared: shared.contains(&snap.id),
            source: snap.id,
            action,
            request,
        });
    }
    // A share stays while a pending copy needs it or this plan copies
    // from it; every other one is taken back.
    let needed: HashSet<&str> = copies
        .iter()
        .filter(|(_, cs)| cs.iter().any(|c| c.state == SnapshotState::Pending))
        .map(|(src, _)| src.as_str())
        .chain(
            items
                .iter()
                .filter(|i| matches!(i.action, VaultAction::Copy | VaultAction::Recopy { .. }))
                .map(|i| i.source.as_str()),
        )
        .collect();
    let unshare = shared
        .into_iter()
        .filter(|s| !needed.contains(s.as_str()))
        .collect();
    Ok(VaultPlan {
        source_account: source_account.clone(),
        from: from.clone(),
        target: target.clone(),
        items,
        unshare,
    })
}

/// Progress of [`apply`], for bars and logs.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum VaultEvent<'a> {
    /// A source was shared with the vault (tag, then share).
    Shared {
        /// The source.
        source: &'a SnapshotId,
    },
    /// A source's share was taken back (share, then tag).
    Unshared {
        /// The source.
        source: &'a SnapshotId,
    },
    /// A share could not be made or taken back.
    ShareFailed {
        /// The source.
        source: &'a SnapshotId,
        /// Why.
        error: &'a str,
    },
    /// Progress of the copies in the vault.
    Copy(CopyEvent<'a>),
}

/// A share that could not be taken back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnshareFailure {
    /// The source, still shared (and tagged: the next run tries again).
    pub source: SnapshotId,
    /// Why.
    pub error: String,
}

/// The result for one lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultResult {
    /// The lineage.
    pub lineage: String,
    /// The source snapshot.
    pub source: SnapshotId,
    /// What happened.
    #[serde(flatten)]
    pub outcome: CopyOutcome,
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultReport {
    /// The source account.
    pub source_account: AccountId,
    /// The vault account.
    pub vault_account: AccountId,
    /// The source region.
    pub from: Region,
    /// The vault's region.
    pub to: Region,
    /// One result per planned item.
    pub results: Vec<VaultResult>,
    /// Copies started in the vault by this run.
    pub started: usize,
    /// Sources this run shared.
    pub shared: Vec<SnapshotId>,
    /// Sources whose share this run took back.
    pub unshared: Vec<SnapshotId>,
    /// Sources still shared because their copy is still in flight (the
    /// next run takes the share back once it is done).
    pub still_shared: Vec<SnapshotId>,
    /// Shares that could not be taken back.
    pub unshare_failed: Vec<UnshareFailure>,
}

impl VaultReport {
    /// This run as metrics: `ektool_vault_copies_started` and
    /// `ektool_vault_copy_failures` (failed items and shares that could
    /// not be taken back), labelled with the vault account.
    pub fn add_metrics(&self, m: &mut crate::metrics::Metrics) {
        let vault = [("vault", self.vault_account.as_str())];
        m.gauge(
            "ektool_vault_copies_started",
            "Copies into the vault account the last run started.",
        )
        .sample(&vault, self.started as f64);
        m.gauge(
            "ektool_vault_copy_failures",
            "Vault copies of the last run that failed, and shares it could not take back.",
        )
        .sample(&vault, self.failed() as f64);
    }

    /// Items that failed, and shares that could not be taken back.
    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, CopyOutcome::Failed { .. }))
            .count()
            + self.unshare_failed.len()
    }
}

/// Tags `source` as shared with `vault`, then shares it.
async fn share(
    ec2: &dyn Ec2,
    from: &Region,
    source: &SnapshotId,
    vault: &AccountId,
) -> Result<(), Ec2Error> {
    let journal = Tags::new().with(tags::SHARED_WITH, vault.as_str());
    ec2.create_tags(from, &[source.to_string()], &journal, false)
        .await?;
    ec2.share_snapshot(from, source, vault, true).await
}

/// Takes the share of `source` with `vault` back, then its tag.
async fn unshare(
    ec2: &dyn Ec2,
    from: &Region,
    source: &SnapshotId,
    vault: &AccountId,
) -> Result<(), Ec2Error> {
    match ec2.share_snapshot(from, source, vault, false).await {
        Ok(()) => {}
        // A source deleted meanwhile has no share left to take back.
        Err(e) if e.kind == ec2kit::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    ec2.delete_tags(
        from,
        &[source.to_string()],
        &[tags::SHARED_WITH.to_owned()],
        false,
    )
    .await
}

/// Runs a plan: shares, copies in the vault (the scheduler of
/// [`replicate::apply`], never deleting there), then takes back every
/// share no copy in flight needs. `source` holds the source account's
/// credentials, `vault` the vault copy role's.
pub async fn apply(
    source: &dyn Ec2,
    vault: &dyn Ec2,
    plan: &VaultPlan,
    options: &CopyOptions,
    on_event: &(dyn Fn(VaultEvent<'_>) + Send + Sync),
) -> VaultReport {
    let from = &plan.from;
    let account = &plan.target.account;
    let mut report = VaultReport {
        source_account: plan.source_account.clone(),
        vault_account: account.clone(),
        from: from.clone(),
        to: plan.target.region.clone(),
        results: Vec::new(),
        started: 0,
        shared: Vec::new(),
        unshared: Vec::new(),
        still_shared: Vec::new(),
        unshare_failed: Vec::new(),
    };
    // Shares first; an item whose share failed is not copied.
    let mut refused: HashMap<usize, String> = HashMap::new();
    let mut copy_items = Vec::new();
    for (i, item) in plan.items.iter().enumerate() {
        let action = match &item.action {
            VaultAction::Copy | VaultAction::Recopy { .. } => {
                match share(source, from, &item.source, account).await {
                    Ok(()) => {
                        on_event(VaultEvent::Shared {
                            source: &item.source,
                        });
                        report.shared.push(item.source.clone());
                        CopyAction::Copy
                    }
                    Err(e) => {
                        let error = format!("could not share {} with {account}: {e}", item.source);
                        on_event(VaultEvent::ShareFailed {
                            source: &item.source,
                            error: &error,
                        });
                        refused.insert(i, error);
                        continue;
                    }
                }
            }
            VaultAction::Present { copy } => CopyAction::Present { copy: copy.clone() },
            VaultAction::InProgress { copy } => CopyAction::InProgress { copy: copy.clone() },
            VaultAction::Refused { reason } => {
                refused.insert(i, reason.clone());
                continue;
            }
        };
        copy_items.push((
            i,
            CopyItem {
                lineage: item.lineage.clone(),
                source: item.source.clone(),
                taken: item.taken,
                encrypted: item.encrypted,
                action,
                request: item.request.clone(),
            },
        ));
    }
    let (indexes, items): (Vec<usize>, Vec<CopyItem>) = copy_items.into_iter().unzip();
    let copies = ReplicationPlan {
        from: from.clone(),
        to: plan.target.region.clone(),
        items,
    };
    let options = CopyOptions {
        settle_races: false,
        ..options.clone()
    };
    let done = replicate::apply(vault, &[copies], &options, &|e| {
        on_event(VaultEvent::Copy(e));
    })
    .await;
    report.started = done.started;
    let mut outcomes: HashMap<usize, CopyOutcome> = indexes
        .into_iter()
        .zip(done.results.into_iter().map(|r| r.outcome))
        .collect();
    for (i, error) in refused {
        outcomes.insert(i, CopyOutcome::Failed { error });
    }
    // Unshare what is done with: copies completed or failed (a copy of
    // this run or an earlier one), and the plan's left-overs.
    let mut to_unshare: Vec<SnapshotId> = plan.unshare.clone();
    for (i, item) in plan.items.iter().enumerate() {
        let Some(outcome) = outcomes.remove(&i) else {
            continue;
        };
        let was_shared = item.shared || report.shared.contains(&item.source);
        match &outcome {
            CopyOutcome::InFlight { .. } if was_shared => {
                report.still_shared.push(item.source.clone());
            }
            CopyOutcome::Completed { .. }
            | CopyOutcome::Failed { .. }
            | CopyOutcome::Present { .. }
                if was_shared && !to_unshare.contains(&item.source) =>
            {
                to_unshare.push(item.source.clone());
            }
            _ => {}
        }
        report.results.push(VaultResult {
            lineage: item.lineage.clone(),
            source: item.source.clone(),
            outcome,
        });
    }
    for s in to_unshare {
        match unshare(source, from, &s, account).await {
            Ok(()) => {
                on_event(VaultEvent::Unshared { source: &s });
                report.unshared.push(s);
            }
            Err(e) => {
                let error = e.to_string();
                on_event(VaultEvent::ShareFailed {
                    source: &s,
                    error: &error,
                });
                report
                    .unshare_failed
                    .push(UnshareFailure { source: s, error });
            }
        }
    }
    report
}

#[cfg(test)]
mod tests;
