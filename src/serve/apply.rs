//! Bringing tailscaled's serve config in step with the configuration, from the main loop:
//! what tsinit serves (`[[serve]]`, the `serve_config` file), what it set
//! before (a record beside the state), and the job that reads, merges and writes the
//! config through the LocalAPI without ever blocking (ETag, one retry on 412).

use std::fs::File;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

use crate::config::{self, Config};
use crate::error::Error;
use crate::localapi::{self, Answer, Request, SERVE_CONFIG, STATUS, Status};

/// What tsinit serves on the node's tailnet addresses (see `serve`).
pub struct ServeSetup {
    entries: Vec<super::Entry>,
    /// The ServeConfig file (TS_SERVE_CONFIG): checked at start-up, read again at each
    /// bring-up.
    pub file: Option<PathBuf>,
    /// Where tsinit remembers what it set, beside tailscaled's state.
    pub record: PathBuf,
}

/// Reads a ServeConfig file, `${TS_CERT_DOMAIN}` replaced by `domain`.
pub fn read_serve_file(path: &Path, domain: &str) -> Result<super::Fragment, String> {
    let text = config::read_small_file(path)?;
    let expanded = super::expand_cert_domain(&text, domain);
    let value: serde_json::Value =
        serde_json::from_slice(expanded.as_bytes()).map_err(|e| format!("not JSON: {e}"))?;
    super::Fragment::from_json(&value)
}

impl ServeSetup {
    pub fn from_config(config: &Config) -> Result<ServeSetup, Error> {
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
                    if config.serve.iter().any(|e| e.port == port) {
                        return Err(bad(format!(
                            "port {port} is served by the file and by [[serve]]: keep one"
                        )));
                    }
                }
                Some(path.clone())
            }
        };
        Ok(ServeSetup {
            entries: config.serve.clone(),
            file,
            record: config.tailscale.state_dir.join("tsinit-serve.json"),
        })
    }

    pub fn configured(&self) -> bool {
        !self.entries.is_empty() || self.file.is_some()
    }

    /// What tsinit set last time ({} when nothing or unreadable).
    pub fn previous(&self) -> super::Fragment {
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return super::Fragment::default();
        };
        serde_json::from_slice(text.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|v| super::Fragment::from_json(&v))
            .unwrap_or_else(|e| {
                warn!(
                    "ignoring {} ({e}): entries tsinit served before and no longer \
                     configured stay served",
                    self.record.display()
                );
                super::Fragment::default()
            })
    }

    pub fn remember(&self, applied: &super::Fragment) -> std::io::Result<()> {
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

/// Where a serve job is.
enum Stage {
    /// The node's DNS name and certificate domains are asked for.
    Status,
    /// The current serve config is asked for.
    Read,
    /// The merged config is written (if it still has the ETag read).
    Write {
        current: serde_json::Value,
        next: serde_json::Value,
    },
}

/// One bring-in-step of the serve config, driven by the main loop.
pub struct Job {
    stage: Stage,
    request: Request,
    previous: super::Fragment,
    desired: Option<super::Fragment>,
    attempt: u8,
}

/// How a serve job failed.
#[derive(Debug)]
pub enum JobError {
    /// tailscaled did not answer this request in time (it counts as hung).
    Hung(String),
    Failed(String),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            JobError::Hung(what) => write!(
                f,
                "serve: tailscaled did not answer {what} within {}",
                crate::duration::format(localapi::ANSWER_TIMEOUT)
            ),
            JobError::Failed(m) => f.write_str(m),
        }
    }
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> JobError {
    JobError::Failed(format!("serve: cannot {what}: {e}"))
}

impl Job {
    /// Starts bringing the serve config in step; `None` when there is nothing to do (no
    /// entries now, none set by tsinit before).
    pub fn start(setup: &ServeSetup, socket: &Path) -> Result<Option<Job>, JobError> {
        let previous = setup.previous();
        if !setup.configured() && previous.is_empty() {
            return Ok(None);
        }
        let request =
            Request::get(socket, STATUS).map_err(|e| failed("read tailscale's status", &e))?;
        Ok(Some(Job {
            stage: Stage::Status,
            request,
            previous,
            desired: None,
            attempt: 0,
        }))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.request.fd()
    }

    pub fn deadline(&self) -> std::time::Instant {
        self.request.deadline
    }

    /// Makes what progress it can; `Some` once done.
    pub fn poll(&mut self, setup: &ServeSetup, socket: &Path) -> Option<Result<(), JobError>> {
        loop {
            let next = match self.request.poll() {
                Answer::Pending => return None,
                Answer::TimedOut => return Some(Err(JobError::Hung(self.request.what.clone()))),
                Answer::Ok(resp) => self.advance(&resp, setup, socket),
                Answer::Failed(e) => self.failed_answer(e, socket),
            };
            match next {
                Ok(true) => continue,
                Ok(false) => return Some(Ok(())),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// An answer that is not 2xx: a 412 to the write is a change by someone else
    /// between our read and write (read and merged again, once).
    fn failed_answer(&mut self, e: localapi::ApiError, socket: &Path) -> Result<bool, JobError> {
        Err(match (&self.stage, &e) {
            (Stage::Write { .. }, localapi::ApiError::Status { status: 412, .. })
                if self.attempt == 0 =>
            {
                debug!("serve: the config changed meanwhile; merging again");
                self.attempt = 1;
                self.request = Request::get(socket, SERVE_CONFIG)
                    .map_err(|e| failed("read the serve config", &e))?;
                self.stage = Stage::Read;
                return Ok(true);
            }
            (Stage::Status, _) => failed("read tailscale's status", &e),
            (Stage::Read, _) => failed("read the serve config", &e),
            (Stage::Write { .. }, _) => failed("set the serve config", &e),
        })
    }

    /// Handles the answer to the current stage and sends the next request; false when
    /// the job is done.
    fn advance(
        &mut self,
        resp: &localapi::Response,
        setup: &ServeSetup,
        socket: &Path,
    ) -> Result<bool, JobError> {
        match std::mem::replace(&mut self.stage, Stage::Read) {
            Stage::Status => {
                let status: Status = localapi::decode_status(resp)
                    .map_err(|e| failed("read tailscale's status", &e))?;
                self.desired = Some(desired(setup, &status)?);
            }
            Stage::Read => {
                let current: serde_json::Value = localapi::decode(resp, SERVE_CONFIG)
                    .map_err(|e| failed("read the serve config", &e))?;
                let etag = resp.header("Etag").unwrap_or_default().to_string();
                let desired = self.desired.clone().unwrap_or_default();
                let Some(next) = super::merge(&current, &self.previous, &desired) else {
                    debug!("serve: nothing to change");
                    return self.done(setup, &desired);
                };
                for key in super::taken_over(&current, &self.previous, &desired) {
                    warn!("serve: {key} was served otherwise; the configuration takes it over");
                }
                let body = next.to_string();
                let headers: &[(&str, &str)] = match etag.is_empty() {
                    true => &[],
                    false => &[("If-Match", &etag)],
                };
                self.request =
                    Request::send(socket, "POST", SERVE_CONFIG, headers, Some(body.as_bytes()))
                        .map_err(|e| failed("set the serve config", &e))?;
                self.stage = Stage::Write { current, next };
                return Ok(true);
            }
            Stage::Write { current, next } => {
                for line in super::changes(&current, &next) {
                    info!("serve: {line}");
                }
                let desired = self.desired.clone().unwrap_or_default();
                return self.done(setup, &desired);
            }
        }
        self.request =
            Request::get(socket, SERVE_CONFIG).map_err(|e| failed("read the serve config", &e))?;
        self.stage = Stage::Read;
        Ok(true)
    }

    /// Remembers what tsinit manages now; false: the job is done.
    fn done(&self, setup: &ServeSetup, desired: &super::Fragment) -> Result<bool, JobError> {
        if *desired != self.previous
            && let Err(e) = setup.remember(desired)
        {
            warn!(
                "serve: cannot write {}: {}; entries removed from the configuration \
                 later may stay served",
                setup.record.display(),
                crate::error::os_message(&e)
            );
        }
        Ok(false)
    }
}

/// What tsinit should serve, named after the node's DNS name in `status`.
fn desired(setup: &ServeSetup, status: &Status) -> Result<super::Fragment, JobError> {
    let dns_name = status
        .self_
        .as_ref()
        .map(|s| s.dns_name.trim_end_matches('.').to_string())
        .unwrap_or_default();
    if dns_name.is_empty() && setup.configured() {
        return Err(JobError::Failed(
            "serve: the node has no DNS name from control yet, so its web servers cannot be \
             named"
                .to_string(),
        ));
    }
    let file = match &setup.file {
        None => None,
        Some(path) => {
            let domain = status.cert_domains.first().unwrap_or(&dns_name);
            let fragment = read_serve_file(path, domain)
                .map_err(|e| failed(&format!("read {}", path.display()), &e))?;
            Some(fragment)
        }
    };
    let desired = super::desired(&setup.entries, file.as_ref(), &dns_name);
    if status.cert_domains.is_empty() {
        for (port, proto) in super::needs_certificate(&desired) {
            warn!(
                "serve: {proto} on port {port} needs a TLS certificate, but HTTPS is not \
                 enabled on this tailnet (no certificate domains): connections will fail \
                 until it is (admin console, DNS, HTTPS Certificates)"
            );
        }
    }
    Ok(desired)
}
