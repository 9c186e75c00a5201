//! A builder for running `ektool` and checking what it did.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ektool_tests::moto_url;

/// One `ektool` invocation.
pub(crate) struct Ektool {
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    cwd: Option<PathBuf>,
}

impl Ektool {
    /// `ektool` with no arguments, run in a fresh empty directory so no
    /// `ektool.toml` is picked up by accident.
    pub(crate) fn new() -> Self {
        Self {
            args: Vec::new(),
            env: vec![("XDG_CONFIG_HOME".into(), "/nonexistent".into())],
            env_remove: vec![
                "EKTOOL_ENDPOINT_URL".into(),
                "EKTOOL_CONFIG".into(),
                "AWS_ENDPOINT_URL_EC2".into(),
                "RUST_LOG".into(),
            ],
            cwd: None,
        }
    }

    /// `ektool` pointed at the bench's moto, unpaced.
    pub(crate) fn moto() -> Self {
        Self::new()
            .env("EKTOOL_ENDPOINT_URL", &moto_url())
            .arg("--no-rate-limit")
    }

    pub(crate) fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    pub(crate) fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }

    pub(crate) fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub(crate) fn env_remove(mut self, k: &str) -> Self {
        self.env_remove.push(k.to_owned());
        self
    }

    pub(crate) fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Starts it in `dir` without waiting (for a test that signals it),
    /// its output piped.
    pub(crate) fn spawn(self, dir: &Path) -> std::process::Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ektool"));
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(dir);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.spawn().expect("start ektool")
    }

    pub(crate) fn run(self) -> Outcome {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ektool"));
        cmd.args(&self.args).stdin(Stdio::null());
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let tmp;
        match &self.cwd {
            Some(d) => {
                cmd.current_dir(d);
            }
            None => {
                tmp = ektool_tests::tempdir();
                cmd.current_dir(tmp.path());
            }
        }
        let out = cmd.output().expect("run ektool");
        Outcome {
            args: self.args.join(" "),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What an invocation did.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Asserts the exit code.
    #[track_caller]
    pub(crate) fn code(self, want: i32) -> Self {
        assert_eq!(
            self.code,
            Some(want),
            "ektool {}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit code 0.
    #[track_caller]
    pub(crate) fn success(self) -> Self {
        self.code(0)
    }

    /// Asserts stderr contains `s`.
    #[track_caller]
    pub(crate) fn stderr_has(self, s: &str) -> Self {
        assert!(
            self.stderr.contains(s),
            "stderr lacks {s:?}:\n{}",
            self.stderr
        );
        self
    }

    /// Asserts stdout contains `s`.
    #[track_caller]
    pub(crate) fn stdout_has(self, s: &str) -> Self {
        assert!(
            self.stdout.contains(s),
            "stdout lacks {s:?}:\n{}",
            self.stdout
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// The IAM actions an `ektool` run appended to `file`
/// (`EKTOOL_RECORD_ACTIONS`).
pub(crate) fn recorded_actions(file: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A local HTTP endpoint recording each request as `METHOD PATH BODY`
/// and answering 200.
pub(crate) struct Recorder {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    pub(crate) fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                );
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.lock().unwrap().push(format!(
                    "{method} {path} {}",
                    String::from_utf8_lossy(&body)
                ));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { port, requests }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}
