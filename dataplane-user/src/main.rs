//! `dataplane`: the agent and its CLI. Input is parsed here, once, into typed
//! values; the work is done by the library.

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dataplane_common::{maps::PIN_ROOT, nat::NatConfig};
use dataplane_user::{
    api::{self, Request},
    bpffs::PinRoot,
    config::{self, Config, Setting},
    conntrack,
    ebpf::{detach_tc, Dataplane, Direction, LoadError},
    filter, metrics, monitor, netns,
    network::{
        inspect,
        manager::{Cache, ConnectArgs, Manager},
        model::CreateArgs,
    },
    sock, state, stats,
    table::{Align, Table},
};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "dataplane",
    version,
    about = "eBPF dataplane for container networking"
)]
struct Cli {
    /// Configuration file (TOML, see docs/configuration.md). The default
    /// path is used only if it exists.
    #[arg(long, global = true, env = "DATAPLANE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// bpffs directory holding the dataplane's pinned maps and links
    /// [default: the config's bpffs_root, else /sys/fs/bpf/dataplane].
    #[arg(long, global = true, env = "DATAPLANE_BPFFS_ROOT")]
    bpffs_root: Option<PathBuf>,
    /// Act inside this network namespace: a name under /var/run/netns or a
    /// path such as /proc/PID/ns/net.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    netns: Option<String>,
    /// The agent's API socket; the CLI works on the state itself when no
    /// agent answers there [default: the config's socket, else
    /// /run/dataplane/dataplane.sock].
    #[arg(long, global = true, env = "DATAPLANE_SOCKET")]
    socket: Option<PathBuf>,
    /// Directory of the persisted desired state (networks, endpoints)
    /// [default: the config's state_dir, else /var/lib/dataplane].
    #[arg(long, global = true, env = "DATAPLANE_STATE_DIR")]
    state_dir: Option<PathBuf>,
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
        /// Seconds between counter log lines and conntrack garbage
        /// collections (1-3600).
        /// [default: the config's interval_seconds, else 10]
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: Option<u64>,
        #[command(flatten)]
        timeouts: TimeoutArgs,
        /// Cgroup whose processes reach published ports on the host's own
        /// addresses (`local attach`); `none` turns this off. Default: the
        /// cgroup v2 root.
        #[arg(long, value_name = "PATH|none")]
        host_cgroup: Option<String>,
        /// Unix socket serving Docker's remote network driver (`docker
        /// network create -d NAME`, NAME being the file name without
        /// `.sock`); `off` turns it off. [default: the config's
        /// docker_socket, else /run/docker/plugins/dataplane.sock]
        #[arg(long, value_name = "PATH|off")]
        docker_socket: Option<String>,
        /// Translated flows skip the bridge and the host stack (`on`), or
        /// every packet goes through the stack (`off`), for the programs
        /// this agent attaches. [default: the config's fast_path, else on]
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        fast_path: Option<bool>,
    },
    /// Manage networks (like `docker network`).
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Connect a network namespace (a "container") to a network: a veth pair
    /// on the network's bridge (or a macvlan child), named eth0, eth1, ...
    /// inside, with address, MAC, MTU and a default route via the gateway.
    Connect {
        /// A network name or id, `none`, `host`, or `container:<endpoint>`.
        network: String,
        /// Name under /var/run/netns, or a path such as /proc/PID/ns/net.
        /// Optional only for `container:<endpoint>`.
        #[arg(value_name = "NETNS")]
        target: Option<String>,
        /// IPv4 address (default: the lowest free one of --ip-range/subnet).
        #[arg(long)]
        ip: Option<String>,
        /// MAC address (default: 02:42 followed by the IPv4 address bytes).
        #[arg(long)]
        mac: Option<String>,
        /// Endpoint name (default: the namespace's file name).
        #[arg(long)]
        name: Option<String>,
        /// Interface name inside the namespace (default: the first free ethN).
        #[arg(long)]
        ifname: Option<String>,
        /// Publish a port, Docker's syntax (repeatable):
        /// [HOSTIP:]HOSTPORT[-END]:CPORT[-END][/tcp|udp].
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
    },
    /// Published ports of a live endpoint.
    Publish {
        #[command(subcommand)]
        command: PublishCommand,
    },
    /// Interfaces whose traffic is translated (published ports arriving,
    /// masquerade leaving): the NAT programs attach to them.
    Uplink {
        #[command(subcommand)]
        command: UplinkCommand,
    },
    /// NAT rules in force, with counters (like `iptables -t nat -vnL`).
    Nat {
        #[command(subcommand)]
        command: NatCommand,
    },
    /// The BPF connection tracking table (like `conntrack -L`).
    Conntrack {
        #[command(subcommand)]
        command: ConntrackCommand,
    },
    /// DOCKER-USER-style rules for traffic coming in to containers (published
    /// ports included), evaluated in order at a cost that does not grow with
    /// their number.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// Published ports for processes on the host itself (127.0.0.1:PORT and
    /// the host's addresses), through cgroup v2 socket hooks: no proxy.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Disconnect an endpoint (by name, id, or namespace) from a network,
    /// removing exactly what connect created.
    Disconnect { network: String, container: String },
    /// Per-protocol packet counters (the `dp_stats` tc program).
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
    /// Stream what the datapath drops, with the reason and the packet's
    /// addresses, until Ctrl-C (like `cilium monitor --type drop`).
    Monitor {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Who answers: the agent (through its socket) or the CLI itself.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove everything the dataplane created: endpoints' links, bridges,
    /// the state file, and every pin under the bpffs root (which detaches all
    /// programs and frees the maps).
    Cleanup,
}

#[derive(Subcommand)]
enum PublishCommand {
    /// Publish more ports of an endpoint.
    Add {
        network: String,
        /// Endpoint name, id, or namespace.
        endpoint: String,
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// Stop publishing ports of an endpoint.
    Rm {
        network: String,
        endpoint: String,
        #[arg(required = true)]
        specs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Add a rule (at the end; `--first` puts it before all others, like
    /// `iptables -I DOCKER-USER`), or with `--from-file` a whole list at
    /// once, all or none.
    Add {
        /// Only traffic to endpoints of this network.
        #[arg(long)]
        network: Option<String>,
        /// Only traffic that came in on this interface.
        #[arg(long = "in")]
        in_iface: Option<String>,
        /// Only traffic from this CIDR.
        #[arg(long, conflicts_with = "not_src")]
        src: Option<String>,
        /// Only traffic from outside this CIDR.
        #[arg(long)]
        not_src: Option<String>,
        /// Only traffic to this container port (after DNAT), PORT[/tcp|udp].
        #[arg(long)]
        dport: Option<String>,
        /// drop or accept.
        #[arg(long, required_unless_present = "from_file")]
        action: Option<String>,
        #[arg(long)]
        first: bool,
        /// Add the rules of FILE ("-": stdin) in its order, in one request:
        /// one rule per line in these flags (as `filter ls` prints them,
        /// e.g. `--src 10.0.0.1/32 --action drop`), `#` comments and blank
        /// lines ignored. Prints the new ids, one per line.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with_all = ["network", "in_iface", "src", "not_src", "dport", "action"]
        )]
        from_file: Option<PathBuf>,
    },
    /// Rules in evaluation order, with packet/byte counters.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    Rm {
        id: u32,
    },
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Translate connections of processes in this cgroup (default: the
    /// cgroup v2 root, i.e. every process; only sockets of the host's network
    /// namespace are translated).
    Attach {
        cgroup: Option<PathBuf>,
    },
    Detach {
        cgroup: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UplinkCommand {
    Add { iface: String },
    Rm { iface: String },
    Ls,
}

#[derive(Subcommand)]
enum NatCommand {
    /// Published ports (DNAT) and masqueraded subnets (SNAT).
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// `on` / `off` for a flag (clap's bool parser takes only true/false).
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{value:?}: expected on or off")),
    }
}

/// Conntrack idle timeouts in seconds; each overrides the configuration
/// file (defaults: established 21600, SYN 60, closing 10, UDP/ICMP 60).
#[derive(Args, Clone, Copy)]
struct TimeoutArgs {
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ct_tcp_established: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ct_tcp_syn: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ct_tcp_closing: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ct_other: Option<u64>,
}

impl TimeoutArgs {
    fn over(self, base: conntrack::Timeouts) -> conntrack::Timeouts {
        let pick =
            |flag: Option<u64>, base: Duration| flag.map(Duration::from_secs).unwrap_or(base);
        conntrack::Timeouts {
            tcp_established: pick(self.ct_tcp_established, base.tcp_established),
            tcp_syn: pick(self.ct_tcp_syn, base.tcp_syn),
            tcp_closing: pick(self.ct_tcp_closing, base.tcp_closing),
            other: pick(self.ct_other, base.other),
        }
    }
}

#[derive(Subcommand)]
enum ConntrackCommand {
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove flows idle past their timeout (the agent does this
    /// periodically).
    Gc {
        #[command(flatten)]
        timeouts: TimeoutArgs,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Create a network.
    Create {
        name: String,
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// Subnet in CIDR form (default: the next free one of Docker's pools).
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address (default: the subnet's first host).
        #[arg(long)]
        gateway: Option<String>,
        /// Allocate container addresses from this sub-range.
        #[arg(long)]
        ip_range: Option<String>,
        /// No egress: no default route in endpoints, no masquerade.
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        mtu: Option<String>,
        /// Driver options in Docker's names (repeatable), e.g.
        /// com.docker.network.bridge.name=br0, parent=eth0.
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// KEY=VALUE (repeatable).
        #[arg(long)]
        label: Vec<String>,
    },
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print networks as JSON in the shape of `docker network inspect`.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while endpoints are attached, unless --force).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(short, long)]
        force: bool,
    },
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

/// Read when present, so the CLI and the agent agree on paths.
const DEFAULT_CONFIG: &str = "/etc/dataplane/dataplane.toml";

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
        let path = dataplane_user::network::manager::netns_path(ns);
        if !path.exists() {
            bail!(
                "--netns {ns}: no such network namespace ({} does not exist)",
                path.display()
            );
        }
        netns::enter(&path)
            .with_context(|| format!("--netns {ns}: entering {}", path.display()))?;
    }
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG))?
        }
        None => Config::default(),
    };
    let pins = PinRoot::new(
        cli.bpffs_root
            .or_else(|| config.bpffs_root.clone())
            .unwrap_or_else(|| PathBuf::from(PIN_ROOT)),
    );
    let state_dir = cli
        .state_dir
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(state::DEFAULT_DIR));
    let socket = cli
        .socket
        .or_else(|| config.socket.clone())
        .unwrap_or_else(|| PathBuf::from(api::DEFAULT_SOCKET));
    let client = Client {
        socket: socket.clone(),
        ctx: api::Context {
            state_dir: state_dir.clone(),
            pins: pins.clone(),
            nat: config.nat,
            server: "cli",
            cache: None,
        },
    };
    match cli.command {
        Command::Agent {
            ifaces,
            interval,
            timeouts,
            host_cgroup,
            docker_socket,
            fast_path,
        } => {
            let docker_socket = match (docker_socket.as_deref(), &config.docker_socket) {
                (Some("off" | ""), _) | (None, Setting::Off) => None,
                (Some(path), _) => Some(PathBuf::from(path)),
                (None, Setting::Value(path)) => Some(path.clone()),
                (None, Setting::Default) => {
                    Some(PathBuf::from(dataplane_user::docker::DEFAULT_SOCKET))
                }
            };
            let host_cgroup = match (host_cgroup.as_deref(), &config.host_cgroup) {
                (Some("none"), _) | (None, Setting::Off) => None,
                (Some(path), _) => Some(PathBuf::from(path)),
                (None, Setting::Value(path)) => Some(path.clone()),
                (None, Setting::Default) => Some(sock::cgroup2_mount()?),
            };
            let opts = AgentOpts {
                ifaces: if ifaces.is_empty() {
                    config.uplinks.clone()
                } else {
                    ifaces
                },
                interval: interval.map(Duration::from_secs).unwrap_or(config.interval),
                timeouts: timeouts.over(config.timeouts),
                host_cgroup,
                nat: NatConfig {
                    fast_path: fast_path.map_or(config.nat.fast_path, u32::from),
                    ..config.nat
                },
                socket: socket.clone(),
                docker_socket,
                metrics: match &config.metrics {
                    Setting::Off => None,
                    Setting::Value(a) => Some(*a),
                    Setting::Default => Some(config::DEFAULT_METRICS.parse()?),
                },
            };
            block_on(agent_main(&pins, &state_dir, opts))
        }
        Command::Publish { command } => {
            let (add, network, endpoint, specs) = match command {
                PublishCommand::Add {
                    network,
                    endpoint,
                    specs,
                } => (true, network, endpoint, specs),
                PublishCommand::Rm {
                    network,
                    endpoint,
                    specs,
                } => (false, network, endpoint, specs),
            };
            let req = if add {
                Request::PublishAdd {
                    network,
                    endpoint,
                    specs,
                }
            } else {
                Request::PublishRm {
                    network,
                    endpoint,
                    specs,
                }
            };
            let v = client.request(req)?;
            print_lines(&v["published"]);
            Ok(())
        }
        Command::Uplink { command } => {
            let req = match command {
                UplinkCommand::Add { iface } => Request::UplinkAdd { iface },
                UplinkCommand::Rm { iface } => Request::UplinkRm { iface },
                UplinkCommand::Ls => Request::UplinkLs,
            };
            let v = client.request(req)?;
            print_lines(&v);
            Ok(())
        }
        Command::Nat {
            command: NatCommand::Ls { format },
        } => print_nat(&client.request(Request::NatLs)?, format),
        Command::Filter { command } => {
            match command {
                FilterCommand::Add {
                    from_file: Some(path),
                    first,
                    ..
                } => {
                    let text = if path.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin()).context("reading stdin")
                    } else {
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))
                    }?;
                    // Checked here too, so the error names the line.
                    let rules = filter::parse_rules(&text)
                        .with_context(|| format!("{}", path.display()))?;
                    if rules.is_empty() {
                        bail!("{}: no rules in it", path.display());
                    }
                    let v = client.request(Request::FilterAddMany { rules, first })?;
                    let mut out = std::io::stdout().lock();
                    for id in v["ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
                        writeln!(out, "{id}")?;
                    }
                }
                FilterCommand::Add {
                    network,
                    in_iface,
                    src,
                    not_src,
                    dport,
                    action,
                    first,
                    from_file: None,
                } => {
                    let args = filter::FilterArgs {
                        network,
                        in_iface,
                        src,
                        not_src,
                        dport,
                        // clap requires it without --from-file.
                        action: action.unwrap_or_default(),
                    };
                    // Checked here too, so a typo never reaches the agent.
                    args.parse()?;
                    let v = client.request(Request::FilterAdd { args, first })?;
                    println!("{}", v["id"]);
                }
                FilterCommand::Rm { id } => {
                    client.request(Request::FilterRm { id })?;
                }
                FilterCommand::Ls { format } => {
                    let v = client.request(Request::FilterLs)?;
                    match format {
                        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                        Format::Table => {
                            let mut t = Table::new(&[
                                ("ID", Align::Right),
                                ("PKTS", Align::Right),
                                ("BYTES", Align::Right),
                                ("RULE", Align::Left),
                            ]);
                            for r in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                                t.row(vec![
                                    r["id"].to_string(),
                                    r["packets"].to_string(),
                                    r["bytes"].to_string(),
                                    r["rule"].as_str().unwrap_or_default().to_owned(),
                                ]);
                            }
                            print!("{}", t.render());
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Monitor { format } => block_on(async {
            let lost_before = monitor::lost(&pins).map(|c| c.packets).unwrap_or(0);
            let mut out = std::io::stdout();
            monitor::stream(
                &pins,
                |ev| {
                    let line = match format {
                        Format::Json => serde_json::to_string(&ev).unwrap_or_default(),
                        Format::Table => ev.to_string(),
                    };
                    let _ = writeln!(out, "{line}");
                },
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            )
            .await?;
            let lost = monitor::lost(&pins).map(|c| c.packets).unwrap_or(0);
            if lost > lost_before {
                eprintln!("{} events lost (ring buffer full)", lost - lost_before);
            }
            Ok(())
        }),
        Command::Status { format } => {
            let v = client.request(Request::Status)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Format::Table => {
                    let server = v["server"].as_str().unwrap_or_default();
                    if server == "agent" {
                        println!(
                            "agent running (pid {}), answering on {}",
                            v["pid"],
                            client.socket.display()
                        );
                    } else {
                        println!(
                            "no agent answering on {}: the CLI works on the state itself",
                            client.socket.display()
                        );
                    }
                    println!(
                        "state {}  bpffs {}",
                        v["state_dir"].as_str().unwrap_or_default(),
                        v["bpffs_root"].as_str().unwrap_or_default()
                    );
                    println!(
                        "{} networks, {} endpoints, uplinks: {}",
                        v["networks"], v["endpoints"], v["uplinks"]
                    );
                }
            }
            Ok(())
        }
        Command::Local { command } => {
            let (cgroup, attach) = match command {
                LocalCommand::Attach { cgroup } => (cgroup, true),
                LocalCommand::Detach { cgroup } => (cgroup, false),
            };
            let cgroup = match cgroup {
                Some(c) => c,
                None => sock::cgroup2_mount()?,
            };
            if attach {
                let mut dp = Dataplane::load(&pins)?;
                sock::attach(&mut dp, &pins, &cgroup)?;
                println!("host-local published ports on for {}", cgroup.display());
            } else {
                sock::detach(&pins, &cgroup)?;
                println!("host-local published ports off for {}", cgroup.display());
            }
            Ok(())
        }
        Command::Conntrack { command } => match command {
            ConntrackCommand::Ls { format } => {
                print_conntrack(&client.request(Request::ConntrackLs)?, format)
            }
            ConntrackCommand::Gc { timeouts } => {
                let r = conntrack::gc(&pins, &timeouts.over(config.timeouts))?;
                println!("scanned {} entries, removed {}", r.scanned, r.removed);
                Ok(())
            }
        },
        Command::Network { command } => network_command(&client, command),
        Command::Connect {
            network,
            target,
            ip,
            mac,
            name,
            ifname,
            publish,
        } => {
            let args = ConnectArgs {
                publish,
                network,
                // Not `netns`: that id is the global --netns flag's.
                netns: target,
                ip,
                mac,
                name,
                ifname,
            };
            let v = client.request(Request::Connect { args })?;
            println!("{}", v["id"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Disconnect { network, container } => {
            client.request(Request::Disconnect { network, container })?;
            Ok(())
        }
        Command::Stats { command } => match command {
            StatsCommand::Attach { iface, direction } => {
                check_iface(&iface)?;
                let mut dp = Dataplane::load(&pins)?;
                for dir in direction.list() {
                    let pin = stats::attach(&mut dp, &iface, *dir)?;
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
            // Best effort: every step runs, every failure is reported.
            let mut errors: Vec<String> = block_on(async {
                Ok(match Manager::open_existing(&state_dir, &pins).await? {
                    Some(m) => m.teardown_all().await,
                    None => Vec::new(),
                })
            })
            .unwrap_or_else(|e| vec![format!("{e:#}")]);
            errors.extend(pins.remove_all().iter().map(|e| chain(e)));
            if errors.is_empty() {
                println!("removed networks, endpoints and {}", pins.path().display());
                return Ok(());
            }
            for e in &errors {
                eprintln!("cleanup: {e}");
            }
            bail!("cleanup left {} error(s)", errors.len())
        }
    }
}

fn print_nat(v: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_owned();
    let uplinks: Vec<String> = v["uplinks"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    println!(
        "Published ports (DNAT, new flows counted) on uplinks: {}",
        uplinks.join(", ")
    );
    let mut dnat = Table::new(&[
        ("PKTS", Align::Right),
        ("BYTES", Align::Right),
        ("PROTO", Align::Left),
        ("HOST", Align::Left),
        ("CONTAINER", Align::Left),
        ("ENDPOINT", Align::Left),
        ("NETWORK", Align::Left),
    ]);
    for r in v["dnat"].as_array().map(Vec::as_slice).unwrap_or_default() {
        dnat.row(vec![
            r["packets"].to_string(),
            r["bytes"].to_string(),
            s(&r["proto"]),
            s(&r["host"]),
            s(&r["container"]),
            s(&r["endpoint"]),
            s(&r["network"]),
        ]);
    }
    print!("{}", dnat.render());
    println!();
    println!("Source NAT (MASQUERADE) per network:");
    let mut snat = Table::new(&[
        ("NETWORK", Align::Left),
        ("SUBNET", Align::Left),
        ("POLICY", Align::Left),
    ]);
    for n in v["snat"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let policy = if n["internal"] == true {
            "internal: no egress"
        } else if n["masquerade"] == true {
            "masquerade"
        } else {
            "routed, no masquerade"
        };
        snat.row(vec![s(&n["network"]), s(&n["subnet"]), policy.to_owned()]);
    }
    print!("{}", snat.render());
    Ok(())
}

fn print_conntrack(v: &serde_json::Value, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let flows = v.as_array().map(Vec::as_slice).unwrap_or_default();
    for f in flows {
        let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
        println!(
            "{:<5} {:<12} src={} dst={} sport={} dport={} [{}]{} packets={} bytes={} age={}s idle={}s",
            s("proto"),
            s("state"),
            s("src"),
            s("dst"),
            f["sport"],
            f["dport"],
            s("nat"),
            if f["reply"] == true { " reply" } else { "" },
            f["packets"],
            f["bytes"],
            f["age_s"],
            f["idle_s"]
        );
    }
    println!("{} entries", flows.len());
    Ok(())
}

fn block_on<F: std::future::Future<Output = anyhow::Result<T>>, T>(f: F) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(f)
}

fn network_command(client: &Client, command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create {
            name,
            driver,
            subnet,
            gateway,
            ip_range,
            internal,
            mtu,
            opt,
            label,
        } => {
            let args = CreateArgs {
                name,
                driver,
                subnet,
                gateway,
                ip_range,
                internal,
                mtu,
                options: opt,
                labels: label,
            };
            // Checked here too, so a typo never reaches the agent.
            args.parse()?;
            let v = client.request(Request::NetworkCreate { args })?;
            println!("{}", v["id"].as_str().unwrap_or_default());
        }
        NetworkCommand::Ls { format } => {
            let v = client.request(Request::NetworkLs)?;
            match format {
                Format::Table => print!(
                    "{}",
                    inspect::ls_table(v.as_array().map(Vec::as_slice).unwrap_or_default())
                ),
                Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
            }
        }
        NetworkCommand::Inspect { names } => {
            let v = client.request(Request::NetworkInspect { names })?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        NetworkCommand::Rm { names, force } => {
            let v = client.request(Request::NetworkRm { names, force })?;
            print_lines(&v["removed"]);
        }
    }
    Ok(())
}

/// Prints a JSON array of strings, one per line (names, mappings).
fn print_lines(v: &serde_json::Value) {
    for item in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        println!("{}", item.as_str().unwrap_or_default());
    }
}

/// Runs requests through the agent's socket, or in-process when no agent
/// answers there (same code, see `api::execute`).
struct Client {
    socket: PathBuf,
    ctx: api::Context,
}

impl Client {
    fn request(&self, req: Request) -> anyhow::Result<serde_json::Value> {
        block_on(async {
            match api::call(&self.socket, &req).await? {
                Some(v) => Ok(v),
                None => api::execute(&self.ctx, req).await,
            }
        })
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

/// The agent's settings, parsed from its flags.
struct AgentOpts {
    ifaces: Vec<String>,
    interval: Duration,
    timeouts: conntrack::Timeouts,
    /// Where host-local clients get published ports; None: nowhere.
    host_cgroup: Option<PathBuf>,
    /// Masquerade and fast path settings for the programs this agent
    /// attaches.
    nat: NatConfig,
    /// Where the API listens.
    socket: PathBuf,
    /// Where Docker's remote network driver is served; None: nowhere.
    docker_socket: Option<PathBuf>,
    /// Where Prometheus scrapes; None: nowhere.
    metrics: Option<std::net::SocketAddr>,
}

async fn agent_main(
    pins: &PinRoot,
    state_dir: &std::path::Path,
    opts: AgentOpts,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a stop requested during start-up is then seen once
    // start-up is done, instead of killing the agent half-way through it.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Networks first: after a reboot the bridges are gone and the state says
    // what to restore.
    let AgentOpts {
        ifaces,
        interval,
        timeouts,
        host_cgroup,
        nat,
        socket,
        docker_socket,
        metrics,
    } = opts;
    let ifaces = if ifaces.is_empty() {
        default_route_ifaces()?
    } else {
        ifaces
    };
    let mut manager = Manager::open(state_dir, pins).await?;
    manager.set_nat_config(nat);
    for c in manager.reconcile().await? {
        info!("reconciled: {c}");
    }
    // A first start makes the interfaces it watches the uplinks, so the
    // default network has egress (Docker masquerades out of any interface).
    if manager.state().uplinks.is_empty() {
        for iface in &ifaces {
            manager.uplink_add(iface).await?;
            info!(
                iface,
                "uplink added: published ports and masquerade through it"
            );
        }
    }
    let bridge = manager.network("bridge").ok().cloned();
    // One cache for the API and Docker's driver: a request costs what it
    // changes, not a reload of the state and the eBPF object.
    let cache = std::sync::Arc::new(std::sync::Mutex::new(Cache::default()));
    // Verified now rather than on the first container's connect.
    manager.preload_endpoint_program()?;
    manager.keep(&cache); // releases the state lock for CLI calls
    if ifaces.is_empty() {
        bail!("no interface given (--iface) and no default route to find an uplink from");
    }
    for i in &ifaces {
        check_iface(i)?;
    }
    let mut dp = Dataplane::load(pins)?;
    // The programs' own log lines (aya-log, from the pinned AYA_LOGS ring
    // buffer every instance shares) join the agent's log.
    match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        // SAFETY: the logger owns its ring buffer's fd, which stays that one
        // open fd for as long as the AsyncFd owns the logger.
        Ok(logger) => match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        } {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    while let Ok(mut ready) = fd.readable_mut().await {
                        ready.get_inner_mut().flush();
                        ready.clear_ready();
                    }
                });
            }
            Err(e) => warn!("eBPF log: {e}"),
        },
        Err(e) => warn!("eBPF log: {e}"),
    }
    let mut attached = Vec::new();
    for iface in &ifaces {
        for dir in [Direction::Ingress, Direction::Egress] {
            match stats::attach(&mut dp, iface, dir) {
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
    if let Some(cg) = &host_cgroup {
        match sock::attach(&mut dp, pins, cg) {
            Ok(_) => info!(cgroup = %cg.display(), "host-local published ports on"),
            Err(sock::SockError::AlreadyAttached { .. }) => {
                info!(cgroup = %cg.display(), "host-local published ports already on; adopting")
            }
            Err(e) => {
                detach_all(pins, &attached);
                return Err(e.into());
            }
        }
    }
    if let Some(b) = bridge {
        let subnet = b.subnet.map(|s| s.to_string()).unwrap_or_default();
        eprintln!(
            "\nThe default network `bridge` ({subnet}, device {}) is ready. Try:\n  \
             ip netns add c1\n  \
             dataplane connect bridge c1 -p 8080:80\n  \
             ip netns exec c1 python3 -m http.server 80 &\n  \
             curl http://127.0.0.1:8080/\n  \
             dataplane nat ls; dataplane conntrack ls\n",
            b.bridge.unwrap_or_default()
        );
    }
    // Bound before "agent running" is logged: whoever waits for that line
    // (tests, scripts) can connect at once.
    let listener = api::bind(&socket)?;
    info!(bpffs = %pins.path().display(), state = %state_dir.display(), "agent running; counters with `dataplane stats show`, Ctrl-C to stop");
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_ctx = api::Context {
        state_dir: state_dir.to_owned(),
        pins: pins.clone(),
        nat,
        server: "agent",
        cache: Some(cache.clone()),
    };
    let api_task = tokio::spawn(api::serve(listener, api_ctx, async {
        let _ = api_stopped.await;
    }));
    info!(socket = %socket.display(), "API listening");
    let (stop_docker, docker_stopped) = tokio::sync::oneshot::channel::<()>();
    let docker_task = match &docker_socket {
        Some(path) => {
            let listener = api::bind(path).context("docker_socket")?;
            let ctx = api::Context {
                state_dir: state_dir.to_owned(),
                pins: pins.clone(),
                nat,
                server: "agent",
                cache: Some(cache.clone()),
            };
            info!(socket = %path.display(), "Docker network driver listening (docker network create -d {})",
                path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
            Some(tokio::spawn(dataplane_user::docker::serve(
                listener,
                ctx,
                async {
                    let _ = docker_stopped.await;
                },
            )))
        }
        None => None,
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics_address {addr}"))?;
            info!(%addr, "Prometheus metrics on /metrics");
            let dir = state_dir.to_owned();
            let state = move || -> Result<state::State, String> {
                let mut store = state::StateStore::open(&dir).map_err(|e| format!("{e:#}"))?;
                Ok(store
                    .load()
                    .map_err(|e| format!("{e:#}"))?
                    .unwrap_or_default())
            };
            Some(tokio::spawn(metrics::serve(
                listener,
                pins.clone(),
                state,
                async {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                match stats::read(pins) {
                    Ok(snap) => {
                        let line: Vec<String> = snap.protocols.iter()
                            .filter(|(_, c)| c.packets > 0)
                            .map(|(n, c)| format!("{n}={}/{}B", c.packets, c.bytes))
                            .collect();
                        info!(counters = %line.join(" "), "stats");
                    }
                    Err(e) => warn!("reading counters: {:#}", anyhow::Error::from(e)),
                }
                match conntrack::gc(pins, &timeouts) {
                    Ok(r) if r.removed > 0 => info!(scanned = r.scanned, removed = r.removed, "conntrack gc"),
                    Ok(_) => {}
                    Err(e) => warn!("conntrack gc: {:#}", anyhow::Error::from(e)),
                }
            }
        }
    }
    info!("stopping: detaching what this agent attached");
    let _ = stop_api.send(());
    let _ = api_task.await;
    let _ = stop_metrics.send(());
    if let Some(t) = metrics_task {
        if let Ok(Err(e)) = t.await {
            warn!("metrics: {e:#}");
        }
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        warn!("removing {}: {e}", socket.display());
    }
    let _ = stop_docker.send(());
    if let Some(t) = docker_task {
        let _ = t.await;
    }
    if let Some(path) = &docker_socket {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("removing {}: {e}", path.display());
        }
    }
    detach_all(pins, &attached);
    Ok(())
}

/// Best-effort: reports every failure and carries on.
fn detach_all(pins: &PinRoot, attached: &[(String, Direction)]) {
    for (iface, dir) in attached {
        if let Err(e) = detach_tc(pins, stats::PROGRAM, iface, *dir) {
            warn!("{:#}", anyhow::Error::from(e));
        }
    }
}
