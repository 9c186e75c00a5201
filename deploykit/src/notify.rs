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
        let range = match &self.old_commit {
            Some(old) if *old != self.new_commit => format!(" ({old}..{})", self.new_commit),
            _ => format!(" ({})", self.new_commit),
        };
        let hosts = format!(
            "{} host{}",
            self.hosts,
            if self.hosts == 1 { "" } else { "s" }
        );
        let mut text = match self.kind {
            NotificationKind::Started => format!(
                "{} is deploying {}{range} to {} ({hosts})",
                self.who, self.release, self.environment
            ),
            NotificationKind::Succeeded => format!(
                "{} deployed {}{range} to {} ({hosts})",
                self.who, self.release, self.environment
            ),
            NotificationKind::Failed => format!(
                "{}'s deploy of {}{range} to {} FAILED; {} is unchanged",
                self.who, self.release, self.environment, self.environment
            ),
            NotificationKind::RolledBack => format!(
                "{} rolled {} back to {}{range} ({hosts})",
                self.who, self.environment, self.release
            ),
        };
        if let Some(m) = &self.message {
            text.push_str(&format!(": {m}"));
        }
        if let Some(e) = &self.error {
            text.push_str(&format!("\n> {e}"));
        }
        text
    }

    /// The Slack-compatible payload.
    pub fn slack_payload(&self) -> serde_json::Value {
        serde_json::json!({ "text": self.text() })
    }
}

/// Why a notification was not delivered. Never contains the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The URL is not a valid http(s) URL.
    #[error("webhook URL is not a valid http(s) URL")]
    InvalidUrl,
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
        /// A notifier posting to `url` (http or https).
        pub fn new(url: &str) -> Result<Self, NotifyError> {
            let url: hyper::Uri = url.trim().parse().map_err(|_| NotifyError::InvalidUrl)?;
            match url.scheme_str() {
                Some("http" | "https") if url.host().is_some() => {}
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

    #[async_trait]
    impl Notifier for WebhookNotifier {
        async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
            let body = serde_json::to_vec(&n.slack_payload()).unwrap_or_default();
            let request = hyper::Request::post(self.url.clone())
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
}
