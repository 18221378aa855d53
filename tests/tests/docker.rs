//! Docker's remote network driver with a real dockerd in a fake host:
//! `docker network create -d <our driver>`, containers publishing a port
//! through our BPF programs (no DNAT rule, no docker-proxy), containers
//! reaching each other and the outside through masquerade, an agent
//! restart under running containers, refused input, and cleanup by
//! `docker rm` / `docker network rm`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Child,
    time::Duration,
};

use dataplane_tests::{
    cli::{stop_agent, Cli},
    docker::{self, Dockerd, PluginSocket},
    netns::NetNs,
    topo::FakeHost,
    traffic::{http_get, http_server},
};

const T: Duration = Duration::from_secs(5);
const SUBNET: &str = "10.92.0.0/24";

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
        let plugin = PluginSocket::new("dkdrv").expect("plugin socket");
        let mut rig = Rig {
            fh,
            cli,
            plugin,
            agent: None,
        };
        rig.start_agent();
        rig
    }

    fn start_agent(&mut self) {
        let socket = self.plugin.path.display().to_string();
        let (child, log) = self
            .cli
            .start_agent_with(&self.fh.uplink, &["--docker-socket", &socket])
            .expect("agent");
        // The driver's socket is bound right after the API's.
        let deadline = std::time::Instant::now() + T;
        while !self.plugin.path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.plugin.path.exists(),
            "no driver socket at {}:\n{log}",
            self.plugin.path.display()
        );
        self.agent = Some(child);
    }

    fn stop_agent(&mut self) {
        if let Some(child) = self.agent.take() {
            stop_agent(child, libc::SIGTERM).expect("stop agent");
        }
    }

    fn network_names(&self) -> Vec<String> {
        let v = self
            .cli
            .json(&["network", "ls", "--format", "json"])
            .expect("network ls");
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n["Name"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_agent();
        if let Err(e) = self.cli.run(&["cleanup"]) {
            eprintln!("Rig drop: cleanup: {e:#}");
        }
    }
}

fn link_names(ns: &NetNs) -> Vec<String> {
    ns.link_names().expect("ip link")
}

fn httpd(dk: &Dockerd, name: &str, net: &str, publish: &str) -> String {
    dk.run(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "-p",
        publish,
        docker::IMAGE,
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])
    .unwrap_or_else(|e| panic!("docker run {name}: {e:#}\n{}", dk.log()))
    .trim()
    .to_owned()
}

fn container_ip(dk: &Dockerd, name: &str) -> Ipv4Addr {
    dk.run(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
    .expect("inspect")
    .trim()
    .parse()
    .expect("container address")
}

/// An HTTP GET from inside a container (busybox `nc`: busybox-static's
/// `wget` crashes in this image); the whole response.
fn http_from(dk: &Dockerd, container: &str, ip: Ipv4Addr, port: u16) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}");
    dk.run(&["exec", container, "/bin/sh", "-c", &script])
        .unwrap_or_else(|e| panic!("GET {ip}:{port} from {container}: {e:#}"))
}

fn no_rules_for_us(host: &NetNs) {
    let ipt = host.exec(&["iptables-save"]).unwrap_or_default();
    let ours: Vec<&str> = ipt
        .lines()
        .filter(|l| l.contains("10.92.0.") || l.contains("8080") || l.contains("8081"))
        .collect();
    assert!(ours.is_empty(), "iptables rules for our network:\n{ipt}");
    let ps = dataplane_tests::cmd::run(&["ps", "-eo", "args"]).expect("ps");
    let proxies: Vec<&str> = ps
        .lines()
        .filter(|l| l.contains("docker-proxy") && (l.contains("8080") || l.contains("10.92.0.")))
        .collect();
    assert!(
        proxies.is_empty(),
        "docker-proxy for our ports: {proxies:?}"
    );
}

#[test]
fn docker_run_publishes_through_the_driver_and_rm_cleans_up() {
    if !dataplane_tests::require_root() || !docker::require_docker() {
        return;
    }
    let mut rig = Rig::new("dkrun");
    let dk = Dockerd::start(&rig.fh.host, "dockerd").expect("dockerd");
    let links_before = link_names(&rig.fh.host);
    let networks_before = rig.network_names();
    let driver = rig.plugin.name.clone();

    // Refused input changes nothing: a subnet overlapping one of ours.
    rig.cli
        .run(&["network", "create", "--subnet", "10.93.0.0/24", "mine"])
        .expect("network create mine");
    let err = dk
        .fail(&[
            "network",
            "create",
            "-d",
            &driver,
            "--subnet",
            "10.93.0.0/25",
            "bad",
        ])
        .expect("overlapping create fails");
    assert!(err.contains("10.93.0.0"), "{err}");
    assert!(dk.run(&["network", "inspect", "bad"]).is_err());
    rig.cli
        .run(&["network", "rm", "mine"])
        .expect("network rm mine");
    assert_eq!(rig.network_names(), networks_before);

    dk.run(&[
        "network", "create", "-d", &driver, "--subnet", SUBNET, "net1",
    ])
    .unwrap_or_else(|e| panic!("network create: {e:#}\n{}", dk.log()));
    let id = dk
        .run(&["network", "inspect", "-f", "{{.Id}}", "net1"])
        .expect("inspect net1")
        .trim()
        .to_owned();
    let ours = format!("docker-{}", &id[..12]);
    assert!(
        rig.network_names().contains(&ours),
        "{:?}",
        rig.network_names()
    );

    httpd(&dk, "web", "net1", "8080:80");
    dk.run(&[
        "run",
        "-d",
        "--name",
        "c2",
        "--network",
        "net1",
        docker::IMAGE,
        "/bin/sleep",
        "600",
    ])
    .expect("docker run c2");
    let web_ip = container_ip(&dk, "web");
    assert!(web_ip.octets()[..3] == [10, 92, 0], "{web_ip}");

    // Published: the external client reaches it at the host's address.
    let dst = SocketAddr::from((rig.fh.host_ip, 8080));
    let (code, body) = http_get(&rig.fh.client, dst, "/index.html", T).expect("GET :8080");
    assert_eq!((code, body.as_str()), (200, docker::INDEX));
    let nat = rig.cli.run(&["nat", "ls"]).expect("nat ls");
    assert!(
        nat.contains("0.0.0.0:8080") && nat.contains(&format!("{web_ip}:80")),
        "{nat}"
    );
    // Containers reach each other.
    let reply = http_from(&dk, "c2", web_ip, 80);
    assert!(
        reply.starts_with("HTTP/1.") && reply.ends_with(docker::INDEX),
        "{reply}"
    );
    // Egress is masqueraded to the uplink address.
    let server = http_server(
        &rig.fh.client,
        SocketAddr::from((rig.fh.client_ip, 8000)),
        "outside\n",
    )
    .expect("client server");
    let reply = http_from(&dk, "c2", rig.fh.client_ip, 8000);
    assert!(reply.ends_with("outside\n"), "{reply}");
    let peers = server.peers();
    assert!(
        !peers.is_empty() && peers.iter().all(|p| p.ip() == rig.fh.host_ip),
        "{peers:?}"
    );
    no_rules_for_us(&rig.fh.host);

    // An agent restart under running containers: they keep working, and
    // Docker's later calls still succeed.
    rig.stop_agent();
    let (code, _) = http_get(&rig.fh.client, dst, "/index.html", T).expect("GET, agent stopped");
    assert_eq!(code, 200);
    rig.start_agent();
    httpd(&dk, "web2", "net1", "8081:80");
    let (code, body) = http_get(
        &rig.fh.client,
        SocketAddr::from((rig.fh.host_ip, 8081)),
        "/",
        T,
    )
    .expect("GET :8081");
    assert_eq!((code, body.as_str()), (200, docker::INDEX));
    no_rules_for_us(&rig.fh.host);

    // `docker network connect/disconnect` of a running container.
    let endpoints = |rig: &Rig| {
        let v = rig
            .cli
            .json(&["network", "inspect", &ours])
            .expect("inspect ours");
        v[0]["Containers"].as_object().map_or(0, |c| c.len())
    };
    let before = endpoints(&rig);
    // c3 starts on Docker's own default bridge (a container on `none` may
    // join no other network).
    dk.run(&[
        "run",
        "-d",
        "--name",
        "c3",
        docker::IMAGE,
        "/bin/sleep",
        "600",
    ])
    .expect("docker run c3");
    dk.run(&["network", "connect", "net1", "c3"])
        .expect("docker network connect");
    assert_eq!(endpoints(&rig), before + 1);
    let reply = http_from(&dk, "c3", web_ip, 80);
    assert!(reply.ends_with(docker::INDEX), "{reply}");
    dk.run(&["network", "disconnect", "net1", "c3"])
        .expect("docker network disconnect");
    assert_eq!(endpoints(&rig), before);
    let addrs = dk
        .run(&["exec", "c3", "/bin/ip", "-4", "-o", "addr"])
        .expect("ip addr in c3");
    assert!(
        !addrs.contains("10.92.0."),
        "c3 keeps an address of net1:\n{addrs}"
    );

    // `docker stop` takes the published port with it; `docker start` brings it back.
    let dst2 = SocketAddr::from((rig.fh.host_ip, 8081));
    dk.run(&["stop", "-t", "1", "web2"]).expect("docker stop");
    let nat = rig.cli.run(&["nat", "ls"]).expect("nat ls");
    assert!(!nat.contains(":8081"), "{nat}");
    assert!(http_get(&rig.fh.client, dst2, "/", Duration::from_secs(1)).is_err());
    dk.run(&["start", "web2"]).expect("docker start");
    let (code, _) = http_get(&rig.fh.client, dst2, "/", T).expect("GET :8081 after start");
    assert_eq!(code, 200);

    // A port published twice is refused, naming the port; nothing else changes.
    let err = dk
        .fail(&[
            "run",
            "-d",
            "--name",
            "dup",
            "--network",
            "net1",
            "-p",
            "8080:80",
            docker::IMAGE,
            "/bin/httpd",
            "-f",
            "-p",
            "80",
        ])
        .expect("duplicate port fails");
    assert!(err.contains("8080"), "{err}");
    let (code, _) = http_get(&rig.fh.client, dst, "/", T).expect("GET :8080 after refusal");
    assert_eq!(code, 200);

    // Removal cleans up: endpoints, published ports, the network and its bridge.
    dk.run(&["rm", "-f", "web", "web2", "c2", "c3", "dup"])
        .or_else(|_| dk.run(&["rm", "-f", "web", "web2", "c2", "c3"]))
        .expect("docker rm");
    let nat = rig.cli.run(&["nat", "ls"]).expect("nat ls");
    assert!(!nat.contains(":8080") && !nat.contains(":8081"), "{nat}");
    dk.run(&["network", "rm", "net1"])
        .expect("docker network rm");
    assert_eq!(rig.network_names(), networks_before);
    assert_eq!(link_names(&rig.fh.host), links_before);
    assert!(http_get(&rig.fh.client, dst, "/", Duration::from_secs(1)).is_err());
}
