//! bf16 GEMM on AVX512-BF16 (`vdpbf16ps`: 16 lanes, each the dot product of a pair of bf16
//! values with another pair, accumulated in f32), for CPUs that have the instruction but no
//! AMX: there oneMKL's bf16 GEMM is slower than its f32 one (Intel) or runs generic code
//! (AMD: `MKL_VERBOSE` names no ISA; ~46 GFLOP/s on a DA3-SMALL layer), measured in
//! docs/benchmarks.md.
//!
//! `dst (m×n) = [dst +] lhs (m×k) · wᵀ` with `lhs` and `w` row-major bf16 bits. The rows of
//! `lhs` are packed per call into panels of 32 rows by pairs of k (`[pair][row]`, one u32 per
//! row and pair, zero past the last row and for the odd k's missing half), so that one 512-bit
//! load holds a pair for 16 rows; each weight pair (contiguous in a weight row) is broadcast.
//! A tile is 32 rows × 6 weight columns: 12 accumulators. The weight panel of 6 columns
//! (6 × k bf16) stays in L1 while the row panels pass under it.

use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows of a panel (two 16-lane vectors).
const MR: usize = 32;
/// Weight columns of a tile.
const NR: usize = 6;

/// Whether this CPU runs `vdpbf16ps`.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
}

thread_local! {
    static PANELS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The bf16 pair `(x[2p], x[2p + 1])` of a row of `k` values as one u32 (low half first), the
/// missing half of an odd `k` as zero.
#[inline]
fn pair(row: &[u16], p: usize) -> u32 {
    let lo = row[2 * p] as u32;
    let hi = row.get(2 * p + 1).copied().unwrap_or(0) as u32;
    lo | (hi << 16)
}

/// `dst (m×n, row stride ldd) = [dst +] lhs (m×k) · wᵀ` (`w`: n×k), bf16 inputs, f32
/// accumulation, single-threaded (callers split the work).
///
/// # Safety
/// [`available`] must hold; `dst` must be writable for `m` rows of `ldd` floats (first `n`
/// of each) and not alias the inputs; `lhs` holds `m·k` and `w` `n·k` values.
pub unsafe fn gemm_xwt_bf16(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: &[u16],
    w: &[u16],
) {
    debug_assert!(lhs.len() >= m * k && w.len() >= n * k && ldd >= n);
    if m == 0 || n == 0 {
        return;
    }
    let kp = k.div_ceil(2);
    let panels = m.div_ceil(MR);
    PANELS.with(|cell| {
        let mut buf = cell.borrow_mut();
        let len = panels * kp * MR;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let buf = &mut buf[..len];
        for (pi, panel) in buf.chunks_mut(kp * MR).enumerate() {
            for i in 0..MR {
                let r = pi * MR + i;
                if r < m {
                    let row = &lhs[r * k..(r + 1) * k];
                    for p in 0..kp {
                        panel[p * MR + i] = pair(row, p);
                    }
                } else {
                    for p in 0..kp {
                        panel[p * MR + i] = 0;
                    }
                }
            }
        }
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(NR);
            for (pi, panel) in buf.chunks(kp * MR).enumerate() {
                let r0 = pi * MR;
                let t = Tile {
                    panel,
                    kp,
                    w,
                    k,
                    j0,
                    dst,
                    ldd,
                    r0,
                    rows: (m - r0).min(MR),
                    accumulate,
                };
                if cols == NR {
                    tile::<NR>(&t);
                } else {
                    for c in 0..cols {
                        tile::<1>(&Tile { j0: j0 + c, ..t });
                    }
                }
            }
            j0 += cols;
        }
    });
}

#[derive(Clone, Copy)]
struct Tile<'a> {
    panel: &'a [u32],
    kp: usize,
    w: &'a [u16],
    k: usize,
    j0: usize,
    dst: *mut f32,
    ldd: usize,
    r0: usize,
    rows: usize,
    accumulate: bool,
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const C: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); 2]; C];
    let full = t.k / 2;
    let a = t.panel.as_ptr();
    let wrow = |c: usize| t.w.as_ptr().add((t.j0 + c) * t.k);
    for p in 0..full {
        let a0: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(p * MR).cast()));
        let a1: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(p * MR + 16).cast()));
        for (c, acc) in acc.iter_mut().enumerate() {
            let wp = (wrow(c).add(2 * p) as *const u32).read_unaligned();
            let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(wp as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], a0, b);
            acc[1] = _mm512_dpbf16_ps(acc[1], a1, b);
        }
    }
    if t.kp > full {
        // odd k: the last pair's second half is zero in the panel and in the weight
        let p = full;
        let a0: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(p * MR).cast()));
        let a1: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(p * MR + 16).cast()));
        for (c, acc) in acc.iter_mut().enumerate() {
            let wp = *wrow(c).add(2 * p) as u32;
            let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(wp as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], a0, b);
            acc[1] = _mm512_dpbf16_ps(acc[1], a1, b);
        }
    }
    let mut col = [0f32; MR];
    for (c, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(col.as_mut_ptr(), acc[0]);
        _mm512_storeu_ps(col.as_mut_ptr().add(16), acc[1]);
        for (i, v) in col.iter().take(t.rows).enumerate() {
            let d = t.dst.add((t.r0 + i) * t.ldd + t.j0 + c);
            *d = if t.accumulate { *d + v } else { *v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }

    /// Every shape class (full and partial panels and tiles, odd k, accumulate or not)
    /// against f64 products of the same bf16 values.
    #[test]
    fn equals_f64_products_of_the_bf16_values() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: skipped");
            return;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (37, 29, 70),
            (64, 12, 33),
            (5, 7, 384),
            (33, 6, 2),
        ] {
            let x: Vec<u16> = (0..m * k)
                .map(|i| bf16(((i * 37 % 101) as f32 - 50.0) * 0.013))
                .collect();
            let w: Vec<u16> = (0..n * k)
                .map(|i| bf16(((i * 53 % 89) as f32 - 44.0) * 0.021))
                .collect();
            let f = |b: u16| half::bf16::from_bits(b).to_f64();
            for accumulate in [false, true] {
                let ldd = n + 3;
                let mut out = vec![1.0f32; m * ldd];
                unsafe { gemm_xwt_bf16((m, n, k), out.as_mut_ptr(), ldd, accumulate, &x, &w) };
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|p| f(x[i * k + p]) * f(w[j * k + p])).sum();
                        let want = dot + if accumulate { 1.0 } else { 0.0 };
                        let got = out[i * ldd + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{m}x{n}x{k} acc {accumulate} ({i},{j}): {got} vs {want}"
                        );
                    }
                    for j in n..ldd {
                        assert_eq!(out[i * ldd + j], 1.0, "wrote past n");
                    }
                }
            }
        }
    }
}
