//! The init proper: start the workload, forward signals to it and reap every child until
//! it exits, then stop whatever is left.
//!
//! Once the workload runs, nothing here returns an error: problems are logged and tsinit
//! keeps reaping, because only the workload's exit may end it.

use std::ffi::{OsString, c_int};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

use log::{debug, error, info, warn};

pub(crate) mod procs;
mod reaper;
mod shutdown;

use reaper::Reaper;

use crate::config::{Config, SignalTarget};
use crate::duration;
use crate::error::Error;
use crate::signals::{self, Signals, Wake};
use crate::sys::{self, Exit};

/// How tsinit found itself started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of its PID namespace: every process in it is tsinit's to reap and stop.
    Pid1,
    /// Under another init (Fly Machines, `docker run --init`): a child subreaper, in
    /// charge of its own descendants only.
    Subreaper,
}

/// The program tsinit runs and whose exit ends it.
#[derive(Debug)]
pub struct Workload {
    pub pid: i32,
}

/// The exit status tsinit passes on for a child's end: its code, or 128+N for signal N.
pub fn exit_code(exit: Exit) -> i32 {
    match exit {
        Exit::Code(code) => code,
        Exit::Signal(sig) => 128 + sig,
    }
}

/// How a child ended, in words ("exit code 3", "killed by SIGTERM").
pub fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Signal(sig) => format!("killed by {}", signals::name(sig)),
    }
}

/// Something tsinit runs beside the workload (tailscaled): tended after every wake-up,
/// excluded from the leftover sweep, and stopped after it.
pub trait Service {
    /// When the service next needs attention (a restart due), if ever.
    fn deadline(&self) -> Option<Instant>;
    /// Descriptors whose readability also needs its attention (`tend`).
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }
    /// Descriptors whose writability needs its attention.
    fn write_fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }
    /// Looks after the service: notices its exit, restarts it when due.
    fn tend(&mut self, init: &mut Init);
    /// Its processes, left alone by the leftover sweep.
    fn pids(&self) -> Vec<i32>;
    /// Stops it; called after the workload and the leftovers are gone.
    fn stop(&mut self, init: &mut Init);
}

/// No service: tsinit as a plain init.
impl<S: Service> Service for Option<S> {
    fn deadline(&self) -> Option<Instant> {
        self.as_ref().and_then(|s| s.deadline())
    }
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.as_ref().map(|s| s.fds()).unwrap_or_default()
    }
    fn write_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.as_ref().map(|s| s.write_fds()).unwrap_or_default()
    }
    fn tend(&mut self, init: &mut Init) {
        if let Some(s) = self {
            s.tend(init);
        }
    }
    fn pids(&self) -> Vec<i32> {
        self.as_ref().map(|s| s.pids()).unwrap_or_default()
    }
    fn stop(&mut self, init: &mut Init) {
        if let Some(s) = self {
            s.stop(init);
        }
    }
}

/// What ended one [`Init::pump`].
#[derive(Debug, PartialEq, Eq)]
pub enum Woke {
    /// The extra descriptor at this index is readable.
    Ready(usize),
    /// The caller's deadline passed.
    Deadline,
    /// Signals or children were handled; look at the state again.
    Handled,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub struct Init {
    signals: Signals,
    config: Config,
    mode: Mode,
    me: i32,
    reaper: Reaper,
    workload: Option<Workload>,
    workload_exit: Option<Exit>,
    /// A stop signal (TERM, INT, QUIT, HUP) that arrived before the workload started.
    stop: Option<c_int>,
    escalate_at: Option<Instant>,
    /// Without a /proc of our own, as PID 1: the pids probed for leftovers stop here.
    probe_limit: Option<i32>,
}

impl Init {
    /// Becomes the init: as PID 1 as is, otherwise by turning into a child subreaper.
    pub fn new(signals: Signals, config: Config) -> Init {
        let me = std::process::id() as i32;
        let mode = if me == 1 {
            Mode::Pid1
        } else {
            match nix::sys::prctl::set_child_subreaper(true) {
                Ok(()) => debug!("not PID 1 (pid {me}): running as a child subreaper"),
                Err(e) => warn!(
                    "not PID 1 (pid {me}) and cannot become a child subreaper ({e}): \
                     orphans will be reaped by PID 1 instead"
                ),
            }
            Mode::Subreaper
        };
        Init {
            signals,
            config,
            mode,
            me,
            reaper: Reaper::default(),
            workload: None,
            workload_exit: None,
            stop: None,
            escalate_at: None,
            probe_limit: None,
        }
    }

    /// Setup for a background child (a service or CLI call): signal state restored, not
    /// in the terminal's foreground, capabilities kept.
    pub fn background_child(&self) -> sys::ChildSetup {
        sys::ChildSetup {
            signals: self.signals.for_child(),
            foreground: false,
            drop_caps: false,
            die_with_parent: true,
        }
    }

    /// Spawns `cmd` (prepared by the caller) and hands its exit to the reaper.
    pub fn spawn(&mut self, cmd: &mut Command) -> io::Result<i32> {
        let child = cmd.spawn()?;
        // `child` is dropped without waiting: the reaper owns every wait.
        let pid = child.id() as i32;
        self.reaper.watch(pid);
        Ok(pid)
    }

    /// Hands the exit of a child the caller spawned itself to the reaper.
    pub fn adopt(&mut self, pid: i32) {
        self.reaper.watch(pid);
    }

    /// The exit status of a child spawned with [`Init::spawn`], once it has exited.
    pub fn take_exit(&mut self, pid: i32) -> Option<Exit> {
        self.reaper.take(pid)
    }

    /// A stop signal that arrived while no workload was running yet.
    pub fn stop_requested(&self) -> Option<c_int> {
        self.stop
    }

    /// How the workload ended, once it has.
    pub fn workload_exit(&self) -> Option<Exit> {
        self.workload_exit
    }

    /// Starts the workload in its own process group, in the terminal's foreground, with
    /// the signal mask and ignored signals tsinit was given, and `env` applied
    /// (`None` removes a variable).
    pub fn spawn_workload(
        &mut self,
        program: &[OsString],
        env: &[(String, Option<String>)],
        drop_net_caps: bool,
    ) -> Result<(), Error> {
        let Some((name, args)) = program.split_first() else {
            return Err(Error::Usage(
                "no PROGRAM given: tell tsinit what to run".into(),
            ));
        };
        let mut cmd = Command::new(name);
        cmd.args(args).process_group(0);
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let setup = sys::ChildSetup {
            signals: self.signals.for_child(),
            foreground: true,
            drop_caps: drop_net_caps,
            die_with_parent: false,
        };
        sys::prepare_child(&mut cmd, setup);
        let pid = self.spawn(&mut cmd).map_err(|source| Error::Spawn {
            program: name.clone(),
            source,
        })?;
        debug!("started workload {name:?} as pid {pid}");
        self.workload = Some(Workload { pid });
        Ok(())
    }

    /// Waits once: for a signal (forwarded to the workload, or remembered as a stop
    /// request before it runs), an exited child (reaped), one of `fds` becoming readable,
    /// or `deadline`. Never fails: problems are logged.
    pub fn pump(&mut self, deadline: Option<Instant>, fds: &[BorrowedFd]) -> Woke {
        self.pump_rw(deadline, fds, &[])
    }

    /// [`Init::pump`], also woken when one of `writable` becomes writable (counted after
    /// `fds`).
    pub fn pump_rw(
        &mut self,
        deadline: Option<Instant>,
        fds: &[BorrowedFd],
        writable: &[BorrowedFd],
    ) -> Woke {
        let woke = match self
            .signals
            .wait_with(earliest(deadline, self.escalate_at), fds, writable)
        {
            Ok(Wake::Signals(list)) => {
                for info in list {
                    self.route(info);
                }
                Woke::Handled
            }
            Ok(Wake::Ready(i)) => Woke::Ready(i),
            Ok(Wake::Deadline) => {
                let now = Instant::now();
                if self.escalate_at.is_some_and(|at| at <= now) {
                    self.escalate_at = None;
                    self.escalate();
                }
                if deadline.is_some_and(|at| at <= now) {
                    Woke::Deadline
                } else {
                    Woke::Handled
                }
            }
            Err(e) => {
                // Without the signalfd we cannot forward, but we can still reap.
                error!("cannot read signals: {e}; waiting for a child to exit instead");
                if let Err(e) = sys::reap_blocking() {
                    error!("waitpid failed: {e}");
                }
                Woke::Handled
            }
        };
        self.reaper.reap();
        if let Some(w) = &self.workload
            && self.workload_exit.is_none()
            && let Some(exit) = self.reaper.take(w.pid)
        {
            debug!("workload (pid {}) ended: {}", w.pid, describe(exit));
            self.workload_exit = Some(exit);
        }
        woke
    }

    /// Forwards signals to the workload and reaps every child, tending `services`
    /// between wake-ups, until the workload exits; returns how it ended.
    pub fn supervise(&mut self, services: &mut dyn Service) -> Exit {
        self.tend_until(services, |init| init.workload_exit)
    }

    /// With no workload (`tsinit run`): tends `services` and reaps every child until a
    /// stop signal arrives; returns it.
    pub fn serve(&mut self, services: &mut dyn Service) -> c_int {
        self.tend_until(services, |init| init.stop)
    }

    /// Tends `services` and waits for what comes next, until `ended` says what ended it.
    fn tend_until<T>(&mut self, services: &mut dyn Service, ended: fn(&Init) -> Option<T>) -> T {
        loop {
            if let Some(end) = ended(self) {
                return end;
            }
            services.tend(self);
            if let Some(end) = ended(self) {
                return end;
            }
            let deadline = services.deadline();
            self.pump_rw(deadline, &services.fds(), &services.write_fds());
        }
    }

    fn escalate(&self) {
        if let Some(after) = self.config.escalate_after {
            warn!(
                "workload still running {} after being asked to stop: \
                 sending SIGKILL (escalate_after)",
                duration::format(after)
            );
        }
        self.send_to_workload(libc::SIGKILL);
    }

    /// Handles one received signal.
    fn route(&mut self, info: sys::SigInfo) {
        let sig = info.signo;
        if sig == libc::SIGCHLD {
            return; // the caller reaps after every wake-up
        }
        if info.pid == self.me as u32 {
            // E.g. SIGPIPE from writing our own log to a closed pipe: not the workload's.
            debug!(
                "not forwarding {} raised by tsinit itself",
                signals::name(sig)
            );
            return;
        }
        let stop_signal = matches!(
            sig,
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP
        );
        match (&self.workload, self.workload_exit) {
            (Some(_), None) => {
                self.send_to_workload(sig);
                if matches!(sig, libc::SIGTERM | libc::SIGINT) && self.escalate_at.is_none() {
                    self.escalate_at = self.config.escalate_after.map(|d| Instant::now() + d);
                }
            }
            (None, _) if stop_signal => {
                info!(
                    "{} received before the workload started: stopping",
                    signals::name(sig)
                );
                self.stop.get_or_insert(sig);
            }
            _ => debug!("ignoring {}: no workload is running", signals::name(sig)),
        }
    }

    fn send_to_workload(&self, sig: c_int) {
        let Some(workload) = &self.workload else {
            return;
        };
        let (target, whom) = match self.config.signal_target {
            SignalTarget::Process => (workload.pid, "workload"),
            SignalTarget::Group => (-workload.pid, "workload's process group"),
        };
        match sys::kill(target, sig) {
            Ok(()) => debug!("forwarded {} to {whom}", signals::name(sig)),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                debug!("{} not delivered: {whom} already gone", signals::name(sig))
            }
            Err(e) => warn!("cannot send {} to {whom}: {e}", signals::name(sig)),
        }
    }
}

/// The result of `io::Error` for a failed setup step, as an [`Error`].
pub fn setup_error(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Setup { what, source }
}
