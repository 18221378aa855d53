//! Published ports for host-local clients: the cgroup sock_addr programs
//! attached with `dataplane_user::datapath::host_local` to a cgroup v2 directory of the test's
//! own. Clients (curl, python3) run as child processes placed in that cgroup
//! and in the fake host's network namespace; the servers run in a container on
//! a bridge. Published ports are written straight into the pinned `DP_PORTS`
//! and `DP_HOST_ADDRS` maps.
//!
//! Checked: TCP to 127.0.0.1 and to the host's address reaches the container
//! while the client sees the address it asked for (curl's remote address,
//! getpeername); a port bound to 127.0.0.1 answers only there; UDP
//! sendto/recvfrom and connected UDP get replies from the published address;
//! processes outside the cgroup are not translated; a second attach is
//! refused; detach removes the links and pins.

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{
    maps,
    net::{IPPROTO_TCP, IPPROTO_UDP},
    sock::SockRevNat,
};
use dataplane_tests::{
    cgroup::TestCgroup,
    cmd, datapath,
    netns::NetNs,
    topo::{Container, FakeHost},
    traffic::{http_server, udp_echo_server},
    BpffsDir,
};
use dataplane_user::datapath::{
    ebpf::Dataplane,
    host_local::{self, SockError},
};
use serde_json::Value;

/// Limit of one client process (curl and python3 give up after 5 s).
const T: Duration = Duration::from_secs(20);
const BRIDGE_CIDR: &str = "10.90.0.1/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
const CONTAINER_CIDR: &str = "10.90.0.2/24";
const BODY: &str = "hello from the container";
/// curl's "Couldn't connect to server".
const CURL_COULDNT_CONNECT: i32 = 7;

/// A fake host with one container on a bridge, the programs attached to a
/// test cgroup, and the host's uplink address in `DP_HOST_ADDRS`. Fields drop
/// in order: pins (detaching the programs), cgroup, namespaces.
struct Setup {
    pins: BpffsDir,
    cgroup: TestCgroup,
    container: Container,
    fh: FakeHost,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let fh = FakeHost::new(true).expect("fake host");
        let bridge = fh.add_bridge("br", BRIDGE_CIDR).expect("bridge");
        let container = fh
            .add_container(&bridge, "c1", CONTAINER_CIDR, GATEWAY, true)
            .expect("container");
        let pins = BpffsDir::new(tag).expect("bpffs dir");
        let cgroup = TestCgroup::new();
        // Loaded from inside the fake host, as the agent runs in the host: the
        // programs translate sockets of the loader's network namespace only.
        // Attached from there too: `dp_local_out` and `dp_local_out6` go on the fake host's
        // `lo`. The links are pinned: the attachment outlives the handle.
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
        let setup = Setup {
            pins,
            cgroup,
            container,
            fh,
        };
        setup.add_host_addr();
        setup
    }

    fn container_addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.container.ip, port)
    }

    fn add_host_addr(&self) {
        let links = self
            .fh
            .host
            .ip_json(&["link", "show", &self.fh.uplink])
            .expect("ip link show");
        let ifindex = links[0]["ifindex"].as_u64().expect("ifindex");
        let ifindex = u32::try_from(ifindex).expect("ifindex fits u32");
        datapath::host_addr(self.pins.pins(), self.fh.host_ip, ifindex).expect("host addr");
    }

    /// `-p [host:]port:target/proto`, written as the agent will.
    fn publish(&self, host: Ipv4Addr, port: u16, proto: u8, target: SocketAddrV4) {
        datapath::publish(self.pins.pins(), host, port, proto, target).expect("publish");
    }

    /// Every reverse-translation entry, as (original, backend).
    fn revnat_entries(&self) -> Vec<(SocketAddrV4, SocketAddrV4)> {
        let data = MapData::from_pin(self.pins.pins().map(maps::SOCK_REVNAT)).expect("pinned map");
        let map: HashMap<MapData, u64, SockRevNat> =
            HashMap::try_from(Map::from_map_data(data).expect("map")).expect("lru hash map");
        map.iter()
            .map(|kv| {
                let (_, v) = kv.expect("revnat entry");
                (
                    SocketAddrV4::new(v.orig_addr.into(), u16::from_be_bytes(v.orig_port)),
                    SocketAddrV4::new(v.backend_addr.into(), u16::from_be_bytes(v.backend_port)),
                )
            })
            .collect()
    }

    /// Runs argv in the fake host's namespace from a process that first moves
    /// itself into the test cgroup (`exec` keeps the pid, so the client is
    /// in the cgroup from its first instruction).
    fn in_cgroup(&self, argv: &[&str]) -> cmd::Output {
        let cg = self.cgroup.path.to_string_lossy();
        let ns = self.fh.host.path().to_string_lossy();
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 97; ns=$2; shift 2; exec nsenter --net="$ns" -- "$@""#;
        let mut full = vec!["sh", "-c", script, "sh", &cg, &ns];
        full.extend_from_slice(argv);
        let out = cmd::output(&full, T).expect("client in cgroup");
        assert_ne!(
            out.status.code(),
            Some(97),
            "cannot join {cg}: {}",
            out.stderr
        );
        out
    }

    /// Runs argv in another namespace from a process in the test cgroup.
    fn in_cgroup_in(&self, ns: &NetNs, argv: &[&str]) -> cmd::Output {
        let cg = self.cgroup.path.to_string_lossy();
        let ns = ns.path().to_string_lossy();
        let script = r#"echo $$ > "$1/cgroup.procs" || exit 97; ns=$2; shift 2; exec nsenter --net="$ns" -- "$@""#;
        let mut full = vec!["sh", "-c", script, "sh", &cg, &ns];
        full.extend_from_slice(argv);
        cmd::output(&full, T).expect("client in cgroup")
    }

    /// Runs argv in the fake host's namespace, in the test process's cgroup.
    fn outside_cgroup(&self, argv: &[&str]) -> cmd::Output {
        self.fh.host.exec_output(argv, T).expect("client")
    }
}

/// curl argv printing the body, then a line `remote_ip:remote_port`.
fn curl(url: &str) -> Vec<String> {
    [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        "-w",
        "\n%{remote_ip}:%{remote_port}",
        url,
    ]
    .map(str::to_string)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// (body, remote address as curl reports it) of a successful curl.
fn curl_ok(out: &cmd::Output, what: &str) -> (String, String) {
    assert!(
        out.success(),
        "{what}: curl failed ({}): {} {}",
        out.status,
        out.stdout,
        out.stderr
    );
    let (body, remote) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("{what}: no remote line in {:?}", out.stdout));
    (body.to_string(), remote.to_string())
}

fn assert_refused(out: &cmd::Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(CURL_COULDNT_CONNECT),
        "{what}: expected connection refused, got {}: {} {}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("refused") || out.stderr.contains("Couldn't connect"),
        "{what}: {}",
        out.stderr
    );
}

/// Connects over TCP and prints `getpeername()` as `ip:port`.
const PY_GETPEERNAME: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("%s:%d" % s.getpeername())
"#;

/// UDP request/response; prints `<reply> <peer ip>:<port>`. `sendto` mode:
/// an unconnected socket with sendto/recvfrom (the peer is recvfrom's
/// address); `connect` mode: connect/send/recv (the peer is getpeername's);
/// `reconnect` mode: like `connect`, then connects again to argv 4:5.
const PY_UDP: &str = r#"
import socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
if mode in ("connect", "reconnect"):
    s.connect((host, port))
if mode == "reconnect":
    # A translated connect, then one straight to the given fallback peer:
    # the socket's peer is now untranslated.
    s.connect((sys.argv[4], int(sys.argv[5])))
    mode = "connect"
for _ in range(5):
    if mode == "connect":
        s.send(b"dp-udp")
    else:
        s.sendto(b"dp-udp", (host, port))
    try:
        if mode == "connect":
            data, peer = s.recv(2048), s.getpeername()
        else:
            data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    print("%s %s:%d" % (data.decode(), peer[0], peer[1]))
    sys.exit(0)
sys.exit("no reply from %s:%d" % (host, port))
"#;

fn python_ok(out: &cmd::Output, what: &str) -> String {
    assert!(
        out.success(),
        "{what}: python3 failed ({}): {} {}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout.trim().to_string()
}

fn all_from_gateway(peers: &[SocketAddr]) -> bool {
    peers.iter().all(|p| p.ip() == GATEWAY)
}

#[test]
fn tcp_to_loopback_and_host_address_reaches_the_container() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("socktcp");
    let target = s.container_addr(80);
    s.publish(Ipv4Addr::UNSPECIFIED, 8080, IPPROTO_TCP, target);
    let server = http_server(&s.container.ns, target.into(), BODY).expect("http server");

    for dst in ["127.0.0.1", "192.0.2.1"] {
        let url = format!("http://{dst}:8080/");
        let out = s.in_cgroup(&strs(&curl(&url)));
        let (body, remote) = curl_ok(&out, &url);
        assert_eq!(body, BODY, "{url}");
        assert_eq!(remote, format!("{dst}:8080"), "curl's remote for {url}");

        let out = s.in_cgroup(&["python3", "-c", PY_GETPEERNAME, dst, "8080"]);
        assert_eq!(
            python_ok(&out, &format!("getpeername after connect to {dst}:8080")),
            format!("{dst}:8080"),
            "getpeername shows the published address, not {target}"
        );
    }

    // A wildcard binding covers the host's own addresses only: the external
    // client's address is not translated (nothing listens there on 8080).
    let url = "http://192.0.2.2:8080/";
    assert_refused(&s.in_cgroup(&strs(&curl(url))), url);

    // Two curls and two python clients reached the container, from the
    // host's address on the bridge (the kernel picked the source after the
    // hook rewrote the destination; nothing was masqueraded).
    let peers = server.peers();
    assert_eq!(peers.len(), 4, "{peers:?}");
    assert!(all_from_gateway(&peers), "{peers:?}");
    // The sockets' reverse translations were recorded by cookie.
    let revnat: BTreeSet<_> = s.revnat_entries().into_iter().collect();
    for dst in [Ipv4Addr::LOCALHOST, s.fh.host_ip] {
        assert!(
            revnat.contains(&(SocketAddrV4::new(dst, 8080), target)),
            "{revnat:?}"
        );
    }
}

#[test]
fn a_port_bound_to_loopback_answers_only_there() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("socklo");
    let target = s.container_addr(80);
    s.publish(Ipv4Addr::LOCALHOST, 8081, IPPROTO_TCP, target);
    let server = http_server(&s.container.ns, target.into(), BODY).expect("http server");

    let out = s.in_cgroup(&strs(&curl("http://127.0.0.1:8081/")));
    let (body, remote) = curl_ok(&out, "127.0.0.1:8081");
    assert_eq!(body, BODY);
    assert_eq!(remote, "127.0.0.1:8081");

    // Neither the host's other address nor another loopback address matches
    // a binding to 127.0.0.1: nothing listens there, so the kernel refuses.
    for url in ["http://192.0.2.1:8081/", "http://127.0.0.2:8081/"] {
        let out = s.in_cgroup(&strs(&curl(url)));
        assert_refused(&out, url);
    }
    assert_eq!(server.peers().len(), 1, "{:?}", server.peers());
}

#[test]
fn udp_request_and_reply_come_from_the_published_address() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("sockudp");
    let target = s.container_addr(53);
    s.publish(Ipv4Addr::UNSPECIFIED, 5353, IPPROTO_UDP, target);
    let server = udp_echo_server(&s.container.ns, target.into()).expect("udp server");

    // sendmsg4 translates the sendto, recvmsg4 the source recvfrom reports.
    let out = s.in_cgroup(&["python3", "-c", PY_UDP, "sendto", "127.0.0.1", "5353"]);
    assert_eq!(
        python_ok(&out, "sendto/recvfrom 127.0.0.1:5353"),
        "dp-udp 127.0.0.1:5353"
    );
    // connect4 translates the connect, getpeername4 the peer it reports.
    let out = s.in_cgroup(&["python3", "-c", PY_UDP, "connect", "127.0.0.1", "5353"]);
    assert_eq!(
        python_ok(&out, "connect/send/recv 127.0.0.1:5353"),
        "dp-udp 127.0.0.1:5353"
    );

    // Reconnected straight to the container, the socket reports the
    // container: the first connect's translation is forgotten.
    let direct = target.to_string();
    let (ip, port) = direct.split_once(':').expect("ip:port");
    let out = s.in_cgroup(&[
        "python3",
        "-c",
        PY_UDP,
        "reconnect",
        "127.0.0.1",
        "5353",
        ip,
        port,
    ]);
    assert_eq!(
        python_ok(&out, "reconnect to the container"),
        format!("dp-udp {direct}")
    );

    let peers = server.peers();
    assert!(peers.len() >= 3, "{peers:?}");
    assert!(all_from_gateway(&peers), "{peers:?}");
}

#[test]
fn processes_outside_the_cgroup_are_not_translated() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("sockout");
    let target = s.container_addr(80);
    s.publish(Ipv4Addr::UNSPECIFIED, 8080, IPPROTO_TCP, target);
    let server = http_server(&s.container.ns, target.into(), BODY).expect("http server");

    // Same namespace, same command, but the test process's cgroup: nothing
    // listens on 127.0.0.1:8080 in the fake host, so the connect is refused.
    let cmd = curl("http://127.0.0.1:8080/");
    assert_refused(&s.outside_cgroup(&strs(&cmd)), "outside the cgroup");
    assert!(server.peers().is_empty(), "{:?}", server.peers());
    // The control: the same client inside the cgroup is translated.
    let (body, _) = curl_ok(&s.in_cgroup(&strs(&cmd)), "inside the cgroup");
    assert_eq!(body, BODY);
}

/// `bpftool -j <args>` parsed.
fn bpftool_json(args: &[&str]) -> Value {
    let mut argv = vec!["bpftool", "-j"];
    argv.extend_from_slice(args);
    let out = cmd::run(&argv).expect("bpftool");
    if out.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool json {out:?}: {e}"))
}

/// Names of the programs attached to a cgroup, per `bpftool cgroup show`.
fn cgroup_programs(cgroup: &Path) -> BTreeSet<String> {
    let json = bpftool_json(&["cgroup", "show", &cgroup.to_string_lossy()]);
    json.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

fn link_pins(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("links dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains("/cgroup"))
        .collect()
}

#[test]
fn attach_is_refused_twice_and_detach_removes_the_links() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("sockdet");
    let cg = &s.cgroup.path;
    let expected: BTreeSet<String> = host_local::PROGRAMS.iter().map(|p| p.to_string()).collect();
    assert_eq!(cgroup_programs(cg), expected);

    // Each pin is a cgroup link on this cgroup running one of our programs.
    let pins = link_pins(&s.pins.pins().links_dir());
    assert_eq!(pins.len(), host_local::PROGRAMS.len(), "{pins:?}");
    let mut link_ids = Vec::new();
    for pin in &pins {
        let link = bpftool_json(&["link", "show", "pinned", &pin.to_string_lossy()]);
        assert!(
            link["type"] == "cgroup" || link["type"] == 3,
            "{pin:?}: {link}"
        );
        link_ids.push(link["id"].as_u64().expect("link id"));
    }

    // A second attach names the cgroup and changes nothing.
    let root = s.pins.pins().clone();
    let cg2 = cg.clone();
    let (mut dp, err) =
        s.fh.host
            .run_in(move || {
                let mut dp = Dataplane::load(&root).expect("load");
                let err = host_local::attach(&mut dp, &root, &cg2).expect_err("second attach");
                (dp, err)
            })
            .expect("netns");
    assert!(matches!(err, SockError::AlreadyAttached { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*cg.to_string_lossy()),
        "the error names the cgroup: {err}"
    );
    // A directory that is no cgroup v2 is refused by name.
    let not_cg = s.pins.path();
    let err = host_local::attach(&mut dp, s.pins.pins(), not_cg).expect_err("bpffs dir");
    assert!(matches!(err, SockError::NotCgroup2 { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&*not_cg.to_string_lossy()),
        "{err}"
    );
    drop(dp);
    assert_eq!(cgroup_programs(cg), expected, "still attached once");

    let target = s.container_addr(80);
    s.publish(Ipv4Addr::UNSPECIFIED, 8080, IPPROTO_TCP, target);
    let _server = http_server(&s.container.ns, target.into(), BODY).expect("http server");
    let cmd = curl("http://127.0.0.1:8080/");
    curl_ok(&s.in_cgroup(&strs(&cmd)), "before detach");

    host_local::detach(s.pins.pins(), cg).expect("detach");
    assert!(link_pins(&s.pins.pins().links_dir()).is_empty());
    assert!(cgroup_programs(cg).is_empty(), "{:?}", cgroup_programs(cg));
    for id in link_ids {
        let gone = cmd::run(&["bpftool", "link", "show", "id", &id.to_string()]);
        assert!(gone.is_err(), "link {id} still exists after detach");
    }
    assert_refused(&s.in_cgroup(&strs(&cmd)), "after detach");

    // Detaching again says what is missing, and where.
    let err = host_local::detach(s.pins.pins(), cg).expect_err("second detach");
    assert!(matches!(err, SockError::NotAttached { .. }), "{err:?}");
    assert!(err.to_string().contains(&*cg.to_string_lossy()), "{err}");
}

#[test]
fn sockets_of_other_namespaces_in_the_cgroup_are_not_translated() {
    if !dataplane_tests::require_root() {
        return;
    }
    let s = Setup::new("sockns");
    let target = s.container_addr(80);
    s.publish(Ipv4Addr::UNSPECIFIED, 8080, IPPROTO_TCP, target);
    let _server = http_server(&s.container.ns, target.into(), BODY).expect("http server");
    // A container process in the host's cgroup: its 127.0.0.1 is its own.
    let inner = NetNs::new("inner").expect("netns");
    let out = s.in_cgroup_in(&inner, &strs(&curl("http://127.0.0.1:8080/")));
    assert_refused(&out, "127.0.0.1 inside another namespace");
    // The same client in the host namespace is translated.
    let out = s.in_cgroup(&strs(&curl("http://127.0.0.1:8080/")));
    curl_ok(&out, "127.0.0.1 in the host");
}
