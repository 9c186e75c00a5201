//! `ektool snap mount`, `snap unmount` and `snap cleanup`: a snapshot
//! mounted read-only on an instance, and undone again.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use ec2kit::{AwsEc2, InstanceId, Region, SnapshotId, SshRemote, SshTarget, VolumeId};
use serde::Serialize;
use snapkit::connect::{Address, Connect};
use snapkit::mount::{
    self, MountCommands, MountEvent, MountPlan, MountRequest, Mounter, Selector, SweepPlan,
    UnmountPlan, UnmountReport, Unmounted, Waits,
};

use super::durations;
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// How to reach the instance's host.
#[derive(Debug, clap::Args)]
pub(crate) struct HostArgs {
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
pub(crate) struct CommandArgs {
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
pub(crate) struct MountArgs {
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
pub(crate) struct UnmountArgs {
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
pub(crate) struct CleanupArgs {
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

pub(crate) fn commands(ctx: &Context, args: &CommandArgs) -> Result<MountCommands, CliError> {
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

pub(crate) fn waits(args: &CommandArgs) -> Waits {
    Waits {
        poll: Duration::from_secs(2),
        timeout: args.wait_timeout,
    }
}

/// The mount root: `--mount-root`, else `[mount] root`.
pub(crate) fn mount_root(ctx: &Context, args: &CommandArgs) -> Result<String, CliError> {
    let root = args
        .mount_root
        .clone()
        .unwrap_or_else(|| ctx.config.mount.root.clone());
    mount::check_mountpoint(&root).map_err(|e| CliError::Usage(format!("mount root: {e}")))?;
    Ok(root)
}

/// The one region a mount command works in.
pub(crate) async fn one_region(ctx: &Context, ec2: &AwsEc2) -> Result<Region, CliError> {
    let mut regions = ctx.regions(ec2).await?;
    if regions.len() != 1 {
        return Err(CliError::Usage(format!(
            "name one region with --region (got {})",
            regions.len()
        )));
    }
    Ok(regions.remove(0))
}

/// The library's mounter for these flags: commands, waits, progress on a
/// terminal, the address or `--host` of each instance's host, and SSH to
/// reach them.
fn mounter<'a>(
    ctx: &Context,
    ec2: &'a AwsEc2,
    host: &HostArgs,
    args: &CommandArgs,
) -> Result<Mounter<'a>, CliError> {
    let mut m = Mounter::new(ec2)
        .commands(commands(ctx, args)?)
        .waits(waits(args))
        .on_event(progress())
        .address(address(host))
        .connect(connect(ctx, host));
    if let Some(h) = &host.host {
        // Bad input before any call.
        target(ctx, h)?;
        m = m.on_host(h.clone());
    }
    Ok(m)
}

fn address(args: &HostArgs) -> Address {
    if args.public_dns {
        Address::PublicDns
    } else {
        Address::PrivateIp
    }
}

/// `[user@]host[:port]`, with the `[ssh]` user when it names none.
pub(crate) fn target(ctx: &Context, address: &str) -> Result<SshTarget, CliError> {
    SshTarget::parse_with_user(address, &ctx.ssh_user()).map_err(|e| CliError::Usage(e.to_string()))
}

fn ssh_options(ctx: &Context, args: &HostArgs) -> ec2kit::SshOptions {
    ctx.ssh_options_with(args.known_hosts.as_deref(), &args.identity)
}

/// Hosts over SSH, with the `-i`/`--known-hosts` flags over the config.
pub(crate) fn connect(ctx: &Context, args: &HostArgs) -> Connect {
    crate::config::ssh_connect(ctx.ssh_user(), ssh_options(ctx, args))
}

/// Progress lines on stderr, on a terminal only.
pub(crate) fn progress() -> impl Fn(&MountEvent) + Send + Sync + 'static {
    let show = std::io::stderr().is_terminal();
    move |event: &MountEvent| {
        if !show {
            return;
        }
        let line = match event {
            MountEvent::Creating {
                snapshot,
                availability_zone,
            } => format!("creating a volume from {snapshot} in {availability_zone}"),
            MountEvent::Waiting {
                volume,
                state,
                waiting_for,
            } => format!("{volume}: {state} (waiting to be {waiting_for})"),
            MountEvent::Attaching {
                volume,
                instance,
                device,
            } => format!("attaching {volume} to {instance} as {device}"),
            MountEvent::Mounting { host, .. } => format!("mounting on {host}"),
            MountEvent::RollingBack { volume } => format!("mount failed, removing {volume}"),
            MountEvent::Unmounting { volume, host } => format!("unmounting {volume} on {host}"),
            MountEvent::Detaching { volume, instance } => {
                format!("detaching {volume} from {instance}")
            }
            MountEvent::Deleting { volume } => format!("deleting {volume}"),
            _ => return,
        };
        eprintln!("… {line}");
    }
}

/// Where the instance's host is: `--host`, else the `[ssh]` user at its
/// private IP (or public DNS name).
fn host_target(ctx: &Context, args: &HostArgs, plan: &MountPlan) -> Result<SshTarget, CliError> {
    let address = match &args.host {
        Some(h) => h.as_str(),
        None => plan.address(address(args)).ok_or_else(|| {
            CliError::Failed(format!(
                "instance {} has no {}",
                plan.instance,
                if args.public_dns {
                    "public DNS name"
                } else {
                    "private IP"
                }
            ))
        })?,
    };
    target(ctx, address)
}

/// `ektool snap mount`.
pub(crate) async fn exec_mount(ctx: &Context, args: MountArgs) -> Result<(), CliError> {
    let root = mount_root(ctx, &args.commands)?;
    if let Some(m) = &args.mountpoint {
        mount::check_mountpoint_under(m, &root).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let ec2 = ctx.ec2().await;
    let mounter = mounter(ctx, &ec2, &args.host, &args.commands)?;
    let region = one_region(ctx, &ec2).await?;
    let request = MountRequest {
        snapshot: args.snapshot.clone(),
        instance: args.instance.clone(),
        mountpoint: args.mountpoint.clone(),
        root,
        partition: args.partition,
    };
    let plan = mounter.plan(&region, &request).await.map_err(mount_error)?;
    let target = host_target(ctx, &args.host, &plan)?;

    if ctx.global.dry_run {
        // EC2 checks the permissions and parameters of the real call.
        let permission = match mounter.check(&plan).await {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        #[derive(Serialize)]
        struct DryRun<'a> {
            #[serde(flatten)]
            plan: &'a MountPlan,
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

    let remote = SshRemote::new(target, ssh_options(ctx, &args.host));
    let mounted = mounter.mount(&remote, &plan).await.map_err(mount_error)?;
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
pub(crate) fn mount_error(e: mount::MountError) -> CliError {
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
pub(crate) async fn exec_unmount(ctx: &Context, args: UnmountArgs) -> Result<(), CliError> {
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
    let mounter = mounter(ctx, &ec2, &args.host, &args.commands)?;
    let region = one_region(ctx, &ec2).await?;
    let plan = mounter
        .unmount_plan(&region, &selector, args.instance.as_ref())
        .await
        .map_err(mount_error)?;
    if plan.items.is_empty() {
        // Nothing (left) to undo: a rerun after a finished unmount.
        if ctx.output() == OutputFormat::Json {
            return output::json(&Vec::<Item>::new());
        }
        println!("nothing mounted for {}", args.target);
        return Ok(());
    }
    let instances = plan.instances();
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
    let items = unmount(ctx, &mounter, plan, args.force).await;
    report(ctx, &items)
}

/// `ektool snap cleanup`.
pub(crate) async fn exec_cleanup(ctx: &Context, args: CleanupArgs) -> Result<(), CliError> {
    if args.host.host.is_some() && args.instance.is_none() {
        return Err(CliError::Usage(
            "--host needs --instance (each instance has its own host)".into(),
        ));
    }
    let ec2 = ctx.ec2().await;
    let mounter = mounter(ctx, &ec2, &args.host, &args.commands)?;
    let regions = ctx.regions(&ec2).await?;
    let plan = mounter
        .sweep_plan(&regions, args.older_than, args.instance.as_ref())
        .await;
    // A region that cannot be listed is reported; the others go on.
    for f in &plan.failed_regions {
        eprintln!("error: {}: {}", f.region, f.error);
    }
    let failed_regions = plan.failed_regions.len();
    let items = unmount(ctx, &mounter, plan, args.force).await;
    if items.is_empty() && ctx.output() == OutputFormat::Table {
        println!(
            "no mount volumes older than {}",
            ec2kit::duration::format(args.older_than)
        );
    }
    let reported = report(ctx, &items);
    if failed_regions > 0 {
        return Err(CliError::Partial {
            failed: failed_regions,
            total: regions.len(),
            what: "regions",
        });
    }
    reported
}

/// Carries out the sweep (unless --dry-run), as items to report.
async fn unmount(ctx: &Context, mounter: &Mounter<'_>, plan: SweepPlan, force: bool) -> Vec<Item> {
    let user = ctx.ssh_user();
    let item = |i: snapkit::mount::SweepItem| Item {
        region: i.region,
        // As the host was reached: `user@host:port`.
        host: i
            .host
            .map(|h| SshTarget::parse_with_user(&h, &user).map_or(h, |t| t.to_string())),
        plan: i.plan,
        done: None,
        error: None,
    };
    if ctx.global.dry_run {
        return plan.items.into_iter().map(item).collect();
    }
    mounter
        .unmount(&plan, force)
        .await
        .into_iter()
        .map(|Unmounted { item: i, result }| {
            let mut it = item(i);
            match result {
                Ok(report) => it.done = Some(report),
                Err(e) => it.error = Some(ec2kit::one_line(&e)),
            }
            it
        })
        .collect()
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
