//! The listener's connections: a small HTTP/1.1 front (`/key`, the `/ts2021` and `/derp`
//! upgrades, probes), then HTTP/2 inside Noise for `/machine/register` and `/machine/map`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Response, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use x25519_dalek::StaticSecret;

use crate::state::{Delta, MapRequest, MapSession, RegisterReply, RegisterRequest, key_string};
use crate::{Shared, log, noise};

/// Map keepalives, well inside the client's 120 s watchdog.
const KEEPALIVE: Duration = Duration::from_secs(45);
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 4 << 20;
const ZSTD_MAX_BLOCK: usize = 128 * 1024;

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(rd: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    let mut total = 0;
    let mut lines = Vec::new();
    loop {
        line.clear();
        let n = rd.read_line(&mut line).await.ok()?;
        total += n;
        if n == 0 || total > MAX_HEAD {
            return None;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        lines.push(l.to_string());
    }
    let mut first = lines.first()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let path = target.split('?').next().unwrap_or("").to_string();
    let headers = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Head {
        method,
        path,
        headers,
    })
}

async fn reply(rd: &mut BufReader<TcpStream>, status: &str, ctype: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = rd.get_mut().write_all(msg.as_bytes()).await;
    let _ = rd.get_mut().shutdown().await;
}

/// Serves one accepted TCP connection.
pub async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut rd = BufReader::new(stream);
    let Some(head) = read_head(&mut rd).await else {
        return;
    };
    let upgrade = head.header("Upgrade").unwrap_or("").to_ascii_lowercase();
    log(&format!(
        "http {} {} upgrade={upgrade:?}",
        head.method, head.path
    ));
    match (head.method.as_str(), head.path.as_str(), upgrade.as_str()) {
        ("GET", "/key", _) => {
            let key = key_string(
                "mkey",
                x25519_dalek::PublicKey::from(&shared.noise_key).as_bytes(),
            );
            let body = format!(r#"{{"legacyPublicKey":"{key}","publicKey":"{key}"}}"#);
            reply(&mut rd, "200 OK", "application/json", &body).await;
        }
        (_, "/ts2021", "tailscale-control-protocol") => serve_noise(rd, &head, shared).await,
        ("GET", "/derp", "derp") => {
            let fast = head.header("Derp-Fast-Start") == Some("1");
            let (r, w) = tokio::io::split(rd);
            let res = shared.hub.serve(r, w, fast).await;
            log(&format!("derp connection ended: {res:?}"));
        }
        ("GET" | "HEAD", "/derp/probe" | "/derp/latency-check", _) => {
            reply(&mut rd, "200 OK", "text/plain", "").await;
        }
        ("GET", "/generate_204", _) => reply(&mut rd, "204 No Content", "text/plain", "").await,
        ("GET", p, _) if p.starts_with("/register/") => {
            let text = "interactive login is not supported by this test server; use an auth key\n";
            reply(&mut rd, "200 OK", "text/plain", text).await;
        }
        _ => reply(&mut rd, "404 Not Found", "text/plain", "not found\n").await,
    }
}

async fn serve_noise(mut rd: BufReader<TcpStream>, head: &Head, shared: Arc<Shared>) {
    let init = head
        .header("X-Tailscale-Handshake")
        .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok());
    let eph = StaticSecret::from(crate::random_bytes());
    let hs = match init.ok_or("missing handshake header".to_string()) {
        Ok(init) => noise::respond(&shared.noise_key, &init, eph),
        Err(e) => Err(e),
    };
    let hs = match hs {
        Ok(hs) => hs,
        Err(e) => {
            log(&format!("noise handshake failed: {e}"));
            return reply(&mut rd, "400 Bad Request", "text/plain", &e).await;
        }
    };
    let upgrade = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\n\
                   Connection: upgrade\r\n\r\n";
    let mut out = upgrade.as_bytes().to_vec();
    out.extend_from_slice(&hs.response);
    if rd.get_mut().write_all(&out).await.is_err() {
        return;
    }
    let machine = key_string("mkey", &hs.machine_key);
    log(&format!("noise session with {machine}"));
    let (r, w) = tokio::io::split(rd);
    let io = noise::spawn_transport(r, w, hs);
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(handle_h2(req, respond, shared.clone(), machine.clone()));
    }
}

async fn read_body(mut body: RecvStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
        if out.len() > MAX_BODY {
            return None;
        }
    }
    Some(out)
}

fn respond_simple(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    ctype: &'static str,
    body: Vec<u8>,
) {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(mut send) = respond.send_response(resp, body.is_empty())
        && !body.is_empty()
    {
        let _ = send.send_data(body.into(), true);
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn handle_h2(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
    machine: String,
) {
    let path = req.uri().path().to_string();
    let Some(body) = read_body(req.into_body()).await else {
        return;
    };
    match path.as_str() {
        "/machine/register" => {
            let req: RegisterRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return respond_simple(&mut respond, 400, "text/plain", e.to_string().into());
                }
            };
            let (node_key, followup) = (req.node_key.clone(), !req.followup.is_empty());
            let answer = shared.lock().register(req, &machine, now_unix());
            shared.bump();
            match answer {
                RegisterReply::Json(v) => {
                    log(&format!("register {node_key} followup={followup} -> {v}"));
                    respond_simple(&mut respond, 200, "application/json", v.to_string().into());
                }
                RegisterReply::WaitForever => {
                    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                }
            }
        }
        "/machine/map" => serve_map(body, respond, shared, machine).await,
        _ => respond_simple(&mut respond, 404, "text/plain", b"not found\n".to_vec()),
    }
}

/// Marks a node online while its streaming poll is open.
struct StreamGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(n) = self.shared.lock().node_mut(self.id) {
            n.streams = n.streams.saturating_sub(1);
        }
        self.shared.bump();
    }
}

async fn serve_map(
    body: Vec<u8>,
    mut respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
    machine: String,
) {
    let req: MapRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return respond_simple(&mut respond, 400, "text/plain", e.to_string().into()),
    };
    let mut changes = shared.changes.subscribe();
    let Some(id) = shared.lock().map_request(&req, &machine) else {
        log(&format!("map request from unknown node {}", req.node_key));
        return respond_simple(
            &mut respond,
            403,
            "text/plain",
            b"node not registered\n".to_vec(),
        );
    };
    log(&format!(
        "map request node={id} stream={} omit_peers={}",
        req.stream, req.omit_peers
    ));
    if !req.stream && req.omit_peers {
        // A "lite" endpoint update: answer and close, the long poll goes on untouched.
        shared.bump();
        return respond_simple(&mut respond, 200, "application/json", Vec::new());
    }
    let _guard = req.stream.then(|| {
        if let Some(n) = shared.lock().node_mut(id) {
            n.streams += 1;
        }
        StreamGuard {
            shared: shared.clone(),
            id,
        }
    });
    shared.bump();
    let mut session = MapSession::new(id);
    let Some(first) = session.full(&shared.lock()) else {
        return;
    };
    let mut resp = Response::new(());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    if send
        .send_data(map_frame(&first.to_string()), !req.stream)
        .is_err()
        || !req.stream
    {
        return;
    }
    changes.mark_unchanged();
    let keepalive_frame = map_frame(r#"{"KeepAlive":true}"#);
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                let delta = session.delta(&shared.lock());
                match delta {
                    Delta::End => {
                        let _ = send.send_data(Bytes::new(), true);
                        break;
                    }
                    Delta::Nothing => {}
                    Delta::Send(v) => {
                        log(&format!("map node={id} update {v}"));
                        if send.send_data(map_frame(&v.to_string()), false).is_err() {
                            break;
                        }
                    }
                }
            }
            _ = keepalive.tick() => {
                if send.send_data(keepalive_frame.clone(), false).is_err() {
                    break;
                }
            }
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => break,
        }
    }
    log(&format!("map stream node={id} closed"));
}

/// A map frame: u32 LITTLE-endian length, then a zstd frame of the JSON.
fn map_frame(json: &str) -> Bytes {
    let z = zstd_raw_frame(json.as_bytes());
    let mut out = (z.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&z);
    out.into()
}

/// A valid zstd frame made of uncompressed ("raw") blocks: single segment, 4-byte content size.
pub fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0xa0];
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0]); // one empty raw block, marked last
    }
    let count = data.len().div_ceil(ZSTD_MAX_BLOCK);
    for (i, block) in data.chunks(ZSTD_MAX_BLOCK).enumerate() {
        let last = u32::from(i + 1 == count);
        let header = last | ((block.len() as u32) << 3); // block type 0 = raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(frame)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn zstd_frames_decode() {
        for len in [
            0usize,
            1,
            100,
            ZSTD_MAX_BLOCK,
            ZSTD_MAX_BLOCK + 1,
            3 * ZSTD_MAX_BLOCK + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            assert_eq!(decode(&zstd_raw_frame(&data)), data, "len {len}");
        }
    }

    #[test]
    fn map_frame_has_le_length_prefix() {
        let f = map_frame(r#"{"KeepAlive":true}"#);
        let len = u32::from_le_bytes(f[..4].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 4);
        assert_eq!(&f[4..8], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(decode(&f[4..]), br#"{"KeepAlive":true}"#);
    }
}
