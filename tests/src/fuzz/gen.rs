//! The packet generator: for a program, a frame from the addresses and
//! ports that matter to it (published ports, masqueraded and internal
//! subnets, the endpoint, tracked tuples the model hands over for replies),
//! then mutated: IP options, VLAN tags, IPv6 extension headers, fragments,
//! ICMP errors quoting other packets, odd TCP flags, bad header fields,
//! truncation at every layer, random bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    frame::{Spec, ETH_LEN, EXT_HEADERS, ICMP, ICMPV6, TCP, UDP},
    model::{Dir, Model, Prog},
    rng::Rng,
    world,
};

const TCP_FLAGS: [u8; 12] = [
    0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x00, 0x03, 0x06, 0x29, 0xff,
];
const PORTS: [u16; 12] = [
    80, 443, 53, 90, 8080, 8443, 5353, 9090, 40000, 40001, 33000, 60999,
];

fn addr_pool(rng: &mut Rng, v6: bool, dir: Dir, src: bool) -> IpAddr {
    if v6 {
        let c = world::clients6();
        let outside = [c[0], c[1], c[2], world::host6()];
        let inside = [
            world::c1_6(),
            world::c2_6(),
            world::internal6(),
            world::gateway6(),
        ];
        let odd = [
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::from(rng.next_u64() as u128),
        ];
        let pool = pools(rng, dir, src, &outside, &inside, &odd);
        return IpAddr::V6(pool);
    }
    let c = world::CLIENTS;
    let outside = [c[0], c[1], c[2], world::HOST];
    let inside = [world::C1, world::C2, world::INTERNAL, world::ROUTED];
    let odd = [
        Ipv4Addr::LOCALHOST,
        world::GATEWAY,
        Ipv4Addr::new(172, 17, rng.u8(), rng.u8()),
        Ipv4Addr::from(rng.u32()),
    ];
    IpAddr::V4(pools(rng, dir, src, &outside, &inside, &odd))
}

/// Mostly the addresses a hook sees on that side, sometimes any other.
fn pools<T: Copy>(rng: &mut Rng, dir: Dir, src: bool, outside: &[T], inside: &[T], odd: &[T]) -> T {
    let from_inside = match dir {
        Dir::In => !src,
        Dir::Out | Dir::Container => src,
    };
    let r = rng.below(100);
    if r < 10 {
        rng.pick(odd)
    } else if (r < 80) == from_inside {
        if dir == Dir::Container && src && rng.chance(70) {
            return inside[0];
        }
        rng.pick(inside)
    } else {
        rng.pick(outside)
    }
}

fn port(rng: &mut Rng) -> u16 {
    if rng.chance(70) {
        rng.pick(&PORTS)
    } else {
        rng.u16()
    }
}

/// The L4 bytes of `proto` with its checksum offset.
fn l4(rng: &mut Rng, proto: u8, v6: bool, sport: u16, dport: u16) -> (Vec<u8>, Option<usize>) {
    let len = rng.pick(&[0, 0, 4, 13, 64]);
    let payload = rng.bytes(len);
    match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            let r = rng.u32();
            h[4..8].copy_from_slice(&rng.pick(&[1u32, 1000, r]).to_be_bytes());
            let r = rng.u32();
            h[8..12].copy_from_slice(&rng.pick(&[0u32, 1, 2000, r]).to_be_bytes());
            let opts = rng.pick(&[0usize, 0, 4, 12]);
            h.extend(std::iter::repeat_n(1u8, opts));
            h[12] = ((h.len() / 4) as u8) << 4;
            h[13] = if rng.chance(90) {
                rng.pick(&TCP_FLAGS)
            } else {
                rng.u8()
            };
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h.extend_from_slice(&payload);
            (h, Some(16))
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&payload);
            (h, Some(6))
        }
        ICMP | ICMPV6 => {
            let (req, rep) = if v6 { (128, 129) } else { (8, 0) };
            let r = rng.u8();
            let t = rng.pick(&[req, req, rep, rep, r]);
            let id = if t == rep { dport } else { sport };
            let mut h = vec![t, 0, 0, 0];
            h.extend_from_slice(&id.to_be_bytes());
            h.extend_from_slice(&rng.u16().to_be_bytes());
            h.extend_from_slice(&payload);
            (h, Some(2))
        }
        _ => (payload, None),
    }
}

fn base(rng: &mut Rng, model: &Model, prog: Prog, v6: bool) -> Spec {
    let dir = prog.dir();
    let icmp = if v6 { ICMPV6 } else { ICMP };
    let tracked = if rng.chance(40) {
        model.sample(rng, dir, v6)
    } else {
        None
    };
    let (src, dst, proto, sport, dport) = match tracked {
        Some(k) => (k.src, k.dst, k.proto, k.sport, k.dport),
        None => {
            let proto = rng.pick(&[TCP, TCP, TCP, UDP, UDP, icmp, icmp, 47]);
            (
                addr_pool(rng, v6, dir, true),
                addr_pool(rng, v6, dir, false),
                proto,
                port(rng),
                port(rng),
            )
        }
    };
    let (l4, csum_at) = l4(rng, proto, v6, sport, dport);
    Spec {
        src,
        dst,
        proto,
        l4,
        csum_at,
        ttl: rng.pick(&[64, 64, 1, 2, 255]),
        ip_options: 0,
        ext: Vec::new(),
        frag: None,
        vlan: None,
    }
}

/// An ICMP error from `spec`'s source quoting a packet of the reverse
/// direction (what an error about a flow looks like) or a random one.
fn icmp_error(rng: &mut Rng, spec: &mut Spec, model: &Model, prog: Prog, v6: bool) {
    let mut inner = base(rng, model, prog, v6);
    if rng.chance(70) {
        std::mem::swap(&mut inner.src, &mut inner.dst);
        let (a, b) = (inner.src, inner.dst);
        inner.src = if rng.chance(50) { spec.dst } else { a };
        inner.dst = if rng.chance(50) { spec.src } else { b };
    }
    let quoted = inner.build();
    let cut = rng.pick(&[8usize, 20, 28, 48, 64, quoted.len()]);
    let q = &quoted[ETH_LEN..quoted.len().min(ETH_LEN + cut)];
    let (t, proto) = if v6 {
        (rng.pick(&[1u8, 2, 3, 4]), ICMPV6)
    } else {
        (rng.pick(&[3u8, 11, 12, 4]), ICMP)
    };
    let mut h = vec![t, rng.pick(&[0, 1, 3, 4]), 0, 0, 0, 0, 0x05, 0xdc];
    h.extend_from_slice(q);
    spec.proto = proto;
    spec.l4 = h;
    spec.csum_at = Some(2);
}

/// One frame for `prog`.
pub fn frame(rng: &mut Rng, model: &Model, prog: Prog) -> Vec<u8> {
    let v6 = match prog.v6() {
        Some(v6) => v6 != rng.chance(5),
        // Mostly the family the program parses.
        None if prog == Prog::LocalOut6 => !rng.chance(20),
        None => rng.chance(30),
    };
    if rng.chance(2) {
        let n = rng.below(100);
        return rng.bytes(n);
    }
    let mut spec = base(rng, model, prog, v6);
    if rng.chance(8) {
        icmp_error(rng, &mut spec, model, prog, v6);
    }
    if !v6 && rng.chance(8) {
        spec.ip_options = 4 * rng.below(11);
    }
    if v6 && rng.chance(15) {
        let n = rng.below(7);
        spec.ext = (0..n).map(|_| rng.pick(&EXT_HEADERS)).collect();
    }
    if rng.chance(6) {
        let later = rng.chance(50);
        let off = if later { 1 + rng.below(400) as u16 } else { 0 };
        spec.frag = Some((off, !later || rng.chance(50)));
        if later {
            spec.l4.truncate(rng.below(spec.l4.len() + 1));
            spec.csum_at = None;
        }
    }
    if rng.chance(3) {
        spec.vlan = Some(rng.u16() & 0x0fff);
    }
    let mut f = spec.build();
    mutate(rng, &mut f, v6);
    f
}

/// Byte-level damage, at most one kind per frame.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>, v6: bool) {
    let ip = ETH_LEN;
    match rng.below(100) {
        0..=5 => {
            // Truncated at a layer boundary or anywhere.
            let cuts = [ip + 1, ip + 19, ip + 20, ip + 39, ip + 40, ip + 44, ip + 60];
            let at = if rng.chance(50) {
                rng.pick(&cuts)
            } else {
                rng.below(f.len() + 1)
            };
            f.truncate(at.min(f.len()));
        }
        6..=7 if !v6 => f[ip] = (f[ip] & 0xf0) | rng.pick(&[0u8, 3, 4, 15]),
        8 => f[ip] = (rng.pick(&[0u8, 5, 6, 4, 15]) << 4) | (f[ip] & 0x0f),
        9..=10 => {
            let i = rng.below(f.len());
            f[i] ^= 1 << rng.below(8);
        }
        11 => {
            // Wrong IP length field.
            let at = if v6 { ip + 4 } else { ip + 2 };
            if at + 2 <= f.len() {
                f[at..at + 2].copy_from_slice(&rng.u16().to_be_bytes());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_frames() {
        let model = Model::new();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..2000)
                .map(|i| frame(&mut rng, &model, Prog::ALL[i % Prog::ALL.len()]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
