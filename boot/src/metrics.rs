//! A Prometheus registry that registers a metric as it creates it, and renders the text
//! exposition for `/metrics`.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// One binary's metrics. Each constructor creates the metric, registers it and returns the
/// handle to count with. Names and labels are constants of the code, so an invalid or
/// repeated one is a bug: the constructors panic on it (at start, in every test).
#[derive(Clone, Default)]
pub struct Registry {
    inner: prometheus::Registry,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help))
    }

    /// A counter family with the given label names.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels))
    }

    /// A gauge family with the given label names.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    /// A histogram with the given bucket upper bounds (see [`exponential_buckets`]).
    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        ))
    }

    /// The Prometheus text exposition of every registered metric, sorted by name.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    fn register<M: Collector + Clone + 'static>(&self, metric: prometheus::Result<M>) -> M {
        let metric = metric.expect("valid metric");
        self.inner
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }
}

/// `count` bucket bounds from `start`, each `factor` times the one before. Panics on
/// arguments prometheus refuses (a constant of the code, like a metric name).
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).expect("valid buckets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_render_with_their_help_and_labels() {
        let registry = Registry::new();
        registry.counter("t_total", "Things.").inc();
        registry
            .counter_vec("t_by_kind_total", "Things by kind.", &["kind"])
            .with_label_values(&["a"])
            .inc_by(2);
        registry.gauge("t_level", "Level.").set(3);
        registry
            .histogram("t_seconds", "Time.", exponential_buckets(0.001, 2.0, 3))
            .observe(0.0015);
        let text = registry.render();
        for line in [
            "# HELP t_total Things.",
            "t_total 1",
            "t_by_kind_total{kind=\"a\"} 2",
            "t_level 3",
            "t_seconds_bucket{le=\"0.002\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    #[should_panic(expected = "unique metric")]
    fn a_name_registered_twice_is_a_bug() {
        let registry = Registry::new();
        registry.counter("t_total", "Things.");
        registry.counter("t_total", "Things.");
    }
}
