//! tailscaled as a supervised service: choosing kernel or userspace networking, starting
//! it, waiting until its LocalAPI answers, bringing its settings in step with `tailscale
//! up`/`set`, restarting it with backoff when it dies, and stopping it last.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, log, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::config::{self, Config, Enabled, Networking};
use crate::duration;
use crate::error::Error;
use crate::init::{Init, Service, Woke, describe};
use crate::localapi::{LocalApi, PendingRequest, Status};
use crate::preflight;
use crate::sys::Exit;
use crate::tailscale::{self, AuthKey, Current, Desired, Plan};

/// ipn.State names by number (ipn/backend.go).
const STATES: [&str; 7] = [
    "NoState",
    "InUseOtherUser",
    "NeedsLogin",
    "NeedsMachineAuth",
    "Stopped",
    "Starting",
    "Running",
];

/// Whether DNS name `name` is the one control gives a node with hostname label `label`:
/// `label.<tailnet>.`, or `label-N.<tailnet>.` when another machine has the name.
fn named_after(name: &str, label: &str) -> bool {
    let first = name.split('.').next().unwrap_or_default();
    first == label
        || first.strip_prefix(label).is_some_and(|rest| {
            rest.strip_prefix('-')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// How long a bring-up that renamed the node waits for control's new DNS name.
const RENAME_WAIT: Duration = Duration::from_secs(10);

/// The node capability control grants where Tailscale SSH is enabled.
const SSH_CAPABILITY: &str = "https://tailscale.com/cap/ssh";

/// How many of tailscaled's last log lines are kept to explain a failure.
const TAIL_LINES: usize = 20;
/// The longest wait between two restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Ends a thread that follows the IPN bus for a waiter once the waiter is done (or
/// gives up): the thread registers its bus connection, and the waiter's guard shuts it
/// down when dropped, so no thread (and no watcher inside tailscaled) is left behind.
#[derive(Clone, Default)]
struct Abandon(Arc<Mutex<(bool, Option<std::os::unix::net::UnixStream>)>>);

impl Abandon {
    /// From the thread: keep a handle on `stream`; false if the waiter is gone already.
    fn register(&self, stream: &std::os::unix::net::UnixStream) -> bool {
        let Ok(mut slot) = self.0.lock() else {
            return false;
        };
        if slot.0 {
            return false;
        }
        slot.1 = stream.try_clone().ok();
        true
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Ok(mut slot) = (self.0).0.lock() {
            slot.0 = true;
            if let Some(stream) = slot.1.take() {
                stream.shutdown(std::net::Shutdown::Both).ok();
            }
        }
    }
}

/// The waiter's side of [`Abandon`].
struct AbandonOnDrop(Abandon);

/// Work for a waiting thread to do on each event until it reports done.
type Meanwhile = Box<dyn FnMut() -> bool + Send>;

/// Why the bring-up did not finish.
#[derive(Debug)]
pub enum BringupError {
    /// A stop signal arrived before the workload started.
    Stop(c_int),
    /// The workload exited while tsinit was busy with tailscaled.
    WorkloadExited,
    /// tailscaled or `tailscale up` failed; the message says why.
    Failed(String),
}

struct Daemon {
    pid: i32,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    fn last_lines(&self) -> String {
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

/// tailscaled and everything tsinit needs to run it.
pub struct Tailnet {
    /// The state directory's lock, held until tsinit exits.
    _lock: nix::fcntl::Flock<File>,
    tailscaled: PathBuf,
    tailscale: PathBuf,
    cfg: config::Tailscale,
    userspace: bool,
    /// "kernel", or "userspace" and why; `tsinit status` shows it.
    mode_note: String,
    desired: Desired,
    key: Option<AuthKey>,
    /// `--client-secret`/`--id-token` from the extra `up` arguments.
    secrets: Vec<tailscale::SecretArg>,
    grace: Duration,
    daemon: Option<Daemon>,
    retry_at: Option<Instant>,
    failures: u32,
    /// Set while stopping: CLI calls then run to the end whatever else happens.
    stopping: bool,
    hosts: Option<HostsSync>,
    /// Whether this bring-up has written the hosts block already.
    hosts_synced: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this bring-up changed the node's hostname (its DNS name follows once
    /// control answers).
    renamed: bool,
    /// Whether the workload has been started (the hosts watcher runs from then on).
    workload_started: bool,
    /// Watches the serve config file's directory once the workload runs: a change is
    /// applied at once, as the official image does.
    serve_watch: Option<Inotify>,
    serve: ServeSetup,
}

/// What tsinit serves on the node's tailnet addresses (see `serve`).
struct ServeSetup {
    entries: Vec<crate::serve::Entry>,
    ports: Vec<u16>,
    /// The ServeConfig file (TS_SERVE_CONFIG): checked at start-up, read again at each
    /// bring-up.
    file: Option<PathBuf>,
    /// Where tsinit remembers what it set, beside tailscaled's state.
    record: PathBuf,
}

/// Reads a ServeConfig file, `${TS_CERT_DOMAIN}` replaced by `domain`.
fn read_serve_file(path: &Path, domain: &str) -> Result<crate::serve::Fragment, String> {
    let text = config::read_small_file(path)?;
    let expanded = crate::serve::expand_cert_domain(&text, domain);
    let value: serde_json::Value =
        serde_json::from_str(&expanded).map_err(|e| format!("not JSON: {e}"))?;
    crate::serve::Fragment::from_json(&value)
}

impl ServeSetup {
    fn from_config(config: &Config) -> Result<ServeSetup, Error> {
        let file = match &config.serve_config {
            None => None,
            Some(path) => {
                let bad = |why: String| {
                    Error::Config(config::ConfigError {
                        origin: path.display().to_string(),
                        message: format!(
                            "serve_config (TS_SERVE_CONFIG): {why}; fix the file or unset \
                             the setting"
                        ),
                    })
                };
                // Checked now with a stand-in name, so a bad file stops tsinit before
                // anything starts.
                let fragment = read_serve_file(path, "node.example").map_err(bad)?;
                for port in fragment.ports() {
                    if config.serve.iter().any(|e| e.port == port)
                        || config.serve_ports.contains(&port)
                    {
                        return Err(bad(format!(
                            "port {port} is served by the file and by [[serve]] or \
                             serve_ports: keep one"
                        )));
                    }
                }
                Some(path.clone())
            }
        };
        Ok(ServeSetup {
            entries: config.serve.clone(),
            ports: config.serve_ports.clone(),
            file,
            record: config.tailscale.state_dir.join("tsinit-serve.json"),
        })
    }

    fn configured(&self) -> bool {
        !self.entries.is_empty() || !self.ports.is_empty() || self.file.is_some()
    }

    /// What tsinit set last time ({} when nothing or unreadable).
    fn previous(&self) -> crate::serve::Fragment {
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return crate::serve::Fragment::default();
        };
        serde_json::from_str(&text)
            .map_err(|e| e.to_string())
            .and_then(|v| crate::serve::Fragment::from_json(&v))
            .unwrap_or_else(|e| {
                warn!(
                    "ignoring {} ({e}): entries tsinit served before and no longer \
                     configured stay served",
                    self.record.display()
                );
                crate::serve::Fragment::default()
            })
    }

    fn remember(&self, applied: &crate::serve::Fragment) -> std::io::Result<()> {
        if applied.is_empty() {
            return match std::fs::remove_file(&self.record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.record.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(applied.to_json().to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.record)
    }
}

/// Decides whether and how tailscaled runs: finds the binaries, runs the preflight checks,
/// picks kernel or userspace networking, finds the auth key. `Ok(None)`: no tailscale,
/// tsinit is a plain init. Errors are for problems the user must fix first.
pub fn prepare(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Tailnet>, Error> {
    let t = &config.tailscale;
    if t.enabled == Enabled::No {
        debug!("tailscale.enabled = false: running as a plain init");
        return Ok(None);
    }
    if env("RELEASE_COMMAND").is_some_and(|v| !v.is_empty()) && t.enabled == Enabled::Auto {
        // Fly's release machines have no volumes: a login there would register a new
        // node on every deploy.
        info!("RELEASE_COMMAND is set (a release machine): not starting tailscale");
        return Ok(None);
    }
    let path_env = env("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
    let found = |configured: &Option<PathBuf>, name: &str| {
        configured
            .clone()
            .or_else(|| preflight::find_in_path(name, &path_env))
    };
    let configured = t.tailscaled.is_some() || t.tailscale.is_some();
    if t.enabled == Enabled::Auto
        && !configured
        && (found(&t.tailscaled, "tailscaled").is_none()
            || found(&t.tailscale, "tailscale").is_none())
    {
        // Checked before preflight, which would create the state dir or /dev/net/tun.
        info!("tailscaled not found in PATH: running as a plain init");
        return Ok(None);
    }
    let hostname = system_hostname();
    let may_mknod = config.networking != Networking::Userspace;
    let report = run_preflight(config, may_mknod, &path_env, &hostname);
    let (Some(tailscaled), Some(tailscale)) = (report.tailscaled.clone(), report.tailscale.clone())
    else {
        return Err(Error::Unavailable(format!(
            "tailscaled and tailscale are needed but not found ({}); install them, set \
             tailscale.tailscaled/tailscale.tailscale, or set tailscale.enabled = false",
            problems(&report, &["binaries"])
        )));
    };
    for check in &report.checks {
        match check.outcome {
            preflight::Outcome::Warn => warn!("{}{}", check.detail, fix_suffix(check)),
            preflight::Outcome::Ok => debug!("preflight {}: {}", check.name, check.detail),
            preflight::Outcome::Fail => debug!("preflight {} failed: {}", check.name, check.detail),
        }
    }
    if report
        .checks
        .iter()
        .any(|c| c.name == "state_dir" && c.outcome == preflight::Outcome::Fail)
    {
        return Err(Error::Unavailable(problems(&report, &["state_dir"])));
    }
    let kernel_problems = report.kernel_problems();
    let (userspace, mode_note) = match (config.networking, &kernel_problems) {
        (Networking::Userspace, _) => (true, "userspace (networking = \"userspace\")".to_string()),
        (_, None) => (false, "kernel".to_string()),
        (Networking::Kernel, Some(why)) => {
            return Err(Error::Unavailable(format!(
                "networking = \"kernel\" but this container cannot do kernel networking: {why}; \
                 or set networking = \"auto\" to fall back to userspace networking"
            )));
        }
        (Networking::Auto, Some(why)) => {
            userspace_banner(why, t);
            (
                true,
                format!("userspace (kernel networking unavailable: {why})"),
            )
        }
    };
    let desired = Desired::from_config(config, &tailscale::default_hostname(&hostname, env));
    let serve = ServeSetup::from_config(config)?;
    if !serve.ports.is_empty() && !userspace {
        info!(
            "serve_ports {:?}: kernel networking, so peers reach these ports directly; \
             nothing to serve",
            serve.ports
        );
    }
    if desired.ssh && userspace {
        info!(
            "Tailscale SSH with userspace networking: tailscaled answers port 22 of the \
             node's tailnet addresses itself, so peers reach it as in kernel mode; programs \
             run in an SSH session reach other tailnet nodes only through the proxy \
             (ALL_PROXY), not directly"
        );
    }
    let extra_key = t.up_secrets.iter().rfind(|s| s.flag == "auth-key");
    let key = tailscale::auth_key(
        t.auth_key_file.as_deref(),
        env,
        extra_key,
        Path::new(tailscale::SECRET_FILE),
    )
    .map_err(|message| {
        Error::Config(config::ConfigError {
            origin: "auth key".to_string(),
            message,
        })
    })?;
    if let Some(key) = &key {
        tailscale::check_key(key, &desired).map_err(Error::Unavailable)?;
        debug!("auth key from {}", key.source);
    }
    if config.hosts.enabled {
        check_hosts_path(&config.hosts.path)?;
    }
    let lock = lock_state_dir(&t.state_dir, &hostname)?;
    refuse_live_socket(&t.socket)?;
    Ok(Some(Tailnet {
        _lock: lock,
        tailscaled,
        tailscale,
        secrets: t
            .up_secrets
            .iter()
            .filter(|s| s.flag != "auth-key")
            .cloned()
            .collect(),
        cfg: t.clone(),
        userspace,
        mode_note,
        desired,
        key,
        grace: config.grace_period,
        daemon: None,
        retry_at: None,
        failures: 0,
        stopping: false,
        hosts: match config.hosts.enabled {
            true => HostsSync::start(&config.hosts, &t.socket),
            false => None,
        },
        hosts_synced: Arc::default(),
        renamed: false,
        workload_started: false,
        serve_watch: None,
        serve,
    }))
}

/// The file in the state directory that tsinit holds locked while it runs.
pub const LOCK_FILE: &str = "tsinit.lock";

/// Locks the state directory for this tsinit's lifetime: a second tsinit (a second
/// replica on the same volume, an old container still running) would otherwise start a
/// second tailscaled with the same node key. The lock file names its holder.
fn lock_state_dir(dir: &Path, hostname: &str) -> Result<nix::fcntl::Flock<File>, Error> {
    use nix::fcntl::{Flock, FlockArg};
    let path = dir.join(LOCK_FILE);
    let failed = |e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("cannot lock {}: {e}", path.display()))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| failed(&crate::error::os_message(&e)))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            return Err(Error::Unavailable(format!(
                "another tsinit/tailscaled uses {}: {}; stop it first, or give this one a \
                 state directory of its own (tailscale.state_dir, TS_STATE_DIR): two \
                 tailscaled on one state would share one node key",
                dir.display(),
                if holder.is_empty() {
                    "its pid is not known"
                } else {
                    holder
                }
            )));
        }
        Err((_, e)) => return Err(failed(&e)),
    };
    let me = format!("pid {} in {hostname}\n", std::process::id());
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|_| lock.write_all(me.as_bytes()));
    if let Err(e) = written {
        debug!("cannot note tsinit's pid in {}: {e}", path.display());
    }
    Ok(lock)
}

/// Refuses to start when a daemon answers on the LocalAPI socket already (one not
/// started by a tsinit, which would hold the lock): only a socket nobody answers on is
/// stale and may be removed.
fn refuse_live_socket(socket: &Path) -> Result<(), Error> {
    let is_socket = std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Error::Unavailable(format!(
            "a tailscaled already answers on {}: stop it first, or give tsinit another \
             socket (tailscale.socket, TS_SOCKET)",
            socket.display()
        )));
    }
    Ok(())
}

/// Refuses a hosts file that is not a regular file (after symlinks): reading a FIFO
/// would block, a device has no block to keep. A missing file is only warned about later.
fn check_hosts_path(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(Error::Config(config::ConfigError {
            origin: format!("hosts.path = {:?}", path.display().to_string()),
            message: "it is not a regular file; point hosts.path (TSINIT_HOSTS_PATH) at the \
                      hosts file, or set hosts.enabled = false"
                .to_string(),
        })),
        _ => Ok(()),
    }
}

/// The preflight checks for `config` on this machine; `may_mknod`: create a missing
/// /dev/net/tun.
pub fn run_preflight(
    config: &Config,
    may_mknod: bool,
    path_env: &str,
    hostname: &str,
) -> preflight::Report {
    let t = &config.tailscale;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    preflight::run(&preflight::Inputs {
        tun_path: Path::new(preflight::TUN_PATH),
        may_mknod,
        state_dir: &t.state_dir,
        mountinfo: &mountinfo,
        hostname,
        tailscaled: t.tailscaled.as_deref(),
        tailscale: t.tailscale.as_deref(),
        path_env,
    })
}

fn fix_suffix(check: &preflight::Check) -> String {
    check
        .fix
        .as_ref()
        .map(|f| format!(" (fix: {f})"))
        .unwrap_or_default()
}

fn problems(report: &preflight::Report, names: &[&str]) -> String {
    report
        .checks
        .iter()
        .filter(|c| names.contains(&c.name) && c.outcome == preflight::Outcome::Fail)
        .map(|c| format!("{}{}", c.detail, fix_suffix(c)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn userspace_banner(why: &str, t: &config::Tailscale) {
    let rule = "-".repeat(72);
    warn!(
        "{rule}\n\
         tsinit: warning: kernel networking is not available here, so tailscaled runs in\n\
         tsinit: warning: USERSPACE networking mode. Why: {why}\n\
         tsinit: warning: The workload reaches the tailnet only through the SOCKS5 proxy\n\
         tsinit: warning: ALL_PROXY=socks5h://{} (set for it), and no tailscale0 exists.\n\
         tsinit: warning: For kernel mode, apply the fixes above; to choose userspace and\n\
         tsinit: warning: silence this, set networking = \"userspace\" (TSINIT_NETWORKING).\n\
         tsinit: warning: {rule}",
        t.socks5_server
    );
}

/// The container's hostname.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
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

impl Tailnet {
    /// What the workload's environment gets: TS_SOCKET, the proxy variables in userspace
    /// mode; the auth key variables are removed.
    pub fn workload_env(&self) -> Vec<(String, Option<String>)> {
        let mut env = vec![(
            "TS_SOCKET".to_string(),
            Some(self.cfg.socket.display().to_string()),
        )];
        if self.userspace {
            let socks = format!("socks5h://{}", self.cfg.socks5_server);
            env.push(("ALL_PROXY".to_string(), Some(socks.clone())));
            env.push(("all_proxy".to_string(), Some(socks)));
            if self.cfg.export_proxy_env {
                let http = format!("http://{}", self.cfg.http_proxy);
                for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    env.push((var.to_string(), Some(http.clone())));
                }
            }
        }
        env
    }

    /// Whether tsinit holds a secret for tailscale (an auth key, a client secret...).
    pub fn holds_secret(&self) -> bool {
        self.key.is_some() || !self.secrets.is_empty()
    }

    /// Whether the workload keeps CAP_NET_ADMIN/CAP_NET_RAW.
    pub fn keep_caps(&self) -> bool {
        self.cfg.keep_caps
    }

    /// Starts tailscaled, waits until it answers, and brings its settings in step.
    pub fn start(&mut self, init: &mut Init) -> Result<(), BringupError> {
        let deadline = Instant::now() + self.cfg.boot_timeout;
        self.hosts_synced.store(false, Ordering::Relaxed);
        self.renamed = false;
        if self.daemon.is_none() {
            self.spawn(init)?;
        }
        let mut status = self.wait_ready(init, deadline)?;
        self.check_state_store(&status)?;
        let mut prefs = None;
        if status.backend_state == "NoState" {
            // Answering already, but not started: a saved login would look like none.
            // Its prefs are loaded by now, though: with a saved login it is starting;
            // otherwise wait for the real state.
            let p = self.prefs()?;
            status.backend_state = if p.saved_login() {
                debug!("tailscaled has a saved login (state still NoState): Starting");
                "Starting".to_string()
            } else {
                let limit = ("tailscale.boot_timeout", self.cfg.boot_timeout);
                self.wait_for_state(init, deadline, limit, true, |s| s != 0, None)?
            };
            prefs = Some(p);
        }
        let starting = status.backend_state == "Starting";
        let mut result = self.converge(init, status, prefs);
        if result.is_ok() && starting {
            // A resumed login: the workload starts once the node is Running (or the
            // reason it is not is known). Leaving Starting always comes with a State
            // event, so no status reads between events. Meanwhile the waiting thread
            // writes the hosts block as soon as the netmap is in (not once the workload
            // runs: the hosts watcher keeps the block then), so that is done by Running.
            let meanwhile = match (&self.hosts, self.workload_started) {
                (Some(h), false) => {
                    let sync = h.syncer();
                    let done = self.hosts_synced.clone();
                    Some(Box::new(move || {
                        let ok = sync();
                        done.store(ok, Ordering::Relaxed);
                        ok
                    }) as Meanwhile)
                }
                _ => None,
            };
            let until = Instant::now() + self.cfg.up_timeout;
            let left_starting = |s| s != 0 && s != 5;
            let limit = ("tailscale.up_timeout", self.cfg.up_timeout);
            result = match self.wait_for_state(init, until, limit, false, left_starting, meanwhile)
            {
                Ok(state) if state == "Running" => Ok(()),
                Ok(state) => Err(BringupError::Failed(format!(
                    "tailscaled went from Starting to {state}: {}",
                    self.api()
                        .status()
                        .map(|s| s.health.join("; "))
                        .unwrap_or_default()
                ))),
                Err(e) => Err(e),
            };
        }
        if result.is_err() {
            // Written while Starting, but it did not last.
            self.hosts_synced.store(false, Ordering::Relaxed);
        }
        result?;
        if self.renamed && self.serve.configured() {
            // Served web names are the node's DNS name: wait until control has named
            // the node after its new hostname (returns at once if it has).
            let label = tailscale::dns_label(&self.desired.hostname);
            let until = Instant::now() + RENAME_WAIT;
            let renamed = self.wait_for_status(init, until, move |s| {
                s.self_
                    .as_ref()
                    .is_some_and(|me| named_after(&me.dns_name, &label))
            })?;
            if !renamed {
                warn!(
                    "serve: control did not rename the node within {}; serving under its \
                     current name",
                    duration::format(RENAME_WAIT)
                );
            }
        }
        Ok(())
    }

    /// After the node is Running: serve and SSH. Failures here are the bring-up's before
    /// the workload starts; after that (a tailscaled restart) they are warnings, since
    /// tailscaled itself is fine.
    pub fn finish(&mut self) -> Result<(), BringupError> {
        let served = self.apply_serve();
        self.check_ssh()?;
        served
    }

    /// Waits (until `deadline`) for tailscaled's status to satisfy `done`, read at once
    /// and again on every IPN bus event; Ok(false) when the deadline passed.
    fn wait_for_status(
        &mut self,
        init: &mut Init,
        deadline: Instant,
        done: impl Fn(&Status) -> bool + Send + 'static,
    ) -> Result<bool, BringupError> {
        let socket = self.cfg.socket.clone();
        let met = self.wait_on_thread(init, deadline, "status", move |abandon| {
            let api = LocalApi::new(&socket, Some(Duration::from_secs(5)));
            let check = || api.status().is_ok_and(|s| done(&s));
            let mut met = check();
            if !met
                && let Ok(bus) = LocalApi::new(&socket, None).watch_ipn_bus(0)
                && abandon.register(bus.stream())
            {
                for event in bus {
                    if event.is_err() {
                        break;
                    }
                    if check() {
                        met = true;
                        break;
                    }
                }
            }
            u8::from(met)
        })?;
        Ok(met == Some(1))
    }

    /// Runs `work` on a thread of its own that follows the IPN bus, and waits for the
    /// byte it returns while the main loop handles signals and tailscaled's exit; `None`
    /// when `deadline` passed. The bus connection the thread registers with its
    /// [`Abandon`] is shut down on return, so the thread ends then too.
    fn wait_on_thread(
        &mut self,
        init: &mut Init,
        deadline: Instant,
        what: &str,
        work: impl FnOnce(&Abandon) -> u8 + Send + 'static,
    ) -> Result<Option<u8>, BringupError> {
        let (wake_tx, wake_rx) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| BringupError::Failed(format!("socketpair: {e}")))?;
        let abandon = Abandon::default();
        let _stop = AbandonOnDrop(abandon.clone());
        std::thread::Builder::new()
            .name(what.to_string())
            .spawn(move || {
                let byte = work(&abandon);
                (&wake_tx).write_all(&[byte]).ok();
            })
            .map_err(|e| BringupError::Failed(format!("cannot watch tailscaled's {what}: {e}")))?;
        loop {
            self.check_interrupts(init)?;
            match init.pump(Some(deadline), &[wake_rx.as_fd()]) {
                Woke::Ready(_) => break,
                Woke::Deadline if Instant::now() >= deadline => return Ok(None),
                Woke::Deadline | Woke::Handled => {}
            }
        }
        let mut byte = [255u8];
        (&wake_rx).read_exact(&mut byte).ok();
        Ok(Some(byte[0]))
    }

    /// With ssh = true: fails if control did not enable Tailscale SSH for this node (the
    /// prefs say RunSSH, but tailscaled serves no SSH without the capability).
    fn check_ssh(&self) -> Result<(), BringupError> {
        if !self.desired.ssh {
            return Ok(());
        }
        let status = self
            .api()
            .status()
            .map_err(|e| BringupError::Failed(format!("cannot read tailscale's status: {e}")))?;
        let has_cap = status
            .self_
            .as_ref()
            .is_some_and(|s| s.cap_map.contains_key(SSH_CAPABILITY));
        let run_ssh = self.prefs()?.run_ssh;
        if !run_ssh {
            return Err(BringupError::Failed(
                "ssh = true, but Tailscale SSH is off in tailscaled's prefs (see the \
                 warnings above)"
                    .to_string(),
            ));
        }
        if !has_cap {
            return Err(BringupError::Failed(
                "ssh = true, but this tailnet has not enabled Tailscale SSH for this node \
                 (control sent no ssh capability): add an \"ssh\" rule for it to the \
                 tailnet policy, or set ssh = false"
                    .to_string(),
            ));
        }
        info!("Tailscale SSH is on: peers reach port 22 as the tailnet's ssh rules allow");
        Ok(())
    }

    /// Brings tailscaled's serve config in step with the configuration: reads it, changes
    /// only what differs (see `serve::merge`), and remembers what tsinit manages. Makes
    /// no request at all when nothing is or was served by tsinit.
    fn apply_serve(&self) -> Result<(), BringupError> {
        let previous = self.serve.previous();
        if !self.serve.configured() && previous.is_empty() {
            return Ok(());
        }
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            BringupError::Failed(format!("serve: cannot {what}: {e}"))
        };
        // Once the workload runs this is done from the main loop (a file change, a
        // rename): short timeouts, so a stuck tailscaled holds up signals briefly.
        let api = match self.workload_started {
            true => LocalApi::new(&self.cfg.socket, Some(Duration::from_secs(2))),
            false => self.api(),
        };
        let status = api
            .status()
            .map_err(|e| failed("read tailscale's status", &e))?;
        let dns_name = status
            .self_
            .as_ref()
            .map(|s| s.dns_name.trim_end_matches('.').to_string())
            .unwrap_or_default();
        if dns_name.is_empty() && self.serve.configured() {
            return Err(BringupError::Failed(
                "serve: the node has no DNS name from control yet, so its web servers \
                 cannot be named"
                    .to_string(),
            ));
        }
        let file = match &self.serve.file {
            None => None,
            Some(path) => {
                let domain = status.cert_domains.first().unwrap_or(&dns_name);
                let fragment = read_serve_file(path, domain)
                    .map_err(|e| failed(&format!("read {}", path.display()), &e))?;
                Some(fragment)
            }
        };
        let desired = crate::serve::desired(
            &self.serve.entries,
            &self.serve.ports,
            self.userspace,
            file.as_ref(),
            &dns_name,
        );
        if status.cert_domains.is_empty() {
            for (port, proto) in crate::serve::needs_certificate(&desired) {
                warn!(
                    "serve: {proto} on port {port} needs a TLS certificate, but HTTPS is not \
                     enabled on this tailnet (no certificate domains): connections will \
                     fail until it is (admin console, DNS, HTTPS Certificates)"
                );
            }
        }
        // Twice at most: a change by someone else between our read and write is seen
        // as an ETag mismatch, and the merge is redone on the new config.
        for attempt in 0..2 {
            let (current, etag) = api
                .serve_config()
                .map_err(|e| failed("read the serve config", &e))?;
            let Some(next) = crate::serve::merge(&current, &previous, &desired) else {
                debug!("serve: nothing to change");
                break;
            };
            for key in crate::serve::taken_over(&current, &previous, &desired) {
                warn!("serve: {key} was served otherwise; the configuration takes it over");
            }
            match api.set_serve_config(&next, &etag) {
                Ok(()) => {
                    for line in crate::serve::changes(&current, &next) {
                        info!("serve: {line}");
                    }
                    break;
                }
                Err(crate::localapi::ApiError::Status { status: 412, .. }) if attempt == 0 => {
                    debug!("serve: the config changed meanwhile; merging again");
                }
                Err(e) => return Err(failed("set the serve config", &e)),
            }
        }
        if desired != previous
            && let Err(e) = self.serve.remember(&desired)
        {
            warn!(
                "serve: cannot write {}: {}; entries removed from the configuration \
                 later may stay served",
                self.serve.record.display(),
                crate::error::os_message(&e)
            );
        }
        Ok(())
    }

    /// Writes the hosts block once, on this thread: the workload finds the tailnet's
    /// names in place when it starts. (Unchanged blocks are not rewritten.)
    pub fn sync_hosts(&mut self) {
        if let Some(h) = &self.hosts
            && !self.hosts_synced.load(Ordering::Relaxed)
        {
            // Done only once the block lists this node: a status read before the netmap
            // came lists nothing.
            self.hosts_synced.store(h.sync_now(), Ordering::Relaxed);
        }
    }

    /// Starts following changes once the workload has started (or failed to), so it
    /// does not compete with the bring-up: the /etc/hosts watcher (re)connects to the
    /// IPN bus, and the serve config file is watched.
    pub fn follow_changes(&mut self) {
        self.workload_started = true;
        if let Some(h) = &self.hosts {
            h.connect();
        }
        if self.serve_watch.is_none()
            && let Some(path) = &self.serve.file
        {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            // Whole-file events only: an editor's close after writing, a rename into
            // place (also Kubernetes' swap of a mounted ConfigMap's `..data`).
            let flags = AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE;
            match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .and_then(|i| i.add_watch(dir, flags).map(|_| i))
            {
                Ok(watch) => self.serve_watch = Some(watch),
                Err(e) => warn!(
                    "cannot watch {} ({e}): changes to the serve config file apply at the \
                     next start",
                    dir.display()
                ),
            }
        }
    }

    /// Applies serve again while the workload runs when the serve config file changed
    /// or control renamed the node (web servers are named after it); if tailscaled is
    /// down, its next bring-up does it anyway.
    fn reapply_serve_if_needed(&mut self) {
        let file = self.serve_file_changed();
        let renamed = self.hosts.as_ref().is_some_and(HostsSync::take_renamed);
        if !(file || renamed) || self.daemon.is_none() || self.retry_at.is_some() {
            return;
        }
        if let Err(BringupError::Failed(why)) = self.apply_serve() {
            warn!("{why}");
        }
    }

    /// Whether the serve config file changed (reads the watch's pending events).
    fn serve_file_changed(&self) -> bool {
        let Some(watch) = &self.serve_watch else {
            return false;
        };
        // Only the file itself, or Kubernetes' `..data` link swapped under it.
        let name = self.serve.file.as_ref().and_then(|p| p.file_name());
        let mut changed = false;
        while let Ok(events) = watch.read_events() {
            if events.is_empty() {
                break;
            }
            changed |= events.iter().any(|e| {
                e.name
                    .as_deref()
                    .is_some_and(|n| Some(n) == name || n == "..data")
            });
        }
        changed
    }

    fn spawn(&mut self, init: &mut Init) -> Result<(), BringupError> {
        let failed = |what: &str, e: std::io::Error| {
            BringupError::Failed(format!("cannot {what}: {}", crate::error::os_message(&e)))
        };
        if let Some(dir) = self.cfg.socket.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| failed(&format!("create {}", dir.display()), e))?;
        }
        if let Some(dir) = self.cfg.socket.parent()
            && let Err(e) = std::fs::write(dir.join("tsinit.mode"), format!("{}\n", self.mode_note))
        {
            debug!("cannot note the networking mode for `tsinit status`: {e}");
        }
        // A socket left by a tailscaled that was killed answers nothing; one that
        // answers belongs to a daemon tsinit did not start.
        refuse_live_socket(&self.cfg.socket).map_err(|e| BringupError::Failed(e.to_string()))?;
        if std::fs::symlink_metadata(&self.cfg.socket).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&self.cfg.socket)
                .map_err(|e| failed("remove the stale socket", e))?;
        }
        let args = tailscaled_args(&self.cfg, self.userspace);
        debug!("starting {} {}", self.tailscaled.display(), args.join(" "));
        let mut cmd = Command::new(&self.tailscaled);
        cmd.args(&args)
            .env("TS_LOGS_DIR", &self.cfg.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        for var in tailscale::KEY_VARS {
            cmd.env_remove(var);
        }
        crate::sys::prepare_child(&mut cmd, init.background_child());
        let mut child = cmd.spawn().map_err(|e| failed("start tailscaled", e))?;
        let pid = child.id() as i32;
        init.adopt(pid);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        if let Some(stderr) = child.stderr.take() {
            let sink = match &self.cfg.log_file {
                None => LogSink::Log(self.cfg.log_level),
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
                        LogSink::Log(self.cfg.log_level)
                    }
                },
            };
            forward_log(stderr, tail.clone(), sink);
        }
        self.daemon = Some(Daemon { pid, tail });
        Ok(())
    }

    /// Waits for the first LocalAPI status answer: the socket's appearance is watched
    /// with inotify and the request is read when the socket is readable, so nothing
    /// polls; tailscaled's exit ends the wait at once.
    fn wait_ready(&mut self, init: &mut Init, deadline: Instant) -> Result<Status, BringupError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| BringupError::Failed(format!("inotify: {e}")))?;
        let result = self.wait_ready_with(init, deadline, &inotify);
        // Closing an inotify instance waits for the kernel's fsnotify clean-up (~10 ms
        // measured): a thread of its own does it, so the bring-up does not wait.
        if let Err(e) = std::thread::Builder::new()
            .name("close".to_string())
            .spawn(move || drop(inotify))
        {
            debug!("cannot start a thread to close the inotify instance: {e}");
        }
        result
    }

    fn wait_ready_with(
        &mut self,
        init: &mut Init,
        deadline: Instant,
        inotify: &Inotify,
    ) -> Result<Status, BringupError> {
        let started = Instant::now();
        let socket = self.cfg.socket.clone();
        let dir = socket.parent().unwrap_or(Path::new("/")).to_path_buf();
        inotify
            .add_watch(&dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            .map_err(|e| BringupError::Failed(format!("cannot watch {}: {e}", dir.display())))?;
        let mut pending: Option<PendingRequest> = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            self.check_interrupts(init)?;
            if pending.is_none()
                && retry_at.is_none_or(|at| at <= Instant::now())
                && socket.exists()
            {
                retry_at = None;
                match PendingRequest::start(&socket, "GET", "/localapi/v0/status", None) {
                    Ok(p) => pending = Some(p),
                    Err(e) => {
                        // The socket file appears at bind(), a moment before listen():
                        // no event marks that moment, so try again shortly.
                        debug!("tailscaled not listening yet: {e}");
                        retry_at = Some(Instant::now() + Duration::from_millis(1));
                    }
                }
            }
            let woke = {
                let mut fds = vec![inotify.as_fd()];
                if let Some(p) = &pending {
                    fds.push(p.fd());
                }
                let until = retry_at.map_or(deadline, |r| r.min(deadline));
                init.pump(Some(until), &fds)
            };
            match woke {
                Woke::Ready(0) => {
                    while let Ok(events) = inotify.read_events() {
                        if events.is_empty() {
                            break;
                        }
                    }
                }
                Woke::Ready(_) => {
                    let Some(p) = pending.as_mut() else { continue };
                    match p.on_readable() {
                        Ok(None) => {}
                        Ok(Some(resp)) if resp.status == 200 => {
                            let status: Status =
                                serde_json::from_slice(&resp.body).map_err(|e| {
                                    BringupError::Failed(format!(
                                        "tailscaled's status is not JSON: {e}"
                                    ))
                                })?;
                            debug!(
                                "tailscaled {} ready after {:?}: {}",
                                status.version,
                                started.elapsed(),
                                status.backend_state
                            );
                            return Ok(status);
                        }
                        Ok(Some(resp)) => {
                            debug!(
                                "tailscaled answered {}: {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body).trim()
                            );
                            pending = None;
                            retry_at = Some(Instant::now() + Duration::from_millis(100));
                        }
                        Err(e) => {
                            debug!("LocalAPI request failed: {e}");
                            pending = None;
                            retry_at = Some(Instant::now() + Duration::from_millis(100));
                        }
                    }
                }
                Woke::Deadline if Instant::now() >= deadline => {
                    let lines = self
                        .daemon
                        .as_ref()
                        .map(Daemon::last_lines)
                        .unwrap_or_default();
                    return Err(BringupError::Failed(format!(
                        "tailscaled did not answer within {} (tailscale.boot_timeout); its last lines:\n{lines}",
                        duration::format(self.cfg.boot_timeout)
                    )));
                }
                Woke::Deadline | Woke::Handled => {}
            }
        }
    }

    /// Waits until tailscaled's state satisfies `done` (by ipn.State number): a thread
    /// follows the IPN bus, and with `probe_status` on each event also reads the status
    /// (tailscaled sends no event for some changes, e.g. NoState -> Starting; the read
    /// is slow while tailscaled is busy, so it is skipped where the event always comes).
    /// `meanwhile` runs on each event until it reports done. Returns the state's name.
    fn wait_for_state(
        &mut self,
        init: &mut Init,
        deadline: Instant,
        (setting, limit): (&str, Duration),
        probe_status: bool,
        done: fn(usize) -> bool,
        mut meanwhile: Option<Meanwhile>,
    ) -> Result<String, BringupError> {
        let socket = self.cfg.socket.clone();
        let byte = self.wait_on_thread(init, deadline, "state", move |abandon| {
            let mut state = usize::MAX;
            if let Ok(bus) = LocalApi::new(&socket, None).watch_ipn_bus(1 << 1)
                && abandon.register(bus.stream())
            {
                for event in bus {
                    let Ok(event) = event else { break };
                    if let Some(s) = event.get("State").and_then(|s| s.as_u64())
                        && done(s as usize)
                    {
                        state = s as usize;
                        break;
                    }
                    if meanwhile.as_mut().is_some_and(|work| work()) {
                        meanwhile = None;
                    }
                    if !probe_status {
                        continue;
                    }
                    let status = LocalApi::new(&socket, Some(Duration::from_secs(2))).status();
                    if let Ok(status) = status
                        && let Some(i) = STATES.iter().position(|&s| s == status.backend_state)
                        && done(i)
                    {
                        state = i;
                        break;
                    }
                }
            }
            // Success (the state's number) or not (255): the main loop goes on.
            state.min(255) as u8
        })?;
        let Some(byte) = byte else {
            let state = self
                .api()
                .status()
                .map(|s| s.backend_state)
                .unwrap_or_default();
            let lines = self
                .daemon
                .as_ref()
                .map(Daemon::last_lines)
                .unwrap_or_default();
            return Err(BringupError::Failed(format!(
                "tailscaled is still in state {state} after {} ({setting}); its last \
                 lines:\n{lines}",
                duration::format(limit)
            )));
        };
        let state = match STATES.get(byte as usize) {
            Some(&name) => name.to_string(),
            None => {
                let status = self.api().status().map_err(|e| {
                    BringupError::Failed(format!("cannot read tailscale's status: {e}"))
                })?;
                status.backend_state
            }
        };
        debug!("tailscaled state: {state}");
        Ok(state)
    }

    /// Fails at once when tailscaled could not read its state (a file truncated by a
    /// crash, say): it then runs on an empty in-memory store, never logs in, and waiting
    /// would only end in a timeout. The damaged file is left as it is.
    fn check_state_store(&self, status: &Status) -> Result<(), BringupError> {
        let Some(problem) = status
            .health
            .iter()
            .find(|h| h.contains("State store failed to initialize"))
        else {
            return Ok(());
        };
        let why = problem
            .split_once("Error: ")
            .map_or(problem.as_str(), |(_, e)| e);
        let state = self.cfg.state_dir.join("tailscaled.state");
        let lines = self
            .daemon
            .as_ref()
            .map(Daemon::last_lines)
            .unwrap_or_default();
        Err(BringupError::Failed(format!(
            "tailscaled cannot read its state: {why}\nfix: if {} is damaged, move it aside \
             (keep it: it holds the node's keys) and start again; the node then logs in as a \
             new machine (with an auth key)\ntailscaled's last lines:\n{lines}",
            state.display()
        )))
    }

    /// Fails if a stop signal came, the workload ended, or tailscaled died.
    fn check_interrupts(&mut self, init: &mut Init) -> Result<(), BringupError> {
        if let Some(sig) = init.stop_requested() {
            return Err(BringupError::Stop(sig));
        }
        if init.workload_exit().is_some() {
            return Err(BringupError::WorkloadExited);
        }
        if let Some(d) = &self.daemon
            && let Some(exit) = init.take_exit(d.pid)
        {
            let lines = d.last_lines();
            self.daemon = None;
            return Err(BringupError::Failed(format!(
                "tailscaled exited ({}) before it was ready; its last lines:\n{lines}",
                describe(exit)
            )));
        }
        Ok(())
    }

    fn api(&self) -> LocalApi {
        LocalApi::new(&self.cfg.socket, Some(Duration::from_secs(10)))
    }

    fn prefs(&self) -> Result<crate::localapi::Prefs, BringupError> {
        self.api()
            .prefs()
            .map_err(|e| BringupError::Failed(format!("cannot read tailscale's prefs: {e}")))
    }

    /// Brings tailscale's settings in step with the configuration (see `tailscale::plan`);
    /// `prefs` if they were read already.
    fn converge(
        &mut self,
        init: &mut Init,
        status: Status,
        prefs: Option<crate::localapi::Prefs>,
    ) -> Result<(), BringupError> {
        let prefs = match prefs {
            Some(p) => p,
            None => self.prefs()?,
        };
        let current = Current {
            backend_state: status.backend_state.clone(),
            auth_url: status.auth_url.clone(),
            hostname: prefs.hostname,
            corp_dns: prefs.corp_dns,
            no_stateful_filtering: prefs.no_stateful_filtering,
            advertise_tags: prefs.advertise_tags,
            advertise_routes: prefs.advertise_routes,
            control_url: prefs.control_url,
            run_ssh: prefs.run_ssh,
        };
        match tailscale::plan(&current, &self.desired) {
            Plan::Nothing => {
                info!(
                    "tailscale is up as {} ({}); nothing to change",
                    self.desired.hostname, status.backend_state
                );
                Ok(())
            }
            Plan::Keep { reason, set } if set.is_empty() => {
                warn!("{reason}");
                Ok(())
            }
            Plan::Keep { reason, set } => {
                warn!("{reason}");
                self.run_set(init, set)
            }
            Plan::Set(args) => self.run_set(init, args),
            Plan::Up { args, needs_key } => {
                let with_key = needs_key && self.holds_secret();
                if needs_key && !with_key {
                    warn!(
                        "tailscale is not logged in and no auth key was given \
                         (TS_AUTHKEY, tailscale.auth_key_file, /run/secrets/ts_authkey): \
                         starting an interactive login; open the URL below to log in"
                    );
                }
                info!("tailscale up as {}", self.desired.hostname);
                let mut full = vec!["up".to_string()];
                full.extend(args);
                let limit = self.cfg.up_timeout + Duration::from_secs(10);
                self.run_cli(init, &full, with_key, limit)?;
                let ips = self
                    .api()
                    .status()
                    .map(|s| s.tailscale_ips.join(", "))
                    .unwrap_or_default();
                info!("tailscale is up as {} ({ips})", self.desired.hostname);
                Ok(())
            }
            Plan::NeedsApproval => Err(BringupError::Failed(
                "this machine is waiting for approval: an admin of the tailnet must approve \
                 it (Machines page of the admin console)"
                    .to_string(),
            )),
            Plan::Unexpected(state) => Err(BringupError::Failed(format!(
                "tailscaled is in state {state}, which tsinit cannot act on"
            ))),
        }
    }

    /// `tailscale set` with `args`.
    fn run_set(&mut self, init: &mut Init, args: Vec<String>) -> Result<(), BringupError> {
        if args.iter().any(|a| a.starts_with("--hostname=")) {
            self.renamed = true;
        }
        info!("tailscale set {}", args.join(" "));
        let mut full = vec!["set".to_string()];
        full.extend(args);
        self.run_cli(init, &full, false, Duration::from_secs(30))?;
        Ok(())
    }

    /// Runs `tailscale --socket=... <args>`, reaped like every child; with `with_key`
    /// the auth key is handed over in an anonymous memory file named by
    /// `--auth-key=file:/proc/self/fd/N`, so it is in no argv and on no disk.
    fn run_cli(
        &mut self,
        init: &mut Init,
        args: &[String],
        with_key: bool,
        limit: Duration,
    ) -> Result<String, BringupError> {
        let io =
            |what: &str, e: &dyn std::fmt::Display| BringupError::Failed(format!("{what}: {e}"));
        let output = memfd_create(c"tailscale-output", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| io("memfd", &e))?;
        let mut output = File::from(output);
        // Each secret in a memory file the CLI reads as /proc/self/fd/N (so not
        // close-on-exec).
        let mut secret_fds: Vec<(&str, OwnedFd)> = Vec::new();
        if with_key {
            let key = self.key.as_ref().map(|k| ("auth-key", k.key.as_str()));
            let others = self.secrets.iter().map(|s| (s.flag, s.value.as_str()));
            for (flag, value) in key.into_iter().chain(others) {
                let fd = memfd_create(c"tailscale-secret", MFdFlags::empty())
                    .map_err(|e| io("memfd", &e))?;
                let mut f = File::from(fd);
                f.write_all(value.as_bytes()).map_err(|e| io("memfd", &e))?;
                secret_fds.push((flag, OwnedFd::from(f)));
            }
        }
        let mut cmd = Command::new(&self.tailscale);
        cmd.arg(format!("--socket={}", self.cfg.socket.display()))
            .args(args);
        for (flag, fd) in &secret_fds {
            cmd.arg(format!("--{flag}=file:/proc/self/fd/{}", fd.as_raw_fd()));
        }
        let interactive = args.first().is_some_and(|a| a == "up") && !with_key;
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
        for var in tailscale::KEY_VARS {
            cmd.env_remove(var);
        }
        crate::sys::prepare_child(&mut cmd, init.background_child());
        let shown = args.first().map(String::as_str).unwrap_or_default();
        let pid = init
            .spawn(&mut cmd)
            .map_err(|e| io(&format!("cannot run tailscale {shown}"), &e))?;
        drop(cmd); // closes our copies of the child's stdout/stderr
        drop(secret_fds); // the CLI has its own copies now
        let deadline = Instant::now() + limit;
        let exit = loop {
            if let Some(exit) = init.take_exit(pid) {
                break exit;
            }
            let interrupted = match self.stopping {
                true => None,
                false => init
                    .stop_requested()
                    .map(BringupError::Stop)
                    .or_else(|| init.workload_exit().map(|_| BringupError::WorkloadExited)),
            };
            if let Some(why) = interrupted {
                init.stop_process(pid, "tailscale", Duration::from_secs(2));
                return Err(why);
            }
            if init.pump(Some(deadline), &[]) == Woke::Deadline {
                init.stop_process(pid, "tailscale", Duration::from_secs(2));
                return Err(BringupError::Failed(format!(
                    "tailscale {shown} did not finish within {}",
                    duration::format(limit)
                )));
            }
        };
        let mut text = String::new();
        if output.rewind().is_ok() {
            output.read_to_string(&mut text).ok();
        }
        if exit == Exit::Code(0) {
            return Ok(text);
        }
        // The CLI only says "timeout"; the reason is in tailscaled's health messages.
        let health = self
            .api()
            .status()
            .map(|s| s.health.join("; "))
            .unwrap_or_default();
        // The CLI's own words first (a bad flag, a refused value), then tailscaled's.
        let cli = cli_error(&text);
        let why = match (cli.is_empty(), health.is_empty()) {
            (true, _) => health,
            (false, true) => cli,
            (false, false) => format!("{cli} (tailscaled says: {health})"),
        };
        let sep = if why.is_empty() { "" } else { ": " };
        Err(BringupError::Failed(format!(
            "tailscale {shown} failed ({}){sep}{why}",
            describe(exit)
        )))
    }

    fn schedule_retry(&mut self) {
        let backoff = Duration::from_secs(1 << self.failures.min(5)).min(MAX_BACKOFF);
        self.failures += 1;
        self.retry_at = Some(Instant::now() + backoff);
        warn!("retrying tailscale in {}", duration::format(backoff));
    }
}

/// The line of a failed CLI call's output that says what went wrong: the first one when
/// the CLI printed its usage after it (a flag it refused), else the last one.
fn cli_error(output: &str) -> String {
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
) {
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
        });
    if let Err(e) = spawned {
        warn!("cannot start the thread that passes on tailscaled's log: {e}");
    }
}

impl Service for Tailnet {
    fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        let renamed = self.hosts.as_ref().and_then(|h| h.renamed.as_ref());
        self.serve_watch
            .iter()
            .map(|w| w.as_fd())
            .chain(renamed.map(|r| r.as_fd()))
            .collect()
    }

    fn tend(&mut self, init: &mut Init) {
        if let Some(d) = &self.daemon
            && let Some(exit) = init.take_exit(d.pid)
        {
            warn!(
                "tailscaled exited ({}); its last lines:\n{}",
                describe(exit),
                d.last_lines()
            );
            self.daemon = None;
            self.schedule_retry();
        }
        if self.retry_at.is_some_and(|at| at <= Instant::now()) {
            self.retry_at = None;
            let result = self.start(init);
            self.follow_changes();
            match result {
                Ok(()) => {
                    info!("tailscale is back");
                    self.failures = 0;
                    // tailscaled is fine: a serve or SSH problem is only reported.
                    if let Err(BringupError::Failed(why)) = self.finish() {
                        warn!("{why}");
                    }
                }
                Err(BringupError::WorkloadExited) | Err(BringupError::Stop(_)) => {}
                Err(BringupError::Failed(why)) => {
                    warn!("{why}");
                    self.schedule_retry();
                }
            }
        }
        self.reapply_serve_if_needed();
    }

    fn pids(&self) -> Vec<i32> {
        self.daemon.iter().map(|d| d.pid).collect()
    }

    fn stop(&mut self, init: &mut Init) {
        self.stopping = true;
        self.retry_at = None;
        if let Some(pid) = self.daemon.as_ref().map(|d| d.pid) {
            if self.cfg.logout_on_exit {
                match self.run_cli(
                    init,
                    &["logout".to_string()],
                    false,
                    Duration::from_secs(10),
                ) {
                    Ok(_) => info!("logged out of the tailnet (logout_on_exit)"),
                    Err(BringupError::Failed(why)) => warn!("logout_on_exit: {why}"),
                    Err(_) => {}
                }
            }
            if let Some(exit) = init.stop_process(pid, "tailscaled", self.grace) {
                debug!("tailscaled stopped: {}", describe(exit));
            }
            self.daemon = None;
        }
        if let Some(h) = &self.hosts {
            h.clear();
        }
    }
}

impl Tailnet {
    /// After a failed bring-up with on_failure = "continue": keep trying in the background.
    pub fn retry_later(&mut self) {
        self.schedule_retry();
    }
}

/// IPN bus events that make the hosts block be looked at again: the initial state and
/// netmap, then every change. Not NotifyRateLimit (1 << 8): it holds changes that come
/// close together back for seconds, and the block should follow within milliseconds.
const BUS_MASK: u32 = (1 << 1) | (1 << 3);

struct HostsState {
    file: crate::hosts::HostsFile,
    opts: crate::hosts::Options,
    socket: PathBuf,
    /// Set at shutdown: the block stays empty from then on.
    stopped: bool,
    warned: bool,
    /// The node's DNS name when last looked, and where to say it changed (control
    /// renamed the node: web servers tsinit serves are named after it).
    dns_name: String,
    renamed: Option<std::os::unix::net::UnixStream>,
}

impl HostsState {
    /// Renders the block from tailscaled's status and writes it if it changed; how many
    /// names it lists.
    fn sync(&mut self) -> usize {
        if self.stopped {
            return 0;
        }
        let status = match LocalApi::new(&self.socket, Some(Duration::from_secs(5))).status() {
            Ok(s) => s,
            Err(e) => {
                debug!("hosts: cannot read tailscale's status: {e}");
                return 0;
            }
        };
        let entries = crate::hosts::entries(&status, self.opts);
        self.write(&entries);
        let name = status.self_.map(|s| s.dns_name).unwrap_or_default();
        if !name.is_empty() && name != self.dns_name {
            if !self.dns_name.is_empty()
                && let Some(w) = &self.renamed
            {
                debug!("control renamed the node: {} -> {name}", self.dns_name);
                (&*w).write_all(&[1]).ok();
            }
            self.dns_name = name;
        }
        entries.len()
    }

    fn write(&mut self, entries: &[crate::hosts::Entry]) {
        let block = crate::hosts::render(entries, std::time::SystemTime::now());
        match self.file.write(&block) {
            Ok(crate::hosts::Written::Unchanged) => {}
            Ok(_) => debug!(
                "hosts: {} now lists {} entries",
                self.file.path().display(),
                entries.len()
            ),
            Err(e) if !self.warned => {
                self.warned = true;
                warn!(
                    "cannot update {}: {} (set hosts.enabled = false to stop trying)",
                    self.file.path().display(),
                    crate::error::os_message(&e)
                );
            }
            Err(_) => {}
        }
    }
}

/// Keeps the hosts file's managed block in step with the tailnet, from a thread that
/// follows tailscaled's IPN bus. Between tailscaled's lifetimes the thread sleeps until
/// told that tailscaled is ready again: no polling.
pub struct HostsSync {
    state: Arc<Mutex<HostsState>>,
    ready: std::sync::mpsc::Sender<()>,
    /// Readable when control renamed the node (non-blocking).
    renamed: Option<std::os::unix::net::UnixStream>,
}

impl HostsSync {
    pub fn start(cfg: &config::Hosts, socket: &Path) -> Option<HostsSync> {
        let state = Arc::new(Mutex::new(HostsState {
            file: crate::hosts::HostsFile::new(&cfg.path),
            opts: crate::hosts::Options {
                ipv6: cfg.ipv6,
                short_names: cfg.short_names,
                online_only: cfg.online_only,
            },
            socket: socket.to_path_buf(),
            stopped: false,
            warned: false,
            dns_name: String::new(),
            renamed: None,
        }));
        let renamed = match std::os::unix::net::UnixStream::pair() {
            Ok((tx, rx))
                if rx.set_nonblocking(true).is_ok() && tx.set_nonblocking(true).is_ok() =>
            {
                if let Ok(mut s) = state.lock() {
                    s.renamed = Some(tx);
                }
                Some(rx)
            }
            _ => None,
        };
        let (ready, wait) = std::sync::mpsc::channel::<()>();
        let shared = state.clone();
        let socket = socket.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("hosts".to_string())
            .spawn(move || {
                while wait.recv().is_ok() {
                    while wait.try_recv().is_ok() {} // several calls, one reconnect
                    // Follow the bus; if it breaks right after delivering events, try
                    // once more at once, else wait until tailscaled is ready again.
                    loop {
                        let bus = match LocalApi::new(&socket, None).watch_ipn_bus(BUS_MASK) {
                            Ok(bus) => bus,
                            Err(e) => {
                                debug!("hosts: cannot watch the IPN bus: {e}");
                                break;
                            }
                        };
                        let mut events = 0;
                        for event in bus {
                            if let Err(e) = event {
                                debug!("hosts: IPN bus ended: {e}");
                                break;
                            }
                            events += 1;
                            if let Ok(mut s) = shared.lock() {
                                s.sync();
                            }
                        }
                        if events == 0 {
                            break;
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(HostsSync {
                state,
                ready,
                renamed,
            }),
            Err(e) => {
                warn!("cannot start the thread that keeps the hosts file: {e}");
                None
            }
        }
    }

    /// Brings the block in step now, on the calling thread; whether it lists names.
    pub fn sync_now(&self) -> bool {
        self.state.lock().is_ok_and(|mut s| s.sync() > 0)
    }

    /// [`HostsSync::sync_now`] for another thread.
    pub fn syncer(&self) -> impl Fn() -> bool + Send + 'static {
        let state = self.state.clone();
        move || state.lock().is_ok_and(|mut s| s.sync() > 0)
    }

    /// Whether control renamed the node since the last call.
    pub fn take_renamed(&self) -> bool {
        let mut any = false;
        let mut buf = [0u8; 16];
        while let Some(Ok(n)) = self.renamed.as_ref().map(|mut r| r.read(&mut buf)) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }

    /// tailscaled answers again: (re)connect to its bus.
    pub fn connect(&self) {
        self.ready.send(()).ok();
    }

    /// At shutdown: empties the block and keeps it empty.
    pub fn clear(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.write(&[]);
            s.stopped = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::named_after;

    #[test]
    fn the_cli_error_is_the_line_that_says_what_is_wrong() {
        use super::cli_error;
        let usage = "flag provided but not defined: -foo\nConnect to Tailscale\n\nUSAGE\n  \
                     tailscale up [flags]\n  --timeout value\n    \tmaximum time\n";
        assert_eq!(cli_error(usage), "flag provided but not defined: -foo");
        assert_eq!(
            cli_error("some progress\nbackend error: invalid key\n"),
            "backend error: invalid key"
        );
        assert_eq!(cli_error(""), "");
    }

    #[test]
    fn dns_names_after_a_hostname() {
        assert!(named_after("web.tail1234.ts.net.", "web"));
        assert!(named_after("web-2.tail1234.ts.net.", "web"));
        assert!(!named_after("webapp.tail1234.ts.net.", "web"));
        assert!(!named_after("web-x.tail1234.ts.net.", "web"));
        assert!(!named_after("web-.tail1234.ts.net.", "web"));
        assert!(!named_after("old.tail1234.ts.net.", "web"));
        assert!(!named_after("", "web"));
    }
}
