//! `ektool ami create` (from a snapshot or an instance), `ektool ami copy`
//! and `ektool ami trim`.

use std::io::IsTerminal;

use ec2kit::{ImageId, InstanceId, Region, SnapshotId};
use snapkit::ami_trim;
use snapkit::retention::Verdict;
use snapkit::trim::Scope;

use super::snap::policy::PolicyArgs;
use serde::Serialize;
use snapkit::ami::{self, AmiCopy, AmiOptions};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// `ektool ami …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AmiCommand {
    /// Register an AMI from a root snapshot and its siblings, or make one
    /// of an instance (--instance).
    Create(CreateArgs),
    /// Copy an AMI into other regions (once: existing copies are found by tag).
    Copy(CopyArgs),
    /// Retention for a name family of AMIs: deregister what the policy
    /// drops, then delete its snapshots.
    Trim(TrimArgs),
}

/// Arguments of `ektool ami create`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["snapshot", "instance"])))]
pub(crate) struct CreateArgs {
    /// The root volume's snapshot.
    #[arg(long, value_name = "SNAPSHOT")]
    pub snapshot: Option<SnapshotId>,
    /// Make the AMI of this instance (`CreateImage`), tagged as ektool's.
    #[arg(long, value_name = "INSTANCE", conflicts_with_all = ["root_device", "architecture", "no_ena", "root_only"])]
    pub instance: Option<InstanceId>,
    /// With --instance: do not stop the instance while its volumes are
    /// snapshotted (file systems only crash-consistent).
    #[arg(long, requires = "instance")]
    pub no_reboot: bool,
    /// With --instance: tag only the AMI, not its snapshots (for EC2
    /// emulators that refuse snapshot tags on CreateImage).
    #[arg(long, requires = "instance")]
    pub no_snapshot_tags: bool,
    /// AMI name (default `ektool-<instance>-<snapshot time>`, or with
    /// --instance `ektool-<instance>-<now>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Root device name (default: the snapshot's `ektool:root-device` tag).
    #[arg(long, value_name = "DEVICE")]
    pub root_device: Option<String>,
    /// Architecture (default: the `ektool:architecture` tag).
    #[arg(long, value_parser = ["x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"])]
    pub architecture: Option<String>,
    /// Register without ENA support (old instance types).
    #[arg(long)]
    pub no_ena: bool,
    /// Only the root snapshot, no sibling data volumes.
    #[arg(long)]
    pub root_only: bool,
    /// Siblings of the same instance without a common snapshot set join
    /// when taken at most this far apart (0s to 1d, e.g. 10m).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::commands::snap::durations::sibling_window)]
    pub sibling_window: std::time::Duration,
}

/// Arguments of `ektool ami copy`.
#[derive(Debug, clap::Args)]
pub(crate) struct CopyArgs {
    /// The AMI (in --region).
    pub image: ImageId,
    /// Destination regions (repeatable, comma-separated, prefixes, `all`).
    #[arg(long, value_name = "REGION", required = true, value_delimiter = ',')]
    pub to: Vec<String>,
}

/// Arguments of `ektool ami trim`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrimArgs {
    /// The name family: an AMI name pattern (`*` any run, `?` one
    /// character), e.g. 'ektool-web-*'; planned by creation date.
    #[arg(long, value_name = "PATTERN")]
    pub family: String,
    /// Also trim AMIs ektool did not make (explicit adoption; AMIs in use
    /// and the newest stay).
    #[arg(long)]
    pub adopt: bool,
    /// Deregister without asking (needed without a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Policy selection (as for snapshots; --archive-after does not apply).
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Runs `ektool ami …`.
pub(crate) async fn exec(ctx: &Context, cmd: AmiCommand) -> Result<(), CliError> {
    match cmd {
        AmiCommand::Create(a) => match a.instance.clone() {
            Some(instance) => create_from_instance(ctx, a, instance).await,
            None => create(ctx, a).await,
        },
        AmiCommand::Copy(a) => copy(ctx, a).await,
        AmiCommand::Trim(a) => trim(ctx, a).await,
    }
}

#[derive(Serialize)]
struct FromInstanceOut<'a> {
    region: &'a Region,
    request: &'a ami_trim::FromInstance,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a ImageId>,
}

async fn create_from_instance(
    ctx: &Context,
    args: CreateArgs,
    instance: InstanceId,
) -> Result<(), CliError> {
    let name = args.name.unwrap_or_else(|| {
        format!(
            "ektool-{instance}-{}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        )
    });
    if !ami::valid_name(&name) {
        return Err(CliError::Usage(
            ami::AmiError::InvalidName(name).to_string(),
        ));
    }
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let request = ami_trim::FromInstance {
        instance,
        name,
        description: None,
        no_reboot: args.no_reboot,
        tag_snapshots: !args.no_snapshot_tags,
        tags: ec2kit::Tags::new(),
    };
    let image = ami_trim::from_instance(&ec2, &region, &request, ctx.global.dry_run).await?;
    match ctx.output() {
        OutputFormat::Json => output::json(&FromInstanceOut {
            region: &region,
            request: &request,
            image: image.as_ref(),
        })?,
        OutputFormat::Table => {
            println!("name:      {}", request.name);
            println!("instance:  {}", request.instance);
            println!(
                "reboot:    {}",
                if request.no_reboot {
                    "no (crash-consistent)"
                } else {
                    "yes (EC2 stops and restarts the instance)"
                }
            );
            match &image {
                Some(id) => println!("created {id} in {region}"),
                None => println!("dry run: nothing created"),
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct AmiTrimOut<'a> {
    #[serde(flatten)]
    plan: &'a ami_trim::AmiPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a ami_trim::AmiTrimReport>,
}

async fn trim(ctx: &Context, args: TrimArgs) -> Result<(), CliError> {
    let policies = args.policy.resolve(&ctx.config)?;
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let plan = ami_trim::plan(
        &ec2,
        &region,
        &args.family,
        &policies,
        Scope::adopting(args.adopt),
        jiff::Timestamp::now(),
    )
    .await?;
    let n = plan.deregistrations().count();
    let print_plan = || {
        output::table(
            &["IMAGE", "NAME", "CREATED", "ACTION", "REASON"],
            plan.decisions.iter().map(|d| {
                vec![
                    d.image.to_string(),
                    output::or_dash(d.name.as_deref()),
                    d.created.strftime("%Y-%m-%d %H:%M").to_string(),
                    match d.action {
                        Verdict::Delete => "deregister".to_owned(),
                        _ => "keep".to_owned(),
                    },
                    d.reason.to_string(),
                ]
            }),
        );
        println!(
            "\nkeep {}, deregister {n} (policy {})",
            plan.decisions.len() - n,
            plan.policy
        );
        for o in &plan.orphans {
            println!(
                "orphan: {} (its AMI {} is gone): delete",
                o.snapshot, o.image
            );
        }
    };
    let orphans = plan.orphans.len();
    let mut shown = false;
    if !ctx.global.dry_run && n + orphans > 0 && !args.yes {
        if std::io::stdin().is_terminal() {
            if ctx.output() == OutputFormat::Table {
                print_plan();
            }
            shown = true;
            let question = if orphans > 0 {
                format!(
                    "deregister {n} AMI(s), delete their snapshots and {orphans} orphaned snapshot(s)?"
                )
            } else {
                format!("deregister {n} AMI(s) and delete their snapshots?")
            };
            let stdin = std::io::stdin();
            if !super::snap::trim::confirm(&question, &mut stdin.lock(), &mut std::io::stderr()) {
                return Err(CliError::Failed(
                    "not confirmed; nothing deregistered".into(),
                ));
            }
        } else {
            let orphaned = if orphans > 0 {
                format!(" and delete {orphans} orphaned snapshot(s)")
            } else {
                String::new()
            };
            return Err(CliError::Usage(format!(
                "ami trim would deregister {n} AMI(s){orphaned} and there is no terminal to \
                 ask: pass --yes; see the plan with --dry-run"
            )));
        }
    }
    let report = if ctx.global.dry_run || n + orphans == 0 {
        None
    } else {
        Some(ami_trim::apply(&ec2, &plan, &|_| {}).await)
    };
    match ctx.output() {
        OutputFormat::Json => output::json(&AmiTrimOut {
            plan: &plan,
            applied: report.as_ref(),
        })?,
        OutputFormat::Table => {
            if !shown {
                print_plan();
            }
            match &report {
                Some(r) => {
                    println!(
                        "{region}: deregistered {}, deleted {} snapshot(s), failed {}",
                        r.deregistered(),
                        r.deleted_snapshots(),
                        r.failed()
                    );
                    if orphans > 0 {
                        println!(
                            "{region}: deleted {} orphaned snapshot(s)",
                            r.orphans_deleted.len()
                        );
                    }
                    for f in &r.results {
                        for e in &f.errors {
                            eprintln!("error: {}: {e}", f.image);
                        }
                    }
                    for e in &r.orphan_errors {
                        eprintln!("error: {e}");
                    }
                }
                None if ctx.global.dry_run => println!("dry run: nothing deregistered"),
                None => {}
            }
        }
    }
    match report {
        Some(r) if r.failed() > 0 => Err(CliError::Partial {
            failed: r.failed(),
            total: r.results.len(),
            what: "AMIs",
        }),
        _ => Ok(()),
    }
}

#[derive(Serialize)]
struct Created<'a> {
    plan: &'a ami::AmiPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a ImageId>,
}

async fn create(ctx: &Context, args: CreateArgs) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let options = AmiOptions {
        name: args.name,
        root_device: args.root_device,
        architecture: args.architecture,
        ena: !args.no_ena,
        root_only: args.root_only,
        sibling_window: args.sibling_window,
        ..AmiOptions::default()
    };
    let Some(snapshot) = args.snapshot else {
        return Err(CliError::Usage("--snapshot or --instance".into()));
    };
    let plan = ami::plan(&ec2, &region, &snapshot, &options)
        .await
        .map_err(|e| match e {
            ami::AmiError::InvalidName(_) => CliError::Usage(e.to_string()),
            ami::AmiError::Ec2(e) => CliError::Ec2(e),
            e => CliError::Failed(e.to_string()),
        })?;
    let image = if ctx.global.dry_run {
        None
    } else {
        Some(ami::create(&ec2, &plan).await?)
    };
    match ctx.output() {
        OutputFormat::Json => output::json(&Created {
            plan: &plan,
            image: image.as_ref(),
        })?,
        OutputFormat::Table => {
            let r = &plan.request;
            println!("name:          {}", r.name);
            println!(
                "root device:   {}",
                r.root_device_name.as_deref().unwrap_or("-")
            );
            println!(
                "architecture:  {} ({}, ENA {})",
                r.architecture.as_deref().unwrap_or("-"),
                r.virtualization_type.as_deref().unwrap_or("-"),
                if r.ena_support == Some(true) {
                    "on"
                } else {
                    "off"
                }
            );
            output::table(
                &["DEVICE", "SNAPSHOT"],
                r.block_devices.iter().map(|b| {
                    vec![
                        b.device_name.clone(),
                        output::or_dash(b.snapshot_id.as_ref().map(|s| s.as_str())),
                    ]
                }),
            );
            for n in &plan.notes {
                eprintln!("note: {n}");
            }
            match &image {
                Some(id) => println!("registered {id} in {region}"),
                None => println!("dry run: nothing registered"),
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Copied<'a> {
    region: &'a Region,
    #[serde(flatten)]
    result: &'a AmiCopy,
}

async fn copy(ctx: &Context, args: CopyArgs) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let from = ctx.single_region(&ec2).await?;
    let catalog = ec2kit::fleet::region_catalog(&ec2).await?;
    let to = catalog.resolve_all(&args.to)?;
    let results = ami::copy(&ec2, &from, &args.image, &to, ctx.global.dry_run)
        .await
        .map_err(|e| match e {
            ami::AmiError::Ec2(e) => CliError::Ec2(e),
            e => CliError::Failed(e.to_string()),
        })?;
    let rows: Vec<Copied<'_>> = results
        .iter()
        .map(|(region, result)| Copied { region, result })
        .collect();
    match ctx.output() {
        OutputFormat::Json => output::json(&rows)?,
        OutputFormat::Table => output::table(
            &["REGION", "STATUS"],
            rows.iter().map(|r| {
                vec![
                    r.region.to_string(),
                    match r.result {
                        AmiCopy::Present { image } => format!("present {image}"),
                        AmiCopy::Planned => "would copy".into(),
                        AmiCopy::Started { image } => format!("copying as {image}"),
                        AmiCopy::Failed { error } => format!("failed: {error}"),
                        _ => "-".into(),
                    },
                ]
            }),
        ),
    }
    let failed = rows
        .iter()
        .filter(|r| matches!(r.result, AmiCopy::Failed { .. }))
        .count();
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total: rows.len(),
            what: "regions",
        });
    }
    Ok(())
}
