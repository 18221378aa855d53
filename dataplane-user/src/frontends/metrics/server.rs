//! The HTTP/1.1 server (hyper) for `GET /metrics`: one request per
//! connection, the request head bounded in size and time, writes bounded in
//! time, and a short linger before closing; connections capped by the
//! accept loop every front door shares ([`crate::api::conns`]).

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use super::{
    render_with, MetricsError, CONTENT_TYPE, LINGER, LINGER_BYTES, MAX_CONNECTIONS,
    MAX_REQUEST_HEAD, PATH, READ_TIMEOUT, WRITE_TIMEOUT,
};
use crate::{
    api::{accept_loop, InFlight},
    control::{cluster::Cluster, state::State},
    datapath::bpffs::PinRoot,
};

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; other
/// paths get 404, other methods 405. `state` returns the current state
/// (the caller reads the state file under its lock); it and [`render`]
/// run on the blocking pool, since both do file and map syscalls.
///
/// Returns when `shutdown` resolves, aborting connections still open, or
/// with an error when the listener itself fails. Errors of single
/// connections are logged and do not stop the server.
pub async fn serve<F>(
    listener: TcpListener,
    pins: PinRoot,
    state: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError>
where
    F: Fn() -> Result<State, String> + Send + Sync + 'static,
{
    serve_with(listener, pins, state, None, MAX_CONNECTIONS, shutdown).await
}

/// [`serve`] with at most `max` connections at once; the oldest idle one
/// (no request head yet) is closed for a newcomer, so idle clients cannot
/// hold up a scrape (see [`crate::api::conns`]).
/// `cluster`: the agent's cluster handle, whose watch is reported too.
pub async fn serve_with<F>(
    listener: TcpListener,
    pins: PinRoot,
    state: F,
    cluster: Option<Arc<Cluster>>,
    max: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError>
where
    F: Fn() -> Result<State, String> + Send + Sync + 'static,
{
    let state: StateFn = Arc::new(state);
    accept_loop(listener, max, shutdown, "metrics", move |stream, flight| {
        let pins = pins.clone();
        let state = Arc::clone(&state);
        let cluster = cluster.clone();
        async move {
            let peer = stream.peer_addr().ok();
            if let Err(e) = connection(stream, pins, state, cluster, flight).await {
                tracing::debug!(?peer, "metrics connection: {e}");
            }
        }
    })
    .await;
    Ok(())
}

type StateFn = Arc<dyn Fn() -> Result<State, String> + Send + Sync>;

/// What hyper sends nothing for: a client that did not send its request
/// head within [`READ_TIMEOUT`] (hyper just closes) is told why.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 29\r\nConnection: close\r\n\r\n\
request not received in time\n";

/// One connection: one request (`Connection: close`), served by hyper with
/// the request head bounded to [`MAX_REQUEST_HEAD`] bytes (hyper answers
/// 431 beyond, 400 to what is not HTTP/1.x) and to [`READ_TIMEOUT`].
async fn connection(
    stream: TcpStream,
    pins: PinRoot,
    state: StateFn,
    cluster: Option<Arc<Cluster>>,
    flight: InFlight,
) -> io::Result<()> {
    let returned = Arc::new(Mutex::new(None));
    let io = Conn {
        stream: Some(stream),
        returned: Arc::clone(&returned),
        write_deadline: None,
    };
    let service = service_fn(move |req| {
        let busy = flight.start();
        let answered = answer(req, pins.clone(), Arc::clone(&state), cluster.clone());
        async move {
            let r = answered.await;
            drop(busy);
            r
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(false)
        // A client may shut down its side right after its request; it still
        // gets the answer (hyper would take the end of input for a client
        // that went away).
        .half_close(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
    // The connection future owned the stream; dropping it gave it back.
    let stream = returned.lock().map(|mut s| s.take()).unwrap_or_default();
    let Some(mut stream) = stream else {
        return served.map_err(io::Error::other);
    };
    if let Err(e) = &served {
        if e.is_timeout() {
            timeout(WRITE_TIMEOUT, stream.write_all(REQUEST_TIMEOUT))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the response"))??;
        }
    }
    let _ = stream.shutdown().await;
    // Drain what the client still sends (see LINGER), until it closes.
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    match served {
        Err(e) if e.is_timeout() => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "reading the request",
        )),
        r => r.map_err(io::Error::other),
    }
}

/// The TCP stream as hyper's transport: writes that make no progress for
/// [`WRITE_TIMEOUT`] fail (a client that does not read its response costs
/// a bounded time), and the stream is handed back through `returned` when
/// hyper drops it, so that [`connection`] can linger on it after hyper is
/// done, whatever way it ended.
struct Conn {
    stream: Option<TcpStream>,
    returned: Arc<Mutex<Option<TcpStream>>>,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.returned.lock() {
            *slot = self.stream.take();
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        match polled {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = self
                    .write_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "writing the response",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

type Reply = Response<Full<Bytes>>;

/// A response that closes the connection.
fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn plain(status: StatusCode, body: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

/// The response to a request hyper parsed.
async fn answer(
    req: Request<Incoming>,
    pins: PinRoot,
    state: StateFn,
    cluster: Option<Arc<Cluster>>,
) -> Result<Reply, Infallible> {
    // A query string does not select anything here.
    if req.uri().path() != PATH {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics",
        ));
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    let rendered = tokio::task::spawn_blocking(move || {
        let state = (*state)().map_err(|e| format!("reading the state: {e}"))?;
        let cluster = cluster.map(|c| c.snapshot());
        render_with(&pins, &state, cluster.as_ref()).map_err(|e| crate::sys::error_chain(&e))
    })
    .await;
    Ok(match rendered {
        Ok(Ok(body)) => reply(StatusCode::OK, CONTENT_TYPE, body),
        Ok(Err(e)) => {
            tracing::warn!("metrics: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &e)
        }
        Err(e) => {
            tracing::warn!("metrics: rendering failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed")
        }
    })
}
