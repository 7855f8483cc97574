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

/// The bytes of `values` as they lie in memory.
pub(crate) fn as_bytes<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so every byte of the slice is initialised; the
    // byte slice covers exactly the same memory and lives as long as `values`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
}

/// `n` values read from `reader` as raw bytes straight into their final buffer (marked
/// for huge pages when large): no intermediate copy. `Err` if the reader ends first.
pub(crate) fn read_plain<T: Plain + Default>(
    reader: &mut impl std::io::Read,
    n: usize,
) -> std::io::Result<Vec<T>> {
    let mut values = vec_filled(T::default(), n);
    // SAFETY: `T: Plain` accepts any bit pattern and has no padding, so writing arbitrary
    // bytes over the initialised elements leaves valid values; the byte slice covers
    // exactly the vector's initialised elements and ends before `values` is used again.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), size_of_val(&values[..]))
    };
    reader.read_exact(bytes)?;
    Ok(values)
}
