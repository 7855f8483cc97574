//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), served on the
//! scorer's one port beside REST: the router hands every `/inference.GRPCInferenceService/*`
//! path to this service (HTTP/2 without TLS, as the proxy and gRPC clients speak it), behind
//! the same key check. Everything after parsing is `infer`'s, shared with REST, so both
//! protocols load, check, run and refuse alike; errors carry the gRPC code of their REST
//! status (`contract::grpc::code_for_status`).
//!
//! The model is the request's `model_name`. The proxy routes on the metadata header
//! (`contract::grpc::MODEL_HEADERS`) when the client sends one, else on the first
//! `model_name` of the message, and then sends the header itself; the header must name the
//! same model as the whole message: a request routed (and key-checked) as one model cannot
//! score another.
//! An empty `model_name` takes the header's. The version is `model_version` when set, else
//! `x-mm-model-version`, else none: then `ModelInfer` gets the canary's split like a REST
//! request naming no version (`cache::canary`).

use std::sync::Arc;

use bytes::Bytes;
use manymodels_contract::{self as contract, grpc::code_for_status};
use manymodels_grpc as pb;
use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::model_infer_response::InferOutputTensor;
use pb::model_metadata_response::TensorMetadata;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::Scorer;
use crate::error::ScorerError;
use crate::infer;
use crate::ledger::Seen;
use crate::model_id::ModelId;
use crate::oip::{self, RawData, RequestInput, RequestOutput};
use crate::tensor::{NamedTensor, TensorSpec};

/// The axum route every call arrives on.
pub const ROUTE: &str = "/inference.GRPCInferenceService/{*method}";

/// The gRPC service of `scorer`, taking messages up to `http.max_body`.
pub fn service(scorer: Arc<Scorer>) -> GrpcInferenceServiceServer<Front> {
    let limit = usize::try_from(scorer.config.http.max_body.bytes()).unwrap_or(usize::MAX);
    GrpcInferenceServiceServer::new(Front { scorer })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// `error` as a gRPC client reads it: a trailers-only answer with its code, for the
/// refusals made before the service runs (the key check).
pub fn refusal(error: &ScorerError) -> axum::response::Response {
    use axum::response::IntoResponse;
    status_of(error)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// The gRPC status of `error`: the code of its REST status, its message.
fn status_of(error: &ScorerError) -> Status {
    let code = code_for_status(error.status().as_u16());
    Status::new(
        tonic::Code::from_i32(i32::try_from(code).unwrap_or(2)),
        error.to_string(),
    )
}

pub struct Front {
    scorer: Arc<Scorer>,
}

type Answer<T> = Result<Response<T>, Status>;

impl Front {
    /// Counts the call like a REST route (`grpc_<call>`, by its REST-equivalent status)
    /// and turns an error into its gRPC status; marks the answer with the scorer's name.
    fn finish<T>(
        &self,
        route: &'static str,
        result: Result<Response<T>, ScorerError>,
    ) -> Answer<T> {
        let scorer = &self.scorer;
        let name = MetadataValue::try_from(scorer.config.display_name())
            .unwrap_or_else(|_| MetadataValue::from_static("scorer"));
        match result {
            Ok(mut response) => {
                scorer
                    .metrics
                    .requests
                    .with_label_values(&[route, "200"])
                    .inc();
                response
                    .metadata_mut()
                    .insert(contract::header::SCORER, name);
                Ok(response)
            }
            Err(error) => {
                let status = error.status();
                scorer
                    .metrics
                    .errors
                    .with_label_values(&[error.kind()])
                    .inc();
                scorer
                    .metrics
                    .requests
                    .with_label_values(&[route, status.as_str()])
                    .inc();
                if status.is_server_error() {
                    tracing::warn!(%error, "gRPC request failed");
                }
                let mut refusal = status_of(&error);
                refusal
                    .metadata_mut()
                    .insert(contract::header::SCORER, name);
                if let Some(seconds) = error.retry_after() {
                    refusal
                        .metadata_mut()
                        .insert("retry-after", MetadataValue::from(seconds));
                }
                Err(refusal)
            }
        }
    }
}

/// The model a call names: its `name` field, which the routing header (if any) must
/// match; an empty field takes the header's.
fn model_of(metadata: &MetadataMap, name: &str) -> Result<ModelId, ScorerError> {
    let mut chosen = (!name.is_empty()).then_some(name);
    for header in contract::grpc::MODEL_HEADERS {
        let Some(value) = metadata.get(header) else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| ScorerError::invalid(format!("the {header} header is not text")))?;
        match chosen {
            None => chosen = Some(value),
            Some(named) if named != value => {
                return Err(ScorerError::invalid(format!(
                    "the {header} header names model '{}' but the request names '{}'",
                    contract::truncate_for_message(value),
                    contract::truncate_for_message(named)
                )));
            }
            Some(_) => {}
        }
    }
    let id = chosen.ok_or_else(|| {
        ScorerError::invalid(
            "the request names no model (set model_name, or the mm-model-id header)",
        )
    })?;
    Ok(ModelId::parse(id)?)
}

/// The version a call names: its `version` field, else `x-mm-model-version`, else none
/// (the live version, or the canary's for an inference call in the canary's share).
fn version_of(metadata: &MetadataMap, field: &str) -> Result<Option<u64>, ScorerError> {
    let text = if field.is_empty() {
        match metadata.get(contract::header::MODEL_VERSION) {
            None => return Ok(None),
            Some(value) => value.to_str().unwrap_or("-"),
        }
    } else {
        field
    };
    contract::parse_version(text).map(Some).ok_or_else(|| {
        ScorerError::invalid(format!(
            "invalid version '{}': expected a positive integer",
            contract::truncate_for_message(text)
        ))
    })
}

/// What a call about one model names, read from its metadata (consumed) and its name and
/// version fields: the model, the version, and the deadline.
fn target_of(
    metadata: MetadataMap,
    name: &str,
    version: &str,
) -> Result<(ModelId, Option<u64>, infer::Deadline), ScorerError> {
    let id = model_of(&metadata, name)?;
    let version = version_of(&metadata, version)?;
    let deadline = infer::deadline(&metadata.into_headers())?;
    Ok((id, version, deadline))
}

/// The inputs of a `ModelInferRequest` as the REST path has them after parsing: each
/// input's name, datatype and shape, and its data as bytes in the binary extension's
/// encoding: the `raw_input_contents` entry as received (no copy), or the typed
/// `contents` written out.
fn inputs_of(
    inputs: Vec<pb::model_infer_request::InferInputTensor>,
    raw: Vec<Bytes>,
) -> Result<(Vec<RequestInput>, Vec<Option<Bytes>>), ScorerError> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ScorerError::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut blobs = Vec::with_capacity(inputs.len());
    let mut parsed = Vec::with_capacity(inputs.len());
    for input in inputs {
        let blob = match (raw.next(), input.contents) {
            (Some(_), Some(_)) => {
                return Err(ScorerError::invalid(format!(
                    "input '{}' has contents but the request also uses raw_input_contents",
                    input.name
                )));
            }
            (Some(blob), None) => blob,
            (None, Some(contents)) => written_out(&input.name, &input.datatype, contents)?,
            (None, None) => {
                return Err(ScorerError::invalid(format!(
                    "input '{}' has no contents",
                    input.name
                )));
            }
        };
        blobs.push(Some(blob));
        parsed.push(RequestInput {
            name: input.name,
            shape: input.shape,
            datatype: input.datatype,
            parameters: None,
            data: RawData::default(),
        });
    }
    Ok((parsed, blobs))
}

/// Typed `contents` in the binary extension's encoding: the one field its datatype uses
/// (FP32 `fp32_contents`, INT32 `int_contents`, ...), and no other.
fn written_out(
    name: &str,
    datatype: &str,
    contents: pb::InferTensorContents,
) -> Result<Bytes, ScorerError> {
    let fields = [
        ("BOOL", "bool_contents", contents.bool_contents.len()),
        ("INT32", "int_contents", contents.int_contents.len()),
        ("INT64", "int64_contents", contents.int64_contents.len()),
        ("", "uint_contents", contents.uint_contents.len()),
        ("", "uint64_contents", contents.uint64_contents.len()),
        ("FP32", "fp32_contents", contents.fp32_contents.len()),
        ("FP64", "fp64_contents", contents.fp64_contents.len()),
        ("BYTES", "bytes_contents", contents.bytes_contents.len()),
    ];
    if let Some((_, field, _)) = fields.iter().find(|(t, _, n)| *n > 0 && *t != datatype) {
        return Err(ScorerError::invalid(format!(
            "input '{name}' is {datatype} but sets {field}"
        )));
    }
    let mut out = Vec::new();
    match datatype {
        "BOOL" => out.extend(contents.bool_contents.iter().map(|b| u8::from(*b))),
        "INT32" => le(&mut out, &contents.int_contents, |x| x.to_le_bytes()),
        "INT64" => le(&mut out, &contents.int64_contents, |x| x.to_le_bytes()),
        "FP32" => le(&mut out, &contents.fp32_contents, |x| x.to_le_bytes()),
        "FP64" => le(&mut out, &contents.fp64_contents, |x| x.to_le_bytes()),
        "BYTES" => {
            for element in &contents.bytes_contents {
                let len = u32::try_from(element.len()).map_err(|_| {
                    ScorerError::invalid(format!("input '{name}' has an element over 4 GiB"))
                })?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(element);
            }
        }
        // An unknown datatype fails in the shared checks, naming it.
        _ => {}
    }
    Ok(Bytes::from(out))
}

fn le<T: Copy, const N: usize>(out: &mut Vec<u8>, values: &[T], bytes: fn(T) -> [u8; N]) {
    out.reserve(values.len() * N);
    for value in values {
        out.extend_from_slice(&bytes(*value));
    }
}

/// Outputs as gRPC answers them: metadata per tensor, data in `raw_output_contents` (the
/// binary extension's encoding, which Triton's and KServe's clients read).
fn outputs_of(outputs: Vec<NamedTensor>) -> (Vec<InferOutputTensor>, Vec<Bytes>) {
    let raw = outputs
        .iter()
        .map(|output| {
            let mut bytes = Vec::with_capacity(oip::binary::encoded_len(&output.data));
            oip::binary::encode(&output.data, &mut bytes);
            Bytes::from(bytes)
        })
        .collect();
    let tensors = outputs
        .into_iter()
        .map(|output| InferOutputTensor {
            name: output.name,
            datatype: output.datatype.as_str().to_string(),
            shape: output.shape,
            parameters: Default::default(),
            contents: None,
        })
        .collect();
    (tensors, raw)
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|spec| TensorMetadata {
            name: spec.name.clone(),
            datatype: spec.datatype.as_str().to_string(),
            shape: spec.shape.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Front {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Answer<pb::ServerLiveResponse> {
        self.finish(
            "grpc_live",
            Ok(Response::new(pb::ServerLiveResponse { live: true })),
        )
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Answer<pb::ServerReadyResponse> {
        let ready = self.scorer.is_ready();
        self.finish(
            "grpc_ready",
            Ok(Response::new(pb::ServerReadyResponse { ready })),
        )
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Answer<pb::ServerMetadataResponse> {
        let metadata = pb::ServerMetadataResponse {
            name: "manymodels".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: vec!["model_repository".to_string()],
        };
        self.finish("grpc_server_metadata", Ok(Response::new(metadata)))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Answer<pb::ModelReadyResponse> {
        let result = async {
            let (metadata, _, request) = request.into_parts();
            let (id, version, deadline) = target_of(metadata, &request.name, &request.version)?;
            let scorer = self.scorer.clone();
            let target = id.clone();
            infer::within(&id, deadline, async move {
                infer::readiness(&scorer, &target, version).await
            })
            .await?;
            Ok(Response::new(pb::ModelReadyResponse { ready: true }))
        }
        .await;
        self.finish("grpc_model_ready", result)
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Answer<pb::ModelMetadataResponse> {
        let result = async {
            let (metadata, _, request) = request.into_parts();
            let (id, version, deadline) = target_of(metadata, &request.name, &request.version)?;
            let scorer = self.scorer.clone();
            let target = id.clone();
            let (model, versions) = infer::within(&id, deadline, async move {
                infer::describe(&scorer, &target, version).await
            })
            .await?;
            Ok(Response::new(pb::ModelMetadataResponse {
                name: id.to_string(),
                versions: versions.iter().map(u64::to_string).collect(),
                platform: infer::platform(&model).to_string(),
                inputs: tensor_metadata(&model.inputs),
                outputs: tensor_metadata(&model.outputs),
            }))
        }
        .await;
        self.finish("grpc_metadata", result)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Answer<pb::ModelInferResponse> {
        let mut seen = Seen::default();
        let mut named = None;
        let result = async {
            let (metadata, _, request) = request.into_parts();
            // Everything about the request is checked before the model is looked up: a
            // malformed request must not cost a load.
            let (id, version, deadline) =
                target_of(metadata, &request.model_name, &request.model_version)?;
            named = Some(id.clone());
            let (inputs, blobs) = inputs_of(request.inputs, request.raw_input_contents)?;
            let explain = wants_contributions(&request.parameters)?;
            let wanted: Vec<RequestOutput> = request
                .outputs
                .into_iter()
                .map(|o| RequestOutput {
                    name: o.name,
                    parameters: None,
                })
                .collect();
            let (model, lookup) = infer::model_within(&self.scorer, &id, version, deadline).await?;
            seen.version = Some(model.version);
            seen.lookup = Some(lookup);
            let selected = oip::select_outputs(Some(&wanted), &model.outputs)?;
            let outputs = if explain {
                infer::run_explained(&self.scorer, &id, &model, deadline, inputs, blobs, selected)
                    .await?
            } else {
                infer::run(
                    &self.scorer,
                    &id,
                    &model,
                    version,
                    deadline,
                    inputs,
                    blobs,
                    selected,
                )
                .await?
            };
            seen.rows = crate::engine::batch_rows(&outputs) as u64;
            let (outputs, raw_output_contents) = outputs_of(outputs);
            let mut response = Response::new(pb::ModelInferResponse {
                model_name: id.to_string(),
                model_version: model.version.to_string(),
                id: request.id,
                parameters: Default::default(),
                outputs,
                raw_output_contents,
            });
            response.metadata_mut().insert(
                contract::header::CACHE,
                MetadataValue::from_static(lookup.as_str()),
            );
            Ok(response)
        }
        .await;
        self.scorer
            .ledger
            .observe(named.as_ref(), seen, result.as_ref().err());
        self.finish("grpc_infer", result)
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        let result = async {
            let prefixes = infer::index_prefixes(
                request
                    .metadata()
                    .get(manymodels_contract::header::MODEL_PREFIXES)
                    .map(|v| v.as_bytes()),
            )?;
            let entries =
                infer::index(&self.scorer, request.get_ref().ready, prefixes.as_deref()).await?;
            let models = entries
                .into_iter()
                .map(|entry| pb::repository_index_response::ModelIndex {
                    name: entry.name,
                    version: entry.version.unwrap_or_default(),
                    state: entry.state.to_string(),
                    reason: entry.reason.to_string(),
                })
                .collect();
            Ok(Response::new(pb::RepositoryIndexResponse { models }))
        }
        .await;
        self.finish("grpc_index", result)
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        let result = async {
            let id = model_of(request.metadata(), &request.get_ref().model_name)?;
            self.scorer.cache.warm(&id).await?;
            Ok(Response::new(pb::RepositoryModelLoadResponse {}))
        }
        .await;
        self.finish("grpc_load", result)
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        let result = async {
            let id = model_of(request.metadata(), &request.get_ref().model_name)?;
            self.scorer.cache.unload(&id).await;
            Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
        }
        .await;
        self.finish("grpc_unload", result)
    }
}

/// Whether a gRPC request asks for explanations: its `contributions` parameter, a
/// `bool_param` (as `parameters.contributions` on REST).
fn wants_contributions(
    parameters: &std::collections::HashMap<String, pb::InferParameter>,
) -> Result<bool, ScorerError> {
    use pb::infer_parameter::ParameterChoice;
    match parameters.get("contributions") {
        None => Ok(false),
        Some(pb::InferParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(b)),
        }) => Ok(*b),
        Some(_) => Err(ScorerError::invalid(
            "parameter contributions must be a bool_param",
        )),
    }
}
