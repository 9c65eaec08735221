//! The managed block of /etc/hosts: which names go in it (validated: they come from other
//! machines), where it sits in the file (always at the end, everything else untouched),
//! and how it is written without ever corrupting the rest of the file.
//!
//! The block is the bytes from the newline just before its BEGIN line to the end of its
//! END line; tsinit writes that leading newline itself, so removing the block gives back
//! exactly the file as it was.

pub(crate) mod file;
mod inplace;
pub(crate) mod sync;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::SystemTime;

pub use file::{HostsFile, Split, Written, apply, split};

use crate::bytes;
use crate::localapi::{BackendState, NetMap, Status};

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
    /// Shared by the lines of one machine.
    pub fqdn: Rc<str>,
    pub ip: IpAddr,
    /// How long the short name the line also gives is (the first label of `fqdn`; 0:
    /// none).
    pub short: u8,
}

impl Entry {
    /// The short name the line gives, if any.
    pub fn short(&self) -> Option<&str> {
        let len = usize::from(self.short);
        self.fqdn.get(..len).filter(|_| len > 0)
    }
}

/// `name` (a DNS name, trailing dot allowed) lower-cased, if it is a valid DNS name:
/// labels of [a-z0-9-], not starting or ending with '-', 1-63 characters each, at most
/// 253 in all. Anything else (spaces, '#', newlines, control or non-ASCII characters,
/// too long) is refused.
pub fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => name.to_ascii_lowercase(),
        false => name.to_string(),
    };
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
    if !status.state().is_some_and(BackendState::logged_in) {
        return Vec::new();
    }
    let nodes = status
        .self_
        .iter()
        .map(|s| (s, true))
        .chain(status.peer.values().map(|p| (p, false)))
        .map(|(node, is_self)| Node {
            dns_name: &node.dns_name,
            ips: node
                .tailscale_ips
                .iter()
                .filter_map(|ip| match ip.parse::<IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        log::debug!(
                            "hosts: dropping {:?}: {ip:?} is not an IP address",
                            node.dns_name
                        );
                        None
                    }
                })
                .collect::<Vec<_>>()
                .into(),
            online: node.online,
            is_self,
        });
    entries_of(nodes, own_suffix(status).as_deref(), opts)
}

/// The entries for a netmap the IPN bus delivered, in `state` (see [`entries`]).
pub fn entries_from_netmap(netmap: &NetMap, state: BackendState, opts: Options) -> Vec<Entry> {
    if !state.logged_in() {
        return Vec::new();
    }
    fn node(n: &crate::localapi::Node, is_self: bool) -> Node<'_> {
        Node {
            dns_name: &n.name,
            ips: Cow::Borrowed(&n.addresses),
            online: is_self || n.online.unwrap_or(false),
            is_self,
        }
    }
    let me = netmap.self_node.as_ref();
    let suffix = me
        .and_then(|m| dns_name(&m.name))
        .and_then(|m| m.split_once('.').map(|(_, rest)| rest.to_string()));
    let nodes = me
        .map(|m| node(m, true))
        .into_iter()
        .chain(netmap.peers.iter().map(|p| node(p, false)));
    entries_of(nodes, suffix.as_deref(), opts)
}

/// A node as the block needs it.
struct Node<'a> {
    dns_name: &'a str,
    ips: Cow<'a, [IpAddr]>,
    online: bool,
    is_self: bool,
}

/// The lines for `nodes`: sorted by name, then address, each once. Machines are sorted,
/// not lines (a machine has one line per address), with [`bytes::compare`].
fn entries_of<'a>(
    nodes: impl Iterator<Item = Node<'a>>,
    suffix: Option<&str>,
    opts: Options,
) -> Vec<Entry> {
    let mut machines: Vec<(String, Cow<'a, [IpAddr]>)> = nodes
        .filter(|node| node.is_self || !opts.online_only || node.online)
        .filter_map(|node| Some((valid_name(node.dns_name)?, node.ips)))
        .collect();
    machines.sort_unstable_by(|a, b| bytes::compare(a.0.as_bytes(), b.0.as_bytes()));
    let mut out: Vec<Entry> = Vec::with_capacity(machines.len() * 2);
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut at = 0;
    while let Some((name, _)) = machines.get(at) {
        // Machines that share a name (rare) share its lines.
        let same = machines[at..].iter().take_while(|(n, _)| n == name).count();
        ips.clear();
        for ip in machines[at..at + same]
            .iter()
            .flat_map(|(_, ips)| ips.iter())
        {
            if !tailscale_ip(ip) {
                log::debug!("hosts: dropping {name}: {ip} is outside the Tailscale ranges");
            } else if ip.is_ipv4() || opts.ipv6 {
                ips.push(*ip);
            }
        }
        ips.sort_unstable();
        ips.dedup();
        let fqdn: Rc<str> = name.as_str().into();
        let short = short_name(&fqdn, suffix)
            .filter(|_| opts.short_names)
            .and_then(|s| u8::try_from(s.len()).ok())
            .unwrap_or(0);
        out.extend(ips.iter().map(|&ip| Entry {
            fqdn: fqdn.clone(),
            ip,
            short,
        }));
        at += same;
    }
    out
}

/// The MagicDNS suffix of the node's own tailnet ("tail1234.ts.net"): from
/// `CurrentTailnet`, else the status's `MagicDNSSuffix`, else the node's DNS name without
/// its first label. None while none of these is known.
pub fn own_suffix(status: &Status) -> Option<String> {
    let reported = [
        status
            .current_tailnet
            .as_ref()
            .map(|t| t.magic_dns_suffix.as_str()),
        Some(status.magic_dns_suffix.as_str()),
    ];
    reported
        .into_iter()
        .flatten()
        .find_map(dns_name)
        .or_else(|| {
            let me = dns_name(&status.self_.as_ref()?.dns_name)?;
            me.split_once('.').map(|(_, rest)| rest.to_string())
        })
}

/// The short name MagicDNS answers for `fqdn`: its first label, if the rest is the own
/// tailnet's `suffix`. Nodes shared in from other tailnets have none. No two machines
/// of the block share one: a label followed by the suffix is the machine's whole name.
fn short_name<'a>(fqdn: &'a str, suffix: Option<&str>) -> Option<&'a str> {
    let label = fqdn.strip_suffix(suffix?)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

fn valid_name(name: &str) -> Option<String> {
    let valid = dns_name(name);
    if valid.is_none() {
        log::debug!("hosts: dropping a node whose name {name:?} is not a valid DNS name");
    }
    valid
}

/// The block's text for `entries`, with its leading newline (see the module comment).
pub fn render(entries: &[Entry], written: SystemTime) -> String {
    let mut out = String::new();
    render_into(&mut out, entries, written);
    out
}

/// [`render`] into `out` (empty when called). Written without the formatting machinery:
/// a big tailnet's block has thousands of lines and is rendered again at every change.
pub fn render_into(out: &mut String, entries: &[Entry], written: SystemTime) {
    let mut names = 0;
    let mut last: Option<&str> = None;
    for e in entries {
        if !last.is_some_and(|l| bytes::equal(l.as_bytes(), e.fqdn.as_bytes())) {
            names += 1;
            last = Some(&e.fqdn);
        }
    }
    out.reserve(128 + entries.len() * 64);
    out.push_str(&format!(
        "\n{BEGIN} ({names} names, written {}); edits here are lost\n",
        utc(written)
    ));
    for e in entries {
        // Pieces of text, not characters: a char is encoded at every push.
        const SPACE: &str = " ";
        const NEWLINE: &str = "\n";
        push_ip(out, &e.ip);
        out.push_str(SPACE);
        out.push_str(&e.fqdn);
        if let Some(s) = e.short() {
            out.push_str(SPACE);
            out.push_str(s);
        }
        out.push_str(NEWLINE);
    }
    out.push_str(END);
    out.push('\n');
}

/// Appends `ip` as its Display would (RFC 5952 for IPv6: lower-case hex, the longest run
/// of two or more zero groups, the first of equals, as "::"). Made as bytes in a buffer
/// of its own and appended at once: a big tailnet's block has thousands of addresses.
fn push_ip(out: &mut String, ip: &IpAddr) {
    let mut buf = [0u8; 40];
    let mut len = 0;
    let mut put = |b: u8| {
        if let Some(slot) = buf.get_mut(len) {
            *slot = b;
            len += 1;
        }
    };
    match ip {
        IpAddr::V4(v4) => {
            for (i, n) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if n >= 100 {
                    put(b'0' + n / 100);
                }
                if n >= 10 {
                    put(b'0' + n / 10 % 10);
                }
                put(b'0' + n % 10);
            }
        }
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() || v6.segments()[..6] == [0; 6] => {
            // Forms with a dotted tail: rare, and never Tailscale addresses.
            out.push_str(&v6.to_string());
            return;
        }
        IpAddr::V6(v6) => {
            let g = v6.segments();
            // The longest run of zero groups (two or more), the first one of equals.
            let (mut best, mut best_len, mut run, mut run_len) = (0, 0, 0, 0);
            for (i, &x) in g.iter().enumerate() {
                if x == 0 {
                    if run_len == 0 {
                        run = i;
                    }
                    run_len += 1;
                    if run_len > best_len {
                        (best, best_len) = (run, run_len);
                    }
                } else {
                    run_len = 0;
                }
            }
            if best_len < 2 {
                best_len = 0;
                best = 8;
            }
            for (i, &x) in g.iter().enumerate() {
                if i == best {
                    put(b':');
                    put(b':');
                } else if i > best && i < best + best_len {
                    continue;
                } else {
                    if i > 0 && i != best + best_len {
                        put(b':');
                    }
                    let mut started = false;
                    for shift in [12, 8, 4, 0] {
                        let d = (x >> shift) & 0xf;
                        started |= d != 0 || shift == 0;
                        if started {
                            put(b"0123456789abcdef"[usize::from(d)]);
                        }
                    }
                }
            }
        }
    }
    out.push_str(std::str::from_utf8(&buf[..len]).unwrap_or_default());
}

/// Names the block never carries, whatever the tailnet says: they name this machine
/// (RFC 6761 reserves "localhost" and everything under it; the rest are the usual
/// loopback, multicast and BSD names of hosts files).
const RESERVED: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "broadcasthost",
];

/// `name` as hosts-file lookups compare it: ASCII lower-case, without a trailing dot.
fn fold(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether `name` is reserved (see [`RESERVED`]) or under "localhost.".
pub fn reserved(name: &str) -> bool {
    match name.bytes().any(|b| b.is_ascii_uppercase()) || name.ends_with('.') {
        true => reserved_folded(&fold(name)),
        false => reserved_folded(name),
    }
}

/// [`reserved`] for a name already folded (lower-case, no trailing dot).
fn reserved_folded(n: &str) -> bool {
    // Every reserved name starts with "localhost", "ip6-" or "broadcast": most names are
    // ruled out without comparing them to each (this runs for every line of the block).
    n.ends_with(".localhost")
        || ((n.starts_with("localhost") || n.starts_with("ip6-") || n.starts_with("broadcast"))
            && RESERVED.contains(&n))
}

/// The names (folded) the lines of `outside` map: each line is `address name [alias...]`,
/// and '#' starts a comment anywhere.
pub fn mapped_names(outside: &[u8]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in outside.split(|&b| b == b'\n') {
        let line = line.split(|&b| b == b'#').next().unwrap_or_default();
        let fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        for name in fields.skip(1) {
            names.insert(fold(&String::from_utf8_lossy(name)));
        }
    }
    names
}

/// Why a name is left out of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// One of the names of this machine (see [`reserved`]).
    Reserved,
    /// A line outside the block maps it already: the block would shadow or contradict it.
    Mapped,
}

impl Skip {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Skip::Reserved => "a reserved name",
            Skip::Mapped => "already mapped in the hosts file outside the block",
        }
    }
}

/// A name left out of the block, with the address it would have named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub ip: String,
    pub why: Skip,
}

/// `block` (from [`render`]) without the names it must not carry: reserved names and
/// names the lines `outside` it map. A line whose full name goes is dropped whole; a
/// short name that goes leaves its line with the full name. The BEGIN line's count
/// follows; a block that loses nothing is returned as it is.
pub fn without_shadowing(block: &str, outside: &[u8]) -> (String, Vec<Skipped>) {
    let mapped = mapped_names(outside);
    let skip = |name: &str| {
        if reserved(name) {
            Some(Skip::Reserved)
        } else {
            mapped.contains(&fold(name)).then_some(Skip::Mapped)
        }
    };
    let mut skipped = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut names = BTreeSet::new();
    for line in block.split_inclusive('\n') {
        let text = line.trim_end_matches(['\n', '\r']);
        let mut fields = text.split_ascii_whitespace();
        let (false, Some(ip), Some(fqdn)) = (text.starts_with('#'), fields.next(), fields.next())
        else {
            lines.push(line.to_string()); // markers, padding
            continue;
        };
        let mut left_out = |name: &str, why| {
            skipped.push(Skipped {
                name: name.to_string(),
                ip: ip.to_string(),
                why,
            })
        };
        if let Some(why) = skip(fqdn) {
            left_out(fqdn, why);
            continue;
        }
        let mut kept = format!("{ip} {fqdn}");
        for alias in fields {
            match skip(alias) {
                Some(why) => left_out(alias, why),
                None => {
                    kept.push(' ');
                    kept.push_str(alias);
                }
            }
        }
        kept.push('\n');
        names.insert(fqdn.to_string());
        lines.push(kept);
    }
    if skipped.is_empty() {
        return (block.to_string(), skipped);
    }
    for line in &mut lines {
        if line.starts_with(BEGIN) {
            *line = recount(line, names.len());
        }
    }
    (lines.concat(), skipped)
}

/// `list` without what would shadow a name (see [`without_shadowing`]), for entries
/// from [`entries`] (names already folded): a line whose full name goes is dropped, a
/// short name that goes leaves its line with the full name.
/// `None`: nothing to leave out, `list` as it is.
pub fn unshadowed(list: &[Entry], outside: &[u8]) -> (Option<Vec<Entry>>, Vec<Skipped>) {
    let mapped = mapped_names(outside);
    let skip = |name: &str| {
        if reserved_folded(name) {
            Some(Skip::Reserved)
        } else {
            mapped.contains(name).then_some(Skip::Mapped)
        }
    };
    // The lines of one machine are next to each other and share its names: each
    // machine is looked at once.
    let mut last: Option<&Rc<str>> = None;
    let any = list.iter().any(|e| {
        if last.is_some_and(|l| Rc::ptr_eq(l, &e.fqdn)) {
            return false;
        }
        last = Some(&e.fqdn);
        skip(&e.fqdn).is_some() || e.short().and_then(skip).is_some()
    });
    if !any {
        return (None, Vec::new());
    }
    let mut kept = Vec::with_capacity(list.len());
    let mut skipped = Vec::new();
    let mut left_out = |name: &str, ip: &IpAddr, why| {
        skipped.push(Skipped {
            name: name.to_string(),
            ip: ip.to_string(),
            why,
        })
    };
    for e in list {
        if let Some(why) = skip(&e.fqdn) {
            left_out(&e.fqdn, &e.ip, why);
            continue;
        }
        let mut e = e.clone();
        if let Some((short, why)) = e.short().and_then(|s| Some((s, skip(s)?))) {
            left_out(short, &e.ip, why);
            e.short = 0;
        }
        kept.push(e);
    }
    (Some(kept), skipped)
}

/// A BEGIN line from [`render`] saying `names` names (any other line as it is).
fn recount(begin: &str, names: usize) -> String {
    let head = format!("{BEGIN} (");
    match begin
        .strip_prefix(&head)
        .and_then(|rest| rest.split_once(" names, "))
    {
        Some((n, rest)) if n.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{head}{names} names, {rest}")
        }
        _ => begin.to_string(),
    }
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
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) const BLOCK: &str = "\n# BEGIN tsinit managed block (1 names, written x); edits here are lost\n\
                         100.64.0.1 me.tail.example me\n# END tsinit managed block\n";

    const OPTS: Options = Options {
        ipv6: true,
        short_names: true,
        online_only: false,
    };

    fn status(json: &str) -> Status {
        crate::localapi::scan::status(json.as_bytes()).unwrap()
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
             100.64.0.2 web.tail.example web\n\
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
        let json = format!(
            "{{\"BackendState\": \"Running\", \"MagicDNSSuffix\": \"tail.example\", \"Peer\": {{{peers}}}}}"
        );
        let block = render(&entries(&status(&json), OPTS), SystemTime::UNIX_EPOCH);
        let body: Vec<&str> = block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(body, ["100.127.255.254 ok.tail.example ok"]);
    }

    #[test]
    fn short_names_only_for_the_own_tailnet() {
        let shorts = |json: &str| -> Vec<String> {
            entries(&status(json), OPTS)
                .iter()
                .map(|e| format!("{} {}", e.fqdn, e.short().unwrap_or("-")))
                .collect()
        };
        // No suffix reported: the node's own name gives it.
        assert_eq!(
            shorts(RUNNING),
            [
                "db.tail.example db",
                "me.tail.example me",
                "me.tail.example me",
                "web.other.example -",
                "web.tail.example web"
            ]
        );
        // CurrentTailnet wins over MagicDNSSuffix, which wins over Self's name.
        let shared = RUNNING.replace(
            "\"BackendState\": \"Running\",",
            "\"BackendState\": \"Running\", \"MagicDNSSuffix\": \"tail.example\", \
             \"CurrentTailnet\": {\"MagicDNSSuffix\": \"Other.Example.\"},",
        );
        assert_eq!(
            shorts(&shared),
            [
                "db.tail.example -",
                "me.tail.example -",
                "me.tail.example -",
                "web.other.example web",
                "web.tail.example -"
            ]
        );
        let suffix_only = RUNNING.replace(
            "\"BackendState\": \"Running\",",
            "\"BackendState\": \"Running\", \"MagicDNSSuffix\": \"other.example\",",
        );
        assert_eq!(shorts(&suffix_only), shorts(&shared));
        // No suffix known at all: no short names.
        let nothing = RUNNING.replace("\"DNSName\": \"me.tail.example.\"", "\"DNSName\": \"\"");
        assert!(
            shorts(&nothing).iter().all(|l| l.ends_with(" -")),
            "{nothing}"
        );
        // A deeper name is not a short name's owner (MagicDNS answers one label).
        assert_eq!(short_name("a.b.tail.example", Some("tail.example")), None);
        assert_eq!(
            short_name("ab.tail.example", Some("tail.example")),
            Some("ab")
        );
        assert_eq!(short_name("xtail.example", Some("tail.example")), None);
    }

    pub(crate) fn names_of(block: &str) -> Vec<&str> {
        block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    #[test]
    fn never_shadows_reserved_names_or_names_the_file_maps() {
        let block = "\n# BEGIN tsinit managed block (5 names, written x); edits here are lost\n\
                     100.64.0.5 localhost.tail.example localhost\n\
                     100.64.0.6 abc123def.tail.example abc123def\n\
                     100.64.0.7 mapped.tail.example mapped\n\
                     fd7a:115c:a1e0::7 mapped.tail.example mapped\n\
                     100.64.0.8 foo.localhost\n\
                     100.64.0.9 ip6-allnodes.tail.example ip6-allnodes\n\
                     # END tsinit managed block\n";
        let outside = b"127.0.0.1 localhost # loopback\n\
                        # 10.0.0.1 commented-out.tail.example commented\n\
                        172.17.0.2\tABC123DEF.\n\
                        10.0.0.3 other Mapped.Tail.Example\n";
        let (kept, skipped) = without_shadowing(block, outside);
        assert_eq!(
            names_of(&kept),
            [
                "100.64.0.5 localhost.tail.example",
                "100.64.0.6 abc123def.tail.example",
                "100.64.0.9 ip6-allnodes.tail.example",
            ]
        );
        assert!(kept.contains("(3 names, written x)"), "{kept}");
        let why: Vec<(String, Skip)> = skipped.into_iter().map(|s| (s.name, s.why)).collect();
        assert_eq!(
            why,
            [
                ("localhost".to_string(), Skip::Reserved),
                ("abc123def".to_string(), Skip::Mapped),
                ("mapped.tail.example".to_string(), Skip::Mapped),
                ("mapped.tail.example".to_string(), Skip::Mapped),
                ("foo.localhost".to_string(), Skip::Reserved),
                ("ip6-allnodes".to_string(), Skip::Reserved),
            ]
        );
        // Nothing to leave out: the block as it was.
        assert_eq!(
            without_shadowing(BLOCK, b"10.0.0.1 web\n"),
            (BLOCK.to_string(), vec![])
        );
        for name in [
            "LOCALHOST.",
            "a.b.localhost",
            "broadcasthost",
            "ip6-loopback",
        ] {
            assert!(reserved(name), "{name}");
        }
        for name in ["localhostx", "localhost.tail.example", "mylocalhost"] {
            assert!(!reserved(name), "{name}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut seeds: Vec<u128> = vec![0, 1, u128::MAX, 0xffff_0000_0000, 0xffff_6440_0001];
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Zero some groups at random, so runs of zeros of every length and place occur.
            let mask = (0..8).fold(0u128, |m, i| match (x >> (i * 3)) & 1 {
                1 => m | (0xffff << (i * 16)),
                _ => m,
            });
            seeds.push(x & mask);
        }
        for bits in seeds {
            for ip in [
                IpAddr::V6(bits.into()),
                IpAddr::V4((bits as u32).into()),
                IpAddr::V6(((0xfd7a_115c_a1e0u128 << 80) | (bits & 0xffff_ffff)).into()),
            ] {
                let mut out = String::new();
                push_ip(&mut out, &ip);
                assert_eq!(out, ip.to_string());
            }
        }
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

    #[test]
    fn describes_the_block() {
        let content = format!("127.0.0.1 localhost\n{BLOCK}");
        assert_eq!(
            describe(content.as_bytes()).as_deref(),
            Some("1 names, written x")
        );
        assert_eq!(describe(b"127.0.0.1 localhost\n"), None);
    }

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_312_496), "2026-11-22T01:54:56Z");
    }
}
