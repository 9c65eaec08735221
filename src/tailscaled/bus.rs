//! The one IPN bus follower per tailscaled lifetime: a thread that reads tailscaled's
//! notifications (state, netmap) and hands them to the main thread as events, over
//! a channel and one wake-up byte. It holds no state of tsinit's; the main thread owns
//! everything and never waits for it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use log::debug;

use crate::localapi::{BackendState, LocalApi, NetMap, notify, scan};

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
}

impl Bus {
    /// Starts following the bus of the tailscaled at `socket`.
    pub fn start(socket: &Path) -> std::io::Result<Bus> {
        let (wake_tx, wake) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, events) = channel();
        let socket = socket.to_path_buf();
        std::thread::Builder::new()
            .name("ipn-bus".to_string())
            .spawn(move || follow(&socket, &tx, &wake_tx))?;
        Ok(Bus {
            events,
            wake,
            stream: None,
        })
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
fn follow(socket: &Path, tx: &Sender<BusEvent>, wake: &UnixStream) {
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
    loop {
        let raw = match bus.next_raw() {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                send(BusEvent::Ended("tailscaled closed the IPN bus".to_string()));
                return;
            }
            Err(e) => {
                send(BusEvent::Ended(e.to_string()));
                return;
            }
        };
        if superseded(&raw, bus.buffered()) {
            continue;
        }
        let notification = match scan::notification(&raw) {
            Ok(n) => n,
            Err(e) => {
                debug!("ignoring an IPN bus notification that does not decode: {e}");
                continue;
            }
        };
        let mut events = Vec::new();
        if let Some(state) = notification.state.and_then(BackendState::from_number) {
            events.push(BusEvent::State(state));
        }
        if let Some(netmap) = notification.net_map {
            debug!("IPN bus: a netmap with {} peers", netmap.peers.len());
            events.push(BusEvent::NetMap(Box::new(netmap)));
        }
        for event in events {
            if !send(event) {
                return;
            }
        }
    }
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

/// Whether `raw` carries a netmap and nothing else tsinit reads (no state, no prefs),
/// and a later notification with a netmap has already arrived in `buffered`: then it
/// is skipped unread. When peers change faster than tsinit reads, this keeps the cost
/// at one decoded netmap per burst.
fn superseded(raw: &[u8], buffered: &[u8]) -> bool {
    let Some(at) = netmap_at(raw) else {
        return false;
    };
    let before = &raw[..at];
    let null = |field: &[u8]| before.windows(field.len()).any(|w| w == field);
    if !(null(b"\"State\":null") && null(b"\"Prefs\":null")) {
        return false;
    }
    // Complete notifications end with a newline; what follows the last one is partial.
    let complete = match buffered.iter().rposition(|&b| b == b'\n') {
        Some(end) => &buffered[..end],
        None => return false,
    };
    complete
        .split(|&b| b == b'\n')
        .any(|line| netmap_at(line).is_some())
}

#[cfg(test)]
mod tests {
    use super::superseded;

    const ONLY: &[u8] = br#"{"Version":"1.96.4","ErrMessage":null,"LoginFinished":null,"State":null,"Prefs":null,"NetMap":{"Peers":[]},"Engine":null}"#;
    const WITH_STATE: &[u8] = br#"{"Version":"1.96.4","ErrMessage":null,"LoginFinished":null,"State":6,"Prefs":null,"NetMap":{"Peers":[]},"Engine":null}"#;
    const SMALL: &[u8] = br#"{"Version":"1.96.4","ErrMessage":null,"LoginFinished":null,"State":null,"Prefs":null,"NetMap":null,"Engine":null}"#;

    fn lines(parts: &[&[u8]], tail: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(p);
            out.push(b'\n');
        }
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn only_a_netmap_with_a_later_netmap_waiting_is_skipped() {
        assert!(superseded(ONLY, &lines(&[SMALL, ONLY], b"")));
        assert!(!superseded(ONLY, &lines(&[SMALL], b"")), "no later netmap");
        assert!(
            !superseded(ONLY, &lines(&[SMALL], ONLY)),
            "the later netmap is not complete yet"
        );
        assert!(!superseded(ONLY, b""));
        assert!(
            !superseded(WITH_STATE, &lines(&[ONLY], b"")),
            "it carries a state"
        );
        assert!(!superseded(SMALL, &lines(&[ONLY], b"")), "no netmap in it");
    }
}
