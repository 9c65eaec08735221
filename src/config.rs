//! Settings: where they come from (file, environment, defaults), how they are checked,
//! and the one error message a bad setting produces.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration;

/// The configuration file read when neither --config nor TSINIT_CONFIG names one.
pub const DEFAULT_PATH: &str = "/etc/tsinit/tsinit.toml";

/// The commented default configuration, used when no file is found; also shipped in the
/// image as /etc/tsinit/tsinit.toml.
pub const EMBEDDED: &str = include_str!("../rootfs/etc/tsinit/tsinit.toml");

/// Every setting's key, in the order the reference lists them. Each can be overridden by
/// the environment variable [`env_name`] gives.
pub const KEYS: [&str; 35] = [
    "signal_target",
    "grace_period",
    "escalate_after",
    "networking",
    "on_failure",
    "ssh",
    "serve_ports",
    "serve_config",
    "tailscale.enabled",
    "tailscale.tailscaled",
    "tailscale.tailscale",
    "tailscale.state_dir",
    "tailscale.socket",
    "tailscale.boot_timeout",
    "tailscale.hostname",
    "tailscale.auth_key_file",
    "tailscale.login_server",
    "tailscale.accept_dns",
    "tailscale.advertise_tags",
    "tailscale.advertise_routes",
    "tailscale.up_timeout",
    "tailscale.extra_up_args",
    "tailscale.tailscaled_args",
    "tailscale.socks5_server",
    "tailscale.http_proxy",
    "tailscale.export_proxy_env",
    "tailscale.log_level",
    "tailscale.log_file",
    "tailscale.logout_on_exit",
    "tailscale.keep_caps",
    "hosts.enabled",
    "hosts.path",
    "hosts.ipv6",
    "hosts.short_names",
    "hosts.online_only",
];

/// The official tailscale image's variables tsinit accepts (and TS_SSH), and the key
/// each sets.
/// `TS_USERSPACE` maps true/false to networking "userspace"/"kernel". The auth key
/// variables are not settings (see `tailscale::auth_key`); TS_AUTH_ONCE is accepted and
/// ignored, since tsinit never re-registers a configured node anyway.
pub const CONTAINERBOOT_ENV: [(&str, &str); 13] = [
    ("TS_SSH", "ssh"),
    ("TS_SERVE_CONFIG", "serve_config"),
    ("TS_HOSTNAME", "tailscale.hostname"),
    ("TS_STATE_DIR", "tailscale.state_dir"),
    ("TS_SOCKET", "tailscale.socket"),
    ("TS_USERSPACE", "networking"),
    ("TS_ACCEPT_DNS", "tailscale.accept_dns"),
    ("TS_ROUTES", "tailscale.advertise_routes"),
    ("TS_EXTRA_ARGS", "tailscale.extra_up_args"),
    ("TS_TAILSCALED_EXTRA_ARGS", "tailscale.tailscaled_args"),
    ("TS_SOCKS5_SERVER", "tailscale.socks5_server"),
    ("TS_OUTBOUND_HTTP_PROXY_LISTEN", "tailscale.http_proxy"),
    ("TS_BOOT_TIMEOUT", "tailscale.boot_timeout"),
];

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
    /// Workload ports served as TCP on the same port (userspace networking only).
    pub serve_ports: Vec<u16>,
    /// A ServeConfig JSON file (containerboot's TS_SERVE_CONFIG).
    pub serve_config: Option<PathBuf>,
    pub tailscale: Tailscale,
    pub hosts: Hosts,
    /// Where the file part came from, for the debug log.
    pub source: String,
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

/// The `[tailscale]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tailscale {
    pub enabled: Enabled,
    /// Paths of the binaries; `None`: search PATH.
    pub tailscaled: Option<PathBuf>,
    pub tailscale: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub boot_timeout: Duration,
    pub hostname: Option<String>,
    pub auth_key_file: Option<PathBuf>,
    pub login_server: Option<String>,
    pub accept_dns: bool,
    pub advertise_tags: Vec<String>,
    pub advertise_routes: Vec<String>,
    pub up_timeout: Duration,
    pub extra_up_args: Vec<String>,
    /// Secrets found in the extra `up` arguments (taken out of `extra_up_args`).
    pub up_secrets: Vec<crate::tailscale::SecretArg>,
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
            serve_ports: Vec::new(),
            serve_config: None,
            tailscale: Tailscale {
                enabled: Enabled::Auto,
                tailscaled: None,
                tailscale: None,
                state_dir: PathBuf::from("/var/lib/tailscale"),
                socket: PathBuf::from("/var/run/tailscale/tailscaled.sock"),
                boot_timeout: Duration::from_secs(60),
                hostname: None,
                auth_key_file: None,
                login_server: None,
                accept_dns: false,
                advertise_tags: Vec::new(),
                advertise_routes: Vec::new(),
                up_timeout: Duration::from_secs(60),
                extra_up_args: Vec::new(),
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
            source: "built-in defaults".to_string(),
        }
    }
}

/// A setting's value as written: TOML gives each type, the environment strings. The
/// configuration is read by walking the parsed TOML, not with serde's derive: that kept a
/// hundred kilobytes of generic parser code out of the binary.
enum Raw {
    Bool(bool),
    Int(i64),
    Str(String),
    /// Floats, dates and integers beyond i64, as written: no setting takes them.
    Other(&'static str, String),
    List(Vec<Spanned>),
    Table(Vec<(Spanned, Spanned)>),
}

/// A value (or a key, as a string) and where it is in the file (`None`: environment).
struct Spanned {
    raw: Raw,
    at: Option<std::ops::Range<usize>>,
}

impl fmt::Display for Raw {
    /// As serde's messages name values: integer `5`, string "x", ...
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Raw::Bool(b) => write!(f, "boolean `{b}`"),
            Raw::Int(i) => write!(f, "integer `{i}`"),
            Raw::Str(s) => write!(f, "string {s:?}"),
            Raw::Other(kind, text) => write!(f, "{kind} `{text}`"),
            Raw::List(_) => f.write_str("an array"),
            Raw::Table(_) => f.write_str("a table"),
        }
    }
}

impl Raw {
    fn from_toml(value: toml::Spanned<toml::de::DeValue<'_>>) -> Spanned {
        use toml::de::DeValue;
        let at = Some(value.span());
        let raw = match value.into_inner() {
            DeValue::String(s) => Raw::Str(s.into_owned()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Raw::Int(n),
                Err(_) => Raw::Other("integer", i.as_str().to_string()),
            },
            DeValue::Float(x) => Raw::Other("floating point", x.as_str().to_string()),
            DeValue::Boolean(b) => Raw::Bool(b),
            DeValue::Datetime(d) => Raw::Other("datetime", d.to_string()),
            DeValue::Array(items) => Raw::List(items.into_iter().map(Raw::from_toml).collect()),
            DeValue::Table(t) => Raw::Table(
                t.into_iter()
                    .map(|(k, v)| {
                        let key = Spanned {
                            at: Some(k.span()),
                            raw: Raw::Str(k.into_inner().into_owned()),
                        };
                        (key, Raw::from_toml(v))
                    })
                    .collect(),
            ),
        };
        Spanned { raw, at }
    }

    fn invalid(&self, expected: &str) -> String {
        format!("invalid type: {self}, expected {expected}")
    }

    /// The string, or the serde-style type error.
    fn str(&self, expected: &str) -> Result<&str, String> {
        match self {
            Raw::Str(s) => Ok(s),
            _ => Err(self.invalid(expected)),
        }
    }

    /// The strings of a list, or of one string split by `split`.
    fn strings(&self, split: fn(&str) -> Vec<String>) -> Result<Vec<String>, String> {
        match self {
            Raw::Str(s) => Ok(split(s)),
            Raw::List(items) => items
                .iter()
                .map(|i| i.raw.str("a string").map(str::to_string))
                .collect(),
            _ => Err(self.invalid("a list of strings")),
        }
    }
}

/// The variant named by `raw`, in serde's words when it is none of `names`.
fn variant(raw: &Raw, names: &[&str]) -> Result<usize, String> {
    let expected = match names {
        [a, b] => format!("`{a}` or `{b}`"),
        _ => format!(
            "one of {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let s = raw.str(&expected)?;
    names
        .iter()
        .position(|n| *n == s)
        .ok_or_else(|| format!("unknown variant `{s}`, expected {expected}"))
}

/// A bool written as TOML `true`/`false`, or (from the environment) "true"/"false"/"1"/"0".
fn bool_value(raw: &Raw) -> Result<bool, String> {
    let b = match raw {
        Raw::Bool(b) => Some(*b),
        Raw::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    };
    b.ok_or_else(|| match raw {
        Raw::Str(s) => format!("`{s}` is not a boolean: use true or false"),
        _ => raw.invalid("true or false"),
    })
}

/// Port numbers: a TOML array of integers, or one string of numbers separated by commas
/// or spaces.
fn ports_value(raw: &Raw) -> Result<Vec<u16>, String> {
    let one = |raw: &Raw| match raw {
        Raw::Int(n) => crate::serve::check_port(*n),
        Raw::Str(s) => s
            .parse()
            .map_err(|_| format!("`{s}` is not a port number (1-65535)"))
            .and_then(crate::serve::check_port),
        _ => Err(raw.invalid("a port number")),
    };
    match raw {
        Raw::List(items) => items.iter().map(|i| one(&i.raw)).collect(),
        Raw::Str(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(|p| one(&Raw::Str(p.to_string())))
            .collect(),
        _ => Err(raw.invalid("a list of port numbers")),
    }
}

/// `true`, `false` or "auto".
fn enabled_value(raw: &Raw) -> Result<Enabled, String> {
    match raw {
        Raw::Bool(true) => Ok(Enabled::Yes),
        Raw::Bool(false) => Ok(Enabled::No),
        Raw::Str(s) => match s.trim() {
            "auto" => Ok(Enabled::Auto),
            "true" | "1" => Ok(Enabled::Yes),
            "false" | "0" => Ok(Enabled::No),
            _ => Err(format!("`{s}` is not allowed: use true, false or \"auto\"")),
        },
        _ => Err(raw.invalid("true, false or \"auto\"")),
    }
}

/// A list: a TOML array of strings, or one string of items separated by commas/spaces.
fn list_value(raw: &Raw) -> Result<Vec<String>, String> {
    raw.strings(|s| {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// Command-line arguments: a TOML array, or one string split at whitespace (no quoting).
fn args_value(raw: &Raw) -> Result<Vec<String>, String> {
    raw.strings(|s| s.split_whitespace().map(str::to_string).collect())
}

/// A log level: "off", "error", "warn", "info", "debug" or "trace".
fn level_value(raw: &Raw) -> Result<log::LevelFilter, String> {
    const LEVELS: &str = "\"off\", \"error\", \"warn\", \"info\", \"debug\" or \"trace\"";
    let s = raw.str(&format!("a log level: {LEVELS}"))?;
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a log level: use {LEVELS}"))
}

/// A duration such as "5s"; with `allow_off`, "off" is `None`.
fn duration_value(raw: &Raw, allow_off: bool) -> Result<Option<Duration>, String> {
    let off = if allow_off { ", or \"off\"" } else { "" };
    let s = raw.str(&format!("{}{off}", duration::EXPECTED))?;
    if allow_off && s.trim() == "off" {
        return Ok(None);
    }
    duration::parse(s)
        .map(Some)
        .map_err(|msg| format!("{msg}{off}"))
}

/// A path; "" is `None`.
fn optional_path(raw: &Raw) -> Result<Option<PathBuf>, String> {
    let s = raw.str("a path")?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// A path that must be given ("" is refused: there is no default to fall back to).
fn required_path(raw: &Raw) -> Result<PathBuf, String> {
    match raw.str("a path")? {
        "" => Err(
            "an empty path is not allowed: give a path, or leave the setting out \
                   for its default"
                .to_string(),
        ),
        s => Ok(PathBuf::from(s)),
    }
}

/// A timeout: a duration above zero (the tailscale CLI reads 0 as "wait forever").
fn timeout_value(raw: &Raw) -> Result<Duration, String> {
    match duration_value(raw, false)?.unwrap_or_default() {
        d if d.is_zero() => Err("a timeout of 0 is not allowed: give a duration such as \
                                 \"60s\""
            .to_string()),
        d => Ok(d),
    }
}

/// Checks a tag as `tailscale up --advertise-tags` does: `tag:`, then a letter, then
/// letters, digits and dashes.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let why = match tag.strip_prefix("tag:") {
        None => "tags must start with \"tag:\"",
        Some("") => "the tag name after \"tag:\" is empty",
        Some(name) if !name.as_bytes()[0].is_ascii_alphabetic() => {
            "tag names must start with a letter after \"tag:\""
        }
        Some(name) if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            "tag names may hold only letters, digits and dashes"
        }
        Some(_) => return Ok(()),
    };
    Err(format!("`{tag}`: {why} (e.g. \"tag:container\")"))
}

/// Checks routes as `tailscale up --advertise-routes` does: each an address/bits prefix
/// with no bits set past the prefix, and the IPv4 and IPv6 default routes only together.
pub fn check_routes(routes: &[String]) -> Result<(), String> {
    let mut defaults = (false, false);
    for route in routes {
        let (addr, bits) = route.split_once('/').ok_or_else(|| {
            format!(
                "`{route}` is not a route: give an address and prefix length, e.g. \"10.0.0.0/8\""
            )
        })?;
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("`{route}`: `{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits: u32 = bits
            .parse()
            .ok()
            .filter(|b| *b <= max && !bits.starts_with('+'))
            .ok_or_else(|| format!("`{route}`: the prefix length must be 0 to {max}"))?;
        let masked = mask(addr, bits);
        if masked != addr {
            return Err(format!(
                "`{route}` has bits set past the prefix length: write {masked}/{bits}"
            ));
        }
        match (addr.is_ipv4(), bits) {
            (true, 0) => defaults.0 = true,
            (false, 0) => defaults.1 = true,
            _ => {}
        }
    }
    match defaults {
        (true, false) => Err("0.0.0.0/0 needs ::/0 too (or use --advertise-exit-node in \
                              extra_up_args)"
            .to_string()),
        (false, true) => Err("::/0 needs 0.0.0.0/0 too (or use --advertise-exit-node in \
                              extra_up_args)"
            .to_string()),
        _ => Ok(()),
    }
}

/// `addr` with every bit past the first `bits` cleared.
fn mask(addr: std::net::IpAddr, bits: u32) -> std::net::IpAddr {
    use std::net::IpAddr;
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Checks a hostname as `tailscale up --hostname` does: dot-separated labels of 1-63
/// letters, digits and dashes, starting and ending with a letter
/// or digit, at most 253 characters in all.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.len() > 253 {
        return Err(format!("hostname `{name}` is longer than 253 characters"));
    }
    for label in bare.split('.') {
        let b = label.as_bytes();
        let why = match (b.first(), b.last()) {
            _ if b.is_empty() => "has an empty label",
            _ if b.len() > 63 => "has a label longer than 63 characters",
            (Some(f), Some(l)) if !f.is_ascii_alphanumeric() || !l.is_ascii_alphanumeric() => {
                "has a label that does not start and end with a letter or digit"
            }
            _ if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') => {
                "may hold only letters, digits, dashes and dots"
            }
            _ => continue,
        };
        return Err(format!("hostname `{name}` {why}"));
    }
    Ok(())
}

/// Sets the setting `key` (one of [`KEYS`]) from `raw`.
fn set(config: &mut Config, key: &str, raw: &Raw) -> Result<(), String> {
    let t = &mut config.tailscale;
    let h = &mut config.hosts;
    let text = |raw: &Raw| raw.str("a string").map(str::to_string);
    let optional_text = |raw: &Raw| text(raw).map(|s| (!s.is_empty()).then_some(s));
    match key {
        "signal_target" => {
            config.signal_target =
                [SignalTarget::Process, SignalTarget::Group][variant(raw, &["process", "group"])?];
        }
        "grace_period" => config.grace_period = duration_value(raw, false)?.unwrap_or_default(),
        "escalate_after" => config.escalate_after = duration_value(raw, true)?,
        "networking" => {
            config.networking = [Networking::Kernel, Networking::Userspace, Networking::Auto]
                [variant(raw, &["kernel", "userspace", "auto"])?];
        }
        "on_failure" => {
            config.on_failure =
                [OnFailure::Exit, OnFailure::Continue][variant(raw, &["exit", "continue"])?];
        }
        "ssh" => config.ssh = bool_value(raw)?,
        "serve_ports" => config.serve_ports = ports_value(raw)?,
        "serve_config" => config.serve_config = optional_path(raw)?,
        "tailscale.enabled" => t.enabled = enabled_value(raw)?,
        "tailscale.tailscaled" => t.tailscaled = optional_path(raw)?,
        "tailscale.tailscale" => t.tailscale = optional_path(raw)?,
        "tailscale.state_dir" => t.state_dir = required_path(raw)?,
        "tailscale.socket" => t.socket = required_path(raw)?,
        "tailscale.boot_timeout" => t.boot_timeout = timeout_value(raw)?,
        "tailscale.hostname" => {
            t.hostname = optional_text(raw)?;
            if let Some(name) = &t.hostname {
                check_hostname(name)?;
            }
        }
        "tailscale.auth_key_file" => t.auth_key_file = optional_path(raw)?,
        "tailscale.login_server" => t.login_server = optional_text(raw)?,
        "tailscale.accept_dns" => t.accept_dns = bool_value(raw)?,
        "tailscale.advertise_tags" => {
            t.advertise_tags = list_value(raw)?;
            t.advertise_tags.iter().try_for_each(|tag| check_tag(tag))?;
        }
        "tailscale.advertise_routes" => {
            t.advertise_routes = list_value(raw)?;
            check_routes(&t.advertise_routes)?;
        }
        "tailscale.up_timeout" => t.up_timeout = timeout_value(raw)?,
        "tailscale.extra_up_args" => {
            (t.extra_up_args, t.up_secrets) =
                crate::tailscale::split_secret_args(&args_value(raw)?);
        }
        "tailscale.tailscaled_args" => t.tailscaled_args = args_value(raw)?,
        "tailscale.socks5_server" => t.socks5_server = text(raw)?,
        "tailscale.http_proxy" => t.http_proxy = text(raw)?,
        "tailscale.export_proxy_env" => t.export_proxy_env = bool_value(raw)?,
        "tailscale.log_level" => t.log_level = level_value(raw)?,
        "tailscale.log_file" => t.log_file = optional_path(raw)?,
        "tailscale.logout_on_exit" => t.logout_on_exit = bool_value(raw)?,
        "tailscale.keep_caps" => t.keep_caps = bool_value(raw)?,
        "hosts.enabled" => h.enabled = bool_value(raw)?,
        "hosts.path" => h.path = required_path(raw)?,
        "hosts.ipv6" => h.ipv6 = bool_value(raw)?,
        "hosts.short_names" => h.short_names = bool_value(raw)?,
        "hosts.online_only" => h.online_only = bool_value(raw)?,
        _ => return Err(format!("unknown setting `{key}`")),
    }
    Ok(())
}

/// A `[[serve]]` table.
fn serve_entry(
    fields: &[(Spanned, Spanned)],
) -> Result<crate::serve::Entry, (Option<std::ops::Range<usize>>, String)> {
    const FIELDS: [&str; 4] = ["proto", "port", "target", "path"];
    let mut found: [Option<&Spanned>; 4] = [None; 4];
    for (key, value) in fields {
        let name = key.raw.str("a key").unwrap_or_default();
        match FIELDS.iter().position(|f| *f == name) {
            Some(i) => found[i] = Some(value),
            None => {
                return Err((
                    key.at.clone(),
                    format!(
                        "unknown field `{name}`, expected one of {}",
                        backticked(&FIELDS)
                    ),
                ));
            }
        }
    }
    // The fields given are checked first, then whether one is missing.
    type Error = (Option<std::ops::Range<usize>>, String);
    fn at(v: &Spanned, name: &str, msg: String) -> Error {
        (v.at.clone(), format!("`{name}`: {msg}"))
    }
    fn text<'a>(
        v: Option<&'a Spanned>,
        name: &str,
    ) -> Result<Option<(String, &'a Spanned)>, Error> {
        match v {
            Some(v) => {
                let s = v.raw.str("a string").map_err(|m| at(v, name, m))?;
                Ok(Some((s.to_string(), v)))
            }
            None => Ok(None),
        }
    }
    let [proto, port, target, path] = found;
    let proto = match proto {
        Some(v) => Some(
            v.raw
                .str("a protocol")
                .and_then(crate::serve::Proto::parse)
                .map_err(|m| at(v, "proto", m))?,
        ),
        None => None,
    };
    let port = match port {
        Some(v) => Some(match &v.raw {
            Raw::Int(n) => crate::serve::check_port(*n).map_err(|m| at(v, "port", m))?,
            other => return Err(at(v, "port", other.invalid("a port number"))),
        }),
        None => None,
    };
    let target = text(target, "target")?;
    let path = text(path, "path")?;
    let missing = |i: usize| Err((None, format!("[[serve]]: missing field `{}`", FIELDS[i])));
    let (Some(proto), Some(port), Some((target, target_at))) = (proto, port, target) else {
        let i = [proto.is_none(), port.is_none(), true]
            .iter()
            .position(|m| *m)
            .unwrap_or_default();
        return missing(i);
    };
    let target =
        crate::serve::Entry::target(proto, &target).map_err(|m| at(target_at, "target", m))?;
    let path = match &path {
        Some((p, p_at)) => {
            crate::serve::Entry::path(proto, Some(p)).map_err(|m| at(p_at, "path", m))?
        }
        None => crate::serve::Entry::path(proto, None).map_err(|m| (None, m))?,
    };
    Ok(crate::serve::Entry {
        proto,
        port,
        target,
        path,
    })
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies a configuration file's `text` (named `origin` in errors) to `config`.
fn apply_file(config: &mut Config, text: &str, origin: &str) -> Result<(), ConfigError> {
    let located = |at: Option<std::ops::Range<usize>>, message: String| {
        let origin = match at {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("{origin}:{line}:{column}")
            }
            None => origin.to_string(),
        };
        ConfigError { origin, message }
    };
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let message = match e.span().and_then(|span| key_at(text, span.start)) {
            Some(key) if !message.contains(&format!("`{key}`")) => format!("`{key}`: {message}"),
            _ => message,
        };
        located(e.span(), message)
    })?;
    let root = Raw::from_toml(toml::Spanned::new(
        table.span(),
        toml::de::DeValue::Table(table.into_inner()),
    ));
    let Raw::Table(fields) = root.raw else {
        return Ok(());
    };
    const SECTIONS: [&str; 3] = ["serve", "tailscale", "hosts"];
    let in_section = |section: &str| -> Vec<&str> {
        KEYS.iter()
            .filter_map(|k| match k.split_once('.') {
                Some((s, leaf)) if s == section => Some(leaf),
                None if section.is_empty() => Some(*k),
                _ => None,
            })
            .collect()
    };
    let unknown = |key: &Spanned, name: &str, mut allowed: Vec<&str>, top: bool| {
        if top {
            allowed.extend(SECTIONS);
        }
        located(
            key.at.clone(),
            format!(
                "unknown field `{name}`, expected one of {}",
                backticked(&allowed)
            ),
        )
    };
    for (key, value) in &fields {
        let name = key.raw.str("a key").unwrap_or_default();
        match name {
            "serve" => {
                let Raw::List(entries) = &value.raw else {
                    return Err(located(
                        value.at.clone(),
                        format!("`serve`: {}", value.raw.invalid("[[serve]] tables")),
                    ));
                };
                let mut out = Vec::new();
                for entry in entries {
                    let Raw::Table(fields) = &entry.raw else {
                        return Err(located(
                            entry.at.clone(),
                            format!("`serve`: {}", entry.raw.invalid("a [[serve]] table")),
                        ));
                    };
                    out.push(
                        serve_entry(fields)
                            .map_err(|(at, m)| located(at.or(entry.at.clone()), m))?,
                    );
                }
                config.serve = out;
            }
            "tailscale" | "hosts" => {
                let Raw::Table(inner) = &value.raw else {
                    return Err(located(
                        value.at.clone(),
                        format!("`{name}`: {}", value.raw.invalid("a table")),
                    ));
                };
                for (k, v) in inner {
                    let leaf = k.raw.str("a key").unwrap_or_default();
                    let full = format!("{name}.{leaf}");
                    if !KEYS.contains(&full.as_str()) {
                        return Err(unknown(k, leaf, in_section(name), false));
                    }
                    set(config, &full, &v.raw)
                        .map_err(|m| located(v.at.clone(), format!("`{leaf}`: {m}")))?;
                }
            }
            _ if KEYS.contains(&name) && !name.contains('.') => {
                set(config, name, &value.raw)
                    .map_err(|m| located(value.at.clone(), format!("`{name}`: {m}")))?;
            }
            _ => return Err(unknown(key, name, in_section(""), true)),
        }
    }
    Ok(())
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

/// Whether tsinit reads the environment variable `name` (so a value it cannot use is
/// an error, not silently nothing).
fn read_by_tsinit(name: &str) -> bool {
    name.starts_with("TSINIT_")
        || CONTAINERBOOT_ENV.iter().any(|(n, _)| *n == name)
        || crate::tailscale::KEY_VARS
            .iter()
            .any(|v| name == *v || name.strip_suffix("_FILE") == Some(v))
}

/// The TSINIT_* variables that are not settings: the configuration file, the log
/// level, and the image name scripts/image and compose.yaml use (accepted and ignored).
const OTHER_VARS: [&str; 3] = ["TSINIT_CONFIG", crate::logging::ENV, "TSINIT_IMAGE"];

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
    apply_file(&mut config, text, origin)?;
    let containerboot = CONTAINERBOOT_ENV
        .iter()
        .map(|&(name, key)| (name.to_string(), key));
    let ours = KEYS.iter().map(|&key| (env_name(key), key));
    for (name, key) in containerboot.chain(ours) {
        let Some(value) = env(&name) else {
            continue;
        };
        let raw = match (name.as_str(), value.trim()) {
            ("TS_USERSPACE", "true" | "1") => Raw::Str("userspace".to_string()),
            ("TS_USERSPACE", "false" | "0") => Raw::Str("kernel".to_string()),
            _ => Raw::Str(value.clone()),
        };
        set(&mut config, key, &raw).map_err(|message| ConfigError {
            origin: format!("{name}={value:?}"),
            message,
        })?;
    }
    crate::serve::check(&config.serve, &config.serve_ports).map_err(|message| ConfigError {
        origin: match env(&env_name("serve_ports")) {
            Some(v) if message.contains("serve_ports") => {
                format!("{origin} and {}={v:?}", env_name("serve_ports"))
            }
            _ => origin.to_string(),
        },
        message: format!("[[serve]]: {message}"),
    })?;
    Ok(config)
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

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key of the `key = value` line on which byte `offset` lies within the value.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset.min(text.len()))?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let key = line[..line.find('=')?].trim();
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_text("FILE", text, &|k| env.get(k).cloned())
    }

    #[test]
    fn embedded_default_is_all_defaults() {
        let mut config = Config::default();
        apply_file(&mut config, EMBEDDED, "embedded").unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn embedded_default_documents_every_key_with_its_default_and_env_name() {
        // Uncommenting every `#key = value` line must give exactly the defaults.
        let uncommented: String = EMBEDDED
            .lines()
            .filter_map(|l| match l.strip_prefix('#') {
                // `#key = value`; `#   key = value` is an example in the prose.
                Some(setting) if setting.contains(" = ") && !setting.starts_with(' ') => {
                    Some(setting)
                }
                Some(_) => None,
                None => Some(l),
            })
            .map(|l| format!("{l}\n"))
            .collect();
        for key in KEYS {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                uncommented.contains(&format!("\n{leaf} = ")),
                "{key} missing"
            );
            let env = format!("env: {}", env_name(key));
            assert!(EMBEDDED.contains(&env), "{key}: no `{env}`");
        }
        for (name, key) in CONTAINERBOOT_ENV {
            let documented = format!("also {name}");
            assert!(
                EMBEDDED.contains(&documented),
                "{name} ({key}) not documented"
            );
        }
        let mut config = Config::default();
        apply_file(&mut config, &uncommented, "x").unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn reads_values_and_env_wins() {
        let c = load_text(
            "signal_target = \"group\"\ngrace_period = \"1m30s\"\nescalate_after = \"10s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.signal_target, SignalTarget::Group);
        assert_eq!(c.grace_period, Duration::from_secs(90));
        assert_eq!(c.escalate_after, Some(Duration::from_secs(10)));

        let c = load_text(
            "grace_period = \"1s\"\nescalate_after = \"10s\"\n",
            &[
                ("TSINIT_GRACE_PERIOD", "250ms"),
                ("TSINIT_ESCALATE_AFTER", "off"),
                ("TSINIT_SIGNAL_TARGET", "group"),
            ],
        )
        .unwrap();
        assert_eq!(c.grace_period, Duration::from_millis(250));
        assert_eq!(c.escalate_after, None);
        assert_eq!(c.signal_target, SignalTarget::Group);
    }

    #[test]
    fn bad_input_gives_one_precise_error() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "grace = \"5s\"\n",
                &[],
                "FILE:1:1: unknown field `grace`, expected one of `signal_target`, \
                 `grace_period`, `escalate_after`, `networking`, `on_failure`, `ssh`, \
                 `serve_ports`, `serve_config`, `serve`, `tailscale`, `hosts`",
            ),
            (
                "# comment\ngrace_period = 5\n",
                &[],
                "FILE:2:16: `grace_period`: invalid type: integer `5`, expected a duration \
                 such as \"5s\", \"500ms\", \"2m\" or \"1m30s\"",
            ),
            (
                "grace_period = \"5x\"\n",
                &[],
                "FILE:1:16: `grace_period`: `5x` is not a duration such as \"5s\", \
                 \"500ms\", \"2m\" or \"1m30s\"",
            ),
            (
                "signal_target = \"proc\"\n",
                &[],
                "FILE:1:17: `signal_target`: unknown variant `proc`, expected `process` or \
                 `group`",
            ),
            (
                "",
                &[("TSINIT_ESCALATE_AFTER", "never")],
                "TSINIT_ESCALATE_AFTER=\"never\": `never` is not a duration such as \"5s\", \
                 \"500ms\", \"2m\" or \"1m30s\", or \"off\"",
            ),
            (
                "",
                &[("TSINIT_SIGNAL_TARGET", "all\"\nx=1")],
                "TSINIT_SIGNAL_TARGET=\"all\\\"\\nx=1\": unknown variant `all\"\nx=1`, \
                 expected `process` or `group`",
            ),
        ];
        for (text, env, want) in cases {
            let err = load_text(text, env).unwrap_err();
            assert_eq!(err.to_string(), *want, "for {text:?} {env:?}");
        }
    }

    #[test]
    fn tailscale_section_and_environment_compatibility() {
        let file = "networking = \"kernel\"\n[tailscale]\nhostname = \"from-file\"\n\
                    advertise_tags = [\"tag:a\"]\nextra_up_args = [\"--ssh\"]\n";
        let c = load_text(file, &[]).unwrap();
        assert_eq!(c.networking, Networking::Kernel);
        assert_eq!(c.tailscale.hostname.as_deref(), Some("from-file"));
        assert_eq!(c.tailscale.advertise_tags, ["tag:a"]);
        assert_eq!(c.tailscale.extra_up_args, ["--ssh"]);

        let c = load_text(
            file,
            &[
                ("TS_USERSPACE", "true"),
                ("TS_HOSTNAME", "from-ts-env"),
                ("TS_ROUTES", "10.0.0.0/8,192.168.0.0/16"),
                ("TS_EXTRA_ARGS", "--ssh  --shields-up"),
                ("TS_ACCEPT_DNS", "true"),
                ("TS_STATE_DIR", "/data/ts"),
                ("TSINIT_TAILSCALE_ADVERTISE_TAGS", "tag:x, tag:y"),
                ("TSINIT_TAILSCALE_ENABLED", "false"),
                ("TSINIT_ON_FAILURE", "continue"),
            ],
        )
        .unwrap();
        assert_eq!(c.networking, Networking::Userspace);
        assert_eq!(c.tailscale.hostname.as_deref(), Some("from-ts-env"));
        assert_eq!(
            c.tailscale.advertise_routes,
            ["10.0.0.0/8", "192.168.0.0/16"]
        );
        assert_eq!(c.tailscale.extra_up_args, ["--ssh", "--shields-up"]);
        assert!(c.tailscale.accept_dns);
        assert_eq!(c.tailscale.state_dir, PathBuf::from("/data/ts"));
        assert_eq!(c.tailscale.advertise_tags, ["tag:x", "tag:y"]);
        assert_eq!(c.tailscale.enabled, Enabled::No);
        assert_eq!(c.on_failure, OnFailure::Continue);

        // TSINIT_* wins over the containerboot name for the same setting.
        let c = load_text(
            "",
            &[
                ("TS_USERSPACE", "false"),
                ("TSINIT_NETWORKING", "userspace"),
            ],
        )
        .unwrap();
        assert_eq!(c.networking, Networking::Userspace);

        let err = load_text("", &[("TS_ACCEPT_DNS", "maybe")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TS_ACCEPT_DNS=\"maybe\": `maybe` is not a boolean: use true or false"
        );
        let err = load_text("[tailscale]\nhostnme = \"x\"\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("FILE:2:1: unknown field `hostnme`"),
            "{err}"
        );
    }

    #[test]
    fn ssh_and_serve_settings() {
        let file = "ssh = true\nserve_ports = [8080, 2222]\n[hosts]\nenabled = true\n\
                    [[serve]]\nproto = \"tcp\"\nport = 9999\ntarget = \"9999\"\n\
                    [[serve]]\nproto = \"https\"\nport = 443\ntarget = \"http://127.0.0.1:3000\"\n";
        let c = load_text(file, &[]).unwrap();
        assert!(c.ssh);
        assert_eq!(c.serve_ports, [8080, 2222]);
        assert_eq!(c.serve.len(), 2);
        assert_eq!(c.serve[0].target, "127.0.0.1:9999");
        assert_eq!(c.serve[1].path, "/");

        let c = load_text(
            "",
            &[
                ("TS_SSH", "true"),
                ("TS_SERVE_CONFIG", "/etc/ts/serve.json"),
                ("TSINIT_SERVE_PORTS", "8080, 2222"),
            ],
        )
        .unwrap();
        assert!(c.ssh);
        assert_eq!(c.serve_config, Some(PathBuf::from("/etc/ts/serve.json")));
        assert_eq!(c.serve_ports, [8080, 2222]);
        let c = load_text("", &[("TS_SSH", "true"), ("TSINIT_SSH", "false")]).unwrap();
        assert!(!c.ssh, "TSINIT_* wins");

        for (text, env, want) in [
            (
                "[[serve]]\nproto = \"udp\"\nport = 1\ntarget = \"1\"\n",
                &[][..],
                "FILE:2:9: `proto`: unknown variant `udp`, expected one of `tcp`, \
                 `tls-terminated-tcp`, `http`, `https`",
            ),
            (
                "[[serve]]\nproto = \"tcp\"\nport = 1\ntarget = \"x\"\n",
                &[][..],
                "FILE:4:10: `target`: target `x` is not a port or host:port (e.g. \
                 \"127.0.0.1:9999\")",
            ),
            (
                "[[serve]]\nproto = \"tcp\"\nport = 1\n",
                &[][..],
                "FILE:1:1: [[serve]]: missing field `target`",
            ),
            (
                "[[serve]]\nproto = \"udp\"\n",
                &[][..],
                "FILE:2:9: `proto`: unknown variant `udp`, expected one of `tcp`, \
                 `tls-terminated-tcp`, `http`, `https`",
            ),
            (
                "[[serve]]\nproto = \"tcp\"\nport = 0\ntarget = \"1\"\n",
                &[][..],
                "FILE:3:8: `port`: port 0 is not a port number (1-65535)",
            ),
            (
                "[[serve]]\nproto = \"https\"\nport = 1\ntarget = \"1\"\npath = \"x\"\n",
                &[][..],
                "FILE:5:8: `path`: path `x` must start with / and hold no spaces",
            ),
            (
                "ssh = \n",
                &[][..],
                "FILE:1:7: `ssh`: string values must be quoted, expected literal string",
            ),
            (
                "[[serve]]\nproto = \"tcp\"\nport = 1\ntarget = \"1\"\n\
                 [[serve]]\nproto = \"tcp\"\nport = 1\ntarget = \"2\"\n",
                &[("TSINIT_SERVE_PORTS", "9000")][..],
                "FILE: [[serve]]: port 1 path / is served twice: one target each",
            ),
            (
                "serve_ports = [80]\n[[serve]]\nproto = \"tcp\"\nport = 80\ntarget = \"1\"\n",
                &[][..],
                "FILE: [[serve]]: port 80 is in serve_ports and in a [[serve]] entry: keep one",
            ),
            (
                "",
                &[("TSINIT_SERVE_PORTS", "80,http")][..],
                "TSINIT_SERVE_PORTS=\"80,http\": `http` is not a port number (1-65535)",
            ),
            (
                "serve_ports = [0]\n",
                &[][..],
                "FILE:1:15: `serve_ports`: port 0 is not a port number (1-65535)",
            ),
        ] {
            let err = load_text(text, env).unwrap_err();
            assert_eq!(err.to_string(), want, "for {text:?} {env:?}");
        }
    }

    #[test]
    fn the_embedded_serve_example_is_valid() {
        let example: String = EMBEDDED
            .lines()
            .skip_while(|l| !l.starts_with("#   [[serve]]"))
            .take_while(|l| l.starts_with("#   ") || *l == "#")
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim()))
            .collect();
        let c = load_text(&example, &[]).unwrap();
        assert_eq!(c.serve.len(), 2, "{example}");
        assert_eq!(c.serve[1].target, "http://127.0.0.1:3000");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = load_text("signal_target = \"group\"\ngrace_period \"5s\"\n", &[]).unwrap_err();
        assert!(err.origin.starts_with("FILE:2:"), "{err}");
    }

    #[test]
    fn missing_file_says_how_to_fix() {
        let err = load(Some(Path::new("/nonexistent/tsinit.toml")), &|_| None).unwrap_err();
        assert_eq!(err.origin, "/nonexistent/tsinit.toml");
        assert!(err.message.contains("No such file"), "{err}");
        assert!(err.message.contains("--config or TSINIT_CONFIG"), "{err}");
    }

    #[test]
    fn tsinit_config_env_names_the_file() {
        let err = load(None, &|k| {
            (k == "TSINIT_CONFIG").then(|| "/nonexistent/from-env.toml".to_string())
        })
        .unwrap_err();
        assert_eq!(err.origin, "/nonexistent/from-env.toml");
    }

    #[test]
    fn empty_paths_and_zero_timeouts_are_refused() {
        for (var, want) in [
            ("TSINIT_TAILSCALE_STATE_DIR", "an empty path is not allowed"),
            ("TSINIT_TAILSCALE_SOCKET", "an empty path is not allowed"),
            ("TS_STATE_DIR", "an empty path is not allowed"),
            ("TSINIT_HOSTS_PATH", "an empty path is not allowed"),
        ] {
            let err = load_text("", &[(var, "")]).unwrap_err();
            assert_eq!(err.origin, format!("{var}=\"\""));
            assert!(err.message.starts_with(want), "{var}: {err}");
        }
        for (var, value) in [
            ("TSINIT_TAILSCALE_UP_TIMEOUT", "0s"),
            ("TSINIT_TAILSCALE_BOOT_TIMEOUT", "0ms"),
            ("TS_BOOT_TIMEOUT", "0s"),
        ] {
            let err = load_text("", &[(var, value)]).unwrap_err();
            assert!(
                err.message.contains("a timeout of 0 is not allowed"),
                "{err}"
            );
        }
        let err = load_text("[tailscale]\nup_timeout = \"0s\"\n", &[]).unwrap_err();
        assert_eq!(err.origin, "FILE:2:14");
        // Optional paths: "" means "not set".
        let c = load_text("", &[("TSINIT_TAILSCALE_AUTH_KEY_FILE", "")]).unwrap();
        assert_eq!(c.tailscale.auth_key_file, None);
    }

    #[test]
    fn tags_routes_and_hostnames_are_checked_as_the_cli_checks_them() {
        for (var, value, want) in [
            (
                "TSINIT_TAILSCALE_ADVERTISE_TAGS",
                "tag:ok,server",
                "`server`: tags must start with \"tag:\"",
            ),
            ("TSINIT_TAILSCALE_ADVERTISE_TAGS", "tag:", "is empty"),
            (
                "TSINIT_TAILSCALE_ADVERTISE_TAGS",
                "tag:1x",
                "start with a letter",
            ),
            (
                "TSINIT_TAILSCALE_ADVERTISE_TAGS",
                "tag:a_b",
                "letters, digits and dashes",
            ),
            ("TS_ROUTES", "10.0.0.1/8", "write 10.0.0.0/8"),
            ("TS_ROUTES", "10.0.0.0", "not a route"),
            ("TS_ROUTES", "10.0.0.0/33", "prefix length must be 0 to 32"),
            ("TS_ROUTES", "fd00::1/64", "write fd00::/64"),
            ("TS_ROUTES", "x/8", "not an IP address"),
            ("TS_ROUTES", "0.0.0.0/0", "0.0.0.0/0 needs ::/0"),
            ("TS_HOSTNAME", "my_host", "letters, digits, dashes"),
            ("TS_HOSTNAME", "-web", "start and end"),
            ("TS_HOSTNAME", "a..b", "empty label"),
        ] {
            let err = load_text("", &[(var, value)]).unwrap_err();
            assert!(err.message.contains(want), "{var}={value}: {err}");
        }
        let ok = load_text(
            "",
            &[
                ("TSINIT_TAILSCALE_ADVERTISE_TAGS", "tag:web,tag:db-1"),
                (
                    "TS_ROUTES",
                    "10.0.0.0/8,192.168.1.0/24,fd7a::/16,0.0.0.0/0,::/0",
                ),
                ("TS_HOSTNAME", "web-1.example"),
            ],
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_environment_is_checked_before_it_is_read() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let vars = |list: Vec<(&str, OsString)>| {
            list.into_iter()
                .map(|(k, v)| (OsString::from(k), v))
                .collect::<Vec<_>>()
                .into_iter()
        };
        let ok = vars(vec![
            ("TSINIT_GRACE_PERIOD", "5s".into()),
            ("TSINIT_CONFIG", "/x".into()),
            ("TSINIT_LOG", "debug".into()),
            ("PATH", "/bin".into()),
            ("OTHER", OsString::from_vec(vec![0xff])),
            ("TS_DEBUG_X", OsString::from_vec(vec![0xff])),
        ]);
        assert_eq!(check_environment(ok), Ok(()));
        let err = check_environment(vars(vec![("TSINIT_GRACE", "5s".into())])).unwrap_err();
        assert_eq!(err.origin, "TSINIT_GRACE=\"5s\"");
        assert!(
            err.message.contains("did you mean TSINIT_GRACE_PERIOD?"),
            "{err}"
        );
        let err = check_environment(vars(vec![("TSINIT_HOST_PATH", "/h".into())])).unwrap_err();
        assert!(err.message.contains("TSINIT_HOSTS_PATH"), "{err}");
        for var in [
            "TS_HOSTNAME",
            "TSINIT_CONFIG",
            "TS_AUTHKEY",
            "TS_AUTHKEY_FILE",
        ] {
            let bad = vars(vec![(var, OsString::from_vec(b"ab\xffc".to_vec()))]);
            let err = check_environment(bad).unwrap_err();
            assert_eq!(err.origin, var);
            assert!(err.message.contains("not valid UTF-8"), "{err}");
        }
    }

    #[test]
    fn setting_files_must_be_regular_files() {
        let dir = std::env::temp_dir().join(format!("tsinit-cfg-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Returns at once (a blocking open or read would hang the test).
        assert_eq!(
            read_small_file(&fifo).unwrap_err(),
            "it is a FIFO (named pipe), not a regular file"
        );
        assert_eq!(
            read_small_file(Path::new("/dev/zero")).unwrap_err(),
            "it is a device, not a regular file"
        );
        assert!(read_small_file(&dir).unwrap_err().contains("a directory"));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 2 << 20]).unwrap();
        assert!(read_small_file(&big).unwrap_err().contains("larger than"));
        let link = dir.join("link");
        std::fs::write(dir.join("ok"), "text").unwrap();
        std::os::unix::fs::symlink(dir.join("ok"), &link).unwrap();
        assert_eq!(read_small_file(&link).unwrap(), "text");
        let err = load(Some(&fifo), &|_| None).unwrap_err();
        assert!(err.message.contains("FIFO"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("grace_period"), "TSINIT_GRACE_PERIOD");
        assert_eq!(env_name("hosts.path"), "TSINIT_HOSTS_PATH");
    }
}
