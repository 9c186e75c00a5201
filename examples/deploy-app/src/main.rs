//! A starting "fabfile" for deploys: one web app, its environments written
//! in Rust instead of a config file, and the team's own conventions (a
//! virtualenv per release, migrations once, a systemd restart, a health
//! URL, a notifier that appends to a file the team's chat bot tails).
//!
//! Copy this crate, rename it, and change `environment()` and the hooks.
//! Everything else (lock, atomic switch, rollback on failure, release log)
//! is deploykit's.
//!
//! ```text
//! cargo run -p deploy-app -- staging deploy [REF]
//! cargo run -p deploy-app -- production deploy v1.4.2
//! cargo run -p deploy-app -- production rollback
//! cargo run -p deploy-app -- staging releases
//! ```
//!
//! Hosts come from `DEPLOY_APP_<ENV>_HOSTS` (`user@host:port,…`; default:
//! `localhost`) and the deploy root from `DEPLOY_APP_ROOT` (default
//! `/srv/app`), so it runs against the test bench too.

use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use deploykit::git::LocalRepo;
use deploykit::notify::NotifyError;
use deploykit::{Deployer, Environment, HealthCheck, Hook, Host, Notification, Notifier, RefSpec};
use ec2kit::{LocalRemote, Remote, SshOptions, SshRemote, SshTarget};

/// Our environments.
fn environment(name: &str) -> Option<Environment> {
    let hosts = std::env::var(format!("DEPLOY_APP_{}_HOSTS", name.to_uppercase()))
        .unwrap_or_else(|_| "localhost".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let root = std::env::var("DEPLOY_APP_ROOT").unwrap_or_else(|_| "/srv/app".into());
    let mut env = Environment::new(hosts, &root).ok()?;
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
    match name {
        "staging" => {}
        "production" => {
            env.require_tag = true;
            env.keep = 10;
            env.health = Some(HealthCheck::http("http://127.0.0.1:8000/up"));
        }
        _ => return None,
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

fn hosts(env: &Environment) -> Result<Vec<Host>, String> {
    let options = SshOptions::from_home();
    env.hosts
        .iter()
        .map(|h| {
            let remote: Arc<dyn Remote> = if h == "localhost" {
                Arc::new(LocalRemote::new())
            } else {
                let target = SshTarget::parse_with_user(h, "deploy").map_err(|e| e.to_string())?;
                Arc::new(SshRemote::new(target, options.clone()))
            };
            Ok(Host::new(remote, env.path.as_str()))
        })
        .collect()
}

async fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (name, verb) = match args {
        [name, verb, ..] => (name.as_str(), verb.as_str()),
        _ => return Err("usage: deploy-app ENV deploy|rollback|releases [REF]".into()),
    };
    let env = environment(name).ok_or_else(|| format!("unknown environment {name}"))?;
    let repo = LocalRepo::open(".")?;
    // Ctrl-C takes the failure path (hosts switched back, locks released).
    let interrupt = ec2kit::CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let deployer = Deployer::new(name, env.clone(), hosts(&env)?)
        .cancel_on(interrupt)
        .repository(repo.remote_url(&env.remote)?)
        .notifier(Arc::new(FileNotifier("deploys.log".into())))
        .on_event(|e| eprintln!("  {e}"));
    match verb {
        "deploy" => {
            let spec = RefSpec::parse(args.get(2).map_or("", String::as_str));
            let release = repo.release_for(&spec, &env, name)?;
            let report = deployer.deploy(&release).await?;
            println!(
                "{} is live on {name} ({:.1}s)",
                report.release.describe, report.seconds
            );
        }
        "rollback" => {
            let report = deployer.rollback(args.get(2).map(String::as_str)).await?;
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
