//! The health and metrics endpoint (the official image's /healthz and /metrics): a small
//! HTTP/1.1 server the main loop drives. Nothing here blocks: connections are accepted,
//! read and written only when poll says they are ready; a request must arrive within
//! [`REQUEST_TIMEOUT`] and fit in [`MAX_HEAD`] bytes; at most [`MAX_CONNECTIONS`] are
//! open at once (more wait in the kernel's backlog); /metrics asks tailscaled's LocalAPI
//! without waiting for it. Every answer closes its connection.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, info};

use crate::config;
use crate::localapi::{Answer, Request};

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request, and then to take the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once.
const MAX_CONNECTIONS: usize = 16;
/// tailscaled's metrics, in Prometheus text.
const USER_METRICS: &str = "/localapi/v0/usermetrics";
/// /healthz's answer before the node is up (containerboot's words).
const NO_IPS: &str = "node currently has no tailscale IPs\n";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint reports, from the main thread's state when a request is answered.
pub struct Report<'a> {
    /// The node is Running and has a tailnet address.
    pub healthy: bool,
    /// tailscaled's LocalAPI, for /metrics.
    pub socket: &'a Path,
    pub stats: &'a Stats,
    /// Writes of the hosts block.
    pub hosts_writes: u64,
}

/// tsinit's own numbers on /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// tailscaled processes started (the first one included).
    pub tailscaled_starts: u64,
    /// How long the last bring-up took, to Running with the hosts block written.
    pub bringup: Option<Duration>,
}

/// The listening socket and the connections being answered.
pub struct Endpoint {
    listener: TcpListener,
    health: bool,
    metrics: bool,
    conns: Vec<Conn>,
}

struct Conn {
    stream: TcpStream,
    deadline: Instant,
    state: State,
}

enum State {
    /// The request head so far.
    Reading(Vec<u8>),
    /// /metrics waits for tailscaled's part (`head`: a HEAD request).
    Fetching { request: Request, head: bool },
    /// The answer, and how much of it is sent.
    Writing { out: Vec<u8>, at: usize },
}

impl Endpoint {
    /// Listens where `http` says, if health or metrics is on.
    pub fn listen(http: &config::Http) -> Result<Option<Endpoint>, String> {
        let Some(addr) = http.serving() else {
            return Ok(None);
        };
        let listener = match TcpListener::bind(addr) {
            // No IPv6 in this kernel: every address is every IPv4 address then.
            Err(e)
                if addr.is_ipv6()
                    && addr.ip().is_unspecified()
                    && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())))
            }
            other => other,
        };
        let listener = listener
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot listen on {addr}: {}", crate::error::os_message(&e)))?;
        let what = match (http.health, http.metrics) {
            (true, true) => "/healthz and /metrics",
            (true, false) => "/healthz",
            _ => "/metrics",
        };
        info!("serving {what} on http://{addr}");
        Ok(Some(Endpoint {
            listener,
            health: http.health,
            metrics: http.metrics,
            conns: Vec::new(),
        }))
    }

    /// Readable descriptors to wait for.
    /// Adds the descriptors to wait for to `read` (readable) and `write` (writable).
    pub fn fds<'a>(&'a self, read: &mut Vec<BorrowedFd<'a>>, write: &mut Vec<BorrowedFd<'a>>) {
        if self.conns.len() < MAX_CONNECTIONS {
            read.push(self.listener.as_fd());
        }
        for c in &self.conns {
            match &c.state {
                State::Reading(_) => read.push(c.stream.as_fd()),
                State::Fetching { request, .. } => read.push(request.fd()),
                State::Writing { .. } => write.push(c.stream.as_fd()),
            }
        }
    }

    /// When a connection is given up (or its metrics request is).
    pub fn deadline(&self) -> Option<Instant> {
        let at = |c: &Conn| match &c.state {
            State::Fetching { request, .. } => c.deadline.min(request.deadline),
            _ => c.deadline,
        };
        self.conns.iter().map(at).min()
    }

    /// Accepts, reads, answers and writes what is ready; drops what timed out.
    pub fn tend(&mut self, report: &Report) {
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) if stream.set_nonblocking(true).is_ok() => self.conns.push(Conn {
                    stream,
                    deadline: Instant::now() + REQUEST_TIMEOUT,
                    state: State::Reading(Vec::new()),
                }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!("http: cannot accept a connection: {e}");
                    }
                    break;
                }
            }
        }
        let (health, metrics) = (self.health, self.metrics);
        self.conns
            .retain_mut(|c| c.step(report, health, metrics) && Instant::now() < c.deadline);
    }
}

impl Conn {
    /// Takes the connection as far as it can go now; false once it is done with.
    fn step(&mut self, report: &Report, health: bool, metrics: bool) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match &mut self.state {
                State::Reading(head) => {
                    let n = match self.stream.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(n) => n,
                        Err(e) => return again(&e),
                    };
                    head.extend_from_slice(buf.get(..n).unwrap_or_default());
                    let Some(state) = answer(head, report, health, metrics) else {
                        continue;
                    };
                    self.state = state;
                }
                State::Fetching { request, head } => {
                    let theirs = match request.poll() {
                        Answer::Pending => return true,
                        Answer::Ok(resp) => Some(resp.body),
                        other => {
                            debug!("http: no answer from tailscaled to {USER_METRICS}: {other:?}");
                            None
                        }
                    };
                    let body = metrics_text(theirs.as_deref(), report);
                    self.state = writing(200, PROMETHEUS, &[], &body, *head);
                }
                State::Writing { out, at } => {
                    match self.stream.write(out.get(*at..).unwrap_or_default()) {
                        Ok(n) => *at += n,
                        Err(e) => return again(&e),
                    }
                    if *at >= out.len() {
                        self.stream.shutdown(std::net::Shutdown::Write).ok();
                        return false;
                    }
                }
            }
        }
    }
}

/// After a failed read or write: whether to wait for the connection (it would block).
fn again(e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => true,
        _ => {
            debug!("http: connection dropped: {e}");
            false
        }
    }
}

/// What to do with a request whose head is `head`: `None` while it is incomplete.
fn answer(head: &[u8], report: &Report, health: bool, metrics: bool) -> Option<State> {
    let text = |status, body: &str| writing(status, TEXT, &[], body.as_bytes(), false);
    let end = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|end| head.windows(end.len()).position(|w| w == *end))
        .min();
    if end.is_none() {
        return (head.len() >= MAX_HEAD).then(|| text(431, "request header too large\n"));
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(text(400, "bad request\n"));
    };
    if !version.starts_with("HTTP/1.") {
        return Some(text(400, "bad request\n"));
    }
    let path = target.split('?').next().unwrap_or_default();
    let on = match path {
        "/healthz" => health,
        "/metrics" => metrics,
        _ => false,
    };
    if !on {
        return Some(text(404, "404 page not found\n"));
    }
    let head_only = method == "HEAD";
    if !head_only && method != "GET" {
        let allow = [("Allow", "GET, HEAD")];
        let body = b"Method Not Allowed\n";
        return Some(writing(405, TEXT, &allow, body, false));
    }
    if path == "/healthz" {
        let (status, body) = match report.healthy {
            true => (200, "ok"),
            false => (503, NO_IPS),
        };
        return Some(writing(status, TEXT, &[], body.as_bytes(), head_only));
    }
    Some(match Request::get(report.socket, USER_METRICS) {
        Ok(request) => State::Fetching {
            request,
            head: head_only,
        },
        Err(e) => {
            debug!("http: {USER_METRICS}: {e}");
            let body = metrics_text(None, report);
            writing(200, PROMETHEUS, &[], &body, head_only)
        }
    })
}

/// An answer ready to be sent.
fn writing(
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> State {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    State::Writing { out, at: 0 }
}

/// /metrics: tailscaled's metrics (`theirs`, when it answered), then tsinit's own.
fn metrics_text(theirs: Option<&[u8]>, report: &Report) -> Vec<u8> {
    let mut out = theirs.unwrap_or_default().to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let s = report.stats;
    // Each: its name, type and help, and its value in thousandths.
    let metrics = [
        (
            "tailscaled_metrics_up gauge Whether tailscaled's own metrics are in this \
             answer (1) or it did not give them (0).",
            Some(u128::from(theirs.is_some()) * 1000),
        ),
        (
            "node_healthy gauge Whether the node is Running with a tailnet address (what \
             /healthz reports).",
            Some(u128::from(report.healthy) * 1000),
        ),
        (
            "tailscaled_restarts_total counter Times tsinit started tailscaled again after \
             it exited or stopped answering.",
            Some(u128::from(s.tailscaled_starts.saturating_sub(1)) * 1000),
        ),
        (
            "hosts_writes_total counter Times tsinit rewrote its block of the hosts file.",
            Some(u128::from(report.hosts_writes) * 1000),
        ),
        (
            "bringup_seconds gauge How long the last bring-up took, from its start to the \
             node Running.",
            s.bringup.map(|took| took.as_millis()),
        ),
    ];
    for (text, value) in metrics {
        let (Some(value), Some((name, rest))) = (value, text.split_once(' ')) else {
            continue;
        };
        let (kind, help) = rest.split_once(' ').unwrap_or_default();
        let fraction = match value % 1000 {
            0 => String::new(),
            f => format!(".{f:03}"),
        };
        let text = format!(
            "# HELP tsinit_{name} {help}\n# TYPE tsinit_{name} {kind}\ntsinit_{name} {}{fraction}\n",
            value / 1000
        );
        out.extend_from_slice(text.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(healthy: bool, stats: &Stats) -> Report<'_> {
        Report {
            healthy,
            socket: Path::new("/nonexistent/tsinit-test.sock"),
            stats,
            hosts_writes: 7,
        }
    }

    /// The bytes a request head gets as its answer (`None`: still incomplete).
    fn answered(head: &str, healthy: bool, health: bool, metrics: bool) -> Option<String> {
        let stats = Stats {
            tailscaled_starts: 3,
            bringup: Some(Duration::from_millis(1500)),
        };
        match answer(head.as_bytes(), &report(healthy, &stats), health, metrics)? {
            State::Writing { out, .. } => Some(String::from_utf8(out).unwrap()),
            _ => panic!("not answered at once"),
        }
    }

    #[test]
    fn healthz_says_ok_only_when_healthy_and_only_when_on() {
        let ok = answered(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
            true,
            false,
        )
        .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.ends_with("\r\n\r\nok") && ok.contains("Content-Length: 2\r\n"),
            "{ok}"
        );
        let no = answered("GET /healthz?x=1 HTTP/1.0\n\n", false, true, false).unwrap();
        assert!(
            no.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{no}"
        );
        assert!(no.ends_with(NO_IPS), "{no}");
        let head = answered("HEAD /healthz HTTP/1.1\r\n\r\n", true, true, false).unwrap();
        assert!(
            head.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        let off = answered("GET /healthz HTTP/1.1\r\n\r\n", true, false, true).unwrap();
        assert!(off.starts_with("HTTP/1.1 404 Not Found\r\n"), "{off}");
        let post = answered("POST /healthz HTTP/1.1\r\n\r\n", true, true, true).unwrap();
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[test]
    fn bad_and_incomplete_requests() {
        assert_eq!(
            answered("GET /healthz HTTP/1.1\r\nHost:", true, true, true),
            None
        );
        for bad in [
            "GET /healthz\r\n\r\n",
            "GET /healthz HTTP/2\r\n\r\n",
            "x y z w\r\n\r\n",
        ] {
            let out = answered(bad, true, true, true).unwrap();
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{bad:?}: {out}"
            );
        }
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        let out = answered(&long, true, true, true).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        let out = answered("GET /other HTTP/1.1\r\n\r\n", true, true, true).unwrap();
        assert!(out.ends_with("404 page not found\n"), "{out}");
    }

    #[test]
    fn metrics_add_tsinits_own_to_tailscaleds() {
        let stats = Stats {
            tailscaled_starts: 3,
            bringup: Some(Duration::from_millis(1500)),
        };
        let text = metrics_text(Some(b"tailscaled_x 1"), &report(true, &stats));
        let text = String::from_utf8(text).unwrap();
        for line in [
            "tailscaled_x 1\n",
            "\ntsinit_tailscaled_metrics_up 1\n",
            "\ntsinit_node_healthy 1\n",
            "\ntsinit_tailscaled_restarts_total 2\n",
            "\ntsinit_hosts_writes_total 7\n",
            "\ntsinit_bringup_seconds 1.500\n",
            "\n# TYPE tsinit_hosts_writes_total counter\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        let text = metrics_text(None, &report(false, &Stats::default()));
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("# HELP tsinit_tailscaled_metrics_up "),
            "{text}"
        );
        assert!(
            text.contains("\ntsinit_tailscaled_metrics_up 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntsinit_tailscaled_restarts_total 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("bringup"),
            "no bring-up finished yet: {text}"
        );
        // tailscaled unreachable: tsinit's part alone, at once.
        let out = answered("GET /metrics HTTP/1.1\r\n\r\n", false, false, true).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("metrics_up 0\n"));
        assert!(out.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    }
}
