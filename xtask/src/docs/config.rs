//! The configuration tables: every key of each binary with its environment variable,
//! default and meaning, from the key tables that are also the configuration's defaults
//! (`config/src/scorer/keys.rs`, `config/src/proxy/keys.rs`).

use manymodels_config::{markdown_table, proxy, scorer};

pub fn render() -> String {
    format!(
        "### Scorer (`mm-scorer`)\n\n{}\n### Proxy (`mm-proxy`)\n\n{}",
        markdown_table(scorer::KEYS, scorer::ENV_PREFIX),
        markdown_table(proxy::KEYS, proxy::ENV_PREFIX),
    )
}
