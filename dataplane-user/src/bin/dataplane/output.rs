//! What the CLI prints: the API's typed answers as tables or JSON.

use std::{io::Write as _, path::Path};

use dataplane_user::{
    api::types::{DnsTable, FilterRow, FlowRow, NatTable, Status, TcDirection, TcLinks},
    control::inspect,
    datapath::stats,
};
use serde::Serialize;

use crate::{
    cli::Format,
    table::{Align, Table},
};

/// Pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// One item per line (names, mappings, ids).
pub fn lines<T: std::fmt::Display>(items: &[T]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for item in items {
        writeln!(out, "{item}")?;
    }
    Ok(())
}

/// `network ls`: `docker network inspect` objects.
pub fn networks(nets: &[serde_json::Value], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", inspect::ls_table(nets)),
        Format::Json => json(nets)?,
    }
    Ok(())
}

pub fn filters(rows: &[FilterRow], format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        return json(rows);
    }
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("PKTS", Align::Right),
        ("BYTES", Align::Right),
        ("RULE", Align::Left),
    ]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            r.packets.to_string(),
            r.bytes.to_string(),
            r.rule.clone(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub fn dns(v: &DnsTable, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        return json(v);
    }
    if let Some(s) = v.server {
        println!("Network {}: answered on {s}:53", v.network);
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("ADDRESSES", Align::Left),
        ("ENDPOINTS", Align::Left),
    ]);
    for r in &v.names {
        t.row(vec![
            r.name.clone(),
            r.addresses.join(","),
            r.endpoints.join(","),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

pub fn nat(v: &NatTable, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        return json(v);
    }
    println!(
        "Published ports (DNAT, new flows counted) on uplinks: {}",
        v.uplinks.join(", ")
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
    for r in &v.dnat {
        dnat.row(vec![
            r.packets.to_string(),
            r.bytes.to_string(),
            r.proto.clone(),
            r.host.clone(),
            r.container.clone(),
            r.endpoint.clone(),
            r.network.clone(),
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
    for n in &v.snat {
        let policy = if n.internal {
            "internal: no egress"
        } else if n.masquerade {
            "masquerade"
        } else {
            "routed, no masquerade"
        };
        snat.row(vec![n.network.clone(), n.subnet.clone(), policy.to_owned()]);
    }
    print!("{}", snat.render());
    Ok(())
}

pub fn conntrack(flows: &[FlowRow], format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        return json(flows);
    }
    let mut out = std::io::stdout().lock();
    for f in flows {
        writeln!(
            out,
            "{:<5} {:<12} src={} dst={} sport={} dport={} [{}]{} packets={} bytes={} age={}s idle={}s",
            f.proto,
            f.state,
            f.src,
            f.dst,
            f.sport,
            f.dport,
            f.nat,
            if f.reply { " reply" } else { "" },
            f.packets,
            f.bytes,
            f.age_s,
            f.idle_s
        )?;
    }
    writeln!(out, "{} entries", flows.len())?;
    Ok(())
}

pub fn status(s: &Status, socket: &Path, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        return json(s);
    }
    if s.server == "agent" {
        println!(
            "agent running (pid {}), answering on {}",
            s.pid,
            socket.display()
        );
    } else {
        println!(
            "no agent answering on {}: the CLI works on the state itself",
            socket.display()
        );
    }
    println!(
        "state {}  bpffs {}",
        s.state_dir.display(),
        s.bpffs_root.display()
    );
    println!(
        "{} networks, {} endpoints, uplinks: {}",
        s.networks,
        s.endpoints,
        serde_json::to_string(&s.uplinks)?
    );
    for f in &s.limits.maps {
        let label = dataplane_user::datapath::limits::key_of(&f.map).map_or_else(
            || f.map.clone(),
            |k| format!("{} {}", k.replace('_', " "), f.map),
        );
        println!(
            "{label:<34} {}/{} ({}%)",
            f.entries,
            f.max_entries,
            f.percent()
        );
    }
    for d in &s.limits.drops {
        println!(
            "drops {:<24} {} ({} since the last status)",
            d.reason, d.total, d.since_last
        );
    }
    for w in &s.limits.warnings {
        println!("WARN {w}");
    }
    Ok(())
}

fn direction(d: TcDirection) -> &'static str {
    dataplane_user::datapath::ebpf::Direction::from(d).name()
}

/// `stats attach` / `stats detach`: one line per link.
pub fn tc_links(v: &TcLinks, attached: bool) {
    for l in &v.links {
        match (&l.pin, attached) {
            (Some(pin), true) => println!(
                "attached {} to {} ({}), link pinned at {}",
                stats::PROGRAM,
                l.iface,
                direction(l.direction),
                pin.display()
            ),
            _ => println!(
                "detached {} from {} ({})",
                stats::PROGRAM,
                l.iface,
                direction(l.direction)
            ),
        }
    }
}

/// `stats show`: protocol counters, then drop reasons.
pub fn snapshot(snap: &stats::Snapshot, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            #[derive(Serialize)]
            struct Shown<'a> {
                protocols: Rows<'a>,
                drops: Rows<'a>,
            }
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&Shown {
                    protocols: Rows(&snap.protocols),
                    drops: Rows(&snap.drops),
                })?
            )?;
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

/// Counter rows as a JSON object by name, in their order.
struct Rows<'a>(&'a [(String, stats::Counter)]);

impl Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(n, c)| (n, c)))
    }
}

/// `cluster status`: the store, then one row per host.
pub fn cluster(
    s: &dataplane_user::control::cluster::ClusterStatus,
    format: Format,
) -> anyhow::Result<()> {
    if let Format::Json = format {
        return json(s);
    }
    println!("host:        {} (VTEP {})", s.host_id, s.vtep);
    let reach = match (&s.reachable, &s.error) {
        (true, _) => "reachable".to_owned(),
        (false, Some(e)) => format!("UNREACHABLE: {e}"),
        (false, None) => "UNREACHABLE".to_owned(),
    };
    println!("store:       {} ({reach})", s.store);
    println!("last sync:   {}", s.last_sync.as_deref().unwrap_or("never"));
    println!(
        "watch:       {} events, {} remote endpoints programmed",
        s.watch_events, s.programmed
    );
    println!("networks:    {}", s.networks.join(", "));
    let mut t = Table::new(&[
        ("HOST", Align::Left),
        ("VTEP", Align::Left),
        ("ENDPOINTS", Align::Right),
    ]);
    for (id, h) in &s.hosts {
        t.row(vec![id.clone(), h.vtep.clone(), h.endpoints.to_string()]);
    }
    print!("{}", t.render());
    Ok(())
}
