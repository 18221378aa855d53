//! `dataplane monitor`: streaming the datapath's drops, like `cilium monitor
//! --type drop`.
//!
//! Every packet that goes through the eBPF drop funnel (`drop_packet`) also
//! writes a [`DropEvent`] (reason, interface, length and the first 64 bytes of
//! the frame) into the pinned `DP_EVENTS` ring buffer, best effort: when the
//! buffer is full the event is lost and counted in `DP_EVENTS_LOST` (see
//! [`lost`]). [`stream`] reads the ring buffer with tokio's [`AsyncFd`] and
//! hands each event, [`decode`]d, to a callback.
//!
//! A ring buffer has one consumer position: two monitors running at once
//! share the events between them instead of each seeing all of them.

use std::{fmt, future::Future, net::Ipv4Addr, pin::pin};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use dataplane_common::{
    drop::DropReason,
    event::{DropEvent, HEADERS_LEN},
    maps,
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    stats::PktCounter,
};
use serde::Serialize;
use tokio::io::{unix::AsyncFd, Interest};

use super::{
    bpffs::PinRoot,
    maps::{self as typed, MapsError},
    stats::Counter,
};

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Map(#[from] MapsError),
    #[error("waiting for events from the ring buffer {map}")]
    Poll {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the ring buffer {map} holds a record of {len} bytes, expected {expected}")]
    Record {
        map: &'static str,
        len: usize,
        expected: usize,
    },
}

/// A drop event in readable form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decoded {
    /// The [`DropReason`] name (`unknown-N` for a value this build does not
    /// know).
    pub reason: String,
    pub ifindex: u32,
    /// Length of the whole packet.
    pub len: u32,
    /// How many bytes of the frame the event carries.
    pub captured: u32,
    /// `CLOCK_MONOTONIC` nanoseconds at the drop.
    pub ktime_ns: u64,
    /// Ethernet type (after one VLAN tag, if any), when captured.
    pub ethertype: Option<u16>,
    /// IPv4 source and destination (for ARP: sender and target).
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    /// IPv4 protocol number.
    pub protocol: Option<u8>,
    /// TCP/UDP ports.
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// TCP flags byte.
    pub tcp_flags: Option<u8>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// ARP operation (1 request, 2 reply).
    pub arp_op: Option<u16>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// Decodes an event's reason and the headers it carries, as far as they were
/// captured and make sense (a bad IHL gives addresses but no ports; a
/// non-first fragment has no L4 header).
pub fn decode(ev: &DropEvent) -> Decoded {
    let reason = match DropReason::from_u32(ev.reason) {
        Some(r) => r.name().to_owned(),
        None => format!("unknown-{}", ev.reason),
    };
    let mut d = Decoded {
        reason,
        ifindex: ev.ifindex,
        len: ev.len,
        captured: ev.captured.min(HEADERS_LEN as u32),
        ktime_ns: ev.ktime_ns,
        ethertype: None,
        src: None,
        dst: None,
        protocol: None,
        sport: None,
        dport: None,
        tcp_flags: None,
        icmp_type: None,
        icmp_code: None,
        arp_op: None,
    };
    let f = ev.frame();
    let mut l3 = ETH_LEN;
    let mut ethertype = be16(f, 12);
    if ethertype == Some(ETHERTYPE_VLAN) {
        ethertype = be16(f, 16);
        l3 += 4;
    }
    d.ethertype = ethertype;
    match ethertype {
        Some(ETHERTYPE_IPV4) => decode_ipv4(f, l3, &mut d),
        Some(ETHERTYPE_ARP) => {
            d.arp_op = be16(f, l3 + 6);
            d.src = ipv4(f, l3 + 14);
            d.dst = ipv4(f, l3 + 24);
        }
        _ => {}
    }
    d
}

fn decode_ipv4(f: &[u8], l3: usize, d: &mut Decoded) {
    let Some(&vihl) = f.get(l3) else {
        return;
    };
    d.protocol = f.get(l3 + 9).copied();
    d.src = ipv4(f, l3 + 12);
    d.dst = ipv4(f, l3 + 16);
    let ihl = usize::from(vihl & 0x0f) * 4;
    let first_fragment = be16(f, l3 + 6).is_some_and(|v| v & 0x1fff == 0);
    if vihl >> 4 != 4 || ihl < 20 || !first_fragment {
        return;
    }
    let l4 = l3 + ihl;
    match d.protocol {
        Some(IPPROTO_TCP) => {
            d.sport = be16(f, l4);
            d.dport = be16(f, l4 + 2);
            d.tcp_flags = f.get(l4 + 13).copied();
        }
        Some(IPPROTO_UDP) => {
            d.sport = be16(f, l4);
            d.dport = be16(f, l4 + 2);
        }
        Some(IPPROTO_ICMP) => {
            d.icmp_type = f.get(l4).copied();
            d.icmp_code = f.get(l4 + 1).copied();
        }
        _ => {}
    }
}

fn icmp_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0 => "echo-reply",
        3 => "dest-unreachable",
        5 => "redirect",
        8 => "echo-request",
        11 => "time-exceeded",
        12 => "parameter-problem",
        _ => return None,
    })
}

fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, char); 6] = [
        (0x02, 'S'),
        (0x10, '.'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

fn endpoint(addr: Option<Ipv4Addr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".to_owned(),
    }
}

/// `drop (REASON) if N len L: <what the headers say>`.
impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drop ({}) if {} len {}:",
            self.reason, self.ifindex, self.len
        )?;
        match self.ethertype {
            None => write!(f, " (no ethernet header captured)"),
            Some(ETHERTYPE_IPV4) if self.src.is_none() => write!(f, " ipv4 (header not captured)"),
            Some(ETHERTYPE_IPV4) => {
                write!(
                    f,
                    " {} -> {}",
                    endpoint(self.src, self.sport),
                    endpoint(self.dst, self.dport)
                )?;
                match self.protocol {
                    None => Ok(()),
                    Some(IPPROTO_TCP) => {
                        write!(f, " tcp")?;
                        match self.tcp_flags {
                            Some(fl) => write!(f, " [{}]", tcp_flags(fl)),
                            None => Ok(()),
                        }
                    }
                    Some(IPPROTO_UDP) => write!(f, " udp"),
                    Some(IPPROTO_ICMP) => {
                        write!(f, " icmp")?;
                        match (self.icmp_type, self.icmp_code) {
                            (Some(t), code) => {
                                match icmp_name(t) {
                                    Some(name) => write!(f, " {name}")?,
                                    None => write!(f, " type {t}")?,
                                }
                                match code {
                                    Some(c) if c != 0 => write!(f, " code {c}"),
                                    _ => Ok(()),
                                }
                            }
                            (None, _) => Ok(()),
                        }
                    }
                    Some(p) => write!(f, " proto {p}"),
                }
            }
            Some(ETHERTYPE_ARP) => {
                let op = match self.arp_op {
                    Some(1) => "request",
                    Some(2) => "reply",
                    _ => "op ?",
                };
                write!(
                    f,
                    " arp {op} {} -> {}",
                    endpoint(self.src, None),
                    endpoint(self.dst, None)
                )
            }
            Some(ETHERTYPE_IPV6) => write!(f, " ipv6"),
            Some(t) => write!(f, " ethertype {t:#06x}"),
        }
    }
}

/// Reads one ring buffer record as a [`DropEvent`].
fn parse_record(bytes: &[u8]) -> Result<DropEvent, MonitorError> {
    let expected = size_of::<DropEvent>();
    bytes
        .get(..expected)
        .map(bytemuck::pod_read_unaligned::<DropEvent>)
        .ok_or(MonitorError::Record {
            map: maps::EVENTS,
            len: bytes.len(),
            expected,
        })
}

/// Opens the pinned ring buffer.
fn open(pins: &PinRoot) -> Result<RingBuf<MapData>, MonitorError> {
    Ok(typed::open(pins, maps::EVENTS)?)
}

/// Streams drop events until `stop` completes, calling `on_event` for each.
///
/// Events already waiting in the ring buffer when the stream starts (drops
/// from before, possibly long ago) are skipped: the stream shows drops from
/// its start on. The ring buffer is opened and the backlog skipped before the
/// returned future first waits, so a drop made after its first poll is seen.
/// Must run inside a tokio runtime with I/O enabled.
pub async fn stream(
    pins: &PinRoot,
    mut on_event: impl FnMut(Decoded),
    stop: impl Future<Output = ()>,
) -> Result<(), MonitorError> {
    let mut ring = open(pins)?;
    while ring.next().is_some() {}
    let poll_err = |source| MonitorError::Poll {
        map: maps::EVENTS,
        source,
    };
    // SAFETY: the ring buffer owns its map's fd (`MapData` holds it) and the
    // fd of its `AsRawFd` stays that one open fd for as long as the `AsyncFd`
    // owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| poll_err(e.into()))?;
    let mut stop = pin!(stop);
    loop {
        let mut guard = tokio::select! {
            () = &mut stop => return Ok(()),
            ready = fd.readable_mut() => ready.map_err(poll_err)?,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let ev = parse_record(&item)?;
            drop(item);
            on_event(decode(&ev));
        }
        guard.clear_ready();
    }
}

/// Drop events lost so far (the ring buffer was full), summed over CPUs:
/// `packets` counts the events, `bytes` the length of their packets.
pub fn lost(pins: &PinRoot) -> Result<Counter, MonitorError> {
    let name = maps::EVENTS_LOST;
    let array: PerCpuArray<MapData, PktCounter> = typed::open(pins, name)?;
    let sum = typed::sum(&array.get(&0, 0).map_err(typed::map_err(name))?);
    Ok(Counter {
        packets: sum.packets,
        bytes: sum.bytes,
    })
}
