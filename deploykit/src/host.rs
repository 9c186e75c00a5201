//! Where a deploy goes ([`Host`]: a [`Remote`] and a deploy root on it),
//! and who is deploying ([`Actor`]).

use std::fmt;
use std::sync::Arc;

use ec2kit::{Command, Output, Remote, RemoteError};
use serde::{Deserialize, Serialize};

/// One deploy target: a host reached through a [`Remote`], and the deploy
/// root on it. Several `Host`s may share a machine (different roots).
#[derive(Clone)]
pub struct Host {
    name: String,
    remote: Arc<dyn Remote>,
    root: String,
    roles: Vec<String>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("root", &self.root)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host named after its remote (`user@host:port`), deploying to `root`.
    pub fn new(remote: Arc<dyn Remote>, root: impl Into<String>) -> Self {
        Self {
            name: remote.host(),
            remote,
            root: root.into().trim_end_matches('/').to_owned(),
            roles: Vec::new(),
        }
    }

    /// Gives the host roles (`web`, `db`): they decide which hooks run on
    /// it ([`Hook::roles`](crate::Hook::roles),
    /// [`Hook::once_on`](crate::Hook::once_on)). A host has none by
    /// default, and then runs only the hooks without roles.
    #[must_use]
    pub fn with_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Its roles.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// Whether it has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Renames the host in messages and events (e.g. when several share a
    /// machine).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The deploy root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The remote.
    pub fn remote(&self) -> &dyn Remote {
        self.remote.as_ref()
    }

    /// `<root>/<rel>`.
    pub fn path(&self, rel: &str) -> String {
        format!("{}/{}", self.root, rel)
    }

    /// `<root>/releases/<name>`.
    pub fn release_path(&self, release: &str) -> String {
        format!("{}/releases/{}", self.root, release)
    }

    /// Runs a command; a non-zero exit is not an error here.
    pub(crate) async fn run(&self, command: &Command) -> Result<Output, RemoteError> {
        self.remote.run(command).await
    }

    /// Runs a command that must exit 0.
    pub(crate) async fn run_checked(&self, command: &Command) -> Result<Output, RemoteError> {
        ec2kit::remote::run_checked(self.remote.as_ref(), command).await
    }
}

/// Who is deploying: shown in the lock, the release log and notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user (`$USER`, or a name given by the caller, e.g. a CI job).
    pub user: String,
    /// The machine the deploy runs on.
    pub machine: String,
    /// The deploying process, so a lock left by a killed process on the
    /// same machine is recognised as stale.
    pub pid: u32,
    /// Where `pid` means something: this machine's id, boot id and pid
    /// namespace (`<machine-id>/<boot-id>/<pid ns>`). A lock's process is
    /// only judged gone when this matches the judge's own: host names are
    /// shared by CI runners and containers, pids by namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Actor {
    /// This process, on this machine, as `$USER`.
    pub fn current() -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(this_user)
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            user,
            machine: this_machine(),
            pid: std::process::id(),
            scope: this_scope(),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.machine)
    }
}

/// The name of this process's user from /etc/passwd (cron and CI jobs
/// often run without `$USER`).
fn this_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    })
}

/// This machine's host name.
pub(crate) fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This process's [`Actor::scope`]: `/etc/machine-id`, the kernel's boot id
/// and the pid namespace; `None` when any of them cannot be read (then no
/// lock is ever judged by its process).
pub(crate) fn this_scope() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let machine = read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id"))?;
    let boot = read("/proc/sys/kernel/random/boot_id")?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{machine}/{boot}/{}", ns.display()))
}

/// Whether process `pid` is alive on this machine.
pub(crate) fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
