//! The front doors under fuzzed input (issue 18): what arrives from outside
//! the agent — API request lines, Docker's plugin bodies, CNI network
//! configurations, the TOML config, state files — mutated from valid seeds
//! (`dataplane_tests::fuzz::text`: hostile JSON values, byte damage,
//! splices), seeded and bounded. Each parser must return, never panic; an
//! error must say what it refused. Requests the manager carries out must
//! leave the state as it was when refused, and what was accepted must be
//! what the state files hold. No root needed: the manager runs on its fake
//! host and recording datapath.
//!
//! A panicking input is written to `tests/fixtures/fuzz/front/found/`
//! (replay it by moving it up into `tests/fixtures/fuzz/front/`, where
//! every file is run first, every time).

use std::{
    collections::BTreeMap,
    fs,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dataplane_tests::fuzz::{
    rng::Rng,
    text::{mutate, mutate_json_typed},
};
use dataplane_user::{
    api::Request,
    config::Config,
    control::{
        filter_rules::{parse_request, FilterArgs},
        host::FakeHost,
        manager::{ConnectArgs, Manager, NetworkError},
        model::CreateArgs,
        state::StateStore,
    },
    datapath::RecordingDatapath,
    frontends::{cni::config::NetConf, docker::protocol::Call},
};
use serde_json::json;

/// Inputs per parser, and the time any one target may take.
const CASES: usize = 4000;
const BOUND: Duration = Duration::from_secs(60);
const SEED: u64 = 0x18f0;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/front")
}

/// Runs `check` on the fixtures of `target`, then on `CASES` mutations of
/// `seeds`; every input that panics is saved and named in the failure.
fn fuzz(target: &str, seeds: &[&[u8]], check: impl Fn(&[u8])) {
    let dir = fixtures();
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{target}-")) {
                inputs.push((name, fs::read(e.path()).expect("fixture")));
            }
        }
    }
    let mut rng = Rng::new(SEED ^ target.len() as u64);
    let deadline = Instant::now() + BOUND;
    let mut panics = Vec::new();
    let mut run = |label: String, input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            let found = dir.join("found");
            let _ = fs::create_dir_all(&found);
            let path = found.join(format!("{target}-{label}.bin"));
            let _ = fs::write(&path, input);
            panics.push(path);
        }
    };
    for (name, input) in &inputs {
        run(name.clone(), input);
    }
    for seed in seeds {
        run("seed".into(), seed);
    }
    for i in 0..CASES {
        if Instant::now() > deadline {
            break;
        }
        let input = mutate(&mut rng, seeds);
        run(format!("{SEED:x}-{i}"), &input);
    }
    assert!(
        panics.is_empty(),
        "{target}: inputs that panicked: {panics:?}"
    );
}

const NET: &str = "3fa3e4ab8d5c2b8e6b0c4d7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";
const EP: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";

#[test]
fn docker_plugin_bodies_never_panic() {
    let create_network = json!({
        "NetworkID": NET,
        "Options": {
            "com.docker.network.enable_ipv6": true,
            "com.docker.network.generic": {"com.docker.network.bridge.name": "dpfz0", "mtu": "1400"}
        },
        "IPv4Data": [{"AddressSpace": "", "Pool": "172.30.0.0/16", "Gateway": "172.30.0.1/16"}],
        "IPv6Data": [{"AddressSpace": "", "Pool": "fd00:30::/64", "Gateway": "fd00:30::1/64"}]
    });
    let create_endpoint = json!({
        "NetworkID": NET, "EndpointID": EP,
        "Interface": {"Address": "172.30.0.2/16", "AddressIPv6": "fd00:30::2/64", "MacAddress": "02:42:ac:1e:00:02"},
        "Options": {
            "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}],
            "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]
        }
    });
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/abc", "Options": {}});
    let external = json!({
        "NetworkID": NET, "EndpointID": EP,
        "Options": {"com.docker.network.portmap": [{"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353}]}
    });
    let ids = json!({"NetworkID": NET, "EndpointID": EP});
    let bodies: Vec<Vec<u8>> = [create_network, create_endpoint, join, external, ids]
        .iter()
        .map(|v| serde_json::to_vec(v).expect("json"))
        .collect();
    let seeds: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let methods = [
        "Plugin.Activate",
        "NetworkDriver.GetCapabilities",
        "NetworkDriver.CreateNetwork",
        "NetworkDriver.DeleteNetwork",
        "NetworkDriver.CreateEndpoint",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.EndpointOperInfo",
        "NetworkDriver.Join",
        "NetworkDriver.Leave",
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.AllocateNetwork",
        "",
        "NetworkDriver.",
    ];
    fuzz("docker", &seeds, |body| {
        for method in methods {
            if let Err(e) = Call::parse(method, body) {
                let text = e.to_string();
                assert!(!text.is_empty() && text.contains(method), "{text}");
            }
        }
    });
}

#[test]
fn cni_configurations_never_panic() {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "dpnet",
        "type": "dataplane",
        "socket": "/run/dataplane/dataplane.sock",
        "ipam": {"ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], [{"subnet": "fd00:88::/64"}]]},
        "runtimeConfig": {
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "0.0.0.0"}],
            "ips": ["10.88.0.9/16"], "mac": "02:00:00:00:00:09"
        },
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.88.0.9/16", "interface": 0}]}
    });
    let list = json!({
        "cniVersion": "0.4.0", "name": "dpnet", "type": "dataplane",
        "ipam": {"type": "host-local", "subnet": "10.89.0.0/24"}
    });
    let a = serde_json::to_vec(&conf).expect("json");
    let b = serde_json::to_vec(&list).expect("json");
    fuzz("cni", &[&a, &b], |stdin| {
        if let Err(e) = NetConf::parse(stdin, "/run/dataplane/dataplane.sock") {
            assert!(!e.to_string().is_empty());
        }
    });
}

#[test]
fn config_files_never_panic() {
    let seed = br#"state_dir = "/var/lib/dataplane"
bpffs_root = "/sys/fs/bpf/dataplane"
uplinks = ["eth0"]
interval_seconds = 10
host_cgroup = "/sys/fs/cgroup"
metrics_address = "127.0.0.1:9641"
docker_socket = "off"
fast_path = true
default_bridge_ipv6 = false
max_connections = 256
[conntrack]
tcp_established = 21600
tcp_syn = 60
tcp_closing = 10
other = 60
[masquerade]
port_min = 32768
port_max = 60999
[dns]
enabled = true
cache_size = 1024
"#;
    fuzz("config", &[seed], |text| {
        let text = String::from_utf8_lossy(text);
        if let Err(e) = Config::parse(Path::new("fuzz.toml"), &text) {
            let msg = e.to_string();
            assert!(msg.contains("fuzz.toml"), "the error names no file: {msg}");
        }
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A temporary state directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        Dir(std::env::temp_dir().join(dataplane_tests::unique_name(tag)))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

type M = Manager<RecordingDatapath, FakeHost>;

/// The manager-level requests of the API, carried out as the API server
/// does (`api/server.rs`); None for requests the manager does not run.
async fn carry_out(m: &mut M, req: Request) -> Option<Result<(), String>> {
    let e = |e: NetworkError| e.to_string();
    let r = match req {
        Request::NetworkCreate { args } => match args.parse() {
            Ok(a) => m.create(a).await.map(drop).map_err(e),
            Err(err) => Err(err.to_string()),
        },
        Request::NetworkRm { names, force } => m.remove(&names, force).await.map(drop).map_err(e),
        Request::Connect { args } => m.connect(&args).await.map(drop).map_err(e),
        Request::Disconnect { network, container } => {
            m.disconnect(&network, &container).await.map_err(e)
        }
        Request::PublishAdd {
            network,
            endpoint,
            specs,
        } => m
            .publish_add(&network, &endpoint, &specs)
            .await
            .map(drop)
            .map_err(e),
        Request::PublishRm {
            network,
            endpoint,
            specs,
        } => m
            .publish_rm(&network, &endpoint, &specs)
            .await
            .map(drop)
            .map_err(e),
        Request::UplinkAdd { iface } => m.uplink_add(&iface).await.map_err(e),
        Request::UplinkRm { iface } => m.uplink_rm(&iface).await.map_err(e),
        Request::FilterAdd { args, first } => match args.parse() {
            Ok(spec) => m.filter_add(spec, first).await.map(drop).map_err(e),
            Err(err) => Err(err.to_string()),
        },
        Request::FilterAddMany { rules, first } => match parse_request(&rules) {
            Ok(specs) => m.filter_add_many(specs, first).await.map(drop).map_err(e),
            Err(err) => Err(err.to_string()),
        },
        Request::FilterRm { id } => m.filter_rm(id).await.map_err(e),
        Request::FilterRmMany { ids } => m.filter_rm_many(&ids).await.map_err(e),
        _ => return None,
    };
    Some(r)
}

fn request_seeds() -> Vec<Vec<u8>> {
    let create = |name: &str, subnet: &[&str], ipv6: bool| Request::NetworkCreate {
        args: CreateArgs {
            name: name.into(),
            driver: "bridge".into(),
            subnet: subnet.iter().map(|s| (*s).to_owned()).collect(),
            ipv6,
            options: vec!["com.docker.network.bridge.enable_icc=false".into()],
            ..CreateArgs::default()
        },
    };
    let connect = |netns: &str, ports: &[&str]| Request::Connect {
        args: ConnectArgs {
            network: "n1".into(),
            netns: Some(netns.into()),
            name: Some(format!("{netns}-ep")),
            publish: ports.iter().map(|p| p.parse().expect("spec")).collect(),
            ..ConnectArgs::default()
        },
    };
    let filter = |src: &str| Request::FilterAdd {
        args: FilterArgs {
            src: Some(src.into()),
            dport: Some("80/tcp".into()),
            action: "drop".into(),
            ..FilterArgs::default()
        },
        first: false,
    };
    let reqs = [
        create("n2", &["10.77.0.0/24"], false),
        create("n6", &["10.78.0.0/24", "fd00:78::/64"], true),
        connect("c1", &["8080:80", "5353:53/udp"]),
        connect("c2", &["127.0.0.1:9000-9001:7000-7001"]),
        Request::PublishAdd {
            network: "n1".into(),
            endpoint: "c1-ep".into(),
            specs: vec!["8443:443".parse().expect("spec")],
        },
        Request::PublishRm {
            network: "n1".into(),
            endpoint: "c1-ep".into(),
            specs: vec!["8080:80".parse().expect("spec")],
        },
        Request::Disconnect {
            network: "n1".into(),
            container: "c2".into(),
        },
        filter("198.51.100.0/24"),
        filter("2001:db8::/32"),
        Request::FilterRm { id: 1 },
        Request::FilterRmMany { ids: vec![2, 1] },
        Request::NetworkRm {
            names: vec!["n2".into()],
            force: false,
        },
        Request::UplinkAdd {
            iface: "eth0".into(),
        },
    ];
    reqs.iter()
        .map(|r| serde_json::to_vec(r).expect("json"))
        .collect()
}

/// Hostile request lines through the manager: a refused request changes
/// nothing, and the state files hold what the manager holds.
#[test]
fn api_requests_change_all_or_nothing() {
    let seeds = request_seeds();
    let request_values: Vec<serde_json::Value> = seeds
        .iter()
        .map(|s| serde_json::from_slice(s).expect("json"))
        .collect();
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let dir = Dir::new("fzapi");
    let rt = rt();
    let mut rng = Rng::new(SEED);
    let deadline = Instant::now() + BOUND;
    let mut m: M = rt.block_on(async {
        let host = FakeHost::new();
        for ns in ["c1", "c2", "c3"] {
            host.add_netns(ns);
        }
        Manager::open_with(&dir.0, RecordingDatapath::default(), host)
            .await
            .expect("open")
    });
    let args = CreateArgs {
        name: "n1".into(),
        driver: "bridge".into(),
        subnet: vec!["172.18.0.0/16".into()],
        ..CreateArgs::default()
    };
    rt.block_on(m.create(args.parse().expect("args")))
        .expect("n1");
    let (mut refused, mut accepted, mut unparsed) = (0u32, 0u32, 0u32);
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..CASES / 4 {
        if Instant::now() > deadline {
            break;
        }
        let line = if i < seeds.len() {
            seeds[i].to_vec()
        } else if rng.chance(70) {
            // Typed: past the decoder, into the checks behind it.
            let seed = request_values[rng.below(request_values.len())].clone();
            let mut v = mutate_json_typed(&mut rng, &seed);
            if rng.chance(40) {
                v = mutate_json_typed(&mut rng, &v);
            }
            serde_json::to_vec(&v).expect("json")
        } else {
            mutate(&mut rng, &seeds)
        };
        let Ok(req) = serde_json::from_slice::<Request>(&line) else {
            // The server answers a line that is no request with an error
            // and nothing else happens.
            unparsed += 1;
            continue;
        };
        let before = m.state().clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(carry_out(&mut m, req.clone()))
        }));
        let Ok(outcome) = outcome else {
            panic!(
                "request {} panicked the manager",
                String::from_utf8_lossy(&line)
            );
        };
        match outcome {
            None => continue,
            Some(Ok(())) => accepted += 1,
            Some(Err(msg)) => {
                refused += 1;
                assert!(!msg.is_empty(), "an empty error for {req:?}");
                assert_eq!(
                    m.state(),
                    &before,
                    "refused ({msg}) but changed: {}",
                    String::from_utf8_lossy(&line)
                );
                let word = msg.split_whitespace().next().unwrap_or("").to_owned();
                *reasons.entry(word).or_default() += 1;
            }
        }
        if i.is_multiple_of(25) {
            // What the manager holds is what the files hold.
            let want = m.state().clone();
            let (dp, host) = m.into_parts();
            m = rt
                .block_on(Manager::open_with(&dir.0, dp, host))
                .expect("reopen");
            assert_eq!(
                m.state(),
                &want,
                "the state files differ after {i} requests"
            );
        }
    }
    eprintln!(
        "api fuzz: {accepted} accepted, {refused} refused, {unparsed} not requests; refusals by first word: {reasons:?}"
    );
    assert!(
        accepted > 0 && refused > 0,
        "the fuzz reached no outcome of one kind"
    );
    drop(m);
}

/// State files damaged every way: loading returns the state, or an error,
/// never a panic, and a damaged file is never taken for no state at all.
#[test]
fn damaged_state_files_are_an_error_not_a_panic() {
    let src = Dir::new("fzstate");
    let rt = rt();
    rt.block_on(async {
        let host = FakeHost::new();
        host.add_netns("c1");
        let mut m: M = Manager::open_with(&src.0, RecordingDatapath::default(), host)
            .await
            .expect("open");
        for (name, subnet) in [("n1", "172.18.0.0/16"), ("n2", "10.66.0.0/24")] {
            let args = CreateArgs {
                name: name.into(),
                driver: "bridge".into(),
                subnet: vec![subnet.into()],
                ..CreateArgs::default()
            };
            m.create(args.parse().expect("args")).await.expect("create");
        }
        let connect = ConnectArgs {
            network: "n1".into(),
            netns: Some("c1".into()),
            publish: vec!["8080:80".parse().expect("spec")],
            ..ConnectArgs::default()
        };
        m.connect(&connect).await.expect("connect");
    });
    let snapshot = fs::read(src.0.join("state.json")).unwrap_or_default();
    let journal = fs::read(src.0.join("state.journal")).unwrap_or_default();
    assert!(!snapshot.is_empty(), "no state.json was written");
    let work = Dir::new("fzstate2");
    let which = std::cell::Cell::new(0u32);
    fuzz("state", &[&snapshot, &journal], |damaged| {
        let _ = fs::remove_dir_all(&work.0);
        fs::create_dir_all(&work.0).expect("dir");
        // Damage one file, keep the other as it was.
        let n = which.get();
        which.set(n + 1);
        let (snap, jour) = if n.is_multiple_of(2) {
            (damaged, journal.as_slice())
        } else {
            (snapshot.as_slice(), damaged)
        };
        fs::write(work.0.join("state.json"), snap).expect("write");
        fs::write(work.0.join("state.journal"), jour).expect("write");
        let mut store = StateStore::open(&work.0).expect("open");
        if let Ok(None) = store.load() {
            assert!(
                snap.iter().all(u8::is_ascii_whitespace),
                "a damaged state.json was taken for no state"
            );
        }
    });
}
