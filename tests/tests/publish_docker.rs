//! Publishing as Docker does it today (issue 14), end to end through the
//! CLI in a fake host, modelled on moby's port-mapping tests: a port
//! published without a host port gets a free one of the host's ephemeral
//! range (`-p 80`), a host range with one container port takes its first
//! free port (`-p 8000-8002:80`), and a port a host process listens on
//! is refused naming it, nothing created (moby#50669).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use dataplane_tests::{
    cgroup::TestCgroup,
    cli::Cli,
    cmd,
    netns::{add_addr, NetNs},
    topo::FakeHost,
    traffic::{http_get, http_server, udp_echo_server},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);
const C1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);

struct Setup {
    fh: FakeHost,
    cli: Cli,
}

fn setup(tag: &str) -> Setup {
    let (fh, cli) = Cli::uplinked(tag, None).expect("fake host with its uplink");
    Setup { fh, cli }
}

/// A host process's listener on `port` (every address) in the fake host.
fn host_listener(s: &Setup, port: u16) -> TcpListener {
    s.fh.host
        .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .expect("run_in")
        .unwrap_or_else(|e| panic!("listen on {port} in the host: {e}"))
}

/// The host ports `nat ls` shows as published.
fn published(s: &Setup) -> Vec<String> {
    let nat: Value = s
        .cli
        .json(&["nat", "ls", "--format", "json"])
        .expect("nat ls");
    nat["dnat"]
        .as_array()
        .expect("dnat")
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{}->{}",
                r["host"].as_str()?,
                r["container"].as_str()?
            ))
        })
        .collect()
}

/// A GET from the client to the host's `port` answers `body`.
fn answers(s: &Setup, port: u16, body: &str) {
    let (status, got) = http_get(&s.fh.client, SocketAddr::from((s.fh.host_ip, port)), "/", T)
        .unwrap_or_else(|e| panic!("GET host:{port}: {e:#}"));
    assert_eq!((status, got.as_str()), (200, body), "host port {port}");
}

#[test]
fn a_port_published_without_a_host_port_gets_a_free_ephemeral_one() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("eph");
    // Docker picks from the kernel's ephemeral range; narrowed here, its
    // first port held by a host process.
    s.fh.host
        .sysctl("net.ipv4.ip_local_port_range", "40000 40002")
        .expect("sysctl");
    let _held = host_listener(&s, 40000);
    let c = NetNs::new("web").expect("netns");
    s.cli
        .run(&["connect", "bridge", c.name(), "--name", "web", "-p", "80"])
        .expect("connect -p 80");
    let _http = http_server(&c, SocketAddr::from((C1, 80)), "ephemeral").expect("http");
    assert_eq!(published(&s), ["0.0.0.0:40001->172.17.0.2:80"]);
    answers(&s, 40001, "ephemeral");
    // `publish add` prints the port it chose; distinct from the first.
    let out = s
        .cli
        .run(&["publish", "add", "bridge", "web", "127.0.0.1::80"])
        .expect("publish add");
    assert!(out.contains("127.0.0.1:40002->80/tcp"), "{out}");
    // The range is used up: refused, naming it.
    let e = s
        .cli
        .fail(&["publish", "add", "bridge", "web", "81"])
        .expect("no port left");
    assert!(e.contains("no free host port in 40000-40002"), "{e}");
    // `publish rm -p 80` removes the port it was given.
    s.cli
        .run(&["publish", "rm", "bridge", "web", "127.0.0.1::80"])
        .expect("publish rm");
    assert_eq!(published(&s), ["0.0.0.0:40001->172.17.0.2:80"]);
}

#[test]
fn a_host_range_with_one_container_port_takes_its_first_free_port() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("pick");
    let _held = host_listener(&s, 8000);
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    s.cli
        .run(&[
            "connect",
            "bridge",
            a.name(),
            "--name",
            "a",
            "-p",
            "8000-8002:80",
        ])
        .expect("connect a");
    s.cli
        .run(&[
            "connect",
            "bridge",
            b.name(),
            "--name",
            "b",
            "-p",
            "8000-8002:80",
        ])
        .expect("connect b");
    let b_ip = Ipv4Addr::new(172, 17, 0, 3);
    let _ha = http_server(&a, SocketAddr::from((C1, 80)), "a").expect("http a");
    let _hb = http_server(&b, SocketAddr::from((b_ip, 80)), "b").expect("http b");
    let mut got = published(&s);
    got.sort();
    assert_eq!(
        got,
        ["0.0.0.0:8001->172.17.0.2:80", "0.0.0.0:8002->172.17.0.3:80"]
    );
    answers(&s, 8001, "a");
    answers(&s, 8002, "b");
}

#[test]
fn a_port_a_host_process_listens_on_is_refused_and_nothing_is_created() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("held");
    let held = host_listener(&s, 8080);
    let c = NetNs::new("c").expect("netns");
    let e = s
        .cli
        .fail(&["connect", "bridge", c.name(), "-p", "8080:80"])
        .expect("refused");
    assert!(
        e.contains("--publish 0.0.0.0:8080->80/tcp: 0.0.0.0:8080/tcp is in use on the host by"),
        "{e}"
    );
    assert!(
        e.contains(&format!("(pid {})", std::process::id())),
        "names the process: {e}"
    );
    assert!(published(&s).is_empty());
    assert_eq!(
        c.ip_json(&["link", "show"])
            .expect("links")
            .as_array()
            .map(Vec::len),
        Some(1),
        "no interface made in the container"
    );
    // Once the process is gone the port is free.
    drop(held);
    s.cli
        .run(&["connect", "bridge", c.name(), "-p", "8080:80"])
        .expect("free once the process is gone");
}

/// The same for IPv6 (issue 15): a host process listening on `[::1]`
/// holds `-p [::1]:PORT` and `-p PORT` (every address, both families), not
/// `-p 127.0.0.1:PORT`.
#[test]
fn an_ipv6_port_a_host_process_listens_on_is_refused() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("held6");
    s.cli
        .run(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.98.0.0/24",
            "--subnet",
            "fd00:98::/64",
            "dual",
        ])
        .expect("dual-stack network");
    // The harness turns IPv6 off; `::1` comes back with it on `lo`.
    s.fh.host
        .sysctl("net.ipv6.conf.lo.disable_ipv6", "0")
        .expect("IPv6 on lo");
    let held =
        s.fh.host
            .run_in(|| TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 8090)))
            .expect("run_in")
            .expect("listen on [::1]:8090 in the host");
    let c = NetNs::new("c6").expect("netns");
    for spec in ["[::1]:8090:80", "8090:80"] {
        let e = s
            .cli
            .fail(&["connect", "dual", c.name(), "-p", spec])
            .expect("refused");
        assert!(
            e.contains("[::1]:8090/tcp is in use on the host by")
                && e.contains(&format!("(pid {})", std::process::id())),
            "{spec}: {e}"
        );
    }
    assert!(published(&s).is_empty());
    s.cli
        .run(&["connect", "dual", c.name(), "-p", "127.0.0.1:8090:80"])
        .expect("the IPv4 side of the port is free");
    drop(held);
}

/// Two datagrams sent back to back on one socket to a published UDP port
/// (a resolver's A and AAAA queries) race to create the flow's entries on
/// two CPUs: both get their answer, every time (netfilter drops the loser
/// of that race unless its clash resolution applies).
#[test]
fn back_to_back_datagrams_on_one_socket_all_get_their_replies() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("race");
    let c = NetNs::new("dns").expect("netns");
    s.cli
        .run(&["connect", "bridge", c.name(), "-p", "5353:53/udp"])
        .expect("connect -p 5353:53/udp");
    let _dns = udp_echo_server(&c, SocketAddr::from((C1, 53))).expect("udp echo");
    let server = SocketAddr::from((s.fh.host_ip, 5353));
    const ROUNDS: u32 = 50;
    let answered =
        s.fh.client
            .run_in(|| -> std::io::Result<u32> {
                let mut answered = 0;
                for round in 0..ROUNDS {
                    // A fresh socket each round: a new flow, a new race.
                    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                    sock.send_to(format!("A {round}").as_bytes(), server)?;
                    sock.send_to(format!("AAAA {round}").as_bytes(), server)?;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 64];
                    while got.len() < 2 {
                        match sock.recv_from(&mut buf) {
                            Ok((n, _)) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                            Err(_) => break,
                        }
                    }
                    got.sort();
                    if got == [format!("A {round}"), format!("AAAA {round}")] {
                        answered += 1;
                    }
                }
                Ok(answered)
            })
            .expect("run_in")
            .expect("udp client");
    assert_eq!(answered, ROUNDS, "rounds with both replies");
}

/// A host process that binds a port after it was published does not take
/// it from the container: the datapath translates before the host stack
/// sees the packet, so clients from outside keep reaching the container
/// (the precedence docs/docker-compat.md states; Docker instead holds the
/// port so the bind fails).
#[test]
fn a_port_bound_by_the_host_after_publishing_stays_the_containers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("late");
    let c = NetNs::new("web").expect("netns");
    s.cli
        .run(&["connect", "bridge", c.name(), "-p", "8080:80"])
        .expect("connect -p 8080:80");
    let _http = http_server(&c, SocketAddr::from((C1, 80)), "container").expect("http");
    answers(&s, 8080, "container");
    let _late = http_server(
        &s.fh.host,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
        "host",
    )
    .expect("a host process binds the published port");
    answers(&s, 8080, "container");
}

/// The same host port published on two host addresses to two containers:
/// each address answers from its own container, and the port on every
/// address (`-p 1716:80`) is refused over both.
#[test]
fn one_host_port_on_two_host_addresses_reaches_two_containers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("addrs");
    let a_ip = Ipv4Addr::new(192, 0, 2, 11);
    let b_ip = Ipv4Addr::new(192, 0, 2, 12);
    for ip in [a_ip, b_ip] {
        add_addr(&s.fh.host, &s.fh.uplink, &format!("{ip}/24")).expect("host address");
    }
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    for (ns, name, ip) in [(&a, "a", a_ip), (&b, "b", b_ip)] {
        let spec = format!("{ip}:1716:80");
        s.cli
            .run(&["connect", "bridge", ns.name(), "--name", name, "-p", &spec])
            .unwrap_or_else(|e| panic!("connect {name} -p {spec}: {e:#}"));
    }
    let _a = http_server(&a, SocketAddr::from((C1, 80)), "from a").expect("http a");
    let _b = http_server(&b, SocketAddr::from((C2, 80)), "from b").expect("http b");
    for (ip, body) in [(a_ip, "from a"), (b_ip, "from b")] {
        let (status, got) = http_get(&s.fh.client, SocketAddr::from((ip, 1716)), "/", T)
            .unwrap_or_else(|e| panic!("GET {ip}:1716: {e:#}"));
        assert_eq!((status, got.as_str()), (200, body), "{ip}:1716");
    }
    let c = NetNs::new("c").expect("netns");
    let e = s
        .cli
        .fail(&["connect", "bridge", c.name(), "-p", "1716:80"])
        .expect("every address overlaps both");
    assert!(e.contains("already publishes"), "{e}");
}

/// `argv` run in the cgroup at `cg` and the fake host's namespace (a
/// process of the host that `local attach` covers), bounded by `timeout`.
fn in_cgroup(s: &Setup, cg: &str, argv: &[&str], timeout: Duration) -> cmd::Output {
    let ns = s.fh.host.path().to_string_lossy().into_owned();
    let script = r#"echo $$ > "$1/cgroup.procs" || exit 97; ns=$2; shift 2; exec nsenter --net="$ns" -- "$@""#;
    let mut all = vec!["sh", "-c", script, "sh", cg, &ns];
    all.extend_from_slice(argv);
    cmd::output(&all, timeout).expect("client")
}

/// Reads `http://ADDR:PORT/` for each address given, from the test cgroup
/// in the fake host's namespace: prints `ADDR BODY` per address.
const LOOPBACK_GETS: &str = r#"
import socket, sys
port = int(sys.argv[1])
for addr in sys.argv[2:]:
    s = socket.create_connection((addr, port), timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(addr, data.split(b"\r\n\r\n", 1)[-1].decode().strip())
"#;

/// The same host port on two loopback addresses (`127.0.1.2:1716`,
/// `127.0.1.3:1716`) to two containers, reached from the host itself
/// (`local attach`): each address answers from its own container.
#[test]
fn one_host_port_on_two_loopback_addresses_answers_from_each_container() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("lo2");
    let cgroup = TestCgroup::new();
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    for (ns, name, spec) in [
        (&a, "a", "127.0.1.2:1716:80"),
        (&b, "b", "127.0.1.3:1716:80"),
    ] {
        s.cli
            .run(&["connect", "bridge", ns.name(), "--name", name, "-p", spec])
            .unwrap_or_else(|e| panic!("connect {name} -p {spec}: {e:#}"));
    }
    let _a = http_server(&a, SocketAddr::from((C1, 80)), "from a").expect("http a");
    let _b = http_server(&b, SocketAddr::from((C2, 80)), "from b").expect("http b");
    let cg = cgroup.path.to_string_lossy().into_owned();
    s.cli.run(&["local", "attach", &cg]).expect("local attach");
    let out = in_cgroup(
        &s,
        &cg,
        &[
            "python3",
            "-c",
            LOOPBACK_GETS,
            "1716",
            "127.0.1.2",
            "127.0.1.3",
        ],
        T * 4,
    );
    assert!(out.status.success(), "client: {}", out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["127.0.1.2 from a", "127.0.1.3 from b"],
        "client stderr: {}",
        out.stderr
    );
    s.cli.run(&["local", "detach", &cg]).expect("local detach");
}

/// Reads `http://127.0.0.1:PORT/` from the source port `SPORT`, from the
/// test cgroup in the fake host's namespace: prints the body.
const GET_FROM_PORT: &str = r#"
import socket, sys
port, sport = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", sport))
s.settimeout(5)
s.connect(("127.0.0.1", port))
s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n\r\n", 1)[-1].decode().strip())
"#;

/// A host-local client whose own port is a published port (the kernel can
/// pick one: nothing listens on a published port): the container's answers
/// go to that port on the host's address and are answers, not a new
/// hairpin flow to the other published port.
#[test]
fn a_host_local_client_on_a_published_source_port_gets_its_answers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = setup("sport");
    let cgroup = TestCgroup::new();
    let a = NetNs::new("a").expect("netns");
    s.cli
        .run(&[
            "connect",
            "bridge",
            a.name(),
            "-p",
            "8080:80",
            "-p",
            "8081:81",
        ])
        .expect("connect");
    let _a = http_server(&a, SocketAddr::from((C1, 80)), "from a").expect("http a");
    let cg = cgroup.path.to_string_lossy().into_owned();
    s.cli.run(&["local", "attach", &cg]).expect("local attach");
    for sport in ["8081", "40123"] {
        let out = in_cgroup(
            &s,
            &cg,
            &["python3", "-c", GET_FROM_PORT, "8080", sport],
            T * 2,
        );
        assert!(
            out.status.success(),
            "client from port {sport}: {}",
            out.stderr
        );
        assert_eq!(out.stdout.trim(), "from a", "from port {sport}");
    }
    s.cli.run(&["local", "detach", &cg]).expect("local detach");
}
