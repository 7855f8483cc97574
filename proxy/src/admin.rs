//! Keys (who may call what), and the fan-out after an admin call changed what a model's
//! requests get (its live version or its canary, in the store). Every admin call itself is
//! forwarded to a scorer, which writes the store: the proxy holds no model state.

use manymodels_config::proxy::ApiKey;
use manymodels_contract::route as scorer_route;
use pingora::proxy::Session;

use crate::reject::Rejection;
use crate::service::Proxy;

/// Which models a request reaches, for a scoped key's check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reach<'a> {
    /// One model: the key's prefixes must admit it.
    Model(&'a str),
    /// Every model (the pool view names every tenant's hottest): unscoped keys only.
    AllModels,
    /// No model in particular (server metadata, the repository index, which the scorer
    /// narrows to the key's prefixes): any valid key.
    NoModel,
}

impl Proxy {
    /// Checks the request's key: an admin key for admin routes when admin keys are set,
    /// else an API key; open when no key is set. A key scoped to model-id prefixes must
    /// admit what the request reaches (403 otherwise). Called before a scorer is chosen,
    /// so a refused request costs no store look-up anywhere. Counted by key name. Answers
    /// the key's model-id prefixes (empty: every model, or no key set), borrowed: nothing
    /// is copied on the request path.
    pub(crate) fn authorize(
        &self,
        session: &Session,
        admin: bool,
        reach: Reach<'_>,
    ) -> Result<&[String], Rejection> {
        let keys = if admin && !self.config.admin_keys.is_empty() {
            &self.config.admin_keys
        } else {
            &self.config.api_keys
        };
        if keys.is_empty() {
            return Ok(&[]);
        }
        let count = |key: &str, outcome: &str| {
            self.metrics
                .requests_by_key
                .with_label_values(&[key, outcome])
                .inc();
        };
        let Some(key) = authorization(session)
            .and_then(manymodels_contract::bearer)
            .and_then(|given| ApiKey::find(given, keys))
        else {
            count("none", "unauthorized");
            return Err(Rejection::Unauthorized);
        };
        let allowed = match reach {
            Reach::Model(id) => key.allows(id),
            Reach::AllModels => key.unscoped(),
            Reach::NoModel => true,
        };
        if allowed {
            count(&key.name, "allowed");
            Ok(&key.scope)
        } else {
            count(&key.name, "out_of_scope");
            Err(Rejection::OutOfScope(match reach {
                Reach::Model(id) => Some(id.to_string()),
                _ => None,
            }))
        }
    }

    /// The `Authorization` value for a call to a scorer: the pool key when one is set
    /// (the client's key was checked here and stays here), else the client's header.
    pub(crate) fn scorer_authorization(&self, client: Option<&str>) -> Option<String> {
        pool_authorization(&self.config.pool_key).or_else(|| client.map(str::to_string))
    }

    /// After an admin call changed `model`'s live version or canary in the store, asks
    /// every other healthy or draining scorer (a draining one still serves the models it
    /// holds) to look now (in the background) rather than at its next check, so every
    /// scorer, and so every proxy, answers alike within a round trip.
    pub(crate) fn refresh_everywhere(
        &self,
        model: &str,
        done_by: Option<&str>,
        authorization: Option<String>,
    ) {
        let targets: Vec<String> = self
            .pool
            .lb
            .backends()
            .get_backend()
            .iter()
            .filter(|b| {
                self.pool.lb.backends().ready(b)
                    || self.pool.draining.contains(crate::ranking::name_ref(b))
            })
            .filter(|b| done_by != Some(crate::ranking::name_ref(b)))
            .map(|b| b.addr.to_string())
            .collect();
        let path = scorer_route::ADMIN_REFRESH.path(model);
        let timeout = self.config.read_timeout;
        tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            let calls = targets.iter().map(|addr| {
                tokio::time::timeout(
                    timeout,
                    crate::http1::call(addr, "POST", &path, &headers, b""),
                )
            });
            for (addr, result) in targets.iter().zip(futures::future::join_all(calls).await) {
                if !matches!(result, Ok(Ok((200 | 404, _)))) {
                    tracing::warn!(scorer = %addr, path, "refresh after an admin change failed; the scorer's own check will catch up");
                }
            }
        });
    }
}

/// The request's `Authorization` header, as text.
pub(crate) fn authorization(session: &Session) -> Option<&str> {
    session
        .get_header("authorization")
        .and_then(|v| v.to_str().ok())
}

/// `Bearer <pool key>`, or `None` when no pool key is set.
pub(crate) fn pool_authorization(pool_key: &manymodels_config::Secret) -> Option<String> {
    (!pool_key.is_empty()).then(|| format!("Bearer {}", pool_key.expose()))
}
