//! Many-model request traces: a file format and a seeded generator for the traffic shapes
//! the cache policy is measured on.
//!
//! ## Format
//! Plain text, one request per line: `<seconds> <model id>`, or just `<model id>` (then
//! requests are taken to arrive 1 ms apart). Blank lines and lines starting with `#` are
//! ignored. Model sizes travel in a separate file of `<model id> <bytes>` lines.
//!
//! ## Shapes
//! All shapes draw popularity over a seeded random permutation of the models, so
//! popularity is independent of size; requests arrive at a fixed rate.
//! - `zipf-A`: independent requests, Zipf exponent A.
//! - `drift`: Zipf 1.0 whose ranks drift: every 1,000 requests, 10 models from the top
//!   tenth swap ranks with random others.
//! - `scan`: Zipf 1.0 plus, every 40 s, a batch that touches a fifth of all models once
//!   each (interleaved one-for-one with normal traffic).
//! - `mixed`: `drift` and `scan` at once (the many-models workload of the benchmarks).
//! - `daynight`: two regions of half the models each; for 100 s one region gets 90% of
//!   the traffic (Zipf 1.0 within it), then the other.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    Zipf(f64),
    Drift,
    Scan,
    DayNight,
    Mixed,
}

impl Shape {
    /// The six shapes every benchmark runs.
    pub const ALL: [Shape; 6] = [
        Shape::Zipf(0.8),
        Shape::Zipf(1.0),
        Shape::Zipf(1.2),
        Shape::Drift,
        Shape::Scan,
        Shape::DayNight,
    ];
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Zipf(a) => write!(f, "zipf-{a:.1}"),
            Shape::Drift => f.write_str("drift"),
            Shape::Scan => f.write_str("scan"),
            Shape::DayNight => f.write_str("daynight"),
            Shape::Mixed => f.write_str("mixed"),
        }
    }
}

impl FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drift" => Ok(Shape::Drift),
            "scan" => Ok(Shape::Scan),
            "daynight" => Ok(Shape::DayNight),
            "mixed" => Ok(Shape::Mixed),
            _ => s
                .strip_prefix("zipf-")
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|a| *a > 0.0)
                .map(Shape::Zipf)
                .ok_or_else(|| {
                    format!("unknown shape `{s}` (zipf-<alpha>, drift, scan, mixed, daynight)")
                }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceSpec {
    pub shape: Shape,
    pub models: usize,
    pub requests: usize,
    /// Requests per second.
    pub rate: f64,
    pub seed: u64,
}

/// One request: arrival time (seconds) and model index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub t: f64,
    pub model: u32,
}

/// SplitMix64: small, seedable, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }

    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Samples ranks 0..n with P(rank k) ∝ 1 / (k+1)^alpha.
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, alpha: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Model sizes in bytes, log-normal (median 256 KB, σ = 1.6: 5% below 19 KB, 5% above
/// 3.5 MB), clamped to 1 KB–64 MB. Independent of popularity.
pub fn lognormal_sizes(models: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed ^ 0x51_7E5);
    (0..models)
        .map(|_| {
            let bytes = (256e3f64.ln() + 1.6 * rng.normal()).exp();
            bytes.clamp(1e3, 64e6) as u64
        })
        .collect()
}

/// Charged sizes of the realistic many-model store (`models/make_realistic.py`) as the
/// native engine holds it: 60% linear models (about 1.7 KB), 30% random forests of 50 KB
/// to 3 MB of ONNX held at 0.34x, 10% forests of 5-32 MB held at 0.31x. Seeded; the kinds
/// are spread at random over the ids.
pub fn realistic_sizes(models: usize, seed: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed ^ 0x4EA1);
    (0..models)
        .map(|_| {
            let kind = rng.below(10);
            let u = rng.unit();
            let bytes = match kind {
                0..=5 => 1_200.0 + 1_000.0 * u,
                6..=8 => 0.34 * (50e3f64.ln() + u * (3e6f64.ln() - 50e3f64.ln())).exp(),
                _ => 0.31 * (5e6 + u * 27e6),
            };
            bytes as u64
        })
        .collect()
}

/// Generates the trace `spec` describes.
pub fn generate(spec: &TraceSpec) -> Vec<Request> {
    let mut rng = Rng::new(spec.seed);
    let n = spec.models;
    let mut perm: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut perm);
    let dt = 1.0 / spec.rate;
    let mut out = Vec::with_capacity(spec.requests);
    match spec.shape {
        Shape::Zipf(alpha) => {
            let zipf = Zipf::new(n, alpha);
            for i in 0..spec.requests {
                let model = perm[zipf.sample(&mut rng)];
                out.push(Request {
                    t: i as f64 * dt,
                    model,
                });
            }
        }
        Shape::Drift => {
            let zipf = Zipf::new(n, 1.0);
            for i in 0..spec.requests {
                if i > 0 && i % 1_000 == 0 {
                    for _ in 0..10 {
                        let a = rng.below((n / 10).max(1));
                        let b = rng.below(n);
                        perm.swap(a, b);
                    }
                }
                let model = perm[zipf.sample(&mut rng)];
                out.push(Request {
                    t: i as f64 * dt,
                    model,
                });
            }
        }
        Shape::Scan | Shape::Mixed => {
            let zipf = Zipf::new(n, 1.0);
            let every = (40.0 * spec.rate) as usize;
            let mut scan: Vec<u32> = Vec::new();
            for i in 0..spec.requests {
                if spec.shape == Shape::Mixed && i > 0 && i % 1_000 == 0 {
                    for _ in 0..10 {
                        let a = rng.below((n / 10).max(1));
                        let b = rng.below(n);
                        perm.swap(a, b);
                    }
                }
                if i > 0 && i % every == 0 {
                    scan = (0..n as u32).collect();
                    rng.shuffle(&mut scan);
                    scan.truncate(n / 5);
                }
                let model = if i % 2 == 1 && !scan.is_empty() {
                    scan.pop().expect("not empty")
                } else {
                    perm[zipf.sample(&mut rng)]
                };
                out.push(Request {
                    t: i as f64 * dt,
                    model,
                });
            }
        }
        Shape::DayNight => {
            let half = n / 2;
            let zipf = [Zipf::new(half, 1.0), Zipf::new(n - half, 1.0)];
            let phase = (100.0 * spec.rate) as usize;
            for i in 0..spec.requests {
                let day = (i / phase) % 2;
                let region = if rng.unit() < 0.9 { day } else { 1 - day };
                let rank = zipf[region].sample(&mut rng);
                let model = perm[region * half + rank];
                out.push(Request {
                    t: i as f64 * dt,
                    model,
                });
            }
        }
    }
    out
}

/// Writes `requests` in the trace format, naming models with `name`.
pub fn write(
    out: &mut impl std::io::Write,
    requests: &[Request],
    name: impl Fn(u32) -> String,
) -> std::io::Result<()> {
    writeln!(out, "# manymodels trace: <seconds> <model id>")?;
    for r in requests {
        writeln!(out, "{:.4} {}", r.t, name(r.model))?;
    }
    Ok(())
}

/// A parsed trace: model names interned to indices.
#[derive(Debug, Default)]
pub struct Parsed {
    pub names: Vec<String>,
    pub requests: Vec<Request>,
}

/// Parses the trace format. Errors name the line.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut index: std::collections::HashMap<String, u32> = Default::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (t, id) = match (fields.next(), fields.next(), fields.next()) {
            (Some(id), None, _) => (parsed.requests.len() as f64 * 1e-3, id),
            (Some(t), Some(id), None) => {
                let t: f64 = t
                    .parse()
                    .map_err(|_| format!("line {}: bad time `{t}`", n + 1))?;
                (t, id)
            }
            _ => return Err(format!("line {}: expected `<seconds> <model id>`", n + 1)),
        };
        let next = parsed.names.len() as u32;
        let model = *index.entry(id.to_string()).or_insert_with(|| {
            parsed.names.push(id.to_string());
            next
        });
        parsed.requests.push(Request { t, model });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Shape) -> TraceSpec {
        TraceSpec {
            shape,
            models: 1_000,
            requests: 50_000,
            rate: 1_000.0,
            seed: 7,
        }
    }

    fn distinct(requests: &[Request]) -> usize {
        let mut seen = std::collections::HashSet::new();
        requests.iter().filter(|r| seen.insert(r.model)).count()
    }

    #[test]
    fn generation_is_seeded_and_shapes_differ() {
        for shape in Shape::ALL {
            let a = generate(&spec(shape));
            assert_eq!(a, generate(&spec(shape)), "{shape}");
            assert_eq!(a.len(), 50_000);
            assert!(a.iter().all(|r| (r.model as usize) < 1_000));
        }
        // Higher alpha concentrates traffic on fewer models.
        let flat = distinct(&generate(&spec(Shape::Zipf(0.8))));
        let steep = distinct(&generate(&spec(Shape::Zipf(1.2))));
        assert!(steep < flat, "{steep} vs {flat}");
        // A scan touches a fifth of the catalog within its 40 s batch.
        let scan = generate(&spec(Shape::Scan));
        assert!(distinct(&scan[40_000..]) > distinct(&generate(&spec(Shape::Zipf(1.0)))[40_000..]));
    }

    #[test]
    fn the_file_format_round_trips() {
        let requests = generate(&spec(Shape::Drift));
        let mut text = Vec::new();
        write(&mut text, &requests[..100], |m| format!("gen-{m:05}")).unwrap();
        let parsed = parse(std::str::from_utf8(&text).unwrap()).unwrap();
        assert_eq!(parsed.requests.len(), 100);
        for (a, b) in requests.iter().zip(&parsed.requests) {
            assert_eq!(
                format!("gen-{:05}", a.model),
                parsed.names[b.model as usize]
            );
            assert!((a.t - b.t).abs() < 1e-3);
        }
        let bare = parse("# header\nstore-1\nstore-2\n\nstore-1\n").unwrap();
        assert_eq!(bare.names, ["store-1", "store-2"]);
        assert_eq!(bare.requests[2].model, 0);
        assert!(parse("1.0 a b\n").unwrap_err().contains("line 1"));
        assert!(parse("x store-1\n").unwrap_err().contains("bad time"));
    }

    #[test]
    fn sizes_span_kilobytes_to_tens_of_megabytes() {
        let sizes = lognormal_sizes(10_000, 1);
        let min = *sizes.iter().min().unwrap();
        let max = *sizes.iter().max().unwrap();
        assert!(min < 10_000 && max > 10_000_000, "{min}..{max}");
    }
}
