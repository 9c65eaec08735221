//! The one owner of `waitpid`: every child is reaped here, and the statuses of the
//! children someone asked about are kept for them.

use log::{trace, warn};

use super::describe;
use crate::sys::{self, Exit};

/// The one owner of `waitpid`: reaps every child and keeps the statuses of the children
/// someone asked about, so no exit status is ever lost to another waiter.
#[derive(Default)]
pub(super) struct Reaper {
    watched: Vec<i32>,
    exited: Vec<(i32, Exit)>,
    /// False once waitpid reported that no children are left.
    pub(super) has_children: bool,
}

impl Reaper {
    pub(super) fn watch(&mut self, pid: i32) {
        self.watched.push(pid);
        self.has_children = true;
    }

    /// Reaps every child that has exited, without blocking.
    pub(super) fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, exit))) => {
                    if let Some(i) = self.watched.iter().position(|&p| p == pid) {
                        self.watched.swap_remove(i);
                        self.exited.push((pid, exit));
                    } else {
                        trace!("reaped orphan {pid} ({})", describe(exit));
                    }
                }
                Ok(None) => {
                    self.has_children = true;
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    self.has_children = false;
                    return;
                }
                Err(e) => {
                    warn!("waitpid failed: {e}");
                    return;
                }
            }
        }
    }

    /// The exit status of a watched child, once it has been reaped.
    pub(super) fn take(&mut self, pid: i32) -> Option<Exit> {
        let i = self.exited.iter().position(|&(p, _)| p == pid)?;
        Some(self.exited.swap_remove(i).1)
    }
}
