//! The many-model route: one request carrying records for many models.
//!
//! A client sends [`BATCH`] to the proxy: `{"records": [...]}`, each record naming its
//! model (`"model"`, or key fields the route's id template turns into an id), and its
//! features (`"features": [..]` with optional `"columns"`, or named numeric fields), or a
//! forecast (`"forecast_horizon"`, `"data": {"dates", "values"}`, optional `"date_freq"`).
//! The proxy groups the records by model and version, chooses each group's scorer, and
//! sends each scorer its groups, several to a request, as a [`GroupsRequest`] on
//! [`route::RECORD_GROUPS`](crate::route::RECORD_GROUPS); the scorer answers a
//! [`GroupsAnswer`]: per group, one [`RecordResult`] per record in order, or the group's
//! own failure. One model's records may also be sent alone ([`RecordsRequest`] on
//! [`route::RECORDS`](crate::route::RECORDS), answered by a [`RecordsAnswer`]): operators
//! and the forecast tests call it. The proxy answers the client a [`BatchAnswer`]: one
//! [`BatchResult`] per record, in the request's order, each a result or its own error.
//!
//! The client's record is read by the proxy field by field, in the order sent (named
//! features keep their order); these types are the fixed parts of the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The proxy's many-model route.
pub const BATCH: &str = "/v2/mm/batch";

/// The fields of a client record with a meaning of their own; every other field is a key
/// field (named by the id template) or a named feature (a number).
pub const RESERVED_FIELDS: [&str; 8] = [
    "model",
    "version",
    "features",
    "columns",
    "forecast_horizon",
    "date_freq",
    "data",
    "contributions",
];

/// Proxy → scorer: the records of one group (one model, one version or the live one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordsRequest {
    pub records: Vec<ScorerRecord>,
}

/// One record as the scorer reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScorerRecord {
    /// The feature values, one row of the model's input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<f64>,
    /// The names of `features`, when the client named them: the scorer puts each value
    /// where the model's declared columns say (refusing a missing or unknown name); a
    /// model declaring no columns takes the values in the order sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// A recursive multi-step forecast of the model's own output from a history; then
    /// `features` are the model's non-lag, non-calendar inputs, held over the horizon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastAsk>,
    /// Also answer each feature's contribution to each raw score (`contributions`,
    /// `expected_value` and `raw_output` beside the outputs); not for forecasts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub contributions: bool,
}

/// A forecast asked of a model that declares how it forecasts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastAsk {
    /// Steps after the last date of the history.
    pub horizon: u32,
    /// The series' frequency (`D`, `W`, `W-THU`, `MS`, `M`, ...); the model's declared one
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<String>,
    /// The history: dates (`YYYY-MM-DD`), ascending and one period apart, and the
    /// observed values, as many.
    pub dates: Vec<String>,
    pub values: Vec<f64>,
}

/// Proxy → scorer: the groups the proxy chose this scorer for, several models in one
/// request ([`route::RECORD_GROUPS`](crate::route::RECORD_GROUPS)), so a many-model call
/// costs a few requests per scorer rather than one per model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupsRequest {
    pub groups: Vec<Group>,
}

/// One model's records in a [`GroupsRequest`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub model: String,
    /// The version asked for; absent: the live one (or the canary's arm, chosen once for
    /// the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub records: Vec<ScorerRecord>,
}

/// Scorer → proxy: one answer per group of the [`GroupsRequest`], in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupsAnswer {
    pub groups: Vec<GroupAnswer>,
}

/// One group's answer: its records' results, or why the whole group failed (the status its
/// own request would have had: an unknown model's 404, a model that takes no records' 400).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupAnswer {
    Answered {
        model_version: String,
        /// `hit` or `miss` ([`crate::Lookup`]): whether the model was already in memory.
        cache: String,
        results: Vec<RecordResult>,
        /// How many of `results` failed (`RecordResult::Failed`), so a reader that passes
        /// the results on unparsed still counts them.
        failed: usize,
    },
    Failed {
        error: String,
        status: u16,
    },
}

/// Scorer → proxy: one result per record of the [`RecordsRequest`], in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordsAnswer {
    pub model_name: String,
    pub model_version: String,
    pub results: Vec<RecordResult>,
}

/// One record's result: its outputs, its forecast, or why it failed (the record alone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordResult {
    /// For each model output, by name, the record's row of it (one value for a
    /// regressor's `variable`, a class label, a row of probabilities).
    Scored { outputs: BTreeMap<String, Values> },
    /// The forecast: the dates after the history and the value predicted for each.
    Forecast { forecast: Forecast },
    /// The record failed: the status its own request would have had, and why.
    Failed { error: String, status: u16 },
}

impl RecordResult {
    pub fn failed(status: u16, error: impl Into<String>) -> Self {
        RecordResult::Failed {
            error: error.into(),
            status,
        }
    }
}

/// One row of one output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Values {
    /// Integer outputs (class labels, `INT64`/`INT32`).
    Ints(Vec<i64>),
    /// `FP32` outputs, written as the shortest text that reads back as the same `f32`.
    Floats(Vec<f32>),
    /// `FP64` outputs (only read when a value does not fit an `f32`'s text).
    Doubles(Vec<f64>),
    /// `BOOL` outputs.
    Bools(Vec<bool>),
    /// String labels (`BYTES`).
    Strings(Vec<String>),
}

/// A forecast's dates and values, as many as the horizon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub dates: Vec<String>,
    /// Each step's prediction (the model's `FP32` output, fed back as the next step's lag).
    pub values: Vec<f32>,
}

/// Proxy → client: one result per record, in the request's order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
    /// Distinct models the records named.
    pub models: usize,
    /// Records that failed.
    pub failed: usize,
}

/// One record's answer: which model (and version) answered it, and its result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The model id the record named (absent when it named none the proxy could read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version that answered (absent for a record that failed before a scorer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(flatten)]
    pub result: RecordResult,
}

/// The model-id template of a batch route: `{field}` placeholders filled from a record's
/// key fields (`{store}_{brand}_{model_type}`); `{{` and `}}` are literal braces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl IdTemplate {
    /// Parses a template; it must name at least one field, and each field name is
    /// non-empty and made of letters, digits and `_`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text_part = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text_part.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text_part.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some(c) => {
                                return Err(format!(
                                    "id template '{text}': '{c}' in a field name (letters, digits and _)"
                                ));
                            }
                            None => return Err(format!("id template '{text}': unclosed '{{'")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("id template '{text}': an empty field name"));
                    }
                    if RESERVED_FIELDS.contains(&name.as_str()) {
                        return Err(format!(
                            "id template '{text}': '{name}' is a reserved record field"
                        ));
                    }
                    if !text_part.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text_part)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err(format!("id template '{text}': a lone '}}'")),
                c => text_part.push(c),
            }
        }
        if !text_part.is_empty() {
            parts.push(Part::Text(text_part));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!("id template '{text}' names no field"));
        }
        Ok(IdTemplate { parts })
    }

    /// The fields the template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Whether `name` is one of the template's fields.
    pub fn reads(&self, name: &str) -> bool {
        self.fields().any(|f| f == name)
    }

    /// The id for a record, `value(field)` giving each key field's text (`None`: the
    /// record lacks it, named in the error). The result is not checked as an id here.
    pub fn fill<'a>(&self, value: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
        let mut id = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => id.push_str(text),
                Part::Field(name) => match value(name) {
                    Some(v) => id.push_str(v),
                    None => {
                        return Err(format!(
                            "the record has no '{name}' (the id template needs it)"
                        ));
                    }
                },
            }
        }
        Ok(id)
    }
}

impl std::fmt::Display for IdTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(text) => write!(f, "{}", text.replace('{', "{{").replace('}', "}}"))?,
                Part::Field(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_from_key_fields() {
        let t = IdTemplate::parse("{store}_{brand}_{model_type}").unwrap();
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            ["store", "brand", "model_type"]
        );
        let fields = [
            ("store", "Store1000"),
            ("brand", "dominicks"),
            ("model_type", "lr"),
        ];
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        assert_eq!(t.fill(get).unwrap(), "Store1000_dominicks_lr");
        let err = t
            .fill(|name| (name == "store").then_some("S1"))
            .unwrap_err();
        assert!(err.contains("'brand'"), "{err}");
        // Literal braces round-trip through Display.
        let t = IdTemplate::parse("m{{x}}-{id}").unwrap();
        assert_eq!(t.fill(|_| Some("7")).unwrap(), "m{x}-7");
        assert_eq!(t.to_string(), "m{{x}}-{id}");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (text, says) in [
            ("plain", "names no field"),
            ("{store", "unclosed"),
            ("{}", "empty field name"),
            ("{a-b}", "'-'"),
            ("a}b{c}", "lone"),
            ("{model}_x", "reserved"),
        ] {
            let err = IdTemplate::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn results_read_back_as_written() {
        let answer = BatchAnswer {
            results: vec![
                BatchResult {
                    model: Some("a".into()),
                    model_version: Some("2".into()),
                    result: RecordResult::Scored {
                        outputs: BTreeMap::from([
                            ("label".to_string(), Values::Ints(vec![1])),
                            (
                                "probabilities".to_string(),
                                Values::Floats(vec![0.25, 0.75]),
                            ),
                            ("name".to_string(), Values::Strings(vec!["x".into()])),
                        ]),
                    },
                },
                BatchResult {
                    model: Some("b".into()),
                    model_version: Some("1".into()),
                    result: RecordResult::Forecast {
                        forecast: Forecast {
                            dates: vec!["2026-01-08".into()],
                            values: vec![0.1],
                        },
                    },
                },
                BatchResult {
                    model: None,
                    model_version: None,
                    result: RecordResult::failed(404, "no model 'c'"),
                },
            ],
            models: 3,
            failed: 1,
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert!(text.contains(r#""values":[0.1]"#), "{text}");
        assert!(
            text.contains(r#"{"error":"no model 'c'","status":404}"#),
            "{text}"
        );
        let back: BatchAnswer = serde_json::from_str(&text).unwrap();
        assert_eq!(back, answer);
    }
}
