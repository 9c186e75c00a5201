//! Notifications on start, success, failure and rollback.
//!
//! A [`Notifier`] is told about each; a failure to notify is reported as an
//! event and **never** fails the deploy. [`WebhookNotifier`] (feature
//! `webhook`) posts Slack-compatible JSON (`{"text": …}`, also understood by
//! Mattermost, Rocket.Chat and Discord's `/slack` endpoint). Its URL is the
//! credential, so it is never shown: not in `Debug`, errors, events or logs.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A deploy started.
    Started,
    /// A deploy is live everywhere.
    Succeeded,
    /// A deploy failed (and switched hosts were switched back).
    Failed,
    /// A rollback was done.
    RolledBack,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// What happened.
    pub kind: NotificationKind,
    /// The environment.
    pub environment: String,
    /// Who.
    pub who: String,
    /// The release (tag or short commit).
    pub release: String,
    /// The commit live before (short), when known.
    pub old_commit: Option<String>,
    /// The commit deployed (short).
    pub new_commit: String,
    /// How many hosts.
    pub hosts: usize,
    /// Why it failed.
    pub error: Option<String>,
    /// The operator's message.
    pub message: Option<String>,
}

impl Notification {
    /// The one-line text: `alice deployed v1.2.3 (abc123..def456) to production (3 hosts)`.
    pub fn text(&self) -> String {
        self.render(&|s: &str| s.to_owned())
    }

    /// The text with every value passed through `esc` (who, release,
    /// environment, commits, message and error all come from people or
    /// hosts, never from this code).
    fn render(&self, esc: &dyn Fn(&str) -> String) -> String {
        let who = esc(&self.who);
        let release = esc(&self.release);
        let environment = esc(&self.environment);
        let new_commit = esc(&self.new_commit);
        let range = match &self.old_commit {
            Some(old) if *old != self.new_commit => format!(" ({}..{new_commit})", esc(old)),
            _ => format!(" ({new_commit})"),
        };
        let hosts = format!(
            "{} host{}",
            self.hosts,
            if self.hosts == 1 { "" } else { "s" }
        );
        let mut text = match self.kind {
            NotificationKind::Started => {
                format!("{who} is deploying {release}{range} to {environment} ({hosts})")
            }
            NotificationKind::Succeeded => {
                format!("{who} deployed {release}{range} to {environment} ({hosts})")
            }
            NotificationKind::Failed => format!(
                "{who}'s deploy of {release}{range} to {environment} FAILED; {environment} is unchanged"
            ),
            NotificationKind::RolledBack => {
                format!("{who} rolled {environment} back to {release}{range} ({hosts})")
            }
        };
        if let Some(m) = &self.message {
            text.push_str(&format!(": {}", esc(m)));
        }
        if let Some(e) = &self.error {
            text.push_str(&format!("\n> {}", esc(e)));
        }
        text
    }

    /// The Slack-compatible payload. Slack reads `<…>` as links and
    /// mentions (`<!channel>`) and `&` as an entity, so every value is
    /// escaped (`&amp;`, `&lt;`, `&gt;`): a message or a failing host's
    /// error can never ping the channel or disguise a link.
    pub fn slack_payload(&self) -> serde_json::Value {
        serde_json::json!({ "text": self.render(&slack_escape) })
    }
}

/// Escapes text for Slack's mrkdwn (`&`, `<`, `>`, as Slack documents).
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Why a notification was not delivered. Never contains the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The URL is not a valid http(s) URL.
    #[error("webhook URL is not a valid http(s) URL")]
    InvalidUrl,
    /// A plain-http URL to a host other than this machine, not allowed.
    #[error(
        "webhook URL is plain http:// to another host: the URL is the credential and would cross the network readable; use https"
    )]
    InsecureUrl,
    /// The request could not be sent.
    #[error("webhook request failed: {0}")]
    Transport(String),
    /// The endpoint answered with an error status.
    #[error("webhook answered HTTP {0}")]
    Status(u16),
    /// No answer in time.
    #[error("webhook timed out")]
    Timeout,
}

/// Somewhere deploys are announced.
#[async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Delivers one notification.
    async fn notify(&self, notification: &Notification) -> Result<(), NotifyError>;
}

#[cfg(feature = "webhook")]
pub use webhook::WebhookNotifier;

#[cfg(feature = "webhook")]
mod webhook {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    /// Posts notifications to a Slack-compatible incoming webhook.
    pub struct WebhookNotifier {
        url: hyper::Uri,
        timeout: Duration,
    }

    impl fmt::Debug for WebhookNotifier {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // The URL is the secret: show the host only.
            f.debug_struct("WebhookNotifier")
                .field("host", &self.url.host().unwrap_or("?"))
                .finish_non_exhaustive()
        }
    }

    impl WebhookNotifier {
        /// A notifier posting to `url`: https, or http to this machine
        /// (`127.0.0.1`, `::1`, `localhost`: a local relay, or a test).
        pub fn new(url: &str) -> Result<Self, NotifyError> {
            Self::with_http(url, false)
        }

        /// A notifier posting to `url`, accepting plain http to any host
        /// when `allow_http` (an explicit opt-in: the URL crosses the
        /// network readable).
        pub fn with_http(url: &str, allow_http: bool) -> Result<Self, NotifyError> {
            let url: hyper::Uri = url.trim().parse().map_err(|_| NotifyError::InvalidUrl)?;
            let host = url.host().ok_or(NotifyError::InvalidUrl)?;
            match url.scheme_str() {
                Some("https") => {}
                Some("http") if allow_http || is_loopback(host) => {}
                Some("http") => return Err(NotifyError::InsecureUrl),
                _ => return Err(NotifyError::InvalidUrl),
            }
            Ok(Self {
                url,
                timeout: Duration::from_secs(10),
            })
        }

        /// Changes the request timeout (default 10 s).
        #[must_use]
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }
    }

    /// Whether a URL host is this machine.
    fn is_loopback(host: &str) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Describes a transport failure by kind only: hyper's messages are
    /// safe, but this keeps the guarantee independent of them.
    fn transport(e: &hyper_util::client::legacy::Error) -> NotifyError {
        NotifyError::Transport(if e.is_connect() {
            "could not connect".to_owned()
        } else {
            "request error".to_owned()
        })
    }

    async fn send<C>(
        client: Client<C, Full<Bytes>>,
        request: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(), NotifyError>
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let response = tokio::time::timeout(timeout, client.request(request))
            .await
            .map_err(|_| NotifyError::Timeout)?
            .map_err(|e| transport(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(NotifyError::Status(status.as_u16()))
        }
    }

    impl WebhookNotifier {
        /// Posts `body` to `uri` (this notifier's URL, or one below it).
        async fn post(&self, uri: hyper::Uri, body: Vec<u8>) -> Result<(), NotifyError> {
            let request = hyper::Request::post(uri)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|_| NotifyError::InvalidUrl)?;
            let executor = TokioExecutor::new();
            if self.url.scheme_str() == Some("http") {
                let client = Client::builder(executor).build(HttpConnector::new());
                return send(client, request, self.timeout).await;
            }
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|_| NotifyError::Transport("no TLS root certificates".into()))?
                .https_only()
                .enable_http1()
                .build();
            send(
                Client::builder(executor).build(https),
                request,
                self.timeout,
            )
            .await
        }

        /// Posts free text as a Slack-compatible `{"text": …}` payload,
        /// escaped with [`slack_escape`] (the text may quote hosts' and
        /// AWS's errors).
        pub async fn post_text(&self, text: &str) -> Result<(), NotifyError> {
            let body = serde_json::to_vec(&serde_json::json!({ "text": slack_escape(text) }))
                .unwrap_or_default();
            self.post(self.url.clone(), body).await
        }

        /// Pings a heartbeat (healthchecks.io style): an empty POST to the
        /// URL followed by `suffix` (`""`, `"/start"`, `"/fail"`).
        pub async fn ping(&self, suffix: &str) -> Result<(), NotifyError> {
            let url = self.url.to_string();
            let uri: hyper::Uri = format!("{}{suffix}", url.trim_end_matches('/'))
                .parse()
                .map_err(|_| NotifyError::InvalidUrl)?;
            self.post(uri, Vec::new()).await
        }
    }

    #[async_trait]
    impl Notifier for WebhookNotifier {
        async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
            let body = serde_json::to_vec(&n.slack_payload()).unwrap_or_default();
            self.post(self.url.clone(), body).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_env_who_and_range() {
        let n = Notification {
            kind: NotificationKind::Succeeded,
            environment: "production".into(),
            who: "alice@laptop".into(),
            release: "v1.2.3".into(),
            old_commit: Some("abc123".into()),
            new_commit: "def456".into(),
            hosts: 3,
            error: None,
            message: None,
        };
        assert_eq!(
            n.text(),
            "alice@laptop deployed v1.2.3 (abc123..def456) to production (3 hosts)"
        );
        assert_eq!(n.slack_payload()["text"], n.text());
    }

    #[test]
    fn slack_payload_escapes_what_people_and_hosts_wrote() {
        let n = Notification {
            kind: NotificationKind::Failed,
            environment: "prod".into(),
            who: "<@U123>".into(),
            release: "v1 & v2".into(),
            old_commit: None,
            new_commit: "def456".into(),
            hosts: 1,
            error: Some("<http://evil.example|click here>".into()),
            message: Some("<!channel> urgent".into()),
        };
        let text = n.slack_payload()["text"].as_str().unwrap().to_owned();
        assert!(!text.contains('<') && !text.contains("& "), "{text}");
        assert!(text.contains("&lt;!channel&gt; urgent"), "{text}");
        assert!(text.contains("v1 &amp; v2"), "{text}");
        assert!(
            text.contains("&lt;http://evil.example|click here&gt;"),
            "{text}"
        );
        // The plain text (other notifiers, logs) is unchanged.
        assert!(n.text().contains("<!channel>"));
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn plain_http_is_refused_unless_local_or_allowed() {
        use super::WebhookNotifier;
        assert!(matches!(
            WebhookNotifier::new("http://hooks.example.com/T/B/x"),
            Err(NotifyError::InsecureUrl)
        ));
        WebhookNotifier::new("https://hooks.example.com/T/B/x").unwrap();
        for local in [
            "http://127.0.0.1:9/x",
            "http://localhost:9/x",
            "http://[::1]:9/x",
        ] {
            WebhookNotifier::new(local).unwrap();
        }
        WebhookNotifier::with_http("http://hooks.example.com/T/B/x", true).unwrap();
        assert!(matches!(
            WebhookNotifier::new("ftp://hooks.example.com/x"),
            Err(NotifyError::InvalidUrl)
        ));
    }
}
