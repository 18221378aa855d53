//! The host's own sockets: whether an IPv4 port is held (a trial bind, as
//! Docker's allocator binds, so a port is not published over a host
//! service, moby#50669), which socket and process hold it (procfs, read
//! only then: every read of /proc/net/tcp walks the kernel's whole
//! connection hash, milliseconds on a big one), and the kernel's ephemeral
//! port range (what Docker's port allocator picks published ports from).

use std::{
    fs,
    net::Ipv4Addr,
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
    /// None: every address (0.0.0.0, or `::` without IPV6_V6ONLY, which
    /// procfs cannot tell apart: taken as every address, as a bind would).
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
    /// The socket's inode, to find its process.
    pub inode: u64,
}

/// Whether a socket of the calling thread's network namespace holds `port`
/// for TCP (`tcp`) or UDP on `ip` (None: every address), by binding it for
/// a moment: EADDRINUSE is held. TCP binds with SO_REUSEADDR, so what is
/// only in TIME_WAIT does not count; a listener or a connection using the
/// port does. An address that is not the host's cannot be held by it.
pub fn port_taken(tcp: bool, ip: Option<Ipv4Addr>, port: u16) -> std::io::Result<bool> {
    let kind = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if tcp {
        let one: libc::c_int = 1;
        // SAFETY: a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                std::ptr::addr_of!(one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a sockaddr_in of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
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

/// Listening TCP and bound UDP sockets of the calling process's network
/// namespace that hold an IPv4 port (IPv6 sockets count when bound to
/// `::` or a v4-mapped address). A missing table (no IPv6) is no socket.
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
    let ip = if v6 { v6_as_v4(addr)? } else { hex_v4(addr) };
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

/// An IPv6 socket's address as the IPv4 one it holds: `::` is every
/// address, `::ffff:a.b.c.d` is a.b.c.d; any other holds no IPv4 port
/// (outer None).
fn v6_as_v4(addr: &str) -> Option<Option<Ipv4Addr>> {
    if addr.len() != 32 {
        return None;
    }
    let words: Vec<&str> = (0..4).map(|i| &addr[i * 8..i * 8 + 8]).collect();
    if words.iter().all(|w| *w == "00000000") {
        return Some(None);
    }
    let mapped = words[0] == "00000000"
        && words[1] == "00000000"
        && u32::from_str_radix(words[2], 16).ok()?.to_ne_bytes() == [0, 0, 0xff, 0xff];
    mapped.then(|| hex_v4(words[3])).flatten().map(Some)
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
        let lo = Ipv4Addr::LOCALHOST;
        let tcp = TcpListener::bind((lo, 0)).expect("listen");
        let port = tcp.local_addr().expect("addr").port();
        assert!(port_taken(true, Some(lo), port).expect("trial"));
        assert!(
            port_taken(true, None, port).expect("trial"),
            "0.0.0.0 overlaps"
        );
        drop(tcp);
        assert!(!port_taken(true, Some(lo), port).expect("trial"));
        let udp = UdpSocket::bind((lo, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        assert!(port_taken(false, Some(lo), port).expect("trial"));
        assert!(
            !port_taken(true, Some(lo), port).expect("trial"),
            "TCP is not UDP"
        );
    }

    #[test]
    fn proc_net_lines_parse() {
        let l = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let h = parse_line(l, true, false).unwrap();
        assert_eq!(h.ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((h.port, h.inode, h.tcp), (8080, 12345, true));
        let established = l.replace(" 0A ", " 01 ");
        assert_eq!(parse_line(&established, true, false), None);
        let any6 = "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1";
        assert_eq!(parse_line(any6, true, true).unwrap().ip, None);
        let lo6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1";
        assert_eq!(parse_line(lo6, true, true), None, "::1 holds no IPv4 port");
    }

    #[test]
    fn port_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
    }
}
