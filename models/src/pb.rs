//! A minimal protobuf *writer*: varints, length-delimited fields, fixed32 floats and packed
//! repeated scalars. No reflection and no reader; message sizes are computed up front
//! by the caller (see `onnx.rs`) so every byte is written exactly once, into a buffer of
//! exactly the right capacity.

/// Wire type of a varint-encoded scalar (int32, int64, enum, bool).
pub const WIRE_VARINT: u32 = 0;
/// Wire type of a length-delimited field (string, bytes, message, packed repeated).
pub const WIRE_LEN: u32 = 2;
/// Wire type of a 32-bit little-endian scalar (float, fixed32).
pub const WIRE_FIXED32: u32 = 5;

/// Number of bytes the varint encoding of `v` takes (1..=10).
#[inline]
pub const fn varint_len(v: u64) -> usize {
    // Each byte carries 7 bits; 0 still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the base-128 varint encoding of `v`.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An `int64`/`int32` field value as protobuf encodes it: negative numbers are
/// sign-extended to 64 bits (and so take 10 bytes), never zigzagged.
#[inline]
pub const fn int64_bits(v: i64) -> u64 {
    v as u64
}

/// Length of a field key (field number + wire type).
#[inline]
pub const fn key_len(field: u32) -> usize {
    varint_len((field as u64) << 3)
}

/// Appends a field key.
#[inline]
pub fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

/// Encoded size of a varint field (key + value).
#[inline]
pub const fn varint_field_len(field: u32, v: u64) -> usize {
    key_len(field) + varint_len(v)
}

/// Appends a varint field.
#[inline]
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, v);
}

/// Encoded size of a length-delimited field whose payload is `payload_len` bytes.
#[inline]
pub const fn len_field_len(field: u32, payload_len: usize) -> usize {
    key_len(field) + varint_len(payload_len as u64) + payload_len
}

/// Appends the key and length prefix of a length-delimited field; the caller then
/// appends exactly `payload_len` bytes of payload.
#[inline]
pub fn put_len_header(out: &mut Vec<u8>, field: u32, payload_len: usize) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, payload_len as u64);
}

/// Appends a length-delimited field holding `bytes` (string, bytes).
#[inline]
pub fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_header(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

/// Encoded size of a fixed32 field.
#[inline]
pub const fn fixed32_field_len(field: u32) -> usize {
    key_len(field) + 4
}

/// Appends a `float` field (wire type fixed32, little endian).
#[inline]
pub fn put_f32_field(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, WIRE_FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

/// Payload size of a packed repeated varint field.
#[inline]
pub fn packed_varint_payload_len(values: impl IntoIterator<Item = u64>) -> usize {
    values.into_iter().map(varint_len).sum()
}

/// Appends a packed repeated `int64` field, given its precomputed payload size
/// (from [`packed_varint_payload_len`]). Empty lists are omitted entirely, as protobuf does.
pub fn put_packed_i64(out: &mut Vec<u8>, field: u32, values: &[i64], payload_len: usize) {
    if values.is_empty() {
        return;
    }
    put_len_header(out, field, payload_len);
    let start = out.len();
    for &v in values {
        put_varint(out, int64_bits(v));
    }
    debug_assert_eq!(out.len() - start, payload_len);
}

/// Appends a packed repeated `float` field (4 bytes per value, little endian).
pub fn put_packed_f32(out: &mut Vec<u8>, field: u32, values: &[f32]) {
    if values.is_empty() {
        return;
    }
    put_len_header(out, field, values.len() * 4);
    out.reserve(values.len() * 4);
    for &v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v), "varint_len({v})");
        out
    }

    #[test]
    fn varint_known_values() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7F]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]); // the protobuf documentation's example
        assert_eq!(varint(300), [0xAC, 0x02]);
        assert_eq!(varint(16_383), [0xFF, 0x7F]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(varint(u64::from(u32::MAX)), [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert_eq!(
            varint(u64::MAX),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
        // int64 -1 is sign-extended: ten bytes.
        assert_eq!(varint(int64_bits(-1)).len(), 10);
    }

    #[test]
    fn varint_len_boundaries() {
        for bytes in 1..10u32 {
            let max = (1u64 << (7 * bytes)) - 1;
            assert_eq!(varint_len(max), bytes as usize);
            assert_eq!(varint_len(max + 1), bytes as usize + 1);
        }
    }

    #[test]
    fn field_encodings() {
        let mut out = Vec::new();
        put_varint_field(&mut out, 1, 150);
        assert_eq!(out, [0x08, 0x96, 0x01]);

        out.clear();
        put_bytes_field(&mut out, 2, b"testing");
        assert_eq!(out, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        assert_eq!(out.len(), len_field_len(2, 7));

        out.clear();
        put_f32_field(&mut out, 2, 1.0);
        assert_eq!(out, [0x15, 0x00, 0x00, 0x80, 0x3F]);
        assert_eq!(out.len(), fixed32_field_len(2));

        // Packed repeated int64 [3, 270, 86942] in field 4: the protobuf documentation's example.
        out.clear();
        let values = [3i64, 270, 86942];
        let len = packed_varint_payload_len(values.iter().map(|&v| int64_bits(v)));
        put_packed_i64(&mut out, 4, &values, len);
        assert_eq!(out, [0x22, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05]);

        out.clear();
        put_packed_f32(&mut out, 7, &[1.0, -2.0]);
        assert_eq!(out, [0x3A, 0x08, 0, 0, 0x80, 0x3F, 0, 0, 0, 0xC0]);

        // Field numbers >= 16 need a two-byte key (AttributeProto.type is field 20).
        out.clear();
        put_varint_field(&mut out, 20, 7);
        assert_eq!(out, [0xA0, 0x01, 0x07]);
        assert_eq!(key_len(20), 2);
    }
}
