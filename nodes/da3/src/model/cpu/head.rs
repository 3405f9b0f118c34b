//! The DPT's output heads in bf16: a map upsampled (bilinear, align corners) to the input
//! resolution [+ the UV embedding], then, per head, a 3x3 convolution + bias, ReLU and a
//! 1x1 convolution to a few channels. The 3x3 at full resolution is the largest
//! convolution of the network (DA3-SMALL: 16.8 of its 57 ms of convolutions in f32).
//!
//! With mixed precision it runs in oneDNN's bf16 convolution, which reads channels last:
//! per band of output rows, the upsampled rows it needs (halo included) are computed
//! straight into a channels-last bf16 buffer, each head's 3x3 runs on them (f32 out, bias
//! and ReLU fused), and its 1x1 writes the band's rows of the channels-first f32 result.
//! No full-resolution intermediate is written: the upsampled map and the hidden map each
//! exist one band at a time, per thread. Where oneDNN has no bf16 kernel the caller runs the
//! f32 path (upsample, then [`super::conv2d`] with its 1x1 fused).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::{bail, Device, Result, Tensor};
use rayon::prelude::*;

use super::buffers::{bias_values, channels_last, output_buffer, with_f32, SyncPtr};
use super::half::Half;
use super::onednn::{conv_bf16_nhwc, ConvBand};
use super::profile::timed;
use super::resize::{bilinear_taps, row_channels_last, Taps};
use super::tokens::UvTables;

/// A convolution layer whose bf16 form runs in oneDNN: the number that names its weights in
/// oneDNN's per-thread caches (unique in the process, never reused).
#[derive(Debug)]
pub struct HalfConv {
    id: u64,
}

impl HalfConv {
    /// A new name; `None` unless `kind` is bf16 (the one type these kernels take).
    pub fn new(kind: Half) -> Option<HalfConv> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        (kind == Half::Bf16).then(|| HalfConv {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The number that names the layer's weights.
    pub(super) fn id(&self) -> u64 {
        self.id
    }
}

/// One output head: `last(relu(conv(x) + bias)) + last_bias`.
#[derive(Clone, Copy)]
pub struct ConvHead<'a> {
    /// (mid, ci, 3, 3), f32.
    pub conv: &'a Tensor,
    pub bias: &'a Tensor,
    /// (cout, mid, 1, 1), f32.
    pub last: &'a Tensor,
    pub last_bias: Option<&'a Tensor>,
    /// Set where the layer runs in bf16 ([`HalfConv::new`]); else the f32 path runs.
    pub half: Option<&'a HalfConv>,
}

/// Output rows per band. At DA3-SMALL's sizes a band's upsampled input (16 + 2 rows, bf16)
/// and hidden map (f32) take ~1.6 MB a thread; 16 rows measured a little faster than 8 (a
/// smaller share of halo rows upsampled twice; the convolution ran at the same speed).
const BAND: usize = 16;

/// One head's host values.
struct Host {
    id: u64,
    mid: usize,
    cout: usize,
    w: Vec<f32>,
    b: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
}

/// The UV embedding channels last: per column (its first C/2 channels, the rest 0) and per
/// row (the other way round), `ow × c` and `oh × c`.
struct Embed {
    cols: Vec<f32>,
    rows: Vec<f32>,
}

impl Embed {
    fn new(uv: &UvTables<'_>, (c, oh, ow): (usize, usize, usize)) -> Embed {
        let half = c / 2;
        let mut cols = vec![0f32; ow * c];
        let mut rows = vec![0f32; oh * c];
        for ch in 0..half {
            for ox in 0..ow {
                cols[ox * c + ch] = uv.ex[ch * ow + ox];
            }
            for y in 0..oh {
                rows[y * c + half + ch] = uv.ey[ch * oh + y];
            }
        }
        Embed { cols, rows }
    }
}

/// A task's buffers, kept by each thread between calls.
#[derive(Default)]
struct Scratch {
    src: Vec<u16>,
    row: Vec<f32>,
    tmp: Vec<f32>,
    hid: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `v` resized to `n` (contents unspecified: the callers write before they read).
fn sized<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// `Σ a·b`, eight lanes at a time (vectorises; the order of the sum differs from a plain
/// loop's only by rounding). The head's 1x1 (cout = 1-2 per pixel over channels-last
/// hidden values) as one dot per pixel: the whole head measured 3% slower with the 1x1 as
/// an `sgemm` per band (`cargo bench -p da3 --bench kernels`, "depth head 1v"), and
/// `conv::relu_then_1x1` reads channels-first bands.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `heads` on `x` (B, C, h, w) upsampled to `oh × ow` [+ UV embedding, tables as
/// `super::add_uv_embed`'s], each (B, cout, oh, ow) f32; `Ok(None)` where oneDNN declined
/// (nothing is returned half done: the caller runs the f32 path).
pub fn upsampled_heads(
    x: &Tensor,
    (oh, ow): (usize, usize),
    uv: Option<(&[f32], &[f32])>,
    heads: &[ConvHead<'_>],
) -> Result<Option<Vec<Tensor>>> {
    if heads.iter().any(|h| h.half.is_none()) {
        return Ok(None);
    }
    let (b, c, ih, iw) = x.dims4()?;
    let x = x.contiguous()?;
    let xt = timed("channels-last", 0.0, || {
        with_f32(&x, |xs, l| {
            Ok(channels_last(&xs[l.start_offset()..], (b, c, ih, iw)))
        })
    })?;
    heads_channels_last(xt, (b, c, ih, iw), (oh, ow), uv, heads, x.device())
}

/// [`upsampled_heads`] of a map given channels last: `xt` holds (B, ih, iw, C) values.
pub(super) fn heads_channels_last(
    xt: Vec<f32>,
    (b, c, ih, iw): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    uv: Option<(&[f32], &[f32])>,
    heads: &[ConvHead<'_>],
    dev: &Device,
) -> Result<Option<Vec<Tensor>>> {
    if xt.len() != b * c * ih * iw {
        bail!(
            "da3-upsampled-heads: {} values for a ({b}, {ih}, {iw}, {c}) map",
            xt.len()
        );
    }
    let uv = uv.map(|(ex, ey)| UvTables { ex, ey });
    if let Some(uv) = &uv {
        uv.check("da3-upsampled-heads", (c, oh, ow))?;
    }
    let mut hosts = Vec::with_capacity(heads.len());
    for h in heads {
        let Some(half) = h.half else {
            return Ok(None);
        };
        let (mid, ci, kh, kw) = h.conv.dims4()?;
        let (cout, mid1, _, _) = h.last.dims4()?;
        if (ci, kh, kw, mid1) != (c, 3, 3, mid) {
            bail!("da3-upsampled-heads: weights do not fit a {c}-channel map");
        }
        hosts.push(Host {
            id: half.id,
            mid,
            cout,
            w: h.conv.flatten_all()?.to_vec1()?,
            b: h.bias.to_vec1()?,
            w1: h.last.flatten_all()?.to_vec1()?,
            b1: bias_values(h.last_bias)?.unwrap_or_else(|| vec![0.0; cout]),
        });
    }
    let flops: f64 = hosts
        .iter()
        .map(|h| 2.0 * (b * oh * ow) as f64 * (h.mid * c * 9 + h.cout * h.mid) as f64)
        .sum();
    timed("conv-head-bf16", flops, || {
        let map = Map {
            xt,
            dims: (c, ih, iw),
            out: (oh, ow),
            ty: bilinear_taps(ih, oh),
            tx: bilinear_taps(iw, ow),
            pe: uv.as_ref().map(|u| Embed::new(u, (c, oh, ow))),
        };
        let mut outs: Vec<Vec<f32>> = hosts
            .iter()
            .map(|h| output_buffer(b * h.cout * oh * ow))
            .collect();
        let ptrs: Vec<SyncPtr> = outs.iter_mut().map(|o| SyncPtr(o.as_mut_ptr())).collect();
        let declined = AtomicBool::new(false);
        let bands = oh.div_ceil(BAND);
        (0..b * bands).into_par_iter().for_each(|task| {
            let (v, r0) = (task / bands, (task % bands) * BAND);
            if declined.load(Ordering::Relaxed) {
                return;
            }
            SCRATCH.with(|sc| {
                // SAFETY: the band's rows r0..r0 + BAND are this task's alone.
                let ok = unsafe { band(&map, &hosts, &ptrs, (v, r0), &mut sc.borrow_mut()) };
                if !ok {
                    declined.store(true, Ordering::Relaxed);
                }
            });
        });
        if declined.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let r: Result<Vec<Tensor>> = outs
            .into_iter()
            .zip(&hosts)
            .map(|(o, h)| Tensor::from_vec(o, (b, h.cout, oh, ow), dev))
            .collect();
        r.map(Some)
    })
}

/// The input of [`upsampled_heads`], channels last, and how it is upsampled.
struct Map {
    /// (B, ih, iw, C).
    xt: Vec<f32>,
    /// (C, ih, iw).
    dims: (usize, usize, usize),
    /// (oh, ow).
    out: (usize, usize),
    ty: Vec<Taps>,
    tx: Vec<Taps>,
    pe: Option<Embed>,
}

/// Rows `s0..s1` of the upsampled map [+ embedding] of view `v`, rounded to bf16 into
/// `dst` (channels last).
fn upsample_rows(map: &Map, v: usize, (s0, s1): (usize, usize), sc: &mut Scratch) {
    let (c, ih, iw) = map.dims;
    let ow = map.out.1;
    let xt = &map.xt[v * c * ih * iw..(v + 1) * c * ih * iw];
    let dst = sized(&mut sc.src, (s1 - s0) * ow * c);
    let row = sized(&mut sc.row, ow * c);
    let t = sized(&mut sc.tmp, iw * c);
    for (y, dst) in (s0..s1).zip(dst.chunks_exact_mut(ow * c)) {
        row_channels_last(xt, (c, iw), map.ty[y], &map.tx, t, row);
        if let Some(pe) = &map.pe {
            let rows = &pe.rows[y * c..(y + 1) * c];
            for (r, cols) in row.chunks_exact_mut(c).zip(pe.cols.chunks_exact(c)) {
                for ((r, a), b) in r.iter_mut().zip(cols).zip(rows) {
                    *r += a + b;
                }
            }
        }
        Half::Bf16.round_into(row, dst);
    }
}

/// Output rows `r0..r0 + BAND` of view `v` of every head: the upsampled rows they need, each
/// head's 3x3 by oneDNN, its 1x1 into `outs`. False where oneDNN declined.
///
/// # Safety
/// `outs[i]` holds head i's (B, cout, oh, ow) output; no other task writes these rows.
unsafe fn band(
    map: &Map,
    hosts: &[Host],
    outs: &[SyncPtr],
    (v, r0): (usize, usize),
    sc: &mut Scratch,
) -> bool {
    let (c, (oh, ow)) = (map.dims.0, map.out);
    let r1 = (r0 + BAND).min(oh);
    // Input rows r0-1 ..= r1 where they exist (3x3, padding 1).
    let (s0, s1) = (r0.saturating_sub(1), (r1 + 1).min(oh));
    upsample_rows(map, v, (s0, s1), sc);
    for (h, out) in hosts.iter().zip(outs) {
        let (_, shape) = ConvBand::same_3x3((c, h.mid), (r0, r1), (oh, ow), true);
        let hid = sized(&mut sc.hid, (r1 - r0) * ow * h.mid);
        // `sc.src` holds rows × cols × ci bf16 values (upsample_rows), `hid` out_rows ×
        // out_cols × mid f32 ones.
        if !conv_bf16_nhwc(h.id, &shape, &h.w, &h.b, sc.src.as_ptr(), hid.as_mut_ptr()) {
            return false;
        }
        // The 1x1 into rows r0..r1 of each output channel of view v.
        for o in 0..h.cout {
            let wo = &h.w1[o * h.mid..(o + 1) * h.mid];
            let base = ((v * h.cout + o) * oh + r0) * ow;
            for (p, hv) in hid.chunks_exact(h.mid).enumerate() {
                *out.get().add(base + p) = dot(wo, hv) + h.b1[o];
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::{conv2d, resize_bilinear_ac, ConvExt};
    use crate::testing::{bf16_rounded as bf16, max_rel_err, rand};

    /// Several bands (first, middle, last and a single-band map), the UV embedding, two
    /// heads: against the f32 kernels on the same bf16-rounded inputs and weights (so only
    /// the order of the sums differs), and against the plain f32 path within bf16's error.
    /// Where oneDNN has no bf16 convolution here the kernel must decline, not guess.
    #[test]
    fn upsampled_heads_match_f32_kernels_on_rounded_inputs() {
        let (c, mid) = (8usize, 16usize);
        let (w0, b0) = (rand(&[mid, c, 3, 3], 21), rand(&[mid], 22));
        let (w1, b1) = (rand(&[2, mid, 1, 1], 23), rand(&[2], 24));
        let (w2, b2) = (rand(&[1, mid, 1, 1], 25), rand(&[1], 26));
        let (h0, h1) = (HalfConv::new(Half::Bf16), HalfConv::new(Half::Bf16));
        assert!(HalfConv::new(Half::F16).is_none());
        let heads = [
            ConvHead {
                conv: &w0,
                bias: &b0,
                last: &w1,
                last_bias: Some(&b1),
                half: h0.as_ref(),
            },
            ConvHead {
                conv: &w0,
                bias: &b0,
                last: &w2,
                last_bias: Some(&b2),
                half: h1.as_ref(),
            },
        ];
        for (oh, ow, uv) in [(37usize, 20usize, true), (5, 9, false)] {
            let x = rand(&[2, c, 7, 6], 27);
            let ex = rand(&[c / 2 * ow], 28).to_vec1::<f32>().unwrap();
            let ey = rand(&[c / 2 * oh], 29).to_vec1::<f32>().unwrap();
            let tables = uv.then_some((&ex[..], &ey[..]));
            let got = upsampled_heads(&x, (oh, ow), tables, &heads).unwrap();
            let Some(got) = got else {
                assert!(
                    !super::super::onednn::runs_bf16(),
                    "oneDNN runs bf16 matmuls here but declined the bf16 convolution"
                );
                eprintln!("no oneDNN bf16 convolution here: declined (the f32 path runs)");
                return;
            };
            let up = resize_bilinear_ac(&x, oh, ow, tables).unwrap();
            for (g, (last, lb)) in got.iter().zip([(&w1, &b1), (&w2, &b2)]) {
                let ext = ConvExt {
                    then_1x1: Some((last, Some(lb))),
                    ..Default::default()
                };
                let rounded = conv2d(&bf16(&up), &bf16(&w0), Some(&b0), 1, 1, ext).unwrap();
                let plain = conv2d(&up, &w0, Some(&b0), 1, 1, ext).unwrap();
                assert_eq!(g.dims(), plain.dims());
                let (e_r, e_p) = (max_rel_err(g, &rounded), max_rel_err(g, &plain));
                eprintln!("{oh}x{ow}: {e_r:.1e} against rounded inputs, {e_p:.1e} against f32");
                assert!(e_r < 1e-5, "{oh}x{ow}: {e_r} against rounded inputs");
                assert!(e_p < 2e-2, "{oh}x{ow}: {e_p} against f32");
            }
        }
    }
}
