//! tsinit's log: stderr, each line prefixed `tsinit:`, no timestamps (the container
//! runtime adds its own).

use std::io::Write;

use log::{Level, LevelFilter};

/// The variable that sets the log level (or an env_logger filter) when -v is not given.
pub const ENV: &str = "TSINIT_LOG";

/// Starts logging: `-v` gives debug, `-vv` trace; otherwise $TSINIT_LOG, else info.
pub fn init(verbosity: u8) {
    let mut builder = env_logger::Builder::new();
    builder
        .target(env_logger::Target::Stderr)
        .format(|buf, record| {
            if record.target() == "tailscaled" {
                return writeln!(buf, "tailscaled: {}", record.args());
            }
            let prefix = match record.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "",
                Level::Debug => "debug: ",
                Level::Trace => "trace: ",
            };
            writeln!(buf, "tsinit: {prefix}{}", record.args())
        });
    match (verbosity, std::env::var(ENV)) {
        (0, Ok(filter)) if !filter.is_empty() => builder.parse_filters(&filter),
        (0, _) => builder.filter_level(LevelFilter::Info),
        (1, _) => builder.filter_level(LevelFilter::Debug),
        _ => builder.filter_level(LevelFilter::Trace),
    };
    // Fails only if a logger is already installed, in which case that one is used.
    builder.try_init().ok();
}
