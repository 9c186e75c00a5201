//! Database chores: `pg_dump` from and `psql` into an environment's
//! PostgreSQL, through the host's shell.
//!
//! The seed wrote the dump to the project user's home on the server and
//! left it there (and did the same with every dump it loaded). Here the
//! dump travels over the SSH channel only — standard output out, standard
//! input in — so no copy is ever written on the server. Loading into a
//! protected environment (`production`, or `protected = true`) needs an
//! explicit override.

use std::time::Duration;

use ec2kit::{Command, Remote, RemoteError};
use serde::{Deserialize, Serialize};

use crate::shell::tail;

/// `[environments.<name>.database]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The database name.
    pub name: String,
    /// Run `pg_dump`/`psql` as this OS user on the host (e.g. `postgres`
    /// for peer authentication): `runuser` as root, `sudo -n` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// The server's host (default: the local socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The server's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The database role. Passwords belong in the host's `~/.pgpass`, never
    /// here or on a command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Refuse `db load` without an override (always on for an environment
    /// named `production`).
    #[serde(default)]
    pub protected: bool,
    /// Kill a dump or load after this long.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    3600
}

/// Why a database chore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The environment is protected and no override was given.
    #[error(
        "{env} is protected: loading would replace its database {name}; pass --allow-production if you really mean it"
    )]
    Protected {
        /// The environment.
        env: String,
        /// The database.
        name: String,
    },
    /// The host could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// `pg_dump` or `psql` failed.
    #[error("{host}: {tool} failed ({status}): {stderr}")]
    Failed {
        /// The host.
        host: String,
        /// Which tool.
        tool: &'static str,
        /// How it ended.
        status: ec2kit::remote::ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
}

impl DatabaseConfig {
    /// A database by name, defaults for the rest.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            run_as: None,
            host: None,
            port: None,
            user: None,
            protected: false,
            timeout_seconds: default_timeout(),
        }
    }

    /// Whether loading into environment `env` needs an override.
    pub fn is_protected(&self, env: &str) -> bool {
        self.protected || env == "production"
    }

    fn argv(&self, tool: &str, extra: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = vec![tool.into()];
        if let Some(h) = &self.host {
            argv.extend(["-h".into(), h.clone()]);
        }
        if let Some(p) = self.port {
            argv.extend(["-p".into(), p.to_string()]);
        }
        if let Some(u) = &self.user {
            argv.extend(["-U".into(), u.clone()]);
        }
        // Never prompt for a password: there is nobody to answer.
        argv.push("--no-password".into());
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    fn command(&self, argv: Vec<String>) -> Command {
        let cmd = match &self.run_as {
            None => Command::argv(argv),
            Some(user) => {
                let line = argv
                    .iter()
                    .map(|a| ec2kit::remote::quote(a))
                    .collect::<Vec<_>>()
                    .join(" ");
                let user = ec2kit::remote::quote(user);
                Command::shell(format!(
                    "if [ \"$(id -u)\" = 0 ]; then exec runuser -u {user} -- {line}; else exec sudo -n -u {user} -- {line}; fi"
                ))
            }
        };
        cmd.timeout(Duration::from_secs(self.timeout_seconds))
    }

    /// The dump command: plain SQL without owners or privileges, with
    /// `DROP … IF EXISTS` so it loads over an existing schema.
    pub fn dump_command(&self) -> Command {
        self.command(self.argv(
            "pg_dump",
            &[
                "--no-owner",
                "--no-privileges",
                "--clean",
                "--if-exists",
                "--dbname",
                &self.name,
            ],
        ))
    }

    /// The load command: `psql` stopping at the first error, in one
    /// transaction (a failed load changes nothing), reading standard input.
    pub fn load_command(&self) -> Command {
        self.command(self.argv(
            "psql",
            &[
                "--quiet",
                "--single-transaction",
                "-v",
                "ON_ERROR_STOP=1",
                "--dbname",
                &self.name,
            ],
        ))
    }
}

/// Dumps the database; the SQL comes back over the channel, nothing is
/// written on the host.
pub async fn dump(host: &dyn Remote, db: &DatabaseConfig) -> Result<Vec<u8>, DbError> {
    let out = host.run(&db.dump_command()).await?;
    if !out.status.success() {
        return Err(DbError::Failed {
            host: host.host(),
            tool: "pg_dump",
            status: out.status,
            stderr: tail(&out.stderr, 600),
        });
    }
    Ok(out.stdout)
}

/// Loads `sql` into the database of environment `env`, refusing a
/// protected one unless `allow_protected`.
pub async fn load(
    host: &dyn Remote,
    env: &str,
    db: &DatabaseConfig,
    sql: Vec<u8>,
    allow_protected: bool,
) -> Result<(), DbError> {
    if db.is_protected(env) && !allow_protected {
        return Err(DbError::Protected {
            env: env.to_owned(),
            name: db.name.clone(),
        });
    }
    let out = host.run(&db.load_command().stdin(sql)).await?;
    if !out.status.success() {
        return Err(DbError::Failed {
            host: host.host(),
            tool: "psql",
            status: out.status,
            stderr: tail(&out.stderr, 600),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_is_always_protected() {
        let db = DatabaseConfig::new("app");
        assert!(db.is_protected("production"));
        assert!(!db.is_protected("staging"));
        let db = DatabaseConfig {
            protected: true,
            ..db
        };
        assert!(db.is_protected("staging"));
    }

    #[test]
    fn run_as_goes_through_runuser_or_sudo() {
        let db = DatabaseConfig {
            run_as: Some("postgres".into()),
            ..DatabaseConfig::new("app db")
        };
        let line = db.dump_command().to_string();
        assert!(line.contains("runuser -u postgres -- pg_dump"), "{line}");
        assert!(line.contains("sudo -n -u postgres"), "{line}");
        assert!(line.contains("'app db'"), "{line}");
    }

    #[tokio::test]
    async fn refuses_production_before_touching_the_host() {
        let remote = ec2kit::remote::MockRemote::new(); // any call would panic
        let e = load(
            &remote,
            "production",
            &DatabaseConfig::new("app"),
            b"x".to_vec(),
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DbError::Protected { .. }), "{e}");
    }
}
