//! Per-kernel timing for `da3 bench --profile`: each kernel call goes through `timed`,
//! which records nothing unless [`set_profiling`]`(true)` was called.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use super::linear::matmul_peak_gflops;

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

/// A kernel kind's name: a fixed one, or one per shape (`DA3_PROFILE_SHAPES`).
pub type OpName = Cow<'static, str>;

static PROFILE_ON: AtomicBool = AtomicBool::new(false);
static PROFILE: Mutex<Vec<(OpName, OpStat)>> = Mutex::new(Vec::new());

/// Start (or stop) recording kernel times; clears what was recorded.
pub fn set_profiling(on: bool) {
    PROFILE_ON.store(on, Ordering::Relaxed);
    if let Ok(mut p) = PROFILE.lock() {
        p.clear();
    }
}

/// Whether kernel times are being recorded.
pub fn profiling() -> bool {
    PROFILE_ON.load(Ordering::Relaxed)
}

/// Kernel times recorded since [`set_profiling`]`(true)`, by kernel kind.
pub fn profile() -> Vec<(OpName, OpStat)> {
    PROFILE.lock().map(|p| p.clone()).unwrap_or_default()
}

/// Run `f`, adding its wall and CPU time and `flops` to the kernel kind `name` when
/// profiling.
pub(super) fn timed<R>(name: impl Into<OpName>, flops: f64, f: impl FnOnce() -> R) -> R {
    if !profiling() {
        return f();
    }
    let (t, c) = (std::time::Instant::now(), process_cpu_secs());
    let r = f();
    let secs = t.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - c;
    let name = name.into();
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
