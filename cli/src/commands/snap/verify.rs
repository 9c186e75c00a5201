//! `ektool snap verify`: restore tests. The flags made into a
//! [`snapkit::verify::VerifyRequest`], planned (`--dry-run` prints the
//! plan), carried out by a [`Verifier`] on the scratch instance's host,
//! rendered; any test that did not pass exits 1.

use std::io::IsTerminal;

use ec2kit::InstanceId;
use serde::Serialize;
use snapkit::verify::{
    self, Verifier, VerifyError, VerifyEvent, VerifyPlan, VerifyReport, VerifyRequest, VerifyResult,
};

use super::mount::{self as m, CommandArgs, HostArgs};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool snap verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The lineage (source volume id) to test (repeatable; default: every
    /// lineage of ektool's snapshots in the region).
    #[arg(long, value_name = "LINEAGE")]
    pub lineage: Vec<String>,
    /// The scratch instance the volumes are attached to and mounted on.
    #[arg(long, value_name = "ID")]
    pub instance: InstanceId,
    /// The check: a shell command run on the host with the mountpoint in
    /// $MOUNT; exit 0 passes (default: list the filesystem, which must
    /// hold files, and read a sample of 64 of them).
    #[arg(long, value_name = "CMD")]
    pub check: Option<String>,
    /// Reaching the host.
    #[command(flatten)]
    pub host: HostArgs,
    /// Host-side mount commands.
    #[command(flatten)]
    pub commands: CommandArgs,
}

/// `ektool snap verify`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let root = m::mount_root(ctx, &args.commands)?;
    let commands = m::commands(ctx, &args.commands)?;
    if let Some(h) = &args.host.host {
        m::target(ctx, h)?;
    }
    let ec2 = ctx.ec2().await;
    let region = m::one_region(ctx, &ec2).await?;
    let verifier = Verifier::new(&ec2)
        .commands(commands)
        .waits(m::waits(&args.commands))
        .on_event(progress())
        .cancel_on(ctx.interrupt.clone());
    let request = VerifyRequest {
        instance: args.instance.clone(),
        lineages: args.lineage.clone(),
        check: args
            .check
            .clone()
            .unwrap_or_else(|| verify::DEFAULT_CHECK.to_owned()),
        root,
    };
    let plan = verifier
        .plan(&region, &request)
        .await
        .map_err(verify_error)?;
    let address = match &args.host.host {
        Some(h) => h.clone(),
        None => {
            let (address, what) = if args.host.public_dns {
                (plan.public_dns.clone(), "public DNS name")
            } else {
                (plan.private_ip.clone(), "private IP")
            };
            address.ok_or_else(|| {
                CliError::Failed(format!("instance {} has no {what}", plan.instance))
            })?
        }
    };
    let host = m::target(ctx, &address)?.to_string();

    if ctx.global.dry_run {
        return dry_run(ctx, &plan, &host);
    }
    let report = verifier
        .verify(&m::connect(ctx, &args.host), &host, &plan)
        .await;
    render(ctx, &report)?;
    let bad = report
        .items
        .iter()
        .filter(|i| i.result != VerifyResult::Ok || !i.cleaned_up)
        .count();
    let leftover_errors = report
        .leftovers
        .iter()
        .filter(|l| l.error.is_some())
        .count();
    if report.ok() {
        Ok(())
    } else if report.interrupted && bad == 0 {
        Err(CliError::Failed(format!(
            "interrupted after {} of {} restore test(s)",
            report.items.len(),
            plan.targets.len()
        )))
    } else if bad > 0 {
        Err(CliError::Failed(format!(
            "{bad} of {} restore test(s) did not pass",
            report.items.len()
        )))
    } else {
        Err(CliError::Failed(format!(
            "{leftover_errors} volume(s) of earlier runs could not be removed"
        )))
    }
}

fn verify_error(e: VerifyError) -> CliError {
    match e {
        VerifyError::Mount(e) => m::mount_error(e),
        VerifyError::Ec2(e) => CliError::Ec2(e),
        VerifyError::EmptyCheck => CliError::Usage(e.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}

fn dry_run(ctx: &Context, plan: &VerifyPlan, host: &str) -> Result<(), CliError> {
    #[derive(Serialize)]
    struct DryRun<'a> {
        #[serde(flatten)]
        plan: &'a VerifyPlan,
        host: &'a str,
    }
    match ctx.output() {
        OutputFormat::Json => output::json(&DryRun { plan, host }),
        OutputFormat::Table => {
            for l in &plan.leftovers {
                println!(
                    "would first remove {} ({}) left by an earlier run",
                    l.volume, l.state
                );
            }
            output::table(
                &["LINEAGE", "SNAPSHOT", "DATA TIME", "SIZE"],
                plan.targets.iter().map(|t| {
                    vec![
                        t.lineage.clone(),
                        t.snapshot.to_string(),
                        t.snapshot_time.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
                        t.size_gib.map_or("-".into(), |g| format!("{g} GiB")),
                    ]
                }),
            );
            println!(
                "would make each a volume in {}, attach it to {}, mount it read-only on {host} \
                 under {}, run the check, then unmount, detach and delete it",
                plan.availability_zone, plan.instance, plan.root
            );
            println!("dry run: nothing changed");
            Ok(())
        }
    }
}

fn render(ctx: &Context, report: &VerifyReport) -> Result<(), CliError> {
    match ctx.output() {
        OutputFormat::Json => output::json(report)?,
        OutputFormat::Table => {
            for l in &report.leftovers {
                if l.error.is_none() {
                    println!("removed {} left by an earlier run", l.volume);
                }
            }
            if report.items.is_empty() {
                println!("no snapshots to verify");
            } else {
                output::table(
                    &["LINEAGE", "SNAPSHOT", "VOLUME", "RESULT", "CLEANED UP"],
                    report.items.iter().map(|i| {
                        vec![
                            i.lineage.clone(),
                            i.snapshot.to_string(),
                            output::or_dash(i.volume.as_ref().map(|v| v.as_str())),
                            match i.result {
                                VerifyResult::Ok => "ok".into(),
                                VerifyResult::Failed => "FAILED".into(),
                                _ => "ERROR".into(),
                            },
                            if i.cleaned_up { "yes" } else { "NO" }.into(),
                        ]
                    }),
                );
            }
        }
    }
    for l in &report.leftovers {
        if let Some(e) = &l.error {
            eprintln!("error: {} (left by an earlier run): {e}", l.volume);
        }
    }
    for i in &report.items {
        if let Some(r) = &i.reason {
            eprintln!("{} {}: {r}", i.lineage, i.snapshot);
            let out = i.output.trim();
            if !out.is_empty() && ctx.output() == OutputFormat::Table {
                for line in out
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("  | {line}");
                }
            }
        }
        if let Some(e) = &i.cleanup_error {
            eprintln!("error: {} not cleaned up: {e}", i.snapshot);
        }
        for n in &i.notes {
            eprintln!("note: {}: {n}", i.snapshot);
        }
    }
    Ok(())
}

/// Progress lines on stderr, on a terminal only.
fn progress() -> impl Fn(&VerifyEvent) + Send + Sync + 'static {
    let show = std::io::stderr().is_terminal();
    let mount = m::progress();
    move |event: &VerifyEvent| {
        if !show {
            return;
        }
        let line = match event {
            VerifyEvent::Mount(e) => return mount(e),
            VerifyEvent::CleaningUp { volume } => {
                format!("removing {volume}, left by an earlier run")
            }
            VerifyEvent::Testing { lineage, snapshot } => {
                format!("testing {snapshot} of {lineage}")
            }
            VerifyEvent::Checking { mountpoint, .. } => format!("checking {mountpoint}"),
            VerifyEvent::Tested { snapshot, result } => format!("{snapshot}: {result:?}"),
            _ => return,
        };
        eprintln!("… {line}");
    }
}
