//! Docker's libnetwork remote network driver, served by the agent: HTTP/1.1
//! POSTs with JSON bodies on a Unix socket (default
//! `/run/docker/plugins/dataplane.sock`, so `docker network create -d
//! dataplane` finds it), served by hyper. Each request body is parsed once
//! into typed values ([`Call`], in [`protocol`]) and carried out by the
//! network manager under the state lock, like every API request, so
//! Docker's calls and the CLI's are serialised. Docker's default IPAM keeps
//! allocating addresses (we implement no IpamDriver): CreateNetwork records
//! its pool and gateway, CreateEndpoint the address it chose. Errors answer
//! `{"Err": "..."}` naming the field and the value; unknown methods answer
//! 404 so Docker treats optional ones (DiscoverNew, ...) as not
//! implemented. `docs/docker.md` has the mapping.

use std::{convert::Infallible, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};

use crate::{
    api,
    control::{
        manager::{Manager, NetworkError},
        model::Attachment,
    },
};

pub mod protocol;

use protocol::{
    Activated, Capabilities, Empty, EndpointCreated, EndpointInterface, InterfaceName, Joined,
    OperInfo, OperInfoValue, PortBinding, Refusal,
};
pub use protocol::{Answer, BadRequest, Call};

/// Where the agent serves the driver unless configured otherwise; the
/// driver's name in Docker is the file name without `.sock`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/dataplane.sock";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// No request of the protocol comes close.
const MAX_BODY: usize = 1 << 20;
/// Longest request head hyper buffers (431 beyond); Docker's are short.
const MAX_HEAD: usize = 64 * 1024;
/// Docker keeps connections open between calls; one that sends no request
/// head for this long is closed (Docker dials again).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Time a client has to send a body once its head arrived.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What a call failed on, beyond a malformed request.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Create(#[from] crate::control::model::CreateError),
}

/// What a call answers: HTTP status and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Answer,
}

impl Reply {
    fn ok(body: Answer) -> Reply {
        Reply { status: 200, body }
    }

    fn err(status: u16, message: String) -> Reply {
        Reply {
            status,
            body: Answer::Err(Refusal { err: message }),
        }
    }
}

/// Parses and carries out one request.
pub async fn dispatch(ctx: &api::Context, method: &str, body: &[u8]) -> Reply {
    match Call::parse(method, body) {
        Ok(Some(call)) => match execute(ctx, call).await {
            Ok(v) => Reply::ok(v),
            // Docker puts the method in front of the message itself.
            Err(e) => Reply::err(500, format!("dataplane: {}", crate::sys::error_chain(&e))),
        },
        Ok(None) => Reply::err(
            404,
            format!("dataplane: {method}: not implemented by this driver"),
        ),
        Err(e) => Reply::err(400, format!("dataplane: {}", e.problem)),
    }
}

/// Carries out one call under the state lock (as `api::execute` does).
pub async fn execute(ctx: &api::Context, call: Call) -> Result<Answer, DriverError> {
    match call {
        Call::Activate => {
            return Ok(Answer::Activate(Activated {
                implements: vec!["NetworkDriver"],
            }))
        }
        Call::GetCapabilities => {
            return Ok(Answer::Capabilities(Capabilities {
                scope: "local",
                connectivity_scope: "local",
            }))
        }
        Call::Discover => return Ok(Answer::Empty(Empty {})),
        _ => {}
    }
    let mut m = ctx.manager().await?;
    let v = run(&mut m, call).await;
    let durable = ctx.done(m).await;
    let v = v?;
    durable?;
    Ok(v)
}

async fn run(m: &mut Manager, call: Call) -> Result<Answer, DriverError> {
    let done = Answer::Empty(Empty {});
    let v = match call {
        Call::Activate | Call::GetCapabilities | Call::Discover => done,
        Call::CreateNetwork { network_id, args } => {
            let net = m.docker_create_network(&network_id, args.parse()?).await?;
            tracing::info!(
                network = net.name,
                id = network_id,
                "docker: network created"
            );
            done
        }
        Call::DeleteNetwork { network_id } => {
            m.docker_delete_network(&network_id).await?;
            tracing::info!(id = network_id, "docker: network deleted");
            done
        }
        Call::CreateEndpoint {
            network_id,
            endpoint_id,
            ipv4,
            ipv6,
            mac,
        } => {
            let given = mac.is_some();
            let ep = m
                .docker_create_endpoint(&network_id, &endpoint_id, (ipv4, ipv6), mac)
                .await?;
            Answer::CreateEndpoint(EndpointCreated {
                // Docker refuses an answer that repeats what it set.
                interface: (!given).then_some(EndpointInterface {
                    mac_address: ep.mac.map(|m| m.to_string()),
                }),
            })
        }
        Call::DeleteEndpoint {
            network_id,
            endpoint_id,
        } => {
            m.docker_delete_endpoint(&network_id, &endpoint_id).await?;
            done
        }
        Call::EndpointOperInfo {
            network_id,
            endpoint_id,
        } => oper_info(m, &network_id, &endpoint_id)?,
        Call::Join {
            network_id,
            endpoint_id,
            sandbox,
        } => {
            let j = m.docker_join(&network_id, &endpoint_id, &sandbox).await?;
            Answer::Join(Joined {
                interface_name: InterfaceName {
                    src_name: j.src_name,
                    dst_prefix: "eth",
                },
                disable_gateway_service: false,
                gateway: j.gateway.map(|gw| gw.to_string()),
                gateway_ipv6: j.gateway6.map(|gw| gw.to_string()),
            })
        }
        Call::Leave {
            network_id,
            endpoint_id,
        } => {
            m.docker_leave(&network_id, &endpoint_id).await?;
            done
        }
        Call::ProgramExternalConnectivity {
            network_id,
            endpoint_id,
            bindings,
        } => {
            let published = m
                .docker_program_external(&network_id, &endpoint_id, &bindings)
                .await?;
            if !published.is_empty() {
                tracing::info!(
                    endpoint = &endpoint_id[..12.min(endpoint_id.len())],
                    published = %published.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    "docker: ports published"
                );
            }
            done
        }
        Call::RevokeExternalConnectivity {
            network_id,
            endpoint_id,
        } => {
            m.docker_revoke_external(&network_id, &endpoint_id).await?;
            done
        }
    };
    Ok(v)
}

/// What `docker network inspect` shows of an endpoint.
fn oper_info(m: &Manager, network_id: &str, endpoint_id: &str) -> Result<Answer, DriverError> {
    let ep = m.docker_endpoint(network_id, endpoint_id)?;
    let host_ifname = match &ep.attachment {
        Attachment::Veth { host_ifname } => host_ifname.clone(),
        _ => String::new(),
    };
    Ok(Answer::OperInfo(OperInfo {
        value: OperInfoValue {
            portmap: ep
                .published
                .iter()
                .map(|p| PortBinding::new(p, ep.ipv4))
                .collect(),
            mac: ep.mac.map(|m| m.to_string()),
            network: ep.network.clone(),
            host_ifname,
        },
    }))
}

// ---------------------------------------------------------------------------
// The HTTP server.

/// Serves the driver until `shutdown` resolves, at most
/// [`api::DEFAULT_MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: UnixListener,
    ctx: api::Context,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_with(listener, ctx, api::DEFAULT_MAX_CONNECTIONS, shutdown).await;
}

/// [`serve`] with at most `max` connections at once; the oldest idle one
/// is closed for a newcomer (Docker dials again).
pub async fn serve_with(
    listener: UnixListener,
    ctx: api::Context,
    max: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    api::accept_loop(
        listener,
        max,
        shutdown,
        "docker plugin",
        move |stream, flight| {
            let ctx = ctx.clone();
            async move {
                if let Err(e) = connection(stream, ctx, flight).await {
                    tracing::debug!("docker plugin connection: {e}");
                }
            }
        },
    )
    .await;
}

/// One connection, kept open between calls as Docker wants, each request
/// answered in turn by hyper (which bounds the head to its buffer, 400 for
/// a chunk size that overflows; [`MAX_BODY`] bounds the body).
async fn connection(
    stream: UnixStream,
    ctx: api::Context,
    flight: api::InFlight,
) -> Result<(), hyper::Error> {
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        let busy = flight.start();
        async move {
            let answer = request(&ctx, req).await;
            drop(busy);
            Ok::<_, Infallible>(answer)
        }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        // A client that shuts down its side after a request still gets
        // the answer.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

fn response(reply: &Reply) -> Response<Full<Bytes>> {
    // Serialising these types cannot fail: strings, numbers, no maps with
    // non-string keys.
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// One request: the method name is the path without its slash.
async fn request(ctx: &api::Context, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.uri().path().trim_start_matches('/').to_owned();
    let reply = if req.method() != Method::POST {
        let e = format!(
            "{} {}: the plugin protocol uses POST",
            req.method(),
            req.uri()
        );
        Reply::err(400, format!("dataplane: {e}"))
    } else {
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        match tokio::time::timeout(IO_TIMEOUT, body).await {
            Ok(Ok(body)) => dispatch(ctx, &method, &body.to_bytes()).await,
            Ok(Err(e)) => Reply::err(400, format!("dataplane: request body: {e}")),
            Err(_) => Reply::err(
                400,
                format!("dataplane: request body: not received within {IO_TIMEOUT:?}"),
            ),
        }
    };
    match &reply.body {
        Answer::Err(e) => tracing::warn!(method, "docker: {}", e.err),
        _ => tracing::debug!(method, "docker: ok"),
    }
    response(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_carry_docker_content_type() {
        let r = response(&Reply::err(404, "x".into()));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/vnd.docker.plugins.v1.2+json"
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"Err":"x"}"#);
    }
}
