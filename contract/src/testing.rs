//! What the views' tests share.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Serializes `value`, reads it back, checks it is the same value, and answers its JSON
/// for the test to check the wire shape.
pub(crate) fn round_trips<T>(value: &T) -> serde_json::Value
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = serde_json::to_string(value).expect("a view serializes");
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(&back, value, "{text}");
    serde_json::from_str(&text).expect("valid JSON")
}
