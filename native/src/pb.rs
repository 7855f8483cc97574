//! A minimal protobuf *reader* for untrusted input: every length is checked against the
//! bytes that remain before anything is allocated, varints are at most ten bytes, groups
//! (wire types 3 and 4) are refused, and nothing recurses deeper than the schema does.
//! It never copies the buffer: messages and packed arrays are borrowed sub-slices.

use crate::Invalid;

/// Wire types.
pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const FIXED32: u8 = 5;

/// One field as read from the wire.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Field<'a> {
    pub fn wire(&self) -> u8 {
        match self {
            Field::Varint(_) => VARINT,
            Field::Fixed64(_) => FIXED64,
            Field::Len(_) => LEN,
            Field::Fixed32(_) => FIXED32,
        }
    }
}

/// A cursor over one message's bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn varint(&mut self) -> Result<u64, Invalid> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| Invalid::new("truncated varint"))?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(Invalid::new("varint longer than 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Invalid::new("varint longer than ten bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| Invalid::new("a field runs past the end of its message"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The next field, or `None` at the end of the message.
    pub fn field(&mut self) -> Result<Option<(u32, Field<'a>)>, Invalid> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(Invalid::new("invalid field number"));
        }
        let field = match (key & 7) as u8 {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => Field::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("eight bytes"),
            )),
            LEN => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| Invalid::new("length too large"))?;
                Field::Len(self.take(len)?)
            }
            FIXED32 => Field::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("four bytes"),
            )),
            other => return Err(Invalid::new(format!("unsupported wire type {other}"))),
        };
        Ok(Some((number as u32, field)))
    }
}

/// Calls `each` for every field of `message`.
pub fn for_each<'a>(
    message: &'a [u8],
    mut each: impl FnMut(u32, Field<'a>) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    let mut reader = Reader::new(message);
    while let Some((number, field)) = reader.field()? {
        each(number, field)?;
    }
    Ok(())
}

/// A repeated scalar field as it appears in a message: any mix of packed runs and single
/// values (a conforming parser accepts both encodings for repeated scalars).
#[derive(Debug, Default, Clone)]
pub struct Repeated<'a> {
    parts: Vec<Field<'a>>,
}

impl<'a> Repeated<'a> {
    pub fn push(&mut self, field: Field<'a>) {
        self.parts.push(field);
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Decodes varint values (int64 as two's complement), `f` maps each and may refuse.
    pub fn varints<T>(
        &self,
        mut f: impl FnMut(u64) -> Result<T, Invalid>,
    ) -> Result<Vec<T>, Invalid> {
        let mut out = Vec::new();
        for part in &self.parts {
            match *part {
                Field::Varint(v) => out.push(f(v)?),
                Field::Len(bytes) => {
                    // A packed run: every value takes at least one byte, so the count is
                    // bounded by the payload and the reservation by the file.
                    out.reserve(bytes.iter().filter(|&&b| b & 0x80 == 0).count());
                    let mut reader = Reader::new(bytes);
                    while !reader.is_empty() {
                        out.push(f(reader.varint()?)?);
                    }
                }
                _ => return Err(Invalid::new("wrong wire type for an integer field")),
            }
        }
        Ok(out)
    }

    /// Decodes `float` values (fixed32), `f` maps each.
    pub fn floats<T>(&self, mut f: impl FnMut(f32) -> T) -> Result<Vec<T>, Invalid> {
        let mut out = Vec::new();
        for part in &self.parts {
            match *part {
                Field::Fixed32(bits) => out.push(f(f32::from_bits(bits))),
                Field::Len(bytes) => {
                    if bytes.len() % 4 != 0 {
                        return Err(Invalid::new("packed floats not a multiple of 4 bytes"));
                    }
                    out.reserve(bytes.len() / 4);
                    out.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|c| f(f32::from_le_bytes(c.try_into().expect("four bytes")))),
                    );
                }
                _ => return Err(Invalid::new("wrong wire type for a float field")),
            }
        }
        Ok(out)
    }

    /// Decodes `double` values (fixed64).
    pub fn doubles(&self) -> Result<Vec<f64>, Invalid> {
        let mut out = Vec::new();
        for part in &self.parts {
            match *part {
                Field::Fixed64(bits) => out.push(f64::from_bits(bits)),
                Field::Len(bytes) => {
                    if bytes.len() % 8 != 0 {
                        return Err(Invalid::new("packed doubles not a multiple of 8 bytes"));
                    }
                    out.reserve(bytes.len() / 8);
                    out.extend(
                        bytes
                            .chunks_exact(8)
                            .map(|c| f64::from_le_bytes(c.try_into().expect("eight bytes"))),
                    );
                }
                _ => return Err(Invalid::new("wrong wire type for a double field")),
            }
        }
        Ok(out)
    }

    /// The number of values, without decoding them.
    pub fn count_fixed(&self, width: usize) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Field::Len(bytes) => bytes.len() / width,
                _ => 1,
            })
            .sum()
    }
}

/// Bytes as UTF-8 text (names, op types, string attributes).
pub fn text(bytes: &[u8]) -> Result<&str, Invalid> {
    std::str::from_utf8(bytes).map_err(|_| Invalid::new("a string field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_varints_and_refuses_overlong_ones() {
        let mut r = Reader::new(&[0x96, 0x01]);
        assert_eq!(r.varint().unwrap(), 150);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint().unwrap(), u64::MAX);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over).varint().is_err());
        assert!(Reader::new(&[0x80; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn a_length_past_the_end_is_refused_before_any_allocation() {
        // Field 1, LEN, length 2^62: must fail, not allocate.
        let mut bytes = vec![0x0a];
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(Reader::new(&bytes).field().is_err());
    }

    #[test]
    fn groups_and_field_zero_are_refused() {
        assert!(Reader::new(&[0x0b]).field().is_err()); // field 1, start group
        assert!(Reader::new(&[0x00, 0x00]).field().is_err()); // field 0
    }

    #[test]
    fn repeated_values_mix_packed_and_single() {
        let mut rep = Repeated::default();
        rep.push(Field::Varint(3));
        rep.push(Field::Len(&[0x01, 0x96, 0x01]));
        assert_eq!(rep.varints(|v| Ok(v)).unwrap(), vec![3, 1, 150]);
        let mut floats = Repeated::default();
        floats.push(Field::Fixed32(1.5f32.to_bits()));
        let packed: Vec<u8> = [2.0f32, -0.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        floats.push(Field::Len(&packed));
        assert_eq!(floats.floats(|f| f).unwrap(), vec![1.5, 2.0, -0.25]);
        let mut bad = Repeated::default();
        bad.push(Field::Len(&[0, 0, 0]));
        assert!(bad.floats(|f| f).is_err());
    }
}
