//! Host-local clients with an explicitly bound port (issue 12, item 6): a
//! client binds port L and connects straight to a container, then binds L
//! again (SO_REUSEADDR) and connects to the container's published port.
//! `dp_connect4` cannot translate the second connect (both sockets would
//! have the same tuple: `EADDRNOTAVAIL`), so it leaves it to `dp_local_out`
//! on `lo`, which translates it per packet with a source port of its own,
//! as Docker's OUTPUT DNAT and masquerade do. Both connections must carry
//! data both ways, through the host's address and through 127.0.0.1. A
//! client bound to 127.0.0.1 (which no route takes to a container) is
//! translated per packet too.
//!
//! The fake host is set up with the CLI (`connect -p`, `local attach` to a
//! cgroup of the test's own); the client is a python3 process placed in
//! that cgroup and in the fake host's namespace.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use dataplane_tests::{
    cgroup::TestCgroup,
    cli::{self, Cli},
    cmd,
    netns::NetNs,
    topo::FakeHost,
    traffic::tcp_echo_server,
};
use dataplane_user::datapath::host_local;

const T: Duration = Duration::from_secs(20);
/// The container, on the default bridge network, and that network's gateway.
const C1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
/// The client's bound port.
const L: u16 = 41234;

/// Fields drop in order: the cgroup (its links go with the pins), the
/// container, the fake host with the CLI's pins.
struct Setup {
    cgroup: TestCgroup,
    c: NetNs,
    cli: Cli,
    fh: FakeHost,
}

/// A fake host with its uplink, one container publishing 8080 -> 80, and
/// an echo server in the container. `attach` attaches the host-local
/// hooks to the test cgroup (through `cli`, or an agent).
fn setup(tag: &str) -> Setup {
    let (fh, cli) = Cli::uplinked(tag, None).expect("fake host with its uplink");
    let c = NetNs::new("c").expect("netns");
    cli.run(&["connect", "bridge", c.name(), "-p", "8080:80"])
        .expect("connect -p");
    Setup {
        cgroup: TestCgroup::new(),
        c,
        cli,
        fh,
    }
}

/// The client: binds L, connects to `direct`, binds L again and connects
/// to `published`, then echoes a message on each (the direct one twice,
/// after the other opened). Prints one line per exchange: what was sent,
/// what came back, the socket's peer.
const CLIENT: &str = r#"
import socket, sys
L = int(sys.argv[1])
direct = (sys.argv[2], int(sys.argv[3]))
published = (sys.argv[4], int(sys.argv[5]))
def conn(dst):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    s.bind(("0.0.0.0", L))
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
    peer = "%s:%d" % s.getpeername()
    print(m.decode(), got.decode(), peer)
"#;

/// A client bound to 127.0.0.1:L connecting to 127.0.0.1:`argv[2]`:
/// prints what it sent, what came back, its peer.
const LOOPBACK_CLIENT: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(5)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.connect(("127.0.0.1", int(sys.argv[2])))
s.sendall(b"bound-to-loopback")
got = b""
while len(got) < 17:
    chunk = s.recv(100)
    if not chunk:
        break
    got += chunk
print("bound-to-loopback", got.decode(), "%s:%d" % s.getpeername())
"#;

impl Setup {
    fn attach_with_cli(&self) {
        let cg = self.cgroup.path.to_string_lossy();
        self.cli
            .run(&["local", "attach", &cg])
            .expect("local attach");
    }

    /// Runs the client in the test cgroup and the fake host's namespace.
    fn client(&self, published: SocketAddr) -> cmd::Output {
        let (l, c1, pub_ip, pub_port) = (
            L.to_string(),
            C1.to_string(),
            published.ip().to_string(),
            published.port().to_string(),
        );
        self.python(&[CLIENT, &l, &c1, "80", &pub_ip, &pub_port])
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
        let server = tcp_echo_server(&self.c, SocketAddr::from((C1, 80))).expect("echo server");
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
                format!("direct direct {C1}:80"),
                format!("published published {published}"),
                format!("direct-again direct-again {C1}:80"),
            ],
            "{}",
            out.stderr
        );
        let peers = server.peers();
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert_eq!(
            peers[0],
            SocketAddr::from((GATEWAY, L)),
            "direct: {peers:?}"
        );
        assert_eq!(peers[1].ip(), GATEWAY, "published, masqueraded: {peers:?}");
        assert_ne!(peers[1].port(), L, "published: its own port {peers:?}");
    }
}

#[test]
fn bound_port_reaches_a_container_directly_and_through_the_host_address() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("lbhost");
    s.attach_with_cli();
    s.check(SocketAddr::from((s.fh.host_ip, 8080)));
}

#[test]
fn bound_port_reaches_a_container_directly_and_through_loopback() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("lblo");
    s.attach_with_cli();
    s.check(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)));
}

/// A client bound to 127.0.0.1 cannot be sent to the container at the
/// socket (no route takes a loopback source out of the host): its
/// connection is translated per packet, and keeps its port (the tuple is
/// free).
#[test]
fn a_client_bound_to_loopback_reaches_the_published_port() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("lbbound");
    s.attach_with_cli();
    let server = tcp_echo_server(&s.c, SocketAddr::from((C1, 80))).expect("echo server");
    let out = s.python(&[LOOPBACK_CLIENT, &L.to_string(), "8080"]);
    assert!(
        out.success(),
        "client failed ({}): {}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stdout.trim(),
        "bound-to-loopback bound-to-loopback 127.0.0.1:8080",
        "{}",
        out.stderr
    );
    assert_eq!(server.peers(), [SocketAddr::from((GATEWAY, L))]);
}

/// `local attach` through a running agent attaches the same way (the agent
/// runs in the host's namespace, where `lo` gets its program), and
/// `local detach` takes `dp_local_out` off `lo` with the last cgroup.
#[test]
fn local_attach_through_the_agent() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("lbagent");
    let (agent, _log) = s.cli.start_agent(&s.fh.uplink).expect("agent");
    s.attach_with_cli();
    s.check(SocketAddr::from((s.fh.host_ip, 8080)));
    // The tcx link's pin (bpftool before 7.3 does not list tcx links).
    let suffix = format!("_lo_{}_egress", host_local::LOCAL_PROGRAM);
    let lo_links = || {
        fs::read_dir(s.cli.pins.pins().links_dir())
            .expect("links dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            })
            .count()
    };
    assert_eq!(lo_links(), 1, "dp_local_out on lo");
    let cg = s.cgroup.path.to_string_lossy();
    s.cli.run(&["local", "detach", &cg]).expect("local detach");
    assert_eq!(lo_links(), 0, "dp_local_out off lo");
    cli::stop_agent(agent, libc::SIGTERM).expect("stop agent");
}
