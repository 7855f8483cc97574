//! Request ids: every answer of the proxy and of a scorer carries one in `x-request-id`
//! (`crate::header::REQUEST_ID`), and logs, captured payloads and spans name it.
//!
//! A client may send its own: it is kept when it is [`valid`] (1 to [`MAX_LEN`] characters
//! from `[A-Za-z0-9._:-]`, so it is safe in a header, a log line, a JSON string and a
//! file name), replaced otherwise. The proxy gives the scorer the id it answers with, so
//! one id names the request everywhere.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest request id kept.
pub const MAX_LEN: usize = 128;

/// Whether `text` is a request id to keep as it is.
pub fn valid(text: &[u8]) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LEN
        && text
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new request id: 32 hex digits, a random per-process half and a counter, so ids are
/// unique across processes (with overwhelming probability) and cost no system call.
pub fn generate() -> String {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{process:016x}{n:016x}")
}

/// The request id to use for a request that came with `sent` (a header's bytes): `sent`
/// when it is [`valid`], a new one otherwise.
pub fn keep_or_generate(sent: Option<&[u8]>) -> String {
    match sent {
        Some(bytes) if valid(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_valid() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(valid(a.as_bytes()) && valid(b.as_bytes()));
        assert_eq!(a[..16], b[..16], "one process, one random half");
    }

    #[test]
    fn a_sent_id_is_kept_only_when_safe() {
        assert_eq!(keep_or_generate(Some(b"req-42:a.b_c")), "req-42:a.b_c");
        for bad in [
            &b""[..],
            b"a b",
            b"a\nb",
            b"\"x\"",
            b"a/b",
            &[b'a'; MAX_LEN + 1],
        ] {
            let id = keep_or_generate(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert!(valid(id.as_bytes()));
        }
        assert!(valid(&[b'a'; MAX_LEN]));
        assert!(valid(keep_or_generate(None).as_bytes()));
    }
}
