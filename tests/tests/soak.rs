//! The soak run (`dataplane_tests::soak`): 2 minutes of connects,
//! disconnects, published ports, filter changes and agent restarts with two
//! steady TCP flows running; nothing leaks and no steady flow breaks.
//! `cargo xtask soak --minutes N` runs the ignored `long_soak` with
//! `DP_SOAK_MINUTES`.

use std::time::Duration;

use dataplane_tests::soak::{run, SoakOptions};

fn soak(duration: Duration) {
    let report = run(SoakOptions {
        duration,
        restart_every: 5,
    })
    .expect("the soak run");
    println!("{report}");
    if let Err(e) = report.check() {
        panic!("{e:#}\n{report}");
    }
}

#[test]
fn two_minute_soak_leaks_nothing_and_breaks_no_flow() {
    if !dataplane_tests::require_root() {
        return;
    }
    soak(Duration::from_secs(
        std::env::var("DP_SOAK_TEST_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    ));
}

#[test]
#[ignore = "long: cargo xtask soak"]
fn long_soak() {
    let minutes: u64 = std::env::var("DP_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    soak(Duration::from_secs(minutes * 60));
}
