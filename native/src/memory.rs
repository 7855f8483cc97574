//! Large scratch and model arrays ask the kernel for transparent huge pages.
//!
//! A 30 MB forest's load writes about 50 MB of fresh memory (its records, the layout and
//! the kept nodes); with 4 KiB pages that is over 12,000 page faults, a quarter of the
//! load on a virtual machine. With `MADV_HUGEPAGE` the kernel backs the aligned 2 MiB
//! stretches of each buffer with huge pages (where THP is `madvise` or `always`; a no-op
//! where it is `never`), so the same load takes a few dozen faults.

/// Buffers smaller than this are left alone (they may share pages with other data).
const HUGE_FROM: usize = 4 << 20;

/// An empty vector with room for `n` elements, whose buffer (when large) is marked for
/// huge pages before anything touches it.
pub(crate) fn vec_with_capacity<T>(n: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(n);
    advise(&v);
    v
}

/// `n` copies of `value`, in a buffer marked for huge pages (when large).
pub(crate) fn vec_filled<T: Clone>(value: T, n: usize) -> Vec<T> {
    let mut v = vec_with_capacity(n);
    v.resize(n, value);
    v
}

#[cfg(target_os = "linux")]
fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity() * size_of::<T>();
    if bytes < HUGE_FROM {
        return;
    }
    const PAGE: usize = 4096;
    let start = v.as_ptr() as usize;
    let aligned = start.next_multiple_of(PAGE);
    let end = (start + bytes) & !(PAGE - 1);
    if end > aligned {
        // SAFETY: the range lies inside this vector's own allocation; MADV_HUGEPAGE only
        // changes how the kernel backs it and never its contents.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise<T>(_v: &Vec<T>) {}

/// Element types whose values are their bytes: no padding, no pointers, and every bit
/// pattern a valid value, so an array of them can be written and read as raw
/// little-endian bytes (`image`). The numbers are declared here; the tree's records
/// (`tree::Node`, `tree::Weight<f32>`) beside their layouts, in `tree/ensemble.rs`.
///
/// # Safety
///
/// An implementor is `Copy`, has no padding bytes and accepts any bit pattern.
pub(crate) unsafe trait Plain: Copy + 'static {}

// SAFETY: primitive numbers have no padding and accept any bit pattern.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for i64 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f64 {}
/// The bytes of `values` as they lie in memory.
pub(crate) fn as_bytes<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so every byte of the slice is initialised; the
    // byte slice covers exactly the same memory and lives as long as `values`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
}

/// `n` zeroed values, from the allocator's zeroed memory: a large buffer is fresh pages
/// the kernel zeroes as they are first touched, never written twice. Marked for huge
/// pages (when large) before anything touches it.
fn zeroed<T: Plain>(n: usize) -> Vec<T> {
    let Ok(layout) = std::alloc::Layout::array::<T>(n) else {
        // Larger than the address space: let `Vec` report it as it would.
        return Vec::with_capacity(n);
    };
    if layout.size() == 0 {
        return Vec::new();
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` was allocated by the global allocator with `T`'s alignment and the size
    // of `n` values (`Layout::array`), as `Vec` allocates; all `n` are initialised, since
    // all-zero bytes are a valid `T: Plain`.
    let values = unsafe { Vec::from_raw_parts(ptr.cast::<T>(), n, n) };
    advise(&values);
    populate(&values);
    values
}

/// Faults a large buffer's pages in with one system call (`MADV_POPULATE_WRITE`, Linux
/// 5.14+) instead of one fault per page as a read fills it; a no-op where unsupported.
#[cfg(target_os = "linux")]
fn populate<T>(v: &[T]) {
    let bytes = size_of_val(v);
    if bytes < HUGE_FROM {
        return;
    }
    const PAGE: usize = 4096;
    let start = v.as_ptr() as usize & !(PAGE - 1);
    let end = v.as_ptr() as usize + bytes;
    // SAFETY: the range covers only pages of this buffer's own allocation (rounded down to
    // its first page, which the allocation owns from its start); populating writes
    // nothing the buffer holds, it only maps zeroed pages where none were yet.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn populate<T>(_v: &[T]) {}

/// `n` values copied out of `bytes` (exactly `n * size_of::<T>()` of them, any alignment).
pub(crate) fn copy_plain<T: Plain>(bytes: &[u8], n: usize) -> Vec<T> {
    debug_assert_eq!(bytes.len(), n * size_of::<T>());
    let mut values: Vec<T> = Vec::with_capacity(n);
    // SAFETY: the destination has room for `n` values, which `bytes` fills exactly.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            values.as_mut_ptr().cast::<u8>(),
            n * size_of::<T>(),
        );
    }
    // SAFETY: all `n` values were just written, and any bit pattern is a valid `T: Plain`.
    unsafe { values.set_len(n) };
    values
}

/// The bytes of an image that a model's large arrays are served from, never copied: a
/// read-only private mapping of the image file (its pages are the page cache's, filled
/// once by `MAP_POPULATE`), or an 8-aligned buffer the image was read into.
///
/// A mapping stays valid when its file is renamed over or unlinked, which is all the
/// scorer ever does to an image; nothing may write an image file in place while it is
/// mapped (the arrays would change under the model, and a truncation faults).
pub(crate) struct Backing {
    ptr: *const u8,
    len: usize,
    /// The buffer the bytes live in when they are not a mapping.
    owned: Option<Vec<u64>>,
}

// SAFETY: the bytes are never written after construction (a read-only mapping, or a buffer
// only this struct holds), so sharing or sending them between threads is sound.
unsafe impl Send for Backing {}
// SAFETY: as above.
unsafe impl Sync for Backing {}

impl Backing {
    /// `len` bytes read from `reader` into an 8-aligned buffer (huge-page advised and
    /// populated when large, as other model arrays).
    pub(crate) fn read(reader: &mut impl std::io::Read, len: usize) -> std::io::Result<Backing> {
        let mut words = zeroed::<u64>(len.div_ceil(8));
        // SAFETY: the byte view covers the first `len` bytes of the words' initialised
        // memory (`len <= 8 * words.len()`); any bytes are valid `u64`s; the view ends
        // before `words` is used again.
        let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
        reader.read_exact(bytes)?;
        Ok(Backing {
            ptr: words.as_ptr().cast::<u8>(),
            len,
            owned: Some(words),
        })
    }

    /// The first `len` bytes of `file`, mapped read-only and private, its pages faulted
    /// in at once (`MAP_POPULATE`).
    #[cfg(target_os = "linux")]
    pub(crate) fn map(file: &std::fs::File, len: usize) -> std::io::Result<Backing> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Backing::read(&mut std::io::empty(), 0);
        }
        // SAFETY: a fresh read-only mapping of an open file at an address the kernel picks;
        // it aliases no Rust memory. `len` bytes of it are readable while the file is not
        // truncated (the contract above).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Backing {
            ptr: ptr.cast::<u8>().cast_const(),
            len,
            owned: None,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn map(file: &std::fs::File, len: usize) -> std::io::Result<Backing> {
        Backing::read(&mut &*file, len)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` addresses `len` readable bytes that live as long as `self` (the
        // mapping until `drop`, or the owned words) and are never written.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Whether the bytes are a mapping of the file (the page cache's pages) rather than
    /// a buffer of this process's own.
    pub(crate) fn is_mapped(&self) -> bool {
        self.owned.is_none()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.owned.is_none() && self.len > 0 {
            // SAFETY: the mapping `map` made, of `len` bytes; no array borrows it any
            // more (each holds an `Arc` of this backing).
            unsafe {
                libc::munmap(self.ptr.cast_mut().cast::<libc::c_void>(), self.len);
            }
        }
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backing")
            .field("len", &self.len)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// A model's large array: built by a compile (`Owned`), or served in place from the bytes
/// of an image (`Shared`). Reads as a slice either way.
pub(crate) enum Array<T> {
    Owned(Vec<T>),
    Shared {
        /// Keeps the bytes alive.
        _backing: std::sync::Arc<Backing>,
        ptr: *const T,
        len: usize,
    },
}

// SAFETY: a shared array reads immutable bytes its `Arc` keeps alive (`Backing` is `Send`
// and `Sync`); an owned one is a `Vec` of `Copy` values.
unsafe impl<T: Send> Send for Array<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Array<T> {}

impl<T: Plain> Array<T> {
    /// The `n` values at `offset` of `backing`, in place; `None` when they lie outside it
    /// or are not aligned for `T`.
    pub(crate) fn shared(
        backing: &std::sync::Arc<Backing>,
        offset: usize,
        n: usize,
    ) -> Option<Array<T>> {
        let bytes = n.checked_mul(size_of::<T>())?;
        if offset.checked_add(bytes)? > backing.len {
            return None;
        }
        // SAFETY: `offset` is inside the backing's bytes (or one past their end when
        // `n == 0`), checked just above.
        let ptr = unsafe { backing.ptr.add(offset) }.cast::<T>();
        if !ptr.is_aligned() {
            return None;
        }
        Some(Array::Shared {
            _backing: backing.clone(),
            ptr,
            len: n,
        })
    }
}

impl<T: Clone> Array<T> {
    /// The values to change in place (a shared array is copied first): for tests that
    /// break a model on purpose.
    #[cfg(test)]
    pub(crate) fn to_mut(&mut self) -> &mut [T] {
        if let Array::Shared { .. } = self {
            *self = Array::Owned(self.to_vec());
        }
        match self {
            Array::Owned(v) => v,
            Array::Shared { .. } => unreachable!("copied above"),
        }
    }
}

impl<T> Array<T> {
    /// Bytes this array keeps on the heap of its own (a shared array's are its backing's).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Array::Owned(v) => v.capacity() * size_of::<T>(),
            Array::Shared { .. } => 0,
        }
    }
}

impl<T> std::ops::Deref for Array<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Array::Owned(v) => v,
            // SAFETY: only `shared` makes this variant, for `T: Plain` (any bit pattern
            // is a value), after checking that the `len` values at `ptr` lie inside the
            // backing and are aligned; the backing, kept alive by the `Arc`, never
            // changes them.
            Array::Shared { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T> From<Vec<T>> for Array<T> {
    fn from(values: Vec<T>) -> Array<T> {
        Array::Owned(values)
    }
}

impl<T> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Array::Owned(v) => write!(f, "Array::Owned({} values)", v.len()),
            Array::Shared { len, .. } => write!(f, "Array::Shared({len} values)"),
        }
    }
}
