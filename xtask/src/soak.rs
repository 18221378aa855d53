//! `cargo xtask soak`: the long soak run (issue 18). It runs
//! `tests/tests/soak.rs`'s ignored `long_soak` for `--minutes`: connects,
//! disconnects, published ports, filter changes and agent restarts in a
//! loop with two steady TCP flows running, then the leak and flow checks
//! (docs/reliability.md). The child is killed if it outlives its bound by
//! five minutes.

use std::{path::Path, time::Duration};

use anyhow::bail;
use clap::Args;

#[derive(Args)]
pub struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
}

pub fn run(root: &Path, args: &SoakArgs) -> anyhow::Result<()> {
    if args.minutes == 0 || args.minutes > 24 * 60 {
        bail!("--minutes ({}) must be 1 to 1440", args.minutes);
    }
    let mut cmd = super::cargo();
    cmd.args([
        "test",
        "--package",
        "dataplane-tests",
        "--test",
        "soak",
        "--",
        "--ignored",
        "--exact",
        "long_soak",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("DP_SOAK_MINUTES", args.minutes.to_string())
    .current_dir(root);
    let status = super::run_bounded(
        &mut cmd,
        Duration::from_secs(args.minutes * 60),
        Duration::from_secs(args.minutes * 60 + 300),
        "the soak run",
    )?;
    if !status.success() {
        bail!("the soak run failed (its report is above): {status}");
    }
    Ok(())
}
