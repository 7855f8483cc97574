//! The pool's HTTP API as mmctl uses it: JSON in and out, the bearer key on every call,
//! answers read as the contract's types (`manymodels_contract`: what the servers build is
//! what is read here), and an error that carries the status and the server's own
//! `{"error": ...}` message.

use bytes::Bytes;
use manymodels_contract::oip::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Settings;

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Status { status: StatusCode, message: String },
    /// No answer (connection refused, timeout).
    #[error("{0}")]
    Transport(String),
    /// An answer that is not the JSON expected of it (not JSON, or not of the contract's
    /// shape: a server of another version than this mmctl).
    #[error("{0}")]
    Shape(String),
}

impl CallError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport(_) | CallError::Shape(_) => None,
        }
    }

    /// Worth another try: no answer, or the server said so (429, 502-504).
    pub fn transient(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => matches!(status.as_u16(), 429 | 502..=504),
            CallError::Shape(_) => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// A successful answer: the header mmctl reads, and the body, read with [`Answer::read`].
#[derive(Debug)]
pub struct Answer {
    pub scorer: Option<String>,
    body: Bytes,
}

impl Answer {
    /// The body as `T`: a contract type, or `serde_json::Value` for a body of the
    /// client's own protocol (an inference answer). An empty body reads as `null`.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        let body: &[u8] = if self.body.is_empty() {
            b"null"
        } else {
            &self.body
        };
        serde_json::from_slice(body).map_err(|e| {
            let name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
            CallError::Shape(format!(
                "the answer does not read as {name} ({e}); is the pool of another version than mmctl?"
            ))
        })
    }
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

    /// `GET path`, the answer read as `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.get(path).await?.read()
    }

    pub async fn delete(&self, path: &str) -> Result<Answer, CallError> {
        self.call(Method::DELETE, path, None, None).await
    }

    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Answer, CallError> {
        self.call(
            Method::POST,
            path,
            Some(json_body(body)),
            Some("application/json"),
        )
        .await
    }

    pub async fn put_json<B: Serialize>(&self, path: &str, body: &B) -> Result<Answer, CallError> {
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
        if !status.is_success() {
            return Err(CallError::Status {
                status,
                message: error_message(&bytes),
            });
        }
        Ok(Answer {
            scorer,
            body: bytes,
        })
    }
}

/// What an error answer says: its `{"error": ...}` message, else its text.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => body.error,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

fn json_body<B: Serialize>(value: &B) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a request body serialises"))
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

#[cfg(test)]
mod tests {
    use manymodels_contract::versions::Refresh;
    use serde_json::Value;

    use super::*;

    fn answer(body: &'static str) -> Answer {
        Answer {
            scorer: None,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn an_error_says_the_servers_message_or_its_text() {
        assert_eq!(
            error_message(br#"{"error": "no such model"}"#),
            "no such model"
        );
        assert_eq!(error_message(b" Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(br#"{"other": 1}"#), r#"{"other": 1}"#);
    }

    /// An answer of another shape than the contract's is an error that names the type
    /// and the field, never a blank column.
    #[test]
    fn answers_read_as_contract_types_or_say_why_not() {
        let refresh =
            r#"{"model": "m", "live": 2, "previous": 1, "swapped": true, "refused": null}"#;
        let read: Refresh = answer(refresh).read().unwrap();
        assert_eq!((read.live, read.previous), (2, Some(1)));
        let renamed = r#"{"model": "m", "live_version": 2, "swapped": true}"#;
        let error = answer(renamed).read::<Refresh>().unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("Refresh") && message.contains("`live`"),
            "{message}"
        );
        assert!(!error.transient() && error.status().is_none());
        assert_eq!(answer("").read::<Value>().unwrap(), Value::Null);
        assert!(answer("<html>").read::<Value>().is_err());
    }
}
