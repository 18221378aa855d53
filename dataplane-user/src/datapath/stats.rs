//! The per-protocol statistics program (`dp_stats`): attaching it and reading
//! its pinned counters, summed over CPUs.

use std::path::PathBuf;

use aya::maps::{MapData, PerCpuArray};
use dataplane_common::{
    drop::DropReason,
    maps,
    stats::{PktCounter, ProtoIndex},
};
use serde::Serialize;

use super::{
    bpffs::PinRoot,
    ebpf::{Dataplane, Direction, LoadError},
    maps::{map_err, open, sum, MapsError},
};

/// Name of the program in the object.
pub const PROGRAM: &str = "dp_stats";

/// Attaches `dp_stats` to `ifname` first in the tcx chain, wherever the
/// other programs are: a program after it may end the chain (the fast
/// path's redirects do), and the counters are of everything the interface
/// sees. Returns the link's pin.
pub fn attach(
    dp: &mut Dataplane,
    ifname: &str,
    direction: Direction,
) -> Result<PathBuf, LoadError> {
    dp.attach_tc_with(
        PROGRAM,
        ifname,
        direction,
        aya::programs::LinkOrder::first(),
    )
}

#[derive(Debug, thiserror::Error)]
#[error("reading the counters (is the dataplane loaded? `dataplane stats attach IFACE`)")]
pub struct ReadError(#[from] MapsError);

/// Packet and byte totals for one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of every protocol class and drop reason, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub protocols: Vec<(String, Counter)>,
    pub drops: Vec<(String, Counter)>,
}

impl Snapshot {
    pub fn protocol(&self, idx: ProtoIndex) -> Counter {
        find(&self.protocols, idx.name())
    }

    pub fn drop(&self, reason: DropReason) -> Counter {
        find(&self.drops, reason.name())
    }
}

fn find(rows: &[(String, Counter)], name: &str) -> Counter {
    rows.iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| *c)
        .unwrap_or_default()
}

/// Reads a pinned per-CPU counter array, one summed row per name.
fn read_counters(
    pins: &PinRoot,
    map: &'static str,
    names: impl Iterator<Item = (u32, &'static str)>,
) -> Result<Vec<(String, Counter)>, ReadError> {
    let array: PerCpuArray<MapData, PktCounter> = open(pins, map)?;
    names
        .map(|(index, name)| {
            let sum = sum(&array.get(&index, 0).map_err(map_err(map))?);
            Ok((
                name.to_owned(),
                Counter {
                    packets: sum.packets,
                    bytes: sum.bytes,
                },
            ))
        })
        .collect()
}

/// Reads the pinned counters.
pub fn read(pins: &PinRoot) -> Result<Snapshot, ReadError> {
    Ok(Snapshot {
        protocols: read_counters(
            pins,
            maps::PROTO_STATS,
            ProtoIndex::ALL.iter().map(|i| (*i as u32, i.name())),
        )?,
        drops: read_counters(
            pins,
            maps::DROP_STATS,
            DropReason::ALL.iter().map(|r| (*r as u32, r.name())),
        )?,
    })
}
