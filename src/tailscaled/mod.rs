//! tailscaled as a supervised service of the init. The main thread owns all of it: the
//! daemon (started, restarted with backoff, stopped last), the bring-up in flight (see
//! `bringup`), what the IPN bus last said (the one `bus` follower thread hands it over),
//! the hosts block and the serve config. Nothing here blocks the main thread once the
//! workload runs: LocalAPI requests are polled, CLI calls are reaped like any child.

pub(crate) mod bus;
pub(crate) mod cli;
pub(crate) mod daemon;
mod events;
pub(crate) mod prepare;
pub(crate) mod ready;

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

pub use prepare::{Prepared, prepare, run_preflight, system_hostname};

use crate::bringup::{Failure, Step};
use crate::config::{self, Config};
use crate::duration;
use crate::endpoint::{Endpoint, Report, Stats};
use crate::error::Error;
use crate::hosts::sync::HostsSync;
use crate::init::{Init, Service, describe};
use crate::localapi::{BackendState, NetMap};
use bus::Bus;
use daemon::Daemon;

/// The longest wait between two restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a lost LocalAPI connection waits for tailscaled's exit to explain it.
const GONE_WAIT: Duration = Duration::from_secs(1);
/// Before the workload starts, how long a tailscaled that exited is given for the rest
/// of its log to be read (its last lines explain the failure).
const LOG_END_WAIT: Duration = Duration::from_secs(1);

/// Where tsinit is in its life: before the workload (failures end tsinit, unless
/// on_failure says otherwise), while it runs (failures are retried), shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Boot,
    Steady,
    Stopping,
}

/// What the IPN bus last said.
#[derive(Debug, Default)]
pub struct View {
    pub state: Option<BackendState>,
    pub netmap: Option<NetMap>,
    /// Notifications received from this tailscaled's bus.
    pub heard: u64,
}

impl View {
    /// This node's DNS name in the netmap ("" if none yet).
    pub fn dns_name(&self) -> &str {
        self.netmap
            .as_ref()
            .and_then(|n| n.self_node.as_ref())
            .map_or("", |n| n.name.as_str())
    }
}

/// Why the bring-up did not finish.
#[derive(Debug)]
pub enum BringupError {
    /// A stop signal arrived before the workload started.
    Stop(std::ffi::c_int),
    /// tailscaled or `tailscale up` failed; the message says why.
    Failed(String),
}

/// The variables that tell a program how to reach the tailnet: the socket and, with
/// userspace networking, the proxy (the workload's environment, `tsinit shellenv`).
pub fn workload_vars(cfg: &config::Tailscale, userspace: bool) -> Vec<(&'static str, String)> {
    let mut vars = vec![("TS_SOCKET", cfg.socket.display().to_string())];
    if userspace {
        let socks = format!("socks5h://{}", cfg.socks5_server);
        vars.push(("ALL_PROXY", socks.clone()));
        vars.push(("all_proxy", socks));
        if cfg.export_proxy_env {
            let http = format!("http://{}", cfg.http_proxy);
            for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                vars.push((var, http.clone()));
            }
        }
    }
    vars
}

/// tailscaled and everything tsinit needs to run it.
pub struct Tailscaled {
    pub(crate) p: Prepared,
    pub(crate) cfg: config::Tailscale,
    grace: Duration,
    /// One inotify instance for tsinit's life: the socket's appearance, the serve file.
    pub(crate) inotify: Inotify,
    serve_watch: Option<WatchDescriptor>,
    pub(crate) daemon: Option<Daemon>,
    bus: Option<Bus>,
    pub(crate) view: View,
    pub(crate) step: Step,
    pub(crate) phase: Phase,
    retry_at: Option<Instant>,
    pub(crate) failures: u32,
    pub(crate) hosts: Option<HostsSync>,
    /// The serve config is to be brought in step again (its file changed, or control
    /// renamed the node).
    serve_due: bool,
    /// The bring-up under way follows a failure or a restart (not the first one).
    pub(crate) retrying: bool,
    /// A serve problem of the bring-up under way, reported after SSH's.
    pub(crate) served: Option<String>,
    /// The netmap changed since the hosts block was written.
    hosts_due: bool,
    /// How often the bus was followed again in this tailscaled's lifetime.
    bus_restarts: u32,
    /// The health and metrics endpoint, if on.
    endpoint: Option<Endpoint>,
    stats: Stats,
    /// When the bring-up under way began.
    bringup_from: Option<Instant>,
    /// The symlink at the CLI's default socket path, made by [`prepare::link_socket`].
    socket_link: Option<std::path::PathBuf>,
    /// networking = "auto" chose kernel mode: if tailscaled cannot make its TUN device
    /// after all, it is started again in userspace mode (once).
    may_fall_back: bool,
}

impl Tailscaled {
    pub fn new(p: Prepared, config: &Config) -> Result<Tailscaled, Error> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| {
                Error::Setup {
                    what: "watch files (inotify)",
                    source: e.into(),
                }
            })?;
        Ok(Tailscaled {
            p,
            cfg: config.tailscale.clone(),
            grace: config.grace_period,
            inotify,
            serve_watch: None,
            daemon: None,
            bus: None,
            view: View::default(),
            step: Step::Idle,
            phase: Phase::Boot,
            retry_at: None,
            failures: 0,
            hosts: config.hosts.enabled.then(|| HostsSync::new(&config.hosts)),
            serve_due: false,
            retrying: false,
            served: None,
            hosts_due: false,
            bus_restarts: 0,
            endpoint: Endpoint::listen(&config.http).map_err(|message| {
                Error::Config(config::ConfigError {
                    origin: "http.listen".to_string(),
                    message: format!(
                        "{message}: give a free address and port in TS_LOCAL_ADDR_PORT \
                         (or TSINIT_HTTP_LISTEN)"
                    ),
                })
            })?,
            stats: Stats::default(),
            bringup_from: None,
            socket_link: None,
            may_fall_back: config.networking == config::Networking::Auto,
        })
    }

    /// What the workload's environment gets: TS_SOCKET, the proxy variables in userspace
    /// mode.
    pub fn workload_env(&self) -> Vec<(String, Option<String>)> {
        let vars = workload_vars(&self.cfg, self.p.userspace).into_iter();
        vars.map(|(name, value)| (name.to_string(), Some(value)))
            .collect()
    }

    /// Whether the workload keeps CAP_NET_ADMIN/CAP_NET_RAW.
    pub fn keep_caps(&self) -> bool {
        self.cfg.keep_caps
    }

    /// Whether tsinit holds a secret for tailscale (an auth key, a client secret...).
    pub fn holds_secret(&self) -> bool {
        self.p.key.is_some() || !self.p.secrets.is_empty()
    }

    /// Starts tailscaled (if it is not running) and brings the node up, on this thread,
    /// before the workload starts: returns once the node is as configured, or why not.
    pub fn bring_up(&mut self, init: &mut Init) -> Result<(), BringupError> {
        self.begin(init).map_err(BringupError::Failed)?;
        loop {
            if let Some(sig) = init.stop_requested() {
                return Err(BringupError::Stop(sig));
            }
            if let Some(d) = &self.daemon
                && let Some(exit) = init.take_exit(d.pid)
            {
                let lines = d.last_lines(LOG_END_WAIT);
                self.lost_daemon();
                if self.fall_back(&lines) {
                    self.begin(init).map_err(BringupError::Failed)?;
                    continue;
                }
                return Err(BringupError::Failed(format!(
                    "tailscaled exited ({}) before it was ready; its last lines:\n{lines}",
                    describe(exit)
                )));
            }
            self.take_events();
            self.serve_http();
            match self.advance(init) {
                Some(Ok(())) => {
                    self.brought_up();
                    return Ok(());
                }
                Some(Err(failure)) if failure.lost() => {
                    // The connection failed: if tailscaled is exiting, its exit (and
                    // last lines) is the better answer.
                    let exit = self.daemon.as_ref().and_then(|d| {
                        init.wait_exit(d.pid, Instant::now() + GONE_WAIT)
                            .map(|exit| (exit, d.last_lines(LOG_END_WAIT)))
                    });
                    if let Some((exit, lines)) = exit {
                        self.lost_daemon();
                        return Err(BringupError::Failed(format!(
                            "tailscaled exited ({}) before it was ready; its last lines:\n{lines}",
                            describe(exit)
                        )));
                    }
                    return Err(BringupError::Failed(failure.to_string()));
                }
                Some(Err(failure)) => return Err(BringupError::Failed(self.failed(failure))),
                None => {}
            }
            init.pump_rw(self.deadline(), &self.fds(), &self.write_fds());
        }
    }

    /// After a failed bring-up with on_failure = "continue": keep trying in the
    /// background.
    pub fn retry_later(&mut self) {
        self.schedule_retry();
    }

    /// Writes the hosts block from what the bus said, on this thread: the workload finds
    /// the tailnet's names in place when it starts. (Unchanged blocks are not rewritten.)
    pub fn sync_hosts(&mut self) {
        if let Some(h) = &mut self.hosts
            && self.view.heard > 0
        {
            h.write_from(&self.view);
            self.hosts_due = false;
        }
    }

    /// The workload has started (or failed to): failures are retried from now on, and
    /// the serve config file is watched.
    pub fn on_workload_started(&mut self) {
        self.phase = Phase::Steady;
        if self.serve_watch.is_none()
            && let Some(path) = &self.p.serve.file
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
            match self.inotify.add_watch(dir, flags) {
                Ok(wd) => self.serve_watch = Some(wd),
                Err(e) => warn!(
                    "cannot watch {} ({e}): changes to the serve config file apply at the \
                     next start",
                    dir.display()
                ),
            }
        }
    }

    /// Starts a bring-up: tailscaled first if it is not running.
    pub(crate) fn begin(&mut self, init: &mut Init) -> Result<(), String> {
        if self.daemon.is_none() {
            let d = daemon::spawn(
                init,
                &self.p.tailscaled,
                &self.cfg,
                self.p.userspace,
                &self.p.mode_note,
            )?;
            self.daemon = Some(d);
            self.stats.tailscaled_starts += 1;
            if self.cfg.socket_link && self.socket_link.is_none() {
                self.socket_link = prepare::link_socket(&self.cfg.socket);
            }
        }
        self.bringup_from = Some(Instant::now());
        self.step = Step::Ready(Box::new(ready::Wait::new(
            &self.inotify,
            &self.cfg.socket,
            self.cfg.boot_timeout,
        )?));
        Ok(())
    }

    /// Whether an IPN bus follower runs.
    pub(crate) fn follows_bus(&self) -> bool {
        self.bus.is_some()
    }

    /// Follows the bus of the tailscaled that just answered (once per lifetime).
    pub(crate) fn follow_bus(&mut self) {
        if self.bus.is_some() {
            return;
        }
        match Bus::start(&self.cfg.socket) {
            Ok(bus) => self.bus = Some(bus),
            Err(e) => warn!("cannot follow tailscaled's IPN bus: {e}"),
        }
    }

    /// What a failure means for tailscaled: a hung one is killed (and restarted once its
    /// exit is seen, after the workload started). Returns the message.
    fn failed(&mut self, failure: Failure) -> String {
        self.step = Step::Idle;
        if failure.hung()
            && let Some(d) = &mut self.daemon
            && !d.killed
        {
            warn!("tailscaled does not answer: killing it (SIGKILL)");
            crate::sys::kill(d.pid, libc::SIGKILL).ok();
            d.killed = true;
        }
        failure.to_string()
    }

    /// Forgets the daemon that exited and what depended on it.
    fn lost_daemon(&mut self) {
        self.daemon = None;
        self.bus = None;
        self.bus_restarts = 0;
        self.view = View::default();
        self.abandon_step();
    }

    /// Ends what the bring-up had under way (a CLI call is killed; its exit is reaped).
    fn abandon_step(&mut self) {
        if let Step::Cli { run, .. } = &self.step {
            crate::sys::kill(run.pid, libc::SIGKILL).ok();
        }
        self.step = Step::Idle;
    }

    fn schedule_retry(&mut self) {
        if self.retry_at.is_some() || self.phase == Phase::Stopping {
            return;
        }
        let backoff = Duration::from_secs(1 << self.failures.min(5)).min(MAX_BACKOFF);
        self.failures += 1;
        self.retry_at = Some(Instant::now() + backoff);
        self.retrying = true;
        warn!("retrying tailscale in {}", duration::format(backoff));
    }

    /// With networking = "auto", a kernel-mode tailscaled that could not make its TUN
    /// device (`lines`, the end of its log, say so) although preflight found it usable
    /// (a sandbox such as gVisor, or a user namespace without the network's capability):
    /// userspace mode from now on, with the banner. Whether it falls back.
    fn fall_back(&mut self, lines: &str) -> bool {
        let tun_failed = lines.contains("tstun.New") || lines.contains("CreateTUN");
        if !self.may_fall_back || self.p.userspace || !tun_failed {
            return false;
        }
        self.may_fall_back = false;
        // The error itself: the last line that has one, without its timestamp.
        let why = (lines.lines().rev())
            .find(|l| l.contains("error"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(3)
                    .map(|w| &l[l.find(w).unwrap_or(0)..])
            })
            .unwrap_or("tailscaled could not create its TUN device");
        let why = format!("tailscaled could not start in kernel mode ({why})");
        prepare::userspace_banner(&why, &self.cfg);
        self.p.userspace = true;
        self.p.mode_note = format!("userspace ({why})");
        true
    }

    /// Answers the health and metrics endpoint's requests that are ready.
    fn serve_http(&mut self) {
        let Some(endpoint) = &mut self.endpoint else {
            return;
        };
        let report = Report {
            healthy: self.view.state == Some(BackendState::Running)
                && self
                    .view
                    .netmap
                    .as_ref()
                    .and_then(|n| n.self_node.as_ref())
                    .is_some_and(|n| !n.addresses.is_empty()),
            socket: &self.cfg.socket,
            stats: &self.stats,
            hosts_writes: self.hosts.as_ref().map_or(0, |h| h.writes),
        };
        endpoint.tend(&report);
    }

    /// A bring-up finished: how long it took.
    fn brought_up(&mut self) {
        if let Some(from) = self.bringup_from.take() {
            self.stats.bringup = Some(from.elapsed());
        }
    }

    /// Starts serve again if it is due and nothing else is under way.
    fn reapply_serve_if_due(&mut self) {
        if !self.serve_due
            || !matches!(self.step, Step::Idle)
            || self.retry_at.is_some()
            || self.daemon.as_ref().is_none_or(|d| d.killed)
        {
            return;
        }
        self.serve_due = false;
        match crate::serve::apply::Job::start(&self.p.serve, &self.cfg.socket) {
            Ok(Some(job)) => self.step = Step::Reserve(Box::new(job)),
            Ok(None) => {}
            Err(e) => warn!("{e}"),
        }
    }
}

impl Service for Tailscaled {
    fn deadline(&self) -> Option<Instant> {
        let http = self.endpoint.as_ref().and_then(Endpoint::deadline);
        [self.retry_at, self.step.deadline(), http]
            .into_iter()
            .flatten()
            .min()
    }

    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![self.inotify.as_fd()];
        fds.extend(self.bus.iter().map(|b| b.fd()));
        fds.extend(self.step.fds());
        if let Some(e) = &self.endpoint {
            e.fds(&mut fds, &mut Vec::new());
        }
        fds
    }

    fn write_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::new();
        if let Some(e) = &self.endpoint {
            e.fds(&mut Vec::new(), &mut fds);
        }
        fds
    }

    fn tend(&mut self, init: &mut Init) {
        if let Some(d) = &self.daemon
            && let Some(exit) = init.take_exit(d.pid)
        {
            warn!(
                "tailscaled exited ({}); its last lines:\n{}",
                describe(exit),
                // The workload may run: what has been read of its log, without waiting.
                d.last_lines(Duration::ZERO)
            );
            self.lost_daemon();
            self.schedule_retry();
        }
        self.take_events();
        self.write_hosts_if_due();
        self.serve_http();
        if self.retry_at.is_some_and(|at| at <= Instant::now()) {
            self.retry_at = None;
            if let Err(why) = self.begin(init) {
                warn!("{why}");
                self.schedule_retry();
            }
        }
        if let Some(result) = self.advance(init) {
            let finishing = matches!(&result, Err(f) if f.finishing());
            match result {
                Ok(()) => self.brought_up(),
                // tailscaled is fine: a serve or SSH problem is only reported.
                Err(f) if finishing => warn!("{}", self.failed(f)),
                Err(f) => {
                    let why = self.failed(f);
                    warn!("{why}");
                    if self.daemon.as_ref().is_none_or(|d| !d.killed) {
                        self.schedule_retry();
                    }
                }
            }
        }
        self.reapply_serve_if_due();
    }

    fn pids(&self) -> Vec<i32> {
        let cli = match &self.step {
            Step::Cli { run, .. } => Some(run.pid),
            _ => None,
        };
        self.daemon.iter().map(|d| d.pid).chain(cli).collect()
    }

    fn stop(&mut self, init: &mut Init) {
        self.phase = Phase::Stopping;
        self.retry_at = None;
        self.abandon_step();
        if let Some(pid) = self.daemon.as_ref().map(|d| d.pid) {
            if self.cfg.logout_on_exit && self.daemon.as_ref().is_some_and(|d| !d.killed) {
                let logout = cli::start(
                    init,
                    &self.p.tailscale,
                    &self.cfg.socket,
                    &["logout".to_string()],
                    &[],
                    Duration::from_secs(10),
                );
                match logout.map(|run| run.wait(init)) {
                    Ok(ended) => match ended.failure("logout") {
                        None => info!("logged out of the tailnet (logout_on_exit)"),
                        Some(why) => warn!("logout_on_exit: {why}"),
                    },
                    Err(why) => warn!("logout_on_exit: {why}"),
                }
            }
            if let Some(exit) = init.stop_process(pid, "tailscaled", self.grace) {
                debug!("tailscaled stopped: {}", describe(exit));
            }
            self.lost_daemon();
        }
        if let Some(h) = &mut self.hosts {
            h.clear();
        }
        // The link goes with tsinit (unless something else has been put there since).
        if let Some(link) = self.socket_link.take()
            && std::fs::read_link(&link).is_ok_and(|to| to.ends_with(&self.cfg.socket))
        {
            std::fs::remove_file(&link).ok();
        }
    }
}
