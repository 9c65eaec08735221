//! Where tsinit cannot be PID 1: `tsinit up` starts `tsinit run` in the background (once,
//! however many shells ask at the same time), `tsinit down` stops it, `tsinit shellenv`
//! says what a shell needs to reach the tailnet the way a workload would.
//!
//! A supervisor holds the state directory's lock while it lives (see
//! `tailscaled::prepare`), so whether one runs is read from the kernel's table of locks,
//! never from a pid file that could go stale. `tsinit up` callers take turns on a lock of
//! their own, and each waits until the supervisor it started holds the state lock: the
//! next one finds it there.

use std::fs::File;
use std::io::{PipeReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::Config;
use crate::error::{EXIT_UNAVAILABLE, Error};
use crate::init::setup_error;
use crate::tailscaled::prepare::{LOCK_FILE, SERVICE};

/// The variable that hands `tsinit run` the pipe on which it tells `tsinit up` how it
/// goes: "locked" once it holds the state lock, then "up ..." or "failed: ...".
pub const READY_FD: &str = "TSINIT_READY_FD";
/// The background supervisor's log, in the state directory.
pub const LOG_FILE: &str = "tsinit.log";
/// The lock `tsinit up` callers take turns on, in the state directory.
const UP_LOCK: &str = "tsinit.up.lock";
/// How long `tsinit up --wait` and `tsinit down` wait unless told otherwise.
pub const WAIT: Duration = Duration::from_secs(60);

/// Writes `text` to stdout (a closed stdout is no reason to fail).
fn say(text: &str) {
    std::io::stdout().write_all(text.as_bytes()).ok();
}

/// The pid of the process holding `path`'s flock exclusively, from /proc/locks (looked
/// at, never taken: a look must not get in the way of the supervisor taking it).
fn lock_holder(path: &Path) -> Option<i32> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:131090 0 EOF" (waiters' lines have "->")
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, at, ..] if *at == file => pid.parse().ok(),
            _ => None,
        }
    })
}

/// The supervisor of this configuration's state directory, if one runs.
fn supervisor(config: &Config) -> Option<i32> {
    lock_holder(&config.tailscale.state_dir.join(LOCK_FILE))
}

/// `tsinit up [--wait[=DURATION]]`: makes sure a supervisor runs for this configuration;
/// with `wait`, until its bring-up is done (the node up, or why not).
pub fn up(
    config: &Config,
    config_path: Option<&Path>,
    wait: Option<Duration>,
) -> Result<i32, Error> {
    let dir = &config.tailscale.state_dir;
    let denied = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Unavailable(format!(
            "cannot write to the state directory {}: tsinit up starts tailscaled, so run it \
             as root (e.g. with sudo), or give a state directory this user may write",
            dir.display()
        )),
        _ => setup_error("prepare the state directory")(e),
    };
    std::fs::create_dir_all(dir).map_err(denied)?;
    let turn = File::create(dir.join(UP_LOCK)).map_err(denied)?;
    let _turn = Flock::lock(turn, FlockArg::LockExclusive)
        .map_err(|(_, e)| setup_error("take tsinit up's lock")(e.into()))?;
    if let Some(pid) = supervisor(config) {
        say(&format!("tsinit is up already (pid {pid})\n"));
        return Ok(0);
    }
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(setup_error("open tsinit's log"))?;
    let (ready, writer) = std::io::pipe().map_err(setup_error("make a pipe"))?;
    // The supervisor inherits the pipe's writing end, and closes it once it has spoken.
    let inherit = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty());
    nix::fcntl::fcntl(&writer, inherit).map_err(|e| setup_error("make a pipe")(e.into()))?;
    let exe = std::env::current_exe().map_err(setup_error("find tsinit itself"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run");
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    }
    let err = log.try_clone().map_err(setup_error("open tsinit's log"))?;
    cmd.env(READY_FD, writer.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    crate::sys::new_session(&mut cmd);
    let mut child = cmd.spawn().map_err(setup_error("start tsinit run"))?;
    drop(writer);
    let limit = wait.unwrap_or(WAIT);
    let deadline = Instant::now() + limit;
    let mut heard = Heard {
        ready,
        text: String::new(),
    };
    let locked = heard.line(deadline);
    if locked.as_deref() != Some("locked") {
        return Ok(ended(&mut child, &log_path, locked));
    }
    say(&format!(
        "started tsinit run (pid {}); its log: {}\n",
        child.id(),
        log_path.display()
    ));
    if wait.is_none() {
        return Ok(0);
    }
    match heard.line(deadline) {
        Some(line) if line.starts_with("up") => {
            say(&format!("{line}\n"));
            Ok(0)
        }
        Some(line) => {
            say(&format!(
                "{line}\n(tsinit run goes on trying; its log: {})\n",
                log_path.display()
            ));
            Ok(EXIT_UNAVAILABLE)
        }
        None => Ok(ended(&mut child, &log_path, None)),
    }
}

/// What the supervisor said so far on its pipe.
struct Heard {
    ready: PipeReader,
    text: String,
}

impl Heard {
    /// The next line it says before `deadline`; `None` if it ends (or the time is up).
    fn line(&mut self, deadline: Instant) -> Option<String> {
        let mut buf = [0u8; 512];
        loop {
            if let Some((line, rest)) = self.text.split_once('\n') {
                let (line, rest) = (line.to_string(), rest.to_string());
                self.text = rest;
                return Some(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.ready.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(0) if left.is_zero() => return Some("not done in time".to_string()),
                Ok(0) => continue,
                Err(_) => return None,
                Ok(_) => {}
            }
            match self.ready.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    let got = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                    self.text.push_str(&got);
                }
            }
        }
    }
}

/// The supervisor ended (or said `said` instead of what was due): its exit status; its
/// log says why.
fn ended(child: &mut Child, log_path: &Path, said: Option<String>) -> i32 {
    let code = match said {
        Some(said) => {
            say(&format!("{said}\n"));
            EXIT_UNAVAILABLE
        }
        None => child
            .wait()
            .ok()
            .and_then(|s| s.code())
            .unwrap_or(EXIT_UNAVAILABLE),
    };
    let why = format!(
        "tsinit run ended (exit code {code}): see {}\n",
        log_path.display()
    );
    std::io::stderr().write_all(why.as_bytes()).ok();
    if code == 0 { EXIT_UNAVAILABLE } else { code }
}

/// `tsinit down`: stops the supervisor (it stops tailscaled and empties the hosts block)
/// and waits until it is gone.
pub fn down(config: &Config) -> Result<i32, Error> {
    let Some(pid) = supervisor(config) else {
        say("tsinit is not running\n");
        return Ok(0);
    };
    // Only a `tsinit run` (its lock file says so): a tsinit with a workload (the
    // container's PID 1) is stopped with its container.
    let holder = std::fs::read_to_string(config.tailscale.state_dir.join(LOCK_FILE));
    if !holder.is_ok_and(|h| h.trim_end().ends_with(SERVICE)) {
        say(&format!(
            "tsinit (pid {pid}) runs a workload, not just tailscale: stop it (or its \
             container) instead\n"
        ));
        return Ok(1);
    }
    let gone = crate::sys::pidfd(pid).map_err(setup_error("watch tsinit"))?;
    crate::sys::kill(pid, libc::SIGTERM).map_err(setup_error("stop tsinit"))?;
    let mut fds = [PollFd::new(gone.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(WAIT.as_millis()).unwrap_or(u16::MAX);
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {
                say(&format!(
                    "tsinit (pid {pid}) still runs {}s after SIGTERM\n",
                    WAIT.as_secs()
                ));
                return Ok(1);
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => break,
        }
    }
    say(&format!("stopped tsinit (pid {pid})\n"));
    Ok(0)
}

/// `tsinit shellenv`: `export` lines for a shell that tsinit did not start: the
/// variables the workload gets (the socket; with userspace networking, as the running
/// supervisor noted, the proxy).
pub fn env(config: &Config) -> i32 {
    let t = &config.tailscale;
    let mode = std::fs::read_to_string(crate::tailscaled::daemon::mode_file(&t.socket));
    let userspace = mode.is_ok_and(|m| m.starts_with("userspace"));
    let out: String = crate::tailscaled::workload_vars(t, userspace)
        .iter()
        .map(|(name, value)| format!("export {name}={}\n", quoted(value)))
        .collect();
    say(&out);
    0
}

/// `s` quoted for a POSIX shell.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// In `tsinit run` started by `tsinit up`: the pipe to tell it how things go, taken out of
/// the environment (and kept from every child).
pub fn ready_pipe() -> Option<File> {
    let fd: i32 = std::env::var(READY_FD).ok()?.parse().ok()?;
    crate::sys::scrub_env(READY_FD);
    crate::sys::inherited_fd(fd).map(File::from)
}

/// Tells `tsinit up` (if it started this `tsinit run`) one more line.
pub fn tell(pipe: &mut Option<File>, line: &str) {
    if let Some(p) = pipe {
        p.write_all(format!("{line}\n").as_bytes()).ok();
    }
}
