//! Gateway modes (`com.docker.network.bridge.gateway_mode_ipv4`) end to
//! end, modelled on moby's `TestDirectRoutingOpenPorts`: a remote client on
//! the uplink's segment routes the container subnet via the fake host and
//! tries ping, a published (mapped) container port and an unpublished one,
//! straight to the container's address. nat: all fail (direct-access
//! protection); nat-unprotected: all succeed; routed: ping and the mapped
//! port succeed, the unmapped one fails; nat with the uplink among the
//! network's `trusted_host_interfaces`: all succeed. An isolated network
//! has no address on its bridge, and nothing gets in or out.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use dataplane_common::{
    drop::DropReason,
    nat::{SUBNET_MASQUERADE, SUBNET_PROTECTED, SUBNET_ROUTED},
};
use dataplane_tests::{
    cli::Cli,
    datapath,
    netns::NetNs,
    packets::PacketBuilder,
    topo::FakeHost,
    traffic::{ping, tcp_echo, tcp_echo_server},
    BpffsDir,
};
use dataplane_user::datapath::{conntrack, ebpf::Dataplane, stats};

const T: Duration = Duration::from_secs(3);
const SHORT: Duration = Duration::from_secs(1);
const MAPPED: u16 = 80;
const UNMAPPED: u16 = 81;

/// One row of the matrix: the network's options, and whether ping, the
/// mapped port and the unmapped port answer the client.
struct Case {
    name: &'static str,
    mode: &'static str,
    trust_uplink: bool,
    ping: bool,
    mapped: bool,
    unmapped: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "nat",
        mode: "nat",
        trust_uplink: false,
        ping: false,
        mapped: false,
        unmapped: false,
    },
    Case {
        name: "nat-unprotected",
        mode: "nat-unprotected",
        trust_uplink: false,
        ping: true,
        mapped: true,
        unmapped: true,
    },
    Case {
        name: "routed",
        mode: "routed",
        trust_uplink: false,
        ping: true,
        mapped: true,
        unmapped: false,
    },
    Case {
        name: "nat, uplink trusted",
        mode: "nat",
        trust_uplink: true,
        ping: true,
        mapped: true,
        unmapped: true,
    },
];

/// A fake host whose dataplane has network `gw` (10.80.0.0/24) created
/// with the options `options` gives for that host, container `c` on it
/// publishing 8080 -> 80 if `publish`.
fn setup(
    tag: &str,
    publish: bool,
    options: impl Fn(&FakeHost) -> Vec<String>,
) -> (FakeHost, Cli, NetNs, Ipv4Addr) {
    let (fh, cli) = Cli::uplinked(tag, None).expect("fake host with its uplink");
    let options = options(&fh);
    let mut args = vec!["network", "create", "--subnet", "10.80.0.0/24"];
    for o in &options {
        args.extend(["-o", o.as_str()]);
    }
    args.push("gw");
    cli.run(&args).expect("network create");
    let c = NetNs::new("gwc").expect("netns");
    let mut connect = vec!["connect", "gw", c.name()];
    if publish {
        connect.extend(["-p", "8080:80"]);
    }
    cli.run(&connect).expect("connect");
    let ip = Ipv4Addr::new(10, 80, 0, 2);
    fh.client_route("10.80.0.0/24").expect("client route");
    (fh, cli, c, ip)
}

#[test]
fn direct_routing_to_containers_follows_the_gateway_mode() {
    if !dataplane_tests::require_root() {
        return;
    }
    for case in &CASES {
        let (fh, cli, c, ip) = setup("gwm", true, |fh| {
            let mut o = vec![format!(
                "com.docker.network.bridge.gateway_mode_ipv4={}",
                case.mode
            )];
            if case.trust_uplink {
                o.push(format!(
                    "com.docker.network.bridge.trusted_host_interfaces=wg9:{}",
                    fh.uplink
                ));
            }
            o
        });
        let _mapped = tcp_echo_server(&c, SocketAddr::from((ip, MAPPED))).expect("server 80");
        let _unmapped = tcp_echo_server(&c, SocketAddr::from((ip, UNMAPPED))).expect("server 81");
        let inspect = cli.json(&["network", "inspect", "gw"]).expect("inspect");
        assert_eq!(
            inspect[0]["Options"]["com.docker.network.bridge.gateway_mode_ipv4"], case.mode,
            "{}: {inspect}",
            case.name
        );
        let mut monitor = (case.name == "nat").then(|| Monitor::start(&cli));
        let wait = |ok: bool| if ok { T } else { SHORT };
        let pinged = ping(&fh.client, ip, 1, wait(case.ping)).expect("ping runs");
        let mapped = tcp_echo(
            &fh.client,
            SocketAddr::from((ip, MAPPED)),
            b"m",
            wait(case.mapped),
        )
        .is_ok();
        let unmapped = tcp_echo(
            &fh.client,
            SocketAddr::from((ip, UNMAPPED)),
            b"u",
            wait(case.unmapped),
        )
        .is_ok();
        assert_eq!(
            (pinged, mapped, unmapped),
            (case.ping, case.mapped, case.unmapped),
            "{}: (ping, mapped, unmapped)",
            case.name
        );
        if !(case.ping && case.mapped && case.unmapped) {
            assert!(cli.drops("direct-access") >= 1, "{}", case.name);
        }
        if let Some(m) = monitor.take() {
            let line = m
                .find("direct-access")
                .expect("a monitor line for direct access");
            assert!(line.contains("10.80.0.2"), "{line}");
        }
        // The published port itself answers in every mode, through the
        // host's address.
        assert_eq!(
            tcp_echo(&fh.client, SocketAddr::from((fh.host_ip, 8080)), b"p", T)
                .expect("published port"),
            b"p",
            "{}",
            case.name
        );
        // The container reaches the outside in every one of these modes
        // (routed: with its own address, the client routing it back).
        let out = tcp_echo_server(&fh.client, SocketAddr::from((fh.client_ip, 9400))).expect("srv");
        assert_eq!(
            tcp_echo(&c, out.local_addr(), b"o", T).expect("egress"),
            b"o",
            "{}",
            case.name
        );
        let peer_is_container = out.peers().iter().any(|p| p.ip() == ip);
        assert_eq!(peer_is_container, case.mode == "routed", "{}", case.name);
    }
}

#[test]
fn an_isolated_network_has_no_gateway_address_and_no_way_in_or_out() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli, c, ip) = setup("gwi", false, |_| {
        vec!["com.docker.network.bridge.gateway_mode_ipv4=isolated".to_owned()]
    });
    let inspect = cli.json(&["network", "inspect", "gw"]).expect("inspect");
    assert_eq!(inspect[0]["Internal"], true, "{inspect}");
    let bridge = inspect[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .expect("bridge name")
        .to_owned();
    let addrs = fh
        .host
        .exec(&["ip", "-4", "-o", "addr", "show", "dev", &bridge])
        .expect("addrs");
    assert!(addrs.trim().is_empty(), "no address on {bridge}: {addrs}");
    let _srv = tcp_echo_server(&c, SocketAddr::from((ip, MAPPED))).expect("server");
    // Nothing reaches it.
    assert!(!ping(&fh.client, ip, 1, SHORT).expect("ping runs"));
    assert!(tcp_echo(&fh.client, SocketAddr::from((ip, MAPPED)), b"x", SHORT).is_err());
    // It reaches nothing outside, even with a route added by hand.
    let out = tcp_echo_server(&fh.client, SocketAddr::from((fh.client_ip, 9401))).expect("srv");
    c.exec(&["ip", "route", "add", "default", "dev", "eth0"])
        .expect("route by hand");
    assert!(tcp_echo(&c, out.local_addr(), b"o", SHORT).is_err());
    assert!(cli.drops("internal-network-egress") >= 1);
}

/// BPF_PROG_TEST_RUN of `dp_uplink_in` on packets routed straight to a
/// subnet, per mode: the verdict, the drop counted, no flow from a drop.
#[test]
fn uplink_in_applies_the_mode_of_the_destination_subnet() {
    if !dataplane_tests::require_root() {
        return;
    }
    const NEXT: u32 = u32::MAX;
    const SHOT: u32 = 2;
    const TEST_RUN_IFINDEX: u32 = 1;
    let client = [192, 0, 2, 2];
    // 10.81/24 nat (protected), 10.82/24 routed with 10.82.0.2:80/tcp
    // open, 10.83/24 nat-unprotected, 10.84/24 nat trusting the interface
    // the test runs on.
    let dir = BpffsDir::new("pttgw").expect("bpffs");
    let mut dp = Dataplane::load(dir.pins()).expect("load");
    let pins = dp.pins();
    let nets: [([u8; 4], u32, u32); 4] = [
        ([10, 81, 0, 0], SUBNET_MASQUERADE | SUBNET_PROTECTED, 81),
        ([10, 82, 0, 0], SUBNET_ROUTED, 82),
        ([10, 83, 0, 0], SUBNET_MASQUERADE, 83),
        ([10, 84, 0, 0], SUBNET_MASQUERADE | SUBNET_PROTECTED, 84),
    ];
    for (net, flags, id) in nets {
        datapath::subnet(pins, net.into(), 24, flags, id).expect("subnet");
    }
    datapath::host_addr(pins, Ipv4Addr::new(10, 81, 0, 1), 3).expect("gateway");
    datapath::open_port(pins, "10.82.0.2:80".parse().expect("addr"), 6).expect("open");
    datapath::trusted_iface(pins, TEST_RUN_IFINDEX, 84).expect("trusted");
    let syn = |dst: [u8; 4], port: u16| PacketBuilder::tcp(client, dst, 40000, port).build();
    let ping = |dst: [u8; 4]| PacketBuilder::icmp_echo(client, dst, 7, 1).build();
    let cases: [(&str, Vec<u8>, u32); 10] = [
        ("nat: container port", syn([10, 81, 0, 2], 80), SHOT),
        ("nat: gateway address", syn([10, 81, 0, 1], 22), SHOT),
        ("nat: ping", ping([10, 81, 0, 2]), SHOT),
        ("routed: open port", syn([10, 82, 0, 2], 80), NEXT),
        ("routed: closed port", syn([10, 82, 0, 2], 81), SHOT),
        (
            "routed: open port, udp",
            PacketBuilder::udp(client, [10, 82, 0, 2], 40000, 80).build(),
            SHOT,
        ),
        ("routed: ping", ping([10, 82, 0, 2]), NEXT),
        ("nat-unprotected: any port", syn([10, 83, 0, 2], 81), NEXT),
        ("nat, trusted: any port", syn([10, 84, 0, 2], 81), NEXT),
        ("nat, trusted: ping", ping([10, 84, 0, 2]), NEXT),
    ];
    let mut shot = 0;
    for (name, frame, want) in &cases {
        let (verdict, out) = datapath::run_program(&mut dp, "dp_uplink_in", frame).expect("run");
        assert_eq!(verdict, *want, "{name}");
        assert_eq!(&out, frame, "{name}: never rewritten");
        shot += u64::from(*want == SHOT);
    }
    let counted = stats::read(dir.pins())
        .expect("stats")
        .drop(DropReason::DirectAccess)
        .packets;
    assert_eq!(counted, shot);
    // Only what got in is tracked.
    let flows = conntrack::list(dir.pins()).expect("conntrack");
    let dropped = |f: &conntrack::Flow| {
        f.src.starts_with("10.81.")
            || f.dst.starts_with("10.81.")
            || (f.dst == "10.82.0.2" && f.dport == 81)
            || (f.src == "10.82.0.2" && f.sport == 81)
    };
    assert!(!flows.iter().any(dropped), "{flows:?}");
    assert!(
        flows.iter().any(|f| f.dst == "10.82.0.2" && f.dport == 80),
        "{flows:?}"
    );
}

/// `dataplane monitor --format json`, its lines read by a thread.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(cli: &Cli) -> Monitor {
        let mut child = cli
            .command(&["monitor", "--format", "json"])
            .expect("monitor")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn monitor");
        let out = child.stdout.take().expect("monitor stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        thread::sleep(Duration::from_millis(500));
        Monitor { child, lines }
    }

    /// The first line containing `needle` within `T`; the monitor stops.
    fn find(mut self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + T;
        let mut seen = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => {
                    seen = Some(line);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        seen
    }
}
