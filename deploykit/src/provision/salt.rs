//! Masterless Salt: `salt-call --local state.apply --out json` with a
//! minion config written by us (`file_client: local`, a private
//! `root_dir`), and its JSON parsed into per-state results.

use std::time::Duration;

use async_trait::async_trait;
use ec2kit::{Command, Remote};
use serde_json::Value;

use super::{ApplyReport, ProvisionError, Provisioner, RemoteLayout, StateResult};
use crate::shell::{q, tail};

/// The masterless Salt provisioner.
#[derive(Debug, Clone)]
pub struct SaltProvisioner {
    salt_call: String,
    version: String,
    minion_id: String,
    timeout: Duration,
}

impl SaltProvisioner {
    /// Salt at `salt_call` (installed as `version` where missing).
    pub fn new(salt_call: &str, version: &str) -> Self {
        Self {
            salt_call: salt_call.to_owned(),
            version: version.to_owned(),
            minion_id: "ektool".into(),
            timeout: Duration::from_secs(1800),
        }
    }

    /// Sets the minion id.
    #[must_use]
    pub fn minion_id(mut self, id: impl Into<String>) -> Self {
        self.minion_id = id.into();
        self
    }

    /// Sets the timeout of one `state.apply`.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The minion config for the tree at `tree_dir`: local files only, a
    /// private root, the tree's states, the tree's pillar plus the secrets
    /// directory (so `secrets` in a pillar top file finds the 0600 file).
    pub fn minion_config(&self, layout: &RemoteLayout, tree_dir: &str) -> String {
        // JSON strings are valid YAML scalars: any path is quoted safely.
        let j = |s: &str| Value::String(s.to_owned()).to_string();
        format!(
            "# written by ektool provision\n\
             id: {id}\n\
             file_client: local\n\
             root_dir: {root}\n\
             file_roots:\n  base:\n    - {states}\n\
             pillar_roots:\n  base:\n    - {pillar}\n    - {secrets}\n\
             state_output: mixed\n",
            id = j(&self.minion_id),
            root = j(&layout.salt_root()),
            states = j(&format!("{tree_dir}/states")),
            pillar = j(&format!("{tree_dir}/pillar")),
            secrets = j(&layout.secrets_dir()),
        )
    }

    /// The virtualenv Salt is installed into when missing: two levels up
    /// from `salt_call` (`/opt/ektool-salt/bin/salt-call` → `/opt/ektool-salt`).
    fn venv(&self) -> Option<&str> {
        let bin = self.salt_call.rsplit_once('/')?.0;
        let venv = bin.rsplit_once('/')?.0;
        (!venv.is_empty()).then_some(venv)
    }
}

/// Parses `salt-call --out json` output.
///
/// - `{"local": {<state key>: {...}}}`: the per-state results, in run order;
/// - `{"local": ["message", ...]}`: render errors (the seed crashed here);
/// - anything else: `Err(None)`.
pub fn parse_output(stdout: &str) -> Result<Vec<StateResult>, Option<Vec<String>>> {
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|_| None)?;
    let local = v.get("local").ok_or(None)?;
    match local {
        Value::Object(states) => {
            let mut out: Vec<StateResult> = states
                .iter()
                .map(|(key, s)| {
                    // `<module>_|-<id>_|-<name>_|-<function>`
                    let parts: Vec<&str> = key.split("_|-").collect();
                    let (module, id, name, fun) = match parts.as_slice() {
                        [m, i, n, f] => (*m, *i, *n, *f),
                        _ => ("", key.as_str(), "", ""),
                    };
                    let str_of = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_owned);
                    let changed = match s.get("changes") {
                        Some(Value::Object(m)) => m.keys().cloned().collect(),
                        _ => Vec::new(),
                    };
                    StateResult {
                        id: str_of("__id__").unwrap_or_else(|| id.to_owned()),
                        function: format!("{module}.{fun}"),
                        name: str_of("name").unwrap_or_else(|| name.to_owned()),
                        result: s.get("result").and_then(Value::as_bool),
                        comment: match s.get("comment") {
                            Some(Value::String(c)) => c.clone(),
                            Some(Value::Array(a)) => a
                                .iter()
                                .map(|x| {
                                    x.as_str()
                                        .map(str::to_owned)
                                        .unwrap_or_else(|| x.to_string())
                                })
                                .collect::<Vec<_>>()
                                .join("\n"),
                            Some(other) => other.to_string(),
                            None => String::new(),
                        },
                        changed,
                        run_num: s
                            .get("__run_num__")
                            .and_then(Value::as_u64)
                            .unwrap_or(u64::MAX),
                    }
                })
                .collect();
            out.sort_by_key(|s| s.run_num);
            Ok(out)
        }
        Value::Array(errors) => Err(Some(
            errors
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string())
                })
                .collect(),
        )),
        Value::String(e) => Err(Some(vec![e.clone()])),
        _ => Err(None),
    }
}

#[async_trait]
impl Provisioner for SaltProvisioner {
    fn name(&self) -> &str {
        "salt"
    }

    async fn ensure_installed(&self, host: &dyn Remote) -> Result<bool, ProvisionError> {
        let check = Command::argv(["test", "-x", &self.salt_call]);
        if host.run(&check).await?.status.success() {
            return Ok(false);
        }
        let Some(venv) = self.venv() else {
            return Err(ProvisionError::Invalid(format!(
                "salt_call {:?} is missing and is not `<venv>/bin/salt-call`",
                self.salt_call
            )));
        };
        // A pinned Salt from PyPI in its own virtualenv (no bootstrap
        // script piped from the internet, no distribution repository).
        let script = format!(
            "set -eu\n\
             if ! python3 -m venv --help >/dev/null 2>&1; then\n\
               export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq python3-venv\n\
             fi\n\
             python3 -m venv {venv}\n\
             {venv}/bin/pip install -q --disable-pip-version-check salt=={version} \
               pyyaml jinja2 markupsafe msgpack looseversion packaging psutil distro pycryptodomex pyzmq requests tornado\n\
             test -x {salt_call}",
            venv = q(venv),
            version = q(&self.version),
            salt_call = q(&self.salt_call),
        );
        let out = host
            .run(&Command::shell(script).timeout(Duration::from_secs(900)))
            .await?;
        if !out.status.success() {
            return Err(ProvisionError::Install {
                host: host.host(),
                what: format!("salt {}", self.version),
                detail: tail(&[out.stdout, out.stderr].concat(), 600),
            });
        }
        Ok(true)
    }

    async fn apply(
        &self,
        host: &dyn Remote,
        layout: &RemoteLayout,
        tree_dir: &str,
        test: bool,
    ) -> Result<ApplyReport, ProvisionError> {
        // Hidden, so no file of the tree (never collected) can clash with it.
        let config_dir = format!("{tree_dir}/.salt");
        let prepare = format!(
            "set -eu; umask 077; mkdir -p {c} {r}",
            c = q(&config_dir),
            r = q(&layout.salt_root())
        );
        ec2kit::remote::run_checked(host, &Command::shell(prepare)).await?;
        host.upload(
            &format!("{config_dir}/minion"),
            self.minion_config(layout, tree_dir).as_bytes(),
            0o600,
        )
        .await?;
        let mut argv = vec![
            self.salt_call.clone(),
            "--local".into(),
            "-c".into(),
            config_dir,
            "--out".into(),
            "json".into(),
            // Salt's log lines can quote rendered data: keep them quiet;
            // failures are in the JSON.
            "--log-level".into(),
            "quiet".into(),
            "state.apply".into(),
        ];
        if test {
            argv.push("test=True".into());
        }
        let out = host.run(&Command::argv(argv).timeout(self.timeout)).await?;
        match parse_output(&out.stdout_str()) {
            Ok(states) => Ok(ApplyReport {
                provisioner: "salt".into(),
                test,
                states,
            }),
            Err(Some(errors)) => Err(ProvisionError::Render {
                host: host.host(),
                errors,
            }),
            Err(None) => Err(ProvisionError::NoResult {
                host: host.host(),
                what: "salt-call".into(),
                status: out.status,
                // stderr only: stdout may be a partial dump of rendered data.
                detail: tail(&out.stderr, 600),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_states_in_run_order() {
        let json = r#"{"local": {
            "cmd_|-bad_|-false_|-run": {"name": "false", "changes": {"retcode": 1}, "result": false,
                "comment": "Command \"false\" run", "__run_num__": 1, "__id__": "bad"},
            "file_|-hello_|-/x_|-managed": {"changes": {"diff": "New file"}, "comment": "ok",
                "name": "/x", "result": true, "__run_num__": 0, "__id__": "hello"}
        }}"#;
        let s = parse_output(json).unwrap();
        assert_eq!(s[0].id, "hello");
        assert_eq!(s[0].function, "file.managed");
        assert_eq!(s[0].changed, ["diff"]);
        assert!(s[1].failed());
        assert_eq!(s[1].function, "cmd.run");
    }

    #[test]
    fn render_errors_are_reported_not_crashed_on() {
        let json = r#"{"local": ["Rendering SLS 'base:hello' failed: Jinja syntax error"]}"#;
        assert_eq!(
            parse_output(json).unwrap_err().unwrap(),
            ["Rendering SLS 'base:hello' failed: Jinja syntax error"]
        );
        assert!(parse_output("Traceback ...").unwrap_err().is_none());
    }

    #[test]
    fn test_mode_none_is_would_change() {
        let json = r#"{"local": {"file_|-a_|-/a_|-managed": {"result": null, "comment": "would", "changes": {}, "__run_num__": 0}}}"#;
        let s = parse_output(json).unwrap();
        assert_eq!(s[0].result, None);
        assert!(!s[0].failed());
    }

    #[test]
    fn minion_config_is_local_and_private() {
        let p = SaltProvisioner::new("/opt/s/bin/salt-call", "3007.8").minion_id("staging");
        let c = p.minion_config(&RemoteLayout::new("/srv/ektool"), "/srv/ektool/trees/1");
        assert!(c.contains("file_client: local"));
        assert!(c.contains("root_dir: \"/srv/ektool/salt-root\""));
        assert!(c.contains("- \"/srv/ektool/trees/1/states\""));
        assert!(c.contains("- \"/srv/ektool/secrets\""));
        assert_eq!(p.venv(), Some("/opt/s"));
    }
}
