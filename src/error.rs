//! tsinit's own failures, their messages, and the exit status each one gives.

use std::ffi::OsString;
use std::fmt;
use std::io;

use crate::config::ConfigError;

/// The command line cannot be used (no PROGRAM, unknown option).
pub const EXIT_USAGE: i32 = 2;
/// The configuration (file or TSINIT_* variable) is invalid.
pub const EXIT_CONFIG: i32 = 78;
/// The tailnet cannot be brought up (kernel networking required but unavailable,
/// tailscaled or `tailscale up` failed with on_failure = "exit", a bad auth key).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// tsinit itself could not set up (e.g. signal handling) before starting the workload.
pub const EXIT_SETUP: i32 = 125;
/// PROGRAM exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// PROGRAM was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Everything that makes tsinit give up before the workload starts. Printed once, in main.
#[derive(Debug)]
pub enum Error {
    Usage(String),
    Config(ConfigError),
    Unavailable(String),
    Setup {
        what: &'static str,
        source: io::Error,
    },
    Spawn {
        program: OsString,
        source: io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Config(_) => EXIT_CONFIG,
            Error::Unavailable(_) => EXIT_UNAVAILABLE,
            Error::Setup { .. } => EXIT_SETUP,
            Error::Spawn { source, .. } => match source.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => EXIT_NOT_FOUND,
                _ => EXIT_NOT_EXECUTABLE,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(msg) => f.write_str(msg),
            Error::Config(e) => write!(f, "bad configuration: {e}"),
            Error::Unavailable(msg) => f.write_str(msg),
            Error::Setup { what, source } => write!(f, "cannot {what}: {}", os_message(source)),
            Error::Spawn { program, source } => {
                let program = program.to_string_lossy();
                let hint = match source.raw_os_error() {
                    Some(libc::ENOENT) if program.contains('/') => {
                        " (if it is a script, check the interpreter on its #! line exists)"
                    }
                    Some(libc::ENOENT) => " (not found in PATH)",
                    Some(libc::EACCES) => " (is it a directory, or missing the executable bit?)",
                    Some(libc::ENOEXEC) => {
                        " (a script without a #! line, or a binary for another machine?)"
                    }
                    _ => "",
                };
                write!(f, "cannot run `{program}`: {}{hint}", os_message(source))
            }
        }
    }
}

/// An OS error's text without Rust's " (os error N)" suffix.
pub fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Setup { source, .. } | Error::Spawn { source, .. } => Some(source),
            Error::Config(e) => Some(e),
            Error::Usage(_) | Error::Unavailable(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_map_to_shell_conventions() {
        let spawn = |errno, program: &str| Error::Spawn {
            program: program.into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(spawn(libc::ENOENT, "nope").exit_code(), 127);
        assert_eq!(spawn(libc::ENOTDIR, "/etc/passwd/x").exit_code(), 127);
        assert_eq!(spawn(libc::EACCES, "/etc/passwd").exit_code(), 126);
        assert_eq!(spawn(libc::ENOEXEC, "/x").exit_code(), 126);
        let msg = spawn(libc::ENOENT, "nope").to_string();
        assert_eq!(
            msg,
            "cannot run `nope`: No such file or directory (not found in PATH)"
        );
        assert!(msg.ends_with("(not found in PATH)"), "{msg}");
    }
}
