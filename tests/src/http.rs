//! HTTP clients: blocking ones that need no runtime (readiness polls, benches: a one-shot
//! request, and [`KeepAlive`], the least client-side overhead per request), and the async
//! helpers tests use with `reqwest`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A one-shot HTTP/1.1 request to a loopback `http://` URL (`Connection: close`, a JSON
/// content type): the status and the body.
pub fn request(method: &str, url: &str, body: &str) -> std::io::Result<(u16, String)> {
    exchange(method, url, body, Duration::from_secs(30))
}

/// POSTs `body` and returns the answer's body; any status but 200 is an error.
pub fn post_ok(url: &str, body: &str) -> std::io::Result<String> {
    let (status, answer) = request("POST", url, body)?;
    if status != 200 {
        return Err(std::io::Error::other(format!(
            "POST {url}: {status} {answer}"
        )));
    }
    Ok(answer)
}

/// A GET with a short timeout, for polling a starting process: `None` until it answers.
pub(crate) fn poll(url: &str) -> Option<(u16, String)> {
    exchange("GET", url, "", Duration::from_secs(2)).ok()
}

fn exchange(
    method: &str,
    url: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let invalid = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {url}"))
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("malformed HTTP response"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// A client on one keep-alive connection with blocking I/O: the least client-side
/// overhead per request, so the latency it sees is the server's plus loopback.
pub struct KeepAlive {
    host: String,
    /// Header lines sent with every request (`Name: value\r\n` each).
    headers: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
    payload: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `host` (`127.0.0.1:PORT`).
    pub fn connect(host: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            host: host.to_string(),
            headers: String::new(),
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            line: String::new(),
            payload: Vec::new(),
        })
    }

    /// Sends `name: value` with every request from now on (e.g. an `authorization` key).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// POSTs `body` to `path`; returns the status and the round-trip time.
    pub fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, Duration)> {
        let started = Instant::now();
        write!(
            self.writer,
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.headers,
            body.len()
        )?;
        let mut length = 0usize;
        let mut status = 0u16;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            if let Some(rest) = self.line.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some(v) = self
                .line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
            {
                length = v.trim().parse().map_err(std::io::Error::other)?;
            } else if self.line == "\r\n" {
                break;
            }
        }
        self.payload.resize(length, 0);
        self.reader.read_exact(&mut self.payload)?;
        Ok((status, started.elapsed()))
    }

    /// The body of the last answer.
    pub fn last_body(&self) -> &[u8] {
        &self.payload
    }
}

/// `requests` round trips on one keep-alive connection; every answer must be 200.
pub fn probe(url: &str, body: &str, requests: usize) -> std::io::Result<Vec<Duration>> {
    probe_with(url, body, requests, &[])
}

/// [`probe`] with `headers` on every request.
pub fn probe_with(
    url: &str,
    body: &str,
    requests: usize,
    headers: &[(&str, &str)],
) -> std::io::Result<Vec<Duration>> {
    let (host, path) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| std::io::Error::other(format!("not an http:// URL with a path: {url}")))?;
    let path = format!("/{path}");
    let mut client = headers
        .iter()
        .fold(KeepAlive::connect(host)?, |client, (name, value)| {
            client.with_header(name, value)
        });
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (status, elapsed) = client.post(&path, body)?;
        if status != 200 {
            return Err(std::io::Error::other(format!(
                "non-200 answer ({status}) from {url}"
            )));
        }
        times.push(elapsed);
    }
    Ok(times)
}

/// POSTs JSON; returns the status, the scorer that answered (`x-mm-scorer`, empty if
/// none) and the JSON body (which must be JSON).
pub async fn post_via(client: &reqwest::Client, url: &str, body: &Value) -> (u16, String, Value) {
    post_bytes(client, url, serde_json::to_vec(body).expect("JSON")).await
}

/// POSTs `body` (not necessarily valid JSON) as `application/json`; returns what
/// [`post_via`] does.
pub async fn post_bytes(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> (u16, String, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let scorer = header(&response, "x-mm-scorer");
    let text = response.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: non-JSON body {text:?}"));
    (status, scorer, value)
}

/// POSTs JSON; returns the status and the JSON body (which must be JSON).
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let (status, _, value) = post_via(client, url, body).await;
    (status, value)
}

/// A response header as text, empty when absent.
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// GETs `url`, expects 200 and returns the JSON body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// One call with an optional bearer key and JSON body: the status and the body as JSON
/// (`null` when it is not JSON).
pub async fn call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = client.request(method.parse().expect("an HTTP method"), url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
