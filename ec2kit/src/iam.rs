//! Least-privilege IAM policies, built from what operations call.
//!
//! Every operation of the toolkit that calls AWS states its
//! [`Permissions`] next to it (`snapkit::trim::PERMISSIONS`,
//! [`fleet::REGION_CATALOG_PERMISSIONS`](crate::fleet::REGION_CATALOG_PERMISSIONS),
//! …): the actions every run calls, the actions only some runs call and
//! [`When`], and what AWS authorises on the caller's behalf without a call
//! of its own ([`Implied`]). A [`Policy`] is the union of the permissions
//! one program runs (a CLI command, a team's nightly job), and
//! [`document`] makes the IAM policy document of a set of policies: per
//! policy, one statement of what every run calls and one per [`When`].
//!
//! ```
//! use ec2kit::Action::{DescribeSnapshots, DeleteSnapshot};
//! use ec2kit::fleet::REGION_CATALOG_PERMISSIONS;
//! use ec2kit::iam::{self, Permissions, Policy, When};
//!
//! const TRIM: Permissions = Permissions::calls(&[DescribeSnapshots, DeleteSnapshot]);
//! let nightly = Policy::new("nightly trim")
//!     .grant(&REGION_CATALOG_PERMISSIONS)
//!     .grant(&TRIM);
//! let doc = iam::document(&[nightly], None);
//! assert_eq!(doc.statement[0].sid, "NightlyTrim");
//! assert_eq!(
//!     doc.statement[0].action,
//!     ["ec2:DeleteSnapshot", "ec2:DescribeRegions", "ec2:DescribeSnapshots"]
//! );
//! ```
//!
//! With an [`Ownership`] the same actions are granted under tag
//! conditions: deletes, detaches and attaches only on volumes and
//! snapshots carrying the owner tag (`aws:ResourceTag`), creates only when
//! the request carries it (`aws:RequestTag`), `CreateTags` only as part of
//! a create (`ec2:CreateAction`) or, as a call of its own, never for a
//! reserved key. A stolen or misused role then cannot delete what the
//! toolkit never made.

use std::collections::BTreeSet;

use serde::{Serialize, Serializer};

use crate::Action::{self, *};

/// The AWS permissions one operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Actions every run calls.
    pub actions: &'static [Action],
    /// Actions only some runs call.
    pub sometimes: &'static [Sometimes],
    /// Permissions AWS checks on the caller's behalf.
    pub implied: &'static [Implied],
}

impl Permissions {
    /// An operation that calls nothing.
    pub const NONE: Self = Self::calls(&[]);

    /// An operation that calls `actions` on every run, and nothing else.
    pub const fn calls(actions: &'static [Action]) -> Self {
        Self {
            actions,
            sometimes: &[],
            implied: &[],
        }
    }

    /// These permissions, with actions only some runs call.
    #[must_use]
    pub const fn sometimes(self, sometimes: &'static [Sometimes]) -> Self {
        Self { sometimes, ..self }
    }

    /// These permissions, with what AWS checks on the caller's behalf.
    #[must_use]
    pub const fn implied(self, implied: &'static [Implied]) -> Self {
        Self { implied, ..self }
    }
}

/// Actions an operation calls only in some runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sometimes {
    /// Which runs.
    pub when: When,
    /// What they call beyond the operation's own actions.
    pub actions: &'static [Action],
}

/// Which runs call an operation's extra actions. The label names the
/// statement of those actions (`…WithAConcurrentRun`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "label")]
#[non_exhaustive]
pub enum When {
    /// The caller asks for it: an option of the call, a setting, a
    /// command-line flag (`--kms-key`, `hosts by EC2 tag`).
    Chosen(&'static str),
    /// The run meets it without anyone choosing: another run racing this
    /// one, a failure being undone (`a concurrent run`, `on-failure`).
    Case(&'static str),
}

impl When {
    /// The label, e.g. `--kms-key`, `a concurrent run`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Chosen(l) | Self::Case(l) => l,
        }
    }

    /// `chosen` or `case`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Chosen(_) => "chosen",
            Self::Case(_) => "case",
        }
    }
}

/// A permission AWS checks on the caller's behalf, without an API call of
/// its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Implied {
    /// The IAM action, e.g. `ec2:CreateTags`.
    pub action: &'static str,
    /// Why AWS checks it.
    pub why: &'static str,
}

/// Tags given with a create (`TagSpecifications`), which EC2 authorises as
/// `ec2:CreateTags`.
pub const TAG_ON_CREATE: Implied = Implied {
    action: "ec2:CreateTags",
    why: "tags are applied at creation (TagSpecifications), which EC2 authorises as CreateTags",
};

/// What EBS does with a caller's KMS key on its behalf when it copies
/// snapshots encrypted with that key.
pub const KMS_FOR_COPIES: &[Implied] = &[
    Implied {
        action: "kms:CreateGrant",
        why: "EBS encrypts copies with the key on your behalf",
    },
    Implied {
        action: "kms:Decrypt",
        why: "EBS reads encrypted sources on your behalf",
    },
    Implied {
        action: "kms:GenerateDataKeyWithoutPlaintext",
        why: "EBS encrypts copies on your behalf",
    },
    Implied {
        action: "kms:ReEncrypt*",
        why: "EBS re-encrypts copies on your behalf",
    },
];

/// The creates whose tags come with the request (`TagSpecifications`):
/// the actions [`Ownership`] conditions on the request's tags, and the
/// `ec2:CreateAction`s [`TAG_ON_CREATE`] is limited to.
pub const CREATES: &[Action] = &[
    CreateSnapshot,
    CreateSnapshots,
    CopySnapshot,
    CreateVolume,
    RegisterImage,
    CopyImage,
];

/// Creates with tags in the request that only some policies grant: their
/// `ec2:CreateAction` joins [`TAG_ON_CREATE`]'s list only in a policy that
/// calls them, and they too need the ownership tag in the request.
pub const OCCASIONAL_CREATES: &[Action] = &[CreateImage];

/// What one program needs: the union of the [`Permissions`] of the
/// operations it runs. Built with [`Policy::grant`] and
/// [`Policy::grant_when`]; lists keep the order actions were first
/// granted in, without repeats, and a conditional never repeats what
/// every run calls anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// What the policy is for, e.g. `snap backup`.
    pub name: String,
    /// The statement id of its first statement (alphanumeric); the
    /// others add `With<When>` or a number.
    pub sid: String,
    /// Actions every run calls.
    pub actions: Vec<Action>,
    /// Permissions AWS checks on every run's behalf.
    pub implied: Vec<Implied>,
    /// Actions only some runs call: what was chosen first, then cases.
    pub conditional: Vec<Conditional>,
}

/// The actions of a [`Policy`] only some runs call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conditional {
    /// Which runs.
    pub when: When,
    /// What they call that every run does not.
    pub actions: Vec<Action>,
    /// What AWS checks on their behalf that it does not on every run's.
    pub implied: Vec<Implied>,
}

impl Policy {
    /// An empty policy; its statement ids are `name` in camel case
    /// (`snap backup` → `SnapBackup`).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            sid: sid(&name),
            name,
            actions: Vec::new(),
            implied: Vec::new(),
            conditional: Vec::new(),
        }
    }

    /// The same policy with statement ids from `sid` (made alphanumeric,
    /// as IAM requires).
    #[must_use]
    pub fn with_sid(mut self, sid: &str) -> Self {
        self.sid = self::sid(sid);
        self
    }

    /// Adds an operation every run runs: its actions and implied
    /// permissions for every run, its [`Sometimes`] as conditionals.
    #[must_use]
    pub fn grant(mut self, p: &Permissions) -> Self {
        add(&mut self.actions, p.actions);
        add(&mut self.implied, p.implied);
        self.sometimes(p.sometimes);
        self.normalise();
        self
    }

    /// Adds an operation only the runs `when` describes run: all its
    /// permissions are conditional on `when` (its own [`Sometimes`] keep
    /// theirs).
    #[must_use]
    pub fn grant_when(mut self, when: When, p: &Permissions) -> Self {
        let c = self.conditional_mut(when);
        add(&mut c.actions, p.actions);
        add(&mut c.implied, p.implied);
        self.sometimes(p.sometimes);
        self.normalise();
        self
    }

    /// Every IAM action the policy grants, conditional ones included.
    pub fn iam_actions(&self) -> BTreeSet<String> {
        let mut all = names(&self.actions, &self.implied);
        for c in &self.conditional {
            all.extend(names(&c.actions, &c.implied));
        }
        all
    }

    fn sometimes(&mut self, sometimes: &[Sometimes]) {
        for s in sometimes {
            add(&mut self.conditional_mut(s.when).actions, s.actions);
        }
    }

    fn conditional_mut(&mut self, when: When) -> &mut Conditional {
        let i = match self.conditional.iter().position(|c| c.when == when) {
            Some(i) => i,
            None => {
                self.conditional.push(Conditional {
                    when,
                    actions: Vec::new(),
                    implied: Vec::new(),
                });
                self.conditional.len() - 1
            }
        };
        &mut self.conditional[i]
    }

    /// Conditionals hold only what every run does not already get, and
    /// what was chosen comes before what merely happens (a stable order,
    /// whatever order the operations were granted in).
    fn normalise(&mut self) {
        for c in &mut self.conditional {
            c.actions.retain(|a| !self.actions.contains(a));
            c.implied.retain(|i| !self.implied.contains(i));
        }
        self.conditional
            .retain(|c| !c.actions.is_empty() || !c.implied.is_empty());
        self.conditional
            .sort_by_key(|c| matches!(c.when, When::Case(_)));
    }
}

fn add<T: PartialEq + Copy>(list: &mut Vec<T>, items: &[T]) {
    for i in items {
        if !list.contains(i) {
            list.push(*i);
        }
    }
}

/// The IAM action names of `actions` and `implied`, sorted.
fn names(actions: &[Action], implied: &[Implied]) -> BTreeSet<String> {
    actions
        .iter()
        .map(|a| a.iam_action())
        .chain(implied.iter().map(|i| i.action.to_owned()))
        .collect()
}

/// A statement id from any text: its alphanumeric words, each capitalised
/// (`snap replicate-all` → `SnapReplicateAll`, `--kms-key` → `KmsKey`).
pub fn sid(text: &str) -> String {
    let mut s = String::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            s.extend(first.to_uppercase());
            s.extend(chars);
        }
    }
    s
}

/// The tag that marks what the toolkit made, for the conditions of a
/// restricted policy ([`document`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership<'a> {
    /// The owner tag's key, e.g. `ektool:owner`.
    pub key: &'a str,
    /// Its value.
    pub value: &'a str,
    /// The tag keys only the toolkit writes, as an IAM pattern (e.g.
    /// `ektool:*`): `CreateTags` as a call of its own never sets them.
    pub reserved_keys: &'a str,
}

/// An IAM policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Document {
    /// The policy language version, `2012-10-17`.
    pub version: &'static str,
    /// The statements.
    pub statement: Vec<Statement>,
}

impl Document {
    /// Grants `ec2:CreateTags` of exactly `keys` on snapshots carrying
    /// `owner`'s tag: a journal tag (like the vault copy's
    /// `ektool:shared-with`) that a restricted policy's reserved keys
    /// would otherwise refuse, on ektool's own snapshots only.
    pub fn grant_journal_tags(&mut self, sid: &str, owner: &Ownership<'_>, keys: &[&str]) {
        self.statement.push(Statement {
            sid: sid.to_owned(),
            effect: "Allow",
            action: vec!["ec2:CreateTags".to_owned()],
            resource: "arn:aws:ec2:*:*:snapshot/*",
            condition: Some(Condition::OwnedWithTagKeys {
                key: owner.key.to_owned(),
                value: owner.value.to_owned(),
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            }),
        });
    }

    /// Narrows the grant of `actions` (IAM names, e.g. `ec2:CopySnapshot`)
    /// to requests that also tag the new resource `key=value`: a statement
    /// granting some of them gets the tag added to its condition (split
    /// from the actions it grants besides, which stay as they were).
    pub fn require_request_tag(&mut self, actions: &[&str], key: &str, value: &str) {
        let mut out = Vec::with_capacity(self.statement.len());
        for st in self.statement.drain(..) {
            let (tagged, rest): (Vec<String>, Vec<String>) = st
                .action
                .iter()
                .cloned()
                .partition(|a| actions.contains(&a.as_str()));
            if tagged.is_empty() {
                out.push(st);
                continue;
            }
            let narrowed = Statement {
                sid: if rest.is_empty() {
                    st.sid.clone()
                } else {
                    format!("{}Tagged", st.sid)
                },
                effect: st.effect,
                action: tagged,
                resource: st.resource,
                condition: Some(Condition::AlsoRequestTag {
                    base: st.condition.clone().map(Box::new),
                    key: key.to_owned(),
                    value: value.to_owned(),
                }),
            };
            if !rest.is_empty() {
                out.push(Statement { action: rest, ..st });
            }
            out.push(narrowed);
        }
        self.statement = out;
    }
}

/// One statement of a [`Document`]: it allows `action` on `resource`,
/// under `condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Statement {
    /// Its id (alphanumeric).
    pub sid: String,
    /// Always `Allow`: policies here only grant.
    pub effect: &'static str,
    /// IAM actions, sorted.
    pub action: Vec<String>,
    /// An ARN pattern, or `*`.
    pub resource: &'static str,
    /// When the grant applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

/// An IAM condition a [`Statement`] is granted under.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Condition {
    /// The resource carries this tag (`aws:ResourceTag/KEY`).
    ResourceTag {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// The request tags the new resource so (`aws:RequestTag/KEY`).
    RequestTag {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Only as part of one of these creates (`ec2:CreateAction`).
    CreateAction(Vec<&'static str>),
    /// No tag key of the request is like this pattern (`aws:TagKeys`).
    TagKeysNotLike(String),
    /// The resource carries the tag `key=value`, and every tag key of the
    /// request is one of `keys` (see [`Document::grant_journal_tags`]).
    OwnedWithTagKeys {
        /// The ownership tag's key.
        key: String,
        /// Its value.
        value: String,
        /// The only keys the request may set.
        keys: Vec<String>,
    },
    /// `base` (or nothing), and the request tags the new resource
    /// `key=value` as well (see [`Document::require_request_tag`]).
    AlsoRequestTag {
        /// The condition it narrows.
        base: Option<Box<Condition>>,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value = match self {
            Self::ResourceTag { key, value } => {
                serde_json::json!({ "StringEquals": { format!("aws:ResourceTag/{key}"): value } })
            }
            Self::RequestTag { key, value } => {
                serde_json::json!({ "StringEquals": { format!("aws:RequestTag/{key}"): value } })
            }
            Self::CreateAction(creates) => {
                serde_json::json!({ "StringEquals": { "ec2:CreateAction": creates } })
            }
            Self::TagKeysNotLike(pattern) => {
                serde_json::json!({ "ForAllValues:StringNotLike": { "aws:TagKeys": [pattern] } })
            }
            Self::OwnedWithTagKeys { key, value, keys } => serde_json::json!({
                "StringEquals": { format!("aws:ResourceTag/{key}"): value },
                "ForAllValues:StringEquals": { "aws:TagKeys": keys },
            }),
            Self::AlsoRequestTag { base, key, value } => {
                let mut all = base
                    .as_ref()
                    .and_then(|b| serde_json::to_value(b).ok())
                    .unwrap_or_else(|| serde_json::json!({}));
                // Keys of one operator are ANDed: the tag joins the
                // base's StringEquals.
                if let Some(ops) = all.as_object_mut() {
                    let eq = ops
                        .entry("StringEquals")
                        .or_insert_with(|| serde_json::json!({}));
                    if let Some(eq) = eq.as_object_mut() {
                        eq.insert(format!("aws:RequestTag/{key}"), value.clone().into());
                    }
                }
                all
            }
        };
        value.serialize(s)
    }
}

/// The IAM policy document granting `policies`: per policy, a statement
/// of what every run calls (left out when that is nothing: IAM rejects a
/// statement without actions) and one per conditional, `With<label>`.
/// With `restrict`, each of those is split by resource and condition (see
/// the module docs), the parts numbered `2`, `3`, ….
pub fn document(policies: &[Policy], restrict: Option<&Ownership<'_>>) -> Document {
    let mut statement = Vec::new();
    for p in policies {
        // Every action the program may call: an occasional create granted
        // only with a flag still joins the tag-on-create list.
        let all: Vec<Action> = p
            .actions
            .iter()
            .chain(p.conditional.iter().flat_map(|c| c.actions.iter()))
            .copied()
            .collect();
        statement.extend(statements(&p.sid, &p.actions, &p.implied, restrict, &all));
        for c in &p.conditional {
            let sid = format!("{}With{}", p.sid, sid(c.when.label()));
            statement.extend(statements(&sid, &c.actions, &c.implied, restrict, &all));
        }
    }
    Document {
        version: "2012-10-17",
        statement,
    }
}

/// The statements granting `actions` and `implied`, ids from `sid`.
fn statements(
    sid: &str,
    actions: &[Action],
    implied: &[Implied],
    restrict: Option<&Ownership<'_>>,
    all: &[Action],
) -> Vec<Statement> {
    let Some(owner) = restrict else {
        let action: Vec<String> = names(actions, implied).into_iter().collect();
        if action.is_empty() {
            return Vec::new();
        }
        return vec![Statement {
            sid: sid.to_owned(),
            effect: "Allow",
            action,
            resource: "*",
            condition: None,
        }];
    };
    let mut groups: Vec<(&'static str, Option<Condition>, BTreeSet<String>)> = Vec::new();
    let mut add =
        |resource: &'static str, condition: Option<Condition>, action: String| match groups
            .iter_mut()
            .find(|(r, c, _)| *r == resource && *c == condition)
        {
            Some((_, _, list)) => {
                list.insert(action);
            }
            None => groups.push((resource, condition, BTreeSet::from([action]))),
        };
    for a in actions {
        for (resource, condition) in restricted(*a, owner) {
            add(resource, condition, a.iam_action());
        }
    }
    for i in implied {
        if i.action == TAG_ON_CREATE.action {
            // Tags at creation: allowed only as part of one of the creates.
            let creates = CREATES
                .iter()
                .chain(OCCASIONAL_CREATES.iter().filter(|c| all.contains(c)))
                .map(|a| a.as_str())
                .collect();
            add(
                "*",
                Some(Condition::CreateAction(creates)),
                i.action.to_owned(),
            );
        } else {
            add("*", None, i.action.to_owned());
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (resource, condition, action))| Statement {
            sid: if i == 0 {
                sid.to_owned()
            } else {
                format!("{sid}{}", i + 1)
            },
            effect: "Allow",
            action: action.into_iter().collect(),
            resource,
            condition,
        })
        .collect()
}

/// How a restricted policy grants one action: (resource, condition) pairs.
fn restricted(action: Action, owner: &Ownership<'_>) -> Vec<(&'static str, Option<Condition>)> {
    let owned = || {
        Some(Condition::ResourceTag {
            key: owner.key.to_owned(),
            value: owner.value.to_owned(),
        })
    };
    match action {
        // `ami trim`: only AMIs tagged as ektool's.
        DeregisterImage => vec![("arn:aws:ec2:*::image/*", owned())],
        // Archiving changes the bill and the restore time, sharing hands
        // the data to another account, untagging undoes a journal: ours
        // only.
        DeleteSnapshot | ModifySnapshotTier | ModifySnapshotAttribute | DeleteTags => {
            vec![("arn:aws:ec2:*:*:snapshot/*", owned())]
        }
        DeleteVolume => vec![("arn:aws:ec2:*:*:volume/*", owned())],
        // The volume must be the toolkit's; the instance is whatever it is.
        AttachVolume | DetachVolume => vec![
            ("arn:aws:ec2:*:*:volume/*", owned()),
            ("arn:aws:ec2:*:*:instance/*", None),
        ],
        a if CREATES.contains(&a) || OCCASIONAL_CREATES.contains(&a) => vec![(
            "*",
            Some(Condition::RequestTag {
                key: owner.key.to_owned(),
                value: owner.value.to_owned(),
            }),
        )],
        // A call of its own (copying user tags): never a reserved key.
        CreateTags => vec![(
            "*",
            Some(Condition::TagKeysNotLike(owner.reserved_keys.to_owned())),
        )],
        _ => vec![("*", None)],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const OWNER: Ownership<'static> = Ownership {
        key: "ektool:owner",
        value: "ektool",
        reserved_keys: "ektool:*",
    };

    const BACKUP: Permissions =
        Permissions::calls(&[DescribeVolumes, DescribeSnapshots, CreateSnapshots])
            .sometimes(&[Sometimes {
                when: When::Case("a concurrent run"),
                actions: &[DeleteSnapshot],
            }])
            .implied(&[TAG_ON_CREATE]);
    const VOLUMES: Permissions =
        Permissions::calls(&[DescribeVolumes, DescribeSnapshots, CreateSnapshot])
            .sometimes(&[Sometimes {
                when: When::Case("a concurrent run"),
                actions: &[DeleteSnapshot],
            }])
            .implied(&[TAG_ON_CREATE]);
    const REPLICATE: Permissions = Permissions::calls(&[DescribeSnapshots, CopySnapshot])
        .sometimes(&[Sometimes {
            when: When::Case("a concurrent run"),
            actions: &[DeleteSnapshot],
        }])
        .implied(&[TAG_ON_CREATE]);
    const KMS: Permissions = Permissions::calls(&[DescribeKey]).implied(KMS_FOR_COPIES);

    fn json(doc: &Document) -> serde_json::Value {
        serde_json::to_value(doc).unwrap()
    }

    /// A copy role per source account: copies, and their tags at
    /// creation, only with that account's tag in the request; the other
    /// actions untouched.
    #[test]
    fn a_required_request_tag_narrows_only_the_named_actions() {
        let p = Policy::new("vault copy").grant(&REPLICATE);
        for restrict in [None, Some(&OWNER)] {
            let mut doc = document(std::slice::from_ref(&p), restrict);
            doc.require_request_tag(
                &["ec2:CopySnapshot", "ec2:CreateTags"],
                "ektool:source-account",
                "111111111111",
            );
            let v = json(&doc);
            let sts = v["Statement"].as_array().unwrap();
            let with = |action: &str| {
                sts.iter()
                    .filter(|s| s["Action"].as_array().unwrap().iter().any(|a| a == action))
                    .collect::<Vec<_>>()
            };
            for a in ["ec2:CopySnapshot", "ec2:CreateTags"] {
                for s in with(a) {
                    assert_eq!(
                        s["Condition"]["StringEquals"]["aws:RequestTag/ektool:source-account"],
                        "111111111111",
                        "{restrict:?} {a}: {s}"
                    );
                }
                assert!(!with(a).is_empty(), "{a}");
            }
            for s in with("ec2:DescribeSnapshots") {
                assert!(
                    s["Condition"]["StringEquals"]
                        .get("aws:RequestTag/ektool:source-account")
                        .is_none(),
                    "{s}"
                );
                assert!(
                    s["Action"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|a| a != "ec2:CopySnapshot")
                );
            }
            if restrict.is_some() {
                // The base conditions stay: the owner tag on the copy, tags
                // only at creation.
                let copy = with("ec2:CopySnapshot");
                assert_eq!(
                    copy[0]["Condition"]["StringEquals"]["aws:RequestTag/ektool:owner"],
                    "ektool"
                );
                let tag = with("ec2:CreateTags");
                assert!(
                    tag[0]["Condition"]["StringEquals"]["ec2:CreateAction"].is_array(),
                    "{}",
                    tag[0]
                );
            }
        }
    }

    /// Sharing a snapshot with another account and removing tags (the
    /// vault copy's source side) only on ektool's snapshots.
    #[test]
    fn shares_and_untagging_are_restricted_to_owned_snapshots() {
        let source = Policy::new("vault source").grant(&Permissions::calls(&[
            DescribeSnapshots,
            ModifySnapshotAttribute,
            DeleteTags,
        ]));
        let doc = json(&document(std::slice::from_ref(&source), Some(&OWNER)));
        let owned = doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Resource"] == "arn:aws:ec2:*:*:snapshot/*")
            .unwrap();
        assert_eq!(
            owned["Action"],
            serde_json::json!(["ec2:DeleteTags", "ec2:ModifySnapshotAttribute"])
        );
        assert_eq!(
            owned["Condition"],
            serde_json::json!({ "StringEquals": { "aws:ResourceTag/ektool:owner": "ektool" } })
        );
    }

    /// `CreateImage` joins the `ec2:CreateAction` list only of a policy
    /// that may call it, even under a flag, and needs the ownership tag in
    /// the request; `ModifySnapshotTier` and `DeregisterImage` only on
    /// ektool's resources.
    #[test]
    fn occasional_creates_and_new_destructive_actions_are_restricted() {
        let create = Policy::new("ami create")
            .grant(&REPLICATE)
            .grant_when(
                When::Chosen("--instance"),
                &Permissions::calls(&[CreateImage]).implied(&[TAG_ON_CREATE]),
            )
            .grant(&Permissions::calls(&[ModifySnapshotTier, DeregisterImage]));
        let doc = json(&document(std::slice::from_ref(&create), Some(&OWNER)));
        let statements = doc["Statement"].as_array().unwrap();
        let with = |action: &str| {
            statements
                .iter()
                .find(|s| s["Action"].as_array().unwrap().iter().any(|a| a == action))
                .unwrap()
                .clone()
        };
        let tags = with("ec2:CreateTags");
        let creates = tags["Condition"]["StringEquals"]["ec2:CreateAction"].to_string();
        assert!(creates.contains("\"CreateImage\""), "{tags}");
        assert!(
            with("ec2:CreateImage")["Condition"]
                .to_string()
                .contains("aws:RequestTag/ektool:owner")
        );
        for a in ["ec2:ModifySnapshotTier", "ec2:DeregisterImage"] {
            assert!(
                with(a)["Condition"]
                    .to_string()
                    .contains("aws:ResourceTag/ektool:owner"),
                "{a}"
            );
        }
        let without = json(&document(
            &[Policy::new("r").grant(&REPLICATE)],
            Some(&OWNER),
        ));
        assert!(!without.to_string().contains("CreateImage"));
    }

    #[test]
    fn conditionals_hold_only_what_every_run_lacks_chosen_first() {
        // Granted in the "wrong" order on purpose.
        let p = Policy::new("snap backup")
            .grant_when(When::Chosen("--volume"), &VOLUMES)
            .grant(&Permissions::calls(&[DescribeRegions, DescribeInstances]))
            .grant(&BACKUP);
        assert_eq!(
            p.actions,
            [
                DescribeRegions,
                DescribeInstances,
                DescribeVolumes,
                DescribeSnapshots,
                CreateSnapshots
            ]
        );
        let whens: Vec<When> = p.conditional.iter().map(|c| c.when).collect();
        assert_eq!(
            whens,
            [When::Chosen("--volume"), When::Case("a concurrent run")]
        );
        assert_eq!(p.conditional[0].actions, [CreateSnapshot]);
        assert!(p.conditional[0].implied.is_empty(), "{p:?}");
        assert_eq!(p.conditional[1].actions, [DeleteSnapshot]);
        assert_eq!(p.implied, [TAG_ON_CREATE]);
    }

    #[test]
    fn a_policy_that_calls_nothing_on_every_run_has_only_its_conditional_statement() {
        let deploy = Policy::new("deploy").with_sid("Ektool deploy").grant_when(
            When::Chosen("hosts by EC2 tag"),
            &Permissions::calls(&[DescribeRegions, DescribeInstances]),
        );
        for restrict in [None, Some(&OWNER)] {
            let doc = document(std::slice::from_ref(&deploy), restrict);
            assert_eq!(doc.statement.len(), 1);
            assert_eq!(doc.statement[0].sid, "EktoolDeployWithHostsByEC2Tag");
            assert!(!doc.statement[0].action.is_empty());
        }
    }

    #[test]
    fn documents_are_valid_iam_shapes() {
        let p = Policy::new("snap replicate")
            .with_sid("Ektool snap replicate")
            .grant(&Permissions::calls(&[DescribeRegions]))
            .grant(&REPLICATE)
            .grant_when(When::Chosen("--kms-key"), &KMS);
        let doc = document(&[p], None);
        let v = json(&doc);
        assert_eq!(v["Version"], "2012-10-17");
        let st = v["Statement"].as_array().unwrap();
        assert_eq!(st.len(), 3);
        assert_eq!(st[0]["Sid"], "EktoolSnapReplicate");
        assert_eq!(st[1]["Sid"], "EktoolSnapReplicateWithKmsKey");
        assert_eq!(st[2]["Sid"], "EktoolSnapReplicateWithAConcurrentRun");
        let has = |i: usize, a: &str| {
            st[i]["Action"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(a))
        };
        assert!(has(0, "ec2:CopySnapshot") && has(0, "ec2:CreateTags"));
        assert!(has(1, "kms:DescribeKey") && has(1, "kms:CreateGrant"));
        assert!(!has(1, "ec2:CopySnapshot"));
        for s in st {
            assert_eq!(s["Effect"], "Allow");
            assert_eq!(s["Resource"], "*");
            assert!(s.get("Condition").is_none(), "{s}");
            let sid = s["Sid"].as_str().unwrap();
            assert!(sid.chars().all(|c| c.is_ascii_alphanumeric()), "{sid}");
        }
    }

    /// The restricted policy grants the same actions, and no delete,
    /// detach or create without the owner tag condition.
    #[test]
    fn restricted_documents_condition_every_destructive_action_on_the_owner_tag() {
        let policies = [
            Policy::new("backup")
                .grant(&BACKUP)
                .grant_when(When::Chosen("--volume"), &VOLUMES),
            Policy::new("replicate")
                .grant(&REPLICATE)
                .grant_when(When::Chosen("--kms-key"), &KMS),
            Policy::new("mount")
                .grant(&Permissions::calls(&[
                    DescribeSnapshots,
                    CreateVolume,
                    AttachVolume,
                ]))
                .grant(&Permissions::NONE.sometimes(&[Sometimes {
                    when: When::Case("on-failure"),
                    actions: &[DetachVolume, DeleteVolume],
                }]))
                .grant(&Permissions::NONE.implied(&[TAG_ON_CREATE])),
            Policy::new("tags").grant(&Permissions::calls(&[DescribeVolumes, CreateTags])),
            Policy::new("trim").grant(&Permissions::calls(&[
                DescribeSnapshots,
                DescribeImages,
                DeleteSnapshot,
            ])),
        ];
        for p in &policies {
            let granted = |doc: &Document| -> BTreeSet<String> {
                doc.statement
                    .iter()
                    .flat_map(|s| s.action.iter().cloned())
                    .collect()
            };
            let plain = document(std::slice::from_ref(p), None);
            let strict = document(std::slice::from_ref(p), Some(&OWNER));
            assert_eq!(granted(&plain), granted(&strict), "{}", p.name);
            assert_eq!(granted(&plain), p.iam_actions(), "{}", p.name);
            for st in json(&strict)["Statement"].as_array().unwrap() {
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
                            p.name
                        );
                    }
                    if CREATES.iter().any(|c| c.iam_action() == a) {
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
        let trim = json(&document(&policies[4..], Some(&OWNER)));
        let delete = trim["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Action"] == serde_json::json!(["ec2:DeleteSnapshot"]))
            .expect("a statement of its own");
        assert_eq!(delete["Sid"], "Trim2");
        assert_eq!(delete["Resource"], "arn:aws:ec2:*:*:snapshot/*");
        assert_eq!(
            delete["Condition"],
            serde_json::json!({ "StringEquals": { "aws:ResourceTag/ektool:owner": "ektool" } })
        );
        let mount = json(&document(&policies[2..3], Some(&OWNER)));
        let tags = mount["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Action"] == serde_json::json!(["ec2:CreateTags"]))
            .unwrap();
        assert_eq!(
            tags["Condition"]["StringEquals"]["ec2:CreateAction"],
            serde_json::json!([
                "CreateSnapshot",
                "CreateSnapshots",
                "CopySnapshot",
                "CreateVolume",
                "RegisterImage",
                "CopyImage"
            ])
        );
    }

    #[test]
    fn sids_are_camel_case_words() {
        assert_eq!(sid("snap replicate-all"), "SnapReplicateAll");
        assert_eq!(sid("--kms-key"), "KmsKey");
        assert_eq!(sid("hosts by EC2 tag"), "HostsByEC2Tag");
        assert_eq!(sid("a concurrent run"), "AConcurrentRun");
    }
}
