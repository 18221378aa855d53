//! `cargo xtask`: the project's one front door. Each subcommand is what a user
//! or CI runs; `run` and `test` call `setup` themselves, so a fresh machine
//! needs nothing but the README's two commands.

mod bench;
mod fuzz;
mod prev_release;
mod progress;
mod setup;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build, run, lint and test the dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need, skipping what is present:
    /// rust-src for the nightly toolchain, bpf-linker built against the nightly
    /// toolchain's own libLLVM, and the Debian packages the tests use
    /// (iproute2, bpftool, ethtool, iputils-ping, nftables, iptables, ...).
    /// Idempotent; takes seconds when everything is there.
    Setup,
    /// Build the userspace crates and, through dataplane-user's build.rs, the
    /// eBPF object.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and start the agent in the foreground (Ctrl-C stops it).
    /// Arguments after `--` go to `dataplane agent`.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt check and clippy with -D warnings, for userspace and for the
    /// eBPF crate on the BPF target.
    Lint,
    /// Apply rustfmt to the whole workspace.
    Fmt,
    /// Set up, lint, then run every test: unit tests, BPF_PROG_TEST_RUN tests
    /// and the network-namespace integration tests (needs root; with CI=true a
    /// test that cannot run fails instead of skipping). Arguments after `--`
    /// go to the test binaries (e.g. a test name filter).
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark the dataplane side by side with no NAT, Docker's iptables
    /// rules (nft and legacy), plain nftables and nftables with maps/sets:
    /// throughput, RR latency, connection rate, UDP, egress, at N extra
    /// mappings and rules; install times; endpoint connect time beside
    /// netavark and CNI; `--family 6` or `4,6` adds IPv6. Needs root;
    /// writes target/bench/ (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Fuzz every tc program through BPF_PROG_TEST_RUN with generated and
    /// mutated packets, checked against a model (docs/fuzzing.md). Needs
    /// root; findings are saved as fixtures in tests/fixtures/fuzz.
    Fuzz(fuzz::FuzzArgs),
    /// Soak the agent: connects, disconnects, published ports, filter
    /// changes and restarts in a loop with steady flows running, then check
    /// that nothing leaked and no flow broke (docs/reliability.md). Needs
    /// root.
    Soak(soak::SoakArgs),
    /// The bench's load tool (run by `bench` inside its namespaces).
    #[command(hide = true)]
    BenchLoad(bench::load::LoadArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(&root, release),
        Cmd::Run { release, args } => {
            setup::run()?;
            build(&root, release)?;
            let profile = if release { "release" } else { "debug" };
            let bin = root.join("target").join(profile).join("dataplane");
            let mut cmd = Command::new(&bin);
            cmd.arg("agent").args(&args);
            exec(&mut cmd, &root)
        }
        Cmd::Lint => lint(&root),
        Cmd::Fmt => {
            let mut cmd = cargo_nightly();
            cmd.args(["fmt", "--all"]);
            exec(&mut cmd, &root)
        }
        Cmd::Bench(args) => bench::run(&root, &args),
        Cmd::Fuzz(args) => fuzz::run(&root, &args),
        Cmd::Soak(args) => soak::run(&root, &args),
        Cmd::BenchLoad(args) => bench::load::main(args),
        Cmd::Test { args } => {
            setup::run()?;
            lint(&root)?;
            // The integration tests drive the `dataplane` binary as a user
            // would; `cargo test -p dataplane-tests` alone does not build it.
            build(&root, false)?;
            // The upgrade test starts from the previous release's binary.
            prev_release::ensure(&root)?;
            test(&root, &args)
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_owned)
        .context("xtask's manifest dir has no parent")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The nightly toolchain's cargo (rustfmt options, the eBPF target).
fn cargo_nightly() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    // The outer `cargo xtask` exports its own toolchain; let rustup pick nightly.
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO");
    cmd
}

fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--workspace",
        "--exclude",
        "dataplane-ebpf",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    exec(&mut cmd, root)
}

fn lint(root: &Path) -> anyhow::Result<()> {
    let mut fmt = cargo_nightly();
    fmt.args(["fmt", "--all", "--", "--check"]);
    exec(&mut fmt, root).context("rustfmt found unformatted code (fix: cargo xtask fmt)")?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "dataplane-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    exec(&mut clippy, root)?;

    let mut bpf_clippy = cargo_nightly();
    bpf_clippy.args([
        "clippy",
        "--package",
        "dataplane-ebpf",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    exec(&mut bpf_clippy, root)
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    // Two runs so that the integration suite comes last, and within it
    // tests/tests/zz_leaks.rs after every other binary (cargo runs test
    // binaries one at a time, in name order): the leak check sees the state
    // every other test left.
    let mut totals = Totals::default();
    let unit = cargo_test(
        root,
        &[
            "--workspace",
            "--exclude",
            "dataplane-ebpf",
            "--exclude",
            "dataplane-tests",
        ],
        args,
        &mut totals,
    );
    let integration = cargo_test(root, &["--package", "dataplane-tests"], args, &mut totals);
    // One closing line over both runs, in the plain form CI reads.
    println!(
        "\ntests: {} passed, {} failed, {} ignored",
        totals.passed, totals.failed, totals.ignored
    );
    unit.and(integration)
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a libtest line: `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// `cargo test` with its output passed through and its results counted.
fn cargo_test(
    root: &Path,
    select: &[&str],
    args: &[String],
    totals: &mut Totals,
) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut cmd = cargo();
    cmd.arg("test").args(select).arg("--no-fail-fast");
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    cmd.current_dir(root).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        totals.add(&line);
        writeln!(out, "{line}")?;
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` to its end, killing it if it outlives `bound` (the long runs:
/// fuzz, soak); its exit status.
/// Runs `cmd`, killed once it outlives `bound`; a bar over its `expected`
/// length shows on a terminal.
fn run_bounded(
    cmd: &mut Command,
    expected: std::time::Duration,
    bound: std::time::Duration,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let started = std::time::Instant::now();
    let deadline = started + bound;
    let bar = progress::bar(expected.as_secs(), "s");
    bar.set_message(what.to_owned());
    loop {
        bar.set_position(started.elapsed().as_secs().min(expected.as_secs()));
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} outlived its bound of {} s and was killed",
                bound.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn exec(cmd: &mut Command, dir: &Path) -> anyhow::Result<()> {
    cmd.current_dir(dir);
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_sum_libtest_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 2.93s");
        t.add("test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (12, 1, 2));
    }
}
