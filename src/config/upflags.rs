//! The `tailscale up` flags in `tailscale.extra_up_args` (TS_EXTRA_ARGS), read as the CLI
//! reads them (Go's flag package). The flags that are node settings become part of the
//! configuration: they are given to `tailscale up` once (never twice, whatever tsinit
//! sets itself) and compared with tailscaled's prefs at every later boot, so that what
//! the configuration asks for is never undone. Flags tsinit does not know are passed to
//! `tailscale up` as they are.

use super::Config;
use super::settings::{check_hostname, check_routes, check_tag};

/// The node settings `tailscale up` flags give beyond tsinit's own settings; `None`:
/// not given (tailscaled's value is left as it is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpFlags {
    pub accept_routes: Option<bool>,
    pub advertise_exit_node: Option<bool>,
    /// An IP, a name, or "" for none.
    pub exit_node: Option<String>,
    pub exit_node_allow_lan_access: Option<bool>,
    pub advertise_connector: Option<bool>,
    pub shields_up: Option<bool>,
    pub snat_subnet_routes: Option<bool>,
    /// tsinit turns stateful filtering off unless this says otherwise.
    pub stateful_filtering: Option<bool>,
    /// "on", "nodivert" or "off".
    pub netfilter_mode: Option<String>,
    pub operator: Option<String>,
}

/// Settings only `tailscale set` changes (`up` refuses these flags), from
/// `tailscale.extra_set_args` (TS_EXTRA_SET_ARGS); `None`: not given.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SetFlags {
    pub webclient: Option<bool>,
    pub auto_update: Option<bool>,
    pub update_check: Option<bool>,
    pub report_posture: Option<bool>,
    /// `Some(None)`: the relay server off (`--relay-server-port=`).
    pub relay_server_port: Option<Option<u16>>,
    pub nickname: Option<String>,
}

impl std::fmt::Debug for SetFlags {
    /// As the `tailscale set` arguments they stand for.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SetFlags({:?})", self.args())
    }
}

impl SetFlags {
    /// All of them as `tailscale set` arguments.
    pub fn args(&self) -> Vec<String> {
        let port = self
            .relay_server_port
            .map(|p| p.map(|p| p.to_string()).unwrap_or_default());
        flag_args(
            &[
                ("webclient", self.webclient),
                ("auto-update", self.auto_update),
                ("update-check", self.update_check),
                ("report-posture", self.report_posture),
            ],
            &[
                ("relay-server-port", port.as_deref()),
                ("nickname", self.nickname.as_deref()),
            ],
        )
    }
}

impl UpFlags {
    /// The ones given, as `tailscale up` arguments.
    pub fn args(&self) -> Vec<String> {
        flag_args(
            &[
                ("advertise-exit-node", self.advertise_exit_node),
                ("accept-routes", self.accept_routes),
                (
                    "exit-node-allow-lan-access",
                    self.exit_node_allow_lan_access,
                ),
                ("advertise-connector", self.advertise_connector),
                ("shields-up", self.shields_up),
                ("snat-subnet-routes", self.snat_subnet_routes),
            ],
            &[
                ("exit-node", self.exit_node.as_deref()),
                ("netfilter-mode", self.netfilter_mode.as_deref()),
                ("operator", self.operator.as_deref()),
            ],
        )
    }
}

/// `--name=value` for each flag given, the booleans first.
fn flag_args(bools: &[(&str, Option<bool>)], texts: &[(&str, Option<&str>)]) -> Vec<String> {
    let bools = bools
        .iter()
        .map(|(n, v)| (*n, v.map(|b| if b { "true" } else { "false" })));
    let mut out = Vec::new();
    for (name, value) in bools.chain(texts.iter().copied()) {
        if let Some(value) = value {
            out.push(format!("--{name}={value}"));
        }
    }
    out
}

/// The flags `tailscale.extra_set_args` takes: the settings `tailscale set` changes
/// that `tailscale up` has no flag for (all compared with tailscaled's prefs).
const SET_FLAGS: &[(&str, Kind)] = &[
    ("auto-update", Bool),
    ("nickname", Value),
    ("relay-server-port", Value),
    ("report-posture", Bool),
    ("update-check", Bool),
    ("webclient", Bool),
];

/// Reads `tailscale.extra_set_args`.
pub(super) fn set_flags(args: &[String]) -> Result<SetFlags, String> {
    let mut f = SetFlags::default();
    for g in parse(args, SET_FLAGS, "tailscale set")? {
        let b = || g.value == "true";
        match g.name.as_str() {
            "webclient" => f.webclient = Some(b()),
            "auto-update" => f.auto_update = Some(b()),
            "update-check" => f.update_check = Some(b()),
            "report-posture" => f.report_posture = Some(b()),
            "nickname" => f.nickname = Some(g.value.clone()),
            "relay-server-port" => {
                f.relay_server_port = match g.value.as_str() {
                    "" => Some(None),
                    v => Some(Some(v.parse().map_err(|_| {
                        format!("`{}`: `{v}` is not a port number (0-65535)", g.text())
                    })?)),
                }
            }
            other => {
                return Err(format!(
                    "`--{other}` is an `up` flag too: give it in tailscale.extra_up_args \
                     (TS_EXTRA_ARGS), where tsinit keeps it at every boot"
                ));
            }
        }
    }
    Ok(f)
}

/// Whether a flag takes a value (`--flag value` reads the next argument) or is boolean
/// (`--flag` alone means true; a value only as `--flag=value`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
}
use Kind::{Bool, Value};

/// Every flag of `tailscale up` (1.96.4, Linux), with its kind.
const UP_FLAGS: &[(&str, Kind)] = &[
    ("accept-dns", Bool),
    ("accept-risk", Value),
    ("accept-routes", Bool),
    ("advertise-connector", Bool),
    ("advertise-exit-node", Bool),
    ("advertise-routes", Value),
    ("advertise-tags", Value),
    ("audience", Value),
    ("client-id", Value),
    ("exit-node", Value),
    ("exit-node-allow-lan-access", Bool),
    ("force-reauth", Bool),
    ("host-routes", Bool),
    ("hostname", Value),
    ("json", Bool),
    ("login-server", Value),
    ("netfilter-mode", Value),
    ("nickname", Value),
    ("operator", Value),
    ("qr", Bool),
    ("qr-format", Value),
    ("report-posture", Bool),
    ("reset", Bool),
    ("shields-up", Bool),
    ("snat-subnet-routes", Bool),
    ("ssh", Bool),
    ("stateful-filtering", Bool),
    ("timeout", Value),
    ("unattended", Bool),
];

/// `tailscale set` flags that `tailscale up` refuses ("flag provided but not defined").
const SET_ONLY: &[&str] = &[
    "auto-update",
    "relay-server-port",
    "relay-server-static-endpoints",
    "sync",
    "update-check",
    "webclient",
];

/// A flag as given: its name, value ("true"/"false" for booleans) and its arguments.
struct Given {
    name: String,
    value: String,
    args: Vec<String>,
}

impl Given {
    fn text(&self) -> String {
        self.args.join(" ")
    }
}

/// Go's strconv.ParseBool.
pub(crate) fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Reads `args` as Go's flag package does with the flags `known` of the `tailscale`
/// subcommand `command`.
fn parse(args: &[String], known: &[(&str, Kind)], command: &str) -> Result<Vec<Given>, String> {
    let mut out: Vec<Given> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(f) if !f.is_empty() && !f.starts_with('-') && !f.starts_with('=') => f,
            _ if arg == "--" => {
                return Err(format!(
                    "`--` ends the flags, and `{command}` takes no other arguments: remove it"
                ));
            }
            _ => {
                return Err(format!(
                    "`{arg}` is not a flag (`{command}` takes only flags, each starting \
                     with `--`)"
                ));
            }
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        let kind = match known.iter().find(|(n, _)| *n == name) {
            Some((_, kind)) => *kind,
            // Set flags of up's that tsinit manages itself: their `up` kind, refused later.
            None if command != "tailscale up" => match UP_FLAGS.iter().find(|(n, _)| *n == name) {
                Some((_, kind)) => *kind,
                None => {
                    return Err(format!(
                        "`--{name}` is not one of the flags tailscale.extra_set_args takes \
                         (auto-update, nickname, relay-server-port, report-posture, \
                         update-check, webclient)"
                    ));
                }
            },
            None if SET_ONLY.contains(&name) => {
                return Err(format!(
                    "`--{name}` is a `tailscale set` flag that `tailscale up` refuses: move it \
                     to tailscale.extra_set_args (TS_EXTRA_SET_ARGS)"
                ));
            }
            // Not a flag of 1.96.4's `up` (a newer CLI's?): passed on as given, its value
            // with it when the next argument is no flag.
            None => match (inline, it.as_slice().first()) {
                (None, Some(next)) if !next.starts_with('-') => Value,
                _ => Bool,
            },
        };
        let known = known.iter().chain(UP_FLAGS).any(|(n, _)| *n == name);
        let (value, args) = match (kind, inline) {
            (Bool, None) => ("true".to_string(), vec![arg.clone()]),
            (Bool, Some(v)) if !known => (v.to_string(), vec![arg.clone()]),
            (Bool, Some(v)) => match go_bool(v) {
                Some(b) => (b.to_string(), vec![arg.clone()]),
                None => {
                    return Err(format!(
                        "`{arg}`: `{v}` is not a boolean (true, false, 1, 0, t, f)"
                    ));
                }
            },
            (Value, Some(v)) => (v.to_string(), vec![arg.clone()]),
            (Value, None) => match it.next() {
                Some(v) => (v.clone(), vec![arg.clone(), v.clone()]),
                None => return Err(format!("`{arg}` needs a value")),
            },
        };
        if out.iter().any(|g| g.name == name) {
            return Err(format!("`--{name}` is given twice: give it once"));
        }
        out.push(Given {
            name: name.to_string(),
            value,
            args,
        });
    }
    Ok(out)
}

/// Takes the node settings out of `tailscale.extra_up_args` into the configuration.
/// `given(key)` says whether the setting `key` was set explicitly (file or environment):
/// a flag that contradicts one is an error, since either could be meant.
pub(super) fn merge(config: &mut Config, given: &dyn Fn(&str) -> bool) -> Result<(), String> {
    let flags = parse(&config.tailscale.extra_up_args, UP_FLAGS, "tailscale up")?;
    let mut rest = Vec::new();
    let t = &mut config.tailscale;
    let f = &mut t.up_flags;
    for g in flags {
        let b = || g.value == "true";
        let clash = |key: &str, theirs: String| {
            format!(
                "`{}` contradicts {key} = {theirs} (also set): give the setting once",
                g.text()
            )
        };
        match g.name.as_str() {
            "hostname" => {
                check_hostname(&g.value)?;
                match &t.hostname {
                    Some(h) if *h != g.value => return Err(clash("tailscale.hostname", h.clone())),
                    _ => t.hostname = Some(g.value.clone()),
                }
            }
            "accept-dns" => {
                if given("tailscale.accept_dns") && t.accept_dns != b() {
                    return Err(clash("tailscale.accept_dns", t.accept_dns.to_string()));
                }
                t.accept_dns = b();
            }
            "ssh" => {
                if given("ssh") && config.ssh != b() {
                    return Err(clash("ssh", config.ssh.to_string()));
                }
                config.ssh = b();
            }
            "advertise-routes" => {
                let routes = list(&g.value);
                check_routes(&routes)?;
                match &t.advertise_routes {
                    Some(r) if !same(r, &routes) => {
                        return Err(clash(
                            "tailscale.advertise_routes",
                            format!("[{}]", r.join(",")),
                        ));
                    }
                    _ => t.advertise_routes = Some(routes),
                }
            }
            "advertise-tags" => {
                let tags = list(&g.value);
                tags.iter().try_for_each(|tag| check_tag(tag))?;
                if !t.advertise_tags.is_empty() && !same(&t.advertise_tags, &tags) {
                    return Err(clash(
                        "tailscale.advertise_tags",
                        format!("[{}]", t.advertise_tags.join(",")),
                    ));
                }
                t.advertise_tags = tags;
            }
            "login-server" => match &t.login_server {
                Some(s) if *s != g.value => return Err(clash("tailscale.login_server", s.clone())),
                _ => t.login_server = Some(g.value.clone()),
            },
            "timeout" => {
                let d = go_duration(&g.value).ok_or_else(|| {
                    format!(
                        "`{}`: `{}` is not a duration such as 60s or 2m",
                        g.text(),
                        g.value
                    )
                })?;
                if given("tailscale.up_timeout") && t.up_timeout != d {
                    return Err(clash("tailscale.up_timeout", crate::duration::format(d)));
                }
                t.up_timeout = d;
            }
            "force-reauth" if b() => {
                return Err(
                    "`--force-reauth` would register the node again at every boot; \
                            tsinit never re-registers a node: remove it"
                        .to_string(),
                );
            }
            // tsinit gives `--reset` to every `up`.
            "reset" | "force-reauth" => {}
            "accept-routes" => f.accept_routes = Some(b()),
            "advertise-exit-node" => f.advertise_exit_node = Some(b()),
            "exit-node" => f.exit_node = Some(g.value.clone()),
            "exit-node-allow-lan-access" => f.exit_node_allow_lan_access = Some(b()),
            "advertise-connector" => f.advertise_connector = Some(b()),
            "shields-up" => f.shields_up = Some(b()),
            "snat-subnet-routes" => f.snat_subnet_routes = Some(b()),
            "stateful-filtering" => f.stateful_filtering = Some(b()),
            "netfilter-mode" => match g.value.as_str() {
                "on" | "nodivert" | "off" => f.netfilter_mode = Some(g.value.clone()),
                other => {
                    return Err(format!(
                        "`{}`: the netfilter mode is one of on, nodivert, off (not `{other}`)",
                        g.text()
                    ));
                }
            },
            "operator" => f.operator = Some(g.value.clone()),
            _ => rest.extend(g.args),
        }
    }
    t.extra_up_args = rest;
    Ok(())
}

/// A comma-separated list ("" is none).
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn same(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// A Go duration as `tailscale up --timeout` reads it ("90s", "1m30s", "0"); whole
/// milliseconds at least.
fn go_duration(text: &str) -> Option<std::time::Duration> {
    if text == "0" {
        return Some(std::time::Duration::ZERO);
    }
    crate::duration::parse(text).ok()
}
