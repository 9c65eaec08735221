//! What the node should look like (from the configuration) and what it takes to get there
//! from what tailscaled reports: nothing, `tailscale set`, or `tailscale up`. Pure logic;
//! the effects (running the CLI) are the bring-up's.

use crate::config::{Config, SetFlags, UpFlags};
use crate::duration;
use crate::localapi::BackendState;

/// The settings `tailscale up`/`set` manage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub hostname: String,
    pub accept_dns: bool,
    pub advertise_tags: Vec<String>,
    /// `None`: left as they are.
    pub advertise_routes: Option<Vec<String>>,
    pub login_server: Option<String>,
    pub up_timeout: String,
    /// The node settings given as `up` flags in the extra arguments.
    pub flags: UpFlags,
    /// The extra `up` arguments that are not node settings tsinit reads.
    pub extra_up_args: Vec<String>,
    /// Settings only `tailscale set` changes (set after a login, then kept).
    pub set_flags: SetFlags,
    /// Tailscale SSH (`--ssh`).
    pub ssh: bool,
}

impl Desired {
    /// `default_hostname` is used when the configuration names none.
    pub fn from_config(config: &Config, default_hostname: &str) -> Desired {
        let t = &config.tailscale;
        // 0.0.0.0/0 and ::/0 among the routes are the exit node (prefs keep them with the
        // routes; `set` and `up` take them as --advertise-exit-node).
        let mut flags = t.up_flags.clone();
        let advertise_routes = t.advertise_routes.as_ref().map(|routes| {
            let (exit, other): (Vec<String>, Vec<String>) =
                routes.iter().cloned().partition(|r| is_exit_route(r));
            if !exit.is_empty() {
                flags.advertise_exit_node.get_or_insert(true);
            }
            other
        });
        Desired {
            hostname: t
                .hostname
                .clone()
                .unwrap_or_else(|| default_hostname.to_string()),
            accept_dns: t.accept_dns,
            advertise_tags: t.advertise_tags.clone(),
            advertise_routes,
            login_server: t.login_server.clone(),
            up_timeout: duration::format(t.up_timeout),
            flags,
            extra_up_args: t.extra_up_args.clone(),
            set_flags: t.extra_set_args.clone(),
            ssh: config.ssh,
        }
    }

    fn stateful_filtering(&self) -> bool {
        self.flags.stateful_filtering.unwrap_or(false)
    }
}

/// What tailscaled reported, as far as the decision needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub state: BackendState,
    pub hostname: String,
    pub corp_dns: bool,
    pub no_stateful_filtering: bool,
    pub advertise_tags: Vec<String>,
    /// Exit-node routes (0.0.0.0/0 and ::/0) included, as prefs hold them.
    pub advertise_routes: Vec<String>,
    pub control_url: String,
    pub run_ssh: bool,
    pub route_all: bool,
    /// Whether an exit node is in use (by ID or IP).
    pub uses_exit_node: bool,
    pub exit_node_allow_lan_access: bool,
    pub advertise_connector: bool,
    pub shields_up: bool,
    pub no_snat: bool,
    /// 0 off, 1 nodivert, 2 on.
    pub netfilter_mode: u8,
    pub operator: String,
    pub web_client: bool,
    pub update_check: bool,
    pub auto_update: bool,
    pub posture_checking: bool,
    pub relay_server_port: Option<u16>,
    pub profile_name: String,
}

/// Whether `route` is one of the two an exit node advertises.
fn is_exit_route(route: &str) -> bool {
    route == "0.0.0.0/0" || route == "::/0"
}

impl Current {
    fn routes(&self) -> Vec<String> {
        let mut r = self.advertise_routes.clone();
        r.retain(|r| !is_exit_route(r));
        r
    }

    fn advertises_exit_node(&self) -> bool {
        self.advertise_routes
            .iter()
            .filter(|r| is_exit_route(r))
            .count()
            == 2
    }
}

/// What to do to reach the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Logged in and every managed setting matches: no CLI call at all.
    Nothing,
    /// Logged in; `tailscale set` with these arguments fixes what differs.
    Set(Vec<String>),
    /// Not logged in (or stopped): `tailscale up` with the full desired flag set; the key
    /// argument is added by the caller if there is a key.
    Up { args: Vec<String>, needs_key: bool },
    /// Logged in, but a setting only a new login could change differs (tags, login
    /// server): left alone with a warning, because tsinit never re-registers a node;
    /// `set` holds what `tailscale set` can still fix (may be empty).
    Keep { reason: String, set: Vec<String> },
    /// An administrator must approve the machine in the admin console.
    NeedsApproval,
    /// tailscaled is in a state tsinit cannot act on.
    Unexpected(String),
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut b: Vec<&str> = b.iter().map(String::as_str).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Decides what to do. `Starting`/`Running` count as logged in.
pub fn plan(current: &Current, desired: &Desired) -> Plan {
    match current.state {
        BackendState::Running | BackendState::Starting => {}
        BackendState::NeedsLogin | BackendState::NoState => {
            return Plan::Up {
                args: up_args(desired),
                needs_key: true,
            };
        }
        // Logged in before, then `tailscale down`: `up` brings it back without a key.
        BackendState::Stopped => {
            return Plan::Up {
                args: up_args(desired),
                needs_key: false,
            };
        }
        BackendState::NeedsMachineAuth => return Plan::NeedsApproval,
        other => return Plan::Unexpected(other.to_string()),
    }
    let set = set_args(current, desired);
    if !same_set(&current.advertise_tags, &desired.advertise_tags) {
        return Plan::Keep {
            set,
            reason: format!(
                "advertised tags are [{}] but the configuration asks for [{}]; changing tags \
                 needs a new login, which tsinit never does by itself",
                current.advertise_tags.join(","),
                desired.advertise_tags.join(",")
            ),
        };
    }
    if let Some(server) = &desired.login_server
        && server.trim_end_matches('/') != current.control_url.trim_end_matches('/')
    {
        return Plan::Keep {
            set,
            reason: format!(
                "logged in to {} but the configuration names {server}; switching needs a new \
                 login, which tsinit never does by itself",
                current.control_url
            ),
        };
    }
    if set.is_empty() {
        Plan::Nothing
    } else {
        Plan::Set(set)
    }
}

/// The `tailscale set` arguments for what differs among the settings `set` can change.
fn set_args(current: &Current, desired: &Desired) -> Vec<String> {
    let mut set = Vec::new();
    let mut differs = |differ: bool, arg: String| {
        if differ {
            set.push(arg);
        }
    };
    differs(
        current.hostname != desired.hostname,
        format!("--hostname={}", desired.hostname),
    );
    differs(
        current.corp_dns != desired.accept_dns,
        format!("--accept-dns={}", desired.accept_dns),
    );
    differs(
        current.no_stateful_filtering == desired.stateful_filtering(),
        format!("--stateful-filtering={}", desired.stateful_filtering()),
    );
    if let Some(routes) = &desired.advertise_routes {
        // `set --advertise-routes` keeps the exit-node routes as they are.
        differs(
            !same_set(&current.routes(), routes),
            format!("--advertise-routes={}", routes.join(",")),
        );
    }
    differs(
        current.run_ssh != desired.ssh,
        format!("--ssh={}", desired.ssh),
    );
    let f = &desired.flags;
    let bool_flag = |want: Option<bool>, have: bool, name: &str| match want {
        Some(want) if want != have => Some(format!("--{name}={want}")),
        _ => None,
    };
    let flags = [
        bool_flag(
            f.advertise_exit_node,
            current.advertises_exit_node(),
            "advertise-exit-node",
        ),
        bool_flag(f.accept_routes, current.route_all, "accept-routes"),
        bool_flag(
            f.exit_node_allow_lan_access,
            current.exit_node_allow_lan_access,
            "exit-node-allow-lan-access",
        ),
        bool_flag(
            f.advertise_connector,
            current.advertise_connector,
            "advertise-connector",
        ),
        bool_flag(f.shields_up, current.shields_up, "shields-up"),
        bool_flag(f.snat_subnet_routes, !current.no_snat, "snat-subnet-routes"),
    ];
    set.extend(flags.into_iter().flatten());
    // Which exit node is in use is compared by whether there is one: its name or IP
    // resolves to a node ID only against the netmap.
    match f.exit_node.as_deref() {
        Some("") if current.uses_exit_node => set.push("--exit-node=".to_string()),
        Some(node) if !node.is_empty() && !current.uses_exit_node => {
            set.push(format!("--exit-node={node}"));
        }
        _ => {}
    }
    if let Some(mode) = &f.netfilter_mode {
        let have = ["off", "nodivert", "on"].get(usize::from(current.netfilter_mode));
        if have != Some(&mode.as_str()) {
            set.push(format!("--netfilter-mode={mode}"));
        }
    }
    if let Some(user) = &f.operator
        && *user != current.operator
    {
        set.push(format!("--operator={user}"));
    }
    let s = &desired.set_flags;
    let only_set = [
        bool_flag(s.webclient, current.web_client, "webclient"),
        bool_flag(s.auto_update, current.auto_update, "auto-update"),
        bool_flag(s.update_check, current.update_check, "update-check"),
        bool_flag(s.report_posture, current.posture_checking, "report-posture"),
    ];
    set.extend(only_set.into_iter().flatten());
    if let Some(port) = s.relay_server_port
        && port != current.relay_server_port
    {
        let port = port.map(|p| p.to_string()).unwrap_or_default();
        set.push(format!("--relay-server-port={port}"));
    }
    if let Some(name) = &s.nickname
        && *name != current.profile_name
    {
        set.push(format!("--nickname={name}"));
    }
    set
}

/// The full flag set for `tailscale up --reset` (always accepted, whatever was set before).
pub fn up_args(desired: &Desired) -> Vec<String> {
    let mut args = vec![
        "--reset".to_string(),
        format!("--hostname={}", desired.hostname),
        format!("--accept-dns={}", desired.accept_dns),
        format!("--stateful-filtering={}", desired.stateful_filtering()),
        format!("--timeout={}", desired.up_timeout),
    ];
    if !desired.advertise_tags.is_empty() {
        args.push(format!(
            "--advertise-tags={}",
            desired.advertise_tags.join(",")
        ));
    }
    if let Some(routes) = desired.advertise_routes.as_ref().filter(|r| !r.is_empty()) {
        args.push(format!("--advertise-routes={}", routes.join(",")));
    }
    if let Some(server) = &desired.login_server {
        args.push(format!("--login-server={server}"));
    }
    if desired.ssh {
        args.push("--ssh".to_string());
    }
    args.extend(desired.flags.args());
    args.extend(desired.extra_up_args.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            hostname: "web".into(),
            accept_dns: false,
            advertise_tags: vec![],
            advertise_routes: Some(vec!["10.0.0.0/8".into()]),
            login_server: None,
            up_timeout: "60s".into(),
            flags: UpFlags {
                shields_up: Some(true),
                ..UpFlags::default()
            },
            extra_up_args: vec!["--nickname=n".into()],
            set_flags: SetFlags::default(),
            ssh: false,
        }
    }

    fn running() -> Current {
        Current {
            state: BackendState::Running,
            hostname: "web".into(),
            corp_dns: false,
            no_stateful_filtering: true,
            advertise_routes: vec!["10.0.0.0/8".into()],
            control_url: "https://controlplane.tailscale.com".into(),
            shields_up: true,
            netfilter_mode: 2,
            ..Current::default()
        }
    }

    #[test]
    fn plans() {
        let full = up_args(&desired());
        let cases: Vec<(&str, Current, Plan)> = vec![
            ("in step", running(), Plan::Nothing),
            (
                "starting counts as logged in",
                Current {
                    state: BackendState::Starting,
                    ..running()
                },
                Plan::Nothing,
            ),
            (
                "hostname and dns differ",
                Current {
                    hostname: "old".into(),
                    corp_dns: true,
                    ..running()
                },
                Plan::Set(vec!["--hostname=web".into(), "--accept-dns=false".into()]),
            ),
            (
                "stateful filtering on",
                Current {
                    no_stateful_filtering: false,
                    ..running()
                },
                Plan::Set(vec!["--stateful-filtering=false".into()]),
            ),
            (
                "ssh on, not wanted",
                Current {
                    run_ssh: true,
                    ..running()
                },
                Plan::Set(vec!["--ssh=false".into()]),
            ),
            (
                "routes differ",
                Current {
                    advertise_routes: vec![],
                    ..running()
                },
                Plan::Set(vec!["--advertise-routes=10.0.0.0/8".into()]),
            ),
            (
                "logged out",
                Current {
                    state: BackendState::NeedsLogin,
                    ..Current::default()
                },
                Plan::Up {
                    args: full.clone(),
                    needs_key: true,
                },
            ),
            (
                "fresh",
                Current {
                    state: BackendState::NoState,
                    ..Current::default()
                },
                Plan::Up {
                    args: full.clone(),
                    needs_key: true,
                },
            ),
            (
                "stopped",
                Current {
                    state: BackendState::Stopped,
                    ..running()
                },
                Plan::Up {
                    args: full.clone(),
                    needs_key: false,
                },
            ),
            (
                "needs approval",
                Current {
                    state: BackendState::NeedsMachineAuth,
                    ..running()
                },
                Plan::NeedsApproval,
            ),
        ];
        for (what, current, want) in cases {
            assert_eq!(plan(&current, &desired()), want, "{what}");
        }
        let ssh = Desired {
            ssh: true,
            ..desired()
        };
        assert_eq!(plan(&running(), &ssh), Plan::Set(vec!["--ssh=true".into()]));
        let with_ssh = Current {
            run_ssh: true,
            ..running()
        };
        assert_eq!(plan(&with_ssh, &ssh), Plan::Nothing);
        assert!(up_args(&ssh).contains(&"--ssh".to_string()));
        assert!(!up_args(&desired()).iter().any(|a| a.starts_with("--ssh")));
    }

    /// The desired state for a configuration with `extra` as TS_EXTRA_ARGS.
    fn desired_with(extra: &str) -> Desired {
        let env = |name: &str| (name == "TS_EXTRA_ARGS").then(|| extra.to_string());
        let config = crate::config::from_text("test", "", &env).unwrap();
        Desired::from_config(&config, "web")
    }

    #[test]
    fn settings_in_extra_up_args_are_kept_at_every_boot() {
        // An exit node with MagicDNS, a route, a hostname: after the first `up`, tailscaled
        // holds them; nothing is set back.
        let d = desired_with(
            "--advertise-exit-node --accept-dns=true --advertise-routes=10.1.0.0/16 \
             --hostname=edge --accept-routes --shields-up=false --snat-subnet-routes=false \
             --exit-node-allow-lan-access --operator=app --netfilter-mode=nodivert \
             --stateful-filtering",
        );
        let up = up_args(&d);
        for flag in [
            "--accept-dns",
            "--hostname",
            "--stateful-filtering",
            "--advertise-routes",
        ] {
            let n = up
                .iter()
                .filter(|a| a.split('=').next() == Some(flag))
                .count();
            assert_eq!(n, 1, "{flag} once in {up:?}");
        }
        let after_first_up = Current {
            state: BackendState::Running,
            hostname: "edge".into(),
            corp_dns: true,
            no_stateful_filtering: false,
            advertise_routes: vec!["10.1.0.0/16".into(), "0.0.0.0/0".into(), "::/0".into()],
            route_all: true,
            exit_node_allow_lan_access: true,
            no_snat: true,
            netfilter_mode: 1,
            operator: "app".into(),
            ..Current::default()
        };
        assert_eq!(plan(&after_first_up, &d), Plan::Nothing);
        // Drift in each is set back to what the configuration says, and only that.
        let drifted = Current {
            advertise_routes: vec!["10.1.0.0/16".into()],
            corp_dns: false,
            route_all: false,
            ..after_first_up.clone()
        };
        assert_eq!(
            plan(&drifted, &d),
            Plan::Set(vec![
                "--accept-dns=true".into(),
                "--advertise-exit-node=true".into(),
                "--accept-routes=true".into(),
            ])
        );
    }

    #[test]
    fn routes_left_alone_unless_configured() {
        let hand_made = Current {
            advertise_routes: vec!["192.168.9.0/24".into(), "0.0.0.0/0".into(), "::/0".into()],
            ..running()
        };
        let unset = Desired {
            advertise_routes: None,
            ..desired()
        };
        assert_eq!(plan(&hand_made, &unset), Plan::Nothing);
        // Empty: none advertised (the exit node is another setting).
        let empty = Desired {
            advertise_routes: Some(vec![]),
            ..desired()
        };
        assert_eq!(
            plan(&hand_made, &empty),
            Plan::Set(vec!["--advertise-routes=".into()])
        );
        assert!(
            !up_args(&empty)
                .iter()
                .any(|a| a.starts_with("--advertise-routes"))
        );
    }

    #[test]
    fn set_only_settings_are_compared_with_prefs() {
        let mut d = desired();
        d.set_flags = SetFlags {
            webclient: Some(true),
            relay_server_port: Some(Some(40000)),
            ..SetFlags::default()
        };
        assert_eq!(
            plan(&running(), &d),
            Plan::Set(vec![
                "--webclient=true".into(),
                "--relay-server-port=40000".into()
            ])
        );
        let set = Current {
            web_client: true,
            relay_server_port: Some(40000),
            ..running()
        };
        assert_eq!(plan(&set, &d), Plan::Nothing);
        d.set_flags.relay_server_port = Some(None);
        assert_eq!(
            plan(&set, &d),
            Plan::Set(vec!["--relay-server-port=".into()])
        );
    }

    #[test]
    fn exit_node_use_is_compared_by_presence() {
        let mut d = desired();
        d.flags.exit_node = Some("100.64.0.9".into());
        assert_eq!(
            plan(&running(), &d),
            Plan::Set(vec!["--exit-node=100.64.0.9".into()])
        );
        let using = Current {
            uses_exit_node: true,
            ..running()
        };
        assert_eq!(plan(&using, &d), Plan::Nothing);
        d.flags.exit_node = Some(String::new());
        assert_eq!(plan(&using, &d), Plan::Set(vec!["--exit-node=".into()]));
    }

    #[test]
    fn never_relogs_for_tags_or_login_server() {
        let tagged = Current {
            advertise_tags: vec!["tag:old".into()],
            ..running()
        };
        assert!(matches!(plan(&tagged, &desired()), Plan::Keep { ref set, .. } if set.is_empty()));
        // What `set` can change is still changed.
        let tagged_ssh = Current {
            run_ssh: true,
            ..tagged.clone()
        };
        assert!(
            matches!(plan(&tagged_ssh, &desired()), Plan::Keep { set, .. } if set == ["--ssh=false"])
        );
        let mut other = desired();
        other.login_server = Some("https://headscale.example".into());
        assert!(matches!(plan(&running(), &other), Plan::Keep { .. }));
        other.login_server = Some("https://controlplane.tailscale.com/".into());
        assert_eq!(plan(&running(), &other), Plan::Nothing);
    }

    #[test]
    fn up_args_are_complete_and_explicit() {
        let mut d = desired();
        d.advertise_tags = vec!["tag:a".into(), "tag:b".into()];
        d.login_server = Some("http://127.0.0.1:9".into());
        assert_eq!(
            up_args(&d),
            [
                "--reset",
                "--hostname=web",
                "--accept-dns=false",
                "--stateful-filtering=false",
                "--timeout=60s",
                "--advertise-tags=tag:a,tag:b",
                "--advertise-routes=10.0.0.0/8",
                "--login-server=http://127.0.0.1:9",
                "--shields-up=true",
                "--nickname=n",
            ]
        );
    }
}
