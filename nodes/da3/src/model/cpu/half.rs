//! Half-precision GEMMs of the CPU's mixed precision: weights stored in bf16 (or f16),
//! activations kept in f32 and rounded to the weights' type per block, products accumulated
//! in f32 by oneMKL (`cblas_gemm_bf16bf16f32` / `cblas_gemm_f16f16f32`: AMX and
//! AVX512-BF16 kernels where the CPU has them, correct everywhere). Everything around the
//! GEMMs (LayerNorm, softmax, GELU, residuals, the camera paths) stays in f32.
//!
//! oneMKL is linked by `build.rs` when `scripts/setup.sh` installed it; without it
//! ([`super::mkl::mkl_linked`] false, or [`Tuning::mkl`] off) the ops widen half weights to f32 and
//! take the f32 kernels instead (same values up to the activations' rounding).
//!
//! [`Tuning::mkl`]: crate::tuning::Tuning::mkl

use std::cell::RefCell;

use candle_core::{bail, DType, Result, Storage, Tensor};

use super::simd::round_bf16;

/// The storage type of half-precision weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The half type of a dtype (`None` for the others).
    pub fn of(dtype: DType) -> Option<Half> {
        match dtype {
            DType::BF16 => Some(Half::Bf16),
            DType::F16 => Some(Half::F16),
            _ => None,
        }
    }

    /// The value of raw bits of this type.
    pub fn widen(self, bits: u16) -> f32 {
        match self {
            Half::Bf16 => half::bf16::from_bits(bits).to_f32(),
            Half::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }

    /// Round f32 values to this type (round to nearest even), as raw bits (bf16:
    /// `simd::round_bf16`, where f32 denormals may become zero).
    pub fn round_into(self, src: &[f32], dst: &mut [u16]) {
        match self {
            Half::Bf16 => round_bf16(src, dst),
            Half::F16 => {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = half::f16::from_f32(x).to_bits();
                }
            }
        }
    }
}

/// Whether the half kernels apply to `weight` now: a bf16/f16 tensor, and oneDNN runs its
/// type here (`onednn::runs`) or oneMKL is linked and [`crate::tuning::Tuning::mkl`] on.
pub fn use_half_kernels(weight: &Tensor) -> bool {
    Half::of(weight.dtype()).is_some_and(|kind| {
        super::onednn::runs(kind.into()) || (super::mkl::mkl_linked() && crate::tuning::get().mkl)
    })
}

/// The half GEMM of [`super::mkl::gemm_xwt`] in f32 (both operands widened), for a shape no
/// half kernel took: same products, as slow as f32 plus the widening.
///
/// # Safety
/// As `super::mkl::gemm_xwt`.
#[cfg_attr(da3_mkl, allow(dead_code))]
pub(super) unsafe fn gemm_xwt_widened(
    kind: Half,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: &[u16],
    w: &[u16],
) {
    let widen = |h: &[u16]| -> Vec<f32> { h.iter().map(|&b| kind.widen(b)).collect() };
    let (x, w) = (widen(&lhs[..m * k]), widen(&w[..n * k]));
    super::buffers::sgemm(
        (m, n, k),
        super::buffers::Mat::rows(dst, ldd),
        accumulate,
        super::buffers::Mat::rows(x.as_ptr(), k),
        super::buffers::Mat::cols(w.as_ptr(), k),
        1.0,
    );
}

/// Run `f` on the raw bits of a contiguous bf16/f16 CPU tensor.
pub(super) fn with_half<R>(t: &Tensor, f: impl FnOnce(Half, &[u16]) -> Result<R>) -> Result<R> {
    let Some(kind) = Half::of(t.dtype()) else {
        bail!("da3 half kernel: {:?} weights", t.dtype());
    };
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    let Storage::Cpu(cs) = &*st else {
        bail!("da3 half kernel: tensor is not on the CPU");
    };
    let bits: &[u16] = match kind {
        Half::Bf16 => bytemuck_u16(cs.as_slice::<half::bf16>()?),
        Half::F16 => bytemuck_u16(cs.as_slice::<half::f16>()?),
    };
    f(kind, &bits[l.start_offset()..])
}

fn bytemuck_u16<T: Copy>(s: &[T]) -> &[u16] {
    debug_assert_eq!(std::mem::size_of::<T>(), 2);
    // SAFETY: bf16 and f16 are `repr(transparent)` over u16.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

thread_local! {
    static SCRATCH16: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with `src` rounded to `kind` in a thread-local buffer (reused across calls).
pub(super) fn with_rounded<R>(kind: Half, src: &[f32], f: impl FnOnce(&[u16]) -> R) -> R {
    with_rounded_rows(kind, src, (1, src.len(), src.len()), f)
}

/// [`with_rounded`] of `max(src, 0)` where `relu` (the ReLU before a half-precision
/// convolution), without an f32 copy of the whole input.
pub(super) fn with_rounded_relu<R>(
    kind: Half,
    src: &[f32],
    relu: bool,
    f: impl FnOnce(&[u16]) -> R,
) -> R {
    if !relu {
        return with_rounded(kind, src, f);
    }
    SCRATCH16.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < src.len() {
            v.resize(src.len(), 0);
        }
        let mut tmp = [0f32; 256];
        for (s, d) in src.chunks(256).zip(v.chunks_mut(256)) {
            let t = &mut tmp[..s.len()];
            for (t, s) in t.iter_mut().zip(s) {
                *t = s.max(0.0);
            }
            kind.round_into(t, d);
        }
        f(&v[..src.len()])
    })
}

/// [`with_rounded`] of `rows` rows of `cols` values, `stride` apart in `src`: the rounded
/// rows packed (`rows · cols` values).
pub(super) fn with_rounded_rows<R>(
    kind: Half,
    src: &[f32],
    (rows, cols, stride): (usize, usize, usize),
    f: impl FnOnce(&[u16]) -> R,
) -> R {
    let len = rows * cols;
    SCRATCH16.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < len {
            v.resize(len, 0);
        }
        for (r, dst) in v[..len].chunks_mut(cols.max(1)).enumerate() {
            kind.round_into(&src[r * stride..r * stride + cols], dst);
        }
        f(&v[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::super::mkl::{gemm_xwt, mkl_linked};
    use super::*;

    #[test]
    fn bf16_rounding_is_nearest_even() {
        let xs = [
            1.0f32,
            -2.5,
            1.0 + 1.0 / 256.0, // halfway between two bf16 values: to even (1.0)
            1.0 + 3.0 / 256.0, // halfway: to even (1 + 4/256)
            1.0 + 1.0 / 256.0 + 1e-7, // above halfway: up
            f32::INFINITY,
            f32::NAN,
            3.0e38,
        ];
        let mut got = [0u16; 8];
        Half::Bf16.round_into(&xs, &mut got);
        for (x, g) in xs.iter().zip(got) {
            let want = half::bf16::from_f32(*x);
            if x.is_nan() {
                assert!(half::bf16::from_bits(g).is_nan());
            } else {
                assert_eq!(g, want.to_bits(), "{x}");
            }
        }
    }

    #[test]
    fn half_gemm_equals_f32_products_of_the_rounded_values() {
        if !mkl_linked() {
            eprintln!("oneMKL not linked: skipped");
            return;
        }
        let (m, n, k) = (37, 29, 70);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.021)
            .collect();
        for kind in [Half::Bf16, Half::F16] {
            let (mut xh, mut wh) = (vec![0u16; m * k], vec![0u16; n * k]);
            kind.round_into(&x, &mut xh);
            kind.round_into(&w, &mut wh);
            let widen =
                |h: &[u16]| -> Vec<f64> { h.iter().map(|&b| kind.widen(b) as f64).collect() };
            let (xf, wf) = (widen(&xh), widen(&wh));
            let mut out = vec![1.0f32; m * (n + 3)];
            unsafe { gemm_xwt(kind, (m, n, k), out.as_mut_ptr(), n + 3, true, &xh, &wh) };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 =
                        1.0 + (0..k).map(|p| xf[i * k + p] * wf[j * k + p]).sum::<f64>();
                    let got = out[i * (n + 3) + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{kind:?} ({i},{j}): {got} vs {want}"
                    );
                }
                for j in n..n + 3 {
                    assert_eq!(out[i * (n + 3) + j], 1.0, "wrote past n");
                }
            }
        }
    }
}
