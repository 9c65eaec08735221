//! `tailscale` CLI calls (`up`, `set`, `logout`) as children of tsinit: started, then
//! watched from the main loop (the reaper collects their exit), never waited for in a
//! blocking call. Secrets go in anonymous memory files, never in argv.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::bringup::identity::SECRET_VARS;
use crate::duration;
use crate::init::{Init, Woke};
use crate::sys::Exit;

/// A CLI call under way.
pub struct Run {
    pub pid: i32,
    /// The subcommand, for messages.
    pub shown: String,
    output: File,
    pub deadline: Instant,
    limit: Duration,
}

/// How a CLI call ended.
pub enum Ended {
    Ok(String),
    /// Failed: its exit, and the line of its output that says why.
    Failed(Exit, String),
    TimedOut(Duration),
}

/// Starts `tailscale --socket=S <args>`; `secrets` (flag, value) are handed over as
/// `--flag=file:/proc/self/fd/N` memory files. An interactive `up` (no secret) prints
/// its login URL to the container's log as it goes.
pub fn start(
    init: &mut Init,
    binary: &Path,
    socket: &Path,
    args: &[String],
    secrets: &[(&str, &str)],
    limit: Duration,
) -> Result<Run, String> {
    let io = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let output =
        memfd_create(c"tailscale-output", MFdFlags::MFD_CLOEXEC).map_err(|e| io("memfd", &e))?;
    let output = File::from(output);
    let mut secret_fds: Vec<(&str, OwnedFd)> = Vec::new();
    let mut locators = Vec::new();
    for (flag, value) in secrets {
        if crate::bringup::identity::is_locator(value) {
            locators.push(format!("--{flag}={value}"));
            continue;
        }
        // Not close-on-exec: the CLI reads it as /proc/self/fd/N.
        let fd =
            memfd_create(c"tailscale-secret", MFdFlags::empty()).map_err(|e| io("memfd", &e))?;
        let mut f = File::from(fd);
        f.write_all(value.as_bytes()).map_err(|e| io("memfd", &e))?;
        secret_fds.push((flag, OwnedFd::from(f)));
    }
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--socket={}", socket.display())).args(args);
    for (flag, fd) in &secret_fds {
        cmd.arg(format!("--{flag}=file:/proc/self/fd/{}", fd.as_raw_fd()));
    }
    cmd.args(&locators);
    let interactive = args.first().is_some_and(|a| a == "up") && secrets.is_empty();
    let out = output.try_clone().map_err(|e| io("dup", &e))?;
    let err = output.try_clone().map_err(|e| io("dup", &e))?;
    cmd.stdin(Stdio::null()).process_group(0);
    if interactive {
        // Let the login URL reach the container's log as the CLI prints it.
        cmd.stdout(Stdio::from(err)).stderr(Stdio::inherit());
        drop(out);
    } else {
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    }
    for var in SECRET_VARS {
        cmd.env_remove(var);
    }
    crate::sys::prepare_child(&mut cmd, init.background_child());
    let shown = args.first().cloned().unwrap_or_default();
    let pid = init
        .spawn(&mut cmd)
        .map_err(|e| io(&format!("cannot run tailscale {shown}"), &e))?;
    Ok(Run {
        pid,
        shown,
        output,
        deadline: Instant::now() + limit,
        limit,
    })
}

impl Run {
    /// How the call ended, once it has (a call past its deadline is killed).
    pub fn poll(&mut self, init: &mut Init) -> Option<Ended> {
        let Some(exit) = init.take_exit(self.pid) else {
            if Instant::now() >= self.deadline {
                crate::sys::kill(self.pid, libc::SIGKILL).ok();
                return Some(Ended::TimedOut(self.limit));
            }
            return None;
        };
        let mut text = String::new();
        if self.output.rewind().is_ok() {
            self.output.read_to_string(&mut text).ok();
        }
        Some(match exit {
            Exit::Code(0) => Ended::Ok(text),
            _ => Ended::Failed(exit, cli_error(&text)),
        })
    }

    /// Waits for the end on the calling thread (at shutdown, when nothing else runs).
    pub fn wait(mut self, init: &mut Init) -> Ended {
        loop {
            if let Some(ended) = self.poll(init) {
                return ended;
            }
            if init.pump(Some(self.deadline), &[]) == Woke::Deadline {
                continue;
            }
        }
    }
}

impl Ended {
    /// The failure's message, e.g. "tailscale up failed (exit code 1): why".
    pub fn failure(&self, shown: &str) -> Option<String> {
        match self {
            Ended::Ok(_) => None,
            Ended::Failed(exit, why) => {
                let sep = if why.is_empty() { "" } else { ": " };
                Some(format!(
                    "tailscale {shown} failed ({}){sep}{why}",
                    crate::init::describe(*exit)
                ))
            }
            Ended::TimedOut(limit) => Some(format!(
                "tailscale {shown} did not finish within {}",
                duration::format(*limit)
            )),
        }
    }
}

/// The line of a failed CLI call's output that says what went wrong: the first one when
/// the CLI printed its usage after it (a flag it refused), else the last one.
pub fn cli_error(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = match lines.contains(&"USAGE") {
        true => lines.first(),
        false => lines.last(),
    };
    line.copied().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::cli_error;

    #[test]
    fn the_cli_error_is_the_line_that_says_what_is_wrong() {
        let usage = "flag provided but not defined: -foo\nConnect to Tailscale\n\nUSAGE\n  \
                     tailscale up [flags]\n  --timeout value\n    \tmaximum time\n";
        assert_eq!(cli_error(usage), "flag provided but not defined: -foo");
        assert_eq!(
            cli_error("some progress\nbackend error: invalid key\n"),
            "backend error: invalid key"
        );
        assert_eq!(cli_error(""), "");
    }
}
