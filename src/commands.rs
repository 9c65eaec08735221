//! The subcommands: `tsinit preflight` (can this container do kernel networking?) and
//! `tsinit status` (is the node up? usable as a HEALTHCHECK).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::{self, Config};
use crate::error::{EXIT_USAGE, Error};
use crate::localapi::LocalApi;
use crate::tailscaled;

/// Adds a line to the output (written once, at the end: a stdout closed early, as by
/// `tsinit status | head -1` or a HEALTHCHECK that stops reading, is no reason to fail,
/// let alone to panic).
macro_rules! say {
    ($($arg:tt)*) => {
        say_line(format_args!($($arg)*))
    };
}

/// [`say!`]'s one copy of the work.
fn say_line(args: std::fmt::Arguments) {
    OUT.with_borrow_mut(|out| {
        use std::fmt::Write as _;
        let _ = out.write_fmt(args);
        out.push('\n');
    })
}

thread_local! {
    static OUT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Writes what the subcommand said to stdout.
fn flush() {
    use std::io::Write as _;
    let text = OUT.with_borrow_mut(std::mem::take);
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

struct Options {
    json: bool,
    config: Option<PathBuf>,
    /// `--wait[=DURATION]` (`tsinit up`).
    wait: Option<std::time::Duration>,
}

/// The subcommand's options: `-c PATH`, and of `extra` (`--json`, `--wait`) those it has.
fn options(args: &[OsString], extra: &[&str]) -> Result<Options, Error> {
    let mut opts = Options {
        json: false,
        config: None,
        wait: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let text = arg.to_str().unwrap_or_default();
        let (name, value) = text.split_once('=').unwrap_or((text, ""));
        match arg.to_str() {
            Some("--json") if extra.contains(&"--json") => opts.json = true,
            Some(_) if name == "--wait" && extra.contains(&"--wait") => {
                opts.wait = Some(match text.contains('=') {
                    true => crate::duration::parse(value)
                        .map_err(|e| Error::Usage(format!("`{text}`: {e}")))?,
                    false => crate::detached::WAIT,
                });
            }
            Some("-c") | Some("--config") => {
                let path = it
                    .next()
                    .ok_or_else(|| Error::Usage("`-c` needs a file path after it".into()))?;
                opts.config = Some(PathBuf::from(path));
            }
            _ => {
                return Err(Error::Usage(format!(
                    "unknown argument `{}`",
                    arg.to_string_lossy()
                )));
            }
        }
    }
    Ok(opts)
}

#[inline(never)] // one copy for every subcommand
fn load(opts: &Options) -> Result<Config, Error> {
    config::check_environment(std::env::vars_os()).map_err(Error::Config)?;
    config::load(opts.config.as_deref(), &|name| std::env::var(name).ok()).map_err(Error::Config)
}

/// Runs a subcommand; returns the exit status.
pub fn run(name: &str, args: &[OsString]) -> i32 {
    let result = match name {
        "preflight" => preflight(args),
        "status" => status(args),
        "up" => options(args, &["--wait"])
            .and_then(|opts| crate::detached::up(&load(&opts)?, opts.config.as_deref(), opts.wait)),
        "down" => options(args, &[]).and_then(|opts| crate::detached::down(&load(&opts)?)),
        "shellenv" => options(args, &[]).and_then(|opts| Ok(crate::detached::env(&load(&opts)?))),
        _ => Err(Error::Usage(format!("unknown subcommand `{name}`"))),
    };
    flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::logging::print_error(&e.to_string());
            if matches!(e, Error::Usage(_)) {
                EXIT_USAGE
            } else {
                e.exit_code()
            }
        }
    }
}

fn preflight(args: &[OsString]) -> Result<i32, Error> {
    let opts = options(args, &["--json"])?;
    let config = load(&opts)?;
    let path_env = std::env::var("PATH").unwrap_or_default();
    let hostname = tailscaled::system_hostname();
    let report = tailscaled::run_preflight(&config, false, &path_env, &hostname, true);
    // Not PID 1 here: asking the binaries for their version is harmless.
    let versions: Vec<(&str, String)> = [
        ("tailscaled", &report.tailscaled),
        ("tailscale", &report.tailscale),
    ]
    .into_iter()
    .filter_map(|(name, path)| Some((name, version(path.as_ref()?)?)))
    .collect();
    if opts.json {
        let mut json: serde_json::Value =
            serde_json::from_slice(report.to_json().as_bytes()).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = json.as_object_mut() {
            // Inserted one by one: collecting a map sorts its pairs first, with a sort
            // the binary has for nothing else.
            let mut v = serde_json::Map::new();
            for (n, version) in &versions {
                v.insert(n.to_string(), serde_json::Value::String(version.clone()));
            }
            obj.insert("versions".to_string(), serde_json::Value::Object(v));
        }
        say!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        say!("{}", report.to_text().trim_end_matches('\n'));
        for (name, v) in &versions {
            say!("version: {name} {v}");
        }
    }
    Ok(if report.kernel_ok { 0 } else { 1 })
}

/// The first line of `<binary> --version`.
fn version(binary: &Path) -> Option<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

fn status(args: &[OsString]) -> Result<i32, Error> {
    let opts = options(args, &[])?;
    let config = load(&opts)?;
    let socket = &config.tailscale.socket;
    let api = LocalApi::new(socket, Some(std::time::Duration::from_secs(5)));
    let status = match api.status() {
        Ok(s) => s,
        Err(e) => {
            say!("tailscaled: not reachable at {} ({e})", socket.display());
            return Ok(1);
        }
    };
    let mode = std::fs::read_to_string(tailscaled::daemon::mode_file(socket))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|_| if status.tun { "kernel" } else { "userspace" }.to_string());
    let name = status
        .self_
        .as_ref()
        .map(|s| s.dns_name.trim_end_matches('.').to_string());
    say!("networking: {mode}");
    say!("state: {}", status.backend_state);
    say!(
        "hostname: {}",
        name.filter(|n| !n.is_empty()).unwrap_or_else(|| "-".into())
    );
    say!(
        "ips: {}",
        if status.tailscale_ips.is_empty() {
            "-".to_string()
        } else {
            status.tailscale_ips.join(" ")
        }
    );
    for h in &status.health {
        say!("health: {h}");
    }
    if !status.auth_url.is_empty() {
        say!("login: {}", status.auth_url);
    }
    if let Ok(prefs) = api.prefs() {
        let ssh_cap = status.self_.as_ref().is_some_and(|s| {
            s.cap_map
                .iter()
                .any(|c| c == "https://tailscale.com/cap/ssh")
        });
        say!(
            "ssh: {}",
            match (prefs.run_ssh, ssh_cap) {
                (false, _) => "off",
                (true, true) => "on (port 22)",
                (true, false) => "on in the prefs, but not enabled by the tailnet",
            }
        );
    }
    match api.serve_config() {
        Ok((serve, _)) => {
            let lines = crate::serve::describe(&serve);
            if lines.is_empty() {
                say!("serve: -");
            }
            for line in lines {
                say!("serve: {line}");
            }
        }
        Err(e) => say!("serve: cannot read the serve config ({e})"),
    }
    if config.hosts.enabled {
        let block = std::fs::read(&config.hosts.path)
            .ok()
            .and_then(|c| crate::hosts::describe(&c));
        say!(
            "hosts: {} in {}",
            block.unwrap_or_else(|| "no block".to_string()),
            config.hosts.path.display()
        );
    }
    Ok(
        if status.state() == Some(crate::localapi::BackendState::Running) {
            0
        } else {
            1
        },
    )
}
