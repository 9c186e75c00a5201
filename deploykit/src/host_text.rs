//! Property tests: whatever a host sends back (state output, markers,
//! release-log lines, lock owner files, clocks), parsing it and every
//! decision made from it never panics.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::deployer::{cleanup_after, fleet_steps};
use crate::host::Host;
use crate::layout::{AbSlots, ReleaseLayout, Timestamped};
use crate::log;
use crate::state::{HostState, skew_ms};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn host() -> Host {
    Host::new(Arc::new(ec2kit::LocalRemote::new()), "/srv/app")
}

/// Runs every parser and decision on one text from a host.
fn exercise(text: &str) {
    let h = host();
    let state = HostState::parse(text, h.root());
    let _ = log::parse(text);
    let _ = state.history(&state.log);
    let _ = state.rollback_target(&state.log);
    let now = jiff::Timestamp::now();
    let fresh = Timestamped::fresh_name(now, state.releases.iter().map(|r| r.name.as_str()));
    assert!(Timestamped::is_release_name(&fresh), "{fresh}");
    assert!(
        !state.releases.iter().any(|r| r.name == fresh),
        "{fresh} reused"
    );
    let layouts: [&dyn ReleaseLayout; 2] = [&AbSlots, &Timestamped { keep: 2 }];
    for layout in layouts {
        let p = layout.place(&state, COMMIT, &fresh);
        let removed = cleanup_after(layout, &state, p.release(), COMMIT);
        for r in &removed {
            assert!(state.live().all(|l| l != r), "{r} is live");
        }
    }
    let logs = [state.log.as_slice()];
    let _ = fleet_steps(
        std::slice::from_ref(&h),
        std::slice::from_ref(&state),
        &logs,
        None,
    );
    for r in &state.releases {
        let _ = fleet_steps(
            std::slice::from_ref(&h),
            std::slice::from_ref(&state),
            &logs,
            Some(&r.name),
        );
    }
    let _ = skew_ms(&state, i128::MIN, Duration::MAX);
    let _ = skew_ms(&state, i128::MAX, Duration::ZERO);
    let lock = crate::lock::parse_held(&h, text.lines(), Duration::from_secs(7200));
    let _ = lock.to_string();
    let _ = text.trim().parse::<i128>().ok();
}

/// One line such as the hosts' scripts print, with arbitrary fields.
fn line() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        "\\PC{0,24}",
        "[0-9]{14}",
        Just(COMMIT.to_owned()),
        Just("é".repeat(20)),
        "-?[0-9]{1,40}",
        Just("releases/20240101000000".to_owned()),
        Just("/srv/app/releases/a".to_owned()),
    ];
    let marker = (field.clone(), field.clone()).prop_map(|(release, commit)| {
        serde_json::json!({"release": release, "commit": commit, "built_at": "2024-01-01T00:00:00Z"})
            .to_string()
    });
    let entry = (field.clone(), field.clone(), 0..3usize).prop_map(|(release, commit, r)| {
        let action = ["deploy", "rollback", "bad"][r];
        let result = ["success", "failed", "rolled_back"][r];
        serde_json::json!({
            "at": "2024-01-01T00:00:00Z", "action": action,
            "who": {"user": "u", "machine": "m", "pid": 1},
            "environment": "e", "release": release, "commit": commit,
            "result": result
        })
        .to_string()
    });
    let tag = prop_oneof![
        Just("clock"),
        Just("current"),
        Just("legacy"),
        Just("release"),
        Just("unfinished"),
        Just("made"),
        Just("repo"),
        Just("mirror"),
        Just("maintenance"),
        Just("log"),
        Just("absent"),
        Just("held"),
    ];
    (tag, field.clone(), prop_oneof![field, marker, entry])
        .prop_map(|(t, a, b)| format!("{t}\t{a}\t{b}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_from_a_host_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn host_output_shaped_lines_never_panic(lines in proptest::collection::vec(line(), 0..40)) {
        exercise(&lines.join("\n"));
    }
}
