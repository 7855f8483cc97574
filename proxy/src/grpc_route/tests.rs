use super::*;
use crate::route::Action;

const INFER: Call = Call::ModelInfer;

fn fields(call: Call) -> ModelFields {
    call.model_fields().unwrap()
}

fn varint_bytes(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A protobuf message written field by field, as a serializer would.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn bytes(mut self, number: u32, value: &[u8]) -> Self {
        varint_bytes(u64::from(number) << 3 | 2, &mut self.0);
        varint_bytes(value.len() as u64, &mut self.0);
        self.0.extend_from_slice(value);
        self
    }

    fn string(self, number: u32, value: &str) -> Self {
        self.bytes(number, value.as_bytes())
    }

    fn varint(mut self, number: u32, value: u64) -> Self {
        varint_bytes(u64::from(number) << 3, &mut self.0);
        varint_bytes(value, &mut self.0);
        self
    }

    fn fixed64(mut self, number: u32, value: u64) -> Self {
        varint_bytes(u64::from(number) << 3 | 1, &mut self.0);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// The gRPC body: the frame header, then the message.
    fn framed(&self) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        body.extend_from_slice(&self.0);
        body
    }
}

/// A `ModelInferRequest` as tritonclient writes one: name, id, then an input with a
/// tensor of `tensor` bytes in `raw_input_contents` (field 7).
fn infer_request(name: &str, version: &str, tensor: usize) -> Message {
    let input = Message::default()
        .string(1, "input")
        .string(2, "FP32")
        .varint(3, 1);
    let mut message = Message::default().string(1, name);
    if !version.is_empty() {
        message = message.string(2, version);
    }
    message
        .string(3, "request-1")
        .bytes(5, &input.0)
        .bytes(7, &vec![0x3f; tensor])
}

fn found<'a>(name: &'a str, version: Option<&'a str>) -> Scan<'a> {
    Scan {
        name: Some(name),
        version,
        decided: true,
    }
}

#[test]
fn a_serializers_message_is_decided_by_its_first_bytes() {
    let body = infer_request("store-7", "", 1 << 20).framed();
    // The name and then field 3: no version (serializers write fields in order).
    assert_eq!(
        scan(fields(INFER), &body[..64], false),
        Ok(found("store-7", None))
    );
    let body = infer_request("store-7", "3", 1 << 20).framed();
    assert_eq!(
        scan(fields(INFER), &body[..64], false),
        Ok(found("store-7", Some("3")))
    );
    assert_eq!(
        conclude(INFER, scan(fields(INFER), &body[..64], false), None),
        Route::Model {
            id: "store-7".into(),
            action: Action::Grpc {
                call: INFER,
                version: Some(3)
            }
        }
    );
}

#[test]
fn every_cut_of_a_message_scans_to_the_same_answer_or_asks_for_more() {
    let messages = [
        infer_request("store-7", "12", 100),
        infer_request("m", "", 3),
        // Other fields first, the version before the name, a varint and a fixed64 among them.
        Message::default()
            .fixed64(9, 7)
            .varint(8, 300)
            .string(2, "4")
            .string(3, "id")
            .string(1, "late-name"),
    ];
    for message in messages {
        let body = message.framed();
        let whole = scan(fields(INFER), &body, true).unwrap();
        assert!(whole.decided && whole.name.is_some(), "{whole:?}");
        for cut in 0..body.len() {
            let part = scan(fields(INFER), &body[..cut], false)
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            if part.decided {
                assert_eq!(
                    (part.name, part.version),
                    (whole.name, whole.version),
                    "cut at {cut}"
                );
            }
            // Ended there, the body is a truncated frame and says so.
            let ended = scan(fields(INFER), &body[..cut], true).unwrap_err();
            assert!(
                ended.contains("ends") || ended.contains("no message") || ended.contains("past"),
                "cut at {cut}: {ended}"
            );
        }
    }
}

#[test]
fn other_fields_first_are_skipped_and_the_version_is_kept() {
    let body = Message::default()
        .string(3, "request-1")
        .string(2, "5")
        .string(1, "store-1")
        .framed();
    let scanned = scan(fields(INFER), &body, false).unwrap();
    assert_eq!(scanned.name, Some("store-1"));
    assert_eq!(scanned.version, Some("5"));
    assert!(scanned.decided, "the whole message was read");
    // The version field alone, message not complete: the name may still come.
    let body = Message::default().string(2, "5").string(3, "x").framed();
    let scanned = scan(fields(INFER), &body[..body.len() - 1], false).unwrap();
    assert_eq!((scanned.name, scanned.decided), (None, false));
}

#[test]
fn a_message_without_a_name_or_with_an_empty_one_is_refused_with_what_to_do() {
    let body = Message::default().string(3, "request-1").framed();
    let Route::Invalid(message) = conclude(INFER, scan(fields(INFER), &body, true), None) else {
        panic!();
    };
    assert!(
        message.contains("names no model") && message.contains("`model_name`"),
        "{message}"
    );
    assert!(message.contains("mm-model-id"), "{message}");
    let body = Message::default().string(1, "").framed();
    let Route::Invalid(message) = conclude(INFER, scan(fields(INFER), &body, true), None) else {
        panic!();
    };
    assert!(message.contains("empty"), "{message}");
    // An empty body: no message at all.
    let Route::Invalid(message) = conclude(INFER, scan(fields(INFER), &[], true), None) else {
        panic!();
    };
    assert!(message.contains("no message"), "{message}");
    // ModelReady and ModelMetadata call the field `name`.
    let body = Message::default().string(2, "1").framed();
    let ready = Call::ModelReady;
    let Route::Invalid(message) = conclude(ready, scan(fields(ready), &body, true), None) else {
        panic!();
    };
    assert!(
        message.contains("ModelReady") && message.contains("`name`"),
        "{message}"
    );
}

#[test]
fn ids_and_versions_from_the_message_follow_the_header_rules() {
    let route = |name: &str, version: &str, header: Option<&str>| {
        let body = Message::default()
            .string(1, name)
            .string(2, version)
            .framed();
        conclude(INFER, scan(fields(INFER), &body, true), header)
    };
    for (name, version) in [
        ("a/../b", ""),
        (".hidden", ""),
        ("m", "01"),
        ("m", "v2"),
        ("m", "-1"),
    ] {
        let Route::Invalid(message) = route(name, version, None) else {
            panic!("{name} {version}");
        };
        assert!(
            message.contains("invalid model id") || message.contains("invalid model version"),
            "{message}"
        );
    }
    // The message's version wins over x-mm-model-version; without one the header counts.
    let version = |route: Route| match route {
        Route::Model {
            action: Action::Grpc { version, .. },
            ..
        } => version,
        other => panic!("{other:?}"),
    };
    assert_eq!(version(route("m", "2", Some("7"))), Some(2));
    assert_eq!(version(route("m", "", Some("7"))), Some(7));
    assert_eq!(version(route("m", "", None)), None);
    assert!(matches!(route("m", "", Some("x")), Route::Invalid(_)));
}

#[test]
fn compressed_and_malformed_bodies_are_refused_clearly() {
    let mut body = infer_request("m", "", 10).framed();
    body[0] = 1;
    let Route::Invalid(message) = conclude(INFER, scan(fields(INFER), &body, false), None) else {
        panic!();
    };
    assert!(
        message.contains("compressed") && message.contains("send it uncompressed"),
        "{message}"
    );
    body[0] = 7;
    assert!(
        scan(fields(INFER), &body, false)
            .unwrap_err()
            .contains("flag 7")
    );
    // The name as a varint: not a string.
    let body = Message::default().varint(1, 5).framed();
    assert!(
        scan(fields(INFER), &body, false)
            .unwrap_err()
            .contains("not a string")
    );
    // Not UTF-8, a group, field number 0, an endless varint.
    for message in [
        Message::default().bytes(1, &[0xff, 0xfe]).0,
        vec![(1 << 3) | 3],
        vec![0x02, 0x00],
        vec![0xff; 12],
    ] {
        let body = Message(message).framed();
        let error = scan(fields(INFER), &body, false).unwrap_err();
        assert!(error.contains("malformed"), "{error}");
    }
    // A frame that says more than the body holds.
    let body = Message::default().string(1, "m").framed();
    let mut longer = body.clone();
    longer[4] += 10;
    assert!(
        scan(fields(INFER), &longer, true)
            .unwrap_err()
            .contains("ends after")
    );
    // A field longer than its message.
    let mut inner = Message::default().string(3, "abc").0;
    inner[1] = 40;
    let error = scan(fields(INFER), &Message(inner).framed(), true).unwrap_err();
    assert!(error.contains("past the message's end"), "{error}");
}

#[test]
fn a_name_past_the_scan_limit_is_refused_and_a_big_tensor_after_it_is_not() {
    // A large field before the name: the proxy stops reading at the limit.
    let body = Message::default()
        .bytes(7, &vec![0; 2 * SCAN_LIMIT])
        .string(1, "m")
        .framed();
    let scanned = scan(fields(INFER), &body[..SCAN_LIMIT], false).unwrap();
    assert!(!scanned.decided);
    let Route::Invalid(message) = conclude(INFER, Ok(scanned), None) else {
        panic!();
    };
    assert!(
        message.contains("first 48 KiB") && message.contains("mm-model-id"),
        "{message}"
    );
    // The name first and a tensor many times the limit after it: one 16 KiB frame decides.
    let body = infer_request("store-1", "", 8 * SCAN_LIMIT).framed();
    assert_eq!(
        scan(fields(INFER), &body[..16 * 1024], false),
        Ok(found("store-1", None))
    );
}

#[test]
fn repository_calls_name_their_model_in_field_two() {
    let load = Call::RepositoryModelLoad;
    let body = Message::default()
        .string(1, "repository")
        .string(2, "store-3")
        .framed();
    // No version field: the name decides alone, before the message ends.
    let scanned = scan(fields(load), &body[..body.len()], false).unwrap();
    assert_eq!(scanned, found("store-3", None));
    let Route::Model { id, action } = conclude(load, Ok(scanned), None) else {
        panic!();
    };
    assert_eq!(id, "store-3");
    assert!(action.admin());
}
