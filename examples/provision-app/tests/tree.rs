//! `examples/provision-tree`, the tree layout this tool (and `ektool
//! provision`) uploads, is no crate: this test is what runs it. For each
//! environment, the files deploykit would send are staged as on a host,
//! with the committed secrets template as the secrets file and
//! deploykit's own minion config, and the real `salt-call --local` plans
//! them (`test=True`: nothing changes): every state renders and would
//! apply.

// A test fails loudly at the first broken step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use deploykit::provision::RemoteLayout;
use deploykit::provision::salt::SaltProvisioner;
use deploykit::provision::tree::LocalTree;

#[test]
fn the_example_tree_renders_and_plans_for_each_environment() {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../provision-tree");
    for env in ["staging", "production"] {
        let local = LocalTree::collect(&tree, env, None).unwrap();
        let sent: Vec<&str> = local.files.iter().map(|f| f.path.as_str()).collect();
        for file in ["states/top.sls", "states/app/init.sls", "pillar/top.sls"] {
            assert!(sent.contains(&file), "{env}: {sent:?}");
        }
        assert!(
            sent.iter().all(|f| !f.contains("secrets")),
            "secrets never travel with the tree: {sent:?}"
        );

        // As on a host: the tree, the secrets file beside it, Salt's config.
        let dir = ektool_tests::tempdir();
        let layout = RemoteLayout::new(dir.path().to_str().unwrap());
        let tree_dir = layout.tree_dir("t1");
        for f in &local.files {
            let path = Path::new(&tree_dir).join(&f.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &f.bytes).unwrap();
        }
        let template = tree.join(format!("secrets/{env}.sls.example"));
        std::fs::create_dir_all(layout.secrets_dir()).unwrap();
        std::fs::copy(template, layout.secrets_file()).unwrap();
        let salt_call = ektool_tests::salt_call();
        let salt = SaltProvisioner::new(&salt_call, "any").minion_id("example");
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("minion"),
            salt.minion_config(&layout, &tree_dir),
        )
        .unwrap();

        let out = Command::new(&salt_call)
            .args(["--local", "--out=json", "--retcode-passthrough"])
            .arg(format!("--config-dir={}", config.display()))
            .args(["state.apply", "test=True"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{env}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let states = report["local"].as_object().unwrap();
        let ids: Vec<&str> = states
            .values()
            .filter_map(|s| s["__id__"].as_str())
            .collect();
        assert_eq!(ids.len(), 2, "{env}: {report}");
        assert!(
            ids.contains(&"app-dir") && ids.contains(&"app-env"),
            "{ids:?}"
        );
        for state in states.values() {
            assert_ne!(state["result"], false, "{env}: {state}");
        }
    }
}
