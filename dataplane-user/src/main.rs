//! `dataplane`: the agent and its CLI. Input is parsed here, once, into typed
//! values; the work is done by the library.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use dataplane_common::maps::PIN_ROOT;
use dataplane_user::{
    bpffs::PinRoot,
    ebpf::{detach_tc, Dataplane, Direction, LoadError},
    netns, stats,
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "dataplane",
    version,
    about = "eBPF dataplane for container networking"
)]
struct Cli {
    /// bpffs directory holding the dataplane's pinned maps and links.
    #[arg(long, global = true, env = "DATAPLANE_BPFFS_ROOT", default_value = PIN_ROOT)]
    bpffs_root: PathBuf,
    /// Act inside this network namespace: a name under /var/run/netns or a
    /// path such as /proc/PID/ns/net.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground: attach the statistics program to the
    /// uplinks and log their counters until Ctrl-C/SIGTERM, then detach.
    Agent {
        /// Interface to attach to (repeatable). Default: every interface that
        /// carries a default route.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Seconds between counter log lines (1-3600).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Per-protocol packet counters (the `dp_stats` tc program).
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
    /// Remove every pin under the bpffs root: detaches all programs and frees
    /// the maps the dataplane created.
    Cleanup,
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Attach `dp_stats` to an interface with tcx; the link is pinned, so it
    /// stays attached after this command exits.
    Attach {
        iface: String,
        #[arg(long, value_enum, default_value_t = Dirs::Both)]
        direction: Dirs,
    },
    /// Detach `dp_stats` from an interface.
    Detach {
        iface: String,
        #[arg(long, value_enum, default_value_t = Dirs::Both)]
        direction: Dirs,
    },
    /// Print the counters, summed over CPUs.
    Show {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Dirs {
    Ingress,
    Egress,
    Both,
}

impl Dirs {
    fn list(self) -> &'static [Direction] {
        match self {
            Dirs::Ingress => &[Direction::Ingress],
            Dirs::Egress => &[Direction::Egress],
            Dirs::Both => &[Direction::Ingress, Direction::Egress],
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(ns) = &cli.netns {
        let path = netns_path(ns);
        if !path.exists() {
            bail!(
                "--netns {ns}: no such network namespace ({} does not exist)",
                path.display()
            );
        }
        netns::enter(&path)
            .with_context(|| format!("--netns {ns}: entering {}", path.display()))?;
    }
    let pins = PinRoot::new(cli.bpffs_root);
    match cli.command {
        Command::Agent { ifaces, interval } => agent(&pins, ifaces, Duration::from_secs(interval)),
        Command::Stats { command } => match command {
            StatsCommand::Attach { iface, direction } => {
                check_iface(&iface)?;
                let mut dp = Dataplane::load(&pins)?;
                for dir in direction.list() {
                    let pin = dp.attach_tc(stats::PROGRAM, &iface, *dir)?;
                    println!(
                        "attached {} to {iface} ({}), link pinned at {}",
                        stats::PROGRAM,
                        dir.name(),
                        pin.display()
                    );
                }
                Ok(())
            }
            StatsCommand::Detach { iface, direction } => {
                for dir in direction.list() {
                    detach_tc(&pins, stats::PROGRAM, &iface, *dir)?;
                    println!("detached {} from {iface} ({})", stats::PROGRAM, dir.name());
                }
                Ok(())
            }
            StatsCommand::Show { format } => {
                let snap = stats::read(&pins)?;
                print_snapshot(&snap, format)
            }
        },
        Command::Cleanup => {
            let errors = pins.remove_all();
            if errors.is_empty() {
                println!("removed {}", pins.path().display());
                return Ok(());
            }
            for e in &errors {
                eprintln!("cleanup: {}", chain(e));
            }
            bail!("cleanup left {} error(s)", errors.len())
        }
    }
}

/// An error and its sources on one line, like anyhow's `{:#}`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        out.push_str(": ");
        out.push_str(&src.to_string());
        cur = src.source();
    }
    out
}

fn netns_path(ns: &str) -> PathBuf {
    if ns.contains('/') {
        PathBuf::from(ns)
    } else {
        PathBuf::from("/var/run/netns").join(ns)
    }
}

fn check_iface(iface: &str) -> anyhow::Result<()> {
    if iface.is_empty()
        || iface.len() > 15
        || iface.contains(['/', '\0'])
        || iface.contains(char::is_whitespace)
    {
        bail!(
            "interface {iface:?}: not a valid interface name (1-15 bytes, no '/' or white space)"
        );
    }
    let c = std::ffi::CString::new(iface).with_context(|| format!("interface {iface:?}"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string; it resolves in the
    // calling thread's network namespace (unlike /sys/class/net after setns).
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        bail!("interface {iface:?}: no such interface in this network namespace");
    }
    Ok(())
}

fn print_snapshot(snap: &stats::Snapshot, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let obj = serde_json::json!({
                "protocols": rows_json(&snap.protocols),
                "drops": rows_json(&snap.drops),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&obj)?)?;
        }
        Format::Table => {
            writeln!(out, "{:<16} {:>14} {:>16}", "PROTOCOL", "PACKETS", "BYTES")?;
            for (name, c) in &snap.protocols {
                writeln!(out, "{name:<16} {:>14} {:>16}", c.packets, c.bytes)?;
            }
            writeln!(out)?;
            writeln!(
                out,
                "{:<16} {:>14} {:>16}",
                "DROP REASON", "PACKETS", "BYTES"
            )?;
            for (name, c) in &snap.drops {
                writeln!(out, "{name:<16} {:>14} {:>16}", c.packets, c.bytes)?;
            }
        }
    }
    Ok(())
}

fn rows_json(rows: &[(String, stats::Counter)]) -> serde_json::Value {
    rows.iter()
        .map(|(n, c)| {
            (
                n.clone(),
                serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Interfaces that carry an IPv4 default route (/proc/net/route).
fn default_route_ifaces() -> anyhow::Result<Vec<String>> {
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let mut out: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect();
    out.dedup();
    Ok(out)
}

fn agent(pins: &PinRoot, ifaces: Vec<String>, interval: Duration) -> anyhow::Result<()> {
    let ifaces = if ifaces.is_empty() {
        default_route_ifaces()?
    } else {
        ifaces
    };
    if ifaces.is_empty() {
        bail!("no interface given (--iface) and no default route to find an uplink from");
    }
    for i in &ifaces {
        check_iface(i)?;
    }
    let mut dp = Dataplane::load(pins)?;
    let mut attached = Vec::new();
    for iface in &ifaces {
        for dir in [Direction::Ingress, Direction::Egress] {
            match dp.attach_tc(stats::PROGRAM, iface, dir) {
                Ok(pin) => {
                    info!(iface, direction = dir.name(), pin = %pin.display(), "attached {}", stats::PROGRAM);
                    attached.push((iface.clone(), dir));
                }
                Err(LoadError::AlreadyAttached { path, .. }) => {
                    info!(iface, direction = dir.name(), pin = %path.display(), "already attached; adopting");
                }
                Err(e) => {
                    let err = anyhow::Error::from(e);
                    detach_all(pins, &attached);
                    return Err(err);
                }
            }
        }
    }
    info!(bpffs = %pins.path().display(), "agent running; counters with `dataplane stats show`, Ctrl-C to stop");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => match stats::read(pins) {
                    Ok(snap) => {
                        let line: Vec<String> = snap.protocols.iter()
                            .filter(|(_, c)| c.packets > 0)
                            .map(|(n, c)| format!("{n}={}/{}B", c.packets, c.bytes))
                            .collect();
                        info!(counters = %line.join(" "), "stats");
                    }
                    Err(e) => warn!("reading counters: {:#}", anyhow::Error::from(e)),
                },
            }
        }
        anyhow::Ok(())
    });
    info!("stopping: detaching what this agent attached");
    detach_all(pins, &attached);
    result
}

/// Best-effort: reports every failure and carries on.
fn detach_all(pins: &PinRoot, attached: &[(String, Direction)]) {
    for (iface, dir) in attached {
        if let Err(e) = detach_tc(pins, stats::PROGRAM, iface, *dir) {
            warn!("{:#}", anyhow::Error::from(e));
        }
    }
}
