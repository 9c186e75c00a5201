//! `ektool deploy`: resolve the release locally, then deploy it (or show
//! the plan with --dry-run).

use std::path::PathBuf;

use deploykit::git::LocalRepo;
use deploykit::{Bump, DeployPlan, DeployReport, PrepareAction, RefSpec};

use super::{Target, deployer, environment, hosts, lock_wait};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool deploy`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// What to deploy: a tag, branch, commit, `HEAD` or `latest-tag`.
    /// Default: the newest release tag when the environment requires tags,
    /// else the head of its branch.
    #[arg(long = "ref", value_name = "REF", conflicts_with = "tag")]
    pub reference: Option<String>,
    /// Tag the release first: `next-patch`, `next-minor`, `next-major` or
    /// `vX.Y.Z` (an annotated tag on the branch head, pushed, checked).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Deploy something that is not a release tag to an environment that
    /// requires one (recorded in the log with your message).
    #[arg(long)]
    pub allow_untagged: bool,
    /// Wait this long for another deploy's lock: a duration with a unit
    /// (`90s`, `15m`), 0s to 24h (default: fail at once).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    pub lock_wait: Option<std::time::Duration>,
    /// Why: shown in the lock, the release log and notifications.
    #[arg(long, short = 'm', value_name = "TEXT")]
    pub message: Option<String>,
    /// The local git repository (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub repo: PathBuf,
    /// Switch this many hosts first, check them and wait `--canary-wait`
    /// before the rest (overrides the environment's `canary`).
    #[arg(long, value_name = "N")]
    pub canary: Option<usize>,
    /// How long the canary runs, healthy, before the rest switch: a
    /// duration with a unit (`30s`, `5m`), 0s to 24h.
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    pub canary_wait: Option<std::time::Duration>,
    /// After the canary, switch this many hosts at a time: a number or a
    /// percentage of the hosts (`2`, `25%`; overrides `batch`).
    #[arg(long, value_name = "SIZE")]
    pub batch: Option<deploykit::rollout::BatchSize>,
    /// Behind a load balancer: the longest each wave waits for its targets
    /// to drain (default: the target group's `deregistration_delay`, or
    /// the environment's `drain_timeout`): a duration with a unit (`30s`),
    /// 0s to 24h.
    #[arg(long, value_name = "DURATION", value_parser = super::parse_lock_wait)]
    pub drain_timeout: Option<std::time::Duration>,
}

/// Runs `ektool deploy`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let mut env = env.clone();
    if let Some(n) = args.canary {
        env.canary = n;
    }
    if let Some(wait) = args.canary_wait {
        env.canary_wait = wait.into();
    }
    if let Some(batch) = args.batch {
        env.batch = Some(batch);
    }
    let env = &env;
    // Everything git decides happens before any host is contacted.
    let repo = LocalRepo::open(&args.repo)?;
    let mut release = match &args.tag {
        // A new tag goes on the branch head (or --ref): resolve that, not
        // the latest tag, and apply every rule but the tag requirement.
        Some(_) => {
            let what = args.reference.clone().unwrap_or_else(|| env.branch.clone());
            repo.release_with(&RefSpec::parse(&what), env, &name, true)?
        }
        None => {
            let spec = RefSpec::parse(args.reference.as_deref().unwrap_or(""));
            repo.release_with(&spec, env, &name, args.allow_untagged)?
        }
    };
    let mut new_tag = None;
    if let Some(bump) = &args.tag {
        let tag = repo.next_tag(&Bump::parse(bump), &env.version_pattern)?;
        if !ctx.global.dry_run {
            let message = args
                .message
                .clone()
                .unwrap_or_else(|| format!("release {tag}"));
            repo.create_tag(&tag, &release.commit, &message, env.sign_tags)?;
            repo.push_tag(&env.remote, &tag)?;
            eprintln!(
                "tagged {} as {tag} and pushed it to {}",
                release.short(),
                env.remote
            );
        }
        release.tag = Some(tag.clone());
        release.describe = tag.clone();
        release.reference = tag.clone();
        new_tag = Some(tag);
    }
    let hosts = hosts(ctx, env, &args.target).await?;
    let mut d = deployer(ctx, &name, env, hosts)
        .lock_wait(lock_wait(args.lock_wait))
        .message(args.message.clone());
    if env.repository.is_none() {
        d = d.repository(repo.remote_url(&env.remote)?);
    }
    if env.load_balancer.is_some() {
        // One client for both: the target group's calls, and the addresses
        // of an `instance` group's instances.
        let aws = std::sync::Arc::new(ctx.ec2().await);
        d = d.target_groups(aws.clone()).ec2(aws);
    }
    if let Some(limit) = args.drain_timeout {
        d = d.drain_timeout(limit);
    }
    if ctx.global.dry_run {
        let plan = d.deploy_plan(&release).await?;
        return show_plan(ctx, &plan, new_tag.as_deref());
    }
    let report = d.deploy(&release).await?;
    show_report(ctx, &report)
}

fn show_plan(ctx: &Context, plan: &DeployPlan, new_tag: Option<&str>) -> Result<(), CliError> {
    if ctx.output() == OutputFormat::Json {
        return output::json(plan);
    }
    if let Some(t) = new_tag {
        println!("would tag {} as {t} and push it", plan.release.commit);
    }
    println!(
        "deploy {} ({}) to {} [{} layout] from {}",
        plan.release.describe,
        deploykit::short_commit(&plan.release.commit),
        plan.environment,
        plan.layout,
        plan.repository
    );
    // A ROLES column only when some host has roles.
    let roles = plan.hosts.iter().any(|h| !h.roles.is_empty());
    let mut headers = vec!["HOST"];
    if roles {
        headers.push("ROLES");
    }
    headers.extend(["CURRENT", "PREPARE", "MIRROR", "SWITCH", "HOOKS", "CLEANUP"]);
    output::table(
        &headers,
        plan.hosts.iter().map(|h| {
            let (prepare, mirror) = match &h.prepare {
                PrepareAction::Reuse { release } => (format!("reuse {release}"), "-".to_owned()),
                PrepareAction::Build {
                    release,
                    mirror,
                    in_place,
                } => (
                    format!(
                        "build {release}{}",
                        if *in_place { " (in place)" } else { "" }
                    ),
                    mirror.to_string(),
                ),
            };
            let mut row = vec![h.host.clone()];
            if roles {
                row.push(output::or_dash(Some(&h.roles.join(","))));
            }
            row.extend([
                output::or_dash(h.current.as_deref().or(h.current_link.as_deref())),
                prepare,
                mirror,
                h.switch.clone(),
                output::or_dash(Some(
                    &h.hooks
                        .iter()
                        .map(|h| format!("{}:{}", h.phase, h.commands.len()))
                        .collect::<Vec<_>>()
                        .join(" "),
                )),
                output::or_dash(Some(&h.cleanup.join(" "))),
            ]);
            row
        }),
    );
    if roles {
        show_hooks_where(plan);
    }
    if plan.waves.len() > 1 {
        for (i, wave) in plan.waves.iter().enumerate() {
            let wait = if i == 0 && plan.canary_wait_seconds > 0 {
                format!(" (canary: then wait {}s)", plan.canary_wait_seconds)
            } else {
                String::new()
            };
            println!(
                "wave {}/{}: {}{wait}",
                i + 1,
                plan.waves.len(),
                wave.join(", ")
            );
        }
    }
    if let Some(lb) = &plan.load_balancer {
        println!(
            "load balancer: target group {} ({} targets): each wave is deregistered, drained (up to {}s; deregistration_delay {}s), switched, registered again and waited on until healthy (up to {}s)",
            lb.target_group_arn,
            lb.target_type,
            lb.drain_wait_seconds,
            lb.deregistration_delay_seconds,
            lb.healthy_timeout_seconds
        );
        for (host, targets) in &lb.targets {
            println!("  {host}: target {}", targets.join(", "));
        }
        for host in &lb.not_targets {
            println!("  {host}: no target of the group: switched without draining");
        }
    }
    for h in &plan.hosts {
        if let Some(ms) = h.clock_skew_ms.filter(|ms| ms.unsigned_abs() > 500) {
            println!(
                "note: {}'s clock is {:.1}s {} this machine's",
                h.host,
                ms.unsigned_abs() as f64 / 1000.0,
                if ms < 0 { "behind" } else { "ahead of" }
            );
        }
    }
    println!("dry run: nothing was changed");
    Ok(())
}

/// With roles, which host runs each hook: `before_switch ./migrate: h3`.
fn show_hooks_where(plan: &DeployPlan) {
    // Phase by phase in deploy order, each hook where it first appears.
    use deploykit::Phase;
    let mut seen: Vec<(Phase, &str)> = Vec::new();
    for phase in [
        Phase::Build,
        Phase::BeforeSwitch,
        Phase::Restart,
        Phase::AfterSwitch,
    ] {
        let commands = plan
            .hosts
            .iter()
            .flat_map(|h| h.hooks.iter().filter(|p| p.phase == phase))
            .flat_map(|p| &p.commands);
        for c in commands {
            if !seen.contains(&(phase, c.as_str())) {
                seen.push((phase, c.as_str()));
            }
        }
    }
    for (phase, command) in seen {
        let on: Vec<&str> = plan
            .hosts
            .iter()
            .filter(|h| {
                h.hooks
                    .iter()
                    .any(|p| p.phase == phase && p.commands.iter().any(|c| c == command))
            })
            .map(|h| h.host.as_str())
            .collect();
        let on = if on.len() == plan.hosts.len() && phase != Phase::BeforeSwitch {
            "every host".to_owned()
        } else {
            on.join(", ")
        };
        println!("{phase} `{command}`: {on}");
    }
}

fn show_report(ctx: &Context, report: &DeployReport) -> Result<(), CliError> {
    if ctx.output() == OutputFormat::Json {
        return output::json(&serde_json::json!({ "event": "deployed", "report": report }));
    }
    println!(
        "{} ({}) is live on {} host{} of {} in {:.1}s (switch spread {:.0} ms)",
        report.release.describe,
        report.release.short(),
        report.hosts.len(),
        if report.hosts.len() == 1 { "" } else { "s" },
        report.environment,
        report.seconds,
        report.switch_spread_ms
    );
    output::table(
        &["HOST", "RELEASE", "PREVIOUS", "BUILD", "REMOVED"],
        report.hosts.iter().map(|h| {
            vec![
                h.host.clone(),
                h.release.clone(),
                output::or_dash(h.previous.as_deref()),
                if h.reused { "reused" } else { "built" }.to_owned(),
                output::or_dash(Some(&h.removed.join(" "))),
            ]
        }),
    );
    Ok(())
}
