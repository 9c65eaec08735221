//! The tailnet's state (nodes, keys, counters) and the JSON the control protocol sends:
//! register decisions, node and map responses, and per-stream peer diffs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{Value, json};

pub const DOMAIN: &str = "tail.example";
const USER_ID: u64 = 1;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct RegisterRequest {
    pub node_key: String,
    pub old_node_key: String,
    pub auth: Option<Auth>,
    pub expiry: Option<String>,
    pub followup: String,
    pub hostinfo: Option<Value>,
    pub version: u64,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct Auth {
    pub auth_key: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct MapRequest {
    pub version: u64,
    pub node_key: String,
    pub disco_key: String,
    pub stream: bool,
    pub omit_peers: bool,
    pub hostinfo: Option<Value>,
    pub endpoints: Option<Vec<Value>>,
}

pub struct Node {
    pub id: u64,
    pub fake: bool,
    pub node_key: String,
    pub machine_key: String,
    pub disco_key: Option<String>,
    pub hostname: String,
    pub name: String,
    pub hostinfo: Value,
    pub endpoints: Vec<Value>,
    pub home_derp: u64,
    pub cap: u64,
    /// Open streaming map polls.
    pub streams: usize,
    pub logged_out: bool,
    /// Bumped (from [`State`]'s counter) by every [`State::node_mut`], so an unchanged
    /// revision means an unchanged [`State::node_json`]: map sessions skip such nodes.
    rev: u64,
}

impl Node {
    pub fn addresses(&self) -> Vec<String> {
        let v4 =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)).wrapping_add(self.id as u32));
        let v6 = Ipv6Addr::new(
            0xfd7a,
            0x115c,
            0xa1e0,
            0,
            0,
            0,
            (self.id >> 16) as u16,
            self.id as u16,
        );
        vec![format!("{v4}/32"), format!("{v6}/128")]
    }

    pub fn online(&self) -> bool {
        self.fake || self.streams > 0
    }
}

/// What to answer a register request with.
pub enum RegisterReply {
    Json(Value),
    /// A `Followup` poll of an AuthURL: nobody ever visits it, so it waits until cancelled.
    WaitForever,
}

pub struct State {
    /// Read with [`State::nodes`]; changed only through [`State::node_mut`] (which bumps
    /// the node's revision), [`State::add_node`] and [`State::remove_node`].
    nodes: BTreeMap<u64, Node>,
    next_id: u64,
    /// Source of node revisions ([`State::node_mut`]).
    next_rev: u64,
    /// Bumped whenever something state-wide that [`State::node_json`] reads changes
    /// (`ssh_enabled`): every node's JSON may differ then.
    json_rev: u64,
    pub valid_keys: Vec<String>,
    pub register_count: usize,
    pub register_requests: usize,
    pub base_url: String,
    derp_host: String,
    derp_port: u16,
    /// -1 when no UDP socket could be bound (STUN disabled).
    pub stun_port: i32,
    /// Whether nodes get the Tailscale SSH capability (default true); set with
    /// [`State::set_ssh_enabled`].
    ssh_enabled: bool,
    /// Counts batches of changes ([`State::add_fakes`]); `taken` is the highest batch a map
    /// stream has computed its update from, so a caller can wait for each batch to go out
    /// as a map update of its own instead of being merged into the next.
    pub batches: u64,
    pub taken: Arc<AtomicU64>,
}

/// `prefix:<64 hex>` and not all zeros (Go sends zero keys as all-zero hex).
pub fn nonzero_key(s: &str, prefix: &str) -> Option<String> {
    let hex = s.strip_prefix(prefix)?.strip_prefix(':')?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (ok && hex.bytes().any(|b| b != b'0')).then(|| s.to_ascii_lowercase())
}

pub fn key_string(prefix: &str, raw: &[u8; 32]) -> String {
    format!("{prefix}:{}", hex::encode(raw))
}

/// A DNS label from an OS hostname: lowercase letters, digits and dashes.
pub fn dns_label(hostname: &str) -> String {
    let label: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "node".into()
    } else {
        label.chars().take(63).collect()
    }
}

/// Seconds since the epoch of an RFC 3339 time as Go writes it (offset and fraction ignored).
fn parse_time(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The node capability for Tailscale SSH (tailcfg.CapabilitySSH).
pub const SSH_CAPABILITY: &str = "https://tailscale.com/cap/ssh";

fn user_login() -> (Value, Value) {
    (
        json!({"ID": USER_ID, "DisplayName": "Test User"}),
        json!({"ID": USER_ID, "Provider": "testcontrol", "LoginName": "test@tail.example",
               "DisplayName": "Test User"}),
    )
}

impl State {
    pub fn new(base_url: String, derp_host: String, derp_port: u16) -> State {
        State {
            nodes: BTreeMap::new(),
            next_id: 1,
            next_rev: 0,
            json_rev: 0,
            valid_keys: Vec::new(),
            register_count: 0,
            register_requests: 0,
            base_url,
            derp_host,
            derp_port,
            stun_port: -1,
            ssh_enabled: true,
            batches: 0,
            taken: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn nodes(&self) -> &BTreeMap<u64, Node> {
        &self.nodes
    }

    /// The one way to change a node: bumps its revision, whatever the caller then changes.
    pub fn node_mut(&mut self, id: u64) -> Option<&mut Node> {
        let n = self.nodes.get_mut(&id)?;
        self.next_rev += 1;
        n.rev = self.next_rev;
        Some(n)
    }

    pub fn remove_node(&mut self, id: u64) -> Option<Node> {
        self.nodes.remove(&id)
    }

    pub fn set_ssh_enabled(&mut self, enabled: bool) {
        if self.ssh_enabled != enabled {
            self.ssh_enabled = enabled;
            self.json_rev += 1;
        }
    }

    fn unique_name(&self, id: u64, hostname: &str, exact: bool) -> String {
        let label = dns_label(hostname);
        let want = format!("{label}.{DOMAIN}.");
        // `exact` keeps the name either way: no need to look (O(nodes) per added peer).
        let taken = !exact
            && self
                .nodes
                .values()
                .any(|n| n.id != id && !n.logged_out && n.name == want);
        if taken && !exact {
            format!("{label}-{id}.{DOMAIN}.")
        } else {
            want
        }
    }

    fn set_hostinfo(&mut self, id: u64, hostinfo: Value) {
        let hostname = hostinfo
            .get("Hostname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let derp = hostinfo
            .pointer("/NetInfo/PreferredDERP")
            .and_then(Value::as_u64);
        let name = self.unique_name(id, &hostname, false);
        if let Some(n) = self.node_mut(id) {
            n.home_derp = derp.filter(|d| *d > 0).unwrap_or(1);
            if n.name.is_empty() || n.hostname != hostname {
                n.name = name;
            }
            n.hostname = hostname;
            n.hostinfo = hostinfo;
        }
    }

    pub fn add_node(&mut self, node_key: String, machine_key: String, fake: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let node = Node {
            id,
            fake,
            node_key,
            machine_key,
            disco_key: None,
            hostname: String::new(),
            name: String::new(),
            hostinfo: json!({}),
            endpoints: Vec::new(),
            home_derp: 1,
            cap: 0,
            streams: 0,
            logged_out: false,
            rev: 0,
        };
        self.nodes.insert(id, node);
        // Ids are never reused, but a fresh revision costs nothing and guards that too.
        self.node_mut(id);
        id
    }

    pub fn add_fake(&mut self, hostname: &str, keys: [[u8; 32]; 3]) -> u64 {
        let id = self.add_node(
            key_string("nodekey", &keys[0]),
            key_string("mkey", &keys[1]),
            true,
        );
        let name = self.unique_name(id, hostname, true);
        if let Some(n) = self.node_mut(id) {
            n.disco_key = Some(key_string("discokey", &keys[2]));
            n.hostname = hostname.to_string();
            n.hostinfo = json!({"Hostname": hostname, "OS": "linux"});
            n.name = name;
        }
        id
    }

    /// Adds one batch of fake peers, `(hostname, keys)` each, as [`State::add_fake`] does,
    /// and counts the batch; returns their ids. Refuses (adding none) a hostname whose DNS
    /// name a live node has already, or that comes twice: fake peers keep their names exactly.
    pub fn add_fakes(&mut self, peers: &[(String, [[u8; 32]; 3])]) -> Result<Vec<u64>, String> {
        let mut names: std::collections::HashSet<String> = self
            .nodes
            .values()
            .filter(|n| !n.logged_out)
            .map(|n| n.name.clone())
            .collect();
        for (hostname, _) in peers {
            let name = format!("{}.{DOMAIN}.", dns_label(hostname));
            if !names.insert(name) {
                return Err(format!("the name of {hostname:?} is taken"));
            }
        }
        let ids = peers
            .iter()
            .map(|(h, keys)| self.add_fake(h, *keys))
            .collect();
        self.batches += 1;
        Ok(ids)
    }

    /// Called by a map stream computing what to send: it has taken every batch so far.
    fn mark_taken(&self) {
        self.taken.fetch_max(self.batches, Ordering::Relaxed);
    }

    /// The live node holding `node_key` (or, during a key rotation, `old_node_key`) for this machine.
    fn find_node(&self, req: &RegisterRequest, machine: &str, node_key: &str) -> Option<u64> {
        let old = nonzero_key(&req.old_node_key, "nodekey");
        self.nodes
            .values()
            .filter(|n| !n.fake && n.machine_key == machine)
            .find(|n| n.node_key == node_key || Some(&n.node_key) == old.as_ref())
            .map(|n| n.id)
    }

    pub fn register(&mut self, req: RegisterRequest, machine: &str, now: i64) -> RegisterReply {
        self.register_requests += 1;
        let (user, login) = user_login();
        let err =
            |msg: &str| RegisterReply::Json(json!({"User": {"ID": 0}, "Login": {}, "Error": msg}));
        let Some(node_key) = nonzero_key(&req.node_key, "nodekey") else {
            return err("invalid node key");
        };
        let expiry = req.expiry.as_deref().and_then(parse_time);
        if expiry.is_some_and(|t| t > 0 && t <= now) {
            // `tailscale logout`: Expiry far in the past.
            let id = self.find_node(&req, machine, &node_key);
            if let Some(n) = id.and_then(|id| self.node_mut(id)) {
                n.logged_out = true;
            }
            return RegisterReply::Json(
                json!({"User": user, "Login": login, "NodeKeyExpired": true}),
            );
        }
        if !req.followup.is_empty() {
            return RegisterReply::WaitForever;
        }
        let auth_key = req
            .auth
            .as_ref()
            .map(|a| a.auth_key.trim())
            .filter(|k| !k.is_empty());
        let existing = self.find_node(&req, machine, &node_key);
        let id = match (auth_key, existing) {
            (Some(key), _) if !self.valid_keys.iter().any(|k| k == key) => {
                return err("invalid key: this auth key is not accepted by the control server");
            }
            (Some(_), found) => {
                self.register_count += 1;
                // One node per machine: a re-login after logout reuses it.
                let by_machine = || {
                    self.nodes
                        .values()
                        .find(|n| !n.fake && n.machine_key == machine)
                        .map(|n| n.id)
                };
                match found.or_else(by_machine) {
                    Some(id) => id,
                    None => self.add_node(node_key.clone(), machine.to_string(), false),
                }
            }
            (None, Some(id)) if self.nodes.get(&id).is_some_and(|n| !n.logged_out) => id,
            (None, _) => {
                let short = node_key.get(8..20).unwrap_or("node");
                let url = format!("{}/register/{short}", self.base_url);
                return RegisterReply::Json(
                    json!({"User": {"ID": 0}, "Login": {}, "AuthURL": url}),
                );
            }
        };
        if let Some(n) = self.node_mut(id) {
            n.node_key = node_key;
            n.cap = req.version;
            n.logged_out = false;
        }
        let hostinfo = req
            .hostinfo
            .or_else(|| self.nodes.get(&id).map(|n| n.hostinfo.clone()));
        self.set_hostinfo(id, hostinfo.unwrap_or_else(|| json!({})));
        RegisterReply::Json(json!({"User": user, "Login": login, "MachineAuthorized": true}))
    }

    /// Applies a map request to its node; returns the node id, or None for an unknown node.
    pub fn map_request(&mut self, req: &MapRequest, machine: &str) -> Option<u64> {
        let key = nonzero_key(&req.node_key, "nodekey")?;
        let id = self
            .nodes
            .values()
            .find(|n| !n.fake && !n.logged_out && n.node_key == key && n.machine_key == machine)?
            .id;
        if let Some(hostinfo) = req.hostinfo.clone() {
            self.set_hostinfo(id, hostinfo);
        }
        let n = self.node_mut(id)?;
        if let Some(d) = nonzero_key(&req.disco_key, "discokey") {
            n.disco_key = Some(d);
        }
        if let Some(eps) = req.endpoints.as_ref().filter(|e| !e.is_empty()) {
            n.endpoints = eps.clone();
        }
        if req.version > 0 {
            n.cap = req.version;
        }
        Some(id)
    }

    /// What identifies the content of `n`'s [`State::node_json`]: equal keys, equal JSON.
    fn json_key(&self, n: &Node) -> (u64, u64) {
        (n.rev, self.json_rev)
    }

    /// A node as the map response carries it. Reads `n` and `ssh_enabled` only: anything
    /// else of `State` it comes to read must bump `json_rev` when it changes.
    pub fn node_json(&self, n: &Node) -> Value {
        let addrs = n.addresses();
        let mut v = json!({
            "ID": n.id, "StableID": format!("stable-{}", n.id), "Name": n.name, "User": USER_ID,
            "Key": n.node_key, "Machine": n.machine_key, "Addresses": addrs, "AllowedIPs": addrs,
            "Endpoints": n.endpoints, "HomeDERP": n.home_derp, "Hostinfo": n.hostinfo,
            "MachineAuthorized": true, "Online": n.online(),
        });
        if let Some(d) = &n.disco_key {
            v["DiscoKey"] = d.clone().into();
        }
        if n.cap > 0 {
            v["Cap"] = n.cap.into();
        }
        if self.ssh_enabled {
            // What control grants where the tailnet policy has ssh rules.
            v["CapMap"] = json!({SSH_CAPABILITY: null});
        }
        v
    }

    /// With SSH enabled: anyone on the tailnet may log in as any local user.
    fn ssh_policy(&self) -> Value {
        match self.ssh_enabled {
            true => json!({"rules": [{"principals": [{"any": true}],
                                      "sshUsers": {"*": "="}, "action": {"accept": true}}]}),
            false => Value::Null,
        }
    }

    fn derp_map(&self) -> Value {
        let v4 = self.derp_host.parse::<Ipv4Addr>().is_ok();
        let (ipv4, ipv6) = if v4 {
            (self.derp_host.as_str(), "none")
        } else {
            ("none", self.derp_host.as_str())
        };
        json!({"Regions": {"1": {
            "RegionID": 1, "RegionCode": "test", "RegionName": "Test DERP",
            "Nodes": [{"Name": "1a", "RegionID": 1, "HostName": self.derp_host, "IPv4": ipv4,
                       "IPv6": ipv6, "DERPPort": self.derp_port, "STUNPort": self.stun_port}],
        }}, "omitDefaultRegions": true})
    }
}

/// What one streaming map poll has told its client, to send only the differences.
pub struct MapSession {
    pub node_id: u64,
    sent_self: Sent,
    sent_peers: BTreeMap<u64, Sent>,
}

/// A node's JSON as last sent, with the [`State::json_key`] it was built at: while the
/// key stays the same the JSON does too, and is neither rebuilt nor compared.
#[derive(Default)]
struct Sent {
    key: Option<(u64, u64)>,
    json: String,
}

impl Sent {
    fn new(st: &State, n: &Node) -> (Sent, Value) {
        let v = st.node_json(n);
        let sent = Sent {
            key: Some(st.json_key(n)),
            json: v.to_string(),
        };
        (sent, v)
    }

    /// `n`'s JSON if it differs from what was sent (then recorded as sent).
    fn update(&mut self, st: &State, n: &Node) -> Option<Value> {
        let key = st.json_key(n);
        if self.key == Some(key) {
            return None;
        }
        self.key = Some(key);
        let v = st.node_json(n);
        let s = v.to_string();
        // A node touched without a change to its JSON (the same Hostinfo again) sends nothing.
        (s != self.json).then(|| {
            self.json = s;
            v
        })
    }
}

fn is_peer(me: u64, n: &Node) -> bool {
    n.id != me && !n.logged_out
}

pub enum Delta {
    /// The node is gone or logged out: end the stream.
    End,
    Nothing,
    Send(Value),
}

impl MapSession {
    pub fn new(node_id: u64) -> MapSession {
        MapSession {
            node_id,
            sent_self: Sent::default(),
            sent_peers: BTreeMap::new(),
        }
    }

    /// The nodes this one is sent as peers, by id.
    fn peers<'a>(&self, st: &'a State) -> impl Iterator<Item = &'a Node> + use<'a> {
        let me = self.node_id;
        st.nodes.values().filter(move |n| is_peer(me, n))
    }

    /// The first response of a poll: everything.
    pub fn full(&mut self, st: &State) -> Option<Value> {
        let me = st.nodes.get(&self.node_id)?;
        st.mark_taken();
        let self_json;
        (self.sent_self, self_json) = Sent::new(st, me);
        let mut list = Vec::new();
        self.sent_peers.clear();
        for n in self.peers(st) {
            let (sent, v) = Sent::new(st, n);
            self.sent_peers.insert(n.id, sent);
            list.push(v);
        }
        Some(json!({
            "Node": self_json, "DERPMap": st.derp_map(), "Peers": list, "Domain": DOMAIN,
            "UserProfiles": [{"ID": USER_ID, "LoginName": "test@tail.example", "DisplayName": "Test User"}],
            "PacketFilter": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}],
            "SSHPolicy": st.ssh_policy(),
        }))
    }

    /// What changed since the last response: only nodes whose [`State::json_key`] moved
    /// are rebuilt, and sent if their JSON differs.
    pub fn delta(&mut self, st: &State) -> Delta {
        let Some(me) = st.nodes.get(&self.node_id).filter(|n| !n.logged_out) else {
            return Delta::End;
        };
        st.mark_taken();
        let mut resp = serde_json::Map::new();
        if let Some(v) = self.sent_self.update(st, me) {
            resp.insert("Node".into(), v);
        }
        let mut changed = Vec::new();
        let mut current = 0;
        for n in self.peers(st) {
            current += 1;
            match self.sent_peers.get_mut(&n.id) {
                Some(sent) => changed.extend(sent.update(st, n)),
                None => {
                    let (sent, v) = Sent::new(st, n);
                    self.sent_peers.insert(n.id, sent);
                    changed.push(v);
                }
            }
        }
        // Every current peer is in `sent_peers` now: any more there are gone.
        let mut removed = Vec::new();
        if self.sent_peers.len() > current {
            let me = self.node_id;
            self.sent_peers.retain(|id, _| {
                let keep = st.nodes.get(id).is_some_and(|n| is_peer(me, n));
                if !keep {
                    removed.push(*id);
                }
                keep
            });
        }
        if !changed.is_empty() {
            resp.insert("PeersChanged".into(), changed.into());
        }
        if !removed.is_empty() {
            resp.insert("PeersRemoved".into(), removed.into());
        }
        if resp.is_empty() {
            Delta::Nothing
        } else {
            Delta::Send(Value::Object(resp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MK: &str = "mkey:1111111111111111111111111111111111111111111111111111111111111111";

    fn nk(b: u8) -> String {
        key_string("nodekey", &[b; 32])
    }

    fn req(node: &str, auth: Option<&str>) -> RegisterRequest {
        RegisterRequest {
            node_key: node.into(),
            auth: auth.map(|k| Auth { auth_key: k.into() }),
            expiry: Some("0001-01-01T00:00:00Z".into()),
            hostinfo: Some(json!({"Hostname": "box"})),
            ..Default::default()
        }
    }

    fn reply(r: RegisterReply) -> Value {
        match r {
            RegisterReply::Json(v) => v,
            RegisterReply::WaitForever => panic!("unexpected wait"),
        }
    }

    #[test]
    fn time_parsing() {
        assert_eq!(parse_time("1970-01-01T00:02:03Z"), Some(123));
        assert_eq!(
            parse_time("2024-03-01T00:00:00.5+02:00"),
            Some(1_709_251_200)
        );
        assert!(parse_time("0001-01-01T00:00:00Z").unwrap() < 0);
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn register_flow() {
        let mut st = State::new("http://x".into(), "127.0.0.1".into(), 1);
        st.valid_keys = vec!["good".into()];
        let now = 1_700_000_000;
        let v = reply(st.register(req(&nk(1), Some("bad")), MK, now));
        assert!(v["Error"].as_str().unwrap().contains("invalid key"));
        let v = reply(st.register(req(&nk(1), None), MK, now));
        assert_eq!(v["AuthURL"], "http://x/register/010101010101");
        let v = reply(st.register(req(&nk(1), Some("good")), MK, now));
        assert_eq!(v["MachineAuthorized"], true);
        assert_eq!(
            (st.nodes.len(), st.register_count, st.register_requests),
            (1, 1, 3)
        );
        assert_eq!(st.nodes[&1].name, "box.tail.example.");
        // Known node key without auth: same node.
        let v = reply(st.register(req(&nk(1), None), MK, now));
        assert_eq!(v["MachineAuthorized"], true);
        // Rotation via OldNodeKey.
        let mut r = req(&nk(2), None);
        r.old_node_key = nk(1);
        reply(st.register(r, MK, now));
        assert_eq!((st.nodes.len(), st.nodes[&1].node_key.clone()), (1, nk(2)));
        // Logout.
        let mut r = req(&nk(2), None);
        r.expiry = Some("1970-01-01T00:02:03Z".into());
        assert_eq!(reply(st.register(r, MK, now))["NodeKeyExpired"], true);
        assert!(st.nodes[&1].logged_out);
        // Followup waits.
        let mut r = req(&nk(3), None);
        r.followup = "http://x/register/y".into();
        assert!(matches!(
            st.register(r, MK, now),
            RegisterReply::WaitForever
        ));
        // Re-login on the same machine reuses the node.
        reply(st.register(req(&nk(3), Some("good")), MK, now));
        assert_eq!(
            (st.nodes.len(), st.nodes[&1].logged_out, st.register_count),
            (1, false, 2)
        );
    }

    #[test]
    fn map_session_diffs() {
        let mut st = State::new("http://x".into(), "127.0.0.1".into(), 1);
        st.valid_keys = vec!["k".into()];
        reply(st.register(req(&nk(1), Some("k")), MK, 0));
        let mut s = MapSession::new(1);
        let full = s.full(&st).unwrap();
        assert_eq!(full["Node"]["Addresses"][0], "100.64.0.1/32");
        assert_eq!(full["Peers"], json!([]));
        assert!(matches!(s.delta(&st), Delta::Nothing));
        let fake = st.add_fake("peer", [[5; 32], [6; 32], [7; 32]]);
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        assert_eq!(d["PeersChanged"][0]["Name"], "peer.tail.example.");
        assert_eq!(d["PeersChanged"][0]["Addresses"][0], "100.64.0.2/32");
        st.remove_node(fake);
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        assert_eq!(d, json!({"PeersRemoved": [fake]}));
        st.node_mut(1).unwrap().logged_out = true;
        assert!(matches!(s.delta(&st), Delta::End));
    }

    #[test]
    fn batches_of_many_fake_peers() {
        let mut st = State::new("http://x".into(), "127.0.0.1".into(), 1);
        st.valid_keys = vec!["k".into()];
        reply(st.register(req(&nk(1), Some("k")), MK, 0));
        let mut s = MapSession::new(1);
        s.full(&st).unwrap();
        let batch = |from: usize, to: usize| -> Vec<(String, [[u8; 32]; 3])> {
            (from..to)
                .map(|i| (format!("many-{i}"), [[(i % 250) as u8 + 1; 32]; 3]))
                .collect()
        };
        for b in 0..4 {
            let ids = st.add_fakes(&batch(b * 5_000, (b + 1) * 5_000)).unwrap();
            assert_eq!(ids.len(), 5_000);
            assert_eq!(st.batches, b as u64 + 1);
            assert_eq!(st.taken.load(Ordering::Relaxed), b as u64);
            let Delta::Send(d) = s.delta(&st) else {
                panic!()
            };
            assert_eq!(st.taken.load(Ordering::Relaxed), b as u64 + 1);
            assert_eq!(d["PeersChanged"].as_array().unwrap().len(), 5_000);
        }
        // 20 000 peers: distinct names and addresses, all inside 100.64.0.0/10.
        let peers: Vec<&Node> = st.nodes.values().filter(|n| n.fake).collect();
        assert_eq!(peers.len(), 20_000);
        let names: std::collections::BTreeSet<&str> = peers.iter().map(|n| &*n.name).collect();
        let v4: std::collections::BTreeSet<String> = st
            .nodes
            .values()
            .map(|n| n.addresses()[0].clone())
            .collect();
        assert_eq!((names.len(), v4.len()), (20_000, 20_001));
        assert!(names.contains("many-19999.tail.example."));
        let last: Ipv4Addr = v4
            .iter()
            .map(|a| a.trim_end_matches("/32").parse().unwrap())
            .max()
            .unwrap();
        assert_eq!(last, Ipv4Addr::new(100, 64, 78, 33));
        // A taken name refuses the whole batch.
        assert!(st.add_fakes(&batch(19_999, 20_001)).is_err());
        assert_eq!((st.nodes.len(), st.batches), (20_001, 4));
    }
    #[test]
    fn delta_sends_only_changed_peers() {
        let mut st = State::new("http://x".into(), "127.0.0.1".into(), 1);
        st.valid_keys = vec!["k".into()];
        reply(st.register(req(&nk(1), Some("k")), MK, 0));
        let peers: Vec<(String, [[u8; 32]; 3])> = (0..200)
            .map(|i| (format!("p-{i}"), [[(i % 250) as u8 + 1; 32]; 3]))
            .collect();
        let ids = st.add_fakes(&peers).unwrap();
        let mut s = MapSession::new(1);
        assert_eq!(s.full(&st).unwrap()["Peers"].as_array().unwrap().len(), 200);
        assert!(matches!(s.delta(&st), Delta::Nothing));
        // A rename of one peer among many: exactly that one.
        st.node_mut(ids[77]).unwrap().name = "renamed.tail.example.".into();
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        assert_eq!(d.as_object().unwrap().len(), 1);
        assert_eq!(
            d["PeersChanged"],
            json!([st.node_json(&st.nodes()[&ids[77]])])
        );
        assert_eq!(d["PeersChanged"][0]["Name"], "renamed.tail.example.");
        // Touched but unchanged (the same Hostinfo again): nothing to send.
        let hostinfo = st.nodes()[&1].hostinfo.clone();
        st.set_hostinfo(1, hostinfo);
        st.node_mut(ids[3]).unwrap();
        assert!(matches!(s.delta(&st), Delta::Nothing));
        // A state-wide setting in every node's JSON: all peers and the node itself again.
        st.set_ssh_enabled(false);
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        let changed = d["PeersChanged"].as_array().unwrap();
        assert_eq!(changed.len(), 200);
        assert!(changed.iter().all(|p| p.get("CapMap").is_none()));
        assert!(d["Node"].get("CapMap").is_none());
        assert!(matches!(s.delta(&st), Delta::Nothing));
        st.set_ssh_enabled(true);
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        assert_eq!(d["PeersChanged"].as_array().unwrap().len(), 200);
        assert_eq!(
            d["PeersChanged"][0]["CapMap"],
            json!({SSH_CAPABILITY: null})
        );
        // Removal and logout of peers.
        st.remove_node(ids[0]);
        st.node_mut(ids[1]).unwrap().logged_out = true;
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        assert_eq!(d, json!({"PeersRemoved": [ids[0], ids[1]]}));
        st.node_mut(ids[1]).unwrap().logged_out = false;
        let Delta::Send(d) = s.delta(&st) else {
            panic!()
        };
        assert_eq!(d["PeersChanged"][0]["ID"], ids[1]);
        assert_eq!(d.as_object().unwrap().len(), 1);
    }
}
