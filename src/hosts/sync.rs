//! Keeping the block in step with the tailnet, on the main thread: rendered from the
//! latest netmap the IPN bus delivered (however many came meanwhile), written only when
//! it changed, emptied at shutdown.

use log::{debug, warn};

use super::{HostsFile, Options, Written, entries, render};
use crate::config;
use crate::localapi::{BackendState, Status};
use crate::tailscaled::View;

/// The hosts file's block and how it is kept.
pub struct HostsSync {
    file: HostsFile,
    opts: Options,
    /// Set at shutdown: the block stays empty from then on.
    stopped: bool,
    warned: bool,
}

impl HostsSync {
    pub fn new(cfg: &config::Hosts) -> HostsSync {
        HostsSync {
            file: HostsFile::new(&cfg.path),
            opts: Options {
                ipv6: cfg.ipv6,
                short_names: cfg.short_names,
                online_only: cfg.online_only,
            },
            stopped: false,
            warned: false,
        }
    }

    /// Brings the block in step with `view` (empty unless the node is logged in with a
    /// netmap).
    pub fn write_from(&mut self, view: &View) {
        let state = view.state.unwrap_or(BackendState::NoState);
        let status = match &view.netmap {
            Some(netmap) => netmap.to_status(state),
            None => Status::default(),
        };
        let list = entries(&status, self.opts);
        self.write(&list);
    }

    fn write(&mut self, list: &[super::Entry]) {
        if self.stopped {
            return;
        }
        let block = render(list, std::time::SystemTime::now());
        match self.file.write(&block) {
            Ok(Written::Unchanged) => {}
            Ok(_) => debug!(
                "hosts: {} now lists {} entries",
                self.file.path().display(),
                list.len()
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

    /// At shutdown: empties the block and keeps it empty.
    pub fn clear(&mut self) {
        self.write(&[]);
        self.stopped = true;
    }
}
