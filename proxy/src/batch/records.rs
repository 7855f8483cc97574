//! Reading a many-model request: the body's records, each made into the model it names
//! and the [`ScorerRecord`] its scorer reads, and the records grouped by model. A pure
//! function of the body, the id template and the key's scope, so every rule is
//! unit-tested without a socket.
//!
//! Shapes taken (the same on the batch route and on Azure ML's scoring route without a
//! model header):
//! - `{"records": [{...}, ...]}`, the route's own;
//! - `{"data": [{...}, ...]}` and `{"input_data": [{...}, ...]}`, records as Azure ML
//!   scoring scripts and MLflow deployments receive them;
//! - `{"input_data": {"columns": [...], "index": [...], "data": [[...], ...]}}`, a
//!   split-orientation table (Azure ML's MLflow shape): each row is a record whose fields
//!   are the columns.
//!
//! A record's fields are read in the order sent, so named features keep their order.

use std::collections::HashMap;
use std::fmt;

use manymodels_config::proxy::scope_allows;
use manymodels_contract::batch::{ForecastAsk, IdTemplate, ScorerRecord};
use manymodels_contract::{truncate_for_message as cut, valid_model_id};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// One record's fields, in the order sent: `features` read straight into numbers in the
/// same pass as the body (no JSON value per number), every other field kept as its JSON
/// text until the record is read.
#[derive(Debug, Default)]
pub struct Fields(pub Vec<(String, Field)>);

/// One field's value.
#[derive(Debug)]
pub enum Field {
    /// `features`: the numbers, or `None` when the value is not a list of numbers (the
    /// record then fails alone; the body is still read).
    Features(Option<Vec<f64>>),
    Raw(Box<RawValue>),
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(name) = map.next_key::<String>()? {
                    let value = if name == "features" {
                        Field::Features(map.next_value::<Numbers>()?.0)
                    } else {
                        Field::Raw(map.next_value::<Box<RawValue>>()?)
                    };
                    fields.push((name, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

/// A list of numbers, or `None` for any other JSON value (read through, not refused).
struct Numbers(Option<Vec<f64>>);

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Numbers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Numbers, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(32));
                let mut all_numbers = true;
                while let Some(value) = seq.next_element::<Number>()? {
                    match value.0 {
                        Some(v) if all_numbers => values.push(v),
                        _ => all_numbers = false,
                    }
                }
                Ok(Numbers(all_numbers.then_some(values)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Numbers, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Numbers(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_unit<E>(self) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
        }
        deserializer.deserialize_any(List)
    }
}

/// One JSON value that is a number (`Some`) or anything else (`None`, read through).
struct Number(Option<f64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(Some(v as f64)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(Some(v as f64)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Number(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Number(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_unit<E>(self) -> Result<Number, E> {
                Ok(Number(None))
            }
        }
        deserializer.deserialize_any(One)
    }
}

/// The body's top level: one of the shapes in the module's doc.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    records: Option<Vec<Fields>>,
    data: Option<Vec<Fields>>,
    /// Records (`[{...}]`) or a split-orientation table (`{"columns", "data"}`): told
    /// apart by their first character once read.
    input_data: Option<Box<RawValue>>,
    /// Azure ML passes `params` through to scoring scripts; nothing here reads them.
    #[serde(default, rename = "params")]
    _params: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Split {
    columns: Vec<String>,
    data: Vec<Vec<Box<RawValue>>>,
    #[serde(default, rename = "index")]
    _index: Option<Value>,
}

/// Why a whole body is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not one of the shapes: 400.
    Invalid(String),
    /// More records than `batch.max_records`: 413.
    TooMany { records: usize, limit: usize },
}

/// A record's model: its id and the version it asks for (`None`: the live one).
pub type Target = (String, Option<u64>);

/// One record, read.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    /// The model and version, or why the record cannot be sent (status, message); `Err`
    /// keeps the id when one was read, for the answer.
    pub target: Result<Target, Refused>,
    pub record: ScorerRecord,
}

/// A record refused before any scorer: its status (400, 403), the reason, and the id it
/// named if one was read.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub error: String,
    pub model: Option<String>,
}

/// What reads a body: the id template (the key's, else the route's) and the key's scope.
pub struct Reading<'a> {
    pub template: Option<&'a IdTemplate>,
    /// The asking key's model-id prefixes (empty: every model).
    pub scope: &'a [String],
    pub max_records: usize,
}

/// Reads a body into its records, in order.
pub fn read(body: &[u8], reading: &Reading<'_>) -> Result<Vec<Parsed>, BodyError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        BodyError::Invalid(format!(
            "a many-model request is {{\"records\": [...]}} (or Azure ML's input_data/data): {e}"
        ))
    })?;
    let records = match (body.records, body.data, body.input_data) {
        (Some(records), None, None) | (None, Some(records), None) => records,
        (None, None, Some(input)) if input.get().starts_with('[') => {
            serde_json::from_str(input.get()).map_err(|e| {
                BodyError::Invalid(format!("input_data as records: a list of objects: {e}"))
            })?
        }
        (None, None, Some(input)) => {
            from_split(serde_json::from_str(input.get()).map_err(|e| {
                BodyError::Invalid(format!(
                    "input_data as a table: {{\"columns\": [...], \"data\": [[...]]}}: {e}"
                ))
            })?)?
        }
        (None, None, None) => {
            return Err(BodyError::Invalid(
                "no records: send {\"records\": [...]}".into(),
            ));
        }
        _ => {
            return Err(BodyError::Invalid(
                "send one of records, data and input_data".into(),
            ));
        }
    };
    if records.len() > reading.max_records {
        return Err(BodyError::TooMany {
            records: records.len(),
            limit: reading.max_records,
        });
    }
    if records.is_empty() {
        return Err(BodyError::Invalid("no records".into()));
    }
    Ok(records.into_iter().map(|r| record(r, reading)).collect())
}

/// A split-orientation table's rows as records.
fn from_split(split: Split) -> Result<Vec<Fields>, BodyError> {
    let width = split.columns.len();
    split
        .data
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            if row.len() != width {
                return Err(BodyError::Invalid(format!(
                    "input_data row {i} has {} values for {width} columns",
                    row.len()
                )));
            }
            Ok(Fields(
                split
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.into_iter().map(Field::Raw))
                    .collect(),
            ))
        })
        .collect()
}

/// One record: its model (and version) and what its scorer reads.
fn record(fields: Fields, reading: &Reading<'_>) -> Parsed {
    let mut model: Option<String> = None;
    let mut version = None;
    let mut features: Option<Vec<f64>> = None;
    let mut columns: Option<Vec<String>> = None;
    let mut horizon = None;
    let mut frequency = None;
    let mut history = None;
    let mut contributions = false;
    let mut named: Vec<(String, f64)> = Vec::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut problem: Option<String> = None;
    for (name, field) in fields.0 {
        let raw = match field {
            Field::Features(Some(values)) => {
                features = Some(values);
                continue;
            }
            Field::Features(None) => {
                problem.get_or_insert("'features' must be a list of numbers".into());
                continue;
            }
            Field::Raw(raw) => raw,
        };
        // Valid JSON by construction (it was read as a value); small beside `features`.
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let outcome: Result<(), String> = match name.as_str() {
            "model" => value
                .as_str()
                .map(|id| model = Some(id.to_string()))
                .ok_or_else(|| "'model' must be a string".into()),
            "version" => read_version(&value).map(|v| version = Some(v)),
            "columns" => strings(&value, "columns").map(|v| columns = Some(v)),
            "forecast_horizon" => value
                .as_u64()
                .filter(|h| *h >= 1 && *h <= u64::from(u32::MAX))
                .map(|h| horizon = Some(h as u32))
                .ok_or_else(|| "'forecast_horizon' must be a positive integer".into()),
            "date_freq" => value
                .as_str()
                .map(|f| frequency = Some(f.to_string()))
                .ok_or_else(|| "'date_freq' must be a string".into()),
            "data" => read_history(&value).map(|h| history = Some(h)),
            "contributions" => value
                .as_bool()
                .map(|c| contributions = c)
                .ok_or_else(|| "'contributions' must be true or false".into()),
            _ if reading.template.is_some_and(|t| t.reads(&name)) => match key_text(&value) {
                Some(text) => {
                    keys.push((name, text));
                    Ok(())
                }
                None => Err(format!(
                    "key field '{}' must be a string or a number",
                    cut(&name)
                )),
            },
            _ => match value.as_f64() {
                Some(v) => {
                    named.push((name, v));
                    Ok(())
                }
                None => Err(format!(
                    "field '{}' is not a number: a feature is a number, a key field is named in the id template ({})",
                    cut(&name),
                    reading
                        .template
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "none is configured: name the model in 'model'".into())
                )),
            },
        };
        if let Err(e) = outcome {
            problem.get_or_insert(e);
        }
    }
    let id = match model {
        Some(id) => Ok(id),
        None => match reading.template {
            Some(template) => template.fill(|field| {
                keys.iter()
                    .find(|(k, _)| k == field)
                    .map(|(_, v)| v.as_str())
            }),
            None => {
                Err("the record names no model: send 'model' (no id template is configured)".into())
            }
        },
    };
    let refuse = |status, error: String, model: Option<String>| Refused {
        status,
        error,
        model,
    };
    let target = match id {
        // A field that could not be read may be why no id was found: say that first.
        Err(e) => Err(refuse(400, problem.unwrap_or(e), None)),
        Ok(id) if !valid_model_id(&id) => Err(refuse(
            400,
            format!("invalid model id '{}'", cut(&id)),
            None,
        )),
        Ok(id) => match problem {
            Some(e) => Err(refuse(400, e, Some(id))),
            None if !scope_allows(reading.scope, &id) => Err(refuse(
                403,
                format!("this key may not use model '{id}': it is limited to other model ids"),
                Some(id),
            )),
            None => Ok((id, version)),
        },
    };
    let mut record = ScorerRecord {
        contributions,
        ..ScorerRecord::default()
    };
    let target = target.and_then(|target| {
        match (features, named.is_empty()) {
            (Some(_), false) => {
                return Err(refuse(
                    400,
                    "send 'features' or named feature fields, not both".into(),
                    Some(target.0),
                ));
            }
            (Some(values), true) => {
                if columns.as_ref().is_some_and(|c| c.len() != values.len()) {
                    return Err(refuse(
                        400,
                        "'columns' and 'features' differ in length".into(),
                        Some(target.0),
                    ));
                }
                record.features = values;
                record.columns = columns;
            }
            (None, _) if columns.is_some() => {
                return Err(refuse(
                    400,
                    "'columns' names the values of 'features', which is missing".into(),
                    Some(target.0),
                ));
            }
            (None, false) => {
                let (names, values) = named.into_iter().unzip();
                record.features = values;
                record.columns = Some(names);
            }
            (None, true) => {}
        }
        match (horizon, history) {
            (Some(horizon), Some((dates, values))) => {
                record.forecast = Some(ForecastAsk {
                    horizon,
                    frequency,
                    dates,
                    values,
                });
            }
            (Some(_), None) => {
                return Err(refuse(
                    400,
                    "a forecast needs its history in 'data': {\"dates\": [...], \"values\": [...]}".into(),
                    Some(target.0),
                ));
            }
            (None, Some(_)) | (None, None) if frequency.is_some() => {
                return Err(refuse(
                    400,
                    "'date_freq' belongs to a forecast: send 'forecast_horizon' too".into(),
                    Some(target.0),
                ));
            }
            (None, Some(_)) => {
                return Err(refuse(
                    400,
                    "'data' is a forecast's history: send 'forecast_horizon' too".into(),
                    Some(target.0),
                ));
            }
            (None, None) if record.features.is_empty() => {
                return Err(refuse(
                    400,
                    "the record has no features: send 'features', named feature fields, or a forecast".into(),
                    Some(target.0),
                ));
            }
            (None, None) => {}
        }
        Ok(target)
    });
    Parsed { target, record }
}

/// A record's `version`: a number or its text, by the rule of every route's version.
fn read_version(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => crate::route::version(&n.to_string()),
        Value::String(s) => crate::route::version(s),
        _ => Err("invalid model version: expected a positive integer".into()),
    }
}

/// A key field's text: a string as it is, a number as written.
fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn numbers(value: &Value, what: &str) -> Result<Vec<f64>, String> {
    let Value::Array(items) = value else {
        return Err(format!("'{what}' must be a list of numbers"));
    };
    items
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| format!("'{what}' must be a list of numbers"))
        })
        .collect()
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let Value::Array(items) = value else {
        return Err(format!("'{what}' must be a list of strings"));
    };
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("'{what}' must be a list of strings"))
        })
        .collect()
}

/// A forecast's history: `{"dates": [...], "values": [...]}` of equal length.
fn read_history(value: &Value) -> Result<(Vec<String>, Vec<f64>), String> {
    let shape = "'data' must be {\"dates\": [...], \"values\": [...]}";
    let Value::Object(map) = value else {
        return Err(shape.into());
    };
    if map.keys().any(|k| k != "dates" && k != "values") {
        return Err(shape.into());
    }
    let dates = strings(map.get("dates").ok_or(shape)?, "data.dates")?;
    let values = numbers(map.get("values").ok_or(shape)?, "data.values")?;
    if dates.len() != values.len() {
        return Err(format!(
            "'data' has {} dates and {} values",
            dates.len(),
            values.len()
        ));
    }
    Ok((dates, values))
}

/// The records' groups: one per (model, version), in the order each first appears, each
/// with its records' positions in the request.
pub fn group(parsed: &[Parsed]) -> Vec<(Target, Vec<usize>)> {
    let mut groups: Vec<(Target, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&Target, usize> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        if let Ok(target) = &p.target {
            match index.get(target) {
                Some(&g) => groups[g].1.push(i),
                None => {
                    index.insert(target, groups.len());
                    groups.push((target.clone(), vec![i]));
                }
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests;
