//! `[notify]` for jobs: a webhook post when a run fails (and when it
//! succeeds, with `on_success`), and a healthchecks.io-style heartbeat
//! (`<url>/start`, `<url>`, `<url>/fail`). Built on
//! [`deploykit::notify::WebhookNotifier`]. A notification that cannot be
//! delivered is a warning on stderr, never a failure of the job; the URLs
//! are secrets and never printed (the errors do not contain them).

use deploykit::notify::WebhookNotifier;
use ektool::config::{Config, NotifyConfig, expand_home};

/// The notifiers of one run, from `[notify]`.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    webhook: Option<WebhookNotifier>,
    heartbeat: Option<WebhookNotifier>,
    on_success: bool,
}

/// A URL from an environment variable or a file; `None` when not set.
fn url(env: Option<&String>, file: Option<&std::path::PathBuf>) -> Option<String> {
    let url = match (env, file) {
        (Some(var), _) => std::env::var(var).ok(),
        (None, Some(file)) => std::fs::read_to_string(expand_home(file)).ok(),
        (None, None) => return None,
    };
    let url = url.filter(|u| !u.trim().is_empty());
    if url.is_none() {
        eprintln!("warning: notify: a URL of [notify] is not set; not used");
    }
    url
}

fn notifier(what: &str, url: Option<String>, allow_http: bool) -> Option<WebhookNotifier> {
    match WebhookNotifier::with_http(&url?, allow_http) {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("warning: notify: {what}: {e}; not used");
            None
        }
    }
}

impl Watch {
    /// The notifiers `[notify]` configures (none without it).
    pub(crate) fn new(config: &Config) -> Self {
        let Some(c): Option<&NotifyConfig> = config.notify.as_ref() else {
            return Self::default();
        };
        Self {
            webhook: notifier(
                "webhook",
                url(c.webhook_url_env.as_ref(), c.webhook_url_file.as_ref()),
                c.allow_http,
            ),
            heartbeat: notifier(
                "heartbeat",
                url(c.heartbeat_url_env.as_ref(), c.heartbeat_url_file.as_ref()),
                c.allow_http,
            )
            .map(|n| n.timeout(std::time::Duration::from_secs(10))),
            on_success: c.on_success,
        }
    }

    /// A run starts: pings `<heartbeat>/start`.
    pub(crate) async fn start(&self) {
        if let Some(h) = &self.heartbeat
            && let Err(e) = h.ping("/start").await
        {
            eprintln!("warning: notify: heartbeat: {e}");
        }
    }

    /// A run ended: pings `<heartbeat>` or `<heartbeat>/fail`, and posts
    /// `text` to the webhook on failure (or success with `on_success`).
    pub(crate) async fn finish(&self, ok: bool, text: &str) {
        if let Some(h) = &self.heartbeat
            && let Err(e) = h.ping(if ok { "" } else { "/fail" }).await
        {
            eprintln!("warning: notify: heartbeat: {e}");
        }
        if let Some(w) = &self.webhook
            && (!ok || self.on_success)
            && let Err(e) = w.post_text(text).await
        {
            eprintln!("warning: notify: webhook: {e}");
        }
    }

    /// A command ended: [`Watch::finish`] with `ektool COMMAND: ok`, or
    /// `FAILED: the error` and the failure lines.
    pub(crate) async fn finish_command(
        &self,
        command: &str,
        result: &Result<(), crate::error::CliError>,
        failures: &[String],
    ) {
        let text = match result {
            Ok(()) => format!("ektool {command}: ok"),
            Err(e) => {
                let mut text = format!("ektool {command}: FAILED: {e}");
                for f in failures {
                    text.push_str(&format!("\n- {f}"));
                }
                text
            }
        };
        self.finish(result.is_ok(), &text).await;
    }
}
