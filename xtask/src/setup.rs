//! `cargo xtask setup`: installs the toolchain pieces and packages the build
//! and tests need, each only when missing or stale.
//!
//! bpf-linker is built from crates.io against the nightly toolchain's own
//! libLLVM (no system LLVM): a directory holding `lib/libLLVM.so` and the
//! exact soname as symlinks into the nightly sysroot is its LLVM_PREFIX, and
//! an rpath to the sysroot lets it run outside rustup. The soname changes with
//! each nightly, so a bpf-linker that no longer loads is rebuilt.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the tests and the agent call, and the Debian package of each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    ("nft", "nftables"),
    ("iptables-save", "iptables"),
    ("curl", "curl"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
    // The CNI plugin's test with a real podman (CNI backend, runc, an image
    // from busybox-static).
    ("podman", "podman"),
    ("conmon", "conmon"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    // The Docker remote driver's test with a real dockerd (Debian's 20.10,
    // with its own docker client under /usr/bin).
    ("dockerd", "docker.io"),
    // Overlay networks (docs/overlay.md): the etcd client crate builds its
    // gRPC code with protoc; the overlay test runs a real etcd.
    ("protoc", "protobuf-compiler"),
    // ... and the well-known types it imports (`google/protobuf/*.proto`),
    // which Debian ships apart from protoc (a recommendation we skip).
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
    ("etcd", "etcd-server"),
    // The overlay TLS test's certificates.
    ("openssl", "openssl"),
];

/// What `cargo xtask bench` needs on top (not installed by `setup`, which
/// the tests use): a command name or an absolute path, and its package.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("taskset", "util-linux"),
    ("timeout", "coreutils"),
    ("ss", "iproute2"),
    ("iptables-legacy-restore", "iptables"),
    ("iptables-nft-restore", "iptables"),
    ("nft", "nftables"),
    ("/usr/lib/podman/netavark", "netavark"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    // The cross-host overlay workloads' store.
    ("etcd", "etcd-server"),
];

pub fn run() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    ensure_packages()?;
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let sysroot = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context(
            "the nightly toolchain is needed to build the eBPF programs and is not installed \
             (it is preinstalled on the project's machines)",
        )?;
    Ok(PathBuf::from(sysroot))
}

fn ensure_rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    let status = rustup()
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .context("running rustup component add")?;
    if !status.success() {
        bail!("rustup component add rust-src --toolchain nightly failed: {status}");
    }
    Ok(())
}

/// The `libLLVM.so.<ver>-rust-<ver>-nightly` file in the nightly sysroot.
fn llvm_soname(sysroot: &Path) -> anyhow::Result<String> {
    let lib = sysroot.join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") {
            return Ok(name);
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this nightly does not ship the shared LLVM that bpf-linker links against",
        lib.display()
    )
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Whether the installed bpf-linker runs and is linked to this nightly's LLVM.
fn bpf_linker_ok(bin: &Path, soname: &str) -> bool {
    if !bin.exists() {
        return false;
    }
    let runs = Command::new(bin)
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let linked = Command::new("ldd")
        .arg(bin)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(soname));
    runs && linked
}

fn ensure_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let soname = llvm_soname(sysroot)?;
    let bin = cargo_home().join("bin/bpf-linker");
    if bpf_linker_ok(&bin, &soname) {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against {soname} (about 90 s)");
    // Kept out of /tmp so a cleaned /tmp does not break a later rebuild.
    let prefix = cargo_home().join("dataplane-llvm").join(&soname);
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let target = sysroot.join("lib").join(&soname);
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    }
    let rpath = format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display());
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "--locked",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", rpath)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC");
    let status = crate::progress::run(&mut install, "building bpf-linker")
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed: {status}");
    }
    if !bpf_linker_ok(&bin, &soname) {
        bail!(
            "{} was installed but does not run against {soname}",
            bin.display()
        );
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).is_file();
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(cmd).is_file())
    })
}

/// The bench's packages (`cargo xtask bench` calls this itself).
pub fn ensure_bench_packages() -> anyhow::Result<()> {
    install_missing(BENCH_PACKAGES)
}

fn ensure_packages() -> anyhow::Result<()> {
    install_missing(PACKAGES)
}

fn install_missing(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let status = crate::progress::run(&mut cmd, &format!("apt-get {}", args.join(" ")))
            .with_context(|| format!("running apt-get {}", args.join(" ")))?;
        if !status.success() {
            bail!(
                "apt-get {} failed: {status} (the packages need root)",
                args.join(" ")
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}
