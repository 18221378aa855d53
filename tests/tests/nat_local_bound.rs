//! Host-local clients with an explicitly bound port (issue 12, item 6): a
//! client binds port L and connects straight to a container, then binds L
//! again (SO_REUSEADDR) and connects to the container's published port.
//! `dp_connect4`/`dp_connect6` cannot translate the second connect (both
//! sockets would have the same tuple: `EADDRNOTAVAIL`), so they leave it to
//! `dp_local_out`/`dp_local_out6` on `lo`, which translate it per packet
//! with a source port of their own, as Docker's OUTPUT DNAT and masquerade
//! do. Both connections must carry data both ways, through the host's
//! address and through loopback. A client bound to 127.0.0.1 or `::1`
//! (which no route takes to a container) is translated per packet too.
//! Every case runs for IPv4 and IPv6 (`family_tests!`; IPv6 on the
//! dual-stack network `n6`, through `::1` and the host's IPv6 address).
//!
//! The fake host is set up with the CLI (`connect -p`, `local attach` to a
//! cgroup of the test's own); the client is a python3 process placed in
//! that cgroup and in the fake host's namespace.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use dataplane_tests::{
    cgroup::TestCgroup,
    cli::{self, Cli},
    cmd,
    family::Family,
    family_tests,
    netns::NetNs,
    topo::FakeHost,
    traffic::tcp_echo_server,
};
use dataplane_user::datapath::host_local;

const T: Duration = Duration::from_secs(20);
/// The client's bound port.
const L: u16 = 41234;

family_tests!(
    bound_port_reaches_a_container_directly_and_through_the_host_address,
    bound_port_reaches_a_container_directly_and_through_loopback,
    a_client_bound_to_loopback_reaches_the_published_port,
    local_attach_through_the_agent,
);

/// Fields drop in order: the cgroup (its links go with the pins), the
/// container, the fake host with the CLI's pins.
struct Setup {
    f: Family,
    cgroup: TestCgroup,
    c: NetNs,
    cli: Cli,
    fh: FakeHost,
}

/// A fake host with its uplink, one container on the family's network 0
/// publishing 8080 -> 80. For IPv6, `lo` gets its `::1` (the harness's
/// namespaces start with IPv6 off).
fn setup(f: Family, tag: &str) -> Setup {
    let (fh, cli) = f.setup(tag, None);
    if f == Family::V6 {
        fh.host
            .sysctl("net.ipv6.conf.lo.disable_ipv6", "0")
            .expect("IPv6 on lo");
    }
    let c = NetNs::new("c").expect("netns");
    f.connect(&cli, 0, &c, &["-p", "8080:80"]);
    Setup {
        f,
        cgroup: TestCgroup::new(),
        c,
        cli,
        fh,
    }
}

/// The client: binds L on the family's unspecified address (`argv[1]`),
/// connects to `direct`, binds L again and connects to `published`, then
/// echoes a message on each (the direct one twice, after the other
/// opened). Prints one line per exchange: what was sent, what came back,
/// the socket's peer.
const CLIENT: &str = r#"
import socket, sys
any_addr = sys.argv[1]
L = int(sys.argv[2])
direct = (sys.argv[3], int(sys.argv[4]))
published = (sys.argv[5], int(sys.argv[6]))
family = socket.AF_INET6 if ":" in any_addr else socket.AF_INET
def peer(s):
    p = s.getpeername()
    return ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (p[0], p[1])
def conn(dst):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    s.bind((any_addr, L))
    s.connect(dst)
    return s
a = conn(direct)
b = conn(published)
for s, m in ((a, b"direct"), (b, b"published"), (a, b"direct-again")):
    s.sendall(m)
    got = b""
    while len(got) < len(m):
        chunk = s.recv(100)
        if not chunk:
            break
        got += chunk
    print(m.decode(), got.decode(), peer(s))
"#;

/// A client bound to loopback (`argv[1]`) port `argv[2]` connecting to the
/// same loopback address's port `argv[3]`: prints what it sent, what came
/// back, its peer.
const LOOPBACK_CLIENT: &str = r#"
import socket, sys
lo = sys.argv[1]
family = socket.AF_INET6 if ":" in lo else socket.AF_INET
s = socket.socket(family)
s.settimeout(5)
s.bind((lo, int(sys.argv[2])))
s.connect((lo, int(sys.argv[3])))
s.sendall(b"bound-to-loopback")
got = b""
while len(got) < 17:
    chunk = s.recv(100)
    if not chunk:
        break
    got += chunk
p = s.getpeername()
print("bound-to-loopback", got.decode(), ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (p[0], p[1]))
"#;

impl Setup {
    /// The container's address.
    fn c1(&self) -> IpAddr {
        self.f.addr(0, 2)
    }

    /// The container network's gateway: the source of the host's
    /// connections to the container.
    fn gateway(&self) -> IpAddr {
        self.f.addr(0, 1)
    }

    fn attach_with_cli(&self) {
        let cg = self.cgroup.path.to_string_lossy();
        self.cli
            .run(&["local", "attach", &cg])
            .expect("local attach");
    }

    /// Runs the client in the test cgroup and the fake host's namespace.
    fn client(&self, published: SocketAddr) -> cmd::Output {
        let (any, l, c1, pub_ip, pub_port) = (
            self.f.unspecified().to_string(),
            L.to_string(),
            self.c1().to_string(),
            published.ip().to_string(),
            published.port().to_string(),
        );
        self.python(&[CLIENT, &any, &l, &c1, "80", &pub_ip, &pub_port])
    }

    /// `python3 -c ARGS...` in the test cgroup and the fake host's namespace.
    fn python(&self, args: &[&str]) -> cmd::Output {
        let cg = self.cgroup.path.to_string_lossy();
        let ns = self.fh.host.path().to_string_lossy();
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 97; ns=$2; shift 2; exec nsenter --net="$ns" -- "$@""#;
        let mut argv = vec!["sh", "-c", script, "sh", &cg, &ns, "python3", "-c"];
        argv.extend_from_slice(args);
        let out = cmd::output(&argv, T).expect("client");
        assert_ne!(
            out.status.code(),
            Some(97),
            "cannot join {cg}: {}",
            out.stderr
        );
        out
    }

    /// Both connections exchange data, and the application sees the
    /// address it asked for; the server saw the direct one from the
    /// gateway's port L and the other from the gateway's other port.
    fn check(&self, published: SocketAddr) {
        let c1 = SocketAddr::from((self.c1(), 80));
        let gateway = self.gateway();
        let server = tcp_echo_server(&self.c, c1).expect("echo server");
        let out = self.client(published);
        assert!(
            out.success(),
            "client failed ({}): {}\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines,
            [
                format!("direct direct {c1}"),
                format!("published published {published}"),
                format!("direct-again direct-again {c1}"),
            ],
            "{}",
            out.stderr
        );
        let peers = server.peers();
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert_eq!(
            peers[0],
            SocketAddr::from((gateway, L)),
            "direct: {peers:?}"
        );
        assert_eq!(peers[1].ip(), gateway, "published, masqueraded: {peers:?}");
        assert_ne!(peers[1].port(), L, "published: its own port {peers:?}");
    }
}

fn bound_port_reaches_a_container_directly_and_through_the_host_address(f: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(f, "lbhost");
    s.attach_with_cli();
    s.check(SocketAddr::from((f.host_ip(&s.fh), 8080)));
}

fn bound_port_reaches_a_container_directly_and_through_loopback(f: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(f, "lblo");
    s.attach_with_cli();
    s.check(SocketAddr::from((f.loopback(), 8080)));
}

/// A client bound to 127.0.0.1 or `::1` cannot be sent to the container
/// at the socket (no route takes a loopback source out of the host): its
/// connection is translated per packet, and keeps its port (the tuple is
/// free).
fn a_client_bound_to_loopback_reaches_the_published_port(f: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(f, "lbbound");
    s.attach_with_cli();
    let server = tcp_echo_server(&s.c, SocketAddr::from((s.c1(), 80))).expect("echo server");
    let lo = f.loopback().to_string();
    let out = s.python(&[LOOPBACK_CLIENT, &lo, &L.to_string(), "8080"]);
    assert!(
        out.success(),
        "client failed ({}): {}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stdout.trim(),
        format!(
            "bound-to-loopback bound-to-loopback {}",
            SocketAddr::from((f.loopback(), 8080))
        ),
        "{}",
        out.stderr
    );
    assert_eq!(server.peers(), [SocketAddr::from((s.gateway(), L))]);
}

/// `local attach` through a running agent attaches the same way (the agent
/// runs in the host's namespace, where `lo` gets its programs), and
/// `local detach` takes `dp_local_out` and `dp_local_out6` off `lo` with
/// the last cgroup.
fn local_attach_through_the_agent(f: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup(f, "lbagent");
    let (agent, _log) = s.cli.start_agent(&s.fh.uplink).expect("agent");
    s.attach_with_cli();
    s.check(SocketAddr::from((f.host_ip(&s.fh), 8080)));
    // The tcx links' pins (bpftool before 7.3 does not list tcx links).
    let lo_links = |program: &str| {
        let suffix = format!("_lo_{program}_egress");
        fs::read_dir(s.cli.pins.pins().links_dir())
            .expect("links dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            })
            .count()
    };
    for program in host_local::LOCAL_PROGRAMS {
        assert_eq!(lo_links(program), 1, "{program} on lo");
    }
    let cg = s.cgroup.path.to_string_lossy();
    s.cli.run(&["local", "detach", &cg]).expect("local detach");
    for program in host_local::LOCAL_PROGRAMS {
        assert_eq!(lo_links(program), 0, "{program} off lo");
    }
    cli::stop_agent(agent, libc::SIGTERM).expect("stop agent");
}
