//! # ektool — the reference CLI's reusable part
//!
//! The `ektool` package is the command-line tool built on the toolkit's
//! libraries ([`ec2kit`], [`snapkit`], [`deploykit`]), and this library
//! target: the configuration file, so a team's own "fabfile" binary reads
//! the same `ektool.toml` the CLI does — found the same way, layered the
//! same way, and validated with the same `file:line:column` errors.
//!
//! ```no_run
//! use ektool::config::Config;
//!
//! // --config / EKTOOL_CONFIG, else the nearest ektool.toml upwards,
//! // layered over the user's own file.
//! let config = Config::load(None)?;
//! println!("backing up instances tagged {}", config.defaults.tag);
//! for (name, env) in &config.environments {
//!     println!("environment {name}: {} hosts", env.hosts.len());
//! }
//! # Ok::<(), ektool::config::ConfigError>(())
//! ```

pub mod config;
