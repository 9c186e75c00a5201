//! `ektool releases`: the release log of each host, newest first.

use super::{Target, deployer, environment, hosts};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool releases`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Show at most this many rows per host.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

/// Runs `ektool releases`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let all = deployer(ctx, &name, env, hosts).releases().await?;
    if ctx.output() == OutputFormat::Json {
        return output::json(&all);
    }
    for (i, h) in all.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "{}: current {}{}",
            h.host,
            h.current.as_deref().unwrap_or("(none)"),
            if h.maintenance {
                " [maintenance on]"
            } else {
                ""
            }
        );
        output::table(
            &[
                "RELEASE", "COMMIT", "TAG", "WHEN", "WHO", "ACTION", "RESULT", "MARKS",
            ],
            h.history.iter().take(args.limit).map(|r| {
                let mut marks = Vec::new();
                if r.current {
                    marks.push("current");
                }
                if r.bad {
                    marks.push("bad");
                }
                if !r.available {
                    marks.push("gone");
                }
                vec![
                    r.release.clone(),
                    deploykit::short_commit(&r.commit).to_owned(),
                    output::or_dash(r.tag.as_deref()),
                    r.at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                    r.who.clone(),
                    serde_json::to_value(r.action)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    r.result
                        .and_then(|x| serde_json::to_value(x).ok())
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "-".into()),
                    output::or_dash(Some(&marks.join(","))),
                ]
            }),
        );
        if !h.unfinished.is_empty() {
            println!(
                "unfinished (removed by the next deploy): {}",
                h.unfinished.join(" ")
            );
        }
    }
    Ok(())
}
