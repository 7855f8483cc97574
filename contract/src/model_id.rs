//! Model ids: validated once, at the edge, before they touch a path or a blob name.

use std::fmt;
use std::sync::Arc;

use crate::{truncate_for_message, valid_model_id};

/// A model id that matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` ([`valid_model_id`]).
///
/// The first character cannot be `.` or `-`, and `/` never appears, so an id can never
/// name a parent directory, an absolute path or a nested blob. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(Arc<str>);

/// An id [`ModelId::parse`] refused, cut short for the message that echoes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid model id '{0}': expected 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit"
)]
pub struct InvalidModelId(pub String);

impl ModelId {
    pub fn parse(text: &str) -> Result<Self, InvalidModelId> {
        if valid_model_id(text) {
            Ok(ModelId(Arc::from(text)))
        } else {
            Err(InvalidModelId(truncate_for_message(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

    /// The rule itself is `valid_model_id`'s (tested in the crate root); here: a refused
    /// id's echo is cut short.
    #[test]
    fn a_refused_id_echoes_a_short_prefix() {
        assert_eq!(ModelId::parse("store-1").unwrap().as_str(), "store-1");
        let long = format!("../{}", "x".repeat(500));
        let InvalidModelId(echo) = ModelId::parse(&long).unwrap_err();
        assert!(echo.chars().count() <= 65, "{echo}");
    }
}
