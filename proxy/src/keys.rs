//! Keys: who may call which route for which model. [`check`] is a pure function of the
//! configured keys, the classified route and the request's `Authorization` header, so
//! every rule is unit-tested without a socket; `service.rs` reads the header, counts the
//! verdict and answers a refusal; [`admit`] then holds an allowed request to its key's
//! limits ([`crate::limits`]). The scorers never see a client's key when a pool key is set
//! (`Pool::authorization_for`).

use manymodels_config::proxy::ApiKey;

use crate::limits::{Limited, Limits, Permit};
use crate::reject::Rejection;
use crate::route::Route;

/// The keys the proxy accepts: `auth.api_keys`, and `auth.admin_keys` for admin routes
/// (when none are set, admin routes take the API keys).
#[derive(Clone, Copy, Debug)]
pub struct Keys<'k> {
    pub api: &'k [ApiKey],
    pub admin: &'k [ApiKey],
}

/// What the key check says of one request.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyCheck<'k> {
    /// The key's model-id prefixes (empty: every model, or no key was needed), or the
    /// refusal: 401 without a valid key, 403 for a scoped key on what it may not reach.
    pub verdict: Result<&'k [String], Rejection>,
    /// What `mm_proxy_requests_by_key_total` counts: (the key's name, or `none`; the
    /// outcome: `allowed`, `out_of_scope` or `unauthorized`). `None` when the route needs
    /// no key or no key is configured for it: nothing is counted then.
    pub counted: Option<(&'k str, &'static str)>,
}

impl KeyCheck<'_> {
    /// For an allowed repository index, the key's prefixes as `x-mm-model-prefixes`
    /// carries them to the scorer, which lists only what they admit (empty: every model);
    /// `None` on every other route and on a refusal.
    pub fn list_scope(&self, route: &Route) -> Option<String> {
        match (&self.verdict, route) {
            (Ok(scope), Route::AnyScorer { lists_models: true }) => Some(scope.join("|")),
            // Capture: the scorer shows only the rules inside the key's prefixes, and
            // checks a change against them too.
            (Ok(scope), Route::Capture(_)) => Some(scope.join("|")),
            _ => None,
        }
    }
}

impl<'k> KeyCheck<'k> {
    /// The name of the key an allowed request was made with; `None` when no key was
    /// needed (or the request was refused).
    pub fn allowed_key(&self) -> Option<&'k str> {
        match (&self.verdict, self.counted) {
            (Ok(_), Some((name, "allowed"))) => Some(name),
            _ => None,
        }
    }

    /// This allowed request refused by its key's limit instead: 429 naming the key and the
    /// limit, counted as `rate_limited` or `inflight_limited` (not `allowed`).
    pub fn limited(self, limit: &Limited) -> KeyCheck<'k> {
        let name = self.allowed_key().unwrap_or("none");
        KeyCheck {
            verdict: Err(Rejection::limited(name, limit)),
            counted: Some(match limit {
                Limited::Rate { .. } => (name, "rate_limited"),
                Limited::InFlight { .. } => (name, "inflight_limited"),
            }),
        }
    }
}

/// Admits a checked request against its key's limits (`limits.*`) at `now`: an allowed
/// request made with a key that has limits takes a token and an in-flight slot (the
/// [`Permit`], held until the request ends) or is refused with 429; every other request
/// (refused already, or no key needed) passes untouched.
pub fn admit<'k>(
    check: KeyCheck<'k>,
    limits: &Limits,
    now: std::time::Instant,
) -> (KeyCheck<'k>, Option<Permit>) {
    let Some(name) = check.allowed_key() else {
        return (check, None);
    };
    match limits.admit(name, now) {
        Ok(permit) => (check, permit),
        Err(limit) => (check.limited(&limit), None),
    }
}

/// Which models a request reaches, for a scoped key's check.
#[derive(Clone, Copy, Debug)]
enum Reach<'a> {
    /// One model: the key's prefixes must admit it.
    Model(&'a str),
    /// Every model (the pool view names every tenant's hottest): unscoped keys only.
    AllModels,
    /// No model in particular (server metadata, the repository index, which the scorer
    /// narrows to the key's prefixes): any valid key.
    NoModel,
}

/// Checks a request's key: `authorization` is its `Authorization` header (`Bearer
/// <key>`). A route that reaches scorers or names the pool's models needs an admin key
/// when it is an admin route and admin keys are set, else an API key; it is open when no
/// such key is set, and so is every other route (health, metrics, the status page, a bad
/// or unknown path). A key scoped to model-id prefixes must admit what the route reaches.
/// Called before a scorer is chosen, so a refused request costs no store look-up anywhere.
/// The prefixes answered are borrowed: nothing is copied on the request path.
pub fn check<'k>(keys: Keys<'k>, route: &Route, authorization: Option<&str>) -> KeyCheck<'k> {
    let (admin, reach) = match route {
        Route::Model { id, action } => (action.admin(), Reach::Model(id)),
        // The repository index: any key, listing only what its prefixes admit.
        Route::AnyScorer { .. } => (false, Reach::NoModel),
        // The many-model route: any key; each record's model is then checked against the
        // key's prefixes on its own (`batch::records`), failing alone when outside them.
        Route::Batch => (false, Reach::NoModel),
        // The pool view names the hottest models of every tenant.
        Route::PoolView => (false, Reach::AllModels),
        // One model's placement names scorers and their addresses: an operator's view,
        // as the explanation it goes with, so an admin call (a key scoped to model-id
        // prefixes sees only its own models').
        Route::PoolModel { id } => (true, Reach::Model(id)),
        // Payload capture is tenant data: an admin call; a rule's prefix must be inside a
        // scoped key's prefixes, and the rules shown are narrowed to them.
        Route::Capture(action) => match action.prefix() {
            Some(prefix) => (true, Reach::Model(prefix)),
            None => (true, Reach::NoModel),
        },
        // The ledger: any key; a scoped key's view holds only its prefixes' models (the
        // scorers filter by the prefixes the proxy sends), and one model's needs the
        // model in scope.
        Route::Ledger => (false, Reach::NoModel),
        Route::LedgerModel { id } => (false, Reach::Model(id)),
        // Shadows are admin state: every shadow is any admin key's view, narrowed to a
        // scoped key's prefixes (by the scorers, and again by the proxy); one model's needs
        // the model in scope. Changing one is a `Route::Model` admin action.
        Route::Shadows => (true, Reach::NoModel),
        Route::ShadowModel { id } => (true, Reach::Model(id)),
        _ => return open(),
    };
    let keys = if admin && !keys.admin.is_empty() {
        keys.admin
    } else {
        keys.api
    };
    if keys.is_empty() {
        return open();
    }
    let Some(key) = authorization
        .and_then(manymodels_contract::bearer)
        .and_then(|given| ApiKey::find(given, keys))
    else {
        return KeyCheck {
            verdict: Err(Rejection::Unauthorized),
            counted: Some(("none", "unauthorized")),
        };
    };
    let allowed = match reach {
        Reach::Model(id) => key.allows(id),
        Reach::AllModels => key.unscoped(),
        Reach::NoModel => true,
    };
    if allowed {
        KeyCheck {
            verdict: Ok(&key.scope),
            counted: Some((&key.name, "allowed")),
        }
    } else {
        KeyCheck {
            verdict: Err(Rejection::OutOfScope(match reach {
                Reach::Model(id) => Some(id.to_string()),
                _ => None,
            })),
            counted: Some((&key.name, "out_of_scope")),
        }
    }
}

/// A request no key is asked of: every model, nothing counted.
fn open<'k>() -> KeyCheck<'k> {
    KeyCheck {
        verdict: Ok(&[]),
        counted: None,
    }
}

#[cfg(test)]
mod tests;
