//! Azurite, Microsoft's Azure Storage emulator, as a test fixture: started on a free
//! loopback port with its data in a temp dir, and a minimal Shared Key client to create a
//! container and upload blobs (`object_store` cannot create containers).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ports::{free_port, listens};
use crate::store::{TempDir, root};

/// The emulator's well-known development account and key (public, documented by Azure).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";

pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:PORT` (object_store's `AZURITE_BLOB_STORAGE_URL`).
    pub url: String,
    _data: TempDir,
    client: reqwest::Client,
}

fn launcher() -> PathBuf {
    std::env::var_os("MM_AZURITE_BLOB")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/azurite/node_modules/.bin/azurite-blob"))
}

impl Azurite {
    /// Starts the emulator and waits until it answers HTTP as Azurite. Its port is this
    /// process's own ([`free_port`]); should something outside the harness hold it anyway,
    /// Azurite exits and is started again on another port.
    pub async fn start() -> Self {
        let bin = launcher();
        assert!(
            bin.exists(),
            "{} is missing: run the tests with `cargo xtask test`, which installs Azurite",
            bin.display()
        );
        // Azurite (Node) closes idle keep-alive connections after 5 s; a pooled connection
        // reused just as it closes would fail the request. Drop them sooner.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        for _attempt in 0..3 {
            let data = TempDir::new("azurite");
            let port = free_port();
            let child = Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(data.path())
                .args(["--disableTelemetry", "--skipApiVersionCheck", "--silent"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting azurite-blob");
            let mut azurite = Azurite {
                child,
                url: format!("http://127.0.0.1:{port}"),
                _data: data,
                client: client.clone(),
            };
            if azurite.answers().await {
                return azurite;
            }
        }
        panic!("azurite did not start on any of three ports");
    }

    /// Sends `signal` (`STOP`, `CONT`) to the emulator: `STOP` freezes it with its port
    /// open, so connections are accepted and never answered (a hung store).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} azurite");
    }

    /// Stops the emulator (SIGTERM, so it saves its data; connections to its port are
    /// refused) until [`Azurite::restart`].
    pub fn stop(&mut self) {
        self.signal("TERM");
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the emulator again on the same port and data, and waits until it answers.
    pub async fn restart(&mut self) {
        let port = self.url.rsplit(':').next().unwrap().to_string();
        self.child = Command::new(launcher())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port])
            .arg("--location")
            .arg(self._data.path())
            .args(["--disableTelemetry", "--skipApiVersionCheck", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restarting azurite-blob");
        assert!(self.answers().await, "azurite did not come back on {port}");
    }

    /// Waits up to 30 s for an HTTP answer from this Azurite itself (its `Server` header,
    /// and its process listening on the port: another Azurite answers alike); false if the
    /// process exited or another server holds the port.
    async fn answers(&mut self) -> bool {
        let started = Instant::now();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        while started.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Ok(response) = self.client.get(&self.url).send().await {
                let azurite = response
                    .headers()
                    .get("server")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Azurite"));
                if !azurite {
                    return false;
                }
                // Another process's Azurite: this one fails to bind and exits (above).
                if listens(self.child.id(), port) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Vec<u8> {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut ms_headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        ms_headers.push(("x-ms-date".into(), date));
        ms_headers.push(("x-ms-version".into(), API_VERSION.into()));
        ms_headers.sort();
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let mut canonical_query: Vec<_> = query.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        canonical_query.sort();
        let resource = format!("/{ACCOUNT}/{ACCOUNT}/{path}{}", canonical_query.concat());
        let string_to_sign = format!(
            "{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n{}{resource}",
            ms_headers
                .iter()
                .map(|(k, v)| format!("{k}:{v}\n"))
                .collect::<String>()
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&STANDARD.decode(KEY).unwrap()).unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let mut request = self
            .client
            .request(method.clone(), format!("{}/{ACCOUNT}/{path}", self.url))
            .query(query)
            .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"))
            .body(body);
        for (k, v) in &ms_headers {
            request = request.header(k, v);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("azurite request {method} {path}: {e:?}"));
        let status = response.status();
        if !status.is_success() {
            panic!(
                "{method} {path}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        response.bytes().await.unwrap().to_vec()
    }

    pub async fn create_container(&self, container: &str) {
        self.send(
            reqwest::Method::PUT,
            container,
            &[("restype", "container")],
            Vec::new(),
            &[],
        )
        .await;
    }

    pub async fn put_blob(&self, container: &str, name: &str, bytes: Vec<u8>) {
        self.send(
            reqwest::Method::PUT,
            &format!("{container}/{name}"),
            &[],
            bytes,
            &[("x-ms-blob-type", "BlockBlob")],
        )
        .await;
    }

    /// The bytes of blob `name` of `container`.
    pub async fn get_blob(&self, container: &str, name: &str) -> Vec<u8> {
        self.send(
            reqwest::Method::GET,
            &format!("{container}/{name}"),
            &[],
            Vec::new(),
            &[],
        )
        .await
    }

    /// The names of the blobs of `container` starting with `prefix`, sorted (one listing
    /// page: up to 5,000).
    pub async fn list_blobs(&self, container: &str, prefix: &str) -> Vec<String> {
        let body = self
            .send(
                reqwest::Method::GET,
                container,
                &[
                    ("comp", "list"),
                    ("prefix", prefix),
                    ("restype", "container"),
                ],
                Vec::new(),
                &[],
            )
            .await;
        let text = String::from_utf8(body).expect("a UTF-8 listing");
        let mut names: Vec<String> = text
            .split("<Name>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Name>").map(|(name, _)| name.to_string()))
            .collect();
        names.sort();
        names
    }

    /// Uploads a local store tree as `<prefix><model>/<version>/model.onnx` blobs.
    pub async fn upload_store(&self, container: &str, prefix: &str, store: &std::path::Path) {
        for model in std::fs::read_dir(store).unwrap() {
            let model = model.unwrap();
            if !model.file_type().unwrap().is_dir() {
                continue;
            }
            for version in std::fs::read_dir(model.path()).unwrap() {
                let version = version.unwrap();
                let file = version.path().join("model.onnx");
                if file.exists() {
                    let name = format!(
                        "{prefix}{}/{}/model.onnx",
                        model.file_name().to_str().unwrap(),
                        version.file_name().to_str().unwrap()
                    );
                    self.put_blob(container, &name, std::fs::read(file).unwrap())
                        .await;
                }
            }
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
