//! A real git origin, a developer's clone, and deploy roots on the bench's
//! sshd hosts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploykit::environment::LayoutKind;
use deploykit::{Deployer, Environment, Event, Host, Release};
use ec2kit::{Remote, SshOptions, SshRemote, SshTarget};
pub(crate) use ektool_tests::git;
use ektool_tests::{SshHost, ssh_host, tempdir, unique};

/// An SSH remote to bench host `n` trusting its key via `known_hosts`.
pub(crate) fn ssh_remote(n: usize, known_hosts_dir: &Path) -> Arc<SshRemote> {
    let host = ssh_host(n);
    let kh = known_hosts_dir.join(format!("known_hosts_{n}"));
    std::fs::write(&kh, format!("{}\n", host.known_hosts_line())).unwrap();
    Arc::new(SshRemote::new(
        SshTarget::parse_with_user(&host.target(), "unused").unwrap(),
        SshOptions {
            identity_files: vec![host.client_key.clone()],
            use_agent: false,
            known_hosts: kh,
            connect_timeout: Duration::from_secs(10),
        },
    ))
}

/// The repositories and the hosts of one test.
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub origin: PathBuf,
    pub work: PathBuf,
    /// This test's directory name under every host's private mount.
    pub name: String,
    pub bench: Vec<SshHost>,
    pub remotes: Vec<Arc<dyn Remote>>,
    pub events: Arc<Mutex<Vec<Event>>>,
}

impl Fixture {
    /// An origin with one pushed commit, a clone, and `hosts` bench hosts.
    pub(crate) fn new(hosts: usize) -> Self {
        let dir = tempdir();
        let origin = dir.path().join("origin.git");
        let work = dir.path().join("work");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
        );
        git(
            dir.path(),
            &["clone", "--quiet", origin.to_str().unwrap(), "work"],
        );
        git(&work, &["checkout", "--quiet", "-b", "main"]);
        git(&work, &["config", "user.name", "Dev"]);
        git(&work, &["config", "user.email", "dev@example.com"]);
        let bench: Vec<SshHost> = (1..=hosts).map(ssh_host).collect();
        let remotes = (1..=hosts)
            .map(|n| ssh_remote(n, dir.path()) as Arc<dyn Remote>)
            .collect();
        let f = Self {
            dir,
            origin,
            work,
            name: unique("deploy"),
            bench,
            remotes,
            events: Arc::default(),
        };
        f.commit("v1");
        f
    }

    /// Commits `app.txt = content` and pushes it. Returns the commit id.
    pub(crate) fn commit(&self, content: &str) -> String {
        let sha = self.commit_local(content);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        sha
    }

    /// Commits and pushes one file.
    pub(crate) fn commit_file(&self, path: &str, content: &str) -> String {
        std::fs::write(self.work.join(path), content).unwrap();
        git(&self.work, &["add", path]);
        git(&self.work, &["commit", "--quiet", "-m", path]);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Commits without pushing.
    pub(crate) fn commit_local(&self, content: &str) -> String {
        std::fs::write(self.work.join("app.txt"), format!("{content}\n")).unwrap();
        git(&self.work, &["add", "app.txt"]);
        git(&self.work, &["commit", "--quiet", "-m", content]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Tags HEAD (annotated) and pushes the tag.
    pub(crate) fn tag(&self, name: &str) {
        git(&self.work, &["tag", "-a", "-m", name, name]);
        git(&self.work, &["push", "--quiet", "origin", name]);
    }

    /// The deploy root as the hosts see it.
    pub(crate) fn root(&self) -> String {
        format!("{}/{}", SshHost::MOUNT, self.name)
    }

    /// A path inside host `i`'s (0-based) deploy root, as this machine sees it.
    pub(crate) fn local(&self, i: usize, rel: &str) -> PathBuf {
        self.bench[i].local_path(&format!("{}/{rel}", self.name))
    }

    /// deploykit hosts for every bench host.
    pub(crate) fn hosts(&self) -> Vec<Host> {
        self.remotes
            .iter()
            .enumerate()
            .map(|(i, r)| Host::new(r.clone(), self.root()).named(format!("h{}", i + 1)))
            .collect()
    }

    /// An environment fetching from the origin, with a build hook that
    /// records its variables.
    pub(crate) fn env(&self, layout: LayoutKind) -> Environment {
        let mut env = Environment::new(Vec::new(), &self.root()).unwrap();
        env.layout = layout;
        env.repository = Some(self.origin.display().to_string());
        env.shared_dirs = vec![deploykit::environment::SharedPath::new("log").unwrap()];
        env.hooks.build = vec![deploykit::Hook::new(
            "printf '%s %s %s %s\\n' \"$RELEASE\" \"$COMMIT\" \"$ENVIRONMENT\" \"$PREVIOUS_RELEASE\" > built.txt",
        )];
        env
    }

    /// A deployer on every host, recording events.
    pub(crate) fn deployer(&self, env: Environment) -> Deployer {
        self.deployer_on(env, self.hosts())
    }

    /// A deployer on the given hosts, recording events.
    pub(crate) fn deployer_on(&self, env: Environment, hosts: Vec<Host>) -> Deployer {
        let events = self.events.clone();
        Deployer::new("staging", env, hosts).on_event(move |e| {
            events.lock().unwrap().push(e.clone());
        })
    }

    /// The release `current` points at on host `i`, read from the link.
    pub(crate) fn current(&self, i: usize) -> Option<String> {
        let target = std::fs::read_link(self.local(i, "current")).ok()?;
        let t = target.to_str().unwrap().to_owned();
        assert!(
            t.starts_with("releases/"),
            "link target {t} is not relative"
        );
        Some(t.trim_start_matches("releases/").to_owned())
    }

    /// The commit live on host `i` (REVISION through `current`).
    pub(crate) fn live_commit(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.local(i, "current/REVISION"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Panics unless `current` on every host is absent or points at a
    /// complete release.
    pub(crate) fn assert_current_complete(&self, context: &str) {
        for i in 0..self.bench.len() {
            if let Some(name) = self.current(i) {
                assert!(
                    self.local(i, &format!("releases/{name}/.ektool-release"))
                        .is_file(),
                    "{context}: h{} current -> releases/{name}, which is not complete",
                    i + 1
                );
            }
        }
    }

    /// The release log of host `i`.
    pub(crate) fn log(&self, i: usize) -> Vec<deploykit::LogEntry> {
        deploykit::log::parse(
            &std::fs::read_to_string(self.local(i, ".ektool/releases.jsonl")).unwrap_or_default(),
        )
    }

    /// The recorded events, drained.
    pub(crate) fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// The release for a pushed commit.
    pub(crate) fn release(&self, commit: &str) -> Release {
        Release::commit(commit)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for i in 0..self.bench.len() {
            let _ = std::fs::remove_dir_all(self.local(i, ""));
        }
    }
}

/// `git daemon` serving the repositories under a directory over `git://`
/// on a loopback port, stopped on drop: a network origin whose relative
/// submodule URLs hosts fetch like any other remote.
pub(crate) struct GitDaemon {
    child: std::process::Child,
    /// `git://127.0.0.1:<port>`.
    pub url: String,
}

impl GitDaemon {
    pub(crate) fn serve(base: &Path) -> Self {
        // The daemon binary itself, not `git daemon`: killing the `git`
        // wrapper would leave the daemon running (holding whatever it
        // inherited).
        let exec_path = git(base, &["--exec-path"]);
        // A free port may be taken again before the daemon binds it: the
        // daemon then exits, and another port is tried.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
                .arg("--export-all")
                .arg("--reuseaddr")
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start git daemon");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Answered: ours, unless ours is about to exit.
                    std::thread::sleep(Duration::from_millis(50));
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                    return Self {
                        child,
                        url: format!("git://127.0.0.1:{port}"),
                    };
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "git daemon did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("git daemon could not bind a port")
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
