//! The settings table: every setting's key, the containerboot variables that also set
//! it, and how its value is parsed into [`Config`]. [`KEYS`], [`CONTAINERBOOT_ENV`] and
//! the file and environment readers all work from [`SETTINGS`], so a new setting is one
//! entry here, plus what no table can hold: its field and default in [`Config`], its
//! documented line in the embedded tsinit.toml and a sample value in the tests'
//! `SAMPLES` (unit tests ask for both), and its row in the README's Configuration table.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::Raw;
use super::{Config, Enabled, Networking, OnFailure, SignalTarget};
use crate::duration;

/// One setting.
pub(crate) struct Setting {
    /// The key: `name` at the top of the file, `section.name` in a section. Its
    /// environment variable is [`super::env_name`]'s, and the last part names the field.
    pub(crate) key: &'static str,
    /// containerboot's (the official tailscale image's) variables for the setting, read
    /// before the TSINIT_* variable so that one wins.
    pub(crate) containerboot: &'static [Var],
    /// Parses `raw` and stores the value in the config, or says what is wrong with it.
    pub(crate) set: fn(&mut Config, &Raw) -> Result<(), String>,
}

/// A containerboot variable.
pub(crate) struct Var {
    pub(crate) name: &'static str,
    /// What the variable's value means in the setting's words (`None`: the value as is).
    pub(crate) rewrite: Rewrite,
    /// An empty value counts as unset (containerboot's booleans: an empty or unparsable
    /// value is the default there; here only empty is).
    pub(crate) empty_is_unset: bool,
}

/// Turns a variable's value into the setting's words, or `None`: the value as is.
pub(crate) type Rewrite = fn(&str) -> Option<&'static str>;

/// The value as is.
pub(crate) const AS_IS: Rewrite = |_| None;

/// A containerboot variable whose value means what the setting's does.
const fn ts(name: &'static str) -> Var {
    Var {
        name,
        rewrite: AS_IS,
        empty_is_unset: false,
    }
}

/// A containerboot boolean, read as Go's strconv.ParseBool reads it (`True`, `t`, `1`...).
const fn ts_bool(name: &'static str, rewrite: Rewrite) -> Var {
    Var {
        name,
        rewrite,
        empty_is_unset: true,
    }
}

/// A Go boolean's spelling as "true" or "false".
fn go_bool_word(value: &str) -> Option<&'static str> {
    match super::upflags::go_bool(value.trim()) {
        Some(true) => Some("true"),
        Some(false) => Some("false"),
        None => None,
    }
}

/// TS_USERSPACE is a boolean: true is networking "userspace", false "kernel".
fn userspace_networking(value: &str) -> Option<&'static str> {
    match super::upflags::go_bool(value.trim()) {
        Some(true) => Some("userspace"),
        Some(false) => Some("kernel"),
        None => None,
    }
}

/// `setting!(key, [containerboot vars], |config, raw| statement)`: an entry.
macro_rules! setting {
    ($key:literal, [$($var:expr),* $(,)?], |$c:ident, $raw:ident| $body:expr) => {
        Setting {
            key: $key,
            containerboot: &[$($var),*],
            set: |$c, $raw| {
                $body;
                Ok(())
            },
        }
    };
}

/// A string, as given.
fn text(raw: &Raw) -> Result<String, String> {
    raw.str("a string").map(str::to_string)
}

/// A string; "" is `None`.
fn optional_text(raw: &Raw) -> Result<Option<String>, String> {
    text(raw).map(|s| (!s.is_empty()).then_some(s))
}

/// Every setting, in the order the reference lists them.
#[rustfmt::skip]
pub(crate) const SETTINGS: &[Setting] = &[
    setting!("signal_target", [], |c, raw| c.signal_target =
        [SignalTarget::Process, SignalTarget::Group][variant(raw, &["process", "group"])?]),
    setting!("grace_period", [], |c, raw| c.grace_period =
        duration_value(raw, false)?.unwrap_or_default()),
    setting!("escalate_after", [], |c, raw| c.escalate_after = duration_value(raw, true)?),
    setting!("networking", [ts_bool("TS_USERSPACE", userspace_networking)],
        |c, raw| c.networking = [Networking::Kernel, Networking::Userspace, Networking::Auto]
            [variant(raw, &["kernel", "userspace", "auto"])?]),
    setting!("on_failure", [], |c, raw| c.on_failure =
        [OnFailure::Exit, OnFailure::Continue][variant(raw, &["exit", "continue"])?]),
    setting!("ssh", [ts_bool("TS_SSH", go_bool_word)], |c, raw| c.ssh = bool_value(raw)?),
    setting!("serve_config", [ts("TS_SERVE_CONFIG")], |c, raw| c.serve_config =
        optional_path(raw)?),
    setting!("tailscale.enabled", [], |c, raw| c.tailscale.enabled = enabled_value(raw)?),
    setting!("tailscale.tailscaled", [], |c, raw| c.tailscale.tailscaled = optional_path(raw)?),
    setting!("tailscale.tailscale", [], |c, raw| c.tailscale.tailscale = optional_path(raw)?),
    setting!("tailscale.state_dir", [ts("TS_STATE_DIR")], |c, raw| c.tailscale.state_dir =
        required_path(raw)?),
    setting!("tailscale.socket", [ts("TS_SOCKET")], |c, raw| c.tailscale.socket =
        required_path(raw)?),
    setting!("tailscale.socket_link", [], |c, raw| c.tailscale.socket_link = bool_value(raw)?),
    setting!("tailscale.boot_timeout", [ts("TS_BOOT_TIMEOUT")], |c, raw|
        c.tailscale.boot_timeout = timeout_value(raw)?),
    setting!("tailscale.hostname", [ts("TS_HOSTNAME")], |c, raw| {
        c.tailscale.hostname = optional_text(raw)?;
        if let Some(name) = &c.tailscale.hostname {
            check_hostname(name)?;
        }
    }),
    setting!("tailscale.auth_key_file", [], |c, raw| c.tailscale.auth_key_file =
        optional_path(raw)?),
    setting!("tailscale.login_server", [], |c, raw| c.tailscale.login_server =
        optional_text(raw)?),
    setting!("tailscale.accept_dns", [ts_bool("TS_ACCEPT_DNS", go_bool_word)], |c, raw| c.tailscale.accept_dns =
        bool_value(raw)?),
    setting!("tailscale.advertise_tags", [], |c, raw| {
        c.tailscale.advertise_tags = list_value(raw)?;
        c.tailscale.advertise_tags.iter().try_for_each(|tag| check_tag(tag))?;
    }),
    setting!("tailscale.advertise_routes", [ts("TS_ROUTES")], |c, raw| {
        let routes = list_value(raw)?;
        check_routes(&routes)?;
        c.tailscale.advertise_routes = Some(routes);
    }),
    setting!("tailscale.up_timeout", [], |c, raw| c.tailscale.up_timeout = timeout_value(raw)?),
    setting!("tailscale.extra_up_args", [ts("TS_EXTRA_ARGS")], |c, raw|
        (c.tailscale.extra_up_args, c.tailscale.up_secrets) =
            crate::bringup::identity::split_secret_args(&args_value(raw)?)),
    setting!("tailscale.extra_set_args", [ts("TS_EXTRA_SET_ARGS")], |c, raw|
        c.tailscale.extra_set_args = super::upflags::set_flags(&args_value(raw)?)?),
    setting!("tailscale.tailscaled_args", [ts("TS_TAILSCALED_EXTRA_ARGS")], |c, raw|
        c.tailscale.tailscaled_args = args_value(raw)?),
    setting!("tailscale.socks5_server", [ts("TS_SOCKS5_SERVER")], |c, raw|
        c.tailscale.socks5_server = text(raw)?),
    setting!("tailscale.http_proxy", [ts("TS_OUTBOUND_HTTP_PROXY_LISTEN")], |c, raw|
        c.tailscale.http_proxy = text(raw)?),
    setting!("tailscale.export_proxy_env", [], |c, raw| c.tailscale.export_proxy_env =
        bool_value(raw)?),
    setting!("tailscale.log_level", [], |c, raw| c.tailscale.log_level = level_value(raw)?),
    setting!("tailscale.log_file", [], |c, raw| c.tailscale.log_file = optional_path(raw)?),
    setting!("tailscale.logout_on_exit", [], |c, raw| c.tailscale.logout_on_exit =
        bool_value(raw)?),
    setting!("tailscale.keep_caps", [], |c, raw| c.tailscale.keep_caps = bool_value(raw)?),
    setting!("hosts.enabled", [], |c, raw| c.hosts.enabled = bool_value(raw)?),
    setting!("hosts.path", [], |c, raw| c.hosts.path = required_path(raw)?),
    setting!("hosts.ipv6", [], |c, raw| c.hosts.ipv6 = bool_value(raw)?),
    setting!("hosts.short_names", [], |c, raw| c.hosts.short_names = bool_value(raw)?),
    setting!("hosts.online_only", [], |c, raw| c.hosts.online_only = bool_value(raw)?),
    setting!("http.listen", [ts("TS_LOCAL_ADDR_PORT")], |c, raw| c.http.listen =
        listen_value(raw)?),
    setting!("http.health", [ts_bool("TS_ENABLE_HEALTH_CHECK", go_bool_word)], |c, raw|
        c.http.health = bool_value(raw)?),
    setting!("http.metrics", [ts_bool("TS_ENABLE_METRICS", go_bool_word)], |c, raw|
        c.http.metrics = bool_value(raw)?),
];

/// Settings that no longer exist, with what to do instead: an error naming the
/// replacement rather than "unknown setting".
pub(crate) const REMOVED: &[(&str, &str)] = &[(
    "serve_ports",
    "serve_ports was removed: with userspace networking tailscaled itself forwards TCP \
     arriving on the node's tailnet addresses to 127.0.0.1 on the same port, so the \
     workload's ports are reachable without it (as with kernel networking); remove the \
     setting. To serve a port under another number, or with TLS, use a [[serve]] entry",
)];

/// Every setting's key, in the table's order. Each can be overridden by the environment
/// variable [`super::env_name`] gives.
pub(crate) const KEYS: [&str; SETTINGS.len()] = {
    let mut keys = [""; SETTINGS.len()];
    let mut i = 0;
    while i < keys.len() {
        keys[i] = SETTINGS[i].key;
        i += 1;
    }
    keys
};

/// How many containerboot variables the table has.
const CONTAINERBOOT_VARS: usize = {
    let (mut n, mut i) = (0, 0);
    while i < SETTINGS.len() {
        n += SETTINGS[i].containerboot.len();
        i += 1;
    }
    n
};

/// The official tailscale image's variables tsinit accepts (and TS_SSH), and the key
/// each sets, in the table's order.
/// `TS_USERSPACE` maps true/false to networking "userspace"/"kernel". The auth key
/// variables are not settings (see `bringup::identity::auth_key`).
pub(crate) const CONTAINERBOOT_ENV: [(&str, &str); CONTAINERBOOT_VARS] = {
    let mut vars = [("", ""); CONTAINERBOOT_VARS];
    let (mut n, mut i) = (0, 0);
    while i < SETTINGS.len() {
        let mut j = 0;
        while j < SETTINGS[i].containerboot.len() {
            vars[n] = (SETTINGS[i].containerboot[j].name, SETTINGS[i].key);
            n += 1;
            j += 1;
        }
        i += 1;
    }
    vars
};

/// Sets the setting `key` (one of [`KEYS`]) from `raw`.
pub(super) fn set(config: &mut Config, key: &str, raw: &Raw) -> Result<(), String> {
    match SETTINGS.iter().find(|s| s.key == key) {
        Some(setting) => {
            (setting.set)(config, raw)?;
            config.given.push(setting.key);
            Ok(())
        }
        None => match REMOVED.iter().find(|(k, _)| *k == key) {
            Some((_, why)) => Err(why.to_string()),
            None => Err(format!("unknown setting `{key}`")),
        },
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

/// An address and port to listen on, e.g. "[::]:9002" or "127.0.0.1:9002"; "" is `None`.
pub(super) fn listen_value(raw: &Raw) -> Result<Option<std::net::SocketAddr>, String> {
    match raw.str("an address and port")?.trim() {
        "" => Ok(None),
        s => s.parse().map(Some).map_err(|_| {
            format!(
                "`{s}` is not an address and port: give an IP address and a port, e.g. \
                 \"[::]:9002\" (every address) or \"127.0.0.1:9002\" (host names are not allowed)"
            )
        }),
    }
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
