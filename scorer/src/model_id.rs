//! Model ids: validated once, at the edge, before they touch a path or a blob name.

use std::fmt;
use std::sync::Arc;

use crate::error::ScorerError;

/// A model id that matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
///
/// The first character cannot be `.` or `-`, and `/` never appears, so an id can never
/// name a parent directory, an absolute path or a nested blob. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(Arc<str>);

impl ModelId {
    pub fn parse(text: &str) -> Result<Self, ScorerError> {
        if is_valid(text) {
            Ok(ModelId(Arc::from(text)))
        } else {
            Err(ScorerError::InvalidModelId(
                manymodels_contract::truncate_for_message(text),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub use manymodels_contract::valid_model_id as is_valid;

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_store_are_rejected() {
        for bad in [
            "", "..", "../x", "a/b", "/etc", ".hidden", "-flag", "a\\b", "a b", "é", "a%2Fb",
        ] {
            assert!(!is_valid(bad), "{bad:?} should be rejected");
        }
        assert!(!is_valid(&"a".repeat(129)));
    }

    #[test]
    fn ordinary_ids_are_accepted() {
        for good in ["store-0042", "a", "A.b_c-d", "9", &"a".repeat(128)] {
            assert!(is_valid(good), "{good:?} should be accepted");
        }
    }
}
