//! The one IPN bus follower per tailscaled lifetime: a thread that reads tailscaled's
//! notifications (state, netmap) and hands them to the main thread as events, over
//! a channel and one wake-up byte. It holds no state of tsinit's; the main thread owns
//! everything and never waits for it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use log::debug;

use crate::localapi::{Arrived, BackendState, LocalApi, NetMap, notify, scan};

/// What the bus reports.
#[derive(Debug)]
pub enum BusEvent {
    /// Following the bus (the connection, so the main thread can end it).
    Connected(UnixStream),
    State(BackendState),
    NetMap(Box<NetMap>),
    /// The bus ended (tailscaled closed it or went away), and why.
    Ended(String),
}

/// How long connecting to the bus may take (tailscaled answers the request at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The main thread's end of a bus follower.
pub struct Bus {
    events: Receiver<BusEvent>,
    wake: UnixStream,
    stream: Option<UnixStream>,
    /// What the last hosts write cost (ns of CPU), for the follower's [`Pacer`].
    write_cost: Arc<AtomicU64>,
}

impl Bus {
    /// Starts following the bus of the tailscaled at `socket`.
    pub fn start(socket: &Path) -> std::io::Result<Bus> {
        let (wake_tx, wake) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, events) = channel();
        let socket = socket.to_path_buf();
        let write_cost = Arc::new(AtomicU64::new(0));
        let cost = write_cost.clone();
        std::thread::Builder::new()
            .name("ipn-bus".to_string())
            .spawn(move || follow(&socket, &tx, &wake_tx, &cost))?;
        Ok(Bus {
            events,
            wake,
            stream: None,
            write_cost,
        })
    }

    /// What the hosts write that followed the last netmap cost (CPU time).
    pub fn wrote(&self, cost: Duration) {
        let ns = u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX);
        self.write_cost.store(ns, Ordering::Relaxed);
    }

    /// Readable when events wait.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The events that arrived, in order (never blocks).
    pub fn drain(&mut self) -> Vec<BusEvent> {
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let BusEvent::Connected(stream) = &event {
                self.stream = stream.try_clone().ok();
            }
            out.push(event);
        }
        out
    }
}

impl Drop for Bus {
    /// Ends the follower: its read returns, and its next send finds nobody listening.
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            stream.shutdown(std::net::Shutdown::Both).ok();
        }
    }
}

/// The follower thread: connects, then turns each notification into events.
fn follow(socket: &Path, tx: &Sender<BusEvent>, wake: &UnixStream, write_cost: &AtomicU64) {
    let send = |event: BusEvent| {
        let sent = tx.send(event).is_ok();
        let mut w = wake;
        w.write_all(&[1]).ok();
        sent
    };
    let mask = notify::INITIAL_STATE | notify::INITIAL_NETMAP;
    let mut bus = match LocalApi::new(socket, Some(CONNECT_TIMEOUT)).watch_ipn_bus(mask) {
        Ok(bus) => bus,
        Err(e) => {
            send(BusEvent::Ended(e.to_string()));
            return;
        }
    };
    let Ok(stream) = bus.stream().try_clone() else {
        send(BusEvent::Ended(
            "cannot keep the bus connection".to_string(),
        ));
        return;
    };
    if !send(BusEvent::Connected(stream)) {
        return;
    }
    let mut pacer = Pacer::default();
    loop {
        let raw = match bus.take_line() {
            Some(raw) if netmap_only(&raw) => {
                // Held until the pacer says it is due; a later one replaces it.
                pacer.held = Some(raw);
                continue;
            }
            Some(raw) => {
                if netmap_at(&raw).is_some() {
                    pacer.held = None;
                }
                raw
            }
            None => {
                if pacer.held.is_some() && netmap_only(bus.buffered()) {
                    pacer.held = None; // a later netmap is on its way
                }
                let wait = pacer.wait(Instant::now());
                match wait {
                    Some(Duration::ZERO) => match pacer.held.take() {
                        Some(raw) => raw,
                        None => continue,
                    },
                    _ => match bus.read_more(wait) {
                        Ok(Arrived::Data | Arrived::Nothing) => continue,
                        Ok(Arrived::End(last)) => {
                            let why = "tailscaled closed the IPN bus".to_string();
                            for raw in pacer.held.take().into_iter().chain(last) {
                                if !decode_and_send(&raw, &mut pacer, write_cost, &send) {
                                    return;
                                }
                            }
                            send(BusEvent::Ended(why));
                            return;
                        }
                        Err(e) => {
                            send(BusEvent::Ended(e.to_string()));
                            return;
                        }
                    },
                }
            }
        };
        if !decode_and_send(&raw, &mut pacer, write_cost, &send) {
            return;
        }
    }
}

/// Decodes a notification and sends its events; false once nobody listens.
fn decode_and_send(
    raw: &[u8],
    pacer: &mut Pacer,
    write_cost: &AtomicU64,
    send: &impl Fn(BusEvent) -> bool,
) -> bool {
    let cpu = thread_cpu_time();
    let notification = match scan::notification(raw) {
        Ok(n) => n,
        Err(e) => {
            debug!("ignoring an IPN bus notification that does not decode: {e}");
            return true;
        }
    };
    let mut events = Vec::new();
    if let Some(state) = notification.state.and_then(BackendState::from_number) {
        events.push(BusEvent::State(state));
    }
    if let Some(netmap) = notification.net_map {
        debug!("IPN bus: a netmap with {} peers", netmap.peers.len());
        events.push(BusEvent::NetMap(Box::new(netmap)));
        let decode = thread_cpu_time().saturating_sub(cpu);
        let write = Duration::from_nanos(write_cost.load(Ordering::Relaxed));
        pacer.decoded(Instant::now(), decode, write);
    }
    events.into_iter().all(send)
}

/// When a netmap that carries nothing else is decoded. tailscaled sends the whole netmap
/// at every change, so a big tailnet in flux (nodes joining by the hundred) sends
/// megabytes several times a second: after a netmap is decoded, the next one waits until
/// [`PACE`] times what the last one cost (decoding it here, and the hosts write it
/// caused) has passed, and a later netmap that arrives meanwhile replaces it unread. So
/// at most one part in `PACE + 1` of the time goes to netmaps, a change after a quiet
/// spell is taken at once, and the block lags the tailnet by at most `PACE` times the
/// cost of one netmap (~0.1 s at 5 000 peers). A netmap decoded in less than
/// [`UNPACED`] (a small tailnet's, a few hundred nodes) holds nothing back: a small
/// tailnet's changes, and a boot, are never paced.
struct Pacer {
    held: Option<Vec<u8>>,
    /// The next netmap is not decoded before this.
    due: Instant,
}

const PACE: u32 = 14;
const UNPACED: Duration = Duration::from_micros(500);

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer {
            held: None,
            due: Instant::now(),
        }
    }
}

impl Pacer {
    /// How long to wait for more bytes: None (as long as it takes) when nothing is
    /// held, zero when the held netmap is due.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.held.as_ref()?;
        Some(self.due.saturating_duration_since(now))
    }

    /// A netmap was decoded at `now`: that took `decode`, and the hosts write after the
    /// last one `write`.
    fn decoded(&mut self, now: Instant, decode: Duration, write: Duration) {
        self.due = match decode < UNPACED {
            true => now,
            false => now + (decode + write) * PACE,
        };
    }
}

/// The CPU time this thread has used.
pub(super) fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .and_then(|t| {
            Some(Duration::new(
                u64::try_from(t.tv_sec()).ok()?,
                u32::try_from(t.tv_nsec()).ok()?,
            ))
        })
        .unwrap_or_default()
}

/// Where the first `"NetMap":{` of a notification starts, looked for in its head only:
/// ipn.Notify's fields come in a fixed order, State and Prefs before NetMap.
fn netmap_at(raw: &[u8]) -> Option<usize> {
    let head = &raw[..raw.len().min(HEAD)];
    head.windows(NETMAP.len()).position(|w| w == NETMAP)
}

const NETMAP: &[u8] = b"\"NetMap\":{";
/// How far into a notification its netmap starts at the latest (prefs are a few KB).
const HEAD: usize = 16 * 1024;

/// Whether `raw` (a notification, or the first bytes of one) carries a netmap and
/// nothing else tsinit reads (no state, no prefs).
fn netmap_only(raw: &[u8]) -> bool {
    let Some(at) = netmap_at(raw) else {
        return false;
    };
    let before = &raw[..at];
    let null = |field: &[u8]| before.windows(field.len()).any(|w| w == field);
    null(b"\"State\":null") && null(b"\"Prefs\":null")
}

#[cfg(test)]
mod tests {
    use super::{PACE, Pacer, UNPACED, netmap_only};
    use std::time::{Duration, Instant};

    const ONLY: &[u8] = br#"{"Version":"1.96.4","ErrMessage":null,"LoginFinished":null,"State":null,"Prefs":null,"NetMap":{"Peers":[]},"Engine":null}"#;
    const WITH_STATE: &[u8] = br#"{"Version":"1.96.4","ErrMessage":null,"LoginFinished":null,"State":6,"Prefs":null,"NetMap":{"Peers":[]},"Engine":null}"#;
    const SMALL: &[u8] = br#"{"Version":"1.96.4","ErrMessage":null,"LoginFinished":null,"State":null,"Prefs":null,"NetMap":null,"Engine":null}"#;

    #[test]
    fn only_a_netmap_with_nothing_else_is_held() {
        assert!(netmap_only(ONLY));
        assert!(netmap_only(&ONLY[..100]), "its head is enough");
        assert!(!netmap_only(&ONLY[..60]), "not yet known");
        assert!(!netmap_only(WITH_STATE), "it carries a state");
        assert!(!netmap_only(SMALL), "no netmap in it");
        assert!(!netmap_only(b""));
    }

    #[test]
    fn a_held_netmap_waits_for_its_turn() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::default();
        assert_eq!(p.wait(t0), None, "nothing held: wait for bytes");
        p.held = Some(ONLY.to_vec());
        assert_eq!(
            p.wait(t0 + ms(1)),
            Some(Duration::ZERO),
            "after a quiet spell: at once"
        );
        p.decoded(t0, ms(1), ms(1));
        assert_eq!(p.wait(t0), Some(ms(2) * PACE));
        assert_eq!(p.wait(t0 + ms(20)), Some(ms(2) * PACE - ms(20)));
        assert_eq!(p.wait(t0 + ms(2) * PACE), Some(Duration::ZERO));
        p.decoded(t0, UNPACED - Duration::from_micros(1), ms(5));
        assert_eq!(
            p.wait(t0),
            Some(Duration::ZERO),
            "a small netmap holds nothing back"
        );
        p.held = None;
        assert_eq!(p.wait(t0), None);
    }
}
