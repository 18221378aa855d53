//! Docker's remote driver with IPv6, against a real dockerd in a fake host:
//! `docker network create --ipv6 -d <our driver>` (Docker's `IPv6Data`),
//! containers given their IPv6 address by Docker's IPAM (`AddressIPv6`)
//! and the IPv6 gateway by our Join (`GatewayIPv6`), reaching each other
//! and the gateway over IPv6, shown by our `network inspect`; then
//! `docker rm` and `docker network rm` leave nothing behind.

use std::{net::SocketAddr, process::Child, time::Duration};

use dataplane_tests::{
    cli::{stop_agent, Cli},
    docker::{self, Dockerd, PluginSocket},
    topo::FakeHost,
    traffic::http_get,
};

const T: Duration = Duration::from_secs(5);
const SUBNET: &str = "10.95.0.0/24";
const SUBNET6: &str = "fd00:95::/64";

/// A fake host with the agent serving the Docker driver on its own
/// plugin socket; stopped and cleaned up on drop.
struct Rig {
    fh: FakeHost,
    cli: Cli,
    plugin: PluginSocket,
    agent: Option<Child>,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let fh = FakeHost::new(false).expect("fake host");
        let cli = Cli::new(&fh.host, tag).expect("cli");
        cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");
        let plugin = PluginSocket::new("dk6").expect("plugin socket");
        let socket = plugin.path.display().to_string();
        let (child, log) = cli
            .start_agent_with(&fh.uplink, &["--docker-socket", &socket])
            .expect("agent");
        let deadline = std::time::Instant::now() + T;
        while !plugin.path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(plugin.path.exists(), "no driver socket:\n{log}");
        Rig {
            fh,
            cli,
            plugin,
            agent: Some(child),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(child) = self.agent.take() {
            if let Err(e) = stop_agent(child, libc::SIGTERM) {
                eprintln!("Rig drop: stop agent: {e:#}");
            }
        }
        if let Err(e) = self.cli.run(&["cleanup"]) {
            eprintln!("Rig drop: cleanup: {e:#}");
        }
    }
}

/// An HTTP GET from inside a container with busybox `nc` (the address in
/// brackets-free form, as nc takes it); the whole response.
fn http_from(dk: &Dockerd, container: &str, ip: &str) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 80");
    dk.run(&["exec", container, "/bin/sh", "-c", &script])
        .unwrap_or_else(|e| panic!("GET [{ip}]:80 from {container}: {e:#}"))
}

#[test]
fn docker_network_create_ipv6_gives_containers_working_ipv6() {
    if !dataplane_tests::require_root() || !docker::require_docker() {
        return;
    }
    let rig = Rig::new("dk6");
    let dk = Dockerd::start(&rig.fh.host, "dockerd6").expect("dockerd");
    let driver = rig.plugin.name.clone();
    let links_before = rig.fh.host.link_names().expect("links");
    dk.run(&[
        "network", "create", "--ipv6", "-d", &driver, "--subnet", SUBNET, "--subnet", SUBNET6,
        "net6",
    ])
    .unwrap_or_else(|e| panic!("network create --ipv6: {e:#}\n{}", dk.log()));
    let id = dk
        .run(&["network", "inspect", "-f", "{{.Id}}", "net6"])
        .expect("inspect")
        .trim()
        .to_owned();
    let ours = format!("docker-{}", &id[..12]);
    let v = rig.cli.json(&["network", "inspect", &ours]).expect("ours");
    assert_eq!(v[0]["EnableIPv6"], true, "{v}");
    assert_eq!(v[0]["IPAM"]["Config"][1]["Subnet"], SUBNET6, "{v}");

    for name in ["web", "peer"] {
        dk.run(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "net6",
            docker::IMAGE,
            "/bin/httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .unwrap_or_else(|e| panic!("docker run {name}: {e:#}\n{}", dk.log()));
    }
    let v6_of = |name: &str| {
        dk.run(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
            name,
        ])
        .expect("inspect container")
        .trim()
        .to_owned()
    };
    let (web6, peer6) = (v6_of("web"), v6_of("peer"));
    assert!(web6.starts_with("fd00:95::"), "{web6:?}");
    // Our record has Docker's addresses.
    let v = rig.cli.json(&["network", "inspect", &ours]).expect("ours");
    let shown: Vec<String> = v[0]["Containers"]
        .as_object()
        .expect("containers")
        .values()
        .filter_map(|c| c["IPv6Address"].as_str().map(str::to_owned))
        .collect();
    assert!(shown.contains(&format!("{web6}/64")), "{shown:?}");
    // Docker set the default route we answered in Join.
    let routes = dk
        .run(&["exec", "peer", "/bin/ip", "-6", "route", "show", "default"])
        .expect("ip -6 route in peer");
    assert!(routes.contains("via fd00:95::1"), "{routes}");

    // Container to container over IPv6, and the host to a container
    // through the bridge's IPv6 gateway.
    let reply = http_from(&dk, "peer", &web6);
    assert!(reply.ends_with(docker::INDEX), "{reply}");
    let reply = http_from(&dk, "web", &peer6);
    assert!(reply.ends_with(docker::INDEX), "{reply}");
    let web: std::net::Ipv6Addr = web6.parse().expect("IPv6");
    let (code, body) = http_get(&rig.fh.host, SocketAddr::from((web, 80)), "/", T)
        .expect("GET from the host over IPv6");
    assert_eq!((code, body.as_str()), (200, docker::INDEX));

    dk.run(&["rm", "-f", "web", "peer"]).expect("docker rm");
    dk.run(&["network", "rm", "net6"])
        .expect("docker network rm");
    let names = rig
        .cli
        .json(&["network", "ls", "--format", "json"])
        .expect("ls");
    assert!(!names.to_string().contains(&ours), "{names}");
    let mut links = rig.fh.host.link_names().expect("links");
    // Docker's own docker0 may have come up meanwhile.
    links.retain(|l| l != "docker0");
    let mut before = links_before;
    before.retain(|l| l != "docker0");
    assert_eq!(links, before, "links left behind");
}
