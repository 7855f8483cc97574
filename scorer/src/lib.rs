//! `mm-scorer`: serves many ONNX models over the Open Inference Protocol (KServe v2 REST)
//! from a byte-bounded hot cache.
//!
//! A request names a model; the scorer answers from the loaded session if the model is hot,
//! otherwise it reads the model from the store (a local directory or Azure Blob), creates
//! an ONNX Runtime session once however many requests wait for it, and keeps it while the
//! cache's byte budget allows. Loads run on their own low-priority threads; a model call
//! runs inline on the async worker only when it was measured to be short and its engine
//! is free, on a blocking thread otherwise (`engine::LoadedModel::try_quick`).
//!
//! The scorer deliberately does not route, replicate or balance: it serves whatever model
//! it is asked for. Choosing which scorer holds which model is the proxy's job.

pub mod azureml;
pub mod cache;
pub mod capture;
pub mod error;
pub mod grpc;
pub mod http;
pub mod images;
pub mod infer;
pub mod ledger;
pub mod metrics;
pub mod model_id;
pub mod oip;
pub mod records;
pub mod request;

/// The engine and store crates, under the names the scorer's modules use.
pub use manymodels_boot::tune_allocator;
pub use manymodels_engine::{self as engine, tensor};
pub use manymodels_store as store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderValue;
use axum::serve::ListenerExt;
use manymodels_config::scorer::ScorerConfig;

pub use error::ScorerError;
pub use http::app;

/// Why the scorer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    OnnxRuntime(String),
    #[error("model store: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("images.dir {dir}: {source}")]
    Images {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One scorer's shared state.
pub struct Scorer {
    pub config: ScorerConfig,
    pub cache: cache::ModelCache,
    pub metrics: Arc<metrics::Metrics>,
    /// Payload capture: the rules in force and the queue to the store (`capture`).
    pub capture: Arc<capture::Capture>,
    /// Per-model requests, errors and latency, in fixed memory.
    pub ledger: ledger::Ledgers,
    /// Set when shutdown starts: readiness fails (saying so) and the proxies stop routing
    /// here but for the models this scorer still holds (the drain hand-off).
    pub draining: AtomicBool,
    /// Set once the first warm-up of the hot share finished (or was not wanted).
    pub warmed: AtomicBool,
    started: std::time::Instant,
    name_header: HeaderValue,
}

impl Scorer {
    /// Opens ONNX Runtime and the store. Loads no model.
    pub fn new(config: ScorerConfig) -> Result<Arc<Self>, StartError> {
        let environment = engine::environment(config.onnxruntime_library.as_deref())
            .map_err(StartError::OnnxRuntime)?;
        engine::self_test(environment).map_err(StartError::OnnxRuntime)?;
        let engines = engine::Engines {
            environment: Some(environment),
            native: config.native_engine,
        };
        let store = store::open(&config.store, config.store_timeout)?;
        let metrics = Arc::new(metrics::Metrics::new(config.cache.budget.bytes()));
        let capture = Arc::new(capture::Capture::new(
            config.capture.clone(),
            store.clone(),
            &config.display_name(),
            metrics.clone(),
        ));
        let mut cache = cache::ModelCache::new(
            config.cache.clone(),
            config.policy,
            config.warmup,
            config.versions,
            store,
            engines,
            metrics.clone(),
        )
        .with_shadows(config.shadow);
        if let Some(dir) = &config.images.dir {
            let images = images::Images::open(dir, config.images.max_bytes).map_err(|source| {
                StartError::Images {
                    dir: dir.clone(),
                    source,
                }
            })?;
            cache = cache.with_images(Arc::new(images));
        }
        let name_header = HeaderValue::from_str(&config.display_name())
            .unwrap_or_else(|_| HeaderValue::from_static("scorer"));
        Ok(Arc::new(Scorer {
            cache,
            metrics,
            capture,
            ledger: ledger::Ledgers::new(&config.ledger),
            draining: AtomicBool::new(false),
            warmed: AtomicBool::new(config.warmup.ready_timeout.is_zero()),
            started: std::time::Instant::now(),
            name_header,
            config,
        }))
    }
}

impl Scorer {
    /// Shutting down: readiness fails (with `header::DRAINING`) while the scorer keeps
    /// serving for `shutdown.drain`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ready for traffic: not shutting down, and the hot share is warm (or
    /// `warmup.ready_timeout` has passed since start).
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && (self.warmed.load(Ordering::Relaxed)
                || self.started.elapsed() >= self.config.warmup.ready_timeout)
    }

    /// Takes a proxy's statistics push and warms the hot share in the background (not
    /// while draining: a scorer on its way out would only spend memory and CPU on models
    /// its successors are taking over). A push that breaks `stats.*` is refused (and
    /// counted) before it touches the view.
    pub fn take_stats(
        self: &Arc<Self>,
        report: manymodels_policy::StatsReport,
    ) -> Result<cache::CacheSummary, manymodels_policy::StatsRefusal> {
        let limits = &self.config.stats;
        let summary = report
            .check(&limits.bounds)
            .and_then(|()| self.cache.apply_stats(report, limits.max_sources.get()))
            .inspect_err(|refusal| {
                self.metrics
                    .stats_refused
                    .with_label_values(&[refusal.reason()])
                    .inc();
                tracing::warn!(reason = refusal.reason(), error = %refusal, "statistics push refused");
            })?;
        if self.is_draining() {
            return Ok(summary);
        }
        let scorer = self.clone();
        tokio::spawn(async move {
            // A push while a warm-up runs does not make the scorer ready: the running
            // warm-up does when it ends.
            let Some(loaded) = scorer.cache.warm_up().await else {
                return;
            };
            if loaded > 0 {
                tracing::info!(loaded, "warmed models of the hot share");
            }
            scorer.warmed.store(true, Ordering::Relaxed);
        });
        Ok(summary)
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting, lets in-flight requests finish
/// for up to `shutdown.grace` and returns.
pub async fn run(config: ScorerConfig) -> Result<(), StartError> {
    let scorer = Scorer::new(config)?;
    let addr = scorer.config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    let router = app(scorer.clone());
    tracing::info!(
        listen = %local,
        store = %scorer.cache.store().describe(),
        budget = %scorer.config.cache.budget,
        "mm-scorer ready"
    );
    if scorer.config.pool_key.is_empty() {
        tracing::warn!(
            "OPEN SCORER: auth.pool_key is not set, so anyone who can reach {local} can score, \
             push statistics that steer eviction and warm-up, and load or unload models; \
             set auth.pool_key (MM_SCORER_AUTH_POOL_KEY) here and on the proxies"
        );
    }
    // Notice new live versions of the models in memory, and the capture rules.
    scorer.capture.start();
    {
        let scorer = scorer.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(scorer.config.versions.check_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let _ = scorer.capture.reload().await;
                scorer.cache.check_versions().await;
            }
        });
    }
    // The ledger's hottest models are re-decided once a second.
    {
        let scorer = scorer.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                scorer.ledger.tick();
            }
        });
    }
    let grace = scorer.config.shutdown_grace;
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let scorer = scorer.clone();
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            // Report not ready first and keep serving for the drain, so proxies take this
            // scorer out of rotation before it stops accepting connections.
            scorer.draining.store(true, Ordering::Relaxed);
            let drain = scorer.config.shutdown_drain;
            tracing::info!(
                ?drain,
                ?grace,
                "shutting down: draining, then finishing in-flight requests"
            );
            tokio::time::sleep(drain).await;
            stopping.notify_one();
        }
    };
    // Responses go out in one write; no Nagle delay waiting for an ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
    tokio::select! {
        result = server => result.map_err(StartError::Serve)?,
        () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("grace period over; exiting with requests still in flight");
        }
    }
    // What was captured and not yet written goes to the store now (one try per batch).
    scorer.capture.flush(scorer.config.store_timeout * 2).await;
    tracing::info!("mm-scorer stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
