//! The steps of a bring-up and how a bring-up fails; what each step waits for is a
//! descriptor to poll or a deadline.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use super::Flow;
use crate::duration;
use crate::localapi::{self, Prefs, Request, Status};
use crate::serve::apply::Job;
use crate::tailscaled::{cli, ready};

/// Where the bring-up is, and what it waits for.
pub enum Step {
    /// Nothing under way.
    Idle,
    /// tailscaled's first LocalAPI answer.
    Ready(Box<ready::Wait>),
    /// Its prefs (its status is in).
    Prefs { status: Box<Status>, req: Request },
    /// NoState without a saved login: the real state (read again after bus events,
    /// since tailscaled announces some changes with no State event).
    LeftNoState {
        prefs: Box<Prefs>,
        req: Option<Request>,
        heard: u64,
        until: Instant,
    },
    /// A `tailscale up` (`up` true) or `set` call.
    Cli { run: cli::Run, up: bool, flow: Flow },
    /// A failure whose message gets tailscaled's health added.
    Explain {
        prefix: String,
        cli: String,
        req: Request,
    },
    /// After `up`: the node's addresses, to say so.
    UpDone { req: Request, flow: Flow },
    /// A resumed login: until the node is Running (and, with a hosts block, its netmap).
    Running { until: Instant, flow: Flow },
    /// Renamed with serve configured: until control names the node after its hostname.
    Renamed { until: Instant, label: String },
    /// Until the IPN bus's first notification is in (the hosts block is written from it).
    Settle { until: Instant },
    /// The serve config, as part of the bring-up.
    Serve(Box<Job>),
    /// Whether control enabled Tailscale SSH: the status and the prefs.
    Ssh {
        status: Request,
        prefs: Request,
        got: Box<(Option<Status>, Option<Prefs>)>,
    },
    /// The serve config again while the workload runs (its file changed, a rename).
    Reserve(Box<Job>),
}

/// Why a bring-up failed.
#[derive(Debug)]
pub enum Failure {
    /// Getting the node up failed: retried with backoff once the workload runs.
    Bringup(String),
    /// tailscaled does not answer: it is killed (and restarted).
    Hung(String),
    /// The node is up, but serve or SSH is not as configured: only reported once the
    /// workload runs.
    Finish(String),
    /// The LocalAPI connection failed: tailscaled may have exited (its exit says more).
    Gone(String),
}

pub(super) type Progress = Option<Result<(), Failure>>;

impl Step {
    pub fn deadline(&self) -> Option<Instant> {
        Some(match self {
            Step::Idle => return None,
            Step::Ready(w) => w.wake_at(),
            Step::Prefs { req, .. } | Step::Explain { req, .. } | Step::UpDone { req, .. } => {
                req.deadline
            }
            Step::LeftNoState { req, until, .. } => {
                req.as_ref().map_or(*until, |r| r.deadline.min(*until))
            }
            Step::Cli { run, .. } => run.deadline,
            Step::Running { until, .. } | Step::Renamed { until, .. } | Step::Settle { until } => {
                *until
            }
            Step::Serve(job) | Step::Reserve(job) => job.deadline(),
            Step::Ssh { status, prefs, .. } => status.deadline.min(prefs.deadline),
        })
    }

    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Step::Ready(w) => w.fds(),
            Step::Prefs { req, .. } | Step::Explain { req, .. } | Step::UpDone { req, .. } => {
                vec![req.fd()]
            }
            Step::LeftNoState { req, .. } => req.iter().map(|r| r.fd()).collect(),
            Step::Serve(job) | Step::Reserve(job) => vec![job.fd()],
            Step::Ssh { status, prefs, .. } => vec![status.fd(), prefs.fd()],
            _ => Vec::new(),
        }
    }
}

/// An unanswered request: tailscaled counts as hung.
pub(super) fn hung(req: &Request) -> Failure {
    Failure::Hung(format!(
        "tailscaled did not answer {} within {}",
        req.what,
        duration::format(localapi::ANSWER_TIMEOUT)
    ))
}
