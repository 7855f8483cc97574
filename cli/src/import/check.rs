//! `mmctl import`'s local check: the scorer's own loading and vetting of a new version,
//! run on blocking threads, a bounded number at once (each check loads a model).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use manymodels_config::scorer::{NativeEngine, ScorerConfig};
use manymodels_engine::{Engines, LoadedModel};
use tokio::sync::Semaphore;

use super::target::model_id;

/// What a check learned about a model it accepted.
pub(super) struct Checked {
    pub(super) engine: &'static str,
    pub(super) weight: u64,
}

/// The checks a scorer makes of a new version, run here before publishing.
#[derive(Clone)]
pub(super) struct Checker {
    engines: Engines,
    config: Arc<ScorerConfig>,
    permits: Arc<Semaphore>,
}

impl Checker {
    /// The scorer's engines (ONNX Runtime from `onnxruntime`, else found as the scorer
    /// finds it), running at most `check_jobs` checks at once (default: the machine's cores).
    pub(super) fn new(
        onnxruntime: Option<&Path>,
        check_jobs: Option<usize>,
    ) -> anyhow::Result<Checker> {
        let environment = manymodels_engine::environment(onnxruntime)
            .map_err(|e| anyhow::anyhow!("{e} (or pass --no-check)"))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Checker {
            engines: Engines {
                environment: Some(environment),
                native: NativeEngine::Auto,
            },
            config: Arc::new(ScorerConfig::for_local_store(".")),
            permits: Arc::new(Semaphore::new(check_jobs.unwrap_or(cores))),
        })
    }

    /// The scorer's checks of a new version: it loads (the native engine if it covers the
    /// graph, else an ONNX Runtime session), answers a smoke inference on every output, and
    /// takes the same inputs as the version it would replace (`old`).
    pub(super) async fn check(
        &self,
        id: &str,
        version: u64,
        bytes: Bytes,
        old: Option<(u64, Bytes)>,
    ) -> Result<Checked, String> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let (engines, config, id) = (self.engines, self.config.clone(), model_id(id)?);
        tokio::task::spawn_blocking(move || {
            let load = |version: u64, bytes: &[u8]| -> Result<LoadedModel, String> {
                let estimate = config.cache.weigh(bytes.len() as u64);
                engines.load(id.clone(), version, bytes, estimate)
            };
            let old = match old {
                Some((live, old)) => Some(
                    load(live, &old)
                        .map_err(|e| format!("the live version {live} does not load: {e}"))?,
                ),
                None => None,
            };
            let model = load(version, &bytes)?;
            model.vet(old.as_ref())?;
            let checked = Checked {
                engine: model.engine.as_str(),
                weight: model.weight,
            };
            Ok(checked)
        })
        .await
        .map_err(|e| format!("the check panicked: {e}"))?
    }
}
