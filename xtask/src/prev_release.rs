//! The previous release's `dataplane` binary, for the upgrade test
//! (`tests/tests/reliability_upgrade.rs`, issue 18): its state, pinned maps
//! and live flows must survive the current binary taking over. Built once
//! from [`PREVIOUS_RELEASE`] (its sources from `git archive`, its own target
//! directory) and kept at [`binary`] until that commit changes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The release the upgrade test starts from: the last commit before the
/// IPv6 fast path, IPv6 fragment tracking and the staged IPv6 programs
/// (three maps fewer, other programs). Move it forward when a release
/// changes what is pinned.
pub const PREVIOUS_RELEASE: &str = "ce227a5595084a32d82bc7b27a6d6064070c09bd";

/// Where the test finds the binary.
pub fn binary(root: &Path) -> PathBuf {
    root.join("target/prev-release/dataplane")
}

/// Builds the previous release's binary unless the one at [`binary`] is of
/// [`PREVIOUS_RELEASE`] already.
pub fn ensure(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/prev-release");
    let bin = binary(root);
    let stamp = dir.join("commit");
    if bin.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == PREVIOUS_RELEASE) {
        return Ok(bin);
    }
    println!(
        "prev-release: building {PREVIOUS_RELEASE} for the upgrade test (a few minutes, once)"
    );
    let src = dir.join("src");
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let mut archive = Command::new("git")
        .args(["archive", PREVIOUS_RELEASE])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&src)
        .stdin(archive.stdout.take().context("git archive's stdout")?)
        .status()
        .context("running tar")?;
    let git = archive.wait().context("waiting for git archive")?;
    if !git.success() || !tar.success() {
        bail!(
            "cannot extract {PREVIOUS_RELEASE} (git {git}, tar {tar}): a clone without that commit cannot run the upgrade test"
        );
    }
    let mut build = super::cargo();
    build
        .args([
            "build",
            "--package",
            "dataplane-user",
            "--bin",
            "dataplane",
            "--target-dir",
        ])
        .arg(dir.join("target"))
        .current_dir(&src);
    super::exec(&mut build, &src)?;
    fs::copy(dir.join("target/debug/dataplane"), &bin)
        .with_context(|| format!("copying the binary to {}", bin.display()))?;
    fs::write(&stamp, PREVIOUS_RELEASE).context("writing the stamp")?;
    Ok(bin)
}
