//! The request bodies Azure ML users send, for models with one input, and the answer those
//! clients expect.
//!
//! Azure ML's MLflow deployments take `{"input_data": {"columns": [...], "index": [...],
//! "data": [[...]]}}` (a split-orientation DataFrame) or `{"input_data": [[...]]}` (a
//! tensor), and its custom scoring-script samples take `{"data": [[...]]}`. All three are a
//! table: rows of equally many values. The table becomes the model's only input, with the
//! input's own name and datatype and the shape `[rows, columns]`; from there it is checked
//! like any OIP input (`oip::validate_inputs`). The answer is what those deployments
//! return, a JSON list with one prediction per row (`[p1, p2, ...]`), or one such list per
//! output, keyed by output name, when the model has several outputs.
//!
//! Deliberately not supported: named tensors (`{"input_data": {"a": [...], "b": [...]}}`)
//! and models with more than one input (send an OIP body), and reordering columns by name:
//! an ONNX input is one tensor whose signature names no features, so `columns` is only
//! counted and the values are taken in the order given. An OIP body (it has `inputs`) is
//! parsed exactly as before and never costs a second parse.

use serde_json::{Map, Value};

use crate::error::ScorerError;
use crate::oip::{self, InferRequest};
use crate::tensor::{NamedTensor, TensorSpec};

/// A parsed scoring body: OIP, or an Azure ML table waiting for the model's signature.
#[derive(Debug)]
pub enum Request {
    Oip(InferRequest),
    Table(Table),
}

/// Which shape the answer takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The OIP infer response.
    Oip,
    /// A list of predictions (or one per output, by name): see [`answer`].
    AzureMl,
}

/// An Azure ML body's rows, checked to be equally long lists of numbers or booleans.
#[derive(Debug, PartialEq)]
pub struct Table {
    columns: usize,
    rows: Vec<Value>,
}

/// Parses a scoring body. An OIP body is parsed as `oip::parse_infer_request` does; a body
/// without `inputs` but with `input_data` or `data` is an Azure ML table; anything else
/// keeps the OIP parser's error.
pub fn parse_request(body: &[u8]) -> Result<Request, ScorerError> {
    match oip::parse_infer_request(body) {
        Ok(request) => Ok(Request::Oip(request)),
        Err(oip_error) => match azure_ml_body(body) {
            Some(table) => table.map(Request::Table),
            None => Err(oip_error),
        },
    }
}

impl Request {
    /// The OIP request for a model with inputs `specs`, and the shape to answer in.
    pub fn for_model(self, specs: &[TensorSpec]) -> Result<(InferRequest, Answer), ScorerError> {
        match self {
            Request::Oip(request) => Ok((request, Answer::Oip)),
            Request::Table(table) => Ok((table.into_request(specs)?, Answer::AzureMl)),
        }
    }
}

/// The table inside an Azure ML body, or `None` if the body is not one (not a JSON object,
/// has `inputs`, or has neither `input_data` nor `data`).
fn azure_ml_body(body: &[u8]) -> Option<Result<Table, ScorerError>> {
    let mut object: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if object.contains_key("inputs") {
        return None;
    }
    let input_data = object.remove("input_data");
    let data = object.remove("data");
    Some(match (input_data, data) {
        (Some(_), Some(_)) => Err(invalid("send either `input_data` or `data`, not both")),
        (Some(Value::Object(frame)), None) => split_frame(frame),
        (Some(rows), None) => table("input_data", rows),
        (None, Some(rows)) => table("data", rows),
        (None, None) => return None,
    })
}

/// `{"columns": [...], "index": [...], "data": [[...]]}`: `columns` and `index` are
/// optional; when given, their lengths must match the rows.
fn split_frame(mut frame: Map<String, Value>) -> Result<Table, ScorerError> {
    let Some(rows) = frame.remove("data") else {
        let mut keys: Vec<&str> = frame.keys().map(String::as_str).collect();
        keys.truncate(8);
        return Err(invalid(format!(
            "`input_data` as named tensors ({keys:?}) is not supported: send a split DataFrame \
             ({{\"columns\": [...], \"data\": [[...]]}}), a list of rows, or an OIP body"
        )));
    };
    let table = table("input_data.data", rows)?;
    if let Some(columns) = frame.get("columns") {
        let Value::Array(names) = columns else {
            return Err(invalid(
                "`input_data.columns` must be a list of column names",
            ));
        };
        if names.len() != table.columns {
            return Err(invalid(format!(
                "`input_data.columns` names {} columns but the rows have {} values",
                names.len(),
                table.columns
            )));
        }
    }
    if let Some(index) = frame.get("index") {
        let Value::Array(index) = index else {
            return Err(invalid("`input_data.index` must be a list"));
        };
        if index.len() != table.rows.len() {
            return Err(invalid(format!(
                "`input_data.index` has {} entries but there are {} rows",
                index.len(),
                table.rows.len()
            )));
        }
    }
    Ok(table)
}

/// A list of rows, each a list of equally many numbers, booleans or strings (the model's
/// input datatype decides which it takes).
fn table(field: &str, rows: Value) -> Result<Table, ScorerError> {
    let Value::Array(rows) = rows else {
        return Err(invalid(format!(
            "`{field}` must be a list of rows, e.g. [[1.0, 2.0], [3.0, 4.0]]"
        )));
    };
    let Some(Value::Array(first)) = rows.first() else {
        return Err(invalid(if rows.is_empty() {
            format!("`{field}` has no rows")
        } else {
            format!("`{field}` must be a list of rows, e.g. [[1.0, 2.0], [3.0, 4.0]]")
        }));
    };
    let columns = first.len();
    if columns == 0 {
        return Err(invalid(format!("`{field}` rows have no values")));
    }
    for (r, row) in rows.iter().enumerate() {
        let Value::Array(row) = row else {
            return Err(invalid(format!(
                "`{field}` row {r} is not a list of values"
            )));
        };
        if row.len() != columns {
            return Err(invalid(format!(
                "`{field}` row {r} has {} values but row 0 has {columns}",
                row.len()
            )));
        }
        for (c, value) in row.iter().enumerate() {
            if !matches!(value, Value::Number(_) | Value::Bool(_) | Value::String(_)) {
                return Err(invalid(format!(
                    "`{field}` row {r}, column {c} is {}, not a number, boolean or string",
                    shown(value)
                )));
            }
        }
    }
    Ok(Table { columns, rows })
}

/// A value for an error message, cut to a readable length.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

impl Table {
    /// The model's only input, shaped `[rows, columns]`. Refuses a model with several
    /// inputs, an input that is not a table (rank 2), and a column count the model does not
    /// take; datatype and the element limit are checked later with every OIP input.
    fn into_request(self, specs: &[TensorSpec]) -> Result<InferRequest, ScorerError> {
        let [spec] = specs else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(invalid(format!(
                "Azure ML bodies (`input_data`, `data`) carry one table, but this model has \
                 {} inputs {names:?}: send an OIP body with one entry per input",
                specs.len()
            )));
        };
        if spec.shape.len() != 2 {
            return Err(invalid(format!(
                "the model's input '{}' has shape {:?} (-1 = any), not [rows, columns]: send \
                 an OIP body",
                spec.name, spec.shape
            )));
        }
        let expected = spec.shape[1];
        if expected >= 0 && usize::try_from(expected).ok() != Some(self.columns) {
            return Err(invalid(format!(
                "the rows have {} values but the model's input '{}' takes {expected} columns \
                 (shape {:?})",
                self.columns, spec.name, spec.shape
            )));
        }
        // Built through the OIP parser, so the input is exactly what an OIP body with the
        // same rows would give (nested rows are flattened row-major).
        let shape = [self.rows.len(), self.columns];
        let body = serde_json::json!({"inputs": [{
            "name": spec.name,
            "shape": shape,
            "datatype": spec.datatype.as_str(),
            "data": self.rows,
        }]});
        serde_json::from_value(body)
            .map_err(|e| invalid(format!("malformed inference request: {e}")))
    }
}

/// The answer to an Azure ML body: per output, one entry per row (the row's value when it
/// has one, the list of its values otherwise); the list itself for a one-output model, an
/// object of output name to list otherwise.
pub fn answer(outputs: &[NamedTensor]) -> Value {
    match outputs {
        [only] => per_row(only),
        _ => Value::Object(
            outputs
                .iter()
                .map(|output| (output.name.clone(), per_row(output)))
                .collect(),
        ),
    }
}

fn per_row(output: &NamedTensor) -> Value {
    let Ok(Value::Array(values)) = serde_json::to_value(&output.data) else {
        return Value::Array(Vec::new());
    };
    let rows = match output.shape.first() {
        Some(&rows) if rows > 0 => usize::try_from(rows).unwrap_or(1),
        _ => 1,
    };
    let width = values.len() / rows.max(1);
    if width <= 1 {
        return Value::Array(values);
    }
    Value::Array(
        values
            .chunks(width)
            .map(|row| Value::Array(row.to_vec()))
            .collect(),
    )
}

fn invalid(message: impl Into<String>) -> ScorerError {
    ScorerError::invalid(message)
}

#[cfg(test)]
mod tests;
