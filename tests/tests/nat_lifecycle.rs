//! What happens to translation as endpoints and networks come and go, end
//! to end through the CLI in a fake host (issue 12): networks on subnets
//! the host cannot give away are refused, `nat ls` lines its columns up,
//! flows of a removed endpoint or published port are purged (a new
//! container on the port gets the next datagram), and a container on two
//! networks answers a client of the second one through the port it
//! publishes on the first (hairpin from a shared network).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::Cli,
    cni::{invoke, Call},
    netns::NetNs,
    topo::FakeHost,
    traffic::{tcp_echo, tcp_echo_server, udp_echo_server},
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const C1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);

fn setup(tag: &str) -> (FakeHost, Cli) {
    Cli::uplinked(tag, None).expect("fake host with its uplink")
}

/// The networks as stored and the host's links: what a refused create
/// must leave as it was.
fn snapshot(fh: &FakeHost, cli: &Cli) -> (Value, Vec<String>) {
    let state = cli.stored_state().expect("state");
    (
        state["networks"].clone(),
        fh.host.link_names().expect("links"),
    )
}

#[test]
fn subnets_the_host_cannot_give_are_refused() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("resv");
    cli.run(&["network", "create", "--subnet", "10.61.0.0/24", "keep"])
        .expect("a good network");
    let before = snapshot(&fh, &cli);
    let uplink = format!(
        "--subnet 192.0.2.0/25: overlaps uplink {}'s subnet 192.0.2.0/24",
        fh.uplink
    );
    let cases = [
        (
            "127.0.0.0/24",
            "--subnet 127.0.0.0/24: overlaps loopback 127.0.0.0/8",
        ),
        (
            "0.0.0.0/8",
            "--subnet 0.0.0.0/8: overlaps \"this network\" 0.0.0.0/8",
        ),
        (
            "169.254.0.0/16",
            "--subnet 169.254.0.0/16: overlaps link-local 169.254.0.0/16",
        ),
        (
            "224.0.0.0/8",
            "--subnet 224.0.0.0/8: overlaps multicast 224.0.0.0/4",
        ),
        (
            "240.0.0.0/8",
            "--subnet 240.0.0.0/8: overlaps reserved 240.0.0.0/4",
        ),
        ("192.0.2.0/25", uplink.as_str()),
    ];
    for (subnet, msg) in cases {
        let err = cli
            .fail(&["network", "create", "--subnet", subnet, "bad"])
            .unwrap_or_else(|e| panic!("{subnet}: {e:#}"));
        assert!(err.contains(msg), "{subnet}: {err}");
        assert_eq!(snapshot(&fh, &cli), before, "{subnet} changed something");
    }
    // The CNI plugin refuses the same `ipam.subnet`s before it asks the
    // agent (none runs here: nothing could be changed).
    let ctr = NetNs::new("ctr").expect("netns");
    for (subnet, msg) in &cases[..5] {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "cnibad", "type": "dataplane-cni",
            "socket": cli.socket, "ipam": {"type": "dataplane", "subnet": subnet},
        });
        let a = invoke(
            &fh.host,
            &Call {
                command: "ADD",
                container_id: "resv1",
                netns: Some(ctr.path()),
                ifname: "eth0",
                args: "",
            },
            conf.to_string().as_bytes(),
        )
        .expect("plugin ran");
        let err = a.error().unwrap_or_else(|e| panic!("{subnet}: {e:#}"));
        let text = err["msg"].as_str().unwrap_or_default();
        assert!(
            text.contains("ipam.subnet") && text.contains(msg),
            "{subnet}: {err}"
        );
        assert_eq!(err["code"], 7, "{subnet}: {err}");
    }
    assert_eq!(snapshot(&fh, &cli), before);
}

/// Columns of a text table: each header's (start, end) in characters.
fn header_spans(header: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in header.char_indices().chain([(header.len(), ' ')]) {
        match (c == ' ', start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((header[s..i].to_owned(), s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[test]
fn nat_ls_columns_line_up_under_their_headers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("cols");
    let net = "a-network-with-a-long-name";
    cli.run(&["network", "create", "--subnet", "10.62.0.0/24", net])
        .expect("create");
    let c1 = NetNs::new("c1").expect("netns");
    let c2 = NetNs::new("c2").expect("netns");
    cli.run(&[
        "connect",
        net,
        c1.name(),
        "--name",
        "an-endpoint-named-at-length",
        "-p",
        "127.0.0.1:18080:80",
    ])
    .expect("connect c1");
    cli.run(&[
        "connect",
        "bridge",
        c2.name(),
        "--name",
        "c2",
        "-p",
        "19090:9/udp",
    ])
    .expect("connect c2");
    let text = cli.run(&["nat", "ls"]).expect("nat ls");
    let lines: Vec<&str> = text.lines().collect();
    let h = lines
        .iter()
        .position(|l| l.trim_start().starts_with("PKTS"))
        .unwrap_or_else(|| panic!("no header:\n{text}"));
    let spans = header_spans(lines[h]);
    let names: Vec<&str> = spans.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "PKTS",
            "BYTES",
            "PROTO",
            "HOST",
            "CONTAINER",
            "ENDPOINT",
            "NETWORK"
        ],
        "{text}"
    );
    let rows: Vec<&str> = lines[h + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), spans.len(), "{row}");
        let mut from = 0;
        for (cell, (name, start, end)) in cells.iter().zip(&spans) {
            let at = from + row[from..].find(cell).expect("cell in its row");
            from = at + cell.len();
            if matches!(name.as_str(), "PKTS" | "BYTES") {
                assert_eq!(from, *end, "{name} right-aligned in {row:?}\n{text}");
            } else {
                assert_eq!(at, *start, "{name} under its header in {row:?}\n{text}");
            }
        }
    }
    // The masquerade table below lines up too.
    let s = lines
        .iter()
        .position(|l| l.starts_with("NETWORK"))
        .unwrap_or_else(|| panic!("no SNAT header:\n{text}"));
    let spans = header_spans(lines[s]);
    for row in lines[s + 1..].iter().filter(|l| l.contains(net)) {
        let subnet_at = row.find("10.62.0.0/24").expect("subnet");
        assert_eq!(subnet_at, spans[1].1, "{row:?}\n{text}");
    }
}

/// A UDP client in `ns` with one socket, so every datagram it sends is
/// one tuple (one conntrack flow), like a client sending every second.
fn udp_client(ns: &NetNs, dst: SocketAddr) -> UdpSocket {
    ns.run_in(|| -> io::Result<UdpSocket> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(dst)?;
        s.set_read_timeout(Some(Duration::from_millis(250)))?;
        Ok(s)
    })
    .expect("in the client namespace")
    .expect("udp socket")
}

/// Sends `payload` until its echo comes back, within `T`.
fn exchange(s: &UdpSocket, payload: &[u8]) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 1500];
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Err(e) = s.send(payload) {
            last = e.to_string();
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        match s.recv(&mut buf) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("no echo of {payload:?} within {T:?}: {last}"))
}

/// Flows whose addresses or translation mention `needle`.
fn flows_mentioning(cli: &Cli, needle: &str) -> Vec<Value> {
    cli.flows()
        .into_iter()
        .filter(|f| {
            f["src"] == needle
                || f["dst"] == needle
                || f["nat"].as_str().unwrap_or_default().contains(needle)
        })
        .collect()
}

#[test]
fn a_udp_stream_reaches_the_new_container_after_disconnect() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("udpmove");
    let c1 = NetNs::new("c1").expect("netns");
    let c2 = NetNs::new("c2").expect("netns");
    cli.run(&["connect", "bridge", c1.name(), "-p", "8080:80/udp"])
        .expect("connect c1");
    let s1 = udp_echo_server(&c1, SocketAddr::from((C1, 80))).expect("server c1");
    let client = udp_client(&fh.client, SocketAddr::from((fh.host_ip, 8080)));
    assert_eq!(exchange(&client, b"one").expect("to c1"), b"one");
    assert!(!s1.peers().is_empty());
    assert!(!flows_mentioning(&cli, &C1.to_string()).is_empty());

    // The container goes; another (at another address) publishes the port.
    cli.run(&["disconnect", "bridge", c1.name()])
        .expect("disconnect");
    assert_eq!(
        flows_mentioning(&cli, &C1.to_string()),
        Vec::<Value>::new(),
        "flows of the disconnected endpoint"
    );
    cli.run(&[
        "connect",
        "bridge",
        c2.name(),
        "--ip",
        &C2.to_string(),
        "-p",
        "8080:80/udp",
    ])
    .expect("connect c2");
    let s2 = udp_echo_server(&c2, SocketAddr::from((C2, 80))).expect("server c2");
    // The same socket, so the same tuple as before.
    assert_eq!(exchange(&client, b"two").expect("to c2"), b"two");
    assert!(
        s2.peers()
            .iter()
            .any(|p| p.ip() == std::net::IpAddr::V4(fh.client_ip)),
        "{:?}",
        s2.peers()
    );
    assert_eq!(flows_mentioning(&cli, &C1.to_string()), Vec::<Value>::new());
}

#[test]
fn removing_a_published_port_purges_its_flows_only() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("portrm");
    let c1 = NetNs::new("c1").expect("netns");
    let c2 = NetNs::new("c2").expect("netns");
    cli.run(&[
        "connect",
        "bridge",
        c1.name(),
        "-p",
        "8080:80/udp",
        "-p",
        "8081:81/udp",
    ])
    .expect("connect c1");
    cli.run(&["connect", "bridge", c2.name()])
        .expect("connect c2");
    let s1 = udp_echo_server(&c1, SocketAddr::from((C1, 80))).expect("server c1");
    let _s1b = udp_echo_server(&c1, SocketAddr::from((C1, 81))).expect("server c1:81");
    let s2 = udp_echo_server(&c2, SocketAddr::from((C2, 80))).expect("server c2");
    let client = udp_client(&fh.client, SocketAddr::from((fh.host_ip, 8080)));
    let other = udp_client(&fh.client, SocketAddr::from((fh.host_ip, 8081)));
    assert_eq!(exchange(&client, b"one").expect("to c1"), b"one");
    assert_eq!(exchange(&other, b"x").expect("to c1:81"), b"x");
    let to_81 = format!("{C1}:81");
    let to_80 = format!("{C1}:80");
    assert!(!flows_mentioning(&cli, &to_80).is_empty());

    cli.run(&["publish", "rm", "bridge", c1.name(), "8080:80/udp"])
        .expect("publish rm");
    assert_eq!(flows_mentioning(&cli, &to_80), Vec::<Value>::new());
    // The endpoint's other port keeps its flow.
    assert_eq!(flows_mentioning(&cli, &to_81).len(), 1, "{:?}", cli.flows());
    cli.run(&["publish", "add", "bridge", c2.name(), "8080:80/udp"])
        .expect("publish add");
    let before = s1.peers().len();
    assert_eq!(exchange(&client, b"two").expect("to c2"), b"two");
    assert!(!s2.peers().is_empty(), "c2 got nothing");
    assert_eq!(s1.peers().len(), before, "c1 still got the stream");
    assert_eq!(exchange(&other, b"y").expect("still to c1:81"), b"y");
}

#[test]
fn hairpin_from_a_shared_network_is_answered() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("shared");
    cli.run(&["network", "create", "--subnet", "10.63.0.0/24", "back"])
        .expect("back");
    cli.run(&["network", "create", "--subnet", "10.64.0.0/24", "front"])
        .expect("front");
    // The server publishes on `back` and is on `front` too: its route to
    // the client is `front`'s, so it answers by `front` from its `back`
    // address (the DNAT target).
    let srv = NetNs::new("srv").expect("netns");
    let cl = NetNs::new("cl").expect("netns");
    cli.run(&[
        "connect",
        "back",
        srv.name(),
        "-p",
        "8080:80",
        "-p",
        "8081:81/udp",
    ])
    .expect("connect srv to back");
    cli.run(&["connect", "front", srv.name()])
        .expect("connect srv to front");
    cli.run(&["connect", "front", cl.name()])
        .expect("connect client to front");
    let back_ip = Ipv4Addr::new(10, 63, 0, 2);
    let _tcp = tcp_echo_server(&srv, SocketAddr::from((back_ip, 80))).expect("tcp server");
    let _udp = udp_echo_server(&srv, SocketAddr::from((back_ip, 81))).expect("udp server");
    let front_gw = Ipv4Addr::new(10, 64, 0, 1);
    for host in [fh.host_ip, front_gw] {
        let got = tcp_echo(&cl, SocketAddr::from((host, 8080)), b"shared", T)
            .unwrap_or_else(|e| panic!("{host}:8080 from front: {e:#}"));
        assert_eq!(got, b"shared", "{host}:8080");
        let sock = udp_client(&cl, SocketAddr::from((host, 8081)));
        assert_eq!(
            exchange(&sock, b"udp").unwrap_or_else(|e| panic!("{host}:8081: {e}")),
            b"udp"
        );
    }
    // Still no spoofing: the client cannot send from the server's address.
    let drops = |cli: &Cli| {
        cli.json(&["stats", "show", "--format", "json"])
            .expect("stats")["drops"]["spoofed-source"]["packets"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = drops(&cli);
    cl.exec(&["ip", "addr", "add", "10.63.0.2/32", "dev", "eth0"])
        .expect("a borrowed address");
    let forged = udp_client_from(&cl, back_ip, SocketAddr::from((front_gw, 8081)));
    assert!(exchange_once(&forged, b"forged").is_err());
    assert!(drops(&cli) > before, "the forged datagram was not counted");
}

/// A UDP socket in `ns` bound to `src`.
fn udp_client_from(ns: &NetNs, src: Ipv4Addr, dst: SocketAddr) -> UdpSocket {
    ns.run_in(|| -> io::Result<UdpSocket> {
        let s = UdpSocket::bind((src, 0))?;
        s.connect(dst)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(s)
    })
    .expect("in the namespace")
    .expect("udp socket")
}

/// One datagram and its echo, if one comes within the read timeout.
fn exchange_once(s: &UdpSocket, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 1500];
    s.send(payload)?;
    let n = s.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}
