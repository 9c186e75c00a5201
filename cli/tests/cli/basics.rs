//! Usage, config errors, completions, man pages: no services needed.

use crate::harness::Ektool;

#[test]
fn help_pins_the_command_surface() {
    let out = Ektool::new().arg("--help").run().success();
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn usage_errors_exit_2() {
    Ektool::new().arg("no-such-command").run().code(2);
    Ektool::new()
        .args(&["instances", "--tag", "novalue"])
        .run()
        .code(2)
        .stderr_has("KEY=VALUE");
    Ektool::new()
        .args(&["--output", "yaml", "regions"])
        .run()
        .code(2);
}

#[test]
fn config_errors_name_file_line_and_column_and_exit_2() {
    let dir = ektool_tests::tempdir();
    std::fs::write(dir.path().join("ektool.toml"), "[defaults]\ntag = \"Earmarking=production\"\n\n[volumes.db]\nvolume_id = \"vol-0123abcd\"\nlock_db = \"False\"\n").unwrap();
    Ektool::new()
        .arg("regions")
        .current_dir(dir.path())
        .run()
        .code(2)
        .stderr_has("ektool.toml:6:11:");

    Ektool::new()
        .args(&["--config", "/nonexistent/ektool.toml", "regions"])
        .run()
        .code(2)
        .stderr_has("cannot read config");
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let dir = ektool_tests::tempdir();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, "[defaults]\ntag = \"Backup=nightly\"\nregions = [\"eu-west-1\"]\n\n[volumes.db]\nvolume_id = \"vol-0123abcd\"\nmountpoint = \"/var/lib/mysql\"\nlock_db = true\n").unwrap();
    let out = Ektool::new()
        .args(&[
            "--config",
            path.to_str().unwrap(),
            "--output",
            "json",
            "config",
        ])
        .run()
        .success();
    let v = out.json();
    assert_eq!(v["defaults"]["tag"], "Backup=nightly");
    assert_eq!(v["volumes"]["db"]["volume_id"], "vol-0123abcd");
    assert_eq!(v["volumes"]["db"]["lock_db"], true);
    Ektool::new()
        .args(&["--config", path.to_str().unwrap(), "config"])
        .run()
        .success()
        .stdout_has("Backup=nightly");
}

#[test]
fn config_is_found_upwards_named_by_ektool_config_and_layered_over_the_users() {
    let dir = ektool_tests::tempdir();
    let project = dir.path().join("app");
    let deep = project.join("src").join("deep");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(
        project.join("ektool.toml"),
        "[defaults]\ntag = \"Backup=project\"\n\n[ssh]\nknown_hosts = \"keys/known_hosts\"\n",
    )
    .unwrap();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("ektool")).unwrap();
    std::fs::write(
        xdg.join("ektool").join("config.toml"),
        "[defaults]\ntag = \"Backup=user\"\nregions = [\"eu-west-1\"]\n",
    )
    .unwrap();
    // From a subdirectory: the project file is found, and layered over the
    // user's (the project's tag wins, the user's regions stay).
    let v = Ektool::new()
        .env("XDG_CONFIG_HOME", xdg.to_str().unwrap())
        .args(&["--output", "json", "config"])
        .current_dir(&deep)
        .run()
        .success()
        .json();
    assert_eq!(v["defaults"]["tag"], "Backup=project");
    assert_eq!(v["defaults"]["regions"][0], "eu-west-1");
    // A relative path in the file is relative to the file, not to where
    // ektool runs.
    assert_eq!(
        v["ssh"]["known_hosts"],
        project.join("keys/known_hosts").to_str().unwrap()
    );
    // EKTOOL_CONFIG names the file from anywhere.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[defaults]\ntag = \"Backup=named\"\n").unwrap();
    let v = Ektool::new()
        .env("EKTOOL_CONFIG", other.to_str().unwrap())
        .args(&["--output", "json", "config"])
        .current_dir(&deep)
        .run()
        .success()
        .json();
    assert_eq!(v["defaults"]["tag"], "Backup=named");
    // An error in the user's file names that file, line and column.
    std::fs::write(
        xdg.join("ektool").join("config.toml"),
        "[defaults]\nregions = 3\n",
    )
    .unwrap();
    Ektool::new()
        .env("XDG_CONFIG_HOME", xdg.to_str().unwrap())
        .arg("config")
        .current_dir(&deep)
        .run()
        .code(2)
        .stderr_has("config.toml:2:11:");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    Ektool::new()
        .args(&["completions", "bash"])
        .run()
        .success()
        .stdout_has("_ektool()");
    Ektool::new()
        .args(&["completions", "zsh"])
        .run()
        .success()
        .stdout_has("#compdef ektool");
    let dir = ektool_tests::tempdir();
    Ektool::new()
        .args(&["manpage", "--dir", dir.path().to_str().unwrap()])
        .run()
        .success();
    let page = std::fs::read_to_string(dir.path().join("ektool.1")).unwrap();
    assert!(page.contains(".TH ektool"), "{page}");
    assert!(dir.path().join("ektool-instances.1").exists());
}

/// Runs ektool with its standard output a pipe whose reader is already
/// gone (`ektool … | head` after head exited): every write fails with
/// EPIPE from the first byte.
fn into_closed_pipe(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let dir = ektool_tests::tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ektool"))
        .args(args)
        .envs(env.iter().copied())
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env("RUST_BACKTRACE", "1")
        .env_remove("EKTOOL_CONFIG")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["iam-policy", "--list"][..],
        &["--output", "json", "iam-policy", "--list"],
        &["iam-policy", "snap", "backup"],
        &["completions", "bash"],
        &["manpage"],
        &["--help"],
    ] {
        let (code, stderr) = into_closed_pipe(args, &[]);
        assert!(
            matches!(code, Some(0 | 141)),
            "ektool {args:?}: exit {code:?}\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "ektool {args:?}:\n{stderr}"
        );
        assert!(!stderr.contains("error:"), "ektool {args:?}:\n{stderr}");
    }
}

#[test]
fn tables_and_json_into_a_closed_pipe_end_quietly() {
    let moto = ektool_tests::moto_url();
    let env = [
        ("EKTOOL_ENDPOINT_URL", moto.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    for args in [
        &["--no-rate-limit", "-r", "us-east-1", "regions"][..],
        &[
            "--no-rate-limit",
            "-r",
            "us-east-1",
            "--output",
            "json",
            "regions",
        ],
    ] {
        let (code, stderr) = into_closed_pipe(args, &env);
        assert_eq!(code, Some(141), "ektool {args:?}:\n{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "ektool {args:?}:\n{stderr}"
        );
    }
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let dir = ektool_tests::tempdir();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, "[defaults]\ntag = \"Backup=nightly\"\n").unwrap();
    let config = path.to_str().unwrap();
    // `-vv` logs at debug; stderr is a pipe here, not a terminal.
    let out = Ektool::new()
        .args(&["-vv", "--config", config, "config"])
        .env("RUST_LOG", "debug")
        .run()
        .success();
    assert!(!out.stderr.is_empty(), "some log lines to look at");
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ANSI escapes:\n{}",
        out.stderr
    );
    let out = Ektool::new()
        .args(&["--log-format", "json", "--config", config, "config"])
        .env("RUST_LOG", "debug")
        .run()
        .success();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    let out = Ektool::new()
        .args(&["--config", config, "config"])
        .env("EKTOOL_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .run()
        .success();
    assert!(
        out.stderr.lines().all(|l| l.starts_with('{')),
        "{}",
        out.stderr
    );
}

/// On a terminal log lines are coloured, unless `NO_COLOR` is set
/// (<https://no-color.org>). (`script` gives ektool a pseudo-terminal.)
#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = ektool_tests::tempdir();
    let path = dir.path().join("team.toml");
    std::fs::write(&path, "[defaults]\ntag = \"Backup=nightly\"\n").unwrap();
    let line = format!(
        "{} -vv --config {} config",
        env!("CARGO_BIN_EXE_ektool"),
        path.display()
    );
    let on_a_terminal = |no_color: Option<&str>| {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env("RUST_LOG", "debug")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env_remove("EKTOOL_CONFIG")
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().expect("`script` (util-linux) makes a terminal");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(None);
    assert!(
        coloured.contains("DEBUG"),
        "log lines to look at:\n{coloured}"
    );
    assert!(coloured.contains('\u{1b}'), "no colour:\n{coloured}");
    for no_color in ["1", "yes"] {
        let plain = on_a_terminal(Some(no_color));
        assert!(plain.contains("DEBUG"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "NO_COLOR={no_color}:\n{plain}");
    }
}

/// A local EC2 endpoint that refuses every call the way EC2 refuses a
/// caller without the permission (moto does not check IAM).
fn refusing_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            // Read the request head and body (small form posts).
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            loop {
                match s.read(&mut buf[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
                let text = String::from_utf8_lossy(&buf[..got]);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>0</RequestID></Response>";
            let _ = write!(
                s,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn access_denied_names_the_action_and_the_policy_command() {
    let url = refusing_endpoint();
    Ektool::new()
        .env("EKTOOL_ENDPOINT_URL", &url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(&[
            "--no-rate-limit",
            "-r",
            "us-east-1",
            "instances",
            "--tag",
            "Role=web",
        ])
        .run()
        .code(1)
        .stderr_has("UnauthorizedOperation")
        .stderr_has("ec2:DescribeRegions")
        .stderr_has("`ektool iam-policy instances`");
}

#[test]
fn help_lists_global_options_apart() {
    let out = Ektool::new().args(&["provision", "--help"]).run().success();
    let (own, global) = out
        .stdout
        .split_once("Global options:")
        .expect("a Global options heading");
    assert!(own.contains("--trust-host-key"), "{}", out.stdout);
    assert!(!own.contains("--endpoint-url"), "{}", out.stdout);
    assert!(global.contains("--endpoint-url") && global.contains("--log-format"));
}

/// A directory or an empty file where a file is expected is bad input:
/// exit 2, one `error:` line naming the path, no panic.
#[test]
fn a_directory_or_an_empty_file_for_an_input_file_is_a_usage_error() {
    let dir = ektool_tests::tempdir();
    let d = dir.path().to_str().unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    for args in [
        &["--config", d, "config"][..],
        &["snap", "plan", "--inventory", d],
        &["snap", "plan", "--inventory", empty],
        &["snap", "plan", "--inventory", &format!("{d}/missing.json")],
    ] {
        let out = Ektool::new().args(args).run().code(2);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].starts_with("error: "), "{args:?}: {}", out.stderr);
        assert!(lines[0].contains(d), "{args:?}: {}", out.stderr);
    }
}
