//! A starting "fabfile" for deploys: one web app, its environments written
//! in Rust instead of a config file, and the team's own conventions (a
//! virtualenv per release, migrations once, a systemd restart, a health
//! URL, a notifier that appends to a file the team's chat bot tails).
//!
//! Copy this crate, rename it, and change `environment()` and the hooks.
//! Everything else (which hosts, lock, atomic switch, rollback on failure,
//! release log) is deploykit's.
//!
//! ```text
//! cargo run -p deploy-app -- staging deploy [REF]
//! cargo run -p deploy-app -- production deploy v1.4.2
//! cargo run -p deploy-app -- production rollback
//! cargo run -p deploy-app -- staging releases
//! cargo run -p deploy-app -- staging deploy main --host web2.example.com
//! ```
//!
//! Staging is a list of hosts; production is every running instance
//! tagged `Role=app-production` in `eu-west-1` (hosts by EC2 tag, through
//! the AWS SDK's usual credentials and `AWS_ENDPOINT_URL_EC2`). `--host`
//! narrows an environment to some of its hosts and refuses any other.
//!
//! So that it runs against the test bench too, the environment can say
//! otherwise: `DEPLOY_APP_<ENV>_HOSTS` (`user@host:port,…`, empty for
//! none), `DEPLOY_APP_<ENV>_TAG` (`Key=Value`), `DEPLOY_APP_REGION`,
//! `DEPLOY_APP_SSH_USER` (default `deploy`), `DEPLOY_APP_SSH_PORT` and
//! `DEPLOY_APP_ROOT` (default `/srv/app`). SSH keys and known hosts are
//! the user's own (`~/.ssh`).

use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use deploykit::environment::HostSource;
use deploykit::git::LocalRepo;
use deploykit::notify::NotifyError;
use deploykit::{Deployer, Environment, HealthCheck, Hook, Notification, Notifier, RefSpec, hosts};
use ec2kit::{Address, AwsEc2, AwsEc2Options, Ec2, SshOptions};

/// `DEPLOY_APP_<ENV>_<KEY>`, else `DEPLOY_APP_<KEY>`, when set.
fn setting(env: &str, key: &str) -> Option<String> {
    std::env::var(format!("DEPLOY_APP_{}_{key}", env.to_uppercase()))
        .or_else(|_| std::env::var(format!("DEPLOY_APP_{key}")))
        .ok()
}

/// Our environments.
fn environment(name: &str) -> Option<Environment> {
    // Where each environment's hosts are: a list, EC2 instances by tag, or both.
    let (hosts, tag) = match name {
        "staging" => ("localhost", None),
        "production" => ("", Some("Role=app-production")),
        _ => return None,
    };
    let hosts = setting(name, "HOSTS").unwrap_or_else(|| hosts.to_owned());
    let hosts = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    let root = setting(name, "ROOT").unwrap_or_else(|| "/srv/app".into());
    let mut env = Environment::new(hosts, &root).ok()?;
    if let Some(tag) = setting(name, "TAG").or_else(|| tag.map(str::to_owned)) {
        env.ec2 = Some(HostSource {
            tag,
            region: setting(name, "REGION").unwrap_or_else(|| "eu-west-1".into()),
            user: None,
            port: match setting(name, "SSH_PORT") {
                Some(p) => p.parse().ok()?,
                None => 22,
            },
            address: Address::PrivateIp,
            roles: Vec::new(),
        });
    }
    env.hooks.build = vec![Hook::new(
        "[ ! -f requirements.txt ] || { python3 -m venv env && env/bin/pip install -q -r requirements.txt; }",
    )];
    env.hooks.before_switch = vec![Hook::new(
        "[ ! -x ./manage.py ] || ./manage.py migrate --noinput",
    )];
    env.hooks.restart = vec![Hook::new(
        "! command -v systemctl >/dev/null || [ ! -f /etc/systemd/system/app.service ] || sudo systemctl restart app",
    )];
    env.shared_dirs = vec![deploykit::environment::SharedPath::new("media").ok()?];
    if name == "production" {
        env.require_tag = true;
        env.keep = 10;
        env.health = Some(HealthCheck::http("http://127.0.0.1:8000/up"));
    }
    Some(env)
}

/// Appends each notification to a file (here stderr-like: ./deploys.log).
#[derive(Debug)]
struct FileNotifier(std::path::PathBuf);

#[async_trait]
impl Notifier for FileNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .and_then(|mut f| writeln!(f, "{}", n.text()))
            .map_err(|e| NotifyError::Transport(e.kind().to_string()))
    }
}

async fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    // `--host NAME` (repeatable) narrows; the rest is ENV VERB [REF].
    let mut only = Vec::new();
    let mut words = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if a == "--host" {
            only.push(rest.next().ok_or("--host needs a host name")?.clone());
        } else {
            words.push(a.as_str());
        }
    }
    let (name, verb, reference) = match words[..] {
        [name, verb] => (name, verb, None),
        [name, verb, reference] => (name, verb, Some(reference)),
        _ => {
            return Err(
                "usage: deploy-app ENV deploy|rollback|releases [REF] [--host NAME]...".into(),
            );
        }
    };
    let env = environment(name).ok_or_else(|| format!("unknown environment {name}"))?;
    // Hosts by EC2 tag need an EC2 client; a list of hosts does not.
    let ec2 = match &env.ec2 {
        Some(_) => Some(AwsEc2::new(AwsEc2Options::default()).await),
        None => None,
    };
    let user = setting(name, "SSH_USER").unwrap_or_else(|| "deploy".into());
    let targets = hosts::resolve(&env, ec2.as_ref().map(|e| e as &dyn Ec2), &user, &only).await?;
    let options = SshOptions::from_home();
    let hosts = hosts::connect(&env, &targets, |t| ec2kit::connect(t, &options));
    let repo = LocalRepo::open(".")?;
    // Ctrl-C takes the failure path (hosts switched back, locks released).
    let interrupt = ec2kit::CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let deployer = Deployer::new(name, env.clone(), hosts)
        .cancel_on(interrupt)
        .repository(repo.remote_url(&env.remote)?)
        .notifier(Arc::new(FileNotifier("deploys.log".into())))
        .on_event(|e| eprintln!("  {e}"));
    match verb {
        "deploy" => {
            let spec = RefSpec::parse(reference.unwrap_or_default());
            let release = repo.release_for(&spec, &env, name)?;
            let report = deployer.deploy(&release).await?;
            println!(
                "{} is live on {name} ({:.1}s)",
                report.release.describe, report.seconds
            );
        }
        "rollback" => {
            let report = deployer.rollback(reference).await?;
            for h in report.hosts {
                println!("{}: {} -> {}", h.host, h.from, h.to);
            }
        }
        "releases" => {
            for h in deployer.releases().await? {
                println!(
                    "{} (current {})",
                    h.host,
                    h.current.as_deref().unwrap_or("-")
                );
                for r in h.history.iter().take(5) {
                    let mark = if r.current {
                        "*"
                    } else if r.bad {
                        "x"
                    } else {
                        " "
                    };
                    println!(
                        " {mark} {} {} {}",
                        r.release,
                        deploykit::short_commit(&r.commit),
                        r.who
                    );
                }
            }
        }
        other => return Err(format!("unknown verb {other}").into()),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
