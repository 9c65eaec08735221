//! A fake tailscaled for black-box tests of tsinit's bring-up: its LocalAPI (HTTP/1.1 on
//! a unix socket, the JSON of tailscaled 1.96.4) and the other end of a recording
//! `tailscale` CLI stand-in. It needs no root, no network and no real tailscaled.
//!
//! Served, as tailscaled serves them (ipn/localapi, ipn/ipnstate, ipn/prefs.go,
//! ipn/backend.go, ipn/serve.go):
//! - `GET /localapi/v0/status`: an `ipnstate.Status` (BackendState, Self, TailscaleIPs,
//!   Health, MagicDNSSuffix, CurrentTailnet, CertDomains, Peer ...);
//! - `GET /localapi/v0/prefs`: an `ipn.Prefs` (the persisted login is `Config`, with
//!   `NodeID`);
//! - `GET /localapi/v0/watch-ipn-bus?mask=N`: chunked, one `ipn.Notify` JSON object per
//!   line; `State` is a number (0 NoState ... 6 Running); with mask bit 1<<1 the first
//!   message carries the current State, 1<<2 the Prefs, 1<<3 the NetMap;
//! - `GET/POST /localapi/v0/serve-config`: the config with an `Etag` header; a POST with
//!   an `If-Match` that is not the current ETag is answered 412 `etag mismatch`;
//! - any other Host than `local-tailscaled.sock` is answered 403, an unknown path 404.
//!
//! And one endpoint of its own, `POST /fake/cli`, which the CLI stand-in ([`cli_call`])
//! uses: the [`Scenario`] decides the call's exit code and output and what it changes.
//!
//! Everything is recorded in the scenario's `dir`: `requests.log` (one line per request:
//! incarnation, method, path, status, and for serve POSTs how the If-Match compared),
//! `calls.jsonl` (one [`CliCall`] per CLI call, written by the stand-in), `serve.json`
//! (the serve config after each change), `incarnations` (how many daemons started) and
//! `daemon-<n>.pid`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// ipn.State names by number (ipn/backend.go).
pub const STATES: [&str; 7] = [
    "NoState",
    "InUseOtherUser",
    "NeedsLogin",
    "NeedsMachineAuth",
    "Stopped",
    "Starting",
    "Running",
];

/// The version string tailscaled 1.96.4 reports.
pub const VERSION: &str = "1.96.4-t8cf541dfd-g62bc84ce7";

/// The Host tailscaled requires.
pub const HOST: &str = "local-tailscaled.sock";

/// The node's ID once logged in.
pub const NODE_ID: &str = "nFAKE1CNTRL";

/// What the fake daemon starts as and how it behaves. Every field has a default, so a
/// scenario names only what matters to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    /// Where everything is recorded (see the module's documentation).
    pub dir: PathBuf,
    /// The BackendState at start.
    pub state: String,
    /// Prefs fields over the defaults (a fresh node's prefs).
    pub prefs: Value,
    /// A persisted login: `Config` in the prefs holds a node (NodeID).
    pub logged_in: bool,
    /// A netmap at start: Self has its DNS name and addresses, peers are listed.
    pub netmap: bool,
    /// Self.DNSName once there is a netmap.
    pub dns_name: String,
    /// This node's Tailscale addresses once there is a netmap.
    pub ips: Vec<String>,
    /// Peers once there is a netmap: (DNS name, addresses).
    pub peers: Vec<(String, Vec<String>)>,
    pub health: Vec<String>,
    pub cert_domains: Vec<String>,
    /// Run on a thread of their own once the socket listens.
    pub on_start: Vec<Step>,
    /// Run on a thread of their own once, after the first IPN bus watcher got its first
    /// message (so what they change reaches it as events).
    pub on_watch: Vec<Step>,
    /// What each CLI subcommand (`up`, `set`, ...) does; not listed: exit 0, flags applied.
    pub cli: BTreeMap<String, CliRule>,
    /// The auth key the CLI stand-in expects in `--auth-key=file:...` (recorded as
    /// matching or not, never stored).
    pub expect_key: String,
    /// Accept connections and never answer (a hung tailscaled).
    pub hang: bool,
    /// Exit with status 1 right after answering this many status requests (0: never).
    pub exit_after_status: u32,
    /// The serve config at start (null: nothing served).
    pub serve_config: Value,
    /// Not null: at the first serve POST the config becomes this (as if someone else set
    /// it since the client read it) and the POST is answered 412 when its If-Match was
    /// the old ETag.
    pub serve_conflict: Value,
    /// Ignore SIGTERM (read by the process that hosts the fake, which owns signals).
    pub ignore_sigterm: bool,
    /// The scenario of the second and later daemons tsinit starts (restarts).
    pub later: Option<Box<Scenario>>,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            dir: PathBuf::new(),
            state: "NoState".to_string(),
            prefs: json!({}),
            logged_in: false,
            netmap: false,
            dns_name: "web.tail.example.".to_string(),
            ips: vec!["100.64.0.1".to_string(), "fd7a:115c:a1e0::1".to_string()],
            peers: vec![(
                "db.tail.example.".to_string(),
                vec!["100.64.0.2".to_string()],
            )],
            health: Vec::new(),
            cert_domains: Vec::new(),
            on_start: Vec::new(),
            on_watch: Vec::new(),
            cli: BTreeMap::new(),
            expect_key: String::new(),
            hang: false,
            exit_after_status: 0,
            serve_config: Value::Null,
            serve_conflict: Value::Null,
            ignore_sigterm: false,
            later: None,
        }
    }
}

/// One change of the fake's state, after a pause.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Step {
    pub after_ms: u64,
    pub state: Option<String>,
    /// A netmap arrives (true) or goes.
    pub netmap: Option<bool>,
    /// Control renames the node.
    pub dns_name: Option<String>,
    /// Prefs fields to change.
    pub prefs: Option<Value>,
    pub health: Option<Vec<String>>,
    /// Stop answering: new connections are held open unanswered, bus watchers get
    /// nothing more.
    pub hang: bool,
    /// Exit the process with this status.
    pub exit: Option<i32>,
    /// End the IPN bus streams open now (the daemon goes on; new watchers are served).
    pub close_bus: bool,
}

/// What a CLI call does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct CliRule {
    pub exit: i32,
    /// What the CLI prints (on stderr, as the real one prints its errors).
    pub output: String,
    /// With exit 0: apply the call's flags to the prefs (`up` also logs in: WantRunning,
    /// not LoggedOut, a persisted node).
    pub apply_flags: bool,
    /// Changes made before the CLI answers (as `up` waits for Running).
    pub then: Vec<Step>,
    /// Changes made after it answered, in the background (what tailscaled sends on its
    /// bus after the CLI saw Running).
    pub after: Vec<Step>,
}

impl Default for CliRule {
    fn default() -> CliRule {
        CliRule {
            exit: 0,
            output: String::new(),
            apply_flags: true,
            then: Vec::new(),
            after: Vec::new(),
        }
    }
}

/// A CLI call as the stand-in saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliCall {
    /// The whole argv after the program name.
    pub args: Vec<String>,
    /// For `--auth-key=file:...`: "matches", "differs" or "unreadable: ..." (never the key).
    pub key: Option<String>,
}

/// The fake's answer to a CLI call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliAnswer {
    pub exit: i32,
    pub output: String,
}

/// The state index of `name` (unknown names are NoState).
pub fn state_number(name: &str) -> usize {
    STATES.iter().position(|s| *s == name).unwrap_or(0)
}

/// Reads the scenario in `path` and counts this daemon as one more incarnation; returns
/// the scenario this incarnation plays (`later` from the second on) and its number.
pub fn load(path: &Path) -> std::io::Result<(Scenario, u32)> {
    let text = std::fs::read_to_string(path)?;
    let first: Scenario = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    let counter = first.dir.join("incarnations");
    let n = std::fs::read_to_string(&counter)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let scenario = match (&first.later, n) {
        (Some(later), n) if n > 1 => {
            let mut later = (**later).clone();
            later.dir = first.dir.clone();
            later
        }
        _ => first,
    };
    std::fs::write(
        scenario.dir.join(format!("daemon-{n}.pid")),
        std::process::id().to_string(),
    )?;
    std::fs::write(&counter, n.to_string())?;
    Ok((scenario, n))
}

struct World {
    scenario: Scenario,
    incarnation: u32,
    state: usize,
    prefs: Value,
    netmap: bool,
    dns_name: String,
    health: Vec<String>,
    hung: bool,
    /// Every notification sent since start; watchers send from their index on.
    events: Vec<Value>,
    watched: bool,
    statuses: u32,
    serve: Value,
    conflicted: bool,
    /// About to exit: nothing more is answered (set with the last answer, so no request
    /// that comes after it gets one).
    dying: bool,
    /// Connections held open unanswered while hung.
    held: Vec<UnixStream>,
    /// Bumped to end the IPN bus streams open at that moment.
    bus_epoch: u32,
}

struct Fake {
    world: Mutex<World>,
    changed: Condvar,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn log(msg: &str) {
    eprintln!("fake tailscaled: {msg}");
}

fn append(path: &Path, line: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut f) = file {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

fn default_prefs() -> Value {
    json!({
        "ControlURL": "",
        "RouteAll": false,
        "ExitNodeID": "",
        "ExitNodeIP": "",
        "InternalExitNodePrior": "",
        "ExitNodeAllowLANAccess": false,
        "CorpDNS": true,
        "RunSSH": false,
        "RunWebClient": false,
        "WantRunning": false,
        "LoggedOut": false,
        "ShieldsUp": false,
        "AdvertiseTags": null,
        "Hostname": "",
        "NotepadURLs": false,
        "AdvertiseRoutes": null,
        "AdvertiseServices": null,
        "Sync": null,
        "NoSNAT": false,
        "NoStatefulFiltering": true,
        "NetfilterMode": 2,
        "AutoUpdate": {"Check": true, "Apply": null},
        "AppConnector": {"Advertise": false},
        "PostureChecking": false,
        "NetfilterKind": "",
        "DriveShares": null,
        "AllowSingleHosts": true,
        "Config": null
    })
}

/// An `ipn.Notify` with nothing in it, as Go encodes one (its pointers as null).
fn notify_base() -> Value {
    json!({"Version": VERSION, "ErrMessage": null, "LoginFinished": null, "State": null,
           "Prefs": null, "NetMap": null, "Engine": null, "BrowseToURL": null,
           "DriveShares": null})
}

/// The persisted login as /localapi/v0/prefs shows it (keys zeroed, as redacted).
fn persist() -> Value {
    let zero = "0".repeat(64);
    json!({
        "PrivateNodeKey": format!("privkey:{zero}"),
        "OldPrivateNodeKey": format!("privkey:{zero}"),
        "UserProfile": {"ID": 1, "LoginName": "test@example.com", "DisplayName": "test",
                        "ProfilePicURL": ""},
        "NetworkLockKey": format!("nlpriv:{zero}"),
        "NodeID": NODE_ID
    })
}

fn merge(into: &mut Value, fields: &Value) {
    if let (Some(into), Some(fields)) = (into.as_object_mut(), fields.as_object()) {
        for (k, v) in fields {
            into.insert(k.clone(), v.clone());
        }
    }
}

impl World {
    fn new(scenario: Scenario, incarnation: u32) -> World {
        let mut prefs = default_prefs();
        if scenario.logged_in {
            prefs["Config"] = persist();
        }
        merge(&mut prefs, &scenario.prefs);
        World {
            state: state_number(&scenario.state),
            prefs,
            netmap: scenario.netmap,
            dns_name: scenario.dns_name.clone(),
            health: scenario.health.clone(),
            hung: scenario.hang,
            events: Vec::new(),
            watched: false,
            statuses: 0,
            serve: scenario.serve_config.clone(),
            conflicted: false,
            dying: false,
            held: Vec::new(),
            bus_epoch: 0,
            scenario,
            incarnation,
        }
    }

    fn hostname(&self) -> String {
        self.prefs["Hostname"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn suffix(&self) -> String {
        let name = self.dns_name.trim_end_matches('.');
        name.split_once('.')
            .map(|(_, s)| s.to_string())
            .unwrap_or_default()
    }

    fn peer_status(id: usize, name: &str, ips: &[String], online: bool) -> Value {
        let host = name.split('.').next().unwrap_or_default();
        json!({
            "ID": format!("nPEER{id}CNTRL"),
            "PublicKey": format!("nodekey:{id:064x}"),
            "HostName": host,
            "DNSName": name,
            "OS": "linux",
            "UserID": 1,
            "TailscaleIPs": ips,
            "Addrs": [],
            "CurAddr": "",
            "Relay": "",
            "PeerRelay": "",
            "RxBytes": 0,
            "TxBytes": 0,
            "Created": "2026-01-01T00:00:00Z",
            "LastWrite": "0001-01-01T00:00:00Z",
            "LastSeen": "0001-01-01T00:00:00Z",
            "LastHandshake": "0001-01-01T00:00:00Z",
            "Online": online,
            "ExitNode": false,
            "ExitNodeOption": false,
            "Active": false,
            "PeerAPIURL": null,
            "TaildropTarget": 0,
            "NoFileSharingReason": "",
            "InNetworkMap": true,
            "InMagicSock": false,
            "InEngine": false
        })
    }

    fn status(&self) -> Value {
        let state = STATES[self.state];
        let (self_status, ips, peers, tailnet) = if self.netmap {
            let mut me = World::peer_status(0, &self.dns_name, &self.scenario.ips, true);
            me["ID"] = json!(NODE_ID);
            me["HostName"] = json!(self.hostname());
            let peers: serde_json::Map<String, Value> = self
                .scenario
                .peers
                .iter()
                .enumerate()
                .map(|(i, (name, ips))| {
                    let p = World::peer_status(i + 1, name, ips, true);
                    (p["PublicKey"].as_str().unwrap_or_default().to_string(), p)
                })
                .collect();
            let tailnet = json!({"Name": "example.com", "MagicDNSSuffix": self.suffix(),
                                 "MagicDNSEnabled": true});
            (me, json!(self.scenario.ips), Value::Object(peers), tailnet)
        } else {
            let mut me = World::peer_status(0, "", &[], false);
            me["ID"] = json!("");
            me["HostName"] = json!(self.hostname());
            me["UserID"] = json!(0);
            me["TailscaleIPs"] = Value::Null;
            me["Created"] = json!("0001-01-01T00:00:00Z");
            me["InNetworkMap"] = json!(false);
            (me, Value::Null, Value::Null, Value::Null)
        };
        let certs = match self.scenario.cert_domains.is_empty() {
            true => Value::Null,
            false => json!(self.scenario.cert_domains),
        };
        json!({
            "Version": VERSION,
            "TUN": false,
            "BackendState": state,
            "HaveNodeKey": self.prefs["Config"].is_object(),
            "AuthURL": "",
            "TailscaleIPs": ips,
            "Self": self_status,
            "Health": self.health,
            "MagicDNSSuffix": if self.netmap { self.suffix() } else { String::new() },
            "CurrentTailnet": tailnet,
            "CertDomains": certs,
            "Peer": peers,
            "User": null,
            "ClientVersion": null
        })
    }

    fn netmap_json(&self) -> Value {
        let node = |id: usize, name: &str, ips: &[String]| {
            let addrs: Vec<String> = ips
                .iter()
                .map(|ip| match ip.contains(':') {
                    true => format!("{ip}/128"),
                    false => format!("{ip}/32"),
                })
                .collect();
            json!({"ID": id, "StableID": format!("n{id}CNTRL"), "Name": name,
                   "Key": format!("nodekey:{id:064x}"), "Addresses": addrs,
                   "AllowedIPs": addrs, "Online": true})
        };
        let peers: Vec<Value> = self
            .scenario
            .peers
            .iter()
            .enumerate()
            .map(|(i, (name, ips))| node(i + 1, name, ips))
            .collect();
        json!({
            "NodeKey": format!("nodekey:{:064x}", 0),
            "SelfNode": node(0, &self.dns_name, &self.scenario.ips),
            "Peers": peers,
            "Domain": self.suffix(),
            "UserProfiles": {}
        })
    }

    fn notify(&mut self, fields: Value) {
        let mut n = notify_base();
        merge(&mut n, &fields);
        self.events.push(n);
    }

    fn set_state(&mut self, state: usize) {
        self.state = state;
        self.notify(json!({"State": state}));
    }

    /// Applies `tailscale up`/`set` flags to the prefs.
    fn apply_flags(&mut self, args: &[String]) {
        let on = |v: &str| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True");
        let list = |v: &str| match v.is_empty() {
            true => Value::Null,
            false => json!(v.split(',').collect::<Vec<_>>()),
        };
        for arg in args {
            let flag = arg.trim_start_matches('-');
            let (name, value) = flag.split_once('=').unwrap_or((flag, "true"));
            match name {
                "hostname" => self.prefs["Hostname"] = json!(value),
                "accept-dns" => self.prefs["CorpDNS"] = json!(on(value)),
                "stateful-filtering" => self.prefs["NoStatefulFiltering"] = json!(!on(value)),
                "advertise-routes" => self.prefs["AdvertiseRoutes"] = list(value),
                "advertise-tags" => self.prefs["AdvertiseTags"] = list(value),
                "ssh" => self.prefs["RunSSH"] = json!(on(value)),
                "login-server" => self.prefs["ControlURL"] = json!(value),
                _ => {}
            }
        }
        let prefs = self.prefs.clone();
        self.notify(json!({"Prefs": prefs}));
    }

    fn etag(&self) -> String {
        use blake2::{Blake2s256, Digest};
        hex::encode(Blake2s256::digest(self.serve.to_string().as_bytes()))
    }

    fn record(&self, line: &str) {
        append(
            &self.scenario.dir.join("requests.log"),
            &format!("{} {line}", self.incarnation),
        );
    }
}

/// Applies `steps` in order (each after its pause).
fn run_steps(fake: &Fake, steps: &[Step]) {
    for step in steps {
        if step.after_ms > 0 {
            std::thread::sleep(Duration::from_millis(step.after_ms));
        }
        let mut w = fake.lock();
        if let Some(health) = &step.health {
            w.health = health.clone();
        }
        if let Some(prefs) = &step.prefs {
            merge(&mut w.prefs, prefs);
            let p = w.prefs.clone();
            w.notify(json!({"Prefs": p}));
        }
        if let Some(name) = &step.dns_name {
            w.dns_name = name.clone();
            if w.netmap {
                let nm = w.netmap_json();
                w.notify(json!({"NetMap": nm}));
            }
        }
        if let Some(netmap) = step.netmap {
            w.netmap = netmap;
            if netmap {
                let nm = w.netmap_json();
                w.notify(json!({"NetMap": nm}));
            }
        }
        if let Some(state) = &step.state {
            log(&format!("state {state}"));
            w.record(&format!("state {state}"));
            w.set_state(state_number(state));
        }
        if step.hang {
            log("hanging: answering nothing from now on");
            w.hung = true;
        }
        if step.close_bus {
            log("ending the IPN bus streams");
            w.record("bus closed");
            w.bus_epoch += 1;
        }
        fake.changed.notify_all();
        if let Some(code) = step.exit {
            log(&format!("exiting with status {code}"));
            std::process::exit(code);
        }
    }
}

/// Serves the fake LocalAPI of `scenario` on `socket` until the process is killed (or a
/// step exits it). `incarnation` numbers this daemon (see [`load`]).
pub fn serve(socket: &Path, scenario: Scenario, incarnation: u32) -> std::io::Result<()> {
    if std::fs::symlink_metadata(socket).is_ok() {
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)?;
    log(&format!(
        "{} listening on {} in state {}",
        VERSION,
        socket.display(),
        scenario.state
    ));
    let on_start = scenario.on_start.clone();
    let fake = Arc::new(Fake {
        world: Mutex::new(World::new(scenario, incarnation)),
        changed: Condvar::new(),
    });
    if !on_start.is_empty() {
        let fake = fake.clone();
        std::thread::spawn(move || run_steps(&fake, &on_start));
    }
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log(&format!("accept: {e}"));
                continue;
            }
        };
        {
            let mut w = fake.lock();
            if w.hung {
                w.record("(connection held unanswered)");
                w.held.push(conn);
                continue;
            }
        }
        let fake = fake.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(&fake, conn) {
                log(&format!("connection: {e}"));
            }
        });
    }
    Ok(())
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &UnixStream) -> std::io::Result<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("Content-Length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    req.body = body;
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        _ => "Internal Server Error",
    }
}

fn respond(
    mut conn: &UnixStream,
    status: u16,
    headers: &[(&str, String)],
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Tailscale-Version: {VERSION}\r\nConnection: close\r\n\r\n"
    ));
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn json_response(conn: &UnixStream, status: u16, body: &Value) -> std::io::Result<()> {
    let mut text = body.to_string();
    text.push('\n');
    respond(conn, status, &[], "application/json", text.as_bytes())
}

fn text_response(conn: &UnixStream, status: u16, text: &str) -> std::io::Result<()> {
    let body = format!("{text}\n");
    respond(
        conn,
        status,
        &[],
        "text/plain; charset=utf-8",
        body.as_bytes(),
    )
}

fn handle(fake: &Arc<Fake>, conn: UnixStream) -> std::io::Result<()> {
    let req = read_request(&conn)?;
    if fake.lock().dying {
        return Ok(()); // closed unanswered
    }
    let (route, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let what = format!("{} {}", req.method, req.path);
    if req.header("Host") != Some(HOST) {
        fake.lock().record(&format!("{what} 403"));
        return text_response(&conn, 403, "invalid localapi request");
    }
    match (req.method.as_str(), route) {
        ("GET", "/localapi/v0/status") => {
            let (status, exit) = {
                let mut w = fake.lock();
                w.statuses += 1;
                w.record(&format!("{what} 200"));
                let exit = w.scenario.exit_after_status == w.statuses;
                w.dying |= exit;
                (w.status(), exit)
            };
            json_response(&conn, 200, &status)?;
            if exit {
                drop(conn);
                log("exiting (status 1) after answering a status request, as the scenario says");
                std::process::exit(1);
            }
            Ok(())
        }
        ("GET", "/localapi/v0/prefs") => {
            let prefs = {
                let w = fake.lock();
                w.record(&format!("{what} 200"));
                w.prefs.clone()
            };
            json_response(&conn, 200, &prefs)
        }
        ("GET", "/localapi/v0/watch-ipn-bus") => {
            let mask: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("mask="))
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            watch(fake, conn, mask, &what)
        }
        ("GET", "/localapi/v0/serve-config") => {
            let (config, etag) = {
                let w = fake.lock();
                w.record(&format!("{what} 200"));
                (w.serve.clone(), w.etag())
            };
            let body = config.to_string();
            respond(
                &conn,
                200,
                &[("Etag", etag)],
                "application/json",
                body.as_bytes(),
            )
        }
        ("POST", "/localapi/v0/serve-config") => {
            let config: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => {
                    fake.lock().record(&format!("{what} 500 bad-json"));
                    let err = json!({"error": format!("decoding config: {e}")});
                    return json_response(&conn, 500, &err);
                }
            };
            let mut w = fake.lock();
            if !w.netmap {
                w.record(&format!("{what} 500 no-netmap"));
                drop(w);
                let err = json!({"error": "updating config: netMap is nil"});
                return json_response(&conn, 500, &err);
            }
            if !w.scenario.serve_conflict.is_null() && !w.conflicted {
                w.conflicted = true;
                w.serve = w.scenario.serve_conflict.clone();
                append(
                    &w.scenario.dir.join("serve.json"),
                    &format!("{} (changed by someone else)", w.serve),
                );
            }
            let if_match = req.header("If-Match").unwrap_or_default().to_string();
            let compared = match if_match.is_empty() {
                true => "if-match=none",
                false if if_match == w.etag() => "if-match=current",
                false => "if-match=stale",
            };
            if compared == "if-match=stale" {
                w.record(&format!("{what} 412 {compared}"));
                drop(w);
                return text_response(&conn, 412, "etag mismatch");
            }
            w.record(&format!("{what} 200 {compared}"));
            w.serve = config;
            append(&w.scenario.dir.join("serve.json"), &w.serve.to_string());
            drop(w);
            respond(&conn, 200, &[], "text/plain; charset=utf-8", b"")
        }
        ("POST", "/fake/cli") => {
            let call: CliCall = serde_json::from_slice(&req.body).map_err(std::io::Error::other)?;
            let answer = cli(fake, &call);
            fake.lock().record(&format!("{what} 200"));
            json_response(&conn, 200, &serde_json::to_value(answer)?)
        }
        (_, "/localapi/v0/status" | "/localapi/v0/prefs" | "/localapi/v0/serve-config") => {
            fake.lock().record(&format!("{what} 405"));
            text_response(&conn, 405, "method not allowed")
        }
        _ => {
            fake.lock().record(&format!("{what} 404"));
            text_response(&conn, 404, "404 page not found")
        }
    }
}

fn chunk(mut conn: &UnixStream, data: &[u8]) -> std::io::Result<()> {
    conn.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    conn.write_all(data)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

fn watch(fake: &Arc<Fake>, mut conn: UnixStream, mask: u64, what: &str) -> std::io::Result<()> {
    let (first, mut next, on_watch) = {
        let mut w = fake.lock();
        w.record(&format!("{what} 200"));
        let mut first = None;
        if mask & ((1 << 1) | (1 << 2) | (1 << 3)) != 0 {
            let mut n = notify_base();
            n["SessionID"] = json!(format!("{:016x}", w.events.len() + 1));
            if mask & (1 << 1) != 0 {
                n["State"] = json!(w.state);
            }
            if mask & (1 << 2) != 0 {
                n["Prefs"] = w.prefs.clone();
            }
            if mask & (1 << 3) != 0 && w.netmap {
                n["NetMap"] = w.netmap_json();
            }
            first = Some(n);
        }
        let on_watch = match w.watched {
            true => Vec::new(),
            false => {
                w.watched = true;
                w.scenario.on_watch.clone()
            }
        };
        (first, w.events.len(), on_watch)
    };
    let epoch = fake.lock().bus_epoch;
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
             Tailscale-Version: {VERSION}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )?;
    conn.flush()?;
    if let Some(first) = first {
        chunk(&conn, format!("{first}\n").as_bytes())?;
    }
    if !on_watch.is_empty() {
        let fake = fake.clone();
        std::thread::spawn(move || run_steps(&fake, &on_watch));
    }
    loop {
        let pending: Vec<Value> = {
            let w = fake.lock();
            let (w, _) = fake
                .changed
                .wait_timeout_while(w, Duration::from_secs(1), |w| {
                    w.events.len() <= next && !w.hung && w.bus_epoch == epoch
                })
                .unwrap_or_else(|e| e.into_inner());
            if w.bus_epoch != epoch {
                drop(w);
                // The end of the stream: the last chunk, then the connection closes.
                conn.write_all(b"0\r\n\r\n")?;
                return Ok(());
            }
            if w.hung {
                drop(w);
                // Keeps the connection open and says nothing more.
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            let new = w.events.get(next..).unwrap_or_default().to_vec();
            next = w.events.len();
            new
        };
        for n in pending {
            chunk(&conn, format!("{n}\n").as_bytes())?;
        }
    }
}

/// Handles a call of the CLI stand-in.
fn cli(fake: &Arc<Fake>, call: &CliCall) -> CliAnswer {
    let sub = call
        .args
        .iter()
        .find(|a| !a.starts_with('-'))
        .cloned()
        .unwrap_or_default();
    let rule = fake
        .lock()
        .scenario
        .cli
        .get(&sub)
        .cloned()
        .unwrap_or_default();
    log(&format!("tailscale {sub}: exit {}", rule.exit));
    if rule.exit == 0 && rule.apply_flags {
        let mut w = fake.lock();
        w.apply_flags(&call.args);
        if sub == "up" {
            w.prefs["WantRunning"] = json!(true);
            w.prefs["LoggedOut"] = json!(false);
            w.prefs["Config"] = persist();
        }
        fake.changed.notify_all();
    }
    run_steps(fake, &rule.then);
    if !rule.after.is_empty() {
        let (fake, after) = (fake.clone(), rule.after.clone());
        std::thread::spawn(move || run_steps(&fake, &after));
    }
    CliAnswer {
        exit: rule.exit,
        output: rule.output,
    }
}

/// The CLI stand-in's side: tells the fake daemon on `socket` about `call` and returns
/// what the CLI should print and exit with.
pub fn cli_call(socket: &Path, call: &CliCall) -> std::io::Result<CliAnswer> {
    let mut conn = UnixStream::connect(socket)?;
    let body = serde_json::to_vec(call)?;
    let head = format!(
        "POST /fake/cli HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body)?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response: {text:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("fake answered {head:?}")));
    }
    serde_json::from_str(body.trim()).map_err(std::io::Error::other)
}

/// The CLI calls recorded in `dir` so far.
pub fn calls(dir: &Path) -> Vec<CliCall> {
    std::fs::read_to_string(dir.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Records a CLI call in `dir` (the stand-in does it before asking the daemon, so a call
/// to a hung daemon is recorded too).
pub fn record_call(dir: &Path, call: &CliCall) {
    if let Ok(line) = serde_json::to_string(call) {
        append(&dir.join("calls.jsonl"), &line);
    }
}
