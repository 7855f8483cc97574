//! The Open Inference Protocol over gRPC as both sides see it: the service's calls by path,
//! the metadata header that names the model (the proxy routes on it when it is there), the
//! fields of the request messages that name it (read by the proxy from the body's first
//! bytes when no header does), and the one table between HTTP statuses and gRPC status
//! codes.

/// Every call is `POST {PREFIX}/{Method}`.
pub const PREFIX: &str = "/inference.GRPCInferenceService/";

/// The metadata keys that name the model of a call, in the order the proxy reads them:
/// ModelMesh's names first (so its clients work unchanged), then our REST header. Optional:
/// when none is sent, the proxy reads the model from the message and sends the scorer
/// `mm-model-id` itself, so the scorer holds the whole message to the model it was routed
/// and key-checked as.
pub const MODEL_HEADERS: [&str; 3] = ["mm-vmodel-id", "mm-model-id", crate::header::MODEL];

/// The calls of `inference.GRPCInferenceService` that this pool serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    ServerLive,
    ServerReady,
    ServerMetadata,
    ModelReady,
    ModelMetadata,
    ModelInfer,
    RepositoryIndex,
    RepositoryModelLoad,
    RepositoryModelUnload,
}

impl Call {
    pub const ALL: [Call; 9] = [
        Call::ServerLive,
        Call::ServerReady,
        Call::ServerMetadata,
        Call::ModelReady,
        Call::ModelMetadata,
        Call::ModelInfer,
        Call::RepositoryIndex,
        Call::RepositoryModelLoad,
        Call::RepositoryModelUnload,
    ];

    /// The method name, as in the path.
    pub fn method(self) -> &'static str {
        match self {
            Call::ServerLive => "ServerLive",
            Call::ServerReady => "ServerReady",
            Call::ServerMetadata => "ServerMetadata",
            Call::ModelReady => "ModelReady",
            Call::ModelMetadata => "ModelMetadata",
            Call::ModelInfer => "ModelInfer",
            Call::RepositoryIndex => "RepositoryIndex",
            Call::RepositoryModelLoad => "RepositoryModelLoad",
            Call::RepositoryModelUnload => "RepositoryModelUnload",
        }
    }

    /// The call a request path names, if it is one of the service's.
    pub fn from_path(path: &str) -> Option<Call> {
        let method = path.strip_prefix(PREFIX)?;
        Call::ALL.into_iter().find(|c| c.method() == method)
    }

    /// Whether the call is about one model (so the proxy routes it by the model header, or
    /// else by the message's [`Call::model_fields`]).
    pub fn names_model(self) -> bool {
        matches!(
            self,
            Call::ModelReady
                | Call::ModelMetadata
                | Call::ModelInfer
                | Call::RepositoryModelLoad
                | Call::RepositoryModelUnload
        )
    }

    /// The fields of the call's request message that name its model and version (as in
    /// `grpc/proto/inference.proto`); `None` for a call about no model.
    pub fn model_fields(self) -> Option<ModelFields> {
        const fn field(number: u32, name: &'static str) -> Field {
            Field { number, name }
        }
        match self {
            Call::ModelInfer => Some(ModelFields {
                name: field(1, "model_name"),
                version: Some(field(2, "model_version")),
            }),
            Call::ModelMetadata | Call::ModelReady => Some(ModelFields {
                name: field(1, "name"),
                version: Some(field(2, "version")),
            }),
            // `repository_name` is field 1; there is no version.
            Call::RepositoryModelLoad | Call::RepositoryModelUnload => Some(ModelFields {
                name: field(2, "model_name"),
                version: None,
            }),
            _ => None,
        }
    }

    /// Whether the call changes what a scorer holds (admin keys, like the REST routes).
    pub fn admin(self) -> bool {
        matches!(
            self,
            Call::RepositoryModelLoad | Call::RepositoryModelUnload
        )
    }
}

/// A string field of a request message: its protobuf field number and its name in the
/// proto (for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub number: u32,
    pub name: &'static str,
}

/// Where a request message names its model (and, for the calls that have one, its version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFields {
    pub name: Field,
    pub version: Option<Field>,
}

/// gRPC status codes (the numbers every gRPC implementation uses).
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const ALREADY_EXISTS: u32 = 6;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The gRPC code of an answer whose REST twin has HTTP `status`: the one table both sides
/// use, so a refusal reads the same over either protocol. 503 is UNAVAILABLE, which gRPC
/// clients retry; 422 (a model file that cannot be served) is FAILED_PRECONDITION, which
/// they do not; 507 (a model larger than the scorer's budget) is RESOURCE_EXHAUSTED.
pub fn code_for_status(status: u16) -> u32 {
    match status {
        200..=299 => code::OK,
        400 | 413 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::NOT_FOUND,
        405 | 501 => code::UNIMPLEMENTED,
        409 => code::ABORTED,
        422 => code::FAILED_PRECONDITION,
        429 | 507 => code::RESOURCE_EXHAUSTED,
        502 | 503 => code::UNAVAILABLE,
        504 => code::DEADLINE_EXCEEDED,
        499 => code::CANCELLED,
        500 => code::INTERNAL,
        _ => code::UNKNOWN,
    }
}

/// The HTTP status a gRPC code is counted as in metrics (the inverse of
/// [`code_for_status`] on the statuses it produces).
pub fn status_for_code(code: u32) -> u16 {
    match code {
        code::OK => 200,
        code::INVALID_ARGUMENT => 400,
        code::UNAUTHENTICATED => 401,
        code::PERMISSION_DENIED => 403,
        code::NOT_FOUND => 404,
        code::UNIMPLEMENTED => 501,
        code::ABORTED | code::ALREADY_EXISTS => 409,
        code::FAILED_PRECONDITION => 422,
        code::RESOURCE_EXHAUSTED => 429,
        code::UNAVAILABLE => 503,
        code::DEADLINE_EXCEEDED => 504,
        code::CANCELLED => 499,
        _ => 500,
    }
}

/// A `grpc-timeout` header (`<up to 8 digits><unit>`, unit `H M S m u n`) in whole
/// milliseconds, at least 1; `None` when malformed.
pub fn parse_grpc_timeout(text: &str) -> Option<u64> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "H" => n.saturating_mul(3_600_000),
        "M" => n.saturating_mul(60_000),
        "S" => n.saturating_mul(1_000),
        "m" => n,
        "u" => n / 1_000,
        "n" => n / 1_000_000,
        _ => return None,
    };
    Some(ms.clamp(1, crate::MAX_TIMEOUT_MS))
}

/// `text` as a `grpc-message` value: percent-encoded outside printable ASCII (and `%`).
pub fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_found_by_its_path_and_nothing_else_is() {
        for call in Call::ALL {
            assert_eq!(
                Call::from_path(&format!("{PREFIX}{}", call.method())),
                Some(call)
            );
        }
        assert_eq!(
            Call::from_path("/inference.GRPCInferenceService/Nope"),
            None
        );
        assert_eq!(Call::from_path("/v2/models/m/infer"), None);
        assert!(Call::ModelInfer.names_model() && !Call::ServerMetadata.names_model());
        assert!(Call::RepositoryModelLoad.admin() && !Call::ModelInfer.admin());
        // Every call about a model says where its message names it, and no other does.
        for call in Call::ALL {
            assert_eq!(
                call.model_fields().is_some(),
                call.names_model(),
                "{call:?}"
            );
        }
        let infer = Call::ModelInfer.model_fields().unwrap();
        assert_eq!((infer.name.number, infer.name.name), (1, "model_name"));
        assert_eq!(infer.version.map(|f| f.number), Some(2));
        assert_eq!(
            Call::RepositoryModelLoad
                .model_fields()
                .unwrap()
                .name
                .number,
            2
        );
    }

    #[test]
    fn statuses_and_codes_round_trip_where_they_should() {
        for status in [200, 400, 401, 403, 404, 409, 422, 429, 503, 504, 500] {
            assert_eq!(status_for_code(code_for_status(status)), status, "{status}");
        }
        // Too large is the client's fault, not a retryable one.
        assert_eq!(code_for_status(413), code::INVALID_ARGUMENT);
        assert_eq!(code_for_status(507), code::RESOURCE_EXHAUSTED);
        assert_eq!(code_for_status(502), code::UNAVAILABLE);
    }

    #[test]
    fn grpc_timeouts_parse_to_milliseconds() {
        assert_eq!(parse_grpc_timeout("250m"), Some(250));
        assert_eq!(parse_grpc_timeout("2S"), Some(2000));
        assert_eq!(parse_grpc_timeout("1H"), Some(3_600_000));
        assert_eq!(parse_grpc_timeout("99999999H"), Some(crate::MAX_TIMEOUT_MS));
        assert_eq!(parse_grpc_timeout("500u"), Some(1));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("-5m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no model 'a'"), "no model 'a'");
        assert_eq!(encode_message("50% é\n"), "50%25 %C3%A9%0A");
    }
}
