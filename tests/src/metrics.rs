//! Prometheus text exposition, parsed into samples.

/// Parsed Prometheus samples.
#[derive(Debug, Default)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sample named exactly `name` (with labels, if any, as printed, e.g.
    /// `mm_scorer_cache_evictions_total{reason="unload"}`), or 0.
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    }
}

/// The Prometheus samples of a process serving `/metrics` at `url`.
pub async fn scrape(url: &str) -> Metrics {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Metrics::parse(&text)
}

/// The `# TYPE` families that `text` lacks among `families`.
pub fn missing_families<'a>(text: &str, families: &[&'a str]) -> Vec<&'a str> {
    families
        .iter()
        .copied()
        .filter(|family| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} ")))
        })
        .collect()
}
