//! What to deploy, resolved locally with git.
//!
//! Reads (resolve a ref, dirty check, ancestry, tags) use git2 on the local
//! repository. Network operations (`ls-remote`, `fetch`, `push`) and signed
//! tags run the `git` program, so they inherit the developer's ssh config,
//! agent, credential helpers and signing setup, which libgit2 ignores.
//!
//! Nothing here checks out anything: the developer's working copy and HEAD
//! are never changed (the seed tools switched them and restored them at
//! the end, or not, when the deploy failed). The only writes are a fetch of
//! the remote-tracking refs when the pushed check needs objects it does not
//! have, and the release tag `--tag` asks for.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, StatusOptions};
use serde::{Deserialize, Serialize};

use crate::environment::{Environment, VersionPattern};
use crate::release::Release;
use crate::shell::short;

/// Whether a repository URL may be given to the hosts: no credentials in
/// it (`https://user:TOKEN@…`, `https://TOKEN@…`, `ssh://user:password@…`:
/// they would be written into every host's git config and shown in process
/// lists, plans, errors, logs and notifications), and nothing git could
/// read as an option (a leading `-`). The message never contains the
/// credentials.
pub fn check_repository_url(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("the repository URL is empty".to_owned());
    }
    if url.starts_with('-') {
        return Err(format!(
            "repository URL {:?} starts with `-` (git would read it as an option)",
            redact(url)
        ));
    }
    if url.contains(['\n', '\r', '\0']) {
        return Err("the repository URL contains a line break or NUL".to_owned());
    }
    if userinfo_is_secret(url) {
        return Err(format!(
            "repository URL {} has credentials in it: they would end up in every host's git config and process list, and in plans, errors, the release log and notifications; give the hosts a read-only deploy key (`git_ssh_key`) or a git credential helper instead",
            redact(url)
        ));
    }
    Ok(())
}

/// The scheme and the user-info of a `scheme://userinfo@host/…` URL.
fn userinfo(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (info, _) = authority.rsplit_once('@')?;
    Some((scheme, info))
}

/// Whether a URL's user-info is a secret: any for http(s) and ftp (a token
/// is often the user name), a password for the others (`ssh://git@host`
/// names a login, not a secret).
fn userinfo_is_secret(url: &str) -> bool {
    match userinfo(url) {
        Some((scheme, info)) => {
            let web = matches!(
                scheme.to_ascii_lowercase().as_str(),
                "http" | "https" | "ftp" | "ftps"
            );
            (web && !info.is_empty()) || info.contains(':')
        }
        None => false,
    }
}

/// `text` with the user-info of every `scheme://user:secret@host` URL in
/// it replaced by `***` (a bare `ssh://user@` login is kept). Every place
/// that shows a URL, or text that may contain one (an error from a host,
/// git's stderr), goes through this.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: the letters right before `://`.
        let head = rest.get(..i).unwrap_or_default();
        let scheme_start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(i, |(j, _)| j);
        let after = rest.get(i + 3..).unwrap_or_default();
        let end = after
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '/' | '?' | '#' | '\'' | '"' | '`' | '<' | '>')
            })
            .unwrap_or(after.len());
        let authority = after.get(..end).unwrap_or_default();
        out.push_str(head);
        out.push_str("://");
        match authority.rsplit_once('@') {
            Some((info, host)) => {
                let url = format!(
                    "{}://{authority}",
                    head.get(scheme_start..).unwrap_or_default()
                );
                if userinfo_is_secret(&url) {
                    out.push_str("***@");
                } else {
                    out.push_str(info);
                    out.push('@');
                }
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = after.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// What the user asked to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum RefSpec {
    /// Nothing named: the newest release tag when the environment requires
    /// tags, else the head of its branch.
    Default,
    /// The local HEAD (refused when the working tree is dirty).
    Head,
    /// The newest tag matching the version pattern.
    LatestTag,
    /// A tag, branch, or commit.
    Named(String),
}

impl RefSpec {
    /// Parses the command line's `--ref`: `HEAD`, `latest-tag`, or a name.
    pub fn parse(s: &str) -> Self {
        match s {
            "" => Self::Default,
            "HEAD" | "@" => Self::Head,
            "latest-tag" | "latest" => Self::LatestTag,
            other => Self::Named(other.to_owned()),
        }
    }
}

impl fmt::Display for RefSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("(default)"),
            Self::Head => f.write_str("HEAD"),
            Self::LatestTag => f.write_str("latest-tag"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

/// How release tags spell a version: a prefix (`v` unless configured)
/// followed by a [semantic version](https://semver.org) (`v1.4.2`,
/// `v2.0.0-rc.1`). Versions order by semver precedence (a pre-release
/// before its release, `1.10.0` after `1.9.3`); a version with a leading
/// zero (`v1.02.3`) is not one.
///
/// ```
/// use deploykit::git::{Bump, TagScheme};
///
/// let tags = TagScheme::new("release-");
/// assert_eq!(tags.version("release-1.2.3-rc.1").unwrap().pre.as_str(), "rc.1");
/// assert!(tags.version("release-1.02.3").is_none());
/// // After a release candidate, the next patch is the release itself.
/// let next = Bump::Patch.next_after(Some("release-1.2.3-rc.1"), &tags).unwrap();
/// assert_eq!(next, "release-1.2.3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagScheme {
    /// What comes before the version, e.g. `v` or `release-` (may be empty).
    pub prefix: String,
}

impl Default for TagScheme {
    /// `v1.2.3`.
    fn default() -> Self {
        Self::new("v")
    }
}

impl TagScheme {
    /// Tags `<prefix><version>`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The scheme an environment's version pattern implies: the literal
    /// text the pattern anchors at the start (`^v\d+…` → `v`,
    /// `^release-\d+…` → `release-`, `^\d+…` → none), else `v`. A tag
    /// made with it is still checked against the pattern.
    pub fn from_pattern(pattern: &VersionPattern) -> Self {
        Self::new(literal_prefix(pattern.as_str()).unwrap_or_else(|| "v".to_owned()))
    }

    /// The version a tag names, if it is `<prefix><semantic version>`.
    pub fn version(&self, tag: &str) -> Option<semver::Version> {
        semver::Version::parse(tag.strip_prefix(self.prefix.as_str())?).ok()
    }

    /// The tag of `version`.
    pub fn tag(&self, version: &semver::Version) -> String {
        format!("{}{version}", self.prefix)
    }

    /// The newest of `tags` by version: tags that are not
    /// `<prefix><semantic version>` count as older than every one that is,
    /// and order among themselves by the numbers in them.
    pub fn newest<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        tags.into_iter().max_by(|a, b| {
            (self.version(a), version_key(a)).cmp(&(self.version(b), version_key(b)))
        })
    }
}

/// The literal text a regular expression requires at the start of the
/// string, if it is anchored with `^`.
fn literal_prefix(pattern: &str) -> Option<String> {
    let mut chars = pattern.strip_prefix('^')?.chars().peekable();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        let literal = match c {
            '\\' => match chars.next() {
                // `\.`, `\-`: the character itself; `\d`, `\w`: a class.
                Some(e) if !e.is_ascii_alphanumeric() => e,
                _ => break,
            },
            '.' | '[' | '(' | '|' | '$' | '^' | '*' | '+' | '?' | '{' => break,
            c => c,
        };
        // A quantifier after it makes the character optional.
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        out.push(literal);
    }
    Some(out)
}

/// A new release tag to create: the next version after the newest release
/// tag, or an exact name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Bump {
    /// `v1.2.3` → `v1.2.4`.
    Patch,
    /// `v1.2.3` → `v1.3.0`.
    Minor,
    /// `v1.2.3` → `v2.0.0`.
    Major,
    /// This exact tag.
    Exact(String),
}

impl Bump {
    /// Parses `next-patch`, `next-minor`, `next-major`, or a tag name.
    pub fn parse(s: &str) -> Self {
        match s {
            "next-patch" | "patch" => Self::Patch,
            "next-minor" | "minor" => Self::Minor,
            "next-major" | "major" => Self::Major,
            other => Self::Exact(other.to_owned()),
        }
    }

    /// The tag this bump gives after `latest` (`None`: no release tag yet,
    /// counted from `0.0.0`), spelt with `scheme`. As with npm and cargo,
    /// a bump of a pre-release that already is the next version of that
    /// kind releases it: `1.2.3-rc.1` → patch `1.2.3`; `1.3.0-rc.1` →
    /// minor `1.3.0`; `2.0.0-rc.1` → major `2.0.0`. Build metadata is
    /// dropped. An exact tag is refused when it is the scheme's prefix and
    /// something version-like that is not a semantic version (`v1.02.3`).
    pub fn next_after(&self, latest: Option<&str>, scheme: &TagScheme) -> Result<String, GitError> {
        if let Self::Exact(tag) = self {
            check_exact(tag, scheme)?;
            return Ok(tag.clone());
        }
        let v = match latest {
            None => semver::Version::new(0, 0, 0),
            Some(t) => scheme
                .version(t)
                .ok_or_else(|| GitError::NotSemver(t.to_owned()))?,
        };
        let pre = !v.pre.is_empty();
        let (major, minor, patch) = (v.major, v.minor, v.patch);
        let next = match self {
            Self::Patch if pre => (major, minor, patch),
            Self::Minor if pre && patch == 0 => (major, minor, 0),
            Self::Major if pre && minor == 0 && patch == 0 => (major, 0, 0),
            Self::Patch => (major, minor, patch + 1),
            Self::Minor => (major, minor + 1, 0),
            Self::Major => (major + 1, 0, 0),
            // Handled above; an exact tag is not a bump.
            Self::Exact(_) => (major, minor, patch),
        };
        Ok(scheme.tag(&semver::Version::new(next.0, next.1, next.2)))
    }
}

/// Refuses an exact tag that looks like a version of the scheme (its
/// prefix, then a digit) but is not a semantic version.
fn check_exact(tag: &str, scheme: &TagScheme) -> Result<(), GitError> {
    let Some(rest) = tag.strip_prefix(scheme.prefix.as_str()) else {
        return Ok(());
    };
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(());
    }
    match semver::Version::parse(rest) {
        Ok(_) => Ok(()),
        Err(e) => Err(GitError::InvalidVersion {
            tag: tag.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The numbers in a version tag, for ordering (`v1.10.0` after `v1.9.3`).
fn version_key(tag: &str) -> Vec<u64> {
    tag.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

/// Why a release could not be resolved or a tag created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// libgit2 failed.
    #[error("git: {context}")]
    Git {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: git2::Error,
    },
    /// The `git` program failed.
    #[error("`git {args}` failed: {stderr}")]
    Command {
        /// Its arguments.
        args: String,
        /// Its standard error.
        stderr: String,
    },
    /// The `git` program could not be started.
    #[error("could not run git")]
    Spawn(#[source] std::io::Error),
    /// The name is not a tag, branch or commit.
    #[error("{0:?} is not a tag, branch or commit of this repository")]
    UnknownRef(String),
    /// The repository has no tag matching the version pattern.
    #[error("no tag matches the version pattern {0}")]
    NoReleaseTag(String),
    /// The environment requires a release tag.
    #[error("{environment} deploys only release tags matching {pattern}; {what} is not one")]
    TagRequired {
        /// The environment.
        environment: String,
        /// The pattern.
        pattern: String,
        /// What was asked for.
        what: String,
    },
    /// A tag to create does not match the version pattern.
    #[error("tag {tag:?} does not match the version pattern {pattern}")]
    BadTag {
        /// The tag.
        tag: String,
        /// The pattern.
        pattern: String,
    },
    /// The latest tag is not the scheme's prefix and a semantic version,
    /// so it cannot be bumped.
    #[error(
        "the latest release tag {0:?} is not a semantic version (MAJOR.MINOR.PATCH after the tag prefix), so it cannot be bumped"
    )]
    NotSemver(String),
    /// A tag to create looks like a version but is not a semantic version.
    #[error("tag {tag:?} is not a semantic version: {reason}")]
    InvalidVersion {
        /// The tag.
        tag: String,
        /// What is wrong with it (e.g. a leading zero).
        reason: String,
    },
    /// The working tree has uncommitted changes.
    #[error(
        "the working tree has uncommitted changes ({0}); commit and push them, or deploy a pushed ref"
    )]
    Dirty(String),
    /// The remote does not have the commit.
    #[error(
        "{commit} is not on {remote} (no branch or tag there contains it); push it first: hosts fetch from the remote"
    )]
    NotPushed {
        /// The commit (short).
        commit: String,
        /// The remote.
        remote: String,
    },
    /// The remote is not configured.
    #[error("the local repository has no remote {0:?}")]
    NoRemote(String),
    /// A release tag required by the environment is not on the remote.
    #[error(
        "tag {tag} is not on {remote} (it exists only in this clone); push it first: the environment deploys only tags the remote has"
    )]
    TagNotPushed {
        /// The tag.
        tag: String,
        /// The remote.
        remote: String,
    },
    /// A release tag names another commit on the remote than here.
    #[error(
        "tag {tag} is {remote_commit} on {remote} but {local_commit} here (moved locally?); deploy what the remote's tag names"
    )]
    TagMoved {
        /// The tag.
        tag: String,
        /// The remote.
        remote: String,
        /// What it names on the remote (short).
        remote_commit: String,
        /// What it names here (short).
        local_commit: String,
    },
    /// The tag exists and names another commit.
    #[error("tag {tag} already exists at {existing}, not at {wanted}")]
    TagExists {
        /// The tag.
        tag: String,
        /// Where it points.
        existing: String,
        /// Where it was wanted.
        wanted: String,
    },
    /// The remote refused the pushed ref (protected, exists, hook).
    #[error("{remote} rejected {reference}: {reason}")]
    PushRejected {
        /// The remote.
        remote: String,
        /// The ref.
        reference: String,
        /// Its reason.
        reason: String,
    },
}

impl GitError {
    /// Whether the caller asked for something the repository or the
    /// environment's rules refuse (an unknown ref, an untagged release
    /// where tags are required, a tag that does not fit the pattern, no
    /// such remote) rather than git failing; nothing was changed.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::UnknownRef(_)
                | Self::TagRequired { .. }
                | Self::BadTag { .. }
                | Self::NoReleaseTag(_)
                | Self::NotSemver(_)
                | Self::InvalidVersion { .. }
                | Self::NoRemote(_)
        )
    }
}

fn g(context: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let context = context.into();
    move |source| GitError::Git { context, source }
}

/// A local repository (the developer's clone).
pub struct LocalRepo {
    repo: Repository,
    dir: PathBuf,
}

impl fmt::Debug for LocalRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRepo").field("dir", &self.dir).finish()
    }
}

/// A tag made by [`LocalRepo::create_tag`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTag {
    /// The tag name.
    pub name: String,
    /// The commit it names.
    pub commit: String,
    /// Whether it already existed there (nothing was created).
    pub existed: bool,
}

impl LocalRepo {
    /// Opens the repository containing `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GitError> {
        let repo = Repository::discover(path.as_ref()).map_err(g(format!(
            "no git repository at {}",
            path.as_ref().display()
        )))?;
        let dir = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();
        Ok(Self { repo, dir })
    }

    /// The URL of a remote.
    pub fn remote_url(&self, remote: &str) -> Result<String, GitError> {
        let r = self
            .repo
            .find_remote(remote)
            .map_err(|_| GitError::NoRemote(remote.to_owned()))?;
        r.url()
            .map(str::to_owned)
            .map_err(|_| GitError::NoRemote(remote.to_owned()))
    }

    /// Resolves `spec`, applies the environment's rules (tag required,
    /// clean tree for HEAD, pushed to the remote), and returns the release.
    /// Nothing is changed on any host, and nothing locally but
    /// remote-tracking refs.
    pub fn release_for(
        &self,
        spec: &RefSpec,
        env: &Environment,
        env_name: &str,
    ) -> Result<Release, GitError> {
        self.release_with(spec, env, env_name, false)
    }

    /// [`release_for`](Self::release_for), with the tag requirement
    /// overridden when `allow_untagged` (an explicit, logged decision).
    pub fn release_with(
        &self,
        spec: &RefSpec,
        env: &Environment,
        env_name: &str,
        allow_untagged: bool,
    ) -> Result<Release, GitError> {
        let effective = match spec {
            RefSpec::Default if env.require_tag => RefSpec::LatestTag,
            other => other.clone(),
        };
        let release = self.resolve(&effective, env)?;
        if env.require_tag && !allow_untagged {
            let tag = release
                .tag
                .as_deref()
                .filter(|t| env.version_pattern.matches(t));
            let Some(tag) = tag else {
                return Err(GitError::TagRequired {
                    environment: env_name.to_owned(),
                    pattern: env.version_pattern.as_str().to_owned(),
                    what: release.reference.clone(),
                });
            };
            // Protected tags live on the server: a tag made or moved in
            // this clone proves nothing.
            self.ensure_tag_on_remote(&env.remote, tag, &release.commit)?;
        }
        if effective == RefSpec::Head {
            self.ensure_clean()?;
        }
        self.ensure_pushed(&env.remote, &release.commit)?;
        Ok(release)
    }

    /// Resolves a spec to a commit, without policy checks.
    pub fn resolve(&self, spec: &RefSpec, env: &Environment) -> Result<Release, GitError> {
        let (reference, oid) = match spec {
            RefSpec::Default => {
                let name = env.branch.clone();
                let oid = self.lookup(&name, &env.remote)?;
                (name, oid)
            }
            RefSpec::Head => {
                let head = self.repo.head().map_err(g("HEAD"))?;
                let oid = head.peel_to_commit().map_err(g("HEAD"))?.id();
                ("HEAD".to_owned(), oid)
            }
            RefSpec::LatestTag => {
                let tag = self
                    .latest_tag(&env.version_pattern)?
                    .ok_or_else(|| GitError::NoReleaseTag(env.version_pattern.as_str().into()))?;
                let oid = self.lookup(&tag, &env.remote)?;
                (tag, oid)
            }
            RefSpec::Named(name) => (name.clone(), self.lookup(name, &env.remote)?),
        };
        let commit = oid.to_string();
        let tag = self.tag_at(oid, &reference, &env.version_pattern)?;
        let describe = match &tag {
            Some(t) => t.clone(),
            None => short(&commit).to_owned(),
        };
        Ok(Release {
            commit,
            tag,
            describe,
            reference,
        })
    }

    /// A tag name, branch, remote branch, or commit → the commit.
    fn lookup(&self, name: &str, remote: &str) -> Result<Oid, GitError> {
        let candidates = [
            format!("refs/tags/{name}"),
            format!("refs/heads/{name}"),
            format!("refs/remotes/{remote}/{name}"),
        ];
        for c in &candidates {
            if let Ok(r) = self.repo.find_reference(c)
                && let Ok(commit) = r.peel_to_commit()
            {
                return Ok(commit.id());
            }
        }
        self.repo
            .revparse_single(name)
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id())
            .map_err(|_| GitError::UnknownRef(name.to_owned()))
    }

    /// The release tag naming `oid`: the asked-for name if it is a tag,
    /// else the newest tag matching the pattern that points at it.
    fn tag_at(
        &self,
        oid: Oid,
        reference: &str,
        pattern: &VersionPattern,
    ) -> Result<Option<String>, GitError> {
        if let Ok(r) = self.repo.find_reference(&format!("refs/tags/{reference}"))
            && r.peel_to_commit().map(|c| c.id()).ok() == Some(oid)
        {
            return Ok(Some(reference.to_owned()));
        }
        let at: Vec<String> = self
            .tags()?
            .into_iter()
            .filter(|(name, target)| *target == oid && pattern.matches(name))
            .map(|(name, _)| name)
            .collect();
        // An rc and its release on one commit: the release names it.
        Ok(TagScheme::from_pattern(pattern)
            .newest(at.iter().map(String::as_str))
            .map(str::to_owned))
    }

    /// Every tag and the commit it names.
    fn tags(&self) -> Result<Vec<(String, Oid)>, GitError> {
        let names = self.repo.tag_names(None).map_err(g("list tags"))?;
        let mut out = Vec::new();
        for name in names.iter().filter_map(|n| n.ok().flatten()) {
            if let Ok(r) = self.repo.find_reference(&format!("refs/tags/{name}"))
                && let Ok(c) = r.peel_to_commit()
            {
                out.push((name.to_owned(), c.id()));
            }
        }
        Ok(out)
    }

    /// The newest tag matching `pattern`, by version (see
    /// [`TagScheme::newest`]; the scheme is the pattern's, see
    /// [`TagScheme::from_pattern`]).
    pub fn latest_tag(&self, pattern: &VersionPattern) -> Result<Option<String>, GitError> {
        let tags: Vec<String> = self
            .tags()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| pattern.matches(n))
            .collect();
        let scheme = TagScheme::from_pattern(pattern);
        Ok(scheme
            .newest(tags.iter().map(String::as_str))
            .map(str::to_owned))
    }

    /// Fails if tracked files have uncommitted changes (untracked files are
    /// not part of any commit, so they do not matter).
    pub fn ensure_clean(&self) -> Result<(), GitError> {
        let mut opts = StatusOptions::new();
        opts.include_untracked(false).include_ignored(false);
        let statuses = self
            .repo
            .statuses(Some(&mut opts))
            .map_err(g("working tree status"))?;
        let changed: Vec<String> = statuses
            .iter()
            .filter(|s| s.status() != git2::Status::CURRENT)
            .filter_map(|s| s.path().ok().map(str::to_owned))
            .collect();
        if changed.is_empty() {
            Ok(())
        } else {
            let mut list = changed
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if changed.len() > 3 {
                list.push_str(&format!(" and {} more", changed.len() - 3));
            }
            Err(GitError::Dirty(list))
        }
    }

    /// Runs the `git` program in the repository.
    fn git(&self, args: &[&str]) -> Result<String, GitError> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&self.dir)
            // Never wait for a password prompt nobody sees.
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(GitError::Spawn)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(GitError::Command {
                args: redact(&args.join(" ")),
                stderr: redact(String::from_utf8_lossy(&out.stderr).trim()),
            })
        }
    }

    /// Fails unless the remote's `refs/tags/<tag>` (peeled: an annotated
    /// tag's commit) is `commit`.
    pub fn ensure_tag_on_remote(
        &self,
        remote: &str,
        tag: &str,
        commit: &str,
    ) -> Result<(), GitError> {
        let name = format!("refs/tags/{tag}");
        let peeled = format!("{name}^{{}}");
        let refs = self.remote_refs(remote)?;
        // The peeled line (annotated tags) names the commit; a lightweight
        // tag has only its own line.
        let on_remote = refs
            .iter()
            .find(|(_, n)| *n == peeled)
            .or_else(|| refs.iter().find(|(_, n)| *n == name))
            .map(|(oid, _)| oid.to_string());
        match on_remote {
            None => Err(GitError::TagNotPushed {
                tag: tag.to_owned(),
                remote: remote.to_owned(),
            }),
            Some(c) if c == commit => Ok(()),
            Some(c) => Err(GitError::TagMoved {
                tag: tag.to_owned(),
                remote: remote.to_owned(),
                remote_commit: short(&c).to_owned(),
                local_commit: short(commit).to_owned(),
            }),
        }
    }

    /// What the remote has now (`git ls-remote`), tags peeled.
    fn remote_refs(&self, remote: &str) -> Result<Vec<(Oid, String)>, GitError> {
        let text = self.git(&["ls-remote", "--heads", "--tags", "--", remote])?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (oid, name) = l.split_once('\t')?;
                Some((Oid::from_str(oid).ok()?, name.to_owned()))
            })
            .collect())
    }

    /// Fails unless a branch or tag on the remote *now* (ls-remote, not
    /// stale remote-tracking refs) is the commit or contains it.
    pub fn ensure_pushed(&self, remote: &str, commit: &str) -> Result<(), GitError> {
        let oid = Oid::from_str(commit).map_err(g("commit id"))?;
        let not_pushed = || GitError::NotPushed {
            commit: short(commit).to_owned(),
            remote: remote.to_owned(),
        };
        let refs = self.remote_refs(remote)?;
        if refs.iter().any(|(o, _)| *o == oid) {
            return Ok(());
        }
        let contains = |tips: &[(Oid, String)]| -> (bool, bool) {
            let mut missing = false;
            for (tip, _) in tips {
                if self.repo.find_commit(*tip).is_err() {
                    missing = true;
                    continue;
                }
                // A commit is not its own descendant: equality was checked above.
                if self.repo.graph_descendant_of(*tip, oid).unwrap_or(false) {
                    return (true, missing);
                }
            }
            (false, missing)
        };
        match contains(&refs) {
            (true, _) => Ok(()),
            (false, false) => Err(not_pushed()),
            (false, true) => {
                // The remote has commits we have not seen; fetch them (only
                // remote-tracking refs and tags change) and look again.
                self.git(&["fetch", "--quiet", "--tags", "--", remote])?;
                match contains(&refs) {
                    (true, _) => Ok(()),
                    _ => Err(not_pushed()),
                }
            }
        }
    }

    /// The tag a bump would create (no change), spelt as the pattern's
    /// [`TagScheme`] says.
    pub fn next_tag(&self, bump: &Bump, pattern: &VersionPattern) -> Result<String, GitError> {
        let latest = match bump {
            Bump::Exact(_) => None,
            _ => self.latest_tag(pattern)?,
        };
        let name = bump.next_after(latest.as_deref(), &TagScheme::from_pattern(pattern))?;
        if !pattern.matches(&name) {
            return Err(GitError::BadTag {
                tag: name,
                pattern: pattern.as_str().to_owned(),
            });
        }
        Ok(name)
    }

    /// Creates the annotated (or, with `sign`, signed) tag `name` at
    /// `commit`. A tag that already names this commit is accepted as is.
    pub fn create_tag(
        &self,
        name: &str,
        commit: &str,
        message: &str,
        sign: bool,
    ) -> Result<NewTag, GitError> {
        let oid = Oid::from_str(commit).map_err(g("commit id"))?;
        if let Ok(r) = self.repo.find_reference(&format!("refs/tags/{name}")) {
            let existing = r.peel_to_commit().map_err(g("existing tag"))?.id();
            if existing == oid {
                return Ok(NewTag {
                    name: name.to_owned(),
                    commit: commit.to_owned(),
                    existed: true,
                });
            }
            return Err(GitError::TagExists {
                tag: name.to_owned(),
                existing: existing.to_string(),
                wanted: commit.to_owned(),
            });
        }
        if sign {
            // libgit2 cannot sign; git uses the developer's gpg/ssh signing setup.
            self.git(&["tag", "-s", "-m", message, name, commit])?;
        } else {
            let object = self.repo.find_object(oid, None).map_err(g("commit"))?;
            let signature = self
                .repo
                .signature()
                .map_err(g("tagger (set git config user.name and user.email)"))?;
            self.repo
                .tag(name, &object, &signature, message, false)
                .map_err(g(format!("create tag {name}")))?;
        }
        Ok(NewTag {
            name: name.to_owned(),
            commit: commit.to_owned(),
            existed: false,
        })
    }

    /// Pushes one tag and checks the remote's answer **for that ref**
    /// (libgit2 and a bare exit code can report success on a rejection).
    pub fn push_tag(&self, remote: &str, name: &str) -> Result<(), GitError> {
        let refspec = format!("refs/tags/{name}:refs/tags/{name}");
        let out = std::process::Command::new("git")
            .args(["push", "--porcelain", "--", remote, &refspec])
            .current_dir(&self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(GitError::Spawn)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let target = format!("refs/tags/{name}");
        let line = stdout.lines().find(|l| {
            l.split('\t')
                .nth(1)
                .and_then(|r| r.split_once(':'))
                .is_some_and(|(_, to)| to == target)
        });
        match line {
            Some(l) if !l.starts_with('!') && out.status.success() => Ok(()),
            Some(l) => Err(GitError::PushRejected {
                remote: remote.to_owned(),
                reference: target,
                reason: l.split('\t').nth(2).unwrap_or(&stderr).to_owned(),
            }),
            None => Err(GitError::PushRejected {
                remote: remote.to_owned(),
                reference: target,
                reason: if stderr.is_empty() {
                    "no status for the ref".into()
                } else {
                    stderr
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(bump: Bump, latest: Option<&str>) -> Result<String, GitError> {
        bump.next_after(latest, &TagScheme::default())
    }

    #[test]
    fn bumps() {
        assert_eq!(next(Bump::Patch, Some("v1.2.3")).unwrap(), "v1.2.4");
        assert_eq!(next(Bump::Minor, Some("v1.2.3")).unwrap(), "v1.3.0");
        assert_eq!(next(Bump::Major, Some("v1.2.3")).unwrap(), "v2.0.0");
        assert_eq!(next(Bump::Patch, None).unwrap(), "v0.0.1");
        assert_eq!(next(Bump::Exact("v9.9.9".into()), None).unwrap(), "v9.9.9");
        assert!(next(Bump::Patch, Some("release-7")).is_err());
        // Build metadata is not part of the next version.
        assert_eq!(next(Bump::Patch, Some("v1.2.3+ci.7")).unwrap(), "v1.2.4");
    }

    #[test]
    fn a_bump_after_a_release_candidate_releases_it() {
        assert_eq!(next(Bump::Patch, Some("v1.2.3-rc.1")).unwrap(), "v1.2.3");
        assert_eq!(next(Bump::Minor, Some("v1.3.0-rc.2")).unwrap(), "v1.3.0");
        assert_eq!(next(Bump::Minor, Some("v1.2.3-rc.1")).unwrap(), "v1.3.0");
        assert_eq!(next(Bump::Major, Some("v2.0.0-beta")).unwrap(), "v2.0.0");
        assert_eq!(next(Bump::Major, Some("v1.2.0-rc.1")).unwrap(), "v2.0.0");
    }

    #[test]
    fn pre_releases_sort_before_their_release_and_numbers_numerically() {
        let s = TagScheme::default();
        let newest = |tags: &[&'static str]| s.newest(tags.iter().copied());
        assert_eq!(newest(&["v1.2.3", "v1.2.3-rc.1"]), Some("v1.2.3"));
        assert_eq!(
            newest(&["v1.2.3-rc.2", "v1.2.3-rc.10"]),
            Some("v1.2.3-rc.10")
        );
        assert_eq!(newest(&["v1.2.2", "v1.2.3-rc.1"]), Some("v1.2.3-rc.1"));
        assert_eq!(
            newest(&["v1.10.0", "v1.9.3", "v1.2.0", "v2.0.0-alpha"]),
            Some("v2.0.0-alpha")
        );
        // What is not a version of the scheme loses to what is.
        assert_eq!(newest(&["v9", "v1.0.0"]), Some("v1.0.0"));
        assert_eq!(newest(&["release-9", "release-10"]), Some("release-10"));
        assert_eq!(newest(&[]), None);
    }

    #[test]
    fn leading_zeros_are_not_versions() {
        let s = TagScheme::default();
        assert!(s.version("v1.02.3").is_none());
        assert!(s.version("v01.2.3").is_none());
        assert!(s.version("v1.2.3-rc.01").is_none());
        assert!(matches!(
            next(Bump::Patch, Some("v1.02.3")),
            Err(GitError::NotSemver(_))
        ));
        let e = next(Bump::Exact("v1.02.3".into()), None).unwrap_err();
        assert!(matches!(e, GitError::InvalidVersion { .. }), "{e}");
        assert!(e.is_input_error());
        // Not version-like for the scheme: left to the version pattern.
        assert_eq!(
            next(Bump::Exact("hotfix-1".into()), None).unwrap(),
            "hotfix-1"
        );
    }

    #[test]
    fn the_prefix_is_configurable_and_follows_the_version_pattern() {
        let release = TagScheme::new("release-");
        assert_eq!(
            Bump::Minor
                .next_after(Some("release-1.2.3"), &release)
                .unwrap(),
            "release-1.3.0"
        );
        assert_eq!(
            Bump::Patch.next_after(None, &TagScheme::new("")).unwrap(),
            "0.0.1"
        );
        let scheme = |p: &str| TagScheme::from_pattern(&VersionPattern::new(p).unwrap()).prefix;
        assert_eq!(scheme(r"^v\d+\.\d+\.\d+$"), "v");
        assert_eq!(scheme(r"^release-\d+\.\d+\.\d+$"), "release-");
        assert_eq!(scheme(r"^app\.v\d+\.\d+\.\d+$"), "app.v");
        assert_eq!(scheme(r"^\d+\.\d+\.\d+$"), "");
        // Not anchored: the default; what is optional or a choice is not
        // part of the prefix (a tag that then misses the pattern is
        // refused by `next_tag`, never made).
        assert_eq!(scheme(r"v\d+\.\d+\.\d+$"), "v");
        assert_eq!(scheme(r"^v?\d+\.\d+\.\d+$"), "");
        assert_eq!(scheme(r"^(v|release-)\d+"), "");
    }

    #[test]
    fn credentials_in_urls_are_refused_and_redacted() {
        for bad in [
            "https://ci:SECRET@git.example.com/app.git",
            "https://SECRET@github.com/acme/app.git",
            "HTTP://u:SECRET@h/x",
            "ssh://git:SECRET@host/app.git",
        ] {
            let e = check_repository_url(bad).unwrap_err();
            assert!(!e.contains("SECRET"), "{e}");
            assert!(e.contains("***@"), "{e}");
        }
        for good in [
            "git@github.com:acme/app.git",
            "ssh://git@host:2222/srv/app.git",
            "https://github.com/acme/app.git",
            "/srv/git/app.git",
            "file:///srv/git/app.git",
        ] {
            check_repository_url(good).unwrap();
        }
        assert!(check_repository_url("--upload-pack=x").is_err());
        let text = "fatal: unable to access 'https://u:SECRET@h.example/a.git/': x; see https://SECRET@h/b and ssh://git@h/c";
        let r = redact(text);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(r.contains("'https://***@h.example/a.git/'"), "{r}");
        assert!(r.contains("ssh://git@h/c"), "{r}");
        assert_eq!(
            redact("no urls, ünïcode :// @ here"),
            "no urls, ünïcode :// @ here"
        );
    }

    proptest::proptest! {
        #[test]
        fn redact_never_panics_and_never_keeps_a_password(
            prefix in "\\PC{0,20}",
            user in "[a-z]{1,8}",
            secret in "[A-Za-z0-9]{8,20}",
            suffix in "\\PC{0,20}",
        ) {
            let text = format!("{prefix}https://{user}:{secret}@host.example/x {suffix}");
            let r = redact(&text);
            let secret_part = format!(":{secret}@");
            proptest::prop_assert!(!r.contains(&secret_part));
        }

        #[test]
        fn redact_never_panics(text in "\\PC{0,200}") {
            let _ = redact(&text);
            let _ = check_repository_url(&text);
        }
    }

    #[test]
    fn refspecs() {
        assert_eq!(RefSpec::parse("HEAD"), RefSpec::Head);
        assert_eq!(RefSpec::parse("latest-tag"), RefSpec::LatestTag);
        assert_eq!(RefSpec::parse("v1.0.0"), RefSpec::Named("v1.0.0".into()));
    }

    /// L9: a remote name that starts with `-` (a config value) is a
    /// repository git cannot find, never an option: `--upload-pack` and
    /// `--receive-pack` would otherwise run a command of its choosing.
    #[test]
    fn a_remote_that_looks_like_an_option_is_never_one() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        git(&["init", "--quiet"]);
        git(&["commit", "--quiet", "--allow-empty", "-m", "one"]);
        git(&["tag", "v1"]);
        // With a default remote, an option-looking "remote" would make git
        // run the command against it.
        git(&["init", "--quiet", "--bare", "origin.git"]);
        git(&["remote", "add", "origin", "origin.git"]);
        git(&["push", "--quiet", "origin", "HEAD:refs/heads/main", "v1"]);
        let commit = git(&["rev-parse", "HEAD"]);
        let repo = LocalRepo::open(dir.path()).unwrap();
        let marker = dir.path().join("ran");
        for option in ["--upload-pack", "--receive-pack", "--exec"] {
            let remote = format!("{option}=touch {}; false", marker.display());
            assert!(repo.ensure_tag_on_remote(&remote, "v1", &commit).is_err());
            assert!(repo.ensure_pushed(&remote, &commit).is_err());
            assert!(repo.push_tag(&remote, "v1").is_err());
            assert!(!marker.exists(), "{remote} ran");
        }
    }
}
