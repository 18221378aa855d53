//! Test harness for the dataplane's network-namespace integration tests.
//!
//! The harness owns everything a test builds: network namespaces (removed on
//! drop, also when the test panics), the veth/bridge topology inside them (a
//! fake host with an external client and containers, see [`topo`]), bounded
//! traffic generators and servers ([`traffic`]), hand-built packets for
//! BPF_PROG_TEST_RUN ([`packets`]), configuration map entries written
//! directly ([`datapath`]), per-test bpffs pin directories
//! ([`BpffsDir`]), the `dataplane` binary's path ([`dataplane_bin`]), the CNI
//! plugin driven as a runtime drives it ([`cni`]) and by a real podman
//! ([`podman`]), and the post-suite check that
//! nothing was left behind ([`leak`]). It never touches the root namespace's
//! routes, links, firewall or sysctls: every object lives inside a namespace it
//! created, and every name it creates starts with [`PREFIX`] and carries this
//! process's [`run_id`], so parallel test binaries cannot collide.

mod bpffs;
pub mod cgroup;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod datapath;
pub mod docker;
pub mod family;
mod family_run;
pub mod fuzz;
pub mod leak;
pub mod netns;
pub mod packets;
pub mod packets6;
pub mod podman;
pub mod soak;
pub mod topo;
pub mod traffic;

pub use bpffs::BpffsDir;

#[cfg(test)]
mod selftest;

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// Every namespace, link and bpffs entry the harness makes starts with this;
/// the leak check looks for it.
pub const PREFIX: &str = "dpt";

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Width of the per-process counter inside interface names (base 36).
const IFNAME_COUNTER_WIDTH: usize = 3;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Six hex characters identifying this test process, stable for its lifetime.
pub fn run_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        // RandomState is seeded randomly per process; pid and time make a
        // collision between concurrently started binaries even less likely.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        format!("{:06x}", h.finish() & 0xff_ffff)
    })
    .clone()
}

fn next_counter() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `dpt-<runid>-<counter>-<tag>`: a namespace name unique across threads and
/// processes.
pub fn unique_name(tag: &str) -> String {
    format!("{PREFIX}-{}-{}-{tag}", run_id(), next_counter())
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 || out.len() < width {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// Prefix shared by every interface name this process creates.
pub fn ifname_prefix() -> String {
    format!("{PREFIX}{}", run_id())
}

/// An interface name of at most [`IFNAME_MAX`] bytes: `dpt<runid><ctr><tag>`
/// with a 3-character base-36 counter and the tag cut to fit (non
/// alphanumeric characters dropped).
///
/// The counter wraps after 46656 names per process; names only need to be
/// unique within the harness's own namespaces, and a clash would surface as
/// an `ip link add` error rather than silently sharing a link.
pub fn unique_ifname(tag: &str) -> String {
    let n = next_counter() % 36u64.pow(IFNAME_COUNTER_WIDTH as u32);
    let mut name = format!("{}{}", ifname_prefix(), base36(n, IFNAME_COUNTER_WIDTH));
    let room = IFNAME_MAX.saturating_sub(name.len());
    name.extend(tag.chars().filter(char::is_ascii_alphanumeric).take(room));
    debug_assert!(name.len() <= IFNAME_MAX);
    name
}

/// Whether a privileged test may run. Not root: panics under `CI=true`
/// (skipping there would hide untested code), otherwise prints
/// `SKIPPED: <reason>` and returns false.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("privileged test cannot run: not root, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED: privileged test needs root (network namespaces, veth, ethtool)");
    false
}

/// Whether the external tools a test drives are installed (`cargo xtask
/// setup` installs them). Missing: panics under `CI=true`, otherwise prints
/// `SKIPPED` and returns false (like [`require_root`]).
pub fn require_tools(what: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            if t.starts_with('/') {
                !std::path::Path::new(t).is_file()
            } else {
                which(t).is_none()
            }
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{what} needs {} (cargo xtask setup installs them)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A tool on PATH or in the sbin/bin directories root's PATH may lack.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// An image for the real-runtime tests, as a tarball to import: a rootfs of
/// busybox-static with `applets` linked in `/bin` and `index` as
/// `/www/index.html`, built under `dir`.
pub fn busybox_tarball(
    dir: &std::path::Path,
    applets: &[&str],
    index: &str,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let root = dir.join("rootfs");
    for sub in ["bin", "www"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    let busybox = which("busybox").context("busybox")?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("www/index.html"), index)?;
    let tar = dir.join("rootfs.tar");
    cmd::run(&[
        "tar",
        "-C",
        &root.display().to_string(),
        "-cf",
        &tar.display().to_string(),
        ".",
    ])?;
    Ok(tar)
}

/// The `dataplane` binary cargo built beside this test executable
/// (`target/<profile>/dataplane`; test executables live in `deps/` below it).
pub fn dataplane_bin() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("{} has no grandparent directory", exe.display()))?;
    let bin = dir.join("dataplane");
    if !bin.is_file() {
        anyhow::bail!(
            "{} not found: build it with `cargo build -p dataplane-user` (cargo xtask test does)",
            bin.display()
        );
    }
    Ok(bin)
}
