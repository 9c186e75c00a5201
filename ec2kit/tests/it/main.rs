//! ec2kit against the real local services: `AwsEc2` on moto, `SshRemote`
//! on OpenSSH sshd, `LocalRemote` on this machine. Start them with
//! `scripts/testbed up` (or run `scripts/test`).

// Test code: a panic is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod elb;
mod jump;
mod local;
mod ssh;

/// Runs the test `name` of this binary again in a child process, with
/// `env` added to its environment (which a test cannot change for itself:
/// `set_var` is unsafe), optionally under `wrapper` (e.g. strace) and
/// optionally with nothing else of this environment but `PATH`; returns
/// its output.
fn rerun_in_child(name: &str, env: &[(&str, &str)], wrapper: &[&str], clear: bool) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((w, rest)) => {
            let mut c = std::process::Command::new(w);
            c.args(rest).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    if clear {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    }
    let out = cmd
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env("EKTOOL_TEST_CHILD", name)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child run of {name} failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
    text
}

/// Whether this process is the child run of test `name`.
fn in_child(name: &str) -> bool {
    std::env::var("EKTOOL_TEST_CHILD").as_deref() == Ok(name)
}
