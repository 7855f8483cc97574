//! The engine's errors: a malformed file (`Invalid`), a model the engine does not take
//! (`CompileError`), and inputs an operator cannot take (`RunError`). The lowest layer of
//! the crate: every other module may use it, and it uses none.

/// The file is not a well-formed ONNX model (or not one any engine could run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}

/// Why a model is not compiled natively.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Valid as far as the engine can tell, but uses something it does not cover: serve it
    /// with ONNX Runtime.
    #[error("not covered by the native engine: {0}")]
    Unsupported(String),
    /// Malformed: no engine should try it.
    #[error("invalid model: {0}")]
    Invalid(String),
}

impl From<Invalid> for CompileError {
    fn from(e: Invalid) -> Self {
        CompileError::Invalid(e.0)
    }
}

/// A run failed: the inputs do not fit the model (shapes the declared signature allowed
/// but an operator cannot take).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);
