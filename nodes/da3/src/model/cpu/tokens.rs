//! The DPT head's token-side ops: the 1x1 projection read straight from token-major
//! features, and the UV position-embedding add.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::buffers::{
    bias_values, chunk_len, contiguous_f32, f32_slice, output_buffer, sgemm, with_f32, Mat, SyncPtr,
};
use super::half::{with_half, with_rounded_rows, Half};
use super::onednn::{self, untyped};
use super::profile::timed;

/// 1x1 convolution of a token-major input: (B, N, C) tokens (rows may be strided) to an
/// (B, O, h, w) map with N = h·w, without transposing the tokens first (the GEMM reads
/// them in place as a column-major operand). With a bf16/f16 weight (mixed precision) and
/// oneDNN running that type, each band of tokens is rounded to it and the product taken by
/// oneDNN (f32 accumulation); a half weight without that kernel is widened to f32.
struct TokensConv1x1Op<'a> {
    weight: &'a Tensor, // (O, C, 1, 1)
    bias: Option<&'a Tensor>,
    h: usize,
    w: usize,
}

impl CustomOp1 for TokensConv1x1Op<'_> {
    fn name(&self) -> &'static str {
        "da3-tokens-conv1x1"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (b, n, c) = l.shape().dims3()?;
        let st = l.stride();
        if st[2] != 1 {
            bail!("da3-tokens-conv1x1: channels must be contiguous");
        }
        if n != self.h * self.w {
            bail!(
                "da3-tokens-conv1x1: {n} tokens for a {}x{} map",
                self.h,
                self.w
            );
        }
        let (o, wc, kh, kw) = self.weight.dims4()?;
        if (wc, kh, kw) != (c, 1, 1) {
            bail!(
                "da3-tokens-conv1x1: weight {:?} for {c} channels",
                self.weight.dims()
            );
        }
        let bias = bias_values(self.bias)?;
        let mut out = output_buffer(b * o * n);
        let optr = SyncPtr(out.as_mut_ptr());
        let band = chunk_len(n, 64);
        let nband = n.div_ceil(band);
        let xp = x.as_ptr() as usize;
        // Every band of `np` tokens from `p0` of image `bi`, in parallel: its output rows
        // (at `ob`, `n` apart) start as the bias, then `gemm(bi, p0, np, ob)` accumulates.
        let bands = |gemm: &(dyn Fn(usize, usize, usize, *mut f32) + Sync)| {
            (0..b * nband).into_par_iter().for_each(|task| {
                let (bi, bj) = (task / nband, task % nband);
                let p0 = bj * band;
                let np = band.min(n - p0);
                let ob = unsafe { optr.get().add(bi * o * n + p0) };
                if let Some(bv) = &bias {
                    for (oc, bval) in bv.iter().enumerate() {
                        unsafe { std::slice::from_raw_parts_mut(ob.add(oc * n), np) }.fill(*bval);
                    }
                }
                gemm(bi, p0, np, ob);
            })
        };
        let half = Half::of(self.weight.dtype()).filter(|&k| onednn::runs(k.into()));
        if let Some(kind) = half {
            let declined = std::sync::atomic::AtomicBool::new(false);
            with_half(self.weight, |_, w16| {
                bands(&|bi, p0, np, ob| {
                    let src = &x[bi * st[0] + p0 * st[1]..];
                    let done = with_rounded_rows(kind, src, (np, c, st[1]), |x16| unsafe {
                        onednn::matmul(
                            kind.into(),
                            (o, np, c),
                            Mat::rows(ob, n),
                            bias.is_some(),
                            untyped(Mat::rows(w16.as_ptr(), c)),
                            untyped(Mat::cols(x16.as_ptr(), c)),
                        )
                    });
                    if !done {
                        declined.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                Ok(())
            })?;
            if !declined.into_inner() {
                return Ok((CpuStorage::F32(out), Shape::from((b, o, self.h, self.w))));
            }
            // oneDNN declined a band (no optimised kernel): every band again in f32 below.
        }
        let w_c = self.weight.to_dtype(DType::F32)?.contiguous()?;
        with_f32(&w_c, |w, wl| {
            let wp = w[wl.start_offset()..].as_ptr() as usize;
            bands(&|bi, p0, np, ob| {
                unsafe {
                    sgemm(
                        (o, np, c),
                        Mat::rows(ob, n),
                        bias.is_some(),
                        Mat::rows(wp as *const f32, c),
                        Mat::cols((xp as *const f32).add(bi * st[0] + p0 * st[1]), st[1]),
                        1.0,
                    )
                };
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, o, self.h, self.w))))
    }
}

/// 1x1 convolution of (B, h·w, C) tokens into a (B, O, h, w) map.
pub fn conv1x1_tokens(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    h: usize,
    w: usize,
) -> Result<Tensor> {
    let (o, c, _, _) = weight.dims4()?;
    let flops = 2.0 * (x.elem_count() / c.max(1)) as f64 * (o * c) as f64;
    timed("conv1x1-tokens", flops, || {
        let op = TokensConv1x1Op { weight, bias, h, w };
        if x.stride().last() == Some(&1) {
            x.apply_op1_no_bwd(&op)
        } else {
            x.contiguous()?.apply_op1_no_bwd(&op)
        }
    })
}

/// The UV embedding's tables for a (C, H, W) map: channel k < C/2 adds `ex[k][x]` (`ex`:
/// C/2 × W), channel C/2 + k adds `ey[k][y]` (`ey`: C/2 × H).
#[derive(Clone, Copy)]
pub(super) struct UvTables<'a> {
    pub(super) ex: &'a [f32],
    pub(super) ey: &'a [f32],
}

/// What the UV embedding adds to one channel's plane: a value per column or one per row.
#[derive(Clone, Copy)]
pub(super) enum PlaneEmbed<'a> {
    Columns(&'a [f32]),
    Rows(&'a [f32]),
}

impl<'a> UvTables<'a> {
    /// An error unless the tables fit a map of `c` channels, `h x w` (`op` names the caller).
    pub(super) fn check(&self, op: &str, (c, h, w): (usize, usize, usize)) -> Result<()> {
        let half = c / 2;
        if c % 2 != 0 || self.ex.len() != half * w || self.ey.len() != half * h {
            bail!("{op}: UV tables do not match ({c}, {h}, {w})");
        }
        Ok(())
    }

    /// What channel `ch` of a (`c`, `h`, `w`) map adds ([`UvTables::check`] first).
    pub(super) fn plane(&self, ch: usize, (c, h, w): (usize, usize, usize)) -> PlaneEmbed<'a> {
        let half = c / 2;
        if ch < half {
            PlaneEmbed::Columns(&self.ex[ch * w..(ch + 1) * w])
        } else {
            PlaneEmbed::Rows(&self.ey[(ch - half) * h..(ch - half + 1) * h])
        }
    }
}

impl PlaneEmbed<'_> {
    /// Add the embedding to row `y` of the plane.
    #[inline]
    pub(super) fn add_to_row(self, y: usize, row: &mut [f32]) {
        match self {
            PlaneEmbed::Columns(e) => row.iter_mut().zip(e).for_each(|(d, e)| *d += e),
            PlaneEmbed::Rows(e) => row.iter_mut().for_each(|d| *d += e[y]),
        }
    }
}

struct UvEmbedOp<'a>(UvTables<'a>);

impl CustomOp1 for UvEmbedOp<'_> {
    fn name(&self) -> &'static str {
        "da3-uv-embed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-uv-embed", s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        self.0.check("da3-uv-embed", (c, h, w))?;
        let mut out = output_buffer(b * c * h * w);
        out.par_chunks_mut(h * w)
            .zip(x[..b * c * h * w].par_chunks(h * w))
            .enumerate()
            .for_each(|(plane, (o, xi))| {
                let embed = self.0.plane(plane % c, (c, h, w));
                for (y, (orow, xrow)) in o.chunks_mut(w).zip(xi.chunks(w)).enumerate() {
                    orow.copy_from_slice(xrow);
                    embed.add_to_row(y, orow);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `x + pe` for the DPT UV embedding: the first C/2 channels vary along x (`ex`: C/2 × W),
/// the others along y (`ey`: C/2 × H).
pub fn add_uv_embed(x: &Tensor, ex: &[f32], ey: &[f32]) -> Result<Tensor> {
    timed("uv-embed", 0.0, || {
        x.contiguous()?
            .apply_op1_no_bwd(&UvEmbedOp(UvTables { ex, ey }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::{conv2d, ConvExt};
    use crate::testing::{max_rel_err, rand};

    /// (B, N, C) tokens as the (B, C, h, w) map they stand for.
    fn nchw(x: &Tensor, (h, w): (usize, usize)) -> Tensor {
        let (b, _, c) = x.dims3().unwrap();
        x.transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b, c, h, w))
            .unwrap()
    }

    #[test]
    fn tokens_conv1x1_matches_transpose_then_conv() {
        // tokens as a narrowed view (skip token 0), like the backbone outputs
        let t = rand(&[2, 1 + 12, 10], 40);
        let x = t.narrow(1, 1, 12).unwrap();
        let wt = rand(&[7, 10, 1, 1], 41);
        let b = rand(&[7], 42);
        let got = conv1x1_tokens(&x, &wt, Some(&b), 3, 4).unwrap();
        let want = conv2d(&nchw(&x, (3, 4)), &wt, Some(&b), 1, 0, ConvExt::default()).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-6);

        // Half weights (mixed precision): where oneDNN runs bf16, the products of the
        // rounded tokens and weights (f32 sums), else the widened weights; strided token
        // rows, and more tokens than one band.
        let t = rand(&[2, 1 + 150, 24], 43);
        let x = t.narrow(1, 1, 150).unwrap();
        let wt = rand(&[9, 24, 1, 1], 44);
        let b = rand(&[9], 45);
        let w16 = wt.to_dtype(DType::BF16).unwrap();
        let got = conv1x1_tokens(&x, &w16, Some(&b), 10, 15).unwrap();
        let bf = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let ran = onednn::runs(onednn::Input::Bf16);
        let xr = if ran { bf(&x) } else { x.clone() };
        let want = conv2d(
            &nchw(&xr, (10, 15)),
            &bf(&wt),
            Some(&b),
            1,
            0,
            ConvExt::default(),
        )
        .unwrap();
        let e = max_rel_err(&got, &want);
        assert!(e < 1e-5, "bf16 weights (oneDNN bf16: {ran}): {e}");
        if ran {
            // the tokens were rounded (not the widened-weight path)
            let unrounded = conv1x1_tokens(&x, &bf(&wt), Some(&b), 10, 15).unwrap();
            assert!(max_rel_err(&got, &unrounded) > 1e-5);
            // oneDNN declining a band: every band again with the widened weights
            let pool = onednn::declining_pool();
            let declined = pool
                .install(|| conv1x1_tokens(&x, &w16, Some(&b), 10, 15))
                .unwrap();
            assert!(max_rel_err(&declined, &unrounded) < 1e-6);
        }
    }
}
