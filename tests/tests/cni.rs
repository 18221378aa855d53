//! The CNI plugin (`dataplane-cni`) run as a runtime runs it, against an
//! agent in a fake host: ADD sets up CNI_IFNAME with the address and default
//! route and publishes the runtime's port mappings; CHECK verifies the live
//! attachment; DEL cleans up and is idempotent; bad requests get the spec's
//! error JSON and change nothing; attachments survive an agent restart.
//! Real podman drives it in `podman.rs`.

use std::{net::SocketAddr, path::Path, process::Child, time::Duration};

use dataplane_tests::{
    cli::Cli,
    cni::{invoke, with_prev, Answer, Call},
    netns::NetNs,
    podman::{self, Podman},
    topo::FakeHost,
    traffic::{http_get, http_server},
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);
const SUBNET: &str = "10.89.0.0/24";
const GATEWAY: &str = "10.89.0.1";

/// A fake host with an agent; the agent stops first on drop.
struct Rig {
    agent: Option<Child>,
    cli: Cli,
    fh: FakeHost,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let fh = FakeHost::new(true).expect("fake host");
        let cli = Cli::new(&fh.host, tag).expect("cli");
        let agent = cli.start_agent(&fh.uplink).expect("agent").0;
        Rig {
            agent: Some(agent),
            cli,
            fh,
        }
    }

    fn stop_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            let st = dataplane_tests::cli::stop_agent(a, libc::SIGTERM).expect("stop agent");
            assert!(st.success(), "agent exit: {st}");
        }
    }

    fn start_agent(&mut self) {
        assert!(self.agent.is_none());
        self.agent = Some(self.cli.start_agent(&self.fh.uplink).expect("agent").0);
    }

    /// The network configuration: network `dpcni` created from the subnet,
    /// the given port mappings.
    fn conf(&self, ports: Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "dpcni",
            "type": "dataplane-cni",
            "socket": self.cli.socket,
            "ipam": {"type": "dataplane", "subnet": SUBNET},
            "dns": {"nameservers": [GATEWAY]},
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": ports},
        })
    }

    fn call(&self, command: &str, id: &str, netns: Option<&Path>, stdin: &[u8]) -> Answer {
        self.call_if(command, id, netns, "eth0", stdin)
    }

    fn call_if(
        &self,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        stdin: &[u8],
    ) -> Answer {
        invoke(
            &self.fh.host,
            &Call {
                command,
                container_id: id,
                netns,
                ifname,
                args: "IgnoreUnknown=1;K8S_POD_NAME=web",
            },
            stdin,
        )
        .expect("plugin ran")
    }

    fn state(&self) -> Value {
        self.cli.stored_state().expect("stored state")
    }

    fn state_text(&self) -> String {
        self.state().to_string()
    }

    fn host_links(&self) -> Vec<String> {
        link_names(&self.fh.host)
    }

    fn dnat(&self) -> Vec<Value> {
        self.cli
            .json(&["nat", "ls", "--format", "json"])
            .expect("nat ls")["dnat"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            let _ = dataplane_tests::cli::stop_agent(a, libc::SIGTERM);
        }
    }
}

fn link_names(ns: &NetNs) -> Vec<String> {
    ns.link_names().expect("ip link")
}

fn port_8080() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}])
}

fn addr_of(ns: &NetNs, dev: &str) -> Vec<String> {
    ns.ip_json(&["-4", "addr", "show", "dev", dev])
        .expect("ip addr")[0]["addr_info"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

#[test]
fn add_publishes_check_passes_del_cleans_up() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("cniadd");
    let ctr = NetNs::new("ctr").expect("netns");
    let conf = rig.conf(port_8080());
    // A chained plugin ran before us: its result is extended, not lost.
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": ctr.path()}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
    });
    let add = rig.call(
        "ADD",
        "ctr1",
        Some(ctr.path()),
        &with_prev(&conf, Some(&prev)),
    );
    let result = add.ok().expect("ADD");
    assert_eq!(result["cniVersion"], "1.0.0");
    let ifs = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 3, "{result}");
    assert_eq!(ifs[0]["name"], "lo");
    assert!(
        ifs[1]["name"].as_str().unwrap().starts_with("veth"),
        "{result}"
    );
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], ctr.path().display().to_string());
    let ip = &result["ips"][1];
    assert_eq!(ip["address"], "10.89.0.2/24", "{result}");
    assert_eq!(ip["gateway"], GATEWAY);
    assert_eq!(ip["interface"], 2);
    assert!(ip.get("version").is_none(), "1.0.0 has no ips[].version");
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}])
    );
    assert_eq!(result["dns"]["nameservers"][0], GATEWAY);

    // What a user checks inside the container: CNI_IFNAME, its MAC and
    // address, the default route.
    let link = &ctr.ip_json(&["link", "show", "dev", "eth0"]).expect("eth0")[0];
    assert_eq!(link["address"], ifs[2]["mac"], "{link}");
    assert_eq!(addr_of(&ctr, "eth0"), vec!["10.89.0.2/24"]);
    let routes = ctr
        .ip_json(&["-4", "route", "show", "default"])
        .expect("routes");
    assert_eq!(routes[0]["gateway"], GATEWAY, "{routes}");
    assert_eq!(routes[0]["dev"], "eth0");

    // The port mapping is published: the external client reaches it at the
    // host's uplink address.
    let _web = http_server(&ctr, SocketAddr::from(([0, 0, 0, 0], 80)), "via cni").expect("http");
    let (code, body) = http_get(
        &rig.fh.client,
        SocketAddr::from((rig.fh.host_ip, 8080)),
        "/",
        T,
    )
    .expect("GET through the published port");
    assert_eq!((code, body.as_str()), (200, "via cni"));
    let dnat = rig.dnat();
    assert_eq!(dnat.len(), 1, "{dnat:?}");
    assert_eq!(dnat[0]["container"], "10.89.0.2:80");

    // CHECK with the ADD result passes and prints nothing.
    let check = rig.call(
        "CHECK",
        "ctr1",
        Some(ctr.path()),
        &with_prev(&conf, Some(&result)),
    );
    assert_eq!(check.ok().expect("CHECK"), Value::Null);
    // A CHECK asking for a port mapping that is not there fails.
    let other = rig.conf(json!([{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}]));
    let err = rig
        .call(
            "CHECK",
            "ctr1",
            Some(ctr.path()),
            &with_prev(&other, Some(&result)),
        )
        .error()
        .expect("CHECK with other ports");
    assert_eq!(err["code"], 101, "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("0.0.0.0:9090->80/tcp is not published"),
        "{err}"
    );

    // CHECK reads the endpoint program's filter on the host end: without
    // it, the datapath does not see the container's packets.
    let host_veth = ifs[1]["name"].as_str().unwrap().to_owned();
    rig.fh
        .host
        .exec(&[
            "tc", "filter", "del", "dev", &host_veth, "ingress", "prio", "1", "handle", "1", "bpf",
        ])
        .expect("remove the endpoint filter");
    let err = rig
        .call(
            "CHECK",
            "ctr1",
            Some(ctr.path()),
            &with_prev(&conf, Some(&result)),
        )
        .error()
        .expect("CHECK without the filter");
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains(&format!("dp_from_container is not attached to {host_veth}")),
        "{err}"
    );

    // DEL: the interface, the host veth, the published port and the record go.
    assert!(rig.host_links().contains(&host_veth));
    rig.call(
        "DEL",
        "ctr1",
        Some(ctr.path()),
        &with_prev(&conf, Some(&result)),
    )
    .ok()
    .expect("DEL");
    assert!(!link_names(&ctr).contains(&"eth0".to_owned()));
    assert!(!rig.host_links().contains(&host_veth));
    assert!(rig.dnat().is_empty());
    let state = rig.state();
    assert!(
        state["endpoints"].as_object().unwrap().is_empty(),
        "{state}"
    );
    assert!(state.get("cni_attachments").is_none(), "{state}");
    assert!(http_get(
        &rig.fh.client,
        SocketAddr::from((rig.fh.host_ip, 8080)),
        "/",
        Duration::from_secs(2)
    )
    .is_err());
    // A second DEL succeeds and changes nothing.
    let before = rig.state_text();
    rig.call("DEL", "ctr1", Some(ctr.path()), &with_prev(&conf, None))
        .ok()
        .expect("second DEL");
    assert_eq!(rig.state_text(), before);
    // The network stays for the next container, and the address is free again.
    let again = rig
        .call("ADD", "ctr2", Some(ctr.path()), &with_prev(&conf, None))
        .ok()
        .expect("ADD after DEL");
    assert_eq!(again["ips"][0]["address"], "10.89.0.2/24");
    rig.call("DEL", "ctr2", Some(ctr.path()), &with_prev(&conf, None))
        .ok()
        .expect("DEL ctr2");
}

#[test]
fn check_fails_without_the_interface_and_del_works_after_the_netns_is_gone() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("cnigone");
    let ctr = NetNs::new("ctr").expect("netns");
    let conf = rig.conf(port_8080());
    let result = rig
        .call("ADD", "gone1", Some(ctr.path()), &with_prev(&conf, None))
        .ok()
        .expect("ADD");
    ctr.exec(&["ip", "link", "del", "eth0"])
        .expect("remove eth0");
    let err = rig
        .call(
            "CHECK",
            "gone1",
            Some(ctr.path()),
            &with_prev(&conf, Some(&result)),
        )
        .error()
        .expect("CHECK without eth0");
    assert_eq!(err["code"], 101, "{err}");
    let details = err["details"].as_str().unwrap();
    assert!(details.contains("interface eth0 is missing"), "{err}");
    assert!(details.contains("host end veth"), "{err}");

    // The namespace goes (the container died); DEL comes with and without
    // its path, as runtimes do.
    let path = ctr.path().to_owned();
    drop(ctr);
    assert!(!path.exists());
    rig.call(
        "DEL",
        "gone1",
        Some(&path),
        &with_prev(&conf, Some(&result)),
    )
    .ok()
    .expect("DEL after the netns is gone");
    let state = rig.state();
    assert!(
        state["endpoints"].as_object().unwrap().is_empty(),
        "{state}"
    );
    assert!(rig.dnat().is_empty());
    rig.call("DEL", "gone1", None, &with_prev(&conf, None))
        .ok()
        .expect("DEL without CNI_NETNS");
    // CHECK of an attachment that is not there says so.
    let ctr2 = NetNs::new("ctr2").expect("netns");
    let err = rig
        .call(
            "CHECK",
            "gone1",
            Some(ctr2.path()),
            &with_prev(&conf, Some(&result)),
        )
        .error()
        .expect("CHECK after DEL");
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("has no attachment eth0"),
        "{err}"
    );
}

#[test]
fn version_lists_the_supported_versions() {
    if !dataplane_tests::require_root() {
        return;
    }
    let host = NetNs::new("cniver").expect("netns");
    let a = invoke(
        &host,
        &Call {
            command: "VERSION",
            ..Call::default()
        },
        br#"{"cniVersion":"1.0.0"}"#,
    )
    .expect("VERSION");
    let v = a.ok().expect("VERSION answer");
    assert_eq!(v["cniVersion"], "1.0.0");
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&want), "{v}");
    }
}

#[test]
fn bad_requests_get_the_spec_error_and_change_nothing() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("cnibad");
    let ctr = NetNs::new("ctr").expect("netns");
    let ctr2 = NetNs::new("ctr2").expect("netns");
    let conf = rig.conf(port_8080());
    // One live attachment, so "nothing changed" covers its port too.
    rig.call("ADD", "live1", Some(ctr.path()), &with_prev(&conf, None))
        .ok()
        .expect("ADD");
    let snapshot = || {
        (
            rig.state_text(),
            rig.host_links(),
            link_names(&ctr2),
            rig.dnat(),
        )
    };
    let before = snapshot();
    let good = conf.to_string();
    let other_net = json!({
        "cniVersion": "1.0.0", "name": "other", "type": "dataplane-cni",
        "socket": rig.cli.socket, "ipam": {"subnet": "10.90.0.0/24"},
        "runtimeConfig": {"portMappings": port_8080()},
    })
    .to_string();
    let unknown_net = json!({
        "cniVersion": "1.0.0", "name": "nosuch", "type": "dataplane-cni",
        "socket": rig.cli.socket, "ipam": {},
    })
    .to_string();
    let p = Some(ctr2.path());
    // (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, stdin, code, in msg)
    type Case<'a> = (&'a str, &'a str, Option<&'a Path>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        ("FROB", "bad1", p, good.clone(), 4, "CNI_COMMAND \"FROB\""),
        (
            "ADD",
            "bad1",
            None,
            good.clone(),
            4,
            "CNI_NETNS is required",
        ),
        (
            "ADD",
            "bad1",
            p,
            "{\"cniVersion\": \"1.0.0\", ".into(),
            6,
            "not valid JSON",
        ),
        (
            "ADD",
            "bad1",
            p,
            good.replace("\"1.0.0\"", "\"2.0.0\""),
            1,
            "cniVersion 2.0.0",
        ),
        (
            "ADD",
            "bad1",
            p,
            good.replace("\"dns\"", "\"dnss\""),
            2,
            "dnss: unsupported field",
        ),
        (
            "ADD",
            "bad1",
            p,
            good.replace("\"type\":\"dataplane\"", "\"type\":\"host-local\""),
            2,
            "ipam.type host-local",
        ),
        // Refused by the agent: no network and no subnet to make it from.
        ("ADD", "bad1", p, unknown_net, 100, "refused ADD"),
        // A new network whose container cannot get its port: the network
        // made for it goes again.
        ("ADD", "bad1", p, other_net, 100, "refused ADD"),
        // The same container and interface twice.
        ("ADD", "live1", p, good.clone(), 100, "refused ADD"),
    ];
    for (command, id, netns, stdin, code, needle) in cases {
        let a = rig.call(command, id, netns, stdin.as_bytes());
        let err = a
            .error()
            .unwrap_or_else(|e| panic!("{command} {stdin}: {e:#}"));
        assert_eq!(err["code"], code, "{command} {stdin}: {err}");
        assert!(
            err["msg"].as_str().unwrap().contains(needle),
            "{command} {stdin}: {err} should contain {needle:?}"
        );
        assert_eq!(snapshot(), before, "{command} {stdin} changed something");
    }
    let state = rig.state();
    assert!(state["networks"].get("other").is_none(), "{state}");
}

#[test]
fn attachments_survive_an_agent_restart() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut rig = Rig::new("cnirestart");
    let ctr = NetNs::new("ctr").expect("netns");
    let conf = rig.conf(port_8080());
    let result = rig
        .call("ADD", "keep1", Some(ctr.path()), &with_prev(&conf, None))
        .ok()
        .expect("ADD");
    let _web = http_server(&ctr, SocketAddr::from(([0, 0, 0, 0], 80)), "kept").expect("http");
    let dst = SocketAddr::from((rig.fh.host_ip, 8080));
    rig.stop_agent();
    // No agent: the container keeps working (pinned datapath), and the
    // plugin says to try again later instead of working behind its back.
    assert_eq!(
        http_get(&rig.fh.client, dst, "/", T).expect("GET").1,
        "kept"
    );
    let ctr2 = NetNs::new("ctr2").expect("netns");
    let err = rig
        .call("ADD", "new2", Some(ctr2.path()), &with_prev(&conf, None))
        .error()
        .expect("ADD without agent");
    assert_eq!(err["code"], 11, "{err}");
    rig.start_agent();
    assert_eq!(
        http_get(&rig.fh.client, dst, "/", T).expect("GET").1,
        "kept"
    );
    rig.call(
        "CHECK",
        "keep1",
        Some(ctr.path()),
        &with_prev(&conf, Some(&result)),
    )
    .ok()
    .expect("CHECK after restart");
    let second = rig
        .call(
            "ADD",
            "new2",
            Some(ctr2.path()),
            &with_prev(
                &rig.conf(json!([{"hostPort": 8081, "containerPort": 80}])),
                None,
            ),
        )
        .ok()
        .expect("ADD after restart");
    assert_eq!(second["ips"][0]["address"], "10.89.0.3/24");
    for (id, ns) in [("keep1", &ctr), ("new2", &ctr2)] {
        rig.call("DEL", id, Some(ns.path()), &with_prev(&conf, None))
            .ok()
            .expect("DEL after restart");
    }
    assert!(rig.state()["endpoints"].as_object().unwrap().is_empty());
    assert!(http_get(&rig.fh.client, dst, "/", Duration::from_secs(2)).is_err());
}

#[test]
fn podman_run_publishes_through_the_plugin_and_rm_cleans_up() {
    if !dataplane_tests::require_root() || !podman::require_podman() {
        return;
    }
    let mut rig = Rig::new("cnipodman");
    let mut pod = Podman::new(&rig.fh.host, "podman").expect("podman");
    // libcni caches results by network name in a directory of the whole
    // machine: the name is this run's own.
    let net = format!("dpt{}pod", dataplane_tests::run_id());
    let plugin = json!({
        "type": "dataplane-cni",
        "socket": rig.cli.socket,
        "ipam": {"type": "dataplane", "subnet": "10.91.0.0/24"},
        "capabilities": {"portMappings": true},
    });
    pod.add_conflist(
        &net,
        &json!({"cniVersion": "1.0.0", "name": net, "plugins": [plugin]}),
    )
    .expect("conflist");
    let id = pod
        .run_detached(&[
            "--name",
            "web",
            "--network",
            &net,
            "-p",
            "8080:80",
            podman::IMAGE,
            "/bin/httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .expect("podman run");

    // Reachable from the external client at the host's uplink address.
    let dst = SocketAddr::from((rig.fh.host_ip, 8080));
    let (code, body) = http_get(&rig.fh.client, dst, "/index.html", T).expect("GET");
    assert_eq!((code, body.as_str()), (200, podman::INDEX));
    // The container's side, as podman sees it and in its namespace.
    let sandbox = pod
        .run(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "web"])
        .expect("inspect")
        .trim()
        .to_owned();
    let ip = pod
        .run(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            "web",
        ])
        .expect("inspect ip");
    assert_eq!(ip.trim(), "10.91.0.2");
    let addrs = dataplane_tests::cmd::run(&[
        "nsenter",
        &format!("--net={sandbox}"),
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
    ])
    .expect("addr in the sandbox");
    assert!(addrs.contains("10.91.0.2/24"), "{addrs}");
    let state = rig.state();
    let att = &state["cni_attachments"][0];
    assert_eq!(
        (att["container_id"].as_str(), att["ifname"].as_str()),
        (Some(id.as_str()), Some("eth0")),
        "{state}"
    );
    // Egress from a second container is masqueraded to the uplink address.
    let server = http_server(
        &rig.fh.client,
        SocketAddr::from((rig.fh.client_ip, 8000)),
        "outside",
    )
    .expect("http");
    let got = pod
        .run(&[
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            &net,
            podman::IMAGE,
            "/bin/sh",
            "-c",
            &format!(
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 8000",
                rig.fh.client_ip
            ),
        ])
        .expect("podman run --rm nc");
    assert!(got.ends_with("outside"), "{got:?}");
    assert!(
        server.peers().iter().all(|p| p.ip() == rig.fh.host_ip),
        "{:?}",
        server.peers()
    );

    // CHECK on the live container with what libcni cached from podman's ADD.
    let cached = pod.cached_result(&net, &id, "eth0").expect("cached result");
    let mut conf = plugin.clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!(net);
    conf["runtimeConfig"] = json!({"portMappings": cached["capabilityArgs"]["portMappings"]});
    let check = invoke(
        &rig.fh.host,
        &Call {
            command: "CHECK",
            container_id: &id,
            netns: Some(Path::new(&sandbox)),
            ifname: "eth0",
            args: "",
        },
        &with_prev(&conf, Some(&cached["result"])),
    )
    .expect("CHECK ran");
    assert_eq!(check.ok().expect("CHECK"), Value::Null);

    // The agent restarts under the running container: it keeps serving,
    // and podman's DEL goes to the new agent.
    rig.stop_agent();
    rig.start_agent();
    let (_, body) = http_get(&rig.fh.client, dst, "/index.html", T).expect("GET after restart");
    assert_eq!(body, podman::INDEX);

    // stop + rm: podman's DEL removes the endpoint and the published port.
    let host_veth = cached["result"]["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    pod.run(&["stop", "-t", "1", "web"]).expect("stop");
    pod.run(&["rm", "web"]).expect("rm");
    let state = rig.state();
    assert!(
        state["endpoints"].as_object().unwrap().is_empty(),
        "{state}"
    );
    assert!(state.get("cni_attachments").is_none(), "{state}");
    assert!(rig.dnat().is_empty());
    assert!(!rig.host_links().contains(&host_veth));
    assert!(!podman::cache_path(&net, &id, "eth0").exists());
    assert!(http_get(&rig.fh.client, dst, "/", Duration::from_secs(2)).is_err());
}

#[test]
fn gc_keeps_only_valid_attachments_and_status_reports_the_agent() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut rig = Rig::new("cnigc");
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    let mut conf = rig.conf(json!([]));
    conf["cniVersion"] = json!("1.1.0");
    for (id, ns) in [("keep", &a), ("stale", &b)] {
        rig.call("ADD", id, Some(ns.path()), &with_prev(&conf, None))
            .ok()
            .expect("ADD");
    }
    // GC is 1.1.0's: a 1.0.0 configuration cannot ask for it.
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    let err = rig
        .call("GC", "", None, &with_prev(&old, None))
        .error()
        .expect("GC in 1.0.0");
    assert_eq!(err["code"], 1, "{err}");
    // Without the list GC would remove everything: refused.
    let err = rig
        .call("GC", "", None, &with_prev(&conf, None))
        .error()
        .expect("GC without list");
    assert_eq!(err["code"], 7, "{err}");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    rig.call("GC", "", None, &with_prev(&gc, None))
        .ok()
        .expect("GC");
    let state = rig.state();
    let atts: Vec<&str> = state["cni_attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["container_id"].as_str())
        .collect();
    assert_eq!(atts, vec!["keep"], "{state}");
    assert_eq!(state["endpoints"].as_object().unwrap().len(), 1, "{state}");
    assert!(link_names(&a).contains(&"eth0".to_owned()));
    assert!(!link_names(&b).contains(&"eth0".to_owned()));

    rig.call("STATUS", "", None, &with_prev(&conf, None))
        .ok()
        .expect("STATUS");
    rig.stop_agent();
    let err = rig
        .call("STATUS", "", None, &with_prev(&conf, None))
        .error()
        .expect("STATUS without agent");
    assert_eq!(err["code"], 50, "{err}");
    // DEL without an agent: try again later, nothing lost.
    let err = rig
        .call("DEL", "keep", Some(a.path()), &with_prev(&conf, None))
        .error()
        .expect("DEL without agent");
    assert_eq!(err["code"], 11, "{err}");
    rig.start_agent();
    rig.call("DEL", "keep", Some(a.path()), &with_prev(&conf, None))
        .ok()
        .expect("DEL");
    assert!(rig.state()["endpoints"].as_object().unwrap().is_empty());
}

#[test]
fn concurrent_adds_and_dels_are_serialised() {
    if !dataplane_tests::require_root() {
        return;
    }
    const N: usize = 8;
    let rig = Rig::new("cniconc");
    let nss: Vec<NetNs> = (0..N)
        .map(|i| NetNs::new(&format!("c{i}")).expect("netns"))
        .collect();
    let conf = rig.conf(json!([]));
    let stdin = with_prev(&conf, None);
    let started = std::time::Instant::now();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (rig, stdin) = (&rig, &stdin);
                s.spawn(move || {
                    rig.call("ADD", &format!("conc{i}"), Some(ns.path()), stdin)
                        .ok()
                        .expect("concurrent ADD")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    eprintln!("{N} concurrent ADDs took {:?}", started.elapsed());
    let mut addrs: Vec<&str> = results
        .iter()
        .filter_map(|r| r["ips"][0]["address"].as_str())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), N, "{addrs:?}");
    let state = rig.state();
    assert_eq!(
        state["cni_attachments"].as_array().map(Vec::len),
        Some(N),
        "{state}"
    );
    for ns in &nss {
        assert_eq!(addr_of(ns, "eth0").len(), 1);
    }
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let (rig, stdin) = (&rig, &stdin);
            s.spawn(move || {
                rig.call("DEL", &format!("conc{i}"), Some(ns.path()), stdin)
                    .ok()
                    .expect("concurrent DEL")
            });
        }
    });
    eprintln!("{N} concurrent DELs took {:?}", started.elapsed());
    let state = rig.state();
    assert!(
        state["endpoints"].as_object().unwrap().is_empty(),
        "{state}"
    );
    assert!(state.get("cni_attachments").is_none(), "{state}");
}

#[test]
fn an_interrupted_add_and_a_removed_network_leave_nothing_del_cannot_handle() {
    if !dataplane_tests::require_root() {
        return;
    }
    let mut rig = Rig::new("cnicrash");
    let a = NetNs::new("a").expect("netns");
    let b = NetNs::new("b").expect("netns");
    let conf = rig.conf(json!([]));
    rig.call("ADD", "live", Some(a.path()), &with_prev(&conf, None))
        .ok()
        .expect("ADD");
    // What a crash between recording an attachment and making its endpoint
    // leaves behind: a record without an endpoint.
    rig.stop_agent();
    let mut state = rig.state();
    state["cni_attachments"]
        .as_array_mut()
        .expect("records")
        .push(json!({"network": "dpcni", "container_id": "halfway", "ifname": "eth0", "endpoint": "halfway-eth0"}));
    std::fs::write(
        rig.cli.state.path().join("state.json"),
        serde_json::to_vec_pretty(&state).expect("json"),
    )
    .expect("write state");
    rig.start_agent();
    // The runtime retries the ADD: it is not "already attached".
    rig.call("ADD", "halfway", Some(b.path()), &with_prev(&conf, None))
        .ok()
        .expect("ADD after an interrupted one");
    rig.call("DEL", "halfway", Some(b.path()), &with_prev(&conf, None))
        .ok()
        .expect("DEL");
    let ids: Vec<String> = rig.state()["cni_attachments"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["container_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, vec!["live"]);
    // The network removed behind the runtime's back: DEL still succeeds
    // and the record goes.
    rig.cli
        .run(&["network", "rm", "--force", "dpcni"])
        .expect("network rm");
    rig.call("DEL", "live", Some(a.path()), &with_prev(&conf, None))
        .ok()
        .expect("DEL after network rm");
    let state = rig.state();
    assert!(state.get("cni_attachments").is_none(), "{state}");
    assert!(!link_names(&a).contains(&"eth0".to_owned()));
}

#[test]
fn a_second_network_uses_its_ifname_and_leaves_the_default_route() {
    if !dataplane_tests::require_root() {
        return;
    }
    let rig = Rig::new("cnitwo");
    let ctr = NetNs::new("ctr").expect("netns");
    let first = rig.conf(json!([]));
    let mut second = rig.conf(json!([]));
    second["name"] = json!("dpcni2");
    second["ipam"]["subnet"] = json!("10.93.0.0/24");
    let r1 = rig
        .call_if(
            "ADD",
            "two",
            Some(ctr.path()),
            "eth0",
            &with_prev(&first, None),
        )
        .ok()
        .expect("ADD eth0");
    let r2 = rig
        .call_if(
            "ADD",
            "two",
            Some(ctr.path()),
            "net1",
            &with_prev(&second, None),
        )
        .ok()
        .expect("ADD net1");
    assert_eq!(r2["interfaces"][1]["name"], "net1");
    assert_eq!(r2["ips"][0]["address"], "10.93.0.2/24");
    assert!(
        r2.get("routes").is_none(),
        "a second network takes no default route: {r2}"
    );
    assert_eq!(addr_of(&ctr, "net1"), vec!["10.93.0.2/24"]);
    let routes = ctr
        .ip_json(&["-4", "route", "show", "default"])
        .expect("routes");
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
    assert_eq!(routes[0]["dev"], "eth0");
    for (ifname, conf, result) in [("eth0", &first, &r1), ("net1", &second, &r2)] {
        rig.call_if(
            "CHECK",
            "two",
            Some(ctr.path()),
            ifname,
            &with_prev(conf, Some(result)),
        )
        .ok()
        .expect("CHECK");
    }
    // The same container and ifname on the other network is a different
    // attachment: DEL of one leaves the other.
    rig.call_if(
        "DEL",
        "two",
        Some(ctr.path()),
        "net1",
        &with_prev(&second, None),
    )
    .ok()
    .expect("DEL net1");
    assert!(!link_names(&ctr).contains(&"net1".to_owned()));
    assert!(link_names(&ctr).contains(&"eth0".to_owned()));
    rig.call_if(
        "DEL",
        "two",
        Some(ctr.path()),
        "eth0",
        &with_prev(&first, None),
    )
    .ok()
    .expect("DEL eth0");
    assert!(rig.state().get("cni_attachments").is_none());
}
