//! The layout rules of the project (issue #13), checked on the tree itself:
//! model files name no CPU kernel (they call `model::ops`), depth-export
//! builds without candle, and no source file under `nodes/` grows past ~900
//! lines.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn model_files_call_ops_not_cpu_kernels() {
    let dir = root().join("nodes/da3/src/model");
    let mut offenders = Vec::new();
    for e in std::fs::read_dir(&dir).expect("model dir") {
        let p = e.expect("dir entry").path();
        if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).expect("read model file");
            for (i, line) in text.lines().enumerate() {
                if line.contains("use_kernels") || line.contains("cpu::") {
                    offenders.push(format!("{}:{}: {line}", p.display(), i + 1));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "model files must call model::ops, not the CPU kernels:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn no_source_file_under_nodes_is_over_900_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("nodes"), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).ok()?.lines().count();
            (n > 900).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}

#[test]
fn depth_export_builds_without_candle() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-p",
            "depth-export",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("da3-io"), "unexpected tree:\n{tree}");
    let heavy: Vec<&str> = tree
        .lines()
        .filter(|l| {
            ["candle", "gemm ", "hf-hub", "clap "]
                .iter()
                .any(|c| l.starts_with(c))
        })
        .collect();
    assert!(heavy.is_empty(), "depth-export pulls in {heavy:?}");
}
