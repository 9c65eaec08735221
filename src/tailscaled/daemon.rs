//! tailscaled as a process: its arguments, starting it (socket directory, stale socket,
//! the mode note for `tsinit status`), and passing its log on while keeping its last
//! lines for error messages.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use log::{debug, log, warn};

use crate::bringup::identity::SECRET_VARS;
use crate::config;
use crate::init::Init;

/// How many of tailscaled's last log lines are kept to explain a failure.
const TAIL_LINES: usize = 20;

/// The file, beside the LocalAPI socket, where tsinit notes the networking mode and why.
pub fn mode_file(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join("tsinit.mode")
}

/// A running tailscaled.
pub struct Daemon {
    pub pid: i32,
    /// Its last log lines (shared with the thread that passes its log on).
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Set (and notified) once that thread has read the end of the log.
    log_end: Arc<(Mutex<bool>, Condvar)>,
    /// SIGKILL was sent (it did not answer in time): its exit is awaited.
    pub killed: bool,
}

impl Daemon {
    /// Its last log lines, indented, for an error message; once it has exited, waiting up
    /// to `wait` for the rest of its log (the thread passing it on may lag behind).
    pub fn last_lines(&self, wait: Duration) -> String {
        let (ended, notify) = &*self.log_end;
        if let Ok(ended) = ended.lock() {
            notify.wait_timeout_while(ended, wait, |ended| !*ended).ok();
        }
        let tail = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        if tail.is_empty() {
            return "(it logged nothing)".to_string();
        }
        tail.iter()
            .map(|l| format!("  tailscaled: {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// tailscaled's arguments.
pub fn tailscaled_args(t: &config::Tailscale, userspace: bool) -> Vec<String> {
    let mut args = vec![
        format!("--statedir={}", t.state_dir.display()),
        format!("--socket={}", t.socket.display()),
    ];
    if userspace {
        args.push("--tun=userspace-networking".to_string());
        args.push(format!("--socks5-server={}", t.socks5_server));
        args.push(format!("--outbound-http-proxy-listen={}", t.http_proxy));
    }
    args.extend(t.tailscaled_args.iter().cloned());
    args
}

/// Starts `binary` as tailscaled for `cfg`, reaped by `init`. A socket left by a killed
/// tailscaled is removed first; one something answers on is refused.
pub fn spawn(
    init: &mut Init,
    binary: &Path,
    cfg: &config::Tailscale,
    userspace: bool,
    mode_note: &str,
) -> Result<Daemon, String> {
    let failed =
        |what: &str, e: std::io::Error| format!("cannot {what}: {}", crate::error::os_message(&e));
    if let Some(dir) = cfg.socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| failed(&format!("create {}", dir.display()), e))?;
    }
    if let Err(e) = std::fs::write(mode_file(&cfg.socket), format!("{mode_note}\n")) {
        debug!("cannot note the networking mode for `tsinit status`: {e}");
    }
    // A socket left by a tailscaled that was killed answers nothing; one that answers
    // belongs to a daemon tsinit did not start.
    super::prepare::refuse_live_socket(&cfg.socket).map_err(|e| e.to_string())?;
    if std::fs::symlink_metadata(&cfg.socket).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&cfg.socket).map_err(|e| failed("remove the stale socket", e))?;
    }
    let args = tailscaled_args(cfg, userspace);
    debug!("starting {} {}", binary.display(), args.join(" "));
    let mut cmd = Command::new(binary);
    cmd.args(&args)
        .env("TS_LOGS_DIR", &cfg.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    for var in SECRET_VARS {
        cmd.env_remove(var);
    }
    crate::sys::prepare_child(&mut cmd, init.background_child());
    let mut child = cmd.spawn().map_err(|e| failed("start tailscaled", e))?;
    let pid = child.id() as i32;
    init.adopt(pid);
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let log_end = Arc::new((Mutex::new(false), Condvar::new()));
    let log_ended = log_end.clone();
    if let Some(stderr) = child.stderr.take() {
        let sink = match &cfg.log_file {
            None => LogSink::Log(cfg.log_level),
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => LogSink::File(file),
                Err(e) => {
                    warn!(
                        "cannot open tailscale.log_file {}: {}; passing tailscaled's log on instead",
                        path.display(),
                        crate::error::os_message(&e)
                    );
                    LogSink::Log(cfg.log_level)
                }
            },
        };
        forward_log(stderr, tail.clone(), sink, log_ended);
    }
    Ok(Daemon {
        pid,
        tail,
        log_end,
        killed: false,
    })
}

/// Where tailscaled's log lines go.
enum LogSink {
    /// tsinit's log, at this level, prefixed "tailscaled:".
    Log(log::LevelFilter),
    File(File),
}

/// Passes tailscaled's stderr on line by line, keeping the last lines for error messages.
fn forward_log(
    stderr: impl Read + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
    mut sink: LogSink,
    ended: Arc<(Mutex<bool>, Condvar)>,
) {
    let unread = ended.clone();
    let spawned = std::thread::Builder::new()
        .name("tailscaled-log".to_string())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                // Bytes, not UTF-8 lines: tailscaled prints interface names and other
                // outside text as it gets them, and one bad byte must not end its log.
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                let text = String::from_utf8_lossy(&raw);
                let line = text.trim_end_matches(['\n', '\r']).to_string();
                match &mut sink {
                    LogSink::Log(level) => {
                        if let Some(level) = level.to_level() {
                            log!(target: "tailscaled", level, "{line}");
                        }
                    }
                    LogSink::File(file) => {
                        writeln!(file, "{}", crate::logging::redact(&line)).ok();
                    }
                }
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
            if let Ok(mut end) = ended.0.lock() {
                *end = true;
            }
            ended.1.notify_all();
        });
    if let Err(e) = spawned {
        // Nothing will be read: nobody waits for the end of the log.
        if let Ok(mut end) = unread.0.lock() {
            *end = true;
        }
        warn!("cannot start the thread that passes on tailscaled's log: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::tailscaled_args;
    use crate::config::Config;

    #[test]
    fn arguments_for_each_mode() {
        let mut t = Config::default().tailscale;
        t.tailscaled_args = vec!["--no-logs-no-support".into()];
        assert_eq!(
            tailscaled_args(&t, false),
            [
                "--statedir=/var/lib/tailscale",
                "--socket=/var/run/tailscale/tailscaled.sock",
                "--no-logs-no-support"
            ]
        );
        assert_eq!(
            tailscaled_args(&t, true),
            [
                "--statedir=/var/lib/tailscale",
                "--socket=/var/run/tailscale/tailscaled.sock",
                "--tun=userspace-networking",
                "--socks5-server=localhost:1055",
                "--outbound-http-proxy-listen=localhost:1056",
                "--no-logs-no-support"
            ]
        );
    }
}
