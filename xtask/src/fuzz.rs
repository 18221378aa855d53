//! `cargo xtask fuzz`: the long run of the packet fuzzer (issue 18). It
//! builds the test binary, then runs `tests/tests/fuzz_packets.rs`'s ignored
//! `long_fuzz_run` with the bounds in environment variables; findings are
//! written into tests/fixtures/fuzz/found (docs/fuzzing.md). The run
//! stops at its packet count or its time bound, whichever comes first, and
//! the child is killed if it outlives the bound by a minute.

use std::{path::Path, time::Duration};

use anyhow::bail;
use clap::Args;

#[derive(Args)]
pub struct FuzzArgs {
    /// Packets to generate (the run stops earlier at --seconds).
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// The generator's seed: the same seed makes the same packets.
    #[arg(long, default_value_t = 18)]
    seed: u64,
    /// Time bound of the run, in seconds.
    #[arg(long, default_value_t = 900)]
    seconds: u64,
}

pub fn run(root: &Path, args: &FuzzArgs) -> anyhow::Result<()> {
    if args.packets == 0 || args.seconds == 0 {
        bail!(
            "--packets ({}) and --seconds ({}) must be at least 1",
            args.packets,
            args.seconds
        );
    }
    // The eBPF object comes with dataplane-user's build.
    let mut build = super::cargo();
    build.args([
        "test",
        "--package",
        "dataplane-tests",
        "--test",
        "fuzz_packets",
        "--no-run",
    ]);
    super::exec(&mut build, root)?;

    // Findings land beside the replayed fixtures, not among them: each
    // depends on the run's earlier packets until it is cut down to the
    // frames that matter and moved up (docs/fuzzing.md).
    let fixtures = root.join("tests/fixtures/fuzz/found");
    let mut cmd = super::cargo();
    cmd.args([
        "test",
        "--package",
        "dataplane-tests",
        "--test",
        "fuzz_packets",
        "--",
        "--ignored",
        "--exact",
        "long_fuzz_run",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("DP_FUZZ_SEED", args.seed.to_string())
    .env("DP_FUZZ_PACKETS", args.packets.to_string())
    .env("DP_FUZZ_SECONDS", args.seconds.to_string())
    .env("DP_FUZZ_SAVE", &fixtures)
    .current_dir(root);
    let status = super::run_bounded(
        &mut cmd,
        Duration::from_secs(args.seconds),
        Duration::from_secs(args.seconds + 60),
        "the fuzz run",
    )?;
    if !status.success() {
        bail!(
            "the fuzz run found invariants broken (fixtures in {}): {status}",
            fixtures.display()
        );
    }
    Ok(())
}
