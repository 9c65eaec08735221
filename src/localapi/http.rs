//! HTTP/1.1 framing for the LocalAPI: request bytes, and an incremental response decoder
//! (Content-Length, chunked, or until EOF) with size limits.

use super::{ApiError, proto};

/// The Host tailscaled requires; any other (e.g. `localhost`) is answered 403.
pub const HOST: &str = "local-tailscaled.sock";
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The largest response body read whole (a notification stream has its own limit).
pub(super) const MAX_BODY: usize = 16 * 1024 * 1024;

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

pub(super) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    found.next().map(|(_, v)| v.as_str())
}

/// The bytes of a request. A `Content-Length` is sent only with a body.
pub fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    request_bytes_with(method, path, &[], body)
}

/// [`request_bytes`] with extra header lines.
pub(super) fn request_bytes_with(
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

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
}

#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
}

/// Incremental response parser: `raw` holds received bytes not yet decoded.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    pub(super) raw: Vec<u8>,
    pub(super) head: Option<Head>,
    pub(super) body: Vec<u8>,
    pub(super) complete: bool,
    /// The largest body this response may have (0: [`MAX_BODY`]).
    pub(super) limit: usize,
    /// Inside a chunk: its bytes not decoded yet, the CRLF after its data included.
    chunk_left: usize,
}

impl Decoder {
    /// Adds `data` and decodes as far as possible; true once the response is complete.
    pub(super) fn feed(&mut self, data: &[u8], eof: bool) -> Result<bool, ApiError> {
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
                let limit = self.limit();
                let (used, end) =
                    decode_chunks(&self.raw, &mut self.body, limit, &mut self.chunk_left)?;
                self.raw.drain(..used.min(self.raw.len()));
                end
            }
            Some(Framing::UntilEof) | None => {
                self.body.append(&mut self.raw);
                eof
            }
        };
        if self.body.len() > self.limit() {
            return Err(too_large(self.limit()));
        } else if !done && eof {
            return Err(proto("connection closed inside the response body"));
        }
        self.complete = done;
        Ok(done)
    }

    fn limit(&self) -> usize {
        match self.limit {
            0 => MAX_BODY,
            n => n,
        }
    }

    pub(super) fn take_response(&mut self) -> Option<Response> {
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
/// Decodes the chunks in `raw` into `out`, a chunk's data as far as it has arrived (a
/// big notification is one chunk of megabytes: it is never held twice). `left` carries
/// the rest of a chunk from one call to the next. Returns how much of `raw` was used and
/// whether the last chunk was reached.
fn decode_chunks(
    raw: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
    left: &mut usize,
) -> Result<(usize, bool), ApiError> {
    let mut pos = 0;
    loop {
        if *left > 0 {
            let rest = raw.get(pos..).unwrap_or_default();
            let take = left.saturating_sub(2).min(rest.len());
            out.extend_from_slice(rest.get(..take).unwrap_or_default());
            pos += take;
            *left -= take;
            if *left > 2 {
                return Ok((pos, false));
            }
            // The CRLF after the data (one byte of it may have come already).
            let rest = raw.get(pos..).unwrap_or_default();
            let want = b"\r\n".get(2 - *left..).unwrap_or_default();
            let have = rest.len().min(want.len());
            if rest.get(..have) != want.get(..have) {
                return Err(proto("chunk data not followed by CRLF"));
            }
            pos += have;
            *left -= have;
            if *left > 0 {
                return Ok((pos, false));
            }
        }
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
            return Err(too_large(limit));
        }
        pos += start;
        *left = size + 2;
    }
}

pub(super) fn check_request_line(method: &str, path: &str) -> Result<(), ApiError> {
    let bad = |s: &str| s.is_empty() || s.bytes().any(|b| b <= b' ' || b == 0x7f);
    match bad(method) || bad(path) {
        true => Err(proto(format!(
            "refusing to send request {method:?} {path:?}"
        ))),
        false => Ok(()),
    }
}

fn too_large(limit: usize) -> ApiError {
    proto(format!("response body larger than {} MiB", limit >> 20))
}
