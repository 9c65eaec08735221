//! What the node should look like (from the configuration) and what it takes to get there
//! from what tailscaled reports: nothing, `tailscale set`, or `tailscale up`. Also where
//! the auth key comes from, and the node's default hostname. Pure logic; the effects
//! (running the CLI) are in `service`.

use std::path::Path;

use crate::config::Config;
use crate::duration;

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
    pub backend_state: String,
    pub auth_url: String,
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
    match current.backend_state.as_str() {
        "Running" | "Starting" => {}
        "NeedsLogin" | "NoState" => {
            return Plan::Up {
                args: up_args(desired),
                needs_key: true,
            };
        }
        // Logged in before, then `tailscale down`: `up` brings it back without a key.
        "Stopped" => {
            return Plan::Up {
                args: up_args(desired),
                needs_key: false,
            };
        }
        "NeedsMachineAuth" => return Plan::NeedsApproval,
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

/// A secret given as a `tailscale up` flag in the extra arguments (`--auth-key=...`,
/// `--client-secret ...`, `--id-token=...`): taken out of them, so it reaches no argv and
/// no log, and handed to the CLI in a memory file like the auth key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg {
    /// The flag's canonical name: "auth-key", "client-secret" or "id-token".
    pub flag: &'static str,
    pub value: String,
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "--{}=[redacted]", self.flag)
    }
}

/// `tailscale up` flags whose value is a secret, and the canonical name of each
/// (`--authkey` is the older spelling many setups still use).
const SECRET_FLAGS: [(&str, &str); 4] = [
    ("auth-key", "auth-key"),
    ("authkey", "auth-key"),
    ("client-secret", "client-secret"),
    ("id-token", "id-token"),
];

/// Splits `args` (extra `tailscale up` arguments) into the arguments without secrets and
/// the secrets, read as Go's flag package reads them: `-flag`/`--flag`, then `=value` or
/// the next argument.
pub fn split_secret_args(args: &[String]) -> (Vec<String>, Vec<SecretArg>) {
    let mut rest = Vec::new();
    let mut secrets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .unwrap_or_default();
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        let Some(&(_, canonical)) = SECRET_FLAGS.iter().find(|(n, _)| *n == name) else {
            rest.push(arg.clone());
            continue;
        };
        let value = match inline {
            Some(v) => Some(v.to_string()),
            None => it.next().cloned(),
        };
        match value {
            Some(value) => secrets.push(SecretArg {
                flag: canonical,
                value,
            }),
            // A flag with no value: left for the CLI to refuse.
            None => rest.push(arg.clone()),
        }
    }
    (rest, secrets)
}

/// An auth key and where it was found (the key itself is never logged).
pub struct AuthKey {
    pub key: String,
    pub source: String,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "AuthKey(from {})", self.source)
    }
}

/// Environment variables that may hold an auth key; they never reach the workload.
pub const KEY_VARS: [&str; 3] = ["TS_AUTHKEY", "TS_AUTH_KEY", "TAILSCALE_AUTHKEY"];

/// The Docker/Compose secret tsinit looks for last.
pub const SECRET_FILE: &str = "/run/secrets/ts_authkey";

/// Finds the auth key: the configured file, else $TS_AUTHKEY / $TS_AUTH_KEY /
/// $TAILSCALE_AUTHKEY, else the files their `*_FILE` variants name, else `--auth-key` in
/// the extra `up` arguments (`extra`), else /run/secrets/ts_authkey. A named file that
/// cannot be read is an error, and so is a key given both in the extra arguments and in
/// one of the other places.
pub fn auth_key(
    configured: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    extra: Option<&SecretArg>,
    secret_file: &Path,
) -> Result<Option<AuthKey>, String> {
    let read = |path: &Path, source: String| -> Result<Option<AuthKey>, String> {
        let key = crate::config::read_small_file(path).map_err(|e| {
            format!(
                "cannot read the auth key file {} ({source}): {e}",
                path.display()
            )
        })?;
        Ok(non_empty(key, source))
    };
    let explicit = || -> Result<Option<AuthKey>, String> {
        if let Some(path) = configured {
            return read(path, "tailscale.auth_key_file".to_string());
        }
        for var in KEY_VARS {
            if let Some(key) = env(var).and_then(|v| non_empty(v, format!("${var}"))) {
                return Ok(Some(key));
            }
        }
        for var in KEY_VARS.map(|v| format!("{v}_FILE")) {
            if let Some(path) = env(&var).filter(|p| !p.is_empty()) {
                return read(Path::new(&path), format!("${var}"));
            }
        }
        Ok(None)
    };
    let explicit = explicit()?;
    if let Some(arg) = extra {
        let source = "--auth-key in the extra `up` arguments".to_string();
        if let Some(other) = &explicit {
            return Err(format!(
                "two auth keys are given, in {} and {source}: keep one",
                other.source
            ));
        }
        return match arg.value.strip_prefix("file:") {
            Some(path) => read(Path::new(path), source),
            None => Ok(non_empty(arg.value.clone(), source)),
        };
    }
    if explicit.is_some() {
        return Ok(explicit);
    }
    if secret_file.exists() {
        return read(secret_file, secret_file.display().to_string());
    }
    Ok(None)
}

fn non_empty(key: String, source: String) -> Option<AuthKey> {
    let key = key.trim().to_string();
    (!key.is_empty()).then_some(AuthKey { key, source })
}

/// An OAuth client secret works as a key only with tags: say so before trying.
pub fn check_key(key: &AuthKey, desired: &Desired) -> Result<(), String> {
    if key.key.starts_with("tskey-client-") && desired.advertise_tags.is_empty() {
        return Err(format!(
            "the auth key from {} is an OAuth client secret, which needs tags: set \
             tailscale.advertise_tags (or TSINIT_TAILSCALE_ADVERTISE_TAGS), e.g. \"tag:container\"",
            key.source
        ));
    }
    Ok(())
}

/// The node's name when none is configured: `<app>-<machine id>` on Fly Machines (whose
/// hostname is the bare machine id), else the container's hostname; made a DNS label.
pub fn default_hostname(system: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    match (env("FLY_APP_NAME"), env("FLY_MACHINE_ID")) {
        (Some(app), Some(id)) if !app.is_empty() && !id.is_empty() => {
            dns_label(&format!("{app}-{id}"))
        }
        _ => dns_label(system),
    }
}

/// `name` as a valid DNS label: lower case, [a-z0-9-], no leading/trailing '-', at most
/// 63 characters; "tsinit" if nothing is left.
pub fn dns_label(name: &str) -> String {
    let first = name.split('.').next().unwrap_or_default();
    let mut label: String = first
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    label.truncate(63);
    let label = label.trim_matches('-');
    if label.is_empty() {
        "tsinit".to_string()
    } else {
        label.to_string()
    }
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
            backend_state: "Running".into(),
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
                    backend_state: "Starting".into(),
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
                    backend_state: "NeedsLogin".into(),
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
                    backend_state: "NoState".into(),
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
                    backend_state: "Stopped".into(),
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
                    backend_state: "NeedsMachineAuth".into(),
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

    #[test]
    fn finds_the_key_in_order() {
        let dir = std::env::temp_dir().join(format!("tsinit-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "  tskey-auth-file\n").unwrap();
        let secret = dir.join("secret");
        let none = |_: &str| None;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        let found = |r: Result<Option<AuthKey>, String>| r.unwrap().map(|k| (k.key, k.source));

        assert_eq!(found(auth_key(None, &none, None, &secret)), None);
        assert_eq!(
            found(auth_key(
                Some(&file),
                &env(&[("TS_AUTHKEY", "x")]),
                None,
                &secret
            )),
            Some(("tskey-auth-file".into(), "tailscale.auth_key_file".into()))
        );
        assert_eq!(
            found(auth_key(
                None,
                &env(&[("TS_AUTH_KEY", "b"), ("TAILSCALE_AUTHKEY", "c")]),
                None,
                &secret
            )),
            Some(("b".into(), "$TS_AUTH_KEY".into()))
        );
        let file_env = move |k: &str| (k == "TS_AUTHKEY_FILE").then(|| file.display().to_string());
        assert_eq!(
            found(auth_key(None, &file_env, None, &secret)).map(|k| k.0),
            Some("tskey-auth-file".into())
        );
        std::fs::write(&secret, "tskey-secret").unwrap();
        assert_eq!(
            found(auth_key(None, &none, None, &secret)).map(|k| k.0),
            Some("tskey-secret".into())
        );
        // --auth-key in the extra arguments: a key (or a file: of one) of its own, and
        // an error next to another explicit key, but it wins over the secret file.
        let extra = |v: &str| SecretArg {
            flag: "auth-key",
            value: v.to_string(),
        };
        assert_eq!(
            found(auth_key(None, &none, Some(&extra("tskey-x")), &secret)),
            Some((
                "tskey-x".into(),
                "--auth-key in the extra `up` arguments".into()
            ))
        );
        let from_file = format!("file:{}", dir.join("key").display());
        assert_eq!(
            found(auth_key(None, &none, Some(&extra(&from_file)), &secret)).map(|k| k.0),
            Some("tskey-auth-file".into())
        );
        let err = auth_key(
            None,
            &env(&[("TS_AUTHKEY", "a")]),
            Some(&extra("b")),
            &secret,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "two auth keys are given, in $TS_AUTHKEY and --auth-key in the extra `up` \
             arguments: keep one"
        );
        let err = auth_key(Some(Path::new("/nonexistent/k")), &none, None, &secret).unwrap_err();
        assert_eq!(
            err,
            "cannot read the auth key file /nonexistent/k (tailscale.auth_key_file): \
             No such file or directory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_taken_out_of_the_extra_arguments() {
        let args: Vec<String> = [
            "--advertise-exit-node",
            "--authkey=tskey-auth-a",
            "-auth-key",
            "tskey-auth-b",
            "--client-secret",
            "tskey-client-c",
            "-id-token=eyJ.d",
            "--auth-keys=x",
            "--client-id=id",
            "--id-token",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (rest, secrets) = split_secret_args(&args);
        assert_eq!(
            rest,
            [
                "--advertise-exit-node",
                "--auth-keys=x",
                "--client-id=id",
                "--id-token"
            ]
        );
        let got: Vec<(&str, &str)> = secrets.iter().map(|s| (s.flag, s.value.as_str())).collect();
        assert_eq!(
            got,
            [
                ("auth-key", "tskey-auth-a"),
                ("auth-key", "tskey-auth-b"),
                ("client-secret", "tskey-client-c"),
                ("id-token", "eyJ.d")
            ]
        );
        assert_eq!(
            format!("{:?}", secrets[0]),
            "--auth-key=[redacted]",
            "never shown"
        );
    }

    #[test]
    fn oauth_secret_needs_tags() {
        let key = AuthKey {
            key: "tskey-client-abc".into(),
            source: "$TS_AUTHKEY".into(),
        };
        let err = check_key(&key, &desired()).unwrap_err();
        assert!(err.contains("OAuth client secret") && err.contains("advertise_tags"));
        assert!(
            !err.contains("abc"),
            "the secret must not be in the message"
        );
        let mut tagged = desired();
        tagged.advertise_tags = vec!["tag:ci".into()];
        assert_eq!(check_key(&key, &tagged), Ok(()));
        assert_eq!(format!("{key:?}"), "AuthKey(from $TS_AUTHKEY)");
    }

    #[test]
    fn default_hostnames() {
        let none = |_: &str| None;
        assert_eq!(default_hostname("Web_1", &none), "web-1");
        let fly = |k: &str| match k {
            "FLY_APP_NAME" => Some("my-app".to_string()),
            "FLY_MACHINE_ID" => Some("148e272b5e3d89".to_string()),
            _ => None,
        };
        assert_eq!(
            default_hostname("148e272b5e3d89", &fly),
            "my-app-148e272b5e3d89"
        );
    }

    #[test]
    fn dns_labels() {
        let long = "a".repeat(80);
        let cases = [
            ("web", "web"),
            ("Web_Server 1", "web-server-1"),
            ("host.example.com", "host"),
            ("--x--", "x"),
            ("", "tsinit"),
            ("ümlaut", "mlaut"),
            (long.as_str(), &long[..63]),
        ];
        for (input, want) in cases {
            assert_eq!(dns_label(input), want, "{input}");
        }
    }
}
