//! A client for tailscaled's LocalAPI: HTTP/1.1 over its unix socket, blocking or polled.

mod http;
mod request;
pub mod scan;
mod types;

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::os_message;
use http::{Decoder, check_request_line, request_bytes_with};
pub use http::{HOST, Response, parse_response, request_bytes};
pub use request::{
    ANSWER_TIMEOUT, Answer, PendingRequest, Request, decode, decode_prefs, decode_status,
};
pub use types::*;

const READ_SIZE: usize = 64 * 1024;
pub const SERVE_CONFIG: &str = "/localapi/v0/serve-config";
/// The prefs.
pub const PREFS: &str = "/localapi/v0/prefs";
/// The status, without peers.
pub const STATUS: &str = "/localapi/v0/status?peers=false";

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
    /// Whether the connection itself failed (refused, reset, closed early): tailscaled
    /// may have gone away.
    pub fn lost_connection(&self) -> bool {
        match self {
            ApiError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotFound
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            ApiError::Protocol(m) => m.contains("connection closed"),
            _ => false,
        }
    }

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

pub(super) fn proto(msg: impl Into<String>) -> ApiError {
    ApiError::Protocol(msg.into())
}

pub(super) fn io_err(context: String) -> impl FnOnce(io::Error) -> ApiError {
    move |source| ApiError::Io { context, source }
}

/// Connects to `socket` and writes the whole request.
pub(super) fn send(
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

    /// The status of this node, without its peers (which come with the netmap on the IPN
    /// bus): small whatever the tailnet's size.
    pub fn status(&self) -> Result<Status, ApiError> {
        let resp = require_2xx(self.request("GET", STATUS, None)?)?;
        decode_status(&resp)
    }

    pub fn prefs(&self) -> Result<Prefs, ApiError> {
        let resp = require_2xx(self.request("GET", PREFS, None)?)?;
        decode_prefs(&resp)
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
        decoder.limit = MAX_NOTIFICATION;
        Ok(IpnBus {
            stream,
            decoder,
            what: format!("GET {path}"),
            done: false,
            scanned: 0,
            buf: vec![0u8; READ_SIZE],
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

pub(super) fn require_2xx(resp: Response) -> Result<Response, ApiError> {
    match resp.status {
        200..300 => Ok(resp),
        _ => Err(status_error(&resp)),
    }
}

/// The notifications of `watch_ipn_bus`, one JSON object a line; ends when tailscaled
/// closes. A notification may be as large as the netmap (megabytes in a big tailnet): it
/// is read whole, up to [`MAX_NOTIFICATION`], never re-parsed while it arrives.
#[derive(Debug)]
pub struct IpnBus {
    stream: UnixStream,
    decoder: Decoder,
    what: String,
    done: bool,
    /// How much of the decoded body is known to hold no newline.
    scanned: usize,
    buf: Vec<u8>,
}

/// What [`IpnBus::read_more`] got.
#[derive(Debug)]
pub enum Arrived {
    /// Bytes (not necessarily a whole notification).
    Data,
    /// Nothing within the wait.
    Nothing,
    /// The end of the stream, with what came after the last newline.
    End(Option<Vec<u8>>),
}

/// The largest notification read (a netmap of several hundred thousand nodes).
pub const MAX_NOTIFICATION: usize = 1 << 30;

impl IpnBus {
    /// The connection, e.g. to shut it down from another thread.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// What has arrived after the last notification returned (complete notifications
    /// among it end with a newline).
    pub fn buffered(&self) -> &[u8] {
        &self.decoder.body
    }

    /// The next notification's JSON (without its newline); `None` at the end.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
            match self.read_more(None)? {
                Arrived::Data | Arrived::Nothing => {}
                Arrived::End(last) => return Ok(last),
            }
        }
    }

    /// A notification already received whole (its JSON without the newline), if any.
    pub fn take_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let body = &mut self.decoder.body;
            let Some(i) = crate::bytes::find(body, self.scanned.min(body.len()), b'\n') else {
                self.scanned = body.len();
                return None;
            };
            let rest = body.split_off(i + 1);
            let mut line = std::mem::replace(body, rest);
            line.pop();
            self.scanned = 0;
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }

    /// Reads once, waiting at most `wait` (None: as long as it takes) for bytes to come.
    pub fn read_more(&mut self, wait: Option<Duration>) -> Result<Arrived, ApiError> {
        if wait.is_some_and(|w| w.is_zero()) {
            return Ok(Arrived::Nothing);
        }
        let n = match self.decoder.complete {
            true => 0,
            false => {
                let deadline = wait.map(|w| Instant::now() + w);
                let read = read_by(&mut self.stream, &mut self.buf, deadline, &self.what);
                if wait.is_some() {
                    // The next read without a wait must not time out.
                    self.stream
                        .set_read_timeout(None)
                        .map_err(io_err(format!("watching with {}", self.what)))?;
                }
                match read {
                    Ok(n) => n,
                    Err(ApiError::Io { source, .. })
                        if wait.is_some() && source.kind() == io::ErrorKind::TimedOut =>
                    {
                        return Ok(Arrived::Nothing);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if n == 0 {
            let body = std::mem::take(&mut self.decoder.body);
            self.scanned = 0;
            if body.iter().all(u8::is_ascii_whitespace) && self.decoder.raw.is_empty() {
                return Ok(Arrived::End(None));
            }
            if !self.decoder.complete {
                return Err(proto(format!(
                    "LocalAPI {}: stream ended inside a notification",
                    self.what
                )));
            }
            return Ok(Arrived::End(Some(body)));
        }
        let data = self.buf.get(..n).unwrap_or_default();
        self.decoder
            .feed(data, false)
            .map_err(|e| e.about(&self.what))?;
        Ok(Arrived::Data)
    }

    fn next_value(&mut self) -> Result<Option<serde_json::Value>, ApiError> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|source| ApiError::Json {
                context: format!("decoding a notification from {}", self.what),
                source,
            })
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

#[cfg(test)]
mod tests {
    use super::http::{MAX_BODY, MAX_HEAD, find};
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
    fn a_big_chunk_is_decoded_as_it_arrives() {
        let data = "x".repeat(1 << 20);
        let full = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{data}\r\n0\r\n\r\n",
            data.len()
        );
        let mut decoder = Decoder::default();
        let mut done = false;
        for piece in full.as_bytes().chunks(READ_SIZE) {
            done = decoder.feed(piece, false).unwrap();
            assert!(
                decoder.raw.len() < 64,
                "{} bytes held undecoded",
                decoder.raw.len()
            );
        }
        assert!(done);
        assert_eq!(decoder.take_response().unwrap().body.len(), data.len());
    }

    #[test]
    fn json_fixtures_decode() {
        let status: Status = scan::status(STATUS_JSON.as_bytes()).unwrap();
        let self_ = PeerStatus::default();
        let want = Status {
            backend_state: "NeedsLogin".into(),
            version: "1.96.4-t8cf541dfd-g62bc84ce7".into(),
            self_: Some(self_),
            health: vec!["Tailscale is stopped.".into()],
            tun: true,
            ..Default::default()
        };
        assert_eq!(status, want);
        let prefs = scan::prefs(PREFS_JSON.as_bytes()).unwrap();
        let want = Prefs {
            corp_dns: true,
            logged_out: true,
            no_stateful_filtering: true,
            netfilter_mode: 2,
            update_check: true,
            ..Default::default()
        };
        assert_eq!(prefs, want);

        let running = r#"{"BackendState":"Running","TailscaleIPs":["100.64.0.1"],"MagicDNSSuffix":"t.ts.net",
            "CurrentTailnet":{"Name":"example.com","MagicDNSSuffix":"t.ts.net","MagicDNSEnabled":true},
            "Peer":{"nodekey:ab":{"ID":"n2","DNSName":"db.t.ts.net.","TailscaleIPs":["100.64.0.2"],"Online":true,"Tags":["tag:db"]}},
            "Self":{"ID":"n1","Tags":null},"AuthURL":"https://login","Health":null}"#;
        let status: Status = scan::status(running.as_bytes()).unwrap();
        assert_eq!(status.tailscale_ips, ["100.64.0.1"]);
        assert_eq!(status.auth_url, "https://login");
        assert_eq!(status.magic_dns_suffix, "t.ts.net");
        let tailnet = status.current_tailnet.unwrap();
        assert_eq!(tailnet.magic_dns_suffix, "t.ts.net");
        let peer = status.peer.get("nodekey:ab").unwrap();
        assert_eq!(peer.dns_name, "db.t.ts.net.");
        assert!(peer.online && peer.tailscale_ips == ["100.64.0.2"]);
        assert!(status.self_.is_some());
        assert_eq!(scan::status(b"{}").unwrap(), Status::default());
        let prefs = r#"{"ControlURL":"https://c","AdvertiseTags":["tag:a"],"AdvertiseRoutes":["10.0.0.0/8"],"NoSNAT":true,"RunSSH":true,"Hostname":"h","ExitNodeID":"n2","ExitNodeIP":"","AppConnector":{"Advertise":true},"NetfilterMode":1,"OperatorUser":"app","NoStatefulFiltering":null}"#;
        let prefs = scan::prefs(prefs.as_bytes()).unwrap();
        assert_eq!(prefs.exit_node_id, "n2");
        assert!(prefs.advertise_connector && !prefs.no_stateful_filtering);
        assert_eq!(
            (prefs.netfilter_mode, prefs.operator_user.as_str()),
            (1, "app")
        );
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
            request_bytes("GET", "/localapi/v0/status?peers=false", None),
            "the status without peers: small whatever the tailnet's size"
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
        let (got, _) = against(no_backend, |api| api.status());
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
        assert!(
            matches!(&got, Err(ApiError::Protocol(m)) if m.contains("decoding the response to status")),
            "{got:?}"
        );
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
    fn a_bus_read_with_a_wait_returns_when_nothing_comes() {
        let dir = scratch();
        let sock = dir.0.join("sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (done_tx, done) = mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).unwrap();
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            let body = chunked(&["{\"State\":2}\n{\"St"], false);
            conn.write_all(format!("{head}{body}").as_bytes()).unwrap();
            let _ = done.recv();
            conn.write_all(chunked(&["ate\":6}\n"], false).as_bytes())
                .unwrap();
        });
        let mut bus = LocalApi::new(&sock, Some(Duration::from_secs(5)))
            .watch_ipn_bus(2)
            .unwrap();
        let mut lines = Vec::new();
        let started = Instant::now();
        while bus.take_line().map(|l| lines.push(l)).is_none() {
            let got = bus.read_more(Some(Duration::from_secs(5)));
            assert!(matches!(got, Ok(Arrived::Data)), "{got:?}");
        }
        assert_eq!(lines, [br#"{"State":2}"#.to_vec()]);
        let waited = Instant::now();
        let got = bus.read_more(Some(Duration::from_millis(50)));
        assert!(matches!(got, Ok(Arrived::Nothing)), "{got:?}");
        assert!(waited.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            bus.read_more(Some(Duration::ZERO)),
            Ok(Arrived::Nothing)
        ));
        assert_eq!(bus.buffered(), br#"{"St"#);
        // A read without a wait after one that timed out waits as long as it takes.
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            done_tx.send(()).unwrap();
        });
        assert_eq!(bus.next_raw().unwrap(), Some(br#"{"State":6}"#.to_vec()));
        server.join().unwrap();
        late.join().unwrap();
        assert!(matches!(
            bus.read_more(Some(Duration::from_secs(5))),
            Ok(Arrived::End(None))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
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
            scan::prefs(
                format!(
                    "{{\"LoggedOut\":{logged_out},\"WantRunning\":{want},\"Config\":{config}}}"
                )
                .as_bytes(),
            )
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
