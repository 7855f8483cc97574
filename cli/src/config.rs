//! Where mmctl finds the pool and the store: flags, then environment variables (both
//! through clap), then a small TOML file, then defaults.
//!
//! ```toml
//! # ~/.config/mmctl/config.toml (or --config FILE, or MMCTL_CONFIG)
//! proxy = "http://127.0.0.1:8080"
//! key = "k-admin"
//! store = "azure://models/prod/"     # or "dir:/srv/models"; `import` writes here with --to store
//! [azure]
//! account = "mystorage"
//! access_key = "..."                 # or sas_token; neither: workload identity
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use manymodels_config::Secret;
use manymodels_config::scorer::{AzureCredential, AzureStoreConfig, StoreConfig};
use serde::Deserialize;

/// The pool's default address: `cargo xtask up` starts the proxy there.
pub const DEFAULT_PROXY: &str = "http://127.0.0.1:8080";

/// What the file may say; every field optional, unknown ones refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub proxy: Option<String>,
    pub key: Option<String>,
    pub store: Option<String>,
    pub timeout_seconds: Option<f64>,
    #[serde(default)]
    pub azure: AzureFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFile {
    pub account: Option<String>,
    pub access_key: Option<String>,
    pub sas_token: Option<String>,
    pub endpoint: Option<String>,
    pub use_emulator: Option<bool>,
}

/// The flags and environment variables every command shares, as clap read them.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Global {
    /// The proxy's base URL [default: http://127.0.0.1:8080]
    #[arg(long, global = true, env = "MMCTL_PROXY")]
    pub proxy: Option<String>,
    /// Bearer key (an admin key for admin commands) [env: MMCTL_KEY]
    #[arg(long, global = true, env = "MMCTL_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Config file [default: $XDG_CONFIG_HOME/mmctl/config.toml, if it exists]
    #[arg(long, global = true, env = "MMCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// A model store for `import --to store`: `dir:PATH` (or a path) or
    /// `azure://CONTAINER[/PREFIX]`
    #[arg(long, global = true, env = "MMCTL_STORE")]
    pub store: Option<String>,
    /// Azure Storage account (azure:// stores)
    #[arg(long, global = true, env = "MMCTL_AZURE_ACCOUNT")]
    pub azure_account: Option<String>,
    /// Azure Storage access key [env: MMCTL_AZURE_ACCESS_KEY]
    #[arg(
        long,
        global = true,
        env = "MMCTL_AZURE_ACCESS_KEY",
        hide_env_values = true
    )]
    pub azure_access_key: Option<String>,
    /// Azure SAS token [env: MMCTL_AZURE_SAS_TOKEN]
    #[arg(
        long,
        global = true,
        env = "MMCTL_AZURE_SAS_TOKEN",
        hide_env_values = true
    )]
    pub azure_sas_token: Option<String>,
    /// Blob endpoint (Azurite or a private endpoint)
    #[arg(long, global = true, env = "MMCTL_AZURE_ENDPOINT")]
    pub azure_endpoint: Option<String>,
    /// Use the Azure Storage emulator (Azurite at AZURITE_BLOB_STORAGE_URL)
    #[arg(long, global = true, env = "MMCTL_AZURE_EMULATOR")]
    pub azure_emulator: bool,
    /// Per-request timeout in seconds [default: 30]
    #[arg(long, global = true, env = "MMCTL_TIMEOUT")]
    pub timeout: Option<f64>,
    /// Machine-readable JSON on stdout instead of tables
    #[arg(long, global = true)]
    pub json: bool,
}

/// The settings a command runs with.
#[derive(Debug)]
pub struct Settings {
    pub proxy: String,
    pub key: Option<Secret>,
    pub store: Option<StoreConfig>,
    pub timeout: Duration,
    pub json: bool,
    /// Where each setting came from, for `mmctl config`.
    pub sources: Vec<(&'static str, String)>,
    pub file: Option<PathBuf>,
}

impl Settings {
    pub fn resolve(global: &Global) -> anyhow::Result<Settings> {
        let file_path = global.config.clone().or_else(default_file);
        let file = match &file_path {
            Some(path) if path.exists() || global.config.is_some() => Some(read_file(path)?),
            _ => None,
        };
        let used = file.as_ref().map(|_| file_path.clone().unwrap_or_default());
        let file = file.unwrap_or_default();
        let mut sources = Vec::new();
        let mut pick = |name: &'static str, flag: Option<String>, from_file: Option<String>| {
            let (value, source) = match (flag, from_file) {
                (Some(v), _) => (Some(v), "flag or environment"),
                (None, Some(v)) => (Some(v), "file"),
                (None, None) => (None, "default"),
            };
            sources.push((name, source.to_string()));
            value
        };
        let proxy = pick("proxy", global.proxy.clone(), file.proxy.clone())
            .unwrap_or_else(|| DEFAULT_PROXY.to_string());
        let proxy = proxy.trim_end_matches('/').to_string();
        if !(proxy.starts_with("http://") || proxy.starts_with("https://")) {
            bail!("proxy must be an http:// or https:// URL, not '{proxy}'");
        }
        let key = pick("key", global.key.clone(), file.key.clone())
            .filter(|k| !k.is_empty())
            .map(Secret::new);
        let store = pick("store", global.store.clone(), file.store.clone());
        let azure = AzureFile {
            account: global.azure_account.clone().or(file.azure.account),
            access_key: global.azure_access_key.clone().or(file.azure.access_key),
            sas_token: global.azure_sas_token.clone().or(file.azure.sas_token),
            endpoint: global.azure_endpoint.clone().or(file.azure.endpoint),
            use_emulator: global
                .azure_emulator
                .then_some(true)
                .or(file.azure.use_emulator),
        };
        let store = store.map(|s| parse_store(&s, azure)).transpose()?;
        let seconds = global.timeout.or(file.timeout_seconds).unwrap_or(30.0);
        if !(seconds > 0.0 && seconds <= 86_400.0) {
            bail!("timeout must be between 0 and 86400 seconds, not {seconds}");
        }
        Ok(Settings {
            proxy,
            key,
            store,
            timeout: Duration::from_secs_f64(seconds),
            json: global.json,
            sources,
            file: used,
        })
    }
}

fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mmctl/config.toml"))
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// `dir:PATH`, a plain path, or `azure://CONTAINER[/PREFIX]`.
pub fn parse_store(text: &str, azure: AzureFile) -> anyhow::Result<StoreConfig> {
    if let Some(rest) = text.strip_prefix("azure://") {
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if container.is_empty() {
            bail!("store '{text}': azure://CONTAINER[/PREFIX] needs a container");
        }
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let use_emulator = azure.use_emulator.unwrap_or(false);
        let credential = match (azure.access_key, azure.sas_token) {
            (Some(key), None) => AzureCredential::AccessKey(Secret::new(key)),
            (None, Some(token)) => AzureCredential::SasToken(Secret::new(token)),
            (None, None) => AzureCredential::Ambient,
            (Some(_), Some(_)) => bail!("give an Azure access key or a SAS token, not both"),
        };
        return Ok(StoreConfig::Azure(AzureStoreConfig {
            account: azure.account.unwrap_or_default(),
            container: container.to_string(),
            prefix,
            endpoint: azure.endpoint,
            use_emulator,
            credential,
        }));
    }
    let path = text.strip_prefix("dir:").unwrap_or(text);
    if path.is_empty() || text.contains("://") {
        bail!("store '{text}': expected dir:PATH, a path, or azure://CONTAINER[/PREFIX]");
    }
    Ok(StoreConfig::Local {
        path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_parse_from_their_short_forms() {
        let local = parse_store("dir:/srv/models", AzureFile::default()).unwrap();
        assert!(matches!(local, StoreConfig::Local { path } if path == Path::new("/srv/models")));
        let azure = parse_store(
            "azure://models/prod/eu",
            AzureFile {
                account: Some("acct".into()),
                access_key: Some("k".into()),
                ..AzureFile::default()
            },
        )
        .unwrap();
        let StoreConfig::Azure(azure) = azure else {
            panic!("not azure")
        };
        assert_eq!(
            (azure.container.as_str(), azure.prefix.as_str()),
            ("models", "prod/eu/")
        );
        assert!(matches!(azure.credential, AzureCredential::AccessKey(_)));
        assert!(!azure.use_emulator);
        assert!(parse_store("azure://", AzureFile::default()).is_err());
        assert!(parse_store("s3://bucket", AzureFile::default()).is_err());
        let both = AzureFile {
            access_key: Some("k".into()),
            sas_token: Some("t".into()),
            ..AzureFile::default()
        };
        assert!(parse_store("azure://c", both).is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("mmctl-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            "proxy = \"http://file:1/\"\nkey = \"from-file\"\ntimeout_seconds = 5\n",
        )
        .unwrap();
        let global = Global {
            config: Some(path.clone()),
            ..Global::default()
        };
        let settings = Settings::resolve(&global).unwrap();
        assert_eq!(settings.proxy, "http://file:1");
        assert_eq!(settings.key.as_ref().unwrap().expose(), "from-file");
        assert_eq!(settings.timeout, Duration::from_secs(5));
        let global = Global {
            config: Some(path.clone()),
            proxy: Some("http://flag:2".into()),
            ..Global::default()
        };
        let settings = Settings::resolve(&global).unwrap();
        assert_eq!(settings.proxy, "http://flag:2");
        assert_eq!(settings.key.as_ref().unwrap().expose(), "from-file");
        std::fs::write(&path, "proxie = \"typo\"\n").unwrap();
        let error = Settings::resolve(&global).unwrap_err();
        assert!(format!("{error:#}").contains("proxie"), "{error:#}");
        let missing = Global {
            config: Some(dir.join("absent.toml")),
            ..Global::default()
        };
        assert!(
            Settings::resolve(&missing).is_err(),
            "a named file must exist"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
