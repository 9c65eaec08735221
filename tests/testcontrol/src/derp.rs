//! A minimal DERP relay: the greeting (server key, client info, server info), keepalives,
//! ping/pong, and packet relay between the clients connected to it; plus a STUN responder
//! so that netcheck finds the region at once instead of waiting for UDP probes to time out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crypto_box::aead::AeadInPlace;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const MAGIC: &[u8] = "DERP🔑".as_bytes();
const FRAME_SERVER_KEY: u8 = 0x01;
const FRAME_CLIENT_INFO: u8 = 0x02;
const FRAME_SERVER_INFO: u8 = 0x03;
const FRAME_SEND_PACKET: u8 = 0x04;
const FRAME_RECV_PACKET: u8 = 0x05;
const FRAME_KEEP_ALIVE: u8 = 0x06;
const FRAME_PING: u8 = 0x12;
const FRAME_PONG: u8 = 0x13;
/// Largest frame accepted from a client (DERP packets are at most 64 KiB).
const MAX_FRAME: usize = 64 * 1024 + 64;
const KEEP_ALIVE: Duration = Duration::from_secs(60);

type Frame = (u8, Vec<u8>);
/// Connected clients by key: (connection id, outgoing frames).
type Clients = HashMap<[u8; 32], (u64, mpsc::Sender<Frame>)>;

/// The DERP server's key and its connected clients.
pub struct Hub {
    secret: SecretKey,
    clients: Mutex<Clients>,
    next_conn: AtomicU64,
}

impl Hub {
    pub fn new(secret: [u8; 32]) -> Hub {
        Hub {
            secret: SecretKey::from(secret),
            clients: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.secret.public_key().as_bytes())
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The HTTP answer to a `GET /derp` upgrade (skipped when the client asked for fast start).
    pub fn upgrade_response(&self) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\
             Derp-Version: 2\r\nDerp-Public-Key: {}\r\n\r\n",
            self.public_hex()
        )
    }

    /// Serves one upgraded DERP connection until it closes.
    pub async fn serve<R, W>(&self, mut rd: R, mut wr: W, fast_start: bool) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        if !fast_start {
            wr.write_all(self.upgrade_response().as_bytes()).await?;
        }
        let mut greeting = MAGIC.to_vec();
        greeting.extend_from_slice(self.secret.public_key().as_bytes());
        write_frame(&mut wr, FRAME_SERVER_KEY, &greeting).await?;

        let (kind, info) = read_frame(&mut rd).await?;
        if kind != FRAME_CLIENT_INFO || info.len() < 32 + 24 {
            return Err(invalid("expected ClientInfo"));
        }
        let client: [u8; 32] = info[..32].try_into().map_err(|_| invalid("short key"))?;
        let server_info = self.seal_to(&client, br#"{"version":2}"#)?;

        // Registered before ServerInfo goes out, so a client that saw it can be reached.
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut out) = mpsc::channel::<Frame>(256);
        self.clients().insert(client, (conn_id, tx.clone()));
        let writer = tokio::spawn(async move {
            let mut keepalive = tokio::time::interval(KEEP_ALIVE);
            keepalive.tick().await;
            if write_frame(&mut wr, FRAME_SERVER_INFO, &server_info)
                .await
                .is_err()
            {
                return;
            }
            loop {
                if wr.flush().await.is_err() {
                    break;
                }
                let (kind, body) = tokio::select! {
                    f = out.recv() => match f { Some(f) => f, None => break },
                    _ = keepalive.tick() => (FRAME_KEEP_ALIVE, Vec::new()),
                };
                if write_frame(&mut wr, kind, &body).await.is_err() {
                    break;
                }
            }
        });
        let result = self.read_loop(&mut rd, &client, &tx).await;
        writer.abort();
        let mut clients = self.clients();
        if clients.get(&client).is_some_and(|(id, _)| *id == conn_id) {
            clients.remove(&client);
        }
        result
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        client: &[u8; 32],
        tx: &mpsc::Sender<Frame>,
    ) -> std::io::Result<()> {
        loop {
            let (kind, body) = read_frame(rd).await?;
            match kind {
                FRAME_SEND_PACKET if body.len() >= 32 => {
                    let dst = self.clients().get(&body[..32]).map(|(_, tx)| tx.clone());
                    if let Some(dst) = dst {
                        let mut pkt = client.to_vec();
                        pkt.extend_from_slice(&body[32..]);
                        let _ = dst.try_send((FRAME_RECV_PACKET, pkt));
                    }
                }
                FRAME_PING if body.len() == 8 => {
                    let _ = tx.send((FRAME_PONG, body)).await;
                }
                _ => {} // NotePreferred, WatchConns, Pong, ... are not needed here.
            }
        }
    }

    /// NaCl box to the client: nonce(24) || tag(16) || ciphertext, as Go's box.Seal lays it out.
    fn seal_to(&self, client: &[u8; 32], msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let nonce: [u8; 24] = crate::random_bytes();
        let sbox = SalsaBox::new(&PublicKey::from(*client), &self.secret);
        let mut body = msg.to_vec();
        let tag = sbox
            .encrypt_in_place_detached(&nonce.into(), b"", &mut body)
            .map_err(|_| invalid("box seal failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&tag);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// The answer to a STUN binding request from `from`: a binding success carrying
/// XOR-MAPPED-ADDRESS. None for anything that is not a binding request.
pub fn stun_response(req: &[u8], from: std::net::SocketAddr) -> Option<Vec<u8>> {
    if req.len() < 20 || req[..2] != [0, 1] || req[4..8] != STUN_COOKIE {
        return None;
    }
    let txid = &req[8..20];
    let ip: Vec<u8> = match from.ip().to_canonical() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut out = vec![0x01, 0x01];
    out.extend_from_slice(&(8 + ip.len() as u16).to_be_bytes());
    out.extend_from_slice(&STUN_COOKIE);
    out.extend_from_slice(txid);
    out.extend_from_slice(&[0x00, 0x20]); // XOR-MAPPED-ADDRESS
    out.extend_from_slice(&(4 + ip.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, if ip.len() == 4 { 1 } else { 2 }]);
    out.extend_from_slice(&(from.port() ^ 0x2112).to_be_bytes());
    let mask = STUN_COOKIE.iter().chain(txid);
    out.extend(ip.iter().zip(mask).map(|(b, m)| b ^ m));
    Some(out)
}

/// Answers STUN binding requests on `sock` until the runtime stops.
pub async fn serve_stun(sock: tokio::net::UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
        if let Some(resp) = stun_response(&buf[..n], from) {
            let _ = sock.send_to(&resp, from).await;
        }
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// DERP frame: type u8 | length u32 big-endian | body.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.push(kind);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut hdr = [0u8; 5];
    r.read_exact(&mut hdr).await?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if len > MAX_FRAME {
        return Err(invalid("DERP frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((hdr[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_binding_response() {
        let mut req = vec![0, 1, 0, 0];
        req.extend_from_slice(&STUN_COOKIE);
        req.extend_from_slice(&[7; 12]);
        let resp = stun_response(&req, "10.1.2.3:4660".parse().unwrap()).unwrap();
        assert_eq!(&resp[..4], &[1, 1, 0, 12]);
        assert_eq!(&resp[8..20], &[7; 12]);
        // port 4660 = 0x1234, sent as 0x1234 ^ 0x2112; address 10.1.2.3 ^ cookie
        assert_eq!(
            &resp[20..],
            &[
                0,
                0x20,
                0,
                8,
                0,
                1,
                0x33,
                0x26,
                10 ^ 0x21,
                1 ^ 0x12,
                2 ^ 0xa4,
                3 ^ 0x42
            ]
        );
        assert!(stun_response(&req[..19], "10.1.2.3:1".parse().unwrap()).is_none());
    }

    #[test]
    fn server_info_opens_with_client_key() {
        let hub = Hub::new([1; 32]);
        let client = SecretKey::from([2u8; 32]);
        let sealed = hub.seal_to(client.public_key().as_bytes(), b"{}").unwrap();
        assert_eq!(sealed.len(), 24 + 16 + 2);
        let sbox = SalsaBox::new(&hub.secret.public_key(), &client);
        let mut body = sealed[40..].to_vec();
        let nonce: [u8; 24] = sealed[..24].try_into().unwrap();
        sbox.decrypt_in_place_detached(&nonce.into(), b"", &mut body, sealed[24..40].into())
            .unwrap();
        assert_eq!(body, b"{}");
    }

    #[test]
    fn greeting_ping_and_relay() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let hub = std::sync::Arc::new(Hub::new([1; 32]));
            let mut conns = Vec::new();
            for key in [[10u8; 32], [11u8; 32]] {
                let (ours, theirs) = tokio::io::duplex(1 << 16);
                let (r, w) = tokio::io::split(theirs);
                let h = hub.clone();
                tokio::spawn(async move { h.serve(r, w, true).await });
                let (mut r, mut w) = tokio::io::split(ours);
                let (kind, greet) = read_frame(&mut r).await.unwrap();
                assert_eq!((kind, &greet[..8]), (FRAME_SERVER_KEY, MAGIC));
                let mut info = key.to_vec();
                info.extend_from_slice(&[0u8; 40]);
                write_frame(&mut w, FRAME_CLIENT_INFO, &info).await.unwrap();
                assert_eq!(read_frame(&mut r).await.unwrap().0, FRAME_SERVER_INFO);
                conns.push((r, w));
            }
            let (r0, w0) = &mut conns[0];
            write_frame(w0, FRAME_PING, b"12345678").await.unwrap();
            assert_eq!(
                read_frame(r0).await.unwrap(),
                (FRAME_PONG, b"12345678".to_vec())
            );
            let mut pkt = [11u8; 32].to_vec();
            pkt.extend_from_slice(b"hi");
            write_frame(w0, FRAME_SEND_PACKET, &pkt).await.unwrap();
            let (r1, _) = &mut conns[1];
            let (kind, body) = read_frame(r1).await.unwrap();
            assert_eq!(kind, FRAME_RECV_PACKET);
            assert_eq!((&body[..32], &body[32..]), (&[10u8; 32][..], &b"hi"[..]));
        });
    }
}
