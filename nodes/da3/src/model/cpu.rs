//! f32 CPU kernels for the hot paths of the network, written for the shapes DA3 runs:
//! linear layers (bias and exact GELU fused), blocked attention that never holds more than
//! one block of scores per thread, convolutions as band-wise im2col + GEMM (stride 1: by
//! rows, one GEMM per kernel row; 3x3 with enough channels: Winograd F(2x2, 3x3)),
//! transposed convolutions with kernel = stride as one GEMM + scatter, and an
//! `align_corners` bilinear resize. All GEMMs go through the `gemm`
//! crate (the one candle uses), single-threaded per task, with the work split over rayon's
//! pool: one level of threading, no nesting.
//!
//! Used when a tensor is f32 on the CPU; other dtypes and devices keep candle's ops.
//! `DA3_CPU_KERNELS=0` switches them off (candle's ops everywhere, about 2x slower).
//! Tuning knobs (defaults measured on a 2-core AVX2 machine, see docs/benchmarks.md):
//! `DA3_Q_BLOCK` (queries per attention block, 512, also the largest), `DA3_K_BLOCK` (keys
//! per online-softmax block, 512), `DA3_LINEAR_TASKS` (linear-layer tasks per thread, 1),
//! `DA3_LINEAR_SUB` (rows per fused sub-block, 256), `DA3_COL_BAND` (floats per im2col
//! band, 131072), `DA3_CONV_ROWS` (stride-1 convolutions by rows, 1; 0: full im2col),
//! `DA3_ROW_BAND` (floats per by-rows column band, 262144), `DA3_WINOGRAD` (3x3 stride-1
//! convolutions with Ci + Co >= 96 by Winograd, 1; 0: by rows).
//! `da3 bench --profile` shows the time and GFLOP/s of each kernel kind.

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether the f32 CPU kernels are used (default yes; `DA3_CPU_KERNELS=0` turns them off).
pub fn kernels_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("DA3_CPU_KERNELS").as_deref(),
            Ok("0") | Ok("false") | Ok("off")
        )
    })
}

/// Time and work of one kernel kind, summed over calls (see [`profile`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpStat {
    pub calls: u64,
    /// Multiply-adds counted as 2 flops, GEMM work only.
    pub flops: f64,
    pub secs: f64,
    /// CPU time of the whole process meanwhile (all threads; Linux), for how busy the
    /// thread pool kept the cores: `cpu_secs / (secs × threads)`.
    pub cpu_secs: f64,
}

/// CPU time used by this process so far, seconds (0 where unknown).
pub fn process_cpu_secs() -> f64 {
    #[cfg(target_os = "linux")]
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    0.0
}

static PROFILE_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static PROFILE: std::sync::Mutex<Vec<(&'static str, OpStat)>> = std::sync::Mutex::new(Vec::new());

/// Start (or stop) recording kernel times; clears what was recorded.
pub fn set_profiling(on: bool) {
    PROFILE_ON.store(on, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut p) = PROFILE.lock() {
        p.clear();
    }
}

/// Kernel times recorded since [`set_profiling`]`(true)`, by kernel kind.
pub fn profile() -> Vec<(&'static str, OpStat)> {
    PROFILE.lock().map(|p| p.clone()).unwrap_or_default()
}

fn timed<R>(name: &'static str, flops: f64, f: impl FnOnce() -> R) -> R {
    if !PROFILE_ON.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    let (t, c) = (std::time::Instant::now(), process_cpu_secs());
    let r = f();
    let secs = t.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - c;
    if let Ok(mut p) = PROFILE.lock() {
        let i = match p.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                p.push((name, OpStat::default()));
                p.len() - 1
            }
        };
        let st = &mut p[i].1;
        st.calls += 1;
        st.flops += flops;
        st.secs += secs;
        st.cpu_secs += cpu_secs;
    }
    r
}

/// Let the allocator keep freed memory for the next frame instead of returning it to the
/// system: every forward allocates the same buffers again, and fresh pages from the kernel
/// cost a page fault and a zeroing each (~5% of a forward on CPU). Peak RSS is unchanged;
/// RSS stays at the peak between frames. glibc only; `DA3_KEEP_MEMORY=0` turns it off.
pub fn keep_freed_memory() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if matches!(std::env::var("DA3_KEEP_MEMORY").as_deref(), Ok("0")) {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            // Blocks up to 1 GiB come from the heap (reused), and the heap top is not trimmed.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}

/// True when `t` should take the f32 CPU kernels.
pub fn use_kernels(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu() && kernels_enabled()
}

/// Run `f` on the f32 data of a CPU tensor (with its layout).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(cs) => f(cs.as_slice::<f32>()?, l),
        _ => bail!("da3 cpu kernel: tensor is not on the CPU"),
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    Ok(&data[l.start_offset()..])
}

/// The f32 data of a contiguous input (the kernels' common entry check).
fn contiguous_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    if !l.is_contiguous() {
        bail!("{op}: input must be contiguous");
    }
    f32_slice(s, l)
}

/// A layer's bias as host values.
fn bias_values(bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    bias.map(|b| b.to_vec1::<f32>()).transpose()
}

/// A raw pointer that tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the field).
    fn get(self) -> *mut f32 {
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
fn output_buffer(n: usize) -> Vec<f32> {
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
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        if v.len() < n {
            v.resize(n, 0.0);
        }
        f(&mut v[..n])
    })
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, all with explicit row/column strides,
/// single-threaded (callers split the work).
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        if accumulate { 1.0 } else { 0.0 },
        scale,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// Split `n` items into chunks of at least `min` so that there are about `4 × threads` tasks.
fn chunk_len(n: usize, min: usize) -> usize {
    chunk_len_tasks(n, min, 4)
}

/// Like [`chunk_len`] with `per_thread` tasks per thread.
fn chunk_len_tasks(n: usize, min: usize, per_thread: usize) -> usize {
    let tasks = per_thread * rayon::current_num_threads().max(1);
    n.div_ceil(tasks).max(min).min(n.max(1))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Vectorised exp / erf (AVX2 + FMA when the CPU has them, scalar otherwise).
// ---------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// 2^x for 8 lanes, x ≤ 0 (the softmax's shifted scores and GELU's -z²): n = round(x),
    /// 2^(x-n) by Cephes' degree-6 polynomial on [-0.5, 0.5] (relative error ≤ 2e-7),
    /// 2^n by exponent arithmetic. Below -126 gives 2^-126 (≈1.2e-38) instead of a smaller
    /// value or 0: nothing that matters next to the row's largest term, which is 1.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp2_neg8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-126.0));
        let n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let f = _mm256_sub_ps(x, n);
        let mut p = _mm256_set1_ps(1.535_336_2e-4);
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339_887_4e-3));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618_437e-3));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550_332_5e-2));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402_264_8e-1));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931_472e-1));
        let y = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    /// In place `v[i] = 2^(v[i] - max)` (`max` ≥ every `v[i]`), returns the sum.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp2_sub_sum(v: &mut [f32], max: f32) -> f32 {
        let n8 = v.len() / 8 * 8;
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let p = v.as_mut_ptr();
        let mut i = 0;
        while i < n8 {
            let e = exp2_neg8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut s: f32 = lanes.iter().sum();
        for x in &mut v[n8..] {
            *x = (*x - max).exp2();
            s += *x;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(v: &[f32]) -> f32 {
        let n8 = v.len() / 8 * 8;
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < n8 {
            acc = _mm256_max_ps(acc, _mm256_loadu_ps(v.as_ptr().add(i)));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut m = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for &x in &v[n8..] {
            m = m.max(x);
        }
        m
    }

    /// Exact-erf GELU in place: 0.5·x·(1 + erf(x/√2)), erf by Abramowitz-Stegun 7.1.26
    /// (absolute error ≤ 1.5e-7).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu(v: &mut [f32]) {
        let n8 = v.len() / 8 * 8;
        let p = v.as_mut_ptr();
        let sign_mask = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i < n8 {
            let x = _mm256_loadu_ps(p.add(i));
            let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let az = _mm256_andnot_ps(sign_mask, z);
            // t = 1 / (1 + 0.3275911·|z|): reciprocal estimate + one Newton step (~23 bits)
            let den = _mm256_fmadd_ps(az, _mm256_set1_ps(0.327_591_1), _mm256_set1_ps(1.0));
            let t0 = _mm256_rcp_ps(den);
            let t = _mm256_mul_ps(t0, _mm256_fnmadd_ps(den, t0, _mm256_set1_ps(2.0)));
            let mut q = _mm256_set1_ps(1.061_405_4);
            q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-1.453_152_1));
            q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.421_413_8));
            q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-0.284_496_72));
            q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(0.254_829_6));
            q = _mm256_mul_ps(q, t);
            // exp(-z²) = 2^(-z²·log2 e)
            let e = exp2_neg8(_mm256_mul_ps(
                _mm256_mul_ps(az, az),
                _mm256_set1_ps(-std::f32::consts::LOG2_E),
            ));
            let erf_abs = _mm256_fnmadd_ps(q, e, _mm256_set1_ps(1.0));
            let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign_mask, z));
            let y = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_set1_ps(0.5), x),
                _mm256_add_ps(_mm256_set1_ps(1.0), erf),
            );
            _mm256_storeu_ps(p.add(i), y);
            i += 8;
        }
        for x in &mut v[n8..] {
            *x = super::gelu_scalar(*x);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub fn available() -> bool {
        false
    }
    pub unsafe fn exp2_sub_sum(_: &mut [f32], _: f32) -> f32 {
        unreachable!()
    }
    pub unsafe fn max(_: &[f32]) -> f32 {
        unreachable!()
    }
    pub unsafe fn gelu(_: &mut [f32]) {
        unreachable!()
    }
}

fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + libm_erf(x / std::f32::consts::SQRT_2))
}

/// erf in f64 (Abramowitz-Stegun 7.1.26 refined by one term is not enough for f64, but the
/// scalar path only serves tails of rows and CPUs without AVX2; 1.5e-7 absolute suffices).
fn libm_erf(x: f32) -> f32 {
    let ax = (x as f64).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let q = ((((1.061_405_429 * t - 1.453_152_027) * t + 1.421_413_741) * t - 0.284_496_736) * t
        + 0.254_829_592)
        * t;
    let y = 1.0 - q * (-ax * ax).exp();
    (if x < 0.0 { -y } else { y }) as f32
}

/// Largest value of a row.
fn row_max(v: &[f32]) -> f32 {
    if simd::available() {
        unsafe { simd::max(v) }
    } else {
        v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
}

/// `v = 2^(v - m)` in place (`m` ≥ every `v`); returns the sum.
fn exp2_sub_sum(v: &mut [f32], m: f32) -> f32 {
    if simd::available() {
        unsafe { simd::exp2_sub_sum(v, m) }
    } else {
        let mut s = 0.0;
        for x in v.iter_mut() {
            *x = (*x - m).exp2();
            s += *x;
        }
        s
    }
}

fn gelu_inplace(v: &mut [f32]) {
    if simd::available() {
        unsafe { simd::gelu(v) }
    } else {
        for x in v.iter_mut() {
            *x = gelu_scalar(*x);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------------------

/// `y = x · Wᵀ + b` (optionally GELU) over the last dim of a contiguous f32 tensor.
struct LinearOp<'a> {
    weight: &'a Tensor, // (N, K)
    bias: Option<&'a Tensor>,
    gelu: bool,
    /// `res + gamma ⊙ y` (residual with LayerScale) instead of `y`.
    residual: Option<(&'a Tensor, Vec<f32>)>,
    /// LayerNorm (weight, bias, eps) of the input rows first (pre-norm blocks).
    prenorm: Option<(Vec<f32>, Vec<f32>, f32)>,
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
        let w_c = self.weight.contiguous()?;
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
        with_f32(&w_c, |w, wl| {
            let w = &w[wl.start_offset()..];
            // Each task packs the whole weight: few, large tasks.
            static TPT: OnceLock<usize> = OnceLock::new();
            let tpt = *TPT.get_or_init(|| env_usize("DA3_LINEAR_TASKS", 1).max(1));
            let rows = chunk_len_tasks(m, 16, tpt);
            static SUB: OnceLock<usize> = OnceLock::new();
            let sub_rows = *SUB.get_or_init(|| env_usize("DA3_LINEAR_SUB", 256).max(8));
            let xp = x.as_ptr() as usize;
            let wp = w.as_ptr() as usize;
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
                        if let Some(b) = &bias {
                            for row in o.chunks_mut(n) {
                                row.copy_from_slice(b);
                            }
                        }
                        let xrows = unsafe {
                            std::slice::from_raw_parts((xp as *const f32).add(r0 * k), mr * k)
                        };
                        let gemm_from = |lhs: &[f32], o: &mut [f32]| unsafe {
                            sgemm(
                                mr,
                                n,
                                k,
                                o.as_mut_ptr(),
                                n as isize,
                                1,
                                bias.is_some(),
                                lhs.as_ptr(),
                                k as isize,
                                1,
                                wp as *const f32,
                                1,
                                k as isize,
                                1.0,
                            )
                        };
                        match &self.prenorm {
                            Some((nw, nb, eps)) => with_scratch(mr * k, |t| {
                                for (trow, xrow) in t.chunks_mut(k).zip(xrows.chunks(k)) {
                                    let (mean, inv) = row_stats(xrow, *eps);
                                    for i in 0..k {
                                        trow[i] = (xrow[i] - mean) * inv * nw[i] + nb[i];
                                    }
                                }
                                gemm_from(t, o)
                            }),
                            None => gemm_from(xrows, o),
                        }
                        if self.gelu {
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
        })?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// What a linear layer does around its GEMM (all optional).
#[derive(Default, Clone, Copy)]
pub struct LinearExt<'a> {
    /// LayerNorm (weight, bias, eps) of the input first.
    pub prenorm: Option<(&'a Tensor, &'a Tensor, f64)>,
    /// Exact-erf GELU of the output.
    pub gelu: bool,
    /// `res + gamma ⊙ y` (residual with LayerScale).
    pub residual: Option<(&'a Tensor, &'a Tensor)>,
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
        let prenorm = match ext.prenorm {
            Some((w, b, eps)) => Some((w.to_vec1()?, b.to_vec1()?, eps as f32)),
            None => None,
        };
        x.contiguous()?.apply_op1_no_bwd(&LinearOp {
            weight,
            bias,
            gelu: ext.gelu,
            residual,
            prenorm,
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
    );
    let (Ok(x), Ok(w)) = (x, w) else {
        return 0.0;
    };
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = std::time::Instant::now();
        if x.apply_op1_no_bwd(&LinearOp {
            weight: &w,
            bias: None,
            gelu: false,
            residual: None,
            prenorm: None,
        })
        .is_err()
        {
            return 0.0;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

// ---------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------

/// Let the GEMM read a column-major lhs in place for output blocks up to 64·NR columns
/// (the attention's `vᵀ`); the default packs it past 8·NR.
fn unpacked_lhs_ok() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if gemm::get_lhs_packing_threshold_single_thread() < 64 {
            gemm::set_lhs_packing_threshold_single_thread(64);
        }
    });
}

/// Queries per block (default and largest): the score block is `q_block() × k_block()`
/// floats per thread. 512 rather than 128 makes `p · v` (n = queries) run at the GEMM's
/// peak instead of ~75% of it (DA3-SMALL, d = 64).
const Q_BLOCK_MAX: usize = 512;

/// Keys per block of the online softmax (the score block stays in L2).
fn k_block() -> usize {
    static B: OnceLock<usize> = OnceLock::new();
    *B.get_or_init(|| env_usize("DA3_K_BLOCK", 512).max(16))
}

fn q_block() -> usize {
    static B: OnceLock<usize> = OnceLock::new();
    *B.get_or_init(|| {
        std::env::var("DA3_Q_BLOCK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Q_BLOCK_MAX)
            .clamp(8, Q_BLOCK_MAX)
    })
}

/// softmax(q·kᵀ·scale)·v for q, k, v of shape (B, H, N, d) with any strides; the result is
/// (B, N, H·d), ready for the output projection.
struct AttentionOp {
    scale: f32,
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
        let qblk = q_block();
        unpacked_lhs_ok();
        let nqb = n.div_ceil(qblk);
        let (qp, kp, vp) = (
            q.as_ptr() as usize,
            k.as_ptr() as usize,
            v.as_ptr() as usize,
        );
        (0..b * h * nqb).into_par_iter().for_each(|task| {
            let (bh, qb) = (task / nqb, task % nqb);
            let (bi, hi) = (bh / h, bh % h);
            let r0 = qb * qblk;
            let rows = qblk.min(n - r0);
            let kblk = k_block().min(nk);
            let single = kblk >= nk;
            with_scratch(rows * kblk + 2 * rows * d, |buf| unsafe {
                let (sc, rest) = buf.split_at_mut(rows * kblk);
                let (oacc, qblock) = rest.split_at_mut(rows * d);
                // The query block, copied contiguous once: the score GEMM runs ~20% slower
                // reading it strided (q is a view of the qkv output when no norm/RoPE).
                let qsrc = (qp as *const f32).add(bi * qs[0] + hi * qs[1] + r0 * qs[2]);
                for (r, dst) in qblock.chunks_mut(d).enumerate() {
                    let row = qsrc.add(r * qs[2]);
                    for (j, v) in dst.iter_mut().enumerate() {
                        *v = *row.add(j * qs[3]);
                    }
                }
                let qbase = qblock.as_ptr();
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
                    sgemm(
                        rows,
                        kn,
                        d,
                        sc.as_mut_ptr(),
                        kn as isize,
                        1,
                        false,
                        qbase,
                        d as isize,
                        1,
                        kbase.add(k0 * ks[2]),
                        ks[3] as isize,
                        ks[2] as isize,
                        self.scale * std::f32::consts::LOG2_E,
                    );
                    for (r, row) in sc.chunks_mut(kn).enumerate() {
                        let m_new = mrow[r].max(row_max(row));
                        let alpha = (mrow[r] - m_new).exp2(); // 0 on the first block
                        lrow[r] = lrow[r] * alpha + exp2_sub_sum(row, m_new);
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
                    let (dst, dst_cs) = if single {
                        (obase, c as isize)
                    } else {
                        (oacc.as_mut_ptr(), d as isize)
                    };
                    sgemm(
                        d,
                        rows,
                        kn,
                        dst,
                        1,
                        dst_cs,
                        k0 > 0,
                        vbase.add(k0 * vs[2]),
                        vs[3] as isize,
                        vs[2] as isize,
                        sc.as_ptr(),
                        1,
                        kn as isize,
                        1.0,
                    );
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
        Ok((CpuStorage::F32(out), Shape::from((b, n, c))))
    }
}

/// Scaled dot-product attention, q/k/v (B, H, N, d) -> (B, N, H·d).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let nk = k.dim(2)?;
    let flops = 4.0 * (b * h) as f64 * (n * nk * d) as f64;
    timed("attention", flops, || {
        q.apply_op3_no_bwd(k, v, &AttentionOp { scale })
    })
}

// ---------------------------------------------------------------------------------------
// Convolutions
// ---------------------------------------------------------------------------------------

struct Conv2dOp<'a> {
    weight: &'a Tensor, // (Co, Ci, kh, kw), contiguous
    bias: Option<&'a Tensor>,
    stride: usize,
    padding: usize,
    /// ReLU of the input (applied while gathering the columns).
    relu_in: bool,
    /// Added to the output (same shape).
    residual: Option<&'a Tensor>,
    /// `w2 · relu(y) + b2` of the conv's output `y` as the result (a following ReLU + 1x1
    /// conv computed per band while `y` is in cache; `y` itself is never stored).
    then_1x1: Option<(Vec<f32>, Option<Vec<f32>>)>,
    /// Stride-1 kernels taller than 1 by rows ([`row_cols`]) rather than full im2col.
    by_rows: bool,
    /// 3x3 stride-1 pad-1 kernels by Winograd F(2x2, 3x3) ([`winograd_conv`]).
    winograd: bool,
}

/// Target floats in one im2col band (fits in L2 with the weights' panel).
fn col_band() -> usize {
    static B: OnceLock<usize> = OnceLock::new();
    *B.get_or_init(|| env_usize("DA3_COL_BAND", 1 << 17))
}

/// Target floats in one by-rows column band (`DA3_ROW_BAND`).
fn row_band() -> usize {
    static B: OnceLock<usize> = OnceLock::new();
    *B.get_or_init(|| env_usize("DA3_ROW_BAND", 1 << 18))
}

/// 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) (`DA3_WINOGRAD=0`: by rows instead).
fn conv_winograd() -> bool {
    static B: OnceLock<bool> = OnceLock::new();
    *B.get_or_init(|| std::env::var("DA3_WINOGRAD").map_or(true, |v| v != "0"))
}

/// Stride-1 convolutions by rows (`DA3_CONV_ROWS=0`: full im2col instead).
fn conv_by_rows() -> bool {
    static B: OnceLock<bool> = OnceLock::new();
    *B.get_or_init(|| std::env::var("DA3_CONV_ROWS").map_or(true, |v| v != "0"))
}

impl CustomOp1 for Conv2dOp<'_> {
    fn name(&self) -> &'static str {
        "da3-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-conv2d", s, l)?;
        let (b, ci, ih, iw) = l.shape().dims4()?;
        let (co, wci, kh, kw) = self.weight.dims4()?;
        if wci != ci {
            bail!("da3-conv2d: input has {ci} channels, weight expects {wci}");
        }
        let (st, pad) = (self.stride, self.padding);
        if ih + 2 * pad < kh || iw + 2 * pad < kw {
            bail!("da3-conv2d: input {ih}x{iw} smaller than the kernel");
        }
        let oh = (ih + 2 * pad - kh) / st + 1;
        let ow = (iw + 2 * pad - kw) / st + 1;
        let npix = oh * ow;
        let kk = ci * kh * kw;
        let bias = bias_values(self.bias)?;
        // Channels of the result: the conv's own, or those of the fused 1x1 after it.
        let co_out = match &self.then_1x1 {
            Some((w2, b2)) => {
                let co2 = w2.len() / co.max(1);
                if self.residual.is_some()
                    || co2 == 0
                    || w2.len() != co2 * co
                    || b2.as_ref().is_some_and(|b2| b2.len() != co2)
                {
                    bail!(
                        "da3-conv2d: fused 1x1 of {} weights for {co} channels",
                        w2.len()
                    );
                }
                co2
            }
            None => co,
        };
        let fused = self.then_1x1.is_some();
        let mut out = match self.residual {
            Some(r) => {
                if r.dims() != [b, co, oh, ow] {
                    bail!(
                        "da3-conv2d: residual {:?} does not match the output",
                        r.dims()
                    );
                }
                r.flatten_all()?.to_vec1::<f32>()?
            }
            None => output_buffer(b * co_out * npix),
        };
        let accumulate = self.residual.is_some();
        if self.winograd && kh == 3 && kw == 3 && st == 1 && pad == 1 && ci >= 16 && co >= 16 {
            with_f32(self.weight, |w, wl| {
                let w = &w[wl.start_offset()..wl.start_offset() + co * ci * 9];
                winograd_conv(
                    x,
                    w,
                    WinogradConv {
                        b,
                        ci,
                        co,
                        h: ih,
                        w: iw,
                        bias: bias.as_deref(),
                        relu_in: self.relu_in,
                        accumulate,
                        then_1x1: self
                            .then_1x1
                            .as_ref()
                            .map(|(w2, b2)| (&w2[..], b2.as_deref())),
                    },
                    &mut out,
                );
                Ok(())
            })?;
            return Ok((CpuStorage::F32(out), Shape::from((b, co_out, oh, ow))));
        }
        let optr = SyncPtr(out.as_mut_ptr());
        let direct = kh == 1 && kw == 1 && st == 1 && pad == 0 && !self.relu_in;
        // Stride-1 kernels taller than one row: bands of whole output rows, columns
        // gathered for (channel, kx) only, and one GEMM per kernel row ky reading them
        // shifted by ky rows: kh times fewer columns to copy than a full im2col.
        let by_rows = st == 1 && kh > 1 && self.by_rows;
        let band = if direct {
            chunk_len(npix, 256)
        } else if by_rows {
            let per_row = ci * kw * ow;
            let fit = (row_band() / per_row.max(1)).saturating_sub(kh - 1).max(1);
            chunk_len(oh, 1).min(fit) * ow
        } else {
            chunk_len(npix, 64).min((col_band() / kk).max(64))
        };
        let nband = npix.div_ceil(band);
        let xp = x.as_ptr() as usize;
        with_f32(self.weight, |w, wl| {
            let w = &w[wl.start_offset()..];
            // by rows: the weight as kh matrices (Co × Ci·kw), one per kernel row
            let w_rows: Vec<f32> = if by_rows {
                let mut v = Vec::with_capacity(co * kk);
                for ky in 0..kh {
                    for o in 0..co {
                        for c in 0..ci {
                            let at = ((o * ci + c) * kh + ky) * kw;
                            v.extend_from_slice(&w[at..at + kw]);
                        }
                    }
                }
                v
            } else {
                Vec::new()
            };
            let wp = w.as_ptr() as usize;
            (0..b * nband).into_par_iter().for_each(|task| {
                let (bi, bj) = (task / nband, task % nband);
                let p0 = bj * band;
                let np = band.min(npix - p0);
                let xb = unsafe { (xp as *const f32).add(bi * ci * ih * iw) };
                let ob = unsafe { optr.get().add(bi * co_out * npix + p0) };
                // by rows: input rows y0 - pad .. y0 + nr + kh - 1 - pad, each ow wide
                let rlen = (np / ow.max(1) + kh - 1) * ow;
                let ncols = if direct {
                    0
                } else if by_rows {
                    ci * kw * rlen
                } else {
                    kk * np
                };
                let ny = if fused { co * np } else { 0 };
                with_scratch(ncols + ny, |buf| {
                    let (cols, ybuf) = buf.split_at_mut(ncols);
                    // The conv's output band: straight into the result, or into `ybuf`
                    // (row stride np) when a 1x1 follows.
                    let (yb, ys) = if fused {
                        (ybuf.as_mut_ptr(), np)
                    } else {
                        (ob, npix)
                    };
                    if let Some(bv) = &bias {
                        for (o, bval) in bv.iter().enumerate() {
                            let row = unsafe { std::slice::from_raw_parts_mut(yb.add(o * ys), np) };
                            if accumulate {
                                row.iter_mut().for_each(|v| *v += bval);
                            } else {
                                row.fill(*bval);
                            }
                        }
                    }
                    let acc = accumulate || bias.is_some();
                    if direct {
                        unsafe {
                            sgemm(
                                co,
                                np,
                                ci,
                                yb,
                                ys as isize,
                                1,
                                acc,
                                wp as *const f32,
                                ci as isize,
                                1,
                                xb.add(p0),
                                (ih * iw) as isize,
                                1,
                                1.0,
                            )
                        };
                    } else if by_rows {
                        let xs = unsafe { std::slice::from_raw_parts(xb, ci * ih * iw) };
                        let y0 = p0 / ow;
                        row_cols(xs, (ci, ih, iw), (kw, pad), (ow, y0, rlen / ow), cols);
                        if self.relu_in {
                            cols.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                        let rk = ci * kw;
                        for ky in 0..kh {
                            unsafe {
                                sgemm(
                                    co,
                                    np,
                                    rk,
                                    yb,
                                    ys as isize,
                                    1,
                                    acc || ky > 0,
                                    w_rows.as_ptr().add(ky * co * rk),
                                    rk as isize,
                                    1,
                                    cols.as_ptr().add(ky * ow),
                                    rlen as isize,
                                    1,
                                    1.0,
                                )
                            };
                        }
                    } else {
                        let xs = unsafe { std::slice::from_raw_parts(xb, ci * ih * iw) };
                        im2col(xs, (ci, ih, iw), (kh, kw, st, pad), (ow, p0, np), cols);
                        if self.relu_in {
                            cols.iter_mut().for_each(|v| *v = v.max(0.0));
                        }
                        unsafe {
                            sgemm(
                                co,
                                np,
                                kk,
                                yb,
                                ys as isize,
                                1,
                                acc,
                                wp as *const f32,
                                kk as isize,
                                1,
                                cols.as_ptr(),
                                np as isize,
                                1,
                                1.0,
                            )
                        };
                    }
                    if let Some((w2, b2)) = &self.then_1x1 {
                        unsafe { relu_then_1x1(ybuf, np, (w2, b2.as_deref()), ob, npix) };
                    }
                });
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, co_out, oh, ow))))
    }
}

/// The fused ReLU + 1x1 after a convolution, for one band: `y` holds the band's `np`
/// pixels of each of the conv's Co channels (row stride `np`); output channel `o2` of the
/// 1x1 (`w2` is (O2, Co), `b2` its bias) goes to `ob + o2·npix`, `np` values.
///
/// # Safety
/// `ob + o2·npix .. + np` must be valid, writable and not aliased for every `o2 < O2`.
unsafe fn relu_then_1x1(
    y: &[f32],
    np: usize,
    (w2, b2): (&[f32], Option<&[f32]>),
    ob: *mut f32,
    npix: usize,
) {
    let co = y.len() / np.max(1);
    for (o2, w2row) in w2.chunks_exact(co.max(1)).enumerate() {
        let z = std::slice::from_raw_parts_mut(ob.add(o2 * npix), np);
        z.fill(b2.map_or(0.0, |b2| b2[o2]));
        for (yrow, wv) in y.chunks(np).zip(w2row) {
            for (zv, yv) in z.iter_mut().zip(yrow) {
                *zv += wv * yv.max(0.0);
            }
        }
    }
}

/// Shapes and fusions of a Winograd convolution (3x3, stride 1, padding 1).
struct WinogradConv<'a> {
    b: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    bias: Option<&'a [f32]>,
    relu_in: bool,
    /// `out` holds a residual to add to.
    accumulate: bool,
    /// ReLU + 1x1 conv (weight (O2, Co), bias) after the conv, as in [`Conv2dOp`].
    then_1x1: Option<(&'a [f32], Option<&'a [f32]>)>,
}

/// Winograd F(2x2, 3x3) weights `U = G g Gᵀ`, as 16 matrices `U[ξ]` (Co × Ci), ξ = 4i + j.
fn winograd_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * co * ci];
    for o in 0..co {
        for c in 0..ci {
            let g = &w[(o * ci + c) * 9..(o * ci + c) * 9 + 9];
            // t = G g (4 × 3), G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]
            let mut t = [[0f32; 3]; 4];
            for k in 0..3 {
                let (g0, g1, g2) = (g[k], g[3 + k], g[6 + k]);
                t[0][k] = g0;
                t[1][k] = 0.5 * (g0 + g1 + g2);
                t[2][k] = 0.5 * (g0 - g1 + g2);
                t[3][k] = g2;
            }
            for (i, r) in t.iter().enumerate() {
                let row = [
                    r[0],
                    0.5 * (r[0] + r[1] + r[2]),
                    0.5 * (r[0] - r[1] + r[2]),
                    r[2],
                ];
                for (j, v) in row.into_iter().enumerate() {
                    u[((i * 4 + j) * co + o) * ci + c] = v;
                }
            }
        }
    }
    u
}

/// 3x3 convolution, stride 1, padding 1, by Winograd F(2x2, 3x3): each 2x2 output tile
/// from a 4x4 input tile in 16 multiplies per (input, output) channel pair instead of 36.
/// Per band of tile rows: input transform `V = Bᵀ d B` into 16 matrices (Ci × tiles), 16
/// GEMMs `M[ξ] = U[ξ] · V[ξ]`, output transform `Y = Aᵀ M A` (+ bias, residual, or the
/// fused ReLU + 1x1). Rounding differs from the direct sum by a few ulps.
fn winograd_conv(x: &[f32], wt: &[f32], p: WinogradConv<'_>, out: &mut [f32]) {
    let th = p.h.div_ceil(2);
    let tw = p.w.div_ceil(2);
    let u = winograd_weights(wt, p.co, p.ci);
    // Bands of whole tile rows, at least ~512 tiles for the GEMMs' sake.
    let rows = chunk_len(th, 1).max(512usize.div_ceil(tw)).min(th);
    let nband = th.div_ceil(rows);
    let run = WinogradRun {
        p: &p,
        x,
        u: &u,
        out: SyncPtr(out.as_mut_ptr()),
    };
    let avx2 = simd::available();
    (0..p.b * nband).into_par_iter().for_each(|task| {
        let (bi, band) = (task / nband, task % nband);
        let ty0 = band * rows;
        let nty = rows.min(th - ty0);
        if avx2 {
            unsafe { winograd_band_avx2(&run, bi, ty0, nty) }
        } else {
            winograd_band(&run, bi, ty0, nty)
        }
    });
}

/// What every band of one Winograd convolution reads (and where it writes).
struct WinogradRun<'a> {
    p: &'a WinogradConv<'a>,
    x: &'a [f32],
    /// The transformed weights ([`winograd_weights`]).
    u: &'a [f32],
    /// The output (the tasks' output rows are disjoint).
    out: SyncPtr,
}

/// [`winograd_band`] compiled for AVX2 + FMA (its loops vectorise 8 wide).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn winograd_band_avx2(run: &WinogradRun<'_>, bi: usize, ty0: usize, nty: usize) {
    winograd_band(run, bi, ty0, nty)
}

/// Tile rows `ty0 .. ty0 + nty` of image `bi` (output rows `2·ty0 ..`).
#[inline(always)]
fn winograd_band(run: &WinogradRun<'_>, bi: usize, ty0: usize, nty: usize) {
    let WinogradRun { p, x, u, out: optr } = *run;
    let WinogradConv { ci, co, h, w, .. } = *p;
    let tw = w.div_ceil(2);
    let npix = h * w;
    let co_out = p.then_1x1.map_or(co, |(w2, _)| w2.len() / co);
    let nt = nty * tw;
    let (oy0, oy1) = (2 * ty0, (2 * (ty0 + nty)).min(h));
    let np = (oy1 - oy0) * w;
    let nrt = 2 * nty + 2; // input rows 2·ty0 - 1 .. 2·(ty0 + nty)
    let fused = p.then_1x1.is_some();
    let sizes = [
        16 * ci * nt,
        16 * co * nt,
        nrt * 4 * tw,
        2 * (tw + 1),
        8 * tw,
        if fused { co * np } else { 0 },
    ];
    with_scratch(sizes.iter().sum(), |buf| {
        let (v, rest) = buf.split_at_mut(sizes[0]);
        let (m, rest) = rest.split_at_mut(sizes[1]);
        let (rt, rest) = rest.split_at_mut(sizes[2]);
        let (eo, rest) = rest.split_at_mut(sizes[3]);
        let (sbuf, ybuf) = rest.split_at_mut(sizes[4]);
        let xb = &x[bi * ci * npix..(bi + 1) * ci * npix];
        // Input transform.
        for c in 0..ci {
            let plane = &xb[c * npix..(c + 1) * npix];
            // Row transform of each input row: for tile tx, with a, b, c, d = x[2tx-1 ..
            // 2tx+2] = E[tx], O[tx], E[tx+1], O[tx+1] (E, O: even / odd entries of the
            // zero-padded row): (a - c, b + c, c - b, b - d).
            for (r, rrow) in rt.chunks_exact_mut(4 * tw).enumerate() {
                let y = (2 * ty0 + r) as isize - 1;
                if y < 0 || y >= h as isize {
                    rrow.fill(0.0);
                    continue;
                }
                let src = &plane[y as usize * w..(y as usize + 1) * w];
                let (e, o) = eo.split_at_mut(tw + 1);
                // E[t] = x[2t - 1], O[t] = x[2t]; zero outside the row (E[0], O[tw], and
                // E[tw] when w is odd: the last pair is a single value).
                e[0] = 0.0;
                o[tw] = 0.0;
                for (t, pair) in src.chunks(2).enumerate() {
                    o[t] = pair[0];
                    e[t + 1] = pair.get(1).copied().unwrap_or(0.0);
                }
                if p.relu_in {
                    eo.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                let (e, o) = eo.split_at(tw + 1);
                let (r0, rr) = rrow.split_at_mut(tw);
                let (r1, rr) = rr.split_at_mut(tw);
                let (r2, r3) = rr.split_at_mut(tw);
                let (e0, e1, o0, o1) = (&e[..tw], &e[1..=tw], &o[..tw], &o[1..=tw]);
                for i in 0..tw {
                    r0[i] = e0[i] - e1[i];
                    r1[i] = o0[i] + e1[i];
                    r2[i] = e1[i] - o0[i];
                    r3[i] = o0[i] - o1[i];
                }
            }
            // Column transform: rows 2t .. 2t+3 of the row-transformed band.
            for t in 0..nty {
                for j in 0..4 {
                    let row = |k: usize| {
                        let at = ((2 * t + k) * 4 + j) * tw;
                        &rt[at..at + tw]
                    };
                    let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
                    let at = |i: usize| ((i * 4 + j) * ci + c) * nt + t * tw;
                    let (v0, v1, v2, v3) = (at(0), at(1), at(2), at(3));
                    for (i, d) in d0.iter().zip(d2).enumerate() {
                        v[v0 + i] = d.0 - d.1;
                    }
                    let (a, rest) = v[v1..].split_at_mut(v2 - v1);
                    let (bq, rest) = rest.split_at_mut(v3 - v2);
                    let (a, bq, cq) = (&mut a[..tw], &mut bq[..tw], &mut rest[..tw]);
                    for i in 0..tw {
                        a[i] = d1[i] + d2[i];
                        bq[i] = d2[i] - d1[i];
                        cq[i] = d1[i] - d3[i];
                    }
                }
            }
        }
        // 16 GEMMs.
        for xi in 0..16 {
            unsafe {
                sgemm(
                    co,
                    nt,
                    ci,
                    m.as_mut_ptr().add(xi * co * nt),
                    nt as isize,
                    1,
                    false,
                    u.as_ptr().add(xi * co * ci),
                    ci as isize,
                    1,
                    v.as_ptr().add(xi * ci * nt),
                    nt as isize,
                    1,
                    1.0,
                )
            };
        }
        // Output transform, Aᵀ = [1 1 1 0; 0 1 -1 -1]: per row i of M, S_i0 = m_i0 + m_i1 +
        // m_i2 and S_i1 = m_i1 - m_i2 - m_i3; then y_0k = S_0k + S_1k + S_2k and y_1k =
        // S_1k - S_2k - S_3k.
        let ob = unsafe { optr.get().add(bi * co_out * npix + oy0 * w) };
        let (yb, ys) = if fused {
            (ybuf.as_mut_ptr(), np)
        } else {
            (ob, npix)
        };
        let add = p.accumulate && !fused;
        for o in 0..co {
            let bv = p.bias.map_or(0.0, |bv| bv[o]);
            for t in 0..nty {
                let mm = |xi: usize| {
                    let at = (xi * co + o) * nt + t * tw;
                    &m[at..at + tw]
                };
                for i in 0..4 {
                    let (m0, m1, m2, m3) = (mm(4 * i), mm(4 * i + 1), mm(4 * i + 2), mm(4 * i + 3));
                    let (s0, s1) = sbuf[2 * i * tw..(2 * i + 2) * tw].split_at_mut(tw);
                    for k in 0..tw {
                        s0[k] = m0[k] + m1[k] + m2[k];
                        s1[k] = m1[k] - m2[k] - m3[k];
                    }
                }
                for r in 0..2 {
                    let y = 2 * t + r;
                    if oy0 + y >= oy1 {
                        break;
                    }
                    let dst = unsafe { std::slice::from_raw_parts_mut(yb.add(o * ys + y * w), w) };
                    let sr = |i: usize, k: usize| &sbuf[(2 * i + k) * tw..(2 * i + k + 1) * tw];
                    // Even and odd output columns, in `rt` (free again by now).
                    let (ye, yo) = rt[..2 * tw].split_at_mut(tw);
                    for (k, yk) in [ye, yo].into_iter().enumerate() {
                        let (a0, a1, a2, a3) = (sr(0, k), sr(1, k), sr(2, k), sr(3, k));
                        if r == 0 {
                            for i in 0..tw {
                                yk[i] = a0[i] + a1[i] + a2[i] + bv;
                            }
                        } else {
                            for i in 0..tw {
                                yk[i] = a1[i] - a2[i] - a3[i] + bv;
                            }
                        }
                    }
                    let (ye, yo) = rt[..2 * tw].split_at(tw);
                    let (pairs, tail) = dst.split_at_mut(w / 2 * 2);
                    if add {
                        for (d, (e, o)) in pairs.chunks_exact_mut(2).zip(ye.iter().zip(yo)) {
                            d[0] += e;
                            d[1] += o;
                        }
                        if let Some(d) = tail.first_mut() {
                            *d += ye[tw - 1];
                        }
                    } else {
                        for (d, (e, o)) in pairs.chunks_exact_mut(2).zip(ye.iter().zip(yo)) {
                            d[0] = *e;
                            d[1] = *o;
                        }
                        if let Some(d) = tail.first_mut() {
                            *d = ye[tw - 1];
                        }
                    }
                }
            }
        }
        if let Some(w2b2) = p.then_1x1 {
            unsafe { relu_then_1x1(ybuf, np, w2b2, ob, npix) };
        }
    });
}

/// Stride-1 columns by rows: `cols[c·kw + kx][yy·ow + x] = x[c, y0 + yy - pad, x + kx - pad]`
/// for `yy < nrows` (zero outside the input), so that kernel row `ky` of output rows
/// `y0 ..` reads the same matrix from column `ky·ow` on.
fn row_cols(
    x: &[f32],
    (ci, ih, iw): (usize, usize, usize),
    (kw, pad): (usize, usize),
    (ow, y0, nrows): (usize, usize, usize),
    cols: &mut [f32],
) {
    let rlen = nrows * ow;
    for c in 0..ci {
        let plane = &x[c * ih * iw..(c + 1) * ih * iw];
        for kx in 0..kw {
            let dst = &mut cols[(c * kw + kx) * rlen..(c * kw + kx + 1) * rlen];
            // ix = x + kx - pad: a shifted copy of each input row with zero edges
            let start = kx as isize - pad as isize;
            let ja = (-start).clamp(0, ow as isize) as usize;
            let jb = (iw as isize - start).clamp(ja as isize, ow as isize) as usize;
            for (yy, seg) in dst.chunks_mut(ow).enumerate() {
                let iy = (y0 + yy) as isize - pad as isize;
                if iy < 0 || iy >= ih as isize {
                    seg.fill(0.0);
                    continue;
                }
                let row = &plane[iy as usize * iw..(iy as usize + 1) * iw];
                seg[..ja].fill(0.0);
                seg[jb..].fill(0.0);
                if jb > ja {
                    let s0 = (start + ja as isize) as usize;
                    seg[ja..jb].copy_from_slice(&row[s0..s0 + (jb - ja)]);
                }
            }
        }
    }
}

/// Columns for output pixels `p0 .. p0 + np` (row-major over the output grid of width `ow`):
/// `cols[(c·kh + ky)·kw + kx][p]`, zero where the window leaves the padded input.
fn im2col(
    x: &[f32],
    (ci, ih, iw): (usize, usize, usize),
    (kh, kw, st, pad): (usize, usize, usize, usize),
    (ow, p0, np): (usize, usize, usize),
    cols: &mut [f32],
) {
    for c in 0..ci {
        let plane = &x[c * ih * iw..(c + 1) * ih * iw];
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (c * kh + ky) * kw + kx;
                let dst = &mut cols[r * np..(r + 1) * np];
                let mut p = 0;
                while p < np {
                    let (oy, ox0) = ((p0 + p) / ow, (p0 + p) % ow);
                    let len = (ow - ox0).min(np - p);
                    let seg = &mut dst[p..p + len];
                    let iy = (oy * st + ky) as isize - pad as isize;
                    if iy < 0 || iy >= ih as isize {
                        seg.fill(0.0);
                    } else {
                        let row = &plane[iy as usize * iw..(iy as usize + 1) * iw];
                        if st == 1 {
                            // ix = ox + kx - pad: a shifted copy with zero edges.
                            let shift = kx as isize - pad as isize;
                            let start = ox0 as isize + shift; // ix of seg[0]
                            let ja = (-start).clamp(0, len as isize) as usize;
                            let jb =
                                (iw as isize - start).clamp(ja as isize, len as isize) as usize;
                            seg[..ja].fill(0.0);
                            seg[jb..].fill(0.0);
                            if jb > ja {
                                let s0 = (start + ja as isize) as usize;
                                seg[ja..jb].copy_from_slice(&row[s0..s0 + (jb - ja)]);
                            }
                        } else {
                            for (j, d) in seg.iter_mut().enumerate() {
                                let ix = ((ox0 + j) * st + kx) as isize - pad as isize;
                                *d = if ix >= 0 && (ix as usize) < iw {
                                    row[ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                    p += len;
                }
            }
        }
    }
}

/// 2-D convolution (NCHW, square stride/padding, no dilation or groups).
/// What a convolution does around its GEMM (optional).
#[derive(Default, Clone, Copy)]
pub struct ConvExt<'a> {
    /// ReLU of the input first.
    pub relu_in: bool,
    /// Added to the output.
    pub residual: Option<&'a Tensor>,
    /// ReLU of the output, then this 1x1 conv (weight (O2, Co, 1, 1), bias): the result is
    /// the 1x1's output. Not with `residual`.
    pub then_1x1: Option<(&'a Tensor, Option<&'a Tensor>)>,
}

pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    ext: ConvExt<'_>,
) -> Result<Tensor> {
    let (b, _, ih, iw) = x.dims4()?;
    let (co, ci, kh, kw) = weight.dims4()?;
    let oh = (ih + 2 * padding).saturating_sub(kh) / stride + 1;
    let ow = (iw + 2 * padding).saturating_sub(kw) / stride + 1;
    let then_1x1 = match ext.then_1x1 {
        Some((w2, b2)) => Some((
            w2.flatten_all()?.to_vec1::<f32>()?,
            match b2 {
                Some(b2) => Some(b2.to_vec1::<f32>()?),
                None => None,
            },
        )),
        None => None,
    };
    let co2 = then_1x1.as_ref().map_or(0, |(w2, _)| w2.len());
    let flops = 2.0 * (b * oh * ow) as f64 * (co * ci * kh * kw + co2) as f64;
    let name: &'static str = if PROFILE_ON.load(std::sync::atomic::Ordering::Relaxed)
        && std::env::var_os("DA3_PROFILE_SHAPES").is_some()
    {
        // Per-shape rows, for finding the expensive layers (leaks a few bytes per shape).
        Box::leak(format!("conv{kh}x{kw}/{stride} {ci}->{co} {oh}x{ow}").into_boxed_str())
    } else if kh * kw == 1 {
        "conv1x1"
    } else {
        "conv"
    };
    timed(name, flops, || {
        x.contiguous()?.apply_op1_no_bwd(&Conv2dOp {
            weight,
            bias,
            stride,
            padding,
            relu_in: ext.relu_in,
            residual: ext.residual,
            then_1x1,
            by_rows: conv_by_rows(),
            // Measured on DA3's DPT convs: ahead from 48->64 and 64->32 channels on, behind
            // at 32->32 (the GEMMs' depth is Ci; the transforms cost per channel).
            winograd: conv_winograd() && ci + co >= 96,
        })
    })
}

/// 1x1 convolution of a token-major input: (B, N, C) tokens (rows may be strided) to an
/// (B, O, h, w) map with N = h·w, without transposing the tokens first (the GEMM reads
/// them in place as a column-major operand).
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
        let w_c = self.weight.contiguous()?;
        with_f32(&w_c, |w, wl| {
            let wp = w[wl.start_offset()..].as_ptr() as usize;
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
                unsafe {
                    sgemm(
                        o,
                        np,
                        c,
                        ob,
                        n as isize,
                        1,
                        bias.is_some(),
                        wp as *const f32,
                        c as isize,
                        1,
                        (xp as *const f32).add(bi * st[0] + p0 * st[1]),
                        1,
                        st[1] as isize,
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

struct ConvTransposeOp<'a> {
    weight: &'a Tensor, // (Ci, Co, k, k), contiguous; stride = k, no padding
    bias: Option<&'a Tensor>,
}

impl CustomOp1 for ConvTransposeOp<'_> {
    fn name(&self) -> &'static str {
        "da3-conv-transpose2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-conv-transpose2d", s, l)?;
        let (b, ci, ih, iw) = l.shape().dims4()?;
        let (wci, co, kh, kw) = self.weight.dims4()?;
        if wci != ci {
            bail!("da3-conv-transpose2d: input has {ci} channels, weight expects {wci}");
        }
        let (oh, ow) = (ih * kh, iw * kw);
        let rk = co * kh * kw;
        let npix = ih * iw;
        let bias: Vec<f32> = match self.bias {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; co],
        };
        let mut out = output_buffer(b * co * oh * ow);
        let optr = SyncPtr(out.as_mut_ptr());
        // Bands of whole input rows so each task scatters into its own output rows.
        let rows = chunk_len(ih, 1).min((col_band() / (rk * iw).max(1)).max(1));
        let nband = ih.div_ceil(rows);
        let xp = x.as_ptr() as usize;
        with_f32(self.weight, |w, wl| {
            let w = &w[wl.start_offset()..];
            let wp = w.as_ptr() as usize;
            (0..b * nband).into_par_iter().for_each(|task| {
                let (bi, bj) = (task / nband, task % nband);
                let y0 = bj * rows;
                let ny = rows.min(ih - y0);
                let np = ny * iw;
                with_scratch(rk * np, |t| {
                    unsafe {
                        // t[(o,ky,kx), p] = Σ_c w[c, (o,ky,kx)] · x[c, p]
                        sgemm(
                            rk,
                            np,
                            ci,
                            t.as_mut_ptr(),
                            np as isize,
                            1,
                            false,
                            wp as *const f32,
                            1,
                            rk as isize,
                            (xp as *const f32).add(bi * ci * npix + y0 * iw),
                            npix as isize,
                            1,
                            1.0,
                        )
                    };
                    for o in 0..co {
                        for ky in 0..kh {
                            for y in 0..ny {
                                let orow = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        optr.get()
                                            .add(((bi * co + o) * oh + (y0 + y) * kh + ky) * ow),
                                        ow,
                                    )
                                };
                                for kx in 0..kw {
                                    let src = &t[((o * kh + ky) * kw + kx) * np + y * iw..][..iw];
                                    for (xi, v) in src.iter().enumerate() {
                                        orow[xi * kw + kx] = v + bias[o];
                                    }
                                }
                            }
                        }
                    }
                });
            });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, co, oh, ow))))
    }
}

/// Transposed convolution with kernel = stride and no padding (DPT's upsampling).
pub fn conv_transpose2d_k_eq_s(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let flops = 2.0 * x.elem_count() as f64 * (weight.elem_count() / weight.dim(0)?.max(1)) as f64;
    timed("conv-transpose", flops, || {
        x.contiguous()?
            .apply_op1_no_bwd(&ConvTransposeOp { weight, bias })
    })
}

// ---------------------------------------------------------------------------------------
// UV position embedding add
// ---------------------------------------------------------------------------------------

struct UvEmbedOp<'a> {
    ex: &'a [f32], // (C/2, W): channel k < C/2 adds ex[k][x]
    ey: &'a [f32], // (C/2, H): channel C/2 + k adds ey[k][y]
}

impl CustomOp1 for UvEmbedOp<'_> {
    fn name(&self) -> &'static str {
        "da3-uv-embed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-uv-embed", s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let half = c / 2;
        if c % 2 != 0 || self.ex.len() != half * w || self.ey.len() != half * h {
            bail!("da3-uv-embed: tables do not match ({c}, {h}, {w})");
        }
        let mut out = output_buffer(b * c * h * w);
        out.par_chunks_mut(h * w)
            .zip(x[..b * c * h * w].par_chunks(h * w))
            .enumerate()
            .for_each(|(plane, (o, xi))| {
                let ch = plane % c;
                for (y, (orow, xrow)) in o.chunks_mut(w).zip(xi.chunks(w)).enumerate() {
                    if ch < half {
                        let e = &self.ex[ch * w..(ch + 1) * w];
                        for ((d, v), ev) in orow.iter_mut().zip(xrow).zip(e) {
                            *d = v + ev;
                        }
                    } else {
                        let ev = self.ey[(ch - half) * h + y];
                        for (d, v) in orow.iter_mut().zip(xrow) {
                            *d = v + ev;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `x + pe` for the DPT UV embedding: the first C/2 channels vary along x (`ex`: C/2 × W),
/// the others along y (`ey`: C/2 × H).
pub fn add_uv_embed(x: &Tensor, ex: &[f32], ey: &[f32]) -> Result<Tensor> {
    timed("uv-embed", 0.0, || {
        x.contiguous()?.apply_op1_no_bwd(&UvEmbedOp { ex, ey })
    })
}

// ---------------------------------------------------------------------------------------
// Bilinear resize (align_corners = true)
// ---------------------------------------------------------------------------------------

struct BilinearOp {
    oh: usize,
    ow: usize,
}

/// Source index pairs and weights along one axis, as PyTorch computes them in f32.
fn bilinear_taps(inp: usize, out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = if out > 1 {
        (inp - 1) as f32 / (out - 1) as f32
    } else {
        0.0
    };
    (0..out)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src as usize).min(inp - 1);
            let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

impl CustomOp1 for BilinearOp {
    fn name(&self) -> &'static str {
        "da3-bilinear-ac"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("da3-bilinear", s, l)?;
        let (b, c, ih, iw) = l.shape().dims4()?;
        let (oh, ow) = (self.oh, self.ow);
        let ty = bilinear_taps(ih, oh);
        let tx = bilinear_taps(iw, ow);
        let mut out = output_buffer(b * c * oh * ow);
        out.par_chunks_mut(oh * ow)
            .zip(x[..b * c * ih * iw].par_chunks(ih * iw))
            .for_each(|(o, p)| {
                // Separable: blend the two source rows (vectorises), then gather along x.
                let mut tmp = vec![0f32; iw];
                for (oy, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
                    let r0 = &p[y0 * iw..(y0 + 1) * iw];
                    let r1 = &p[y1 * iw..(y1 + 1) * iw];
                    for ((t, a), b) in tmp.iter_mut().zip(r0).zip(r1) {
                        *t = wy0 * a + wy1 * b;
                    }
                    let orow = &mut o[oy * ow..(oy + 1) * ow];
                    for (d, &(x0, x1, wx0, wx1)) in orow.iter_mut().zip(tx.iter()) {
                        *d = wx0 * tmp[x0] + wx1 * tmp[x1];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

/// Bilinear resize of an NCHW map with `align_corners = true`.
pub fn resize_bilinear_ac(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    timed("bilinear", 0.0, || {
        x.contiguous()?.apply_op1_no_bwd(&BilinearOp { oh, ow })
    })
}

// ---------------------------------------------------------------------------------------
// LayerNorm, and the fused QK-norm + 2-D RoPE of the attention inputs
// ---------------------------------------------------------------------------------------

/// Offsets of the rows (last dim, stride 1) of a layout, in row-major order.
fn row_offsets(l: &Layout) -> Result<Vec<usize>> {
    let dims = l.dims();
    let strides = l.stride();
    let r = dims.len();
    if r == 0 || strides[r - 1] != 1 {
        bail!("da3 cpu kernel: the last dim must be contiguous");
    }
    let nrows: usize = dims[..r - 1].iter().product();
    let mut out = Vec::with_capacity(nrows);
    let mut idx = vec![0usize; r - 1];
    let mut off = l.start_offset();
    for _ in 0..nrows {
        out.push(off);
        for j in (0..r - 1).rev() {
            idx[j] += 1;
            off += strides[j];
            if idx[j] < dims[j] {
                break;
            }
            off -= strides[j] * dims[j];
            idx[j] = 0;
        }
    }
    Ok(out)
}

/// Mean and 1/sqrt(var + eps) of a row, accumulated in 8 lanes (vectorises).
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let c = x.len();
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for i in 0..8 {
            acc[i] += ch[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    sum += chunks.remainder().iter().sum::<f32>();
    let mean = sum / c as f32;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for i in 0..8 {
            let d = ch[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut var: f32 = acc.iter().sum();
    var += chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f32>();
    let var = var / c as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm over the last dim (`norm`), then 2-D RoPE (`rope`: cos/sin tables (N, d) for
/// inputs (B, H, N, d)); either may be absent. Input rows may be strided; output contiguous.
struct NormRopeOp {
    norm: Option<(Vec<f32>, Vec<f32>, f32)>,
    rope: Option<(Vec<f32>, Vec<f32>)>,
}

impl CustomOp1 for NormRopeOp {
    fn name(&self) -> &'static str {
        "da3-norm-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = s.as_slice::<f32>()?;
        let dims = l.dims();
        let c = *dims.last().unwrap_or(&1);
        let offs = row_offsets(l)?;
        if let Some((w, b, _)) = &self.norm {
            if w.len() != c || b.len() != c {
                bail!("da3-layer-norm: {c} features, weight has {}", w.len());
            }
        }
        // Token index of each row for the rope tables: rows are (..., N) major to minor.
        let ntok = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        if let Some((cos, _)) = &self.rope {
            if c % 4 != 0 || cos.len() != ntok * c {
                bail!(
                    "da3-rope: tables of {} values for {ntok} tokens x {c}",
                    cos.len()
                );
            }
        }
        let n = offs.len() * c;
        let mut out = output_buffer(n);
        let rows = chunk_len(offs.len(), 16);
        out.par_chunks_mut(rows * c)
            .enumerate()
            .for_each(|(ci, o)| {
                let mut tmp = vec![0f32; c];
                for (ri, orow) in o.chunks_mut(c).enumerate() {
                    let r = ci * rows + ri;
                    let xrow = &x[offs[r]..offs[r] + c];
                    let src: &[f32] = match &self.norm {
                        Some((w, b, eps)) => {
                            let (mean, inv) = row_stats(xrow, *eps);
                            for i in 0..c {
                                tmp[i] = (xrow[i] - mean) * inv * w[i] + b[i];
                            }
                            &tmp
                        }
                        None => xrow,
                    };
                    match &self.rope {
                        Some((cos, sin)) => {
                            let t = r % ntok;
                            let (cr, sr) = (&cos[t * c..(t + 1) * c], &sin[t * c..(t + 1) * c]);
                            let q = c / 4;
                            for part in 0..4 {
                                let (lo, sign, from) = match part {
                                    0 => (0, -1.0f32, q),
                                    1 => (q, 1.0, 0),
                                    2 => (2 * q, -1.0, 3 * q),
                                    _ => (3 * q, 1.0, 2 * q),
                                };
                                for i in 0..q {
                                    let j = lo + i;
                                    orow[j] = src[j] * cr[j] + sign * src[from + i] * sr[j];
                                }
                            }
                        }
                        None => orow.copy_from_slice(src),
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(dims.to_vec())))
    }
}

/// LayerNorm over the last dim (rows may be strided views).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    timed("layer-norm", 0.0, || {
        let op = NormRopeOp {
            norm: Some((weight.to_vec1()?, bias.to_vec1()?, eps as f32)),
            rope: None,
        };
        if x.stride().last() == Some(&1) {
            x.apply_op1_no_bwd(&op)
        } else {
            x.contiguous()?.apply_op1_no_bwd(&op)
        }
    })
}

/// Optional LayerNorm then optional 2-D RoPE (tables (N, d)) of q or k (B, H, N, d), in one
/// pass over a possibly strided view; the result is contiguous.
pub fn norm_rope(
    x: &Tensor,
    norm: Option<(&Tensor, &Tensor, f64)>,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    timed("norm+rope", 0.0, || {
        let norm = match norm {
            Some((w, b, eps)) => Some((w.to_vec1()?, b.to_vec1()?, eps as f32)),
            None => None,
        };
        let rope = match rope {
            Some((c, s)) => Some((c.flatten_all()?.to_vec1()?, s.flatten_all()?.to_vec1()?)),
            None => None,
        };
        let op = NormRopeOp { norm, rope };
        if x.stride().last() == Some(&1) {
            x.apply_op1_no_bwd(&op)
        } else {
            x.contiguous()?.apply_op1_no_bwd(&op)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / m.max(1e-12)
    }

    #[test]
    fn exp2_and_gelu_match_libm() {
        let xs: Vec<f32> = (-1740..1600).map(|i| i as f32 * 0.05).collect();
        if simd::available() {
            // 2^x for x ≤ 0 as the softmax uses it (the max subtracted), and its sum
            let neg: Vec<f32> = (0..3000).map(|i| -(i as f32) * 0.045).collect();
            let mut e = neg.clone();
            let s = unsafe { simd::exp2_sub_sum(&mut e, 0.0) };
            let mut want = 0f64;
            for (x, y) in neg.iter().zip(&e) {
                let r = (*x as f64).exp2();
                want += r;
                assert!(
                    ((*y as f64) - r).abs() <= 3e-7 * r + 1.2e-38,
                    "2^{x} = {y}, want {r}"
                );
            }
            assert!(((s as f64) - want).abs() < 1e-6 * want);
            // shifted by a row max
            let mut e = vec![3.0f32, 1.5, -2.25, 3.0, 0.0, -40.0, 2.0, 1.0, -0.5];
            let s = unsafe { simd::exp2_sub_sum(&mut e, 3.0) };
            let want: Vec<f64> = [3.0f64, 1.5, -2.25, 3.0, 0.0, -40.0, 2.0, 1.0, -0.5]
                .iter()
                .map(|x| (x - 3.0).exp2())
                .collect();
            for (y, r) in e.iter().zip(&want) {
                assert!(((*y as f64) - r).abs() <= 3e-7 * r);
            }
            assert!(((s as f64) - want.iter().sum::<f64>()).abs() < 1e-6 * s as f64);
        }
        let mut g = xs.clone();
        gelu_inplace(&mut g);
        for (x, y) in xs.iter().zip(&g) {
            let xd = *x as f64;
            let want = 0.5 * xd * (1.0 + erf_ref(xd / std::f64::consts::SQRT_2));
            assert!(
                ((*y as f64) - want).abs() <= 2e-7 * (1.0 + xd.abs()),
                "gelu({x})={y} want {want}"
            );
        }
    }

    /// erf by its Taylor / continued-fraction-free series, f64, for the test only.
    fn erf_ref(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        // erf x = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)), converges for |x| ≤ 6 in f64 with
        // enough terms when summed with compensation; use the complementary form past 3.
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc by continued fraction
            let ax = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (ax + f);
            }
            let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
            x.signum() * (1.0 - erfc)
        }
    }

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
        assert!(max_rel(&got, &want) < 1e-6);
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
        assert!(max_rel(&got, &want) < 1e-6);
    }

    #[test]
    fn linear_with_norm_and_residual_matches_candle() {
        let x = rand(&[2, 33, 24], 20);
        let w = rand(&[24, 24], 21);
        let b = rand(&[24], 22);
        let (nw, nb) = (rand(&[24], 23), rand(&[24], 24));
        let g = rand(&[24], 25);
        let ext = LinearExt {
            prenorm: Some((&nw, &nb, 1e-6)),
            residual: Some((&x, &g)),
            ..Default::default()
        };
        let got = linear(&x, &w, Some(&b), ext).unwrap();
        let xn = layer_norm(&x, &nw, &nb, 1e-6).unwrap();
        let y = xn
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let want = (&x + y.broadcast_mul(&g).unwrap()).unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
    }

    #[test]
    fn norm_rope_matches_rope2d() {
        use super::super::attention::Rope2d;
        let pos: Vec<(u32, u32)> = (0..10).map(|i| (i / 3, i % 3)).collect();
        let rope = Rope2d::new(&pos, 16, 100.0, DType::F32, &Device::Cpu).unwrap();
        // strided (B, H, N, d) view, as split from a qkv output
        let x = rand(&[2, 10, 3, 16], 26).transpose(1, 2).unwrap();
        let got = norm_rope(&x, None, Some((&rope.cos, &rope.sin))).unwrap();
        let want = rope.apply(&x.contiguous().unwrap()).unwrap();
        assert!(max_rel(&got, &want) < 1e-6);
        let (nw, nb) = (rand(&[16], 27), rand(&[16], 28));
        let got = norm_rope(&x, Some((&nw, &nb, 1e-5)), None).unwrap();
        let want = layer_norm(&x.contiguous().unwrap(), &nw, &nb, 1e-5).unwrap();
        assert!(max_rel(&got, &want) < 1e-6);
    }

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
            let got = attention(&q, &k, &v, 0.25).unwrap();
            let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * 0.25).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
            let want = p
                .matmul(&v.contiguous().unwrap())
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((bb, n, 48))
                .unwrap();
            assert!(max_rel(&got, &want) < 2e-6, "{bb} {n} {nk}");
        }
    }

    #[test]
    fn conv2d_matches_candle() {
        for (ci, co, k, s, p, h, w) in [
            (5usize, 7usize, 3usize, 1usize, 1usize, 19usize, 23usize),
            (3, 8, 14, 14, 0, 28, 42),
            (6, 4, 1, 1, 0, 9, 11),
            (4, 6, 3, 2, 1, 17, 12),
            (3, 5, 5, 1, 2, 13, 17),
            (4, 3, 3, 1, 0, 10, 9),
            (2, 3, 2, 1, 0, 7, 8),
            (3, 4, 3, 1, 1, 1, 6),
        ] {
            let x = rand(&[2, ci, h, w], 7);
            let wt = rand(&[co, ci, k, k], 8);
            let b = rand(&[co], 9);
            let want = x
                .conv2d(&wt, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, co, 1, 1)).unwrap())
                .unwrap();
            let got = conv2d(&x, &wt, Some(&b), s, p, ConvExt::default()).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_rel(&got, &want) < 1e-5, "conv {ci} {co} {k} {s} {p}");
            // both column layouts, whatever DA3_CONV_ROWS says
            for by_rows in [false, true] {
                let op = Conv2dOp {
                    weight: &wt,
                    bias: Some(&b),
                    stride: s,
                    padding: p,
                    relu_in: false,
                    residual: None,
                    then_1x1: None,
                    by_rows,
                    winograd: false,
                };
                let got = x.apply_op1_no_bwd(&op).unwrap();
                assert!(
                    max_rel(&got, &want) < 1e-5,
                    "conv {ci} {co} {k} {s} {p} {by_rows}"
                );
            }
        }
    }

    #[test]
    fn winograd_conv_matches_candle() {
        // 16+ channels (the Winograd path's minimum), odd and even sizes, one-pixel maps,
        // several bands per image; with bias, input ReLU + residual, and the fused 1x1.
        for (ci, co, h, w) in [
            (16usize, 16usize, 9usize, 11usize),
            (17, 20, 1, 1),
            (16, 18, 2, 3),
            (20, 16, 37, 53),
            (16, 32, 64, 6),
        ] {
            let x = rand(&[2, ci, h, w], 70);
            let wt = rand(&[co, ci, 3, 3], 71);
            let b = rand(&[co], 72);
            let r = rand(&[2, co, h, w], 73);
            let w2 = rand(&[3, co, 1, 1], 74);
            let b2 = rand(&[3], 75);
            let conv = |x: &Tensor| x.conv2d(&wt, 1, 1, 1, 1).unwrap();
            let plus_b = |y: Tensor| y.broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap();
            let op = |with_bias: bool, relu_in, residual, then_1x1| Conv2dOp {
                weight: &wt,
                bias: with_bias.then_some(&b),
                stride: 1,
                padding: 1,
                relu_in,
                residual,
                then_1x1,
                by_rows: true,
                winograd: true,
            };
            let cases: [(Conv2dOp, Tensor); 4] = [
                (op(true, false, None, None), plus_b(conv(&x))),
                (op(false, false, None, None), conv(&x)),
                (
                    op(true, true, Some(&r), None),
                    (plus_b(conv(&x.relu().unwrap())) + &r).unwrap(),
                ),
                (
                    op(
                        true,
                        false,
                        None,
                        Some((
                            w2.flatten_all().unwrap().to_vec1().unwrap(),
                            Some(b2.to_vec1().unwrap()),
                        )),
                    ),
                    plus_b(conv(&x))
                        .relu()
                        .unwrap()
                        .conv2d(&w2, 0, 1, 1, 1)
                        .unwrap()
                        .broadcast_add(&b2.reshape((1, 3, 1, 1)).unwrap())
                        .unwrap(),
                ),
            ];
            for (i, (op, want)) in cases.iter().enumerate() {
                let got = x.apply_op1_no_bwd(op).unwrap();
                assert_eq!(got.dims(), want.dims(), "case {i}, {ci}->{co} {h}x{w}");
                let e = max_rel(&got, want);
                assert!(e < 1e-5, "case {i}, {ci}->{co} {h}x{w}: {e}");
            }
        }
    }

    #[test]
    fn conv2d_relu_residual_matches_candle() {
        let x = rand(&[2, 5, 9, 11], 30);
        let wt = rand(&[5, 5, 3, 3], 31);
        let b = rand(&[5], 32);
        let r = rand(&[2, 5, 9, 11], 33);
        let ext = ConvExt {
            relu_in: true,
            residual: Some(&r),
            ..Default::default()
        };
        let got = conv2d(&x, &wt, Some(&b), 1, 1, ext).unwrap();
        let want = (x
            .relu()
            .unwrap()
            .conv2d(&wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap())
            .unwrap()
            + &r)
            .unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
    }

    #[test]
    fn conv2d_then_relu_1x1_matches_candle() {
        // 2 images of 37x53 pixels, several bands each
        let x = rand(&[2, 6, 37, 53], 60);
        let wt = rand(&[8, 6, 3, 3], 61);
        let b = rand(&[8], 62);
        let w2 = rand(&[2, 8, 1, 1], 63);
        let b2 = rand(&[2], 64);
        for b2 in [Some(&b2), None] {
            let ext = ConvExt {
                then_1x1: Some((&w2, b2)),
                ..Default::default()
            };
            let got = conv2d(&x, &wt, Some(&b), 1, 1, ext).unwrap();
            let y = x
                .conv2d(&wt, 1, 1, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 8, 1, 1)).unwrap())
                .unwrap()
                .relu()
                .unwrap()
                .conv2d(&w2, 0, 1, 1, 1)
                .unwrap();
            let want = match b2 {
                Some(b2) => y.broadcast_add(&b2.reshape((1, 2, 1, 1)).unwrap()).unwrap(),
                None => y,
            };
            assert_eq!(got.dims(), &[2, 2, 37, 53]);
            assert!(max_rel(&got, &want) < 1e-5);
        }
        // with a residual it is refused, not computed wrongly
        let r = rand(&[2, 8, 37, 53], 65);
        let ext = ConvExt {
            residual: Some(&r),
            then_1x1: Some((&w2, None)),
            ..Default::default()
        };
        assert!(conv2d(&x, &wt, Some(&b), 1, 1, ext).is_err());
    }

    #[test]
    fn tokens_conv1x1_matches_transpose_then_conv() {
        // tokens as a narrowed view (skip token 0), like the backbone outputs
        let t = rand(&[2, 1 + 12, 10], 40);
        let x = t.narrow(1, 1, 12).unwrap();
        let wt = rand(&[7, 10, 1, 1], 41);
        let b = rand(&[7], 42);
        let got = conv1x1_tokens(&x, &wt, Some(&b), 3, 4).unwrap();
        let nchw = x
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((2, 10, 3, 4))
            .unwrap();
        let want = conv2d(&nchw, &wt, Some(&b), 1, 0, ConvExt::default()).unwrap();
        assert!(max_rel(&got, &want) < 1e-6);
    }

    #[test]
    fn conv_transpose_matches_candle() {
        for k in [2usize, 4] {
            let x = rand(&[2, 5, 7, 9], 10);
            let wt = rand(&[5, 6, k, k], 11);
            let b = rand(&[6], 12);
            let got = conv_transpose2d_k_eq_s(&x, &wt, Some(&b)).unwrap();
            let want = x
                .conv_transpose2d(&wt, 0, 0, k, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap())
                .unwrap();
            assert!(max_rel(&got, &want) < 1e-5);
        }
    }

    #[test]
    fn bilinear_and_layer_norm_match_candle() {
        let x = rand(&[2, 3, 7, 9], 13);
        let got = resize_bilinear_ac(&x, 15, 20).unwrap();
        let want = x.upsample_bilinear2d(15, 20, true).unwrap();
        assert!(max_rel(&got, &want) < 1e-6);
        let x = rand(&[4, 9, 24], 14);
        let w = rand(&[24], 15);
        let b = rand(&[24], 16);
        let got = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want = xc
            .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
    }
}

/// Kernel timings on DA3-SMALL shapes (not a test: `cargo test --release -p da3 --lib
/// kernel_timings -- --ignored --nocapture`); prints the best of several runs.
#[cfg(test)]
mod timings {
    use super::*;
    use candle_core::Device;

    fn best_ms(mut f: impl FnMut()) -> f64 {
        f();
        (0..7)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    #[ignore]
    fn kernel_timings() {
        let dev = Device::Cpu;
        let qkv = Tensor::randn(0f32, 1.0, (1, 3892, 3, 6, 64), &dev)
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        // strided views of the qkv output, as in the model, and contiguous copies
        let part = |i: usize| qkv.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let ms = best_ms(|| {
            attention(&q, &k, &v, 0.125).unwrap();
        });
        let (qc, kc, vc) = (
            qkv.get(0).unwrap(),
            qkv.get(1).unwrap(),
            qkv.get(2).unwrap(),
        );
        let ms_c = best_ms(|| {
            attention(&qc, &kc, &vc, 0.125).unwrap();
        });
        let ms_v = best_ms(|| {
            attention(&qc, &kc, &v, 0.125).unwrap();
        });
        let ms_k = best_ms(|| {
            attention(&qc, &k, &vc, 0.125).unwrap();
        });
        let ms_q = best_ms(|| {
            attention(&q, &kc, &vc, 0.125).unwrap();
        });
        let gf = 4.0 * 6.0 * 3892f64 * 3892.0 * 64.0 / 1e9;
        println!(
            "attention global 4v: {ms:.1} ms, {:.1} GFLOP/s (contiguous q/k/v: {ms_c:.1} ms; only v strided {ms_v:.1}, only k {ms_k:.1}, only q {ms_q:.1})",
            gf / ms * 1e3
        );
        // the DPT's two most expensive 3x3 convolutions at 4 views
        for (c, h, w) in [(64usize, 108usize, 144usize), (32, 378, 504)] {
            let x = Tensor::randn(0f32, 1.0, (4, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.1, (c, c, 3, 3), &dev).unwrap();
            let ms = best_ms(|| {
                conv2d(&x, &wt, None, 1, 1, ConvExt::default()).unwrap();
            });
            let gf = 2.0 * (4 * h * w * c * c * 9) as f64 / 1e9;
            println!(
                "conv3x3 {c}->{c} {h}x{w} x4: {ms:.1} ms, {:.1} GFLOP/s",
                gf / ms * 1e3
            );
        }
        let x = Tensor::randn(0f32, 1.0, (4, 973, 384), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (1536, 384), &dev).unwrap();
        let ext = LinearExt {
            gelu: true,
            ..Default::default()
        };
        let ms = best_ms(|| {
            linear(&x, &w, None, ext).unwrap();
        });
        let gf = 2.0 * 4.0 * 973.0 * 384.0 * 1536.0 / 1e9;
        println!("fc1+gelu 4v: {ms:.1} ms, {:.1} GFLOP/s", gf / ms * 1e3);
        let ms = best_ms(|| {
            linear(&x, &w, None, LinearExt::default()).unwrap();
        });
        println!("fc1 (no gelu) 4v: {ms:.1} ms, {:.1} GFLOP/s", gf / ms * 1e3);
        // the block's other linears, with and without their fused extras
        let nw = Tensor::randn(0f32, 1.0, 384, &dev).unwrap();
        let nb = Tensor::randn(0f32, 1.0, 384, &dev).unwrap();
        let wq = Tensor::randn(0f32, 0.1, (1152, 384), &dev).unwrap();
        let bq = Tensor::randn(0f32, 0.1, 1152, &dev).unwrap();
        let gf = 2.0 * 4.0 * 973.0 * 384.0 * 1152.0 / 1e9;
        let plain = best_ms(|| {
            linear(&x, &wq, Some(&bq), LinearExt::default()).unwrap();
        });
        let ext = LinearExt {
            prenorm: Some((&nw, &nb, 1e-6)),
            ..Default::default()
        };
        let normed = best_ms(|| {
            linear(&x, &wq, Some(&bq), ext).unwrap();
        });
        println!(
            "qkv 4v: {plain:.1} ms ({:.1} GFLOP/s), with pre-norm {normed:.1} ms ({:.1})",
            gf / plain * 1e3,
            gf / normed * 1e3
        );
        let h = Tensor::randn(0f32, 1.0, (4, 973, 1536), &dev).unwrap();
        let w2 = Tensor::randn(0f32, 0.1, (384, 1536), &dev).unwrap();
        let gamma = Tensor::randn(0f32, 0.1, 384, &dev).unwrap();
        let plain = best_ms(|| {
            linear(&h, &w2, Some(&nb), LinearExt::default()).unwrap();
        });
        let ext = LinearExt {
            residual: Some((&x, &gamma)),
            ..Default::default()
        };
        let resid = best_ms(|| {
            linear(&h, &w2, Some(&nb), ext).unwrap();
        });
        println!(
            "fc2 4v: {plain:.1} ms ({:.1} GFLOP/s), with residual {resid:.1} ms ({:.1})",
            gf * 4.0 / 3.0 / plain * 1e3,
            gf * 4.0 / 3.0 / resid * 1e3
        );
        let mut v = vec![0.5f32; 4 * 973 * 1536];
        let ms = best_ms(|| gelu_inplace(&mut v));
        println!("gelu alone, 1 thread, {} values: {ms:.1} ms", v.len());
        println!("matmul peak {:.1} GFLOP/s", matmul_peak_gflops());
    }
}
