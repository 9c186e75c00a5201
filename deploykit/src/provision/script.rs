//! The plain-script provisioner: one shell script from the tree, run on
//! the host with the tree as its working directory.

use std::time::Duration;

use async_trait::async_trait;
use ec2kit::{Command, Remote};

use super::{ApplyReport, ProvisionError, Provisioner, RemoteLayout, StateResult};
use crate::shell::tail;

/// Runs `<tree>/<script>` with `sh`. Environment: `EKTOOL_ENV`,
/// `EKTOOL_TREE`, `EKTOOL_SECRETS` (the 0600 file's path, not its
/// contents) and `EKTOOL_DRY_RUN=1` in a dry run (the script decides what
/// that means).
#[derive(Debug, Clone)]
pub struct ScriptProvisioner {
    script: String,
    env: String,
    timeout: Duration,
}

impl ScriptProvisioner {
    /// The script at `script`, relative to the tree.
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            env: String::new(),
            timeout: Duration::from_secs(1800),
        }
    }

    /// Sets the environment name passed to the script.
    #[must_use]
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

#[async_trait]
impl Provisioner for ScriptProvisioner {
    fn name(&self) -> &str {
        "script"
    }

    async fn ensure_installed(&self, _host: &dyn Remote) -> Result<bool, ProvisionError> {
        Ok(false)
    }

    async fn apply(
        &self,
        host: &dyn Remote,
        layout: &RemoteLayout,
        tree_dir: &str,
        test: bool,
    ) -> Result<ApplyReport, ProvisionError> {
        let mut command = Command::argv(["sh", self.script.as_str()])
            .cwd(tree_dir)
            .env("EKTOOL_ENV", &self.env)
            .env("EKTOOL_TREE", tree_dir)
            .env("EKTOOL_SECRETS", layout.secrets_file())
            .timeout(self.timeout);
        if test {
            command = command.env("EKTOOL_DRY_RUN", "1");
        }
        let out = host.run(&command).await?;
        let ok = out.status.success();
        Ok(ApplyReport {
            provisioner: "script".into(),
            test,
            states: vec![StateResult {
                id: self.script.clone(),
                function: "script.run".into(),
                name: self.script.clone(),
                result: Some(ok),
                comment: if ok {
                    String::new()
                } else {
                    format!("{}: {}", out.status, tail(&out.stderr, 600))
                },
                changed: Vec::new(),
                run_num: 0,
            }],
        })
    }
}
