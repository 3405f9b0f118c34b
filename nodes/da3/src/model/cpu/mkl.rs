//! oneMKL's GEMMs (static, sequential: one call per task, the work split over rayon's pool
//! as for the `gemm` crate): bf16/f16 inputs with f32 accumulation for the mixed precision
//! ([`super::half`]), and the linear layers' f32 GEMMs where [`Tuning::mkl_f32`] applies. Linked by `build.rs`
//! when `scripts/setup.sh` installed it; [`mkl_linked`] says whether it was.
//!
//! [`Tuning::mkl_f32`]: crate::tuning::Tuning::mkl_f32

use super::buffers::Mat;
use super::half::Half;

/// Whether oneMKL is linked into this build.
pub fn mkl_linked() -> bool {
    cfg!(da3_mkl)
}

/// oneMKL's version string, when linked.
pub fn mkl_version() -> Option<String> {
    #[cfg(da3_mkl)]
    {
        let mut buf = vec![0u8; 256];
        unsafe { ffi::mkl_get_version_string(buf.as_mut_ptr().cast(), buf.len() as i32) };
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        return Some(String::from_utf8_lossy(&buf[..end]).trim().to_string());
    }
    #[allow(unreachable_code)]
    None
}

/// `dst (m×n, row stride ldd) = [dst +] lhs (m×k, row-major, stride k) · wᵀ` with `w`
/// (n×k, row-major) in `kind`, f32 accumulation, single-threaded (callers split the work).
///
/// # Safety
/// `dst` must be writable for `m` rows of `ldd` floats (first `n` of each), and not alias
/// the inputs; `lhs` holds `m·k` and `w` `n·k` values.
#[allow(unused_variables)]
pub(super) unsafe fn gemm_xwt(
    kind: Half,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: &[u16],
    w: &[u16],
) {
    debug_assert!(lhs.len() >= m * k && w.len() >= n * k);
    #[cfg(da3_mkl)]
    {
        let f: ffi::HalfGemm = match kind {
            Half::Bf16 => ffi::cblas_gemm_bf16bf16f32,
            Half::F16 => ffi::cblas_gemm_f16f16f32,
        };
        f(
            ffi::ROW_MAJOR,
            ffi::NO_TRANS,
            ffi::TRANS,
            m as i32,
            n as i32,
            k as i32,
            1.0,
            lhs.as_ptr(),
            k as i32,
            w.as_ptr(),
            k as i32,
            if accumulate { 1.0 } else { 0.0 },
            dst,
            ldd as i32,
        );
    }
    #[cfg(not(da3_mkl))]
    super::half::gemm_xwt_widened(kind, (m, n, k), dst, ldd, accumulate, lhs, w);
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)` by `cblas_sgemm` when oneMKL is
/// linked and every operand has a unit stride in one dimension (BLAS layouts); returns
/// false, having done nothing, otherwise (the caller then uses the `gemm` crate).
///
/// # Safety
/// As `super::buffers::sgemm`.
#[allow(unused_variables)]
pub(super) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: Mat<*mut f32>,
    accumulate: bool,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
    scale: f32,
) -> bool {
    #[cfg(da3_mkl)]
    {
        if m == 0 || n == 0 || k == 0 || m.max(n).max(k) > i32::MAX as usize {
            return false;
        }
        // A column-major dst: compute dstᵀ = rhsᵀ · lhsᵀ instead.
        if dst.cs != 1 && dst.rs == 1 {
            let t = |a: Mat<*const f32>| Mat::strided(a.ptr, a.cs, a.rs);
            return sgemm(
                (n, m, k),
                Mat::strided(dst.ptr, dst.cs, dst.rs),
                accumulate,
                t(rhs),
                t(lhs),
                scale,
            );
        }
        if dst.cs != 1 || dst.rs < n as isize {
            return false;
        }
        // (transpose flag, leading dimension) of a rows×cols operand, row-major storage.
        let blas = |a: &Mat<*const f32>, rows: usize, cols: usize| -> Option<(i32, i32)> {
            if a.cs == 1 && a.rs >= cols.max(1) as isize {
                Some((ffi::NO_TRANS, a.rs as i32))
            } else if a.rs == 1 && a.cs >= rows.max(1) as isize {
                Some((ffi::TRANS, a.cs as i32))
            } else {
                None
            }
        };
        let (Some((ta, lda)), Some((tb, ldb))) = (blas(&lhs, m, k), blas(&rhs, k, n)) else {
            return false;
        };
        ffi::cblas_sgemm(
            ffi::ROW_MAJOR,
            ta,
            tb,
            m as i32,
            n as i32,
            k as i32,
            scale,
            lhs.ptr,
            lda,
            rhs.ptr,
            ldb,
            if accumulate { 1.0 } else { 0.0 },
            dst.ptr,
            dst.rs as i32,
        );
        return true;
    }
    #[allow(unreachable_code)]
    false
}

#[cfg(da3_mkl)]
mod ffi {
    //! The few oneMKL entry points used (LP64: 32-bit integers), from `mkl_cblas.h`.
    pub const ROW_MAJOR: i32 = 101;
    pub const NO_TRANS: i32 = 111;
    pub const TRANS: i32 = 112;

    pub type HalfGemm = unsafe extern "C" fn(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const u16,
        lda: i32,
        b: *const u16,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );

    extern "C" {
        pub fn cblas_gemm_bf16bf16f32(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const u16,
            lda: i32,
            b: *const u16,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        pub fn cblas_gemm_f16f16f32(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const u16,
            lda: i32,
            b: *const u16,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        pub fn cblas_sgemm(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        pub fn mkl_get_version_string(buf: *mut std::ffi::c_char, len: i32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operand orientation `sgemm` accepts against a plain triple loop; layouts BLAS
    /// cannot take are declined (false), never computed wrong.
    #[test]
    fn sgemm_orientations() {
        if !mkl_linked() {
            eprintln!("oneMKL not linked: skipped");
            return;
        }
        let (m, n, k) = (13usize, 11usize, 9usize);
        let a: Vec<f32> = (0..m * k * 2)
            .map(|i| (i % 17) as f32 * 0.25 - 2.0)
            .collect();
        let b: Vec<f32> = (0..k * n * 2)
            .map(|i| (i % 13) as f32 * 0.5 - 3.0)
            .collect();
        // (rs, cs) of lhs (m×k) and rhs (k×n), with padded leading dimensions.
        let lhs_layouts = [(k as isize + 2, 1isize), (1, m as isize + 1)];
        let rhs_layouts = [(n as isize + 3, 1isize), (1, k as isize)];
        for &(lrs, lcs) in &lhs_layouts {
            for &(rrs, rcs) in &rhs_layouts {
                for (drs, dcs) in [(n as isize + 1, 1isize), (1, m as isize)] {
                    for accumulate in [false, true] {
                        let mut d = vec![0.5f32; m * n * 2];
                        let ok = unsafe {
                            sgemm(
                                (m, n, k),
                                Mat::strided(d.as_mut_ptr(), drs, dcs),
                                accumulate,
                                Mat::strided(a.as_ptr(), lrs, lcs),
                                Mat::strided(b.as_ptr(), rrs, rcs),
                                0.5,
                            )
                        };
                        assert!(ok, "declined a BLAS layout");
                        for i in 0..m {
                            for j in 0..n {
                                let s: f32 = (0..k)
                                    .map(|p| {
                                        a[(i as isize * lrs + p as isize * lcs) as usize]
                                            * b[(p as isize * rrs + j as isize * rcs) as usize]
                                    })
                                    .sum();
                                let want = 0.5 * s + if accumulate { 0.5 } else { 0.0 };
                                let got = d[(i as isize * drs + j as isize * dcs) as usize];
                                assert!((got - want).abs() < 1e-3, "({i},{j}) {got} vs {want}");
                            }
                        }
                    }
                }
            }
        }
        // A general strided operand is declined.
        let mut d = vec![0f32; m * n];
        let ok = unsafe {
            sgemm(
                (m, n, k),
                Mat::rows(d.as_mut_ptr(), n),
                false,
                Mat::strided(a.as_ptr(), 2 * k as isize, 2),
                Mat::rows(b.as_ptr(), n),
                1.0,
            )
        };
        assert!(!ok);
    }
}
