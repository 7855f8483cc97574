//! The model-id rule, shared by the scorer and the proxy so they cannot disagree.

/// Longest model id accepted.
pub const MAX_MODEL_ID_LEN: usize = 128;

/// Whether `text` matches `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`: the first character cannot
/// be `.` or `-` and `/` never appears, so an id can never name a parent directory, an
/// absolute path or a nested blob.
pub fn valid_model_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_MODEL_ID_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
