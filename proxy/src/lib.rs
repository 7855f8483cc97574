//! `mm-proxy`: one endpoint in front of a pool of scorers, built on Pingora.
//!
//! Each request names a model; the proxy ranks the live scorers for that model by
//! rendezvous hashing and sends the request to the scorer most likely holding it hot: the
//! first-ranked one, or another of the top k that already answered for the model. Requests
//! for a cold model all go to the same scorer, whose single-flight load then serves them
//! all. A scorer that cannot be reached, or dies before answering, is ejected for a while
//! and the request is retried once on the next candidate.
//!
//! The proxy never loads or runs a model, and keeps no state that must survive it: the
//! ranking is a pure function of (model id, pool), and what it learns about hot models is
//! relearnt from the scorers' answers.

pub mod admin;
pub mod batch;
pub mod choice;
pub mod exchange;
pub mod grpc_route;
pub mod hedge;
pub mod http1;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod pool;
pub mod ranking;
pub mod reject;
pub mod route;
pub mod service;
pub mod shadow;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use manymodels_config::proxy::ProxyConfig;
use pingora::apps::HttpServerOptions;
use pingora::proxy::http_proxy_service;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;

use crate::service::Proxy;

/// Builds the Pingora server and serves until SIGTERM (graceful: stop accepting, let
/// in-flight requests finish within `shutdown.grace`, exit 0) or SIGINT (at once).
pub fn run(config: ProxyConfig) -> ! {
    let port = config.listen.port();
    let server_conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/mm-proxy-{port}.pid"),
        upgrade_sock: format!("/tmp/mm-proxy-{port}-upgrade.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);

    let (pool_service, pool) = pool::build(&config);
    let pool_handle = server.add_service(pool_service);
    let pool = Arc::new(pool);
    let listen = config.listen.to_string();
    let metrics = Arc::new(metrics::Metrics::new());
    let stats = Arc::new(stats::Statistics::new(
        config.stats_half_life_requests,
        config.stats_top_models,
    ));
    if let Some(interval) = config.stats_push_interval {
        let pusher = background_service(
            "statistics push",
            stats::Pusher {
                pool: pool.clone(),
                metrics: metrics.clone(),
                stats: stats.clone(),
                interval,
                replication: config.replication_threshold,
                timeout: config.connect_timeout + Duration::from_secs(2),
            },
        );
        let pusher_handle = server.add_service(pusher);
        pusher_handle.add_dependency(&pool_handle);
    }
    let judged: Arc<std::sync::Mutex<shadow::Judged>> = Default::default();
    if let Some(interval) = config.shadow_judge_interval {
        let judge = background_service(
            "shadow judge",
            shadow::Judge {
                pool: pool.clone(),
                metrics: metrics.clone(),
                interval,
                timeout: config.read_timeout,
                judged: judged.clone(),
            },
        );
        let judge_handle = server.add_service(judge);
        judge_handle.add_dependency(&pool_handle);
    }
    let proxy = Proxy::new(config, pool, metrics, stats, judged);
    let mut service = http_proxy_service(&server.configuration, proxy);
    // One port for HTTP/1.1 and HTTP/2 without TLS (gRPC): Pingora looks for the HTTP/2
    // preface on each new connection.
    if let Some(app) = service.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    service.add_tcp(&listen);
    let proxy_handle = server.add_service(service);
    // The selector is empty until the first discovery: start serving after it.
    proxy_handle.add_dependency(&pool_handle);
    tracing::info!(%listen, "mm-proxy starting");
    server.run(pingora::server::RunArgs::default());
    // The spans of the last requests leave before the process does.
    manymodels_boot::telemetry::shutdown();
    #[expect(clippy::exit, reason = "Pingora's `run_forever` ends the same way")]
    std::process::exit(0)
}
