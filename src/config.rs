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
pub const KEYS: [&str; 3] = ["signal_target", "grace_period", "escalate_after"];

/// Who receives forwarded signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalTarget {
    /// The workload's main process.
    Process,
    /// The workload's process group.
    Group,
}

/// The settings tsinit runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub signal_target: SignalTarget,
    pub grace_period: Duration,
    /// `None`: never escalate a forwarded SIGTERM/SIGINT to SIGKILL.
    pub escalate_after: Option<Duration>,
    /// Where the file part came from, for the debug log.
    pub source: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            signal_target: SignalTarget::Process,
            grace_period: Duration::from_secs(5),
            escalate_after: None,
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
}

impl Layer {
    fn apply(self, config: &mut Config) {
        if let Some(v) = self.signal_target {
            config.signal_target = v;
        }
        if let Some(v) = self.grace_period {
            config.grace_period = v;
        }
        if let Some(v) = self.escalate_after {
            config.escalate_after = v;
        }
    }
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
        return from_text("built-in configuration", EMBEDDED, env);
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
    for key in KEYS {
        let name = env_name(key);
        if let Some(value) = env(&name) {
            let snippet = format!("{key} = {}", toml_string(&value));
            let layer: Layer = toml::from_str(&snippet).map_err(|e| ConfigError {
                origin: format!("{name}={value:?}"),
                message: e.message().trim().to_string(),
            })?;
            layer.apply(&mut config);
        }
    }
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
            .filter_map(|l| l.strip_prefix('#').filter(|l| l.contains(" = ")))
            .map(|l| format!("{l}\n"))
            .collect();
        for key in KEYS {
            assert!(uncommented.contains(&format!("{key} = ")), "{key} missing");
            assert!(
                EMBEDDED.contains(&format!("env: {}", env_name(key))),
                "{key}"
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
                 `grace_period`, `escalate_after`",
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
