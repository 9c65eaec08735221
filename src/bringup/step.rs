//! The steps of a bring-up and how a bring-up fails; what each step waits for is a
//! descriptor to poll or a deadline.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::Flow;
use crate::duration;
use crate::localapi::{self, BackendState, Prefs, Request, Status};
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
    Explain { failure: Box<Failure>, req: Request },
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

/// Why a bring-up failed. Each says what went wrong in words a user can act on
/// (`Display`); the main loop decides from the kind what happens next.
#[derive(Debug)]
pub enum Failure {
    /// tailscaled gave no first answer in time (it counts as hung).
    NotReady { limit: Duration, tail: String },
    /// tailscaled did not answer a request in time (it counts as hung).
    Unanswered { what: String },
    /// tailscaled stayed in a state past a setting's limit.
    Stuck {
        state: String,
        setting: &'static str,
        limit: Duration,
        tail: String,
    },
    /// tailscaled could not read its state file.
    StateStore {
        why: String,
        path: std::path::PathBuf,
        tail: String,
    },
    /// A LocalAPI request failed; `lost`: the connection itself did (tailscaled may
    /// have exited, and its exit says more).
    Api {
        what: &'static str,
        error: String,
        lost: bool,
    },
    /// A CLI call failed (`call`: "tailscale up failed (exit code 1)"), and why.
    Cli { call: String, why: String },
    /// A resumed login left Starting for another state.
    LeftStarting { state: BackendState, health: String },
    /// An administrator must approve the machine.
    NeedsApproval,
    /// tailscaled is in a state tsinit cannot act on.
    Unexpected(String),
    /// Starting tailscaled or a CLI call failed.
    Start(String),
    /// The node is up, but Tailscale SSH is not as configured.
    Ssh(String),
    /// The node is up, but the serve config could not be brought in step.
    Serve(String),
}

impl Failure {
    /// tailscaled does not answer: it is killed (and restarted).
    pub fn hung(&self) -> bool {
        matches!(self, Failure::NotReady { .. } | Failure::Unanswered { .. })
    }

    /// The LocalAPI connection failed: tailscaled may have exited.
    pub fn lost(&self) -> bool {
        matches!(self, Failure::Api { lost: true, .. })
    }

    /// The node is up, but serve or SSH is not as configured: only reported once the
    /// workload runs.
    pub fn finishing(&self) -> bool {
        matches!(self, Failure::Ssh(_) | Failure::Serve(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::NotReady { limit, tail } => write!(
                f,
                "tailscaled did not answer within {} (tailscale.boot_timeout); its last \
                 lines:\n{tail}",
                duration::format(*limit)
            ),
            Failure::Unanswered { what } => write!(
                f,
                "tailscaled did not answer {what} within {}",
                duration::format(localapi::ANSWER_TIMEOUT)
            ),
            Failure::Stuck {
                state,
                setting,
                limit,
                tail,
            } => write!(
                f,
                "tailscaled is still in state {state} after {} ({setting}); its last \
                 lines:\n{tail}",
                duration::format(*limit)
            ),
            Failure::StateStore { why, path, tail } => write!(
                f,
                "tailscaled cannot read its state: {why}\nfix: if {} is damaged, move it \
                 aside (keep it: it holds the node's keys) and start again; the node then \
                 logs in as a new machine (with an auth key)\ntailscaled's last lines:\n{tail}",
                path.display()
            ),
            Failure::Api { what, error, .. } => {
                write!(f, "cannot read tailscale's {what}: {error}")
            }
            Failure::Cli { call, why } if why.is_empty() => f.write_str(call),
            Failure::Cli { call, why } => write!(f, "{call}: {why}"),
            Failure::LeftStarting { state, health } => {
                write!(f, "tailscaled went from Starting to {state}: {health}")
            }
            Failure::NeedsApproval => f.write_str(
                "this machine is waiting for approval: an admin of the tailnet must approve \
                 it (Machines page of the admin console)",
            ),
            Failure::Unexpected(state) => {
                write!(
                    f,
                    "tailscaled is in state {state}, which tsinit cannot act on"
                )
            }
            Failure::Start(why) | Failure::Ssh(why) | Failure::Serve(why) => f.write_str(why),
        }
    }
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
    Failure::Unanswered {
        what: req.what.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_says_what_went_wrong_and_what_it_means() {
        let s = Duration::from_secs;
        let cases: Vec<(Failure, &str, bool, bool)> = vec![
            (
                Failure::NotReady {
                    limit: s(60),
                    tail: "  tailscaled: x".into(),
                },
                "tailscaled did not answer within 60s (tailscale.boot_timeout); its last \
                 lines:\n  tailscaled: x",
                true,
                false,
            ),
            (
                Failure::Unanswered {
                    what: "GET /localapi/v0/prefs".into(),
                },
                "tailscaled did not answer GET /localapi/v0/prefs within 10s",
                true,
                false,
            ),
            (
                Failure::Stuck {
                    state: "Starting".into(),
                    setting: "tailscale.up_timeout",
                    limit: s(1),
                    tail: "-".into(),
                },
                "tailscaled is still in state Starting after 1s (tailscale.up_timeout); its \
                 last lines:\n-",
                false,
                false,
            ),
            (
                Failure::Api {
                    what: "prefs",
                    error: "connection refused".into(),
                    lost: true,
                },
                "cannot read tailscale's prefs: connection refused",
                false,
                false,
            ),
            (
                Failure::Cli {
                    call: "tailscale up failed (exit code 1)".into(),
                    why: "backend error: invalid key".into(),
                },
                "tailscale up failed (exit code 1): backend error: invalid key",
                false,
                false,
            ),
            (
                Failure::LeftStarting {
                    state: BackendState::NeedsLogin,
                    health: "You are logged out.".into(),
                },
                "tailscaled went from Starting to NeedsLogin: You are logged out.",
                false,
                false,
            ),
            (
                Failure::Unexpected("InUseOtherUser".into()),
                "tailscaled is in state InUseOtherUser, which tsinit cannot act on",
                false,
                false,
            ),
            (
                Failure::Ssh("ssh = true, but x".into()),
                "ssh = true, but x",
                false,
                true,
            ),
            (Failure::Serve("serve: y".into()), "serve: y", false, true),
        ];
        for (failure, text, hung, finishing) in cases {
            assert_eq!(failure.to_string(), text);
            assert_eq!(
                (failure.hung(), failure.finishing()),
                (hung, finishing),
                "{text}"
            );
        }
        assert!(
            Failure::NeedsApproval
                .to_string()
                .starts_with("this machine is waiting for approval")
        );
        let lost = Failure::Api {
            what: "status",
            error: String::new(),
            lost: true,
        };
        assert!(lost.lost() && !Failure::NeedsApproval.lost());
    }
}
