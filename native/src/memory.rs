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
