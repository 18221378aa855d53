//! Reading, expiring and purging the BPF conntrack tables (the programs
//! create and update entries; expiry is done here, by the agent or
//! `conntrack gc`, and so is purging the flows of endpoints and published
//! ports that are gone, [`purge`]). Each family has its own pair of tables
//! (`DP_CT_*`, `DP_CT6_*`); everything here serves both ([`Family`]).

use std::{
    collections::BTreeSet,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{HashMap, MapData, MapError};
use dataplane_common::{
    ct::{CtEntryOf, CtKeyOf, CtState, FLAG_DNAT, FLAG_REPLY, FLAG_SNAT, REWRITE_DST, REWRITE_SRC},
    maps,
    nat::{PortKey, PortKey6, PortKeyOf, PortTarget, PortTarget6},
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use super::{
    bpffs::PinRoot,
    maps::{self as typed, is_not_found, map_err, MapsError},
};
use crate::sys::bpf::RawMap;

/// A conntrack table could not be opened, read or written.
pub type CtError = MapsError;

/// An address family's conntrack tables and how its addresses print.
pub trait Family: Copy + Default + Ord + Hash + 'static {
    /// The TCP table, then the UDP/ICMP one.
    const TABLES: [&'static str; 2];
    fn show(&self) -> String;
    /// The "every host address" of a published port.
    fn unspecified() -> Self {
        Self::default()
    }
}

impl Family for [u8; 4] {
    const TABLES: [&'static str; 2] = [maps::CT_TCP, maps::CT_OTHER];
    fn show(&self) -> String {
        Ipv4Addr::from(*self).to_string()
    }
}

impl Family for [u8; 16] {
    const TABLES: [&'static str; 2] = [maps::CT6_TCP, maps::CT6_OTHER];
    fn show(&self) -> String {
        Ipv6Addr::from(*self).to_string()
    }
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
    pub fn of<A>(&self, key: &CtKeyOf<A>, entry: &CtEntryOf<A>) -> Duration {
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
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmpv6",
        _ => "other",
    }
}

type Table<A> = HashMap<MapData, CtKeyOf<A>, CtEntryOf<A>>;

fn open<A: Family>(pins: &PinRoot, name: &'static str) -> Result<Table<A>, CtError>
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    typed::open(pins, name)
}

/// One entry of a table: its key and its value.
type Entry<A> = (CtKeyOf<A>, CtEntryOf<A>);

/// Every entry of the family's tables, read in batches where the kernel
/// can (`RawMap::for_each_batched`: at a million entries the agent's tick
/// took half a core walking them two calls per entry), entry by entry
/// otherwise.
fn entries<A: Family>(pins: &PinRoot) -> Result<Vec<Entry<A>>, CtError>
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    entries_counted(pins, &mut [0; 2])
}

/// [`entries`], with how many came from each table.
fn entries_counted<A: Family>(
    pins: &PinRoot,
    counts: &mut [usize; 2],
) -> Result<Vec<Entry<A>>, CtError>
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    let mut out = Vec::new();
    for (count, name) in counts.iter_mut().zip(A::TABLES) {
        let before = out.len();
        let done = entries_of(pins, name, &mut out);
        *count = out.len() - before;
        done?;
    }
    Ok(out)
}

/// The entries of table `name` into `out`.
fn entries_of<A: Family>(
    pins: &PinRoot,
    name: &'static str,
    out: &mut Vec<Entry<A>>,
) -> Result<(), CtError>
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    if batched::<A>(pins, name, out)? {
        return Ok(());
    }
    let map: Table<A> = open(pins, name)?;
    for item in map.iter() {
        // An entry deleted between key and value reads is simply gone.
        match item {
            Ok(kv) => out.push(kv),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

/// [`entries`] of the table `name` in batches into `out`: false (nothing
/// read) when the kernel has no batch reads for it.
fn batched<A: Family>(
    pins: &PinRoot,
    name: &'static str,
    out: &mut Vec<Entry<A>>,
) -> Result<bool, CtError>
where
    CtKeyOf<A>: aya::Pod,
    CtEntryOf<A>: aya::Pod,
{
    let fail = |io_error| {
        map_err(name)(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        }))
    };
    // Not there (or not readable): the entry-by-entry path says why.
    let Ok(map) = RawMap::from_pin(&pins.map(name)) else {
        return Ok(false);
    };
    let (klen, vlen) = (size_of::<CtKeyOf<A>>(), size_of::<CtEntryOf<A>>());
    if map.shape().key_size as usize != klen || map.shape().value_size as usize != vlen {
        return Ok(false);
    }
    let limit = map.shape().max_entries as usize * 2;
    let read = map
        .for_each_batched(limit, |k, v| {
            // SAFETY: both are Pod types of exactly these sizes (checked
            // above against the map's shape); unaligned reads of bytes.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(k.as_ptr().cast::<CtKeyOf<A>>()),
                    std::ptr::read_unaligned(v.as_ptr().cast::<CtEntryOf<A>>()),
                )
            };
            out.push((k, v));
        })
        .map_err(fail)?;
    Ok(read.is_some())
}

/// Every entry of both families' tables.
pub fn list(pins: &PinRoot) -> Result<Vec<Flow>, CtError> {
    let mut all = flows::<[u8; 4]>(pins)?;
    all.extend(flows::<[u8; 16]>(pins)?);
    all.sort_by(|a, b| {
        (a.proto, &a.src, a.sport, a.reply).cmp(&(b.proto, &b.src, b.sport, b.reply))
    });
    Ok(all)
}

fn flows<A: Family>(pins: &PinRoot) -> Result<Vec<Flow>, CtError>
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    let now = monotonic_ns();
    let flows: Vec<Flow> = entries::<A>(pins)?
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
                    " dst -> {}",
                    endpoint(&e.new_daddr, u16::from_be_bytes(e.new_dport))
                );
            }
            if e.rewrite & REWRITE_SRC != 0 {
                nat += &format!(
                    " src -> {}",
                    endpoint(&e.new_saddr, u16::from_be_bytes(e.new_sport))
                );
            }
            Flow {
                proto: proto_name(k.proto),
                state: CtState::from_u8(e.state).name(),
                src: k.saddr.show(),
                dst: k.daddr.show(),
                sport: u16::from_be_bytes(k.sport),
                dport: u16::from_be_bytes(k.dport),
                nat,
                reply: e.flags & FLAG_REPLY != 0,
                packets: e.packets,
                bytes: e.bytes,
                age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
                idle_s: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            }
        })
        .collect();
    Ok(flows)
}

/// `addr:port`, IPv6 in brackets.
fn endpoint<A: Family>(addr: &A, port: u16) -> String {
    let a = addr.show();
    if a.contains(':') {
        format!("[{a}]:{port}")
    } else {
        format!("{a}:{port}")
    }
}

/// What one garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub scanned: usize,
    pub removed: usize,
    /// Entries found without the other entry of their flow. The programs
    /// make and remove the two together, so one alone lost its pair to the
    /// LRU eviction of a full table (the one sign of eviction the kernel
    /// leaves: it counts none). Left in place; they expire as usual.
    pub unpaired: usize,
    /// The entries left in each table (IPv4 TCP, IPv4 other, IPv6 TCP,
    /// IPv6 other: [`GcReport::TABLES`]), so the fill report need not walk
    /// them again.
    #[serde(skip)]
    pub left: [usize; 4],
}

impl GcReport {
    /// The tables [`GcReport::left`] counts, in its order.
    pub const TABLES: [&'static str; 4] = [
        <[u8; 4] as Family>::TABLES[0],
        <[u8; 4] as Family>::TABLES[1],
        <[u8; 16] as Family>::TABLES[0],
        <[u8; 16] as Family>::TABLES[1],
    ];

    /// Each table with the entries left in it.
    pub fn counts(&self) -> [(&'static str, usize); 4] {
        let mut out = [("", 0); 4];
        for (o, (name, n)) in out.iter_mut().zip(Self::TABLES.into_iter().zip(self.left)) {
            *o = (name, n);
        }
        out
    }
}

/// Removes flows idle past their timeout, in both families' tables. The
/// two entries of a flow go together, and only when both are idle: a flow
/// answered in one direction only is still alive.
pub fn gc(pins: &PinRoot, timeouts: &Timeouts) -> Result<GcReport, CtError> {
    gc_with(pins, timeouts, Pairs::Always)
}

/// When a GC counts the entries without their pair ([`GcReport::unpaired`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairs {
    /// Every time (`conntrack gc`, asked for).
    Always,
    /// Only when a table is at least [`PAIRS_FILL_PERCENT`] full: only a
    /// full table evicts, and the count needs an index of every key (a
    /// third of the agent's tick at a million entries).
    WhenFull,
}

/// The fill from which the agent's tick counts unpaired entries.
pub const PAIRS_FILL_PERCENT: usize = 75;

/// [`gc`], counting unpaired entries as `pairs` says.
pub fn gc_with(pins: &PinRoot, timeouts: &Timeouts, pairs: Pairs) -> Result<GcReport, CtError> {
    let v4 = gc_family::<[u8; 4]>(pins, timeouts, pairs)?;
    let v6 = gc_family::<[u8; 16]>(pins, timeouts, pairs)?;
    Ok(GcReport {
        scanned: v4.scanned + v6.scanned,
        removed: v4.removed + v6.removed,
        unpaired: v4.unpaired + v6.unpaired,
        left: [v4.left[0], v4.left[1], v6.left[0], v6.left[1]],
    })
}

fn gc_family<A: Family>(
    pins: &PinRoot,
    timeouts: &Timeouts,
    pairs: Pairs,
) -> Result<GcReport, CtError>
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    let now = monotonic_ns();
    let mut left = [0usize; 2];
    let all = entries_counted::<A>(pins, &mut left)?;
    let expired = |k: &CtKeyOf<A>, e: &CtEntryOf<A>| {
        now.saturating_sub(e.last_seen_ns) > timeouts.of(k, e).as_nanos() as u64
    };
    let [tcp, other] = A::TABLES;
    let mut maps_by_proto = [
        (open::<A>(pins, tcp)?, tcp),
        (open::<A>(pins, other)?, other),
    ];
    let full = pairs == Pairs::Always
        || A::TABLES.iter().zip(left).any(|(name, n)| {
            RawMap::from_pin(&pins.map(name))
                .is_ok_and(|m| n * 100 >= m.shape().max_entries as usize * PAIRS_FILL_PERCENT)
        });
    // Keys to positions, for the unpaired count: a million entries' values
    // are not copied again. foldhash, randomly seeded: SipHash was a third
    // of the walk's CPU, and the keys are the network's choice, so not a
    // fixed-seed hash. Without it, an expired entry's pair is looked up in
    // the map (few are expired at a time).
    let index: Option<std::collections::HashMap<CtKeyOf<A>, usize, foldhash::fast::RandomState>> =
        full.then(|| all.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect());
    let mut report = GcReport {
        scanned: all.len(),
        removed: 0,
        unpaired: index.as_ref().map_or(0, |index| {
            all.iter()
                .filter(|(k, e)| !index.contains_key(&e.peer_key(k)))
                .count()
        }),
        left: [0; 4],
    };
    for (k, e) in &all {
        if !expired(k, e) {
            continue;
        }
        let peer = e.peer_key(k);
        let peer_live = match &index {
            Some(index) => index
                .get(&peer)
                .is_some_and(|&i| !expired(&peer, &all[i].1)),
            None => {
                let (map, _) = &maps_by_proto[usize::from(peer.proto != IPPROTO_TCP)];
                map.get(&peer, 0).is_ok_and(|pe| !expired(&peer, &pe))
            }
        };
        if peer_live {
            continue;
        }
        let table = usize::from(k.proto != IPPROTO_TCP);
        let (map, name) = &mut maps_by_proto[table];
        match map.remove(k) {
            Ok(()) => {
                report.removed += 1;
                left[table] = left[table].saturating_sub(1);
            }
            Err(MapError::KeyNotFound) | Err(MapError::SyscallError(_)) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    report.left[..2].copy_from_slice(&left);
    Ok(report)
}

/// What a change to the state took away: addresses no endpoint has any
/// more (disconnect, a removed network, CNI DEL, Docker Leave) and
/// published ports no longer mapped to where they were (`publish rm`,
/// Docker's RevokeExternalConnectivity, an endpoint gone). Their flows
/// must go with them: a client that keeps sending on one tuple (a UDP
/// stream, moby#53384) would otherwise keep following the old entry to
/// the old address, whatever is published now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gone {
    pub addrs: BTreeSet<[u8; 4]>,
    /// (published port, where it led).
    pub mappings: BTreeSet<(PortKey, [u8; 4], [u8; 2])>,
    /// The same for IPv6.
    pub addrs6: BTreeSet<[u8; 16]>,
    pub mappings6: BTreeSet<(PortKey6, [u8; 16], [u8; 2])>,
}

impl Gone {
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
            && self.mappings.is_empty()
            && self.addrs6.is_empty()
            && self.mappings6.is_empty()
    }

    /// Whether the IPv4 flow of `entry` (under `key`, either direction)
    /// goes to or from a gone address, before or after translation, or was
    /// translated by a gone mapping.
    pub fn matches(&self, key: &CtKeyOf<[u8; 4]>, entry: &CtEntryOf<[u8; 4]>) -> bool {
        gone_matches(&self.addrs, &self.mappings, key, entry)
    }

    /// [`Gone::matches`] for an IPv6 flow.
    pub fn matches6(&self, key: &CtKeyOf<[u8; 16]>, entry: &CtEntryOf<[u8; 16]>) -> bool {
        gone_matches(&self.addrs6, &self.mappings6, key, entry)
    }
}

/// A gone mapping: the published port, where it led.
type GoneMapping<A> = (PortKeyOf<A>, A, [u8; 2]);

fn gone_matches<A: Family>(
    addrs: &BTreeSet<A>,
    mappings: &BTreeSet<GoneMapping<A>>,
    key: &CtKeyOf<A>,
    entry: &CtEntryOf<A>,
) -> bool
where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    {
        let t = entry.translate(key);
        if [key.saddr, key.daddr, t.saddr, t.daddr]
            .iter()
            .any(|a| addrs.contains(a))
        {
            return true;
        }
        if entry.flags & FLAG_DNAT == 0 || mappings.is_empty() {
            return false;
        }
        // The original direction, as the published port saw it, and after
        // its DNAT.
        let (orig, dnat) = if entry.flags & FLAG_REPLY != 0 {
            (entry.peer_key(key), key.reversed())
        } else {
            (*key, t)
        };
        mappings.iter().any(|(port, addr, cport)| {
            port.proto == orig.proto
                && port.port == orig.dport
                && (port.addr == A::unspecified() || port.addr == orig.daddr)
                && *addr == dnat.daddr
                && *cport == dnat.dport
        })
    }
}

/// A published port and its target as the maps hold them: the key
/// [`Gone::mappings`] uses.
pub fn mapping_of(key: &PortKey, target: &PortTarget) -> (PortKey, [u8; 4], [u8; 2]) {
    (*key, target.addr, target.port)
}

/// [`mapping_of`] for IPv6 ([`Gone::mappings6`]).
pub fn mapping_of6(key: &PortKey6, target: &PortTarget6) -> (PortKey6, [u8; 16], [u8; 2]) {
    (*key, target.addr, target.port)
}

/// What one purge did: entries removed, and every error met on the way
/// (it goes on past them, so one bad entry does not keep the rest).
#[derive(Debug, Default)]
pub struct PurgeReport {
    pub removed: usize,
    pub errors: Vec<CtError>,
}

/// Removes both entries of every flow [`Gone::matches`]. Call it after the
/// maps stopped publishing what is gone, so no new entry can be made for
/// it meanwhile.
pub fn purge(pins: &PinRoot, gone: &Gone) -> PurgeReport {
    let mut report = PurgeReport::default();
    if gone.is_empty() {
        return report;
    }
    if !gone.addrs.is_empty() || !gone.mappings.is_empty() {
        purge_family::<[u8; 4]>(pins, |k, e| gone.matches(k, e), &mut report);
    }
    if !gone.addrs6.is_empty() || !gone.mappings6.is_empty() {
        purge_family::<[u8; 16]>(pins, |k, e| gone.matches6(k, e), &mut report);
    }
    report
}

fn purge_family<A: Family>(
    pins: &PinRoot,
    matches: impl Fn(&CtKeyOf<A>, &CtEntryOf<A>) -> bool,
    report: &mut PurgeReport,
) where
    CtKeyOf<A>: aya::Pod + Eq + Hash,
    CtEntryOf<A>: aya::Pod,
{
    for name in A::TABLES {
        let err = map_err(name);
        let mut map = match open::<A>(pins, name) {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        let mut doomed = std::collections::HashSet::new();
        for item in map.iter() {
            match item {
                Ok((k, e)) if matches(&k, &e) => {
                    doomed.insert(k);
                    // The other direction, even when it no longer matches
                    // on its own (a flow is one pair).
                    doomed.insert(e.peer_key(&k));
                }
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => report.errors.push(err(e)),
            }
        }
        for k in doomed {
            match map.remove(&k) {
                Ok(()) => report.removed += 1,
                // Expired or evicted meanwhile, or the peer never existed.
                Err(e) if is_not_found(&e) => {}
                Err(e) => report.errors.push(err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::ct::{CtEntry, CtKey, FLAG_HAIRPIN_SELF};

    use super::*;

    const CLIENT: [u8; 4] = [192, 0, 2, 2];
    const HOST: [u8; 4] = [192, 0, 2, 1];
    const C1: [u8; 4] = [172, 17, 0, 2];
    const C2: [u8; 4] = [172, 17, 0, 3];
    const GW: [u8; 4] = [172, 17, 0, 1];

    fn key(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> CtKey {
        CtKey {
            saddr: s,
            daddr: d,
            sport: sp.to_be_bytes(),
            dport: dp.to_be_bytes(),
            proto: IPPROTO_UDP,
            zone: 0,
            _pad: [0; 2],
        }
    }

    fn port(addr: [u8; 4], p: u16) -> PortKey {
        PortKey {
            addr,
            port: p.to_be_bytes(),
            proto: IPPROTO_UDP,
            _pad: 0,
        }
    }

    /// The pair of entries of a flow, as `conntrack::create` makes it.
    fn pair(k: CtKey, orig: CtEntry) -> [(CtKey, CtEntry); 2] {
        [(k, orig), (orig.peer_key(&k), orig.reply(&k))]
    }

    fn published(to: [u8; 4]) -> [(CtKey, CtEntry); 2] {
        let orig = CtEntry {
            flags: FLAG_DNAT,
            ..CtEntry::default()
        }
        .with_dst(to, 80u16.to_be_bytes());
        pair(key(CLIENT, 40000, HOST, 8080), orig)
    }

    #[test]
    fn gone_addresses_take_every_flow_that_touches_them() {
        let gone = Gone {
            addrs: [C1].into(),
            ..Gone::default()
        };
        for (k, e) in published(C1) {
            assert!(gone.matches(&k, &e), "{k:?}");
        }
        for (k, e) in published(C2) {
            assert!(!gone.matches(&k, &e), "{k:?}");
        }
        // Masquerade from the container, both directions.
        let snat = CtEntry {
            flags: FLAG_SNAT,
            ..CtEntry::default()
        }
        .with_src(HOST, 41000u16.to_be_bytes());
        for (k, e) in pair(key(C1, 5000, CLIENT, 53), snat) {
            assert!(gone.matches(&k, &e), "{k:?}");
        }
        // A container reaching its own port: source the gateway.
        let own = CtEntry {
            flags: FLAG_DNAT | FLAG_HAIRPIN_SELF,
            ..CtEntry::default()
        }
        .with_dst(C1, 80u16.to_be_bytes())
        .with_src(GW, 5000u16.to_be_bytes());
        for (k, e) in pair(key(C1, 5000, HOST, 8080), own) {
            assert!(gone.matches(&k, &e), "{k:?}");
        }
    }

    #[test]
    fn a_gone_mapping_takes_only_its_own_flows() {
        let target = PortTarget {
            addr: C1,
            port: 80u16.to_be_bytes(),
            ..PortTarget::default()
        };
        for bound in [[0; 4], HOST] {
            let gone = Gone {
                mappings: [mapping_of(&port(bound, 8080), &target)].into(),
                ..Gone::default()
            };
            for (k, e) in published(C1) {
                assert!(gone.matches(&k, &e), "{k:?}");
            }
            // The same port to another container, and another port to this one.
            for (k, e) in published(C2) {
                assert!(!gone.matches(&k, &e), "{k:?}");
            }
            let other = CtEntry {
                flags: FLAG_DNAT,
                ..CtEntry::default()
            }
            .with_dst(C1, 80u16.to_be_bytes());
            for (k, e) in pair(key(CLIENT, 40000, HOST, 9090), other) {
                assert!(!gone.matches(&k, &e), "{k:?}");
            }
        }
        // Bound to another host address: not this flow.
        let gone = Gone {
            mappings: [mapping_of(&port([10, 0, 0, 1], 8080), &target)].into(),
            ..Gone::default()
        };
        for (k, e) in published(C1) {
            assert!(!gone.matches(&k, &e), "{k:?}");
        }
    }
}
