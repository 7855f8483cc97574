//! The infer route's bodies, decoded in one step and encoded in one step.
//!
//! - **Decode** (`decode`), before the model is looked up, so a malformed body never costs
//!   a load: an OIP JSON body, an OIP body under the binary tensor extension (its blobs
//!   kept as slices of the body, unread), or an Azure ML table (`azureml`).
//! - **Bind** (`Decoded::bind`), once the model is known: an Azure ML table becomes the
//!   model's only input, binary blobs are matched to their inputs, the outputs to return
//!   are selected and which of them go back as binary is settled. What comes out is what
//!   `infer::run` takes, and how to answer.
//! - **Encode** (`Reply::encode`): the OIP JSON response, the OIP response with binary
//!   outputs (framed as Triton frames it), or Azure ML's list of predictions.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::json_response;
use crate::azureml::{self, Answer};
use crate::engine::LoadedModel;
use crate::error::ScorerError;
use crate::oip::{self, RequestInput, binary::Blobs};
use crate::tensor::NamedTensor;

/// A body decoded, not yet bound to a model.
pub struct Decoded {
    request: azureml::Request,
    blobs: Blobs,
}

/// A request bound to its model's signature.
pub struct Bound {
    pub inputs: Vec<RequestInput>,
    /// Input `i`'s binary data, if it came as bytes.
    pub blobs: Vec<Option<Bytes>>,
    /// The outputs to return, in order.
    pub selected: Vec<usize>,
    /// The request asks for explanations (`parameters.contributions`): three outputs more.
    pub contributions: bool,
    pub reply: Reply,
}

/// How the answer is written.
pub struct Reply {
    shape: Answer,
    /// The request's `id`, echoed in an OIP answer.
    id: Option<String>,
    /// For each selected output, whether it goes back as binary (`None`: all JSON).
    binary: Option<Vec<bool>>,
}

/// Decodes an infer body: under the binary extension when its header says so, else JSON
/// (OIP, or an Azure ML table).
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Decoded, ScorerError> {
    let framing = headers.get(oip::binary::HEADER).map(|v| v.as_bytes());
    Ok(match oip::binary::header_length(framing)? {
        None => Decoded {
            request: azureml::parse_request(&body)?,
            blobs: Blobs::default(),
        },
        Some(length) => {
            let (request, blobs) = oip::binary::parse(body, length)?;
            Decoded {
                request: azureml::Request::Oip(request),
                blobs,
            }
        }
    })
}

impl Decoded {
    /// Binds the request to `model`'s signature.
    pub fn bind(self, model: &LoadedModel) -> Result<Bound, ScorerError> {
        let Decoded { request, mut blobs } = self;
        let (mut request, shape) = request.for_model(&model.inputs)?;
        oip::binary::raw_input(&mut request, &mut blobs, &model.inputs)?;
        let selected = oip::select_outputs(request.outputs.as_deref(), &model.outputs)?;
        let mut binary = oip::binary::binary_outputs(&request, selected.len())?;
        let contributions = oip::wants_contributions(request.parameters.as_ref())?;
        if contributions && let Some(modes) = binary.as_mut() {
            // The explanation's outputs go back as the request's `binary_data_output` says.
            let all = oip::binary::flag(request.parameters.as_ref(), "binary_data_output")?;
            modes.extend([all.unwrap_or(false); 3]);
        }
        Ok(Bound {
            inputs: request.inputs,
            blobs: blobs.inputs,
            selected,
            contributions,
            reply: Reply {
                shape,
                id: request.id,
                binary,
            },
        })
    }
}

impl Reply {
    /// The answer for `outputs` of `model_name` at `model_version`.
    pub fn encode(
        self,
        model_name: &str,
        model_version: u64,
        outputs: Vec<NamedTensor>,
    ) -> Response {
        match (self.shape, self.binary) {
            (Answer::AzureMl, _) => json_response(&azureml::answer(&outputs)),
            (Answer::Oip, Some(binary)) => binary_response(
                model_name,
                &model_version.to_string(),
                self.id.as_deref(),
                &outputs,
                &binary,
            ),
            (Answer::Oip, None) => json_response(&oip::InferResponse {
                model_name,
                model_version: model_version.to_string(),
                id: self.id,
                outputs,
            }),
        }
    }
}

/// An infer response with binary outputs (`oip::binary::response`), framed as Triton
/// frames it: `application/octet-stream` and the JSON header's length.
fn binary_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[NamedTensor],
    binary: &[bool],
) -> Response {
    match oip::binary::response(model_name, model_version, id, outputs, binary) {
        Ok((body, header_length)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    HeaderName::from_static(oip::binary::HEADER),
                    HeaderValue::from(header_length),
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => ScorerError::Inference {
            id: model_name.to_string(),
            message: format!("cannot encode the response: {e}"),
        }
        .into_response(),
    }
}
