//! What every kernel shares: host views of tensors, output and scratch buffers, the
//! single-threaded GEMM call (one typed wrapper over `gemm::gemm` for every operand
//! orientation) and how work is split into tasks.

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Run `f` on the f32 data of a CPU tensor (with its layout).
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cs) => f(cs.as_slice::<f32>()?, l),
        _ => bail!("da3 cpu kernel: tensor is not on the CPU"),
    }
}

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    Ok(&data[l.start_offset()..])
}

/// The f32 data of a contiguous input (the kernels' common entry check).
pub(super) fn contiguous_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    if !l.is_contiguous() {
        bail!("{op}: input must be contiguous");
    }
    f32_slice(s, l)
}

/// A layer's bias as host values.
pub(super) fn bias_values(bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    bias.map(|b| b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>())
        .transpose()
}

/// A raw pointer that tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
pub(super) struct SyncPtr(pub(super) *mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A kernel's output buffer of `n` floats, left unzeroed: every kernel below writes each
/// element before anything reads it, and zeroing first (glibc's calloc memsets reused
/// memory, on the calling thread) cost ~2.5% of a DA3-SMALL forward. Debug builds (the
/// tests) fill it with NaN instead, so that an element a kernel missed shows up there.
pub(super) fn output_buffer(n: usize) -> Vec<f32> {
    if cfg!(debug_assertions) {
        return vec![f32::NAN; n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns and the callers write all `n` values before
    // reading any (checked by the NaN fill in debug builds).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(n)
    };
    v
}

/// Run `f` with a thread-local scratch buffer of at least `n` floats (reused across calls).
pub(super) fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < n {
            v.resize(n, 0.0);
        }
        f(&mut v[..n])
    })
}

/// A strided matrix operand of [`sgemm`]: element (r, c) at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat<P> {
    pub(super) ptr: P,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

impl<P: Copy> Mat<P> {
    /// Row-major: rows `ld` floats apart, unit column stride.
    pub(super) fn rows(ptr: P, ld: usize) -> Self {
        Self::strided(ptr, ld as isize, 1)
    }

    /// Column-major (a row-major matrix read transposed): columns `ld` floats apart.
    pub(super) fn cols(ptr: P, ld: usize) -> Self {
        Self::strided(ptr, 1, ld as isize)
    }

    /// Any row and column strides.
    pub(super) fn strided(ptr: P, rs: isize, cs: isize) -> Self {
        Self { ptr, rs, cs }
    }
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, single-threaded (callers split the
/// work); `accumulate` adds to what `dst` holds.
///
/// # Safety
/// Every operand must be valid for its shape and strides, and `dst` writable and not
/// aliased by the others.
pub(super) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: Mat<*mut f32>,
    accumulate: bool,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.cs,
        dst.rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        if accumulate { 1.0 } else { 0.0 },
        scale,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// Split `n` items into chunks of at least `min` so that there are about `4 × threads` tasks.
pub(super) fn chunk_len(n: usize, min: usize) -> usize {
    chunk_len_tasks(n, min, 4)
}

/// Like [`chunk_len`] with `per_thread` tasks per thread.
pub(super) fn chunk_len_tasks(n: usize, min: usize, per_thread: usize) -> usize {
    let tasks = per_thread * rayon::current_num_threads().max(1);
    n.div_ceil(tasks).max(min).min(n.max(1))
}

/// (B, C, h, w) values channels last, (B, h, w, C); one row of one view per task.
pub(super) fn channels_last(xs: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f32> {
    let (b, c, h, w) = dims;
    let mut xt = output_buffer(b * c * h * w);
    xt.par_chunks_mut(w * c)
        .enumerate()
        .for_each(|(vy, dst)| channels_last_row(xs, dims, vy, dst));
    xt
}

/// Row `vy` (view `vy / h`, row `vy % h`) of (B, C, h, w) values channels last into `dst`
/// (`w × C` values).
pub(super) fn channels_last_row(
    xs: &[f32],
    (_, c, h, w): (usize, usize, usize, usize),
    vy: usize,
    dst: &mut [f32],
) {
    let (v, y) = (vy / h, vy % h);
    let at = |ch: usize| ((v * c + ch) * h + y) * w;
    // 8 pixels at a time: short runs read from each channel's row, whole cache lines
    // written (1.6x faster than a channel at a time).
    for x0 in (0..w).step_by(8) {
        let n = (w - x0).min(8);
        for ch in 0..c {
            for (i, s) in xs[at(ch) + x0..][..n].iter().enumerate() {
                dst[(x0 + i) * c + ch] = *s;
            }
        }
    }
}
