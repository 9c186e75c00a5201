//! `ektool audit --env E [--host H] [--since DURATION|TIME] [--limit N]`:
//! every host's release log and audit file merged into one timeline
//! ([`deploykit::Deployer::audit`]); a table by default, `--output json`
//! one object per entry and line. A host that cannot be read is reported
//! and the others shown (exit 1 then).

use deploykit::audit::{AuditEntry, AuditQuery};
use jiff::Timestamp;

use super::deploy::{Target, deployer, environment, hosts};
use crate::context::Context;
use crate::error::CliError;
use crate::output;
use crate::output::OutputFormat;

/// Arguments of `ektool audit`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Environment and hosts.
    #[command(flatten)]
    pub target: Target,
    /// Only entries since then: a duration ago (`2h`, `7d`), a time
    /// (RFC 3339, `2026-01-31T09:00:00Z`) or a date (`2026-01-31`, UTC).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only the newest N entries (after `--since`).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Parses `--since` against `now`.
fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp, CliError> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>()
        && let Ok(z) = d.to_zoned(jiff::tz::TimeZone::UTC)
    {
        return Ok(z.timestamp());
    }
    let ago = ec2kit::duration::parse(s).map_err(|e| {
        CliError::Usage(format!(
            "invalid --since {s:?}: a duration ago (2h, 7d), a time (2026-01-31T09:00:00Z) or a date (2026-01-31): {e}"
        ))
    })?;
    jiff::SignedDuration::try_from(ago)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .ok_or_else(|| CliError::Usage(format!("invalid --since {s:?}: too long ago")))
}

/// Runs `ektool audit`.
pub(crate) async fn exec(ctx: &Context, args: Args) -> Result<(), CliError> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, Timestamp::now()))
        .transpose()?;
    let (name, env) = environment(ctx, &args.target)?;
    let hosts = hosts(ctx, env, &args.target).await?;
    let query = AuditQuery::all().since(since).limit(args.limit);
    let report = deployer(ctx, &name, env, hosts).audit(&query).await?;
    if ctx.output() == OutputFormat::Json {
        let mut text = String::new();
        for e in &report.entries {
            text.push_str(&serde_json::to_string(e).unwrap_or_default());
            text.push('\n');
        }
        output::write(text.as_bytes())?;
    } else {
        output::table(
            &["WHEN", "HOST", "WHO", "ACTION", "WHAT", "RESULT", "MESSAGE"],
            report.entries.iter().map(row),
        );
    }
    if report.unreadable.is_empty() {
        return Ok(());
    }
    for f in &report.unreadable {
        eprintln!("error: {}: audit log not read: {}", f.host, f.error);
    }
    Err(CliError::Failed(format!(
        "{} of the hosts could not be read: {}",
        report.unreadable.len(),
        report
            .unreadable
            .iter()
            .map(|f| f.host.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn row(e: &AuditEntry) -> Vec<String> {
    let result = match (&e.result, e.exit_code) {
        (Some(r), Some(code)) => format!("{} (exit {code})", r.name()),
        (Some(r), None) => r.name(),
        (None, _) => "-".into(),
    };
    vec![
        e.at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        e.host.clone(),
        e.who.to_string(),
        e.action.name(),
        output::or_dash(Some(&e.what)),
        result,
        output::or_dash(e.message.as_deref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_a_time_or_a_date() {
        let now: Timestamp = "2026-01-31T12:00:00Z".parse().unwrap();
        let at = |s: &str| parse_since(s, now).unwrap().to_string();
        assert_eq!(at("2h"), "2026-01-31T10:00:00Z");
        assert_eq!(at("2026-01-30T09:00:00Z"), "2026-01-30T09:00:00Z");
        assert_eq!(at("2026-01-30"), "2026-01-30T00:00:00Z");
        assert!(parse_since("yesterday", now).is_err());
    }
}
