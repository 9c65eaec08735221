//! tsinit's entry point. `run` reads as the lifecycle, one call per step of the README's
//! "Operation" list.
//!
//! `main` is the C entry point rather than Rust's so that the Rust runtime does not set
//! SIGPIPE to ignored before tsinit can record how its parent left it.
#![no_main]

use std::ffi::{OsString, c_char, c_int};
use std::io::Write;

use log::{debug, warn};
use tsinit::bringup::identity;
use tsinit::cli::{self, Invocation, USAGE, UsageError};
use tsinit::config::OnFailure;
use tsinit::error::{EXIT_USAGE, Error};
use tsinit::init::{self, Init, Service};
use tsinit::signals::Signals;
use tsinit::tailscaled::{self, BringupError, Tailscaled};
use tsinit::{commands, config, detached, logging, sys};

#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: the C runtime passes `argc` valid NUL-terminated strings in `argv`.
    let args = unsafe { sys::args_from_c(argc, argv) };
    run(args)
}

fn run(args: Vec<OsString>) -> i32 {
    // 1. Take over every signal before anything else happens.
    sys::ensure_stdio_open();
    let signals = match Signals::take_over() {
        Ok(signals) => signals,
        Err(e) => return fail(init::setup_error("set up signal handling")(e)),
    };

    // 2. Read the command line, start logging, load the configuration.
    let run_args = match cli::parse(args.get(1..).unwrap_or_default()) {
        Ok(Invocation::Run(run_args)) => run_args,
        Ok(Invocation::Help) => {
            std::io::stdout().write_all(USAGE.as_bytes()).ok();
            return 0;
        }
        Ok(Invocation::Version) => {
            let version = concat!("tsinit ", env!("CARGO_PKG_VERSION"), "\n");
            std::io::stdout().write_all(version.as_bytes()).ok();
            return 0;
        }
        Ok(Invocation::Subcommand(name, rest)) => {
            logging::init(0);
            return commands::run(&name, &rest);
        }
        Err(UsageError(msg)) => {
            logging::print_error(&format!("{msg}\n\n{USAGE}"));
            return EXIT_USAGE;
        }
    };
    logging::init(run_args.verbosity);
    // The environment is checked, and the secrets in it are taken out of tsinit's own
    // environment before anything else (a thread, a child) exists; their values are
    // kept here.
    if let Err(e) = sys::with_environ(|vars| config::check_environment(vars.iter().copied())) {
        return fail(Error::Config(e));
    }
    let secret_vars = hide_secrets();
    // `tsinit run` started by `tsinit up`: the pipe on which it hears how things go.
    let mut ready = match run_args.program.is_empty() {
        true => detached::ready_pipe(),
        false => None,
    };
    let mut holds_secret = !secret_vars.is_empty();
    let env = |name: &str| {
        secret_vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let config = match config::load(run_args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(e) => return fail(Error::Config(e)),
    };
    for secret in &config.tailscale.up_secrets {
        logging::add_secret(&secret.value);
        holds_secret = true;
    }
    debug!("configuration: {config:?}");

    // 3. Preflight: decide whether and how tailscaled runs (kernel or userspace).
    let prepared = match tailscaled::prepare(&config, &env, run_args.program.is_empty()) {
        Ok(prepared) => prepared,
        Err(e) => return fail(e),
    };
    if prepared.is_none() && run_args.program.is_empty() {
        return fail(Error::Unavailable(
            "`tsinit run` runs tailscale alone, and tailscale is not run here \
             (tailscale.enabled = false, or no tailscaled found)"
                .to_string(),
        ));
    }
    if prepared.is_none() && config.http.serving().is_some() {
        return fail(Error::Unavailable(
            "the health and metrics endpoint (http.health, http.metrics) reports on the \
             tailscale node, and tailscale is not run here (tailscale.enabled = false, or no \
             tailscaled found): run tailscale, or turn health and metrics off"
                .to_string(),
        ));
    }
    let mut tailnet = match prepared.map(|p| Tailscaled::new(p, &config)).transpose() {
        Ok(tailnet) => tailnet,
        Err(e) => return fail(e),
    };
    // The state directory is locked: this is the one supervisor of it.
    detached::tell(&mut ready, "locked");
    let on_failure = config.on_failure;
    if holds_secret || tailnet.as_ref().is_some_and(|t| t.holds_secret()) {
        // Its memory holds a secret: readable only with CAP_SYS_PTRACE from now on.
        if let Err(e) = sys::set_not_dumpable() {
            warn!("cannot make tsinit non-dumpable: {e}");
        }
    }

    // 4. Become the init: PID 1 as is, otherwise a child subreaper.
    let mut init = Init::new(signals, config);

    // 5. Start tailscaled and bring the node up (fail loudly, or go on as configured).
    if let Some(t) = tailnet.as_mut() {
        match t.bring_up(&mut init) {
            Ok(()) => detached::tell(&mut ready, "up"),
            Err(BringupError::Stop(sig)) => {
                t.stop(&mut init);
                return 128 + sig;
            }
            Err(BringupError::Failed(why)) if on_failure == OnFailure::Continue => {
                detached::tell(&mut ready, &format!("failed: {}", why.replace('\n', "; ")));
                let then = match run_args.program.is_empty() {
                    true => "going on",
                    false => "starting the workload anyway",
                };
                warn!("{why}\n{then} (on_failure = \"continue\"), retrying in the background");
                t.retry_later();
            }
            Err(BringupError::Failed(why)) => {
                let code = fail(Error::Unavailable(format!(
                    "{why}\n(on_failure = \"exit\"; set it to \"continue\" to start the workload anyway)"
                )));
                t.stop(&mut init);
                return code;
            }
        }
    }

    // 6. Write the hosts block, then start the workload, without the auth key and
    //    (unless configured) without CAP_NET_ADMIN/CAP_NET_RAW.
    let mut env: Vec<(String, Option<String>)> = identity::SECRET_VARS
        .iter()
        .map(|v| (v.to_string(), None))
        .collect();
    let mut drop_caps = true;
    if let Some(t) = &tailnet {
        env.extend(t.workload_env());
        drop_caps = !t.keep_caps();
    }
    if let Some(t) = tailnet.as_mut() {
        t.sync_hosts();
    }
    init.pump(Some(std::time::Instant::now()), &[]); // a stop signal may be pending
    if let Some(sig) = init.stop_requested() {
        tailnet.stop(&mut init);
        return 128 + sig;
    }
    drop(ready);
    if run_args.program.is_empty() {
        // `tsinit run`: tailscale alone, until a stop signal.
        if let Some(t) = tailnet.as_mut() {
            t.on_workload_started();
        }
        let sig = init.serve(&mut tailnet);
        debug!("stopping on {}", tsinit::signals::name(sig));
        init.stop_leftovers(&tailnet.pids());
        tailnet.stop(&mut init);
        return 0;
    }
    if let Err(e) = init.spawn_workload(&run_args.program, &env, drop_caps) {
        tailnet.stop(&mut init);
        return fail(e);
    }
    if let Some(t) = tailnet.as_mut() {
        t.on_workload_started();
    }

    // 7. Forward signals, reap, and keep tailscaled running until the workload exits.
    let exit = init.supervise(&mut tailnet);

    // 8. Stop what is left (SIGTERM, grace period, SIGKILL), then tailscaled.
    init.stop_leftovers(&tailnet.pids());
    tailnet.stop(&mut init);

    // 9. Exit with the workload's status.
    init::exit_code(exit)
}

/// Prints tsinit's own failure once and returns its exit status.
fn fail(e: Error) -> i32 {
    logging::print_error(&e.to_string());
    e.exit_code()
}

/// Takes the secrets out of tsinit's own environment: the auth key variables go, and
/// the extra `up` arguments lose their `--auth-key`/`--client-secret`/`--id-token`
/// (the workload sees them without). Every secret is also hidden from the log. Returns
/// the variables it changed, with their values as they were. Runs while tsinit has a
/// single thread.
fn hide_secrets() -> Vec<(String, String)> {
    let mut taken = Vec::new();
    for var in identity::SECRET_VARS {
        if let Ok(value) = std::env::var(var) {
            logging::add_secret(&value);
            sys::scrub_env(var);
            taken.push((var.to_string(), value));
        }
    }
    let extra_vars = [
        "TS_EXTRA_ARGS".to_string(),
        config::env_name("tailscale.extra_up_args"),
    ];
    for var in extra_vars {
        let Ok(value) = std::env::var(&var) else {
            continue;
        };
        let args: Vec<String> = value.split_whitespace().map(str::to_string).collect();
        let (rest, secrets) = identity::split_secret_args(&args);
        if secrets.is_empty() {
            continue;
        }
        for secret in &secrets {
            logging::add_secret(&secret.value);
        }
        sys::scrub_env(&var);
        if let Err(e) = sys::set_env(&var, &rest.join(" ")) {
            debug!("cannot set {var} without its secrets: {e}");
        }
        taken.push((var, value));
    }
    taken
}
