//! BPF_PROG_TEST_RUN for both families: the address plan whose
//! configuration map entries a test writes directly ([`Plan`]), frames of
//! either family built with the knobs they share ([`Pkt`]) and read back
//! ([`parse`], [`Seen`]). Re-exported by [`crate::family`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::anyhow;
use dataplane_common::nat::SUBNET_MASQUERADE;
use dataplane_user::datapath::bpffs::PinRoot;

use crate::{
    datapath,
    family::Family,
    packets::{self, PacketBuilder},
    packets6::{self, Packet6Builder},
};

/// The test-run address plan: the client and the host on the uplink, a
/// masqueraded container subnet with its gateway and two containers.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub fam: Family,
    pub client: IpAddr,
    pub host: IpAddr,
    pub gateway: IpAddr,
    pub c1: IpAddr,
    pub c2: IpAddr,
    /// Somewhere outside.
    pub server: IpAddr,
    /// The uplink programs, ingress and egress.
    pub uplink_in: &'static str,
    pub uplink_out: &'static str,
}

/// tc test runs see the namespace's loopback as the device.
pub const TEST_RUN_IFINDEX: u32 = 1;

impl Family {
    pub fn plan(self) -> Plan {
        match self {
            Family::V4 => Plan {
                fam: self,
                client: Ipv4Addr::new(192, 0, 2, 2).into(),
                host: Ipv4Addr::new(192, 0, 2, 1).into(),
                gateway: Ipv4Addr::new(172, 17, 0, 1).into(),
                c1: Ipv4Addr::new(172, 17, 0, 2).into(),
                c2: Ipv4Addr::new(172, 17, 0, 3).into(),
                server: Ipv4Addr::new(198, 51, 100, 9).into(),
                uplink_in: "dp_uplink_in",
                uplink_out: "dp_uplink_out",
            },
            Family::V6 => Plan {
                fam: self,
                client: v6("2001:db8::2"),
                host: v6("2001:db8::1"),
                gateway: v6("fd00:1::1"),
                c1: v6("fd00:1::2"),
                c2: v6("fd00:1::3"),
                server: v6("2001:db8:9::9"),
                uplink_in: "dp_uplink_in6",
                uplink_out: "dp_uplink_out6",
            },
        }
    }
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().expect("an IPv6 address"))
}

impl Plan {
    /// A container `n` of the subnet (2: c1, 3: c2).
    pub fn container(&self, n: u8) -> IpAddr {
        match self.fam {
            Family::V4 => Ipv4Addr::new(172, 17, 0, n).into(),
            Family::V6 => Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, u16::from(n)).into(),
        }
    }

    /// The subnet, as a network address and prefix length.
    pub fn subnet(&self) -> (IpAddr, u32) {
        match self.fam {
            Family::V4 => (Ipv4Addr::new(172, 17, 0, 0).into(), 16),
            Family::V6 => (v6("fd00:1::"), 64),
        }
    }

    /// `-p HOST:PORT:TARGET/PROTO` written straight into the map.
    pub fn publish(&self, pins: &PinRoot, host: IpAddr, port: u16, proto: u8, target: SocketAddr) {
        let r = match (host, target) {
            (IpAddr::V4(h), SocketAddr::V4(t)) => datapath::publish(pins, h, port, proto, t),
            (IpAddr::V6(h), SocketAddr::V6(t)) => datapath::publish6(pins, h, port, proto, t, 0),
            _ => Err(anyhow!("{host} and {target} are of different families")),
        };
        r.unwrap_or_else(|e| panic!("publish {host}:{port}: {e:#}"));
    }

    /// One of the host's addresses, on interface `ifindex`.
    pub fn host_addr(&self, pins: &PinRoot, addr: IpAddr, ifindex: u32) {
        match addr {
            IpAddr::V4(a) => datapath::host_addr(pins, a, ifindex),
            IpAddr::V6(a) => datapath::host_addr6(pins, a, ifindex),
        }
        .unwrap_or_else(|e| panic!("host address {addr}: {e:#}"));
    }

    /// A managed subnet with its flags and network key.
    pub fn add_subnet(&self, pins: &PinRoot, net: IpAddr, len: u32, flags: u32, id: u32) {
        match net {
            IpAddr::V4(n) => datapath::subnet(pins, n, len, flags, id),
            IpAddr::V6(n) => datapath::subnet6(pins, n, len, flags, id),
        }
        .unwrap_or_else(|e| panic!("subnet {net}/{len}: {e:#}"));
    }

    /// The configuration every NAT test run starts from: `:8080/tcp` ->
    /// c1:80 and `:5353/udp` -> c1:53 on every host address; the host's
    /// address; the uplink masquerading with it; the subnet masqueraded.
    pub fn configure(&self, pins: &PinRoot) {
        let any = self.fam.unspecified();
        self.publish(pins, any, 8080, 6, SocketAddr::new(self.c1, 80));
        self.publish(pins, any, 5353, 17, SocketAddr::new(self.c1, 53));
        self.host_addr(pins, self.host, 2);
        match self.host {
            IpAddr::V4(h) => datapath::uplink(pins, TEST_RUN_IFINDEX, h),
            IpAddr::V6(h) => datapath::uplink6(pins, TEST_RUN_IFINDEX, h),
        }
        .expect("uplink");
        let (net, len) = self.subnet();
        self.add_subnet(pins, net, len, SUBNET_MASQUERADE, 1);
    }
}

/// A frame of either family under construction: the knobs both families
/// share, over [`PacketBuilder`] or [`Packet6Builder`].
#[derive(Clone, Debug)]
pub enum Pkt {
    V4(PacketBuilder),
    V6(Packet6Builder),
}

/// A frame's two addresses, of one family.
enum Pair {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn pair(src: IpAddr, dst: IpAddr) -> Pair {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Pair::V4(s.octets(), d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => Pair::V6(s.octets(), d.octets()),
        _ => panic!("{src} and {dst} are of different families"),
    }
}

impl Pkt {
    /// A TCP SYN.
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Pkt {
        match pair(src, dst) {
            Pair::V4(s, d) => Pkt::V4(PacketBuilder::tcp(s, d, sport, dport)),
            Pair::V6(s, d) => Pkt::V6(Packet6Builder::tcp(s, d, sport, dport)),
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Pkt {
        match pair(src, dst) {
            Pair::V4(s, d) => Pkt::V4(PacketBuilder::udp(s, d, sport, dport)),
            Pair::V6(s, d) => Pkt::V6(Packet6Builder::udp(s, d, sport, dport)),
        }
    }

    /// An echo request (`reply`: an echo reply) with identifier `id`.
    pub fn echo(src: IpAddr, dst: IpAddr, id: u16, reply: bool) -> Pkt {
        match pair(src, dst) {
            Pair::V4(s, d) if reply => Pkt::V4(PacketBuilder::icmp_echo_reply(s, d, id, 1)),
            Pair::V4(s, d) => Pkt::V4(PacketBuilder::icmp_echo(s, d, id, 1)),
            Pair::V6(s, d) => Pkt::V6(Packet6Builder::echo(s, d, id, 1, reply)),
        }
    }

    /// The family's "packet too big" error (IPv4: fragmentation needed)
    /// with MTU 1280, quoting `quoted`.
    pub fn too_big(src: IpAddr, dst: IpAddr, quoted: &[u8]) -> Pkt {
        match pair(src, dst) {
            Pair::V4(s, d) => Pkt::V4(PacketBuilder::frag_needed(s, d, 1280, quoted)),
            Pair::V6(s, d) => Pkt::V6(Packet6Builder::packet_too_big(s, d, 1280, quoted)),
        }
    }

    fn map(
        self,
        v4: impl FnOnce(PacketBuilder) -> PacketBuilder,
        v6: impl FnOnce(Packet6Builder) -> Packet6Builder,
    ) -> Pkt {
        match self {
            Pkt::V4(b) => Pkt::V4(v4(b)),
            Pkt::V6(b) => Pkt::V6(v6(b)),
        }
    }

    #[must_use]
    pub fn tcp_flags(self, flags: u8) -> Pkt {
        self.map(|b| b.tcp_flags(flags), |b| b.tcp_flags(flags))
    }

    #[must_use]
    pub fn seq(self, seq: u32) -> Pkt {
        self.map(|b| b.seq(seq), |b| b.seq(seq))
    }

    #[must_use]
    pub fn tcp_options(self, options: &[u8]) -> Pkt {
        self.map(|b| b.tcp_options(options), |b| b.tcp_options(options))
    }

    #[must_use]
    pub fn payload(self, payload: &[u8]) -> Pkt {
        self.map(|b| b.payload(payload), |b| b.payload(payload))
    }

    /// TTL or hop limit.
    #[must_use]
    pub fn ttl(self, ttl: u8) -> Pkt {
        self.map(|b| b.ttl(ttl), |b| b.hop_limit(ttl))
    }

    #[must_use]
    pub fn bad_l4_checksum(self) -> Pkt {
        self.map(
            PacketBuilder::bad_l4_checksum,
            Packet6Builder::bad_l4_checksum,
        )
    }

    #[must_use]
    pub fn truncate_l4(self, len: usize) -> Pkt {
        self.map(|b| b.truncate_l4(len), |b| b.truncate_l4(len))
    }

    pub fn build(&self) -> Vec<u8> {
        match self {
            Pkt::V4(b) => b.build(),
            Pkt::V6(b) => b.build(),
        }
    }
}

/// What a test reads back from a frame of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports; the echo identifier in both for an echo.
    pub sport: u16,
    pub dport: u16,
    /// The IPv4 header checksum verifies (always true for IPv6).
    pub ip_ok: bool,
    pub l4_ok: bool,
    /// TTL or hop limit.
    pub ttl: u8,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// For an ICMP error: the quoted packet's (src, dst, sport, dport).
    pub quoted: Option<(IpAddr, IpAddr, u16, u16)>,
}

/// Parses an Ethernet frame of either family with a whole upper-layer
/// header.
pub fn parse(frame: &[u8]) -> Option<Seen> {
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let p = packets::parse(frame)?;
            Some(Seen {
                src: Ipv4Addr::from(p.src).into(),
                dst: Ipv4Addr::from(p.dst).into(),
                sport: p.sport,
                dport: p.dport,
                ip_ok: p.ip_ok,
                l4_ok: p.l4_ok,
                ttl: p.ttl,
                eth_dst: p.eth_dst,
                eth_src: p.eth_src,
                quoted: p
                    .quoted
                    .map(|(s, d, a, b)| (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into(), a, b)),
            })
        }
        [0x86, 0xdd] => {
            let p = packets6::parse(frame)?;
            let echo_id = p.sport.max(p.dport);
            let echo = p.proto == packets6::ICMPV6 && p.quoted.is_none();
            let l4 = frame.get(14 + 40..)?;
            let is_echo = echo && matches!(l4.first(), Some(128 | 129));
            let quoted_echo = l4.get(8 + 6) == Some(&packets6::ICMPV6);
            Some(Seen {
                src: Ipv6Addr::from(p.src).into(),
                dst: Ipv6Addr::from(p.dst).into(),
                sport: if is_echo { echo_id } else { p.sport },
                dport: if is_echo { echo_id } else { p.dport },
                ip_ok: true,
                l4_ok: p.l4_ok,
                ttl: p.hop_limit,
                eth_dst: p.eth_dst,
                eth_src: p.eth_src,
                quoted: p.quoted.map(|(s, d, a, b)| {
                    let b = if quoted_echo { a } else { b };
                    (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into(), a, b)
                }),
            })
        }
        _ => None,
    }
}

/// [`parse`], asserting every checksum verifies (after a rewrite).
pub fn parsed(frame: &[u8]) -> Seen {
    let p = parse(frame).expect("an IP frame with a whole upper-layer header");
    assert!(p.ip_ok, "IP checksum after rewrite: {p:?}");
    assert!(p.l4_ok, "L4 checksum after rewrite: {p:?}");
    p
}

/// `addr` for a `SocketAddr` of either family.
pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(a) => SocketAddrV4::new(a, port).into(),
        IpAddr::V6(a) => SocketAddrV6::new(a, port, 0, 0).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_both_families_read_back_as_built() {
        for fam in [Family::V4, Family::V6] {
            let p = fam.plan();
            let tcp = parse(&Pkt::tcp(p.c1, p.client, 40000, 80).ttl(9).build()).unwrap();
            assert_eq!(
                (tcp.src, tcp.dst, tcp.sport, tcp.dport, tcp.ttl),
                (p.c1, p.client, 40000, 80, 9),
                "{fam:?}"
            );
            assert!(tcp.ip_ok && tcp.l4_ok, "{fam:?}: {tcp:?}");
            let bad = Pkt::udp(p.c1, p.client, 5000, 53).bad_l4_checksum().build();
            assert!(!parse(&bad).unwrap().l4_ok, "{fam:?}");
            let echo = parse(&Pkt::echo(p.server, p.host, 77, true).build()).unwrap();
            assert_eq!((echo.sport, echo.dport), (77, 77), "{fam:?}");
            assert!(echo.l4_ok, "{fam:?}");
            let sent = Pkt::tcp(p.host, p.server, 41000, 443).build();
            let err = parse(&Pkt::too_big(p.server, p.host, &sent).build()).unwrap();
            assert!(err.l4_ok, "{fam:?}");
            assert_eq!(err.quoted, Some((p.host, p.server, 41000, 443)), "{fam:?}");
            let cut = Pkt::tcp(p.client, p.host, 1, 2).truncate_l4(10).build();
            let ip_len = if fam == Family::V4 { 20 } else { 40 };
            assert_eq!(cut.len(), 14 + ip_len + 10, "{fam:?}: a cut header");
        }
    }
}
