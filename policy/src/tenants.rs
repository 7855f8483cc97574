//! Tenant shares of a cache: who owns which models, and what part of the budget each owner
//! is guaranteed (its *floor*) and may hold at most (its *cap*).
//!
//! A tenant is a named set of model-id prefixes; a model belongs to the tenant with the
//! longest prefix that starts its id, and to the *default* tenant (no floor, no cap) when
//! none does. Floors and caps are fractions of the cache's budget in bytes. The rules they
//! impose on eviction live in [`crate::policy::Policy`]; this module only says who is who
//! and checks that the shares make sense (floors sum to at most 1, each cap at least its
//! floor).
//!
//! This module parses nothing: the scorer's configuration reads `tenants.shares` and hands
//! the result here.

/// The index of the default tenant in a [`Tenants`] of `n` shares is `n`.
pub const DEFAULT_TENANT: &str = "default";

/// One tenant's share: its name, the model-id prefixes that make it up, and its floor and
/// cap as fractions of the budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub name: String,
    pub prefixes: Vec<String>,
    /// Guaranteed part of the budget: another tenant's model never evicts this tenant's
    /// models below it. 0 is no floor.
    pub floor: f64,
    /// Most of the budget this tenant's resident models may hold. 1 is no cap.
    pub cap: f64,
}

/// The shares of one cache, validated, with the default tenant after them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tenants {
    shares: Vec<Share>,
}

impl Tenants {
    /// No tenants: every model is the default tenant's, and eviction is the plain policy.
    pub fn none() -> Self {
        Tenants::default()
    }

    /// Checks `shares`: names non-empty, unique and not `default`; each has a prefix; floors
    /// and caps in [0, 1] with cap ≥ floor; floors sum to at most 1. The error says which
    /// share is wrong and why.
    pub fn new(shares: Vec<Share>) -> Result<Self, String> {
        let mut floors = 0.0;
        for (i, share) in shares.iter().enumerate() {
            let name = &share.name;
            if name.is_empty() || name == DEFAULT_TENANT {
                return Err(format!(
                    "tenant {} needs a name other than `{DEFAULT_TENANT}`",
                    i + 1
                ));
            }
            if shares[..i].iter().any(|s| s.name == *name) {
                return Err(format!("tenant `{name}` is named twice"));
            }
            if share.prefixes.is_empty() || share.prefixes.iter().any(String::is_empty) {
                return Err(format!("tenant `{name}` needs non-empty model-id prefixes"));
            }
            if !(share.floor.is_finite() && (0.0..=1.0).contains(&share.floor)) {
                return Err(format!(
                    "tenant `{name}`: floor {} is not between 0 and 1",
                    share.floor
                ));
            }
            if !(share.cap.is_finite() && share.cap > 0.0 && share.cap <= 1.0) {
                return Err(format!(
                    "tenant `{name}`: cap {} is not above 0 and at most 1",
                    share.cap
                ));
            }
            if share.cap < share.floor {
                return Err(format!(
                    "tenant `{name}`: cap {} is below its floor {}",
                    share.cap, share.floor
                ));
            }
            floors += share.floor;
        }
        // A little slack for decimal fractions that add up to exactly 1 on paper.
        if floors > 1.0 + 1e-9 {
            return Err(format!("the floors sum to {floors}, more than 1"));
        }
        Ok(Tenants { shares })
    }

    /// The configured shares (the default tenant is not among them).
    pub fn shares(&self) -> &[Share] {
        &self.shares
    }

    /// How many tenants there are, the default one included.
    pub fn count(&self) -> usize {
        self.shares.len() + 1
    }

    /// Whether any share was configured.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// The tenant of model `id`: the share with the longest prefix of it (the first listed
    /// on a tie), else the default tenant (index `shares().len()`).
    pub fn of(&self, id: &str) -> usize {
        let mut best = (self.shares.len(), 0);
        for (i, share) in self.shares.iter().enumerate() {
            for prefix in &share.prefixes {
                if id.starts_with(prefix.as_str()) && prefix.len() > best.1 {
                    best = (i, prefix.len());
                }
            }
        }
        best.0
    }

    /// Tenant `t`'s name (`default` for the default tenant).
    pub fn name(&self, t: usize) -> &str {
        self.shares
            .get(t)
            .map_or(DEFAULT_TENANT, |s| s.name.as_str())
    }

    /// Tenant `t`'s floor and cap in bytes of a budget of `capacity` bytes (the default
    /// tenant: no floor, the whole budget).
    pub fn bounds(&self, t: usize, capacity: u64) -> (u64, u64) {
        match self.shares.get(t) {
            Some(share) => (
                (share.floor * capacity as f64) as u64,
                (share.cap * capacity as f64) as u64,
            ),
            None => (0, capacity),
        }
    }
}

/// One tenant's place in a cache now, for the explain view.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantUsage {
    pub name: String,
    /// Bytes of this tenant's resident models.
    pub bytes: u64,
    pub models: usize,
    pub floor_bytes: u64,
    pub cap_bytes: u64,
    /// The configured fractions (the default tenant: 0 and 1).
    pub floor: f64,
    pub cap: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(name: &str, prefixes: &[&str], floor: f64, cap: f64) -> Share {
        Share {
            name: name.to_string(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            floor,
            cap,
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_the_rest_is_the_default_tenant() {
        let t = Tenants::new(vec![
            share("b", &["b-"], 0.5, 1.0),
            share("a", &["a-", "b-scan-"], 0.0, 0.5),
        ])
        .unwrap();
        assert_eq!(t.of("b-7"), 0);
        assert_eq!(t.of("b-scan-7"), 1, "a longer prefix beats a shorter one");
        assert_eq!(t.of("a-1"), 1);
        assert_eq!(t.of("c-1"), 2);
        assert_eq!(t.name(2), DEFAULT_TENANT);
        assert_eq!(t.count(), 3);
        assert_eq!(t.bounds(0, 1000), (500, 1000));
        assert_eq!(t.bounds(1, 1000), (0, 500));
        assert_eq!(t.bounds(2, 1000), (0, 1000));
    }

    #[test]
    fn bad_shares_are_refused_with_the_reason() {
        let err = |shares| Tenants::new(shares).unwrap_err();
        assert!(
            err(vec![
                share("a", &["a"], 0.6, 1.0),
                share("b", &["b"], 0.5, 1.0)
            ])
            .contains("sum")
        );
        assert!(err(vec![share("a", &["a"], 0.5, 0.4)]).contains("below its floor"));
        assert!(err(vec![share("a", &["a"], 0.0, 0.0)]).contains("cap"));
        assert!(err(vec![share("a", &["a"], -0.1, 1.0)]).contains("floor"));
        assert!(err(vec![share("a", &[], 0.0, 1.0)]).contains("prefixes"));
        assert!(err(vec![share("default", &["x"], 0.0, 1.0)]).contains("name"));
        assert!(
            err(vec![
                share("a", &["x"], 0.0, 1.0),
                share("a", &["y"], 0.0, 1.0)
            ])
            .contains("twice")
        );
        // Floors of exactly 1 in all are fine.
        Tenants::new(vec![
            share("a", &["a"], 0.7, 1.0),
            share("b", &["b"], 0.3, 0.3),
        ])
        .unwrap();
    }
}
