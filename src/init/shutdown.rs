//! After the workload's exit: every process tsinit is responsible for (found in /proc,
//! or by probing pids where /proc is not its namespace's), SIGTERM, a grace period,
//! SIGKILL; and one service process stopped the same way.

use std::ffi::c_int;
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};

use super::procs;
use super::{Init, Mode, Woke};
use crate::duration;
use crate::signals;
use crate::sys::{self, Exit};

/// The highest pid Linux hands out (PID_MAX_LIMIT on 64-bit kernels).
const PID_MAX_LIMIT: i32 = 4_194_304;
/// Without /proc: how many pids past the next free one are probed for processes
/// started during the shutdown.
const PROBE_MARGIN: i32 = 4096;

/// Which processes are still left to stop.
enum Remaining {
    None,
    Pids(Vec<i32>),
    /// /proc cannot tell us (it shows another PID namespace), but children remain.
    Unknown,
}

impl Init {
    /// After the workload's exit: SIGTERM to every process tsinit is responsible for
    /// (except `services`), `grace_period` for them to exit, then SIGKILL to the rest;
    /// all of them reaped.
    pub fn stop_leftovers(&mut self, services: &[i32]) {
        let proc_ok = procs::shows_our_namespace(Path::new("/proc"));
        if !proc_ok {
            debug!(
                "/proc shows another PID namespace; {} instead of listing processes",
                match self.mode {
                    Mode::Pid1 => "probing the pids of ours",
                    Mode::Subreaper => "signalling the workload's process group",
                }
            );
        }
        let grace = self.config.grace_period;
        let first = match self.remaining(proc_ok, services) {
            Remaining::None => return,
            r => r,
        };
        if let Remaining::Pids(pids) = &first {
            info!(
                "workload has exited; sending SIGTERM to {} remaining process(es)",
                pids.len()
            );
        }
        self.signal_remaining(&first, libc::SIGTERM);
        let start = Instant::now();
        if self.wait_until_gone(proc_ok, services, start + grace) {
            debug!("remaining processes exited after {:?}", start.elapsed());
            return;
        }
        for _ in 0..3 {
            let left = self.remaining(proc_ok, services);
            if let Remaining::Pids(pids) = &left {
                warn!(
                    "{} process(es) still running {} after SIGTERM: sending SIGKILL",
                    pids.len(),
                    duration::format(grace)
                );
            }
            self.signal_remaining(&left, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(1);
            if self.wait_until_gone(proc_ok, services, deadline) {
                return;
            }
        }
        warn!("some processes did not go away even after SIGKILL");
    }

    /// Reaps until nothing tsinit must stop is left (true) or `deadline` passes (false).
    fn wait_until_gone(&mut self, proc_ok: bool, services: &[i32], deadline: Instant) -> bool {
        loop {
            if matches!(self.remaining(proc_ok, services), Remaining::None) {
                return true;
            }
            if self.pump(Some(deadline), &[]) == Woke::Deadline {
                return false;
            }
        }
    }

    /// Stops one service process: SIGTERM, up to `grace` to exit, then SIGKILL; reaped.
    pub fn stop_process(&mut self, pid: i32, name: &str, grace: Duration) -> Option<Exit> {
        if let Some(exit) = self.take_exit(pid) {
            return Some(exit);
        }
        if let Err(e) = sys::kill(pid, libc::SIGTERM) {
            debug!("cannot send SIGTERM to {name}: {e}");
        }
        if let Some(exit) = self.wait_exit(pid, Instant::now() + grace) {
            return Some(exit);
        }
        warn!(
            "{name} did not exit within {}: sending SIGKILL",
            duration::format(grace)
        );
        if let Err(e) = sys::kill(pid, libc::SIGKILL) {
            debug!("cannot send SIGKILL to {name}: {e}");
        }
        let exit = self.wait_exit(pid, Instant::now() + Duration::from_secs(1));
        if exit.is_none() {
            warn!("{name} (pid {pid}) did not exit even after SIGKILL");
        }
        exit
    }

    /// Pumps until child `pid` has exited or `deadline` passes.
    pub fn wait_exit(&mut self, pid: i32, deadline: Instant) -> Option<Exit> {
        loop {
            if let Some(exit) = self.take_exit(pid) {
                return Some(exit);
            }
            if self.pump(Some(deadline), &[]) == Woke::Deadline {
                return self.take_exit(pid);
            }
        }
    }

    fn remaining(&mut self, proc_ok: bool, services: &[i32]) -> Remaining {
        self.reaper.reap();
        // Every descendant that is still alive has us or another descendant as its
        // parent, so having no children means none is left. A subreaper is done then;
        // PID 1 still looks for processes entered from outside (`docker exec`).
        if self.mode == Mode::Subreaper && !self.reaper.has_children {
            return Remaining::None;
        }
        if proc_ok {
            match procs::table(Path::new("/proc")) {
                Ok(table) => {
                    let whole = self.mode == Mode::Pid1;
                    let pids = procs::responsible(&table, self.me, whole, services);
                    return if pids.is_empty() {
                        Remaining::None
                    } else {
                        Remaining::Pids(pids)
                    };
                }
                Err(e) => warn!("cannot list processes in /proc: {e}"),
            }
        }
        if self.mode == Mode::Pid1 {
            // No /proc of our own: as PID 1 every process in the namespace is ours, and
            // pids are handed out in order, so probing each pid below the next one
            // finds them all (barring a wrap-around of pid_max) without touching the
            // services, which kill(-1) could not spare.
            // The bound is learnt once per shutdown (each probe child would wake the
            // loop again), with room for processes started since.
            if self.probe_limit.is_none() {
                self.probe_limit = sys::next_pid()
                    .map(|next| (next + PROBE_MARGIN).min(PID_MAX_LIMIT))
                    .inspect_err(|e| warn!("cannot probe for processes: {e}"))
                    .ok();
            }
            if let Some(limit) = self.probe_limit {
                let pids: Vec<i32> = (2..limit)
                    .filter(|&p| p != self.me && !services.contains(&p))
                    .filter(|&p| sys::pid_exists(p))
                    .collect();
                return if pids.is_empty() {
                    Remaining::None
                } else {
                    Remaining::Pids(pids)
                };
            }
        }
        if self.reaper.has_children {
            Remaining::Unknown
        } else {
            Remaining::None
        }
    }

    fn signal_remaining(&self, remaining: &Remaining, sig: c_int) {
        let targets: Vec<i32> = match remaining {
            Remaining::None => return,
            Remaining::Pids(pids) => pids.clone(),
            Remaining::Unknown => match (self.mode, &self.workload) {
                (Mode::Pid1, _) => vec![-1],
                (Mode::Subreaper, Some(w)) => vec![-w.pid],
                (Mode::Subreaper, None) => return,
            },
        };
        for pid in targets {
            match sys::kill(pid, sig) {
                Ok(()) => trace!("sent {} to {pid}", signals::name(sig)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => warn!("cannot send {} to {pid}: {e}", signals::name(sig)),
            }
        }
    }
}
