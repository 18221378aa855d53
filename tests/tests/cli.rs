//! The CLI's two paths: while an agent answers on the socket, every command
//! that changes the datapath is the agent's to carry out (docs/api.md); with
//! no agent, the CLI does the same work itself.
//!
//! To tell the paths apart, the CLI here is given a bpffs root and a state
//! directory of its own that the agent does not use: what the agent does
//! lands in the agent's pins, what the CLI would do in-process lands in (or
//! fails on) its own.

use std::process::Command;

use dataplane_common::maps;
use dataplane_tests::{
    cli::{stop_agent, Cli, StateDir},
    netns::NetNs,
    topo::FakeHost,
    BpffsDir,
};
use dataplane_user::datapath::endpoints;

/// `dataplane ARGS` on the agent's socket, with a bpffs root and a state
/// directory the agent does not have: (success, stdout, stderr).
fn elsewhere(
    fh: &FakeHost,
    cli: &Cli,
    pins: &BpffsDir,
    state: &StateDir,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(dataplane_tests::dataplane_bin().expect("dataplane binary"))
        .arg("--netns")
        .arg(fh.host.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--bpffs-root")
        .arg(pins.path())
        .arg("--socket")
        .arg(&cli.socket)
        .arg("--config")
        .arg("/dev/null")
        .args(args)
        .output()
        .expect("running dataplane");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The endpoint filters in the fake host's namespace.
fn endpoint_filters(fh: &FakeHost) -> usize {
    fh.host
        .run_in(endpoints::endpoint_filters)
        .expect("netns")
        .expect("endpoint filters")
        .len()
}

/// Pins (files) under `dir`, at any depth.
fn pinned(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map_while(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => pinned(&e.path()),
                _ => 1,
            })
            .sum()
    })
}

#[test]
fn mutating_commands_go_to_the_agent_when_one_answers() {
    if !dataplane_tests::require_root() {
        return;
    }
    let fh = FakeHost::new(false).expect("fake host");
    let cli = Cli::new(&fh.host, "cliapi").expect("cli");
    let pins = BpffsDir::new("cliapi-other").expect("other bpffs root");
    let state = StateDir::new("cliapi-other");
    let run = |args: &[&str]| elsewhere(&fh, &cli, &pins, &state, args);

    // No agent: the CLI works on its own (empty) root, where there is no
    // conntrack table to collect.
    let (ok, _, err) = run(&["conntrack", "gc"]);
    assert!(!ok, "conntrack gc on an empty root succeeded");
    assert!(err.contains("error:"), "{err}");

    let (agent, _) = cli.start_agent(&fh.uplink).expect("agent");
    let (ok, out, err) = run(&["conntrack", "gc", "--ct-tcp-syn", "5"]);
    assert!(ok, "conntrack gc through the agent: {err}");
    assert!(out.starts_with("scanned "), "{out}");

    // The agent attached dp_stats to its uplink; the request detaches it
    // from the agent's pins and attaches it again there.
    let (ok, out, err) = run(&["stats", "detach", &fh.uplink, "--direction", "egress"]);
    assert!(ok, "stats detach through the agent: {err}");
    assert!(
        out.contains("detached dp_stats from") && out.contains("egress"),
        "{out}"
    );
    let (ok, out, err) = run(&["stats", "attach", &fh.uplink, "--direction", "egress"]);
    assert!(ok, "stats attach through the agent: {err}");
    let agent_root = cli.pins.path().to_str().expect("utf-8").to_owned();
    assert!(
        out.contains(&agent_root),
        "pinned under the agent's root: {out}"
    );
    assert_eq!(
        pinned(pins.path()),
        0,
        "nothing pinned under the CLI's own root"
    );
    let (ok, _, err) = run(&["stats", "attach", &fh.uplink, "--direction", "egress"]);
    assert!(
        !ok && err.contains("already has dp_stats attached"),
        "{err}"
    );

    // A connect is the agent's: its endpoint programs are filters on the
    // veth in the agent's namespace, running the agent's programs.
    let ctr = NetNs::new("cliapi").expect("netns");
    let (ok, _, err) = run(&["connect", "bridge", ctr.name()]);
    assert!(ok, "connect through the agent: {err}");
    assert_eq!(endpoint_filters(&fh), 1);

    // cleanup is the agent's too: its pins and filters go.
    assert!(cli.pins.pins().map(maps::PORTS).exists());
    let (ok, out, err) = run(&["cleanup"]);
    assert!(ok, "cleanup through the agent: {err}");
    assert!(out.contains(&agent_root), "{out}");
    assert!(
        !cli.pins.pins().map(maps::PORTS).exists(),
        "the agent's pins are gone"
    );
    assert_eq!(endpoint_filters(&fh), 0, "the endpoint filters are gone");
    stop_agent(agent, libc::SIGTERM).expect("stop agent");
}
