//! Blocked attention: per (batch, head, query block) task, an online softmax over key
//! blocks in base 2, never more than one `q_block × k_block` score block per thread.

use std::cell::RefCell;
use std::sync::Once;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{f32_slice, output_buffer, sgemm, with_scratch, Mat, SyncPtr};
use super::half::Half;
use super::onednn::{self, untyped};
use super::profile::timed;
use super::simd::{exp2_sub_bf16_sum, exp2_sub_sum, row_max};
use crate::tuning::Q_BLOCK_MAX;

/// Let the GEMM read a column-major lhs in place for output blocks up to 64·NR columns
/// (the attention's `vᵀ`); the default packs it past 8·NR.
fn unpacked_lhs_ok() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if gemm::get_lhs_packing_threshold_single_thread() < 64 {
            gemm::set_lhs_packing_threshold_single_thread(64);
        }
    });
}

/// softmax(q·kᵀ·scale)·v for q, k, v of shape (B, H, N, d) with any strides; the result is
/// (B, N, H·d), ready for the output projection.
struct AttentionOp {
    scale: f32,
    /// Queries per block, at most [`Q_BLOCK_MAX`] (the running max and sum per query row
    /// live on the stack). 512 rather than 128 makes `p · v` (n = queries) run at the GEMM's
    /// peak instead of ~75% of it (DA3-SMALL, d = 64).
    q_block: usize,
    /// Keys per block of the online softmax (the score block stays in L2).
    k_block: usize,
    /// The two products with inputs rounded to this type, f32 accumulation, by oneDNN
    /// (mixed precision; the softmax stays f32); `None`: f32.
    half: Option<Half>,
}

thread_local! {
    /// A task's half-precision operands: its q block and one probability block.
    static HALF_SCRATCH: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Round the `rows × d` matrix at `src` (strides `rs`, `cs`) times `scale` to `kind`,
/// row-major into `dst`.
unsafe fn round_rows(
    kind: Half,
    src: *const f32,
    (rs, cs): (usize, usize),
    (rows, d): (usize, usize),
    scale: f32,
    dst: &mut [u16],
) {
    let mut row = vec![0f32; d];
    for (r, out) in dst[..rows * d].chunks_mut(d).enumerate() {
        copy_row(src.add(r * rs), cs, scale, &mut row);
        kind.round_into(&row, out);
    }
}

/// `dst[j] = scale · src[j · cs]`; a plain slice loop (vectorised) when `cs` is 1, as for q
/// after the norm / RoPE and for the rows of the qkv output.
#[inline]
unsafe fn copy_row(src: *const f32, cs: usize, scale: f32, dst: &mut [f32]) {
    if cs == 1 {
        let s = std::slice::from_raw_parts(src, dst.len());
        for (v, x) in dst.iter_mut().zip(s) {
            *v = x * scale;
        }
    } else {
        for (j, v) in dst.iter_mut().enumerate() {
            *v = *src.add(j * cs) * scale;
        }
    }
}

fn strides4(l: &Layout) -> Result<[usize; 4]> {
    let s = l.stride();
    if s.len() != 4 {
        bail!("da3-attention: expected (B, H, N, d), got {:?}", l.dims());
    }
    Ok([s[0], s[1], s[2], s[3]])
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "da3-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, n, d) = lq.shape().dims4()?;
        let (bk, hk, nk, dk) = lk.shape().dims4()?;
        if (bk, hk, dk) != (b, h, d) || lv.shape().dims4()? != (b, h, nk, d) {
            bail!("da3-attention: q/k/v shapes do not match");
        }
        let (q, k, v) = (f32_slice(sq, lq)?, f32_slice(sk, lk)?, f32_slice(sv, lv)?);
        let (qs, ks, vs) = (strides4(lq)?, strides4(lk)?, strides4(lv)?);
        let c = h * d;
        let mut out = output_buffer(b * n * c);
        let optr = SyncPtr(out.as_mut_ptr());
        let qblk = self.q_block.clamp(8, Q_BLOCK_MAX);
        unpacked_lhs_ok();
        let nqb = n.div_ceil(qblk);
        let (qp, kp, vp) = (
            q.as_ptr() as usize,
            k.as_ptr() as usize,
            v.as_ptr() as usize,
        );
        let half = self.half.filter(|&k| onednn::runs(k.into()));
        // bf16 probabilities are rounded in the softmax's 2^x pass (`p16`; the f32 scores
        // then stay scores), other half types from the f32 probabilities after it.
        let fused_bf16 = half == Some(Half::Bf16);
        // Half precision: k and v rounded once per call, each head contiguous (nk × d), for
        // every query block of the head to read (empty in f32).
        let (k16_all, v16_all) = match half {
            Some(kind) => {
                let round_all = |base: usize, st: [usize; 4]| {
                    let mut all = vec![0u16; b * h * nk * d];
                    all.par_chunks_mut(nk * d)
                        .enumerate()
                        .for_each(|(bh, dst)| {
                            let (bi, hi) = (bh / h, bh % h);
                            let src = (base as *const f32).wrapping_add(bi * st[0] + hi * st[1]);
                            // SAFETY: head (bi, hi) of a (B, H, Nk, d) tensor with strides `st`.
                            unsafe { round_rows(kind, src, (st[2], st[3]), (nk, d), 1.0, dst) };
                        });
                    all
                };
                (round_all(kp, ks), round_all(vp, vs))
            }
            None => (Vec::new(), Vec::new()),
        };
        (0..b * h * nqb).into_par_iter().for_each(|task| {
            let (bh, qb) = (task / nqb, task % nqb);
            let (bi, hi) = (bh / h, bh % h);
            let r0 = qb * qblk;
            let rows = qblk.min(n - r0);
            let kblk = self.k_block.max(16).min(nk);
            let single = kblk >= nk;
            // The half operands (empty in f32): q block, probabilities.
            let on = usize::from(half.is_some());
            let h16 = on * (rows * d + rows * kblk);
            HALF_SCRATCH.with(|hs| {
                let mut hs = hs.borrow_mut();
                if hs.len() < h16 {
                    hs.resize(h16, 0);
                }
                let (q16, p16) = hs[..h16].split_at_mut(on * rows * d);
                let span = bh * nk * d..(bh + 1) * nk * d;
                let k16 = k16_all.get(span.clone()).unwrap_or(&[]);
                let v16 = v16_all.get(span).unwrap_or(&[]);
                with_scratch(rows * kblk + 2 * rows * d, |buf| unsafe {
                    let (sc, rest) = buf.split_at_mut(rows * kblk);
                    let (oacc, qblock) = rest.split_at_mut(rows * d);
                    // The query block, copied contiguous once: the score GEMM runs ~20% slower
                    // reading it strided (q is a view of the qkv output when no norm/RoPE);
                    // with half products, rounded straight from q with the score scale
                    // folded in (as torch's SDPA), and copied only if oneDNN declines.
                    let qsrc = (qp as *const f32).add(bi * qs[0] + hi * qs[1] + r0 * qs[2]);
                    let qscale = self.scale * std::f32::consts::LOG2_E;
                    let copy_q = |qblock: &mut [f32]| {
                        for (r, dst) in qblock.chunks_mut(d).enumerate() {
                            copy_row(qsrc.add(r * qs[2]), qs[3], 1.0, dst);
                        }
                    };
                    let mut q_copied = half.is_none();
                    match half {
                        Some(kind) => {
                            round_rows(kind, qsrc, (qs[2], qs[3]), (rows, d), qscale, q16)
                        }
                        None => copy_q(qblock),
                    }
                    let kbase = (kp as *const f32).add(bi * ks[0] + hi * ks[1]);
                    let vbase = (vp as *const f32).add(bi * vs[0] + hi * vs[1]);
                    let obase = optr.get().add(bi * n * c + r0 * c + hi * d);
                    // Running max and sum per query row (online softmax over key blocks).
                    let mut mrow = [f32::NEG_INFINITY; Q_BLOCK_MAX];
                    let mut lrow = [0f32; Q_BLOCK_MAX];
                    let mut k0 = 0;
                    while k0 < nk {
                        let kn = kblk.min(nk - k0);
                        let sc = &mut sc[..rows * kn];
                        // scores = log2(e) · scale · q · kᵀ   (rows × kn), kᵀ read in place; the
                        // softmax then takes 2^(s - max), which is exp of the true scores.
                        let done = half.is_some_and(|kind| {
                            onednn::matmul(
                                kind.into(),
                                (rows, kn, d),
                                Mat::rows(sc.as_mut_ptr(), kn),
                                false,
                                untyped(Mat::rows(q16.as_ptr(), d)),
                                untyped(Mat::cols(k16.as_ptr().add(k0 * d), d)),
                            )
                        });
                        if !done {
                            if !q_copied {
                                copy_q(qblock);
                                q_copied = true;
                            }
                            sgemm(
                                (rows, kn, d),
                                Mat::rows(sc.as_mut_ptr(), kn),
                                false,
                                Mat::rows(qblock.as_ptr(), d),
                                Mat::strided(kbase.add(k0 * ks[2]), ks[3] as isize, ks[2] as isize),
                                qscale,
                            );
                        }
                        // The probabilities: f32 in place, or (bf16 products) rounded into
                        // `p16` in the same pass, summing the rounded values.
                        let p16 = &mut p16[..on * rows * kn];
                        for (r, row) in sc.chunks_mut(kn).enumerate() {
                            let m_new = mrow[r].max(row_max(row));
                            let alpha = (mrow[r] - m_new).exp2(); // 0 on the first block
                            let sum = if fused_bf16 {
                                exp2_sub_bf16_sum(row, m_new, &mut p16[r * kn..(r + 1) * kn])
                            } else {
                                exp2_sub_sum(row, m_new)
                            };
                            lrow[r] = lrow[r] * alpha + sum;
                            mrow[r] = m_new;
                            if k0 > 0 && alpha != 1.0 {
                                for v in &mut oacc[r * d..(r + 1) * d] {
                                    *v *= alpha;
                                }
                            }
                        }
                        // acc (+)= p · v as accᵀ = vᵀ · pᵀ: both operands read in place (vᵀ
                        // column-major, pᵀ with unit row stride), nothing packed. A single key
                        // block writes straight into the output.
                        let (o, ld) = if single {
                            (obase, c)
                        } else {
                            (oacc.as_mut_ptr(), d)
                        };
                        let done = half.is_some_and(|kind| {
                            if !fused_bf16 {
                                kind.round_into(sc, p16);
                            }
                            onednn::matmul(
                                kind.into(),
                                (rows, d, kn),
                                Mat::rows(o, ld),
                                k0 > 0,
                                untyped(Mat::rows(p16.as_ptr(), kn)),
                                untyped(Mat::rows(v16.as_ptr().add(k0 * d), d)),
                            )
                        });
                        if !done {
                            if fused_bf16 {
                                // (oneDNN declined: the probabilities are only in `p16`)
                                for (s, &b) in sc.iter_mut().zip(p16.iter()) {
                                    *s = Half::Bf16.widen(b);
                                }
                            }
                            sgemm(
                                (d, rows, kn),
                                Mat::cols(o, ld),
                                k0 > 0,
                                Mat::strided(vbase.add(k0 * vs[2]), vs[3] as isize, vs[2] as isize),
                                Mat::cols(sc.as_ptr(), kn),
                                1.0,
                            );
                        }
                        k0 += kn;
                    }
                    for r in 0..rows {
                        let inv = 1.0 / lrow[r];
                        let orow = std::slice::from_raw_parts_mut(obase.add(r * c), d);
                        if single {
                            orow.iter_mut().for_each(|v| *v *= inv);
                        } else {
                            for (o, a) in orow.iter_mut().zip(&oacc[r * d..(r + 1) * d]) {
                                *o = a * inv;
                            }
                        }
                    }
                });
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

/// Scaled dot-product attention, q/k/v (B, H, N, d) -> (B, N, H·d); with `half`, its two
/// products take inputs rounded to that type where oneDNN runs it (mixed precision).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    half: Option<Half>,
) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let nk = k.dim(2)?;
    let flops = 4.0 * (b * h) as f64 * (n * nk * d) as f64;
    let t = crate::tuning::get();
    let op = AttentionOp {
        scale,
        q_block: t.q_block,
        k_block: t.k_block,
        half,
    };
    timed("attention", flops, || q.apply_op3_no_bwd(k, v, &op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_rel_err, rand};

    #[test]
    fn attention_matches_naive() {
        // (1, 20, 1100): more keys than one block, so the online softmax rescales.
        for (bb, n, nk) in [
            (2usize, 70usize, 70usize),
            (1, 5, 130),
            (1, 129, 3),
            (1, 20, 1100),
        ] {
            let q = rand(&[bb, 3, n, 16], 4);
            // k, v as strided views of a (B, Nk, H, d) tensor, like the qkv split
            let k = rand(&[bb, nk, 3, 16], 5).transpose(1, 2).unwrap();
            let v = rand(&[bb, nk, 3, 16], 6).transpose(1, 2).unwrap();
            let got = attention(&q, &k, &v, 0.25, None).unwrap();
            let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * 0.25).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
            let want = p
                .matmul(&v.contiguous().unwrap())
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((bb, n, 48))
                .unwrap();
            assert!(max_rel_err(&got, &want) < 2e-6, "{bb} {n} {nk}");
            // Mixed precision: bf16 products (where oneDNN runs them), f32 softmax.
            let got16 = attention(&q, &k, &v, 0.25, Some(Half::Bf16)).unwrap();
            let e = max_rel_err(&got16, &want);
            assert!(e < 2e-2, "bf16 {bb} {n} {nk}: {e}");
            if onednn::runs(onednn::Input::Bf16) {
                assert!(e > 1e-6, "bf16 {bb} {n} {nk}: ran in f32 ({e})");
                // oneDNN declining both products (no optimised kernel for a shape): the
                // scores from the copied q block, the probabilities widened from bf16.
                let pool = onednn::declining_pool();
                let got_fb = pool.install(|| attention(&q, &k, &v, 0.25, Some(Half::Bf16)));
                let e = max_rel_err(&got_fb.unwrap(), &want);
                assert!(e < 2e-2, "bf16 declined {bb} {n} {nk}: {e}");
            }
        }
    }
}
