//! `dataplane`: the agent and its CLI. Input is parsed here, once, into
//! typed values ([`cli`]), the configuration is resolved by the library
//! (`config`), every command that reads or changes the dataplane is an API
//! request (to the agent when one answers, in-process otherwise), and the
//! typed answers are printed by [`output`].

mod cli;
mod output;
mod table;

use anyhow::{bail, Context as _};
use clap::Parser as _;
use dataplane_user::{
    agent::Agent,
    api::{
        self,
        types::{
            Cleaned, Connected, DnsTable, Done, FilterAdded, FilterIds, FilterRow, FlowRow, GcDone,
            LocalHooks, NatTable, NetworkCreated, Published, Removed, Status, TcLinks,
        },
        Request,
    },
    config::{Config, PathFlags, Paths, TimeoutFlags},
    control::{manager::ConnectArgs, model::CreateArgs},
    datapath::{events, stats},
    sys::netns,
};
use serde::de::DeserializeOwned;

use crate::cli::{
    Cli, Command, ConntrackCommand, DnsCommand, FilterCommand, Format, LocalCommand, NatCommand,
    NetworkCommand, PublishCommand, StatsCommand, UplinkCommand,
};

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
        let path = dataplane_user::control::manager::netns_path(ns);
        if !path.exists() {
            bail!(
                "--netns {ns}: no such network namespace ({} does not exist)",
                path.display()
            );
        }
        netns::enter(&path)
            .with_context(|| format!("--netns {ns}: entering {}", path.display()))?;
    }
    let config = Config::find(cli.config.as_deref())?;
    let paths = config.paths(PathFlags {
        bpffs_root: cli.bpffs_root,
        state_dir: cli.state_dir,
        socket: cli.socket,
    });
    let client = Client(api::Client {
        socket: paths.socket.clone(),
        ctx: api::Context {
            state_dir: paths.state_dir.clone(),
            pins: paths.pins.clone(),
            nat: config.nat,
            server: "cli",
            cache: None,
            cluster: None,
        },
    });
    match cli.command {
        Command::Agent(args) => {
            let agent = Agent::new(config.agent(paths, args.into())?);
            block_on(async { Ok(agent.run().await?) })
        }
        Command::Network { command } => network(&client, command),
        Command::Connect {
            network,
            target,
            ip,
            ip6,
            mac,
            name,
            ifname,
            publish,
            alias,
        } => {
            let args = ConnectArgs {
                publish,
                aliases: alias,
                network,
                // Not `netns`: that id is the global --netns flag's.
                netns: target,
                ip,
                ip6,
                mac,
                name,
                ifname,
            };
            let ep: Connected = client.ask(Request::Connect { args })?;
            println!("{}", ep.id);
            Ok(())
        }
        Command::Disconnect { network, container } => {
            let _: Done = client.ask(Request::Disconnect { network, container })?;
            Ok(())
        }
        Command::Publish { command } => publish(&client, command),
        Command::Uplink { command } => uplink(&client, command),
        Command::Nat {
            command: NatCommand::Ls { format },
        } => output::nat(&client.ask::<NatTable>(Request::NatLs)?, format),
        Command::Dns {
            command: DnsCommand::Ls { network, format },
        } => output::dns(&client.ask::<DnsTable>(Request::DnsLs { network })?, format),
        Command::Filter { command } => filter(&client, command),
        Command::Conntrack { command } => conntrack(&client, command, &config),
        Command::Local { command } => local(&client, command),
        Command::Stats { command } => stats(&client, command, &paths),
        Command::Monitor { format } => monitor(&paths, format),
        Command::Cluster {
            command: cli::ClusterCommand::Status { format },
        } => output::cluster(&client.ask(Request::ClusterStatus)?, format),
        Command::Status { format } => {
            let s: Status = client.ask(Request::Status)?;
            output::status(&s, &client.0.socket, format)
        }
        Command::Cleanup => cleanup(&client),
    }
}

/// The API client with the CLI's runtime: one request, one answer.
struct Client(api::Client);

impl Client {
    /// The answer to `req`, typed.
    fn ask<T: DeserializeOwned>(&self, req: Request) -> anyhow::Result<T> {
        let op = req.op();
        let v = block_on(self.0.request(req))?;
        serde_json::from_value(v).with_context(|| format!("the answer to {op}"))
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<T>>, T>(f: F) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(f)
}

fn network(client: &Client, command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create {
            name,
            driver,
            subnet,
            gateway,
            ip_range,
            ipv6,
            ipv4,
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
                ipv6: ipv6.unwrap_or(false),
                ipv4,
                internal,
                mtu,
                options: opt,
                labels: label,
            };
            // Checked here too, so a typo never reaches the agent.
            args.parse()?;
            let net: NetworkCreated = client.ask(Request::NetworkCreate { args })?;
            println!("{}", net.id);
            Ok(())
        }
        NetworkCommand::Ls { format } => {
            let nets: Vec<serde_json::Value> = client.ask(Request::NetworkLs)?;
            output::networks(&nets, format)
        }
        NetworkCommand::Inspect { names } => {
            let nets: Vec<serde_json::Value> = client.ask(Request::NetworkInspect { names })?;
            output::json(&nets)
        }
        NetworkCommand::Rm { names, force } => {
            let r: Removed = client.ask(Request::NetworkRm { names, force })?;
            output::lines(&r.removed)
        }
    }
}

fn publish(client: &Client, command: PublishCommand) -> anyhow::Result<()> {
    match command {
        PublishCommand::Add {
            network,
            endpoint,
            specs,
        } => {
            let p: Published = client.ask(Request::PublishAdd {
                network,
                endpoint,
                specs,
            })?;
            output::lines(&p.published)
        }
        PublishCommand::Rm {
            network,
            endpoint,
            specs,
        } => {
            let _: Done = client.ask(Request::PublishRm {
                network,
                endpoint,
                specs,
            })?;
            Ok(())
        }
    }
}

fn uplink(client: &Client, command: UplinkCommand) -> anyhow::Result<()> {
    match command {
        UplinkCommand::Add { iface } => {
            let _: Done = client.ask(Request::UplinkAdd { iface })?;
        }
        UplinkCommand::Rm { iface } => {
            let _: Done = client.ask(Request::UplinkRm { iface })?;
        }
        UplinkCommand::Ls => output::lines(&client.ask::<Vec<String>>(Request::UplinkLs)?)?,
    }
    Ok(())
}

fn filter(client: &Client, command: FilterCommand) -> anyhow::Result<()> {
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
            let rules = cli::parse_rules(&text).with_context(|| format!("{}", path.display()))?;
            if rules.is_empty() {
                bail!("{}: no rules in it", path.display());
            }
            let added: FilterIds = client.ask(Request::FilterAddMany { rules, first })?;
            output::lines(&added.ids)
        }
        FilterCommand::Add {
            rule,
            first,
            from_file: None,
        } => {
            let args = rule.into_filter_args();
            // Checked here too, so a typo never reaches the agent.
            args.parse()?;
            let added: FilterAdded = client.ask(Request::FilterAdd { args, first })?;
            println!("{}", added.id);
            Ok(())
        }
        FilterCommand::Rm { ids } => {
            let _: Done = match ids.as_slice() {
                [id] => client.ask(Request::FilterRm { id: *id })?,
                _ => client.ask(Request::FilterRmMany { ids })?,
            };
            Ok(())
        }
        FilterCommand::Ls { format } => {
            output::filters(&client.ask::<Vec<FilterRow>>(Request::FilterLs)?, format)
        }
    }
}

fn conntrack(client: &Client, command: ConntrackCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        ConntrackCommand::Ls { format } => {
            output::conntrack(&client.ask::<Vec<FlowRow>>(Request::ConntrackLs)?, format)
        }
        ConntrackCommand::Gc { timeouts } => {
            // The CLI's file and flags decide, wherever it runs.
            let timeouts = TimeoutFlags::from(timeouts).over(config.timeouts).into();
            let r: GcDone = client.ask(Request::ConntrackGc { timeouts })?;
            print!("scanned {} entries, removed {}", r.scanned, r.removed);
            if r.unpaired > 0 {
                print!(
                    "; {} without their pair (a full table evicted live flows)",
                    r.unpaired
                );
            }
            println!();
            Ok(())
        }
    }
}

fn local(client: &Client, command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Attach { cgroup } => {
            let r: LocalHooks = client.ask(Request::LocalAttach { cgroup })?;
            println!("host-local published ports on for {}", r.cgroup.display());
        }
        LocalCommand::Detach { cgroup } => {
            let r: LocalHooks = client.ask(Request::LocalDetach { cgroup })?;
            println!("host-local published ports off for {}", r.cgroup.display());
        }
    }
    Ok(())
}

fn stats(client: &Client, command: StatsCommand, paths: &Paths) -> anyhow::Result<()> {
    match command {
        StatsCommand::Attach { iface, direction } => {
            let links: TcLinks = client.ask(Request::StatsAttach {
                iface,
                directions: direction.list(),
            })?;
            output::tc_links(&links, true);
        }
        StatsCommand::Detach { iface, direction } => {
            let links: TcLinks = client.ask(Request::StatsDetach {
                iface,
                directions: direction.list(),
            })?;
            output::tc_links(&links, false);
        }
        // Read-only, straight from the pinned maps.
        StatsCommand::Show { format } => output::snapshot(&stats::read(&paths.pins)?, format)?,
    }
    Ok(())
}

/// Read-only: the events come straight from the pinned ring buffer.
fn monitor(paths: &Paths, format: Format) -> anyhow::Result<()> {
    use std::io::Write as _;
    let pins = &paths.pins;
    block_on(async {
        let lost_before = events::lost(pins).map(|c| c.packets).unwrap_or(0);
        let mut out = std::io::stdout();
        events::stream(
            pins,
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
        let lost = events::lost(pins).map(|c| c.packets).unwrap_or(0);
        if lost > lost_before {
            eprintln!("{} events lost (ring buffer full)", lost - lost_before);
        }
        Ok(())
    })
}

fn cleanup(client: &Client) -> anyhow::Result<()> {
    let r: Cleaned = client.ask(Request::Cleanup)?;
    if r.errors.is_empty() {
        println!("removed networks, endpoints and {}", r.bpffs_root.display());
        return Ok(());
    }
    for e in &r.errors {
        eprintln!("cleanup: {e}");
    }
    bail!("cleanup left {} error(s)", r.errors.len())
}
