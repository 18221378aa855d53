//! The agent as a service: it can be restarted or killed at any moment
//! without dropping traffic, because the datapath (programs, maps, links) is
//! pinned and does not belong to the agent's process.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::{api, Cli},
    netns::NetNs,
    topo::FakeHost,
    traffic::tcp_echo_server,
};

const T: Duration = Duration::from_secs(5);

fn start_agent(cli: &Cli, fh: &FakeHost) -> Child {
    cli.start_agent(&fh.uplink).expect("agent").0
}

fn stop(child: Child, signal: i32) {
    let status = dataplane_tests::cli::stop_agent(child, signal).expect("stop agent");
    if signal == libc::SIGTERM {
        assert!(status.success(), "agent exit after SIGTERM: {status}");
    }
}

/// One connection that keeps echoing numbered 4 KiB blocks until told to
/// stop, checking every byte that comes back.
struct Stream {
    handle: thread::JoinHandle<Result<u64, String>>,
}

impl Stream {
    fn start(ns: &NetNs, dst: SocketAddr, id: u32, stop: Arc<AtomicBool>) -> Stream {
        let mut conn = ns
            .run_in(move || TcpStream::connect_timeout(&dst, T))
            .expect("ns")
            .unwrap_or_else(|e| panic!("connection {id} to {dst}: {e}"));
        let handle = thread::spawn(move || -> Result<u64, String> {
            conn.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
            conn.set_write_timeout(Some(T)).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let block: Vec<u8> = (0..4096u32)
                    .map(|i| (i.wrapping_mul(31) ^ id ^ rounds as u32) as u8)
                    .collect();
                conn.write_all(&block)
                    .map_err(|e| format!("conn {id} round {rounds}: write: {e}"))?;
                let mut back = vec![0u8; block.len()];
                conn.read_exact(&mut back)
                    .map_err(|e| format!("conn {id} round {rounds}: read: {e}"))?;
                if back != block {
                    return Err(format!("conn {id} round {rounds}: corrupted"));
                }
                rounds += 1;
                thread::sleep(Duration::from_millis(10));
            }
            Ok(rounds)
        });
        Stream { handle }
    }
}

#[test]
fn fifty_connections_survive_five_restarts_and_two_kills() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "restart50").expect("cli");
    let mut agent = start_agent(&cli, &fh);
    let web = NetNs::new("web").expect("netns");
    let out = NetNs::new("out").expect("netns");
    cli.run(&["connect", "bridge", web.name(), "-p", "8080:80"])
        .expect("web");
    cli.run(&["connect", "bridge", out.name()]).expect("out");
    let _inbound = tcp_echo_server(&web, SocketAddr::from(([172, 17, 0, 2], 80))).expect("server");
    let _outside =
        tcp_echo_server(&fh.client, SocketAddr::from((fh.client_ip, 9000))).expect("server");

    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for id in 0..25 {
        // Through the published port, from the external client.
        streams.push(Stream::start(
            &fh.client,
            SocketAddr::from((fh.host_ip, 8080)),
            id,
            stop_flag.clone(),
        ));
        // Through masquerade, from a container to the outside.
        streams.push(Stream::start(
            &out,
            SocketAddr::from((fh.client_ip, 9000)),
            100 + id,
            stop_flag.clone(),
        ));
    }
    thread::sleep(Duration::from_millis(500));
    for round in 0..7 {
        // Rounds 2 and 5 kill the agent outright; the others stop it.
        let signal = if round == 2 || round == 5 {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        stop(agent, signal);
        thread::sleep(Duration::from_millis(300));
        agent = start_agent(&cli, &fh);
        thread::sleep(Duration::from_millis(300));
    }
    thread::sleep(Duration::from_millis(500));
    stop_flag.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        match s.handle.join().expect("stream thread") {
            Ok(rounds) if rounds >= 10 => {}
            Ok(rounds) => failures.push(format!("stream {i}: only {rounds} rounds")),
            Err(e) => failures.push(e),
        }
    }
    stop(agent, libc::SIGTERM);
    assert!(
        failures.is_empty(),
        "{} of 50 connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_cli_talks_to_the_agent_and_only_root_may() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(true).expect("fake host");
    let cli = Cli::new(&fh.host, "api").expect("cli");
    // Without an agent the CLI answers itself.
    let st = cli.json(&["status", "--format", "json"]).expect("status");
    assert_eq!(st["server"], "cli", "{st}");
    let agent = start_agent(&cli, &fh);
    let st = cli.json(&["status", "--format", "json"]).expect("status");
    assert_eq!(st["server"], "agent", "{st}");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(agent.id())));
    // Prometheus metrics on loopback (of the host namespace the agent runs in).
    let (code, body) = dataplane_tests::traffic::http_get(
        &fh.host,
        SocketAddr::from(([127, 0, 0, 1], 9641)),
        "/metrics",
        T,
    )
    .expect("scrape");
    assert_eq!(code, 200);
    assert!(body.contains("dataplane_networks 3"), "{body}");
    assert!(
        body.contains("dataplane_drops_total{reason=\"truncated\"}"),
        "{body}"
    );

    // The socket is root's alone, and a refused client does not fall back
    // to working on the state itself.
    let mode = std::fs::metadata(&cli.socket)
        .expect("socket")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let bin = dataplane_tests::dataplane_bin().expect("bin");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .arg("--socket")
        .arg(&cli.socket)
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(cli.state.path())
        .args(["network", "ls"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a non-root user used the API");
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Concurrent calls are serialised by the agent: 20 connects at once all
    // succeed with distinct addresses.
    let nss: Vec<NetNs> = (0..20)
        .map(|i| NetNs::new(&format!("p{i}")).expect("netns"))
        .collect();
    let handles: Vec<_> = nss
        .iter()
        .map(|ns| {
            let mut cmd = cli.command(&["connect", "bridge", ns.name()]).expect("cmd");
            thread::spawn(move || cmd.output())
        })
        .collect();
    for h in handles {
        let out = h.join().expect("thread").expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let net = cli
        .json(&["network", "inspect", "bridge"])
        .expect("inspect");
    let ips: std::collections::BTreeSet<String> = net[0]["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .map(|c| c["IPv4Address"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ips.len(), 20, "{ips:?}");

    // Malformed requests get an error answer and change nothing.
    for raw in [
        "not json\n",
        "{\"op\":\"network_rm\"}\n",
        "{\"op\":\"fly\"}\n",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&cli.socket).expect("connect");
        s.set_read_timeout(Some(T)).expect("timeout");
        s.write_all(raw.as_bytes()).expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        assert!(answer.contains("\"error\""), "{raw:?}: {answer}");
    }
    assert_eq!(
        cli.json(&["network", "inspect", "bridge"])
            .expect("inspect"),
        net
    );
    stop(agent, libc::SIGTERM);
    assert!(
        !cli.socket.exists(),
        "the agent removes its socket when it stops"
    );
}

#[test]
fn a_kill_during_500_api_operations_leaves_a_state_the_next_start_accepts() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(true).expect("fake host");
    let cli = Cli::new(&fh.host, "ops500").expect("cli");
    let agent = start_agent(&cli, &fh);
    let nss: Vec<NetNs> = (0..8)
        .map(|i| NetNs::new(&format!("o{i}")).expect("netns"))
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pid = agent.id() as i32;
    let killer = {
        let done = done.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while done.load(Ordering::Relaxed) < 250 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            // SAFETY: kill(2) on the agent this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    // 500 operations: connect with a published port, publish one more,
    // unpublish it, disconnect; repeated over 8 namespaces. Until the kill
    // they go through the agent; after it, nobody answers on the socket and
    // they fail (the test then carries on in-process with the CLI).
    let mut failed = Vec::new();
    let mut connected = std::collections::BTreeMap::new();
    for i in 0..125u32 {
        let ns = &nss[(i % 8) as usize];
        let name = format!("e{}", i % 8);
        let ops = [
            serde_json::json!({"op": "connect", "args": {"network": "bridge", "netns": ns.path(), "name": name, "publish": [format!("{}:80", 20000 + i)]}}),
            serde_json::json!({"op": "publish_add", "network": "bridge", "endpoint": name, "specs": [format!("{}:81", 30000 + i)]}),
            serde_json::json!({"op": "publish_rm", "network": "bridge", "endpoint": name, "specs": [format!("{}:81", 30000 + i)]}),
            serde_json::json!({"op": "disconnect", "network": "bridge", "container": name}),
        ];
        // The last eight iterations (one per namespace) leave their
        // endpoint connected, so the end state has endpoints to check.
        let take = if i >= 117 { 3 } else { 4 };
        for op in &ops[..take] {
            let result = if cli.socket.exists() && killer_alive(&done) {
                api(&cli.socket, op)
            } else {
                Err("agent killed".into())
            };
            if let Err(e) = result {
                // After the kill: the same operation through the CLI, which
                // works on the state itself.
                let args = cli_args(op);
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                if let Err(e2) = cli.run(&argv) {
                    failed.push(format!("{op}: {e} / {e2:#}"));
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
        if take == 3 {
            connected.insert(name, ns.name().to_owned());
        } else {
            connected.remove(&name);
        }
    }
    killer.join().expect("killer");
    let mut agent = agent;
    let _ = agent.wait();
    // At most the operation in flight at the kill may have failed halfway.
    assert!(failed.len() <= 1, "{failed:#?}");

    // The next start accepts the state, and the kernel matches it.
    let agent = start_agent(&cli, &fh);
    let net = cli
        .json(&["network", "inspect", "bridge"])
        .expect("inspect");
    let containers = net[0]["Containers"]
        .as_object()
        .expect("containers")
        .clone();
    let state = cli.stored_state().expect("stored state");
    let endpoints = state["endpoints"].as_object().expect("endpoints");
    assert_eq!(endpoints.len(), containers.len());
    let host_links = fh
        .host
        .ip_json(&["-d", "link", "show", "master", "dp0"])
        .expect("ports of dp0");
    let ports: std::collections::BTreeSet<String> = host_links
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    let mut published = 0;
    for ep in endpoints.values() {
        let host_if = ep["attachment"]["host_ifname"]
            .as_str()
            .expect("veth endpoint");
        assert!(ports.contains(host_if), "{host_if} on dp0: {ports:?}");
        let ns = ep["netns"].as_str().expect("netns");
        let ns = nss
            .iter()
            .find(|n| n.path().to_string_lossy() == ns)
            .expect("our namespace");
        let addrs = ns.ip_json(&["addr", "show", "eth0"]).expect("addr");
        let ip = ep["ipv4"].as_str().expect("ipv4");
        assert!(
            addrs.to_string().contains(ip),
            "{ip} in {}: {addrs}",
            ns.name()
        );
        published += ep["published"].as_array().map(Vec::len).unwrap_or(0);
    }
    assert_eq!(
        ports.len(),
        endpoints.len(),
        "no veth on dp0 without an endpoint: {ports:?}"
    );
    let nat = cli.json(&["nat", "ls", "--format", "json"]).expect("nat");
    assert_eq!(nat["dnat"].as_array().map(Vec::len), Some(published));
    let dump = dataplane_tests::cmd::run(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &cli.pins.path().join("DP_PORTS").to_string_lossy(),
    ])
    .expect("dump DP_PORTS");
    let entries: serde_json::Value = serde_json::from_str(&dump).expect("json");
    assert_eq!(
        entries.as_array().map(Vec::len),
        Some(published),
        "DP_PORTS matches the state"
    );
    assert_eq!(connected.len(), endpoints.len(), "{connected:?}");
    stop(agent, libc::SIGTERM);
}

/// Whether the kill has not happened yet.
fn killer_alive(done: &std::sync::atomic::AtomicUsize) -> bool {
    done.load(Ordering::Relaxed) < 250
}

/// The CLI arguments for an API request of the loop above.
fn cli_args(op: &serde_json::Value) -> Vec<String> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    match op["op"].as_str().unwrap_or_default() {
        "connect" => vec![
            "connect".into(),
            s(&op["args"]["network"]),
            s(&op["args"]["netns"]),
            "--name".into(),
            s(&op["args"]["name"]),
            "-p".into(),
            s(&op["args"]["publish"][0]),
        ],
        "publish_add" => vec![
            "publish".into(),
            "add".into(),
            s(&op["network"]),
            s(&op["endpoint"]),
            s(&op["specs"][0]),
        ],
        "publish_rm" => vec![
            "publish".into(),
            "rm".into(),
            s(&op["network"]),
            s(&op["endpoint"]),
            s(&op["specs"][0]),
        ],
        "disconnect" => vec!["disconnect".into(), s(&op["network"]), s(&op["container"])],
        other => panic!("no CLI form for {other}"),
    }
}
