//! `ektool snap mount`, `snap unmount` and `snap cleanup`: a snapshot
//! mounted read-only on an instance, and undone again.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use ec2kit::{
    Address, AwsEc2, Ec2, Filter, Instance, InstanceId, Region, Remote, SnapshotId, SshRemote,
    SshTarget, VolumeId,
};
use serde::Serialize;
use snapkit::mount::{
    self, MountCommands, MountRequest, MountVolume, Selector, UnmountPlan, UnmountReport, Waits,
};

use super::durations;
use crate::context::{Context, expand_home};
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// How to reach the instance's host.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// The host to run the mount commands on (`[user@]host[:port]`).
    /// Default: the `[ssh]` user at the instance's private IP.
    #[arg(long, value_name = "TARGET")]
    pub host: Option<String>,
    /// Reach the instance at its public DNS name instead of its private IP.
    #[arg(long, conflicts_with = "host")]
    pub public_dns: bool,
    /// Private key to log in with (repeatable; before the agent).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// known_hosts file (default from config, then ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

/// The host-side commands (default: `[mount]` in the config, then
/// built-in). Placeholders are described in `ektool snap mount --help`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// Prints the local block device: {volume} {device} {nvme} {xen}.
    #[arg(long, value_name = "TEMPLATE")]
    pub resolve_cmd: Option<String>,
    /// Lists `NAME SIZE [FSTYPE]` of the device and partitions: {source}.
    #[arg(long, value_name = "TEMPLATE")]
    pub probe_cmd: Option<String>,
    /// Mounts: {source} {mountpoint} {fstype} {options} ({options} required).
    #[arg(long, value_name = "TEMPLATE")]
    pub mount_cmd: Option<String>,
    /// Unmounts: {mountpoint}.
    #[arg(long, value_name = "TEMPLATE")]
    pub umount_cmd: Option<String>,
    /// Give up on each EC2 wait (available, attached, detached) after this
    /// long (10s to 1h, e.g. 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = durations::mount_wait)]
    pub wait_timeout: Duration,
    /// The mount root on the host: every mountpoint lies under it, and it
    /// is made 0700 (default: `[mount] root`, then /mnt/ektool).
    #[arg(long, value_name = "DIR")]
    pub mount_root: Option<String>,
}

/// Arguments of `ektool snap mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// The instance to mount it on (the volume is made in its zone).
    #[arg(long, value_name = "ID")]
    pub instance: InstanceId,
    /// Where to mount it, under the mount root (default
    /// <mount root>/<snapshot>). It must be an empty directory or not exist.
    #[arg(long, value_name = "DIR")]
    pub mountpoint: Option<String>,
    /// Mount this partition, 1 to 128 (default: the disk itself if it
    /// holds a filesystem, else its largest mountable partition).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=128))]
    pub partition: Option<u32>,
    /// Reaching the host.
    #[command(flatten)]
    pub host: HostArgs,
    /// Host-side commands.
    #[command(flatten)]
    pub commands: CommandArgs,
}

/// Arguments of `ektool snap unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// A snapshot (its mounts) or a mount volume.
    #[arg(value_name = "SNAPSHOT|VOLUME")]
    pub target: String,
    /// Only the mount on this instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<InstanceId>,
    /// When the host cannot unmount (unreachable, terminated), detach by
    /// force anyway (`DetachVolume` with `Force`).
    #[arg(long)]
    pub force: bool,
    /// Reaching the host.
    #[command(flatten)]
    pub host: HostArgs,
    /// Host-side commands.
    #[command(flatten)]
    pub commands: CommandArgs,
}

/// Arguments of `ektool snap cleanup`.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Only volumes created longer ago than this (0s, meaning every age,
    /// to 10 years, e.g. 12h, 2d); younger ones may belong to a mount in
    /// progress or in use.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = durations::older_than)]
    pub older_than: Duration,
    /// Only the mount volumes of this instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<InstanceId>,
    /// When a host cannot unmount, detach by force anyway.
    #[arg(long)]
    pub force: bool,
    /// Reaching the hosts (`--host` only with `--instance`).
    #[command(flatten)]
    pub host: HostArgs,
    /// Host-side commands.
    #[command(flatten)]
    pub commands: CommandArgs,
}

fn commands(ctx: &Context, args: &CommandArgs) -> Result<MountCommands, CliError> {
    let base = &ctx.config.mount;
    let c = MountCommands {
        resolve: args.resolve_cmd.clone().unwrap_or(base.resolve.clone()),
        probe: args.probe_cmd.clone().unwrap_or(base.probe.clone()),
        mount: args.mount_cmd.clone().unwrap_or(base.mount.clone()),
        unmount: args.umount_cmd.clone().unwrap_or(base.unmount.clone()),
    };
    c.validate().map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(c)
}

fn waits(args: &CommandArgs) -> Waits {
    Waits {
        poll: Duration::from_secs(2),
        timeout: args.wait_timeout,
    }
}

/// The mount root: `--mount-root`, else `[mount] root`.
fn mount_root(ctx: &Context, args: &CommandArgs) -> Result<String, CliError> {
    let root = args
        .mount_root
        .clone()
        .unwrap_or_else(|| ctx.config.mount.root.clone());
    mount::check_mountpoint(&root).map_err(|e| CliError::Usage(format!("mount root: {e}")))?;
    Ok(root)
}

/// The one region a mount command works in.
async fn one_region(ctx: &Context, ec2: &AwsEc2) -> Result<Region, CliError> {
    let mut regions = ctx.regions(ec2).await?;
    if regions.len() != 1 {
        return Err(CliError::Usage(format!(
            "name one region with --region (got {})",
            regions.len()
        )));
    }
    Ok(regions.remove(0))
}

impl HostArgs {
    /// Which of the instance's addresses to reach it at: `--public-dns`,
    /// else its private IP.
    fn address(&self) -> Address {
        if self.public_dns {
            Address::PublicDns
        } else {
            Address::PrivateIp
        }
    }
}

/// Where the instance's host is: `--host`, else the `[ssh]` user at the
/// instance's `args.address()` (`address`, when it has one).
fn host_target(
    ctx: &Context,
    args: &HostArgs,
    instance: &InstanceId,
    address: Option<&str>,
) -> Result<SshTarget, CliError> {
    let user = ctx.ssh_user();
    let address = match &args.host {
        Some(h) => h.clone(),
        None => address
            .ok_or_else(|| {
                CliError::Failed(format!("instance {instance} has no {}", args.address()))
            })?
            .to_owned(),
    };
    SshTarget::parse_with_user(&address, &user).map_err(|e| CliError::Usage(e.to_string()))
}

fn remote(ctx: &Context, args: &HostArgs, target: SshTarget) -> SshRemote {
    let mut options = ctx.ssh_options();
    if let Some(k) = &args.known_hosts {
        options.known_hosts = expand_home(k);
    }
    if !args.identity.is_empty() {
        options.identity_files = args.identity.iter().map(|p| expand_home(p)).collect();
    }
    SshRemote::new(target, options)
}

/// Progress lines on stderr, on a terminal only.
fn progress() -> impl Fn(&str) + Send + Sync {
    let show = std::io::stderr().is_terminal();
    move |msg: &str| {
        if show {
            eprintln!("… {msg}");
        }
    }
}

/// `ektool snap mount`.
pub async fn exec_mount(ctx: &Context, args: MountArgs) -> Result<(), CliError> {
    let commands = commands(ctx, &args.commands)?;
    let root = mount_root(ctx, &args.commands)?;
    if let Some(m) = &args.mountpoint {
        mount::check_mountpoint_under(m, &root).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let ec2 = ctx.ec2().await;
    let region = one_region(ctx, &ec2).await?;
    let request = MountRequest {
        snapshot: args.snapshot.clone(),
        instance: args.instance.clone(),
        mountpoint: args.mountpoint.clone(),
        root,
        partition: args.partition,
    };
    let plan = mount::plan_mount(&ec2, &region, &request)
        .await
        .map_err(mount_error)?;
    // The plan carries the two addresses `--public-dns` chooses between.
    let address = match args.host.address() {
        Address::PublicDns => plan.public_dns.as_deref(),
        _ => plan.private_ip.as_deref(),
    };
    let target = host_target(ctx, &args.host, &plan.instance, address)?;

    if ctx.global.dry_run {
        // EC2 checks the permissions and parameters of the real call.
        let check = ec2
            .create_volume(
                &region,
                &mount::create_request(&plan, jiff::Timestamp::now(), true),
            )
            .await;
        let permission = match check {
            Err(e) if e.is_dry_run_ok() => "ok".to_owned(),
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        #[derive(Serialize)]
        struct DryRun<'a> {
            #[serde(flatten)]
            plan: &'a mount::MountPlan,
            host: String,
            create_volume_check: String,
        }
        let host = target.to_string();
        return match ctx.output() {
            OutputFormat::Json => output::json(&DryRun {
                plan: &plan,
                host,
                create_volume_check: permission,
            }),
            OutputFormat::Table => {
                match &plan.resume {
                    Some(v) => println!(
                        "would pick up {} ({}) left by an earlier run",
                        v.id, v.state
                    ),
                    None => println!(
                        "would create a{} volume from {} in {}",
                        if plan.encrypted { "n encrypted" } else { "" },
                        plan.snapshot,
                        plan.availability_zone
                    ),
                }
                println!("would attach it to {} as {}", plan.instance, plan.device);
                println!("would mount it read-only on {host} at {}", plan.mountpoint);
                println!("EC2 permission check: {permission}");
                println!("dry run: nothing changed");
                Ok(())
            }
        };
    }

    let remote = remote(ctx, &args.host, target);
    let show = progress();
    let mounted = mount::mount(
        &ec2,
        &remote,
        &plan,
        &commands,
        waits(&args.commands),
        jiff::Timestamp::now(),
        &show,
    )
    .await
    .map_err(mount_error)?;
    match ctx.output() {
        OutputFormat::Json => output::json(&mounted),
        OutputFormat::Table => {
            let state = if mounted.already_mounted {
                "already mounted"
            } else {
                "mounted"
            };
            println!(
                "{state} {} on {} ({})",
                mounted.snapshot, mounted.instance, mounted.host
            );
            println!("  mountpoint  {}", mounted.mountpoint);
            println!(
                "  volume      {}{}{}",
                mounted.volume,
                if mounted.encrypted {
                    " (encrypted)"
                } else {
                    ""
                },
                if mounted.resumed {
                    " (left by an earlier run)"
                } else {
                    ""
                }
            );
            println!(
                "  device      {} -> {} ({}, {})",
                mounted.attach_device, mounted.source, mounted.fstype, mounted.options
            );
            println!(
                "unmount with: ektool snap unmount {} --instance {}",
                mounted.snapshot, mounted.instance
            );
            Ok(())
        }
    }
}

/// Mount errors: bad input is a usage error, the rest failures.
fn mount_error(e: mount::MountError) -> CliError {
    match e {
        mount::MountError::InvalidTemplate { .. } | mount::MountError::InvalidMountpoint { .. } => {
            CliError::Usage(e.to_string())
        }
        mount::MountError::Ec2(e) => CliError::Ec2(e),
        mount::MountError::Remote(e) => CliError::Remote(e),
        other => CliError::Mount(other),
    }
}

/// One unmount's plan and outcome (the JSON of unmount and cleanup).
#[derive(Debug, Serialize)]
struct Item {
    #[serde(skip)]
    region: Region,
    #[serde(flatten)]
    plan: UnmountPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<UnmountReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `ektool snap unmount`.
pub async fn exec_unmount(ctx: &Context, args: UnmountArgs) -> Result<(), CliError> {
    let commands = commands(ctx, &args.commands)?;
    let selector = if let Ok(s) = SnapshotId::parse(&args.target) {
        Selector::Snapshot(s)
    } else if let Ok(v) = VolumeId::parse(&args.target) {
        Selector::Volume(v)
    } else {
        return Err(CliError::Usage(format!(
            "{:?} is neither a snapshot nor a volume id",
            args.target
        )));
    };
    let ec2 = ctx.ec2().await;
    let region = one_region(ctx, &ec2).await?;
    let found = mount::find(&ec2, &region, &selector, args.instance.as_ref())
        .await
        .map_err(mount_error)?;
    if found.is_empty() {
        // Nothing (left) to undo: a rerun after a finished unmount.
        if ctx.output() == OutputFormat::Json {
            return output::json(&Vec::<Item>::new());
        }
        println!("nothing mounted for {}", args.target);
        return Ok(());
    }
    let instances: std::collections::BTreeSet<_> =
        found.iter().filter_map(|v| v.instance.clone()).collect();
    if instances.len() > 1 && args.host.host.is_some() {
        return Err(CliError::Usage(format!(
            "{} is mounted on several instances ({}); pick one with --instance",
            args.target,
            instances
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let items = run_unmounts(
        ctx,
        &ec2,
        &region,
        found,
        &args.host,
        &commands,
        args.force,
        &args.commands,
    )
    .await?;
    report(ctx, &items)
}

/// `ektool snap cleanup`.
pub async fn exec_cleanup(ctx: &Context, args: CleanupArgs) -> Result<(), CliError> {
    let commands = commands(ctx, &args.commands)?;
    if args.host.host.is_some() && args.instance.is_none() {
        return Err(CliError::Usage(
            "--host needs --instance (each instance has its own host)".into(),
        ));
    }
    let cutoff = jiff::Timestamp::now()
        .checked_sub(durations::signed(args.older_than))
        .map_err(|e| CliError::Usage(format!("--older-than: {e}")))?;
    let ec2 = ctx.ec2().await;
    let regions = ctx.regions(&ec2).await?;
    let mut items = Vec::new();
    let mut failed_regions = Vec::new();
    for region in &regions {
        // A region that cannot be listed is reported; the others go on.
        let found = match mount::find(&ec2, region, &Selector::All, args.instance.as_ref()).await {
            Ok(f) => mount::older_than(f, cutoff),
            Err(e) => {
                eprintln!("error: {region}: {e}");
                failed_regions.push(region.to_string());
                continue;
            }
        };
        if found.is_empty() {
            continue;
        }
        items.extend(
            run_unmounts(
                ctx,
                &ec2,
                region,
                found,
                &args.host,
                &commands,
                args.force,
                &args.commands,
            )
            .await?,
        );
    }
    if items.is_empty() && ctx.output() == OutputFormat::Table {
        println!(
            "no mount volumes older than {}",
            ec2kit::duration::format(args.older_than)
        );
    }
    let reported = report(ctx, &items);
    if !failed_regions.is_empty() {
        return Err(CliError::Partial {
            failed: failed_regions.len(),
            total: regions.len(),
            what: "regions",
        });
    }
    reported
}

#[allow(clippy::too_many_arguments)]
async fn run_unmounts(
    ctx: &Context,
    ec2: &AwsEc2,
    region: &Region,
    found: Vec<MountVolume>,
    host: &HostArgs,
    commands: &MountCommands,
    force: bool,
    command_args: &CommandArgs,
) -> Result<Vec<Item>, CliError> {
    // The hosts: one DescribeInstances for every instance involved.
    let plans: Vec<UnmountPlan> = found.iter().map(mount::unmount_plan).collect();
    let ids: Vec<String> = plans
        .iter()
        .filter_map(|p| p.host_instance().map(|i| i.to_string()))
        .collect();
    let instances: Vec<Instance> = if ids.is_empty() || host.host.is_some() {
        Vec::new()
    } else {
        ec2.describe_instances(region, &[Filter::new("instance-id", ids)])
            .await?
    };
    let mut items = Vec::new();
    for plan in plans {
        let target = match plan.host_instance() {
            None => None,
            Some(id) => {
                let inst = instances.iter().find(|i| &i.id == id);
                match host_target(ctx, host, id, inst.and_then(|i| i.address(host.address()))) {
                    Ok(t) => Some(t),
                    // No way to reach it (e.g. terminated): only --force goes on.
                    Err(CliError::Failed(_)) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        items.push(Item {
            region: region.clone(),
            host: target.as_ref().map(|t| t.to_string()),
            plan,
            done: None,
            error: None,
        });
    }
    if !ctx.global.dry_run {
        let show = progress();
        for item in &mut items {
            let r = item
                .host
                .as_deref()
                .map(|h| {
                    SshTarget::parse_with_user(h, &ctx.ssh_user()).map(|t| remote(ctx, host, t))
                })
                .transpose()
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let result = mount::unmount(
                ec2,
                r.as_ref().map(|r| r as &dyn Remote),
                &item.plan,
                commands,
                force,
                waits(command_args),
                &show,
            )
            .await;
            match result {
                Ok(report) => item.done = Some(report),
                Err(e) => item.error = Some(error_chain(&e)),
            }
        }
    }
    Ok(items)
}

/// Prints the items; fails if any failed.
fn report(ctx: &Context, items: &[Item]) -> Result<(), CliError> {
    match ctx.output() {
        OutputFormat::Json => output::json(items)?,
        OutputFormat::Table if items.is_empty() => {}
        OutputFormat::Table => {
            output::table(
                &[
                    "REGION", "VOLUME", "SNAPSHOT", "INSTANCE", "STATE", "RESULT",
                ],
                items.iter().map(|i| {
                    let v = &i.plan.volume;
                    vec![
                        i.region.to_string(),
                        v.volume.to_string(),
                        output::or_dash(v.snapshot.as_deref()),
                        v.instance
                            .as_ref()
                            .map_or("-".to_owned(), |x| x.to_string()),
                        v.state.clone(),
                        result_text(i, ctx.global.dry_run),
                    ]
                }),
            );
            for i in items {
                for n in i.done.iter().flat_map(|d| d.notes.iter()) {
                    eprintln!("note: {}: {n}", i.plan.volume.volume);
                }
            }
            if ctx.global.dry_run {
                println!("dry run: nothing changed");
            }
        }
    }
    let failed = items.iter().filter(|i| i.error.is_some()).count();
    if failed > 0 {
        for i in items.iter().filter(|i| i.error.is_some()) {
            eprintln!(
                "error: {}: {}",
                i.plan.volume.volume,
                i.error.as_deref().unwrap_or_default()
            );
        }
        return Err(CliError::Partial {
            failed,
            total: items.len(),
            what: "mount volumes",
        });
    }
    Ok(())
}

fn result_text(i: &Item, dry_run: bool) -> String {
    if dry_run {
        let steps: Vec<String> = i
            .plan
            .steps
            .iter()
            .map(|s| match s {
                mount::UnmountStep::Unmount { .. } => {
                    format!("unmount on {}", i.host.as_deref().unwrap_or("<no host>"))
                }
                mount::UnmountStep::Detach { .. } => "detach".into(),
                mount::UnmountStep::WaitAvailable => "wait until created".into(),
                mount::UnmountStep::Delete => "delete".into(),
            })
            .collect();
        return format!("would {}", steps.join(", "));
    }
    match (&i.done, &i.error) {
        (_, Some(e)) => format!("FAILED: {e}"),
        (Some(d), None) => {
            let mut parts = Vec::new();
            if !d.unmounted.is_empty() {
                parts.push(format!("unmounted {}", d.unmounted.join(" ")));
            }
            if d.detached {
                parts.push("detached".into());
            }
            parts.push(if d.deleted {
                "deleted".into()
            } else {
                "already gone".into()
            });
            parts.join(", ")
        }
        (None, None) => "-".into(),
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}
