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

    /// The rule itself is the contract's (`manymodels_contract::valid_model_id`, tested
    /// there); here: a refused id is a 400 whose echo is cut short.
    #[test]
    fn a_refused_id_is_a_bad_request_with_a_short_echo() {
        assert_eq!(ModelId::parse("store-1").unwrap().as_str(), "store-1");
        let long = format!("../{}", "x".repeat(500));
        match ModelId::parse(&long) {
            Err(ScorerError::InvalidModelId(echo)) => assert!(echo.chars().count() <= 65),
            other => panic!("{other:?}"),
        }
    }
}
