//! The wire contract between `mm-proxy` and `mm-scorer`, written once and used by both, so a
//! change to it is one edit the compiler checks on both sides.
//!
//! - [`header`]: the `x-mm-*` header names.
//! - [`valid_model_id`] and [`parse_version`]: which model ids and version numbers exist;
//!   [`ModelId`], an id checked once.
//!   The proxy rejects what the scorer would refuse, before choosing a scorer.
//! - [`bearer`]: how a key is read from `Authorization`.
//! - [`route`]: the scorer's routes the proxy calls or forwards to, as templates (for the
//!   scorer's router) and builders (for the proxy).
//! - [`batch`]: the many-model route's records, from the client to the proxy and from the
//!   proxy to each model's scorer, and the answers, per record.
//! - [`forecast`]: what a model declares in its ONNX `metadata_props` (its columns' names,
//!   how it forecasts) and the pure date arithmetic of recursive forecasts.
//! - [`cache`]: what a scorer says about its cache ([`CacheSummary`]) and the answer to a
//!   statistics push ([`StatsAnswer`]).
//! - [`stats`]: what a proxy pushes ([`StatsReport`]) and the bounds a scorer holds it to
//!   ([`stats::Bounds`], [`StatsRefusal`]).
//! - [`ledger`]: the per-model ledger a scorer serves and the proxy merges (counts, errors
//!   by kind, a latency sketch, the version mix, for the hottest models and a tail).
//! - The operator views, what the servers answer the operator API with and `mmctl` reads,
//!   each a `Serialize + Deserialize` type whose field names are the public JSON:
//!   [`pool`] (the proxy's pool view and a model's placement), [`versions`] (a model's
//!   version status, refreshes, canaries, digests), [`shadow`] (a model's shadow: its spec,
//!   what was compared, the rule's verdict), [`explain`] (the scorer's explain
//!   view and one model's explanation), [`oip`] (the Open Inference Protocol bodies
//!   `mmctl` reads, and the `{"error": ...}` body of both servers).
//!
//! **Architecture Invariant:** nothing here does I/O; both sides depend on this crate and
//! on nothing of each other.

pub mod batch;
pub mod cache;
pub mod capture;
pub mod explain;
pub mod forecast;
pub mod grpc;
pub mod ledger;
mod model_id;
pub mod oip;
pub mod pool;
pub mod request_id;
pub mod route;
pub mod shadow;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod versions;

pub use cache::{CacheSummary, Eviction, EvictionReason, Lookup, StatsAnswer};
pub use model_id::{InvalidModelId, ModelId};
pub use stats::{StatsRefusal, StatsReport};

/// The `x-mm-*` headers.
pub mod header {
    /// On a scorer's answer: `hit` or `miss` ([`crate::Lookup`]), whether the model was
    /// already in memory. The proxy learns from it which scorer holds which model.
    pub const CACHE: &str = "x-mm-cache";
    /// On a scorer's answer: the scorer's name.
    pub const SCORER: &str = "x-mm-scorer";
    /// On a request to the proxy's scoring route (`POST /`, `POST /score`): the model id.
    pub const MODEL: &str = "x-mm-model";
    /// On a request to the scoring route: an optional version.
    pub const MODEL_VERSION: &str = "x-mm-model-version";
    /// On a request (client → proxy → scorer): the request's deadline in milliseconds from
    /// now ([`crate::parse_timeout_ms`]). The proxy waits for the scorer at most this long
    /// and forwards it less the time already spent; the scorer answers 504 past it.
    pub const TIMEOUT_MS: &str = "x-mm-timeout-ms";
    /// On a repository index request (proxy → scorer): the model-id prefixes the caller's
    /// key is scoped to, in the key's own form ([`crate::model_prefixes`]); the scorer lists
    /// only the models they admit. The proxy sets it for a scoped key and drops any a
    /// client sent, so it can only narrow what a caller sees.
    pub const MODEL_PREFIXES: &str = "x-mm-model-prefixes";
    /// On a scorer's `503` readiness answer: `true` when it is shutting down (draining)
    /// rather than warming. The proxies keep sending it the requests for models it holds
    /// while their successors warm them (the drain hand-off).
    pub const DRAINING: &str = "x-mm-draining";
    /// On every request and answer (client → proxy → scorer, and back): the request's id
    /// ([`crate::request_id`]). Kept when the client sent a valid one, given otherwise.
    pub const REQUEST_ID: &str = "x-request-id";
    /// W3C Trace Context: a request's trace and parent span, accepted by the proxy and the
    /// scorers and propagated from the proxy to the scorer.
    pub const TRACEPARENT: &str = "traceparent";
    /// On a request (client → proxy → scorer): its priority, [`crate::Priority`]'s
    /// `interactive` (the default) or `batch`. A key's own setting on the proxy wins over
    /// the client's header; the scorer lets `batch` requests start cold loads only within
    /// a share of its load slots, behind waiting interactive ones.
    pub const PRIORITY: &str = "x-mm-priority";
}

/// A request's priority (`x-mm-priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Someone is waiting: the default.
    #[default]
    Interactive,
    /// Backfills and scans: may not take more than a share of the load slots, and yields
    /// to interactive requests waiting for one.
    Batch,
}

impl Priority {
    /// The header's value for this priority.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }

    /// `interactive` or `batch`; anything else is `None` (refused with a 400, never
    /// guessed).
    pub fn parse(text: &str) -> Option<Priority> {
        match text {
            "interactive" => Some(Priority::Interactive),
            "batch" => Some(Priority::Batch),
            _ => None,
        }
    }
}

/// Model-id prefixes as a key's scope writes them and `x-mm-model-prefixes` carries them:
/// `acme-|globex-`, each the start of a valid model id (so without a `|`); `None` when one
/// is not, so a malformed scope or header is refused, never widened.
pub fn model_prefixes(text: &str) -> Option<Vec<String>> {
    text.split('|')
        .map(|prefix| valid_model_id(prefix).then(|| prefix.to_string()))
        .collect()
}

/// The longest deadline `x-mm-timeout-ms` may ask for: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// `x-mm-timeout-ms`: a positive integer of milliseconds, at most [`MAX_TIMEOUT_MS`],
/// without sign or leading zero. Anything else is refused (400), never ignored.
pub fn parse_timeout_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.is_empty()
        || bytes.len() > 7
        || bytes[0] == b'0'
        || !bytes.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    text.parse::<u64>().ok().filter(|&ms| ms <= MAX_TIMEOUT_MS)
}

/// Longest model id accepted.
pub const MAX_MODEL_ID_LEN: usize = 128;

/// Whether `text` matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`: the first character cannot
/// be `.` or `-` and `/` never appears, so an id can never name a parent directory, an
/// absolute path or a nested blob.
pub fn valid_model_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_MODEL_ID_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A model version: a positive integer written without a leading zero that fits in a
/// `u64` (`1`, `20`; not `0`, `01`, `+1` or `1e3`). The store's folder names, the REST
/// paths and the `x-mm-model-version` header all follow this one rule.
pub fn parse_version(text: &str) -> Option<u64> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The key in an `Authorization: Bearer <key>` header value, without surrounding white
/// space; `None` for any other scheme or an empty key.
pub fn bearer(authorization: &str) -> Option<&str> {
    let key = authorization.strip_prefix("Bearer ")?.trim();
    (!key.is_empty()).then_some(key)
}

/// Ids and versions are echoed in error messages; keep the echo short.
pub fn truncate_for_message(text: &str) -> String {
    let mut out: String = text.chars().take(64).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_a_positive_bounded_number_of_milliseconds() {
        assert_eq!(parse_timeout_ms("1"), Some(1));
        assert_eq!(parse_timeout_ms("2500"), Some(2500));
        assert_eq!(parse_timeout_ms("3600000"), Some(MAX_TIMEOUT_MS));
        for bad in [
            "", "0", "00", "012", "-5", "+5", "1.5", "3600001", "99999999", " 5", "5s",
        ] {
            assert_eq!(parse_timeout_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn model_prefixes_are_valid_id_starts_or_refused() {
        assert_eq!(
            model_prefixes("acme-|globex-"),
            Some(vec!["acme-".to_string(), "globex-".to_string()])
        );
        assert_eq!(model_prefixes("acme-"), Some(vec!["acme-".to_string()]));
        for bad in [
            "",
            "|",
            "acme-|",
            "acme-||b",
            "../x",
            "a b",
            "acme-,globex-",
        ] {
            assert_eq!(model_prefixes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_that_could_escape_the_store_are_rejected() {
        for bad in [
            "", "..", "../x", "a/b", "/etc", ".hidden", "-flag", "a\\b", "a b", "é", "a%2Fb",
        ] {
            assert!(!valid_model_id(bad), "{bad:?} should be rejected");
        }
        assert!(!valid_model_id(&"a".repeat(MAX_MODEL_ID_LEN + 1)));
        for good in [
            "store-0042",
            "a",
            "A.b_c-d",
            "9",
            &"a".repeat(MAX_MODEL_ID_LEN),
        ] {
            assert!(valid_model_id(good), "{good:?} should be accepted");
        }
    }

    #[test]
    fn only_positive_canonical_integers_are_versions() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("20"), Some(20));
        assert_eq!(parse_version("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "0",
            "01",
            "007",
            "+1",
            "-1",
            "1e3",
            " 1",
            "1 ",
            "x",
            "18446744073709551616",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bearer_key_is_trimmed_and_never_empty() {
        assert_eq!(bearer("Bearer k1"), Some("k1"));
        assert_eq!(bearer("Bearer  k1 "), Some("k1"));
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic k1"), None);
        assert_eq!(bearer("bearer k1"), None);
    }

    #[test]
    fn echoes_are_cut_at_64_characters() {
        assert_eq!(truncate_for_message("abc"), "abc");
        let long = "x".repeat(100);
        assert_eq!(truncate_for_message(&long).chars().count(), 65);
    }
}
