//! What happens while nothing is under way: the files watched (the serve config) and the
//! IPN bus's events taken in on the main thread, and the hosts block written from the
//! latest netmap.

use std::time::Instant;

use log::debug;

use super::bus::BusEvent;
use super::{HOSTS_PAUSE, Phase, Tailscaled};

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

    /// Writes the hosts block if the netmap changed since the last write. Once the
    /// workload runs, the next write waits [`HOSTS_PAUSE`] times the CPU time this one
    /// took: a single change is written at once, and in a burst of changes (a big tailnet
    /// joining, where each write costs milliseconds) one write follows several netmaps,
    /// the last one always. CPU time, not wall time: on a busy machine (tailscaled itself
    /// busy with that burst) the wait would otherwise grow with the time spent waiting for
    /// a CPU.
    pub(super) fn write_hosts_if_due(&mut self) {
        if !self.hosts_due {
            return;
        }
        let now = Instant::now();
        if self.phase == Phase::Steady && self.hosts_next.is_some_and(|at| now < at) {
            return;
        }
        self.hosts_due = false;
        let cpu = thread_cpu_time();
        if let Some(h) = &mut self.hosts {
            h.write_from(&self.view);
        }
        let took = match (cpu, thread_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => now.elapsed(),
        };
        self.hosts_next = Some(Instant::now() + took * HOSTS_PAUSE);
    }
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Option<std::time::Duration> {
    use nix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(std::time::Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}
