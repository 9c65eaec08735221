//! Settings: where they come from (file, environment, defaults), how they are checked,
//! and the one error message a bad setting produces.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalTarget {
    /// The workload's main process.
    Process,
    /// The workload's process group.
    Group,
}

/// How tailscaled reaches the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Networking {
    /// Kernel TUN (tailscale0); missing /dev/net/tun or CAP_NET_ADMIN is an error.
    Kernel,
    /// `--tun=userspace-networking` with SOCKS5 and HTTP proxies.
    Userspace,
    /// Kernel when preflight passes, else userspace with a warning.
    Auto,
}

/// What to do when tailscaled or `tailscale up` fails before the workload starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// One source of settings; what it leaves `None` comes from the sources below it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    signal_target: Option<SignalTarget>,
    #[serde(default, deserialize_with = "some_duration")]
    grace_period: Option<Duration>,
    #[serde(default, deserialize_with = "some_duration_or_off")]
    escalate_after: Option<Option<Duration>>,
    networking: Option<Networking>,
    on_failure: Option<OnFailure>,
    #[serde(default, deserialize_with = "some_bool")]
    ssh: Option<bool>,
    #[serde(default, deserialize_with = "some_ports")]
    serve_ports: Option<Vec<u16>>,
    serve_config: Option<PathBuf>,
    serve: Option<Vec<crate::serve::Entry>>,
    tailscale: Option<TailscaleLayer>,
    hosts: Option<HostsLayer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsLayer {
    #[serde(default, deserialize_with = "some_bool")]
    enabled: Option<bool>,
    path: Option<PathBuf>,
    #[serde(default, deserialize_with = "some_bool")]
    ipv6: Option<bool>,
    #[serde(default, deserialize_with = "some_bool")]
    short_names: Option<bool>,
    #[serde(default, deserialize_with = "some_bool")]
    online_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TailscaleLayer {
    #[serde(default, deserialize_with = "some_enabled")]
    enabled: Option<Enabled>,
    tailscaled: Option<PathBuf>,
    tailscale: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    #[serde(default, deserialize_with = "some_duration")]
    boot_timeout: Option<Duration>,
    hostname: Option<String>,
    auth_key_file: Option<PathBuf>,
    login_server: Option<String>,
    #[serde(default, deserialize_with = "some_bool")]
    accept_dns: Option<bool>,
    #[serde(default, deserialize_with = "some_list")]
    advertise_tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some_list")]
    advertise_routes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some_duration")]
    up_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "some_args")]
    extra_up_args: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some_args")]
    tailscaled_args: Option<Vec<String>>,
    socks5_server: Option<String>,
    http_proxy: Option<String>,
    #[serde(default, deserialize_with = "some_bool")]
    export_proxy_env: Option<bool>,
    #[serde(default, deserialize_with = "some_level")]
    log_level: Option<log::LevelFilter>,
    log_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "some_bool")]
    logout_on_exit: Option<bool>,
    #[serde(default, deserialize_with = "some_bool")]
    keep_caps: Option<bool>,
}

/// Copies every `Some` field of `$from` into `$to`.
macro_rules! overlay {
    ($from:expr, $to:expr, $($field:ident),+ $(,)?) => {
        $(if let Some(v) = $from.$field { $to.$field = v; })+
    };
}

impl Layer {
    fn apply(self, config: &mut Config) {
        overlay!(
            self,
            config,
            signal_target,
            grace_period,
            escalate_after,
            networking,
            on_failure,
            ssh,
            serve_ports,
            serve
        );
        if let Some(v) = self.serve_config {
            config.serve_config = (!v.as_os_str().is_empty()).then_some(v);
        }
        if let Some(h) = self.hosts {
            let c = &mut config.hosts;
            overlay!(h, c, enabled, path, ipv6, short_names, online_only);
        }
        if let Some(t) = self.tailscale {
            let c = &mut config.tailscale;
            overlay!(t, c, enabled, state_dir, socket, boot_timeout, accept_dns);
            overlay!(
                t,
                c,
                advertise_tags,
                advertise_routes,
                up_timeout,
                extra_up_args
            );
            overlay!(
                t,
                c,
                tailscaled_args,
                socks5_server,
                http_proxy,
                export_proxy_env
            );
            overlay!(t, c, log_level, logout_on_exit, keep_caps);
            let optional = [
                (t.tailscaled, &mut c.tailscaled),
                (t.tailscale, &mut c.tailscale),
                (t.auth_key_file, &mut c.auth_key_file),
                (t.log_file, &mut c.log_file),
            ];
            for (value, slot) in optional {
                if let Some(v) = value {
                    *slot = (!v.as_os_str().is_empty()).then_some(v);
                }
            }
            for (value, slot) in [
                (t.hostname, &mut c.hostname),
                (t.login_server, &mut c.login_server),
            ] {
                if let Some(v) = value {
                    *slot = (!v.is_empty()).then_some(v);
                }
            }
        }
    }
}

/// A bool written as TOML `true`/`false`, or (from the environment) "true"/"false"/"1"/"0".
fn some_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        B(bool),
        S(String),
    }
    match B::deserialize(d)? {
        B::B(b) => Ok(Some(b)),
        B::S(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not a boolean: use true or false"
            ))),
        },
    }
}

/// Port numbers: a TOML array of integers, or one string of numbers separated by commas
/// or spaces.
fn some_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        L(Vec<i64>),
        S(String),
    }
    let numbers: Vec<i64> = match P::deserialize(d)? {
        P::L(v) => v,
        P::S(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse().map_err(|_| {
                    serde::de::Error::custom(format!("`{p}` is not a port number (1-65535)"))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    numbers
        .into_iter()
        .map(|n| crate::serve::check_port(n).map_err(serde::de::Error::custom))
        .collect::<Result<Vec<u16>, _>>()
        .map(Some)
}

/// `true`, `false` or "auto".
fn some_enabled<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Enabled>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum E {
        B(bool),
        S(String),
    }
    match E::deserialize(d)? {
        E::B(true) => Ok(Some(Enabled::Yes)),
        E::B(false) => Ok(Some(Enabled::No)),
        E::S(s) => match s.trim() {
            "auto" => Ok(Some(Enabled::Auto)),
            "true" | "1" => Ok(Some(Enabled::Yes)),
            "false" | "0" => Ok(Some(Enabled::No)),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not allowed: use true, false or \"auto\""
            ))),
        },
    }
}

/// A list: a TOML array of strings, or one string of items separated by commas/spaces.
fn some_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    split_list(d, |s| {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// Command-line arguments: a TOML array, or one string split at whitespace (no quoting).
fn some_args<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    split_list(d, |s| s.split_whitespace().map(str::to_string).collect())
}

fn split_list<'de, D: Deserializer<'de>>(
    d: D,
    split: fn(&str) -> Vec<String>,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L {
        L(Vec<String>),
        S(String),
    }
    Ok(Some(match L::deserialize(d)? {
        L::L(v) => v,
        L::S(s) => split(&s),
    }))
}

/// A log level: "off", "error", "warn", "info", "debug" or "trace".
fn some_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<log::LevelFilter>, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{s}` is not a log level: use \"off\", \"error\", \"warn\", \"info\", \"debug\" or \"trace\""
        ))
    })
}

struct DurationVisitor {
    allow_off: bool,
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(duration::EXPECTED)?;
        if self.allow_off {
            f.write_str(", or \"off\"")?;
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.allow_off && v.trim() == "off" {
            return Ok(None);
        }
        match duration::parse(v) {
            Ok(d) => Ok(Some(d)),
            Err(msg) if self.allow_off => Err(E::custom(format!("{msg}, or \"off\""))),
            Err(msg) => Err(E::custom(msg)),
        }
    }
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_str(DurationVisitor { allow_off: false })
}

fn some_duration_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Duration>>, D::Error> {
    d.deserialize_str(DurationVisitor { allow_off: true })
        .map(Some)
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
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        origin: origin.clone(),
        message: format!(
            "cannot read the configuration file: {}; \
             give an existing file with --config or TSINIT_CONFIG",
            crate::error::os_message(&e)
        ),
    })?;
    from_text(&origin, &text, env)
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
    parse_layer(text, origin)?.apply(&mut config);
    let containerboot = CONTAINERBOOT_ENV
        .iter()
        .map(|&(name, key)| (name.to_string(), key));
    let ours = KEYS.iter().map(|&key| (env_name(key), key));
    for (name, key) in containerboot.chain(ours) {
        let Some(mut value) = env(&name) else {
            continue;
        };
        if name == "TS_USERSPACE" {
            value = match value.trim() {
                "true" | "1" => "userspace".to_string(),
                "false" | "0" => "kernel".to_string(),
                _ => value,
            };
        }
        let snippet = format!("{key} = {}", toml_string(&value));
        let layer: Layer = toml::from_str(&snippet).map_err(|e| ConfigError {
            origin: format!("{name}={value:?}"),
            message: e.message().trim().to_string(),
        })?;
        layer.apply(&mut config);
    }
    crate::serve::check(&config.serve, &config.serve_ports).map_err(|message| ConfigError {
        origin: match env(&env_name("serve_ports")) {
            Some(v) => format!("{origin} and {}={v:?}", env_name("serve_ports")),
            None => origin.to_string(),
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

fn parse_layer(text: &str, origin: &str) -> Result<Layer, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let Some(span) = e.span() else {
            return ConfigError {
                origin: origin.to_string(),
                message,
            };
        };
        let (line, column) = line_column(text, span.start);
        let message = match key_at(text, span.start) {
            Some(key) if !message.contains(&format!("`{key}`")) => {
                format!("`{key}`: {message}")
            }
            _ => message,
        };
        ConfigError {
            origin: format!("{origin}:{line}:{column}"),
            message,
        }
    })
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

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
        let layer = parse_layer(EMBEDDED, "embedded").unwrap();
        let mut config = Config::default();
        layer.apply(&mut config);
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
        parse_layer(&uncommented, "x").unwrap().apply(&mut config);
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
                "FILE:1:1: target `x` is not a port or host:port (e.g. \"127.0.0.1:9999\")",
            ),
            (
                "[[serve]]\nproto = \"tcp\"\nport = 1\n",
                &[][..],
                "FILE:1:1: missing field `target`",
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
    fn env_names() {
        assert_eq!(env_name("grace_period"), "TSINIT_GRACE_PERIOD");
        assert_eq!(env_name("hosts.path"), "TSINIT_HOSTS_PATH");
    }
}
