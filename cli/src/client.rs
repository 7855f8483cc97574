//! The pool's HTTP API as mmctl uses it: JSON in and out, the bearer key on every call,
//! and an error that carries the status and the server's own `{"error": ...}` message.

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::Settings;

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Status { status: StatusCode, message: String },
    /// No answer (connection refused, timeout, a body that is not JSON).
    #[error("{0}")]
    Transport(String),
}

impl CallError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport(_) => None,
        }
    }

    /// Worth another try: no answer, or the server said so (429, 502-504).
    pub fn transient(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => matches!(status.as_u16(), 429 | 502..=504),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// A successful answer: the header mmctl reads, and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub scorer: Option<String>,
    pub body: Value,
}

impl Client {
    pub fn new(settings: &Settings) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(std::time::Duration::from_secs(5)))
            .pool_idle_timeout(std::time::Duration::from_secs(20))
            .build()?;
        Ok(Client {
            http,
            base: settings.proxy.clone(),
            key: settings.key.as_ref().map(|k| k.expose().to_string()),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Answer, CallError> {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn delete(&self, path: &str) -> Result<Answer, CallError> {
        self.call(Method::DELETE, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, CallError> {
        self.call(
            Method::POST,
            path,
            Some(json_body(body)),
            Some("application/json"),
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Result<Answer, CallError> {
        self.call(
            Method::PUT,
            path,
            Some(json_body(body)),
            Some("application/json"),
        )
        .await
    }

    /// A model upload (`application/octet-stream`).
    pub async fn put_bytes(&self, path: &str, body: Bytes) -> Result<Answer, CallError> {
        self.call(
            Method::PUT,
            path,
            Some(body),
            Some("application/octet-stream"),
        )
        .await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
    ) -> Result<Answer, CallError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transport(describe(&e, &self.base)))?;
        let status = response.status();
        let scorer = response
            .headers()
            .get(manymodels_contract::header::SCORER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Transport(describe(&e, &self.base)))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                Err(_) if !status.is_success() => {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                }
                Err(e) => return Err(CallError::Transport(format!("answer is not JSON: {e}"))),
            }
        };
        if !status.is_success() {
            let message = match &body {
                Value::Object(map) => map
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| body.to_string()),
                Value::String(s) => s.trim().to_string(),
                _ => String::new(),
            };
            return Err(CallError::Status { status, message });
        }
        Ok(Answer { scorer, body })
    }
}

fn json_body(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a Value serialises"))
}

fn describe(error: &reqwest::Error, base: &str) -> String {
    if error.is_connect() {
        format!("cannot reach the proxy at {base} (is the pool up? set --proxy or MMCTL_PROXY)")
    } else if error.is_timeout() {
        format!("no answer from {base} within the timeout (--timeout)")
    } else {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        text
    }
}
