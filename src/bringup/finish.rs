//! The end of a bring-up: the bus heard, the serve config brought in step, Tailscale SSH
//! checked; and the state store's health, checked at its start.

use std::time::Instant;

use log::info;

use super::SETTLE_WAIT;
use super::step::{Failure, Step, hung};
use crate::localapi::{self, Answer, PREFS, Prefs, Request, SSH_CAPABILITY, Status};
use crate::serve::apply::{Job, JobError};
use crate::tailscaled::{Phase, Tailscaled};

/// `req`'s answer as `decode` reads it (`None` while it is pending); a failed or
/// undecodable answer as `fail` words it, no answer in time as tailscaled hung.
fn answer<T>(
    req: &mut Request,
    decode: impl Fn(&localapi::Response) -> Result<T, localapi::ApiError>,
    fail: impl Fn(String) -> Failure,
) -> Result<Option<T>, Failure> {
    match req.poll() {
        Answer::Pending => Ok(None),
        Answer::TimedOut => Err(hung(req)),
        Answer::Failed(e) => Err(fail(e.to_string())),
        Answer::Ok(resp) => decode(&resp).map(Some).map_err(|e| fail(e.to_string())),
    }
}

impl Tailscaled {
    /// The node is up; the bus's first notification (and so the hosts block) is awaited.
    pub(super) fn settle(&mut self) -> Step {
        if self.retrying && self.phase == Phase::Steady {
            info!("tailscale is back");
            self.failures = 0;
            self.retrying = false;
        }
        Step::Settle {
            until: Instant::now() + SETTLE_WAIT,
        }
    }

    /// Serve, then SSH.
    pub(super) fn finish(&mut self) -> Result<Step, Failure> {
        match Job::start(&self.p.serve, &self.cfg.socket) {
            Ok(Some(job)) => Ok(Step::Serve(Box::new(job))),
            Ok(None) => self.ssh(None),
            Err(JobError::Hung(what)) => Err(Failure::Unanswered { what }),
            Err(JobError::Failed(m)) => self.ssh(Some(m)),
        }
    }

    /// With ssh = true: asks whether control enabled Tailscale SSH for this node (the
    /// prefs say RunSSH, but tailscaled serves no SSH without the capability). A serve
    /// problem (`served`) is reported after SSH's.
    pub(super) fn ssh(&mut self, served: Option<String>) -> Result<Step, Failure> {
        self.served = served;
        if !self.p.desired.ssh {
            return self.done();
        }
        let status = self.status_request()?;
        let prefs = Request::get(&self.cfg.socket, PREFS)
            .map_err(|e| Failure::Ssh(format!("cannot read tailscale's prefs: {e}")))?;
        Ok(Step::Ssh {
            status,
            prefs,
            got: Box::default(),
        })
    }

    pub(super) fn ssh_answers(
        &mut self,
        mut status: Request,
        mut prefs: Request,
        mut got: Box<(Option<Status>, Option<Prefs>)>,
    ) -> (Step, Option<Result<bool, Failure>>) {
        let finish = |why: String| (Step::Idle, Some(Err(Failure::Ssh(why))));
        let read = |what: &'static str| {
            move |e: String| Failure::Ssh(format!("cannot read tailscale's {what}: {e}"))
        };
        if got.0.is_none() {
            match answer(&mut status, localapi::decode_status, read("status")) {
                Ok(s) => got.0 = s,
                Err(f) => return (Step::Idle, Some(Err(f))),
            }
        }
        if got.1.is_none() {
            match answer(&mut prefs, localapi::decode_prefs, read("prefs")) {
                Ok(p) => got.1 = p,
                Err(f) => return (Step::Idle, Some(Err(f))),
            }
        }
        let (Some(s), Some(p)) = (&got.0, &got.1) else {
            return (Step::Ssh { status, prefs, got }, Some(Ok(false)));
        };
        let has_cap = s
            .self_
            .as_ref()
            .is_some_and(|me| me.cap_map.iter().any(|c| c == SSH_CAPABILITY));
        if !p.run_ssh {
            return finish(
                "ssh = true, but Tailscale SSH is off in tailscaled's prefs (see the warnings \
                 above)"
                    .to_string(),
            );
        }
        if !has_cap {
            return finish(
                "ssh = true, but this tailnet has not enabled Tailscale SSH for this node \
                 (control sent no ssh capability): add an \"ssh\" rule for it to the tailnet \
                 policy, or set ssh = false"
                    .to_string(),
            );
        }
        info!("Tailscale SSH is on: peers reach port 22 as the tailnet's ssh rules allow");
        match self.done() {
            Ok(step) => (step, None),
            Err(f) => (Step::Idle, Some(Err(f))),
        }
    }

    /// The end of a bring-up: a serve problem held back is reported now.
    fn done(&mut self) -> Result<Step, Failure> {
        match self.served.take() {
            Some(why) => Err(Failure::Serve(why)),
            None => Ok(Step::Idle),
        }
    }

    /// Fails at once when tailscaled could not read its state (a file truncated by a
    /// crash, say): it then runs on an empty in-memory store, never logs in, and waiting
    /// would only end in a timeout. The damaged file is left as it is.
    pub(super) fn check_state_store(&self, status: &Status) -> Result<(), Failure> {
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
        Err(Failure::StateStore {
            why: why.to_string(),
            path: state,
            tail: self.last_lines(),
        })
    }
}
