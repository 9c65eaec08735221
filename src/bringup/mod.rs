//! Getting the node to what the configuration says, read top to bottom as README
//! "Operation" step 5: tailscaled answers → its prefs → (a saved login, or the state
//! once known) → nothing, `tailscale set` or `tailscale up` → Running → a rename
//! followed → the bus heard → serve → SSH. Each step waits for an event the main loop
//! delivers (an answer, a bus event, a CLI exit, a deadline): no step ever blocks, so the
//! same bring-up runs before the workload and, after a restart, while it runs.

mod finish;
pub mod identity;
pub(crate) mod plan;
mod step;

pub use step::{Failure, Step};
use step::{Progress, hung};

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::duration;
use crate::init::Init;
use crate::localapi::{self, Answer, BackendState, PREFS, Prefs, Request, STATUS, Status};
use crate::serve::apply::JobError;
use crate::tailscaled::{Tailscaled, cli};
use plan::{Current, Plan};

/// How long a bring-up that renamed the node waits for control's new DNS name.
const RENAME_WAIT: Duration = Duration::from_secs(10);
/// How long the bring-up waits for the IPN bus's first notification (it comes at once).
const SETTLE_WAIT: Duration = Duration::from_secs(10);

impl Tailscaled {
    /// Makes what progress the bring-up can; `Some` once it has ended.
    pub(crate) fn advance(&mut self, init: &mut Init) -> Progress {
        loop {
            let step = std::mem::replace(&mut self.step, Step::Idle);
            let (next, progress) = self.step_once(step, init);
            match progress {
                Some(Ok(false)) => {
                    self.step = next;
                    return None;
                }
                Some(Ok(true)) => self.step = next,
                Some(Err(f)) => {
                    self.step = Step::Idle;
                    return Some(Err(f));
                }
                None => {
                    self.step = next;
                    return Some(Ok(()));
                }
            }
        }
    }

    /// One look at `step`: the step to be in, and Some(Ok(true)) to look again at once,
    /// Some(Ok(false)) to wait, Some(Err) on failure, None when the bring-up is done.
    fn step_once(&mut self, step: Step, init: &mut Init) -> (Step, Option<Result<bool, Failure>>) {
        let wait = |s: Step| (s, Some(Ok(false)));
        // The next step (Idle: the bring-up is done), to be looked at at once.
        let go = |s: Result<Step, Failure>| match s {
            Ok(Step::Idle) => (Step::Idle, None),
            Ok(s) => (s, Some(Ok(true))),
            Err(f) => (Step::Idle, Some(Err(f))),
        };
        let fail = |f: Failure| (Step::Idle, Some(Err(f)));
        match step {
            Step::Idle => (Step::Idle, Some(Ok(false))),
            Step::Ready(mut w) => match w.poll(&self.inotify) {
                Err(why) => fail(Failure::Start(why)),
                Ok(Some(status)) => go(self.answered(status)),
                Ok(None) if Instant::now() >= w.deadline => fail(Failure::NotReady {
                    limit: self.cfg.boot_timeout,
                    tail: self.last_lines(),
                }),
                Ok(None) => wait(Step::Ready(w)),
            },
            Step::Prefs { status, mut req } => match req.poll() {
                Answer::Pending => wait(Step::Prefs { status, req }),
                Answer::TimedOut => fail(hung(&req)),
                Answer::Failed(e) => fail(api("prefs", &e)),
                Answer::Ok(resp) => match localapi::decode_prefs(&resp) {
                    Err(e) => fail(api("prefs", &e)),
                    Ok(prefs) => go(self.with_prefs(*status, prefs, init)),
                },
            },
            Step::LeftNoState {
                prefs,
                req,
                heard,
                until,
            } => self.left_no_state(prefs, req, heard, until, init),
            Step::Cli { mut run, up, flow } => match run.poll(init) {
                None => wait(Step::Cli { run, up, flow }),
                Some(ended) => match ended.failure(&run.shown) {
                    Some(why) if matches!(ended, cli::Ended::TimedOut(_)) => fail(Failure::Cli {
                        call: why,
                        why: String::new(),
                    }),
                    Some(_) => {
                        let failure = match &ended {
                            cli::Ended::Failed(exit, cli) => Failure::Cli {
                                call: format!(
                                    "tailscale {} failed ({})",
                                    run.shown,
                                    crate::init::describe(*exit)
                                ),
                                why: cli.clone(),
                            },
                            _ => Failure::Start(format!("tailscale {} failed", run.shown)),
                        };
                        go(self.explain(failure))
                    }
                    None if up => go(self.status_request().map(|req| Step::UpDone { req, flow })),
                    None => go(Ok(self.after_converge(flow))),
                },
            },
            Step::Explain { failure, mut req } => {
                let health = match req.poll() {
                    Answer::Pending => return wait(Step::Explain { failure, req }),
                    Answer::Ok(resp) => localapi::decode_status(&resp)
                        .map(|s| s.health.join("; "))
                        .unwrap_or_default(),
                    Answer::TimedOut | Answer::Failed(_) => String::new(),
                };
                fail(with_health(*failure, health))
            }
            Step::UpDone { mut req, flow } => {
                let ips = match req.poll() {
                    Answer::Pending => return wait(Step::UpDone { req, flow }),
                    Answer::Ok(resp) => localapi::decode_status(&resp)
                        .map(|s| s.tailscale_ips.join(", "))
                        .unwrap_or_default(),
                    Answer::TimedOut | Answer::Failed(_) => String::new(),
                };
                info!("tailscale is up as {} ({ips})", self.p.desired.hostname);
                // What only `tailscale set` changes comes after the login.
                let set = self.p.desired.set_flags.args();
                match set.is_empty() {
                    true => go(Ok(self.after_converge(flow))),
                    false => go(self.run_set(set, init, flow)),
                }
            }
            Step::Running { until, flow } => match self.view.state {
                Some(BackendState::Running) if self.netmap_in() => go(Ok(self.after_running(flow))),
                // The saved login was refused: the node is gone at control. Logged in
                // again, once, with what tsinit was given to log in with.
                Some(BackendState::NeedsLogin) if flow.starting && self.can_log_in() => {
                    warn!("{REFUSED}");
                    let flow = Flow {
                        starting: false,
                        ..flow
                    };
                    let args = plan::up_args(&self.p.desired);
                    go(self.run_up(args, true, init, flow))
                }
                Some(s)
                    if !matches!(
                        s,
                        BackendState::Starting | BackendState::NoState | BackendState::Running
                    ) =>
                {
                    go(self.explain(Failure::LeftStarting {
                        state: s,
                        health: String::new(),
                    }))
                }
                state if Instant::now() >= until => fail(Failure::Stuck {
                    state: state.unwrap_or(BackendState::Starting).to_string(),
                    setting: "tailscale.up_timeout",
                    limit: self.cfg.up_timeout,
                    tail: self.last_lines(),
                }),
                _ => wait(Step::Running { until, flow }),
            },
            Step::Renamed { until, label } => {
                if identity::named_after(self.view.dns_name(), &label) {
                    go(Ok(self.settle()))
                } else if Instant::now() >= until {
                    warn!(
                        "serve: control did not rename the node within {}; serving under its \
                         current name",
                        duration::format(RENAME_WAIT)
                    );
                    go(Ok(self.settle()))
                } else {
                    wait(Step::Renamed { until, label })
                }
            }
            Step::Settle { until } => {
                // The node is up: its netmap is awaited too (the CLI can see Running
                // before this bus follower has read the netmap). Not waited for once the
                // bus has ended (it will not be heard).
                if (self.view.heard > 0 && self.netmap_in())
                    || !self.follows_bus()
                    || Instant::now() >= until
                {
                    go(self.finish())
                } else {
                    wait(Step::Settle { until })
                }
            }
            Step::Serve(mut job) => match job.poll(&self.p.serve, &self.cfg.socket) {
                None => wait(Step::Serve(job)),
                Some(Err(JobError::Hung(what))) => fail(Failure::Unanswered { what }),
                Some(result) => {
                    let served = result.err().map(|e| e.to_string());
                    go(self.ssh(served))
                }
            },
            Step::Reserve(mut job) => match job.poll(&self.p.serve, &self.cfg.socket) {
                None => wait(Step::Reserve(job)),
                Some(Ok(())) => (Step::Idle, None),
                Some(Err(JobError::Hung(what))) => fail(Failure::Unanswered { what }),
                Some(Err(JobError::Failed(m))) => fail(Failure::Serve(m)),
            },
            Step::Ssh { status, prefs, got } => self.ssh_answers(status, prefs, got),
        }
    }

    /// tailscaled answered its first status request.
    fn answered(&mut self, status: Status) -> Result<Step, Failure> {
        self.check_state_store(&status)?;
        self.follow_bus();
        let req = Request::get(&self.cfg.socket, PREFS).map_err(|e| api("prefs", &e))?;
        Ok(Step::Prefs {
            status: Box::new(status),
            req,
        })
    }

    /// With the status and the prefs: decide, or first wait for the real state.
    fn with_prefs(
        &mut self,
        status: Status,
        prefs: Prefs,
        init: &mut Init,
    ) -> Result<Step, Failure> {
        match status.state() {
            Some(BackendState::NoState) if prefs.saved_login() => {
                // Answering already, but not started: its prefs are loaded, and with a
                // saved login it is starting.
                debug!("tailscaled has a saved login (state still NoState): Starting");
                self.converge(BackendState::Starting, &prefs, init)
            }
            Some(BackendState::NoState) => Ok(Step::LeftNoState {
                prefs: Box::new(prefs),
                req: None,
                heard: self.view.heard,
                until: Instant::now() + self.cfg.boot_timeout,
            }),
            Some(state) => self.converge(state, &prefs, init),
            None => Err(Failure::Unexpected(status.backend_state)),
        }
    }

    fn left_no_state(
        &mut self,
        prefs: Box<Prefs>,
        req: Option<Request>,
        heard: u64,
        until: Instant,
        init: &mut Init,
    ) -> (Step, Option<Result<bool, Failure>>) {
        let known = |s: Option<BackendState>| s.filter(|s| *s != BackendState::NoState);
        if let Some(state) = known(self.view.state) {
            return match self.converge(state, &prefs, init) {
                Ok(s) => (s, Some(Ok(true))),
                Err(f) => (Step::Idle, Some(Err(f))),
            };
        }
        let mut req = req;
        if let Some(r) = req.as_mut() {
            match r.poll() {
                Answer::Pending => {}
                Answer::TimedOut => return (Step::Idle, Some(Err(hung(r)))),
                Answer::Failed(e) => {
                    debug!("status: {e}");
                    req = None;
                }
                Answer::Ok(resp) => {
                    let state = localapi::decode_status(&resp).ok().and_then(|s| s.state());
                    if let Some(state) = known(state) {
                        return match self.converge(state, &prefs, init) {
                            Ok(s) => (s, Some(Ok(true))),
                            Err(f) => (Step::Idle, Some(Err(f))),
                        };
                    }
                    req = None;
                }
            }
        }
        if Instant::now() >= until {
            let stuck = Failure::Stuck {
                state: BackendState::NoState.to_string(),
                setting: "tailscale.boot_timeout",
                limit: self.cfg.boot_timeout,
                tail: self.last_lines(),
            };
            return (Step::Idle, Some(Err(stuck)));
        }
        // Something happened on the bus: read the state again.
        let mut seen = heard;
        if req.is_none() && self.view.heard > heard {
            seen = self.view.heard;
            req = Request::get(&self.cfg.socket, STATUS).ok();
        }
        let step = Step::LeftNoState {
            prefs,
            req,
            heard: seen,
            until,
        };
        (step, Some(Ok(false)))
    }

    /// Brings tailscale's settings in step with the configuration (see `plan::plan`).
    fn converge(
        &mut self,
        state: BackendState,
        prefs: &Prefs,
        init: &mut Init,
    ) -> Result<Step, Failure> {
        let flow = Flow {
            starting: state == BackendState::Starting,
            renamed: false,
        };
        let current = Current {
            state,
            hostname: prefs.hostname.clone(),
            corp_dns: prefs.corp_dns,
            no_stateful_filtering: prefs.no_stateful_filtering,
            advertise_tags: prefs.advertise_tags.clone(),
            advertise_routes: prefs.advertise_routes.clone(),
            control_url: prefs.control_url.clone(),
            run_ssh: prefs.run_ssh,
            route_all: prefs.route_all,
            uses_exit_node: !prefs.exit_node_id.is_empty() || !prefs.exit_node_ip.is_empty(),
            exit_node_allow_lan_access: prefs.exit_node_allow_lan_access,
            advertise_connector: prefs.advertise_connector,
            shields_up: prefs.shields_up,
            no_snat: prefs.no_snat,
            netfilter_mode: prefs.netfilter_mode,
            operator: prefs.operator_user.clone(),
            web_client: prefs.run_web_client,
            update_check: prefs.update_check,
            auto_update: prefs.auto_update.unwrap_or(false),
            posture_checking: prefs.posture_checking,
            relay_server_port: prefs.relay_server_port,
            profile_name: prefs.profile_name.clone(),
        };
        let hostname = self.p.desired.hostname.clone();
        match plan::plan(&current, &self.p.desired) {
            Plan::Nothing => {
                info!("tailscale is up as {hostname} ({state}); nothing to change");
                Ok(self.after_converge(flow))
            }
            Plan::Keep { reason, set } if set.is_empty() => {
                warn!("{reason}");
                Ok(self.after_converge(flow))
            }
            Plan::Keep { reason, set } => {
                warn!("{reason}");
                self.run_set(set, init, flow)
            }
            Plan::Set(args) => self.run_set(args, init, flow),
            Plan::Up { args, needs_key } => {
                // Logged out by control, not by anyone here: the node is gone there.
                if state == BackendState::NeedsLogin && prefs.saved_login() && self.can_log_in() {
                    warn!("{REFUSED}");
                }
                self.run_up(args, needs_key, init, flow)
            }
            Plan::NeedsApproval => Err(Failure::NeedsApproval),
            Plan::Unexpected(state) => Err(Failure::Unexpected(state)),
        }
    }

    /// `tailscale up` with `args` (and the key and other secrets, if `needs_key`).
    fn run_up(
        &mut self,
        args: Vec<String>,
        needs_key: bool,
        init: &mut Init,
        flow: Flow,
    ) -> Result<Step, Failure> {
        let hostname = self.p.desired.hostname.clone();
        let with_key = needs_key && self.holds_secret();
        if needs_key && !with_key && !self.can_log_in() {
            warn!(
                "tailscale is not logged in and no auth key was given \
                 (TS_AUTHKEY, tailscale.auth_key_file, /run/secrets/ts_authkey): \
                 starting an interactive login; open the URL below to log in"
            );
        }
        info!("tailscale up as {hostname}");
        let mut full = vec!["up".to_string()];
        full.extend(args);
        let key = self.p.key.as_ref().map(|k| ("auth-key", k.key.clone()));
        let others = self.p.secrets.iter().map(|s| (s.flag, s.value.clone()));
        let secrets: Vec<(&str, String)> = match with_key {
            true => key.into_iter().chain(others).collect(),
            false => Vec::new(),
        };
        let limit = self.cfg.up_timeout + Duration::from_secs(10);
        self.run_cli(init, &full, secrets, limit, flow)
    }

    /// Whether tsinit can log the node in by itself: it has a key, another secret, or a
    /// client id the CLI mints a key with.
    fn can_log_in(&self) -> bool {
        self.holds_secret() || self.p.mints
    }

    /// `tailscale set` with `args`.
    fn run_set(&mut self, args: Vec<String>, init: &mut Init, flow: Flow) -> Result<Step, Failure> {
        let flow = Flow {
            renamed: args.iter().any(|a| a.starts_with("--hostname=")),
            ..flow
        };
        info!("tailscale set {}", args.join(" "));
        let mut full = vec!["set".to_string()];
        full.extend(args);
        self.run_cli(init, &full, Vec::new(), Duration::from_secs(30), flow)
    }

    fn run_cli(
        &mut self,
        init: &mut Init,
        args: &[String],
        secrets: Vec<(&str, String)>,
        limit: Duration,
        flow: Flow,
    ) -> Result<Step, Failure> {
        let up = args.first().is_some_and(|a| a == "up");
        let secrets: Vec<(&str, &str)> = secrets.iter().map(|(f, v)| (*f, v.as_str())).collect();
        let run = cli::start(
            init,
            &self.p.tailscale,
            &self.cfg.socket,
            args,
            &secrets,
            limit,
        )
        .map_err(Failure::Start)?;
        Ok(Step::Cli { run, up, flow })
    }

    /// Fails with `prefix` and `cli`'s words, once tailscaled's health is read.
    fn explain(&self, failure: Failure) -> Result<Step, Failure> {
        match Request::get(&self.cfg.socket, STATUS) {
            Ok(req) => Ok(Step::Explain {
                failure: Box::new(failure),
                req,
            }),
            Err(_) => Err(failure),
        }
    }

    fn status_request(&self) -> Result<Request, Failure> {
        Request::get(&self.cfg.socket, STATUS).map_err(|e| api("status", &e))
    }

    /// Settings are in step: a resumed login waits for Running (leaving Starting always
    /// comes with a State event).
    fn after_converge(&mut self, flow: Flow) -> Step {
        if flow.starting {
            return Step::Running {
                until: Instant::now() + self.cfg.up_timeout,
                flow,
            };
        }
        self.after_running(flow)
    }

    /// Running: after a rename, served web names wait for control's new DNS name.
    fn after_running(&mut self, flow: Flow) -> Step {
        if flow.renamed && self.p.serve.configured() {
            return Step::Renamed {
                until: Instant::now() + RENAME_WAIT,
                label: identity::dns_label(&self.p.desired.hostname),
            };
        }
        self.settle()
    }

    /// Whether the netmap the hosts block is written from has arrived (there is nothing
    /// to wait for without a hosts block): the workload then finds the names in place.
    fn netmap_in(&self) -> bool {
        self.hosts.is_none() || !self.view.dns_name().is_empty()
    }

    fn last_lines(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.last_lines(std::time::Duration::ZERO))
            .unwrap_or_default()
    }
}

/// A failed LocalAPI request for tailscale's `what`.
fn api(what: &'static str, e: &localapi::ApiError) -> Failure {
    Failure::Api {
        what,
        error: e.to_string(),
        lost: e.lost_connection(),
    }
}

/// `failure` with tailscaled's health messages: after the CLI's own words (a bad flag,
/// a refused value), or as the reason a resumed login failed.
fn with_health(failure: Failure, health: String) -> Failure {
    match failure {
        Failure::Cli { call, why } => {
            let why = match (why.is_empty(), health.is_empty()) {
                (true, _) => health,
                (false, true) => why,
                (false, false) => format!("{why} (tailscaled says: {health})"),
            };
            Failure::Cli { call, why }
        }
        Failure::LeftStarting { state, .. } => Failure::LeftStarting { state, health },
        other => other,
    }
}

/// Said when control refuses a saved login and tsinit logs in again.
const REFUSED: &str = "control refused the saved login (the node was deleted, or was \
    ephemeral and removed while offline): logging in again as a new node";

/// What a bring-up carries from its decision to its end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flow {
    /// A resumed login: Running is still to come.
    starting: bool,
    /// `tailscale set --hostname` ran: control renames the node.
    renamed: bool,
}
