//! The Open Inference Protocol bodies `mmctl` reads, typed: the repository index (which
//! the scorer builds from [`IndexEntry`]), a model's metadata and an inference response
//! (which the scorer writes from its own borrowing types, `scorer::http` and the engine's
//! specs, for speed; these are how they read, and the scorer's handler tests check that
//! they do), and the error body every route of both servers answers an error with.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An error answer of either server: `{"error": message}`, the OIP error shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        ErrorBody {
            error: error.into(),
        }
    }
}

/// One entry of the repository index (`POST /v2/repository/index`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    /// The version in memory, for a model in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `READY` (in memory) or `UNAVAILABLE` (in the store; it loads on its first request).
    pub state: String,
    /// Why it is not ready (`not loaded`); empty when it is.
    pub reason: String,
}

/// A model's metadata (`GET /v2/models/{id}`, `/v2/models/{id}/versions/{v}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    /// In the store, ascending.
    pub versions: Vec<String>,
    pub platform: String,
    /// `onnxruntime` or `native`: which engine serves this version on the scorer that
    /// answered.
    pub engine: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// The input's feature columns by name, when the model declares them
    /// ([`crate::forecast::COLUMNS_KEY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// How the model forecasts, when it declares it ([`crate::forecast::FORECAST_KEY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<crate::forecast::ForecastSpec>,
}

/// What a model declares for one input or output. Dynamic dimensions are `-1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    /// The OIP datatype: `FP32`, `FP64`, `INT32`, `INT64`, `BOOL` or `BYTES`.
    pub datatype: String,
    pub shape: Vec<i64>,
    /// Present when there is something to say (an output's ZipMap `classes`, in column
    /// order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

/// An inference response in JSON (`POST /v2/models/{id}/infer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    /// The version that answered.
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// The elements, flat in row-major order, as JSON carries them: numbers, booleans or
    /// strings (BYTES). Empty when the output was asked for in binary.
    #[serde(default)]
    pub data: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::round_trips;

    #[test]
    fn error_bodies_and_index_entries_round_trip() {
        assert_eq!(
            round_trips(&ErrorBody::new("no such model")),
            json!({ "error": "no such model" })
        );
        let entries = vec![
            IndexEntry {
                name: "a".into(),
                version: Some("2".into()),
                state: "READY".into(),
                reason: String::new(),
            },
            IndexEntry {
                name: "b".into(),
                version: None,
                state: "UNAVAILABLE".into(),
                reason: "not loaded".into(),
            },
        ];
        assert_eq!(
            round_trips(&entries),
            json!([
                { "name": "a", "version": "2", "state": "READY", "reason": "" },
                { "name": "b", "state": "UNAVAILABLE", "reason": "not loaded" },
            ])
        );
    }

    #[test]
    fn metadata_and_responses_round_trip() {
        let spec = |name: &str, parameters: Option<Value>| TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![-1, 3],
            parameters: parameters.map(|p| p.as_object().cloned().unwrap()),
        };
        let metadata = ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into(), "2".into()],
            platform: "onnx_onnxv1".into(),
            engine: "native".into(),
            inputs: vec![spec("x", None)],
            outputs: vec![spec("p", Some(json!({ "classes": [0, 1, 2] })))],
            columns: None,
            forecast: None,
        };
        let json = round_trips(&metadata);
        assert!(
            json.get("columns").is_none() && json.get("forecast").is_none(),
            "{json}"
        );
        let declared = ModelMetadata {
            columns: Some(vec!["lag1".into()]),
            forecast: Some(
                crate::forecast::ForecastSpec::parse(
                    r#"{"frequency": "W", "max_horizon": 3, "features": [{"lag": 1}]}"#,
                    Some(1),
                )
                .unwrap(),
            ),
            ..metadata.clone()
        };
        let declared_json = round_trips(&declared);
        assert_eq!(declared_json["columns"], json!(["lag1"]));
        assert_eq!(
            declared_json["forecast"],
            json!({"frequency": "W-SUN", "max_horizon": 3, "features": [{"lag": 1}]})
        );
        assert!(json["inputs"][0].get("parameters").is_none(), "{json}");
        assert_eq!(
            json["outputs"][0]["parameters"]["classes"],
            json!([0, 1, 2])
        );
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "2".into(),
            id: Some("r1".into()),
            outputs: vec![OutputTensor {
                name: "label".into(),
                datatype: "BYTES".into(),
                shape: vec![2],
                data: vec![json!("cat"), json!("dog")],
                parameters: None,
            }],
        };
        round_trips(&response);
        let anonymous = InferResponse {
            id: None,
            ..response
        };
        assert!(round_trips(&anonymous).get("id").is_none());
    }
}
