//! The allocator's set-up every long-running binary shares.

/// Sets glibc's allocator up so RSS follows what the process holds: blocks of 1 MiB and
/// more (model arrays, ONNX Runtime initializers, load buffers, a many-model request's
/// body) are always their own mappings, returned to the OS the moment they are freed, and
/// at most two arenas hold the rest. Without it glibc raises its mmap threshold to 32 MiB
/// after the first large free, and transient memory stays in the heap until a trim
/// (measured in the scorer: peak RSS 2.5 budgets during a burst of ONNX Runtime loads; in
/// the proxy: a flood of maximal many-model requests). Call before any thread starts.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}
