//! The one place tsinit calls libc directly: signal masks and dispositions, signalfd,
//! waitpid, kill, and what the workload's process does between fork and exec.
//!
//! Everything here is a thin, safe wrapper; policy lives in the callers.
#![allow(unsafe_code)]

use std::ffi::{CStr, OsString, c_char, c_int};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The highest signal number this libc knows (SIGRTMAX).
pub fn sigrtmax() -> c_int {
    libc::SIGRTMAX()
}

/// The lowest real-time signal free for applications (SIGRTMIN; the ones below it are
/// reserved by the C library for its threads).
pub fn sigrtmin() -> c_int {
    libc::SIGRTMIN()
}

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn empty() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the whole set it is given.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            SigSet(set.assume_init())
        }
    }

    pub fn add(&mut self, sig: c_int) {
        // SAFETY: self.0 is an initialised sigset_t; an invalid number only yields EINVAL.
        unsafe {
            libc::sigaddset(&mut self.0, sig);
        }
    }

    pub fn contains(&self, sig: c_int) -> bool {
        // SAFETY: self.0 is an initialised sigset_t; an invalid number only yields -1.
        unsafe { libc::sigismember(&self.0, sig) == 1 }
    }

    /// The signals in the set, in ascending order.
    pub fn signals(&self) -> Vec<c_int> {
        (1..=sigrtmax()).filter(|&s| self.contains(s)).collect()
    }
}

/// Replaces the calling thread's signal mask with `set`, returning the previous one.
pub fn set_mask(set: &SigSet) -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    // SAFETY: both pointers refer to initialised sigset_t values that outlive the call.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set.0, &mut old.0) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// Whether `sig` is currently set to SIG_IGN.
pub fn is_ignored(sig: c_int) -> io::Result<bool> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only queries; `old` is valid writable memory for a sigaction.
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigaction succeeded, so it filled in `old`.
    let old = unsafe { old.assume_init() };
    Ok(old.sa_sigaction == libc::SIG_IGN)
}

/// Sets `sig` to SIG_IGN (`ignore`) or SIG_DFL. Async-signal-safe: also used after fork.
pub fn set_ignored(sig: c_int, ignore: bool) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags); only the
    // handler field is set, to one of the two constants the kernel accepts.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
        libc::sigaction(sig, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a non-blocking, close-on-exec signalfd for the (already blocked) signals in `set`.
pub fn signalfd(set: &SigSet) -> io::Result<OwnedFd> {
    // SAFETY: -1 asks for a new descriptor; `set` is an initialised sigset_t.
    let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One signal read from a signalfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: c_int,
    /// Sender's pid as seen from our PID namespace (0 when sent by the kernel or from outside).
    pub pid: u32,
    pub code: i32,
}

/// Reads every queued signal from a non-blocking signalfd (empty when none is queued).
pub fn read_signals(fd: &OwnedFd) -> io::Result<Vec<SigInfo>> {
    const BATCH: usize = 16;
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    let mut out = Vec::new();
    loop {
        let mut buf = [MaybeUninit::<libc::signalfd_siginfo>::zeroed(); BATCH];
        // SAFETY: `buf` is writable memory of exactly BATCH * size bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), BATCH * size) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(out),
                Some(libc::EINTR) => continue,
                _ => Err(err),
            };
        }
        let count = n as usize / size;
        for entry in &buf[..count] {
            // SAFETY: the kernel wrote `count` whole records; the buffer was zeroed anyway.
            let info = unsafe { entry.assume_init() };
            out.push(SigInfo {
                signo: info.ssi_signo as c_int,
                pid: info.ssi_pid,
                code: info.ssi_code,
            });
        }
        if count < BATCH {
            return Ok(out);
        }
    }
}

/// `kill(2)`: `pid` > 0 a process, < 0 a process group, -1 everything we may signal.
pub fn kill(pid: i32, sig: c_int) -> io::Result<()> {
    // SAFETY: kill has no memory arguments.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(c_int),
}

/// `waitpid(-1, WNOHANG)`: one exited child, `None` when children remain but none has
/// exited, or an `ECHILD` error when there are no children at all.
pub fn reap_one() -> io::Result<Option<(i32, Exit)>> {
    let mut status: c_int = 0;
    // SAFETY: `status` is a valid writable int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        return Ok(None);
    }
    let exit = if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    };
    Ok(Some((pid, exit)))
}

/// Blocks until any child exits, then reaps it (used only if the signalfd fails).
pub fn reap_blocking() -> io::Result<()> {
    let mut status: c_int = 0;
    // SAFETY: `status` is a valid writable int.
    if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The signal state tsinit's own parent gave it, to hand on unchanged to the workload.
#[derive(Clone, Copy)]
pub struct ChildSignals {
    /// The signal mask tsinit was started with.
    pub mask: SigSet,
    /// Signals whose disposition tsinit changes for itself, and whether each was SIG_IGN.
    pub restore: [(c_int, bool); 4],
}

/// Linux capability numbers of CAP_NET_ADMIN and CAP_NET_RAW.
const NET_CAPS: [u32; 2] = [12, 13];

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes CAP_NET_ADMIN and CAP_NET_RAW from the calling process's bounding,
/// inheritable and ambient sets, so a program it execs (even as root) cannot have them.
/// Async-signal-safe: raw system calls only.
fn drop_net_caps() -> io::Result<()> {
    const VERSION_3: u32 = 0x2008_0522;
    for cap in NET_CAPS {
        // SAFETY: prctl with integer arguments only. EINVAL: the kernel does not know the
        // capability; EPERM: we lack CAP_SETPCAP (then we are not root, and exec will not
        // grant the capability from the bounding set anyway).
        unsafe {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && !matches!(*libc::__errno_location(), libc::EINVAL | libc::EPERM)
            {
                return Err(io::Error::last_os_error());
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            );
        }
    }
    let mut header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are valid for capget/capset's version-3 layout (two data
    // structs); both live across the calls.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for cap in NET_CAPS {
            data[0].inheritable &= !(1 << cap);
        }
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How a child is set up between fork and exec.
#[derive(Clone, Copy)]
pub struct ChildSetup {
    pub signals: ChildSignals,
    /// Take the terminal's foreground if stdin is a terminal (the workload only).
    pub foreground: bool,
    /// Run without CAP_NET_ADMIN and CAP_NET_RAW.
    pub drop_caps: bool,
    /// Get SIGTERM when tsinit dies (tailscaled must not outlive its supervisor).
    pub die_with_parent: bool,
}

/// Prepares `cmd` so that the child (which leads its own process group: the caller sets
/// `process_group(0)`) gets back the signal dispositions and mask tsinit inherited,
/// and, as `setup` says, takes the terminal's foreground and drops network capabilities.
pub fn prepare_child(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        signals,
        foreground,
        drop_caps,
        die_with_parent,
    } = setup;
    let setup = move || -> io::Result<()> {
        if die_with_parent {
            // SAFETY: prctl(PR_SET_PDEATHSIG) takes no pointers.
            let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if drop_caps {
            drop_net_caps()?;
        }
        // Runs in the child between fork and exec: only async-signal-safe calls below.
        // SAFETY: isatty/getpid/tcsetpgrp take no pointers. SIGTTOU is still ignored here
        // (inherited from tsinit), so taking the foreground cannot stop us. A failure only
        // means no job control, which is no reason to refuse to start the workload.
        unsafe {
            if foreground && libc::isatty(libc::STDIN_FILENO) == 1 {
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
            }
        }
        for (sig, ignored) in signals.restore {
            set_ignored(sig, ignored)?;
        }
        // SAFETY: `signals.mask` is an initialised sigset_t copied into this closure.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &signals.mask.0, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls and allocates nothing.
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// Makes the child of `cmd` leader of a session of its own (detached from the caller's
/// terminal and process group), for `tsinit up`'s background supervisor.
pub fn new_session(cmd: &mut Command) {
    // SAFETY: setsid takes no arguments and is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| match libc::setsid() {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
}

/// Takes over descriptor `fd`, which the parent left open for us (its number came in the
/// environment): `None` unless it is open and not stdio. It is closed on exec from now on.
pub fn inherited_fd(fd: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD/F_SETFD take no pointers.
    let open = fd > 2 && unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
    // SAFETY: `fd` is open, and nothing else in this process owns it: it was inherited
    // for this one use, and its number is read once, from a variable just removed.
    open.then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor that becomes readable when process `pid` exits (pidfd_open(2)).
pub fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us, open and owned by no one.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if they were closed), so that
/// no descriptor tsinit opens lands on them and is mistaken for stdio by the workload.
pub fn ensure_stdio_open() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD takes no pointer; open gets a NUL-terminated literal.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                let flags = if fd == 0 {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY
                };
                let new = libc::open(c"/dev/null".as_ptr(), flags);
                if new >= 0 && new != fd {
                    libc::dup2(new, fd);
                    libc::close(new);
                }
            }
        }
    }
}

/// The program's arguments from the C `main(argc, argv)`.
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings, as the C runtime passes them.
pub unsafe fn args_from_c(argc: c_int, argv: *const *const c_char) -> Vec<OsString> {
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: the caller guarantees argv has argc valid entries.
            let ptr = unsafe { *argv.add(i) };
            if ptr.is_null() {
                return None;
            }
            // SAFETY: each non-null entry is a NUL-terminated C string.
            let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes().to_vec();
            Some(OsString::from_vec(bytes))
        })
        .collect()
}

unsafe extern "C" {
    /// The C library's environment array.
    static mut environ: *mut *mut c_char;
}

/// Calls `f` with every (name, value) of this process's environment, read in place
/// (one allocation for the list, none per variable).
pub fn with_environ<R>(f: impl FnOnce(&[(&std::ffi::OsStr, &std::ffi::OsStr)]) -> R) -> R {
    use std::os::unix::ffi::OsStrExt;
    let mut vars = Vec::with_capacity(64);
    // SAFETY: the entries are NUL-terminated strings that stay valid and unchanged while
    // `f` runs: nothing changes the environment meanwhile (tsinit has a single thread
    // here, and `f` gets only shared views).
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = CStr::from_ptr(*entry).to_bytes();
            let (name, value) = match bytes.iter().position(|&b| b == b'=') {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &b""[..]),
            };
            vars.push((
                std::ffi::OsStr::from_bytes(name),
                std::ffi::OsStr::from_bytes(value),
            ));
            entry = entry.add(1);
        }
    }
    f(&vars)
}

/// Removes the variable `name` from this process's environment and overwrites its value
/// where it was stored, so that it can no longer be read from the process's memory nor
/// from /proc/<pid>/environ (which shows the environment block the kernel set up at
/// exec, whatever the C library's copy says). Returns whether it was there.
///
/// Call only while tsinit has a single thread (before any thread or child exists).
pub fn scrub_env(name: &str) -> bool {
    let prefix = format!("{name}=");
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    let mut found = false;
    // SAFETY: single-threaded (the caller's contract), so nothing changes `environ` while
    // we walk it. Every entry is a NUL-terminated string; we only overwrite the bytes of
    // the value (after '=', before the NUL) of a live entry, leaving "NAME=" so that
    // unsetenv still finds it, then let unsetenv remove it from the array.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let s = *entry;
            let bytes = CStr::from_ptr(s).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                let value = s.add(prefix.len());
                std::ptr::write_bytes(value, 0, bytes.len() - prefix.len());
                found = true;
            }
            entry = entry.add(1);
        }
        if found {
            libc::unsetenv(cname.as_ptr());
        }
    }
    found
}

/// Sets `name` to `value` in this process's environment (for the children it starts);
/// the new value lives in the heap, not in the block /proc/<pid>/environ shows.
///
/// Call only while tsinit has a single thread (before any thread or child exists).
pub fn set_env(name: &str, value: &str) -> io::Result<()> {
    let (Ok(n), Ok(v)) = (std::ffi::CString::new(name), std::ffi::CString::new(value)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: both are NUL-terminated; single-threaded by the caller's contract.
    if unsafe { libc::setenv(n.as_ptr(), v.as_ptr(), 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process non-dumpable: only a process with CAP_SYS_PTRACE can then read
/// its memory or /proc/<pid>/environ (no core dumps either). Programs it starts are
/// dumpable again after their exec.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pid the next new process in this PID namespace would get, learnt by starting a
/// child that exits at once (reaped here). Pids are handed out in increasing order, so
/// every live process has a lower one unless the namespace wrapped around pid_max.
pub fn next_pid() -> io::Result<i32> {
    // SAFETY: the child only calls _exit, which is async-signal-safe, so forking a
    // multi-threaded process is sound here.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: _exit ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(0) };
    }
    let mut status: c_int = 0;
    // SAFETY: `status` is a valid writable int; `pid` is our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    Ok(pid)
}

/// Whether a process with this pid exists in our PID namespace (a zombie counts). A
/// thread's id is not a process: kill() would reach the thread's whole process, so the
/// check asks for a thread `pid` that leads thread group `pid`.
pub fn pid_exists(pid: i32) -> bool {
    // SAFETY: tgkill with signal 0 only checks; integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
