//! An interactive shell under tsinit (PID 1) on a pseudo-terminal has job control:
//! background jobs, `jobs`, `fg`, and Ctrl-C reaching the foreground job.

#![allow(unsafe_code)]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Tag, pid1, wait_until};

struct Screen {
    text: Arc<(Mutex<String>, Condvar)>,
}

impl Screen {
    fn new(master: OwnedFd) -> Screen {
        let text = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let shared = text.clone();
        let mut master = File::from(master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the last process holding the terminal has exited.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let (lock, cv) = &*shared;
                lock.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                cv.notify_all();
            }
        });
        Screen { text }
    }

    /// Waits until `needle` appears after byte `from`; returns the offset just past it.
    fn expect(&self, from: usize, needle: &str) -> usize {
        let (lock, cv) = &*self.text;
        let guard = lock.lock().unwrap();
        let (guard, res) = cv
            .wait_timeout_while(guard, Duration::from_secs(20), |t| {
                t.get(from..).is_none_or(|s| !s.contains(needle))
            })
            .unwrap();
        assert!(
            !res.timed_out(),
            "no {needle:?} after {from} in:\n{}",
            *guard
        );
        from + guard[from..].find(needle).unwrap() + needle.len()
    }

    fn all(&self) -> String {
        self.text.0.lock().unwrap().clone()
    }
}

#[test]
fn interactive_shell_has_job_control() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let tag = Tag::new(); // kills everything started here when the test ends
    let mut cmd = pid1(&["bash", "--norc", "--noprofile", "-i"]);
    tag.apply(&mut cmd);
    cmd.env("PS1", "PROMPT> ").env("TERM", "dumb");
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave));
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and take no pointers we
    // own; they make the pty the controlling terminal of a new session, as a terminal
    // emulator or `docker run -t` does.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    drop(cmd); // close our copies of the slave side
    let screen = Screen::new(pty.master.try_clone().unwrap());
    let mut keys = File::from(pty.master);
    let master_fd = keys.as_raw_fd();
    // SAFETY: tcgetpgrp takes no pointers; on a pty master it reports the terminal's
    // foreground process group.
    let foreground = move || unsafe { libc::tcgetpgrp(master_fd) };
    let mut type_ = |s: &str| keys.write_all(s.as_bytes()).unwrap();

    let mut at = screen.expect(0, "PROMPT> ");
    let shell_group = foreground();
    assert!(
        shell_group > 0,
        "the shell must own the terminal's foreground"
    );
    type_("sleep 1000 &\n");
    at = screen.expect(at, "[1] ");
    type_("jobs\n");
    at = screen.expect(at, "Running");
    type_("fg\n");
    wait_until(
        Duration::from_secs(20),
        "`fg` to give the job the terminal",
        || {
            let now = foreground();
            now > 0 && now != shell_group
        },
    );
    type_("\x03"); // Ctrl-C, delivered by the terminal to the foreground job
    at = screen.expect(at, "PROMPT> ");
    type_("echo rc=$?\n");
    at = screen.expect(at, "rc=130");
    type_("exit 7\n");

    let status = child.wait().unwrap();
    let all = screen.all();
    assert_eq!(status.code(), Some(7), "{all}");
    assert!(!all.contains("no job control"), "{all}");
    assert!(!all.contains("cannot set terminal process group"), "{all}");
    let _ = at;
}
