//! Allocator settings for repeated forwards on the CPU.

use std::sync::Once;

/// Let the allocator keep freed memory for the next frame instead of returning it to the
/// system: every forward allocates the same buffers again, and fresh pages from the kernel
/// cost a page fault and a zeroing each (~5% of a forward on CPU). Peak RSS is unchanged;
/// RSS stays at the peak between frames. glibc only; [`Tuning::keep_memory`] off turns it
/// off (it applies once, at the first call with it on).
///
/// [`Tuning::keep_memory`]: crate::tuning::Tuning::keep_memory
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    if !crate::tuning::get().keep_memory {
        return;
    }
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            // Blocks up to 1 GiB come from the heap (reused), and the heap top is not trimmed.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}
