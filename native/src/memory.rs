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
/// little-endian bytes (`image`).
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
// SAFETY: `Node<f32>` is `#[repr(C)]` {f32, u32, u32}: 12 bytes, 4-aligned, no padding;
// every field accepts any bit pattern.
unsafe impl Plain for crate::tree::Node<f32> {}
// SAFETY: `Node<f64>` is `#[repr(C)]` {f64, u32, u32}: 16 bytes, 8-aligned, no padding;
// every field accepts any bit pattern.
unsafe impl Plain for crate::tree::Node<f64> {}
// SAFETY: `Weight<f32>` is `#[repr(C)]` {u32, f32}: 8 bytes, 4-aligned, no padding; both
// fields accept any bit pattern. (`Weight<f64>` has padding: it is written by columns.)
unsafe impl Plain for crate::tree::Weight<f32> {}

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

/// `n` values read from `reader` as raw bytes straight into their final buffer (marked
/// for huge pages when large): no intermediate copy. `Err` if the reader ends first.
pub(crate) fn read_plain<T: Plain>(
    reader: &mut impl std::io::Read,
    n: usize,
) -> std::io::Result<Vec<T>> {
    let mut values = zeroed::<T>(n);
    // SAFETY: `T: Plain` accepts any bit pattern and has no padding, so writing arbitrary
    // bytes over the initialised elements leaves valid values; the byte slice covers
    // exactly the vector's initialised elements and ends before `values` is used again.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), size_of_val(&values[..]))
    };
    reader.read_exact(bytes)?;
    Ok(values)
}
