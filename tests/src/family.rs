//! One NAT test, both IP families: the address plans, packet builders,
//! tools and CLI flags that differ between IPv4 and IPv6, behind
//! [`Family`], so a case is written once and run twice
//! ([`crate::family_tests`] makes a `#[test]` per family).
//!
//! Two plans: the fake host's here (netns tests through the CLI: the
//! uplink, the client, container networks) and BPF_PROG_TEST_RUN's in
//! `family_run` ([`Plan`], frames through [`Pkt`], read back with
//! [`parse`]), re-exported here.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};

pub use crate::family_run::{parse, parsed, sock, Pkt, Plan, Seen, TEST_RUN_IFINDEX};
use crate::{cli::Cli, netns::NetNs, topo::FakeHost, traffic};

/// `#[test]`s for each family from functions taking a [`Family`]: one
/// `v4::NAME` and one `v6::NAME` per listed NAME. `#[v4 ATTR]` or
/// `#[v6 ATTR]` before a name puts ATTR (e.g. `ignore = "bug: ..."`) on
/// that family's test only.
#[macro_export]
macro_rules! family_tests {
    ($( $(#[v4 $($a4:tt)*])* $(#[v6 $($a6:tt)*])* $name:ident ),* $(,)?) => {
        mod v4 {
            $( #[test] $(#[$($a4)*])* fn $name() { super::$name($crate::family::Family::V4) } )*
        }
        mod v6 {
            $( #[test] $(#[$($a6)*])* fn $name() { super::$name($crate::family::Family::V6) } )*
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The host's IPv6 address on the uplink, and the client's.
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// `-4` or `-6`, for `ip` and `ping`.
    pub fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    pub fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::LOCALHOST.into(),
            Family::V6 => Ipv6Addr::LOCALHOST.into(),
        }
    }

    /// An address as `nat ls` and `conntrack ls` write it with a port.
    pub fn with_port(self, ip: IpAddr, port: u16) -> String {
        SocketAddr::from((ip, port)).to_string()
    }

    // --- The fake host (netns tests) ---

    /// The host's address on the uplink.
    pub fn host_ip(self, fh: &FakeHost) -> IpAddr {
        match self {
            Family::V4 => fh.host_ip.into(),
            Family::V6 => HOST6.into(),
        }
    }

    /// The external client's address.
    pub fn client_ip(self, fh: &FakeHost) -> IpAddr {
        match self {
            Family::V4 => fh.client_ip.into(),
            Family::V6 => CLIENT6.into(),
        }
    }

    /// A fake host whose uplink the dataplane manages (`config`: the CLI's
    /// config file), with container network 0 ([`Family::network`]) ready:
    /// IPv4's default `bridge`; for IPv6 the uplink's IPv6 addresses
    /// ([`HOST6`], [`CLIENT6`]) and a dual-stack network `n6`.
    pub fn setup(self, tag: &str, config: Option<&str>) -> (FakeHost, Cli) {
        let (fh, cli) = Cli::uplinked(tag, config).expect("fake host with its uplink");
        if self == Family::V6 {
            add6(&fh.host, &fh.uplink, &format!("{HOST6}/64"));
            add6(&fh.client, &fh.client_dev, &format!("{CLIENT6}/64"));
            self.create_network(&cli, 0, &[]);
        }
        (fh, cli)
    }

    /// The name of container network `i` (0: the one [`Family::setup`]
    /// made ready; others by [`Family::create_network`]).
    pub fn network(self, i: u8) -> String {
        match (self, i) {
            (Family::V4, 0) => "bridge".into(),
            (Family::V6, 0) => "n6".into(),
            (_, i) => format!("net{i}"),
        }
    }

    /// `network create` of network `i` on its subnet of the plan, with
    /// `extra` options; returns its name.
    pub fn create_network(self, cli: &Cli, i: u8, extra: &[&str]) -> String {
        let name = self.network(i);
        let subnet = self.subnet(i);
        let mut args = vec!["network", "create"];
        let v4;
        if self == Family::V6 {
            v4 = format!("10.{}.0.0/24", 82 + i);
            args.extend(["--ipv6", "--subnet", &v4]);
        }
        args.extend(["--subnet", &subnet]);
        args.extend_from_slice(extra);
        args.push(&name);
        cli.run(&args)
            .unwrap_or_else(|e| panic!("network create {name}: {e:#}"));
        name
    }

    /// Network `i`'s subnet: 172.(17+i).0.0/16 or fd00:(82+i)::/64.
    pub fn subnet(self, i: u8) -> String {
        match self {
            Family::V4 => format!("172.{}.0.0/16", 17 + i),
            Family::V6 => format!("fd00:{}::/64", 82 + u16::from(i)),
        }
    }

    /// Address `host` of network `i` (1: its gateway; containers from 2 in
    /// the order they connect).
    pub fn addr(self, i: u8, host: u8) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(172, 17 + i, 0, host).into(),
            Family::V6 => {
                Ipv6Addr::new(0xfd00, 0x82 + u16::from(i), 0, 0, 0, 0, 0, u16::from(host)).into()
            }
        }
    }

    /// `connect` of `ns` to network `i` with `extra` flags.
    pub fn connect(self, cli: &Cli, i: u8, ns: &NetNs, extra: &[&str]) {
        let net = self.network(i);
        let mut args = vec!["connect", net.as_str(), ns.name()];
        args.extend_from_slice(extra);
        cli.run(&args)
            .unwrap_or_else(|e| panic!("connect {} to {net}: {e:#}", ns.name()));
    }

    /// `--ip ADDR` or `--ip6 ADDR` for `connect`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "--ip",
            Family::V6 => "--ip6",
        }
    }

    /// Routes `cidr` from the client through the host's uplink address.
    pub fn client_route(self, fh: &FakeHost, cidr: &str) {
        let via = self.host_ip(fh).to_string();
        fh.client
            .exec(&["ip", self.flag(), "route", "add", cidr, "via", &via])
            .unwrap_or_else(|e| panic!("client route {cidr}: {e:#}"));
    }

    /// `ping` / `ping -6` of `dst` `count` times from `ns`: true when every
    /// reply came back within `timeout` (see [`traffic::ping`]).
    pub fn ping(self, ns: &NetNs, dst: IpAddr, count: u32, timeout: Duration) -> Result<bool> {
        match (self, dst) {
            (Family::V4, IpAddr::V4(a)) => traffic::ping(ns, a, count, timeout),
            (Family::V6, IpAddr::V6(_)) => {
                let secs = timeout.as_secs_f64().ceil().max(1.0).to_string();
                let count_s = count.max(1).to_string();
                let dst_s = dst.to_string();
                let argv = [
                    "ping", "-6", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", &secs, "-w",
                    &secs, &dst_s,
                ];
                let out = ns.exec_output(&argv, timeout + Duration::from_secs(5))?;
                let received = traffic::parse_ping_received(&out.stdout).ok_or_else(|| {
                    anyhow!(
                        "ping -6 {dst} from {ns} gave no statistics: {} {}",
                        out.stdout.trim(),
                        out.stderr.trim()
                    )
                })?;
                Ok(out.success() && received >= count.max(1))
            }
            _ => Err(anyhow!("{dst} is not an {} address", self.name())),
        }
    }

    /// Sends a hand-built frame's IP packet from `ns` through a raw socket
    /// (header included), routed by its destination.
    pub fn send_raw(self, ns: &NetNs, frame: &[u8]) -> Result<()> {
        match self {
            Family::V4 => traffic::send_raw_ipv4(ns, frame),
            Family::V6 => send_raw_ipv6(ns, frame),
        }
    }

    /// A blocking TCP connection from `ns`'s local port `local_port`
    /// (SO_REUSEADDR) to `dst`, bounded by `timeout`.
    pub fn connect_from_port(
        self,
        ns: &NetNs,
        local_port: u16,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream> {
        ns.run_in(|| bound_connect(local_port, dst, timeout))?
            .with_context(|| format!("tcp connect from {ns} port {local_port} to {dst}"))
    }
}

/// Adds `addr` (without DAD) to `dev` in `ns`, IPv6 on the device first
/// (the harness's namespaces start with it off).
///
/// DAD is off for the device's link-local address too: the kernel sends
/// no neighbour solicitation while that address is tentative, so the
/// first packets to a new neighbour in the first second or so would
/// wait a whole retransmit interval (1 s) and miss the tests' windows.
pub fn add6(ns: &NetNs, dev: &str, cidr: &str) {
    ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")
        .expect("no DAD on the device");
    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")
        .expect("IPv6 on the device");
    ns.exec(&["ip", "-6", "addr", "add", cidr, "dev", dev, "nodad"])
        .unwrap_or_else(|e| panic!("ip -6 addr add {cidr} dev {dev}: {e:#}"));
}

/// [`Family::connect_from_port`] in the caller's namespace, for either
/// family (std cannot bind before connecting).
pub fn bound_connect(local_port: u16, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    if dst.is_ipv4() {
        return traffic::bound_connect(local_port, dst, timeout);
    }
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V6(dst) = dst else {
        return Err(io::Error::other("unreachable: not IPv4"));
    };
    let sockaddr = |ip: Ipv6Addr, port: u16| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: 0,
    };
    let len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: socket syscalls on a descriptor that becomes the TcpStream's
    // at once (closed by it, also on an error return).
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        check(fd)?;
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        let local = sockaddr(Ipv6Addr::UNSPECIFIED, local_port);
        check(libc::bind(fd, (&raw const local).cast(), len))?;
        stream.set_write_timeout(Some(timeout))?;
        let remote = sockaddr(*dst.ip(), dst.port());
        check(libc::connect(fd, (&raw const remote).cast(), len))?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(stream)
    }
}

/// The IPv6 twin of [`traffic::send_raw_ipv4`]: an `IPPROTO_RAW` socket
/// sends the header as built.
fn send_raw_ipv6(ns: &NetNs, frame: &[u8]) -> Result<()> {
    let ip = frame.get(14..).context("frame shorter than Ethernet")?;
    let dst: [u8; 16] = ip
        .get(24..40)
        .context("packet shorter than IPv6")?
        .try_into()?;
    ns.run_in(|| -> io::Result<()> {
        // SAFETY: plain socket syscalls on a descriptor owned here; the
        // address and buffer outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: dst },
                sin6_scope_id: 0,
            };
            let n = libc::sendto(
                fd,
                ip.as_ptr().cast(),
                ip.len(),
                0,
                std::ptr::from_ref(&sin6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            );
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n < 0 {
                return Err(err);
            }
        }
        Ok(())
    })?
    .with_context(|| format!("raw send from {ns} to {}", Ipv6Addr::from(dst)))
}
