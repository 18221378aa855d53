//! The userspace model the programs are checked against: what a packet
//! should become, from the configuration ([`world`]) and the flows the
//! model itself saw start. Deliberately small: published ports (DNAT,
//! client kept), masquerade of a masqueraded subnet leaving the uplink
//! (source becomes the uplink's address, the port kept or taken from the
//! range), self-hairpin from the endpoint, the replies and later packets
//! of those flows, and "untouched" for everything else. Where the model
//! cannot say (fragments, ICMP errors, TCP flows after a FIN or RST), it
//! says so, and only the checksum and drop invariants apply.

use std::{collections::HashMap, net::IpAddr};

use dataplane_common::nat::{NatConfig, SUBNET_INTERNAL, SUBNET_MASQUERADE, SUBNET_ROUTED};

use super::{
    frame::{View, TCP, UDP},
    rng::Rng,
    world::{self, Published, Subnet},
};

/// The programs under test, by the hook they sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prog {
    Stats,
    UplinkIn,
    UplinkOut,
    FromContainer,
    LocalOut,
    LocalOut6,
    UplinkIn6,
    UplinkOut6,
    FromContainer6,
}

impl Prog {
    pub const ALL: [Prog; 9] = [
        Prog::Stats,
        Prog::UplinkIn,
        Prog::UplinkOut,
        Prog::FromContainer,
        Prog::LocalOut,
        Prog::LocalOut6,
        Prog::UplinkIn6,
        Prog::UplinkOut6,
        Prog::FromContainer6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Prog::Stats => "dp_stats",
            Prog::UplinkIn => "dp_uplink_in",
            Prog::UplinkOut => "dp_uplink_out",
            Prog::FromContainer => "dp_from_container",
            Prog::LocalOut => "dp_local_out",
            Prog::LocalOut6 => "dp_local_out6",
            Prog::UplinkIn6 => "dp_uplink_in6",
            Prog::UplinkOut6 => "dp_uplink_out6",
            Prog::FromContainer6 => "dp_from_container6",
        }
    }

    pub fn from_name(name: &str) -> Option<Prog> {
        Prog::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The family the program translates (None: it translates nothing;
    /// `lo`'s programs translate only packets of a socket `dp_connect4`/
    /// `dp_connect6` marked, and a test run's packet has no socket).
    pub fn v6(self) -> Option<bool> {
        match self {
            Prog::Stats | Prog::LocalOut | Prog::LocalOut6 => None,
            Prog::UplinkIn | Prog::UplinkOut | Prog::FromContainer => Some(false),
            _ => Some(true),
        }
    }

    pub fn dir(self) -> Dir {
        match self {
            Prog::UplinkIn | Prog::UplinkIn6 => Dir::In,
            Prog::UplinkOut | Prog::UplinkOut6 => Dir::Out,
            _ => Dir::Container,
        }
    }
}

/// Where a packet is seen: the uplink's two directions (one conntrack
/// zone) or an endpoint's veth (the endpoint zone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    In,
    Out,
    Container,
}

impl Dir {
    /// The conntrack zone: the uplink's two directions share one, so a
    /// tuple is one flow whichever way it goes.
    pub fn zone(self) -> Dir {
        match self {
            Dir::Out => Dir::In,
            d => d,
        }
    }
}

/// A flow tuple as a hook's zone sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub dir: Dir,
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Key {
    pub fn of(dir: Dir, v: &View) -> Key {
        Key {
            dir: dir.zone(),
            proto: v.proto,
            src: v.src,
            sport: v.sport,
            dst: v.dst,
            dport: v.dport,
        }
    }
}

/// What a tracked tuple becomes.
#[derive(Clone, Copy, Debug)]
struct Flow {
    src: Option<(IpAddr, u16)>,
    dst: Option<(IpAddr, u16)>,
    /// A FIN or RST went by: the programs may end or restart the flow.
    closing: bool,
}

/// A new source port: exactly this one, or kept or from the masquerade
/// range (a free tuple keeps its port), or moved into the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRule {
    Exact(u16),
    KeptOrRange,
    Moved,
}

/// What the model predicts for one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Passed byte-identical (or dropped; or forwarded by the fast path
    /// with only its MACs and TTL changed).
    Untouched,
    /// These sides rewritten, nothing else (or dropped).
    Rewrite {
        src: Option<(IpAddr, PortRule)>,
        dst: Option<(IpAddr, u16)>,
        /// A new flow: the model records it once the rewrite is seen.
        new_flow: bool,
    },
    /// The model does not say; checksums and drops are still checked.
    Unknown,
}

pub struct Model {
    flows: HashMap<Key, Flow>,
    /// Endpoints (address, port) of UDP flows a dropped packet may have
    /// left behind (`short_udp6`): the model no longer predicts their
    /// packets.
    tainted: std::collections::HashSet<(u8, IpAddr, u16)>,
    keys: Vec<Key>,
    published: Vec<Published>,
    subnets: Vec<Subnet>,
    hosts: Vec<IpAddr>,
    range: (u16, u16),
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            flows: HashMap::new(),
            tainted: std::collections::HashSet::new(),
            keys: Vec::new(),
            published: world::published(),
            subnets: world::subnets(),
            hosts: world::host_addrs(),
            range: (
                NatConfig::DEFAULT.snat_port_min,
                NatConfig::DEFAULT.snat_port_max,
            ),
        }
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// A tuple the model tracks, seen from `dir` (for the generator's
    /// replies and later packets).
    pub fn sample(&self, rng: &mut Rng, dir: Dir, v6: bool) -> Option<Key> {
        let n = self.keys.len();
        if n == 0 {
            return None;
        }
        let start = rng.below(n);
        (0..n.min(64))
            .map(|i| self.keys[(start + i) % n])
            .find(|k| k.dir == dir.zone() && k.src.is_ipv6() == v6)
    }

    fn subnet(&self, a: IpAddr) -> Option<&Subnet> {
        self.subnets
            .iter()
            .filter(|s| s.contains(a))
            .max_by_key(|s| s.prefix)
    }

    fn published_to(&self, v: &View) -> Option<Published> {
        if v.proto != TCP && v.proto != UDP {
            return None;
        }
        let hit = |host: IpAddr| {
            self.published
                .iter()
                .find(|p| p.host == host && p.port == v.dport && p.proto == v.proto)
                .copied()
        };
        hit(v.dst).or_else(|| {
            let any = if v.v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            self.hosts.contains(&v.dst).then(|| hit(any)).flatten()
        })
    }

    /// The prediction for `v` arriving at `prog`.
    pub fn predict(&self, prog: Prog, v: &View) -> Expect {
        if prog.v6() != Some(v.v6) || v.ext_unknown {
            return Expect::Untouched;
        }
        if prog.dir() == Dir::Container && v.src != world::endpoint(v.v6).0 {
            // Spoofed: dropped (or, for IPv6 link-local sources, passed).
            return Expect::Untouched;
        }
        if prog.dir() == Dir::In && self.martian(v) {
            return Expect::Untouched;
        }
        // Later fragments follow their first fragment's flow; ICMP errors
        // are translated by the flow they quote; other ICMP messages than
        // echo have no ports, so their tuple is that of an echo with
        // identifier 0 and the programs translate them as its flow: the model
        // leaves all three to the checksum and drop invariants.
        // Echo with identifier 0 has that same tuple.
        let portless = v.icmp_type.is_some() && (!v.is_echo() || v.sport == v.dport);
        if v.later_fragment || v.is_icmp_error() || portless {
            return Expect::Unknown;
        }
        if self.is_tainted(v) {
            return Expect::Unknown;
        }
        if let Some(f) = self.flows.get(&Key::of(prog.dir(), v)) {
            if f.closing {
                return Expect::Unknown;
            }
            return Expect::Rewrite {
                src: f.src.map(|(a, p)| (a, PortRule::Exact(p))),
                dst: f.dst,
                new_flow: false,
            };
        }
        match prog.dir() {
            Dir::In => self.new_in(v),
            Dir::Out => self.new_out(v),
            Dir::Container => self.new_from_container(v),
        }
    }

    /// What cannot come from outside (the uplink's martian checks).
    fn martian(&self, v: &View) -> bool {
        v.src.is_loopback()
            || v.dst.is_loopback()
            || self.hosts.contains(&v.src)
            || self.subnet(v.src).is_some()
    }

    fn new_in(&self, v: &View) -> Expect {
        match self.published_to(v) {
            Some(p) => Expect::Rewrite {
                src: None,
                dst: Some((p.target, p.target_port)),
                new_flow: true,
            },
            _ => Expect::Untouched,
        }
    }

    fn new_out(&self, v: &View) -> Expect {
        let translatable = v.proto == TCP || v.proto == UDP || v.is_echo_request();
        match self.subnet(v.src) {
            Some(s) if s.flags & SUBNET_INTERNAL == 0 && s.flags & SUBNET_MASQUERADE != 0 => {
                if !translatable {
                    return Expect::Untouched;
                }
                Expect::Rewrite {
                    src: Some((world::uplink_addr(v.v6), PortRule::KeptOrRange)),
                    dst: None,
                    new_flow: true,
                }
            }
            Some(_) => Expect::Untouched,
            None => {
                // The host's own flow whose replies would be a translated
                // flow's: it gets a port of its own.
                let opens = match v.proto {
                    TCP => v.tcp_flags & 0x17 == 0x02,
                    UDP => true,
                    _ => false,
                };
                let reply = Key {
                    dir: Dir::In.zone(),
                    proto: v.proto,
                    src: v.dst,
                    sport: v.dport,
                    dst: v.src,
                    dport: v.sport,
                };
                if opens && !v.later_fragment && self.flows.contains_key(&reply) {
                    return Expect::Rewrite {
                        src: Some((v.src, PortRule::Moved)),
                        dst: None,
                        new_flow: true,
                    };
                }
                Expect::Untouched
            }
        }
    }

    fn new_from_container(&self, v: &View) -> Expect {
        let (addr, gateway) = world::endpoint(v.v6);
        if v.src != addr {
            return Expect::Untouched;
        }
        // Only a segment that opens a connection starts a hairpin flow
        // (`nat::hairpin_target`): the container's answers to a host-local
        // client on a published source port are no new flows.
        if v.proto == TCP && v.tcp_flags & 0x17 != 0x02 {
            return Expect::Untouched;
        }
        match self.published_to(v) {
            Some(p) if p.target == addr => Expect::Rewrite {
                src: Some((gateway, PortRule::KeptOrRange)),
                dst: Some((p.target, p.target_port)),
                new_flow: true,
            },
            Some(p) => Expect::Rewrite {
                src: None,
                dst: Some((p.target, p.target_port)),
                new_flow: true,
            },
            None => Expect::Untouched,
        }
    }

    fn is_tainted(&self, v: &View) -> bool {
        self.tainted.contains(&(v.proto, v.src, v.sport))
            || self.tainted.contains(&(v.proto, v.dst, v.dport))
    }

    /// Gives up on the flows of `before`'s and `after`'s endpoints.
    fn taint(&mut self, before: &View, after: &View) {
        for (a, p) in [
            (before.src, before.sport),
            (before.dst, before.dport),
            (after.src, after.sport),
            (after.dst, after.dport),
        ] {
            self.tainted.insert((before.proto, a, p));
        }
    }

    /// Whether the program tracks `v` untranslated (a pass entry pair, so
    /// that its replies are not taken for new flows): a UDP flow leaving a
    /// routed network, or ICMP and bare ACKs routed in to one.
    fn tracks_untranslated(&self, prog: Prog, v: &View) -> bool {
        let routed = |a: IpAddr| {
            self.subnet(a).is_some_and(|s| {
                s.flags & SUBNET_ROUTED != 0 && s.flags & (SUBNET_MASQUERADE | SUBNET_INTERNAL) == 0
            })
        };
        match prog.dir() {
            Dir::Out => routed(v.src) && v.proto == UDP && !v.later_fragment,
            Dir::In => {
                routed(v.dst)
                    && (v.icmp_type.is_some_and(|_| !v.is_icmp_error())
                        || (v.proto == TCP && v.tcp_flags & 0x17 == 0x10))
            }
            Dir::Container => false,
        }
    }

    /// Whether `port` satisfies `rule` for a packet that had `old`.
    pub fn port_ok(&self, rule: PortRule, old: u16, port: u16) -> bool {
        let in_range = (self.range.0..=self.range.1).contains(&port);
        match rule {
            PortRule::Exact(p) => port == p,
            PortRule::KeptOrRange => port == old || in_range,
            PortRule::Moved => port != old && in_range,
        }
    }

    /// Records what a passed packet tells: a new flow's translation (both
    /// directions), or a flow closing.
    pub fn observe(&mut self, prog: Prog, before: &View, after: &View, expect: &Expect) {
        if prog.v6() != Some(before.v6) {
            return;
        }
        if (before.proto == UDP || before.proto == TCP) && self.is_tainted(before) {
            // A packet of a flow the model lost track of may start others
            // (a masquerade of its tuple, a host flow moved off it, a
            // reopened TCP tuple): their endpoints are lost too.
            self.taint(before, after);
            return;
        }
        let key = Key::of(prog.dir(), before);
        if before.proto == TCP && before.tcp_flags & 0x05 != 0 && self.flows.contains_key(&key) {
            // A FIN or RST of a tracked flow (of no flow, it starts none):
            // the flow may close, half-close or (after a
            // close both ways) reopen on a SYN as a new flow with new
            // ports; the model does not follow TCP states, so it stops
            // predicting these endpoints.
            self.taint(before, after);
            return;
        }
        if *expect == Expect::Untouched && self.tracks_untranslated(prog, before) {
            if let Some(reply) = self.reverse_key(prog, before, after) {
                self.pass(key, reply);
            }
            return;
        }
        let Expect::Rewrite { new_flow: true, .. } = expect else {
            return;
        };
        let Some(reply) = self.reverse_key(prog, before, after) else {
            return;
        };
        let changed_src = (after.src, after.sport) != (before.src, before.sport);
        let changed_dst = (after.dst, after.dport) != (before.dst, before.dport);
        let closing = before.proto == TCP && before.tcp_flags & 0x05 != 0;
        let orig = Flow {
            src: changed_src.then_some((after.src, after.sport)),
            dst: changed_dst.then_some((after.dst, after.dport)),
            closing,
        };
        let back = Flow {
            src: changed_dst.then_some((before.dst, before.dport)),
            dst: changed_src.then_some((before.src, before.sport)),
            closing,
        };
        for (k, f) in [(key, orig), (reply, back)] {
            if self.flows.insert(k, f).is_none() {
                self.keys.push(k);
            }
        }
    }

    /// An untranslated flow's entry pair, as the programs write it
    /// (`conntrack::pass`): only when no entry holds the reply tuple (a
    /// translated flow's is never overwritten); then both entries.
    fn pass(&mut self, key: Key, reply: Key) {
        if self.flows.contains_key(&reply) {
            return;
        }
        let pass = Flow {
            src: None,
            dst: None,
            closing: false,
        };
        for k in [reply, key] {
            if self.flows.insert(k, pass).is_none() {
                self.keys.push(k);
            }
        }
    }

    /// The tuple of the replies to `before` (translated into `after`), as
    /// the hook that sees them keys them.
    fn reverse_key(&self, prog: Prog, before: &View, after: &View) -> Option<Key> {
        let dir = match prog.dir() {
            Dir::In => Dir::Out,
            Dir::Out => Dir::In,
            Dir::Container => Dir::Container,
        };
        // Echo: the reply carries the identifier as its "destination port".
        let (sport, dport) = if before.is_echo_request() {
            (0, after.sport)
        } else if before.icmp_type.is_some() {
            // An echo reply's replies are requests; other types: no ports.
            (after.dport, 0)
        } else {
            (after.dport, after.sport)
        };
        Some(Key {
            dir: dir.zone(),
            proto: before.proto,
            src: after.dst,
            sport,
            dst: after.src,
            dport,
        })
    }
}
