//! Merging configuration sources: a TOML file, then environment variables, then `--set`
//! flags, each overriding the one before. Every key is named in a [`KeyDoc`] table, which
//! is also the documentation users read, so the env-var names can be derived from it.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::ConfigError;

/// One documented configuration key.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Dotted path in the TOML file, e.g. `cache.budget`.
    pub key: &'static str,
    /// Default value as users would write it.
    pub default: &'static str,
    /// One sentence on what it does.
    pub doc: &'static str,
    /// Secrets are never echoed in errors or logs.
    pub secret: bool,
}

impl KeyDoc {
    /// A key with its default and meaning.
    pub const fn new(key: &'static str, default: &'static str, doc: &'static str) -> Self {
        KeyDoc {
            key,
            default,
            doc,
            secret: false,
        }
    }

    /// A secret key: no default, never echoed.
    pub const fn secret(key: &'static str, doc: &'static str) -> Self {
        KeyDoc {
            key,
            default: "",
            doc,
            secret: true,
        }
    }

    /// The environment variable that overrides this key: `prefix` + the key in upper case
    /// with `.` and `-` turned into `_` (`cache.budget` → `MM_SCORER_CACHE_BUDGET`).
    pub fn env_var(&self, prefix: &str) -> String {
        let mut name = String::from(prefix);
        name.extend(self.key.chars().map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        }));
        name
    }
}

/// Where configuration comes from, lowest precedence first.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// An optional TOML file.
    pub file: Option<&'a Path>,
    /// The process environment (or a test's stand-in for it).
    pub env: Vec<(String, String)>,
    /// `key=value` overrides from the command line.
    pub sets: Vec<String>,
}

impl Sources<'_> {
    /// The file and the real process environment, no flags.
    pub fn from_env(file: Option<&Path>) -> Sources<'_> {
        Sources {
            file,
            env: std::env::vars().collect(),
            sets: Vec::new(),
        }
    }
}

/// Reads every source into one TOML table and deserialises it into `R`; errors name the
/// key that was wrong.
pub(crate) fn merge<R: DeserializeOwned>(
    keys: &[KeyDoc],
    env_prefix: &str,
    sources: &Sources<'_>,
) -> Result<R, ConfigError> {
    let mut table = match sources.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    for doc in keys {
        let var = doc.env_var(env_prefix);
        if let Some((_, value)) = sources.env.iter().find(|(name, _)| *name == var) {
            set_path(&mut table, doc.key, parse_value(value));
        }
    }
    for set in &sources.sets {
        let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::Key {
            key: set.clone(),
            message: "expected `--set key=value`".into(),
        })?;
        let key = key.trim();
        if !keys.iter().any(|doc| doc.key == key) {
            return Err(ConfigError::Key {
                key: key.into(),
                message: "unknown key".into(),
            });
        }
        set_path(&mut table, key, parse_value(value));
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
        let key = error.path().to_string();
        let secret = keys.iter().any(|doc| doc.secret && doc.key == key);
        ConfigError::Key {
            message: if secret {
                "invalid value (not shown: secret)".into()
            } else {
                error.into_inner().to_string()
            },
            key,
        }
    })
}

/// A value from an environment variable or flag: TOML syntax if it parses as a TOML value
/// (`4`, `true`, `"x"`), otherwise the plain string (`512MiB`, `127.0.0.1:8001`).
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return;
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_env_are_toml_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_value("4"), toml::Value::Integer(4));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("512MiB"), toml::Value::String("512MiB".into()));
        assert_eq!(
            parse_value("127.0.0.1:8001"),
            toml::Value::String("127.0.0.1:8001".into())
        );
    }

    #[test]
    fn env_var_names_are_derived_from_keys() {
        let doc = KeyDoc {
            key: "cache.max_concurrent_loads",
            default: "4",
            doc: "",
            secret: false,
        };
        assert_eq!(
            doc.env_var("MM_SCORER_"),
            "MM_SCORER_CACHE_MAX_CONCURRENT_LOADS"
        );
    }
}
