//! Bit-level emulation of OpenCV's `cv::resize` for 8-bit interleaved images.
//!
//! Two interpolations are provided, the ones the DA3 reference preprocessing uses:
//!
//! * [`resize_cubic`] — `INTER_CUBIC`: separable 4-tap kernel with A = -0.75, weights quantised
//!   to 11 fractional bits; the horizontal pass accumulates in `i32`, the vertical pass follows
//!   OpenCV's x86 baseline (SSE) code: blocks of 8 outputs are finished in `f32` and rounded to
//!   nearest-even, the remaining `width % 8` outputs of each row with the integer
//!   `(sum + 2^21) >> 22` rounding.
//! * [`resize_area`] — `INTER_AREA` for shrinking: pixel-area averaging with `f32` weights, an
//!   integer-factor fast path (2x2 blocks use `(sum + 2) >> 2`).
//!
//! All sizes are `(width, height)`; buffers are row-major, `channels` interleaved, no padding.

use rayon::prelude::*;

/// OpenCV's `INTER_RESIZE_COEF_BITS`.
const COEF_BITS: i32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;
/// Number of outputs the baseline-SIMD vertical cubic pass finishes per iteration
/// (`v_int16` lanes of a 128-bit register).
const CUBIC_VEC_BLOCK: usize = 8;

/// Interpolation used by [`resize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// OpenCV `INTER_CUBIC`.
    Cubic,
    /// OpenCV `INTER_AREA` (shrinking only: each output size must be <= the input size).
    Area,
}

/// Resize an interleaved 8-bit image like `cv2.resize(src, (dst_w, dst_h), interpolation=..)`.
///
/// Panics if a size is zero, if `src.len() != src_w * src_h * channels`, or for `Area` with a
/// larger output size (OpenCV switches to a bilinear variant there, which DA3 never uses).
pub fn resize(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
    interpolation: Interpolation,
) -> Vec<u8> {
    match interpolation {
        Interpolation::Cubic => resize_cubic(src, src_w, src_h, channels, dst_w, dst_h),
        Interpolation::Area => resize_area(src, src_w, src_h, channels, dst_w, dst_h),
    }
}

fn check_sizes(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) {
    assert!(
        src_w > 0 && src_h > 0 && dst_w > 0 && dst_h > 0 && channels > 0,
        "resize: empty size ({src_w}x{src_h} -> {dst_w}x{dst_h}, {channels} channels)"
    );
    assert_eq!(
        src.len(),
        src_w * src_h * channels,
        "resize: buffer length does not match size"
    );
}

/// OpenCV's source-to-destination scale: `1 / (dst / src)` in `f64`, exactly as it computes it.
fn cv_scale(src: usize, dst: usize) -> f64 {
    1.0 / (dst as f64 / src as f64)
}

/// Cubic convolution weights for the fractional offset `x` (A = -0.75), in OpenCV's `f32`
/// evaluation order.
pub fn cubic_weights(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let x1 = x + 1.0;
    let c0 = ((A * x1 - 5.0 * A) * x1 + 8.0 * A) * x1 - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let y = 1.0 - x;
    let c2 = ((A + 2.0) * y - (A + 3.0)) * y * y + 1.0;
    let c3 = 1.0 - c0 - c1 - c2;
    [c0, c1, c2, c3]
}

/// `cvRound` for `f32`: round half to even (the x86 default rounding mode).
#[inline]
fn round_even_f32(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Fixed-point cubic weights and the first source index for each output coordinate.
fn cubic_table(src_len: usize, dst_len: usize) -> (Vec<isize>, Vec<[i16; 4]>) {
    let scale = cv_scale(src_len, dst_len);
    let mut first = Vec::with_capacity(dst_len);
    let mut weights = Vec::with_capacity(dst_len);
    for d in 0..dst_len {
        let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let s = f.floor();
        let frac = f - s;
        let c = cubic_weights(frac);
        let q = c
            .map(|w| round_even_f32(w * COEF_SCALE).clamp(i16::MIN as i32, i16::MAX as i32) as i16);
        first.push(s as isize - 1);
        weights.push(q);
    }
    (first, weights)
}

#[inline]
fn clamp_index(i: isize, len: usize) -> usize {
    i.clamp(0, len as isize - 1) as usize
}

/// `cv2.resize(.., interpolation=cv2.INTER_CUBIC)` on an 8-bit interleaved image.
pub fn resize_cubic(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) -> Vec<u8> {
    check_sizes(src, src_w, src_h, channels, dst_w, dst_h);
    let cn = channels;
    let (xfirst, xw) = cubic_table(src_w, dst_w);
    let (yfirst, yw) = cubic_table(src_h, dst_h);
    let row_len = dst_w * cn;

    // Horizontal pass for one source row (cached: consecutive outputs share rows).
    let hpass = |sy: usize, out: &mut Vec<i32>| {
        out.clear();
        let row = &src[sy * src_w * cn..(sy + 1) * src_w * cn];
        for dx in 0..dst_w {
            let w = xw[dx];
            let idx: [usize; 4] =
                std::array::from_fn(|k| clamp_index(xfirst[dx] + k as isize, src_w) * cn);
            for c in 0..cn {
                let mut v: i32 = 0;
                for k in 0..4 {
                    v = v.wrapping_add((row[idx[k] + c] as i32).wrapping_mul(w[k] as i32));
                }
                out.push(v);
            }
        }
    };

    let mut cache: Vec<(usize, Vec<i32>)> = Vec::with_capacity(4);
    let mut dst = vec![0u8; dst_h * row_len];
    let vec_end = if row_len >= CUBIC_VEC_BLOCK {
        row_len / CUBIC_VEC_BLOCK * CUBIC_VEC_BLOCK
    } else {
        0
    };
    let fscale = 1.0f32 / (COEF_SCALE * COEF_SCALE);
    for dy in 0..dst_h {
        let rows: [usize; 4] = std::array::from_fn(|k| clamp_index(yfirst[dy] + k as isize, src_h));
        // Refresh the row cache.
        let mut new_cache: Vec<(usize, Vec<i32>)> = Vec::with_capacity(4);
        for &r in &rows {
            if new_cache.iter().any(|(i, _)| *i == r) {
                continue;
            }
            if let Some(pos) = cache.iter().position(|(i, _)| *i == r) {
                new_cache.push(cache.swap_remove(pos));
            } else {
                let mut buf = cache.pop().map(|(_, b)| b).unwrap_or_default();
                hpass(r, &mut buf);
                new_cache.push((r, buf));
            }
        }
        cache = new_cache;
        let get = |r: usize| -> &[i32] { &cache.iter().find(|(i, _)| *i == r).unwrap().1 };
        let (s0, s1, s2, s3) = (get(rows[0]), get(rows[1]), get(rows[2]), get(rows[3]));
        let b = yw[dy];
        let bf = b.map(|v| v as f32 * fscale);
        let out = &mut dst[dy * row_len..(dy + 1) * row_len];
        for x in 0..vec_end {
            let mut t = s3[x] as f32 * bf[3];
            t += s2[x] as f32 * bf[2];
            t += s1[x] as f32 * bf[1];
            t += s0[x] as f32 * bf[0];
            // v_round, then saturating packs i32 -> i16 -> u8.
            out[x] = round_even_f32(t).clamp(0, 255) as u8;
        }
        let (b0, b1, b2, b3) = (b[0] as i32, b[1] as i32, b[2] as i32, b[3] as i32);
        for x in vec_end..row_len {
            let v = s0[x]
                .wrapping_mul(b0)
                .wrapping_add(s1[x].wrapping_mul(b1))
                .wrapping_add(s2[x].wrapping_mul(b2))
                .wrapping_add(s3[x].wrapping_mul(b3));
            let v = v.wrapping_add(1 << (2 * COEF_BITS - 1)) >> (2 * COEF_BITS);
            out[x] = v.clamp(0, 255) as u8;
        }
    }
    dst
}

/// One term of OpenCV's area-resize table: destination index, source index, weight.
#[derive(Clone, Copy, Debug)]
struct AreaTerm {
    dst: usize,
    src: usize,
    alpha: f32,
}

fn area_table(src_len: usize, dst_len: usize, scale: f64) -> Vec<AreaTerm> {
    let mut tab = Vec::with_capacity(src_len * 2);
    for d in 0..dst_len {
        let fs1 = d as f64 * scale;
        let fs2 = fs1 + scale;
        let cell = scale.min(src_len as f64 - fs1);
        let mut s2 = fs2.floor() as isize;
        s2 = s2.min(src_len as isize - 1);
        let s1 = (fs1.ceil() as isize).min(s2);
        if s1 as f64 - fs1 > 1e-3 {
            tab.push(AreaTerm {
                dst: d,
                src: (s1 - 1) as usize,
                alpha: ((s1 as f64 - fs1) / cell) as f32,
            });
        }
        for s in s1..s2 {
            tab.push(AreaTerm {
                dst: d,
                src: s as usize,
                alpha: (1.0 / cell) as f32,
            });
        }
        if fs2 - s2 as f64 > 1e-3 {
            tab.push(AreaTerm {
                dst: d,
                src: s2 as usize,
                alpha: ((fs2 - s2 as f64).min(1.0).min(cell) / cell) as f32,
            });
        }
    }
    tab
}

/// `cv2.resize(.., interpolation=cv2.INTER_AREA)` on an 8-bit interleaved image, for outputs no
/// larger than the input on both axes.
pub fn resize_area(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) -> Vec<u8> {
    check_sizes(src, src_w, src_h, channels, dst_w, dst_h);
    assert!(
        dst_w <= src_w && dst_h <= src_h,
        "resize_area: only shrinking is supported ({src_w}x{src_h} -> {dst_w}x{dst_h})"
    );
    let cn = channels;
    let scale_x = cv_scale(src_w, dst_w);
    let scale_y = cv_scale(src_h, dst_h);
    let iscale_x = scale_x.round_ties_even() as usize;
    let iscale_y = scale_y.round_ties_even() as usize;
    if (scale_x - iscale_x as f64).abs() < f64::EPSILON
        && (scale_y - iscale_y as f64).abs() < f64::EPSILON
    {
        return resize_area_fast(src, src_w, src_h, cn, dst_w, dst_h, iscale_x, iscale_y);
    }

    let xtab = area_table(src_w, dst_w, scale_x);
    let ytab = area_table(src_h, dst_h, scale_y);
    let row_len = dst_w * cn;
    let mut dst = vec![0u8; dst_h * row_len];
    // The table's terms come in output-row order: each output row is its own task (a source
    // row shared by two output rows is filtered twice, with the same result).
    let mut first = vec![ytab.len(); dst_h + 1];
    for (i, t) in ytab.iter().enumerate().rev() {
        first[t.dst] = i;
    }
    for dy in (0..dst_h).rev() {
        first[dy] = first[dy].min(first[dy + 1]);
    }
    dst.par_chunks_mut(row_len.max(1))
        .enumerate()
        .for_each_init(
            || (vec![0f32; row_len], vec![0f32; row_len]),
            |(buf, sum), (dy, out)| {
                let terms = &ytab[first[dy]..first[dy + 1]];
                for (i, yt) in terms.iter().enumerate() {
                    let row = &src[yt.src * src_w * cn..(yt.src + 1) * src_w * cn];
                    buf.iter_mut().for_each(|v| *v = 0.0);
                    for xt in &xtab {
                        let (d, s) = (xt.dst * cn, xt.src * cn);
                        for c in 0..cn {
                            buf[d + c] += row[s + c] as f32 * xt.alpha;
                        }
                    }
                    let beta = yt.alpha;
                    if i == 0 {
                        for (s, &b) in sum.iter_mut().zip(buf.iter()) {
                            *s = beta * b;
                        }
                    } else {
                        for (s, &b) in sum.iter_mut().zip(buf.iter()) {
                            *s += beta * b;
                        }
                    }
                }
                if !terms.is_empty() {
                    for (o, &s) in out.iter_mut().zip(sum.iter()) {
                        *o = round_even_f32(s).clamp(0, 255) as u8;
                    }
                }
            },
        );
    dst
}

#[allow(clippy::too_many_arguments)]
fn resize_area_fast(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    cn: usize,
    dst_w: usize,
    dst_h: usize,
    sx: usize,
    sy: usize,
) -> Vec<u8> {
    let row_len = dst_w * cn;
    let mut dst = vec![0u8; dst_h * row_len];
    let area = sx * sy;
    let inv_area = 1.0f32 / area as f32;
    let two_by_two = sx == 2 && sy == 2 && matches!(cn, 1 | 3 | 4);
    let src_stride = src_w * cn;
    for dy in 0..dst_h {
        let y0 = dy * sy;
        for dx in 0..dst_w {
            let x0 = dx * sx;
            for c in 0..cn {
                let mut total: i32 = 0;
                let mut count: i32 = 0;
                for yy in y0..(y0 + sy).min(src_h) {
                    for xx in x0..(x0 + sx).min(src_w) {
                        total += src[yy * src_stride + xx * cn + c] as i32;
                        count += 1;
                    }
                }
                let full = count as usize == area;
                dst[dy * row_len + dx * cn + c] = if full && two_by_two {
                    ((total + 2) >> 2) as u8
                } else if full {
                    round_even_f32(total as f32 * inv_area).clamp(0, 255) as u8
                } else if count > 0 {
                    round_even_f32(total as f32 / count as f32).clamp(0, 255) as u8
                } else {
                    0
                };
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_sum_to_one_and_interpolate() {
        for i in 0..=16 {
            let x = i as f32 / 16.0;
            let w = cubic_weights(x);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
        // Known OpenCV value at 0.5: [-0.09375, 0.59375, 0.59375, -0.09375].
        assert_eq!(cubic_weights(0.5), [-0.09375, 0.59375, 0.59375, -0.09375]);
    }

    #[test]
    fn constant_images_stay_constant() {
        let src = vec![77u8; 13 * 9 * 3];
        for (w, h) in [(26, 18), (7, 5), (13, 4), (30, 9)] {
            let c = resize_cubic(&src, 13, 9, 3, w, h);
            assert!(c.iter().all(|&v| v == 77), "cubic {w}x{h}");
        }
        for (w, h) in [(7, 5), (13, 3), (6, 9), (1, 1)] {
            let a = resize_area(&src, 13, 9, 3, w, h);
            assert!(a.iter().all(|&v| v == 77), "area {w}x{h}");
        }
    }

    #[test]
    fn area_two_by_two_rounds_half_up() {
        // One 2x2 block summing to 2 (mean 0.5): OpenCV's 2x2 path gives 1.
        let src = vec![1u8, 1, 0, 0];
        assert_eq!(resize_area(&src, 2, 2, 1, 1, 1), vec![1]);
        // 3x3 block summing to 9*0.5: f32 mean rounds half to even.
        let mut src = vec![0u8; 9];
        src[0] = 4;
        src[1] = 1; // sum 5 -> 0.555 -> 1
        assert_eq!(resize_area(&src, 3, 3, 1, 1, 1), vec![1]);
    }

    #[test]
    fn area_non_integer_matches_hand_computation() {
        // 3 -> 2 pixels: cells [0,1.5) and [1.5,3) -> (a + b/2)/1.5, (b/2 + c)/1.5.
        let src = vec![30u8, 60, 90];
        let out = resize_area(&src, 3, 1, 1, 2, 1);
        assert_eq!(out, vec![40, 80]);
    }

    #[test]
    fn cubic_upscale_of_ramp_is_monotonic_inside() {
        let src: Vec<u8> = (0..16).map(|i| (i * 16) as u8).collect();
        let out = resize_cubic(&src, 16, 1, 1, 37, 1);
        for w in out[3..34].windows(2) {
            assert!(w[1] >= w[0], "{out:?}");
        }
    }

    #[test]
    fn identity_cubic_is_exact() {
        let src: Vec<u8> = (0..(11 * 7 * 3)).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize_cubic(&src, 11, 7, 3, 11, 7), src);
    }
}
