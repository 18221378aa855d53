//! Names on user-defined networks (docs/dns.md): the agent's responder on
//! each network's gateway answers the endpoints' names and aliases of that
//! network only, forwards the rest to the host's resolvers (a fake one in
//! the fake host, from a resolv.conf of the test's own), rotates shared
//! aliases, keeps its names across a restart, and carries a steady load.
//! Queries come from a small client on hickory-proto run inside the
//! containers' namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Child,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use dataplane_tests::{cli::Cli, netns::NetNs, topo::FakeHost};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};

const FRONT_GW: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
const BACK_GW: Ipv4Addr = Ipv4Addr::new(10, 92, 0, 1);
/// What the fake upstream answers for `example.test`.
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// What the second fake upstream answers for `other.test`.
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);

/// A fake upstream resolver in the fake host: `name` has `addr`, every
/// other name is NXDOMAIN. Stops (bounded) when dropped.
struct Upstream {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(host: &NetNs, listen: Ipv4Addr, name: &'static str, addr: Ipv4Addr) -> Upstream {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let sock = host
            .run_in(move || UdpSocket::bind((listen, 53)))
            .expect("ns")
            .expect("bind the fake upstream");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let (s, q) = (stop.clone(), queries.clone());
        let handle = thread::spawn(move || {
            // Bounded: at most ten minutes even if the test forgets to stop.
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let mut resp = Message::new();
                resp.set_id(req.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_recursion_desired(req.recursion_desired())
                    .set_recursion_available(true);
                let Some(query) = req.queries().first() else {
                    continue;
                };
                resp.add_query(query.clone());
                let asked = query.name().to_ascii().to_ascii_lowercase();
                if asked.trim_end_matches('.') == name {
                    if query.query_type() == RecordType::A {
                        resp.add_answer(Record::from_rdata(
                            query.name().clone(),
                            60,
                            RData::A(A(addr)),
                        ));
                    }
                } else {
                    resp.set_response_code(ResponseCode::NXDomain);
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, from);
                }
            }
        });
        Upstream {
            stop,
            queries,
            handle: Some(handle),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An answer as the test needs it.
#[derive(Debug)]
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    v4: Vec<Ipv4Addr>,
    ptr: Vec<String>,
    any: usize,
}

fn query_msg(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    m.to_vec().expect("encode")
}

fn parse(bytes: &[u8], id: u16) -> Result<Answer, String> {
    let m = Message::from_vec(bytes).map_err(|e| e.to_string())?;
    if m.id() != id {
        return Err(format!("answer id {} for query {id}", m.id()));
    }
    Ok(Answer {
        code: m.response_code(),
        authoritative: m.authoritative(),
        v4: m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                Some(RData::A(a)) => Some(a.0),
                _ => None,
            })
            .collect(),
        ptr: m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                Some(RData::PTR(p)) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect(),
        any: m.answers().len(),
    })
}

/// One query over UDP from inside `ns`, one try, bounded.
fn ask(ns: &NetNs, server: Ipv4Addr, name: &str, rtype: RecordType) -> Result<Answer, String> {
    let name = name.to_owned();
    ns.run_in(move || -> Result<Answer, String> {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let id = 0x4242;
        sock.send_to(&query_msg(&name, rtype, id), (server, 53))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).map_err(|e| format!("{name}: {e}"))?;
        parse(&buf[..n], id)
    })
    .map_err(|e| e.to_string())?
}

/// One query over TCP (two-byte length, then the message) from `ns`.
fn ask_tcp(ns: &NetNs, server: Ipv4Addr, name: &str) -> Result<Answer, String> {
    use std::io::{Read as _, Write as _};
    let name = name.to_owned();
    ns.run_in(move || -> Result<Answer, String> {
        let dst = SocketAddr::from((server, 53));
        let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let msg = query_msg(&name, RecordType::A, 9);
        let len = u16::try_from(msg.len()).map_err(|e| e.to_string())?;
        s.write_all(&len.to_be_bytes()).map_err(|e| e.to_string())?;
        s.write_all(&msg).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        parse(&buf, 9)
    })
    .map_err(|e| e.to_string())?
}

fn a(ns: &NetNs, server: Ipv4Addr, name: &str) -> Answer {
    ask(ns, server, name, RecordType::A).unwrap_or_else(|e| panic!("{name} A: {e}"))
}

/// Asks until `name` has addresses (a new name answers within the agent's
/// poll), bounded.
fn wait_for(ns: &NetNs, server: Ipv4Addr, name: &str) -> Vec<Ipv4Addr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ask(ns, server, name, RecordType::A);
        match got {
            Ok(a) if !a.v4.is_empty() => return a.v4,
            other if Instant::now() > deadline => panic!("{name} never resolved: {other:?}"),
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct Rig {
    fh: FakeHost,
    cli: Cli,
    dir: PathBuf,
    netns_etc: PathBuf,
    agent: Option<Child>,
}

impl Rig {
    /// A fake host whose agent reads `resolv.conf` and writes the
    /// namespaces' files under the test's own directory; networks `front`
    /// and `back`.
    fn new(tag: &str) -> Rig {
        Rig::with_netns_etc(tag, None)
    }

    /// [`Rig::new`] writing the namespaces' files under `netns_etc`
    /// (None: the test's own directory).
    fn with_netns_etc(tag: &str, netns_etc: Option<&Path>) -> Rig {
        let fh = FakeHost::new(false).expect("fake host");
        let mut cli = Cli::new(&fh.host, tag).expect("cli");
        let dir = cli.state.path().with_extension("dns");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.53\n").expect("resolv");
        let etc = netns_etc.map_or_else(|| dir.join("netns"), Path::to_owned);
        cli.set_config(&format!(
            "[dns]\nresolv_conf = \"{}\"\nnetns_etc = \"{}\"\n",
            dir.join("resolv.conf").display(),
            etc.display()
        ))
        .expect("config");
        cli.run(&["uplink", "add", &fh.uplink]).expect("uplink");
        for (net, subnet) in [("front", "10.91.0.0/24"), ("back", "10.92.0.0/24")] {
            cli.run(&["network", "create", "--subnet", subnet, net])
                .expect("network create");
        }
        let agent = cli.start_agent(&fh.uplink).expect("agent").0;
        Rig {
            fh,
            cli,
            dir,
            netns_etc: etc,
            agent: Some(agent),
        }
    }

    fn connect(&self, net: &str, ns: &NetNs, name: &str, aliases: &[&str]) {
        let mut args = vec!["connect", net, ns.name(), "--name", name];
        for a in aliases {
            args.extend(["--alias", a]);
        }
        self.cli.run(&args).expect("connect");
    }

    /// Stops the agent, runs `between` while none runs, starts it again.
    fn restart(&mut self, between: impl FnOnce()) {
        if let Some(a) = self.agent.take() {
            let status = dataplane_tests::cli::stop_agent(a, libc::SIGTERM).expect("stop");
            assert!(status.success(), "{status}");
        }
        between();
        self.agent = Some(self.cli.start_agent(&self.fh.uplink).expect("agent").0);
    }

    fn netns_file(&self, ns: &NetNs) -> PathBuf {
        self.netns_etc.join(ns.name()).join("resolv.conf")
    }

    fn metric(&self, name: &str) -> u64 {
        let (_, body) = dataplane_tests::traffic::http_get(
            &self.fh.host,
            SocketAddr::from(([127, 0, 0, 1], 9641)),
            "/metrics",
            Duration::from_secs(5),
        )
        .expect("scrape");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}")) as u64
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            let _ = dataplane_tests::cli::stop_agent(a, libc::SIGTERM);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn exists(p: &Path) -> bool {
    p.try_exists().unwrap_or(false)
}

/// What the CLI shows of the names of `front` (web1 with aliases web and
/// api.front, web2 with web) and of the default network.
fn cli_views(rig: &Rig) {
    let ls = rig
        .cli
        .json(&["dns", "ls", "front", "--format", "json"])
        .expect("dns ls");
    let web = ls["names"]
        .as_array()
        .expect("names")
        .iter()
        .find(|r| r["name"] == "web")
        .cloned()
        .expect("web listed");
    assert_eq!(web["addresses"].as_array().map(Vec::len), Some(2), "{ls}");
    assert_eq!(ls["server"], FRONT_GW.to_string());
    let err = rig
        .cli
        .fail(&["dns", "ls", "bridge"])
        .expect("dns ls bridge");
    assert!(err.contains("no names"), "{err}");
    let inspect = rig
        .cli
        .json(&["network", "inspect", "front"])
        .expect("inspect");
    let aliases: Vec<String> = inspect[0]["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .filter(|c| c["Name"] == "web1")
        .flat_map(|c| c["Aliases"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(aliases, ["web", "api.front"]);
}

#[test]
fn names_and_aliases_resolve_within_their_network_only() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut rig = Rig::new("dnsnames");
    let _up = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 53),
        "example.test",
        EXTERNAL,
    );
    let c1 = NetNs::new("c1").expect("ns");
    let c2 = NetNs::new("c2").expect("ns");
    let c3 = NetNs::new("c3").expect("ns");
    rig.connect("front", &c1, "web1", &["web", "API.front"]);
    rig.connect("front", &c2, "web2", &["web"]);
    rig.connect("back", &c3, "db", &[]);
    let bad = rig
        .cli
        .fail(&["connect", "back", c1.name(), "--alias", "bad_name"])
        .expect("bad alias");
    assert!(bad.contains("--alias \"bad_name\""), "{bad}");

    // Each other's names and aliases, any case, with or without the
    // trailing dot and our domain.
    let web1 = wait_for(&c2, FRONT_GW, "web1");
    let web2 = wait_for(&c1, FRONT_GW, "web2.");
    assert_eq!(web1.len(), 1);
    assert_eq!(a(&c2, FRONT_GW, "WEB1.dns.dataplane.").v4, web1);
    assert_eq!(a(&c2, FRONT_GW, "api.front").v4, web1);
    assert_eq!(ask_tcp(&c2, FRONT_GW, "web1").expect("over TCP").v4, web1);
    let answer = a(&c1, FRONT_GW, "web2");
    assert!(answer.authoritative && answer.code == ResponseCode::NoError);
    // Reverse: an endpoint's address gives its name.
    let [o1, o2, o3, o4] = web1[0].octets();
    let rev = ask(
        &c2,
        FRONT_GW,
        &format!("{o4}.{o3}.{o2}.{o1}.in-addr.arpa."),
        RecordType::PTR,
    )
    .expect("PTR");
    assert_eq!(rev.ptr, ["web1.dns.dataplane."], "{rev:?}");
    // No AAAA yet: the name exists, with no IPv6 address.
    let v6 = ask(&c1, FRONT_GW, "web2", RecordType::AAAA).expect("AAAA");
    assert_eq!((v6.code, v6.any), (ResponseCode::NoError, 0));

    // The shared alias: both, and successive answers start differently.
    let firsts: Vec<Ipv4Addr> = (0..4)
        .map(|_| {
            let a = a(&c1, FRONT_GW, "web");
            assert_eq!(a.v4.len(), 2, "{a:?}");
            a.v4[0]
        })
        .collect();
    assert!(
        firsts.contains(&web1[0]) && firsts.contains(&web2[0]),
        "{firsts:?}"
    );

    // Another network's names: not answered (forwarded, NXDOMAIN upstream),
    // and never with that network's address.
    let db = wait_for(&c3, BACK_GW, "db");
    let cross = a(&c1, FRONT_GW, "db");
    assert_eq!(cross.code, ResponseCode::NXDomain, "{cross:?}");
    assert!(cross.v4.is_empty());
    let ours = a(&c1, FRONT_GW, "db.dns.dataplane");
    assert!(
        ours.code == ResponseCode::NXDomain && ours.authoritative,
        "{ours:?}"
    );
    assert_eq!(a(&c3, BACK_GW, "web1").code, ResponseCode::NXDomain);
    assert!(!a(&c3, BACK_GW, "web").v4.contains(&web1[0]));

    // External names through the host's (fake) resolver.
    assert_eq!(a(&c1, FRONT_GW, "example.test").v4, [EXTERNAL]);
    assert_eq!(a(&c3, BACK_GW, "example.test.").v4, [EXTERNAL]);

    cli_views(&rig);

    // iproute2's file for the named namespaces.
    let file = std::fs::read_to_string(rig.netns_file(&c1)).expect("c1 resolv.conf");
    assert!(file.contains(&format!("nameserver {FRONT_GW}\n")), "{file}");
    assert!(exists(&rig.netns_file(&c3)));

    // Counters.
    assert!(rig.metric("dataplane_dns_queries_total") >= 10);
    assert!(rig.metric("dataplane_dns_answers_total") >= 5);
    assert!(rig.metric("dataplane_dns_forwards_total") >= 2);

    // A restart loses no name; meanwhile a query gets no answer (the
    // client retries), never a wrong one.
    rig.restart(|| {
        let during = ask(&c2, FRONT_GW, "web1", RecordType::A);
        assert!(during.is_err(), "answered with no agent: {during:?}");
    });
    assert_eq!(wait_for(&c2, FRONT_GW, "web1"), web1);
    assert_eq!(wait_for(&c1, FRONT_GW, "web2"), web2);
    assert_eq!(a(&c3, BACK_GW, "db").v4, db);

    // Disconnecting takes the name, the alias's address and the file.
    rig.cli
        .run(&["disconnect", "front", "web1"])
        .expect("disconnect");
    let deadline = Instant::now() + Duration::from_secs(5);
    while exists(&rig.netns_file(&c1)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(!exists(&rig.netns_file(&c1)), "c1's resolv.conf stayed");
    assert_eq!(a(&c2, FRONT_GW, "web").v4, web2);
    assert_ne!(a(&c2, FRONT_GW, "web1").code, ResponseCode::NoError);
}

#[test]
fn getent_under_ip_netns_exec_finds_names_through_the_iproute2_file() {
    if !dataplane_tests::require_root() || !dataplane_tests::require_tools("getent", &["getent"]) {
        return;
    }
    // iproute2's own directory: `ip netns exec` looks nowhere else. The
    // files carry this run's unique namespace names and go with the
    // endpoints (and with the namespaces, see `NetNs`'s drop).
    let had_etc = exists(Path::new("/etc/netns"));
    let rig = Rig::with_netns_etc("dnsgetent", Some(Path::new("/etc/netns")));
    let _up = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 53),
        "example.test",
        EXTERNAL,
    );
    let c1 = NetNs::new("c1").expect("ns");
    let c2 = NetNs::new("c2").expect("ns");
    rig.connect("front", &c1, "getent1", &[]);
    rig.connect("front", &c2, "getent2", &["shared-name"]);
    let want = wait_for(&c1, FRONT_GW, "getent2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exists(&rig.netns_file(&c1)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let getent = |name: &str| {
        dataplane_tests::cmd::run_timeout(
            &["ip", "netns", "exec", c1.name(), "getent", "ahostsv4", name],
            Duration::from_secs(20),
        )
    };
    for name in ["getent2", "shared-name", "example.test"] {
        let out = getent(name).unwrap_or_else(|e| panic!("getent {name}: {e:#}"));
        let addr = if name == "example.test" {
            EXTERNAL
        } else {
            want[0]
        };
        assert!(out.contains(&addr.to_string()), "{name}: {out}");
    }
    rig.cli
        .run(&["disconnect", "front", "getent1"])
        .expect("disconnect");
    let deadline = Instant::now() + Duration::from_secs(5);
    while exists(&rig.netns_file(&c1)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !exists(&rig.netns_file(&c1)),
        "the file outlived its endpoint"
    );
    assert!(!exists(&rig.netns_etc.join(c1.name())));
    // The agent first, so it writes nothing behind the namespaces' drop.
    drop((rig, c1, c2));
    if !had_etc {
        // Made by the agent for this test; goes only when empty.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

#[test]
fn a_changed_host_resolv_conf_is_used() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("dnsresolv");
    let _up = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 53),
        "example.test",
        EXTERNAL,
    );
    let up2 = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 54),
        "other.test",
        OTHER,
    );
    let c1 = NetNs::new("c1").expect("ns");
    rig.connect("front", &c1, "one", &[]);
    wait_for(&c1, FRONT_GW, "one");
    assert_eq!(a(&c1, FRONT_GW, "other.test").code, ResponseCode::NXDomain);
    // Written beside and renamed, as editors and resolvconf do.
    let tmp = rig.dir.join("resolv.conf.new");
    std::fs::write(&tmp, "# new\nnameserver 127.0.0.54\n").expect("write");
    std::fs::rename(&tmp, rig.dir.join("resolv.conf")).expect("rename");
    assert_eq!(wait_for(&c1, FRONT_GW, "other.test"), [OTHER]);
    assert!(up2.queries.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_thousand_queries_a_second_for_ten_seconds() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("dnsload");
    let up = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 53),
        "example.test",
        EXTERNAL,
    );
    let c1 = NetNs::new("c1").expect("ns");
    let c2 = NetNs::new("c2").expect("ns");
    rig.connect("front", &c1, "client", &[]);
    rig.connect("front", &c2, "server", &["svc"]);
    let server = wait_for(&c1, FRONT_GW, "server");
    assert_eq!(wait_for(&c1, FRONT_GW, "example.test"), [EXTERNAL]);
    const RATE: u32 = 1000;
    const SECONDS: u32 = 10;
    let result = c1
        .run_in(move || -> Result<(u32, Duration), String> {
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            sock.connect((FRONT_GW, 53)).map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let names = ["server", "svc", "SERVER.dns.dataplane.", "example.test"];
            let start = Instant::now();
            let mut buf = [0u8; 4096];
            for i in 0..RATE * SECONDS {
                // Paced: query i leaves at i milliseconds.
                let due = start + Duration::from_micros(u64::from(i) * 1_000_000 / u64::from(RATE));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let id = (i % 65536) as u16;
                let name = names[i as usize % names.len()];
                sock.send(&query_msg(name, RecordType::A, id))
                    .map_err(|e| format!("query {i}: {e}"))?;
                let n = sock
                    .recv(&mut buf)
                    .map_err(|e| format!("query {i} ({name}): {e}"))?;
                let a = parse(&buf[..n], id).map_err(|e| format!("query {i}: {e}"))?;
                let want = if name == "example.test" {
                    EXTERNAL
                } else {
                    server[0]
                };
                if a.code != ResponseCode::NoError || a.v4 != [want] {
                    return Err(format!("query {i} ({name}): {a:?}"));
                }
            }
            Ok((RATE * SECONDS, start.elapsed()))
        })
        .expect("ns");
    let (n, took) = result.unwrap_or_else(|e| panic!("under load: {e}"));
    assert_eq!(n, 10_000);
    // The pace held: 10 000 answers in about ten seconds, not much more.
    assert!(took < Duration::from_secs(12), "{n} queries took {took:?}");
    // External answers came from the cache, not one upstream query each.
    assert!(
        up.queries.load(Ordering::Relaxed) < 100,
        "{}",
        up.queries.load(Ordering::Relaxed)
    );
    assert_eq!(rig.metric("dataplane_dns_failures_total"), 0);
}

/// `f` on a thread inside the namespace at `path` (a runtime's sandbox,
/// not a harness namespace).
fn in_netns<R: Send>(path: &str, f: impl FnOnce() -> R + Send) -> R {
    thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid fd we own; only this thread moves.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One A query from inside the namespace at `path`.
fn ask_in(path: &str, server: Ipv4Addr, name: &str) -> Result<Answer, String> {
    in_netns(path, || {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        sock.send_to(&query_msg(name, RecordType::A, 7), (server, 53))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).map_err(|e| format!("{name}: {e}"))?;
        parse(&buf[..n], 7)
    })
}

#[test]
fn podman_containers_on_a_dataplane_network_resolve_each_other() {
    use dataplane_tests::podman::{self, Podman};
    if !dataplane_tests::require_root() || !podman::require_podman() {
        return;
    }
    let rig = Rig::new("dnspodman");
    let _up = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 53),
        "example.test",
        EXTERNAL,
    );
    let mut pod = Podman::new(&rig.fh.host, "dnspod").expect("podman");
    // libcni caches results by network name machine-wide: this run's own.
    let net = format!("dpt{}dns", dataplane_tests::run_id());
    let plugin = serde_json::json!({
        "type": "dataplane-cni",
        "socket": rig.cli.socket,
        "ipam": {"type": "dataplane", "subnet": "10.93.0.0/24"},
    });
    pod.add_conflist(
        &net,
        &serde_json::json!({"cniVersion": "1.0.0", "name": net, "plugins": [plugin]}),
    )
    .expect("conflist");
    let gw = Ipv4Addr::new(10, 93, 0, 1);
    for name in ["alpha", "beta"] {
        pod.run_detached(&[
            "--name",
            name,
            "--network",
            &net,
            podman::IMAGE,
            "/bin/sleep",
            "300",
        ])
        .expect("podman run");
    }
    let inspect = |what: &str, c: &str| {
        pod.run(&["inspect", "-f", what, c])
            .expect("inspect")
            .trim()
            .to_owned()
    };
    let ip_of = |c: &str| -> Ipv4Addr {
        inspect(
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            c,
        )
        .parse()
        .expect("ip")
    };
    let (alpha_ip, beta_ip) = (ip_of("alpha"), ip_of("beta"));
    // podman wrote the CNI result's DNS settings into the containers.
    let resolv = pod
        .run(&["exec", "alpha", "cat", "/etc/resolv.conf"])
        .expect("resolv.conf");
    assert!(resolv.contains(&format!("nameserver {gw}")), "{resolv}");
    assert!(resolv.contains("dns.dataplane"), "{resolv}");
    // Each resolves the other by its container name, as its resolver
    // would: to the nameserver of its resolv.conf, from its namespace.
    let alpha_ns = inspect("{{.NetworkSettings.SandboxKey}}", "alpha");
    let beta_ns = inspect("{{.NetworkSettings.SandboxKey}}", "beta");
    let deadline = Instant::now() + Duration::from_secs(10);
    let resolve = |ns: &str, name: &str| loop {
        match ask_in(ns, gw, name) {
            Ok(a) if !a.v4.is_empty() => return a.v4,
            other if Instant::now() > deadline => panic!("{name} from {ns}: {other:?}"),
            _ => thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(resolve(&alpha_ns, "beta"), [beta_ip]);
    assert_eq!(resolve(&beta_ns, "alpha.dns.dataplane."), [alpha_ip]);
    assert_eq!(resolve(&beta_ns, "example.test"), [EXTERNAL]);
    pod.run(&["rm", "-f", "-t", "0", "beta"]).expect("rm beta");
    // Its name goes with it (within the agent's poll).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = ask_in(&alpha_ns, gw, "beta").expect("beta after rm");
        if left.v4.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "beta still answered: {left:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn icc_off_still_answers_and_internal_networks_forward_nothing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("dnsicc");
    let up = Upstream::start(
        &rig.fh.host,
        Ipv4Addr::new(127, 0, 0, 53),
        "example.test",
        EXTERNAL,
    );
    let quiet_gw = Ipv4Addr::new(10, 94, 0, 1);
    let inside_gw = Ipv4Addr::new(10, 95, 0, 1);
    rig.cli
        .run(&[
            "network",
            "create",
            "--subnet",
            "10.94.0.0/24",
            "-o",
            "com.docker.network.bridge.enable_icc=false",
            "quiet",
        ])
        .expect("quiet");
    rig.cli
        .run(&[
            "network",
            "create",
            "--subnet",
            "10.95.0.0/24",
            "--internal",
            "inside",
        ])
        .expect("inside");
    let c1 = NetNs::new("c1").expect("ns");
    let c2 = NetNs::new("c2").expect("ns");
    rig.connect("quiet", &c1, "q1", &[]);
    rig.connect("quiet", &c2, "q2", &[]);
    // The gateway is reachable with icc off: names answer.
    let q2 = wait_for(&c1, quiet_gw, "q2");
    assert_eq!(q2.len(), 1);
    assert_eq!(a(&c1, quiet_gw, "example.test").v4, [EXTERNAL]);
    let c3 = NetNs::new("c3").expect("ns");
    let c4 = NetNs::new("c4").expect("ns");
    rig.connect("inside", &c3, "i1", &[]);
    rig.connect("inside", &c4, "i2", &[]);
    assert_eq!(wait_for(&c3, inside_gw, "i2").len(), 1);
    let before = up.queries.load(Ordering::Relaxed);
    let out = a(&c3, inside_gw, "example.test");
    assert_eq!(out.code, ResponseCode::Refused, "{out:?}");
    assert_eq!(
        up.queries.load(Ordering::Relaxed),
        before,
        "an internal network forwarded"
    );
}

/// AAAA records of `name` as the responder at `server` (either family)
/// answers them from `ns`, retried while the agent opens its sockets
/// (bounded, 10 s).
fn aaaa(ns: &NetNs, server: std::net::IpAddr, name: &str) -> Vec<std::net::Ipv6Addr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let name_owned = name.to_owned();
    loop {
        let name = name_owned.clone();
        let got = ns
            .run_in(move || -> Result<Vec<std::net::Ipv6Addr>, String> {
                let bind = if server.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
                sock.set_read_timeout(Some(Duration::from_secs(2)))
                    .map_err(|e| e.to_string())?;
                let id = 0x6666;
                sock.send_to(&query_msg(&name, RecordType::AAAA, id), (server, 53))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 4096];
                let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
                let m = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
                Ok(m.answers()
                    .iter()
                    .filter_map(|r| match r.data() {
                        Some(RData::AAAA(a)) => Some(a.0),
                        _ => None,
                    })
                    .collect())
            })
            .expect("netns");
        match got {
            Ok(v) if !v.is_empty() => return v,
            _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
            other => panic!("{name_owned} AAAA from {server}: {other:?}"),
        }
    }
}

#[test]
fn ipv6_addresses_resolve_by_name_and_ipv6_only_networks_answer_on_their_ipv6_gateway() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("dns6");
    rig.cli
        .run(&[
            "network",
            "create",
            "--ipv6",
            "--ipv4=false",
            "--subnet",
            "fd00:96::/64",
            "six",
        ])
        .expect("IPv6-only network");
    rig.cli
        .run(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.97.0.0/24",
            "--subnet",
            "fd00:97::/64",
            "dual",
        ])
        .expect("dual-stack network");
    let a = NetNs::new("d6a").expect("netns");
    let b = NetNs::new("d6b").expect("netns");
    let c = NetNs::new("d6c").expect("netns");
    let d = NetNs::new("d6d").expect("netns");
    rig.connect("six", &a, "sixa", &[]);
    rig.cli
        .run(&[
            "connect",
            "six",
            b.name(),
            "--name",
            "sixb",
            "--ip6",
            "fd00:96::b",
        ])
        .expect("connect");
    rig.connect("dual", &c, "duala", &[]);
    rig.cli
        .run(&[
            "connect",
            "dual",
            d.name(),
            "--name",
            "dualb",
            "--ip6",
            "fd00:97::d",
        ])
        .expect("connect");

    let gw6: std::net::IpAddr = "fd00:96::1".parse().expect("addr");
    assert_eq!(
        aaaa(&a, gw6, "sixb"),
        ["fd00:96::b".parse::<std::net::Ipv6Addr>().expect("addr")],
        "an IPv6-only network answers on its IPv6 gateway"
    );
    let gw4 = std::net::IpAddr::V4(Ipv4Addr::new(10, 97, 0, 1));
    assert_eq!(
        aaaa(&c, gw4, "dualb.dns.dataplane"),
        ["fd00:97::d".parse::<std::net::Ipv6Addr>().expect("addr")],
        "a dual-stack endpoint's AAAA"
    );
}
