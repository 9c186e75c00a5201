//! `ektool ami create` and `ektool ami copy`.

use ec2kit::{ImageId, Region, SnapshotId};
use serde::Serialize;
use snapkit::ami::{self, AmiCopy, AmiOptions};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// `ektool ami …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AmiCommand {
    /// Register an AMI from a root snapshot and its siblings.
    Create(CreateArgs),
    /// Copy an AMI into other regions (once: existing copies are found by tag).
    Copy(CopyArgs),
}

/// Arguments of `ektool ami create`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The root volume's snapshot.
    #[arg(long, value_name = "SNAPSHOT")]
    pub snapshot: SnapshotId,
    /// AMI name (default `ektool-<instance>-<snapshot time>`).
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

/// Runs `ektool ami …`.
pub(crate) async fn exec(ctx: &Context, cmd: AmiCommand) -> Result<(), CliError> {
    match cmd {
        AmiCommand::Create(a) => create(ctx, a).await,
        AmiCommand::Copy(a) => copy(ctx, a).await,
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
    let plan = ami::plan(&ec2, &region, &args.snapshot, &options)
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
