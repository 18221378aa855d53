//! What happens to translation as endpoints and networks come and go, end
//! to end through the CLI in a fake host (issue 12): networks on subnets
//! the host cannot give away are refused, `nat ls` lines its columns up,
//! flows of a removed endpoint or published port are purged (a new
//! container on the port gets the next datagram), and a container on two
//! networks answers a client of the second one through the port it
//! publishes on the first (hairpin from a shared network). Each case but
//! the `nat ls` layout runs for both families.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::Cli,
    cni::{invoke, Call},
    family::{add6, Family},
    family_tests,
    netns::NetNs,
    topo::FakeHost,
    traffic::{tcp_echo, tcp_echo_server, udp_echo_server},
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

family_tests!(
    reserved_subnets_are_refused,
    a_subnet_overlapping_the_uplinks_is_refused,
    a_udp_stream_reaches_the_new_container_after_disconnect,
    removing_a_published_port_purges_its_flows_only,
    hairpin_from_a_shared_network_is_answered,
);

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

/// `network create` with `subnet` (IPv6: beside an IPv4 one) fails with
/// `msg` and changes nothing.
fn refused(fam: Family, fh: &FakeHost, cli: &Cli, subnet: &str, msg: &str) {
    let before = snapshot(fh, cli);
    let mut args = vec!["network", "create"];
    if fam == Family::V6 {
        args.extend(["--ipv6", "--subnet", "10.65.0.0/24"]);
    }
    args.extend(["--subnet", subnet, "bad"]);
    let err = cli
        .fail(&args)
        .unwrap_or_else(|e| panic!("{subnet}: {e:#}"));
    assert!(err.contains(msg), "{subnet}: want {msg:?}: {err}");
    assert_eq!(snapshot(fh, cli), before, "{subnet} changed something");
}

fn reserved_subnets_are_refused(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("resv", None);
    cli.run(&["network", "create", "--subnet", "10.61.0.0/24", "keep"])
        .expect("a good network");
    let cases: &[(&str, &str)] = match fam {
        Family::V4 => &[
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
        ],
        Family::V6 => &[
            (
                "::/64",
                "--subnet ::/64: overlaps unspecified and loopback ::/127",
            ),
            (
                "::ffff:0:0/96",
                "--subnet ::ffff:0:0/96: overlaps IPv4-mapped ::ffff:0.0.0.0/96",
            ),
            (
                "fe80::/64",
                "--subnet fe80::/64: overlaps link-local fe80::/10",
            ),
            (
                "ff00::/64",
                "--subnet ff00::/64: overlaps multicast ff00::/8",
            ),
            (
                "fec0::/64",
                "--subnet fec0::/64: overlaps site-local (deprecated) fec0::/10",
            ),
        ],
    };
    for (subnet, msg) in cases {
        refused(fam, &fh, &cli, subnet, msg);
    }
    if fam == Family::V6 {
        return;
    }
    // The CNI plugin refuses the same `ipam.subnet`s before it asks the
    // agent (none runs here: nothing could be changed).
    let before = snapshot(&fh, &cli);
    let ctr = NetNs::new("ctr").expect("netns");
    for (subnet, msg) in cases {
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

/// A network on the uplink's own subnet would take the host's address
/// and its route to the segment off the uplink.
fn a_subnet_overlapping_the_uplinks_is_refused(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("resvup", None);
    let (subnet, what) = match fam {
        Family::V4 => ("192.0.2.0/25", "subnet 192.0.2.0/24"),
        Family::V6 => ("2001:db8:1::/64", "IPv6 prefix 2001:db8:1::/64"),
    };
    let msg = format!("--subnet {subnet}: overlaps uplink {}'s {what}", fh.uplink);
    refused(fam, &fh, &cli, subnet, &msg);
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
    let any = SocketAddr::new(
        match dst {
            SocketAddr::V4(_) => Family::V4.unspecified(),
            SocketAddr::V6(_) => Family::V6.unspecified(),
        },
        0,
    );
    udp_client_from(ns, any, dst, Duration::from_millis(250))
}

/// Sends `payload` until its echo comes back, within `T`. Echoes of an
/// earlier exchange's retries still queued are read away first.
fn exchange(s: &UdpSocket, payload: &[u8]) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 1500];
    if s.set_nonblocking(true).is_ok() {
        while s.recv(&mut buf).is_ok() {}
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
    }
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

fn a_udp_stream_reaches_the_new_container_after_disconnect(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("udpmove", None);
    let (c1_ip, c2_ip) = (fam.addr(0, 2), fam.addr(0, 3));
    let c1_s = c1_ip.to_string();
    let c1 = NetNs::new("c1").expect("netns");
    let c2 = NetNs::new("c2").expect("netns");
    fam.connect(&cli, 0, &c1, &["-p", "8080:80/udp"]);
    let s1 = udp_echo_server(&c1, SocketAddr::new(c1_ip, 80)).expect("server c1");
    let client = udp_client(&fh.client, SocketAddr::new(fam.host_ip(&fh), 8080));
    assert_eq!(exchange(&client, b"one").expect("to c1"), b"one");
    assert!(!s1.peers().is_empty());
    assert!(!flows_mentioning(&cli, &c1_s).is_empty());

    // The container goes; another (at another address) publishes the port.
    cli.run(&["disconnect", &fam.network(0), c1.name()])
        .expect("disconnect");
    assert_eq!(
        flows_mentioning(&cli, &c1_s),
        Vec::<Value>::new(),
        "flows of the disconnected endpoint"
    );
    let c2_s = c2_ip.to_string();
    fam.connect(&cli, 0, &c2, &[fam.ip_flag(), &c2_s, "-p", "8080:80/udp"]);
    let s2 = udp_echo_server(&c2, SocketAddr::new(c2_ip, 80)).expect("server c2");
    // The same socket, so the same tuple as before.
    assert_eq!(exchange(&client, b"two").expect("to c2"), b"two");
    assert!(
        s2.peers().iter().any(|p| p.ip() == fam.client_ip(&fh)),
        "{:?}",
        s2.peers()
    );
    assert_eq!(flows_mentioning(&cli, &c1_s), Vec::<Value>::new());
}

fn removing_a_published_port_purges_its_flows_only(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("portrm", None);
    let net = fam.network(0);
    let (c1_ip, c2_ip) = (fam.addr(0, 2), fam.addr(0, 3));
    let c1 = NetNs::new("c1").expect("netns");
    let c2 = NetNs::new("c2").expect("netns");
    fam.connect(&cli, 0, &c1, &["-p", "8080:80/udp", "-p", "8081:81/udp"]);
    fam.connect(&cli, 0, &c2, &[]);
    let s1 = udp_echo_server(&c1, SocketAddr::new(c1_ip, 80)).expect("server c1");
    let _s1b = udp_echo_server(&c1, SocketAddr::new(c1_ip, 81)).expect("server c1:81");
    let s2 = udp_echo_server(&c2, SocketAddr::new(c2_ip, 80)).expect("server c2");
    let host = fam.host_ip(&fh);
    let client = udp_client(&fh.client, SocketAddr::new(host, 8080));
    let other = udp_client(&fh.client, SocketAddr::new(host, 8081));
    assert_eq!(exchange(&client, b"one").expect("to c1"), b"one");
    assert_eq!(exchange(&other, b"x").expect("to c1:81"), b"x");
    let to_81 = fam.with_port(c1_ip, 81);
    let to_80 = fam.with_port(c1_ip, 80);
    assert!(!flows_mentioning(&cli, &to_80).is_empty());

    cli.run(&["publish", "rm", &net, c1.name(), "8080:80/udp"])
        .expect("publish rm");
    assert_eq!(flows_mentioning(&cli, &to_80), Vec::<Value>::new());
    // The endpoint's other port keeps its flow.
    assert_eq!(flows_mentioning(&cli, &to_81).len(), 1, "{:?}", cli.flows());
    cli.run(&["publish", "add", &net, c2.name(), "8080:80/udp"])
        .expect("publish add");
    let before = s1.peers().len();
    assert_eq!(exchange(&client, b"two").expect("to c2"), b"two");
    assert!(!s2.peers().is_empty(), "c2 got nothing");
    assert_eq!(s1.peers().len(), before, "c1 still got the stream");
    assert_eq!(exchange(&other, b"y").expect("still to c1:81"), b"y");
}

fn hairpin_from_a_shared_network_is_answered(fam: Family) {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = fam.setup("shared", None);
    fam.create_network(&cli, 1, &[]);
    fam.create_network(&cli, 2, &[]);
    // The server publishes on network 1 (`back`) and is on network 2
    // (`front`) too: its route to the client is `front`'s, so it answers
    // by `front` from its `back` address (the DNAT target).
    let srv = NetNs::new("srv").expect("netns");
    let cl = NetNs::new("cl").expect("netns");
    fam.connect(&cli, 1, &srv, &["-p", "8080:80", "-p", "8081:81/udp"]);
    fam.connect(&cli, 2, &srv, &[]);
    fam.connect(&cli, 2, &cl, &[]);
    let back_ip = fam.addr(1, 2);
    let _tcp = tcp_echo_server(&srv, SocketAddr::new(back_ip, 80)).expect("tcp server");
    let _udp = udp_echo_server(&srv, SocketAddr::new(back_ip, 81)).expect("udp server");
    let front_gw = fam.addr(2, 1);
    for host in [fam.host_ip(&fh), front_gw] {
        let got = tcp_echo(&cl, SocketAddr::new(host, 8080), b"shared", T).unwrap_or_else(|e| {
            let spoofed = cli.drops("spoofed-source");
            panic!("{host}:8080 from front: {e:#} ({spoofed} spoofed-source drops)")
        });
        assert_eq!(got, b"shared", "{host}:8080");
        let sock = udp_client(&cl, SocketAddr::new(host, 8081));
        assert_eq!(
            exchange(&sock, b"udp").unwrap_or_else(|e| panic!("{host}:8081: {e}")),
            b"udp"
        );
    }
    // Still no spoofing: the client cannot send from the server's address.
    let before = cli.drops("spoofed-source");
    match fam {
        Family::V4 => cl
            .exec(&["ip", "addr", "add", &format!("{back_ip}/32"), "dev", "eth0"])
            .map(drop)
            .expect("a borrowed address"),
        Family::V6 => add6(&cl, "eth0", &format!("{back_ip}/128")),
    }
    let forged = udp_client_from(
        &cl,
        SocketAddr::new(back_ip, 0),
        SocketAddr::new(front_gw, 8081),
        Duration::from_millis(500),
    );
    assert!(exchange_once(&forged, b"forged").is_err());
    assert!(
        cli.drops("spoofed-source") > before,
        "the forged datagram was not counted"
    );
}

/// A UDP socket in `ns` bound to `src`, connected to `dst`.
fn udp_client_from(ns: &NetNs, src: SocketAddr, dst: SocketAddr, wait: Duration) -> UdpSocket {
    ns.run_in(|| -> io::Result<UdpSocket> {
        let s = UdpSocket::bind(src)?;
        s.connect(dst)?;
        s.set_read_timeout(Some(wait))?;
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
