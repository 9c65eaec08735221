//! A client for tailscaled's LocalAPI: HTTP/1.1 over its unix socket, blocking or polled.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

use crate::error::os_message;

/// The Host tailscaled requires; any other (e.g. `localhost`) is answered 403.
pub const HOST: &str = "local-tailscaled.sock";
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
const READ_SIZE: usize = 64 * 1024;
const SERVE_CONFIG: &str = "/localapi/v0/serve-config";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    found.next().map(|(_, v)| v.as_str())
}

#[derive(Debug)]
pub enum ApiError {
    /// Connecting, sending or receiving failed (`source` keeps the raw errno).
    Io { context: String, source: io::Error },
    /// The peer's answer was not well-formed HTTP, too large, or cut short.
    Protocol(String),
    /// tailscaled answered, but not with 2xx; `body` is its text, trimmed.
    Status { status: u16, body: String },
    Json {
        context: String,
        source: serde_json::Error,
    },
}

impl ApiError {
    fn about(self, what: &str) -> ApiError {
        match self {
            ApiError::Protocol(m) => ApiError::Protocol(format!("LocalAPI {what}: {m}")),
            e => e,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ApiError::Io { context, source } => write!(f, "{context}: {}", os_message(source)),
            ApiError::Protocol(m) => f.write_str(m),
            ApiError::Status { status, body } if body.is_empty() => {
                write!(f, "LocalAPI answered HTTP {status}")
            }
            ApiError::Status { status, body } => {
                write!(f, "LocalAPI answered HTTP {status}: {body}")
            }
            ApiError::Json { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Io { source, .. } => Some(source),
            ApiError::Json { source, .. } => Some(source),
            ApiError::Protocol(_) | ApiError::Status { .. } => None,
        }
    }
}

fn proto(msg: impl Into<String>) -> ApiError {
    ApiError::Protocol(msg.into())
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> ApiError {
    move |source| ApiError::Io { context, source }
}

/// The bytes of a request. A `Content-Length` is sent only with a body.
pub fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    request_bytes_with(method, path, &[], body)
}

/// [`request_bytes`] with extra header lines.
fn request_bytes_with(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body.unwrap_or_default());
    req
}

/// Given everything received so far and whether the peer closed, the response once complete
/// (Ok(None): more bytes needed). Interim 1xx responses are skipped; bytes after the body
/// are ignored.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, ApiError> {
    let mut decoder = Decoder::default();
    match decoder.feed(buf, eof)? {
        true => Ok(decoder.take_response()),
        false => Ok(None),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
}

#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
}

/// Incremental response parser: `raw` holds received bytes not yet decoded.
#[derive(Debug, Default)]
struct Decoder {
    raw: Vec<u8>,
    head: Option<Head>,
    body: Vec<u8>,
    complete: bool,
}

impl Decoder {
    /// Adds `data` and decodes as far as possible; true once the response is complete.
    fn feed(&mut self, data: &[u8], eof: bool) -> Result<bool, ApiError> {
        if self.complete {
            return Ok(true);
        }
        self.raw.extend_from_slice(data);
        while self.head.is_none() {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                if self.raw.len() > MAX_HEAD {
                    return Err(proto("response headers larger than 64 KiB"));
                } else if eof && self.raw.is_empty() {
                    return Err(proto("connection closed without a response"));
                } else if eof {
                    return Err(proto("connection closed inside the response headers"));
                }
                return Ok(false);
            };
            if end > MAX_HEAD {
                return Err(proto("response headers larger than 64 KiB"));
            }
            let (status, headers) = parse_head(self.raw.get(..end).unwrap_or_default())?;
            self.raw.drain(..(end + 4).min(self.raw.len()));
            if !(100..200).contains(&status) || status == 101 {
                let framing = framing(status, &headers)?;
                self.head = Some(Head {
                    status,
                    headers,
                    framing,
                });
            }
        }
        let done = match self.head.as_ref().map(|h| h.framing) {
            Some(Framing::Length(n)) => {
                let take = n.saturating_sub(self.body.len()).min(self.raw.len());
                self.body.extend(self.raw.drain(..take));
                self.raw.clear();
                self.body.len() == n
            }
            Some(Framing::Chunked) => {
                let (used, end) = decode_chunks(&self.raw, &mut self.body, MAX_BODY)?;
                self.raw.drain(..used.min(self.raw.len()));
                end
            }
            Some(Framing::UntilEof) | None => {
                self.body.append(&mut self.raw);
                eof
            }
        };
        if self.body.len() > MAX_BODY {
            return Err(proto("response body larger than 16 MiB"));
        } else if !done && eof {
            return Err(proto("connection closed inside the response body"));
        }
        self.complete = done;
        Ok(done)
    }

    fn take_response(&mut self) -> Option<Response> {
        let head = self.head.take()?;
        let body = std::mem::take(&mut self.body);
        Some(Response {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), ApiError> {
    let text = std::str::from_utf8(head).map_err(|_| proto("response headers are not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") && code.len() == 3 => {
            code.parse::<u16>().ok().filter(|c| (100..600).contains(c))
        }
        _ => None,
    };
    let status = status.ok_or_else(|| proto(format!("malformed status line {line:?}")))?;
    let headers = lines.map(|l| match l.split_once(':') {
        Some((n, v)) if !n.is_empty() => Ok((n.trim().to_string(), v.trim().to_string())),
        _ => Err(proto(format!("malformed header line {l:?}"))),
    });
    Ok((status, headers.collect::<Result<_, _>>()?))
}

fn framing(status: u16, headers: &[(String, String)]) -> Result<Framing, ApiError> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        Ok(Framing::Length(0))
    } else if let Some(te) = header(headers, "transfer-encoding") {
        match te.eq_ignore_ascii_case("chunked") {
            true => Ok(Framing::Chunked),
            false => Err(proto(format!("unsupported Transfer-Encoding {te:?}"))),
        }
    } else if let Some(len) = header(headers, "content-length") {
        match len.parse::<usize>() {
            Ok(n) if n > MAX_BODY => Err(proto("response body larger than 16 MiB")),
            Ok(n) if len.bytes().all(|b| b.is_ascii_digit()) => Ok(Framing::Length(n)),
            _ => Err(proto(format!("malformed Content-Length {len:?}"))),
        }
    } else {
        Ok(Framing::UntilEof)
    }
}

/// Decodes the complete chunks at the start of `raw` into `out` (which may not grow past
/// `limit`). Returns how many bytes of `raw` were used and whether the last chunk was seen.
fn decode_chunks(raw: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(usize, bool), ApiError> {
    let mut pos = 0;
    loop {
        let rest = raw.get(pos..).unwrap_or_default();
        let Some(line_len) = find(rest, b"\r\n") else {
            if rest.len() > MAX_HEAD {
                return Err(proto("chunk size line too long"));
            }
            return Ok((pos, false));
        };
        let line = rest.get(..line_len).unwrap_or_default();
        let digits = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or_else(|| proto(format!("malformed chunk size {:?}", line.escape_ascii())))?;
        let start = line_len + 2;
        if size == 0 {
            let trailers = rest.get(start..).unwrap_or_default();
            if trailers.starts_with(b"\r\n") {
                return Ok((pos + start + 2, true));
            } else if let Some(i) = find(trailers, b"\r\n\r\n") {
                return Ok((pos + start + i + 4, true));
            } else if trailers.len() > MAX_HEAD {
                return Err(proto("chunked trailers larger than 64 KiB"));
            }
            return Ok((pos, false));
        } else if size > limit.saturating_sub(out.len()) {
            return Err(proto("response body larger than 16 MiB"));
        }
        let (Some(data), Some(crlf)) = (rest.get(start..start + size), rest.get(start + size..))
        else {
            return Ok((pos, false));
        };
        match crlf.get(..2) {
            None if crlf.is_empty() || crlf == b"\r" => return Ok((pos, false)),
            Some(b"\r\n") => {}
            _ => return Err(proto("chunk data not followed by CRLF")),
        }
        out.extend_from_slice(data);
        pos += start + size + 2;
    }
}

fn check_request_line(method: &str, path: &str) -> Result<(), ApiError> {
    let bad = |s: &str| s.is_empty() || s.bytes().any(|b| b <= b' ' || b == 0x7f);
    match bad(method) || bad(path) {
        true => Err(proto(format!(
            "refusing to send request {method:?} {path:?}"
        ))),
        false => Ok(()),
    }
}

/// Connects to `socket` and writes the whole request.
fn send(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Option<Duration>,
    nonblocking: bool,
) -> Result<UnixStream, ApiError> {
    check_request_line(method, path)?;
    for (name, value) in headers {
        check_request_line(name, value)?;
    }
    let mut stream = UnixStream::connect(socket)
        .map_err(io_err(format!("connecting to {}", socket.display())))?;
    let context = format!("sending {method} {path} to {}", socket.display());
    let timeout = timeout.filter(|t| !t.is_zero());
    let setup = match nonblocking {
        true => stream.set_nonblocking(true),
        false => stream.set_write_timeout(timeout),
    };
    setup.map_err(io_err(context.clone()))?;
    stream
        .write_all(&request_bytes_with(method, path, headers, body))
        .map_err(io_err(context))?;
    Ok(stream)
}

/// One blocking read before `deadline` (a timeout is an `io::ErrorKind::TimedOut` error).
fn read_by(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
    what: &str,
) -> Result<usize, ApiError> {
    let timed_out =
        || io_err(format!("waiting for the response to {what}"))(io::ErrorKind::TimedOut.into());
    loop {
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(io_err(format!("reading the response to {what}")))?;
        }
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(e) => return Err(io_err(format!("reading the response to {what}"))(e)),
        }
    }
}

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
        let stream = send(socket, method, path, &[], body, None, true)?;
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

/// A blocking client; `timeout` bounds each request from sending to the end of the response.
#[derive(Debug, Clone)]
pub struct LocalApi {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl LocalApi {
    pub fn new(socket: impl Into<PathBuf>, timeout: Option<Duration>) -> LocalApi {
        LocalApi {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends the request, then reads (within the timeout) until `until` holds.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        until: fn(&Decoder) -> bool,
    ) -> Result<(UnixStream, Decoder), ApiError> {
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let what = format!("{method} {path}");
        let mut stream = send(
            &self.socket,
            method,
            path,
            headers,
            body,
            self.timeout,
            false,
        )?;
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; READ_SIZE];
        while !until(&decoder) {
            let n = read_by(&mut stream, &mut buf, deadline, &what)?;
            let data = buf.get(..n).unwrap_or_default();
            decoder.feed(data, n == 0).map_err(|e| e.about(&what))?;
        }
        Ok((stream, decoder))
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        self.request_with(method, path, &[], body)
    }

    /// [`LocalApi::request`] with extra request headers.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        let (_, mut decoder) = self.exchange(method, path, headers, body, |d| d.complete)?;
        decoder
            .take_response()
            .ok_or_else(|| proto(format!("LocalAPI {method} {path}: no response")))
    }

    /// GET `path`, require 2xx, and decode the JSON body.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let resp = require_2xx(self.request("GET", path, None)?)?;
        serde_json::from_slice(&resp.body).map_err(|source| ApiError::Json {
            context: format!("decoding the response to GET {path}"),
            source,
        })
    }

    pub fn status(&self) -> Result<Status, ApiError> {
        self.get_json("/localapi/v0/status")
    }

    pub fn prefs(&self) -> Result<Prefs, ApiError> {
        self.get_json("/localapi/v0/prefs")
    }

    /// The serve config (null when nothing is served) and its ETag.
    pub fn serve_config(&self) -> Result<(serde_json::Value, String), ApiError> {
        let resp = require_2xx(self.request("GET", SERVE_CONFIG, None)?)?;
        let etag = resp.header("Etag").unwrap_or_default().to_string();
        let config = serde_json::from_slice(&resp.body).map_err(|source| ApiError::Json {
            context: format!("decoding the response to GET {SERVE_CONFIG}"),
            source,
        })?;
        Ok((config, etag))
    }

    /// Replaces the serve config if it still has `etag` (else answered 412).
    pub fn set_serve_config(&self, config: &serde_json::Value, etag: &str) -> Result<(), ApiError> {
        let body = config.to_string();
        let headers: &[(&str, &str)] = match etag.is_empty() {
            true => &[],
            false => &[("If-Match", etag)],
        };
        let resp = self.request_with("POST", SERVE_CONFIG, headers, Some(body.as_bytes()))?;
        require_2xx(resp).map(|_| ())
    }

    /// Watches the IPN bus. The timeout applies until the response headers; the stream of
    /// notifications itself has none.
    pub fn watch_ipn_bus(&self, mask: u32) -> Result<IpnBus, ApiError> {
        let path = format!("/localapi/v0/watch-ipn-bus?mask={mask}");
        let until = |d: &Decoder| answered_2xx(d) || d.complete;
        let (stream, mut decoder) = self.exchange("GET", &path, &[], None, until)?;
        if !answered_2xx(&decoder) {
            let resp = decoder.take_response();
            return Err(resp.map_or_else(|| proto("no response"), |r| status_error(&r)));
        }
        stream
            .set_read_timeout(None)
            .map_err(io_err(format!("watching {}", self.socket.display())))?;
        Ok(IpnBus {
            stream,
            decoder,
            what: format!("GET {path}"),
            done: false,
        })
    }
}

fn answered_2xx(decoder: &Decoder) -> bool {
    decoder
        .head
        .as_ref()
        .is_some_and(|h| (200..300).contains(&h.status))
}

fn status_error(resp: &Response) -> ApiError {
    let body = String::from_utf8_lossy(&resp.body).trim().to_string();
    ApiError::Status {
        status: resp.status,
        body,
    }
}

fn require_2xx(resp: Response) -> Result<Response, ApiError> {
    match resp.status {
        200..300 => Ok(resp),
        _ => Err(status_error(&resp)),
    }
}

/// The notifications of `watch_ipn_bus`, one JSON object each; ends when tailscaled closes.
#[derive(Debug)]
pub struct IpnBus {
    stream: UnixStream,
    decoder: Decoder,
    what: String,
    done: bool,
}

impl IpnBus {
    /// The connection, e.g. to shut it down from another thread.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    fn next_value(&mut self) -> Result<Option<serde_json::Value>, ApiError> {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            let body = &mut self.decoder.body;
            let mut values = serde_json::Deserializer::from_slice(body).into_iter();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset().min(body.len());
                    body.drain(..used);
                    return Ok(Some(value));
                }
                Some(Err(e)) if !e.is_eof() => {
                    let context = format!("decoding a notification from {}", self.what);
                    return Err(ApiError::Json { context, source: e });
                }
                Some(Err(_)) => {}
                None => body.clear(),
            }
            // Read until the decoded body grows (a whole chunk arrived) or the stream ends.
            let before = self.decoder.body.len();
            while self.decoder.body.len() == before {
                let n = match self.decoder.complete {
                    true => 0,
                    false => read_by(&mut self.stream, &mut buf, None, &self.what)?,
                };
                if n == 0 && self.decoder.raw.is_empty() && self.decoder.body.is_empty() {
                    return Ok(None);
                } else if n == 0 {
                    return Err(proto(format!(
                        "LocalAPI {}: stream ended inside a notification",
                        self.what
                    )));
                }
                let data = buf.get(..n).unwrap_or_default();
                self.decoder
                    .feed(data, false)
                    .map_err(|e| e.about(&self.what))?;
            }
        }
    }
}

impl Iterator for IpnBus {
    type Item = Result<serde_json::Value, ApiError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_value().transpose();
        self.done = !matches!(next, Some(Ok(_)));
        next
    }
}

/// Deserializes null as the type's default (serde's `default` only covers missing fields).
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// GET /localapi/v0/status (the fields tsinit uses).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Status {
    pub backend_state: String,
    pub version: String,
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    #[serde(rename = "TailscaleIPs", deserialize_with = "null_default")]
    pub tailscale_ips: Vec<String>,
    #[serde(rename = "Self")]
    pub self_: Option<PeerStatus>,
    #[serde(deserialize_with = "null_default")]
    pub health: Vec<String>,
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    pub current_tailnet: Option<Tailnet>,
    #[serde(deserialize_with = "null_default")]
    pub peer: BTreeMap<String, PeerStatus>,
    #[serde(rename = "TUN")]
    pub tun: bool,
    /// DNS names control can get TLS certificates for (empty: HTTPS is off).
    #[serde(deserialize_with = "null_default")]
    pub cert_domains: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeerStatus {
    #[serde(rename = "ID")]
    pub id: String,
    pub host_name: String,
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    #[serde(rename = "TailscaleIPs", deserialize_with = "null_default")]
    pub tailscale_ips: Vec<String>,
    pub online: bool,
    #[serde(rename = "OS")]
    pub os: String,
    #[serde(deserialize_with = "null_default")]
    pub tags: Vec<String>,
    /// The node's capabilities (keys only).
    #[serde(deserialize_with = "null_default")]
    pub cap_map: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Tailnet {
    pub name: String,
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    #[serde(rename = "MagicDNSEnabled")]
    pub magic_dns_enabled: bool,
}

/// GET /localapi/v0/prefs (the fields tsinit uses).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Prefs {
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    pub route_all: bool,
    pub want_running: bool,
    pub logged_out: bool,
    pub hostname: String,
    #[serde(rename = "CorpDNS")]
    pub corp_dns: bool,
    #[serde(rename = "RunSSH")]
    pub run_ssh: bool,
    pub shields_up: bool,
    #[serde(deserialize_with = "null_default")]
    pub advertise_tags: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub advertise_routes: Vec<String>,
    pub no_stateful_filtering: bool,
    #[serde(rename = "NoSNAT")]
    pub no_snat: bool,
    /// The persisted login (keys redacted); null when the node never logged in.
    pub config: Option<serde_json::Value>,
}

impl Prefs {
    /// Whether these prefs hold a login that tailscaled will resume: not logged out,
    /// meant to run, and a persisted node. (A restarted tailscaled has loaded them while
    /// its state still reads NoState.)
    pub fn saved_login(&self) -> bool {
        let node = self
            .config
            .as_ref()
            .and_then(|c| c.get("NodeID"))
            .and_then(|n| n.as_str());
        !self.logged_out && self.want_running && node.is_some_and(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};

    const STATUS_JSON: &str = r#"{"Version":"1.96.4-t8cf541dfd-g62bc84ce7","TUN":true,"BackendState":"NeedsLogin","AuthURL":"","TailscaleIPs":null,"Self":{"ID":"","PublicKey":"nodekey:00","HostName":"vm","DNSName":"","OS":"linux","UserID":0,"TailscaleIPs":null,"Addrs":[],"Online":false},"Health":["Tailscale is stopped."],"MagicDNSSuffix":"","CurrentTailnet":null,"CertDomains":null,"Peer":null,"User":null,"ClientVersion":null}"#;
    const PREFS_JSON: &str = r#"{"ControlURL":"","RouteAll":false,"ExitNodeID":"","CorpDNS":true,"RunSSH":false,"WantRunning":false,"LoggedOut":true,"ShieldsUp":false,"AdvertiseTags":null,"Hostname":"","AdvertiseRoutes":null,"NoSNAT":false,"NoStatefulFiltering":true,"NetfilterMode":2,"AutoUpdate":{"Check":true,"Apply":null}}"#;
    const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTailscale-Version: 1.96.4\r\ntransfer-encoding: Chunked\r\n\r\n5;name=val\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: t\r\n\r\n";
    const LENGTH: &str =
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTailscale-Version: 1.96.4\r\n\r\nhello";

    /// Wraps `parts` as a chunked body, with or without the last chunk.
    fn chunked(parts: &[&str], last: bool) -> String {
        let mut out: String = parts
            .iter()
            .map(|p| format!("{:x}\r\n{p}\r\n", p.len()))
            .collect();
        out.push_str(if last { "0\r\n\r\n" } else { "" });
        out
    }

    #[test]
    fn request_bytes_are_exact() {
        let get = "GET /localapi/v0/status HTTP/1.1\r\nHost: local-tailscaled.sock\r\nConnection: close\r\n\r\n";
        assert_eq!(
            request_bytes("GET", "/localapi/v0/status", None),
            get.as_bytes()
        );
        let cases: &[(&str, Option<&[u8]>, &str)] = &[
            ("POST", Some(b"{}"), "Content-Length: 2\r\n\r\n{}"),
            ("PATCH", Some(b""), "Content-Length: 0\r\n\r\n"),
            ("POST", None, "\r\n"),
        ];
        for (method, body, rest) in cases {
            let want =
                format!("{method} /x HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{rest}");
            assert_eq!(
                String::from_utf8(request_bytes(method, "/x", *body)).unwrap(),
                want
            );
        }
    }

    #[test]
    fn parse_response_cases() {
        // "[eof] WANT <= INPUT": WANT is "STATUS BODY", "" (incomplete) or "!error"; \n is CRLF.
        let cases = [
            "200 hello <= HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
            "200 hi <= HTTP/1.1 200 OK\nContent-Length: 2\n\nhiXX",
            "200 hi <= HTTP/1.1 200 OK\ncontent-length:2\n\nhi",
            "200 hi! <= HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2;a=b;c\nhi\n1\n!\n0\n\n",
            "eof 200 all <= HTTP/1.0 200 OK\n\nall",
            " <= HTTP/1.0 200 OK\n\nall",
            "403 forbidden <= HTTP/1.1 403 Forbidden\nContent-Length: 9\n\nforbidden",
            "503 no backend <= HTTP/1.1 503 Service Unavailable\nContent-Length: 10\n\nno backend",
            "204  <= HTTP/1.1 204 No Content\n\n",
            "200 x <= HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nContent-Length: 1\n\nx",
            " <= ",
            "eof !closed without a response <= ",
            "eof !inside the response headers <= HTTP/1.1 200 OK\nContent-Le",
            "eof !inside the response body <= HTTP/1.1 200 OK\nContent-Length: 5\n\nhel",
            "eof !inside the response body <= HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nhi\n",
            "!malformed status line <= HTTP/1.1 abc OK\n\n",
            "!malformed status line <= SSH-2.0-OpenSSH\n\n",
            "!malformed header line <= HTTP/1.1 200 OK\nnocolon\n\n",
            "!malformed Content-Length <= HTTP/1.1 200 OK\nContent-Length: +5\n\nhello",
            "!unsupported <= HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n\n",
            "!malformed chunk size <= HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\nzz\n",
            "!malformed chunk size <= HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n+1\nx\n",
            "!not followed by CRLF <= HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1\nxyz",
            "!larger than 16 MiB <= HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1000001\n",
            "!larger than 64 KiB <= HTTP/1.1 200 OK\nX: {HEAD}",
            "!larger than 16 MiB <= HTTP/1.1 200 OK\nContent-Length: 16777217\n\n",
            "!larger than 16 MiB <= HTTP/1.1 200 OK\n\n{BODY}",
        ];
        let sizes = [("{HEAD}", MAX_HEAD), ("{BODY}", MAX_BODY + 1)];
        let fill = |i: &str| {
            sizes.iter().fold(i.replace('\n', "\r\n"), |i, (k, n)| {
                i.replace(k, &"a".repeat(*n))
            })
        };
        let cases = cases.iter().filter_map(|c| c.split_once(" <= "));
        let cases =
            cases.map(|(w, i)| (fill(i), w.starts_with("eof "), w.trim_start_matches("eof ")));
        for (input, eof, want) in cases {
            let name = input.get(..80).unwrap_or(&input);
            match (
                parse_response(input.as_bytes(), eof),
                want.strip_prefix('!'),
            ) {
                (Ok(None), None) => assert_eq!(want, "", "{name}"),
                (Ok(Some(r)), None) => {
                    let got = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
                    assert_eq!(got, want, "{name}");
                }
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{name}: {e}"),
                (got, _) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn every_split_is_incomplete_until_the_end() {
        let bare = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(&["hi"], true)
        );
        for full in [CHUNKED, LENGTH, &bare] {
            let want = parse_response(full.as_bytes(), false).unwrap().unwrap();
            let mut decoder = Decoder::default();
            for (i, byte) in full.bytes().enumerate() {
                let prefix = full.as_bytes().get(..i).unwrap();
                assert_eq!(parse_response(prefix, false).unwrap(), None, "{i}");
                assert!(parse_response(prefix, true).is_err(), "{i}");
                let done = decoder.feed(&[byte], false).unwrap();
                assert_eq!(done, i + 1 == full.len(), "{i}");
            }
            assert_eq!(decoder.take_response(), Some(want));
        }
        let resp = parse_response(CHUNKED.as_bytes(), false).unwrap().unwrap();
        assert_eq!(resp.header("TAILSCALE-VERSION"), Some("1.96.4"));
        assert_eq!(resp.header("X-Missing"), None);
    }

    #[test]
    fn json_fixtures_decode() {
        let status: Status = serde_json::from_str(STATUS_JSON).unwrap();
        let self_ = PeerStatus {
            host_name: "vm".into(),
            os: "linux".into(),
            ..Default::default()
        };
        let want = Status {
            backend_state: "NeedsLogin".into(),
            version: "1.96.4-t8cf541dfd-g62bc84ce7".into(),
            self_: Some(self_),
            health: vec!["Tailscale is stopped.".into()],
            tun: true,
            ..Default::default()
        };
        assert_eq!(status, want);
        let prefs: Prefs = serde_json::from_str(PREFS_JSON).unwrap();
        let want = Prefs {
            corp_dns: true,
            logged_out: true,
            no_stateful_filtering: true,
            ..Default::default()
        };
        assert_eq!(prefs, want);

        let running = r#"{"BackendState":"Running","TailscaleIPs":["100.64.0.1"],"MagicDNSSuffix":"t.ts.net",
            "CurrentTailnet":{"Name":"example.com","MagicDNSSuffix":"t.ts.net","MagicDNSEnabled":true},
            "Peer":{"nodekey:ab":{"ID":"n2","DNSName":"db.t.ts.net.","TailscaleIPs":["100.64.0.2"],"Online":true,"Tags":["tag:db"]}},
            "Self":{"ID":"n1","Tags":null},"AuthURL":"https://login","Health":null}"#;
        let status: Status = serde_json::from_str(running).unwrap();
        assert_eq!(status.tailscale_ips, ["100.64.0.1"]);
        assert_eq!(status.auth_url, "https://login");
        assert_eq!(status.magic_dns_suffix, "t.ts.net");
        let tailnet = status.current_tailnet.unwrap();
        assert!(tailnet.magic_dns_enabled && tailnet.name == "example.com");
        let peer = status.peer.get("nodekey:ab").unwrap();
        assert_eq!(
            (peer.id.as_str(), peer.dns_name.as_str()),
            ("n2", "db.t.ts.net.")
        );
        assert!(peer.online && peer.tags == ["tag:db"] && peer.tailscale_ips == ["100.64.0.2"]);
        assert_eq!(status.self_.unwrap().id, "n1");
        assert_eq!(
            serde_json::from_str::<Status>("{}").unwrap(),
            Status::default()
        );
        let prefs = r#"{"ControlURL":"https://c","AdvertiseTags":["tag:a"],"AdvertiseRoutes":["10.0.0.0/8"],"NoSNAT":true,"RunSSH":true,"Hostname":"h"}"#;
        let prefs: Prefs = serde_json::from_str(prefs).unwrap();
        assert_eq!(
            (prefs.control_url.as_str(), prefs.hostname.as_str()),
            ("https://c", "h")
        );
        assert!(prefs.no_snat && prefs.run_ssh && prefs.advertise_tags == ["tag:a"]);
        assert_eq!(prefs.advertise_routes, ["10.0.0.0/8"]);
    }

    /// A fresh directory, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tsinit-localapi-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Serves one connection on a socket in `dir`: reads the request (answering 403 unless
    /// its Host is right, as tailscaled does), waits for `go` if given, then writes `reply`.
    /// The thread returns the request it read.
    fn serve(
        dir: &Scratch,
        reply: &str,
        go: Option<mpsc::Receiver<()>>,
    ) -> (PathBuf, JoinHandle<String>) {
        let sock = dir.0.join("sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let reply = reply.to_string();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut req = Vec::new();
            let want = |req: &[u8]| {
                let end = find(req, b"\r\n\r\n")? + 4;
                let head = std::str::from_utf8(req.get(..end)?).ok()?;
                let len = head
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("Content-Length: "));
                Some(end + len.map_or(0, |l| l.parse().unwrap()))
            };
            while want(&req).is_none_or(|n| req.len() < n) {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8(req).unwrap();
            let reply = match req.contains("\r\nHost: local-tailscaled.sock\r\n") {
                true => reply,
                false => "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nbad".to_string(),
            };
            if let Some(go) = go {
                let _ = go.recv();
            }
            let _ = conn.write_all(reply.as_bytes());
            req
        });
        (sock, server)
    }

    /// Runs `f` against a server replying `reply`; returns its result and the request.
    fn against<T>(reply: &str, f: impl FnOnce(&LocalApi) -> T) -> (T, String) {
        let dir = scratch();
        let (sock, server) = serve(&dir, reply, None);
        let got = f(&LocalApi::new(&sock, Some(Duration::from_secs(10))));
        (got, server.join().unwrap())
    }

    #[test]
    fn blocking_requests_end_to_end() {
        let ok = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let parts = [&STATUS_JSON[..50], &STATUS_JSON[50..]];
        let status = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(&parts, true)
        );
        let (got, req) = against(&status, |api| api.status());
        assert_eq!(got.unwrap().backend_state, "NeedsLogin");
        assert_eq!(
            req.as_bytes(),
            request_bytes("GET", "/localapi/v0/status", None)
        );
        let (got, req) = against(&ok(PREFS_JSON), |api| api.prefs());
        assert!(got.unwrap().logged_out && req.starts_with("GET /localapi/v0/prefs HTTP/1.1\r\n"));
        let (got, req) = against(&ok("ok"), |api| {
            api.request("POST", "/localapi/v0/start", Some(b"{}"))
        });
        assert_eq!(got.unwrap().body, b"ok");
        assert!(
            req.starts_with("POST /localapi/v0/start ")
                && req.ends_with("Content-Length: 2\r\n\r\n{}")
        );

        let no_backend =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\n\r\nno backend\n";
        let (got, _) = against(no_backend, |api| {
            api.get_json::<Status>("/localapi/v0/status")
        });
        assert!(
            matches!(&got, Err(ApiError::Status { status: 503, body }) if body == "no backend"),
            "{got:?}"
        );
        let (got, _) = against("", |api| api.status());
        assert!(
            matches!(&got, Err(ApiError::Protocol(m)) if m.contains("closed without a response")),
            "{got:?}"
        );
        let (got, _) = against(&ok("{x}"), |api| api.status());
        assert!(matches!(got, Err(ApiError::Json { .. })), "{got:?}");
    }

    #[test]
    fn blocking_request_timeouts_and_refusals() {
        let dir = scratch();
        let (tx, rx) = mpsc::channel();
        let (sock, server) = serve(&dir, LENGTH, Some(rx));
        let api = LocalApi::new(&sock, Some(Duration::from_millis(50)));
        assert_eq!(api.socket(), sock);
        let got = api.status();
        assert!(
            matches!(&got, Err(ApiError::Io { source, .. }) if source.kind() == io::ErrorKind::TimedOut),
            "{got:?}"
        );
        tx.send(()).unwrap();
        server.join().unwrap();

        let got = LocalApi::new(dir.0.join("missing"), None).status();
        assert!(
            matches!(&got, Err(ApiError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT)),
            "{got:?}"
        );
        assert!(matches!(
            api.request("GET", "/a b", None),
            Err(ApiError::Protocol(_))
        ));
    }

    #[test]
    fn watch_ipn_bus_streams_objects() {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let parts = [
            r#"{"State":2,"#,
            "\"Version\":\"1.96.4\"}\n",
            "{\"State\":6}\n",
        ];
        let (first, second) = (r#"{"State":2,"Version":"1.96.4"}"#, r#"{"State":6}"#);
        let cut =
            "!LocalAPI GET /localapi/v0/watch-ipn-bus?mask=2: stream ended inside a notification";
        let cases = [
            (chunked(&parts, true), [first, second]),
            (chunked(&parts, false), [first, second]),
            (
                chunked(&parts[..2], false) + &chunked(&["{\"cut"], false),
                [first, cut],
            ),
        ];
        for (body, want) in cases {
            let (got, req) = against(&format!("{head}{body}"), |api| {
                let bus = api.watch_ipn_bus(2).unwrap();
                bus.map(|v| v.map_or_else(|e| format!("!{e}"), |v| v.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want);
            assert!(req.starts_with("GET /localapi/v0/watch-ipn-bus?mask=2 HTTP/1.1\r\n"));
        }
        let forbidden = "HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope";
        let (got, _) = against(forbidden, |api| api.watch_ipn_bus(0).err());
        assert!(
            matches!(&got, Some(ApiError::Status { status: 403, body }) if body == "nope"),
            "{got:?}"
        );
    }

    #[test]
    fn pending_request_waits_for_a_delayed_reply() {
        let dir = scratch();
        let (tx, rx) = mpsc::channel();
        let (sock, server) = serve(&dir, CHUNKED, Some(rx));
        let mut req = PendingRequest::start(&sock, "GET", "/localapi/v0/status", None).unwrap();
        assert_eq!(
            req.on_readable().unwrap(),
            None,
            "no reply yet, and no blocking"
        );
        tx.send(()).unwrap();
        let mut got = None;
        for _ in 0..1000 {
            let mut fds = [PollFd::new(req.fd(), PollFlags::POLLIN)];
            assert_eq!(
                poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
                1,
                "timed out"
            );
            got = req.on_readable().unwrap();
            if got.is_some() {
                break;
            }
        }
        assert_eq!(got.unwrap().body, b"hello, world!!!");
        assert!(req.on_readable().is_err());
        server.join().unwrap();

        drop(UnixListener::bind(dir.0.join("dead")).unwrap());
        for (name, errno) in [("missing", libc::ENOENT), ("dead", libc::ECONNREFUSED)] {
            match PendingRequest::start(&dir.0.join(name), "GET", "/", None).err() {
                Some(ApiError::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(errno)),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn saved_login_needs_a_persisted_node_that_should_run() {
        let prefs = |logged_out: bool, want: bool, config: &str| -> Prefs {
            serde_json::from_str(&format!(
                "{{\"LoggedOut\":{logged_out},\"WantRunning\":{want},\"Config\":{config}}}"
            ))
            .unwrap()
        };
        let node = r#"{"PrivateNodeKey":"privkey:00","NodeID":"n1CNTRL","UserProfile":{"ID":1}}"#;
        assert!(prefs(false, true, node).saved_login());
        assert!(!prefs(false, true, "null").saved_login(), "never logged in");
        assert!(!prefs(true, true, node).saved_login(), "logged out");
        assert!(
            !prefs(false, false, node).saved_login(),
            "tailscale down: Stopped"
        );
        assert!(!prefs(false, true, r#"{"NodeID":""}"#).saved_login());
    }
}
