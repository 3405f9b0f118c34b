//! Linear layers: `y = x · Wᵀ + b` with the pre-norm LayerNorm, exact GELU and
//! LayerScale + residual fused around the GEMM, in cache-sized row blocks.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::buffers::{
    bias_values, chunk_len_tasks, contiguous_f32, output_buffer, sgemm, with_f32, with_scratch, Mat,
};
use super::half::{with_half, with_rounded, Half};
use super::mkl::{gemm_xwt, sgemm as mkl_sgemm};
use super::norm::{norm_rows, Norm};
use super::onednn::{self, untyped, Rhs};
use super::profile::timed;
use super::simd::gelu_inplace;

/// A linear layer's weight as the GEMM's right-hand side (K×N): f32 in any layout with a
/// unit stride ([`weight_layout`]'s, or the checkpoint's (N, K) rows), or bf16/f16 bits in
/// (N, K) rows (mixed precision).
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// The data from the first element, and its K×N strides: (rows, columns).
    F32(&'a [f32], (isize, isize)),
    Half(Half, &'a [u16]),
}

/// Floats of padding after each row of [`weight_layout`]'s (K, N + pad) buffer: a row
/// stride of exactly N floats is a multiple of 4 KiB for N = 1024 or 3072, and the GEMM's
/// reads of a block of rows would then fall into the same cache sets.
const WEIGHT_ROW_PAD: usize = 16;

/// An f32 linear weight `(out, in)` in the layout the linear layers read fastest here: the
/// transpose, `in` rows of `out` values (padded by `WEIGHT_ROW_PAD`), returned as the same
/// `(out, in)` tensor, a strided view of that buffer (every op reads it as before).
///
/// oneDNN's matmul reads these rows in place; given the checkpoint's `(out, in)` rows it
/// copies the whole weight into its own layout on every call (3-4% of a DA3-SMALL or
/// DA3-BASE forward, AMD EPYC Zen 4). Unpadded rows were 2% slower than the copy.
pub fn weight_layout(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let ld = n + WEIGHT_ROW_PAD;
    let src = w.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let mut t = vec![0f32; k * ld];
    with_f32(&src, |w, l| {
        let w = &w[l.start_offset()..l.start_offset() + n * k];
        // Bands of B output rows over the threads, square blocks within (both sides stay
        // in cache).
        const B: usize = 32;
        t.par_chunks_mut(B * ld).enumerate().for_each(|(bi, band)| {
            let c0 = bi * B;
            for r0 in (0..n).step_by(B) {
                for (ci, trow) in band.chunks_mut(ld).enumerate() {
                    for (r, v) in (r0..(r0 + B).min(n)).zip(&mut trow[r0..]) {
                        *v = w[r * k + c0 + ci];
                    }
                }
            }
        });
        Ok(())
    })?;
    Tensor::from_vec(t, (k, ld), w.device())?
        .narrow(1, 0, n)?
        .t()
}

/// `y = x · Wᵀ + b` (optionally GELU) over the last dim of a contiguous f32 tensor; the
/// weight f32, or bf16/f16 with the activations rounded to it per block ([`super::half`]).
struct LinearOp<'a> {
    weight: &'a Tensor, // (N, K)
    bias: Option<&'a Tensor>,
    gelu: bool,
    /// `res + gamma ⊙ y` (residual with LayerScale) instead of `y`.
    residual: Option<(&'a Tensor, Vec<f32>)>,
    /// LayerNorm (weight, bias, eps) of the input rows first (pre-norm blocks).
    prenorm: Option<(Vec<f32>, Vec<f32>, f32)>,
    /// Tasks per thread ([`crate::tuning::Tuning::linear_tasks`]).
    tasks: usize,
    /// Rows per fused sub-block ([`crate::tuning::Tuning::linear_sub_rows`]).
    sub_rows: usize,
    /// Half weights in oneDNN's layout ([`LinearExt::packed`]).
    packed: Option<&'a PackedWeight>,
    /// f32 GEMMs by oneMKL ([`crate::tuning::Tuning::mkl_f32`] on an AVX-512 CPU).
    mkl_f32: bool,
    /// GEMMs by oneDNN first: `(f32, half)` ([`dnnl`]).
    dnnl: (bool, bool),
}

/// Whether the linear layers' GEMMs go to oneDNN ([`super::onednn`]), as `(f32 weights,
/// half weights)`: asked for ([`crate::tuning::Tuning::dnnl`]) and loaded; f32 only on
/// AVX-512 CPUs (measured faster than the `gemm` crate there, not measured on AVX2 ones).
pub(super) fn dnnl(t: &crate::tuning::Tuning) -> (bool, bool) {
    if !(t.dnnl && onednn::enabled()) {
        return (false, false);
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return (true, true);
    }
    (false, true)
}

/// Whether the linear layers' f32 GEMMs go to oneMKL: asked for and on an AVX-512 CPU, where
/// it was measured faster than the `gemm` crate (1.16x on these shapes, Intel Xeon, Emerald
/// Rapids class; the convolutions' and attention's GEMMs were not faster and keep the crate).
fn mkl_f32(t: &crate::tuning::Tuning) -> bool {
    #[cfg(target_arch = "x86_64")]
    if t.mkl_f32 && std::is_x86_feature_detected!("avx512f") {
        return true;
    }
    false
}

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "da3-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-linear", s, l)?;
        let dims = l.dims();
        let k = *dims.last().unwrap_or(&0);
        let m = l.shape().elem_count() / k.max(1);
        let (n, wk) = self.weight.dims2()?;
        if wk != k {
            bail!("da3-linear: input has {k} features, weight expects {wk}");
        }
        if let Some((w, b, _)) = &self.prenorm {
            if w.len() != k || b.len() != k {
                bail!("da3-linear: norm of {} features for {k} inputs", w.len());
            }
        }
        let mut out = output_buffer(m * n);
        let bias = bias_values(self.bias)?;
        // f32 weights in their own layout (strided, [`weight_layout`]), half ones in rows.
        let w_c = match Half::of(self.weight.dtype()) {
            Some(_) => self.weight.contiguous()?,
            None => self.weight.clone(),
        };
        let res_c = match &self.residual {
            Some((r, g)) => {
                if r.elem_count() != m * n || g.len() != n {
                    bail!(
                        "da3-linear: residual {:?} does not match the output",
                        r.dims()
                    );
                }
                Some((r.contiguous()?, g))
            }
            None => None,
        };
        let res_guard = res_c.as_ref().map(|(r, _)| r.storage_and_layout());
        let res: Option<(&[f32], &Vec<f32>)> = match (&res_guard, &res_c) {
            (Some((st, rl)), Some((_, g))) => match &**st {
                Storage::Cpu(cs) => Some((&cs.as_slice::<f32>()?[rl.start_offset()..], *g)),
                _ => bail!("da3-linear: residual is not on the CPU"),
            },
            _ => None,
        };
        let mut run = |w: Weights| -> Result<()> {
            // Each task packs the whole weight: few, large tasks.
            let rows = chunk_len_tasks(m, 16, self.tasks.max(1));
            let sub_rows = self.sub_rows.max(8);
            let xp = x.as_ptr() as usize;
            out.par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(ci, o_task)| {
                    // Sub-blocks of rows so the normalised input and the epilogue (GELU,
                    // residual) stay in cache. The weight is read in place (unit row stride,
                    // at most 2048 rows a call), so sub-blocks cost no extra packing.
                    let sub = if self.gelu || res.is_some() || self.prenorm.is_some() {
                        sub_rows
                    } else {
                        usize::MAX
                    };
                    for (si, o) in o_task.chunks_mut(sub.saturating_mul(n).max(n)).enumerate() {
                        let r0 = ci * rows + si * sub.min(rows);
                        let mr = o.len() / n;
                        let xrows = unsafe {
                            std::slice::from_raw_parts((xp as *const f32).add(r0 * k), mr * k)
                        };
                        // oneDNN first, the bias and GELU fused into its epilogue; the other
                        // kernels accumulate onto the bias, then `gelu_inplace`. Returns
                        // whether the GELU is done.
                        let ep = onednn::Epilogue {
                            accumulate: false,
                            bias: bias.is_some(),
                            gelu: self.gelu,
                        };
                        let fill_bias = |o: &mut [f32]| {
                            if let Some(b) = &bias {
                                for row in o.chunks_mut(n) {
                                    row.copy_from_slice(b);
                                }
                            }
                        };
                        let acc = bias.is_some();
                        let dims = (mr, n, k);
                        let gemm_from = |lhs: &[f32], o: &mut [f32]| -> bool {
                            let dst = Mat::rows(o.as_mut_ptr(), n);
                            match w {
                                Weights::F32(w, (rs, cs)) => unsafe {
                                    let a = Mat::rows(lhs.as_ptr(), k);
                                    let b = Mat::strided(w.as_ptr(), rs, cs);
                                    let (ua, ub) = (untyped(a), untyped(b));
                                    let f32_in = onednn::Input::F32;
                                    let b_ = bias.as_deref();
                                    if self.dnnl.0
                                        && onednn::matmul_ext(
                                            f32_in,
                                            dims,
                                            dst,
                                            ep,
                                            b_,
                                            ua,
                                            Rhs::Strided(ub),
                                        )
                                    {
                                        return true;
                                    }
                                    fill_bias(o);
                                    if !(self.mkl_f32 && mkl_sgemm(dims, dst, acc, a, b, 1.0)) {
                                        sgemm(dims, dst, acc, a, b, 1.0)
                                    }
                                    false
                                },
                                // Activations rounded to the weights' type, f32 accumulation.
                                Weights::Half(kind, w) => with_rounded(kind, lhs, |lh| unsafe {
                                    let a = untyped(Mat::rows(lh.as_ptr(), k));
                                    let b = untyped(Mat::cols(w.as_ptr(), k));
                                    let b_ = bias.as_deref();
                                    let mm = |rhs| {
                                        onednn::matmul_ext(kind.into(), dims, dst, ep, b_, a, rhs)
                                    };
                                    let packed = self.packed.map(|p| Rhs::Packed(&p.0));
                                    if self.dnnl.1
                                        && (packed.is_some_and(mm) || mm(Rhs::Strided(b)))
                                    {
                                        return true;
                                    }
                                    fill_bias(o);
                                    gemm_xwt(kind, dims, o.as_mut_ptr(), n, acc, lh, w);
                                    false
                                }),
                            }
                        };
                        let gelu_done = match &self.prenorm {
                            Some((nw, nb, eps)) => with_scratch(mr * k, |t| {
                                norm_rows(xrows, k, (nw, nb, *eps), t);
                                gemm_from(t, o)
                            }),
                            None => gemm_from(xrows, o),
                        };
                        if self.gelu && !gelu_done {
                            gelu_inplace(o);
                        }
                        if let Some((rv, g)) = res {
                            let rr = &rv[r0 * n..(r0 + mr) * n];
                            for (orow, rrow) in o.chunks_mut(n).zip(rr.chunks(n)) {
                                for ((y, r), gj) in orow.iter_mut().zip(rrow).zip(g.iter()) {
                                    *y = r + gj * *y;
                                }
                            }
                        }
                    }
                });
            Ok(())
        };
        match Half::of(w_c.dtype()) {
            Some(_) => with_half(&w_c, |kind, w| run(Weights::Half(kind, w)))?,
            None => with_f32(&w_c, |w, wl| {
                // (N, K) with strides (s_n, s_k), read as K×N: rows s_k apart, columns s_n.
                let (s_n, s_k) = match wl.stride() {
                    [s_n, s_k] if *s_n == 1 || *s_k == 1 => (*s_n, *s_k),
                    st => bail!("da3-linear: weight strides {st:?} have no unit stride"),
                };
                let span = match (n, k) {
                    (0, _) | (_, 0) => 0,
                    _ => (n - 1) * s_n + (k - 1) * s_k + 1,
                };
                if w.len() < wl.start_offset() + span {
                    bail!("da3-linear: weight storage shorter than its layout");
                }
                let w = &w[wl.start_offset()..];
                run(Weights::F32(w, (s_k as isize, s_n as isize)))
            })?,
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// What a linear layer does around its GEMM (all optional): fused on the CPU path, applied
/// in this order by candle's ops otherwise.
#[derive(Default, Clone, Copy)]
pub struct LinearExt<'a> {
    /// LayerNorm of the input first (pre-norm blocks).
    pub prenorm: Option<Norm<'a>>,
    /// Exact-erf GELU of the output.
    pub gelu: bool,
    /// `res + gamma ⊙ y` (residual with LayerScale).
    pub residual: Option<(&'a Tensor, &'a Tensor)>,
    /// The same weight, bf16/f16, in oneDNN's layout ([`pack_weight`]): read where oneDNN
    /// runs the GEMM, instead of its per-call copy.
    pub packed: Option<&'a PackedWeight>,
}

/// A linear layer's half-precision (mixed precision) weight, reordered once into the layout
/// oneDNN's matmul reads in place. Given the `(out, in)` rows, oneDNN copies the whole
/// weight into that layout on every call (for `vdpbf16ps` and AMX the copy also interleaves
/// pairs of rows, so no plain layout avoids it). Kept beside the rows, which the other
/// kernels read: the layer's half weights take twice their size.
pub struct PackedWeight(onednn::Packed);

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `w` `(out, in)`, bf16/f16 on the CPU, packed for oneDNN ([`PackedWeight`]) where oneDNN
/// runs that type here; `None` for other weights, or without oneDNN.
pub fn pack_weight(w: &Tensor) -> Result<Option<PackedWeight>> {
    let Some(kind) = Half::of(w.dtype()) else {
        return Ok(None);
    };
    if !w.device().is_cpu() || !onednn::runs(kind.into()) {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    with_half(w, |kind, bits| {
        // SAFETY: `bits` holds the (n, k) rows, read as k×n with unit row stride.
        let rows = untyped(Mat::cols(bits.as_ptr(), k));
        Ok(unsafe { onednn::pack(kind.into(), n, k, rows) }.map(PackedWeight))
    })
}

/// `[res + gamma ⊙] [gelu](norm?(x) · Wᵀ + b)` over the last dim.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    ext: LinearExt<'_>,
) -> Result<Tensor> {
    let (n, k) = weight.dims2()?;
    let flops = 2.0 * (x.elem_count() / k.max(1)) as f64 * (n * k) as f64;
    let name = match (ext.prenorm.is_some(), ext.gelu, ext.residual.is_some()) {
        (true, true, _) => "norm+linear+gelu",
        (true, false, _) => "norm+linear",
        (false, true, _) => "linear+gelu",
        (false, false, true) => "linear+residual",
        (false, false, false) => "linear",
    };
    timed(name, flops, || {
        let residual = match ext.residual {
            Some((r, g)) => Some((r, g.flatten_all()?.to_vec1()?)),
            None => None,
        };
        let prenorm = ext.prenorm.map(|n| n.host()).transpose()?;
        let t = crate::tuning::get();
        x.contiguous()?.apply_op1_no_bwd(&LinearOp {
            weight,
            bias,
            gelu: ext.gelu,
            residual,
            prenorm,
            tasks: t.linear_tasks,
            sub_rows: t.linear_sub_rows,
            mkl_f32: mkl_f32(&t),
            dnnl: dnnl(&t),
            packed: ext.packed,
        })
    })
}

/// Best GFLOP/s of a large square-ish f32 matmul split over the thread pool the same way
/// as the linear layers (the practical GEMM peak of this machine for these kernels).
pub fn matmul_peak_gflops() -> f64 {
    let (m, k, n) = (2048usize, 1024usize, 1024usize);
    let x = Tensor::from_vec(
        (0..m * k)
            .map(|i| (i % 13) as f32 * 0.01)
            .collect::<Vec<_>>(),
        (m, k),
        &candle_core::Device::Cpu,
    );
    let w = Tensor::from_vec(
        (0..n * k)
            .map(|i| (i % 7) as f32 * 0.01)
            .collect::<Vec<_>>(),
        (n, k),
        &candle_core::Device::Cpu,
    )
    .and_then(|w| weight_layout(&w));
    let (Ok(x), Ok(w)) = (x, w) else {
        return 0.0;
    };
    let tuning = crate::tuning::get();
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = std::time::Instant::now();
        if x.apply_op1_no_bwd(&LinearOp {
            weight: &w,
            bias: None,
            gelu: false,
            residual: None,
            prenorm: None,
            tasks: tuning.linear_tasks,
            sub_rows: tuning.linear_sub_rows,
            mkl_f32: mkl_f32(&tuning),
            dnnl: dnnl(&tuning),
            packed: None,
        })
        .is_err()
        {
            return 0.0;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::layer_norm;
    use crate::testing::{max_rel_err, rand};

    #[test]
    fn linear_matches_candle() {
        let x = rand(&[3, 37, 24], 1);
        let w = rand(&[50, 24], 2);
        let b = rand(&[50], 3);
        let got = linear(&x, &w, Some(&b), LinearExt::default()).unwrap();
        let want = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
        let ext = LinearExt {
            gelu: true,
            ..Default::default()
        };
        let got = linear(&x, &w, None, ext).unwrap();
        let want = x
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .gelu_erf()
            .unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
    }

    #[test]
    fn linear_with_norm_and_residual_matches_candle() {
        let x = rand(&[2, 33, 24], 20);
        let w = rand(&[24, 24], 21);
        let b = rand(&[24], 22);
        let (nw, nb) = (rand(&[24], 23), rand(&[24], 24));
        let g = rand(&[24], 25);
        let ext = LinearExt {
            prenorm: Some(Norm::new(&nw, &nb, 1e-6)),
            residual: Some((&x, &g)),
            ..Default::default()
        };
        let got = linear(&x, &w, Some(&b), ext).unwrap();
        let xn = layer_norm(&x, Norm::new(&nw, &nb, 1e-6)).unwrap();
        let y = xn
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let want = (&x + y.broadcast_mul(&g).unwrap()).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-5);
    }

    #[test]
    fn weights_in_the_kernels_layout_give_the_same_products() {
        // n = 1024: unpadded, the transposed rows would be exactly 4 KiB apart.
        for (n, k) in [(50usize, 24usize), (1024, 40)] {
            let x = rand(&[2, 37, k], 30);
            let w = rand(&[n, k], 31);
            let b = rand(&[n], 32);
            let wl = weight_layout(&w).unwrap();
            assert_eq!(wl.dims(), w.dims());
            assert!(!wl.is_contiguous(), "a strided view of the transposed rows");
            assert_eq!(max_rel_err(&wl.contiguous().unwrap(), &w), 0.0);
            let want = x
                .broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            // candle's ops read the view as they read any tensor
            let got = x
                .broadcast_matmul(&wl.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert!(max_rel_err(&got, &want) < 1e-6, "candle {n}x{k}");
            // each GEMM: oneDNN (where loaded), oneMKL (where linked), the `gemm` crate
            for (dnnl, mkl_f32) in [
                ((true, true), false),
                ((false, false), true),
                Default::default(),
            ] {
                let op = LinearOp {
                    weight: &wl,
                    bias: Some(&b),
                    gelu: false,
                    residual: None,
                    prenorm: None,
                    tasks: 1,
                    sub_rows: 16,
                    mkl_f32,
                    dnnl,
                    packed: None,
                };
                let got = x.apply_op1_no_bwd(&op).unwrap();
                let e = max_rel_err(&got, &want);
                assert!(e < 1e-6, "{n}x{k} dnnl {dnnl:?} mkl {mkl_f32}: {e}");
            }
        }
        // A weight view without a unit stride is refused, not misread.
        let w = rand(&[50, 24, 2], 33)
            .narrow(2, 0, 1)
            .unwrap()
            .squeeze(2)
            .unwrap();
        let x = rand(&[37, 24], 34);
        let e = linear(&x, &w, None, LinearExt::default()).unwrap_err();
        assert!(format!("{e}").contains("no unit stride"), "{e}");
    }

    #[test]
    fn packed_half_weights_are_what_onednn_reads() {
        let bf16 = |t: Tensor| t.to_dtype(candle_core::DType::BF16).unwrap();
        let x = rand(&[2, 37, 40], 40);
        let b = rand(&[64], 41);
        let (w, w2) = (bf16(rand(&[64, 40], 42)), bf16(rand(&[64, 40], 43)));
        let Some(p2) = pack_weight(&w2).unwrap() else {
            // Nothing to pack where oneDNN does not run bf16 (no AVX512-BF16 / AMX here).
            assert!(!onednn::runs(onednn::Input::Bf16));
            return;
        };
        assert!(
            pack_weight(&rand(&[64, 40], 44)).unwrap().is_none(),
            "f32 is not packed"
        );
        let ext = |p| LinearExt {
            packed: p,
            ..Default::default()
        };
        let want2 = linear(&x, &w2, Some(&b), ext(None)).unwrap();
        // Given beside `w`, the packed `w2` is what the GEMM reads: it replaces the rows.
        let got = linear(&x, &w, Some(&b), ext(Some(&p2))).unwrap();
        let e = max_rel_err(&got, &want2);
        assert!(e < 1e-6, "packed weights not read as packed: {e}");
        let want = linear(&x, &w, Some(&b), ext(None)).unwrap();
        assert!(max_rel_err(&want, &want2) > 1e-2);
        // A packed weight of another shape is not read: the rows are.
        let p3 = pack_weight(&bf16(rand(&[32, 40], 45))).unwrap();
        let got = linear(&x, &w, Some(&b), ext(p3.as_ref())).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);
    }
}
