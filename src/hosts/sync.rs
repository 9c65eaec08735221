//! Keeping the block in step with the tailnet, on the main thread: rendered from the
//! latest netmap the IPN bus delivered (however many came meanwhile), written only when
//! it changed, emptied at shutdown.

use log::{debug, warn};

use super::{HostsFile, Options, Written, entries_from_netmap};
use crate::config;
use crate::localapi::BackendState;
use crate::tailscaled::View;

/// The hosts file's block and how it is kept.
pub struct HostsSync {
    file: HostsFile,
    opts: Options,
    /// Set at shutdown: the block stays empty from then on.
    stopped: bool,
    warned: bool,
    /// Writes that changed the file.
    pub writes: u64,
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
            writes: 0,
        }
    }

    /// Brings the block in step with `view` (empty unless the node is logged in with a
    /// netmap).
    pub fn write_from(&mut self, view: &View) {
        let state = view.state.unwrap_or(BackendState::NoState);
        let list = match &view.netmap {
            Some(netmap) => entries_from_netmap(netmap, state, self.opts),
            None => Vec::new(),
        };
        self.write(&list);
    }

    fn write(&mut self, list: &[super::Entry]) {
        if self.stopped {
            return;
        }
        match self.file.write_entries(list, std::time::SystemTime::now()) {
            Ok(Written::Unchanged) => {}
            Ok(_) => {
                self.writes += 1;
                debug!(
                    "hosts: {} now lists {} entries",
                    self.file.path().display(),
                    list.len()
                )
            }
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
