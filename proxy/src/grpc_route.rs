//! gRPC calls routed by the model their message names, for clients that send no model
//! header (an unmodified `tritonclient.grpc`). Pingora chooses the upstream after
//! `request_filter`, so the proxy reads the start of the body there: with retry buffering
//! on, every byte read is kept (up to 64 KiB) and Pingora sends the kept bytes to the
//! scorer before the rest of the body, on the first attempt and on a retry
//! (`proxy_h2.rs`: "retry, send buffer if it exists"). The frame and protobuf scan
//! ([`scan`]) and what it concludes ([`conclude`]) are pure functions, tested without a
//! socket; [`route_by_body`] only reads chunks until they decide.
//!
//! The scan reads what it needs and nothing else: the 5-byte gRPC frame header, then the
//! message's fields until the model's name and version are decided. It never decodes a
//! tensor, and it never reads past [`SCAN_LIMIT`] bytes.

use std::time::Duration;

use bytes::BytesMut;
use manymodels_contract::grpc::{self, Call, Field, ModelFields};
use manymodels_contract::truncate_for_message as cut;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::route::{Route, named_in_body};

/// The most of a body read before the scorer is chosen: 48 KiB. Pingora keeps at most
/// 64 KiB of a request body for the scorer (past that its buffer drops every byte and the
/// bytes read here could not be sent on); a read that starts below 48 KiB ends within
/// 64 KiB, since an HTTP/2 DATA frame carries at most 16 KiB (the frame size the proxy
/// advertises). A message names its model in its first bytes (field 1 of a
/// `ModelInferRequest`, written first by protobuf serializers), so this bound only ever
/// matters for a message that puts large fields first.
pub const SCAN_LIMIT: usize = 48 * 1024;

/// The gRPC frame header: a compressed flag and the message length (big-endian u32).
const FRAME_HEADER: usize = 5;

/// What the bytes of a call's body read so far say of the model it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    /// The first value of the message's name field, if seen.
    pub name: Option<&'a str>,
    /// The first value of its version field, if seen.
    pub version: Option<&'a str>,
    /// Whether more bytes cannot change `name` or `version`: the whole message was read,
    /// or the name was seen and so was the version or a field numbered after it (protobuf
    /// serializers write fields in number order; a version written out of order is the
    /// scorer's to read, it is the one that serves it).
    pub decided: bool,
}

/// Scans the start of a call's body (`body`, every byte read so far; `ended` when the body
/// is complete) for the message's name and version `fields`. `Err` says why the body can
/// never name a model the proxy can read: compressed, or malformed where it was read.
pub fn scan(fields: ModelFields, body: &[u8], ended: bool) -> Result<Scan<'_>, String> {
    let mut found = Scan {
        name: None,
        version: None,
        decided: false,
    };
    if body.len() < FRAME_HEADER {
        return match (ended, body.is_empty()) {
            (false, _) => Ok(found),
            (true, true) => Err("the call has no message".into()),
            (true, false) => Err(format!(
                "the body ends inside the gRPC frame header ({} of {FRAME_HEADER} bytes)",
                body.len()
            )),
        };
    }
    match body[0] {
        0 => {}
        1 => {
            return Err(
                "the message is compressed (grpc-encoding), which this pool does not take: \
                 send it uncompressed"
                    .into(),
            );
        }
        flag => return Err(format!("malformed gRPC frame: compressed flag {flag}")),
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[FRAME_HEADER..];
    let complete = rest.len() >= length;
    if ended && !complete {
        return Err(format!(
            "the body ends after {} of its message's {length} bytes",
            rest.len()
        ));
    }
    let message = &rest[..rest.len().min(length)];
    // With no version field, a name decides alone.
    let mut past_version = fields.version.is_none();
    let settled = |found: &Scan<'_>, past_version: bool| {
        found.name.is_some() && (found.version.is_some() || past_version)
    };
    let mut at = 0;
    let mut cut_short = false;
    while at < message.len() && !settled(&found, past_version) {
        let Some((tag, n)) = varint(&message[at..])? else {
            cut_short = true;
            break;
        };
        at += n;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(format!("malformed message: field number {number}"));
        }
        let wanted = [Some(fields.name), fields.version]
            .into_iter()
            .flatten()
            .find(|f| u64::from(f.number) == number);
        let wire = tag & 7;
        if let Some(field) = wanted
            && wire != 2
        {
            return Err(format!(
                "malformed message: `{}` (field {}) is not a string",
                field.name, field.number
            ));
        }
        if wanted.is_none() && fields.version.is_some_and(|v| number > u64::from(v.number)) {
            past_version = true;
        }
        let skip = match wire {
            0 => varint(&message[at..])?.map(|(_, n)| n),
            1 => Some(8),
            5 => Some(4),
            2 => varint(&message[at..])?.map(|(len, n)| {
                at += n;
                usize::try_from(len).unwrap_or(usize::MAX)
            }),
            wire => {
                return Err(format!(
                    "malformed message: field {number} has wire type {wire}"
                ));
            }
        };
        // A field that goes on past the bytes read so far.
        let Some(skip) = skip.filter(|&skip| skip <= message.len() - at) else {
            cut_short = true;
            break;
        };
        if let Some(field) = wanted {
            let text = text(field, &message[at..at + skip])?;
            let slot = if field.number == fields.name.number {
                &mut found.name
            } else {
                &mut found.version
            };
            slot.get_or_insert(text);
        }
        at += skip;
    }
    if cut_short && complete {
        return Err("malformed message: a field goes past the message's end".into());
    }
    found.decided = complete || settled(&found, past_version);
    Ok(found)
}

/// A string field's value: UTF-8, as protobuf requires of `string`.
fn text(field: Field, bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes)
        .map_err(|_| format!("malformed message: `{}` is not UTF-8", field.name))
}

/// A protobuf varint at the start of `bytes` and its length; `None` when `bytes` ends
/// inside it; `Err` when it runs over 10 bytes.
fn varint(bytes: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 10 {
        return Err("malformed message: a varint longer than 10 bytes".into());
    }
    Ok(None)
}

/// The route of a `call` whose body was scanned as far as it could be (`scanned`): the
/// model it names, by the same rules as a model named in metadata, or why there is none.
/// `x-mm-model-version` (`version_header`) counts when the message names no version.
pub fn conclude(
    call: Call,
    scanned: Result<Scan<'_>, String>,
    version_header: Option<&str>,
) -> Route {
    let header = grpc::MODEL_HEADERS[1];
    let method = call.method();
    let Some(fields) = call.model_fields() else {
        return Route::NotFound;
    };
    let field = fields.name.name;
    let scan = match scanned {
        Ok(scan) => scan,
        Err(problem) => {
            return Route::Invalid(format!(
                "{method}: cannot read the model from the message: {problem}"
            ));
        }
    };
    match scan.name {
        None if scan.decided => Route::Invalid(format!(
            "{method} names no model: set `{field}` in the message or the `{header}` metadata \
             header"
        )),
        None => Route::Invalid(format!(
            "{method}: `{field}` is not within the first {} KiB of the message, which is as \
             far as the proxy reads before choosing a scorer; write it first (protobuf \
             serializers do) or name the model in the `{header}` metadata header",
            SCAN_LIMIT / 1024
        )),
        Some("") => Route::Invalid(format!(
            "{method} names no model: `{field}` is empty; set it or the `{header}` metadata \
             header"
        )),
        Some(name) => named_in_body(call, name, scan.version, version_header),
    }
}

/// Routes `call` (about a model, without a model header) by the model its message names:
/// reads the body's first chunks (kept for the scorer), at most until [`SCAN_LIMIT`] bytes
/// or `wait` without one, and concludes. On a model route the request then carries the id
/// in `mm-model-id` (any other model header dropped), so the scorer holds the whole
/// message to the model it was routed and key-checked as: a second `model_name` further
/// on cannot reach another tenant's model. `Err` is a failed read of the client's body.
pub async fn route_by_body(
    session: &mut Session,
    call: Call,
    version_header: Option<&str>,
    wait: Duration,
) -> Result<Route> {
    let Some(fields) = call.model_fields() else {
        return Ok(Route::NotFound);
    };
    session.enable_retry_buffering();
    let mut body = BytesMut::new();
    let mut ended = false;
    let route = loop {
        let scanned = scan(fields, &body, ended);
        if !matches!(scanned, Ok(Scan { decided: false, .. })) || ended || body.len() >= SCAN_LIMIT
        {
            break conclude(call, scanned, version_header);
        }
        let Ok(chunk) = tokio::time::timeout(wait, session.read_request_body()).await else {
            return Ok(Route::Invalid(format!(
                "{}: the message did not arrive within {} ms",
                call.method(),
                wait.as_millis()
            )));
        };
        if session.as_ref().retry_buffer_truncated() {
            // Only a chunk over 16 KiB (HTTP/1.1) gets here: what was read is lost.
            return Ok(Route::Invalid(format!(
                "{}: the message's first {} KiB could not be kept for the scorer; name the \
                 model in the `{}` metadata header",
                call.method(),
                SCAN_LIMIT / 1024,
                grpc::MODEL_HEADERS[1]
            )));
        }
        match chunk? {
            Some(bytes) => body.extend_from_slice(&bytes),
            None => ended = true,
        }
    };
    if let Route::Model { id, .. } = &route {
        let request = session.req_header_mut();
        for name in grpc::MODEL_HEADERS {
            request.remove_header(name);
        }
        request.insert_header(grpc::MODEL_HEADERS[1], id.as_str())?;
        tracing::trace!(model = cut(id), "gRPC call routed by its message");
    }
    Ok(route)
}

#[cfg(test)]
mod tests;
