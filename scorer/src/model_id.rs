//! Model ids (`manymodels_contract::ModelId`): validated once, at the edge, before they
//! touch a path or a blob name. A refused id is a 400 (`ScorerError::InvalidModelId`).

pub use manymodels_contract::{InvalidModelId, ModelId};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ScorerError;

    /// A refused id is a bad request whose echo is cut short.
    #[test]
    fn a_refused_id_is_a_bad_request_with_a_short_echo() {
        let long = format!("../{}", "x".repeat(500));
        let error = ScorerError::from(ModelId::parse(&long).unwrap_err());
        assert_eq!(error.status().as_u16(), 400);
        match error {
            ScorerError::InvalidModelId(echo) => assert!(echo.chars().count() <= 65),
            other => panic!("{other:?}"),
        }
    }
}
