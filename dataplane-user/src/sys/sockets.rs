//! The host's own sockets: whether a port is held, on IPv4 or IPv6 (a trial bind, as
//! Docker's allocator binds, so a port is not published over a host
//! service, moby#50669), which ports any socket is bound to (sock_diag for
//! TCP, procfs for UDP, read once for a request of many ports: only those
//! need the trial bind), which
//! socket and process hold it (procfs, read only then: every read of
//! /proc/net/tcp walks the kernel's whole connection hash, milliseconds on a
//! big one), and the kernel's ephemeral port range (what Docker's port
//! allocator picks published ports from).

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// TCP state `LISTEN` in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";

/// One host socket holding a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldPort {
    /// false: UDP.
    pub tcp: bool,
    /// None: every address (0.0.0.0, or `::`, with or without
    /// IPV6_V6ONLY, which procfs cannot tell apart: taken as every
    /// address, as a bind would).
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// The socket's inode, to find its process.
    pub inode: u64,
}

/// Whether a socket of the calling thread's network namespace holds `port`
/// for TCP (`tcp`) or UDP on `ip` (None: every address of both families),
/// by binding it for a moment: EADDRINUSE is held. TCP binds with
/// SO_REUSEADDR, so what is only in TIME_WAIT does not count; a listener
/// or a connection using the port does. An address that is not the host's
/// cannot be held by it. IPv6 binds are IPV6_V6ONLY, so they ask about the
/// IPv6 side alone; a host without IPv6 holds no IPv6 port.
pub fn port_taken(tcp: bool, ip: Option<IpAddr>, port: u16) -> std::io::Result<bool> {
    match ip {
        Some(IpAddr::V4(v4)) => trial_bind(tcp, IpAddr::V4(v4), port),
        Some(IpAddr::V6(v6)) => trial_bind(tcp, IpAddr::V6(v6), port),
        None => Ok(trial_bind(tcp, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)?
            || trial_bind(tcp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)?),
    }
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a c_int option value of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn trial_bind(tcp: bool, ip: IpAddr, port: u16) -> std::io::Result<bool> {
    let kind = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let family = match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if family == libc::AF_INET6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            return Ok(false);
        }
        return Err(e);
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if tcp {
        set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    }
    // SAFETY (both binds): a sockaddr of the size given.
    let r = match ip {
        IpAddr::V4(v4) => {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::addr_of!(addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(v6) => {
            set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
            let addr = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: port.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::addr_of!(addr).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if r == 0 {
        return Ok(false);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => Ok(true),
        Some(libc::EADDRNOTAVAIL) => Ok(false),
        _ => Err(e),
    }
}

/// Every (TCP?, port) a socket of the calling thread's network namespace
/// has as its local port, in any state (listening, connected, TIME_WAIT,
/// bound UDP; bound-only TCP too on kernels whose sock_diag lists it,
/// 6.9 on), both families. A port not in it cannot fail a trial bind with
/// EADDRINUSE (on an older kernel, or through procfs, a TCP socket bound
/// without listening or connecting is missing: it receives nothing, so
/// publishing over it takes no host service's packets). A port in it still
/// gets the trial bind, which decides.
pub fn bound_ports() -> std::io::Result<HashSet<(bool, u16)>> {
    let mut out = HashSet::new();
    // TCP through sock_diag when it answers: one walk of the connection
    // hash for both families (procfs walks it once per file, ~20 ms each
    // with the 262 144 buckets of a 24 GB host, sockets or not).
    let tcp_files: &[(&str, bool)] = match tcp_diag_ports() {
        Ok(ports) => {
            out.extend(ports.into_iter().map(|p| (true, p)));
            &[]
        }
        Err(_) => &[("tcp", true), ("tcp6", true)],
    };
    for &(file, tcp) in tcp_files.iter().chain(&[("udp", false), ("udp6", false)]) {
        // thread-self: the namespace a trial bind of this thread binds in.
        let text = match fs::read_to_string(Path::new("/proc/thread-self/net").join(file)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.extend(text.lines().skip(1).filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let (_, port) = local.rsplit_once(':')?;
            Some((tcp, u16::from_str_radix(port, 16).ok()?))
        }));
    }
    Ok(out)
}

/// `TCPDIAG_GETSOCK`: inet_diag's first request form, which (unlike
/// `SOCK_DIAG_BY_FAMILY`) dumps both families in one walk.
const TCPDIAG_GETSOCK: u16 = 18;
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// Every TCP state, `TCP_BOUND_INACTIVE` (bit 13: bound, neither listening
/// nor connected; listed from 6.9 on) included.
const ALL_STATES: u32 = u32::MAX;

/// A netlink header and `struct inet_diag_req` (the `TCPDIAG_GETSOCK`
/// request).
#[repr(C)]
struct DiagRequest {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    src_len: u8,
    dst_len: u8,
    ext: u8,
    /// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
    id: [u32; 12],
    states: u32,
    dbs: u32,
}
const _: () = assert!(size_of::<DiagRequest>() == 16 + 60);

/// The local port of every TCP socket of the calling thread's network
/// namespace, both families, any state, from one sock_diag dump.
fn tcp_diag_ports() -> std::io::Result<Vec<u16>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = DiagRequest {
        len: size_of::<DiagRequest>() as u32,
        kind: TCPDIAG_GETSOCK,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_INET as u8,
        src_len: 0,
        dst_len: 0,
        ext: 0,
        id: [0; 12],
        states: ALL_STATES,
        dbs: 0,
    };
    // SAFETY: a zeroed sockaddr_nl is the kernel's address once its family
    // is set.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the kernel reads `len` bytes of a repr(C) value and a
    // sockaddr of the size given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::addr_of!(req).cast(),
            size_of::<DiagRequest>(),
            0,
            std::ptr::addr_of!(to).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ports = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // A dump ends with NLMSG_DONE; bounded anyway (each datagram holds
    // dozens of sockets, so this allows millions).
    for _ in 0..1_000_000 {
        // SAFETY: recv(2) into a buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut msg = &buf[..n as usize];
        while msg.len() >= 16 {
            let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
            let kind = libc::c_int::from(u16::from_ne_bytes([msg[4], msg[5]]));
            if len < 16 || len > msg.len() {
                return Err(std::io::Error::other("sock_diag: a truncated message"));
            }
            match kind {
                libc::NLMSG_DONE => return Ok(ports),
                libc::NLMSG_ERROR => {
                    let errno = msg
                        .get(16..20)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                // `struct inet_diag_msg`: family, state, timer, retrans,
                // then the socket id, its source port first (network order).
                _ => {
                    if let Some(p) = msg.get(20..22) {
                        ports.push(u16::from_be_bytes([p[0], p[1]]));
                    }
                }
            }
            msg = &msg[len.next_multiple_of(4).min(msg.len())..];
        }
    }
    Err(std::io::Error::other("sock_diag: the dump did not end"))
}

/// Listening TCP and bound UDP sockets of the calling process's network
/// namespace, both families (an IPv6 socket on a v4-mapped address holds
/// that IPv4 address). A missing table (no IPv6) is no socket.
pub fn held_ports() -> std::io::Result<Vec<HeldPort>> {
    let mut out = Vec::new();
    for (file, tcp, v6) in [
        ("tcp", true, false),
        ("tcp6", true, true),
        ("udp", false, false),
        ("udp6", false, true),
    ] {
        let text = match fs::read_to_string(Path::new("/proc/self/net").join(file)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.extend(
            text.lines()
                .skip(1)
                .filter_map(|line| parse_line(line, tcp, v6)),
        );
    }
    Ok(out)
}

/// One line of /proc/net/{tcp,udp}[6]: `sl local rem st ... uid timeout inode`.
fn parse_line(line: &str, tcp: bool, v6: bool) -> Option<HeldPort> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
    if tcp && *state != TCP_LISTEN {
        return None;
    }
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        hex_v6(addr).map(|a| a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4))
    } else {
        hex_v4(addr).map(IpAddr::V4)
    };
    Some(HeldPort {
        tcp,
        ip: ip.filter(|ip| !ip.is_unspecified()),
        port,
        inode: inode.parse().ok()?,
    })
}

/// procfs prints an address as 32-bit words in host byte order.
fn hex_v4(word: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(word, 16)
        .ok()
        .map(|w| Ipv4Addr::from(w.to_ne_bytes()))
}

/// An IPv6 address as procfs prints it: four 32-bit words, each in host
/// byte order.
fn hex_v6(addr: &str) -> Option<Ipv6Addr> {
    if addr.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for i in 0..4 {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some(Ipv6Addr::from(octets))
}

/// `name (pid N)` of a process holding the socket with this inode, found
/// through /proc/PID/fd; None when none can be read.
pub fn socket_owner(inode: u64) -> Option<String> {
    let target = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()));
        if holds {
            let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", name.trim()));
        }
    }
    None
}

/// Docker's fallback when the kernel's range cannot be read.
pub const FALLBACK_EPHEMERAL_PORTS: RangeInclusive<u16> = 49153..=65535;

/// The kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768
/// to 60999 unless set), where Docker's allocator picks published ports;
/// [`FALLBACK_EPHEMERAL_PORTS`] when unreadable, as Docker does.
pub fn ephemeral_ports() -> RangeInclusive<u16> {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_port_range(&t))
        .unwrap_or(FALLBACK_EPHEMERAL_PORTS)
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (a, b) = (it.next()?.ok()?, it.next()?.ok()?);
    (a >= 1 && a <= b).then_some(a..=b)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use super::*;

    #[test]
    fn a_trial_bind_finds_a_listener_and_a_bound_udp_socket() {
        let lo4 = Ipv4Addr::LOCALHOST;
        let lo = IpAddr::V4(lo4);
        let tcp = TcpListener::bind((lo4, 0)).expect("listen");
        let port = tcp.local_addr().expect("addr").port();
        assert!(port_taken(true, Some(lo), port).expect("trial"));
        assert!(
            port_taken(true, None, port).expect("trial"),
            "0.0.0.0 overlaps"
        );
        drop(tcp);
        assert!(!port_taken(true, Some(lo), port).expect("trial"));
        let udp = UdpSocket::bind((lo4, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        assert!(port_taken(false, Some(lo), port).expect("trial"));
        assert!(
            !port_taken(true, Some(lo), port).expect("trial"),
            "TCP is not UDP"
        );
    }

    #[test]
    fn a_trial_bind_finds_an_ipv6_only_listener() {
        let lo = Ipv6Addr::LOCALHOST;
        let Ok(tcp) = TcpListener::bind((lo, 0)) else {
            // No IPv6 on this host: nothing can hold an IPv6 port.
            assert!(!port_taken(true, Some(IpAddr::V6(lo)), 1).expect("trial"));
            return;
        };
        let port = tcp.local_addr().expect("addr").port();
        assert!(port_taken(true, Some(IpAddr::V6(lo)), port).expect("trial"));
        assert!(
            port_taken(true, None, port).expect("trial"),
            "every address"
        );
        assert!(
            !port_taken(true, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), port).expect("trial"),
            "::1 holds no IPv4 port"
        );
        let udp = UdpSocket::bind((lo, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        assert!(port_taken(false, Some(IpAddr::V6(lo)), port).expect("trial"));
    }

    #[test]
    fn bound_ports_lists_listeners_connections_and_udp() {
        let lo4 = Ipv4Addr::LOCALHOST;
        let tcp = TcpListener::bind((lo4, 0)).expect("listen");
        let port = tcp.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect((lo4, port)).expect("connect");
        let cport = client.local_addr().expect("addr").port();
        let udp = UdpSocket::bind((lo4, 0)).expect("bind");
        let uport = udp.local_addr().expect("addr").port();
        let bound = bound_ports().expect("sock_diag and procfs");
        let diag = tcp_diag_ports().expect("sock_diag");
        assert!(diag.contains(&port) && diag.contains(&cport), "{diag:?}");
        assert!(bound.contains(&(true, port)), "the listener");
        assert!(bound.contains(&(true, cport)), "a connection's own port");
        assert!(bound.contains(&(false, uport)), "a bound UDP socket");
        // Every port a trial bind finds held is in it.
        for p in [port, cport] {
            assert!(port_taken(true, None, p).expect("trial"));
        }
        assert!(port_taken(false, None, uport).expect("trial"));
    }

    #[test]
    fn proc_net_lines_parse() {
        let l = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let h = parse_line(l, true, false).unwrap();
        assert_eq!((h.port, h.inode, h.tcp), (8080, 12345, true));
        let established = l.replace(" 0A ", " 01 ");
        assert_eq!(parse_line(&established, true, false), None);
        assert_eq!(h.ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let any6 = "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1";
        assert_eq!(parse_line(any6, true, true).unwrap().ip, None);
        let lo6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1";
        assert_eq!(
            parse_line(lo6, true, true).unwrap().ip,
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        let mapped = "   0: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1";
        assert_eq!(
            parse_line(mapped, true, true).unwrap().ip,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
    }
}
