//! The managed block of /etc/hosts: which names go in it (validated: they come from other
//! machines), where it sits in the file (always at the end, everything else untouched),
//! and how it is written without ever corrupting the rest of the file.
//!
//! The block is the bytes from the newline just before its BEGIN line to the end of its
//! END line; tsinit writes that leading newline itself, so removing the block gives back
//! exactly the file as it was.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::localapi::{PeerStatus, Status};

/// Start of the BEGIN marker line (the rest of the line says how many names and when).
pub const BEGIN: &str = "# BEGIN tsinit managed block";
/// The END marker line.
pub const END: &str = "# END tsinit managed block";

/// What goes into the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub ipv6: bool,
    pub short_names: bool,
    pub online_only: bool,
}

/// One line of the block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub fqdn: String,
    pub ip: IpAddr,
    pub short: Option<String>,
}

/// `name` (a DNS name, trailing dot allowed) lower-cased, if it is a valid DNS name:
/// labels of [a-z0-9-], not starting or ending with '-', 1-63 characters each, at most
/// 253 in all. Anything else (spaces, '#', newlines, control or non-ASCII characters,
/// too long) is refused.
pub fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(ok_label)).then_some(name)
}

/// Whether `ip` is a Tailscale address: 100.64.0.0/10 or fd7a:115c:a1e0::/48.
pub fn tailscale_ip(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

/// The entries for `status`: self and every peer, one per valid Tailscale address, in
/// a fixed order. Empty unless the node is logged in with its netmap, i.e. Starting
/// (connecting) or Running: a stopped or logged-out node's names are not served. Invalid
/// names and addresses are dropped with a debug line.
pub fn entries(status: &Status, opts: Options) -> Vec<Entry> {
    if !matches!(status.backend_state.as_str(), "Running" | "Starting") {
        return Vec::new();
    }
    let nodes = status
        .self_
        .iter()
        .map(|s| (s, true))
        .chain(status.peer.values().map(|p| (p, false)));
    let mut out: Vec<Entry> = Vec::new();
    for (node, is_self) in nodes {
        if !is_self && opts.online_only && !node.online {
            continue;
        }
        let Some(fqdn) = valid_name(node) else {
            continue;
        };
        for ip in &node.tailscale_ips {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                log::debug!("hosts: dropping {fqdn}: {ip:?} is not an IP address");
                continue;
            };
            if !tailscale_ip(&ip) {
                log::debug!("hosts: dropping {fqdn}: {ip} is outside the Tailscale ranges");
                continue;
            }
            if ip.is_ipv6() && !opts.ipv6 {
                continue;
            }
            out.push(Entry {
                fqdn: fqdn.clone(),
                ip,
                short: None,
            });
        }
    }
    if opts.short_names {
        // A short name two machines share is left out rather than guessed.
        let short = |fqdn: &str| fqdn.split('.').next().unwrap_or_default().to_string();
        let mut owners: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for e in &out {
            owners
                .entry(short(&e.fqdn))
                .or_default()
                .insert(e.fqdn.clone());
        }
        for e in &mut out {
            let s = short(&e.fqdn);
            if s != e.fqdn && owners.get(&s).is_some_and(|o| o.len() == 1) {
                e.short = Some(s);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn valid_name(node: &PeerStatus) -> Option<String> {
    let name = dns_name(&node.dns_name);
    if name.is_none() {
        log::debug!(
            "hosts: dropping a node whose name {:?} is not a valid DNS name",
            node.dns_name
        );
    }
    name
}

/// The block's text for `entries`, with its leading newline (see the module comment).
pub fn render(entries: &[Entry], written: SystemTime) -> String {
    let names: std::collections::BTreeSet<&str> = entries.iter().map(|e| e.fqdn.as_str()).collect();
    let mut out = format!(
        "\n{BEGIN} ({} names, written {}); edits here are lost\n",
        names.len(),
        utc(written)
    );
    for e in entries {
        out.push_str(&format!("{} {}", e.ip, e.fqdn));
        if let Some(s) = &e.short {
            out.push(' ');
            out.push_str(s);
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Where a file's managed blocks are.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The file without its blocks: what tsinit must never change.
    pub outside: Vec<u8>,
    /// Byte offset where the first block begins (the file's length if it has none).
    pub first_block: usize,
    /// The lines inside the last block, without the markers.
    pub body: Option<Vec<u8>>,
    pub blocks: usize,
}

fn line_is(line: &[u8], marker: &str, prefix_only: bool) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if prefix_only {
        line.starts_with(marker.as_bytes())
    } else {
        line == marker.as_bytes()
    }
}

/// Finds the managed blocks in `content`. A BEGIN without END runs to the end of the file.
pub fn split(content: &[u8]) -> Split {
    let mut out = Split {
        outside: Vec::with_capacity(content.len()),
        first_block: content.len(),
        body: None,
        blocks: 0,
    };
    let mut pos = 0;
    let mut in_block: Option<Vec<u8>> = None;
    while pos < content.len() {
        let end = content[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.len(), |i| pos + i + 1);
        let line = &content[pos..end];
        match in_block.as_mut() {
            None if line_is(line, BEGIN, true) => {
                // The newline before BEGIN is the block's own.
                let start = if pos > 0 && content[pos - 1] == b'\n' {
                    out.outside.pop();
                    pos - 1
                } else {
                    pos
                };
                out.first_block = out.first_block.min(start);
                out.blocks += 1;
                in_block = Some(Vec::new());
            }
            None => out.outside.extend_from_slice(line),
            Some(body) if line_is(line, END, false) => {
                out.body = Some(std::mem::take(body));
                in_block = None;
            }
            Some(body) => body.extend_from_slice(line),
        }
        pos = end;
    }
    if let Some(body) = in_block {
        out.body = Some(body);
    }
    out
}

/// `content` with all its blocks replaced by `block`, which goes at the end.
pub fn apply(content: &[u8], block: &str) -> Vec<u8> {
    let mut out = split(content).outside;
    out.extend_from_slice(block.as_bytes());
    out
}

/// The body lines of a rendered block (between its marker lines).
fn body_of(block: &[u8]) -> Vec<u8> {
    let body = split(block).body.unwrap_or_default();
    body.split_inclusive(|&b| b == b'\n')
        .filter(|line| !is_padding(line))
        .flatten()
        .copied()
        .collect()
}

/// A padding line: '#', spaces, newline (see [`HostsFile::write`]).
fn is_padding(line: &[u8]) -> bool {
    line.len() >= 2
        && line[0] == b'#'
        && line.ends_with(b"\n")
        && line[1..line.len() - 1].iter().all(|&b| b == b' ')
}

/// `block` made at least `len` bytes long by a padding comment line before its END line.
fn padded(block: &str, len: usize) -> Vec<u8> {
    let Some(end) = block.rfind(END).filter(|_| block.len() < len) else {
        return block.as_bytes().to_vec();
    };
    let pad = (len - block.len()).max(2);
    let mut out = block.as_bytes()[..end].to_vec();
    out.push(b'#');
    out.extend(std::iter::repeat_n(b' ', pad - 2));
    out.push(b'\n');
    out.extend_from_slice(&block.as_bytes()[end..]);
    out
}

/// What the block in a hosts file says, for `tsinit status`.
pub fn describe(content: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(content);
    let line = text.lines().rev().find(|l| l.starts_with(BEGIN))?;
    let info = line.strip_prefix(BEGIN)?.trim();
    let info = info.split(';').next().unwrap_or_default();
    Some(
        info.trim_start_matches('(')
            .trim_end_matches(')')
            .to_string(),
    )
}

/// Whether a write changed the file.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Unchanged,
    Replaced,
    InPlace,
}

/// The hosts file tsinit keeps its block in.
pub struct HostsFile {
    path: PathBuf,
    /// Whether the file is a mount point (a container runtime bind-mounts /etc/hosts):
    /// then rename() over it fails and it must be written in place. Found out at the
    /// first write, so start-up does not read /proc/self/mountinfo a second time.
    mount_point: Option<bool>,
}

impl HostsFile {
    pub fn new(path: &Path) -> HostsFile {
        HostsFile {
            path: path.to_path_buf(),
            mount_point: None,
        }
    }

    /// A file that is written in place whatever it is (for tests of that path).
    pub fn in_place(path: &Path) -> HostsFile {
        HostsFile {
            path: path.to_path_buf(),
            mount_point: Some(true),
        }
    }

    fn is_mount_point(&mut self) -> bool {
        let path = &self.path;
        *self.mount_point.get_or_insert_with(|| {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            crate::preflight::parse_mountinfo(&mountinfo)
                .iter()
                .any(|m| m.mount_point == real)
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file's block `block` (from [`render`]). Skips the write when the block
    /// already says the same (the timestamp aside). Outside the block nothing changes:
    /// by rename() of a complete new file where possible, else by rewriting only the
    /// block at the end of the file in place, so that a crash or SIGKILL at any moment
    /// leaves every byte outside the block as it was.
    pub fn write(&mut self, block: &str) -> io::Result<Written> {
        let current = std::fs::read(&self.path)?;
        let split = split(&current);
        let at_end = split.first_block == split.outside.len();
        if split.blocks == 1
            && at_end
            && body_of(&current[split.first_block..]) == body_of(block.as_bytes())
        {
            return Ok(Written::Unchanged);
        }
        let mut desired = split.outside.clone();
        desired.extend_from_slice(block.as_bytes());
        if !self.is_mount_point() {
            match self.replace(&desired) {
                Ok(()) => return Ok(Written::Replaced),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) => {
                    log::debug!(
                        "hosts: {} is a mount point; writing in place",
                        self.path.display()
                    );
                    self.mount_point = Some(true);
                }
                Err(e) => return Err(e),
            }
        }
        let file = OpenOptions::new().write(true).open(&self.path)?;
        if !at_end {
            log::debug!("hosts: a block sits before other lines; rewriting the whole file");
            file.write_all_at(&desired, 0)?;
            file.set_len(desired.len() as u64)?;
            file.sync_all()?;
            return Ok(Written::InPlace);
        }
        // Only the block's bytes change, and the block never shrinks in place: a shorter
        // one is padded to the old length. A kill in the middle of the write then leaves
        // new bytes followed by old ones, all after the (same) BEGIN marker, so still
        // inside the block; a truncation would instead have left old lines after the new
        // END, outside it.
        let from = split.first_block;
        let bytes = padded(block, current.len() - from);
        file.write_all_at(&bytes, from as u64)?;
        file.sync_all()?;
        Ok(Written::InPlace)
    }

    /// Writes `content` to a new file beside the hosts file (same mode and owner) and
    /// renames it over.
    fn replace(&self, content: &[u8]) -> io::Result<()> {
        let meta = std::fs::metadata(&self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tsinit-{}", std::process::id()));
        let result = (|| {
            let mut f: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(meta.permissions().mode() & 0o7777)
                .open(&tmp)?;
            f.write_all(content)?;
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            f.set_permissions(meta.permissions())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            std::fs::remove_file(&tmp).ok();
        }
        result
    }
}

/// `t` as "YYYY-MM-DDTHH:MM:SSZ".
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OPTS: Options = Options {
        ipv6: true,
        short_names: true,
        online_only: false,
    };

    fn status(json: &str) -> Status {
        serde_json::from_str(json).unwrap()
    }

    const RUNNING: &str = r#"{
        "BackendState": "Running",
        "Self": {"DNSName": "me.tail.example.", "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"], "Online": true},
        "Peer": {
            "nodekey:1": {"DNSName": "web.tail.example.", "TailscaleIPs": ["100.64.0.2"], "Online": true},
            "nodekey:2": {"DNSName": "db.tail.example.", "TailscaleIPs": ["100.64.0.3"], "Online": false},
            "nodekey:3": {"DNSName": "web.other.example.", "TailscaleIPs": ["100.64.0.4"], "Online": true}
        }
    }"#;

    #[test]
    fn renders_self_and_peers_in_a_fixed_order() {
        let e = entries(&status(RUNNING), OPTS);
        let block = render(
            &e,
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 365),
        );
        assert_eq!(
            block,
            "\n# BEGIN tsinit managed block (4 names, written 1971-01-01T00:00:00Z); edits here are lost\n\
             100.64.0.3 db.tail.example db\n\
             100.64.0.1 me.tail.example me\n\
             fd7a:115c:a1e0::1 me.tail.example me\n\
             100.64.0.4 web.other.example\n\
             100.64.0.2 web.tail.example\n\
             # END tsinit managed block\n"
        );
    }

    #[test]
    fn options_filter() {
        let opts = Options {
            ipv6: false,
            short_names: false,
            online_only: true,
        };
        let names: Vec<String> = entries(&status(RUNNING), opts)
            .iter()
            .map(|e| format!("{} {}", e.ip, e.fqdn))
            .collect();
        assert_eq!(
            names,
            [
                "100.64.0.1 me.tail.example",
                "100.64.0.4 web.other.example",
                "100.64.0.2 web.tail.example"
            ]
        );
    }

    #[test]
    fn nothing_unless_logged_in() {
        for state in ["NeedsLogin", "Stopped", "NoState", "NeedsMachineAuth"] {
            let json = RUNNING.replace("\"Running\"", &format!("\"{state}\""));
            assert!(entries(&status(&json), OPTS).is_empty(), "{state}");
        }
        let starting = RUNNING.replace("\"Running\"", "\"Starting\"");
        assert_eq!(
            entries(&status(&starting), OPTS),
            entries(&status(RUNNING), OPTS)
        );
        assert!(!entries(&status(RUNNING), OPTS).is_empty());
    }

    #[test]
    fn hostile_names_and_addresses_never_reach_the_block() {
        let hostile = [
            "evil\n100.64.0.9 bank.example.",
            "evil host.tail.example.",
            "evil#x.tail.example.",
            "ev\u{7}il.tail.example.",
            "évil.tail.example.",
            "-evil.tail.example.",
            "evil_.tail.example.",
            &format!("{}.tail.example.", "a".repeat(64)),
            &format!("{}.example.", "abcdefghi.".repeat(30)),
            "",
            ".",
            "evil..tail.example.",
        ];
        let mut peers = String::new();
        for (i, name) in hostile.iter().enumerate() {
            peers.push_str(&format!(
                "\"nodekey:h{i}\": {{\"DNSName\": {}, \"TailscaleIPs\": [\"100.64.1.{i}\"]}},",
                serde_json::to_string(name).unwrap()
            ));
        }
        peers.push_str(
            "\"nodekey:ip1\": {\"DNSName\": \"badip.tail.example.\", \"TailscaleIPs\": \
             [\"10.0.0.1\", \"100.128.0.1\", \"fd00::1\", \"100.64.0.1\\n1.2.3.4 x\", \"nonsense\"]},\
             \"nodekey:ok\": {\"DNSName\": \"OK.Tail.Example.\", \"TailscaleIPs\": [\"100.127.255.254\"]}",
        );
        let json = format!("{{\"BackendState\": \"Running\", \"Peer\": {{{peers}}}}}");
        let block = render(&entries(&status(&json), OPTS), SystemTime::UNIX_EPOCH);
        let body: Vec<&str> = block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(body, ["100.127.255.254 ok.tail.example ok"]);
    }

    #[test]
    fn dns_names() {
        assert_eq!(
            dns_name("Web-1.Tail.Example."),
            Some("web-1.tail.example".into())
        );
        assert_eq!(
            dns_name(&format!("{}.x", "a".repeat(63))).map(|n| n.len()),
            Some(65)
        );
        assert_eq!(dns_name("a b"), None);
    }

    #[test]
    fn tailscale_ranges() {
        for (ip, want) in [
            ("100.64.0.0", true),
            ("100.127.255.255", true),
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("fd7a:115c:a1e0::1", true),
            ("fd7a:115c:a1e1::1", false),
        ] {
            assert_eq!(tailscale_ip(&ip.parse().unwrap()), want, "{ip}");
        }
    }

    const BLOCK: &str = "\n# BEGIN tsinit managed block (1 names, written x); edits here are lost\n\
                         100.64.0.1 me.tail.example me\n# END tsinit managed block\n";

    #[test]
    fn replaces_blocks_keeping_everything_else() {
        let stale =
            "\n# BEGIN tsinit managed block (old)\n100.64.0.9 old\n# END tsinit managed block\n";
        let cases: Vec<(&str, String, String)> = vec![
            ("empty file", String::new(), String::new()),
            ("no block", "127.0.0.1 localhost\n".into(), "127.0.0.1 localhost\n".into()),
            ("no trailing newline", "127.0.0.1 localhost".into(), "127.0.0.1 localhost".into()),
            ("crlf", "127.0.0.1 localhost\r\n::1 lh\r\n".into(), "127.0.0.1 localhost\r\n::1 lh\r\n".into()),
            ("stale block", format!("127.0.0.1 localhost\n{stale}"), "127.0.0.1 localhost\n".into()),
            (
                "stale block in the middle",
                format!("127.0.0.1 localhost\n{stale}10.0.0.5 docker\n"),
                "127.0.0.1 localhost\n10.0.0.5 docker\n".into(),
            ),
            (
                "two stale blocks",
                format!("a\n{stale}b\n{stale}"),
                "a\nb\n".into(),
            ),
            (
                "crlf stale block",
                "a\r\n\n# BEGIN tsinit managed block x\r\n100.64.0.9 o\r\n# END tsinit managed block\r\n".into(),
                "a\r\n".into(),
            ),
            (
                "unterminated block",
                "a\n\n# BEGIN tsinit managed block x\n100.64.0.9 o\n".into(),
                "a\n".into(),
            ),
        ];
        for (what, input, outside) in cases {
            let out = apply(input.as_bytes(), BLOCK);
            assert_eq!(out, format!("{outside}{BLOCK}").into_bytes(), "{what}");
            let again = split(&out);
            assert_eq!(
                (again.blocks, again.outside),
                (1, outside.clone().into_bytes()),
                "{what}"
            );
            assert_eq!(apply(&out, BLOCK), out, "{what}: idempotent");
        }
    }

    #[test]
    fn describes_the_block() {
        let content = format!("127.0.0.1 localhost\n{BLOCK}");
        assert_eq!(
            describe(content.as_bytes()).as_deref(),
            Some("1 names, written x")
        );
        assert_eq!(describe(b"127.0.0.1 localhost\n"), None);
    }

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tsinit-hosts-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn writes_by_rename_or_in_place_and_skips_unchanged() {
        for in_place in [false, true] {
            let path = temp(&format!("w{in_place}"), b"127.0.0.1 localhost");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let mut f = if in_place {
                HostsFile::in_place(&path)
            } else {
                HostsFile::new(&path)
            };
            let want = if in_place {
                Written::InPlace
            } else {
                Written::Replaced
            };
            assert_eq!(f.write(BLOCK).unwrap(), want);
            let other = BLOCK.replace("written x", "written y");
            assert_eq!(
                f.write(&other).unwrap(),
                Written::Unchanged,
                "timestamp alone"
            );
            let changed = BLOCK.replace("100.64.0.1", "100.64.0.2");
            assert_eq!(f.write(&changed).unwrap(), want);
            let content = std::fs::read(&path).unwrap();
            assert_eq!(
                content,
                format!("127.0.0.1 localhost{changed}").into_bytes()
            );
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "permissions kept");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }

    #[test]
    fn in_place_a_shorter_block_is_padded_never_truncated() {
        let path = temp("shrink", b"127.0.0.1 localhost\n");
        let mut f = HostsFile::in_place(&path);
        let big = BLOCK.replace(
            "100.64.0.1 me.tail.example me\n",
            "100.64.0.1 me.tail.example me\n100.64.0.2 a-long-peer-name.tail.example\n",
        );
        assert_eq!(f.write(&big).unwrap(), Written::InPlace);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(f.write(BLOCK).unwrap(), Written::InPlace);
        let content = std::fs::read(&path).unwrap();
        assert_eq!(content.len() as u64, len, "the block keeps its length");
        let s = split(&content);
        assert_eq!(
            (s.blocks, &s.outside[..]),
            (1, &b"127.0.0.1 localhost\n"[..])
        );
        assert_eq!(
            body_of(&content[s.first_block..]),
            body_of(BLOCK.as_bytes())
        );
        assert_eq!(
            f.write(BLOCK).unwrap(),
            Written::Unchanged,
            "padding is not a change"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_312_496), "2026-11-22T01:54:56Z");
    }
}
