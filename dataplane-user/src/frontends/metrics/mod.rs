//! Prometheus metrics: what the dataplane counts, encoded by
//! `prometheus-client` in the OpenMetrics text format, and the HTTP/1.1
//! server (hyper) for `GET /metrics`.
//!
//! Nothing is cached: [`render`] reads the pinned maps and the state it is
//! given at each scrape, so the numbers are the kernel's, whoever loaded the
//! programs and whether or not this agent restarted since. A map that is not
//! pinned yet (nothing loaded) contributes no series rather than failing the
//! scrape, so a fresh host still answers.
//!
//! Counter families are declared without their `_total` (OpenMetrics);
//! their samples carry it, so the series names below are the ones to query.
//!
//! | series | type | labels | source |
//! |---|---|---|---|
//! | `dataplane_packets_total`, `dataplane_bytes_total` | counter | `protocol` | `DP_PROTO_STATS` |
//! | `dataplane_drops_total`, `dataplane_dropped_bytes_total` | counter | `reason` | `DP_DROP_STATS` |
//! | `dataplane_published_port_flows_total`, `..._bytes_total` | counter | `proto`, `host`, `container`, `endpoint`, `network` | `DP_PORT_STATS` |
//! | `dataplane_filter_packets_total`, `..._bytes_total` | counter | `id`, `rule` | `DP_FLT_STATS` |
//! | `dataplane_conntrack_entries` | gauge | `table` | `DP_CT_TCP`, `DP_CT_OTHER` |
//! | `dataplane_snat_flows` | gauge | `uplink_addr` | masquerade reply entries |
//! | `dataplane_map_entries`, `dataplane_map_max_entries`, `dataplane_map_pressure` (entries/max) | gauge | `map` | every hash, LRU and LPM map |
//! | `dataplane_networks`, `dataplane_endpoints` | gauge | | the state |
//!
//! Map entry counts come from walking the keys, which is a snapshot of a
//! table the datapath keeps changing: a key deleted during the walk makes
//! the kernel restart it, so a count can be off by the churn of the walk,
//! and is capped at the map's size.
//!
//! The server answers one request per connection (`Connection: close`),
//! with a bounded request head (431 beyond), a read timeout (408) and a
//! write timeout, and at most
//! [`MAX_CONNECTIONS`] connections at a time (more wait in the listen
//! backlog), so a slow or hostile client costs a bounded amount.

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    io,
    net::Ipv4Addr,
    time::Duration,
};

use aya::{
    maps::{HashMap, LpmTrie, MapData, MapError},
    Pod,
};
use dataplane_common::{
    ct::{CtEntry, CtEntry6, CtKey, CtKey6, FLAG_REPLY, FLAG_SNAT},
    filter::{
        FilterHostKey, FilterHostKey6, FilterIfaceKey, FilterNetKey, FilterPortKey, FilterSrc6Data,
        FilterSrcData, HostRules, RuleBits,
    },
    maps,
    nat::{
        EndpointInfo, EndpointInfo6, HostAddr, PortKey, PortKey6, PortTarget, PortTarget6,
        SubnetPolicy, TrustedIface, Uplink, Uplink6,
    },
    sock::{SockRevNat, SockRevNat6},
};
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder, MetricEncoder,
    },
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    control::{cluster::ClusterStatus, state::State},
    datapath::{
        bpffs::PinRoot,
        filter::{self, FilterError},
        maps::MapsError,
        nat::{self, NatError},
        stats::{self, ReadError},
    },
};

/// The content type of the OpenMetrics text format `prometheus-client`
/// writes (Prometheus asks for it first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The only path served.
pub const PATH: &str = "/metrics";

/// Longest request head (request line and headers) read; a scraper sends a
/// few hundred bytes. Hyper's smallest buffer limit.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a client has to take the whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once unless configured; at the cap the oldest
/// idle one is closed for a newcomer.
pub const MAX_CONNECTIONS: usize = crate::api::DEFAULT_MAX_CONNECTIONS;

/// After answering, unread input is drained for at most this long and this
/// many bytes before closing: closing a socket with unread data sends a
/// reset, which can destroy the response before the client has read it
/// (the case of a request that was refused for being too large).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("reading the protocol and drop counters")]
    Stats(#[source] ReadError),
    #[error("reading the published ports' counters")]
    Ports(#[source] NatError),
    #[error("reading the filter rules' counters")]
    Filter(#[source] FilterError),
    #[error("accepting metrics connections")]
    Accept(#[source] io::Error),
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> MetricsError {
    move |e| MetricsError::Map {
        map,
        source: Box::new(e),
    }
}

// ---------------------------------------------------------------------------
// The exposition format, written by `prometheus-client`.

type Labels = Vec<(&'static str, LabelValue)>;

/// A label value, escaped as the text format wants (the crate writes label
/// values as given, and a filter rule's text can hold a double quote).
#[derive(Clone, Debug)]
struct LabelValue(String);

impl From<String> for LabelValue {
    fn from(s: String) -> LabelValue {
        LabelValue(s)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// One metric family: its name as the samples carry it, type, help and
/// samples, in the order they were read.
#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    samples: Vec<(Labels, Num)>,
}

/// A sample's value: counts, or a ratio (`dataplane_map_pressure`).
#[derive(Clone, Copy, Debug)]
enum Num {
    Int(u64),
    Ratio(f64),
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: MetricType::Counter,
            help,
            samples: Vec::new(),
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: MetricType::Gauge,
            help,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, labels: Vec<(&'static str, String)>, value: u64) {
        self.sample_num(labels, Num::Int(value));
    }

    fn sample_num(&mut self, labels: Vec<(&'static str, String)>, value: Num) {
        let labels = labels.into_iter().map(|(k, v)| (k, v.into())).collect();
        self.samples.push((labels, value));
    }

    fn with(mut self, labels: Vec<(&'static str, String)>, value: u64) -> Family {
        self.sample(labels, value);
        self
    }
}

/// One scrape's families, handed to the crate as a collector: the values
/// are read once per scrape, so they are constants, not live metrics.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    /// A family without samples is left out entirely: its map is not
    /// pinned, or there is nothing of its kind.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for f in self.0.iter().filter(|f| !f.samples.is_empty()) {
            // OpenMetrics names a counter family without the `_total` its
            // samples carry; the crate appends it to each sample.
            let name = match f.kind {
                MetricType::Counter => f.name.strip_suffix("_total").unwrap_or(f.name),
                _ => f.name,
            };
            let mut family = encoder.encode_descriptor(name, f.help, None, f.kind)?;
            match f.samples.as_slice() {
                // A series without labels is the family's only one; through
                // `encode_family` it would be written with an empty `{}`.
                [(labels, value)] if labels.is_empty() => encode_value(f.kind, *value, family)?,
                samples => {
                    for (labels, value) in samples {
                        encode_value(f.kind, *value, family.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(kind: MetricType, value: Num, sample: MetricEncoder) -> fmt::Result {
    match (kind, value) {
        (MetricType::Counter, Num::Int(v)) => ConstCounter::new(v).encode(sample),
        (MetricType::Counter, Num::Ratio(v)) => ConstCounter::new(v).encode(sample),
        (_, Num::Int(v)) => ConstGauge::new(v).encode(sample),
        (_, Num::Ratio(v)) => ConstGauge::new(v).encode(sample),
    }
}

/// The families in order, in the OpenMetrics text format (with its
/// closing `# EOF`).
fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
mod server;

pub use server::{serve, serve_with};

// ---------------------------------------------------------------------------
// Reading the maps.

/// Whether `name` is pinned. An error other than "not found" counts as
/// pinned, so the reader that follows reports it instead of the series
/// silently disappearing.
fn is_pinned(pins: &PinRoot, name: &str) -> bool {
    pins.map(name).try_exists().unwrap_or(true)
}

/// A map's fill level.
#[derive(Clone, Copy)]
struct Fill {
    entries: u64,
    max: u32,
}

/// Counts keys, at most `max` of them: a walk that the kernel keeps
/// restarting because keys vanish under it must still end.
fn count_keys<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    max: u32,
    name: &'static str,
) -> Result<u64, MetricsError> {
    let mut n = 0u64;
    for key in keys.take(max as usize) {
        key.map_err(map_err(name))?;
        n += 1;
    }
    Ok(n)
}

/// Fill level of a hash or LRU hash map. The key and value types are the
/// ABI's, so a map whose layout changed is an error naming it, not a
/// misread.
fn hash_fill<K: Pod, V: Pod>(
    pins: &PinRoot,
    name: &'static str,
) -> Result<Option<Fill>, MetricsError> {
    let Some((map, max)) =
        crate::datapath::maps::open_if_pinned::<HashMap<MapData, K, V>>(pins, name)?
    else {
        return Ok(None);
    };
    let entries = count_keys(map.keys(), max, name)?;
    Ok(Some(Fill { entries, max }))
}

/// Fill level of an LPM trie.
fn lpm_fill<K: Pod, V: Pod>(
    pins: &PinRoot,
    name: &'static str,
) -> Result<Option<Fill>, MetricsError> {
    let Some((map, max)) =
        crate::datapath::maps::open_if_pinned::<LpmTrie<MapData, K, V>>(pins, name)?
    else {
        return Ok(None);
    };
    let entries = count_keys(map.keys(), max, name)?;
    Ok(Some(Fill { entries, max }))
}

type FillFn = fn(&PinRoot, &'static str) -> Result<Option<Fill>, MetricsError>;

/// The maps whose fill level is reported besides the conntrack tables and
/// the uplinks (which are walked for more than their size). Arrays are
/// always full and are not listed.
const FILL_MAPS: [(&str, FillFn); 21] = [
    (maps::PORTS, hash_fill::<PortKey, PortTarget>),
    (maps::OPEN_PORTS, hash_fill::<PortKey, u32>),
    (maps::TRUSTED_IFACES, hash_fill::<TrustedIface, u32>),
    (maps::SUBNETS, lpm_fill::<[u8; 4], SubnetPolicy>),
    (maps::HOST_ADDRS, hash_fill::<[u8; 4], HostAddr>),
    (maps::ENDPOINTS, hash_fill::<u32, EndpointInfo>),
    (maps::SOCK_REVNAT, hash_fill::<u64, SockRevNat>),
    (maps::FILTER_SRC, lpm_fill::<FilterSrcData, RuleBits>),
    (maps::FILTER_HOST, hash_fill::<FilterHostKey, HostRules>),
    (maps::FILTER_SRC6, lpm_fill::<FilterSrc6Data, RuleBits>),
    (maps::FILTER_HOST6, hash_fill::<FilterHostKey6, HostRules>),
    (maps::FILTER_IFACE, hash_fill::<FilterIfaceKey, RuleBits>),
    (maps::FILTER_PORT, hash_fill::<FilterPortKey, RuleBits>),
    (maps::FILTER_NET, hash_fill::<FilterNetKey, RuleBits>),
    (maps::PORTS6, hash_fill::<PortKey6, PortTarget6>),
    (maps::OPEN_PORTS6, hash_fill::<PortKey6, u32>),
    (maps::SUBNETS6, lpm_fill::<[u8; 16], SubnetPolicy>),
    (maps::HOST_ADDRS6, hash_fill::<[u8; 16], HostAddr>),
    (maps::ENDPOINTS6, hash_fill::<u32, EndpointInfo6>),
    (maps::UPLINKS6, hash_fill::<u32, Uplink6>),
    (maps::SOCK_REVNAT6, hash_fill::<u64, SockRevNat6>),
];

/// One conntrack table: its size, and its masquerade reply entries per
/// uplink address.
fn scan_conntrack(
    pins: &PinRoot,
    name: &'static str,
    snat: &mut BTreeMap<Ipv4Addr, u64>,
) -> Result<Option<Fill>, MetricsError> {
    let Some((map, max)) =
        crate::datapath::maps::open_if_pinned::<HashMap<MapData, CtKey, CtEntry>>(pins, name)?
    else {
        return Ok(None);
    };
    let mut entries = 0u64;
    // Keys and values are read separately (rather than with `iter`, which
    // retries internally) so the whole walk stays bounded by `max` steps.
    for key in map.keys().take(max as usize) {
        let key = key.map_err(map_err(name))?;
        let entry = match map.get(&key, 0) {
            Ok(e) => e,
            // Expired or evicted between the key and the value: gone.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        };
        entries += 1;
        // The reply entry of a masqueraded flow is keyed by the reply as it
        // arrives: to the uplink's address, at the source port masquerade
        // chose. One per port in use.
        let want = FLAG_SNAT | FLAG_REPLY;
        if entry.flags & want == want {
            *snat.entry(Ipv4Addr::from(key.daddr)).or_default() += 1;
        }
    }
    Ok(Some(Fill { entries, max }))
}

/// The uplinks' fill level and their masquerade addresses.
fn scan_uplinks(pins: &PinRoot) -> Result<Option<(Fill, Vec<Ipv4Addr>)>, MetricsError> {
    let name = maps::UPLINKS;
    let Some((map, max)) =
        crate::datapath::maps::open_if_pinned::<HashMap<MapData, u32, Uplink>>(pins, name)?
    else {
        return Ok(None);
    };
    let mut addrs = Vec::new();
    for key in map.keys().take(max as usize) {
        let key = key.map_err(map_err(name))?;
        match map.get(&key, 0) {
            Ok(u) => addrs.push(Ipv4Addr::from(u.addr)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    let fill = Fill {
        entries: addrs.len() as u64,
        max,
    };
    Ok(Some((fill, addrs)))
}

// ---------------------------------------------------------------------------
// The metrics.

fn traffic(pins: &PinRoot, out: &mut Vec<Family>) -> Result<(), MetricsError> {
    // stats::read's error does not say whether a pin is missing, so that is
    // asked first.
    if !is_pinned(pins, maps::PROTO_STATS) || !is_pinned(pins, maps::DROP_STATS) {
        return Ok(());
    }
    let snap = stats::read(pins).map_err(MetricsError::Stats)?;
    let mut packets = Family::counter(
        "dataplane_packets_total",
        "Packets seen by the stats program, by protocol class.",
    );
    let mut bytes = Family::counter(
        "dataplane_bytes_total",
        "Bytes seen by the stats program, by protocol class.",
    );
    for (name, c) in &snap.protocols {
        packets.sample(vec![("protocol", name.clone())], c.packets);
        bytes.sample(vec![("protocol", name.clone())], c.bytes);
    }
    let mut drops = Family::counter(
        "dataplane_drops_total",
        "Packets dropped by the dataplane's programs, by reason.",
    );
    let mut dropped_bytes = Family::counter(
        "dataplane_dropped_bytes_total",
        "Bytes of the packets dropped by the dataplane's programs, by reason.",
    );
    for (name, c) in &snap.drops {
        drops.sample(vec![("reason", name.clone())], c.packets);
        dropped_bytes.sample(vec![("reason", name.clone())], c.bytes);
    }
    out.extend([packets, bytes, drops, dropped_bytes]);
    Ok(())
}

fn published_ports(
    pins: &PinRoot,
    state: &State,
    out: &mut Vec<Family>,
) -> Result<(), MetricsError> {
    let rows: Vec<_> = state
        .endpoints
        .values()
        .flat_map(|ep| {
            ep.published.iter().flat_map(move |m| {
                m.sides(ep.ipv4, ep.ipv6)
                    .into_iter()
                    .map(move |s| (ep, m, s))
            })
        })
        .collect();
    if rows.is_empty() || !is_pinned(pins, maps::PORT_STATS) {
        return Ok(());
    }
    let counters = nat::port_counters(pins, rows.iter().map(|(_, _, s)| s.stats_index))
        .map_err(MetricsError::Ports)?;
    let mut flows = Family::counter(
        "dataplane_published_port_flows_total",
        "New flows to a published port (the counter counts the first packet of each flow).",
    );
    let mut bytes = Family::counter(
        "dataplane_published_port_bytes_total",
        "Bytes of the first packets of new flows to a published port.",
    );
    for (ep, m, side) in rows {
        let c = counters.get(&side.stats_index).copied().unwrap_or_default();
        // The same labels as `dataplane nat ls`.
        let labels = vec![
            ("proto", m.proto.name().to_owned()),
            ("host", side.host),
            ("container", side.container),
            ("endpoint", ep.name.clone()),
            ("network", ep.network.clone()),
        ];
        flows.sample(labels.clone(), c.packets);
        bytes.sample(labels, c.bytes);
    }
    out.extend([flows, bytes]);
    Ok(())
}

fn filters(pins: &PinRoot, state: &State, out: &mut Vec<Family>) -> Result<(), MetricsError> {
    let needed = [
        maps::FILTER_CONFIG,
        maps::FILTER_ACTIONS,
        maps::FILTER_STATS,
    ];
    if state.filters.is_empty() || !needed.iter().all(|m| is_pinned(pins, m)) {
        return Ok(());
    }
    let live = filter::counters_by_id(pins).map_err(MetricsError::Filter)?;
    let mut packets = Family::counter(
        "dataplane_filter_packets_total",
        "Packets that matched a filter rule (first match wins).",
    );
    let mut bytes = Family::counter(
        "dataplane_filter_bytes_total",
        "Bytes of the packets that matched a filter rule.",
    );
    // The state's rules, as `filter ls` shows them: a rule not applied yet
    // has matched nothing.
    for r in &state.filters {
        let c = live.get(&r.id).copied().unwrap_or_default();
        let labels = vec![("id", r.id.to_string()), ("rule", r.to_string())];
        packets.sample(labels.clone(), c.packets);
        bytes.sample(labels, c.bytes);
    }
    out.extend([packets, bytes]);
    Ok(())
}

fn tables(pins: &PinRoot, out: &mut Vec<Family>) -> Result<(), MetricsError> {
    let mut conntrack = Family::gauge(
        "dataplane_conntrack_entries",
        "Entries of a conntrack table (two per translated flow).",
    );
    let mut entries = Family::gauge(
        "dataplane_map_entries",
        "Entries of a dataplane map (a walk of a changing table: approximate).",
    );
    let mut max_entries = Family::gauge(
        "dataplane_map_max_entries",
        "Size of a dataplane map; an LRU map evicts its oldest entries when full.",
    );
    let mut pressure = Family::gauge(
        "dataplane_map_pressure",
        "Entries over size of a dataplane map, 0 to 1; a conntrack table near 1 evicts live \
         flows, a published-port or filter map near 1 refuses new entries.",
    );
    let mut fill = |map: &'static str, f: Fill| {
        entries.sample(vec![("map", map.to_owned())], f.entries);
        max_entries.sample(vec![("map", map.to_owned())], u64::from(f.max));
        let ratio = if f.max == 0 {
            0.0
        } else {
            f.entries as f64 / f64::from(f.max)
        };
        pressure.sample_num(vec![("map", map.to_owned())], Num::Ratio(ratio));
    };

    let mut snat = BTreeMap::new();
    let uplinks = scan_uplinks(pins)?;
    if let Some((f, addrs)) = &uplinks {
        fill(maps::UPLINKS, *f);
        // Every uplink gets a series, also with no flow yet, so the gauge
        // exists before the ports run short.
        for a in addrs {
            snat.insert(*a, 0);
        }
    }
    for (map, table) in [(maps::CT_TCP, "tcp"), (maps::CT_OTHER, "other")] {
        if let Some(f) = scan_conntrack(pins, map, &mut snat)? {
            conntrack.sample(vec![("table", table.to_owned())], f.entries);
            fill(map, f);
        }
    }
    // IPv6's tables: their size (its masquerade has no per-address gauge
    // yet).
    for (map, table) in [(maps::CT6_TCP, "tcp6"), (maps::CT6_OTHER, "other6")] {
        if let Some(f) = hash_fill::<CtKey6, CtEntry6>(pins, map)? {
            conntrack.sample(vec![("table", table.to_owned())], f.entries);
            fill(map, f);
        }
    }
    for (map, read) in FILL_MAPS {
        if let Some(f) = read(pins, map)? {
            fill(map, f);
        }
    }
    let mut snat_flows = Family::gauge(
        "dataplane_snat_flows",
        "Masqueraded flows per uplink address: the masquerade source ports in use.",
    );
    // Flows through an uplink that is gone still hold their ports until
    // they expire, so they are reported too.
    for (addr, n) in snat {
        snat_flows.sample(vec![("uplink_addr", addr.to_string())], n);
    }
    out.extend([conntrack, snat_flows, entries, max_entries, pressure]);
    Ok(())
}

/// Everything the agent exposes, read fresh from the pinned maps and the
/// state at each scrape, in the Prometheus text exposition format 0.0.4.
pub fn render(pins: &PinRoot, state: &State) -> Result<String, MetricsError> {
    render_with(pins, state, None)
}

/// [`render`], with the cluster watch of an agent with a cluster store.
pub fn render_with(
    pins: &PinRoot,
    state: &State,
    cluster: Option<&ClusterStatus>,
) -> Result<String, MetricsError> {
    let mut families = Vec::new();
    traffic(pins, &mut families)?;
    published_ports(pins, state, &mut families)?;
    filters(pins, state, &mut families)?;
    tables(pins, &mut families)?;
    families.push(
        Family::gauge("dataplane_networks", "Networks in the state.")
            .with(Vec::new(), state.networks.len() as u64),
    );
    families.push(
        Family::gauge("dataplane_endpoints", "Endpoints in the state.")
            .with(Vec::new(), state.endpoints.len() as u64),
    );
    // This process's responder (zero in a CLI that renders for itself).
    for (name, help, value) in super::dns::COUNTERS.read() {
        families.push(Family::counter(name, help).with(Vec::new(), value));
    }
    if let Some(c) = cluster {
        cluster_watch(c, &mut families);
    }
    Ok(encode(families))
}

/// The cluster store's watch as this agent last saw it (no store call: a
/// scrape answers at once even while the store is down).
fn cluster_watch(c: &ClusterStatus, out: &mut Vec<Family>) {
    out.push(
        Family::gauge(
            "dataplane_cluster_store_reachable",
            "1 when the last call to the cluster store succeeded.",
        )
        .with(Vec::new(), u64::from(c.reachable)),
    );
    out.push(
        Family::counter(
            "dataplane_cluster_watch_events_total",
            "Changes of the cluster store this agent's watch received.",
        )
        .with(Vec::new(), c.watch_events),
    );
    out.push(
        Family::gauge(
            "dataplane_cluster_remote_entries",
            "Remote overlay endpoints programmed on this host's VXLAN devices.",
        )
        .with(Vec::new(), c.programmed as u64),
    );
    let last = c
        .last_sync
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    out.push(
        Family::gauge(
            "dataplane_cluster_last_sync_timestamp_seconds",
            "When this host last converged to the store (Unix time; 0: never).",
        )
        .with(Vec::new(), last),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_watch_is_reported() {
        let c = ClusterStatus {
            reachable: true,
            last_sync: Some("2026-12-07T03:00:00Z".into()),
            watch_events: 12,
            programmed: 4,
            ..ClusterStatus::default()
        };
        let mut families = Vec::new();
        cluster_watch(&c, &mut families);
        let text = encode(families);
        for line in [
            "dataplane_cluster_store_reachable 1",
            "dataplane_cluster_watch_events_total 12",
            "dataplane_cluster_remote_entries 4",
            "dataplane_cluster_last_sync_timestamp_seconds 1796612400",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn families_encode_with_help_type_and_escaped_labels() {
        let mut f = Family::counter("x_total", "Some x.");
        f.sample(vec![("a", "1".into()), ("b", "q\"\\\n".into())], 7);
        let g = Family::gauge("y", "Some y.").with(Vec::new(), 3);
        let empty = Family::gauge("z", "Nothing.");
        assert_eq!(
            encode(vec![f, empty, g]),
            "# HELP x Some x.\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"\\\\\\n\"} 7\n\
             # HELP y Some y.\n# TYPE y gauge\ny 3\n# EOF\n"
        );
    }

    #[test]
    fn rendering_without_pins_is_not_an_error() {
        let pins = PinRoot::new("/nonexistent/dataplane-metrics-test");
        let text = render(&pins, &State::default()).expect("render");
        assert!(
            text.starts_with(
                "# HELP dataplane_networks Networks in the state.\n# TYPE dataplane_networks gauge\n\
                 dataplane_networks 0\n# HELP dataplane_endpoints Endpoints in the state.\n\
                 # TYPE dataplane_endpoints gauge\ndataplane_endpoints 0\n"
            ),
            "{text}"
        );
        // The DNS responder's counters follow (this process has none).
        assert!(text.contains("\ndataplane_dns_queries_total 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
