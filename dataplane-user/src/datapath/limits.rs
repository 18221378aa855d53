//! The dataplane's resource limits, visible: the sizes of the big maps
//! ([`MapSizes`], the agent's `[maps]` settings, applied at load), how
//! full they are ([`fill`]: a walk of their keys, since an LRU conntrack
//! table evicts silently and the kernel counts nothing for us), and the
//! drop reasons a full resource shows up as ([`LIMIT_DROPS`]).
//!
//! What is measurable, and therefore what is reported:
//! - conntrack tables (LRU): their fill level. An insert into a full LRU
//!   table evicts the least recently used entry without an error, so "table
//!   full" is the fill gauge at or near 100%; an insert that fails anyway is
//!   the `conntrack-insert-failed` drop reason;
//! - masquerade: `snat-ports-exhausted`, counted per packet by the programs
//!   when no source port is free for a destination;
//! - published ports, filter keys, socket reverse-NAT: the agent writes the
//!   first two, so a full map is a refused request naming the map and its
//!   `[maps]` key ([`super::maps::MapsError::Full`]); all are in the gauge.

use std::io;

use dataplane_common::{drop::DropReason, maps};
use serde::{Deserialize, Serialize};

use super::bpffs::PinRoot;
use crate::sys::bpf::RawMap;

/// The drop reasons that mean a resource ran out.
pub const LIMIT_DROPS: [DropReason; 2] = [DropReason::SnatExhausted, DropReason::CtInsert];

/// A map's fill level at which `status` and the agent's log warn.
pub const WARN_PERCENT: u64 = 90;

/// One configurable group of maps: its `[maps]` key and the pinned maps it
/// sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizedGroup {
    pub key: &'static str,
    pub maps: &'static [&'static str],
    /// The size compiled into the object.
    pub default: u32,
}

/// Every map whose size the `[maps]` section sets, by key.
pub const GROUPS: [SizedGroup; 7] = [
    SizedGroup {
        key: "conntrack_tcp",
        maps: &[maps::CT_TCP],
        default: maps::CT_TCP_MAX,
    },
    SizedGroup {
        key: "conntrack_other",
        maps: &[maps::CT_OTHER],
        default: maps::CT_OTHER_MAX,
    },
    SizedGroup {
        key: "conntrack6_tcp",
        maps: &[maps::CT6_TCP],
        default: maps::CT_TCP_MAX,
    },
    SizedGroup {
        key: "conntrack6_other",
        maps: &[maps::CT6_OTHER],
        default: maps::CT_OTHER_MAX,
    },
    SizedGroup {
        key: "published_ports",
        // The counter slots follow: one per mapping (two for a mapping on
        // every address of a dual-stack endpoint, as before).
        maps: &[maps::PORTS, maps::PORTS6, maps::PORT_STATS],
        default: maps::PORTS_MAX,
    },
    SizedGroup {
        key: "filter_keys",
        maps: &[
            maps::FILTER_SRC,
            maps::FILTER_HOST,
            maps::FILTER_SRC6,
            maps::FILTER_HOST6,
            maps::FILTER_IFACE,
            maps::FILTER_PORT,
            maps::FILTER_NET,
        ],
        default: maps::FILTER_KEYS_MAX,
    },
    SizedGroup {
        key: "sock_revnat",
        maps: &[maps::SOCK_REVNAT, maps::SOCK_REVNAT6],
        default: maps::SOCK_REVNAT_MAX,
    },
];

/// The smallest and largest size `[maps]` accepts. The top keeps one
/// IPv6 conntrack table (about 260 B an entry with the kernel's overhead)
/// near 4 GiB; the bottom is for tests (a real table that small is full
/// at once).
pub const MIN_SIZE: u32 = 16;
pub const MAX_SIZE: u32 = 1 << 24;

/// The pinned array (one u32 per [`GROUPS`] entry, 0: not recorded) that
/// records the sizes the agent asked for, so a load without settings (the
/// CLI, the manager's) sizes the maps as the agent did, and pins made
/// before sizes were configurable are taken to the object's sizes.
pub const SIZES_MAP: &str = "DP_SIZES";

fn sizes_shape() -> crate::sys::bpf::MapShape {
    crate::sys::bpf::MapShape {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 16,
        flags: 0,
    }
}

/// The sizes recorded under `pins` (unset where none is).
pub fn recorded_sizes(pins: &PinRoot) -> io::Result<MapSizes> {
    let map = match RawMap::from_pin(&pins.map(SIZES_MAP)) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MapSizes::default()),
        Err(e) => return Err(e),
    };
    if map.shape() != sizes_shape() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{SIZES_MAP} is not the record of map sizes"),
        ));
    }
    let mut sizes = MapSizes::default();
    for (i, g) in GROUPS.iter().enumerate() {
        let key = u32::try_from(i).unwrap_or(u32::MAX).to_ne_bytes();
        let v = map
            .lookup(&key)?
            .and_then(|v| v.try_into().ok())
            .map(u32::from_ne_bytes)
            .filter(|v| *v != 0);
        *sizes.slot(g.key) = v;
    }
    Ok(sizes)
}

/// Records the sizes `sizes` sets (the others keep what was recorded).
pub fn record_sizes(pins: &PinRoot, sizes: &MapSizes) -> io::Result<()> {
    let path = pins.map(SIZES_MAP);
    let map = match RawMap::from_pin(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let m = RawMap::create(SIZES_MAP, sizes_shape())?;
            m.pin(&path)?;
            m
        }
        Err(e) => return Err(e),
    };
    for (i, g) in GROUPS.iter().enumerate() {
        if let Some(v) = sizes.of_map(g.maps[0]) {
            let key = u32::try_from(i).unwrap_or(u32::MAX).to_ne_bytes();
            map.update(&key, &v.to_ne_bytes())?;
        }
    }
    Ok(())
}

/// The `[maps]` key of a pinned map, if its size is configurable.
pub fn key_of(map: &str) -> Option<&'static str> {
    GROUPS.iter().find(|g| g.maps.contains(&map)).map(|g| g.key)
}

/// Sizes of the configurable maps: None keeps what is pinned (or the
/// object's size when nothing is). The agent passes every size (the file's
/// or the default); other loaders (the CLI, the manager's lazy load) pass
/// none, so they never resize what the agent made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSizes {
    pub conntrack_tcp: Option<u32>,
    pub conntrack_other: Option<u32>,
    pub conntrack6_tcp: Option<u32>,
    pub conntrack6_other: Option<u32>,
    pub published_ports: Option<u32>,
    pub filter_keys: Option<u32>,
    pub sock_revnat: Option<u32>,
}

impl MapSizes {
    /// Every size as compiled into the object.
    pub fn defaults() -> MapSizes {
        let mut s = MapSizes::default();
        for g in GROUPS {
            *s.slot(g.key) = Some(g.default);
        }
        s
    }

    /// The slot of `key` (one of [`GROUPS`]' keys).
    pub fn slot(&mut self, key: &str) -> &mut Option<u32> {
        match key {
            "conntrack_tcp" => &mut self.conntrack_tcp,
            "conntrack_other" => &mut self.conntrack_other,
            "conntrack6_tcp" => &mut self.conntrack6_tcp,
            "conntrack6_other" => &mut self.conntrack6_other,
            "published_ports" => &mut self.published_ports,
            "filter_keys" => &mut self.filter_keys,
            _ => &mut self.sock_revnat,
        }
    }

    /// The size asked for `map`, if any.
    pub fn of_map(&self, map: &str) -> Option<u32> {
        let key = key_of(map)?;
        let mut s = *self;
        *s.slot(key)
    }

    /// These sizes with every unset one taken from `base`.
    pub fn or(self, base: MapSizes) -> MapSizes {
        let (mut out, mut base) = (self, base);
        for g in GROUPS {
            let b = *base.slot(g.key);
            let slot = out.slot(g.key);
            if slot.is_none() {
                *slot = b;
            }
        }
        out
    }
}

/// Free entries the kernel keeps aside per possible CPU in an LRU map
/// (`LOCAL_FREE_TARGET` in kernel/bpf/bpf_lru_list.c): a CPU whose local
/// free list runs dry evicts to refill it, so an LRU table starts evicting
/// up to this many entries per CPU before it is full.
pub const LRU_FREE_PER_CPU: u64 = 128;

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: u64,
    pub max_entries: u32,
    /// Entries the map holds before it evicts (LRU: `max_entries` less
    /// [`LRU_FREE_PER_CPU`] per CPU, at most half of it) or refuses (the
    /// others: `max_entries`). The warnings are against this.
    #[serde(default)]
    pub usable: u64,
}

impl MapFill {
    /// Whether the map is at [`WARN_PERCENT`] of what it can hold.
    pub fn near_full(&self) -> bool {
        self.usable > 0 && self.entries * 100 >= self.usable * WARN_PERCENT
    }

    /// [`MapFill::usable`] of a map of `max` entries.
    pub fn usable_of(max: u32, lru: bool, cpus: u64) -> u64 {
        let max = u64::from(max);
        if lru {
            max - (LRU_FREE_PER_CPU * cpus).min(max / 2)
        } else {
            max
        }
    }

    /// Entries in percent of the size, rounded down.
    pub fn percent(&self) -> u64 {
        (self.entries * 100)
            .checked_div(u64::from(self.max_entries))
            .unwrap_or(0)
    }

    /// Entries over the size, 0.0 to 1.0.
    pub fn pressure(&self) -> f64 {
        if self.max_entries == 0 {
            return 0.0;
        }
        self.entries as f64 / f64::from(self.max_entries)
    }
}

/// The maps [`fill`] reports: every configurable one plus the endpoint
/// tables (sized by `ENDPOINTS_MAX`).
pub fn watched() -> impl Iterator<Item = &'static str> {
    GROUPS
        .iter()
        .flat_map(|g| g.maps.iter().copied())
        // An array has every key: its fill says nothing.
        .filter(|m| *m != maps::PORT_STATS)
        .chain([maps::ENDPOINTS, maps::ENDPOINTS6])
}

/// The fill level of every watched map that is pinned. Counting walks the
/// keys (one syscall each, bounded by the map's size), so callers on the
/// agent's runtime run it on a blocking thread.
pub fn fill(pins: &PinRoot) -> io::Result<Vec<MapFill>> {
    fill_known(pins, &[])
}

/// [`fill`], taking the entries of the maps in `known` as given (the
/// conntrack GC has just counted its tables) instead of counting again.
pub fn fill_known(pins: &PinRoot, known: &[(&str, usize)]) -> io::Result<Vec<MapFill>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u64;
    let mut out = Vec::new();
    for name in watched() {
        let map = match RawMap::from_pin(&pins.map(name)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("map {name}: {e}"))),
        };
        let max = map.shape().max_entries;
        // BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH.
        let lru = matches!(map.shape().map_type, 9 | 10);
        let entries = match known.iter().find(|(m, _)| *m == name) {
            Some(&(_, n)) => n,
            None => map
                .count_keys(max as usize)
                .map_err(|e| io::Error::new(e.kind(), format!("map {name}: {e}")))?,
        };
        out.push(MapFill {
            map: name.to_owned(),
            entries: entries as u64,
            max_entries: max,
            usable: MapFill::usable_of(max, lru, cpus),
        });
    }
    Ok(out)
}

/// Drops of one [`LIMIT_DROPS`] reason: the total, and how many since
/// the previous report (the first report counts from zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitDrops {
    pub reason: String,
    pub total: u64,
    pub since_last: u64,
}

/// What the limits look like now: the fill of every watched map, the
/// resource drops, and a warning line per map at or above
/// [`WARN_PERCENT`] and per resource drop reason that grew.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsReport {
    pub maps: Vec<MapFill>,
    pub drops: Vec<LimitDrops>,
    pub warnings: Vec<Warning>,
}

/// One warning: what it is about (a map or a drop reason, the unit of the
/// log's rate limit) and its line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub subject: String,
    pub text: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The warning of a map at its limit: what happens (an LRU map evicts,
/// the others refuse new entries) and the `[maps]` key to raise.
fn full_line(f: &MapFill) -> String {
    let lru = f.usable < u64::from(f.max_entries);
    let evicting = if lru {
        format!(", evicting from about {}", f.usable)
    } else {
        String::new()
    };
    let effect = match (lru, f.map.contains("_CT")) {
        (true, true) => "the oldest flows are being evicted",
        (true, false) => "the oldest entries are being evicted",
        (false, _) => "new entries will be refused",
    };
    let raise = key_of(&f.map)
        .map(|k| format!("; raise `[maps] {k}`"))
        .unwrap_or_default();
    format!(
        "map {} is {}% full ({}/{}{evicting}); {effect}{raise}",
        f.map,
        f.percent(),
        f.entries,
        f.max_entries
    )
}

/// The previous report's drop totals, to say what grew since.
#[derive(Clone, Debug, Default)]
pub struct DropMemory {
    last: Vec<(String, u64)>,
}

impl DropMemory {
    /// The report of `maps` and the drop `totals` (name, packets), which
    /// become the memory for the next one.
    pub fn report(&mut self, maps: Vec<MapFill>, totals: &[(String, u64)]) -> LimitsReport {
        let mut warnings: Vec<Warning> = maps
            .iter()
            .filter(|f| f.near_full())
            .map(|f| Warning {
                subject: f.map.clone(),
                text: full_line(f),
            })
            .collect();
        let mut drops = Vec::new();
        for r in LIMIT_DROPS {
            let total = totals
                .iter()
                .find(|(n, _)| n == r.name())
                .map_or(0, |(_, v)| *v);
            let before = self
                .last
                .iter()
                .find(|(n, _)| n == r.name())
                .map_or(0, |(_, v)| *v);
            // A counter below the last value: the maps were made anew.
            let since_last = total.checked_sub(before).unwrap_or(total);
            if since_last > 0 {
                warnings.push(Warning {
                    subject: r.name().to_owned(),
                    text: format!(
                        "{since_last} packets dropped for {} since the last report ({total} in \
                         all)",
                        r.name()
                    ),
                });
            }
            drops.push(LimitDrops {
                reason: r.name().to_owned(),
                total,
                since_last,
            });
        }
        self.last = drops.iter().map(|d| (d.reason.clone(), d.total)).collect();
        LimitsReport {
            maps,
            drops,
            warnings,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("reading the maps' fill")]
    Fill(#[source] io::Error),
    #[error(transparent)]
    Stats(#[from] super::stats::ReadError),
}

/// The limits now ([`fill`] and the drop counters), remembered in
/// `memory`. Without pinned counters (nothing loaded yet) the drops are
/// zero. Blocking: see [`fill`].
pub fn read(pins: &PinRoot, memory: &mut DropMemory) -> Result<LimitsReport, LimitsError> {
    read_known(pins, memory, &[])
}

/// [`read`] with the entries of the maps in `known` as given (see
/// [`fill_known`]).
pub fn read_known(
    pins: &PinRoot,
    memory: &mut DropMemory,
    known: &[(&str, usize)],
) -> Result<LimitsReport, LimitsError> {
    let maps = fill_known(pins, known).map_err(LimitsError::Fill)?;
    let totals = if pins.map(maps::DROP_STATS).exists() {
        super::stats::read(pins)?
            .drops
            .into_iter()
            .map(|(n, c)| (n, c.packets))
            .collect()
    } else {
        Vec::new()
    };
    Ok(memory.report(maps, &totals))
}

/// Lets a repeated warning through at most once per `every` (per line
/// subject: the map or the drop reason), so a full table logs a line a
/// minute, not one per tick.
#[derive(Debug)]
pub struct RateLimit {
    every: std::time::Duration,
    last: std::collections::HashMap<String, std::time::Instant>,
}

impl RateLimit {
    pub fn new(every: std::time::Duration) -> RateLimit {
        RateLimit {
            every,
            last: std::collections::HashMap::new(),
        }
    }

    /// Whether a line about `subject` may be logged at `now`.
    pub fn allow(&mut self, subject: &str, now: std::time::Instant) -> bool {
        match self.last.get(subject) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                self.last.insert(subject.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(map: &str, entries: u64, max: u32) -> MapFill {
        let lru = map.contains("_CT");
        MapFill {
            usable: MapFill::usable_of(max, lru, 2),
            map: map.into(),
            entries,
            max_entries: max,
        }
    }

    #[test]
    fn a_full_map_and_a_growing_drop_reason_warn() {
        let mut mem = DropMemory::default();
        let r = mem.report(
            vec![
                fill(maps::CT_TCP, 30, 64),
                fill(maps::PORTS, 3, 64),
                fill(maps::CT_OTHER, 1000, 100_000),
            ],
            &[("snat-ports-exhausted".into(), 5)],
        );
        let lines: Vec<(&str, &str)> = r
            .warnings
            .iter()
            .map(|w| (w.subject.as_str(), w.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            vec![
                (
                    "DP_CT_TCP",
                    "map DP_CT_TCP is 46% full (30/64, evicting from about 32); the oldest \
                     flows are being evicted; raise `[maps] conntrack_tcp`"
                ),
                (
                    "snat-ports-exhausted",
                    "5 packets dropped for snat-ports-exhausted since the last report (5 in all)"
                ),
            ]
        );
        // Nothing new: no drop line; the map is still full.
        let r = mem.report(
            vec![fill(maps::PORTS, 63, 64)],
            &[("snat-ports-exhausted".into(), 5)],
        );
        assert_eq!(
            r.warnings[0].to_string(),
            "map DP_PORTS is 98% full (63/64); new entries will be refused; raise `[maps] \
             published_ports`"
        );
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(r.drops[0].since_last, 0);
        assert_eq!(r.drops[1].reason, "conntrack-insert-failed");
        // Counters made anew (a cleanup): counted from zero again.
        let r = mem.report(Vec::new(), &[("snat-ports-exhausted".into(), 2)]);
        assert_eq!(r.drops[0].since_last, 2);
    }

    #[test]
    fn the_rate_limit_lets_one_line_through_per_period() {
        let start = std::time::Instant::now();
        let minute = std::time::Duration::from_secs(60);
        let mut rl = RateLimit::new(minute);
        assert!(rl.allow("DP_CT_TCP", start));
        assert!(!rl.allow("DP_CT_TCP", start + minute / 2));
        assert!(rl.allow("DP_PORTS", start + minute / 2));
        assert!(rl.allow("DP_CT_TCP", start + minute));
    }

    #[test]
    fn every_group_names_pinned_maps_once() {
        let all: Vec<&str> = GROUPS.iter().flat_map(|g| g.maps.iter().copied()).collect();
        for m in &all {
            assert!(super::super::ebpf::PINNED_MAPS.contains(m), "{m}");
            assert_eq!(all.iter().filter(|x| *x == m).count(), 1, "{m}");
        }
        let mut s = MapSizes::default();
        for g in GROUPS {
            *s.slot(g.key) = Some(7);
            assert_eq!(s.of_map(g.maps[0]), Some(7), "{}", g.key);
        }
        assert_eq!(
            s,
            MapSizes {
                conntrack_tcp: Some(7),
                conntrack_other: Some(7),
                conntrack6_tcp: Some(7),
                conntrack6_other: Some(7),
                published_ports: Some(7),
                filter_keys: Some(7),
                sock_revnat: Some(7),
            }
        );
    }

    #[test]
    fn unset_sizes_come_from_the_base() {
        let s = MapSizes {
            conntrack_tcp: Some(1000),
            ..MapSizes::default()
        }
        .or(MapSizes::defaults());
        assert_eq!(s.conntrack_tcp, Some(1000));
        assert_eq!(s.conntrack_other, Some(maps::CT_OTHER_MAX));
        assert_eq!(s.of_map(maps::DROP_STATS), None);
    }

    #[test]
    fn percent_and_pressure() {
        let f = MapFill {
            map: "m".into(),
            entries: 59,
            max_entries: 64,
            usable: 64,
        };
        assert!(f.near_full());
        // A big LRU table evicts from its size less 128 entries a CPU.
        assert_eq!(MapFill::usable_of(262_144, true, 4), 262_144 - 512);
        assert_eq!(MapFill::usable_of(64, true, 4), 32);
        assert_eq!(MapFill::usable_of(64, false, 4), 64);
        assert_eq!(f.percent(), 92);
        assert!((f.pressure() - 0.921875).abs() < 1e-9);
        let empty = MapFill {
            max_entries: 0,
            ..f
        };
        assert_eq!((empty.percent(), empty.pressure()), (0, 0.0));
    }
}
