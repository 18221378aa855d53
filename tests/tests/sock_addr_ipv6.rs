//! Published ports for host-local IPv6 clients: the cgroup sock_addr
//! programs (`dp_connect6`, `dp_sendmsg6`, `dp_recvmsg6`,
//! `dp_getpeername6`) attached to a test cgroup, clients run in it inside a
//! fake host, the server in a container on a bridge with IPv6. Published
//! ports are written straight into the pinned maps.
//!
//! Checked: TCP to `::1` and to the host's IPv6 address reaches the
//! container while the client sees the address it asked for (curl's remote
//! address, getpeername); UDP sendto/recvfrom answers from the published
//! address; an address of another host is not translated.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    time::Duration,
};

use dataplane_common::net::{IPPROTO_TCP, IPPROTO_UDP};
use dataplane_tests::{
    cgroup::TestCgroup,
    cmd, datapath,
    family::add6,
    topo::{Container, FakeHost},
    traffic::{http_server, udp_echo_server},
    BpffsDir,
};
use dataplane_user::datapath::{ebpf::Dataplane, host_local};

const T: Duration = Duration::from_secs(20);
const BODY: &str = "hello over IPv6";
const HOST6: &str = "2001:db8:1::1";
const C1: &str = "fd00:91::2";

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

/// Fields drop in order: pins (detaching the programs), cgroup, namespaces.
struct Setup {
    pins: BpffsDir,
    cgroup: TestCgroup,
    container: Container,
    fh: FakeHost,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let fh = FakeHost::new(true).expect("fake host");
        let bridge = fh.add_bridge("br", "10.91.0.1/24").expect("bridge");
        let container = fh
            .add_container(
                &bridge,
                "c1",
                "10.91.0.2/24",
                Ipv4Addr::new(10, 91, 0, 1),
                true,
            )
            .expect("container");
        add6(&fh.host, &bridge, "fd00:91::1/64");
        add6(&container.ns, "eth0", &format!("{C1}/64"));
        container
            .ns
            .exec(&["ip", "-6", "route", "add", "default", "via", "fd00:91::1"])
            .expect("container route");
        add6(&fh.host, &fh.uplink, &format!("{HOST6}/64"));
        let pins = BpffsDir::new(tag).expect("bpffs dir");
        let cgroup = TestCgroup::new();
        let root = pins.pins().clone();
        let cg = cgroup.path.clone();
        let links = fh
            .host
            .run_in(move || {
                let mut dp = Dataplane::load(&root).expect("load");
                host_local::attach(&mut dp, &root, &cg).expect("attach")
            })
            .expect("netns");
        assert_eq!(links.len(), host_local::PROGRAMS.len(), "{links:?}");
        let ifindex = fh
            .host
            .ip_json(&["link", "show", &fh.uplink])
            .expect("ip link")[0]["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .expect("ifindex");
        datapath::host_addr6(pins.pins(), ip(HOST6), ifindex).expect("host addr");
        Setup {
            pins,
            cgroup,
            container,
            fh,
        }
    }

    fn publish(&self, port: u16, proto: u8, target_port: u16) {
        let target = SocketAddrV6::new(ip(C1), target_port, 0, 0);
        datapath::publish6(
            self.pins.pins(),
            Ipv6Addr::UNSPECIFIED,
            port,
            proto,
            target,
            0,
        )
        .expect("publish");
    }

    /// Runs argv in the fake host's namespace from a process in the test
    /// cgroup (see `sock_addr.rs`).
    fn in_cgroup(&self, argv: &[&str]) -> cmd::Output {
        let cg = self.cgroup.path.to_string_lossy();
        let ns = self.fh.host.path().to_string_lossy();
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 97; ns=$2; shift 2; exec nsenter --net="$ns" -- "$@""#;
        let mut full = vec!["sh", "-c", script, "sh", &cg, &ns];
        full.extend_from_slice(argv);
        let out = cmd::output(&full, T).expect("client in cgroup");
        assert_ne!(out.status.code(), Some(97), "cannot join {cg}");
        out
    }
}

const PY_GETPEERNAME: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)
p = s.getpeername()
print(p[0], p[1])
"#;

const PY_UDP: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"v6 udp", (sys.argv[1], int(sys.argv[2])))
data, addr = s.recvfrom(100)
print(data.decode(), addr[0], addr[1])
"#;

#[test]
fn tcp_and_udp_to_the_hosts_ipv6_addresses_reach_the_container() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("sock6");
    s.publish(8080, IPPROTO_TCP, 80);
    s.publish(5353, IPPROTO_UDP, 53);
    let web = SocketAddr::from((ip(C1), 80));
    let server = http_server(&s.container.ns, web, BODY).expect("http server");
    let _dns = udp_echo_server(&s.container.ns, SocketAddr::from((ip(C1), 53))).expect("udp");

    for dst in ["::1", HOST6] {
        let url = format!("http://[{dst}]:8080/");
        let out = s.in_cgroup(&[
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{remote_ip} %{remote_port}",
            &url,
        ]);
        assert!(out.success(), "curl {url}: {}", out.stderr);
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some(BODY), "{url}");
        assert_eq!(
            lines.next(),
            Some(format!("{dst} 8080").as_str()),
            "curl's remote for {url}"
        );

        let out = s.in_cgroup(&["python3", "-c", PY_GETPEERNAME, dst, "8080"]);
        assert!(out.success(), "getpeername {dst}: {}", out.stderr);
        assert_eq!(out.stdout.trim(), format!("{dst} 8080"), "getpeername");

        let out = s.in_cgroup(&["python3", "-c", PY_UDP, dst, "5353"]);
        assert!(out.success(), "udp {dst}: {}", out.stderr);
        assert_eq!(
            out.stdout.trim(),
            format!("v6 udp {dst} 5353"),
            "the reply comes from the published address"
        );
    }
    assert_eq!(server.peers().len(), 4, "two curls, two python clients");

    // Another host's address is not the host's: not translated.
    let out = s.in_cgroup(&["curl", "-s", "-m", "3", "http://[2001:db8:1::2]:8080/"]);
    assert!(!out.success(), "nothing of ours answers for another host");
}
