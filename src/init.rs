//! The init proper: start the workload, forward signals to it and reap every child until
//! it exits, then stop whatever is left.
//!
//! Once the workload runs, nothing here returns an error: problems are logged and tsinit
//! keeps reaping, because only the workload's exit may end it.

use std::ffi::{OsString, c_int};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};

use crate::config::{Config, SignalTarget};
use crate::duration;
use crate::error::Error;
use crate::procs;
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

/// The one owner of `waitpid`: reaps every child and keeps the statuses of the children
/// someone asked about, so no exit status is ever lost to another waiter.
#[derive(Default)]
struct Reaper {
    watched: Vec<i32>,
    exited: Vec<(i32, Exit)>,
    /// False once waitpid reported that no children are left.
    has_children: bool,
}

impl Reaper {
    fn watch(&mut self, pid: i32) {
        self.watched.push(pid);
        self.has_children = true;
    }

    /// Reaps every child that has exited, without blocking.
    fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, exit))) => {
                    if let Some(i) = self.watched.iter().position(|&p| p == pid) {
                        self.watched.swap_remove(i);
                        self.exited.push((pid, exit));
                    } else {
                        trace!("reaped orphan {pid} ({})", describe(exit));
                    }
                }
                Ok(None) => {
                    self.has_children = true;
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    self.has_children = false;
                    return;
                }
                Err(e) => {
                    warn!("waitpid failed: {e}");
                    return;
                }
            }
        }
    }

    /// The exit status of a watched child, once it has been reaped.
    fn take(&mut self, pid: i32) -> Option<Exit> {
        let i = self.exited.iter().position(|&(p, _)| p == pid)?;
        Some(self.exited.swap_remove(i).1)
    }
}

fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Signal(sig) => format!("killed by {}", signals::name(sig)),
    }
}

/// Which processes are still left to stop.
enum Remaining {
    None,
    Pids(Vec<i32>),
    /// /proc cannot tell us (it shows another PID namespace), but children remain.
    Unknown,
}

pub struct Init {
    signals: Signals,
    config: Config,
    mode: Mode,
    me: i32,
    reaper: Reaper,
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
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Starts the workload in its own process group, in the terminal's foreground, with
    /// the signal mask and ignored signals tsinit was given.
    pub fn spawn_workload(&mut self, program: &[OsString]) -> Result<Workload, Error> {
        let Some((name, args)) = program.split_first() else {
            return Err(Error::Usage(
                "no PROGRAM given: tell tsinit what to run".into(),
            ));
        };
        let mut cmd = Command::new(name);
        cmd.args(args).process_group(0);
        sys::prepare_child(&mut cmd, self.signals.for_child());
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: name.clone(),
            source,
        })?;
        // `child` is dropped without waiting: the reaper owns every wait.
        let pid = child.id() as i32;
        self.reaper.watch(pid);
        debug!("started workload {name:?} as pid {pid}");
        Ok(Workload { pid })
    }

    /// Forwards signals to the workload and reaps every child until the workload exits;
    /// returns how it ended.
    pub fn supervise(&mut self, workload: &Workload) -> Exit {
        let mut escalate_at: Option<Instant> = None;
        loop {
            match self.signals.wait(escalate_at) {
                Ok(Wake::Signals(list)) => {
                    for info in list {
                        if self.route(workload, info) {
                            escalate_at = escalate_at
                                .or_else(|| self.config.escalate_after.map(|d| Instant::now() + d));
                        }
                    }
                }
                Ok(Wake::Deadline) => {
                    escalate_at = None;
                    if let Some(after) = self.config.escalate_after {
                        warn!(
                            "workload still running {} after being asked to stop: \
                             sending SIGKILL (escalate_after)",
                            duration::format(after)
                        );
                    }
                    self.send_to_workload(workload, libc::SIGKILL);
                }
                Err(e) => {
                    // Without the signalfd we cannot forward, but we can still reap.
                    error!("cannot read signals: {e}; waiting for a child to exit instead");
                    if let Err(e) = sys::reap_blocking() {
                        error!("waitpid failed: {e}");
                    }
                }
            }
            self.reaper.reap();
            if let Some(exit) = self.reaper.take(workload.pid) {
                debug!("workload (pid {}) ended: {}", workload.pid, describe(exit));
                return exit;
            }
        }
    }

    /// Handles one received signal; true if it asked the workload to stop.
    fn route(&self, workload: &Workload, info: sys::SigInfo) -> bool {
        if info.signo == libc::SIGCHLD {
            return false; // the caller reaps after every wake-up
        }
        if info.pid == self.me as u32 {
            // E.g. SIGPIPE from writing our own log to a closed pipe: not the workload's.
            debug!(
                "not forwarding {} raised by tsinit itself",
                signals::name(info.signo)
            );
            return false;
        }
        self.send_to_workload(workload, info.signo);
        matches!(info.signo, libc::SIGTERM | libc::SIGINT)
    }

    fn send_to_workload(&self, workload: &Workload, sig: c_int) {
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

    /// After the workload's exit: SIGTERM to every process tsinit is responsible for,
    /// `grace_period` for them to exit, then SIGKILL to the rest; all of them reaped.
    pub fn stop_leftovers(&mut self, workload: &Workload) {
        let proc_ok = procs::shows_our_namespace(Path::new("/proc"));
        if !proc_ok {
            debug!(
                "/proc shows another PID namespace; signalling {} instead of listing processes",
                match self.mode {
                    Mode::Pid1 => "every process in ours",
                    Mode::Subreaper => "the workload's process group",
                }
            );
        }
        let grace = self.config.grace_period;
        let first = match self.remaining(proc_ok) {
            Remaining::None => return,
            r => r,
        };
        if let Remaining::Pids(pids) = &first {
            info!(
                "workload has exited; sending SIGTERM to {} remaining process(es)",
                pids.len()
            );
        }
        self.signal_remaining(&first, workload, libc::SIGTERM);
        let start = Instant::now();
        if self.wait_until_gone(proc_ok, start + grace) {
            debug!("remaining processes exited after {:?}", start.elapsed());
            return;
        }
        for _ in 0..3 {
            let left = self.remaining(proc_ok);
            if let Remaining::Pids(pids) = &left {
                warn!(
                    "{} process(es) still running {} after SIGTERM: sending SIGKILL",
                    pids.len(),
                    duration::format(grace)
                );
            }
            self.signal_remaining(&left, workload, libc::SIGKILL);
            if self.wait_until_gone(proc_ok, Instant::now() + Duration::from_secs(1)) {
                return;
            }
        }
        warn!("some processes did not go away even after SIGKILL");
    }

    /// Reaps until nothing tsinit must stop is left (true) or `deadline` passes (false).
    fn wait_until_gone(&mut self, proc_ok: bool, deadline: Instant) -> bool {
        loop {
            if matches!(self.remaining(proc_ok), Remaining::None) {
                return true;
            }
            match self.signals.wait(Some(deadline)) {
                Ok(Wake::Deadline) => return false,
                Ok(Wake::Signals(list)) => {
                    for info in list.iter().filter(|i| i.signo != libc::SIGCHLD) {
                        debug!("ignoring {} while stopping", signals::name(info.signo));
                    }
                }
                Err(e) => {
                    error!("cannot read signals: {e}");
                    return false;
                }
            }
        }
    }

    fn remaining(&mut self, proc_ok: bool) -> Remaining {
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
                    let pids = procs::responsible(&table, self.me, self.mode == Mode::Pid1, &[]);
                    return if pids.is_empty() {
                        Remaining::None
                    } else {
                        Remaining::Pids(pids)
                    };
                }
                Err(e) => warn!("cannot list processes in /proc: {e}"),
            }
        }
        if self.reaper.has_children {
            Remaining::Unknown
        } else {
            Remaining::None
        }
    }

    fn signal_remaining(&self, remaining: &Remaining, workload: &Workload, sig: c_int) {
        let targets: Vec<i32> = match remaining {
            Remaining::None => return,
            Remaining::Pids(pids) => pids.clone(),
            Remaining::Unknown => match self.mode {
                Mode::Pid1 => vec![-1],
                Mode::Subreaper => vec![-workload.pid],
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

/// The result of `io::Error` for a failed setup step, as an [`Error`].
pub fn setup_error(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Setup { what, source }
}
