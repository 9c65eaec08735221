//! Which signals tsinit takes over, how it waits for them, and their names.
//!
//! Every signal tsinit may receive is blocked and read from one signalfd, so the process
//! sleeps in a single blocking `poll` while nothing happens (no timed wake-ups).

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::sys::{self, ChildSignals, SigInfo, SigSet};

/// Signals raised by the kernel for a fault in the process itself: never blocked (a blocked
/// fault signal kills the process anyway) and never forwarded.
pub const FAULT_SIGNALS: [c_int; 7] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGSYS,
];

/// Signals whose disposition tsinit changes for itself; the workload gets them back as
/// tsinit found them. SIGTTIN/SIGTTOU are ignored so tsinit can hand the terminal over
/// from the background; SIGCHLD must not be SIG_IGN or children would vanish unreaped;
/// SIGPIPE is reset to default by the Rust runtime in every child.
const CHANGED: [(c_int, bool); 4] = [
    (libc::SIGTTIN, true),
    (libc::SIGTTOU, true),
    (libc::SIGCHLD, false),
    (libc::SIGPIPE, false),
];

/// Whether tsinit takes over `sig` (blocks it, then reaps on SIGCHLD or forwards it).
pub fn is_routed(sig: c_int) -> bool {
    let untouchable = [libc::SIGKILL, libc::SIGSTOP, libc::SIGTTIN, libc::SIGTTOU];
    let reserved = sig > 31 && sig < sys::sigrtmin();
    (1..=sys::sigrtmax()).contains(&sig)
        && !FAULT_SIGNALS.contains(&sig)
        && !untouchable.contains(&sig)
        && !reserved
}

/// What woke tsinit up.
pub enum Wake {
    Signals(Vec<SigInfo>),
    /// The extra descriptor at this index became readable (or hung up).
    Ready(usize),
    Deadline,
}

/// The blocked signal set and its signalfd.
pub struct Signals {
    fd: OwnedFd,
    child: ChildSignals,
}

impl Signals {
    /// Takes over every routed signal. Call this first, before any thread or child exists.
    pub fn take_over() -> io::Result<Signals> {
        let mut routed = SigSet::empty();
        for sig in (1..=sys::sigrtmax()).filter(|&s| is_routed(s)) {
            routed.add(sig);
        }
        let mask = sys::set_mask(&routed)?;
        let mut restore = CHANGED;
        for (sig, ignore) in restore.iter_mut() {
            let was_ignored = sys::is_ignored(*sig)?;
            sys::set_ignored(*sig, *ignore)?;
            *ignore = was_ignored;
        }
        let fd = sys::signalfd(&routed)?;
        Ok(Signals {
            fd,
            child: ChildSignals { mask, restore },
        })
    }

    /// The signal state to give back to a child before it execs.
    pub fn for_child(&self) -> ChildSignals {
        self.child
    }

    /// Sleeps until a signal arrives, one of `extra` becomes readable, one of `writable`
    /// writable, or `deadline` passes. Signals come first when several are ready at once;
    /// the descriptors are counted `extra` first, then `writable`.
    pub fn wait_with(
        &self,
        deadline: Option<Instant>,
        extra: &[BorrowedFd],
        writable: &[BorrowedFd],
    ) -> io::Result<Wake> {
        loop {
            // A deadline already past still gets one look (timeout 0) at what is pending.
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    // Round up so we never wake a millisecond early and spin.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = Vec::with_capacity(1 + extra.len() + writable.len());
            fds.push(PollFd::new(self.fd.as_fd(), PollFlags::POLLIN));
            fds.extend(extra.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
            fds.extend(
                writable
                    .iter()
                    .map(|fd| PollFd::new(*fd, PollFlags::POLLOUT)),
            );
            match poll(&mut fds, timeout) {
                Ok(0) if deadline.is_some_and(|at| at <= Instant::now()) => {
                    return Ok(Wake::Deadline);
                }
                Ok(0) => continue,
                Ok(_) => {
                    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                    if ready(&fds[0]) {
                        let got = sys::read_signals(&self.fd)?;
                        if !got.is_empty() {
                            return Ok(Wake::Signals(got));
                        }
                    }
                    if let Some(i) = fds[1..].iter().position(ready) {
                        return Ok(Wake::Ready(i));
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The conventional name of a signal, e.g. "SIGTERM" or "SIGRTMIN+3".
pub fn name(sig: c_int) -> String {
    let fixed = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ if sig >= sys::sigrtmin() && sig <= sys::sigrtmax() => {
            return format!("SIGRTMIN+{}", sig - sys::sigrtmin());
        }
        _ => return format!("signal {sig}"),
    };
    fixed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_forwardable_signal_and_no_fault_signal() {
        let forwardable = [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGCHLD,
            libc::SIGCONT,
            libc::SIGTSTP,
            libc::SIGWINCH,
            libc::SIGPWR,
            sys::sigrtmin(),
            sys::sigrtmax(),
        ];
        for sig in forwardable {
            assert!(is_routed(sig), "{} should be routed", name(sig));
        }
        for sig in FAULT_SIGNALS
            .into_iter()
            .chain([libc::SIGKILL, libc::SIGSTOP, 32, 0, 65])
        {
            assert!(!is_routed(sig), "{} must not be routed", name(sig));
        }
    }

    #[test]
    fn names() {
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(sys::sigrtmin() + 3), "SIGRTMIN+3");
        assert_eq!(name(0), "signal 0");
    }
}
