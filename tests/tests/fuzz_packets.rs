//! The packet fuzzer (tests/src/fuzz) in `cargo xtask test`: a short seeded
//! run of every tc program against the model and the invariants, and the
//! saved fixtures replayed. `cargo xtask fuzz` runs the long version; its
//! bounds come from DP_FUZZ_SEED / DP_FUZZ_PACKETS / DP_FUZZ_SECONDS, and
//! DP_FUZZ_SAVE names the directory findings are written to.

use std::{path::PathBuf, time::Duration};

use dataplane_tests::{
    fuzz::{self, Config},
    BpffsDir,
};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz")
}

fn fuzz_run(packets: u64, seconds: u64, name: &str) {
    let cfg = Config {
        seed: env_u64("DP_FUZZ_SEED", 18),
        packets: env_u64("DP_FUZZ_PACKETS", packets),
        max_time: Duration::from_secs(env_u64("DP_FUZZ_SECONDS", seconds)),
    };
    let dir = BpffsDir::new(name).expect("bpffs dir");
    let report = fuzz::run(dir.pins(), cfg).expect("fuzz run");
    println!("fuzz seed {}: {}", cfg.seed, report.summary());
    if let Ok(save) = std::env::var("DP_FUZZ_SAVE") {
        fuzz::save(&PathBuf::from(save), &report.findings).expect("saving fixtures");
    }
    let shown: Vec<String> = report
        .findings
        .iter()
        .take(20)
        .map(|f| f.fixture())
        .collect();
    assert!(
        report.findings.is_empty(),
        "{} findings, the first ones:\n{}",
        report.findings.len(),
        shown.join("\n")
    );
}

/// >= 20 000 packets across the nine programs, well under two minutes.
#[test]
fn seeded_fuzz_run_keeps_every_invariant() {
    if !dataplane_tests::require_root() {
        return;
    }
    fuzz_run(20_000, 90, "fuzzshort");
}

/// The long run behind `cargo xtask fuzz` (ignored in the normal suite).
#[test]
#[ignore = "run by `cargo xtask fuzz`"]
fn long_fuzz_run() {
    if !dataplane_tests::require_root() {
        return;
    }
    fuzz_run(1_000_000, 900, "fuzzlong");
}

#[test]
fn saved_fixtures_replay() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fixtures = fuzz::fixtures(&fixtures_dir()).expect("reading fixtures");
    let mut failures = Vec::new();
    for fx in &fixtures {
        // Each on a fresh object: a fixture is one frame on the configured
        // maps, without the run's earlier flows.
        let dir = BpffsDir::new("fuzzfx").expect("bpffs dir");
        let mut dp = fuzz::load(dir.pins()).expect("load");
        let broken = fuzz::replay(&mut dp, dir.pins(), fx).expect("replay");
        println!(
            "{}: {}",
            fx.name,
            broken.as_deref().unwrap_or("keeps every invariant")
        );
        match (broken, fx.expect_fail) {
            (Some(b), false) => failures.push(format!("{}: {b}", fx.name)),
            (None, true) => failures.push(format!(
                "{}: marked `expect: fail` but passes now (remove the mark)",
                fx.name
            )),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
