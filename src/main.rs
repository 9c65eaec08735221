//! tsinit's entry point. `run` reads as the lifecycle, one call per step of the README's
//! "Operation" list.
//!
//! `main` is the C entry point rather than Rust's so that the Rust runtime does not set
//! SIGPIPE to ignored before tsinit can record how its parent left it.
#![no_main]

use std::ffi::{OsString, c_char, c_int};

use log::debug;
use tsinit::cli::{self, Invocation, USAGE, UsageError};
use tsinit::error::{EXIT_USAGE, Error};
use tsinit::init::{self, Init};
use tsinit::signals::Signals;
use tsinit::{config, logging, sys};

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
            print!("{USAGE}");
            return 0;
        }
        Ok(Invocation::Version) => {
            println!("tsinit {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Ok(Invocation::Subcommand(name)) => {
            return fail(Error::Usage(format!(
                "`tsinit {name}` is not available in this version; \
                 to run a program named `{name}`, use `tsinit -- {name}`"
            )));
        }
        Err(UsageError(msg)) => {
            eprintln!("tsinit: error: {msg}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    logging::init(run_args.verbosity);
    let config = match config::load(run_args.config.as_deref(), &|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => return fail(Error::Config(e)),
    };
    debug!("configuration: {config:?}");

    // 3. Become the init: PID 1 as is, otherwise a child subreaper.
    let mut init = Init::new(signals, config);

    // 4. Start the workload.
    let workload = match init.spawn_workload(&run_args.program) {
        Ok(workload) => workload,
        Err(e) => return fail(e),
    };

    // 5. Forward signals and reap until the workload exits.
    let exit = init.supervise(&workload);

    // 6. Stop what is left: SIGTERM, grace period, SIGKILL.
    init.stop_leftovers(&workload);

    // 7. Exit with the workload's status.
    init::exit_code(exit)
}

/// Prints tsinit's own failure once and returns its exit status.
fn fail(e: Error) -> i32 {
    eprintln!("tsinit: error: {e}");
    e.exit_code()
}
