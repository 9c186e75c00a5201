//! File-level replication: rsync a directory from one host to another,
//! run on the source host over [`Remote`] (the seed's `rsync_mountpoints`,
//! done safely).
//!
//! - **Host keys are checked.** The caller passes the destination's host
//!   key, which it must already trust (ektool reads it from its own
//!   known_hosts); the source host gets a private known_hosts file holding
//!   only that key, and ssh runs with `StrictHostKeyChecking=yes`. The key
//!   is looked up under a fixed `HostKeyAlias`, so it matches however the
//!   destination's address is written.
//! - **A temporary key authenticates the source to the destination.** It
//!   is made on the source host (`ssh-keygen` in a private 0700 directory,
//!   so the private key never travels), and its public half is added to
//!   the destination user's authorized_keys with `restrict` and an
//!   `expiry-time`, marked with a comment naming the source host, the job
//!   (a hash of both paths) and the run. The line and the directory are
//!   removed again on every path, errors included; the authorized_keys
//!   edit is a filtered copy renamed over the file under `flock`, never an
//!   in-place edit. A crashed run's line is removed by the next run of the
//!   same job (two runs of one job at once would fight over the same
//!   files anyway; other syncs from the same source are left alone), and
//!   expired lines by any run; until then `expiry-time` keeps it useless.
//! - **The key can only run rsync into the destination directory, from the
//!   source.** Where the destination has `rrsync` and both hosts' rsync is
//!   3.2.4 or newer, the key carries `command="rrsync -wo <destination>"`
//!   (write-only, confined to that directory); where the destination is
//!   addressed by a private or loopback IP (no NAT in between), also
//!   `from="<the source's address on that route>"`.
//! - **Arguments are never split by the destination's shell.** rsync 3.2.4
//!   and newer protect them by default; with an older rsync on either host
//!   ektool passes `--protect-args` (`-s`); before 3.0 (no protection at
//!   all) it refuses.
//! - **rsync flags:** `-c` (checksums, so unchanged blocks are not
//!   rewritten), `-aHAX` (permissions, times, owners, hard links, ACLs,
//!   xattrs), `--delete`, `--inplace` (EBS snapshots of the destination
//!   stay incremental), `--stats` for the report. Not `-h`: ektool parses
//!   the numbers.

use std::fmt::Write as _;
use std::time::Duration;

use ec2kit::remote::{quote, run_checked};
use ec2kit::{Command, ExitStatus, Remote, RemoteError};
use jiff::Timestamp;
use serde::Serialize;

/// The seed's excludes: per-host state that must not be copied over the
/// destination's own, and pseudo or scratch filesystems.
pub const DEFAULT_EXCLUDES: [&str; 9] = [
    "/root/.bash_history",
    "/home/*/.bash_history",
    "/etc/ssh/moduli",
    "/etc/ssh/ssh_host_*",
    "/etc/udev/rules.d/*persistent-net.rules",
    "/var/lib/ec2/*",
    "/mnt/*",
    "/proc/*",
    "/tmp/*",
];

/// The comment prefix of every temporary key ektool adds.
pub const MARKER: &str = "ektool-sync";

/// The name the destination's host key is recorded under on the source.
pub const HOST_KEY_ALIAS: &str = "ektool-sync-destination";

/// Where the destination user's authorized_keys is by default.
pub const DEFAULT_AUTHORIZED_KEYS: &str = "~/.ssh/authorized_keys";

/// The destination as the source host reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// Login user.
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// Its host key type, e.g. `ssh-ed25519` (trusted by the caller).
    pub key_type: String,
    /// Its host key, base64.
    pub key_base64: String,
}

/// What to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSpec {
    /// A name for the source host (in the key's marker comment):
    /// `user@host:port`.
    pub source_host: String,
    /// The directory to copy (its contents).
    pub source_path: String,
    /// The destination host.
    pub destination: Destination,
    /// The directory to copy into.
    pub destination_path: String,
    /// Extra exclude patterns.
    pub excludes: Vec<String>,
    /// Apply [`DEFAULT_EXCLUDES`] too.
    pub default_excludes: bool,
    /// The destination user's authorized_keys (`~/` is that user's home).
    pub authorized_keys: String,
    /// Run rsync with `--dry-run`: report what would change, change nothing.
    pub check_only: bool,
    /// rsync's I/O timeout (a dead network fails instead of hanging).
    pub io_timeout: Duration,
    /// The temporary key stops working after this long, whatever happens.
    pub key_lifetime: Duration,
    /// The time of the run.
    pub now: Timestamp,
    /// This run's id (in the marker).
    pub run_id: String,
}

impl SyncSpec {
    /// A spec with the defaults: seed excludes, `~/.ssh/authorized_keys`,
    /// 10-minute I/O timeout, 24-hour key lifetime, a fresh run id.
    pub fn new(
        source_host: impl Into<String>,
        source_path: impl Into<String>,
        destination: Destination,
        destination_path: impl Into<String>,
    ) -> Self {
        Self {
            source_host: source_host.into(),
            source_path: source_path.into(),
            destination,
            destination_path: destination_path.into(),
            excludes: Vec::new(),
            default_excludes: true,
            authorized_keys: DEFAULT_AUTHORIZED_KEYS.into(),
            check_only: false,
            io_timeout: Duration::from_secs(600),
            key_lifetime: Duration::from_secs(24 * 3600),
            now: Timestamp::now(),
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        }
    }

    /// Every exclude pattern, in order.
    pub fn all_excludes(&self) -> Vec<String> {
        let defaults = self.default_excludes.then_some(DEFAULT_EXCLUDES.as_slice());
        defaults
            .unwrap_or_default()
            .iter()
            .map(|s| (*s).to_owned())
            .chain(self.excludes.iter().cloned())
            .collect()
    }

    /// The comment prefix of this job's keys: source host and a hash of
    /// both paths. A crashed run of the same job left a line with it;
    /// concurrent syncs of other directories from the same source have
    /// another.
    pub fn job_marker(&self) -> String {
        // No spaces: the marker is the line's last field.
        let host: String = self
            .source_host
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        // FNV-1a: stable across Rust versions and machines, unlike std's hasher.
        let job = format!(
            "{}\0{}",
            self.source_path.trim_end_matches('/'),
            self.destination_path.trim_end_matches('/')
        )
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{MARKER}:{host}:{job:016x}:")
    }

    /// This run's key comment.
    pub fn marker(&self) -> String {
        format!("{}{}", self.job_marker(), self.run_id)
    }

    /// The key's `expiry-time` value (UTC, minutes).
    pub fn expiry(&self) -> String {
        let lifetime = jiff::SignedDuration::try_from(self.key_lifetime).unwrap_or_default();
        self.now
            .checked_add(lifetime)
            .unwrap_or(self.now)
            .strftime("%Y%m%d%H%MZ")
            .to_string()
    }

    /// Checks the paths: absolute, one line, and not `/` as destination
    /// (with `--delete` that would empty the destination's root).
    pub fn validate(&self) -> Result<(), SyncError> {
        for (path, what) in [
            (&self.source_path, "source"),
            (&self.destination_path, "destination"),
        ] {
            let bad = |reason: &str| {
                Err(SyncError::InvalidPath {
                    path: path.clone(),
                    reason: format!("{what} {reason}"),
                })
            };
            if !path.starts_with('/') {
                return bad("must be an absolute path");
            }
            if path.contains(['\n', '\0']) {
                return bad("must be one line");
            }
            if path.split('/').any(|c| c == "..") {
                return bad("must not contain ..");
            }
        }
        if self.destination_path.trim_end_matches('/').is_empty() {
            return Err(SyncError::InvalidPath {
                path: self.destination_path.clone(),
                reason: "destination cannot be / (rsync --delete would empty it)".into(),
            });
        }
        Ok(())
    }
}

/// What a sync will do: the `--dry-run` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncPlan {
    /// The source host.
    pub source_host: String,
    /// The source directory.
    pub source_path: String,
    /// The destination host, as the source reaches it.
    pub destination_host: String,
    /// The destination directory.
    pub destination_path: String,
    /// Exclude patterns.
    pub excludes: Vec<String>,
    /// The rsync command run on the source (`$KEYDIR` is the temporary
    /// key's directory).
    pub command: String,
    /// Where the temporary key is authorised on the destination.
    pub authorized_keys: String,
    /// Its authorized_keys options.
    pub key_options: String,
    /// Its comment.
    pub key_comment: String,
    /// Whether rsync only reports (`--check`).
    pub check_only: bool,
}

/// An rsync version, `(major, minor, patch)`.
pub type Version = (u32, u32, u32);

/// The first rsync that protects arguments from the remote shell by default.
pub const MODERN: Version = (3, 2, 4);

/// The first rsync with `--protect-args`: older ones cannot be used safely.
pub const OLDEST: Version = (3, 0, 0);

/// Reads the version from `rsync --version` (`rsync  version 3.2.7  protocol
/// version 31`).
pub fn parse_version(text: &str) -> Option<Version> {
    let mut words = text.lines().next()?.split_whitespace();
    words.find(|w| *w == "version")?;
    // `3.1.3`, `v3.2.3` (3.2 releases print a `v`), `3.3.0pre1`, `3.2`:
    // numbers until the first non-digit.
    let v = words.next()?;
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// What the two hosts can do, found out before the key is made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// rsync on the source.
    pub source_version: Option<Version>,
    /// rsync on the destination.
    pub destination_version: Option<Version>,
    /// `rrsync` on the destination (its path), if installed.
    pub rrsync: Option<String>,
    /// The source's own address on its route to the destination, when the
    /// destination is a private or loopback IP (no NAT in between).
    pub source_address: Option<String>,
}

impl Capabilities {
    /// Both hosts protect arguments by default.
    pub fn modern(&self) -> bool {
        self.source_version.is_some_and(|v| v >= MODERN)
            && self.destination_version.is_some_and(|v| v >= MODERN)
    }

    /// `--protect-args` is needed (an older rsync on either side).
    pub fn needs_protect_args(&self) -> bool {
        !self.modern()
    }

    /// The key is confined with `command="rrsync -wo …"`.
    pub fn confined(&self) -> bool {
        self.modern() && self.rrsync.is_some()
    }
}

/// The plan of a spec, before the hosts were asked what they can do (the
/// `--dry-run` view: restrictions the hosts allow are added when it runs).
pub fn plan(spec: &SyncSpec) -> SyncPlan {
    plan_with(spec, &Capabilities::default())
}

/// The plan of a spec for hosts with `caps`.
pub fn plan_with(spec: &SyncSpec, caps: &Capabilities) -> SyncPlan {
    let d = &spec.destination;
    SyncPlan {
        source_host: spec.source_host.clone(),
        source_path: spec.source_path.clone(),
        destination_host: format!("{}@{}:{}", d.user, d.host, d.port),
        destination_path: spec.destination_path.clone(),
        excludes: spec.all_excludes(),
        command: Command::argv(rsync_argv_with(spec, "$KEYDIR", caps)).to_string(),
        authorized_keys: spec.authorized_keys.clone(),
        key_options: key_options_with(spec, caps),
        key_comment: spec.marker(),
        check_only: spec.check_only,
    }
}

/// The temporary key's authorized_keys options: `restrict` and an expiry
/// always; `command=` and `from=` where `caps` allow.
pub fn key_options_with(spec: &SyncSpec, caps: &Capabilities) -> String {
    let mut o = format!("restrict,expiry-time=\"{}\"", spec.expiry());
    if caps.confined()
        && let Some(rrsync) = &caps.rrsync
    {
        // authorized_keys quoting: inside "…", only `"` needs escaping;
        // rrsync reads its directory as one argument after sshd's `sh -c`.
        let dir = spec.destination_path.trim_end_matches('/');
        let command = format!("{} -wo {}", quote(rrsync), quote(dir));
        let _ = write!(o, ",command=\"{}\"", command.replace('"', "\\\""));
    }
    if let Some(from) = &caps.source_address {
        let _ = write!(o, ",from=\"{from}\"");
    }
    o
}

/// Whether `host` is an IP literal in a private, loopback or link-local
/// range: then the destination sees the source's own address.
pub fn is_private_ip(host: &str) -> bool {
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

/// The rsync command line run on the source host; `keydir` holds `key`
/// and `known_hosts` (for hosts whose capabilities are not known: with
/// `--protect-args`).
pub fn rsync_argv(spec: &SyncSpec, keydir: &str) -> Vec<String> {
    rsync_argv_with(spec, keydir, &Capabilities::default())
}

/// The rsync command line for hosts with `caps`: `--protect-args` unless
/// both protect arguments by default; the destination path relative to
/// rrsync's directory when the key is confined to it.
pub fn rsync_argv_with(spec: &SyncSpec, keydir: &str, caps: &Capabilities) -> Vec<String> {
    let d = &spec.destination;
    let ssh = [
        "ssh".to_owned(),
        "-i".into(),
        quote(&format!("{keydir}/key")),
        "-p".into(),
        d.port.to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        quote(&format!("UserKnownHostsFile={keydir}/known_hosts")),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        format!("HostKeyAlias={HOST_KEY_ALIAS}"),
        "-o".into(),
        "UpdateHostKeys=no".into(),
        "-o".into(),
        "ServerAliveInterval=15".into(),
        "-o".into(),
        "ServerAliveCountMax=4".into(),
    ]
    .join(" ");
    let host = if d.host.contains(':') {
        format!("[{}]", d.host)
    } else {
        d.host.clone()
    };
    let mut argv: Vec<String> = [
        "rsync",
        "-c",
        "-a",
        "-H",
        "-A",
        "-X",
        "--delete",
        "--inplace",
        "--stats",
        "--no-human-readable",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.push(format!("--timeout={}", spec.io_timeout.as_secs().max(1)));
    if caps.needs_protect_args() {
        // Long-standing short form of --protect-args (3.0+; called
        // --secluded-args by newer releases).
        argv.push("-s".into());
    }
    if spec.check_only {
        argv.push("--dry-run".into());
    }
    for e in spec.all_excludes() {
        argv.push(format!("--exclude={e}"));
    }
    argv.push("-e".into());
    argv.push(ssh);
    // The trailing slash copies the directory's contents.
    argv.push(format!("{}/", spec.source_path.trim_end_matches('/')));
    if caps.confined() {
        // rrsync's root is the destination directory.
        argv.push(format!("{}@{host}:/", d.user));
    } else {
        argv.push(format!(
            "{}@{host}:{}/",
            d.user,
            spec.destination_path.trim_end_matches('/')
        ));
    }
    argv
}

/// Asks both hosts what they can do: their rsync versions, `rrsync` on the
/// destination, and (for a private or loopback destination IP) the
/// source's address on its route there. Refuses an rsync older than 3.0.
pub async fn capabilities(
    source: &dyn Remote,
    destination: &dyn Remote,
    spec: &SyncSpec,
) -> Result<Capabilities, SyncError> {
    let d = &spec.destination;
    let route = if is_private_ip(&d.host) {
        format!(
            "; ip -o route get {} 2>/dev/null | sed -n 's/.* src \\([^ ]*\\).*/src \\1/p' || true",
            quote(d.host.trim_matches(['[', ']']))
        )
    } else {
        String::new()
    };
    let src = source
        .run(&Command::shell(format!(
            "rsync --version 2>/dev/null | head -n 1{route}"
        )))
        .await?;
    // rrsync needs its directory to exist; a check-only run must not make
    // it, so without it the key is not confined (still restricted).
    let dst = destination
        .run(&Command::shell(format!(
            "rsync --version 2>/dev/null | head -n 1; command -v rrsync || true; \
             [ -d {} ] && echo dir-exists; true",
            quote(&spec.destination_path)
        )))
        .await?;
    let src_text = src.stdout_str();
    let dst_text = dst.stdout_str();
    let caps = Capabilities {
        source_version: parse_version(&src_text),
        destination_version: parse_version(&dst_text),
        rrsync: dst_text
            .lines()
            .skip(1)
            .map(str::trim)
            .find(|l| l.starts_with('/') && !l.contains(char::is_whitespace))
            .filter(|_| !spec.check_only || dst_text.lines().any(|l| l == "dir-exists"))
            .map(str::to_owned),
        source_address: src_text
            .lines()
            .find_map(|l| l.strip_prefix("src "))
            .map(str::trim)
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
            .map(str::to_owned),
    };
    for (host, version) in [
        (source.host(), caps.source_version),
        (destination.host(), caps.destination_version),
    ] {
        match version {
            Some(v) if v >= OLDEST => {}
            other => {
                return Err(SyncError::Unsupported {
                    host,
                    version: other.map_or("no rsync".to_owned(), |(a, b, c)| {
                        format!("rsync {a}.{b}.{c}")
                    }),
                });
            }
        }
    }
    Ok(caps)
}

/// The shell script that edits authorized_keys on the destination:
/// drops lines whose last field starts with `drop_prefix` and ektool's
/// expired temporary keys, appends `add` (if any), and prints how many
/// lines it dropped. A filtered copy renamed over the file, under `flock`
/// on the directory, so concurrent edits are not lost and readers never
/// see a partial file.
pub fn authorized_keys_script(
    path: &str,
    drop_prefix: &str,
    add: Option<&str>,
    now: Timestamp,
) -> String {
    let now = now.strftime("%Y%m%d%H%M").to_string();
    // The comment is the last field; `expiry-time="YYYYMMDDHHMMZ"` sorts
    // as text, so a string comparison with now tells an expired key.
    let awk = r#"{ c = $NF; drop = 0
  if (index(c, p) == 1) drop = 1
  else if (index(c, m) == 1 && match($0, /expiry-time="[0-9]+Z"/)) {
    t = substr($0, RSTART + 13, RLENGTH - 15); if (t < now) drop = 1 }
  if (drop) n++; else print > out }
END { print n + 0 }"#;
    let mut s = String::new();
    let _ = write!(
        s,
        "set -e\nf={path}\ncase \"$f\" in \"~/\"*) f=\"$HOME/${{f#\\~/}}\";; esac\n",
        path = quote(path)
    );
    s.push_str(
        "f=$(readlink -f -- \"$f\" 2>/dev/null || printf '%s' \"$f\")\n\
         d=$(dirname -- \"$f\")\n\
         [ -d \"$d\" ] || (umask 077; mkdir -p -- \"$d\")\n\
         exec 9<\"$d\"\n\
         if command -v flock >/dev/null; then flock -w 60 9; fi\n\
         t=$(mktemp \"$d/.authorized_keys.ektool.XXXXXX\")\n\
         trap 'rm -f \"$t\"' EXIT\n\
         if [ -f \"$f\" ]; then\n",
    );
    let _ = writeln!(
        s,
        "  n=$(awk -v p={p} -v m={m} -v now={now} -v out=\"$t\" {awk} \"$f\")",
        p = quote(drop_prefix),
        m = quote(&format!("{MARKER}:")),
        awk = quote(awk),
    );
    s.push_str(
        "  chmod --reference=\"$f\" \"$t\" 2>/dev/null || chmod 600 \"$t\"\n\
         else n=0; chmod 600 \"$t\"; fi\n",
    );
    if let Some(line) = add {
        let _ = writeln!(s, "printf '%s\\n' {} >> \"$t\"", quote(line));
    } else {
        // Nothing to add and nothing dropped: leave the file alone.
        s.push_str("if [ \"$n\" = 0 ]; then echo 0; exit 0; fi\n");
    }
    s.push_str("mv -f \"$t\" \"$f\"\ntrap - EXIT\necho \"$n\"\n");
    s
}

/// What rsync reported (`--stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RsyncStats {
    /// Files and directories considered.
    pub files: u64,
    /// Regular files transferred.
    pub files_transferred: u64,
    /// Files deleted on the destination.
    pub files_deleted: u64,
    /// Size of all files considered, in bytes.
    pub total_size: u64,
    /// Size of the transferred files, in bytes.
    pub transferred_size: u64,
    /// Bytes sent over the wire (after delta and checksums).
    pub bytes_sent: u64,
    /// Bytes received over the wire.
    pub bytes_received: u64,
}

/// Parses `rsync --stats` output.
pub fn parse_stats(text: &str) -> RsyncStats {
    let mut s = RsyncStats::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .map(|n| n.replace(',', ""))
            .and_then(|n| n.parse().ok());
        let Some(n) = number else { continue };
        match key.trim() {
            "Number of files" => s.files = n,
            "Number of regular files transferred" => s.files_transferred = n,
            "Number of deleted files" => s.files_deleted = n,
            "Total file size" => s.total_size = n,
            "Total transferred file size" => s.transferred_size = n,
            "Total bytes sent" => s.bytes_sent = n,
            "Total bytes received" => s.bytes_received = n,
            _ => {}
        }
    }
    s
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReport {
    /// The plan that ran.
    #[serde(flatten)]
    pub plan: SyncPlan,
    /// rsync's numbers.
    pub stats: RsyncStats,
    /// Temporary keys of earlier (crashed) runs removed from the destination.
    pub stale_keys_removed: u64,
    /// Anything worth knowing (e.g. files that vanished during the copy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Errors of a sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A host failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A path that cannot be used.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A host's rsync cannot protect its arguments (before 3.0), or there
    /// is none.
    #[error("{host}: {version} cannot be used safely (rsync 3.0 or newer is needed)")]
    Unsupported {
        /// The host.
        host: String,
        /// What it has.
        version: String,
    },
    /// The temporary key could not be made on the source.
    #[error("{host}: could not make a temporary key: {detail}")]
    Key {
        /// The source host.
        host: String,
        /// What it said.
        detail: String,
    },
    /// rsync failed.
    #[error("{host}: rsync failed with {status}: {detail}")]
    Rsync {
        /// The source host.
        host: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its standard error.
        detail: String,
    },
    /// The temporary key or its directory could not be removed.
    #[error("could not clean up after the sync: {}", problems.join("; "))]
    Cleanup {
        /// What is left where.
        problems: Vec<String>,
        /// The error the sync itself ended with, if any.
        #[source]
        after: Option<Box<SyncError>>,
    },
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim().lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Makes the key directory on the source: returns (dir, public key line).
async fn make_key(source: &dyn Remote, spec: &SyncSpec) -> Result<(String, String), SyncError> {
    let d = &spec.destination;
    let known = format!("{HOST_KEY_ALIAS} {} {}", d.key_type, d.key_base64);
    let script = format!(
        "set -e; umask 077; d=$(mktemp -d \"${{TMPDIR:-/tmp}}/ektool-sync.XXXXXX\"); \
         trap 'rm -rf \"$d\"' EXIT; \
         ssh-keygen -q -t ed25519 -N '' -C {comment} -f \"$d/key\" </dev/null >/dev/null; \
         printf '%s\\n' {known} > \"$d/known_hosts\"; \
         trap - EXIT; echo \"$d\"; cat \"$d/key.pub\"",
        comment = quote(&spec.marker()),
        known = quote(&known),
    );
    let out = source.run(&Command::shell(script)).await?;
    let text = out.stdout_str();
    let mut lines = text.lines();
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(dir), Some(public)) if dir.starts_with('/') && dir.contains("ektool-sync.") => {
            let mut f = public.split_whitespace();
            match (f.next(), f.next()) {
                (Some(kind), Some(blob)) => Ok((dir.to_owned(), format!("{kind} {blob}"))),
                _ => Err(SyncError::Key {
                    host: source.host(),
                    detail: format!("unexpected public key {public:?}"),
                }),
            }
        }
        _ => Err(SyncError::Key {
            host: source.host(),
            detail: format!("{}: {}", out.status, tail(&out.stderr_str(), 3)),
        }),
    }
}

async fn edit_authorized_keys(
    destination: &dyn Remote,
    spec: &SyncSpec,
    drop_prefix: &str,
    add: Option<&str>,
) -> Result<u64, RemoteError> {
    let script = authorized_keys_script(&spec.authorized_keys, drop_prefix, add, spec.now);
    let out = run_checked(destination, &Command::shell(script)).await?;
    Ok(out
        .stdout_str()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0))
}

/// Removes ektool's temporary keys of `spec`'s job (and expired ones)
/// from the destination: the repair after a crash. Returns how many.
pub async fn remove_stale_keys(
    destination: &dyn Remote,
    spec: &SyncSpec,
) -> Result<u64, SyncError> {
    Ok(edit_authorized_keys(destination, spec, &spec.job_marker(), None).await?)
}

/// Runs a sync: temporary key on `source`, authorised on `destination`,
/// rsync on `source`, and the key removed from both again whatever
/// happened.
pub async fn sync(
    source: &dyn Remote,
    destination: &dyn Remote,
    spec: &SyncSpec,
) -> Result<SyncReport, SyncError> {
    spec.validate()?;
    let caps = capabilities(source, destination, spec).await?;
    let (dir, public) = make_key(source, spec).await?;
    let line = format!(
        "{} {public} {}",
        key_options_with(spec, &caps),
        spec.marker()
    );
    // Lines of the same job are from crashed runs: dropped as this one's goes in.
    let installed = edit_authorized_keys(destination, spec, &spec.job_marker(), Some(&line)).await;
    let result = match installed {
        Ok(stale) => prepare_and_run(source, destination, spec, &dir, &caps)
            .await
            .map(|r| (r, stale)),
        Err(e) => Err(e.into()),
    };

    // Cleanup on every path. The destination first: a key left there is
    // the one that matters.
    let mut problems = Vec::new();
    if let Err(e) = edit_authorized_keys(destination, spec, &spec.marker(), None).await {
        problems.push(format!(
            "{}: temporary key {} still in {} ({e})",
            destination.host(),
            spec.marker(),
            spec.authorized_keys
        ));
    }
    if let Err(e) = run_checked(source, &Command::argv(["rm", "-rf", "--", dir.as_str()])).await {
        problems.push(format!("{}: {dir} not removed ({e})", source.host()));
    }
    match (result, problems.is_empty()) {
        (Ok(((stats, notes), stale)), true) => Ok(SyncReport {
            plan: plan_with(spec, &caps),
            stats,
            stale_keys_removed: stale,
            notes,
        }),
        (Err(e), true) => Err(e),
        (result, false) => Err(SyncError::Cleanup {
            problems,
            after: result.err().map(Box::new),
        }),
    }
}

async fn prepare_and_run(
    source: &dyn Remote,
    destination: &dyn Remote,
    spec: &SyncSpec,
    dir: &str,
    caps: &Capabilities,
) -> Result<(RsyncStats, Vec<String>), SyncError> {
    // rsync makes only the last component of the destination (and rrsync
    // needs its directory to exist).
    if !spec.check_only {
        let mkdir = Command::argv(["mkdir", "-p", "--", spec.destination_path.as_str()]);
        run_checked(destination, &mkdir).await?;
    }
    run_rsync(source, spec, dir, caps).await
}

async fn run_rsync(
    source: &dyn Remote,
    spec: &SyncSpec,
    dir: &str,
    caps: &Capabilities,
) -> Result<(RsyncStats, Vec<String>), SyncError> {
    let command = Command::argv(rsync_argv_with(spec, dir, caps)).env("LC_ALL", "C");
    let out = source.run(&command).await?;
    let mut notes = Vec::new();
    match out.status.clone() {
        ExitStatus::Code(0) => {}
        // Files that disappeared between listing and copying: normal on a
        // live filesystem, not a failure.
        ExitStatus::Code(24) => notes.push(format!(
            "some source files vanished during the copy: {}",
            tail(&out.stderr_str(), 3)
        )),
        status => {
            return Err(SyncError::Rsync {
                host: source.host(),
                status,
                detail: tail(&out.stderr_str(), 5),
            });
        }
    }
    Ok((parse_stats(&out.stdout_str()), notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SyncSpec {
        let mut s = SyncSpec::new(
            "root@10.0.0.1:22",
            "/srv/data/",
            Destination {
                user: "root".into(),
                host: "10.0.0.2".into(),
                port: 2222,
                key_type: "ssh-ed25519".into(),
                key_base64: "AAAAC3Nz".into(),
            },
            "/srv/copy",
        );
        s.now = "2025-01-02T03:04:05Z".parse().unwrap();
        s.run_id = "abc".into();
        s
    }

    #[test]
    fn rsync_command_is_the_seeds_with_strict_host_keys() {
        let argv = rsync_argv(&spec(), "/tmp/ektool-sync.X");
        let line = Command::argv(argv.clone()).to_string();
        for want in [
            "rsync -c -a -H -A -X --delete --inplace --stats",
            "--exclude=/etc/ssh/ssh_host_*",
            "--exclude=/tmp/*",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/tmp/ektool-sync.X/known_hosts",
            "HostKeyAlias=ektool-sync-destination",
            "-p 2222",
        ] {
            assert!(line.contains(want), "{want}: {line}");
        }
        assert!(!line.contains("StrictHostKeyChecking=no"));
        assert!(!argv.iter().any(|a| a == "-h"), "numbers are parsed");
        assert_eq!(argv[argv.len() - 2], "/srv/data/");
        assert_eq!(argv[argv.len() - 1], "root@10.0.0.2:/srv/copy/");
    }

    #[test]
    fn versions_are_read_from_rsync_version() {
        assert_eq!(
            parse_version("rsync  version 3.2.7  protocol version 31\nCopyright"),
            Some((3, 2, 7))
        );
        assert_eq!(
            parse_version("rsync  version v3.2.3  protocol version 31"),
            Some((3, 2, 3))
        );
        assert_eq!(
            parse_version("rsync  version 3.3.0pre1  protocol"),
            Some((3, 3, 0))
        );
        assert_eq!(
            parse_version("rsync  version 3.1  protocol version 31"),
            Some((3, 1, 0))
        );
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("bash: rsync: command not found"), None);
    }

    /// L10: old rsync gets --protect-args; modern rsync with rrsync confines
    /// the key to the destination directory (write-only) and the source's
    /// address.
    #[test]
    fn restrictions_follow_what_the_hosts_allow() {
        let s = spec();
        let old = Capabilities {
            source_version: Some((3, 1, 3)),
            destination_version: Some((3, 2, 7)),
            rrsync: Some("/usr/bin/rrsync".into()),
            source_address: None,
        };
        let argv = rsync_argv_with(&s, "/d", &old);
        assert!(argv.contains(&"-s".to_owned()), "{argv:?}");
        assert_eq!(argv.last().unwrap(), "root@10.0.0.2:/srv/copy/");
        assert_eq!(
            key_options_with(&s, &old),
            "restrict,expiry-time=\"202501030304Z\""
        );

        let modern = Capabilities {
            source_version: Some((3, 2, 7)),
            source_address: Some("10.0.0.1".into()),
            ..old
        };
        let argv = rsync_argv_with(&s, "/d", &modern);
        assert!(!argv.contains(&"-s".to_owned()), "{argv:?}");
        assert_eq!(argv.last().unwrap(), "root@10.0.0.2:/");
        assert_eq!(
            key_options_with(&s, &modern),
            "restrict,expiry-time=\"202501030304Z\",command=\"/usr/bin/rrsync -wo /srv/copy\",from=\"10.0.0.1\""
        );

        let mut spaced = spec();
        spaced.destination_path = "/srv/a b\"c".into();
        assert!(
            key_options_with(&spaced, &modern)
                .contains(r#"command="/usr/bin/rrsync -wo '/srv/a b\"c'""#),
            "{}",
            key_options_with(&spaced, &modern)
        );
        // Unknown hosts (the dry-run plan): protected, not confined.
        assert!(rsync_argv(&s, "/d").contains(&"-s".to_owned()));
    }

    #[test]
    fn private_addresses() {
        for yes in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
            "fd00::2",
            "[fe80::1]",
        ] {
            assert!(is_private_ip(yes), "{yes}");
        }
        for no in [
            "8.8.8.8",
            "ec2-1-2-3-4.compute.amazonaws.com",
            "2001:db8::1",
            "",
        ] {
            assert!(!is_private_ip(no), "{no}");
        }
    }

    #[test]
    fn excludes_can_be_replaced() {
        let mut s = spec();
        s.default_excludes = false;
        s.excludes = vec!["*.log".into()];
        assert_eq!(s.all_excludes(), ["*.log"]);
        s.check_only = true;
        assert!(rsync_argv(&s, "/d").contains(&"--dry-run".to_owned()));
    }

    #[test]
    fn ipv6_destinations_are_bracketed() {
        let mut s = spec();
        s.destination.host = "fd00::2".into();
        assert_eq!(
            rsync_argv(&s, "/d").last().unwrap(),
            "root@[fd00::2]:/srv/copy/"
        );
    }

    #[test]
    fn marker_and_expiry() {
        let s = spec();
        let marker = s.marker();
        assert!(
            marker.starts_with("ektool-sync:root@10.0.0.1:22:"),
            "{marker}"
        );
        assert!(
            marker.ends_with(":abc") && !marker.contains(' '),
            "{marker}"
        );
        // Another directory from the same source is another job.
        let mut other = spec();
        other.destination_path = "/srv/other".into();
        assert_ne!(other.job_marker(), s.job_marker());
        let mut slash = spec();
        slash.source_path = "/srv/data".into();
        assert_eq!(slash.job_marker(), s.job_marker());
        assert_eq!(s.expiry(), "202501030304Z");
        assert_eq!(
            key_options_with(&s, &Capabilities::default()),
            "restrict,expiry-time=\"202501030304Z\""
        );
    }

    #[test]
    fn paths_are_checked() {
        assert!(spec().validate().is_ok());
        for (src, dst) in [
            ("data", "/x"),
            ("/x", "/"),
            ("/x", "/a/../b"),
            ("/x", "rel"),
        ] {
            let mut s = spec();
            s.source_path = src.into();
            s.destination_path = dst.into();
            assert!(s.validate().is_err(), "{src} {dst}");
        }
    }

    #[test]
    fn stats_are_parsed_with_or_without_separators() {
        let text = "\nNumber of files: 1,234 (reg: 1,000, dir: 234)\nNumber of created files: 3\n\
                    Number of deleted files: 2\nNumber of regular files transferred: 7\n\
                    Total file size: 5,000,000 bytes\nTotal transferred file size: 4096 bytes\n\
                    Literal data: 4096 bytes\nTotal bytes sent: 5,120\nTotal bytes received: 99\n";
        let s = parse_stats(text);
        assert_eq!(
            s,
            RsyncStats {
                files: 1234,
                files_transferred: 7,
                files_deleted: 2,
                total_size: 5_000_000,
                transferred_size: 4096,
                bytes_sent: 5120,
                bytes_received: 99,
            }
        );
    }

    /// The authorized_keys script, run here with `sh` on a scratch file.
    fn edit(file: &std::path::Path, prefix: &str, add: Option<&str>, now: &str) -> String {
        let script =
            authorized_keys_script(file.to_str().unwrap(), prefix, add, now.parse().unwrap());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn authorized_keys_edits_keep_other_lines_and_drop_only_ours() {
        let dir = ektool_tests::tempdir();
        let f = dir.path().join("authorized_keys");
        std::fs::write(
            &f,
            "ssh-ed25519 AAAAuser alice@laptop\n\
             restrict,expiry-time=\"203001010000Z\" ssh-ed25519 AAAAother ektool-sync:root@other:22:zzz\n\
             restrict,expiry-time=\"202001010000Z\" ssh-ed25519 AAAAold ektool-sync:root@gone:22:old\n\
             ssh-rsa AAAAnoeol bob",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let now = "2025-01-01T00:00:00Z";
        let ours = "restrict ssh-ed25519 AAAAnew ektool-sync:root@src:22:run1";
        // Adding: the expired line of another source goes; the live one stays.
        assert_eq!(edit(&f, "ektool-sync:root@src:22:", Some(ours), now), "1");
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            text,
            "ssh-ed25519 AAAAuser alice@laptop\n\
             restrict,expiry-time=\"203001010000Z\" ssh-ed25519 AAAAother ektool-sync:root@other:22:zzz\n\
             ssh-rsa AAAAnoeol bob\n\
             restrict ssh-ed25519 AAAAnew ektool-sync:root@src:22:run1\n"
        );
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "mode kept");
        // Removing by exact marker.
        assert_eq!(edit(&f, "ektool-sync:root@src:22:run1", None, now), "1");
        assert!(!std::fs::read_to_string(&f).unwrap().contains("AAAAnew"));
        // Nothing to do: the file is not rewritten.
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&f).unwrap());
        assert_eq!(edit(&f, "ektool-sync:root@src:22:run1", None, now), "0");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&f).unwrap()),
            inode
        );
        // No temporary files left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn authorized_keys_is_created_when_missing() {
        let dir = ektool_tests::tempdir();
        let f = dir.path().join("ssh/authorized_keys");
        assert_eq!(
            edit(
                &f,
                "ektool-sync:x:",
                Some("ssh-ed25519 AAAA ektool-sync:x:1"),
                "2025-01-01T00:00:00Z"
            ),
            "0"
        );
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "ssh-ed25519 AAAA ektool-sync:x:1\n"
        );
    }
}
