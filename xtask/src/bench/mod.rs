//! `cargo xtask bench [--quick]`: the side-by-side benchmark of the
//! dataplane against no NAT, Docker's iptables rules (nft and legacy
//! backends), the same as plain nftables, and nftables with maps and sets.
//!
//! For each N (extra published ports and extra DOCKER-USER-style source
//! rules), every peer gets its own fresh topology ([`topology`]) with its
//! configuration installed and timed ([`peers`]); then, round after round,
//! each workload ([`workloads`]) runs on every peer in turn (the order
//! rotating each round), so slow drifts of a shared machine hit all peers
//! alike. The control plane (connecting one endpoint) is timed beside
//! netavark and the CNI plugins ([`control`]). Results go to
//! `target/bench/` as markdown and SVG ([`report`]).
//!
//! Host-local workloads (`hl-...`, [`hostlocal`]) run a client in the fake
//! host against the dataplane, Docker's `docker-proxy` and iptables' DNAT
//! in OUTPUT; `docker-nft` and `netavark-nft` are the real products'
//! nftables layouts.
//!
//! `--family 6` (or `4,6`) runs the IPv6 versions of the same workloads on
//! IPv6 topologies of their own ([`family`]): every peer then writes its
//! IPv6 rules (ip6tables, nftables `ip6` tables, the dataplane's IPv6
//! publishing and NAT66), and the report gets `in6-...`/`eg6-...` rows.
//!
//! The cross-host overlay workloads (`ov-crr`, `ov-rr`, `ov-tcp1`, IPv4)
//! run after the others on two peers of their own ([`overlay`]).
//!
//! `--workloads ct-1m` (not in the default set) measures the dataplane
//! with a conntrack table of a million entries ([`conntrack`]).
//!
//! Never part of `cargo xtask test`. Needs root; traffic stays inside the
//! bench's own namespaces, which are removed on exit, Ctrl-C or panic.

pub mod conntrack;
pub mod control;
pub mod family;
pub mod hostlocal;
pub mod load;
pub mod overlay;
pub mod peers;
pub mod plot;
pub mod report;
pub mod topology;
pub mod workloads;

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use self::{
    family::Family,
    hostlocal::HostLocal,
    peers::Peer,
    report::{AddRemove, Results, Sample},
    topology::Topology,
    workloads::{Dir, Durations, Kind, Servers, Workload},
};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// About 10 minutes on 2 cores: N = 0 and 10000, shorter runs, 2 rounds.
    /// IPv4 only unless --family says otherwise.
    #[arg(long)]
    pub quick: bool,
    /// Address families, comma separated: 4, 6 or 4,6 (IPv6: the same
    /// workloads over IPv6 through ip6tables, nftables ip6 tables and the
    /// dataplane's NAT66; named in6-..., eg6-...) [default: 4].
    #[arg(long, value_delimiter = ',')]
    pub family: Option<Vec<u8>>,
    /// Peers to run, comma separated (default all: none, iptables,
    /// iptables-legacy, nftables, nftables-sets, nftables-sets-ft (where
    /// the kernel has flowtables), docker-nft, netavark-nft, docker-proxy
    /// (host-local workloads only), dataplane; --quick: all but
    /// iptables-legacy and netavark-nft).
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Workloads, comma separated: in-tcp1, in-tcp4, in-rr, in-crr, in-udp
    /// and the same with eg- (egress), run in every --family; hp-rr,
    /// hp-crr (hairpin: a container to another's published port through
    /// the host's address; dataplane, netavark-nft, docker-proxy and none
    /// run them), every --family; xn-rr, xn-crr (a container on a second
    /// network to the published port through the host's address; IPv4;
    /// dataplane, docker-proxy and none); hl-crr,
    /// hl-rr, hl-seq (host-local, IPv4); ov-tcp1, ov-rr, ov-crr
    /// (cross-host overlay, dataplane against linux-vxlan whatever --peers
    /// says, when --family has 4); ct-1m (the dataplane with 1 000 000
    /// conntrack entries, IPv4, never by default) [default: all; quick: all
    /// but hl-seq].
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// Values of N, comma separated [default: 0,100,1000,10000; quick:
    /// 0,10000].
    #[arg(long, value_delimiter = ',')]
    pub n: Option<Vec<usize>>,
    /// Rounds per N [default: 3; quick: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Endpoints connected for the control-plane measurement, 0 to skip
    /// [default: 100; quick: 30].
    #[arg(long)]
    pub connects: Option<usize>,
    /// Do not rebuild (use the release binaries already in target/).
    #[arg(long)]
    pub no_build: bool,
}

/// The resolved plan of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub families: Vec<Family>,
    pub peers: Vec<String>,
    pub workloads: Vec<Workload>,
    /// The cross-host overlay workloads (IPv4 only).
    pub overlay: Vec<overlay::OvWorkload>,
    /// `ct-1m`: the conntrack table at a million entries.
    pub ct1m: bool,
    pub ns: Vec<usize>,
    pub rounds: usize,
    pub durations: Durations,
    pub connects: usize,
    pub quick: bool,
}

impl BenchArgs {
    fn plan(&self) -> Result<Plan> {
        let peers = match &self.peers {
            Some(p) => {
                for name in p {
                    if !peers::ALL.contains(&name.as_str()) {
                        bail!("--peers {name}: not one of {}", peers::ALL.join(", "));
                    }
                }
                // Kept in the canonical order.
                peers::ALL
                    .iter()
                    .filter(|a| p.iter().any(|n| n == *a))
                    .map(|s| (*s).to_owned())
                    .collect()
            }
            None => peers::ALL
                .iter()
                .filter(|p| !(self.quick && QUICK_SKIPS.contains(p)))
                .map(|s| (*s).to_owned())
                .collect(),
        };
        let mut families = Vec::new();
        for v in self.family.as_deref().unwrap_or(&[4]) {
            let f = Family::parse(*v)?;
            if !families.contains(&f) {
                families.push(f);
            }
        }
        families.sort();
        let base = workloads::all(Family::V4);
        if let Some(names) = &self.workloads {
            for name in names {
                if !base.iter().any(|w| &w.base_name() == name)
                    && overlay::OvWorkload::parse(name).is_none()
                    && name != conntrack::NAME
                {
                    let mut known: Vec<String> = base.iter().map(Workload::base_name).collect();
                    known.extend(overlay::OvWorkload::ALL.map(|w| w.name()));
                    known.push(conntrack::NAME.into());
                    bail!("--workloads {name}: not one of {}", known.join(", "));
                }
            }
        }
        let workloads = families
            .iter()
            .flat_map(|f| workloads::all(*f))
            .filter(|w| match &self.workloads {
                Some(names) => names.contains(&w.base_name()),
                // The 100 000-connection check is too long for --quick.
                None => !(self.quick && w.base_name() == "hl-seq"),
            })
            .collect();
        let overlay = overlay::OvWorkload::ALL
            .into_iter()
            .filter(|w| {
                families.contains(&Family::V4)
                    && self
                        .workloads
                        .as_ref()
                        .is_none_or(|names| names.contains(&w.name()))
            })
            .collect();
        let ns = match &self.n {
            Some(ns) => {
                for n in ns {
                    if *n > peers::MAX_N {
                        bail!("--n {n}: at most {}", peers::MAX_N);
                    }
                }
                ns.clone()
            }
            None if self.quick => vec![0, 10_000],
            None => vec![0, 100, 1_000, 10_000],
        };
        let rounds = self.rounds.unwrap_or(if self.quick { 2 } else { 3 });
        if rounds == 0 {
            bail!("--rounds 0: at least one round");
        }
        Ok(Plan {
            families,
            peers,
            workloads,
            overlay,
            ct1m: self
                .workloads
                .as_ref()
                .is_some_and(|names| names.iter().any(|n| n == conntrack::NAME)),
            ns,
            rounds,
            durations: if self.quick {
                Durations {
                    tcp_secs: 1,
                    load_secs: 0.5,
                }
            } else {
                Durations {
                    tcp_secs: 1,
                    load_secs: 1.0,
                }
            },
            connects: self.connects.unwrap_or(if self.quick { 30 } else { 100 }),
            quick: self.quick,
        })
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails once Ctrl-C or SIGTERM was received, so the run unwinds through
/// every destructor (namespaces, agent, pins) instead of dying mid-way.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// One peer with its topology and servers. Field order is drop order: the
/// peer (which cleans up what it made inside the host) before the servers,
/// the servers before their namespaces.
struct Instance {
    peer: Box<dyn Peer>,
    /// How the host reaches the published ports (None: no host-local path).
    host_local: Option<HostLocal>,
    servers: Servers,
    topo: Topology,
}

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (network namespaces, BPF programs, iptables in them)");
    }
    let mut plan = args.plan()?;
    crate::setup::ensure_bench_packages()?;
    if !args.no_build {
        build_release(root)?;
    }
    let load_bin = root.join("target/release/xtask");
    if !load_bin.is_file() {
        bail!("{} not found: run without --no-build", load_bin.display());
    }
    install_signal_handlers();
    topology::remove_stale();
    hostlocal::remove_stale_cgroups();
    let mut notes = Vec::new();
    if plan.peers.iter().any(|p| p == "nftables-sets-ft") && !peers::nftables_sets_ft::available()?
    {
        println!("bench: {}", peers::nftables_sets_ft::UNAVAILABLE);
        notes.push(peers::nftables_sets_ft::UNAVAILABLE.to_owned());
        plan.peers.retain(|p| p != "nftables-sets-ft");
    }
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let started = Instant::now();
    println!(
        "bench{}: {}; peers {}; workloads {}; N {:?}; {} rounds",
        if plan.quick { " --quick" } else { "" },
        plan.families
            .iter()
            .map(|f| f.label())
            .collect::<Vec<_>>()
            .join(" and "),
        plan.peers.join(","),
        plan.workloads
            .iter()
            .map(Workload::name)
            .chain(plan.overlay.iter().map(|w| w.name()))
            .chain(plan.ct1m.then(|| conntrack::NAME.to_owned()))
            .collect::<Vec<_>>()
            .join(","),
        plan.ns,
        plan.rounds
    );
    let mut results = Results::new(plan.clone());
    results.notes = notes;
    if !plan.workloads.is_empty() {
        let runs = plan.ns.len() * plan.rounds * plan.workloads.len() * plan.peers.len();
        let bar = crate::progress::bar(runs as u64, "runs");
        for &n in &plan.ns {
            measure_n(root, &load_bin, &plan, n, &mut results, &bar)?;
        }
    }
    if !plan.overlay.is_empty() {
        check_interrupt()?;
        overlay::measure(root, &load_bin, &plan, &mut results)?;
    }
    if plan.ct1m {
        check_interrupt()?;
        results.conntrack = Some(conntrack::measure(root, &load_bin, &plan)?);
    }
    if plan.connects > 0 {
        check_interrupt()?;
        results.control = control::measure(root, plan.connects, !plan.quick)?;
    }
    results.elapsed = started.elapsed();
    let md = report::write(&results, &out_dir)?;
    println!("\n{md}");
    println!(
        "bench: {:.0} s; results in {}",
        results.elapsed.as_secs_f64(),
        out_dir.display()
    );
    Ok(())
}

fn build_release(root: &Path) -> Result<()> {
    let status =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--release",
                "--package",
                "dataplane-user",
                "--package",
                "xtask",
                "--bins",
            ])
            .current_dir(root)
            .status()
            .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed: {status}");
    }
    Ok(())
}

/// Repetitions of the single add/remove measurement (the median is
/// reported; a few are too few on a shared machine).
const ADD_REMOVE_REPS: usize = 25;
/// At least this many add/remove repetitions, and more only while the
/// peer's have taken less than [`ADD_REMOVE_BUDGET`] (a linear peer at
/// N = 10 000 takes seconds a pair).
const ADD_REMOVE_MIN: usize = 3;
const ADD_REMOVE_BUDGET: Duration = Duration::from_secs(2);
/// Peers a `--quick` run leaves out (the full run has them): iptables'
/// legacy backend and netavark's layout, both also linear per port, to
/// keep `--quick` under 5 minutes.
const QUICK_SKIPS: [&str; 2] = ["iptables-legacy", "netavark-nft"];

fn measure_n(
    root: &Path,
    load_bin: &Path,
    plan: &Plan,
    n: usize,
    results: &mut Results,
    bar: &crate::progress::Bar,
) -> Result<()> {
    let mut instances = Vec::new();
    for &family in &plan.families {
        crate::progress::suspend(|| {
            println!(
                "bench: N = {n}: building {} {} topologies",
                plan.peers.len(),
                family.label()
            )
        });
        let host_local = plan.workloads.iter().any(|w| w.dir == Dir::Host);
        for name in &plan.peers {
            check_interrupt()?;
            instances.push(crate::progress::suspend(|| {
                build(root, load_bin, name, family, n, host_local, results)
            })?);
        }
    }
    for round in 0..plan.rounds {
        for w in &plan.workloads {
            // The instances of the workload's family, in a rotating order
            // each round so no peer always runs first.
            let of: Vec<usize> = (0..instances.len())
                .filter(|&i| instances[i].topo.family == w.family)
                .collect();
            for i in 0..of.len() {
                check_interrupt()?;
                let inst = &mut instances[of[(i + round) % of.len()]];
                bar.inc(1);
                bar.set_message(format!("N = {n}: {} on {}", w.name(), inst.peer.name()));
                let skip = inst
                    .peer
                    .skips(w)
                    .or((w.dir == Dir::Host && inst.host_local.is_none())
                        .then_some("no host-local path to the published ports"))
                    // 100 000 connections to one port say nothing more at
                    // another N (a minute a peer a round).
                    .or((w.kind == Kind::Seq && n != 0).then_some("run at N = 0 only"));
                if let Some(why) = skip {
                    let note = format!("{} skipped on {}: {why}", w.name(), inst.peer.name());
                    if !results.notes.contains(&note) {
                        crate::progress::suspend(|| println!("  {note}"));
                        results.notes.push(note);
                    }
                    continue;
                }
                let values = run_one(inst, *w, load_bin, plan.durations).with_context(|| {
                    format!(
                        "{} on {} at N = {n}, round {}",
                        w.name(),
                        inst.peer.name(),
                        round + 1
                    )
                })?;
                for (m, v) in w.metrics().into_iter().zip(values) {
                    results.samples.push(Sample {
                        peer: inst.peer.name().to_owned(),
                        n,
                        metric: m.name,
                        value: v,
                    });
                }
            }
        }
        crate::progress::suspend(|| println!("  round {}/{} done", round + 1, plan.rounds));
    }
    Ok(())
}

/// One peer on a fresh topology of `family` with N extra mappings and
/// rules: installed (timed), one add/remove timed, servers started.
fn build(
    root: &Path,
    load_bin: &Path,
    name: &str,
    family: Family,
    n: usize,
    host_local: bool,
    results: &mut Results,
) -> Result<Instance> {
    let mut peer = peers::make(name, root)?;
    let topo = Topology::new(&format!("{}{}", short(name), family.suffix()), family)?;
    let spinner = crate::progress::spinner(format!("{name}: installing N = {n}"));
    let install = peer
        .setup(&topo, n)
        .with_context(|| format!("setting up {name} ({}) at N = {n}", family.label()));
    spinner.finish_and_clear();
    let install = install?;
    let label = format!("{name}{}", family.suffix());
    println!(
        "  {label:<16} install {:>9.1} ms  {}",
        install.total.as_secs_f64() * 1e3,
        install.note.as_deref().unwrap_or("")
    );
    let mut adds = Vec::new();
    let mut rms = Vec::new();
    let started = Instant::now();
    for i in 1..=ADD_REMOVE_REPS {
        if let Some((a, r)) = peer.add_remove(&topo)? {
            adds.push(a);
            rms.push(r);
        }
        if i >= ADD_REMOVE_MIN && started.elapsed() > ADD_REMOVE_BUDGET {
            break;
        }
    }
    let add_remove = (!adds.is_empty()).then(|| {
        adds.sort();
        rms.sort();
        AddRemove {
            add: adds[adds.len() / 2],
            remove: rms[rms.len() / 2],
        }
    });
    if let Some(ar) = &add_remove {
        println!(
            "  {label:<16} add one {:>7.2} ms, remove one {:>7.2} ms",
            ar.add.as_secs_f64() * 1e3,
            ar.remove.as_secs_f64() * 1e3
        );
    }
    results.installs.push(report::InstallResult {
        peer: name.to_owned(),
        family,
        n,
        install,
        add_remove,
    });
    let servers = Servers::start(&topo, load_bin)?;
    let host_local = match host_local {
        true => peer.host_local(&topo)?,
        false => None,
    };
    if let Some(hl) = &host_local {
        hostlocal::prepare_host(&topo)?;
        println!("  {label:<16} host-local: {}", hl.note);
    }
    Ok(Instance {
        peer,
        host_local,
        servers,
        topo,
    })
}

/// One workload run, retried once: a server still finishing the previous
/// test (iperf3 serves one at a time) is not the dataplane's fault, but a
/// second failure is reported.
fn run_one(inst: &mut Instance, w: Workload, load_bin: &Path, d: Durations) -> Result<Vec<f64>> {
    inst.servers.check()?;
    let addr = inst.peer.ingress_addr(&inst.topo);
    let once = |inst: &Instance| match &inst.host_local {
        Some(hl) if w.dir == Dir::Host => hostlocal::run(w, &inst.topo, hl, load_bin, d),
        _ => workloads::run(w, &inst.topo, addr, load_bin, d),
    };
    match once(inst) {
        Ok(v) => Ok(v),
        Err(first) => {
            crate::progress::suspend(|| {
                eprintln!(
                    "bench: {} on {} failed once, retrying: {first:#}",
                    w.name(),
                    inst.peer.name()
                )
            });
            std::thread::sleep(Duration::from_millis(500));
            check_interrupt()?;
            once(inst)
        }
    }
}

/// A short namespace tag for a peer.
fn short(peer: &str) -> String {
    match peer {
        "iptables-legacy" => "iptl".into(),
        "nftables-sets" => "nfts".into(),
        "nftables" => "nft".into(),
        "iptables" => "ipt".into(),
        "dataplane" => "dp".into(),
        "nftables-sets-ft" => "nftf".into(),
        "docker-nft" => "dnft".into(),
        "netavark-nft" => "nv".into(),
        "docker-proxy" => "dprx".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: super::BenchArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<super::Plan> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.bench.plan()
    }

    #[test]
    fn quick_leaves_out_two_linear_peers_and_the_full_run_has_all() {
        let quick = plan(&["--quick"]).expect("plan").peers;
        assert!(super::QUICK_SKIPS
            .iter()
            .all(|p| !quick.iter().any(|q| q == p)));
        assert!(quick.iter().any(|p| p == "docker-nft") && quick.iter().any(|p| p == "dataplane"));
        assert_eq!(
            plan(&[]).expect("plan").peers.len(),
            super::peers::ALL.len()
        );
        let asked = plan(&["--quick", "--peers", "netavark-nft"])
            .expect("plan")
            .peers;
        assert_eq!(asked, ["netavark-nft"]);
    }

    #[test]
    fn family_selects_the_workloads_of_each_family() {
        let names =
            |p: super::Plan| -> Vec<String> { p.workloads.iter().map(|w| w.name()).collect() };
        let p = plan(&["--quick"]).expect("plan");
        assert_eq!(p.families, [super::Family::V4]);
        assert!(names(p).iter().all(|n| !n.contains('6')));
        let p = plan(&["--family", "6,4", "--workloads", "in-crr,eg-rr"]).expect("plan");
        assert_eq!(names(p), ["in-crr", "eg-rr", "in6-crr", "eg6-rr"]);
        assert!(plan(&["--family", "5"]).is_err());
        assert!(plan(&["--workloads", "in6-crr"]).is_err());
        let p = plan(&["--workloads", "ov-crr,ov-rr"]).expect("plan");
        assert!(p.workloads.is_empty());
        let ov: Vec<String> = p.overlay.iter().map(|w| w.name()).collect();
        assert_eq!(ov, ["ov-rr", "ov-crr"]);
        assert_eq!(plan(&["--quick"]).expect("plan").overlay.len(), 3);
        assert!(plan(&["--family", "6"]).expect("plan").overlay.is_empty());
        assert!(!plan(&["--quick"]).expect("plan").ct1m);
        let p = plan(&["--workloads", "ct-1m"]).expect("plan");
        assert!(p.ct1m && p.workloads.is_empty() && p.overlay.is_empty());
    }
}
