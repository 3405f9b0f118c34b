//! The DPT's top-down decoder in bf16, channels last: the neck's `layer*_rn` adapters, the
//! fusion blocks (refinenet4..1), `output_conv1` and the output heads ([`super::head`]) of
//! the any-view models' depth branch, for mixed precision.
//!
//! oneDNN's bf16 convolution reads channels last, and converting each map to that layout
//! and back around every convolution costs about what bf16 saves on a CPU without AMX
//! (docs/benchmarks.md, sessions 16 and 18). Here the neck's four resized maps are made
//! channels last and bf16 once, every map after them stays channels last (f32 between the
//! convolutions, rounded to bf16 band by band as each 3x3 reads it), and the heads read the
//! last one as it is: no conversion back. Residual sums, the 1x1 `out_conv`s and the
//! resizes stay in f32, as in the f32 path.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use super::buffers::{
    bias_values, channels_last_row, chunk_len, output_buffer, sgemm, with_f32, with_scratch, Mat,
    SyncPtr,
};
use super::half::{with_rounded_relu, Half};
use super::head::{heads_channels_last, ConvHead, HalfConv};
use super::onednn::{conv_bf16_nhwc, conv_bf16_nhwc_to_bf16, ConvBand};
use super::profile::timed;
use super::resize::resize_channels_last;

/// A 3x3 stride-1 same-padded convolution layer: f32 weights (co, ci, 3, 3), bias, and its
/// name for oneDNN's caches where it runs in bf16 ([`HalfConv`]; else the f32 path runs).
#[derive(Clone, Copy)]
pub struct HalfLayer<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub half: Option<&'a HalfConv>,
}

/// One fusion block: `y = x [+ res1(lateral)]`, `z = res2(y)`, then `out_conv` (1x1) and
/// the resize. Each residual unit is `conv2(relu(conv1(relu(·)))) + ·`.
#[derive(Clone, Copy)]
pub struct FusionLayers<'a> {
    /// `[conv1, conv2]` of the unit that refines the lateral map (not in refinenet4).
    pub res1: Option<[HalfLayer<'a>; 2]>,
    pub res2: [HalfLayer<'a>; 2],
    /// (c, c, 1, 1) and its bias.
    pub out_conv: (&'a Tensor, Option<&'a Tensor>),
}

/// Output rows per task of a convolution. oneDNN's bf16 kernel alone, 2 threads, AMD Zen 4:
/// 64->64 at 108x144 2.79 / 2.87 / 3.32 ms with 8 / 16 / 32 rows, 128->128 10.5 / 11.3 /
/// 13.1; with the rounding of the input rows (the halo rounded twice) the decoder's
/// convolutions took 84-86 ms with 8 rows against 87-88 with 16 (DA3-BASE, 1 view). Small
/// maps (14 rows at DA3-SMALL's coarsest level) also need several bands to use both
/// threads.
const BAND: usize = 8;

/// A layer's host values.
struct Layer {
    id: u64,
    ci: usize,
    co: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Layer {
    /// `None` where the layer has no bf16 form.
    fn new(l: &HalfLayer<'_>) -> Result<Option<Layer>> {
        let Some(half) = l.half else {
            return Ok(None);
        };
        let (co, ci, kh, kw) = l.weight.dims4()?;
        if (kh, kw) != (3, 3) {
            bail!("da3-dpt-decoder: a {kh}x{kw} kernel where a 3x3 one is expected");
        }
        Ok(Some(Layer {
            id: half.id(),
            ci,
            co,
            w: l.weight.flatten_all()?.to_vec1()?,
            b: bias_values(l.bias)?.unwrap_or_else(|| vec![0.0; co]),
        }))
    }
}

/// A channels-last map, (B, h, w, C) values: f32, or bf16 bits ([`Map16`]).
struct Map<T = f32> {
    v: Vec<T>,
    b: usize,
    c: usize,
    h: usize,
    w: usize,
}

type Map16 = Map<u16>;

impl Map16 {
    /// An NCHW f32 map channels last and rounded to bf16, a row at a time.
    fn from_nchw(t: &Tensor) -> Result<Map16> {
        let (b, c, h, w) = t.dims4()?;
        let t = t.contiguous()?;
        let mut v = vec![0u16; b * h * w * c];
        timed("channels-last", 0.0, || {
            with_f32(&t, |xs, l| {
                let xs = &xs[l.start_offset()..];
                v.par_chunks_mut(w * c).enumerate().for_each(|(vy, dst)| {
                    with_scratch(w * c, |row| {
                        channels_last_row(xs, (b, c, h, w), vy, row);
                        Half::Bf16.round_into(row, dst);
                    })
                });
                Ok(())
            })
        })?;
        Ok(Map16 { v, b, c, h, w })
    }
}

/// A convolution's input: an f32 map rounded (after the ReLU, if asked) band by band as it
/// is read, or a map already in bf16, read in place.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32 { map: &'a Map, relu: bool },
    Bf16(&'a Map16),
}

impl<T> Map<T> {
    /// (B, C, h, w).
    fn dims(&self) -> (usize, usize, usize, usize) {
        (self.b, self.c, self.h, self.w)
    }
}

impl<'a> Src<'a> {
    fn f32(map: &'a Map, relu: bool) -> Src<'a> {
        Src::F32 { map, relu }
    }

    fn dims(&self) -> (usize, usize, usize, usize) {
        match self {
            Src::F32 { map, .. } => map.dims(),
            Src::Bf16(m) => m.dims(),
        }
    }
}

/// A band task's writer: `(at, band, src)` runs the band's convolution on `src` (its input
/// rows in bf16) into the output from value `at`; false where oneDNN declined.
type BandFn<'a> = dyn Fn(usize, &ConvBand, *const u16) -> bool + Sync + 'a;

/// A same-padded 3x3 (`layer`) over `x`, band by band in parallel: each task gets its
/// input rows in bf16 (rounded from f32, after the ReLU if asked, or read in place) and
/// hands them to `run`. False where oneDNN declined.
fn conv_bands(layer: &Layer, x: Src<'_>, relu_out: bool, run: &BandFn<'_>) -> Result<bool> {
    let (b, xc, h, w) = x.dims();
    let (ci, co) = (layer.ci, layer.co);
    if xc != ci {
        bail!("da3-dpt-decoder: a {ci}->{co} convolution on a {xc}-channel map");
    }
    let flops = 2.0 * (b * h * w * ci * co * 9) as f64;
    let declined = AtomicBool::new(false);
    let bands = h.div_ceil(BAND);
    timed("conv-bf16", flops, || {
        (0..b * bands).into_par_iter().for_each(|task| {
            let (v, r0) = (task / bands, (task % bands) * BAND);
            if declined.load(Ordering::Relaxed) {
                return;
            }
            let r1 = (r0 + BAND).min(h);
            let ((s0, s1), band) = ConvBand::same_3x3((ci, co), (r0, r1), (h, w), relu_out);
            let span = (v * h + s0) * w * ci..(v * h + s1) * w * ci;
            let at = (v * h + r0) * w * co;
            let done = match x {
                Src::Bf16(m) => run(at, &band, m.v[span].as_ptr()),
                Src::F32 { map, relu } => {
                    with_rounded_relu(Half::Bf16, &map.v[span], relu, |src| {
                        run(at, &band, src.as_ptr())
                    })
                }
            };
            if !done {
                declined.store(true, Ordering::Relaxed);
            }
        })
    });
    Ok(!declined.into_inner())
}

/// `[relu](conv(x) + bias) + Σ residuals` of a channels-last map, the 3x3 in bf16 by
/// oneDNN (f32 sums and output); `None` where oneDNN declined.
fn conv3x3(layer: &Layer, x: Src<'_>, relu_out: bool, residuals: &[&Map]) -> Result<Option<Map>> {
    let (b, _, h, w) = x.dims();
    let co = layer.co;
    if residuals
        .iter()
        .any(|r| (r.b, r.h, r.w, r.c) != (b, h, w, co))
    {
        bail!("da3-dpt-decoder: residuals do not match a {co}-channel output");
    }
    let mut y = output_buffer(b * h * w * co);
    let yp = SyncPtr(y.as_mut_ptr());
    let run = |at: usize, band: &ConvBand, src: *const u16| {
        let n = band.out_rows() * w * co;
        // SAFETY: `src` holds the band's input rows; its n output values from `at` are
        // this task's alone.
        unsafe {
            let dst = yp.get().add(at);
            if !conv_bf16_nhwc(layer.id, band, &layer.w, &layer.b, src, dst) {
                return false;
            }
            let out = std::slice::from_raw_parts_mut(dst, n);
            for r in residuals {
                for (o, a) in out.iter_mut().zip(&r.v[at..at + n]) {
                    *o += a;
                }
            }
        }
        true
    };
    let done = conv_bands(layer, x, relu_out, &run)?;
    Ok(done.then_some(Map {
        v: y,
        b,
        c: co,
        h,
        w,
    }))
}

/// [`conv3x3`] with its output in bf16, rounded by oneDNN: for a map only another 3x3
/// reads (the residual units' inner convolutions).
fn conv3x3_bf16_out(layer: &Layer, x: Src<'_>, relu_out: bool) -> Result<Option<Map16>> {
    let (b, _, h, w) = x.dims();
    let co = layer.co;
    let mut y = vec![0u16; b * h * w * co];
    let yp = Ptr16(y.as_mut_ptr());
    let run = |at: usize, band: &ConvBand, src: *const u16| {
        // SAFETY: as in `conv3x3`.
        unsafe { conv_bf16_nhwc_to_bf16(layer.id, band, &layer.w, &layer.b, src, yp.at(at)) }
    };
    let done = conv_bands(layer, x, relu_out, &run)?;
    Ok(done.then_some(Map16 {
        v: y,
        b,
        c: co,
        h,
        w,
    }))
}

/// A bf16 output that band tasks write in disjoint parts.
struct Ptr16(*mut u16);
// SAFETY: the tasks write disjoint ranges.
unsafe impl Sync for Ptr16 {}

impl Ptr16 {
    /// The pointer `at` values on.
    fn at(&self, at: usize) -> *mut u16 {
        self.0.wrapping_add(at)
    }
}

/// `out_conv`, a 1x1 convolution in f32, of a channels-last map: one GEMM per band of
/// pixels, (pixels × c) · Wᵀ + bias.
fn conv1x1(x: &Map, (weight, bias): (&Tensor, Option<&Tensor>)) -> Result<Map> {
    let (co, ci, _, _) = weight.dims4()?;
    if ci != x.c || weight.dims()[2..] != [1, 1] {
        bail!(
            "da3-dpt-decoder: 1x1 weights {:?} for {} channels",
            weight.dims(),
            x.c
        );
    }
    let w = weight.flatten_all()?.to_vec1::<f32>()?;
    let bias = bias_values(bias)?;
    let p = x.b * x.h * x.w;
    let mut y = output_buffer(p * co);
    let rows = chunk_len(p, 64);
    timed("conv1x1", 2.0 * (p * ci * co) as f64, || {
        y.par_chunks_mut(rows * co)
            .zip(x.v.par_chunks(rows * ci))
            .for_each(|(o, xs)| {
                let m = xs.len() / ci;
                if let Some(b) = &bias {
                    for row in o.chunks_exact_mut(co) {
                        row.copy_from_slice(b);
                    }
                }
                // SAFETY: `o` is m × co, `xs` m × ci, `w` co × ci (read as ci × co columns).
                unsafe {
                    sgemm(
                        (m, co, ci),
                        Mat::rows(o.as_mut_ptr(), co),
                        bias.is_some(),
                        Mat::rows(xs.as_ptr(), ci),
                        Mat::cols(w.as_ptr(), ci),
                        1.0,
                    )
                }
            })
    });
    Ok(Map { v: y, c: co, ..*x })
}

/// The any-view DPT's depth decoder with mixed precision: `levels` (the neck's four resized
/// maps, (B, C_i, h_i, w_i), finest first) through their `adapters` (the `layer*_rn` 3x3s,
/// to the decoder's C channels), fused top-down by `blocks` (refinenet1..4), each block's
/// output resized to the next finer level's size (refinenet1's to twice its own), then
/// `conv1` (`output_conv1`) and the output `heads` as [`super::upsampled_heads`] runs them.
/// The same sums as the f32 path with every 3x3's input and weights rounded to bf16.
/// `Ok(None)` where a layer has no bf16 form or oneDNN declined (the caller runs the f32
/// path; nothing is returned half done).
pub fn fusion_heads(
    levels: &[Tensor],
    adapters: &[HalfLayer<'_>],
    blocks: &[FusionLayers<'_>],
    conv1: HalfLayer<'_>,
    out: (usize, usize),
    uv: Option<(&[f32], &[f32])>,
    heads: &[ConvHead<'_>],
) -> Result<Option<Vec<Tensor>>> {
    if levels.len() != 4 || adapters.len() != 4 || blocks.len() != 4 {
        bail!(
            "da3-dpt-decoder: 4 levels, adapters and blocks, got {}, {} and {}",
            levels.len(),
            adapters.len(),
            blocks.len()
        );
    }
    if heads.iter().any(|h| h.half.is_none()) {
        return Ok(None);
    }
    // Every layer's host values, or the caller's path if one has no bf16 form.
    let mut layers = Vec::with_capacity(4 * 5 + 1);
    let all = adapters
        .iter()
        .chain(
            blocks
                .iter()
                .flat_map(|b| b.res1.iter().flatten().chain(&b.res2)),
        )
        .chain(std::iter::once(&conv1));
    for l in all {
        match Layer::new(l)? {
            Some(l) => layers.push(l),
            None => return Ok(None),
        }
    }
    let (adapt, mut rest) = layers.split_at(4);
    let mut units = Vec::with_capacity(4);
    for blk in blocks {
        let n1 = if blk.res1.is_some() { 2 } else { 0 };
        let (res1, tail) = rest.split_at(n1);
        let (res2, tail) = tail.split_at(2);
        units.push((res1, res2));
        rest = tail;
    }
    let conv1 = &rest[0];
    // The adapted maps, channels last.
    let mut lv = Vec::with_capacity(4);
    for (t, a) in levels.iter().zip(adapt) {
        let Some(l) = conv3x3(a, Src::Bf16(&Map16::from_nchw(t)?), false, &[])? else {
            return Ok(None);
        };
        lv.push(l);
    }
    let mut x: Option<Map> = None;
    for k in (0..4).rev() {
        let (res1, res2) = units[k];
        let l = &lv[k];
        // y = x + res1(l), or l itself at the coarsest level
        let y = match (res1, &x) {
            ([r1, r2], Some(x)) => {
                let Some(t) = conv3x3_bf16_out(r1, Src::f32(l, true), true)? else {
                    return Ok(None);
                };
                let Some(y) = conv3x3(r2, Src::Bf16(&t), false, &[l, x])? else {
                    return Ok(None);
                };
                y
            }
            ([], None) => Map {
                v: l.v.clone(),
                ..*l
            },
            _ => bail!(
                "da3-dpt-decoder: refinenet{} without its lateral unit",
                k + 1
            ),
        };
        let Some(t) = conv3x3_bf16_out(&res2[0], Src::f32(&y, true), true)? else {
            return Ok(None);
        };
        let Some(z) = conv3x3(&res2[1], Src::Bf16(&t), false, &[&y])? else {
            return Ok(None);
        };
        // 1x1 first, then the resize (both linear per channel, equal up to rounding: as
        // the f32 path's `FusionBlock::forward`).
        let o = conv1x1(&z, blocks[k].out_conv)?;
        let (th, tw) = match k {
            0 => (2 * o.h, 2 * o.w),
            _ => (lv[k - 1].h, lv[k - 1].w),
        };
        let v = resize_channels_last(&o.v, (o.b, o.c, o.h, o.w), (th, tw));
        x = Some(Map {
            v,
            h: th,
            w: tw,
            ..o
        });
    }
    let Some(x) = x else {
        bail!("da3-dpt-decoder: no levels");
    };
    let Some(m) = conv3x3(conv1, Src::f32(&x, false), false, &[])? else {
        return Ok(None);
    };
    let dev = levels[0].device();
    heads_channels_last(m.v, (m.b, m.c, m.h, m.w), out, uv, heads, dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::{conv2d, resize_bilinear_ac, upsampled_heads, ConvExt};
    use crate::testing::{bf16_rounded as bf16, max_rel_err, rand};

    /// Random layer weights, scaled so that the maps stay of order one through the chain.
    fn weights(shape: &[usize], seed: u64) -> Tensor {
        (rand(shape, seed) * 0.15).unwrap()
    }

    /// A 3x3 layer's owned weights and its bf16 name.
    struct Owned {
        w: Tensor,
        b: Option<Tensor>,
        half: Option<HalfConv>,
    }

    impl Owned {
        fn new(ci: usize, co: usize, seed: u64) -> Owned {
            Owned {
                w: weights(&[co, ci, 3, 3], seed),
                b: Some(weights(&[co], seed + 1)),
                half: HalfConv::new(Half::Bf16),
            }
        }
        /// Without a bias, as the `layer*_rn` adapters.
        fn no_bias(ci: usize, co: usize, seed: u64) -> Owned {
            Owned {
                b: None,
                ..Owned::new(ci, co, seed)
            }
        }
        fn layer(&self) -> HalfLayer<'_> {
            HalfLayer {
                weight: &self.w,
                bias: self.b.as_ref(),
                half: self.half.as_ref(),
            }
        }
        /// The layer by the f32 kernels on bf16-rounded inputs and weights: `[relu](conv(
        /// relu?(x))) + Σ residuals`, the sums the decoder computes (in another order).
        fn rounded(
            &self,
            x: &Tensor,
            (relu_in, relu_out): (bool, bool),
            res: &[&Tensor],
        ) -> Tensor {
            let x = if relu_in {
                x.relu().unwrap()
            } else {
                x.clone()
            };
            let y = conv2d(
                &bf16(&x),
                &bf16(&self.w),
                self.b.as_ref(),
                1,
                1,
                ConvExt::default(),
            )
            .unwrap();
            let mut y = if relu_out { y.relu().unwrap() } else { y };
            for r in res {
                y = (y + *r).unwrap();
            }
            y
        }
    }

    /// Two views, four levels down to 2x2 (4-12 channels, adapted to 8), every block and a
    /// head with the UV embedding: against the same network by the f32 kernels on the
    /// values the decoder rounds (equal up to the order of the sums, and the odd bf16
    /// rounding that order flips), and against plain f32 within bf16's error. A layer
    /// without its bf16 form leaves the whole decoder to the caller; a CPU without oneDNN's
    /// bf16 convolution must decline, not guess.
    #[test]
    fn decoder_matches_f32_kernels_on_rounded_values() {
        let (c, b) = (8usize, 2usize);
        let sizes = [(12usize, 10usize), (6, 5), (3, 3), (2, 2)];
        let chans = [4usize, 6, 10, 12];
        let levels: Vec<Tensor> = sizes
            .iter()
            .zip(chans)
            .enumerate()
            .map(|(i, (&(h, w), ci))| rand(&[b, ci, h, w], 40 + i as u64))
            .collect();
        let adapt: Vec<Owned> = (0..4)
            .map(|i| Owned::no_bias(chans[i], c, 50 + i as u64))
            .collect();
        let adapters: Vec<HalfLayer<'_>> = adapt.iter().map(|a| a.layer()).collect();
        let units: Vec<[Owned; 4]> = (0..4u64)
            .map(|i| std::array::from_fn(|j| Owned::new(c, c, 100 + 10 * i + 2 * j as u64)))
            .collect();
        let outs: Vec<(Tensor, Tensor)> = (0..4u64)
            .map(|i| (weights(&[c, c, 1, 1], 200 + i), weights(&[c], 210 + i)))
            .collect();
        let blocks: Vec<FusionLayers<'_>> = (0..4)
            .map(|i| FusionLayers {
                res1: (i < 3).then(|| [units[i][0].layer(), units[i][1].layer()]),
                res2: [units[i][2].layer(), units[i][3].layer()],
                out_conv: (&outs[i].0, Some(&outs[i].1)),
            })
            .collect();
        let conv1 = Owned::new(c, c / 2, 300);
        let (mid, (oh, ow)) = (6usize, (30usize, 26usize));
        let head_half = HalfConv::new(Half::Bf16);
        let (hw, hb) = (weights(&[mid, c / 2, 3, 3], 310), weights(&[mid], 311));
        let (lw, lb) = (weights(&[2, mid, 1, 1], 312), weights(&[2], 313));
        let heads = [ConvHead {
            conv: &hw,
            bias: &hb,
            last: &lw,
            last_bias: Some(&lb),
            half: head_half.as_ref(),
        }];
        let ex = rand(&[c / 4 * ow], 320).to_vec1::<f32>().unwrap();
        let ey = rand(&[c / 4 * oh], 321).to_vec1::<f32>().unwrap();
        let uv = Some((&ex[..], &ey[..]));
        let got = fusion_heads(
            &levels,
            &adapters,
            &blocks,
            conv1.layer(),
            (oh, ow),
            uv,
            &heads,
        )
        .unwrap();
        let Some(got) = got else {
            assert!(
                !super::super::onednn::runs_bf16(),
                "oneDNN runs bf16 matmuls here but the decoder declined"
            );
            eprintln!("no oneDNN bf16 convolution here: declined (the f32 path runs)");
            return;
        };
        // The same network on the values the decoder rounds, and in plain f32.
        for rounded in [true, false] {
            let conv = |o: &Owned, x: &Tensor, relus: (bool, bool), res: &[&Tensor]| {
                if rounded {
                    return o.rounded(x, relus, res);
                }
                let x = if relus.0 {
                    x.relu().unwrap()
                } else {
                    x.clone()
                };
                let y = conv2d(&x, &o.w, o.b.as_ref(), 1, 1, ConvExt::default()).unwrap();
                let mut y = if relus.1 { y.relu().unwrap() } else { y };
                for r in res {
                    y = (y + *r).unwrap();
                }
                y
            };
            let mut x: Option<Tensor> = None;
            for k in (0..4).rev() {
                let u = &units[k];
                let l = &conv(&adapt[k], &levels[k], (false, false), &[]);
                let y = match &x {
                    Some(x) => {
                        let t = conv(&u[0], l, (true, true), &[]);
                        conv(&u[1], &t, (false, false), &[l, x])
                    }
                    None => l.clone(),
                };
                let t = conv(&u[2], &y, (true, true), &[]);
                let z = conv(&u[3], &t, (false, false), &[&y]);
                let o = conv2d(&z, &outs[k].0, Some(&outs[k].1), 1, 0, ConvExt::default());
                let (th, tw) = if k == 0 { (24, 20) } else { sizes[k - 1] };
                x = Some(resize_bilinear_ac(&o.unwrap(), th, tw, None).unwrap());
            }
            let m = conv(&conv1, &x.unwrap(), (false, false), &[]);
            let want = if rounded {
                upsampled_heads(&m, (oh, ow), uv, &heads).unwrap().unwrap()
            } else {
                let up = resize_bilinear_ac(&m, oh, ow, uv).unwrap();
                let ext = ConvExt {
                    then_1x1: Some((&lw, Some(&lb))),
                    ..Default::default()
                };
                vec![conv2d(&up, &hw, Some(&hb), 1, 1, ext).unwrap()]
            };
            assert_eq!(got[0].dims(), &[b, 2, oh, ow]);
            let e = max_rel_err(&got[0], &want[0]);
            eprintln!("rounded {rounded}: {e:.1e}");
            let bound = if rounded { 1e-3 } else { 2e-2 };
            assert!(e < bound, "rounded {rounded}: {e}");
        }
        // One layer without its bf16 form: the caller's path.
        let mut partial = blocks.clone();
        partial[2].res2[1].half = None;
        let none = fusion_heads(
            &levels,
            &adapters,
            &partial,
            conv1.layer(),
            (oh, ow),
            uv,
            &heads,
        )
        .unwrap();
        assert!(none.is_none());
    }
}
