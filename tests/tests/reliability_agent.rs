//! The agent under abuse: a second agent on the same state, a full file
//! table, idle connections hogging the metrics endpoint, and hostile HTTP
//! on the Docker plugin socket. See docs/reliability.md.

use std::{
    os::unix::fs::MetadataExt as _,
    process::Stdio,
    time::{Duration, Instant},
};

use dataplane_tests::cli::{api, stop_agent, Cli};
use serde_json::json;

/// Waits, bounded, for a child to exit; kills it if it does not.
fn wait_exit(mut child: std::process::Child, within: Duration) -> std::process::Output {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "did not exit within {within:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_agent_on_the_same_state_refuses_and_leaves_the_first_alone() {
    let (fh, cli) = Cli::uplinked("lock", None).expect("fake host");
    let (first, _) = cli.start_agent(&fh.uplink).expect("first agent");
    let socket_ino = std::fs::metadata(&cli.socket).expect("socket").ino();
    let second = cli
        .command(&[
            "agent",
            "--iface",
            &fh.uplink,
            "--host-cgroup",
            "off",
            "--docker-socket",
            "off",
        ])
        .unwrap()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second agent");
    let out = wait_exit(second, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(!out.status.success(), "second agent: {}", out.status);
    let lock = cli.state.path().join("agent.lock");
    assert!(
        stderr.contains(&lock.display().to_string())
            && stderr.contains(&format!("pid {}", first.id())),
        "names the lock file and the holder: {stderr}"
    );
    assert_eq!(
        std::fs::metadata(&cli.socket)
            .expect("socket still there")
            .ino(),
        socket_ino,
        "the first agent's socket untouched"
    );
    let answer = api(&cli.socket, &json!({"op": "network_ls"})).expect("first agent answers");
    assert!(answer.to_string().contains("bridge"), "{answer}");
    let status = stop_agent(first, libc::SIGTERM).expect("stop");
    assert!(status.success(), "{status}");
}
