//! The accept loop every front door shares (the API, Docker's driver, the
//! metrics): at most `max` connections at once, the oldest idle one (no
//! request in progress) closed to make room for a new one, so idle clients
//! cannot lock out a real one; accept errors back off instead of spinning
//! (the file table full gives EMFILE/ENFILE at once, for ever, while the
//! client waits in the backlog), logged at most once per
//! [`LOG_EVERY`] with a count of those not logged.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::task::AbortHandle;

/// Connections each front door serves at once unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// First pause after a failed accept; doubled per failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after a failed accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a failing accept is logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often a full server whose connections are all busy looks again.
const FULL_POLL: Duration = Duration::from_millis(20);

/// Marks a connection busy while a request is in progress; idle ones may
/// be closed for a newcomer.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Busy until the returned guard is dropped.
    pub fn start(&self) -> Busy {
        self.0.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(&self.0))
    }

    fn idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// A request in progress (see [`InFlight::start`]).
#[derive(Debug)]
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connections being served, oldest first.
struct Slots {
    max: usize,
    live: VecDeque<(AbortHandle, InFlight)>,
    evicted: u64,
}

impl Slots {
    /// Forgets finished connections; at the cap, closes the oldest idle
    /// one. False when every connection is busy (no room).
    fn make_room(&mut self) -> bool {
        self.live.retain(|(h, _)| !h.is_finished());
        if self.live.len() < self.max {
            return true;
        }
        self.evict_idle()
    }

    fn evict_idle(&mut self) -> bool {
        match self.live.iter().position(|(_, f)| f.idle()) {
            Some(i) => {
                if let Some((h, _)) = self.live.remove(i) {
                    h.abort();
                }
                self.evicted += 1;
                true
            }
            None => false,
        }
    }
}

/// Rate-limits the log lines of a failing accept.
struct AcceptLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptLog {
    fn failed(&mut self, e: &io::Error, pause: Duration) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            "{} accept: {e}; pausing {pause:?} (and {} more failures since the last line)",
            self.what,
            self.suppressed
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// What the accept loop needs of a listener.
pub trait Listener {
    type Stream: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Accepts until `shutdown` resolves, each connection served by `conn` in
/// its own task with the [`InFlight`] it marks its requests in; at most
/// `max` at once (see the module docs). Connections still open when it
/// returns are aborted.
pub async fn accept_loop<L, F, Fut>(
    listener: L,
    max: usize,
    shutdown: impl Future<Output = ()>,
    what: &'static str,
    conn: F,
) where
    L: Listener,
    F: Fn(L::Stream, InFlight) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    let mut slots = Slots {
        max: max.max(1),
        live: VecDeque::new(),
        evicted: 0,
    };
    let mut log = AcceptLog {
        what,
        last: None,
        suppressed: 0,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        if !slots.make_room() {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(FULL_POLL) => continue,
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    backoff = BACKOFF_MIN;
                    let flight = InFlight::default();
                    let task = tokio::spawn(conn(stream, flight.clone()));
                    slots.live.push_back((task.abort_handle(), flight));
                }
                Err(e) => {
                    // Out of file descriptors: an idle connection's fd is
                    // one the next accept can use.
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        slots.evict_idle();
                    }
                    log.failed(&e, backoff);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            },
        }
    }
    for (h, _) in slots.live {
        h.abort();
    }
    if slots.evicted > 0 {
        tracing::info!(
            "{what}: {} idle connections closed to make room",
            slots.evicted
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Two slots, both taken by silent clients: a third client is still
    /// served, and the oldest silent one is closed for it.
    #[tokio::test]
    async fn idle_connections_make_room_for_a_new_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(accept_loop(
            listener,
            2,
            async move {
                let _ = stopped.await;
            },
            "test",
            |mut s: tokio::net::TcpStream, flight: InFlight| async move {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _busy = flight.start();
                    let _ = s.write_all(b"ok").await;
                }
            },
        ));
        let mut idle1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _idle2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut got = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got))
            .await
            .expect("served in time")
            .unwrap();
        assert_eq!(&got, b"ok");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), idle1.read(&mut b))
            .await
            .expect("the oldest idle one is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let _ = stop.send(());
        server.await.unwrap();
    }
}
