//! Reading an IPN bus notification without decoding all of it. A big tailnet's
//! notification carries its whole netmap (megabytes of JSON, again at every change), of
//! which tsinit needs the state and each node's name, addresses and online flag: those
//! are read, and everything else is stepped over by its brackets and quotes alone.
//!
//! What is stepped over is not checked; what is read is (a name or address that is not
//! a JSON string, or bytes that end early, make the notification an error).

use std::borrow::Cow;
use std::net::IpAddr;

use super::{NetMap, Node, Notify, PeerStatus, Prefs, Status, Tailnet};

/// The state and netmap of one notification (its JSON, without the newline).
pub fn notification(raw: &[u8]) -> Result<Notify, String> {
    let mut c = Cursor { b: raw, i: 0 };
    let mut n = Notify::default();
    c.object(|c, key| {
        match key {
            b"State" => n.state = c.number()?,
            b"NetMap" => n.net_map = c.or_null(netmap)?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(n)
}

/// GET /localapi/v0/status, the fields tsinit uses.
pub fn status(raw: &[u8]) -> Result<Status, String> {
    let mut c = Cursor { b: raw, i: 0 };
    let mut s = Status::default();
    c.object(|c, key| {
        match key {
            b"BackendState" => s.backend_state = c.owned()?,
            b"Version" => s.version = c.owned()?,
            b"AuthURL" => s.auth_url = c.owned()?,
            b"TailscaleIPs" => s.tailscale_ips = c.texts()?,
            b"Self" => s.self_ = c.or_null(peer)?,
            b"Health" => s.health = c.texts()?,
            b"MagicDNSSuffix" => s.magic_dns_suffix = c.owned()?,
            b"CurrentTailnet" => {
                let suffix = c.member(b"MagicDNSSuffix", Cursor::owned)?;
                s.current_tailnet = suffix.map(|magic_dns_suffix| Tailnet { magic_dns_suffix });
            }
            b"Peer" => c.members(|c, key| {
                let key = String::from_utf8_lossy(key).into_owned();
                s.peer.insert(key, peer(c)?);
                Ok(())
            })?,
            b"TUN" => s.tun = c.boolean()?.unwrap_or(false),
            b"CertDomains" => s.cert_domains = c.texts()?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(s)
}

/// A status's node (ipnstate.PeerStatus).
fn peer(c: &mut Cursor) -> Result<PeerStatus, String> {
    let mut p = PeerStatus::default();
    c.object(|c, key| {
        match key {
            b"DNSName" => p.dns_name = c.owned()?,
            b"TailscaleIPs" => p.tailscale_ips = c.texts()?,
            b"Online" => p.online = c.boolean()?.unwrap_or(false),
            b"CapMap" => c.members(|c, key| {
                p.cap_map.push(String::from_utf8_lossy(key).into_owned());
                c.skip()
            })?,
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(p)
}

/// GET /localapi/v0/prefs, the fields tsinit uses.
pub fn prefs(raw: &[u8]) -> Result<Prefs, String> {
    let mut c = Cursor { b: raw, i: 0 };
    let mut p = Prefs::default();
    let text = Cursor::owned;
    let flag = |c: &mut Cursor| -> Result<bool, String> { Ok(c.boolean()?.unwrap_or(false)) };
    let texts = Cursor::texts;
    c.object(|c, key| {
        match key {
            b"ControlURL" => p.control_url = text(c)?,
            b"RouteAll" => p.route_all = flag(c)?,
            b"WantRunning" => p.want_running = flag(c)?,
            b"LoggedOut" => p.logged_out = flag(c)?,
            b"Hostname" => p.hostname = text(c)?,
            b"CorpDNS" => p.corp_dns = flag(c)?,
            b"RunSSH" => p.run_ssh = flag(c)?,
            b"ShieldsUp" => p.shields_up = flag(c)?,
            b"AdvertiseTags" => p.advertise_tags = texts(c)?,
            b"AdvertiseRoutes" => p.advertise_routes = texts(c)?,
            b"NoStatefulFiltering" => p.no_stateful_filtering = flag(c)?,
            b"NoSNAT" => p.no_snat = flag(c)?,
            b"ExitNodeID" => p.exit_node_id = text(c)?,
            b"ExitNodeIP" => p.exit_node_ip = text(c)?,
            b"ExitNodeAllowLANAccess" => p.exit_node_allow_lan_access = flag(c)?,
            b"AppConnector" => {
                p.advertise_connector = c.member(b"Advertise", flag)?.unwrap_or(false);
            }
            b"NetfilterMode" => {
                let mode = c.number()?.unwrap_or(0);
                p.netfilter_mode = u8::try_from(mode).map_err(|_| c.bad("bad NetfilterMode"))?;
            }
            b"OperatorUser" => p.operator_user = text(c)?,
            b"RunWebClient" => p.run_web_client = flag(c)?,
            b"PostureChecking" => p.posture_checking = flag(c)?,
            b"ProfileName" => p.profile_name = text(c)?,
            b"RelayServerPort" => {
                let port = c.number()?;
                p.relay_server_port = port
                    .map(u16::try_from)
                    .transpose()
                    .map_err(|_| c.bad("bad RelayServerPort"))?;
            }
            b"AutoUpdate" => c.members(|c, key| {
                match key {
                    b"Check" => p.update_check = flag(c)?,
                    b"Apply" => p.auto_update = c.boolean()?,
                    _ => c.skip()?,
                }
                Ok(())
            })?,
            b"Config" => p.node_id = c.member(b"NodeID", text)?.unwrap_or_default(),
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(p)
}

fn netmap(c: &mut Cursor) -> Result<NetMap, String> {
    let mut m = NetMap::default();
    c.object(|c, key| {
        match key {
            b"SelfNode" => m.self_node = c.or_null(node)?,
            b"Peers" => m.peers = c.or_null(|c| c.list(node))?.unwrap_or_default(),
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(m)
}

/// A netmap's node. Read in one pass over its bytes: the members tsinit reads are decoded
/// where they are met, all others stepped over by the same loop (a peer has some forty
/// members, and a big tailnet's netmap thousands of peers, again at every change).
fn node(c: &mut Cursor) -> Result<Node, String> {
    let mut n = Node::default();
    c.eat(b'{')?;
    let mut depth = 1usize;
    // Whether the next string at depth 1 is a member's name (after '{' or ',').
    let mut name_next = true;
    while let Some(&b) = c.b.get(c.i) {
        c.i += 1;
        match b {
            b'"' if depth == 1 && name_next => {
                name_next = false;
                let start = c.i;
                c.past_string()?;
                let key = &c.b[start..c.i - 1];
                c.eat(b':')?;
                match key {
                    b"Name" => n.name = c.text()?.into_owned(),
                    b"Addresses" => {
                        // "100.64.0.1/32": the prefix's address; anything else is left out.
                        let addresses = &mut n.addresses;
                        c.or_null(|c| {
                            c.array(|c| {
                                let prefix = c.text()?;
                                let addr = prefix.split('/').next().unwrap_or_default();
                                addresses.extend(addr.parse::<IpAddr>().ok());
                                Ok(())
                            })
                        })?;
                    }
                    b"Online" => n.online = c.boolean()?,
                    _ => {} // its value is stepped over by this loop
                }
            }
            b'"' => c.past_string()?,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(n);
                }
            }
            b',' => name_next = depth == 1,
            _ => {}
        }
    }
    Err(c.bad("unterminated object"))
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

type Step = Result<(), String>;

impl<'a> Cursor<'a> {
    /// The next byte that is not white space (the cursor left on it).
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.b.get(self.i) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.i += 1;
        }
        None
    }

    fn bad(&self, what: &str) -> String {
        format!("{what} at byte {} of the JSON", self.i)
    }

    fn eat(&mut self, want: u8) -> Step {
        match self.peek() {
            Some(b) if b == want => {
                self.i += 1;
                Ok(())
            }
            _ => Err(self.bad(&format!("expected '{}'", want as char))),
        }
    }

    /// `null` as None, anything else read by `read`.
    fn or_null<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        self.peek();
        if self
            .b
            .get(self.i..)
            .is_some_and(|rest| rest.starts_with(b"null"))
        {
            self.i += 4;
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// An object's members, or null (none): `each` as in [`object`](Cursor::object).
    fn members(&mut self, each: impl FnMut(&mut Self, &'a [u8]) -> Step) -> Step {
        self.or_null(|c| c.object(each)).map(drop)
    }

    /// Of an object (or null), the value of its member `name` as `read` reads it.
    fn member<T>(
        &mut self,
        name: &[u8],
        mut read: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        let mut out = None;
        self.members(|c, key| match key == name {
            true => {
                out = Some(read(c)?);
                Ok(())
            }
            false => c.skip(),
        })?;
        Ok(out)
    }

    /// An array whose elements `read` reads.
    fn list<T>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        self.array(|c| {
            out.push(read(c)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// An object: `each` is called with every key and must read or skip its value.
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a [u8]) -> Step) -> Step {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.raw_string()?;
            self.eat(b':')?;
            each(self, key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.bad("expected ',' or '}'")),
            }
        }
    }

    /// An array: `each` is called for every element and must read or skip it.
    fn array(&mut self, mut each: impl FnMut(&mut Self) -> Step) -> Step {
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            each(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.bad("expected ',' or ']'")),
            }
        }
    }

    /// A string's bytes between its quotes, escapes as they are.
    fn raw_string(&mut self) -> Result<&'a [u8], String> {
        self.eat(b'"')?;
        let start = self.i;
        self.past_string()?;
        Ok(&self.b[start..self.i - 1])
    }

    /// Moves past the closing quote of a string whose opening quote was read. A quote
    /// after an odd run of backslashes is escaped; the quotes are found eight bytes at a
    /// time (most of a netmap's bytes are in strings).
    fn past_string(&mut self) -> Step {
        let start = self.i;
        while let Some(at) = crate::bytes::find(self.b, self.i, b'"') {
            self.i = at + 1;
            let backslashes = self.b[start..at]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            if backslashes % 2 == 0 {
                return Ok(());
            }
        }
        self.i = self.b.len();
        Err(self.bad("unterminated string"))
    }

    /// A string, unescaped (borrowed when it has no escapes).
    fn text(&mut self) -> Result<Cow<'a, str>, String> {
        let raw = self.raw_string()?;
        match raw.contains(&b'\\') {
            false => std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| self.bad("invalid UTF-8")),
            true => {
                let quoted = &self.b[self.i - raw.len() - 2..self.i];
                serde_json::from_slice(quoted)
                    .map(Cow::Owned)
                    .map_err(|e| self.bad(&e.to_string()))
            }
        }
    }

    /// A string or null (""), owned.
    fn owned(&mut self) -> Result<String, String> {
        Ok(self.or_null(Cursor::text)?.unwrap_or_default().into_owned())
    }

    /// A list of strings, or null (none).
    fn texts(&mut self) -> Result<Vec<String>, String> {
        Ok(self
            .or_null(|c| c.list(|c| Ok(c.text()?.into_owned())))?
            .unwrap_or_default())
    }

    /// A scalar's text (a number, true, false or null).
    fn scalar(&mut self) -> &'a [u8] {
        self.peek();
        let start = self.i;
        let rest = self.b.get(start..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(rest.len());
        self.i += len;
        &rest[..len]
    }

    fn number(&mut self) -> Result<Option<u64>, String> {
        match self.scalar() {
            b"null" => Ok(None),
            text => std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .map(Some)
                .ok_or_else(|| self.bad("expected a number")),
        }
    }

    fn boolean(&mut self) -> Result<Option<bool>, String> {
        match self.scalar() {
            b"true" => Ok(Some(true)),
            b"false" => Ok(Some(false)),
            b"null" => Ok(None),
            _ => Err(self.bad("expected true, false or null")),
        }
    }

    /// Steps over one value by its brackets and quotes.
    fn skip(&mut self) -> Step {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.past_string()
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(&b) = self.b.get(self.i) {
                    self.i += 1;
                    match b {
                        b'"' => self.past_string()?,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                }
                Err(self.bad("unterminated object or array"))
            }
            Some(_) if !self.scalar().is_empty() => Ok(()),
            _ => Err(self.bad("expected a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::notification;
    use crate::localapi::{NetMap, Node};

    fn node(name: &str, addresses: &[&str], online: Option<bool>) -> Node {
        Node {
            name: name.to_string(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            online,
        }
    }

    #[test]
    fn reads_state_names_addresses_and_online() {
        let n = notification(
            br#"{"Version":"1.96.4","State":6,"Prefs":{"A":[1,{"b":"}]\"x{["}]},"NetMap":null}"#,
        )
        .unwrap();
        assert_eq!((n.state, n.net_map), (Some(6), None));

        let raw = br#"{"State":null,"NetMap":{"Cached":false,"SelfNode":{"ID":1,"Name":"me.tail.example.","Addresses":["100.64.0.1/32","fd7a:115c:a1e0::1/128"],"Hostinfo":{"Services":[{"Proto":"peerapi4","Port":1}],"Name":"not this"},"Online":true},"Peers":[{"Name":"a\u002eb.tail.example.","Addresses":null,"Online":null},{"Name":"c.tail.example.","Addresses":["bogus","100.64.0.3/32"],"Endpoints":["1.2.3.4:5"],"Online":false,"LastSeen":"2026-01-01T00:00:00Z"}],"DNS":{"CertDomains":null}},"Engine":null}"#;
        let n = notification(raw).unwrap();
        assert_eq!(n.state, None);
        let want = NetMap {
            self_node: Some(node(
                "me.tail.example.",
                &["100.64.0.1", "fd7a:115c:a1e0::1"],
                Some(true),
            )),
            peers: vec![
                node("a.b.tail.example.", &[], None),
                node("c.tail.example.", &["100.64.0.3"], Some(false)),
            ],
        };
        assert_eq!(n.net_map, Some(want));

        let n = notification(
            b" { \"NetMap\" : { \"Peers\" : [ ] , \"SelfNode\" : null } , \"State\" : 2 } ",
        )
        .unwrap();
        assert_eq!((n.state, n.net_map), (Some(2), Some(NetMap::default())));
        let n = notification(b"{}").unwrap();
        assert_eq!((n.state, n.net_map), (None, None));
    }

    #[test]
    fn escaped_quotes_stay_in_strings() {
        let n = notification(br#"{"NetMap":{"Peers":[{"X":"a\\","Name":"b\"\\\"c","Y":"\\\\"}]}}"#)
            .unwrap();
        assert_eq!(n.net_map.unwrap().peers[0].name, "b\"\\\"c");
    }

    #[test]
    fn refuses_what_it_reads_when_broken() {
        for case in [
            r#"{"State":"x"}"#,
            r#"{"NetMap":{"Peers":[{"Name":3}]}}"#,
            r#"{"NetMap":{"Peers":[{"Name":"a"}"#,
            r#"{"NetMap":{"Peers":[{"Name":"a}]}}"#,
            r#"{"Prefs":{"x":[1,2}"#,
            r#"{"Prefs":"#,
        ] {
            assert!(notification(case.as_bytes()).is_err(), "{case}");
        }
    }
}
