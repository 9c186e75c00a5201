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
//!
//! Its sections then become the libraries' values exactly as the CLI
//! builds them — an EC2 client, regions, SSH, holds, retention policies:
//!
//! ```no_run
//! # async fn night() -> Result<(), Box<dyn std::error::Error>> {
//! use ektool::config::Config;
//! use snapkit::backup::{Backup, Instances};
//!
//! let config = Config::load(None)?;
//! let ec2 = config.ec2().await;
//! let regions = config.regions(&ec2).await?;
//! let tagged = Instances::Tagged(config.defaults.tag.clone());
//! let mut job = Backup::new(&ec2, config.backup_options())
//!     .instances(regions.clone(), tagged)
//!     .connect(config.connect())
//!     .volumes(config.volume_backups(&regions[0]));
//! if let Some(hold) = config.instance_hold() {
//!     job = job.consistent(hold);
//! }
//! let report = job.run().await;
//! let policies = config.policies()?; // for snapkit::trim::plan_region
//! println!("{} failed; {} lineages with their own policy", report.failed(), policies.per_lineage.len());
//! # Ok(())
//! # }
//! ```

//! The `[jobs.<name>]` of the file run with [`jobs::run`]: the steps
//! above composed, one report (what `ektool run` does).

pub mod config;
pub mod jobs;
