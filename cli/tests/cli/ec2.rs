//! `ektool regions` and `ektool instances` against moto.

use ec2kit::Tags;
use ektool_tests::{moto_url, unique};

use crate::harness::Ektool;
use crate::moto;

/// The sorted ids of `count` new instances.
async fn launch(region: &str, count: i32, tags: Tags) -> Vec<String> {
    let mut ids: Vec<String> = moto::launch(region, count, tags)
        .await
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn regions_lists_and_resolves_prefixes() {
    Ektool::moto()
        .arg("regions")
        .run()
        .success()
        .stdout_has("eu-north-1")
        .stdout_has("us-east-1");
    let out = Ektool::moto()
        .args(&["--output", "json", "-r", "eu-north,us-east-1", "regions"])
        .run()
        .success();
    let names: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["eu-north-1", "us-east-1"]);
}

#[test]
fn ambiguous_and_unknown_regions_list_candidates_and_exit_2() {
    Ektool::moto()
        .args(&["-r", "ap-s", "regions"])
        .run()
        .code(2)
        .stderr_has("ambiguous region \"ap-s\"")
        .stderr_has("ap-southeast-2");
    Ektool::moto()
        .args(&["-r", "mars-1", "instances"])
        .run()
        .code(2)
        .stderr_has("unknown region \"mars-1\"")
        .stderr_has("eu-west-1");
}

#[tokio::test]
async fn instances_by_tag_across_regions_as_json_and_table() {
    let key = unique("app");
    let tags = Tags::new()
        .with(key.clone(), "production")
        .with("Name", "web");
    let mut want = launch("eu-west-2", 2, tags.clone()).await;
    want.extend(launch("ca-central-1", 1, tags).await);
    want.sort();
    launch("eu-west-2", 1, Tags::new().with(key.clone(), "staging")).await;

    let tag = format!("{key}=production");
    let out = Ektool::moto()
        .args(&[
            "--output",
            "json",
            "-r",
            "eu-west-2",
            "-r",
            "ca-central",
            "instances",
            "--tag",
            &tag,
        ])
        .run()
        .success();
    let mut got: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, want);

    let out = Ektool::moto()
        .args(&["-r", "eu-west-2,ca-central-1", "instances", "--tag", &tag])
        .run()
        .success();
    assert_eq!(
        out.stdout.lines().count(),
        4,
        "header + 3 rows:\n{}",
        out.stdout
    );
    assert!(out.stdout.lines().next().unwrap().starts_with("REGION"));
    assert!(out.stdout.contains("web"));
}

#[tokio::test]
async fn tag_and_regions_default_from_the_config_file() {
    let key = unique("cfg");
    let want = launch("sa-east-1", 1, Tags::new().with(key.clone(), "yes")).await;
    let dir = ektool_tests::tempdir();
    std::fs::write(
        dir.path().join("ektool.toml"),
        format!("[defaults]\ntag = \"{key}=yes\"\nregions = [\"sa-east\"]\n"),
    )
    .unwrap();
    let out = Ektool::moto()
        .args(&["--output", "json", "instances"])
        .current_dir(dir.path())
        .run()
        .success();
    let got: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_sdk_endpoint_variable_works_without_the_flag() {
    Ektool::new()
        .env("AWS_ENDPOINT_URL_EC2", &moto_url())
        .args(&["--no-rate-limit", "-r", "eu-north", "regions"])
        .run()
        .success()
        .stdout_has("eu-north-1");
}

#[test]
fn no_region_anywhere_is_a_usage_error() {
    Ektool::moto()
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .arg("instances")
        .run()
        .code(2)
        .stderr_has("no region given");
}

#[test]
fn an_unreachable_endpoint_fails_with_exit_1() {
    Ektool::new()
        .args(&[
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--no-rate-limit",
            "regions",
        ])
        .env("AWS_MAX_ATTEMPTS", "1")
        .run()
        .code(1)
        .stderr_has("DescribeRegions in us-east-1");
}

#[test]
fn an_empty_or_malformed_endpoint_is_a_usage_error_not_a_panic() {
    for url in ["", "localhost:5000", "http://", "http://h:99999"] {
        let out = Ektool::new()
            .args(&["--endpoint-url", url, "--no-rate-limit", "regions"])
            .run()
            .code(2)
            .stderr_has("--endpoint-url: invalid endpoint URL");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
}

#[test]
fn missing_credentials_say_so_exit_1_and_are_not_retried() {
    let out = Ektool::moto()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .arg("regions")
        .run()
        .code(1)
        .stderr_has("no usable AWS credentials")
        .stderr_has("hint: give ektool credentials");
    assert!(!out.stderr.contains("could not reach"), "{}", out.stderr);
}
