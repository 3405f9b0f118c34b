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
//!
//! oneDNN (`model/cpu/onednn/`) is not linked but loaded at run time; this records where
//! its library is (`DA3_DNNL_BUILD_PATH`): `$DA3_DNNL_DIR` or the project's `.venv/lib`
//! (`scripts/setup.sh` installs PyPI's `onednn-cpu-gomp` there). `DA3_DNNL_DIR=none`
//! records nothing (then only `DA3_DNNL_LIB` at run time, or the loader's search path).

use std::path::{Path, PathBuf};

const LIBS: [&str; 3] = ["mkl_intel_lp64", "mkl_sequential", "mkl_core"];

fn has_mkl(dir: &Path) -> bool {
    LIBS.iter().all(|l| dir.join(format!("lib{l}.a")).is_file())
}

/// Record the path of oneDNN's library, when found, for the run-time loader.
fn onednn(venv: &Path) {
    println!("cargo:rerun-if-env-changed=DA3_DNNL_DIR");
    let mut dirs: Vec<PathBuf> = Vec::new();
    match std::env::var("DA3_DNNL_DIR") {
        Ok(d) if d == "none" => return,
        Ok(d) => dirs.push(d.into()),
        Err(_) => {}
    }
    dirs.push(venv.join("lib"));
    if let Some(lib) = dirs
        .iter()
        .map(|d| d.join("libdnnl.so.3"))
        .find(|f| f.is_file())
    {
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rerun-if-changed={}", lib.display());
        println!("cargo:rustc-env=DA3_DNNL_BUILD_PATH={}", lib.display());
    } else {
        println!(
            "cargo:warning=oneDNN not found (run scripts/setup.sh, or set DA3_DNNL_DIR): \
             the linear layers use the other CPU kernels"
        );
    }
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(da3_mkl)");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        onednn(&manifest.join("../../.venv"));
    }
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
