//! Merging configuration sources: the defaults, a TOML file, then environment variables,
//! then `--set` flags, each overriding the one before. Every key is named in a [`KeyDoc`]
//! table, which is also the documentation users read: the env-var names are derived from it,
//! and its default column is the only place a default is written. Those defaults are parsed
//! like any other value, so the raw layers carry no `Default` impls and a key the table
//! lacks is a missing field, a key no field takes an unknown one.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::ConfigError;

/// One documented configuration key.
#[derive(Clone, Copy, Debug)]
pub struct KeyDoc {
    /// Dotted path in the TOML file, e.g. `cache.budget`.
    pub key: &'static str,
    /// Default value as users would write it; the configuration starts from it.
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

/// Shorthand for [`KeyDoc::new`] in key tables.
pub(crate) const fn doc(key: &'static str, default: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc::new(key, default, doc)
}

/// Shorthand for [`KeyDoc::secret`] in key tables.
pub(crate) const fn secret(key: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc::secret(key, doc)
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

/// Reads the defaults of `keys` and every source into one TOML table and deserialises it
/// into `R`; errors name the key that was wrong.
pub(crate) fn merge<R: DeserializeOwned>(
    keys: &[KeyDoc],
    env_prefix: &str,
    sources: &Sources<'_>,
) -> Result<R, ConfigError> {
    let mut table = toml::Table::new();
    for doc in keys {
        set_path(&mut table, doc.key, parse_value(doc.default));
    }
    if let Some(path) = sources.file {
        let file_error = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        // The message and the position, without toml's snippet of the line: the line may
        // hold a secret.
        let file = text.parse::<toml::Table>().map_err(|e| {
            let at = e.span().map_or(0, |span| span.start).min(text.len());
            let line = text.as_bytes()[..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            file_error(format!("line {line}: {}", e.message()))
        })?;
        overlay(&mut table, file);
    }
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

/// Puts every value of `over` into `base`, merging tables key by key so a file that sets one
/// key of a section keeps the defaults of the others.
fn overlay(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => overlay(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
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

/// Test support shared by the scorer's and the proxy's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Sources from string slices.
    pub(crate) fn sources<'a>(
        file: Option<&'a Path>,
        env: &[(&str, &str)],
        sets: &[&str],
    ) -> Sources<'a> {
        Sources {
            file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Asserts that `keys` name exactly the fields of `R`: the defaults alone deserialise
    /// (every field has a key, as no field has another default, and every key is a field,
    /// as unknown fields are refused), leaving out any one key fails, naming its field, and
    /// one key too many fails.
    pub(crate) fn assert_keys_are_the_fields<R: DeserializeOwned>(keys: &[KeyDoc], prefix: &str) {
        let none = Sources::default();
        if let Err(error) = merge::<R>(keys, prefix, &none) {
            panic!("the defaults alone do not load: {error}");
        }
        for left_out in keys {
            let fewer: Vec<KeyDoc> = keys
                .iter()
                .filter(|doc| doc.key != left_out.key)
                .copied()
                .collect();
            // The error names the field, or its section when it was the section's only key.
            match merge::<R>(&fewer, prefix, &none) {
                Ok(_) => panic!("`{}` is not a field, or has a second default", left_out.key),
                Err(error) => assert!(
                    left_out.key.split('.').any(|part| error
                        .to_string()
                        .contains(&format!("missing field `{part}`"))),
                    "{}: {error}",
                    left_out.key
                ),
            }
        }
        let mut more = keys.to_vec();
        more.push(KeyDoc::new("log.no_such_key", "1", ""));
        let error = merge::<R>(&more, prefix, &none)
            .err()
            .expect("an unknown key fails");
        assert!(error.to_string().contains("no_such_key"), "{error}");
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
