//! [`Bastion`]: hosts in private subnets reached through one SSH
//! connection to a bastion ("jump host", OpenSSH's `ProxyJump`).
//!
//! Each host behind the bastion gets a `direct-tcpip` channel on the
//! bastion's connection, and its own SSH session runs inside that channel,
//! end to end: the bastion relays bytes and sees nothing of the session.
//!
//! # How a session runs over a channel
//!
//! libssh2 reads and writes a session's transport through a file
//! descriptor (`Session::set_tcp_stream` takes any `AsRawFd`), while a
//! `direct-tcpip` channel is a `Read + Write` value of *another* session.
//! So each tunnel is a local socket pair: the host's session gets one end,
//! and a relay copies bytes between the other end and the channel.
//!
//! The relay is **one thread per bastion connection, with the bastion's
//! session non-blocking**, multiplexing every tunnel with `poll(2)`. The
//! common alternatives fail on a shared connection: ssh2 locks the whole
//! session for each call on any of its channels, so a relay thread per
//! tunnel blocked in `Channel::read` holds the lock and stalls every other
//! tunnel's writes (the stalls and timeouts of ssh2-rs issue 325; issue 167
//! asks for this very feature and has no answer in the crate); and a
//! loopback TCP listener per tunnel adds a port any local user can connect
//! to. A socket pair is private to the process, and a single owner of the
//! bastion session never contends for it. libssh2 opens one channel at a
//! time on a non-blocking session, so opens wait their turn in the relay.
//!
//! # Bounds
//!
//! Connecting to the bastion (TCP, handshake, its host key checked
//! strictly against the same known_hosts, authentication) is bounded by the
//! bastion's `connect_timeout`, as any direct connection; so is opening a
//! channel, then the host's own handshake. The relay sends the bastion
//! keepalives and ends every tunnel once the bastion has been silent for
//! the [`Keepalive`] limit (or its connection broke): each host's session
//! then fails and reconnects — through a new bastion connection — on its
//! next call. Each host's own keepalives and command deadlines run inside
//! its tunnel as they would directly.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use ssh2::Channel;

use super::{Conn, Heard, Inner, Keepalive, SshOptions, SshTarget, is_again};
use crate::remote::RemoteError;

/// One SSH connection to a bastion, shared by every [`SshRemote`] reached
/// through it ([`SshRemote::via`]). Cheap to clone (clones share the
/// connection). Nothing connects until the first host behind it does; a
/// lost connection is made again by the next host that needs it.
///
/// [`SshRemote`]: crate::SshRemote
/// [`SshRemote::via`]: crate::SshRemote::via
#[derive(Clone)]
pub struct Bastion {
    inner: Arc<BastionInner>,
}

impl std::fmt::Debug for Bastion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bastion")
            .field("target", &self.inner.login.target)
            .finish_non_exhaustive()
    }
}

struct BastionInner {
    /// The bastion as a host: target, options, keepalive, and `open`.
    login: Inner,
    relay: Mutex<Option<Handle>>,
    connections: AtomicU64,
}

/// The way to a running relay thread.
struct Handle {
    requests: mpsc::Sender<Open>,
    wake: UnixStream,
    dead: Arc<AtomicBool>,
}

/// A tunnel asked of the relay.
struct Open {
    host: String,
    port: u16,
    shown: String,
    sock: UnixStream,
    heard: Arc<Heard>,
    reply: mpsc::SyncSender<Result<(), RemoteError>>,
}

/// The bastions of this process, so that every host behind the same one
/// shares one connection ([`Bastion::shared`]).
static SHARED: Mutex<Vec<(SshTarget, SshOptions, Weak<BastionInner>)>> = Mutex::new(Vec::new());

impl Bastion {
    /// A bastion at `target`, logged in to with `options` (its host key
    /// checked against `options.known_hosts`, strictly, like any host's).
    pub fn new(target: SshTarget, options: SshOptions) -> Self {
        Self::with_keepalive(target, options, Keepalive::default())
    }

    fn with_keepalive(target: SshTarget, options: SshOptions, keepalive: Keepalive) -> Self {
        Self {
            inner: Arc::new(BastionInner {
                login: Inner {
                    target,
                    options,
                    keepalive,
                    session: Mutex::new(None),
                    used_key: Mutex::new(None),
                    bastion: None,
                },
                relay: Mutex::new(None),
                connections: AtomicU64::new(0),
            }),
        }
    }

    /// The process's bastion for `target` and `options`: the same one
    /// (and so the same connection) for every caller while any is in use.
    pub fn shared(target: &SshTarget, options: &SshOptions) -> Self {
        let mut all = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(_, _, w)| w.strong_count() > 0);
        if let Some(inner) = all
            .iter()
            .find(|(t, o, _)| t == target && o == options)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return Self { inner };
        }
        let made = Self::new(target.clone(), options.clone());
        all.push((target.clone(), options.clone(), Arc::downgrade(&made.inner)));
        made
    }

    /// Sets how a silent bastion is found out (default:
    /// [`Keepalive::default`]). A fresh, unconnected bastion.
    #[must_use]
    pub fn keepalive(self, keepalive: Keepalive) -> Self {
        let login = &self.inner.login;
        Self::with_keepalive(login.target.clone(), login.options.clone(), keepalive)
    }

    /// The bastion's target.
    pub fn target(&self) -> &SshTarget {
        &self.inner.login.target
    }

    /// How many times this bastion has connected (each connection then
    /// serving every host behind it).
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// A tunnel to `target` on the bastion's connection (connecting first
    /// if there is none): libssh2's end of a socket pair whose other end
    /// the relay joins to a `direct-tcpip` channel. `heard` is touched
    /// whenever bytes come from the target.
    pub(super) fn tunnel(
        &self,
        target: &SshTarget,
        heard: Arc<Heard>,
        timeout: Duration,
    ) -> Result<UnixStream, RemoteError> {
        let shown = target.to_string();
        let local_err = |source: std::io::Error| RemoteError::Connect {
            host: shown.clone(),
            source,
        };
        // A connection found broken only by this open is made again once.
        for attempt in 0..2 {
            let (requests, wake, dead) = {
                // Held while connecting: hosts asking at once wait for the
                // one connection rather than each making their own.
                let mut relay = self.inner.relay.lock().unwrap_or_else(|p| p.into_inner());
                if relay
                    .as_ref()
                    .is_none_or(|h| h.dead.load(Ordering::Relaxed))
                {
                    *relay = Some(self.connect()?);
                }
                let Some(h) = relay.as_ref() else {
                    return Err(local_err(std::io::Error::other("no bastion connection")));
                };
                (
                    h.requests.clone(),
                    h.wake.try_clone().map_err(local_err)?,
                    h.dead.clone(),
                )
            };
            let (ours, theirs) = UnixStream::pair().map_err(local_err)?;
            theirs.set_nonblocking(true).map_err(local_err)?;
            let (reply, answer) = mpsc::sync_channel(1);
            let gone = || {
                local_err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the connection to the bastion {} was lost", self.target()),
                ))
            };
            let sent = requests.send(Open {
                host: target.host.clone(),
                port: target.port,
                shown: shown.clone(),
                sock: theirs,
                heard: heard.clone(),
                reply,
            });
            let result = match sent {
                Err(_) => Err(gone()),
                Ok(()) => {
                    let _ = (&wake).write(&[1]);
                    match answer.recv_timeout(timeout) {
                        Ok(Ok(())) => return Ok(ours),
                        Ok(Err(e)) => Err(e),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            return Err(local_err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!(
                                    "the bastion {} did not open a channel within {timeout:?}",
                                    self.target()
                                ),
                            )));
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
                    }
                }
            };
            if attempt == 1 || !dead.load(Ordering::Relaxed) {
                return result;
            }
        }
        Err(local_err(std::io::Error::other("no bastion connection")))
    }

    /// Connects to the bastion (host key, login) and starts its relay.
    fn connect(&self) -> Result<Handle, RemoteError> {
        let login = &self.inner.login;
        let conn = login.open()?;
        let name = login.target.to_string();
        let io = |source| RemoteError::Connect {
            host: name.clone(),
            source,
        };
        let (wake, wake_rx) = UnixStream::pair().map_err(io)?;
        wake.set_nonblocking(true).map_err(io)?;
        wake_rx.set_nonblocking(true).map_err(io)?;
        let (requests, incoming) = mpsc::channel();
        let dead = Arc::new(AtomicBool::new(false));
        let relay = Relay {
            conn,
            incoming,
            wake_rx,
            dead: dead.clone(),
            keepalive: login.keepalive,
            open_timeout: login.options.connect_timeout,
            name: name.clone(),
        };
        relay.conn.session.set_blocking(false);
        std::thread::Builder::new()
            .name("ektool-ssh-bastion".into())
            .spawn(move || relay.run())
            .map_err(io)?;
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        Ok(Handle {
            requests,
            wake,
            dead,
        })
    }
}

/// The relay: owns the bastion's session (non-blocking) and joins each
/// tunnel's socket to its channel.
struct Relay {
    conn: Conn,
    incoming: mpsc::Receiver<Open>,
    wake_rx: UnixStream,
    dead: Arc<AtomicBool>,
    keepalive: Keepalive,
    open_timeout: Duration,
    name: String,
}

/// One tunnel: a channel and the relay's end of the host's socket pair,
/// with what is read from one and not yet written to the other.
struct Tunnel {
    channel: Channel,
    sock: UnixStream,
    heard: Arc<Heard>,
    /// From the host's session, for the channel.
    up: Vec<u8>,
    up_at: usize,
    /// From the channel, for the host's session.
    down: Vec<u8>,
    down_at: usize,
    sock_eof: bool,
    eof_sent: bool,
    channel_eof: bool,
}

/// What a relay step did to a tunnel.
#[derive(PartialEq, Eq)]
enum Step {
    Idle,
    Moved,
    Done,
}

impl Tunnel {
    fn step(&mut self, buf: &mut [u8]) -> Step {
        use std::io::ErrorKind::WouldBlock;
        let mut moved = false;
        // The host's session → the channel.
        if self.up_at >= self.up.len() && !self.sock_eof {
            match self.sock.read(buf) {
                Ok(0) => self.sock_eof = true,
                Ok(n) => {
                    self.up.clear();
                    self.up.extend_from_slice(&buf[..n]);
                    self.up_at = 0;
                    moved = true;
                }
                Err(e) if e.kind() == WouldBlock => {}
                // The host's session is gone.
                Err(_) => return Step::Done,
            }
        }
        if self.up_at < self.up.len() {
            match self.channel.write(&self.up[self.up_at..]) {
                Ok(n) => {
                    self.up_at += n;
                    moved |= n > 0;
                }
                Err(e) if e.kind() == WouldBlock => {}
                Err(_) => return Step::Done,
            }
        }
        if self.sock_eof && self.up_at >= self.up.len() && !self.eof_sent {
            match self.channel.send_eof() {
                Ok(()) => {
                    self.eof_sent = true;
                    moved = true;
                }
                Err(e) if is_again(&e) => {}
                Err(_) => return Step::Done,
            }
        }
        // The channel → the host's session.
        if self.down_at >= self.down.len() && !self.channel_eof {
            match self.channel.read(buf) {
                Ok(0) => {
                    if self.channel.eof() {
                        self.channel_eof = true;
                        let _ = self.sock.shutdown(std::net::Shutdown::Write);
                        moved = true;
                    }
                }
                Ok(n) => {
                    self.heard.touch();
                    self.down.clear();
                    self.down.extend_from_slice(&buf[..n]);
                    self.down_at = 0;
                    moved = true;
                }
                Err(e) if e.kind() == WouldBlock => {}
                Err(_) => return Step::Done,
            }
        }
        if self.down_at < self.down.len() {
            match self.sock.write(&self.down[self.down_at..]) {
                Ok(n) => {
                    self.down_at += n;
                    moved |= n > 0;
                }
                Err(e) if e.kind() == WouldBlock => {}
                Err(_) => return Step::Done,
            }
        }
        if self.sock_eof && self.eof_sent && self.channel_eof && self.down_at >= self.down.len() {
            return Step::Done;
        }
        if moved { Step::Moved } else { Step::Idle }
    }
}

/// Whether a libssh2 error means the connection itself is gone (a socket
/// error, a disconnect), not just the one request.
fn is_transport(e: &ssh2::Error) -> bool {
    // LIBSSH2_ERROR_SOCKET_SEND, _SOCKET_DISCONNECT, _SOCKET_TIMEOUT,
    // _SOCKET_RECV.
    matches!(e.code(), ssh2::ErrorCode::Session(-7 | -13 | -30 | -43))
}

impl Relay {
    fn run(self) {
        let mut tunnels: Vec<Tunnel> = Vec::new();
        // Channels being closed (a non-blocking close takes a few calls).
        let mut closing: Vec<Channel> = Vec::new();
        // Opens wait their turn: libssh2 opens one channel at a time.
        let mut opening: std::collections::VecDeque<(Open, Instant)> =
            std::collections::VecDeque::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut orphaned = false;
        let started = Instant::now();
        loop {
            let mut moved = false;
            let mut byte = [0u8; 64];
            loop {
                match (&self.wake_rx).read(&mut byte) {
                    Ok(0) => {
                        orphaned = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            loop {
                match self.incoming.try_recv() {
                    Ok(open) => opening.push_back((open, Instant::now())),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        orphaned = true;
                        break;
                    }
                }
            }
            if let Some((open, since)) = opening.front() {
                let session = &self.conn.session;
                match session.channel_direct_tcpip(&open.host, open.port, None) {
                    Ok(channel) => {
                        if let Some((open, _)) = opening.pop_front() {
                            let _ = open.reply.send(Ok(()));
                            tunnels.push(Tunnel {
                                channel,
                                sock: open.sock,
                                heard: open.heard,
                                up: Vec::new(),
                                up_at: 0,
                                down: Vec::new(),
                                down_at: 0,
                                sock_eof: false,
                                eof_sent: false,
                                channel_eof: false,
                            });
                        }
                        moved = true;
                    }
                    Err(e) if is_again(&e) => {
                        if since.elapsed() > self.open_timeout {
                            // The caller gave up already, and libssh2
                            // cannot abandon an open half way: a bastion
                            // that does not answer one is treated as lost.
                            tracing::warn!(bastion = %self.name, "the bastion did not open a channel in time");
                            break;
                        }
                    }
                    Err(e) => {
                        let transport = is_transport(&e);
                        if let Some((open, _)) = opening.pop_front() {
                            let _ = open.reply.send(Err(RemoteError::Connect {
                                host: open.shown,
                                source: std::io::Error::new(
                                    std::io::ErrorKind::ConnectionRefused,
                                    format!(
                                        "the bastion {} could not open a channel to {}:{}: {}",
                                        self.name,
                                        open.host,
                                        open.port,
                                        e.message()
                                    ),
                                ),
                            }));
                        }
                        if transport {
                            break;
                        }
                        moved = true;
                    }
                }
            }
            let mut i = 0;
            while i < tunnels.len() {
                match tunnels[i].step(&mut buf) {
                    Step::Idle => i += 1,
                    Step::Moved => {
                        moved = true;
                        i += 1;
                    }
                    Step::Done => {
                        let t = tunnels.swap_remove(i);
                        let _ = t.sock.shutdown(std::net::Shutdown::Both);
                        closing.push(t.channel);
                        moved = true;
                    }
                }
            }
            closing.retain_mut(|c| matches!(c.close(), Err(e) if is_again(&e)));
            if orphaned && tunnels.is_empty() && opening.is_empty() {
                break;
            }
            // libssh2 sends one only once the interval has passed.
            match self.conn.session.keepalive_send() {
                Ok(_) => {}
                Err(e) if is_again(&e) => {}
                Err(_) => break,
            }
            let silent_for = self.conn.heard.last().max(started).elapsed();
            if silent_for > self.keepalive.limit() {
                tracing::warn!(bastion = %self.name, ?silent_for, "the bastion stopped answering");
                break;
            }
            if moved {
                continue;
            }
            if self.transport_gone() {
                tracing::warn!(bastion = %self.name, "the bastion closed the connection");
                break;
            }
            self.wait(&tunnels, !opening.is_empty() || !closing.is_empty());
        }
        self.dead.store(true, Ordering::Relaxed);
        // Every host's session sees its connection end; each reconnects
        // (through a new bastion connection) on its next call.
        for t in &tunnels {
            let _ = t.sock.shutdown(std::net::Shutdown::Both);
        }
        for (open, _) in opening {
            let _ = open.reply.send(Err(RemoteError::Connect {
                host: open.shown,
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the connection to the bastion {} was lost", self.name),
                ),
            }));
        }
    }

    /// Whether the bastion's connection ended: libssh2's socket is at its
    /// end (the pump saw the TCP connection close). Peeked, so libssh2
    /// still reads whatever came before.
    fn transport_gone(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(&self.conn.local).peek(&mut byte),
            Ok(0)
        )
    }

    /// Sleeps until the bastion, a host's session or a new request has
    /// something, or a short while (a keepalive may be due, and libssh2
    /// may hold data it read for a channel already looked at).
    fn wait(&self, tunnels: &[Tunnel], busy: bool) {
        let mut fds = Vec::with_capacity(tunnels.len() + 2);
        fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
        fds.push(PollFd::new(&self.conn.local, PollFlags::IN));
        for t in tunnels {
            let mut flags = PollFlags::empty();
            if t.up_at >= t.up.len() && !t.sock_eof {
                flags |= PollFlags::IN;
            }
            if t.down_at < t.down.len() {
                flags |= PollFlags::OUT;
            }
            fds.push(PollFd::new(&t.sock, flags));
        }
        let ms: i64 = if busy {
            2
        } else if tunnels.is_empty() {
            1000
        } else {
            20
        };
        let timeout = Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        let _ = poll(&mut fds, Some(&timeout));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shared_bastions_are_one_per_target_and_options_while_in_use() {
        let t = SshTarget::parse_with_user("ops@bastion.example.com:2200", "u").unwrap();
        let o = SshOptions::from_home();
        let a = Bastion::shared(&t, &o);
        let b = Bastion::shared(&t, &o);
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert_eq!(a.target(), &t);
        assert_eq!(a.connections(), 0, "nothing connects until a host needs it");
        let mut quicker = o.clone();
        quicker.connect_timeout = Duration::from_secs(1);
        assert!(!Arc::ptr_eq(&a.inner, &Bastion::shared(&t, &quicker).inner));
        let other = SshTarget::parse_with_user("ops@other.example.com:2200", "u").unwrap();
        assert!(!Arc::ptr_eq(&a.inner, &Bastion::shared(&other, &o).inner));
        // Once nobody holds it, the next is a fresh one.
        let weak = Arc::downgrade(&a.inner);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        let _fresh = Bastion::shared(&t, &o);
        assert!(
            SHARED
                .lock()
                .unwrap()
                .iter()
                .all(|(_, _, w)| !w.ptr_eq(&weak)),
            "dead entries are swept"
        );
    }
}
