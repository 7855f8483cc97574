//! The admin calls the proxy answers itself (canaries), and the fan-out after an admin call
//! changed a model's live version.

use manymodels_config::proxy::ApiKey;
use manymodels_contract::route as scorer_route;
use pingora::proxy::Session;
use serde_json::json;

use crate::reject::{Rejection, Reply};
use crate::route::CanaryAction;
use crate::service::Proxy;

/// The largest canary body read.
const CANARY_BODY_LIMIT: usize = 4096;

/// Which models a request reaches, for a scoped key's check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reach<'a> {
    /// One model: the key's prefixes must admit it.
    Model(&'a str),
    /// Every model (the repository index lists the whole store): unscoped keys only.
    AllModels,
    /// No model at all (server metadata): any valid key.
    NoModel,
}

impl Proxy {
    /// Checks the request's key: an admin key for admin routes when admin keys are set,
    /// else an API key; open when no key is set. A key scoped to model-id prefixes must
    /// admit what the request reaches (403 otherwise). Called before a scorer is chosen,
    /// so a refused request costs no store look-up anywhere. Counted by key name.
    pub(crate) fn authorize(
        &self,
        session: &Session,
        admin: bool,
        reach: Reach<'_>,
    ) -> Result<(), Rejection> {
        let keys = if admin && !self.config.admin_keys.is_empty() {
            &self.config.admin_keys
        } else {
            &self.config.api_keys
        };
        if keys.is_empty() {
            return Ok(());
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
            Ok(())
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

    /// The canary admin routes.
    pub(crate) async fn canary(
        &self,
        session: &mut Session,
        id: &str,
        action: CanaryAction,
    ) -> pingora::Result<Reply> {
        let no_canary = || Reply::from(Rejection::NoCanary(id.to_string()));
        Ok(match action {
            CanaryAction::Show => match self.canaries.get(id) {
                Some(canary) => Reply::json(200, &json!({ "model": id, "canary": canary })),
                None => no_canary(),
            },
            CanaryAction::Drop => match self.canaries.remove(id) {
                Some(canary) => Reply::json(200, &json!({ "model": id, "dropped": canary })),
                None => no_canary(),
            },
            CanaryAction::Set => {
                let mut body = Vec::new();
                while let Some(chunk) = session.read_request_body().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > CANARY_BODY_LIMIT {
                        return Ok(Rejection::CanaryTooLarge.into());
                    }
                }
                self.set_canary(id, &body)
            }
            CanaryAction::Promote => match self.canaries.get(id) {
                Some(canary) => self.promote(session, id, canary).await,
                None => no_canary(),
            },
        })
    }

    fn set_canary(&self, id: &str, body: &[u8]) -> Reply {
        #[derive(serde::Deserialize)]
        struct Set {
            version: u64,
            percent: f64,
        }
        match serde_json::from_slice::<Set>(body) {
            Ok(set) if set.version > 0 && (0.0..=100.0).contains(&set.percent) => {
                let canary = self.canaries.set(id, set.version, set.percent);
                tracing::info!(
                    model = id,
                    version = set.version,
                    percent = set.percent,
                    "canary set"
                );
                Reply::json(200, &json!({ "model": id, "canary": canary }))
            }
            Ok(_) => Rejection::Invalid("version must be positive and percent within 0-100".into())
                .into(),
            Err(e) => {
                Rejection::Invalid(format!("expected {{\"version\": N, \"percent\": P}}: {e}"))
                    .into()
            }
        }
    }

    /// Pins the canary's version on the model's first-ranked scorer (which writes the
    /// store), drops the canary and tells every other scorer to look at the store now.
    async fn promote(&self, session: &Session, id: &str, canary: crate::canary::Canary) -> Reply {
        let Some(owner) = self.pool.candidates(id, 1, &[]).into_iter().next() else {
            return Rejection::NoScorer.into();
        };
        let authorization = self.scorer_authorization(authorization(session));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &authorization {
            headers.push(("Authorization", a.as_str()));
        }
        let body = json!({ "version": canary.version }).to_string();
        let answer = tokio::time::timeout(
            self.config.read_timeout,
            crate::http1::call(
                &owner.addr.to_string(),
                "POST",
                &scorer_route::ADMIN_PIN.path(id),
                &headers,
                body.as_bytes(),
            ),
        )
        .await;
        match answer {
            Ok(Ok((200, answer))) => {
                self.canaries.remove(id);
                self.refresh_everywhere(id, Some(&owner.name), authorization);
                tracing::info!(model = id, version = canary.version, "canary promoted");
                let pinned: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                Reply::json(
                    200,
                    &json!({ "model": id, "promoted": canary, "pinned": pinned }),
                )
            }
            Ok(Ok((status, answer))) => Reply::json(
                status,
                &serde_json::from_slice(&answer)
                    .unwrap_or_else(|_| json!({ "error": "promotion failed" })),
            ),
            _ => Rejection::PromotionUnanswered.into(),
        }
    }

    /// After an admin call changed `model`'s live version in the store, asks every other
    /// healthy scorer to look now (in the background) rather than at its next check.
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
            .filter(|b| self.pool.lb.backends().ready(b))
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
