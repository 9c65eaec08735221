//! What happens while nothing is under way: the files watched (the serve config) and the
//! IPN bus's events taken in on the main thread, and the hosts block written from the
//! latest netmap.

use log::debug;

use super::bus::{BusEvent, thread_cpu_time};
use super::{Phase, Tailscaled};

/// How often the IPN bus is followed again after it ended while tailscaled ran.
const MAX_BUS_RESTARTS: u32 = 3;

impl Tailscaled {
    /// Reads the files watched and the bus's events, and brings the hosts block in step
    /// with the latest netmap (once, however many events came).
    pub(super) fn take_events(&mut self) {
        let mut serve_file = false;
        let name = self.p.serve.file.as_ref().and_then(|p| p.file_name());
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            serve_file |= events.iter().any(|e| {
                Some(e.wd) == self.serve_watch
                    && e.name
                        .as_deref()
                        .is_some_and(|n| Some(n) == name || n == "..data")
            });
        }
        self.serve_due |= serve_file;
        let Some(bus) = &mut self.bus else {
            return;
        };
        let mut changed = false;
        for event in bus.drain() {
            match event {
                BusEvent::Connected(_) => continue,
                BusEvent::State(state) => {
                    debug!("tailscaled state: {state}");
                    self.view.state = Some(state);
                }
                BusEvent::NetMap(netmap) => {
                    let old = self.view.dns_name().to_string();
                    self.view.netmap = Some(*netmap);
                    let new = self.view.dns_name();
                    if !old.is_empty() && !new.is_empty() && new != old {
                        debug!("control renamed the node: {old} -> {new}");
                        self.serve_due |= self.phase == Phase::Steady;
                    }
                }
                BusEvent::Ended(why) => {
                    debug!("IPN bus ended: {why}");
                    self.bus = None;
                    // tailscaled still runs (its exit is handled elsewhere): follow its
                    // bus again, a few times at most per tailscaled lifetime.
                    if self.daemon.as_ref().is_some_and(|d| !d.killed)
                        && self.bus_restarts < MAX_BUS_RESTARTS
                    {
                        self.bus_restarts += 1;
                        self.follow_bus();
                    }
                    break;
                }
            }
            self.view.heard += 1;
            changed = true;
        }
        self.hosts_due |= changed && self.hosts.is_some();
        self.write_hosts_if_due();
    }

    /// Writes the hosts block if the netmap changed since the last write, and tells the
    /// bus follower what that cost (its pacer spaces big netmaps by it).
    pub(super) fn write_hosts_if_due(&mut self) {
        if !self.hosts_due {
            return;
        }
        self.hosts_due = false;
        let cpu = thread_cpu_time();
        if let Some(h) = &mut self.hosts {
            h.write_from(&self.view);
        }
        if let Some(bus) = &self.bus {
            bus.wrote(thread_cpu_time().saturating_sub(cpu));
        }
    }
}
