//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`'s messages,
//! server trait and client, generated at build time from `proto/inference.proto`.

#![allow(
    clippy::all,
    clippy::allow_attributes_without_reason,
    unused_qualifications,
    missing_docs,
    reason = "generated code"
)]

tonic::include_proto!("inference");

/// The service's path prefix; every call is `POST {PREFIX}/{Method}`.
pub const PREFIX: &str = "/inference.GRPCInferenceService";
