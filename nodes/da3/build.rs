//! Links Intel oneMKL (static, sequential, LP64) when its libraries are found, for the
//! bf16/f16 GEMMs of the CPU's mixed precision (`cblas_gemm_bf16bf16f32`: AMX-BF16 and
//! AVX512-BF16 kernels where the CPU has them, correct everywhere else). Where they are not
//! found the crate still builds: half-precision weights are then widened to f32 per call
//! (same results up to rounding, no speed-up), and `da3::device::cpu_gemm_library()` says
//! which.
//!
//! Looked for, first match wins: `$DA3_MKL_DIR`, the project's `.venv/lib` (where
//! `scripts/setup.sh` installs the `mkl-static` wheel from PyPI), `$MKLROOT/lib`,
//! `$CONDA_PREFIX/lib`. `DA3_MKL_DIR=none` builds without it. Nothing is downloaded here.
//! (At run time `DA3_MKL=0` switches the linked library off: `da3::tuning::Tuning::mkl`.)

use std::path::{Path, PathBuf};

const LIBS: [&str; 3] = ["mkl_intel_lp64", "mkl_sequential", "mkl_core"];

fn has_mkl(dir: &Path) -> bool {
    LIBS.iter().all(|l| dir.join(format!("lib{l}.a")).is_file())
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(da3_mkl)");
    for v in ["DA3_MKL_DIR", "MKLROOT", "CONDA_PREFIX"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("DA3_MKL_DIR").is_ok_and(|v| v == "none") {
        return;
    }
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64")
        || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let venv = manifest.join("../../.venv");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("DA3_MKL_DIR") {
        dirs.push(d.into());
    }
    dirs.push(venv.join("lib"));
    for root in ["MKLROOT", "CONDA_PREFIX"] {
        if let Ok(d) = std::env::var(root) {
            dirs.push(Path::new(&d).join("lib"));
        }
    }
    // Rebuild when setup.sh installs the wheel (the folder changes) or it is removed.
    if venv.is_dir() {
        println!("cargo:rerun-if-changed={}", venv.display());
        if venv.join("lib").is_dir() {
            println!("cargo:rerun-if-changed={}", venv.join("lib").display());
        }
    }
    let Some(dir) = dirs.iter().find(|d| has_mkl(d)) else {
        println!(
            "cargo:warning=oneMKL not found (run scripts/setup.sh, or set DA3_MKL_DIR): \
             bf16/f16 CPU GEMMs fall back to f32"
        );
        return;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("libmkl_core.a").display()
    );
    println!("cargo:rustc-link-search=native={}", dir.display());
    // `-bundle`: linked into the final binaries only, not copied into this crate's rlib
    // (libmkl_core.a alone is ~570 MB; a binary takes the few MB it uses).
    for l in LIBS {
        println!("cargo:rustc-link-lib=static:-bundle={l}");
    }
    for l in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    println!("cargo:rustc-cfg=da3_mkl");
}
