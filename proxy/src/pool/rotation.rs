//! Which pool key each scorer is sent, so a key rotation has no window of 401s.
//!
//! A rotation is one `helm upgrade` that makes the new key `auth.pool_key` and the old one
//! `auth.pool_key_previous` on both workloads, then a later one that drops the previous.
//! Between the first upgrade's start and end, old and new pods of both coexist: an old
//! scorer takes only the old key, a new one takes both, an old proxy sends only the old.
//! So a new proxy learns per scorer which key it takes: the health check, after a passed
//! readiness check and before the scorer (re-)enters rotation, asks a cheap authenticated
//! route (`GET /v2`) with the current key, and on a 401 with the previous one; the scorer
//! is then sent the key it took. A 401 on a forwarded request (a scorer restarted between
//! two checks with other keys) switches that scorer to the other key at once
//! ([`PoolKeys::refused`]), and the next check confirms. Without a previous key nothing is
//! asked and every scorer gets the one key.
//!
//! A probe that learns nothing (no answer in time, or a 401 to both keys) changes nothing:
//! a scorer whose key was learnt before keeps it, and one whose key was never learnt does
//! not pass its check, so it stays out of rotation until a probe learns its key. Sending it
//! the current key on a guess would answer 401 to every request on Pingora's path (gRPC,
//! admin calls, uploads, unhedged inference) if it is an old scorer that takes only the old.
//!
//! The state is two sets of scorer names (those on the previous key, and those whose key a
//! probe learnt), each at most the pool's size.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use manymodels_config::Secret;
use manymodels_contract::route;

/// The pool keys (as `Authorization` values) and which scorers take only the previous.
#[derive(Debug, Default)]
pub struct PoolKeys {
    /// `Bearer <auth.pool_key>`; `None` without a pool key.
    current: Option<Arc<str>>,
    /// `Bearer <auth.pool_key_previous>`; `None` when no rotation is under way.
    previous: Option<Arc<str>>,
    /// Scorers (names) that refused the current key and took the previous one.
    on_previous: RwLock<HashSet<String>>,
    /// Scorers (names) whose key a probe learnt (either key): only these pass a health
    /// check while rotating.
    known: RwLock<HashSet<String>>,
}

/// What a probe learnt of a scorer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Takes {
    Current,
    Previous,
    /// Neither (401 to both), or no answer: nothing is changed.
    Unknown,
}

impl PoolKeys {
    /// The keys of `auth.pool_key` and `auth.pool_key_previous` (empty: not set).
    pub fn new(current: &Secret, previous: &Secret) -> Self {
        let bearer = |key: &Secret| {
            (!key.is_empty()).then(|| Arc::from(format!("Bearer {}", key.expose()).as_str()))
        };
        PoolKeys {
            current: bearer(current),
            previous: bearer(current).and(bearer(previous)),
            on_previous: RwLock::new(HashSet::new()),
            known: RwLock::new(HashSet::new()),
        }
    }

    /// Whether a rotation is under way (a previous key is set): only then is a scorer
    /// asked which key it takes.
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// The `Authorization` to send `scorer`: the previous key if it was learnt to take only
    /// that one, else the current key; `None` without a pool key.
    pub fn authorization_for(&self, scorer: &str) -> Option<Arc<str>> {
        if let Some(previous) = &self.previous
            && self
                .on_previous
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(scorer)
        {
            return Some(previous.clone());
        }
        self.current.clone()
    }

    /// `scorer` answered 401 to `sent` (the `Authorization` this proxy sent it): if that is
    /// still what it is sent, switch it to the other key (when there is one). Many requests
    /// refused at once switch it once: a 401 to a key no longer sent changes nothing.
    pub fn refused(&self, scorer: &str, sent: Option<&str>) {
        let Some(previous) = &self.previous else {
            return;
        };
        let now = self.authorization_for(scorer);
        if now.as_deref() != sent {
            return;
        }
        let to_previous = sent != Some(&**previous);
        tracing::warn!(
            scorer,
            to = if to_previous { "previous" } else { "current" },
            "a scorer refused this proxy's pool key (401): switching it to the other key"
        );
        self.set(scorer, to_previous);
    }

    /// Records what a probe learnt of `scorer`, and says whether its key is known: learnt by
    /// this probe or an earlier one. `Takes::Unknown` changes nothing, so a scorer learnt
    /// before keeps its key, and one never learnt stays unknown (its health check fails).
    pub(crate) fn learnt(&self, scorer: &str, takes: Takes) -> bool {
        match takes {
            Takes::Current => self.set(scorer, false),
            Takes::Previous => self.set(scorer, true),
            Takes::Unknown => {
                return self
                    .known
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(scorer);
            }
        }
        let known = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(scorer);
        if !known {
            self.known
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(scorer.to_string());
        }
        true
    }

    fn set(&self, scorer: &str, previous: bool) {
        let on = self
            .on_previous
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(scorer);
        if on == previous {
            return;
        }
        let mut set = self.on_previous.write().unwrap_or_else(|p| p.into_inner());
        if previous {
            tracing::info!(scorer, "the scorer takes only the previous pool key");
            set.insert(scorer.to_string());
        } else {
            tracing::info!(scorer, "the scorer takes the current pool key");
            set.remove(scorer);
        }
    }

    /// Asks the scorer `scorer` at `addr` which key it takes (`GET /v2`, authenticated,
    /// cheap): the current key first, then, on a 401, the previous. Each call waits at
    /// most `timeout`. Only while rotating (else `Takes::Current` without a call).
    pub(crate) async fn probe(&self, addr: &str, timeout: Duration) -> Takes {
        let (Some(current), Some(previous)) = (&self.current, &self.previous) else {
            return Takes::Current;
        };
        match ask(addr, current, timeout).await {
            Some(401) => {}
            Some(_) => return Takes::Current,
            None => return Takes::Unknown,
        }
        match ask(addr, previous, timeout).await {
            Some(401) => {
                tracing::warn!(
                    scorer = addr,
                    "the scorer refuses both the current and the previous pool key"
                );
                Takes::Unknown
            }
            Some(_) => Takes::Previous,
            None => Takes::Unknown,
        }
    }
}

/// `GET /v2` on `addr` with `authorization`: its status, or `None` without an answer
/// within `timeout`.
async fn ask(addr: &str, authorization: &str, timeout: Duration) -> Option<u16> {
    let headers = [("Authorization", authorization)];
    let call = crate::http1::call(addr, "GET", route::SERVER_METADATA, &headers, b"");
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok((status, _))) => Some(status),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str, previous: &str) -> PoolKeys {
        PoolKeys::new(&Secret::new(current), &Secret::new(previous))
    }

    #[test]
    fn without_a_rotation_every_scorer_gets_the_one_key() {
        let one = keys("k-new", "");
        assert!(!one.rotating());
        assert_eq!(
            one.authorization_for("s:1").as_deref(),
            Some("Bearer k-new")
        );
        one.refused("s:1", Some("Bearer k-new"));
        assert_eq!(
            one.authorization_for("s:1").as_deref(),
            Some("Bearer k-new"),
            "nothing to switch to"
        );
        let none = keys("", "");
        assert_eq!(none.authorization_for("s:1"), None);
        assert!(
            !keys("", "k-old").rotating(),
            "a previous key alone is none"
        );
    }

    #[test]
    fn a_scorer_learnt_on_the_previous_key_is_sent_it_and_a_401_switches_once() {
        let keys = keys("k-new", "k-old");
        assert!(keys.rotating());
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-new")
        );
        keys.learnt("a:1", Takes::Previous);
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-old")
        );
        assert_eq!(
            keys.authorization_for("b:1").as_deref(),
            Some("Bearer k-new")
        );
        keys.learnt("a:1", Takes::Unknown);
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-old")
        );
        // The scorer restarted with only the new key: the first 401 to the old switches it,
        // and further 401s to the old key (requests already sent) do not switch it back.
        keys.refused("a:1", Some("Bearer k-old"));
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-new")
        );
        keys.refused("a:1", Some("Bearer k-old"));
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-new")
        );
        // And a 401 to the new key moves it back to the old.
        keys.refused("a:1", Some("Bearer k-new"));
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-old")
        );
        keys.learnt("a:1", Takes::Current);
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-new")
        );
    }

    #[test]
    fn an_unknown_probe_keeps_a_learnt_key_and_leaves_a_scorer_never_learnt_unknown() {
        let keys = keys("k-new", "k-old");
        assert!(
            !keys.learnt("a:1", Takes::Unknown),
            "never learnt: its check must not pass"
        );
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-new")
        );
        assert!(keys.learnt("a:1", Takes::Previous));
        assert!(keys.learnt("a:1", Takes::Unknown), "learnt before: kept");
        assert_eq!(
            keys.authorization_for("a:1").as_deref(),
            Some("Bearer k-old")
        );
        assert!(keys.learnt("b:1", Takes::Current));
        assert!(keys.learnt("b:1", Takes::Unknown));
        assert_eq!(
            keys.authorization_for("b:1").as_deref(),
            Some("Bearer k-new")
        );
        assert!(
            !keys.learnt("c:1", Takes::Unknown),
            "one scorer learnt is not all"
        );
    }

    /// A scorer on loopback that answers `GET /v2` 200 to the keys in `takes`, 401 to others.
    async fn scorer(takes: &'static [&'static str]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 2048];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let text = String::from_utf8_lossy(&request[..n]).to_string();
                    let ok = takes
                        .iter()
                        .any(|k| text.contains(&format!("Authorization: Bearer {k}\r\n")));
                    let status = if ok { "200 OK" } else { "401 Unauthorized" };
                    let _ = stream
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_probe_finds_the_key_each_scorer_takes() {
        let keys = keys("k-new", "k-old");
        let timeout = Duration::from_secs(2);
        let old = scorer(&["k-old"]).await;
        let both = scorer(&["k-new", "k-old"]).await;
        let new = scorer(&["k-new"]).await;
        let neither = scorer(&["k-other"]).await;
        assert_eq!(keys.probe(&old, timeout).await, Takes::Previous);
        assert_eq!(keys.probe(&both, timeout).await, Takes::Current);
        assert_eq!(keys.probe(&new, timeout).await, Takes::Current);
        assert_eq!(keys.probe(&neither, timeout).await, Takes::Unknown);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        assert_eq!(keys.probe(&closed, timeout).await, Takes::Unknown);
    }
}
