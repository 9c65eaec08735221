//! Requests the main loop drives: sent at once, read when their descriptor is readable,
//! given up at a deadline. Nothing here blocks.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::http::{Decoder, Response};
use super::{ApiError, io_err, proto, require_2xx, send};

/// A request for an event loop: poll `fd()` for readability, then call `on_readable`.
#[derive(Debug)]
pub struct PendingRequest {
    stream: UnixStream,
    decoder: Decoder,
    what: String,
}

impl PendingRequest {
    /// Connects and sends the request; the socket is then non-blocking.
    pub fn start(
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<PendingRequest, ApiError> {
        PendingRequest::start_with(socket, method, path, &[], body)
    }

    /// [`PendingRequest::start`] with extra request headers.
    pub fn start_with(
        socket: &Path,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<PendingRequest, ApiError> {
        let stream = send(socket, method, path, headers, body, None, true)?;
        Ok(PendingRequest {
            stream,
            decoder: Decoder::default(),
            what: format!("{method} {path}"),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Reads what is available; the response once complete (call no more after that).
    pub fn on_readable(&mut self) -> Result<Option<Response>, ApiError> {
        if self.decoder.complete {
            return Err(proto(format!("{} already answered", self.what)));
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(format!("reading the response to {}", self.what))(e)),
            };
            let data = buf.get(..n).unwrap_or_default();
            let done = self.decoder.feed(data, n == 0);
            if done.map_err(|e| e.about(&self.what))? {
                return Ok(self.decoder.take_response());
            }
        }
    }
}

/// How long tsinit waits for any LocalAPI answer before it counts tailscaled as hung.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request the main loop drives: sent at once, answered when its descriptor is
/// readable, given up at its deadline (then tailscaled counts as hung).
#[derive(Debug)]
pub struct Request {
    pending: PendingRequest,
    pub deadline: Instant,
    pub what: String,
}

/// Where a [`Request`] is.
#[derive(Debug)]
pub enum Answer {
    Pending,
    /// A 2xx answer.
    Ok(Response),
    /// Not answered in time.
    TimedOut,
    /// Failed otherwise (refused, not 2xx, cut short).
    Failed(ApiError),
}

impl Request {
    /// Sends `method path` (with `headers` and `body`) to the LocalAPI at `socket`.
    pub fn send(
        socket: &Path,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Request, ApiError> {
        Ok(Request {
            pending: PendingRequest::start_with(socket, method, path, headers, body)?,
            deadline: Instant::now() + ANSWER_TIMEOUT,
            what: format!("{method} {path}"),
        })
    }

    /// GET `path`.
    pub fn get(socket: &Path, path: &str) -> Result<Request, ApiError> {
        Request::send(socket, "GET", path, &[], None)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pending.fd()
    }

    /// Reads what has arrived (never blocks).
    pub fn poll(&mut self) -> Answer {
        match self.pending.on_readable() {
            Ok(Some(resp)) => match require_2xx(resp) {
                Ok(resp) => Answer::Ok(resp),
                Err(e) => Answer::Failed(e),
            },
            Ok(None) if Instant::now() >= self.deadline => Answer::TimedOut,
            Ok(None) => Answer::Pending,
            Err(e) => Answer::Failed(e),
        }
    }
}

/// The status in an answer to GET [`STATUS`](super::STATUS).
pub fn decode_status(resp: &Response) -> Result<super::Status, ApiError> {
    scanned(resp, "status", super::scan::status)
}

/// The prefs in an answer to GET [`PREFS`](super::PREFS).
pub fn decode_prefs(resp: &Response) -> Result<super::Prefs, ApiError> {
    scanned(resp, "prefs", super::scan::prefs)
}

/// An answer to `what` as the scanner `scan` reads it.
fn scanned<T>(
    resp: &Response,
    what: &str,
    scan: fn(&[u8]) -> Result<T, String>,
) -> Result<T, ApiError> {
    scan(&resp.body)
        .map_err(|e| ApiError::Protocol(format!("decoding the response to {what}: {e}")))
}

/// Decodes a JSON answer to `what`.
pub fn decode<T: serde::de::DeserializeOwned>(resp: &Response, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(&resp.body).map_err(|source| ApiError::Json {
        context: format!("decoding the response to {what}"),
        source,
    })
}
