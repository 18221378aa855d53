//! Reading and expiring the BPF conntrack tables (the programs create and
//! update entries; expiry is done here, by the agent or `conntrack gc`).

use std::{net::Ipv4Addr, time::Duration};

use aya::maps::{HashMap, Map, MapData, MapError};
use dataplane_common::{
    ct::{CtEntry, CtKey, CtState, FLAG_DNAT, FLAG_REPLY, FLAG_SNAT, REWRITE_DST, REWRITE_SRC},
    maps,
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::bpffs::PinRoot;

#[derive(Debug, thiserror::Error)]
#[error("conntrack map {map}")]
pub struct CtError {
    map: &'static str,
    #[source]
    source: Box<MapError>,
}

/// How long an idle entry lives, per state. Defaults follow Cilium's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    pub tcp_syn: Duration,
    pub tcp_closing: Duration,
    /// UDP and ICMP.
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_syn: Duration::from_secs(60),
            tcp_closing: Duration::from_secs(10),
            other: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    pub fn of(&self, key: &CtKey, entry: &CtEntry) -> Duration {
        if key.proto != IPPROTO_TCP {
            return self.other;
        }
        match CtState::from_u8(entry.state) {
            CtState::SynSent => self.tcp_syn,
            // A half-closed flow keeps the established timeout: the side that
            // did not close may answer much later (a long upload, `shutdown`).
            CtState::Established | CtState::Open | CtState::FinWait => self.tcp_established,
            CtState::Closing => self.tcp_closing,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// One entry, as `conntrack ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub proto: &'static str,
    pub state: &'static str,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    /// e.g. "DNAT dst -> 172.17.0.2:80", "SNAT src -> 192.0.2.1:40000".
    pub nat: String,
    pub reply: bool,
    pub packets: u64,
    pub bytes: u64,
    pub age_s: u64,
    pub idle_s: u64,
    #[serde(skip)]
    pub key: CtKey,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

fn open(pins: &PinRoot, name: &'static str) -> Result<HashMap<MapData, CtKey, CtEntry>, CtError> {
    let err = |e| CtError {
        map: name,
        source: Box::new(e),
    };
    let data = MapData::from_pin(pins.map(name)).map_err(err)?;
    HashMap::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
}

fn entries(pins: &PinRoot) -> Result<Vec<(CtKey, CtEntry)>, CtError> {
    let mut out = Vec::new();
    for name in [maps::CT_TCP, maps::CT_OTHER] {
        let map = open(pins, name)?;
        for item in map.iter() {
            // An entry deleted between key and value reads is simply gone.
            match item {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(CtError {
                        map: name,
                        source: Box::new(e),
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Every entry of both tables.
pub fn list(pins: &PinRoot) -> Result<Vec<Flow>, CtError> {
    let now = monotonic_ns();
    let mut flows: Vec<Flow> = entries(pins)?
        .into_iter()
        .map(|(k, e)| {
            let kind = if e.flags & FLAG_DNAT != 0 {
                "DNAT"
            } else if e.flags & FLAG_SNAT != 0 {
                "SNAT"
            } else {
                // Tracked so its replies are recognised, not translated.
                "PASS"
            };
            let mut nat = kind.to_owned();
            if e.rewrite & REWRITE_DST != 0 {
                nat += &format!(
                    " dst -> {}:{}",
                    Ipv4Addr::from(e.new_daddr),
                    u16::from_be_bytes(e.new_dport)
                );
            }
            if e.rewrite & REWRITE_SRC != 0 {
                nat += &format!(
                    " src -> {}:{}",
                    Ipv4Addr::from(e.new_saddr),
                    u16::from_be_bytes(e.new_sport)
                );
            }
            Flow {
                proto: proto_name(k.proto),
                state: CtState::from_u8(e.state).name(),
                src: Ipv4Addr::from(k.saddr).to_string(),
                dst: Ipv4Addr::from(k.daddr).to_string(),
                sport: u16::from_be_bytes(k.sport),
                dport: u16::from_be_bytes(k.dport),
                nat,
                reply: e.flags & FLAG_REPLY != 0,
                packets: e.packets,
                bytes: e.bytes,
                age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
                idle_s: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
                key: k,
            }
        })
        .collect();
    flows.sort_by(|a, b| {
        (a.proto, &a.src, a.sport, a.reply).cmp(&(b.proto, &b.src, b.sport, b.reply))
    });
    Ok(flows)
}

/// What one garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub scanned: usize,
    pub removed: usize,
}

/// Removes flows idle past their timeout. The two entries of a flow go
/// together, and only when both are idle: a flow answered in one direction
/// only is still alive.
pub fn gc(pins: &PinRoot, timeouts: &Timeouts) -> Result<GcReport, CtError> {
    let now = monotonic_ns();
    let all = entries(pins)?;
    let expired = |k: &CtKey, e: &CtEntry| {
        now.saturating_sub(e.last_seen_ns) > timeouts.of(k, e).as_nanos() as u64
    };
    let lookup: std::collections::HashMap<CtKey, CtEntry> = all.iter().copied().collect();
    let mut report = GcReport {
        scanned: all.len(),
        removed: 0,
    };
    let mut maps_by_proto = [
        (IPPROTO_TCP, open(pins, maps::CT_TCP)?, maps::CT_TCP),
        (0, open(pins, maps::CT_OTHER)?, maps::CT_OTHER),
    ];
    for (k, e) in &all {
        if !expired(k, e) {
            continue;
        }
        let peer = e.peer_key(k);
        if lookup.get(&peer).is_some_and(|pe| !expired(&peer, pe)) {
            continue;
        }
        let (_, map, name) = if k.proto == IPPROTO_TCP {
            &mut maps_by_proto[0]
        } else {
            &mut maps_by_proto[1]
        };
        match map.remove(k) {
            Ok(()) => report.removed += 1,
            Err(MapError::KeyNotFound) | Err(MapError::SyscallError(_)) => {}
            Err(e) => {
                return Err(CtError {
                    map: name,
                    source: Box::new(e),
                })
            }
        }
    }
    Ok(report)
}
