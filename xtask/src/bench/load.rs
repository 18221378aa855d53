//! The bench's own small load tool (`xtask bench-load`, hidden; built in
//! release by `cargo xtask bench` and run pinned inside the namespaces):
//! a TCP/UDP echo server and three clients in the manner of netperf's
//! TCP_RR (one connection, one byte each way, latency of every
//! transaction), TCP_CRR (connect, one byte each way, close) and UDP_RR.
//!
//! RR busy-polls its socket on both sides (non-blocking reads in a spin,
//! as netperf's and sockperf's busy-poll modes do): on this kind of VM a
//! blocking read lets the vCPU halt, and waking it costs milliseconds at the
//! tail whatever the packet path, so p99 would measure the hypervisor.
//!
//! Every mode is bounded in time: clients run for `--secs`, the server
//! exits after `--max-secs`. A client prints one line of `key=value` pairs
//! that the bench parses ([`parse_result`]).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct LoadArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Echo server: TCP and UDP on the given addresses.
    Serve {
        #[arg(long)]
        tcp: SocketAddr,
        #[arg(long)]
        udp: SocketAddr,
        /// The server exits after this many seconds whatever happens.
        #[arg(long, default_value_t = 1800)]
        max_secs: u64,
    },
    /// One connection, one byte request/response, for `secs`.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// Connect, one byte each way, close; repeated for `secs`.
    Crr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
    /// `count` sequential one-shot connections, p50/p99 per `slice`
    /// (host-local `hl-seq`), at most `max_secs` long.
    Seq {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        slice: u64,
        #[arg(long)]
        max_secs: u64,
    },
    /// One UDP socket, one datagram each way, for `secs`.
    Udp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
    },
}

/// First byte of a TCP connection: a long request/response connection
/// (served on its own thread) or a one-shot one (served inline by the
/// accepting thread, so CRR measures the network path, not thread spawns).
const RR: u8 = b'r';
pub const ONE_SHOT: u8 = b'c';
/// Per-operation timeout: a lost packet ends a transaction as an error
/// instead of stalling the run.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);

pub fn main(args: LoadArgs) -> Result<()> {
    match args.mode {
        Mode::Serve { tcp, udp, max_secs } => serve(tcp, udp, Duration::from_secs(max_secs)),
        Mode::Rr { to, secs } => rr(to, secs_dur(secs)?),
        Mode::Crr { to, secs } => crr(to, secs_dur(secs)?),
        Mode::Udp { to, secs } => udp(to, secs_dur(secs)?),
        Mode::Seq {
            to,
            count,
            slice,
            max_secs,
        } => seq(to, count, slice, Duration::from_secs(max_secs.min(600))),
    }
}

fn secs_dur(secs: f64) -> Result<Duration> {
    if !(0.05..=600.0).contains(&secs) {
        bail!("--secs {secs}: must be 0.05..=600");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn serve(tcp: SocketAddr, udp: SocketAddr, max: Duration) -> Result<()> {
    let listener = TcpListener::bind(tcp).with_context(|| format!("binding {tcp}"))?;
    let sock = UdpSocket::bind(udp).with_context(|| format!("binding {udp}"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    std::thread::spawn(move || {
        std::thread::sleep(max);
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            continue;
        }
        match first[0] {
            ONE_SHOT => {
                // Reply and close first: the server side keeps TIME_WAIT,
                // so the client's ports are free again at once.
                let _ = s.write_all(&first);
            }
            RR => {
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    if s.write_all(&b"r"[..]).is_err() || s.set_nonblocking(true).is_err() {
                        return;
                    }
                    // A silent client for this long is gone.
                    while spin_read(&mut s, &mut b, Duration::from_secs(30)).is_ok() {
                        if spin_write(&mut s, &b).is_err() {
                            break;
                        }
                    }
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Latencies in nanoseconds, sorted, and the run's figures printed.
fn report(ops: u64, errors: u64, elapsed: Duration, mut lat: Vec<u64>) {
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i.min(lat.len() - 1)]
    };
    println!(
        "ops={ops} errors={errors} secs={:.4} rate={:.1} p50_us={:.2} p99_us={:.2}",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0
    );
}

fn rr(to: SocketAddr, secs: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(OP_TIMEOUT))?;
    s.write_all(&[RR])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).context("handshake")?;
    s.set_nonblocking(true)?;
    let mut lat = Vec::with_capacity(400_000);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < secs {
        let t = Instant::now();
        spin_write(&mut s, b"x")?;
        spin_read(&mut s, &mut b, OP_TIMEOUT).context("response")?;
        lat.push(t.elapsed().as_nanos() as u64);
        ops += 1;
    }
    report(ops, 0, start.elapsed(), lat);
    Ok(())
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket, spinning
/// while there is nothing; fails after `timeout` without progress or on EOF.
fn spin_read(s: &mut TcpStream, buf: &mut [u8], timeout: Duration) -> std::io::Result<()> {
    let mut got = 0;
    let mut since = Instant::now();
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                got += n;
                since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if since.elapsed() > timeout {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                std::hint::spin_loop();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` to a non-blocking socket, spinning while it is full.
fn spin_write(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    let start = Instant::now();
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                if start.elapsed() > OP_TIMEOUT {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                std::hint::spin_loop();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One connection's whole life: connect, one byte each way, then the
/// server's FIN, so the connection is wholly done (and closed by the server
/// first) before the next one.
pub fn one_shot(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, OP_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(OP_TIMEOUT))?;
    s.write_all(&[ONE_SHOT])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    let _ = s.read(&mut b);
    Ok(())
}

/// The `seq` client: `count` sequential connections (connect, one byte
/// each way, close) to `to`, at most `max` long; p50/p99 per `slice`
/// completed connections.
pub fn seq(to: SocketAddr, count: u64, slice: u64, max: Duration) -> Result<()> {
    if slice == 0 || count == 0 {
        bail!("--count {count} --slice {slice}: both must be > 0");
    }
    let start = Instant::now();
    let (mut ops, mut errors) = (0u64, 0u64);
    let mut lat = Vec::with_capacity(slice as usize);
    let mut slices = Vec::new();
    let mut first_error = String::new();
    while ops < count && start.elapsed() < max {
        let t = Instant::now();
        match one_shot(to) {
            Ok(()) => {
                lat.push(t.elapsed().as_nanos() as u64);
                ops += 1;
                if lat.len() as u64 == slice {
                    lat.sort_unstable();
                    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
                    slices.push(format!(
                        "{:.2}/{:.2}",
                        pct(0.50) as f64 / 1e3,
                        pct(0.99) as f64 / 1e3
                    ));
                    lat.clear();
                }
            }
            Err(e) => {
                errors += 1;
                if errors > 1000 {
                    bail!("more than 1000 failed connections to {to}: {e}");
                }
                // Which connection and why, for the bench's log.
                if first_error.is_empty() {
                    first_error = format!("#{}:{:?}", ops + errors, e.kind());
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ops={ops} errors={errors} secs={secs:.4} rate={:.1} slices={} first_error={first_error}",
        ops as f64 / secs,
        slices.join(",")
    );
    Ok(())
}

fn crr(to: SocketAddr, secs: Duration) -> Result<()> {
    let mut lat = Vec::with_capacity(100_000);
    let start = Instant::now();
    let (mut ops, mut errors) = (0u64, 0u64);
    while start.elapsed() < secs {
        let t = Instant::now();
        match one_shot(to) {
            Ok(()) => {
                lat.push(t.elapsed().as_nanos() as u64);
                ops += 1;
            }
            Err(_) => {
                errors += 1;
                if errors > 1000 {
                    bail!("more than 1000 failed connections to {to}");
                }
            }
        }
    }
    report(ops, errors, start.elapsed(), lat);
    Ok(())
}

fn udp(to: SocketAddr, secs: Duration) -> Result<()> {
    let s = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut lat = Vec::with_capacity(200_000);
    let start = Instant::now();
    let (mut ops, mut errors) = (0u64, 0u64);
    let mut b = [0u8; 64];
    while start.elapsed() < secs {
        let t = Instant::now();
        s.send(b"x")?;
        match s.recv(&mut b) {
            Ok(_) => {
                lat.push(t.elapsed().as_nanos() as u64);
                ops += 1;
            }
            Err(_) => errors += 1,
        }
    }
    report(ops, errors, start.elapsed(), lat);
    Ok(())
}

/// One client run as the bench reads it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadResult {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

pub fn parse_result(line: &str) -> Result<LoadResult> {
    let mut r = LoadResult::default();
    let mut seen = 0;
    for kv in line.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let val = || -> Result<f64> {
            v.parse()
                .with_context(|| format!("bench-load {k}={v:?}: not a number"))
        };
        match k {
            "rate" => {
                r.rate = val()?;
                seen += 1;
            }
            "p50_us" => r.p50_us = val()?,
            "p99_us" => r.p99_us = val()?,
            "errors" => r.errors = val()? as u64,
            _ => {}
        }
    }
    if seen == 0 {
        bail!("bench-load printed no rate: {line:?}");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_result_line() {
        let r = super::parse_result("ops=10 errors=1 secs=1.0 rate=10.0 p50_us=3.5 p99_us=9.25")
            .expect("parse");
        assert_eq!((r.rate, r.p50_us, r.p99_us, r.errors), (10.0, 3.5, 9.25, 1));
        assert!(super::parse_result("nothing").is_err());
    }
}
