//! A minimal protobuf *reader* for untrusted input: every length is checked against the
//! bytes that remain before anything is allocated, varints are at most ten bytes, groups
//! (wire types 3 and 4) are refused, and nothing recurses deeper than the schema does.
//! It never copies the buffer: messages and packed arrays are borrowed sub-slices.

use crate::error::Invalid;

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

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, Invalid> {
        // Most varints in a model (keys, node ids, small ints) are one to three bytes.
        if let Some(&[a, b, c]) = self
            .buf
            .get(self.pos..self.pos + 3)
            .map(|s| <&[u8; 3]>::try_from(s).expect("three bytes"))
        {
            if a < 0x80 {
                self.pos += 1;
                return Ok(u64::from(a));
            }
            if b < 0x80 {
                self.pos += 2;
                return Ok(u64::from(a & 0x7f) | u64::from(b) << 7);
            }
            if c < 0x80 {
                self.pos += 3;
                return Ok(u64::from(a & 0x7f) | u64::from(b & 0x7f) << 7 | u64::from(c) << 14);
            }
        } else if let Some(&byte) = self.buf.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(byte));
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, Invalid> {
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

    /// Skips one value of wire type `wire` without decoding it.
    #[inline(always)]
    pub fn skip(&mut self, wire: u8) -> Result<(), Invalid> {
        match wire {
            VARINT => {
                // At most ten bytes; the last has its top bit clear.
                let rest = &self.buf[self.pos.min(self.buf.len())..];
                let end = rest
                    .iter()
                    .take(10)
                    .position(|&b| b < 0x80)
                    .ok_or_else(|| Invalid::new("truncated or overlong varint"))?;
                self.pos += end + 1;
                Ok(())
            }
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            LEN => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Invalid::new("length too large"))?;
                self.take(len).map(drop)
            }
            other => Err(Invalid::new(format!("unsupported wire type {other}"))),
        }
    }

    /// The next key: field number and wire type (`None` at the end).
    #[inline(always)]
    pub fn key(&mut self) -> Result<Option<(u32, u8)>, Invalid> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(Invalid::new("invalid field number"));
        }
        Ok(Some((number as u32, (key & 7) as u8)))
    }

    #[inline(always)]
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

    /// The next `N` bytes, as a fixed-width field's value.
    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Invalid> {
        Ok(self.take(N)?.try_into().expect("take gives N bytes"))
    }

    /// The next field, or `None` at the end of the message.
    #[inline]
    pub fn field(&mut self) -> Result<Option<(u32, Field<'a>)>, Invalid> {
        match self.key()? {
            Some((number, wire)) => Ok(Some((number, self.field_value(wire)?))),
            None => Ok(None),
        }
    }

    /// The value of a field whose key was just read.
    #[inline]
    pub fn field_value(&mut self, wire: u8) -> Result<Field<'a>, Invalid> {
        Ok(match wire {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => Field::Fixed64(u64::from_le_bytes(self.array()?)),
            LEN => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| Invalid::new("length too large"))?;
                Field::Len(self.take(len)?)
            }
            FIXED32 => Field::Fixed32(u32::from_le_bytes(self.array()?)),
            other => return Err(Invalid::new(format!("unsupported wire type {other}"))),
        })
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

/// A repeated field of a message, read lazily: the message's bytes (from the field's
/// first occurrence on) and the field number. Nothing is copied or allocated until a
/// caller decodes it, in one pass that also checks every other field it steps over.
/// Scalars may be packed, unpacked or a mix: a conforming parser accepts both encodings.
/// Decoded vectors grow by doubling; glibc moves large blocks with `mremap`, so growing
/// costs no copy and no second buffer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Repeated<'a> {
    message: &'a [u8],
    field: u32,
}

impl<'a> Repeated<'a> {
    /// The occurrences of `field` in `message`.
    pub fn new(message: &'a [u8], field: u32) -> Self {
        Repeated { message, field }
    }

    pub fn is_empty(&self) -> bool {
        self.field == 0
    }

    /// The bytes the field's occurrences lie in (an upper bound on their size).
    pub fn bytes(&self) -> usize {
        self.message.len()
    }

    /// Walks the message, handing each occurrence of the field to `each` (with the reader
    /// positioned at its value) and skipping, while checking, every other field.
    #[inline(always)]
    fn walk(
        &self,
        mut each: impl FnMut(u8, &mut Reader<'a>) -> Result<(), Invalid>,
    ) -> Result<(), Invalid> {
        if self.field == 0 {
            return Ok(());
        }
        let mut reader = Reader::new(self.message);
        while let Some((number, wire)) = reader.key()? {
            if number == self.field {
                each(wire, &mut reader)?;
            } else {
                reader.skip(wire)?;
            }
        }
        Ok(())
    }

    /// Decodes varint values (int64 as two's complement); `f` maps each and may refuse.
    pub fn varints<T>(
        &self,
        mut f: impl FnMut(u64) -> Result<T, Invalid>,
    ) -> Result<Vec<T>, Invalid> {
        self.collect(2, |_, v| f(v))
    }

    /// Decodes `float` values (fixed32), `f` maps each.
    pub fn floats<T>(&self, mut f: impl FnMut(f32) -> T) -> Result<Vec<T>, Invalid> {
        self.collect(5, |_, v| Ok(f(v)))
    }

    /// Decodes `double` values (fixed64).
    pub fn doubles(&self) -> Result<Vec<f64>, Invalid> {
        self.collect(9, |_, v| Ok(v))
    }

    /// Decodes every value of a repeated `bytes`/`string` field with `f`.
    pub fn map_bytes<T>(
        &self,
        mut f: impl FnMut(&'a [u8]) -> Result<T, Invalid>,
    ) -> Result<Vec<T>, Invalid> {
        let mut out = Vec::new();
        self.each_bytes(|_, b| {
            out.push(f(b)?);
            Ok::<(), Invalid>(())
        })?;
        out.shrink_to_fit();
        Ok(out)
    }

    /// Every scalar mapped by `f`, in a vector presized for a large field (each value
    /// takes at least `min_bytes` on the wire).
    fn collect<S: Scalar, T>(
        &self,
        min_bytes: usize,
        mut f: impl FnMut(usize, S) -> Result<T, Invalid>,
    ) -> Result<Vec<T>, Invalid> {
        let mut out = presized(self.message.len(), min_bytes);
        self.each_scalar(|k, v| {
            out.push(f(k, v)?);
            Ok::<(), Invalid>(())
        })?;
        out.shrink_to_fit();
        Ok(out)
    }

    /// Hands every varint value to `f` with its index; returns how many there were.
    pub fn each_varint<E: From<Invalid>>(
        &self,
        f: impl FnMut(usize, u64) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.each_scalar(f)
    }

    /// Hands every float value to `f` with its index; returns how many there were.
    pub fn each_float<E: From<Invalid>>(
        &self,
        f: impl FnMut(usize, f32) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.each_scalar(f)
    }

    fn each_scalar<S: Scalar, E: From<Invalid>>(
        &self,
        mut f: impl FnMut(usize, S) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut k = 0usize;
        let mut rest = *self;
        // The common case, unpacked values with a one-byte key (field < 16): a tight loop
        // that leaves at anything else, which the general walk then handles.
        if self.field != 0 && self.field < 16 {
            let tag = ((self.field << 3) | u32::from(S::WIRE)) as u8;
            let buf = self.message;
            let mut pos = 0usize;
            while pos < buf.len() && buf[pos] == tag {
                let mut reader = Reader { buf, pos: pos + 1 };
                f(k, S::read(&mut reader)?)?;
                k += 1;
                pos = reader.pos;
            }
            rest = Repeated::new(&buf[pos..], self.field);
        }
        let mut failure: Option<E> = None;
        rest.walk(|wire, reader| {
            let mut one = |v: S| -> Result<(), Invalid> {
                if let Err(e) = f(k, v) {
                    failure = Some(e);
                    return Err(Invalid::new(""));
                }
                k += 1;
                Ok(())
            };
            if wire == S::WIRE {
                one(S::read(reader)?)
            } else if wire == LEN {
                // A packed run: values back to back (a truncated last one is an error).
                let len = usize::try_from(reader.varint()?)
                    .map_err(|_| Invalid::new("length too large"))?;
                let mut packed = Reader::new(reader.take(len)?);
                while !packed.is_empty() {
                    one(S::read(&mut packed)?)?;
                }
                Ok(())
            } else {
                Err(Invalid::new("wrong wire type for a repeated scalar"))
            }
        })
        .map_err(|e| failure.take().unwrap_or_else(|| E::from(e)))?;
        Ok(k)
    }

    /// Hands every `bytes`/`string` value to `f` with its index; returns how many.
    pub fn each_bytes<E: From<Invalid>>(
        &self,
        mut f: impl FnMut(usize, &'a [u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut k = 0usize;
        let mut failure: Option<E> = None;
        self.walk(|wire, reader| {
            if wire != LEN {
                return Err(Invalid::new("wrong wire type for a string field"));
            }
            let len =
                usize::try_from(reader.varint()?).map_err(|_| Invalid::new("length too large"))?;
            if let Err(e) = f(k, reader.take(len)?) {
                failure = Some(e);
                return Err(Invalid::new(""));
            }
            k += 1;
            Ok(())
        })
        .map_err(|e| failure.take().unwrap_or_else(|| E::from(e)))?;
        Ok(k)
    }

    /// Checks the message is well formed without decoding anything.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut reader = Reader::new(self.message);
        while let Some((_, wire)) = reader.key()? {
            reader.skip(wire)?;
        }
        Ok(())
    }
}

impl<'a> Repeated<'a> {
    /// The values one at a time, for walking several columns side by side.
    pub(crate) fn cursor<S: Scalar>(&self) -> Cursor<'a, S> {
        Cursor {
            outer: Reader::new(self.message),
            packed: Reader::new(&[]),
            field: self.field,
            _value: std::marker::PhantomData,
        }
    }

    /// The `bytes`/`string` values one at a time.
    pub(crate) fn byte_cursor(&self) -> ByteCursor<'a> {
        ByteCursor {
            outer: Reader::new(self.message),
            field: self.field,
        }
    }
}

/// A repeated scalar field's values in order, packed or not, checked as they are read
/// (every other field stepped over is checked too). `Ok(None)` at the end.
pub(crate) struct Cursor<'a, S> {
    outer: Reader<'a>,
    packed: Reader<'a>,
    field: u32,
    _value: std::marker::PhantomData<S>,
}

impl<S: Scalar> Cursor<'_, S> {
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Result<Option<S>, Invalid> {
        if !self.packed.is_empty() {
            return S::read(&mut self.packed).map(Some);
        }
        // The common case: an unpacked value with a one-byte key.
        if self.field < 16
            && self.outer.buf.get(self.outer.pos) == Some(&(((self.field << 3) as u8) | S::WIRE))
        {
            self.outer.pos += 1;
            return S::read(&mut self.outer).map(Some);
        }
        self.next_slow()
    }

    #[inline(never)]
    fn next_slow(&mut self) -> Result<Option<S>, Invalid> {
        if self.field == 0 {
            return Ok(None);
        }
        while let Some((number, wire)) = self.outer.key()? {
            if number != self.field {
                self.outer.skip(wire)?;
            } else if wire == S::WIRE {
                return S::read(&mut self.outer).map(Some);
            } else if wire == LEN {
                let len = usize::try_from(self.outer.varint()?)
                    .map_err(|_| Invalid::new("length too large"))?;
                self.packed = Reader::new(self.outer.take(len)?);
                if !self.packed.is_empty() {
                    return S::read(&mut self.packed).map(Some);
                }
            } else {
                return Err(Invalid::new("wrong wire type for a repeated scalar"));
            }
        }
        Ok(None)
    }
}

/// A repeated `bytes`/`string` field's values in order. `Ok(None)` at the end.
pub(crate) struct ByteCursor<'a> {
    outer: Reader<'a>,
    field: u32,
}

impl<'a> ByteCursor<'a> {
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Result<Option<&'a [u8]>, Invalid> {
        // The common case: a one-byte key and a one-byte length.
        let (buf, pos) = (self.outer.buf, self.outer.pos);
        if self.field < 16
            && let Some(&[key, len]) = buf
                .get(pos..pos + 2)
                .map(|s| <&[u8; 2]>::try_from(s).expect("two bytes"))
            && key == ((self.field << 3) as u8 | LEN)
            && len < 0x80
        {
            self.outer.pos += 2;
            return self.outer.take(usize::from(len)).map(Some);
        }
        if self.field == 0 {
            return Ok(None);
        }
        while let Some((number, wire)) = self.outer.key()? {
            if number != self.field {
                self.outer.skip(wire)?;
            } else if wire == LEN {
                let len = usize::try_from(self.outer.varint()?)
                    .map_err(|_| Invalid::new("length too large"))?;
                return self.outer.take(len).map(Some);
            } else {
                return Err(Invalid::new("wrong wire type for a string field"));
            }
        }
        Ok(None)
    }
}

/// An empty vector for the values of a large repeated field: room for as many values as
/// the bytes could hold (`min_bytes` each at least), reserved but not touched (untouched
/// pages cost nothing), marked for huge pages; `shrink_to_fit` returns the rest. Small
/// fields start empty and grow.
fn presized<T>(bytes: usize, min_bytes: usize) -> Vec<T> {
    if bytes >= 1 << 20 {
        crate::memory::vec_with_capacity(bytes / min_bytes)
    } else {
        Vec::new()
    }
}

/// A scalar as a repeated field holds it: its wire type and how to read one.
pub(crate) trait Scalar: Sized {
    const WIRE: u8;
    fn read(reader: &mut Reader<'_>) -> Result<Self, Invalid>;
}

impl Scalar for u64 {
    const WIRE: u8 = VARINT;
    #[inline(always)]
    fn read(reader: &mut Reader<'_>) -> Result<Self, Invalid> {
        reader.varint()
    }
}

impl Scalar for f64 {
    const WIRE: u8 = FIXED64;
    #[inline(always)]
    fn read(reader: &mut Reader<'_>) -> Result<Self, Invalid> {
        Ok(f64::from_le_bytes(reader.array()?))
    }
}

impl Scalar for f32 {
    const WIRE: u8 = FIXED32;
    #[inline(always)]
    fn read(reader: &mut Reader<'_>) -> Result<Self, Invalid> {
        Ok(f32::from_le_bytes(reader.array()?))
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
        // Field 1 (ints): single 3, packed [1, 150]; field 2 (floats): single 1.5, packed.
        let mut msg = vec![0x08, 3, 0x0a, 3, 0x01, 0x96, 0x01];
        msg.extend_from_slice(&[0x15]);
        msg.extend_from_slice(&1.5f32.to_le_bytes());
        let packed: Vec<u8> = [2.0f32, -0.25]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        msg.extend_from_slice(&[0x12, packed.len() as u8]);
        msg.extend_from_slice(&packed);
        assert_eq!(Repeated::new(&msg, 1).varints(Ok).unwrap(), vec![3, 1, 150]);
        assert_eq!(
            Repeated::new(&msg, 2).floats(|f| f).unwrap(),
            vec![1.5, 2.0, -0.25]
        );
        assert!(Repeated::new(&msg, 2).validate().is_ok());
        let bad = [0x0a, 3, 0, 0, 0];
        assert!(Repeated::new(&bad, 1).floats(|f| f).is_err());
        assert!(Repeated::new(&[0x0a, 9, 0], 1).validate().is_err());
        // The cursors read the same values, then end; a truncated packed run fails.
        let mut ints = Repeated::new(&msg, 1).cursor::<u64>();
        let mut read = Vec::new();
        while let Some(v) = ints.next().unwrap() {
            read.push(v);
        }
        assert_eq!(read, vec![3, 1, 150]);
        let mut floats = Repeated::new(&msg, 2).cursor::<f32>();
        let mut read = Vec::new();
        while let Some(v) = floats.next().unwrap() {
            read.push(v);
        }
        assert_eq!(read, vec![1.5, 2.0, -0.25]);
        let mut bad_floats = Repeated::new(&bad, 1).cursor::<f32>();
        assert!(bad_floats.next().is_err());
        assert_eq!(Repeated::default().cursor::<u64>().next().unwrap(), None);
        // Strings: a short one-byte-length value, a long one, a wrong wire type.
        let long = vec![b'x'; 200];
        let mut strings = vec![0x0a, 4];
        strings.extend_from_slice(b"LEAF");
        strings.extend_from_slice(&[0x10, 7, 0x0a, 0xc8, 0x01]);
        strings.extend_from_slice(&long);
        let mut texts = Repeated::new(&strings, 1).byte_cursor();
        assert_eq!(texts.next().unwrap(), Some(&b"LEAF"[..]));
        assert_eq!(texts.next().unwrap(), Some(&long[..]));
        assert_eq!(texts.next().unwrap(), None);
        assert!(Repeated::new(&[0x08, 1], 1).byte_cursor().next().is_err());
        assert!(
            Repeated::new(&[0x0a, 9, 0], 1)
                .byte_cursor()
                .next()
                .is_err()
        );
        assert!(Repeated::default().is_empty());
        assert!(Repeated::default().varints(Ok).unwrap().is_empty());
    }
}
