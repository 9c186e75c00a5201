//! The Dockerfile at the root: `docker build` and `ektool --version` in
//! the image when a Docker daemon answers; otherwise the test says why it
//! skips (the static binary it builds is checked by hand, see
//! docs/scheduling.md).

use std::path::Path;
use std::process::Command;

/// Why Docker cannot be used here, if it cannot.
fn no_docker() -> Option<String> {
    match Command::new("docker").args(["info"]).output() {
        Err(e) => Some(format!("no docker client ({e})")),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no reason given");
            Some(format!("`docker info` fails: {}", why.trim()))
        }
        Ok(_) => None,
    }
}

#[test]
fn the_dockerfile_builds_a_static_image_that_runs_ektool() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    // What docs/scheduling.md says of the image, without a daemon: the
    // build command it shows is the Dockerfile's (the one checked by hand).
    let joined = dockerfile.replace("\\\n", " ");
    let build = |text: &str, prefix: &str| -> Vec<String> {
        let line = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {text}"));
        let command = line.split("&&").next().unwrap();
        command.split_whitespace().map(str::to_owned).collect()
    };
    let page = std::fs::read_to_string(repo.join("docs/scheduling.md")).unwrap();
    let documented = build(&page, "$ cargo build ");
    let run = "RUN --mount=type=cache,target=/usr/local/cargo/registry \
               --mount=type=cache,target=/src/target cargo build ";
    let run = run.split_whitespace().collect::<Vec<_>>().join(" ");
    let joined: String = joined
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(build(&joined, &run), documented, "{dockerfile}");
    for want in [
        "--target x86_64-unknown-linux-musl",
        "--features vendored-openssl",
        "FROM gcr.io/distroless/static-debian12:nonroot",
        "USER nonroot:nonroot",
        "ENTRYPOINT [\"/ektool\"]",
    ] {
        assert!(dockerfile.contains(want), "{want}: {dockerfile}");
    }
    if let Some(why) = no_docker() {
        println!("skipped docker build: {why}");
        return;
    }
    let tag = format!(
        "ektool-test:{}",
        ektool_tests::unique("image").to_lowercase()
    );
    let built = Command::new("docker")
        .args(["build", "--tag", &tag])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new("docker")
        .args(["run", "--rm", &tag, "--version"])
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["image", "rm", &tag]).output();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("ektool {}", env!("CARGO_PKG_VERSION"))
    );
}
