//! Declarative `tailscale serve`: the `[[serve]]` entries and a
//! ServeConfig file (TS_SERVE_CONFIG) turned into the part of tailscaled's ServeConfig
//! tsinit manages, and merged into what tailscaled has so that only what differs changes.
//! Pure logic; reading and writing the config over the LocalAPI is in `apply`.
//!
//! tsinit manages ports (TCP), web host:ports (Web) and funnel switches (AllowFunnel) it
//! set itself; it remembers which in a small file beside tailscaled's state, so an entry
//! removed from the configuration is removed from tailscaled, and whatever was served by
//! hand (`tailscale serve ...`) on other ports is left alone.

pub(crate) mod apply;
mod entry;

pub use entry::{Entry, Proto, check, check_port};

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The part of a ServeConfig tsinit manages: by key of its `TCP`, `Web` and
/// `AllowFunnel` maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    pub tcp: BTreeMap<String, Value>,
    pub web: BTreeMap<String, Value>,
    pub funnel: BTreeMap<String, Value>,
}

const SECTIONS: [&str; 3] = ["TCP", "Web", "AllowFunnel"];

impl Fragment {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.web.is_empty() && self.funnel.is_empty()
    }

    fn sections(&self) -> [(&'static str, &BTreeMap<String, Value>); 3] {
        [
            (SECTIONS[0], &self.tcp),
            (SECTIONS[1], &self.web),
            (SECTIONS[2], &self.funnel),
        ]
    }

    fn section_mut(&mut self, name: &str) -> Option<&mut BTreeMap<String, Value>> {
        match name {
            "TCP" => Some(&mut self.tcp),
            "Web" => Some(&mut self.web),
            "AllowFunnel" => Some(&mut self.funnel),
            _ => None,
        }
    }

    /// As a ServeConfig-shaped JSON object (also the record file's format).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (name, map) in self.sections() {
            if !map.is_empty() {
                let mut section = Map::new();
                for (k, v) in map {
                    section.insert(k.clone(), v.clone());
                }
                out.insert(name.to_string(), Value::Object(section));
            }
        }
        Value::Object(out)
    }

    /// Reads the managed sections of a ServeConfig-shaped object; other fields are
    /// named in the error (tsinit does not manage them).
    pub fn from_json(v: &Value) -> Result<Fragment, String> {
        let mut f = Fragment::default();
        let Some(obj) = v.as_object() else {
            return match v.is_null() {
                true => Ok(f),
                false => Err("a serve config must be a JSON object".to_string()),
            };
        };
        for (name, section) in obj {
            let Some(slot) = f.section_mut(name) else {
                return Err(format!(
                    "`{name}` is not supported in a serve config here (only TCP, Web and \
                     AllowFunnel)"
                ));
            };
            match section {
                Value::Null => {}
                Value::Object(map) => slot.extend(map.clone()),
                _ => return Err(format!("`{name}` must be a JSON object")),
            }
        }
        for key in f.tcp.keys() {
            key.parse::<i64>()
                .map_err(|_| format!("TCP key `{key}` is not a port number"))
                .and_then(check_port)?;
        }
        for (key, web) in &f.web {
            if !web.get("Handlers").is_some_and(Value::is_object) {
                return Err(format!("Web `{key}` needs a `Handlers` object"));
            }
        }
        Ok(f)
    }

    /// The TCP ports it serves.
    pub fn ports(&self) -> Vec<u16> {
        self.tcp.keys().filter_map(|k| k.parse().ok()).collect()
    }
}

/// What tsinit should serve: `entries` and the `file` ServeConfig (TS_SERVE_CONFIG, with
/// `${TS_CERT_DOMAIN}` already replaced). `dns_name` is the node's MagicDNS name (no
/// trailing dot), which names its web servers.
pub fn desired(entries: &[Entry], file: Option<&Fragment>, dns_name: &str) -> Fragment {
    let mut f = file.cloned().unwrap_or_default();
    for e in entries {
        let port = e.port.to_string();
        let handler = match e.proto {
            Proto::Tcp => json!({"TCPForward": e.target}),
            Proto::TlsTerminatedTcp => json!({"TCPForward": e.target, "TerminateTLS": dns_name}),
            Proto::Http => json!({"HTTP": true}),
            Proto::Https => json!({"HTTPS": true}),
        };
        f.tcp.insert(port, handler);
        if matches!(e.proto, Proto::Http | Proto::Https) {
            let web = f
                .web
                .entry(format!("{dns_name}:{}", e.port))
                .or_insert_with(|| json!({"Handlers": {}}));
            if let Some(handlers) = web.get_mut("Handlers").and_then(Value::as_object_mut) {
                handlers.insert(e.path.clone(), json!({"Proxy": e.target}));
            }
        }
    }
    f
}

/// The ServeConfig to set so that `current` serves `desired`: what tsinit managed before
/// (`previous`) and is no longer desired is removed, the desired keys are set, everything
/// else in `current` is kept. `None` when `current` already is that.
pub fn merge(current: &Value, previous: &Fragment, desired: &Fragment) -> Option<Value> {
    let mut out = match current {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for ((name, old), (_, new)) in previous.sections().into_iter().zip(desired.sections()) {
        let mut section = match out.remove(name) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        if name == "Web" {
            merge_web(&mut section, old, new);
        } else {
            for key in old.keys() {
                if !new.contains_key(key) {
                    section.remove(key);
                }
            }
            for (key, value) in new {
                section.insert(key.clone(), value.clone());
            }
        }
        if !section.is_empty() {
            out.insert(name.to_string(), Value::Object(section));
        }
    }
    let out = Value::Object(out);
    (normalized(current) != out).then_some(out)
}

fn handlers(web: Option<&Value>) -> Map<String, Value> {
    web.and_then(|w| w.get("Handlers"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Web servers are managed by mount point: paths set by hand on a host:port tsinit also
/// serves stay.
fn merge_web(
    section: &mut Map<String, Value>,
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) {
    let hostports: Vec<String> = old.keys().chain(new.keys()).cloned().collect();
    for hp in hostports {
        let mut current = handlers(section.get(&hp));
        let wanted = handlers(new.get(&hp));
        for path in handlers(old.get(&hp)).keys() {
            if !wanted.contains_key(path) {
                current.remove(path);
            }
        }
        current.extend(wanted);
        match current.is_empty() {
            true => {
                section.remove(&hp);
            }
            false => {
                let mut web = match section.remove(&hp) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                web.insert("Handlers".to_string(), Value::Object(current));
                section.insert(hp, Value::Object(web));
            }
        }
    }
}

/// What the configuration takes over from what was served by other means: TCP ports,
/// web mount points and funnel switches in `current` that tsinit did not set (not in
/// `previous`) and that `desired` sets differently. For a warning.
pub fn taken_over(current: &Value, previous: &Fragment, desired: &Fragment) -> Vec<String> {
    let mut out = Vec::new();
    let section = |name: &str| {
        current
            .get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (name, prev, want) in [
        ("TCP", &previous.tcp, &desired.tcp),
        ("AllowFunnel", &previous.funnel, &desired.funnel),
    ] {
        let cur = section(name);
        for (key, value) in want {
            if !prev.contains_key(key) && cur.get(key).is_some_and(|v| v != value) {
                out.push(format!("{name} {key}"));
            }
        }
    }
    let web = section("Web");
    for (hp, w) in &desired.web {
        let cur = handlers(web.get(hp));
        let prev = handlers(previous.web.get(hp));
        for (path, h) in handlers(Some(w)) {
            if !prev.contains_key(&path) && cur.get(&path).is_some_and(|v| *v != h) {
                out.push(format!("Web {hp} {path}"));
            }
        }
    }
    out
}

/// `current` with empty managed sections dropped (tailscaled omits them), null as {}.
fn normalized(current: &Value) -> Value {
    let mut m = match current {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for name in SECTIONS {
        if m.get(name)
            .is_some_and(|v| v.is_null() || v.as_object().is_some_and(Map::is_empty))
        {
            m.remove(name);
        }
    }
    Value::Object(m)
}

/// What differs between two ServeConfigs, one line per changed key, for the log.
pub fn changes(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for name in SECTIONS {
        let get = |v: &Value| {
            v.get(name)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (b, a) = (get(before), get(after));
        for (key, value) in &a {
            match b.get(key) {
                None => out.push(format!("+ {name} {key} {value}")),
                Some(old) if old != value => out.push(format!("~ {name} {key} {value}")),
                Some(_) => {}
            }
        }
        for key in b.keys().filter(|k| !a.contains_key(*k)) {
            out.push(format!("- {name} {key}"));
        }
    }
    out
}

/// One line per served port, for `tsinit status`: "tcp 9999 -> 127.0.0.1:9999",
/// "https 443 / -> http://127.0.0.1:3000".
pub fn describe(config: &Value) -> Vec<String> {
    let empty = Map::new();
    let tcp = config
        .get("TCP")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let web = config
        .get("Web")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    // In port order (the keys are text). Sorted as i32, like other small lists here: each
    // element type sorted costs the binary its own copy of the sort.
    let mut ports: Vec<i32> = tcp
        .keys()
        .filter_map(|k| k.parse::<u16>().ok().map(i32::from))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let mut out = Vec::new();
    for port in ports {
        let Some(h) = tcp
            .iter()
            .find_map(|(k, v)| (k.parse() == Ok(port)).then_some(v))
        else {
            continue;
        };
        let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or_default();
        let flag = |k: &str| h.get(k).and_then(Value::as_bool).unwrap_or(false);
        if !s("TCPForward").is_empty() {
            let proto = match s("TerminateTLS").is_empty() {
                true => "tcp",
                false => "tls-terminated-tcp",
            };
            out.push(format!("{proto} {port} -> {}", s("TCPForward")));
            continue;
        }
        let proto = if flag("HTTPS") {
            "https"
        } else if flag("HTTP") {
            "http"
        } else {
            out.push(format!("tcp {port} (handled by tailscaled)"));
            continue;
        };
        let suffix = format!(":{port}");
        let handlers: Vec<String> = web
            .iter()
            .filter(|(hp, _)| hp.ends_with(&suffix))
            .filter_map(|(_, w)| w.get("Handlers")?.as_object().cloned())
            .flat_map(|m| m.into_iter())
            .map(|(path, h)| {
                let to = ["Proxy", "Path", "Text", "Redirect"]
                    .iter()
                    .find_map(|k| {
                        h.get(*k)
                            .and_then(Value::as_str)
                            .map(|v| format!("{k} {v}"))
                    })
                    .unwrap_or_else(|| "?".to_string());
                let to = to.strip_prefix("Proxy ").unwrap_or(&to);
                format!("{proto} {port} {path} -> {to}")
            })
            .collect();
        if handlers.is_empty() {
            out.push(format!("{proto} {port} (no handler)"));
        }
        let mut sorted: Vec<&str> = handlers.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        out.extend(sorted.into_iter().map(str::to_string));
    }
    out
}

/// The ports of `f` that need a TLS certificate: (port, "https" or
/// "tls-terminated-tcp").
pub fn needs_certificate(f: &Fragment) -> Vec<(String, &'static str)> {
    f.tcp
        .iter()
        .filter_map(|(port, h)| {
            if h.get("HTTPS").and_then(Value::as_bool) == Some(true) {
                Some((port.clone(), "https"))
            } else if h
                .get("TerminateTLS")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                Some((port.clone(), "tls-terminated-tcp"))
            } else {
                None
            }
        })
        .collect()
}

/// Replaces `${TS_CERT_DOMAIN}` as containerboot does.
pub fn expand_cert_domain(text: &str, domain: &str) -> String {
    text.replace("${TS_CERT_DOMAIN}", domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as the configuration reader builds one.
    fn entry(proto: &str, port: i64, target: &str, path: Option<&str>) -> Result<Entry, String> {
        let proto = Proto::parse(proto)?;
        Ok(Entry {
            proto,
            port: check_port(port)?,
            target: Entry::target(proto, target)?,
            path: Entry::path(proto, path)?,
        })
    }

    #[test]
    fn targets_are_checked_and_made_canonical() {
        let ok = |proto, target: &str, want: &str| {
            assert_eq!(
                entry(proto, 1, target, None).unwrap().target,
                want,
                "{target}"
            );
        };
        ok("tcp", "9999", "127.0.0.1:9999");
        ok("tcp", "127.0.0.1:22", "127.0.0.1:22");
        ok("tcp", "tcp://db:5432", "db:5432");
        ok("tcp", "[::1]:80", "[::1]:80");
        ok("https", "3000", "http://127.0.0.1:3000");
        ok("https", "localhost:3000", "http://localhost:3000");
        ok(
            "http",
            "http://127.0.0.1:3000/app",
            "http://127.0.0.1:3000/app",
        );
        ok(
            "https",
            "https+insecure://127.0.0.1:8443",
            "https+insecure://127.0.0.1:8443",
        );
        ok("http", "http://backend", "http://backend");
        let bad = |proto, port, target: &str, path: Option<&str>, want: &str| {
            let err = entry(proto, port, target, path).unwrap_err();
            assert!(err.contains(want), "{proto} {port} {target}: {err}");
        };
        bad("tcp", 0, "1", None, "port 0 is not a port number");
        bad("tcp", 70000, "1", None, "port 70000");
        bad("tcp", 1, "99999", None, "port 99999");
        bad("tcp", 1, "host", None, "not a port or host:port");
        bad("tcp", 1, "a b:1", None, "not a port or host:port");
        bad("tcp", 1, "1", Some("/x"), "only for http and https");
        bad("https", 1, "ftp://x:1", None, "not a URL");
        bad("https", 1, "http://a b:1", None, "not a usable URL");
        bad("https", 1, "1", Some("x"), "must start with /");
    }

    #[test]
    fn one_protocol_per_port_and_one_target_per_path() {
        let e = |proto, port, path: &str| entry(proto, port, "1", Some(path)).unwrap();
        let t = |port| entry("tcp", port, "1", None).unwrap();
        assert!(check(&[e("https", 443, "/"), e("https", 443, "/api")]).is_ok());
        let err = check(&[e("https", 443, "/"), e("http", 443, "/x")]).unwrap_err();
        assert!(err.contains("as https and as http"), "{err}");
        let err = check(&[e("https", 443, "/"), e("https", 443, "/")]).unwrap_err();
        assert!(err.contains("path / is served twice"), "{err}");
        assert!(check(&[t(22), t(22)]).is_err());
    }

    fn entries() -> Vec<Entry> {
        vec![
            entry("tcp", 9999, "9999", None).unwrap(),
            entry("https", 443, "3000", None).unwrap(),
            entry("https", 443, "http://127.0.0.1:4000", Some("/api")).unwrap(),
        ]
    }

    #[test]
    fn desired_config_has_the_shape_tailscaled_stores() {
        let f = desired(&entries(), None, "node.tail.example");
        assert_eq!(
            f.to_json(),
            json!({
                "TCP": {
                    "443": {"HTTPS": true},
                    "9999": {"TCPForward": "127.0.0.1:9999"},
                },
                "Web": {"node.tail.example:443": {"Handlers": {
                    "/": {"Proxy": "http://127.0.0.1:3000"},
                    "/api": {"Proxy": "http://127.0.0.1:4000"},
                }}},
            })
        );
        let mut tls = f.clone();
        tls.tcp.insert(
            "853".into(),
            json!({"TCPForward": "127.0.0.1:53", "TerminateTLS": "node.tail.example"}),
        );
        assert_eq!(
            needs_certificate(&tls),
            [
                ("443".to_string(), "https"),
                ("853".to_string(), "tls-terminated-tcp")
            ]
        );
    }

    #[test]
    fn merge_changes_only_what_differs_and_keeps_what_others_serve() {
        let want = desired(&entries(), None, "n.t");
        // Nothing served yet (tailscaled answers null): everything is added.
        let first = merge(&Value::Null, &Fragment::default(), &want).unwrap();
        assert_eq!(first, want.to_json());
        // Applied already: nothing to do, also with empty sections spelled out.
        assert_eq!(merge(&first, &want, &want), None);
        let mut spelled = first.clone();
        spelled["AllowFunnel"] = json!({});
        assert_eq!(merge(&spelled, &want, &want), None);

        // Someone served 8443 by hand; tsinit's entry for 9999 is removed from the
        // configuration and 443 changes target: 8443 stays, 9999 goes, 443 changes.
        let mut current = first.clone();
        current["TCP"]["8443"] = json!({"TCPForward": "127.0.0.1:8443"});
        current["Foreground"] = json!({"session": {"TCP": {"1": {"HTTP": true}}}});
        let edited = vec![entry("https", 443, "3001", None).unwrap()];
        let now = desired(&edited, None, "n.t");
        let next = merge(&current, &want, &now).unwrap();
        assert_eq!(
            next,
            json!({
                "TCP": {"443": {"HTTPS": true}, "8443": {"TCPForward": "127.0.0.1:8443"}},
                "Web": {"n.t:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:3001"}}}},
                "Foreground": {"session": {"TCP": {"1": {"HTTP": true}}}},
            })
        );
        assert_eq!(
            changes(&current, &next),
            [
                "- TCP 9999",
                "~ Web n.t:443 {\"Handlers\":{\"/\":{\"Proxy\":\"http://127.0.0.1:3001\"}}}"
            ]
        );

        // Everything removed from the configuration: tsinit's keys go, empty sections too.
        let cleared = merge(&next, &now, &Fragment::default()).unwrap();
        assert_eq!(
            cleared,
            json!({
                "TCP": {"8443": {"TCPForward": "127.0.0.1:8443"}},
                "Foreground": {"session": {"TCP": {"1": {"HTTP": true}}}},
            })
        );
        // Nothing managed and nothing desired: no change.
        assert_eq!(
            merge(&cleared, &Fragment::default(), &Fragment::default()),
            None
        );
    }

    /// The entries and port 8080 served as TCP.
    fn with_8080() -> Vec<Entry> {
        let mut e = entries();
        e.push(entry("tcp", 8080, "8080", None).unwrap());
        e
    }

    #[test]
    fn web_servers_are_managed_by_mount_point() {
        let want = desired(&entries(), None, "n.t");
        // A path added by hand on tsinit's 443, and a port 8080 served by hand that the
        // configuration now also wants.
        let mut current = want.to_json();
        current["Web"]["n.t:443"]["Handlers"]["/admin"] = json!({"Proxy": "http://127.0.0.1:9000"});
        current["TCP"]["8080"] = json!({"TCPForward": "127.0.0.1:9090"});
        let more = desired(&with_8080(), None, "n.t");
        assert_eq!(taken_over(&current, &want, &more), ["TCP 8080"]);
        assert!(taken_over(&current, &want, &want).is_empty());
        // "/api" leaves the configuration: it goes, "/admin" stays, "/" stays.
        let fewer = desired(&entries()[..2], None, "n.t");
        let next = merge(&current, &want, &fewer).unwrap();
        assert_eq!(
            next["Web"]["n.t:443"]["Handlers"],
            json!({"/": {"Proxy": "http://127.0.0.1:3000"}, "/admin": {"Proxy": "http://127.0.0.1:9000"}})
        );
        // Every https entry leaves: the hand-made path keeps the web server.
        let only_tcp = desired(&entries()[..1], None, "n.t");
        let next = merge(&next, &fewer, &only_tcp).unwrap();
        assert_eq!(
            next["Web"],
            json!({"n.t:443": {"Handlers": {"/admin": {"Proxy": "http://127.0.0.1:9000"}}}})
        );
        // A hand-made path on the same mount point as an entry is taken over.
        let mut clash = want.to_json();
        clash["Web"]["n.t:443"]["Handlers"]["/api"] = json!({"Text": "by hand"});
        assert_eq!(
            taken_over(&clash, &Fragment::default(), &want),
            ["Web n.t:443 /api"]
        );
    }

    #[test]
    fn a_serve_config_file_is_read_like_containerboot_reads_it() {
        let text = r#"{"TCP": {"443": {"HTTPS": true}},
                       "Web": {"${TS_CERT_DOMAIN}:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:80"}}}},
                       "AllowFunnel": {"${TS_CERT_DOMAIN}:443": false}}"#;
        let text = expand_cert_domain(text, "n.t");
        let f = Fragment::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(f.web.contains_key("n.t:443"));
        assert_eq!(f.funnel["n.t:443"], json!(false));
        let both = desired(&[entry("tcp", 22, "22", None).unwrap()], Some(&f), "n.t");
        assert_eq!(both.tcp.len(), 2);
        for (bad, want) in [
            (json!([1]), "must be a JSON object"),
            (json!({"Services": {}}), "`Services` is not supported"),
            (json!({"TCP": {"x": {}}}), "TCP key `x`"),
            (json!({"TCP": {"0": {}}}), "port 0"),
            (json!({"Web": 1}), "`Web` must be a JSON object"),
            (
                json!({"Web": {"n:443": {}}}),
                "Web `n:443` needs a `Handlers` object",
            ),
        ] {
            let err = Fragment::from_json(&bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert_eq!(
            Fragment::from_json(&Value::Null).unwrap(),
            Fragment::default()
        );
    }

    #[test]
    fn status_lines_name_each_port() {
        let mut config = desired(&with_8080(), None, "n.t").to_json();
        config["TCP"]["853"] = json!({"TCPForward": "127.0.0.1:53", "TerminateTLS": "n.t"});
        assert_eq!(
            describe(&config),
            [
                "https 443 / -> http://127.0.0.1:3000",
                "https 443 /api -> http://127.0.0.1:4000",
                "tls-terminated-tcp 853 -> 127.0.0.1:53",
                "tcp 8080 -> 127.0.0.1:8080",
                "tcp 9999 -> 127.0.0.1:9999",
            ]
        );
        assert!(describe(&Value::Null).is_empty());
    }
}
