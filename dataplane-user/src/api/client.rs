//! The client side of the API: [`call`] sends one request to the agent's
//! socket; [`Client`] is what the CLI uses, the agent when one answers and
//! the same code in-process otherwise.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{execute, ApiError, Context, Request, Response, CALL_TIMEOUT};

/// Sends a request to the agent at `path`. `Ok(None)`: nobody listens there
/// (no socket file, or a stale one), so the caller may run it in-process.
pub async fn call(path: &Path, req: &Request) -> Result<Option<Value>, ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_owned(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|source| ApiError::Answer {
        path: path.to_owned(),
        source,
    })?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    tokio::time::timeout(CALL_TIMEOUT, BufReader::new(read).read_line(&mut answer))
        .await
        .map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the agent",
            ))
        })?
        .map_err(io)?;
    match serde_json::from_str::<Response>(&answer).map_err(|source| ApiError::Answer {
        path: path.to_owned(),
        source,
    })? {
        Response::Ok { result } => Ok(Some(result)),
        Response::Error { error } => Err(ApiError::Failed(error)),
    }
}

/// Runs requests through the agent's socket, or in-process when no agent
/// answers there (the same [`execute`]).
#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
    /// What an in-process request runs against.
    pub ctx: Context,
}

impl Client {
    /// The answer as sent on the wire.
    pub async fn request(&self, req: Request) -> Result<Value, anyhow::Error> {
        match call(&self.socket, &req).await? {
            Some(v) => Ok(v),
            None => execute(&self.ctx, req).await,
        }
    }
}
