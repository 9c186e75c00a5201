//! Notifications: delivered on start and end, never fatal, and the webhook
//! URL (a secret) never shows anywhere.

use std::sync::{Arc, Mutex};

use deploykit::environment::LayoutKind;
use deploykit::notify::WebhookNotifier;
use deploykit::{Event, HealthCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Fixture;

const SECRET: &str = "T0000-B0000-XXXXsecretXXXX";

/// A tiny webhook receiver: records request bodies, answers 200.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/services/{SECRET}",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            seen.lock().unwrap().push(body.to_owned());
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                .await;
                            break;
                        }
                    }
                }
            });
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn webhook_gets_start_success_and_failure_with_the_commit_range() {
    let f = Fixture::new(1);
    let (url, bodies) = receiver().await;
    let mut env = f.env(LayoutKind::Timestamped);
    let notifier = Arc::new(WebhookNotifier::new(&url).unwrap());
    let c1 = f.commit("one");
    f.deployer(env.clone())
        .notifier(notifier.clone())
        .deploy(&f.release(&c1))
        .await
        .unwrap();
    let c2 = f.commit("two");
    f.deployer(env.clone())
        .notifier(notifier.clone())
        .deploy(&f.release(&c2))
        .await
        .unwrap();
    let mut h = HealthCheck::command("exit 1");
    h.deadline_seconds = 1;
    env.health = Some(h);
    let c3 = f.commit("three");
    f.deployer(env)
        .notifier(notifier)
        .deploy(&f.release(&c3))
        .await
        .unwrap_err();
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 6, "{got:#?}");
    let texts: Vec<String> = got
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        texts[2].contains("is deploying")
            && texts[2].contains(&format!("({}..{})", &c1[..12], &c2[..12])),
        "{}",
        texts[2]
    );
    assert!(
        texts[3].contains("deployed") && texts[3].contains("to staging"),
        "{}",
        texts[3]
    );
    assert!(texts[5].contains("FAILED"), "{}", texts[5]);
}

#[tokio::test]
async fn an_unreachable_webhook_never_fails_the_deploy_nor_leaks_its_url() {
    let f = Fixture::new(1);
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/services/{SECRET}");
    let notifier = Arc::new(WebhookNotifier::new(&url).unwrap());
    assert!(!format!("{notifier:?}").contains(SECRET));
    let c = f.commit("one");
    let d = f
        .deployer(f.env(LayoutKind::Timestamped))
        .notifier(notifier.clone());
    d.deploy(&f.release(&c)).await.unwrap();
    let events = f.take_events();
    let failures: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::NotifyFailed { .. }))
        .collect();
    assert_eq!(failures.len(), 2, "start and success: {events:?}");
    let all = serde_json::to_string(&events).unwrap()
        + &events.iter().map(|e| e.to_string()).collect::<String>();
    assert!(!all.contains(SECRET), "{all}");
    let log = std::fs::read_to_string(f.local(0, ".ektool/releases.jsonl")).unwrap();
    assert!(!log.is_empty() && !log.contains(SECRET));
    assert!(WebhookNotifier::new("not a url").is_err());
    assert!(
        WebhookNotifier::new(&format!("ftp://x/{SECRET}"))
            .unwrap_err()
            .to_string()
            .find(SECRET)
            .is_none()
    );
}
