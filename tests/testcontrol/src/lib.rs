//! A test-only Tailscale control server and DERP server: the public API ([`TestControl`]),
//! which runs both on one port on a background thread with its own tokio runtime.
//!
//! Real `tailscaled` 1.96.x can log in with an auth key, get a netmap (peers, a DERP map with
//! this server as region 1) and reach `Running`, with no internet. Set `TESTCONTROL_LOG=1`
//! to trace requests on stderr.
//!
//! How tests use it (see tests/e2e.rs): make a network namespace with a veth pair up and an
//! IPv4 address on it, `TestControl::start_in_netns(ns, "127.0.0.1:0")`, `set_valid_keys`,
//! then run tailscaled in that namespace with `--no-logs-no-support` and
//! `TS_DEBUG_USE_DERP_HTTP=1` (DERP is plain HTTP on the same port; STUN answers on the
//! same port number over UDP) and `tailscale up --login-server=<url()> --auth-key=...`.

mod control;
mod derp;
pub mod fakeapi;
mod noise;
mod state;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};
use x25519_dalek::StaticSecret;

pub use state::DOMAIN;

/// A registered node (real or fake) as the control server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u64,
    /// `nodekey:<hex>`
    pub node_key: String,
    /// `mkey:<hex>`
    pub machine_key: String,
    /// Hostinfo.Hostname as the client reported it.
    pub hostname: String,
    /// MagicDNS name with the trailing dot, e.g. `a.tail.example.`.
    pub name: String,
    /// Tailscale addresses as prefixes, IPv4 first (`100.64.0.1/32`, `fd7a:115c:a1e0::1/128`).
    pub addresses: Vec<String>,
    /// Has an open streaming map poll (always true for fake peers).
    pub online: bool,
    pub logged_out: bool,
    /// Added with [`TestControl::add_fake_peer`].
    pub fake: bool,
    /// Hostinfo as the client last reported it (e.g. `RoutableIPs`: the routes it
    /// advertises).
    pub hostinfo: serde_json::Value,
}

pub(crate) struct Shared {
    state: Mutex<state::State>,
    changes: watch::Sender<u64>,
    noise_key: StaticSecret,
    hub: derp::Hub,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every map stream to send what changed.
    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

pub(crate) fn log(msg: &str) {
    if std::env::var_os("TESTCONTROL_LOG").is_some() {
        eprintln!("testcontrol: {msg}");
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        panic!("testcontrol: cannot read /dev/urandom: {e}");
    }
    b
}

fn fill_random(buf: &mut [u8]) {
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)) {
        panic!("testcontrol: cannot read /dev/urandom: {e}");
    }
}

/// Control + DERP server on one TCP port; stops when dropped.
pub struct TestControl {
    shared: Arc<Shared>,
    addr: SocketAddr,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestControl {
    /// Starts control + DERP listening on `addr` (e.g. "127.0.0.1:0") in the current
    /// network namespace.
    pub fn start(addr: &str) -> std::io::Result<TestControl> {
        Self::spawn(None, addr)
    }

    /// Starts it inside network namespace `netns`: a name under /var/run/netns, or an
    /// absolute path such as /proc/PID/ns/net. Only the server's thread enters it.
    pub fn start_in_netns(netns: &str, addr: &str) -> std::io::Result<TestControl> {
        Self::spawn(Some(netns.to_string()), addr)
    }

    fn spawn(netns: Option<String>, addr: &str) -> std::io::Result<TestControl> {
        let addr = addr.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("testcontrol".into())
            .spawn(move || {
                let setup = || -> std::io::Result<_> {
                    if let Some(ns) = &netns {
                        enter_netns(ns)?;
                    }
                    let listener = std::net::TcpListener::bind(&addr)?;
                    listener.set_nonblocking(true)?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let local = listener.local_addr()?;
                    // STUN on the same port number over UDP, when that port is free.
                    let udp = std::net::UdpSocket::bind(local)
                        .and_then(|u| u.set_nonblocking(true).map(|_| u));
                    Ok((listener, udp.ok(), rt, local))
                };
                let (listener, udp, rt, local) = match setup() {
                    Ok(v) => v,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let host = match local.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
                    ip if ip.is_unspecified() => "::1".to_string(),
                    ip => ip.to_string(),
                };
                let url_host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                let url = format!("http://{url_host}:{}", local.port());
                let shared = Arc::new(Shared {
                    state: Mutex::new(state::State::new(url.clone(), host, local.port())),
                    changes: watch::channel(0).0,
                    noise_key: StaticSecret::from(random_bytes()),
                    hub: derp::Hub::new(random_bytes()),
                });
                if udp.is_some() {
                    shared.lock().stun_port = i32::from(local.port());
                }
                let _ = ready_tx.send(Ok((shared.clone(), local, url)));
                rt.block_on(async move {
                    if let Some(udp) = udp.and_then(|u| tokio::net::UdpSocket::from_std(u).ok()) {
                        tokio::spawn(derp::serve_stun(udp));
                    }
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let mut stop_rx = stop_rx;
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    tokio::spawn(control::serve_conn(stream, shared.clone()));
                                }
                            }
                            _ = &mut stop_rx => break,
                        }
                    }
                });
            })?;
        let (shared, addr, url) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("testcontrol thread died during start"))??;
        Ok(TestControl {
            shared,
            addr,
            url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// e.g. "http://127.0.0.1:34567"
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Auth keys accepted by /machine/register; others get `Error: "invalid key: ..."`.
    pub fn set_valid_keys(&self, keys: &[&str]) {
        self.shared.lock().valid_keys = keys.iter().map(|k| k.to_string()).collect();
    }

    /// Whether nodes get the Tailscale SSH capability (as a tailnet with ssh rules
    /// grants it); on by default. Pushed to open map streams.
    pub fn set_ssh_enabled(&self, enabled: bool) {
        self.shared.lock().set_ssh_enabled(enabled);
        self.shared.bump();
    }

    /// Register requests that carried an auth key which was accepted.
    pub fn register_count(&self) -> usize {
        self.shared.lock().register_count
    }

    /// All /machine/register requests (logins, refreshes, logouts, followups, rejected ones).
    pub fn register_requests(&self) -> usize {
        self.shared.lock().register_requests
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        let st = self.shared.lock();
        st.nodes()
            .values()
            .map(|n| NodeInfo {
                id: n.id,
                node_key: n.node_key.clone(),
                machine_key: n.machine_key.clone(),
                hostname: n.hostname.clone(),
                name: n.name.clone(),
                addresses: n.addresses(),
                online: n.online(),
                logged_out: n.logged_out,
                fake: n.fake,
                hostinfo: n.hostinfo.clone(),
            })
            .collect()
    }

    /// Adds a synthetic peer (random keys, the next 100.64.x.y address, DNS name
    /// `<hostname>.tail.example.`), pushed to every open map stream; returns its node id.
    pub fn add_fake_peer(&self, hostname: &str) -> u64 {
        let id = self
            .shared
            .lock()
            .add_fake(hostname, [random_bytes(), random_bytes(), random_bytes()]);
        self.shared.bump();
        id
    }

    /// Adds `count` fake peers named `<prefix>-0` .. `<prefix>-<count-1>` (each as
    /// [`TestControl::add_fake_peer`] makes one) in batches of `batch`, each batch one
    /// change pushed to the open map streams. While a node has a map stream open, the next
    /// batch waits (up to 10 s) until a stream has computed its update from the previous
    /// one, so that node gets `ceil(count / batch)` map updates, not fewer merged ones.
    /// Returns the ids in order; stops with an error at a batch with a name a live node
    /// has already (earlier batches stay).
    pub fn add_fake_peers(
        &self,
        prefix: &str,
        count: usize,
        batch: usize,
    ) -> Result<Vec<u64>, String> {
        let batch = batch.max(1);
        let mut ids = Vec::with_capacity(count);
        let mut start = 0;
        while start < count {
            let end = count.min(start + batch);
            let mut keys = vec![0u8; 96 * (end - start)];
            fill_random(&mut keys);
            let peers: Vec<(String, [[u8; 32]; 3])> = (start..end)
                .zip(keys.chunks_exact(96))
                .map(|(i, k)| {
                    let mut three = [[0u8; 32]; 3];
                    for (key, part) in three.iter_mut().zip(k.chunks_exact(32)) {
                        key.copy_from_slice(part);
                    }
                    (format!("{prefix}-{i}"), three)
                })
                .collect();
            let (added, batch_no, taken, streaming) = {
                let mut st = self.shared.lock();
                let added = st.add_fakes(&peers)?;
                let streaming = st.nodes().values().any(|n| !n.fake && n.streams > 0);
                (added, st.batches, st.taken.clone(), streaming)
            };
            self.shared.bump();
            ids.extend(added);
            start = end;
            if start < count && streaming {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while taken.load(std::sync::atomic::Ordering::Relaxed) < batch_no
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        }
        Ok(ids)
    }

    /// Renames a node at control (as an admin does in the console): its DNS name becomes
    /// `<name>.tail.example.`, pushed to every open map stream.
    pub fn rename(&self, id: u64, name: &str) {
        let mut st = self.shared.lock();
        let full = format!("{}.{}.", state::dns_label(name), state::DOMAIN);
        if let Some(n) = st.node_mut(id) {
            n.name = full;
        }
        drop(st);
        self.shared.bump();
    }

    /// Gives a node any full DNS name (`name`, with the trailing dot), e.g. one of another
    /// tailnet's domain, as a node shared in from there has; pushed to every open map
    /// stream.
    pub fn set_dns_name(&self, id: u64, name: &str) {
        if let Some(n) = self.shared.lock().node_mut(id) {
            n.name = name.to_string();
        }
        self.shared.bump();
    }

    /// Removes a node (fake or real); open map streams get it in PeersRemoved.
    pub fn remove_peer(&self, id: u64) {
        self.shared.lock().remove_node(id);
        self.shared.bump();
    }
}

impl Drop for TestControl {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter_netns(ns: &str) -> std::io::Result<()> {
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/var/run/netns/{ns}")
    };
    let file = std::fs::File::open(&path)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}
