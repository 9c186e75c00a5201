//! The example, built and run as a team runs it, against the test bench:
//! a real git origin, the bench's sshd hosts listed by name, and the same
//! hosts found by EC2 tag through moto (which gives an instance any
//! private address, so `127.0.0.1` makes it a bench host).

// A test fails loudly at the first broken step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ec2kit::requests::RunInstances;
use ec2kit::{AwsEc2, AwsEc2Options, Ec2, RateLimits, Region, Tags};
use ektool_tests::{SshHost, git, moto_url, ssh_host, tempdir, unique};

/// A clone of a fresh origin, a home whose `~/.ssh` reaches the bench's
/// hosts, and a deploy root of its own on them.
struct App {
    _dir: tempfile::TempDir,
    work: PathBuf,
    home: PathBuf,
    name: String,
    hosts: Vec<SshHost>,
}

impl App {
    fn new() -> Self {
        let dir = tempdir();
        let work = ektool_tests::origin_and_clone(dir.path());
        let hosts = vec![ssh_host(1), ssh_host(2)];
        let home = dir.path().join("home");
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::copy(&hosts[0].client_key, ssh.join("id_ed25519")).unwrap();
        let known: String = hosts.iter().map(|h| h.known_hosts_line() + "\n").collect();
        std::fs::write(ssh.join("known_hosts"), known).unwrap();
        std::fs::write(work.join(".gitignore"), "deploys.log\n").unwrap();
        Self {
            _dir: dir,
            work,
            home,
            name: unique("deploy-app"),
            hosts,
        }
    }

    fn commit(&self, content: &str) -> String {
        std::fs::write(self.work.join("app.txt"), format!("{content}\n")).unwrap();
        git(&self.work, &["add", "app.txt", ".gitignore"]);
        git(&self.work, &["commit", "--quiet", "-m", content]);
        git(&self.work, &["push", "--quiet", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// `deploy-app ARGS` in the clone, with the bench's settings and `env`.
    fn run(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-app"))
            .args(args)
            .current_dir(&self.work)
            .env("HOME", &self.home)
            .env_remove("SSH_AUTH_SOCK")
            .env(
                "DEPLOY_APP_ROOT",
                format!("{}/{}", SshHost::MOUNT, self.name),
            )
            .env("DEPLOY_APP_SSH_USER", &self.hosts[0].user)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .output()
            .unwrap();
        eprintln!(
            "deploy-app {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn live(&self, i: usize) -> Option<String> {
        let path = self.hosts[i].local_path(&format!("{}/current/REVISION", self.name));
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = std::fs::remove_dir_all(h.local_path(&self.name));
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn log(work: &Path) -> String {
    std::fs::read_to_string(work.join("deploys.log")).unwrap_or_default()
}

#[test]
fn listed_hosts_are_deployed_narrowed_and_rolled_back() {
    let app = App::new();
    let listed = app
        .hosts
        .iter()
        .map(SshHost::target)
        .collect::<Vec<_>>()
        .join(",");
    let env = [("DEPLOY_APP_STAGING_HOSTS", listed)];
    let c1 = app.commit("one");
    let out = app.run(&env, &["staging", "deploy"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("is live on staging"));
    assert_eq!(app.live(0).as_deref(), Some(c1.as_str()));
    assert_eq!(app.live(1).as_deref(), Some(c1.as_str()));
    assert!(log(&app.work).contains("staging"), "{}", log(&app.work));

    // --host narrows to one of the environment's hosts...
    let c2 = app.commit("two");
    let second = app.hosts[1].target();
    let out = app.run(&env, &["staging", "deploy", "--host", &second]);
    assert!(out.status.success());
    assert_eq!(app.live(0).as_deref(), Some(c1.as_str()));
    assert_eq!(app.live(1).as_deref(), Some(c2.as_str()));
    // ...and refuses a host that is none of them, touching nothing.
    let out = app.run(&env, &["staging", "deploy", "--host", "web9.example.com"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("web9.example.com is not a host"),
        "{out:?}"
    );
    assert_eq!(app.live(1).as_deref(), Some(c2.as_str()));

    let out = app.run(&env, &["staging", "releases"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains(&c2[..12]), "{}", stdout(&out));

    let out = app.run(&env, &["staging", "rollback", "--host", &second]);
    assert!(out.status.success());
    assert_eq!(app.live(1).as_deref(), Some(c1.as_str()));
}

/// Launches one instance tagged `Role=role` at private address `ip`.
async fn launch_at(ec2: &AwsEc2, region: &Region, ip: &str, role: &str) {
    let request = RunInstances {
        image_id: Some("ami-0123456789abcdef0".parse().unwrap()),
        instance_type: "t3.micro".into(),
        count: 1,
        private_ip: Some(ip.parse().unwrap()),
        tags: Tags::from_iter([("Role".to_owned(), role.to_owned())]),
        ..Default::default()
    };
    ec2.run_instances(region, &request).await.unwrap();
}

#[test]
fn hosts_found_by_ec2_tag_are_deployed_to() {
    let role = unique("app");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ec2 = AwsEc2::new(AwsEc2Options {
            endpoint_url: Some(moto_url()),
            home_region: Some("us-east-1".into()),
            rate_limits: Some(RateLimits::disabled()),
            ..Default::default()
        })
        .await;
        let region = Region::new("us-gov-west-1");
        launch_at(&ec2, &region, "127.0.0.1", &role).await;
        launch_at(&ec2, &region, "127.0.0.3", &unique("other")).await;
    });

    let app = App::new();
    let c = app.commit("tagged");
    let env = [
        ("DEPLOY_APP_STAGING_HOSTS", String::new()),
        ("DEPLOY_APP_STAGING_TAG", format!("Role={role}")),
        ("DEPLOY_APP_REGION", "us-gov-west-1".to_owned()),
        ("DEPLOY_APP_SSH_PORT", app.hosts[0].port.to_string()),
        ("AWS_ENDPOINT_URL_EC2", moto_url()),
    ];
    let out = app.run(&env, &["staging", "deploy"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("is live on staging"));
    assert_eq!(app.live(0).as_deref(), Some(c.as_str()));
    assert_eq!(app.live(1), None, "the second bench host is not tagged");
}
