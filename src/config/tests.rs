use super::raw::apply_file;
use super::settings::SETTINGS;
use super::*;
use std::collections::HashMap;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Which settings were given is bookkeeping for reading TS_EXTRA_ARGS, not a value.
    from_text("FILE", text, &|k| env.get(k).cloned()).map(|mut c| {
        c.given.clear();
        c
    })
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
            Some(setting) if setting.contains(" = ") && !setting.starts_with(' ') => Some(setting),
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
    config.given.clear();
    // Routes are left alone unless set; the documented `[]` is how to withdraw them.
    assert_eq!(config.tailscale.advertise_routes, Some(vec![]));
    config.tailscale.advertise_routes = None;
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
             `serve_config`, `serve`, `tailscale`, `hosts`, `http`",
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
    // `--ssh` is a node setting: read into the configuration, not passed on as is.
    assert!(c.ssh);
    assert!(c.tailscale.extra_up_args.is_empty());

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
        c.tailscale.advertise_routes.as_deref(),
        Some(&["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()][..])
    );
    assert!(c.ssh);
    assert_eq!(c.tailscale.up_flags.shields_up, Some(true));
    assert!(c.tailscale.extra_up_args.is_empty());
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
    let file = "ssh = true\n[hosts]\nenabled = true\n\
                [[serve]]\nproto = \"tcp\"\nport = 9999\ntarget = \"9999\"\n\
                [[serve]]\nproto = \"https\"\nport = 443\ntarget = \"http://127.0.0.1:3000\"\n";
    let c = load_text(file, &[]).unwrap();
    assert!(c.ssh);
    assert_eq!(c.serve.len(), 2);
    assert_eq!(c.serve[0].target, "127.0.0.1:9999");
    assert_eq!(c.serve[1].path, "/");

    let c = load_text(
        "",
        &[
            ("TS_SSH", "true"),
            ("TS_SERVE_CONFIG", "/etc/ts/serve.json"),
        ],
    )
    .unwrap();
    assert!(c.ssh);
    assert_eq!(c.serve_config, Some(PathBuf::from("/etc/ts/serve.json")));
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
            &[][..],
            "FILE: [[serve]]: port 1 path / is served twice: one target each",
        ),
        (
            "serve_ports = [80]\n",
            &[][..],
            "FILE:1:15: `serve_ports`: serve_ports was removed: with userspace networking \
             tailscaled itself forwards TCP arriving on the node's tailnet addresses to \
             127.0.0.1 on the same port, so the workload's ports are reachable without it (as \
             with kernel networking); remove the setting. To serve a port under another \
             number, or with TLS, use a [[serve]] entry",
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
    // The official image's variables tsinit does not support stop it, saying what to do
    // instead; unset, empty or (booleans) false they are nothing. Secrets are not shown.
    for (name, value) in [
        ("TS_KUBE_SECRET", "tailscale"),
        ("TS_DEST_IP", "10.0.0.1"),
        ("TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR", "/etc/ts"),
    ] {
        let err = check_environment(vars(vec![(name, value.into())])).unwrap_err();
        assert_eq!(err.origin, name);
    }
    for (name, value) in [("TS_KUBE_SECRET", ""), ("TS_AUTH_ONCE", "true")] {
        assert_eq!(
            check_environment(vars(vec![(name, value.into())])),
            Ok(()),
            "{name}"
        );
    }
    // A removed setting says what replaces it.
    let err = check_environment(vars(vec![("TSINIT_SERVE_PORTS", "8080".into())])).unwrap_err();
    assert!(err.message.starts_with("serve_ports was removed"), "{err}");
    assert!(err.message.contains("[[serve]]"), "{err}");
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

/// A valid value for every setting, as the environment gives it, other than its default.
/// A new entry in the settings table needs one here.
const SAMPLES: &[(&str, &str)] = &[
    ("signal_target", "group"),
    ("grace_period", "7s"),
    ("escalate_after", "3s"),
    ("networking", "userspace"),
    ("on_failure", "continue"),
    ("ssh", "true"),
    ("serve_config", "/etc/ts/serve.json"),
    ("tailscale.enabled", "false"),
    ("tailscale.tailscaled", "/usr/sbin/tailscaled"),
    ("tailscale.tailscale", "/usr/bin/tailscale"),
    ("tailscale.state_dir", "/data/ts"),
    ("tailscale.socket", "/run/ts.sock"),
    ("tailscale.socket_link", "false"),
    ("tailscale.boot_timeout", "2m"),
    ("tailscale.hostname", "web-1"),
    ("tailscale.auth_key_file", "/run/secrets/ts"),
    ("tailscale.login_server", "https://hs.example"),
    ("tailscale.accept_dns", "true"),
    ("tailscale.advertise_tags", "tag:web,tag:db"),
    ("tailscale.advertise_routes", "10.0.0.0/8"),
    ("tailscale.up_timeout", "90s"),
    ("tailscale.extra_up_args", "--nickname=box"),
    ("tailscale.extra_set_args", "--webclient"),
    ("tailscale.tailscaled_args", "--verbose=1"),
    ("tailscale.socks5_server", "localhost:2000"),
    ("tailscale.http_proxy", "localhost:2001"),
    ("tailscale.export_proxy_env", "true"),
    ("tailscale.log_level", "info"),
    ("tailscale.log_file", "/var/log/tailscaled.log"),
    ("tailscale.logout_on_exit", "true"),
    ("tailscale.keep_caps", "true"),
    ("hosts.enabled", "false"),
    ("hosts.path", "/etc/hosts.ts"),
    ("hosts.ipv6", "false"),
    ("hosts.short_names", "false"),
    ("hosts.online_only", "true"),
    ("http.listen", "127.0.0.1:9100"),
    ("http.health", "true"),
    ("http.metrics", "true"),
];

/// The one field (as `section.field`) in which `after` differs from `before`, read off
/// their Debug text; an error when none or more than one differ.
fn changed_field(before: &Config, after: &Config) -> Result<String, String> {
    let (a, b) = (format!("{before:?}"), format!("{after:?}"));
    let same = |x: &mut dyn Iterator<Item = (u8, u8)>| x.take_while(|(p, q)| p == q).count();
    let start = same(&mut a.bytes().zip(b.bytes()));
    if start == a.len() && start == b.len() {
        return Err("nothing changed".to_string());
    }
    let end = same(&mut a.bytes().rev().zip(b.bytes().rev()));
    let changed = &b[start..b.len() - end.min(b.len() - start).min(a.len() - start)];
    if changed.contains(": ") {
        return Err(format!("more than one field changed: `{changed}`"));
    }
    // The last `, name: ` or `{ name: ` before the change names the field.
    let prefix = &b[..start];
    let field = prefix
        .match_indices(": ")
        .filter_map(|(i, _)| {
            let name = prefix[..i].rsplit([' ', '{', ',']).next()?;
            let lead = &prefix[..i - name.len()];
            (!name.is_empty() && (lead.ends_with(", ") || lead.ends_with("{ "))).then_some(name)
        })
        .last()
        .ok_or_else(|| format!("no field before `{changed}`"))?;
    let section = [
        ("tailscale", "tailscale: Tailscale { "),
        ("hosts", "hosts: Hosts { "),
        ("http", "http: Http { "),
    ]
    .iter()
    .filter_map(|(name, opening)| prefix.rfind(opening).map(|i| (i, *name)))
    .max()
    .map(|(_, name)| name);
    Ok(match section {
        Some(section) => format!("{section}.{field}"),
        None => field.to_string(),
    })
}

#[test]
fn the_settings_table_is_consistent() {
    use std::collections::HashSet;
    assert_eq!(KEYS.len(), SETTINGS.len());
    let mut keys = HashSet::new();
    for (setting, key) in SETTINGS.iter().zip(KEYS) {
        assert_eq!(setting.key, key, "KEYS follows the table");
        assert!(keys.insert(key), "{key} is in the table twice");
        let ok_section = match key.split_once('.') {
            Some((section, leaf)) => {
                ["tailscale", "hosts", "http"].contains(&section)
                    && !leaf.is_empty()
                    && !leaf.contains('.')
            }
            None => !key.is_empty() && key != "serve",
        };
        assert!(
            ok_section,
            "{key}: the file has no such place for a setting"
        );
        let name = env_name(key);
        assert!(!OTHER_VARS.contains(&name.as_str()), "{name} is taken");
    }
    let names: HashSet<String> = KEYS.iter().map(|k| env_name(k)).collect();
    assert_eq!(names.len(), KEYS.len(), "two keys have one variable");

    let count: usize = SETTINGS.iter().map(|s| s.containerboot.len()).sum();
    assert_eq!(CONTAINERBOOT_ENV.len(), count);
    let mut seen = HashSet::new();
    for (name, key) in CONTAINERBOOT_ENV {
        assert!(name.starts_with("TS_"), "{name}");
        assert!(seen.insert(name), "{name} sets two settings");
        assert!(
            KEYS.contains(&key),
            "{name} sets {key}, which is no setting"
        );
        assert!(
            !crate::bringup::identity::KEY_VARS
                .iter()
                .any(|v| name == *v || name.strip_suffix("_FILE") == Some(v)),
            "{name} is an auth key variable"
        );
    }
    // TS_USERSPACE is a boolean, spelt as Go's strconv.ParseBool reads it; empty is unset.
    for (value, want) in [
        ("true", Networking::Userspace),
        ("1", Networking::Userspace),
        ("True", Networking::Userspace),
        ("t", Networking::Userspace),
        (" 0 ", Networking::Kernel),
        ("false", Networking::Kernel),
        ("FALSE", Networking::Kernel),
        ("F", Networking::Kernel),
        ("auto", Networking::Auto),
        ("", Networking::Auto),
    ] {
        let c = load_text("", &[("TS_USERSPACE", value)]).unwrap();
        assert_eq!(c.networking, want, "TS_USERSPACE={value:?}");
    }
    // So are TS_ACCEPT_DNS and TS_SSH.
    for (value, want) in [("T", true), ("True", true), ("f", false), ("", false)] {
        let c = load_text("", &[("TS_ACCEPT_DNS", value), ("TS_SSH", value)]).unwrap();
        assert_eq!((c.tailscale.accept_dns, c.ssh), (want, want), "{value:?}");
    }
    let err = load_text("", &[("TS_ACCEPT_DNS", "maybe")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TS_ACCEPT_DNS=\"maybe\": `maybe` is not a boolean: use true or false"
    );
}

/// An entry in the table is all it takes: every setting is read from its TSINIT_*
/// variable, its containerboot variables and the file alike, and sets the field its key
/// names.
#[test]
fn every_setting_is_read_from_its_variables_and_the_file() {
    for sample in SAMPLES {
        assert!(
            KEYS.contains(&sample.0),
            "sample for {}, which is no setting",
            sample.0
        );
    }
    for setting in SETTINGS {
        let key = setting.key;
        let Some(&(_, value)) = SAMPLES.iter().find(|(k, _)| *k == key) else {
            panic!("give {key} a valid value other than its default in SAMPLES");
        };
        let var = env_name(key);
        let want = load_text("", &[(var.as_str(), value)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            changed_field(&load_text("", &[]).unwrap(), &want).as_deref(),
            Ok(key),
            "{var}={value:?} must set the field {key} names and no other"
        );
        let file = match key.split_once('.') {
            Some((section, leaf)) => format!("[{section}]\n{leaf} = {value:?}\n"),
            None => format!("{key} = {value:?}\n"),
        };
        assert_eq!(load_text(&file, &[]), Ok(want.clone()), "{file}");
        let env: &[(&str, &str)] = &[(var.as_str(), value)];
        assert_eq!(load_text(&file, env), Ok(want.clone()), "{file} and {var}");
        for ts in setting.containerboot {
            let got = load_text("", &[(ts.name, value)]);
            assert_eq!(got, Ok(want.clone()), "{}={value:?}", ts.name);
        }
    }
}

/// TS_EXTRA_ARGS as the official image's users write it: the node settings in it are
/// read into the configuration (given once, kept at every boot), contradictions with a
/// dedicated setting are one clear error, and what tsinit does not read passes on.
#[test]
fn up_flags_in_extra_args_are_settings() {
    let c = load_text(
        "",
        &[(
            "TS_EXTRA_ARGS",
            "--advertise-exit-node --accept-dns=true --hostname edge -advertise-tags=tag:a,tag:b \
             --exit-node= --netfilter-mode off --reset --json --some-new-flag v",
        )],
    )
    .unwrap();
    let t = &c.tailscale;
    assert!(t.accept_dns);
    assert_eq!(t.hostname.as_deref(), Some("edge"));
    assert_eq!(t.advertise_tags, ["tag:a", "tag:b"]);
    assert_eq!(t.up_flags.advertise_exit_node, Some(true));
    assert_eq!(t.up_flags.exit_node.as_deref(), Some(""));
    assert_eq!(t.up_flags.netfilter_mode.as_deref(), Some("off"));
    assert_eq!(t.advertise_routes, None, "routes: not given, left alone");
    assert_eq!(t.extra_up_args, ["--json", "--some-new-flag", "v"]);

    // The same value twice over is fine; a contradiction names both.
    let same = [("TS_ACCEPT_DNS", "true"), ("TS_EXTRA_ARGS", "--accept-dns")];
    assert!(load_text("", &same).unwrap().tailscale.accept_dns);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("TS_ACCEPT_DNS", "false"),
                ("TS_EXTRA_ARGS", "--accept-dns=true"),
            ],
            "TS_EXTRA_ARGS=\"--accept-dns=true\": `--accept-dns=true` contradicts \
             tailscale.accept_dns = false (also set): give the setting once",
        ),
        (
            &[("TS_HOSTNAME", "a"), ("TS_EXTRA_ARGS", "--hostname=b")],
            "TS_EXTRA_ARGS=\"--hostname=b\": `--hostname=b` contradicts tailscale.hostname = a \
             (also set): give the setting once",
        ),
        (
            &[
                ("TS_ROUTES", ""),
                ("TS_EXTRA_ARGS", "--advertise-routes 10.0.0.0/8"),
            ],
            "TS_EXTRA_ARGS=\"--advertise-routes 10.0.0.0/8\": `--advertise-routes 10.0.0.0/8` \
             contradicts tailscale.advertise_routes = [] (also set): give the setting once",
        ),
        (
            &[("TS_EXTRA_ARGS", "--ssh --ssh=false")],
            "TS_EXTRA_ARGS=\"--ssh --ssh=false\": `--ssh` is given twice: give it once",
        ),
        (
            &[("TS_EXTRA_ARGS", "--accept-dns=yes")],
            "TS_EXTRA_ARGS=\"--accept-dns=yes\": `--accept-dns=yes`: `yes` is not a boolean \
             (true, false, 1, 0, t, f)",
        ),
        (
            &[("TS_EXTRA_ARGS", "--hostname")],
            "TS_EXTRA_ARGS=\"--hostname\": `--hostname` needs a value",
        ),
        (
            &[("TS_EXTRA_ARGS", "--advertise-tags=eng")],
            "TS_EXTRA_ARGS=\"--advertise-tags=eng\": `eng`: tags must start with \"tag:\" \
             (e.g. \"tag:container\")",
        ),
        (
            &[("TS_EXTRA_ARGS", "--force-reauth")],
            "TS_EXTRA_ARGS=\"--force-reauth\": `--force-reauth` would register the node again \
             at every boot; tsinit never re-registers a node: remove it",
        ),
        (
            &[("TS_EXTRA_ARGS", "--ssh up")],
            "TS_EXTRA_ARGS=\"--ssh up\": `up` is not a flag (`tailscale up` takes only flags, \
             each starting with `--`)",
        ),
    ];
    for (env, want) in cases {
        let err = load_text("", env).unwrap_err();
        assert_eq!(err.to_string(), *want, "{env:?}");
    }
}

#[test]
fn set_only_flags_go_in_extra_set_args() {
    let c = load_text(
        "",
        &[(
            "TS_EXTRA_SET_ARGS",
            "--webclient --relay-server-port 40000 --auto-update=false",
        )],
    )
    .unwrap();
    let f = &c.tailscale.extra_set_args;
    assert_eq!(f.webclient, Some(true));
    assert_eq!(f.relay_server_port, Some(Some(40000)));
    assert_eq!(f.auto_update, Some(false));
    let cases: &[(&str, &str, &str)] = &[
        (
            "TS_EXTRA_ARGS",
            "--auto-update",
            "`--auto-update` is a `tailscale set` flag that `tailscale up` refuses: move it to \
             tailscale.extra_set_args (TS_EXTRA_SET_ARGS)",
        ),
        (
            "TS_EXTRA_SET_ARGS",
            "--hostname=x",
            "`--hostname` is an `up` flag too: give it in tailscale.extra_up_args \
             (TS_EXTRA_ARGS), where tsinit keeps it at every boot",
        ),
        (
            "TS_EXTRA_SET_ARGS",
            "--relay-server-port=x",
            "`--relay-server-port=x`: `x` is not a port number (0-65535)",
        ),
        (
            "TS_EXTRA_SET_ARGS",
            "--sync=false",
            "`--sync` is not one of the flags tailscale.extra_set_args takes (auto-update, \
             nickname, relay-server-port, report-posture, update-check, webclient)",
        ),
    ];
    for (var, value, want) in cases {
        let err = load_text("", &[(var, value)]).unwrap_err();
        assert_eq!(err.message, *want, "{var}={value}");
    }
}

#[test]
fn the_endpoint_reads_containerboots_variables_with_their_meaning() {
    let http = |env: &[(&str, &str)]| load_text("", env).map(|c| c.http);
    let any: std::net::SocketAddr = "[::]:9002".parse().unwrap();
    let local: std::net::SocketAddr = "127.0.0.1:9100".parse().unwrap();
    let serving = |env: &[(&str, &str)]| http(env).unwrap().serving();
    // Off by default; either switch turns it on at containerboot's default address.
    assert_eq!(serving(&[]), None);
    assert_eq!(serving(&[("TS_ENABLE_HEALTH_CHECK", "True")]), Some(any));
    assert_eq!(serving(&[("TS_ENABLE_METRICS", "1")]), Some(any));
    let h = http(&[("TS_ENABLE_METRICS", "t")]).unwrap();
    assert!(h.metrics && !h.health);
    // An empty switch is the default (off), as there; an empty address serves nothing.
    assert_eq!(serving(&[("TS_ENABLE_HEALTH_CHECK", "")]), None);
    let off = [
        ("TS_ENABLE_HEALTH_CHECK", "true"),
        ("TS_LOCAL_ADDR_PORT", ""),
    ];
    assert_eq!(serving(&off), None);
    let on = [
        ("TS_ENABLE_HEALTH_CHECK", "1"),
        ("TS_LOCAL_ADDR_PORT", "127.0.0.1:9100"),
    ];
    assert_eq!(serving(&on), Some(local));
    // Host names and bare ports are refused with the fix, as netip.ParseAddrPort does.
    for bad in ["localhost:9002", ":9002", "9002", "[::]"] {
        let err = http(&[("TS_LOCAL_ADDR_PORT", bad)]).unwrap_err();
        assert_eq!(err.origin, format!("TS_LOCAL_ADDR_PORT={bad:?}"));
        assert!(err.message.contains("e.g. \"[::]:9002\""), "{err}");
    }
    let err = http(&[("TS_ENABLE_METRICS", "yes please")]).unwrap_err();
    assert!(err.message.contains("not a boolean"), "{err}");
    // The deprecated TS_HEALTHCHECK_ADDR_PORT: /healthz on that address.
    let h = http(&[("TS_HEALTHCHECK_ADDR_PORT", "127.0.0.1:9100")]).unwrap();
    assert_eq!(
        (h.serving(), h.health, h.metrics),
        (Some(local), true, false)
    );
    let both = [
        ("TS_HEALTHCHECK_ADDR_PORT", "127.0.0.1:9100"),
        ("TS_ENABLE_HEALTH_CHECK", "true"),
    ];
    assert!(
        http(&both)
            .unwrap_err()
            .message
            .contains("cannot be combined")
    );
    let two = [
        ("TS_HEALTHCHECK_ADDR_PORT", "127.0.0.1:9100"),
        ("TS_ENABLE_METRICS", "true"),
        ("TS_LOCAL_ADDR_PORT", "127.0.0.1:9101"),
    ];
    assert!(http(&two).unwrap_err().message.contains("one address"));
    // tsinit's own variables win over containerboot's.
    let ours = [
        ("TS_LOCAL_ADDR_PORT", "[::]:1"),
        ("TSINIT_HTTP_LISTEN", "127.0.0.1:9100"),
    ];
    assert_eq!(http(&ours).unwrap().listen, Some(local));
}

#[test]
fn containerboots_credential_variables_become_up_flags_and_secrets() {
    let c = load_text(
        "",
        &[
            ("TS_CLIENT_ID", "id-1?ephemeral=false"),
            ("TS_ID_TOKEN", "eyJ.tok"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.tailscale.extra_up_args,
        ["--client-id=id-1?ephemeral=false"]
    );
    let secrets: Vec<_> = c
        .tailscale
        .up_secrets
        .iter()
        .map(|s| (s.flag, s.value.as_str()))
        .collect();
    assert_eq!(secrets, [("id-token", "eyJ.tok")]);
    let c = load_text("", &[("TS_CLIENT_ID", "id-1"), ("TS_AUDIENCE", "aud")]).unwrap();
    assert_eq!(
        c.tailscale.extra_up_args,
        ["--client-id=id-1", "--audience=aud"]
    );
    assert!(c.tailscale.up_secrets.is_empty());
    // Empty is unset, as there.
    assert_eq!(
        load_text("", &[("TS_CLIENT_SECRET", "")]),
        load_text("", &[])
    );
    // containerboot's rules, and one source per flag.
    for (env, says) in [
        (&[("TS_ID_TOKEN", "t")][..], "TS_CLIENT_ID is not"),
        (&[("TS_AUDIENCE", "a")][..], "TS_CLIENT_ID is not"),
        (
            &[
                ("TS_CLIENT_ID", "i"),
                ("TS_ID_TOKEN", "t"),
                ("TS_CLIENT_SECRET", "s"),
            ][..],
            "cannot both",
        ),
        (
            &[
                ("TS_CLIENT_ID", "i"),
                ("TS_ID_TOKEN", "t"),
                ("TS_AUDIENCE", "a"),
            ][..],
            "cannot both",
        ),
        (
            &[
                ("TS_CLIENT_ID", "i"),
                ("TS_AUDIENCE", "a"),
                ("TS_CLIENT_SECRET", "s"),
            ][..],
            "cannot both",
        ),
        (
            &[("TS_AUTHKEY", "tskey-auth-k"), ("TS_CLIENT_ID", "i")][..],
            "keep one way to log in",
        ),
        (
            &[("TS_CLIENT_ID", "i"), ("TS_EXTRA_ARGS", "--client-id=j")][..],
            "`--client-id` is given twice",
        ),
        (
            &[
                ("TS_CLIENT_SECRET", "s"),
                ("TS_EXTRA_ARGS", "--client-secret s2"),
            ][..],
            "given here",
        ),
    ] {
        let err = load_text("", env).unwrap_err();
        assert!(err.message.contains(says), "{env:?}: {err}");
        assert!(
            !err.to_string().contains("tskey-auth-k"),
            "no secret shown: {err}"
        );
    }
}
