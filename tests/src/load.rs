//! An open-loop load over generated models (`manymodels_models::model_id`): request `n`
//! starts at `n × every` whether or not earlier ones have answered, so a slow pool shows
//! as latency and failures rather than as fewer requests. Bounded by a time cap and by
//! [`OpenLoop::stop`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manymodels_models::Mix;
use serde_json::Value;

use crate::reference::{generated_rows, rows_body};

/// What one request of the load got.
#[derive(Clone, Debug)]
pub struct Answer {
    /// When the answer (or the failure) arrived.
    pub at: Instant,
    /// The HTTP status; 0 when no answer came.
    pub status: u16,
    /// `x-mm-cache: hit`.
    pub hit: bool,
    /// The model's index.
    pub model: usize,
    /// `x-mm-scorer`, empty if absent.
    pub scorer: String,
}

/// A running load; its answers so far can be read at any time.
pub struct OpenLoop {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl OpenLoop {
    /// Starts the load: request `n` scores model `pick(n)` with `bodies[pick(n)]` through
    /// `bases[n % bases.len()]`, one request every `every`, for at most `cap`.
    pub fn start(
        client: reqwest::Client,
        bases: Vec<String>,
        bodies: Vec<Value>,
        every: Duration,
        cap: Duration,
        pick: impl Fn(usize) -> usize + Send + 'static,
    ) -> Self {
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (answers, stop) = (answers.clone(), stop.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tasks = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < cap {
                    tokio::time::sleep_until((started + every * n as u32).into()).await;
                    let model = pick(n);
                    let base = bases[n % bases.len()].clone();
                    let (client, answers, body) =
                        (client.clone(), answers.clone(), bodies[model].clone());
                    tasks.push(tokio::spawn(async move {
                        let answer = send(&client, &base, model, &body).await;
                        answers.lock().unwrap().push(answer);
                    }));
                    n += 1;
                }
                for task in tasks {
                    task.await.unwrap();
                }
            })
        };
        Self {
            answers,
            stop,
            task,
        }
    }

    /// The answers so far.
    pub fn snapshot(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Stops sending, waits for the requests in flight and returns every answer.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// Scores generated model `model` with `body` through `base` once: one request of the
/// load, as [`OpenLoop`] records it.
pub async fn send(client: &reqwest::Client, base: &str, model: usize, body: &Value) -> Answer {
    let url = format!(
        "{base}/v2/models/{}/infer",
        manymodels_models::model_id(model)
    );
    let (status, hit, scorer) = match client.post(&url).json(body).send().await {
        Ok(r) => (
            r.status().as_u16(),
            r.headers().get("x-mm-cache").is_some_and(|v| v == "hit"),
            crate::http::header(&r, "x-mm-scorer"),
        ),
        Err(_) => (0, false, String::new()),
    };
    Answer {
        at: Instant::now(),
        status,
        hit,
        model,
        scorer,
    }
}

/// Scores every model once through `base` (its body in `bodies`), expecting 200.
pub async fn warm(client: &reqwest::Client, base: &str, bodies: &[Value]) {
    for (i, body) in bodies.iter().enumerate() {
        let url = format!("{base}/v2/models/{}/infer", manymodels_models::model_id(i));
        let status = client.post(&url).json(body).send().await.unwrap().status();
        assert_eq!(status, 200, "{url}");
    }
}

/// A request body for model `i` of a generated store (`write_store(_, _, mix, seed)`):
/// one generated row of the model's width.
pub fn body(i: usize, mix: Mix, seed: u64) -> Value {
    let features = manymodels_models::spec_for(i, mix, seed).features();
    rows_body(&generated_rows(features, 1, i as u64))
}

/// [`body`] for each of the first `models` models.
pub fn bodies(models: usize, mix: Mix, seed: u64) -> Vec<Value> {
    (0..models).map(|i| body(i, mix, seed)).collect()
}
