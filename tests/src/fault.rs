//! A fault-injecting HTTP proxy for the EC2 query API, put in front of
//! moto: per action, it can forward a request and then drop the connection
//! without answering (EC2 acted, the caller never heard: a lost response),
//! or answer `RequestLimitExceeded` instead of forwarding, at a rate.
//!
//! Plain HTTP/1.1 on 127.0.0.1 with a thread per connection: enough for the
//! AWS SDK's requests (`Content-Length` bodies, keep-alive), no more.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy does to requests of one action.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forward the next `times` requests to the upstream, wait for its
    /// answer, then close the connection without passing it on.
    DropAfterForward {
        /// How many requests to treat so.
        times: usize,
    },
    /// Answer `503 RequestLimitExceeded` instead of forwarding, for a
    /// share `rate` (0.0–1.0) of the requests, chosen by a seeded
    /// pseudo-random sequence (repeatable runs).
    Throttle {
        /// The share of requests throttled.
        rate: f64,
    },
    /// Answer `403 AccessDenied` instead of forwarding every request whose
    /// body holds `needle` (e.g. the one account's role ARN in an
    /// `AssumeRole`: a role that cannot be assumed).
    DenyIf {
        /// What the body must contain.
        needle: String,
    },
}

/// What the proxy did with one action's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed to the upstream and answered.
    pub forwarded: usize,
    /// Passed to the upstream, answer dropped.
    pub dropped: usize,
    /// Answered `RequestLimitExceeded` (or, with [`Fault::DenyIf`],
    /// `AccessDenied`) without forwarding.
    pub throttled: usize,
}

#[derive(Debug, Default)]
struct State {
    faults: HashMap<String, Fault>,
    /// Applies to every action without a fault of its own.
    all: Option<Fault>,
    counts: HashMap<String, Counts>,
    rng: u64,
}

impl State {
    fn next_random(&mut self) -> f64 {
        // xorshift64*: a repeatable sequence without a dependency.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Verdict {
    Forward,
    Drop,
    Throttle,
    Deny,
}

/// The proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) on a free port.
    pub fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(Mutex::new(State {
            rng: 0x9E37_79B9_7F4A_7C15,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, upstream) = (state.clone(), upstream.clone());
                    std::thread::spawn(move || serve(conn, &upstream, &state));
                }
            });
        }
        Self { port, state, stop }
    }

    /// The endpoint URL to give the SDK.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to `action` (e.g. `CreateSnapshots`), replacing any.
    pub fn set(&self, action: &str, fault: Fault) {
        self.lock().faults.insert(action.to_owned(), fault);
    }

    /// Applies `fault` to every action without one of its own.
    pub fn set_all(&self, fault: Fault) {
        self.lock().all = Some(fault);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.faults.clear();
        s.all = None;
    }

    /// What happened to `action`'s requests so far.
    pub fn counts(&self, action: &str) -> Counts {
        self.lock().counts.get(action).copied().unwrap_or_default()
    }

    /// The counts of every action seen.
    pub fn all_counts(&self) -> HashMap<String, Counts> {
        self.lock().counts.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn verdict(state: &Mutex<State>, action: &str, body: &[u8]) -> Verdict {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let fault = s.faults.get(action).or(s.all.as_ref()).cloned();
    let verdict = match fault {
        Some(Fault::DropAfterForward { times }) if times > 0 => {
            let left = times - 1;
            s.faults
                .insert(action.to_owned(), Fault::DropAfterForward { times: left });
            Verdict::Drop
        }
        Some(Fault::Throttle { rate }) if s.next_random() < rate => Verdict::Throttle,
        Some(Fault::DenyIf { needle }) if contains(body, needle.as_bytes()) => Verdict::Deny,
        _ => Verdict::Forward,
    };
    let c = s.counts.entry(action.to_owned()).or_default();
    match verdict {
        Verdict::Forward => c.forwarded += 1,
        Verdict::Drop => c.dropped += 1,
        Verdict::Throttle | Verdict::Deny => c.throttled += 1,
    }
    verdict
}

/// Whether `hay` holds `needle` (URL-encoded forms too: `:` as `%3A`).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let text = String::from_utf8_lossy(hay)
        .replace("%3A", ":")
        .replace("%2F", "/");
    text.as_bytes()
        .windows(needle.len().max(1))
        .any(|w| w == needle)
}

/// One HTTP request: head lines and body.
struct Request {
    head: Vec<String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request { head, body })
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn action_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action=").map(str::to_owned))
        .unwrap_or_default()
}

fn serve(conn: TcpStream, upstream: &str, state: &Mutex<State>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let action = action_of(&req.body);
        match verdict(state, &action, &req.body) {
            Verdict::Deny => {
                let body = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                    <Message>User is not authorized to perform: sts:AssumeRole</Message>\
                    </Error><RequestId>ektool-fault-proxy</RequestId></ErrorResponse>";
                let reply = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if out.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            Verdict::Throttle => {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                    <Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>\
                    </Error></Errors><RequestID>ektool-fault-proxy</RequestID></Response>";
                let reply = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if out.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            verdict @ (Verdict::Forward | Verdict::Drop) => {
                let Some((reply, keep)) = forward(upstream, &req) else {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                };
                if matches!(verdict, Verdict::Drop) {
                    // EC2 acted; the caller never hears of it.
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
                if out.write_all(&reply).is_err() || !keep {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// Sends `req` upstream on a connection of its own and reads the whole
/// answer; also says whether the client connection may be kept (the answer
/// has a length of its own).
fn forward(upstream: &str, req: &Request) -> Option<(Vec<u8>, bool)> {
    let mut up = TcpStream::connect(upstream).ok()?;
    let mut head = String::new();
    head.push_str(&req.head[0]);
    head.push_str("\r\n");
    for line in req.head.iter().skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).ok()?;
    up.write_all(&req.body).ok()?;
    let mut reply = Vec::new();
    up.read_to_end(&mut reply).ok()?;
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    let lines: Vec<String> = String::from_utf8_lossy(&reply[..end])
        .lines()
        .map(str::to_owned)
        .collect();
    let framed = header(&lines, "content-length").is_some()
        || header(&lines, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let closes = header(&lines, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Some((reply, framed && !closes))
}
