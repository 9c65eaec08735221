//! Waiting for tailscaled's first LocalAPI answer without polling: the socket's
//! appearance is watched with inotify (tsinit's one instance, kept for its lifetime:
//! closing one waits ~10 ms for the kernel's clean-up), then one status request is sent
//! and read when its descriptor is readable. Driven by the main loop; never blocks.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::debug;
use nix::sys::inotify::{AddWatchFlags, Inotify, WatchDescriptor};

use crate::localapi::{PendingRequest, STATUS, Status};

/// The wait for the first answer.
pub struct Wait {
    socket: PathBuf,
    watch: Option<WatchDescriptor>,
    pending: Option<PendingRequest>,
    retry_at: Option<Instant>,
    pub started: Instant,
    pub deadline: Instant,
}

impl Wait {
    pub fn new(inotify: &Inotify, socket: &Path, limit: Duration) -> Result<Wait, String> {
        let dir = socket.parent().unwrap_or(Path::new("/"));
        let watch = inotify
            .add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        let now = Instant::now();
        Ok(Wait {
            socket: socket.to_path_buf(),
            watch: Some(watch),
            pending: None,
            retry_at: None,
            started: now,
            deadline: now + limit,
        })
    }

    /// When to look again without an event (a retry after "not listening yet").
    pub fn wake_at(&self) -> Instant {
        self.retry_at
            .map_or(self.deadline, |r| r.min(self.deadline))
    }

    /// The request's descriptor, once one is under way (the inotify instance is the
    /// owner's to poll).
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.pending.iter().map(|p| p.fd()).collect()
    }

    /// Makes what progress it can; the status once tailscaled answered (then the watch
    /// is removed from `inotify`). Events of `inotify` are the caller's to read.
    pub fn poll(&mut self, inotify: &Inotify) -> Result<Option<Status>, String> {
        if let Some(p) = self.pending.as_mut() {
            match p.on_readable() {
                Ok(None) => return Ok(None),
                Ok(Some(resp)) if resp.status == 200 => {
                    let status: Status = crate::localapi::scan::status(&resp.body)
                        .map_err(|e| format!("tailscaled's status is not JSON: {e}"))?;
                    debug!(
                        "tailscaled {} ready after {:?}: {}",
                        status.version,
                        self.started.elapsed(),
                        status.backend_state
                    );
                    if let Some(wd) = self.watch.take() {
                        inotify.rm_watch(wd).ok();
                    }
                    return Ok(Some(status));
                }
                Ok(Some(resp)) => {
                    debug!(
                        "tailscaled answered {}: {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body).trim()
                    );
                    self.pending = None;
                    self.retry_at = Some(Instant::now() + Duration::from_millis(100));
                }
                Err(e) => {
                    debug!("LocalAPI request failed: {e}");
                    self.pending = None;
                    self.retry_at = Some(Instant::now() + Duration::from_millis(100));
                }
            }
        }
        if self.pending.is_none()
            && self.retry_at.is_none_or(|at| at <= Instant::now())
            && self.socket.exists()
        {
            self.retry_at = None;
            match PendingRequest::start(&self.socket, "GET", STATUS, None) {
                Ok(p) => self.pending = Some(p),
                Err(e) => {
                    // The socket file appears at bind(), a moment before listen(): no
                    // event marks that moment, so try again shortly.
                    debug!("tailscaled not listening yet: {e}");
                    self.retry_at = Some(Instant::now() + Duration::from_millis(1));
                }
            }
        }
        Ok(None)
    }
}
