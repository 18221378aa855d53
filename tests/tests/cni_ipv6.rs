//! The CNI plugin with IPv6, driven by real podman in a fake host: a
//! conflist with host-local style `ranges` (one IPv4, one IPv6) makes a
//! dual-stack network; containers get both addresses (podman reads them
//! from our result), reach each other and are reached from the host over
//! IPv6; CHECK accepts the cached dual-stack result; `podman rm` removes
//! the endpoints.

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::Path,
    process::Child,
    time::Duration,
};

use dataplane_tests::{
    cli::{stop_agent, Cli},
    cni::{invoke, with_prev, Call},
    podman::{self, Podman},
    topo::FakeHost,
    traffic::http_get,
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

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
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            if let Err(e) = stop_agent(a, libc::SIGTERM) {
                eprintln!("Rig drop: stop agent: {e:#}");
            }
        }
    }
}

fn httpd(pod: &Podman, name: &str, net: &str) -> String {
    pod.run_detached(&[
        "--name",
        name,
        "--network",
        net,
        podman::IMAGE,
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])
    .unwrap_or_else(|e| panic!("podman run {name}: {e:#}"))
}

#[test]
fn podman_containers_get_ipv6_from_dual_stack_ranges() {
    if !dataplane_tests::require_root() || !podman::require_podman() {
        return;
    }
    let rig = Rig::new("cni6");
    let mut pod = Podman::new(&rig.fh.host, "podman6").expect("podman");
    let net = format!("dpt{}v6", dataplane_tests::run_id());
    let plugin = json!({
        "type": "dataplane-cni",
        "socket": rig.cli.socket,
        "ipam": {"type": "dataplane", "ranges": [
            [{"subnet": "10.96.0.0/24"}],
            [{"subnet": "fd00:96::/64", "gateway": "fd00:96::1"}]
        ]},
    });
    pod.add_conflist(
        &net,
        &json!({"cniVersion": "1.0.0", "name": net, "plugins": [plugin]}),
    )
    .expect("conflist");
    let web = httpd(&pod, "web", &net);
    let _peer = httpd(&pod, "peer", &net);
    let field = |name: &str, what: &str| {
        pod.run(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").{what}}}}}"),
            name,
        ])
        .expect("podman inspect")
        .trim()
        .to_owned()
    };
    assert_eq!(field("web", "IPAddress"), "10.96.0.2");
    assert_eq!(field("web", "GlobalIPv6Address"), "fd00:96::2");
    assert_eq!(field("web", "IPv6Gateway"), "fd00:96::1");
    let peer6 = field("peer", "GlobalIPv6Address");
    assert_eq!(peer6, "fd00:96::3");

    // Container to container and host to container over IPv6.
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {peer6} 80");
    let got = pod
        .run(&["exec", "web", "/bin/sh", "-c", &script])
        .expect("GET peer over IPv6");
    assert!(got.ends_with(podman::INDEX), "{got:?}");
    let web6: Ipv6Addr = "fd00:96::2".parse().expect("IPv6");
    let (code, body) =
        http_get(&rig.fh.host, SocketAddr::from((web6, 80)), "/", T).expect("GET from the host");
    assert_eq!((code, body.as_str()), (200, podman::INDEX));

    // CHECK with libcni's cached dual-stack result.
    let cached = pod
        .cached_result(&net, &web, "eth0")
        .expect("cached result");
    let ips: Vec<&str> = cached["result"]["ips"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert_eq!(ips, ["10.96.0.2/24", "fd00:96::2/64"], "{cached}");
    let sandbox = pod
        .run(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "web"])
        .expect("sandbox")
        .trim()
        .to_owned();
    let mut conf = plugin.clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!(net);
    let check = invoke(
        &rig.fh.host,
        &Call {
            command: "CHECK",
            container_id: &web,
            netns: Some(Path::new(&sandbox)),
            ifname: "eth0",
            args: "",
        },
        &with_prev(&conf, Some(&cached["result"])),
    )
    .expect("CHECK ran");
    assert_eq!(check.ok().expect("CHECK"), Value::Null);

    pod.run(&["rm", "-f", "web", "peer"]).expect("podman rm");
    let state = rig.cli.stored_state().expect("state");
    assert!(
        state["endpoints"].as_object().is_none_or(|e| e.is_empty()),
        "{state}"
    );
}
