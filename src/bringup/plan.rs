//! What the node should look like (from the configuration) and what it takes to get there
//! from what tailscaled reports: nothing, `tailscale set`, or `tailscale up`. Pure logic;
//! the effects (running the CLI) are the bring-up's.

use crate::config::Config;
use crate::duration;
use crate::localapi::BackendState;

/// The settings `tailscale up`/`set` manage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub hostname: String,
    pub accept_dns: bool,
    pub advertise_tags: Vec<String>,
    pub advertise_routes: Vec<String>,
    pub login_server: Option<String>,
    pub up_timeout: String,
    pub extra_up_args: Vec<String>,
    /// Tailscale SSH (`--ssh`).
    pub ssh: bool,
}

impl Desired {
    /// `default_hostname` is used when the configuration names none.
    pub fn from_config(config: &Config, default_hostname: &str) -> Desired {
        let t = &config.tailscale;
        // `--ssh` in the extra `up` arguments (as TS_EXTRA_ARGS often has it) counts as
        // ssh = true, so a restart does not take SSH away with `set --ssh=false`.
        let is_ssh = |a: &String| ssh_flag(a).is_some();
        let ssh_in_extra = t.extra_up_args.iter().any(|a| ssh_flag(a) == Some(true));
        Desired {
            hostname: t
                .hostname
                .clone()
                .unwrap_or_else(|| default_hostname.to_string()),
            accept_dns: t.accept_dns,
            advertise_tags: t.advertise_tags.clone(),
            advertise_routes: t.advertise_routes.clone(),
            login_server: t.login_server.clone(),
            up_timeout: duration::format(t.up_timeout),
            extra_up_args: t
                .extra_up_args
                .iter()
                .filter(|a| !is_ssh(a))
                .cloned()
                .collect(),
            ssh: config.ssh || ssh_in_extra,
        }
    }
}

/// The value of an `--ssh` flag as Go's flag package reads it (`-ssh`, `--ssh=t`, ...);
/// `None` for other arguments.
fn ssh_flag(arg: &str) -> Option<bool> {
    let flag = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    match flag.split_once('=') {
        None => (flag == "ssh").then_some(true),
        Some(("ssh", value)) => match value {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        },
        Some(_) => None,
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
    pub advertise_routes: Vec<String>,
    pub control_url: String,
    pub run_ssh: bool,
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
    let mut a = a.to_vec();
    let mut b = b.to_vec();
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
    if current.hostname != desired.hostname {
        set.push(format!("--hostname={}", desired.hostname));
    }
    if current.corp_dns != desired.accept_dns {
        set.push(format!("--accept-dns={}", desired.accept_dns));
    }
    if !current.no_stateful_filtering {
        set.push("--stateful-filtering=false".to_string());
    }
    if !same_set(&current.advertise_routes, &desired.advertise_routes) {
        set.push(format!(
            "--advertise-routes={}",
            desired.advertise_routes.join(",")
        ));
    }
    if current.run_ssh != desired.ssh {
        set.push(format!("--ssh={}", desired.ssh));
    }
    set
}

/// The full flag set for `tailscale up --reset` (always accepted, whatever was set before).
pub fn up_args(desired: &Desired) -> Vec<String> {
    let mut args = vec![
        "--reset".to_string(),
        format!("--hostname={}", desired.hostname),
        format!("--accept-dns={}", desired.accept_dns),
        "--stateful-filtering=false".to_string(),
        format!("--timeout={}", desired.up_timeout),
    ];
    if !desired.advertise_tags.is_empty() {
        args.push(format!(
            "--advertise-tags={}",
            desired.advertise_tags.join(",")
        ));
    }
    if !desired.advertise_routes.is_empty() {
        args.push(format!(
            "--advertise-routes={}",
            desired.advertise_routes.join(",")
        ));
    }
    if let Some(server) = &desired.login_server {
        args.push(format!("--login-server={server}"));
    }
    if desired.ssh {
        args.push("--ssh".to_string());
    }
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
            advertise_routes: vec!["10.0.0.0/8".into()],
            login_server: None,
            up_timeout: "60s".into(),
            extra_up_args: vec!["--shields-up".into()],
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

    #[test]
    fn ssh_in_extra_up_args_counts_as_ssh_on() {
        let mut config = Config::default();
        config.tailscale.extra_up_args = vec!["--ssh".into(), "--shields-up".into()];
        let d = Desired::from_config(&config, "h");
        assert!(d.ssh);
        assert_eq!(d.extra_up_args, ["--shields-up"]);
        config.tailscale.extra_up_args = vec!["--ssh=false".into()];
        assert!(!Desired::from_config(&config, "h").ssh);
        for on in ["-ssh", "--ssh=1", "-ssh=t", "--ssh=True"] {
            config.tailscale.extra_up_args = vec![on.into(), "--sshx".into()];
            let d = Desired::from_config(&config, "h");
            assert!(d.ssh, "{on}");
            assert_eq!(d.extra_up_args, ["--sshx"], "{on}");
        }
        config.tailscale.extra_up_args = vec!["-ssh=F".into()];
        assert!(!Desired::from_config(&config, "h").ssh);
        config.ssh = true;
        assert!(Desired::from_config(&config, "h").ssh);
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
                "--shields-up",
            ]
        );
    }
}
