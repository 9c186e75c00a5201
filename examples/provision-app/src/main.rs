//! A starting "fabfile" for provisioning: the team's environments and
//! developers written in Rust, its Salt tree beside it, and deploykit's
//! provision run doing the rest — every host locked and planned before any
//! is changed (users, lock-outs, secrets, tree links), the secrets
//! overwrite confirmed at the terminal, then host by host.
//!
//! Copy this crate, rename it, and change `environment()` and
//! `developers()`. The tree (`provision/` by default) has the layout of
//! `examples/provision-tree`.
//!
//! ```text
//! cargo run -p provision-app -- staging --dry-run
//! cargo run -p provision-app -- staging
//! cargo run -p provision-app -- production --host 10.0.1.12 --yes
//! ```
//!
//! Staging is a list of hosts; production is every running instance
//! tagged `Role=app-production` in `eu-west-1`. `--host` narrows an
//! environment to some of its hosts and refuses any other. Host keys must
//! already be known (`~/.ssh/known_hosts`): this tool never trusts a new
//! host by itself (`ektool provision --trust-host-key` does, interactively).
//!
//! So that it runs against the test bench too, the environment can say
//! otherwise: `PROVISION_APP_<ENV>_HOSTS` (`user@host:port,…`),
//! `PROVISION_APP_TREE`, `PROVISION_APP_ROOT` (the provision files on the
//! host), `PROVISION_APP_DEPLOY_ROOT`, `PROVISION_APP_SALT_CALL`,
//! `PROVISION_APP_USERS_ROOT` and `PROVISION_APP_SSH_USER` (default
//! `root`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit::environment::HostSource;
use deploykit::provision::{self, Developer, Event, HostPlan, Inputs, LockSpec, Node};
use deploykit::{Actor, Environment, ProvisionConfig, hosts};
use ec2kit::{Address, AwsEc2, AwsEc2Options, Ec2, HostTarget, SshOptions, SshRemote};

/// `PROVISION_APP_<ENV>_<KEY>`, else `PROVISION_APP_<KEY>`, when set.
fn setting(env: &str, key: &str) -> Option<String> {
    std::env::var(format!("PROVISION_APP_{}_{key}", env.to_uppercase()))
        .or_else(|_| std::env::var(format!("PROVISION_APP_{key}")))
        .ok()
}

/// Who may log in to our servers: accounts, groups and keys are kept in
/// step with this list; a developer taken off it loses every key.
fn developers() -> Vec<Developer> {
    vec![Developer {
        name: "alice".into(),
        groups: vec!["login".into()],
        keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAliceAliceAliceAliceAlice alice@laptop".into(),
        ],
    }]
}

/// Our environments.
fn environment(name: &str) -> Option<Environment> {
    let (hosts, tag) = match name {
        "staging" => ("staging1.example.com", None),
        "production" => ("", Some("Role=app-production")),
        _ => return None,
    };
    let hosts = setting(name, "HOSTS")
        .unwrap_or_else(|| hosts.to_owned())
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    let deploy_root = setting(name, "DEPLOY_ROOT").unwrap_or_else(|| "/srv/app".into());
    let mut env = Environment::new(hosts, &deploy_root).ok()?;
    env.ec2 = tag.map(|tag| HostSource {
        tag: tag.to_owned(),
        region: "eu-west-1".into(),
        user: None,
        port: 22,
        address: Address::PrivateIp,
        roles: Vec::new(),
    });
    let defaults = ProvisionConfig::default();
    env.provision = Some(ProvisionConfig {
        tree: setting(name, "TREE").map_or_else(|| PathBuf::from("provision"), PathBuf::from),
        path: setting(name, "ROOT").unwrap_or(defaults.path),
        salt_call: setting(name, "SALT_CALL").unwrap_or(defaults.salt_call),
        users_root: setting(name, "USERS_ROOT").unwrap_or(defaults.users_root),
        users: developers(),
        ..ProvisionConfig::default()
    });
    Some(env)
}

/// One host to provision, logged in, its login key known (so the users
/// step never takes it away).
async fn node(target: &HostTarget, options: &SshOptions) -> Result<Node, ec2kit::RemoteError> {
    let HostTarget::Ssh(t) = target else {
        return Ok(Node::new(
            ec2kit::connect(target, options),
            Actor::current().user,
        ));
    };
    let remote = SshRemote::new(t.clone(), options.clone());
    let key = remote.authenticated_key().await?;
    Ok(Node::new(Arc::new(remote), &t.user).login_key(key.map(|k| k.authorized_keys_line())))
}

/// Asks at the terminal; anything but `y` is a no.
fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).is_ok() && answer.trim() == "y"
}

async fn run(args: &[String]) -> Result<bool, Box<dyn std::error::Error>> {
    let mut only = Vec::new();
    let (mut dry_run, mut yes, mut name) = (false, false, None);
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--host" => only.push(rest.next().ok_or("--host needs a host name")?.clone()),
            "--dry-run" => dry_run = true,
            "--yes" => yes = true,
            other if name.is_none() => name = Some(other.to_owned()),
            other => return Err(format!("unexpected argument {other}").into()),
        }
    }
    let name = name.ok_or("usage: provision-app ENV [--dry-run] [--yes] [--host NAME]...")?;
    let env = environment(&name).ok_or_else(|| format!("unknown environment {name}"))?;
    let cfg = env.provision.clone().unwrap_or_default();
    cfg.validate()?;
    let lock = LockSpec::for_environment(&name, &env, Duration::from_secs(60));
    let inputs = Inputs::read(&name, &cfg, lock)?;

    let ec2 = match &env.ec2 {
        Some(_) => Some(AwsEc2::new(AwsEc2Options::default()).await),
        None => None,
    };
    let user = setting(&name, "SSH_USER").unwrap_or_else(|| "root".into());
    let targets = hosts::resolve(&env, ec2.as_ref().map(|e| e as &dyn Ec2), &user, &only).await?;
    let options = SshOptions::from_home();
    let mut nodes = Vec::with_capacity(targets.len());
    for t in &targets {
        nodes.push(node(t, &options).await?);
    }

    let on_event = |e: &Event| eprintln!("  {e}");
    let report = if dry_run {
        provision::dry_run(&nodes, &cfg, &inputs, &on_event).await?
    } else {
        let confirm = |plan: &HostPlan| {
            yes || ask(&format!(
                "{}: overwrite its secrets with the local file?",
                plan.host
            ))
        };
        provision::run(&nodes, &cfg, &inputs, &confirm, &on_event).await?
    };
    for h in &report.hosts {
        println!("{} ({}):", h.host, h.report.provisioner);
        for state in &h.report.states {
            println!("  {state}");
        }
    }
    let failures = report.failures();
    for (host, state) in &failures {
        eprintln!("error: {host}: {state}");
    }
    Ok(failures.is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
