//! What happens to translation as endpoints and networks come and go, end
//! to end through the CLI in a fake host (issue 12): networks on subnets
//! the host cannot give away are refused, `nat ls` lines its columns up,
//! flows of a removed endpoint or published port are purged (a new
//! container on the port gets the next datagram), and a container on two
//! networks answers a client of the second one through the port it
//! publishes on the first (hairpin from a shared network).

use dataplane_tests::{
    cli::Cli,
    cni::{invoke, Call},
    netns::NetNs,
    topo::FakeHost,
};
use serde_json::{json, Value};

fn setup(tag: &str) -> (FakeHost, Cli) {
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, tag).expect("cli");
    cli.run(&["uplink", "add", &fh.uplink]).expect("uplink add");
    (fh, cli)
}

/// The networks as stored and the host's links: what a refused create
/// must leave as it was.
fn snapshot(fh: &FakeHost, cli: &Cli) -> (Value, Vec<String>) {
    let state = cli.stored_state().expect("state");
    (
        state["networks"].clone(),
        fh.host.link_names().expect("links"),
    )
}

#[test]
fn subnets_the_host_cannot_give_are_refused() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (fh, cli) = setup("resv");
    cli.run(&["network", "create", "--subnet", "10.61.0.0/24", "keep"])
        .expect("a good network");
    let before = snapshot(&fh, &cli);
    let uplink = format!(
        "--subnet 192.0.2.0/25: overlaps uplink {}'s subnet 192.0.2.0/24",
        fh.uplink
    );
    let cases = [
        (
            "127.0.0.0/24",
            "--subnet 127.0.0.0/24: overlaps loopback 127.0.0.0/8",
        ),
        (
            "0.0.0.0/8",
            "--subnet 0.0.0.0/8: overlaps \"this network\" 0.0.0.0/8",
        ),
        (
            "169.254.0.0/16",
            "--subnet 169.254.0.0/16: overlaps link-local 169.254.0.0/16",
        ),
        (
            "224.0.0.0/8",
            "--subnet 224.0.0.0/8: overlaps multicast 224.0.0.0/4",
        ),
        (
            "240.0.0.0/8",
            "--subnet 240.0.0.0/8: overlaps reserved 240.0.0.0/4",
        ),
        ("192.0.2.0/25", uplink.as_str()),
    ];
    for (subnet, msg) in cases {
        let err = cli
            .fail(&["network", "create", "--subnet", subnet, "bad"])
            .unwrap_or_else(|e| panic!("{subnet}: {e:#}"));
        assert!(err.contains(msg), "{subnet}: {err}");
        assert_eq!(snapshot(&fh, &cli), before, "{subnet} changed something");
    }
    // The CNI plugin refuses the same `ipam.subnet`s before it asks the
    // agent (none runs here: nothing could be changed).
    let ctr = NetNs::new("ctr").expect("netns");
    for (subnet, msg) in &cases[..5] {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "cnibad", "type": "dataplane-cni",
            "socket": cli.socket, "ipam": {"type": "dataplane", "subnet": subnet},
        });
        let a = invoke(
            &fh.host,
            &Call {
                command: "ADD",
                container_id: "resv1",
                netns: Some(ctr.path()),
                ifname: "eth0",
                args: "",
            },
            conf.to_string().as_bytes(),
        )
        .expect("plugin ran");
        let err = a.error().unwrap_or_else(|e| panic!("{subnet}: {e:#}"));
        let text = err["msg"].as_str().unwrap_or_default();
        assert!(
            text.contains("ipam.subnet") && text.contains(msg),
            "{subnet}: {err}"
        );
        assert_eq!(err["code"], 7, "{subnet}: {err}");
    }
    assert_eq!(snapshot(&fh, &cli), before);
}

/// Columns of a text table: each header's (start, end) in characters.
fn header_spans(header: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in header.char_indices().chain([(header.len(), ' ')]) {
        match (c == ' ', start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((header[s..i].to_owned(), s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[test]
fn nat_ls_columns_line_up_under_their_headers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let (_fh, cli) = setup("cols");
    let net = "a-network-with-a-long-name";
    cli.run(&["network", "create", "--subnet", "10.62.0.0/24", net])
        .expect("create");
    let c1 = NetNs::new("c1").expect("netns");
    let c2 = NetNs::new("c2").expect("netns");
    cli.run(&[
        "connect",
        net,
        c1.name(),
        "--name",
        "an-endpoint-named-at-length",
        "-p",
        "127.0.0.1:18080:80",
    ])
    .expect("connect c1");
    cli.run(&[
        "connect",
        "bridge",
        c2.name(),
        "--name",
        "c2",
        "-p",
        "19090:9/udp",
    ])
    .expect("connect c2");
    let text = cli.run(&["nat", "ls"]).expect("nat ls");
    let lines: Vec<&str> = text.lines().collect();
    let h = lines
        .iter()
        .position(|l| l.trim_start().starts_with("PKTS"))
        .unwrap_or_else(|| panic!("no header:\n{text}"));
    let spans = header_spans(lines[h]);
    let names: Vec<&str> = spans.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "PKTS",
            "BYTES",
            "PROTO",
            "HOST",
            "CONTAINER",
            "ENDPOINT",
            "NETWORK"
        ],
        "{text}"
    );
    let rows: Vec<&str> = lines[h + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), spans.len(), "{row}");
        let mut from = 0;
        for (cell, (name, start, end)) in cells.iter().zip(&spans) {
            let at = from + row[from..].find(cell).expect("cell in its row");
            from = at + cell.len();
            if matches!(name.as_str(), "PKTS" | "BYTES") {
                assert_eq!(from, *end, "{name} right-aligned in {row:?}\n{text}");
            } else {
                assert_eq!(at, *start, "{name} under its header in {row:?}\n{text}");
            }
        }
    }
    // The masquerade table below lines up too.
    let s = lines
        .iter()
        .position(|l| l.starts_with("NETWORK"))
        .unwrap_or_else(|| panic!("no SNAT header:\n{text}"));
    let spans = header_spans(lines[s]);
    for row in lines[s + 1..].iter().filter(|l| l.contains(net)) {
        let subnet_at = row.find("10.62.0.0/24").expect("subnet");
        assert_eq!(subnet_at, spans[1].1, "{row:?}\n{text}");
    }
}
