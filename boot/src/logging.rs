//! Tracing set-up: one subscriber writing to stderr, as text or as JSON lines.

use manymodels_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the process's tracing subscriber: `log.level` as the filter (`info` if it does
/// not parse), lines to stderr as text or JSON per `log.format`. Call it once, at start;
/// a second call panics.
pub fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
