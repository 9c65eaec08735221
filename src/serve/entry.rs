//! The `[[serve]]` entries: protocols, ports, targets and paths, checked when the
//! configuration is read, so a bad entry stops tsinit before anything starts.

use std::fmt;

/// How a served port is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Raw TCP forwarded to the target.
    Tcp,
    /// TLS terminated by tailscaled (with the node's certificate), then TCP.
    TlsTerminatedTcp,
    /// Plain HTTP, proxied to the target URL.
    Http,
    /// HTTPS with the node's certificate, proxied to the target URL.
    Https,
}

const PROTOS: [(&str, Proto); 4] = [
    ("tcp", Proto::Tcp),
    ("tls-terminated-tcp", Proto::TlsTerminatedTcp),
    ("http", Proto::Http),
    ("https", Proto::Https),
];

impl Proto {
    /// From its name in the configuration.
    pub fn parse(name: &str) -> Result<Proto, String> {
        PROTOS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                format!(
                    "unknown variant `{name}`, expected one of `tcp`, `tls-terminated-tcp`, \
                     `http`, `https`"
                )
            })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::TlsTerminatedTcp => "tls-terminated-tcp",
            Proto::Http => "http",
            Proto::Https => "https",
        })
    }
}

/// One `[[serve]]` entry, checked and with its target in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub proto: Proto,
    pub port: u16,
    /// `host:port` for tcp and tls-terminated-tcp; a URL for http and https.
    pub target: String,
    /// The mount point for http and https ("/" unless given).
    pub path: String,
}

impl Entry {
    /// The target in canonical form for `proto`.
    pub fn target(proto: Proto, target: &str) -> Result<String, String> {
        let target = target.trim();
        match proto {
            Proto::Tcp | Proto::TlsTerminatedTcp => tcp_target(target),
            Proto::Http | Proto::Https => web_target(target),
        }
    }

    /// The mount point for `proto` ("/" unless given; only http and https have one).
    pub fn path(proto: Proto, path: Option<&str>) -> Result<String, String> {
        match (proto, path) {
            (Proto::Tcp | Proto::TlsTerminatedTcp, Some(_)) => {
                Err("`path` is only for http and https entries".to_string())
            }
            (_, None) => Ok("/".to_string()),
            (_, Some(p)) if p.starts_with('/') && !p.contains(char::is_whitespace) => {
                Ok(p.to_string())
            }
            (_, Some(p)) => Err(format!("path `{p}` must start with / and hold no spaces")),
        }
    }
}

/// A port number 1..=65535.
pub fn check_port(port: i64) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {port} is not a port number (1-65535)"))
}

fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && !host.contains('/')
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// `9999` -> `127.0.0.1:9999`; `host:port` as is (also `tcp://host:port`).
fn tcp_target(target: &str) -> Result<String, String> {
    let t = target.strip_prefix("tcp://").unwrap_or(target);
    if let Ok(port) = t.parse::<i64>() {
        return Ok(format!("127.0.0.1:{}", check_port(port)?));
    }
    match valid_host_port(t) {
        true => Ok(t.to_string()),
        false => Err(format!(
            "target `{target}` is not a port or host:port (e.g. \"127.0.0.1:9999\")"
        )),
    }
}

/// `3000` -> `http://127.0.0.1:3000`; `host:port` -> `http://host:port`; URLs with
/// http, https or https+insecure as is.
fn web_target(target: &str) -> Result<String, String> {
    if let Ok(port) = target.parse::<i64>() {
        return Ok(format!("http://127.0.0.1:{}", check_port(port)?));
    }
    for scheme in ["http://", "https://", "https+insecure://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            let authority = rest.split('/').next().unwrap_or_default();
            let ok = valid_host_port(authority)
                || (!authority.is_empty()
                    && !authority.contains(':')
                    && !authority.contains(char::is_whitespace));
            return match ok && !rest.contains(char::is_whitespace) {
                true => Ok(target.to_string()),
                false => Err(format!("target `{target}` is not a usable URL")),
            };
        }
    }
    if valid_host_port(target) {
        return Ok(format!("http://{target}"));
    }
    Err(format!(
        "target `{target}` is not a URL (http://, https://, https+insecure://), \
         host:port or port"
    ))
}

/// Checks the entries together: one protocol per port, one target per path.
pub fn check(entries: &[Entry]) -> Result<(), String> {
    for (i, e) in entries.iter().enumerate() {
        let before = entries.get(..i).unwrap_or_default();
        let Some(first) = before.iter().find(|o| o.port == e.port) else {
            continue;
        };
        if first.proto != e.proto {
            return Err(format!(
                "port {} is served twice, as {} and as {}: one protocol per port",
                e.port, first.proto, e.proto
            ));
        }
        if matches!(e.proto, Proto::Tcp | Proto::TlsTerminatedTcp)
            || before.iter().any(|o| o.port == e.port && o.path == e.path)
        {
            return Err(format!(
                "port {} path {} is served twice: one target each",
                e.port, e.path
            ));
        }
    }
    Ok(())
}
