//! Where a shell runs: [`HostTarget`] (this machine, or a host over SSH at
//! an [`SshTarget`]) and the [`SshOptions`] to log in with.
//!
//! Plain data and parsing, compiled without the `ssh` feature, so crates
//! that only decide *which* hosts to reach (deploykit resolving an
//! environment's hosts, a fabfile reading its config) need no ssh2. The
//! feature adds [`connect`], which turns a target into a [`Remote`].
//!
//! [`Remote`]: crate::Remote

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `user@host:port`, with `user` and `port` optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshTarget {
    /// Login user.
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A target string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ssh target {0:?}: expected [user@]host[:port]")]
pub struct InvalidTarget(pub String);

impl SshTarget {
    /// The name known_hosts uses: `host`, or `[host]:port` off port 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    /// Parses a target, defaulting the user to `default_user` and the port to 22.
    pub fn parse_with_user(s: &str, default_user: &str) -> Result<Self, InvalidTarget> {
        let bad = || InvalidTarget(s.to_owned());
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (u.to_owned(), r),
            Some(_) => return Err(bad()),
            None => (default_user.to_owned(), s),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 22,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (rest.to_owned(), 22),
            }
        };
        // No whitespace or control characters (a NUL would reach libssh2
        // through a C string): neither is ever part of a real host or user.
        let odd = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        if host.is_empty() || user.is_empty() || odd(&host) || odd(&user) {
            return Err(bad());
        }
        Ok(Self { user, host, port })
    }
}

impl FromStr for SshTarget {
    type Err = InvalidTarget;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
        Self::parse_with_user(s, &user)
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// How to authenticate and verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// Private key files to try, in order (before the agent).
    pub identity_files: Vec<PathBuf>,
    /// Try every identity of the running ssh-agent (`SSH_AUTH_SOCK`).
    pub use_agent: bool,
    /// The known_hosts file host keys are checked against.
    pub known_hosts: PathBuf,
    /// TCP connect and per-operation I/O timeout.
    pub connect_timeout: Duration,
}

impl SshOptions {
    /// Defaults: `~/.ssh/known_hosts`, the usual key files that exist, the agent.
    pub fn from_home() -> Self {
        let ssh_dir = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".ssh");
        let identity_files = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| ssh_dir.join(n))
            .filter(|p| p.exists())
            .collect();
        Self {
            identity_files,
            use_agent: true,
            known_hosts: ssh_dir.join("known_hosts"),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Where an operation's commands run: this machine, or a host over SSH.
///
/// "`localhost` means this machine" is decided here and nowhere else: the
/// host list entry written exactly `localhost` is [`HostTarget::Local`]
/// (commands run through [`LocalRemote`](crate::LocalRemote), as the
/// current user, no SSH); anything else, including `user@localhost` or
/// `localhost:2222`, is an SSH target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostTarget {
    /// This machine, as the current user.
    Local,
    /// A host reached over SSH.
    Ssh(SshTarget),
}

impl HostTarget {
    /// How this machine is written in a host list.
    pub const LOCALHOST: &'static str = "localhost";

    /// Parses a host as written in a host list: exactly `localhost` is this
    /// machine; anything else is `[user@]host[:port]`, the user defaulting
    /// to `default_user` and the port to 22.
    pub fn parse_with_user(s: &str, default_user: &str) -> Result<Self, InvalidTarget> {
        if s == Self::LOCALHOST {
            return Ok(Self::Local);
        }
        SshTarget::parse_with_user(s, default_user).map(Self::Ssh)
    }

    /// The SSH target, unless this is the local machine.
    pub fn ssh(&self) -> Option<&SshTarget> {
        match self {
            Self::Local => None,
            Self::Ssh(t) => Some(t),
        }
    }

    /// The same target logging in as `user` (this machine stays as it
    /// is: it always runs as the current user).
    #[must_use]
    pub fn with_user(self, user: &str) -> Self {
        match self {
            Self::Local => Self::Local,
            Self::Ssh(t) => Self::Ssh(SshTarget {
                user: user.to_owned(),
                ..t
            }),
        }
    }
}

impl fmt::Display for HostTarget {
    /// `localhost`, or `user@host:port`: the name a [`Remote`](crate::Remote)
    /// made by [`connect`] reports as its host.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str(Self::LOCALHOST),
            Self::Ssh(t) => t.fmt(f),
        }
    }
}

impl From<SshTarget> for HostTarget {
    fn from(t: SshTarget) -> Self {
        Self::Ssh(t)
    }
}

/// A shell on `target`: [`LocalRemote`](crate::LocalRemote) for this
/// machine, else an [`SshRemote`](crate::SshRemote) checking host keys
/// strictly against `options.known_hosts` (nothing connects until its
/// first command). Feature `ssh`.
#[cfg(feature = "ssh")]
pub fn connect(target: &HostTarget, options: &SshOptions) -> std::sync::Arc<dyn crate::Remote> {
    match target {
        HostTarget::Local => std::sync::Arc::new(crate::LocalRemote::new()),
        HostTarget::Ssh(t) => {
            std::sync::Arc::new(crate::SshRemote::new(t.clone(), options.clone()))
        }
    }
}

/// Like [`connect`], through the bastion `jump` when there is one (see
/// [`Bastion`](crate::ssh::Bastion)): every host of the process behind the
/// same bastion (same target and options) shares its one connection. The
/// bastion's key is checked against `options.known_hosts` as strictly as
/// any host's. This machine (`localhost`) is never reached through one.
/// Feature `ssh`.
#[cfg(feature = "ssh")]
pub fn connect_via(
    target: &HostTarget,
    options: &SshOptions,
    jump: Option<&SshTarget>,
) -> std::sync::Arc<dyn crate::Remote> {
    match (target, jump) {
        (HostTarget::Ssh(t), Some(jump)) => std::sync::Arc::new(
            crate::SshRemote::new(t.clone(), options.clone())
                .via(crate::ssh::Bastion::shared(jump, options)),
        ),
        _ => connect(target, options),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_with_control_characters_are_refused() {
        for bad in ["h\0st", "user\n@host", "host\t", "u\u{7f}@h"] {
            assert!(SshTarget::parse_with_user(bad, "u").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_targets() {
        let t = SshTarget::parse_with_user("deploy@web1.example.com:2222", "x").unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("deploy", "web1.example.com", 2222)
        );
        let t = SshTarget::parse_with_user("10.0.0.1", "ubuntu").unwrap();
        assert_eq!((t.user.as_str(), t.port), ("ubuntu", 22));
        let t = SshTarget::parse_with_user("root@[::1]:22022", "x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 22022));
        for bad in ["", "@host", "host:notaport", "user@", "[::1", "a b"] {
            assert!(SshTarget::parse_with_user(bad, "u").is_err(), "{bad}");
        }
    }

    #[test]
    fn known_hosts_name_brackets_non_default_ports() {
        assert_eq!(
            SshTarget::parse_with_user("h", "u")
                .unwrap()
                .known_hosts_name(),
            "h"
        );
        assert_eq!(
            SshTarget::parse_with_user("h:2222", "u")
                .unwrap()
                .known_hosts_name(),
            "[h]:2222"
        );
    }

    #[test]
    fn only_plain_localhost_is_this_machine() {
        assert_eq!(
            HostTarget::parse_with_user("localhost", "u").unwrap(),
            HostTarget::Local
        );
        for ssh in ["root@localhost", "localhost:2222", "localhost.example.com"] {
            let t = HostTarget::parse_with_user(ssh, "u").unwrap();
            assert!(t.ssh().is_some(), "{ssh}");
        }
        assert_eq!(HostTarget::Local.to_string(), "localhost");
        let t = HostTarget::parse_with_user("web1:2222", "deploy").unwrap();
        assert_eq!(t.to_string(), "deploy@web1:2222");
        assert_eq!(t.with_user("root").to_string(), "root@web1:2222");
        assert_eq!(HostTarget::Local.with_user("root"), HostTarget::Local);
        assert!(HostTarget::parse_with_user("a b", "u").is_err());
    }
}
