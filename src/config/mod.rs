//! Settings: where they come from (file, environment, defaults), how they are checked,
//! and the one error message a bad setting produces.
//!
//! The types and defaults are here; `settings` holds the table of settings (key,
//! containerboot variables, parser), `raw` the values as written and the walk over the
//! configuration file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod raw;
mod settings;
#[cfg(test)]
mod tests;
mod upflags;

use raw::Raw;
use settings::{AS_IS, SETTINGS};
pub(crate) use settings::{CONTAINERBOOT_ENV, KEYS};
pub use settings::{check_hostname, check_routes, check_tag};
pub(crate) use upflags::go_bool;
pub use upflags::{SetFlags, UpFlags};

/// Where the tailscale CLI looks for tailscaled's socket unless told otherwise.
pub const CLI_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// The configuration file read when neither --config nor TSINIT_CONFIG names one.
pub const DEFAULT_PATH: &str = "/etc/tsinit/tsinit.toml";

/// The commented default configuration, used when no file is found; also shipped in the
/// image as /etc/tsinit/tsinit.toml.
pub const EMBEDDED: &str = include_str!("../../rootfs/etc/tsinit/tsinit.toml");

/// Who receives forwarded signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    /// The workload's main process.
    Process,
    /// The workload's process group.
    Group,
}

/// How tailscaled reaches the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Networking {
    /// Kernel TUN (tailscale0); missing /dev/net/tun or CAP_NET_ADMIN is an error.
    Kernel,
    /// `--tun=userspace-networking` with SOCKS5 and HTTP proxies.
    Userspace,
    /// Kernel when preflight passes, else userspace with a warning.
    Auto,
}

/// What to do when tailscaled or `tailscale up` fails before the workload starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    Exit,
    Continue,
}

/// Whether to run tailscaled at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enabled {
    /// Yes if tailscaled can be found, else run as a plain init.
    Auto,
    Yes,
    No,
}

/// The settings tsinit runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub signal_target: SignalTarget,
    pub grace_period: Duration,
    /// `None`: never escalate a forwarded SIGTERM/SIGINT to SIGKILL.
    pub escalate_after: Option<Duration>,
    pub networking: Networking,
    pub on_failure: OnFailure,
    /// Bring the node up with Tailscale SSH.
    pub ssh: bool,
    /// The `[[serve]]` entries.
    pub serve: Vec<crate::serve::Entry>,
    /// A ServeConfig JSON file (containerboot's TS_SERVE_CONFIG).
    pub serve_config: Option<PathBuf>,
    pub tailscale: Tailscale,
    pub hosts: Hosts,
    pub http: Http,
    /// Where the file part came from, for the debug log.
    pub source: String,
    /// The keys set explicitly (by the file or the environment), not by default.
    pub given: Vec<&'static str>,
}

/// The `[hosts]` section: the managed block of the hosts file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    pub enabled: bool,
    pub path: PathBuf,
    pub ipv6: bool,
    pub short_names: bool,
    pub online_only: bool,
}

/// The `[http]` section: the health and metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http {
    /// `None`: no endpoint, whatever `health` and `metrics` say.
    pub listen: Option<std::net::SocketAddr>,
    pub health: bool,
    pub metrics: bool,
}

impl Http {
    /// Where to serve, if anything is to be served.
    pub fn serving(&self) -> Option<std::net::SocketAddr> {
        self.listen.filter(|_| self.health || self.metrics)
    }
}

/// The `[tailscale]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tailscale {
    pub enabled: Enabled,
    /// Paths of the binaries; `None`: search PATH.
    pub tailscaled: Option<PathBuf>,
    pub tailscale: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Link the CLI's default socket path to `socket` when it is another one.
    pub socket_link: bool,
    pub boot_timeout: Duration,
    pub hostname: Option<String>,
    pub auth_key_file: Option<PathBuf>,
    pub login_server: Option<String>,
    pub accept_dns: bool,
    pub advertise_tags: Vec<String>,
    /// `None`: not managed (TS_ROUTES unset); `Some([])`: none advertised.
    pub advertise_routes: Option<Vec<String>>,
    pub up_timeout: Duration,
    /// The node settings read out of `extra_up_args`.
    pub up_flags: UpFlags,
    /// The extra `up` arguments tsinit does not read (passed to `tailscale up`).
    pub extra_up_args: Vec<String>,
    /// Settings only `tailscale set` changes (`extra_set_args`).
    pub extra_set_args: SetFlags,
    /// Secrets found in the extra `up` arguments (taken out of `extra_up_args`).
    pub up_secrets: Vec<crate::bringup::identity::SecretArg>,
    pub tailscaled_args: Vec<String>,
    pub socks5_server: String,
    pub http_proxy: String,
    pub export_proxy_env: bool,
    pub log_level: log::LevelFilter,
    /// Append tailscaled's log here instead of passing it on to stderr.
    pub log_file: Option<PathBuf>,
    pub logout_on_exit: bool,
    pub keep_caps: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            signal_target: SignalTarget::Process,
            grace_period: Duration::from_secs(5),
            escalate_after: None,
            networking: Networking::Auto,
            on_failure: OnFailure::Exit,
            ssh: false,
            serve: Vec::new(),
            serve_config: None,
            tailscale: Tailscale {
                enabled: Enabled::Auto,
                tailscaled: None,
                tailscale: None,
                state_dir: PathBuf::from("/var/lib/tailscale"),
                socket: PathBuf::from(CLI_SOCKET),
                socket_link: true,
                boot_timeout: Duration::from_secs(60),
                hostname: None,
                auth_key_file: None,
                login_server: None,
                accept_dns: false,
                advertise_tags: Vec::new(),
                advertise_routes: None,
                up_timeout: Duration::from_secs(60),
                up_flags: UpFlags::default(),
                extra_up_args: Vec::new(),
                extra_set_args: SetFlags::default(),
                up_secrets: Vec::new(),
                tailscaled_args: Vec::new(),
                socks5_server: "localhost:1055".to_string(),
                http_proxy: "localhost:1056".to_string(),
                export_proxy_env: false,
                log_level: log::LevelFilter::Debug,
                log_file: None,
                logout_on_exit: false,
                keep_caps: false,
            },
            hosts: Hosts {
                enabled: true,
                path: PathBuf::from("/etc/hosts"),
                ipv6: true,
                short_names: true,
                online_only: false,
            },
            http: Http {
                listen: Some(std::net::SocketAddr::from((
                    std::net::Ipv6Addr::UNSPECIFIED,
                    9002,
                ))),
                health: false,
                metrics: false,
            },
            source: "built-in defaults".to_string(),
            given: Vec::new(),
        }
    }
}

/// A setting that cannot be used, with where it was found.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// "file:line:column", "file", or "TSINIT_X=value".
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The environment variable that overrides `key`: TSINIT_ and the key in upper case.
pub fn env_name(key: &str) -> String {
    format!("TSINIT_{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// Loads the configuration: the file from `--config`, else `$TSINIT_CONFIG`, else
/// [`DEFAULT_PATH`] if it exists, else [`EMBEDDED`]; then environment overrides.
/// `env` looks up an environment variable (a parameter so tests need not touch the
/// process environment).
pub fn load(
    cli_path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let Some(path) = choose_file(cli_path, env) else {
        // EMBEDDED is all comments and gives exactly the defaults (a unit test checks
        // that), so it need not be parsed at every start.
        return from_text("built-in configuration", "", env);
    };
    let origin = path.display().to_string();
    let text = read_small_file(&path).map_err(|e| ConfigError {
        origin: origin.clone(),
        message: format!(
            "cannot read the configuration file: {e}; \
             give an existing file with --config or TSINIT_CONFIG"
        ),
    })?;
    from_text(&origin, &text, env)
}

/// The largest file tsinit reads as a setting (configuration, auth key, serve config).
const MAX_FILE: u64 = 1 << 20;

/// Reads a small text file that a setting names. Only regular files are read (after
/// symlinks): a FIFO, a device or a directory is refused at once instead of blocking or
/// reading without end. The error is a message for the user.
pub fn read_small_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| crate::error::os_message(&e))?;
    let meta = file.metadata().map_err(|e| crate::error::os_message(&e))?;
    let kind = meta.file_type();
    let what = match () {
        _ if kind.is_file() => None,
        _ if kind.is_dir() => Some("a directory"),
        _ if kind.is_fifo() => Some("a FIFO (named pipe)"),
        _ if kind.is_socket() => Some("a socket"),
        _ if kind.is_char_device() || kind.is_block_device() => Some("a device"),
        _ => Some("not a regular file"),
    };
    if let Some(what) = what {
        return Err(format!("it is {what}, not a regular file"));
    }
    if meta.len() > MAX_FILE {
        return Err(format!("it is larger than {} KiB", MAX_FILE / 1024));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| crate::error::os_message(&e))?;
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
}

/// containerboot's deprecated address for /healthz alone (not in the settings table: it
/// sets two settings).
const HEALTH_ADDRESS: &str = "TS_HEALTHCHECK_ADDR_PORT";

/// Whether tsinit reads the environment variable `name` (so a value it cannot use is
/// an error, not silently nothing).
fn read_by_tsinit(name: &str) -> bool {
    name.starts_with("TSINIT_")
        || name == HEALTH_ADDRESS
        || CONTAINERBOOT_ENV.iter().any(|(n, _)| *n == name)
        || crate::bringup::identity::KEY_VARS
            .iter()
            .any(|v| name == *v || name.strip_suffix("_FILE") == Some(v))
        || crate::bringup::identity::CREDENTIAL_VARS
            .iter()
            .any(|(v, _, _)| name == *v)
}

/// The TSINIT_* variables that are not settings: the configuration file, the log
/// level, the image name scripts/image and compose.yaml use (accepted and ignored), and
/// the pipe `tsinit up` hands `tsinit run`.
const OTHER_VARS: [&str; 4] = [
    "TSINIT_CONFIG",
    crate::logging::ENV,
    "TSINIT_IMAGE",
    crate::detached::READY_FD,
];

/// Checks the environment's names and values before anything is read from it: a
/// TSINIT_* variable that is no setting (a misspelt one would be ignored silently), or
/// a variable tsinit reads whose value is not UTF-8, is an error.
pub fn check_environment<N, V>(vars: impl Iterator<Item = (N, V)>) -> Result<(), ConfigError>
where
    N: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    use std::os::unix::ffi::OsStrExt;
    let known = || {
        KEYS.iter()
            .map(|k| env_name(k))
            .chain(OTHER_VARS.iter().map(|v| v.to_string()))
    };
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        // Most of the environment is none of tsinit's business: looked at without
        // allocating anything.
        let bytes = name.as_bytes();
        if !(bytes.starts_with(b"TS_")
            || bytes.starts_with(b"TSINIT_")
            || bytes.starts_with(b"TAILSCALE_"))
        {
            continue;
        }
        let shown = name.to_string_lossy();
        if let Some(why) = unsupported(&shown, &value.to_string_lossy()) {
            // The name only: some of these hold secrets.
            return Err(ConfigError {
                origin: shown.to_string(),
                message: why.to_string(),
            });
        }
        if let Some((_, why)) = settings::REMOVED.iter().find(|(k, _)| env_name(k) == shown) {
            return Err(ConfigError {
                origin: format!("{shown}={:?}", value.to_string_lossy()),
                message: why.to_string(),
            });
        }
        if shown.starts_with("TSINIT_") && !known().any(|k| *k == shown) {
            // A name cut short counts as closest; else the fewest edits away.
            let closest = known()
                .filter(|k| k != "TSINIT_IMAGE")
                .min_by_key(|k| match k.starts_with(&*shown) {
                    true => 0,
                    false => edit_distance(k, &shown),
                })
                .unwrap_or_default();
            return Err(ConfigError {
                origin: format!("{shown}={:?}", value.to_string_lossy()),
                message: format!(
                    "no such setting (did you mean {closest}?); the variables are listed in \
                     the README's Configuration table"
                ),
            });
        }
        if read_by_tsinit(&shown) && value.to_str().is_none() {
            return Err(ConfigError {
                origin: shown.to_string(),
                message: "the value is not valid UTF-8: set it to UTF-8 text, or unset it"
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// The official image's variables tsinit does not support, and what to do instead.
/// Set (non-empty; booleans: true) they stop tsinit rather than being ignored.
const UNSUPPORTED: &[(&str, bool, &str)] = &[
    (
        "TS_KUBE_SECRET",
        false,
        "state in a Kubernetes Secret is not supported yet: keep the \
      state on a volume (TS_STATE_DIR), or give tailscaled --state=kube:<name> in \
      TS_TAILSCALED_EXTRA_ARGS",
    ),
    (
        "TS_DEBUG_ADDR_PORT",
        false,
        "give tailscaled --debug=<addr:port> in \
      TS_TAILSCALED_EXTRA_ARGS",
    ),
    ("TS_DEST_IP", false, PROXY),
    ("TS_EXPERIMENTAL_DEST_DNS_NAME", false, PROXY),
    ("TS_TAILNET_TARGET_IP", false, PROXY),
    ("TS_TAILNET_TARGET_FQDN", false, PROXY),
    ("TS_EGRESS_PROXIES_CONFIG_PATH", false, PROXY),
    ("TS_INGRESS_PROXIES_CONFIG_PATH", false, PROXY),
    (
        "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR",
        false,
        "tsinit brings the node up with \
      `tailscale up`/`set` from its own configuration, not from a tailscaled config file: \
      use the TS_* variables or tsinit.toml",
    ),
    ("TS_EXPERIMENTAL_CERT_SHARE", true, "not supported"),
    (
        "TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT",
        true,
        "not supported (tsinit serves no \
      Services)",
    ),
    (
        "TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS",
        true,
        "not supported",
    ),
];

const PROXY: &str = "the official image's proxy modes are not supported: tsinit runs a \
    workload beside tailscale, not a proxy";

/// Whether `name=value` asks for something tsinit does not support (see [`UNSUPPORTED`]).
fn unsupported(name: &str, value: &str) -> Option<&'static str> {
    let (_, boolean, why) = UNSUPPORTED.iter().find(|(n, _, _)| *n == name)?;
    let value = value.trim();
    let asks = match boolean {
        true => upflags::go_bool(value) != Some(false) && !value.is_empty(),
        false => !value.is_empty(),
    };
    asks.then_some(*why)
}

/// Levenshtein distance between `a` and `b` (by characters).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Builds the configuration from a file's `text` (named `origin` in errors) and the
/// environment overrides.
pub fn from_text(
    origin: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut config = Config {
        source: origin.to_string(),
        ..Config::default()
    };
    raw::apply_file(&mut config, text, origin)?;
    // The containerboot variables first, so that TSINIT_* wins.
    let containerboot = SETTINGS.iter().flat_map(|setting| {
        let vars = setting.containerboot.iter();
        vars.map(move |var| {
            (
                var.name.to_string(),
                var.rewrite,
                var.empty_is_unset,
                setting,
            )
        })
    });
    let ours = SETTINGS
        .iter()
        .map(|setting| (env_name(setting.key), AS_IS, false, setting));
    for (name, rewrite, empty_is_unset, setting) in containerboot.chain(ours) {
        let Some(value) = env(&name) else {
            continue;
        };
        if empty_is_unset && value.trim().is_empty() {
            continue;
        }
        let raw = Raw::Str(rewrite(&value).map_or_else(|| value.clone(), str::to_string));
        (setting.set)(&mut config, &raw).map_err(|message| ConfigError {
            origin: format!("{name}={value:?}"),
            message,
        })?;
        config.given.push(setting.key);
    }
    let (args, secrets) =
        crate::bringup::identity::credentials(env).map_err(|message| ConfigError {
            origin: "TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN, TS_AUDIENCE".to_string(),
            message,
        })?;
    // A flag given twice among the arguments is upflags::merge's to find; the secrets
    // were taken out of them.
    let t = &mut config.tailscale;
    let twice = secrets
        .iter()
        .find(|s| t.up_secrets.iter().any(|given| given.flag == s.flag));
    if let Some(flag) = twice.map(|s| s.flag) {
        return Err(ConfigError {
            origin: "TS_EXTRA_ARGS".to_string(),
            message: format!(
                "--{flag} is given here and by its own variable (TS_CLIENT_ID, \
                 TS_CLIENT_SECRET, TS_ID_TOKEN or TS_AUDIENCE): keep one"
            ),
        });
    }
    t.extra_up_args.extend(args);
    t.up_secrets.extend(secrets);
    let given = config.given.clone();
    upflags::merge(&mut config, &|key| given.contains(&key)).map_err(|message| {
        let var = |name: &str| env(name).map(|v| format!("{name}={v:?}"));
        ConfigError {
            origin: var(&env_name("tailscale.extra_up_args"))
                .or_else(|| var("TS_EXTRA_ARGS"))
                .unwrap_or_else(|| format!("{origin}: tailscale.extra_up_args")),
            message,
        }
    })?;
    deprecated_health_address(&mut config, env)?;
    crate::serve::check(&config.serve).map_err(|message| ConfigError {
        origin: origin.to_string(),
        message: format!("[[serve]]: {message}"),
    })?;
    Ok(config)
}

/// The official image's deprecated TS_HEALTHCHECK_ADDR_PORT: /healthz on that address.
/// As there, it cannot be combined with TS_ENABLE_HEALTH_CHECK; and as tsinit has one
/// endpoint, not with metrics on another address either.
fn deprecated_health_address(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Some(value) = env(HEALTH_ADDRESS).filter(|v| !v.trim().is_empty()) else {
        return Ok(());
    };
    let fail = |message: &str| ConfigError {
        origin: format!("{HEALTH_ADDRESS}={value:?}"),
        message: message.to_string(),
    };
    let address = settings::listen_value(&Raw::Str(value.clone())).map_err(|m| fail(&m))?;
    let on = |name: &str| env(name).and_then(|v| upflags::go_bool(v.trim())) == Some(true);
    if on("TS_ENABLE_HEALTH_CHECK") {
        return Err(fail(
            "TS_HEALTHCHECK_ADDR_PORT is deprecated and cannot be combined with \
             TS_ENABLE_HEALTH_CHECK: remove it, and give the address in TS_LOCAL_ADDR_PORT",
        ));
    }
    let local = env("TS_LOCAL_ADDR_PORT").or_else(|| env(&env_name("http.listen")));
    if config.http.metrics && local.is_some_and(|l| l.trim() != value.trim()) {
        return Err(fail(
            "tsinit serves /healthz and /metrics on one address: instead of \
             TS_HEALTHCHECK_ADDR_PORT, set TS_ENABLE_HEALTH_CHECK=true and give the address in \
             TS_LOCAL_ADDR_PORT",
        ));
    }
    log::warn!(
        "{HEALTH_ADDRESS} is deprecated: serving /healthz on {value} as asked; set \
         TS_ENABLE_HEALTH_CHECK=true and TS_LOCAL_ADDR_PORT={value} instead"
    );
    config.http.listen = address;
    config.http.health = true;
    Ok(())
}

fn choose_file(cli_path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = cli_path {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env("TSINIT_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = Path::new(DEFAULT_PATH);
    default.exists().then(|| default.to_path_buf())
}
