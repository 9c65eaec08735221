//! Values as written (TOML or environment) and the walk over a configuration file that
//! hands each setting's value to [`super::settings::set`].

use std::fmt;

use super::settings::{KEYS, set};
use super::{Config, ConfigError};

/// A setting's value as written: TOML gives each type, the environment strings. The
/// configuration is read by walking the parsed TOML, not with serde's derive: that kept a
/// hundred kilobytes of generic parser code out of the binary.
pub(super) enum Raw {
    Bool(bool),
    Int(i64),
    Str(String),
    /// Floats, dates and integers beyond i64, as written: no setting takes them.
    Other(&'static str, String),
    List(Vec<Spanned>),
    Table(Vec<(Spanned, Spanned)>),
}

/// A value (or a key, as a string) and where it is in the file (`None`: environment).
pub(super) struct Spanned {
    pub(super) raw: Raw,
    pub(super) at: Option<std::ops::Range<usize>>,
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

    pub(super) fn invalid(&self, expected: &str) -> String {
        format!("invalid type: {self}, expected {expected}")
    }

    /// The string, or the serde-style type error.
    pub(super) fn str(&self, expected: &str) -> Result<&str, String> {
        match self {
            Raw::Str(s) => Ok(s),
            _ => Err(self.invalid(expected)),
        }
    }

    /// The strings of a list, or of one string split by `split`.
    pub(super) fn strings(&self, split: fn(&str) -> Vec<String>) -> Result<Vec<String>, String> {
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
pub(super) fn apply_file(config: &mut Config, text: &str, origin: &str) -> Result<(), ConfigError> {
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
    const SECTIONS: [&str; 4] = ["serve", "tailscale", "hosts", "http"];
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
            "tailscale" | "hosts" | "http" => {
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
            _ if (KEYS.contains(&name) || super::settings::REMOVED.iter().any(|r| r.0 == name))
                && !name.contains('.') =>
            {
                set(config, name, &value.raw)
                    .map_err(|m| located(value.at.clone(), format!("`{name}`: {m}")))?;
            }
            _ => return Err(unknown(key, name, in_section(""), true)),
        }
    }
    Ok(())
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
