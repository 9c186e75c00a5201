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
