//! The ts2021 Noise layer: the IK responder handshake and the record layer (big-endian
//! nonces, frames of at most 4096 bytes) that carries HTTP/2 between client and control.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use x25519_dalek::{PublicKey, StaticSecret};

const PROTOCOL_NAME: &[u8] = b"Noise_IK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";
/// Largest record frame on the wire, header included.
pub const MAX_FRAME: usize = 4096;
const HEADER_LEN: usize = 3;
const TAG_LEN: usize = 16;
/// Largest plaintext that fits one record frame.
pub const MAX_PLAINTEXT: usize = MAX_FRAME - HEADER_LEN - TAG_LEN;
/// Size of the client's handshake initiation (sent base64 in an HTTP header).
pub const INIT_LEN: usize = 101;
const MSG_INITIATION: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_RECORD: u8 = 4;

/// One direction of the transport: a key and its message counter.
pub struct Cipher {
    aead: ChaCha20Poly1305,
    counter: u64,
}

impl Cipher {
    pub fn new(key: [u8; 32]) -> Cipher {
        Cipher {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
            counter: 0,
        }
    }

    /// Tailscale's nonce: 4 zero bytes, then the counter BIG-endian (stock Noise uses
    /// little-endian here).
    fn next_nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Nonce::clone_from_slice(&n)
    }

    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = self.next_nonce();
        // Encryption fails only for inputs larger than the AEAD's ~256 GiB limit.
        self.aead.encrypt(&nonce, plaintext).unwrap_or_default()
    }

    pub fn open(&mut self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let nonce = self.next_nonce();
        self.aead.decrypt(&nonce, ciphertext).ok()
    }
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut inner = Blake2s256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Blake2s256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// HKDF-BLAKE2s with salt `ck` and empty info, two 32-byte outputs.
fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let prk = hmac(ck, &[ikm]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    (t1, t2)
}

/// The Noise symmetric state during the handshake. Every handshake key encrypts exactly
/// once, so its nonce is always zero.
struct Symmetric {
    h: [u8; 32],
    ck: [u8; 32],
}

impl Symmetric {
    fn new() -> Symmetric {
        let h: [u8; 32] = Blake2s256::digest(PROTOCOL_NAME).into();
        Symmetric { h, ck: h }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut d = Blake2s256::new();
        d.update(self.h);
        d.update(data);
        self.h = d.finalize().into();
    }

    fn mix_dh(&mut self, secret: &StaticSecret, public: [u8; 32]) -> Cipher {
        let shared = secret.diffie_hellman(&PublicKey::from(public));
        let (ck, k) = hkdf2(&self.ck, shared.as_bytes());
        self.ck = ck;
        Cipher::new(k)
    }

    fn encrypt_and_hash(&mut self, c: &mut Cipher, plaintext: &[u8]) -> Vec<u8> {
        let nonce = c.next_nonce();
        let ct = c
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &self.h,
                },
            )
            .unwrap_or_default();
        self.mix_hash(&ct);
        ct
    }

    fn decrypt_and_hash(&mut self, c: &mut Cipher, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let nonce = c.next_nonce();
        let pt = c
            .aead
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &self.h,
                },
            )
            .ok()?;
        self.mix_hash(ciphertext);
        Some(pt)
    }
}

/// A completed responder handshake.
pub struct Handshake {
    /// The 51-byte response to write to the client.
    pub response: Vec<u8>,
    /// The client's static (machine) public key.
    pub machine_key: [u8; 32],
    /// Client -> server.
    pub rx: Cipher,
    /// Server -> client.
    pub tx: Cipher,
}

fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

/// Runs the responder side of Noise IK on the client's initiation message.
pub fn respond(
    server: &StaticSecret,
    init: &[u8],
    ephemeral: StaticSecret,
) -> Result<Handshake, String> {
    if init.len() != INIT_LEN {
        return Err(format!(
            "initiation is {} bytes, want {INIT_LEN}",
            init.len()
        ));
    }
    let version = u16::from_be_bytes([init[0], init[1]]);
    if init[2] != MSG_INITIATION || u16::from_be_bytes([init[3], init[4]]) != 96 {
        return Err("malformed initiation header".into());
    }
    let client_eph = key32(&init[5..37]).ok_or("bad ephemeral")?;
    let mut s = Symmetric::new();
    s.mix_hash(format!("{PROLOGUE_PREFIX}{version}").as_bytes());
    s.mix_hash(PublicKey::from(server).as_bytes());
    s.mix_hash(&client_eph);
    let mut c = s.mix_dh(server, client_eph);
    let machine = s
        .decrypt_and_hash(&mut c, &init[37..85])
        .ok_or("cannot decrypt machine key")?;
    let machine_key = key32(&machine).ok_or("bad machine key")?;
    let mut c = s.mix_dh(server, machine_key);
    s.decrypt_and_hash(&mut c, &init[85..101])
        .ok_or("bad initiation tag")?;

    let eph_pub = PublicKey::from(&ephemeral);
    s.mix_hash(eph_pub.as_bytes());
    s.mix_dh(&ephemeral, client_eph);
    let mut c = s.mix_dh(&ephemeral, machine_key);
    let tag = s.encrypt_and_hash(&mut c, &[]);

    let mut response = vec![MSG_RESPONSE, 0, 48];
    response.extend_from_slice(eph_pub.as_bytes());
    response.extend_from_slice(&tag);
    let (k1, k2) = hkdf2(&s.ck, &[]);
    Ok(Handshake {
        response,
        machine_key,
        rx: Cipher::new(k1),
        tx: Cipher::new(k2),
    })
}

/// Encrypts `data` into as many record frames as needed, appending them to `out`.
pub fn seal_records(tx: &mut Cipher, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_PLAINTEXT) {
        let ct = tx.seal(chunk);
        out.push(MSG_RECORD);
        out.extend_from_slice(&(ct.len() as u16).to_be_bytes());
        out.extend_from_slice(&ct);
    }
}

/// Reads one record frame and returns its plaintext.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    rx: &mut Cipher,
) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut hdr = [0u8; HEADER_LEN];
    r.read_exact(&mut hdr).await?;
    let len = u16::from_be_bytes([hdr[1], hdr[2]]) as usize;
    if hdr[0] != MSG_RECORD || HEADER_LEN + len > MAX_FRAME {
        return Err(bad("bad record header"));
    }
    let mut ct = vec![0u8; len];
    r.read_exact(&mut ct).await?;
    rx.open(&ct).ok_or_else(|| bad("record decryption failed"))
}

/// Spawns the two pumps between the encrypted socket halves and a plaintext pipe; returns
/// the pipe's other end, on which HTTP/2 runs.
pub fn spawn_transport<R, W>(mut rd: R, mut wr: W, hs: Handshake) -> DuplexStream
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut plain_rd, mut plain_wr) = tokio::io::split(ours);
    let (mut rx, mut tx) = (hs.rx, hs.tx);
    tokio::spawn(async move {
        while let Ok(pt) = read_record(&mut rd, &mut rx).await {
            if plain_wr.write_all(&pt).await.is_err() {
                break;
            }
        }
        let _ = plain_wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_PLAINTEXT];
        let mut out = Vec::with_capacity(MAX_FRAME);
        loop {
            let n = match plain_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            out.clear();
            seal_records(&mut tx, &buf[..n], &mut out);
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    theirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_big_endian_counter() {
        let mut c = Cipher::new([7; 32]);
        assert_eq!(c.next_nonce().as_slice(), &[0u8; 12]);
        let n = c.next_nonce();
        assert_eq!(n.as_slice(), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        c.counter = 0x0102;
        assert_eq!(&c.next_nonce()[4..], &[0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn second_record_uses_nonce_one_big_endian() {
        let key = [9u8; 32];
        let mut tx = Cipher::new(key);
        let mut out = Vec::new();
        seal_records(&mut tx, b"first", &mut out);
        seal_records(&mut tx, b"second", &mut out);
        let second = &out[3 + 5 + TAG_LEN + 3..];
        let aead = ChaCha20Poly1305::new(Key::from_slice(&key));
        let mut be = [0u8; 12];
        be[11] = 1;
        let pt = aead
            .decrypt(Nonce::from_slice(&be), second)
            .expect("BE nonce 1 opens it");
        assert_eq!(pt, b"second");
    }

    #[test]
    fn records_are_chunked_to_4096_bytes() {
        let mut tx = Cipher::new([1; 32]);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        seal_records(&mut tx, &data, &mut out);
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], MSG_RECORD);
            let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
            frames.push(3 + len);
            rest = &rest[3 + len..];
        }
        assert_eq!(frames, vec![4096, 4096, 10_000 - 2 * MAX_PLAINTEXT + 19]);

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut rx = Cipher::new([1; 32]);
        let mut got = Vec::new();
        let mut rd = &out[..];
        rt.block_on(async {
            while !rd.is_empty() {
                got.extend(read_record(&mut rd, &mut rx).await.unwrap());
            }
        });
        assert_eq!(got, data);
    }

    #[test]
    fn oversized_record_header_is_rejected() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let frame = [MSG_RECORD, 0x10, 0x00];
        let mut rx = Cipher::new([1; 32]);
        let err = rt
            .block_on(read_record(&mut &frame[..], &mut rx))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    /// An initiator written from the Noise spec, to check the responder end to end.
    #[test]
    fn handshake_with_spec_initiator() {
        let server = StaticSecret::from([3u8; 32]);
        let server_pub = PublicKey::from(&server);
        let machine = StaticSecret::from([4u8; 32]);
        let eph = StaticSecret::from([5u8; 32]);

        let mut s = Symmetric::new();
        s.mix_hash(b"Tailscale Control Protocol v133");
        s.mix_hash(server_pub.as_bytes());
        let eph_pub = PublicKey::from(&eph);
        s.mix_hash(eph_pub.as_bytes());
        let mut c = s.mix_dh(&eph, server_pub.to_bytes());
        let enc_s = s.encrypt_and_hash(&mut c, PublicKey::from(&machine).as_bytes());
        let mut c = s.mix_dh(&machine, server_pub.to_bytes());
        let tag = s.encrypt_and_hash(&mut c, &[]);
        let mut init = vec![0, 133, MSG_INITIATION, 0, 96];
        init.extend_from_slice(eph_pub.as_bytes());
        init.extend_from_slice(&enc_s);
        init.extend_from_slice(&tag);

        let mut hs = respond(&server, &init, StaticSecret::from([6u8; 32])).unwrap();
        assert_eq!(hs.machine_key, PublicKey::from(&machine).to_bytes());
        assert_eq!(hs.response.len(), 51);

        let resp_eph: [u8; 32] = hs.response[3..35].try_into().unwrap();
        s.mix_hash(&resp_eph);
        s.mix_dh(&eph, resp_eph);
        let mut c = s.mix_dh(&machine, resp_eph);
        s.decrypt_and_hash(&mut c, &hs.response[35..])
            .expect("response tag verifies");
        let (k1, k2) = hkdf2(&s.ck, &[]);
        let (mut client_tx, mut client_rx) = (Cipher::new(k1), Cipher::new(k2));
        assert_eq!(hs.rx.open(&client_tx.seal(b"hello")).unwrap(), b"hello");
        assert_eq!(client_rx.open(&hs.tx.seal(b"world")).unwrap(), b"world");

        // A different prologue version must fail.
        init[1] = 132;
        assert!(respond(&server, &init, StaticSecret::from([6u8; 32])).is_err());
    }
}
