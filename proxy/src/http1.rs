//! A one-shot HTTP/1.1 client for the proxy's own calls to scorers (statistics pushes,
//! the refresh fan-out after an admin change, warm loads): one request per connection,
//! `Connection: close`, the whole answer read. Requests to scorers go through Pingora;
//! this is only for calls the proxy makes on its own behalf.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `method path` with `body` to `addr`; returns (status, body).
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed response"))?;
    let status = std::str::from_utf8(&response[..split])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// `POST path` to `addr` without a body, with `authorization` as its `Authorization` header
/// when there is one: the warm loads and the refresh fan-out.
pub async fn post(
    addr: &str,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    call(addr, "POST", path, &headers, b"").await
}
