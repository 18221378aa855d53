//! Bounded traffic inside namespaces: TCP/UDP echo and HTTP servers that
//! record who connected, and the matching clients, plus `ping`.
//!
//! Sockets are created on a thread that has joined the namespace
//! ([`NetNs::run_in`]); a socket keeps its namespace for life, so the I/O
//! itself can then happen on any thread. Every wait has a deadline, and
//! servers stop on drop or after [`SERVER_MAX_LIFETIME`] at the latest.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::NetNs;

/// A server that nobody stops (a leaked handle) still ends after this.
pub const SERVER_MAX_LIFETIME: Duration = Duration::from_secs(120);
/// One connection is served for at most this long.
const CONN_MAX_LIFETIME: Duration = Duration::from_secs(30);
/// How often server loops look at the stop flag; bounds Drop's latency.
const STOP_POLL: Duration = Duration::from_millis(50);
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Caps what a client accumulates, so a misbehaving peer cannot exhaust memory.
const MAX_RESPONSE: usize = 64 << 20;
const MAX_HTTP_REQUEST: usize = 64 << 10;

/// A running server. Dropping it stops the server thread and waits for it
/// (bounded: every loop checks the stop flag every [`STOP_POLL`]).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    ns_name: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    deadline: Instant,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn record(&self, peer: SocketAddr) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(peer);
    }
}

impl Server {
    fn start(
        ns: &NetNs,
        addr: SocketAddr,
        kind: &str,
        serve: impl FnOnce(Arc<Shared>) + Send + 'static,
    ) -> Result<Server> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            deadline: Instant::now() + SERVER_MAX_LIFETIME,
            peers: Mutex::new(Vec::new()),
        });
        let for_thread = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("{kind}-{addr}"))
            .spawn(move || serve(for_thread))
            .with_context(|| format!("cannot start {kind} server thread for {addr} in {ns}"))?;
        Ok(Server {
            addr,
            ns_name: ns.name().to_string(),
            shared,
            thread: Some(thread),
        })
    }

    /// The bound address (useful when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Source addresses seen so far: one per accepted TCP connection or HTTP
    /// request, one per received UDP datagram, in arrival order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the server and waits for its thread. Same as dropping it.
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!(
                    "dataplane-tests: server {} in {} panicked",
                    self.addr, self.ns_name
                );
            }
        }
    }
}

/// Waits until `fd` is readable or `timeout` passes; EINTR counts as "not yet".
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn bind_tcp(ns: &NetNs, addr: SocketAddr) -> Result<TcpListener> {
    let listener = ns
        .run_in(|| TcpListener::bind(addr))?
        .with_context(|| format!("cannot listen on tcp {addr} in {ns}"))?;
    // Nonblocking so a connection reset between poll and accept cannot block.
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot make tcp listener {addr} in {ns} nonblocking"))?;
    Ok(listener)
}

type ConnHandler = Arc<dyn Fn(TcpStream, &Shared) + Send + Sync>;

/// Accept loop shared by the TCP servers; each connection gets its own
/// thread so one stuck client cannot starve the others.
fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, handle: ConnHandler) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.done() {
        match wait_readable(listener.as_raw_fd(), STOP_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                eprintln!("dataplane-tests: poll on tcp listener failed: {e}");
                break;
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                shared.record(peer);
                let s = Arc::clone(&shared);
                let h = Arc::clone(&handle);
                match thread::Builder::new()
                    .name(format!("conn-{peer}"))
                    .spawn(move || h(stream, &s))
                {
                    Ok(t) => conns.push(t),
                    Err(e) => eprintln!("dataplane-tests: cannot spawn connection thread: {e}"),
                }
            }
            Err(e) if is_timeout(&e) => {}
            // ECONNABORTED and friends only concern that one connection.
            Err(e) => eprintln!("dataplane-tests: accept failed: {e}"),
        }
        conns.retain(|t| !t.is_finished());
    }
    for t in conns {
        let _ = t.join();
    }
}

fn prepare_conn(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(STOP_POLL))?;
    stream.set_write_timeout(Some(SERVER_WRITE_TIMEOUT))
}

fn echo_conn(mut stream: TcpStream, shared: &Shared) {
    if prepare_conn(&stream).is_err() {
        return;
    }
    let deadline = Instant::now() + CONN_MAX_LIFETIME;
    let mut buf = vec![0u8; 64 << 10];
    while !shared.done() && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

fn http_conn(mut stream: TcpStream, shared: &Shared, body: &str) {
    if prepare_conn(&stream).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        if shared.done() || Instant::now() >= deadline || req.len() > MAX_HTTP_REQUEST {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// TCP server in `ns` on `addr` echoing every connection's bytes back until
/// the client shuts down its side. Listening when this returns.
pub fn tcp_echo_server(ns: &NetNs, addr: SocketAddr) -> Result<Server> {
    let listener = bind_tcp(ns, addr)?;
    let bound = listener.local_addr().unwrap_or(addr);
    Server::start(ns, bound, "tcp-echo", move |shared| {
        serve_tcp(listener, shared, Arc::new(echo_conn))
    })
}

/// HTTP server in `ns` on `addr` answering every request with
/// `HTTP/1.0 200 OK` and `body`. Listening when this returns.
pub fn http_server(ns: &NetNs, addr: SocketAddr, body: &str) -> Result<Server> {
    let listener = bind_tcp(ns, addr)?;
    let bound = listener.local_addr().unwrap_or(addr);
    let body = body.to_string();
    let handler: ConnHandler = Arc::new(move |stream, shared| http_conn(stream, shared, &body));
    Server::start(ns, bound, "http", move |shared| {
        serve_tcp(listener, shared, handler)
    })
}

/// UDP server in `ns` on `addr` sending every datagram back to its sender.
/// Bound when this returns.
pub fn udp_echo_server(ns: &NetNs, addr: SocketAddr) -> Result<Server> {
    let socket = ns
        .run_in(|| UdpSocket::bind(addr))?
        .with_context(|| format!("cannot bind udp {addr} in {ns}"))?;
    socket
        .set_read_timeout(Some(STOP_POLL))
        .with_context(|| format!("cannot set read timeout on udp {addr} in {ns}"))?;
    let bound = socket.local_addr().unwrap_or(addr);
    Server::start(ns, bound, "udp-echo", move |shared| {
        let mut buf = vec![0u8; 65536];
        while !shared.done() {
            match socket.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    shared.record(peer);
                    // A lost reply is the client's retry problem, not ours.
                    let _ = socket.send_to(&buf[..n], peer);
                }
                Err(e) if is_timeout(&e) => {}
                // ICMP errors from earlier replies surface here; keep serving,
                // but never spin if an error repeats.
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

fn remaining(deadline: Instant, what: &dyn Fn() -> String) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("{} timed out", what());
    }
    Ok(left)
}

fn connect(ns: &NetNs, dst: SocketAddr, deadline: Instant) -> Result<TcpStream> {
    let what = || format!("tcp connect from {ns} to {dst}");
    let left = remaining(deadline, &what)?;
    ns.run_in(|| TcpStream::connect_timeout(&dst, left))?
        .with_context(what)
}

/// Reads until EOF, failing at `deadline`.
fn read_all(
    stream: &mut TcpStream,
    deadline: Instant,
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let left = remaining(deadline, &|| {
            format!("{} after {} bytes", what(), out.len())
        })?;
        stream
            .set_read_timeout(Some(left))
            .with_context(|| format!("{}: cannot set read timeout", what()))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_RESPONSE {
                    bail!("{}: reply exceeds {MAX_RESPONSE} bytes", what());
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("{} after {} bytes", what(), out.len()))
            }
        }
    }
}

/// Writes `data` then shuts down the write side, on a helper thread, while the
/// caller reads; reading concurrently keeps a large echo from deadlocking on
/// full socket buffers.
fn write_and_read(
    stream: &mut TcpStream,
    data: &[u8],
    deadline: Instant,
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let mut writer = stream
        .try_clone()
        .with_context(|| format!("{}: cannot clone socket", what()))?;
    let left = remaining(deadline, what)?;
    writer
        .set_write_timeout(Some(left))
        .with_context(|| format!("{}: cannot set write timeout", what()))?;
    thread::scope(|s| {
        let w = s.spawn(move || -> io::Result<()> {
            writer.write_all(data)?;
            writer.shutdown(Shutdown::Write)
        });
        let read = read_all(stream, deadline, what);
        // Unblocks the writer if reading failed early.
        if read.is_err() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let wrote = match w.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        let got = read?;
        wrote.with_context(|| format!("{}: sending {} bytes", what(), data.len()))?;
        Ok(got)
    })
}

/// Connects from `ns` to `dst`, sends `payload`, shuts down the write side and
/// returns everything received until the server closes, all within `timeout`.
pub fn tcp_echo(ns: &NetNs, dst: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let what = || format!("tcp echo from {ns} to {dst}");
    let mut stream = connect(ns, dst, deadline)?;
    write_and_read(&mut stream, payload, deadline, &what)
}

/// Sends `payload` from `ns` to `dst` over UDP and returns the first reply,
/// resending a few times within `timeout`. Replies must come from `dst`
/// (connected socket), so a wrong reverse translation shows up as a timeout.
pub fn udp_request(
    ns: &NetNs,
    dst: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    const ATTEMPTS: u32 = 4;
    let deadline = Instant::now() + timeout;
    let what = || format!("udp request from {ns} to {dst}");
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = ns
        .run_in(|| -> io::Result<UdpSocket> {
            let s = UdpSocket::bind(any)?;
            s.connect(dst)?;
            Ok(s)
        })?
        .with_context(what)?;
    let per_try = (timeout / ATTEMPTS).max(Duration::from_millis(100));
    let mut buf = vec![0u8; 65536];
    let mut tries = 0u32;
    let mut last_err: Option<io::Error> = None;
    while Instant::now() < deadline {
        tries += 1;
        let try_end = (Instant::now() + per_try).min(deadline);
        // An error (e.g. ECONNREFUSED from an ICMP port unreachable) ends
        // this try; waiting out the rest of it keeps retries to a few packets.
        match socket.send(payload) {
            Ok(_) => match recv_until(&socket, &mut buf, try_end) {
                Ok(Some(n)) => return Ok(buf[..n].to_vec()),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            },
            Err(e) => last_err = Some(e),
        }
        thread::sleep(try_end.saturating_duration_since(Instant::now()));
    }
    match last_err {
        Some(e) => Err(e)
            .with_context(|| format!("{} got no reply within {timeout:?} ({tries} tries)", what())),
        None => Err(anyhow!(
            "{} got no reply within {timeout:?} ({tries} tries)",
            what()
        )),
    }
}

/// The next datagram on a connected socket, or None once `until` passes.
fn recv_until(socket: &UdpSocket, buf: &mut [u8], until: Instant) -> io::Result<Option<usize>> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// `GET path` over HTTP/1.0 from `ns` to `dst`; returns the status code and
/// the body.
pub fn http_get(
    ns: &NetNs,
    dst: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let what = || format!("http GET {path} from {ns} to {dst}");
    let mut stream = connect(ns, dst, deadline)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {dst}\r\nConnection: close\r\n\r\n");
    let reply = write_and_read(&mut stream, request.as_bytes(), deadline, &what)?;
    parse_http_response(&reply).with_context(what)
}

/// Splits a close-delimited HTTP response into status code and body.
pub fn parse_http_response(reply: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("response has no end of headers: {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code,
        _ => bail!("malformed status line {status_line:?}"),
    };
    let code = code
        .parse()
        .with_context(|| format!("malformed status code in {status_line:?}"))?;
    Ok((code, body.to_string()))
}

/// Pings `dst` `count` times from `ns` (`ping -c N -W secs -w secs -q`);
/// true when every reply came back within `timeout`. An error (not `false`)
/// when ping cannot run or gives no statistics, e.g. "Network is
/// unreachable": that is a broken topology, not a dropped packet.
pub fn ping(ns: &NetNs, dst: Ipv4Addr, count: u32, timeout: Duration) -> Result<bool> {
    let secs = timeout.as_secs_f64().ceil().max(1.0).to_string();
    let count_s = count.max(1).to_string();
    let dst_s = dst.to_string();
    let argv = [
        "ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-W", &secs, "-w", &secs, &dst_s,
    ];
    let out = ns
        .exec_output(&argv, timeout + Duration::from_secs(5))
        .with_context(|| format!("ping {dst} from {ns}"))?;
    let received = parse_ping_received(&out.stdout).ok_or_else(|| {
        anyhow!(
            "ping {dst} from {ns} gave no statistics ({}; is iputils-ping installed?): {} {}",
            out.status,
            out.stdout.trim(),
            out.stderr.trim()
        )
    })?;
    Ok(out.success() && received >= count.max(1))
}

/// The "M received" number of ping's summary line.
pub fn parse_ping_received(stdout: &str) -> Option<u32> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    line.split(',')
        .map(str::trim)
        .find_map(|part| part.strip_suffix("received"))
        .and_then(|n| n.trim().parse().ok())
}

/// A sink on `ns` at `addr`: reads one connection to the end and answers
/// with the number of bytes (bulk transfers through NAT and the fast path).
/// Bounded in time: a transfer that never arrives ends it too.
pub fn count_sink(ns: &NetNs, addr: SocketAddr) -> Result<JoinHandle<io::Result<usize>>> {
    let listener = ns
        .run_in(move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in {}", ns.name()))?;
    Ok(thread::spawn(move || -> io::Result<usize> {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        conn.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf)?;
        conn.write_all(buf.len().to_string().as_bytes())?;
        Ok(buf.len())
    }))
}

/// Sends one hand-built Ethernet/IPv4 frame's IP packet from `ns` through a
/// raw socket (`IPPROTO_RAW`, header included): the kernel routes it by its
/// destination and sends the header as built, so tests can forge sources,
/// flags, sequence numbers and checksums.
pub fn send_raw_ipv4(ns: &NetNs, frame: &[u8]) -> Result<()> {
    let ip = frame.get(14..).context("frame shorter than Ethernet")?;
    let dst: [u8; 4] = ip
        .get(16..20)
        .context("packet shorter than IPv4")?
        .try_into()?;
    ns.run_in(|| -> io::Result<()> {
        // SAFETY: plain socket syscalls on a descriptor owned here; the
        // address and buffer outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst),
                },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                ip.as_ptr().cast(),
                ip.len(),
                0,
                std::ptr::from_ref(&sin).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n < 0 {
                return Err(err);
            }
        }
        Ok(())
    })?
    .with_context(|| format!("raw send from {ns} to {dst:?}"))
}

/// A TCP connection from `ns` to `dst` from the fixed local port
/// `local_port` (SO_REUSEADDR, as clients that reuse a port do).
pub fn connect_from_port(
    ns: &NetNs,
    local_port: u16,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    ns.run_in(|| bound_connect(local_port, dst, timeout))?
        .with_context(|| format!("tcp connect from {ns} port {local_port} to {dst}"))
}

/// [`connect_from_port`] in the caller's namespace (std cannot bind before
/// connecting): a blocking connect bounded by `timeout`, which also bounds
/// reads and writes.
pub fn bound_connect(local_port: u16, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::other(format!("IPv4 only: {dst}")));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: socket syscalls on a descriptor that becomes the TcpStream's
    // at once (closed by it, also on an error return).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        check(fd)?;
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        let local = sockaddr(Ipv4Addr::UNSPECIFIED, local_port);
        check(libc::bind(fd, (&raw const local).cast(), len))?;
        // The connect's bound: the send timeout.
        stream.set_write_timeout(Some(timeout))?;
        let remote = sockaddr(*dst.ip(), dst.port());
        check(libc::connect(fd, (&raw const remote).cast(), len))?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(stream)
    }
}

/// A TCP server in `ns` that serves `conns` connections one after the
/// other with `serve` (each gets the stream with read/write timeouts), then
/// ends. Accepting gives up at `SERVER_MAX_LIFETIME`; a connection's
/// errors are the test's to see through `serve`'s result.
pub fn scripted_tcp_server<F>(
    ns: &NetNs,
    addr: SocketAddr,
    conns: usize,
    serve: F,
) -> Result<JoinHandle<Vec<io::Result<()>>>>
where
    F: Fn(usize, &mut TcpStream) -> io::Result<()> + Send + 'static,
{
    let listener = ns
        .run_in(|| TcpListener::bind(addr))?
        .with_context(|| format!("cannot bind tcp {addr} in {ns}"))?;
    listener.set_nonblocking(true)?;
    Ok(thread::spawn(move || {
        let deadline = Instant::now() + SERVER_MAX_LIFETIME;
        let mut results = Vec::new();
        while results.len() < conns && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let r = stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_read_timeout(Some(CONN_MAX_LIFETIME)))
                        .and_then(|()| stream.set_write_timeout(Some(SERVER_WRITE_TIMEOUT)))
                        .and_then(|()| serve(results.len(), &mut stream));
                    results.push(r);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(STOP_POLL),
                Err(e) => results.push(Err(e)),
            }
        }
        results
    }))
}
