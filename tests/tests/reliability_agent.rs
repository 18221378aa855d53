//! The agent under abuse: a second agent on the same state, a full file
//! table, idle connections hogging the metrics endpoint, and hostile HTTP
//! on the Docker plugin socket. See docs/reliability.md.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::MetadataExt as _, net::UnixStream},
    process::Stdio,
    time::{Duration, Instant},
};

use dataplane_tests::{
    cli::{api, stop_agent, Cli},
    BpffsDir,
};
use dataplane_user::{control::state::State, datapath::ebpf::Dataplane, frontends::metrics};
use serde_json::json;

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count() as u64
}

/// Caps the open files of process `pid` at `n` (prlimit(2)).
fn limit_files(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit on a child of ours, with a valid rlimit.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

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

/// The API socket with the agent out of file descriptors: the accept loop
/// backs off instead of spinning (the agent uses little CPU while clients
/// keep knocking), closes idle connections to get descriptors back, and
/// answers again once the flood is gone.
#[test]
fn out_of_file_descriptors_the_api_backs_off_and_recovers() {
    let (fh, cli) = Cli::uplinked("nofile", None).expect("fake host");
    let (agent, _) = cli.start_agent(&fh.uplink).expect("agent");
    let pid = agent.id();
    let limit = open_fds(pid) + 16;
    limit_files(pid, limit);
    let mut flood = Vec::new();
    for _ in 0..200 {
        match UnixStream::connect(&cli.socket) {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let before = cpu_time(pid);
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let used = cpu_time(pid) - before;
    eprintln!(
        "agent at {limit} files with 200 clients waiting: {used:?} CPU in {window:?}, {} fds open",
        open_fds(pid)
    );
    assert!(
        used < window / 5,
        "the accept loop spins: {used:?} CPU in {window:?}"
    );
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        match api(&cli.socket, &json!({"op": "network_ls"})) {
            Ok(a) if a.to_string().contains("bridge") => break a,
            r if Instant::now() > deadline => panic!("no answer after the flood: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(answer.to_string().contains("bridge"));
    let status = stop_agent(agent, libc::SIGTERM).expect("stop");
    assert!(status.success(), "{status}");
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// 500 clients that connect and say nothing (or half a request) do not
/// hold up a scrape: it is answered within a second.
#[test]
fn metrics_answers_within_a_second_behind_500_idle_connections() {
    let dir = BpffsDir::new("rel-metrics").expect("bpffs dir");
    let _dp = Dataplane::load(dir.pins()).expect("load");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(metrics::serve(
        listener,
        dir.pins().clone(),
        || Ok(State::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(addr).expect("idle connect");
        if i % 2 == 0 {
            s.write_all(b"GET /metr").unwrap();
        }
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = http_get(addr, "/metrics");
    let took = t.elapsed();
    eprintln!("/metrics behind 500 idle connections: {took:?}");
    assert!(r.starts_with("HTTP/1.1 200"), "{}", &r[..r.len().min(200)]);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    drop(idle);
    let _ = stop.send(());
    rt.block_on(server).expect("join").expect("serve");
}

/// Sends `head` (and `body`) on the Docker plugin socket, returns what
/// comes back (the write may fail once the server has answered and closed).
fn docker_raw(path: &std::path::Path, bytes: Vec<u8>) -> String {
    let s = UnixStream::connect(path).expect("docker socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut out = Vec::new();
    let mut r = &s;
    let _ = r.read_to_end(&mut out);
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().expect("writer");
    String::from_utf8_lossy(&out).into_owned()
}

/// Hostile HTTP on the Docker plugin socket: a chunk size that overflows
/// and a 1 MiB header line each get a 4xx; the agent lives on and serves.
#[test]
fn the_docker_socket_refuses_overflowing_chunks_and_huge_headers() {
    let (fh, cli) = Cli::uplinked("dockerabuse", None).expect("fake host");
    std::fs::create_dir_all(cli.state.path()).unwrap();
    let sock = cli.state.path().join("docker.sock");
    let (mut agent, _) = cli
        .start_agent_with(&fh.uplink, &["--docker-socket", sock.to_str().unwrap()])
        .expect("agent");
    // Bound just after "agent running" is logged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let chunked = b"POST /NetworkDriver.GetCapabilities HTTP/1.1\r\nHost: x\r\n\
Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{}\r\n0\r\n\r\n"
        .to_vec();
    let r = docker_raw(&sock, chunked);
    eprintln!("overflowing chunk: {}", r.lines().next().unwrap_or(""));
    assert!(r.starts_with("HTTP/1.1 4"), "{r}");
    let mut big = b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend(b"\r\nContent-Length: 0\r\n\r\n");
    let r = docker_raw(&sock, big);
    eprintln!("1 MiB header: {}", r.lines().next().unwrap_or(""));
    assert!(r.starts_with("HTTP/1.1 4"), "{r}");
    assert!(agent.try_wait().unwrap().is_none(), "the agent is alive");
    let ok = docker_raw(
        &sock,
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("NetworkDriver"),
        "{ok}"
    );
    let status = stop_agent(agent, libc::SIGTERM).expect("stop");
    assert!(status.success(), "{status}");
}
