//! Docker's remote driver with IPv6, against a real dockerd in a fake host:
//! `docker network create --ipv6 -d <our driver>` (Docker's `IPv6Data`),
//! containers given their IPv6 address by Docker's IPAM (`AddressIPv6`)
//! and the IPv6 gateway by our Join (`GatewayIPv6`), reaching each other
//! and the gateway over IPv6, shown by our `network inspect`; then
//! `docker rm` and `docker network rm` leave nothing behind. And `docker
//! run -p 8080:80` on such a network answers a client outside on the
//! host's IPv6 address with the client's address kept, as does a port
//! bound to that address (`-p [2001:db8:1::1]:8081:80`), while one bound
//! to `[::1]` never answers the network.

use std::{net::SocketAddr, process::Child, time::Duration};

use dataplane_tests::{
    cli::{stop_agent, Cli},
    docker::{self, Dockerd, PluginSocket},
    family::{add6, CLIENT6, HOST6},
    topo::FakeHost,
    traffic::{http_get, tcp_echo},
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

/// `docker run -d --name NAME --network NET -p PUBLISH` of the image's
/// httpd, with a CGI script at `/cgi-bin/peer` printing `REMOTE_ADDR`:
/// the client's address as the container saw it.
fn httpd_with_peer(dk: &Dockerd, name: &str, net: &str, publish: &str) {
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
    .unwrap_or_else(|e| panic!("docker run -p {publish}: {e:#}\n{}", dk.log()));
    let script = "/bin/busybox mkdir -p /www/cgi-bin && \
        printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' \
        > /www/cgi-bin/peer && /bin/busybox chmod 755 /www/cgi-bin/peer";
    dk.run(&["exec", name, "/bin/sh", "-c", script])
        .unwrap_or_else(|e| panic!("CGI script in {name}: {e:#}"));
}

/// `GET /cgi-bin/peer` from `ns` to `dst`: the peer address the
/// container's CGI reported, brackets dropped (the script ends its headers
/// with a bare newline, which `http_get` does not take).
fn peer_seen(ns: &dataplane_tests::netns::NetNs, dst: SocketAddr) -> String {
    let raw = tcp_echo(ns, dst, b"GET /cgi-bin/peer HTTP/1.0\r\n\r\n", T)
        .unwrap_or_else(|e| panic!("GET {dst}/cgi-bin/peer: {e:#}"));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\n\n").map(|(_, b)| b).unwrap_or_default();
    body.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

#[test]
fn a_published_port_answers_on_the_hosts_ipv6_address_with_the_clients_address() {
    if !dataplane_tests::require_root() || !docker::require_docker() {
        return;
    }
    let rig = Rig::new("dk6pub");
    add6(&rig.fh.host, &rig.fh.uplink, &format!("{HOST6}/64"));
    add6(&rig.fh.client, &rig.fh.client_dev, &format!("{CLIENT6}/64"));
    let dk = Dockerd::start(&rig.fh.host, "dockerd6p").expect("dockerd");
    let driver = rig.plugin.name.clone();
    dk.run(&[
        "network",
        "create",
        "--ipv6",
        "-d",
        &driver,
        "--subnet",
        "10.96.0.0/24",
        "--subnet",
        "fd00:96::/64",
        "pub6",
    ])
    .unwrap_or_else(|e| panic!("network create --ipv6: {e:#}\n{}", dk.log()));

    httpd_with_peer(&dk, "web", "pub6", "8080:80");
    let published = SocketAddr::from((HOST6, 8080));
    let (code, body) = http_get(&rig.fh.client, published, "/index.html", T)
        .unwrap_or_else(|e| panic!("GET [{HOST6}]:8080: {e:#}\n{}", dk.log()));
    assert_eq!((code, body.as_str()), (200, docker::INDEX));
    assert_eq!(
        peer_seen(&rig.fh.client, published),
        CLIENT6.to_string(),
        "the container saw the client's address"
    );
    // IPv4 still answers on the same publish.
    let (code, _) = http_get(
        &rig.fh.client,
        SocketAddr::from((rig.fh.host_ip, 8080)),
        "/index.html",
        T,
    )
    .expect("GET over IPv4");
    assert_eq!(code, 200);

    // A port bound to the host's IPv6 address answers there only.
    httpd_with_peer(&dk, "bound", "pub6", &format!("[{HOST6}]:8081:80"));
    let bound = SocketAddr::from((HOST6, 8081));
    assert_eq!(peer_seen(&rig.fh.client, bound), CLIENT6.to_string());
    assert!(
        http_get(
            &rig.fh.client,
            SocketAddr::from((rig.fh.host_ip, 8081)),
            "/",
            Duration::from_secs(1)
        )
        .is_err(),
        "a port bound to an IPv6 address answered on IPv4"
    );

    // A port bound to ::1 is the host's own: the network never reaches it.
    httpd_with_peer(&dk, "local", "pub6", "[::1]:8082:80");
    assert!(
        http_get(
            &rig.fh.client,
            SocketAddr::from((HOST6, 8082)),
            "/",
            Duration::from_secs(1)
        )
        .is_err(),
        "a port bound to ::1 answered the network"
    );
    let nat = rig.cli.run(&["nat", "ls"]).expect("nat ls");
    assert!(nat.contains("[::1]:8082"), "{nat}");

    dk.run(&["rm", "-f", "web", "bound", "local"])
        .expect("docker rm");
    dk.run(&["network", "rm", "pub6"])
        .expect("docker network rm");
    assert!(
        http_get(&rig.fh.client, published, "/", Duration::from_secs(1)).is_err(),
        "still published after docker rm"
    );
}
