//! `ektool instance reboot|protect|launch` and `ektool tags propagate`.

use std::path::PathBuf;

use ec2kit::{Ec2, Filter, ImageId, Instance, InstanceId, Region, Tag, Tags};
use serde::Serialize;
use snapkit::instances::{self, Launch};

use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// `ektool instance …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum InstanceCommand {
    /// Reboot instances.
    Reboot(RebootArgs),
    /// Termination protection on for instances carrying the production tag
    /// (`defaults.tag`); the others keep theirs unless --unprotect-others.
    Protect(ProtectArgs),
    /// Launch instances from an AMI (no security group is ever created).
    Launch(LaunchArgs),
}

/// `ektool tags …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TagsCommand {
    /// Copy instance tags onto their volumes (all instances of the
    /// reservations named).
    Propagate(PropagateArgs),
}

/// Arguments of `ektool instance reboot`.
#[derive(Debug, clap::Args)]
pub(crate) struct RebootArgs {
    /// Instances to reboot.
    #[arg(required = true)]
    pub instances: Vec<InstanceId>,
}

/// Which instances a chore applies to.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Which {
    /// These instances.
    #[arg(long = "instance", value_name = "ID")]
    pub instances: Vec<InstanceId>,
    /// The instances carrying this tag.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Option<Tag>,
    /// Every live instance of the region (explicit: they are not ektool's).
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `ektool instance protect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProtectArgs {
    /// The instances.
    #[command(flatten)]
    pub which: Which,
    /// Also turn protection off for the selected instances that do not
    /// carry the production tag (by default they keep it: an instance may
    /// be protected on purpose).
    #[arg(long)]
    pub unprotect_others: bool,
}

/// Arguments of `ektool tags propagate`.
#[derive(Debug, clap::Args)]
pub(crate) struct PropagateArgs {
    /// The instances.
    #[command(flatten)]
    pub which: Which,
}

/// Arguments of `ektool instance launch`.
#[derive(Debug, clap::Args)]
pub(crate) struct LaunchArgs {
    /// The AMI.
    #[arg(long)]
    pub ami: ImageId,
    /// Instance type.
    #[arg(long = "type", value_name = "TYPE", default_value = "t3.micro")]
    pub instance_type: String,
    /// How many (1 to 100).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub count: i32,
    /// Key pair name.
    #[arg(long)]
    pub key_name: Option<String>,
    /// Security group ids (repeatable). None: the VPC's default group.
    #[arg(long = "security-group", value_name = "SG")]
    pub security_groups: Vec<String>,
    /// Subnet id.
    #[arg(long)]
    pub subnet: Option<String>,
    /// The primary private IPv4 address (with `--count 1`), inside the
    /// subnet's range.
    #[arg(long, value_name = "IPV4")]
    pub private_ip: Option<std::net::Ipv4Addr>,
    /// A file whose content becomes the user data.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// The `Name` tag.
    #[arg(long)]
    pub name: Option<String>,
    /// More tags (repeatable); the production tag turns termination
    /// protection on.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<Tag>,
}

/// Runs `ektool instance …`.
pub(crate) async fn exec(ctx: &Context, cmd: InstanceCommand) -> Result<(), CliError> {
    match cmd {
        InstanceCommand::Reboot(a) => reboot(ctx, a).await,
        InstanceCommand::Protect(a) => protect(ctx, a).await,
        InstanceCommand::Launch(a) => launch(ctx, a).await,
    }
}

/// Runs `ektool tags …`.
pub(crate) async fn exec_tags(ctx: &Context, cmd: TagsCommand) -> Result<(), CliError> {
    match cmd {
        TagsCommand::Propagate(a) => propagate(ctx, a).await,
    }
}

async fn select(ec2: &dyn Ec2, region: &Region, which: &Which) -> Result<Vec<Instance>, CliError> {
    let live = Filter::new(
        "instance-state-name",
        ec2kit::fleet::LIVE_STATES.iter().copied(),
    );
    let found = if !which.instances.is_empty() {
        ec2.describe_instances(
            region,
            &[Filter::new(
                "instance-id",
                which.instances.iter().map(|i| i.as_str()),
            )],
        )
        .await?
    } else if let Some(tag) = &which.tag {
        ec2.describe_instances(region, &[Filter::tag(tag), live])
            .await?
    } else {
        ec2.describe_instances(region, &[live]).await?
    };
    if let Some(missing) = which
        .instances
        .iter()
        .find(|id| !found.iter().any(|i| &i.id == *id))
    {
        return Err(CliError::Failed(format!(
            "instance {missing} not found in {region}"
        )));
    }
    Ok(found)
}

async fn reboot(ctx: &Context, args: RebootArgs) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    match ec2
        .reboot_instances(&region, &args.instances, ctx.global.dry_run)
        .await
    {
        Ok(()) => {}
        Err(e) if ctx.global.dry_run && e.kind == ec2kit::ErrorKind::DryRunOk => {}
        Err(e) => return Err(e.into()),
    }
    let ids: Vec<&str> = args.instances.iter().map(|i| i.as_str()).collect();
    if ctx.output() == OutputFormat::Json {
        output::json(&serde_json::json!({ "rebooted": ids, "dry_run": ctx.global.dry_run }))?;
    } else if ctx.global.dry_run {
        println!(
            "dry run: would reboot {} (permissions checked)",
            ids.join(" ")
        );
    } else {
        println!("rebooting {}", ids.join(" "));
    }
    Ok(())
}

#[derive(Serialize)]
struct Applied<T: Serialize> {
    plan: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
}

async fn protect(ctx: &Context, args: ProtectArgs) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let production = ctx.config.defaults.tag.clone();
    let found = select(&ec2, &region, &args.which).await?;
    let plan =
        instances::plan_protection(&ec2, &region, &found, &production, args.unprotect_others)
            .await?;
    let errors = if ctx.global.dry_run {
        Vec::new()
    } else {
        failures(instances::apply_protection(&ec2, &region, &plan).await)
    };
    match ctx.output() {
        OutputFormat::Json => output::json(&Applied {
            plan: &plan,
            errors: errors.clone(),
        })?,
        OutputFormat::Table => {
            output::table(
                &["INSTANCE", "NAME", "PROTECTION", "CHANGE"],
                plan.iter().map(|p| {
                    let on = |b: bool| if b { "on" } else { "off" };
                    vec![
                        p.instance.to_string(),
                        output::or_dash(p.name.as_deref()),
                        on(p.wanted).to_owned(),
                        if p.changes() {
                            format!("{} -> {}", on(p.current), on(p.wanted))
                        } else {
                            "-".into()
                        },
                    ]
                }),
            );
            if args.unprotect_others {
                println!("\nprotected exactly the instances tagged {production}");
            } else {
                println!(
                    "\nprotected the instances tagged {production}; the others kept theirs (--unprotect-others turns it off)"
                );
            }
            if ctx.global.dry_run {
                println!("dry run: nothing changed");
            }
        }
    }
    fail_on(
        errors,
        plan.iter().filter(|p| p.changes()).count(),
        "instances",
    )
}

/// The failed items of an apply, as `id: error` lines.
fn failures<I: std::fmt::Display>(results: Vec<(I, Result<(), ec2kit::Ec2Error>)>) -> Vec<String> {
    results
        .into_iter()
        .filter_map(|(id, r)| r.err().map(|e| format!("{id}: {e}")))
        .collect()
}

fn fail_on(errors: Vec<String>, total: usize, what: &'static str) -> Result<(), CliError> {
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Partial {
            failed: errors.len(),
            total,
            what,
        })
    }
}

async fn propagate(ctx: &Context, args: PropagateArgs) -> Result<(), CliError> {
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let found = if args.which.instances.is_empty() {
        select(&ec2, &region, &args.which).await?
    } else {
        select(&ec2, &region, &args.which).await?;
        instances::with_reservations(&ec2, &region, &args.which.instances).await?
    };
    let plan = instances::plan_volume_tags(&ec2, &region, &found).await?;
    let errors = if ctx.global.dry_run {
        Vec::new()
    } else {
        failures(instances::apply_volume_tags(&ec2, &region, &plan).await)
    };
    match ctx.output() {
        OutputFormat::Json => output::json(&Applied {
            plan: &plan,
            errors: errors.clone(),
        })?,
        OutputFormat::Table => {
            output::table(
                &["VOLUME", "INSTANCE", "TAGS SET"],
                plan.iter().map(|p| {
                    vec![
                        p.volume.to_string(),
                        p.instance.to_string(),
                        p.set
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                }),
            );
            println!(
                "\n{} volume(s) of {} instance(s){}",
                plan.len(),
                found.len(),
                if ctx.global.dry_run {
                    " (dry run: nothing changed)"
                } else {
                    ""
                }
            );
        }
    }
    fail_on(errors, plan.len(), "volumes")
}

async fn launch(ctx: &Context, args: LaunchArgs) -> Result<(), CliError> {
    if args.private_ip.is_some() && args.count != 1 {
        return Err(CliError::Usage(
            "--private-ip names one address: use it with --count 1".into(),
        ));
    }
    let user_data = match &args.user_data {
        Some(p) => Some(std::fs::read(p).map_err(|source| CliError::Io {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let ec2 = ctx.ec2().await;
    let region = ctx.single_region(&ec2).await?;
    let mut tags = Tags::new();
    for t in &args.tags {
        tags.insert(t.key.clone(), t.value.clone());
    }
    if let Some(n) = &args.name {
        tags.insert("Name", n.clone());
    }
    let request = Launch {
        image: Some(args.ami.clone()),
        instance_type: args.instance_type.clone(),
        count: args.count,
        key_name: args.key_name.clone(),
        security_group_ids: args.security_groups.clone(),
        subnet_id: args.subnet.clone(),
        private_ip: args.private_ip,
        user_data,
        tags,
    };
    let production = ctx.config.defaults.tag.clone();
    if ctx.global.dry_run {
        match instances::launch(&ec2, &region, &request, &production, true).await {
            Err(e) if e.kind == ec2kit::ErrorKind::DryRunOk => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        match ctx.output() {
            OutputFormat::Json => output::json(&request)?,
            OutputFormat::Table => println!(
                "dry run: would launch {} x {} from {} in {region} (permissions checked)",
                args.count, args.instance_type, args.ami
            ),
        }
        return Ok(());
    }
    if args.security_groups.is_empty() {
        eprintln!(
            "note: no --security-group: the VPC's default group applies (ektool creates none)"
        );
    }
    let launched = instances::launch(&ec2, &region, &request, &production, false).await?;
    match ctx.output() {
        OutputFormat::Json => output::json(&launched)?,
        OutputFormat::Table => output::table(
            &["INSTANCE", "STATE", "ZONE", "PROTECTED"],
            launched.iter().map(|i| {
                vec![
                    i.id.to_string(),
                    i.state.clone(),
                    output::or_dash(i.availability_zone.as_deref()),
                    if request.tags.matches(&production) {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                ]
            }),
        ),
    }
    Ok(())
}
