//! `ektool iam-policy [COMMAND…]`: the least-privilege IAM policy of each
//! command, as JSON. The table below is proven complete and minimal by the
//! CLI tests, which run every command against moto with
//! `EKTOOL_RECORD_ACTIONS` and compare what it called with its policy.
//!
//! With `--restrict-by-tag` (the recommended policy) the same actions are
//! granted with conditions: deletes and detaches only on resources tagged
//! `ektool:owner=ektool` (`aws:ResourceTag`), creates only when the request
//! carries that tag (`aws:RequestTag`), `CreateTags` only as part of a
//! create (`ec2:CreateAction`) or, for `tags propagate`, never for an
//! `ektool:*` key. ektool decides from tags; these conditions keep a stolen
//! or misused ektool role from deleting what ektool never made.

use ec2kit::Action::{self, *};
use serde_json::json;

use crate::error::CliError;

/// Arguments of `ektool iam-policy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The command, as typed after `ektool` (`snap backup`, `ami copy`);
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
}

/// The tag key the conditions test, and its value.
const OWNER_KEY: &str = "ektool:owner";
const OWNER_VALUE: &str = "ektool";

/// Actions whose tags come with a create (`TagSpecifications`).
const CREATES: &[Action] = &[
    CreateSnapshot,
    CreateSnapshots,
    CopySnapshot,
    CreateVolume,
    RegisterImage,
    CopyImage,
];

/// How `--restrict-by-tag` grants one action: (resource, condition) pairs.
fn restricted(action: Action) -> Vec<(&'static str, Option<serde_json::Value>)> {
    let owned =
        || Some(json!({ "StringEquals": { format!("aws:ResourceTag/{OWNER_KEY}"): OWNER_VALUE } }));
    match action {
        DeleteSnapshot => vec![("arn:aws:ec2:*:*:snapshot/*", owned())],
        DeleteVolume => vec![("arn:aws:ec2:*:*:volume/*", owned())],
        // The volume must be ektool's; the instance is whatever it is.
        AttachVolume | DetachVolume => vec![
            ("arn:aws:ec2:*:*:volume/*", owned()),
            ("arn:aws:ec2:*:*:instance/*", None),
        ],
        a if CREATES.contains(&a) => vec![(
            "*",
            Some(json!({ "StringEquals": { format!("aws:RequestTag/{OWNER_KEY}"): OWNER_VALUE } })),
        )],
        // `tags propagate`: user tags only, never ektool's own.
        CreateTags => vec![(
            "*",
            Some(json!({ "ForAllValues:StringNotLike": { "aws:TagKeys": ["ektool:*"] } })),
        )],
        _ => vec![("*", None)],
    }
}

/// The statements granting `actions` (and the implied permissions) under
/// `--restrict-by-tag`, one per (resource, condition), Sids from `sid`.
fn restricted_statements(
    sid: &str,
    actions: &[Action],
    implied: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let mut groups: Vec<(&str, Option<serde_json::Value>, Vec<String>)> = Vec::new();
    let mut add =
        |resource: &'static str, condition: Option<serde_json::Value>, action: String| match groups
            .iter_mut()
            .find(|(r, c, _)| *r == resource && *c == condition)
        {
            Some((_, _, list)) => list.push(action),
            None => groups.push((resource, condition, vec![action])),
        };
    for a in actions {
        for (resource, condition) in restricted(*a) {
            add(resource, condition, a.iam_action());
        }
    }
    for (name, _) in implied {
        if *name == "ec2:CreateTags" {
            // Tags at creation: allowed only as part of one of the creates.
            let creates: Vec<&str> = CREATES.iter().map(|a| a.as_str()).collect();
            add(
                "*",
                Some(json!({ "StringEquals": { "ec2:CreateAction": creates } })),
                (*name).to_owned(),
            );
        } else {
            add("*", None, (*name).to_owned());
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (resource, condition, list))| {
            let mut st = json!({
                "Sid": if i == 0 { sid.to_owned() } else { format!("{sid}{}", i + 1) },
                "Effect": "Allow",
                "Action": names(list),
                "Resource": resource,
            });
            if let Some(c) = condition {
                st["Condition"] = c;
            }
            st
        })
        .collect()
}

/// Permissions a command needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The command words.
    pub command: &'static str,
    /// Actions the command calls itself.
    pub actions: &'static [Action],
    /// Actions called only with a flag: (flag, actions).
    pub with_flag: &'static [(&'static str, &'static [Action])],
    /// Permissions AWS checks on the caller's behalf without a call of
    /// its own: (IAM action, why).
    pub implied: &'static [(&'static str, &'static str)],
}

const TAG_ON_CREATE: (&str, &str) = (
    "ec2:CreateTags",
    "tags are applied at creation (TagSpecifications), which EC2 authorises as CreateTags",
);
const KMS_FOR_COPIES: &[(&str, &str)] = &[
    (
        "kms:CreateGrant",
        "EBS encrypts copies with the key on your behalf",
    ),
    ("kms:Decrypt", "EBS reads encrypted sources on your behalf"),
    (
        "kms:GenerateDataKeyWithoutPlaintext",
        "EBS encrypts copies on your behalf",
    ),
    ("kms:ReEncrypt*", "EBS re-encrypts copies on your behalf"),
];

/// Every command that calls AWS, and what it needs. Commands not listed
/// (`snap plan`, `host …`, `config`, `completions`, `manpage`) call none.
pub const POLICIES: &[Policy] = &[
    Policy {
        command: "regions",
        actions: &[DescribeRegions],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "instances",
        actions: &[DescribeRegions, DescribeInstances],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "snap backup",
        actions: &[
            DescribeRegions,
            DescribeInstances,
            DescribeVolumes,
            DescribeSnapshots,
            CreateSnapshots,
        ],
        // A set a concurrent run made first makes this run's redundant.
        with_flag: &[
            ("--volume", &[CreateSnapshot]),
            ("a concurrent run", &[DeleteSnapshot]),
        ],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "snap list",
        actions: &[DescribeRegions, DescribeSnapshots],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "snap trim",
        actions: &[
            DescribeRegions,
            DescribeSnapshots,
            DescribeImages,
            DeleteSnapshot,
        ],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "snap delete-broken",
        actions: &[DescribeRegions, DescribeSnapshots, DeleteSnapshot],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "snap count",
        actions: &[DescribeRegions, DescribeSnapshots],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "snap replicate",
        actions: &[DescribeRegions, DescribeSnapshots, CopySnapshot],
        with_flag: &[
            ("--kms-key", &[DescribeKey]),
            ("a concurrent run", &[DeleteSnapshot]),
        ],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "snap replicate-all",
        actions: &[DescribeRegions, DescribeSnapshots, CopySnapshot],
        with_flag: &[
            ("--kms-key", &[DescribeKey]),
            ("a concurrent run", &[DeleteSnapshot]),
        ],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "snap lag",
        actions: &[DescribeRegions, DescribeSnapshots],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "snap mount",
        actions: &[
            DescribeRegions,
            DescribeSnapshots,
            DescribeInstances,
            DescribeVolumes,
            CreateVolume,
            AttachVolume,
        ],
        // A failed mount removes the volume it made.
        with_flag: &[("on-failure", &[DetachVolume, DeleteVolume])],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "snap unmount",
        actions: &[DescribeRegions, DescribeVolumes, DetachVolume, DeleteVolume],
        // The instance's address, when no --host names the host.
        with_flag: &[("without --host", &[DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "snap cleanup",
        actions: &[
            DescribeRegions,
            DescribeVolumes,
            DescribeInstances,
            DetachVolume,
            DeleteVolume,
        ],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "ami create",
        actions: &[DescribeRegions, DescribeSnapshots, RegisterImage],
        with_flag: &[],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "ami copy",
        actions: &[DescribeRegions, DescribeImages, CopyImage],
        with_flag: &[],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "instance reboot",
        actions: &[DescribeRegions, RebootInstances],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "instance protect",
        actions: &[
            DescribeRegions,
            DescribeInstances,
            DescribeInstanceAttribute,
            ModifyInstanceAttribute,
        ],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "instance launch",
        actions: &[DescribeRegions, RunInstances, ModifyInstanceAttribute],
        with_flag: &[],
        implied: &[TAG_ON_CREATE],
    },
    Policy {
        command: "tags propagate",
        actions: &[
            DescribeRegions,
            DescribeInstances,
            DescribeVolumes,
            CreateTags,
        ],
        with_flag: &[],
        implied: &[],
    },
    Policy {
        command: "deploy",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "deploy unlock",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "provision",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "secrets get",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "db dump",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "db load",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "rollback",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "releases",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "maintenance",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
    Policy {
        command: "restart",
        actions: &[],
        with_flag: &[("hosts by EC2 tag", &[DescribeRegions, DescribeInstances])],
        implied: &[],
    },
];

/// The policy of `command` (words as typed).
pub fn policy_for(command: &str) -> Option<&'static Policy> {
    POLICIES.iter().find(|p| p.command == command)
}

/// `snap replicate-all` → `SnapReplicateAll` (IAM Sids are alphanumeric).
fn camel(words: &str) -> String {
    let mut s = String::new();
    for word in words.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            s.extend(first.to_uppercase());
            s.extend(chars);
        }
    }
    s
}

fn names(actions: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = actions.into_iter().collect();
    v.sort();
    v.dedup();
    v
}

/// The IAM policy document for `policies`; `restrict_by_tag` adds the
/// tag conditions (see the module docs).
pub fn document(policies: &[&Policy], restrict_by_tag: bool) -> serde_json::Value {
    if restrict_by_tag {
        return restricted_document(policies);
    }
    let mut statements = Vec::new();
    for p in policies {
        let own = names(
            p.actions
                .iter()
                .map(|a| a.iam_action())
                .chain(p.implied.iter().map(|(a, _)| (*a).to_owned())),
        );
        // IAM rejects a statement without actions (deploys to static hosts
        // call no AWS API at all).
        if !own.is_empty() {
            statements.push(json!({
                "Sid": format!("Ektool{}", camel(p.command)),
                "Effect": "Allow",
                "Action": own,
                "Resource": "*",
            }));
        }
        for (flag, actions) in p.with_flag {
            let mut extra: Vec<String> = actions.iter().map(|a| a.iam_action()).collect();
            if *flag == "--kms-key" {
                extra.extend(KMS_FOR_COPIES.iter().map(|(a, _)| (*a).to_owned()));
            }
            statements.push(json!({
                "Sid": format!("Ektool{}With{}", camel(p.command), camel(flag)),
                "Effect": "Allow",
                "Action": names(extra),
                "Resource": "*",
            }));
        }
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

fn restricted_document(policies: &[&Policy]) -> serde_json::Value {
    let mut statements = Vec::new();
    for p in policies {
        let sid = format!("Ektool{}", camel(p.command));
        statements.extend(restricted_statements(&sid, p.actions, p.implied));
        for (flag, actions) in p.with_flag {
            let kms: &[(&str, &str)] = if *flag == "--kms-key" {
                KMS_FOR_COPIES
            } else {
                &[]
            };
            statements.extend(restricted_statements(
                &format!("{sid}With{}", camel(flag)),
                actions,
                kms,
            ));
        }
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// Prints the policy (or the list).
pub fn exec(args: Args, format: crate::output::OutputFormat) -> Result<(), CliError> {
    if args.list && format == crate::output::OutputFormat::Json {
        let list: Vec<serde_json::Value> = POLICIES
            .iter()
            .map(|p| {
                json!({
                    "command": p.command,
                    "actions": names(p.actions.iter().map(|a| a.iam_action())),
                    "with_flag": p.with_flag.iter().map(|(f, a)| {
                        json!({ "flag": f, "actions": names(a.iter().map(|a| a.iam_action())) })
                    }).collect::<Vec<_>>(),
                    "implied": p.implied.iter().map(|(a, _)| a).collect::<Vec<_>>(),
                })
            })
            .collect();
        return crate::output::json(&list);
    }
    if args.list {
        for p in POLICIES {
            let actions: Vec<String> = p.actions.iter().map(|a| a.iam_action()).collect();
            println!("{:<20} {}", p.command, actions.join(" "));
            for (flag, extra) in p.with_flag {
                let extra: Vec<String> = extra.iter().map(|a| a.iam_action()).collect();
                println!("{:<20}   with {flag}: {}", "", extra.join(" "));
            }
            for (action, why) in p.implied {
                println!("{:<20}   implied {action}: {why}", "");
            }
        }
        return Ok(());
    }
    let chosen: Vec<&Policy> = if args.command.is_empty() {
        POLICIES.iter().collect()
    } else {
        let command = args.command.join(" ");
        match policy_for(&command) {
            Some(p) => vec![p],
            None if NO_AWS.contains(&command.as_str()) => {
                return Err(CliError::Usage(format!(
                    "`ektool {command}` makes no AWS calls: it needs no IAM policy"
                )));
            }
            None => {
                let known: Vec<&str> = POLICIES.iter().map(|p| p.command).collect();
                return Err(CliError::Usage(format!(
                    "no command {command:?}; commands calling AWS: {}",
                    known.join(", ")
                )));
            }
        }
    };
    let doc = document(&chosen, args.restrict_by_tag);
    let text = serde_json::to_string_pretty(&doc).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Commands that call no AWS API at all.
pub const NO_AWS: &[&str] = &[
    "snap plan",
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
        let all: Vec<&Policy> = POLICIES.iter().collect();
        for restrict in [false, true] {
            let doc = document(&all, restrict);
            for st in doc["Statement"].as_array().unwrap() {
                assert!(!st["Action"].as_array().unwrap().is_empty(), "{st}");
            }
        }
        let deploy = document(&[policy_for("deploy").unwrap()], false);
        assert_eq!(deploy["Statement"].as_array().unwrap().len(), 1);
    }

    /// The actions a statement set grants, whatever the conditions.
    fn granted(doc: &serde_json::Value) -> std::collections::BTreeSet<String> {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|st| st["Action"].as_array().unwrap().iter())
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    /// M14: the restricted policy grants the same actions, and no delete,
    /// detach or create without the ektool:owner tag condition.
    #[test]
    fn restricted_policies_condition_every_destructive_action_on_the_owner_tag() {
        for p in POLICIES {
            let plain = document(&[p], false);
            let strict = document(&[p], true);
            assert_eq!(granted(&plain), granted(&strict), "{}", p.command);
            for st in strict["Statement"].as_array().unwrap() {
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
                            p.command
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
        let trim = document(&[policy_for("snap trim").unwrap()], true);
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
        let doc = document(&[policy_for("snap replicate").unwrap()], false);
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
}
