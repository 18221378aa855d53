//! Prometheus metrics (`dataplane_user::frontends::metrics`): `render` on a fresh pin
//! root (every counter present at 0, a map not pinned yet is no error), the
//! counts after packets went through the programs (BPF_PROG_TEST_RUN), and
//! `serve` over a plain TCP connection: 200 with the OpenMetrics content
//! type, 404/405, an oversized request refused with the server still
//! answering, a silent client timed out without holding up others, a state
//! that cannot be read as 500, and shutdown.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dataplane_common::{drop::DropReason, nat::SUBNET_MASQUERADE, stats::ProtoIndex};
use dataplane_tests::{datapath, packets::PacketBuilder, BpffsDir};
use dataplane_user::{
    control::{
        filter_rules::{FilterArgs, FilterRule},
        model::{Attachment, BridgeConfig, DriverConfig, Endpoint, GatewayMode, Network},
        ports::{PortMapping, Proto},
        state::State,
    },
    datapath::{
        ebpf::Dataplane,
        filter::{self, ResolvedRule},
    },
    frontends::metrics::{self, MAX_REQUEST_HEAD, READ_TIMEOUT},
};

/// Flow, port and rule counters count IP bytes (as `iptables -vL`); drop
/// counters count the frame that was dropped.
const ETH_LEN: usize = 14;

const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;
const CLIENT: [u8; 4] = [192, 0, 2, 2];
const HOST: [u8; 4] = [192, 0, 2, 1];
const C1: [u8; 4] = [172, 17, 0, 2];
/// tc test runs see the namespace's loopback as the device.
const TEST_RUN_IFINDEX: u32 = 1;

// ---------------------------------------------------------------------------
// Reading the exposition format back.

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `name{k="v",...} value`, with the format's label escapes.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut chars = line.chars().peekable();
    let mut name = String::new();
    while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':') {
        name.push(c);
    }
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("no metric name: {line:?}"));
    }
    let mut labels = BTreeMap::new();
    if chars.next_if_eq(&'{').is_some() {
        loop {
            if chars.next_if_eq(&'}').is_some() {
                break;
            }
            let mut key = String::new();
            while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                key.push(c);
            }
            if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
                return Err(format!("bad label in {line:?}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {line:?}")),
                    },
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated label value in {line:?}")),
                }
            }
            if labels.insert(key.clone(), value).is_some() {
                return Err(format!("label {key} twice in {line:?}"));
            }
            match chars.next() {
                Some(',') => {}
                Some('}') => break,
                other => return Err(format!("expected , or }} not {other:?} in {line:?}")),
            }
        }
    }
    if chars.next() != Some(' ') {
        return Err(format!("no space before the value: {line:?}"));
    }
    let rest: String = chars.collect();
    let value = rest
        .parse::<f64>()
        .map_err(|e| format!("value {rest:?} in {line:?}: {e}"))?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Every sample of `text` (OpenMetrics), checking that each belongs to a
/// family declared with HELP and TYPE before it (a counter family `x` has
/// the samples `x_total`), that no series appears twice, and that the text
/// ends with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("no closing # EOF line: {text}"));
    assert!(
        body.is_empty() || body.ends_with('\n'),
        "the last line ends with a line feed"
    );
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            helped.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                kind == "counter" || kind == "gauge",
                "unexpected type: {line}"
            );
            assert!(
                kind != "counter" || !name.ends_with("_total"),
                "counter family named with its samples' _total: {line}"
            );
            assert!(helped.iter().any(|h| h == name), "TYPE before HELP: {line}");
            // The name samples of the family carry.
            let series = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            };
            assert!(
                types.insert(series, kind.to_owned()).is_none(),
                "family declared twice: {line}"
            );
        } else {
            assert!(!line.starts_with('#'), "unknown comment line: {line}");
            let s = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
            assert!(types.contains_key(&s.name), "sample without TYPE: {line}");
            assert!(
                !samples
                    .iter()
                    .any(|o| o.name == s.name && o.labels == s.labels),
                "series twice: {line}"
            );
            samples.push(s);
        }
    }
    samples
}

/// The value of the series `name{labels}`, exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

#[test]
fn the_parser_reads_escapes_and_refuses_junk() {
    let s = parse_sample(r#"x_total{a="q\"\\\n",b=""} 12"#).expect("valid");
    assert_eq!(s.labels["a"], "q\"\\\n");
    assert_eq!(s.labels["b"], "");
    assert_eq!(s.value, 12.0);
    for bad in [
        "x 1 2",
        "x{a=1} 1",
        "{a=\"1\"} 1",
        "x{a=\"1\" 1",
        "x  1",
        "x",
    ] {
        assert!(parse_sample(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------
// render

#[test]
fn render_on_a_fresh_pin_root() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("metrics").expect("bpffs dir");
    let state = State::default();

    // Nothing loaded: no map series, and no error.
    let text = metrics::render(dir.pins(), &state).expect("render without maps");
    let samples = parse(&text);
    assert!(
        samples.iter().all(|s| !s.name.starts_with("dataplane_map")
            && s.name != "dataplane_packets_total"
            && s.name != "dataplane_drops_total"),
        "{text}"
    );
    assert_eq!(get(&samples, "dataplane_networks", &[]), 0.0);
    assert_eq!(get(&samples, "dataplane_endpoints", &[]), 0.0);

    let _dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    let text = metrics::render(dir.pins(), &state).expect("render");
    let samples = parse(&text);
    for p in ProtoIndex::ALL {
        for name in ["dataplane_packets_total", "dataplane_bytes_total"] {
            assert_eq!(get(&samples, name, &[("protocol", p.name())]), 0.0);
        }
    }
    for r in DropReason::ALL {
        for name in ["dataplane_drops_total", "dataplane_dropped_bytes_total"] {
            assert_eq!(get(&samples, name, &[("reason", r.name())]), 0.0);
        }
    }
    for table in ["tcp", "other"] {
        let n = get(&samples, "dataplane_conntrack_entries", &[("table", table)]);
        assert_eq!(n, 0.0);
    }
    let sizes = [
        ("DP_PORTS", 65_536.0),
        ("DP_OPEN_PORTS", 65_536.0),
        ("DP_TRUSTED_IFACES", 1024.0),
        ("DP_SUBNETS", 1024.0),
        ("DP_HOST_ADDRS", 256.0),
        ("DP_UPLINKS", 64.0),
        ("DP_ENDPOINTS", 16_384.0),
        ("DP_CT_TCP", 262_144.0),
        ("DP_CT_OTHER", 65_536.0),
        ("DP_SOCK_REVNAT", 65_536.0),
        ("DP_FLT_SRC", 30_722.0),
        ("DP_FLT_HOST4", 30_722.0),
        ("DP_FLT_SRC6", 30_722.0),
        ("DP_FLT_HOST6", 30_722.0),
        ("DP_FLT_IFACE", 30_722.0),
        ("DP_FLT_PORT", 30_722.0),
        ("DP_FLT_NET", 30_722.0),
    ];
    for (map, max) in sizes {
        assert_eq!(get(&samples, "dataplane_map_entries", &[("map", map)]), 0.0);
        let got = get(&samples, "dataplane_map_max_entries", &[("map", map)]);
        assert_eq!(got, max, "{map}");
    }
    // No uplink, no flow, no published port, no rule: nothing to say.
    for name in [
        "dataplane_snat_flows",
        "dataplane_published_port_flows_total",
        "dataplane_filter_packets_total",
    ] {
        assert!(samples.iter().all(|s| s.name != name), "{name}: {text}");
    }
}

fn run(dp: &mut Dataplane, program: &'static str, packet: &[u8]) -> u32 {
    datapath::run_program(dp, program, packet)
        .expect("test run")
        .0
}

fn network(name: &str, id: &str) -> Network {
    Network {
        id: id.to_owned(),
        name: name.to_owned(),
        driver: DriverConfig::Bridge(BridgeConfig {
            name: "dpt-br".to_owned(),
            icc: true,
            masquerade: true,
            host_binding_ipv4: None,
            gateway_mode: GatewayMode::Nat,
            trusted_host_interfaces: Vec::new(),
        }),
        created: "2024-01-01T00:00:00Z".to_owned(),
        subnet: None,
        gateway: None,
        ip_range: None,
        subnet6: None,
        gateway6: None,
        ip_range6: None,
        enable_ipv6: false,
        enable_ipv4: true,
        internal: false,
        mtu: 1500,
        labels: BTreeMap::new(),
    }
}

/// An endpoint of `network` at C1 publishing 0.0.0.0:8080 -> 80/tcp in
/// counter slot 0 (the slot `datapath::publish` writes).
fn endpoint(name: &str, network: &str) -> Endpoint {
    Endpoint {
        id: format!("{name}-id"),
        name: name.to_owned(),
        network: network.to_owned(),
        netns: PathBuf::from("/var/run/netns/none"),
        attachment: Attachment::Veth {
            host_ifname: "vethdpt".to_owned(),
        },
        ifname: Some("eth0".to_owned()),
        mac: None,
        ipv4: Some(C1.into()),
        ipv6: None,
        published: vec![PortMapping {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
            stats_index: 0,
            stats_index6: None,
        }],
        aliases: Vec::new(),
    }
}

#[test]
fn render_counts_flows_ports_rules_and_maps() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("metricsc").expect("bpffs dir");
    let pins = dir.pins();
    let mut dp = Dataplane::load(pins).expect("load the eBPF object");
    let target = SocketAddrV4::new(C1.into(), 80);
    datapath::publish(pins, Ipv4Addr::UNSPECIFIED, 8080, 6, target).expect("port");
    datapath::host_addr(pins, HOST.into(), 2).expect("host");
    datapath::uplink(pins, TEST_RUN_IFINDEX, HOST.into()).expect("uplink");
    datapath::subnet(pins, Ipv4Addr::new(172, 17, 0, 0), 16, SUBNET_MASQUERADE, 1).expect("subnet");
    // A rule that lets the client in (and counts it), and one that never
    // matches; the label must survive quoting.
    let rule = |id, src: &str, action: &str| {
        let args = FilterArgs {
            src: Some(src.to_owned()),
            dport: Some("80/tcp".to_owned()),
            action: action.to_owned(),
            ..FilterArgs::default()
        };
        FilterRule::new(id, args.parse().expect("valid rule"))
    };
    let rules = vec![
        rule(7, "192.0.2.0/24", "accept"),
        rule(9, "10.0.0.0/8", "drop"),
    ];
    let compiled = filter::compile(&rules, |_| ResolvedRule::default()).expect("compile");
    filter::apply(&mut dp, &compiled).expect("apply");

    // A new flow to the published port (DNAT, filtered after it), a
    // masqueraded one out of the container, a truncated packet.
    let syn = PacketBuilder::tcp(CLIENT, HOST, 40000, 8080).build();
    assert_eq!(run(&mut dp, "dp_uplink_in", &syn), NEXT);
    let ack = PacketBuilder::tcp(CLIENT, HOST, 40000, 8080)
        .tcp_flags(0x10)
        .build();
    assert_eq!(run(&mut dp, "dp_uplink_in", &ack), NEXT, "same flow");
    let dns = PacketBuilder::udp(C1, CLIENT, 5000, 53).build();
    assert_eq!(run(&mut dp, "dp_uplink_out", &dns), NEXT);
    let cut = PacketBuilder::tcp(CLIENT, HOST, 40001, 8080)
        .truncate_l4(10)
        .build();
    assert_eq!(run(&mut dp, "dp_uplink_in", &cut), SHOT);

    let mut state = State::default();
    state
        .networks
        .insert("net1".into(), network("net1", "0123456789ab"));
    state
        .endpoints
        .insert("web-id".into(), endpoint("web", "net1"));
    state.filters = rules;
    let text = metrics::render(pins, &state).expect("render");
    let samples = parse(&text);

    let port = [
        ("proto", "tcp"),
        ("host", "0.0.0.0:8080"),
        ("container", "172.17.0.2:80"),
        ("endpoint", "web"),
        ("network", "net1"),
    ];
    assert_eq!(
        get(&samples, "dataplane_published_port_flows_total", &port),
        1.0,
        "the first packet of the one new flow: {text}"
    );
    assert_eq!(
        get(&samples, "dataplane_published_port_bytes_total", &port),
        (syn.len() - ETH_LEN) as f64
    );
    let accept = [
        ("id", "7"),
        ("rule", "--src 192.0.2.0/24 --dport 80/tcp --action accept"),
    ];
    assert_eq!(
        get(&samples, "dataplane_filter_packets_total", &accept),
        2.0
    );
    assert_eq!(
        get(&samples, "dataplane_filter_bytes_total", &accept),
        (syn.len() + ack.len() - 2 * ETH_LEN) as f64
    );
    let never = [
        ("id", "9"),
        ("rule", "--src 10.0.0.0/8 --dport 80/tcp --action drop"),
    ];
    assert_eq!(get(&samples, "dataplane_filter_packets_total", &never), 0.0);
    let truncated = [("reason", "truncated")];
    assert_eq!(get(&samples, "dataplane_drops_total", &truncated), 1.0);
    assert_eq!(
        get(&samples, "dataplane_dropped_bytes_total", &truncated),
        cut.len() as f64
    );
    let tcp = [("table", "tcp")];
    let other = [("table", "other")];
    assert_eq!(get(&samples, "dataplane_conntrack_entries", &tcp), 2.0);
    assert_eq!(get(&samples, "dataplane_conntrack_entries", &other), 2.0);
    let snat = [("uplink_addr", "192.0.2.1")];
    assert_eq!(
        get(&samples, "dataplane_snat_flows", &snat),
        1.0,
        "one masquerade port in use (the DNAT flow holds none): {text}"
    );
    for (map, n) in [
        ("DP_PORTS", 1.0),
        ("DP_HOST_ADDRS", 1.0),
        ("DP_UPLINKS", 1.0),
        ("DP_SUBNETS", 1.0),
        ("DP_CT_TCP", 2.0),
        ("DP_CT_OTHER", 2.0),
        ("DP_ENDPOINTS", 0.0),
    ] {
        let got = get(&samples, "dataplane_map_entries", &[("map", map)]);
        assert_eq!(got, n, "{map}");
    }
    // Two rules in one generation: the source trie holds their two CIDRs
    // and 0.0.0.0/0, the port map 80/tcp and the wildcard.
    let src = get(&samples, "dataplane_map_entries", &[("map", "DP_FLT_SRC")]);
    assert_eq!(src, 3.0);
    assert_eq!(get(&samples, "dataplane_networks", &[]), 1.0);
    assert_eq!(get(&samples, "dataplane_endpoints", &[]), 1.0);
}

// ---------------------------------------------------------------------------
// serve

struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s
}

fn read_response(mut s: TcpStream) -> Response {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the server closes after answering");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("status line").to_owned();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header name: value");
            (k.to_owned(), v.trim().to_owned())
        })
        .collect();
    let r = Response {
        status,
        headers,
        body: body.to_owned(),
    };
    let len: usize = r
        .header("content-length")
        .expect("content-length")
        .parse()
        .expect("a number");
    assert_eq!(len, r.body.len(), "content-length matches the body");
    assert_eq!(r.header("connection"), Some("close"));
    r
}

fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(raw).expect("send the request");
    read_response(s)
}

fn get_path(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
}

#[test]
fn serve_answers_metrics_and_refuses_the_rest() {
    if !dataplane_tests::require_root() {
        return;
    }
    let dir = BpffsDir::new("metricss").expect("bpffs dir");
    let _dp = Dataplane::load(dir.pins()).expect("load the eBPF object");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let broken = Arc::new(AtomicBool::new(false));
    let state = {
        let broken = Arc::clone(&broken);
        move || {
            if broken.load(Ordering::SeqCst) {
                Err("state.json: boom".to_owned())
            } else {
                Ok(State::default())
            }
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(metrics::serve(
        listener,
        dir.pins().clone(),
        state,
        async move {
            let _ = stopped.await;
        },
    ));

    // A client that connects and says nothing: it must not hold up the
    // others, and is answered 408 once the read timeout passes.
    let silent_since = Instant::now();
    let silent = connect(addr);

    let r = get_path(addr, "/metrics");
    assert_eq!(r.status, "HTTP/1.1 200 OK", "{}", r.body);
    let ct = r.header("content-type").expect("content-type");
    assert_eq!(ct, metrics::CONTENT_TYPE);
    assert!(
        ct.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ct}"
    );
    assert!(
        r.body
            .lines()
            .any(|l| l == "dataplane_drops_total{reason=\"truncated\"} 0"),
        "{}",
        r.body
    );
    assert!(!parse(&r.body).is_empty());
    let q = get_path(addr, "/metrics?name[]=x");
    assert_eq!(q.status, "HTTP/1.1 200 OK", "a query string is ignored");

    for path in ["/", "/metrics/", "/metricsx", "/other"] {
        assert_eq!(
            get_path(addr, path).status,
            "HTTP/1.1 404 Not Found",
            "{path}"
        );
    }
    let post = request(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(post.header("allow"), Some("GET"));
    let junk = request(addr, b"hello\r\n\r\n");
    assert_eq!(junk.status, "HTTP/1.1 400 Bad Request");

    // A head that never ends: refused after MAX_REQUEST_HEAD bytes, not
    // buffered without bound.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(4 * MAX_REQUEST_HEAD, b'a');
    let r = request(addr, &huge);
    assert_eq!(r.status, "HTTP/1.1 431 Request Header Fields Too Large");
    // Headers just under the limit are fine.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(MAX_REQUEST_HEAD - 4, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(request(addr, &big).status, "HTTP/1.1 200 OK");

    // The state cannot be read: 500 saying why, and the server goes on.
    broken.store(true, Ordering::SeqCst);
    let r = get_path(addr, "/metrics");
    assert_eq!(r.status, "HTTP/1.1 500 Internal Server Error");
    assert!(r.body.contains("state.json: boom"), "{}", r.body);
    broken.store(false, Ordering::SeqCst);
    assert_eq!(get_path(addr, "/metrics").status, "HTTP/1.1 200 OK");

    // Everything above was answered while the silent client was waiting.
    assert!(
        silent_since.elapsed() < READ_TIMEOUT,
        "requests took too long"
    );
    let r = read_response(silent);
    assert_eq!(r.status, "HTTP/1.1 408 Request Timeout");
    assert!(silent_since.elapsed() >= READ_TIMEOUT);

    // A client that shuts down its side right after its request (HTTP/1.0,
    // as the agent tests' client does) is answered.
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.0\r\nConnection: close\r\n\r\n")
        .expect("send");
    s.shutdown(Shutdown::Write).expect("half close");
    let r = read_response(s);
    assert!(r.status.ends_with(" 200 OK"), "{}: {}", r.status, r.body);

    // A client that closes halfway gets nothing, and costs nothing.
    let mut half = connect(addr);
    half.write_all(b"GET /metr").expect("send");
    half.shutdown(Shutdown::Write).expect("half close");
    let mut rest = Vec::new();
    half.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty());

    stop.send(()).expect("server still running");
    rt.block_on(server)
        .expect("server task")
        .expect("serve returns Ok on shutdown");
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed after shutdown"
    );
}
