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

/// The command that builds everything the graphs run (README's first command, through
/// scripts/demo.sh, and scripts/test.sh).
const GRAPH_BUILD: &str = "cargo build --workspace --bins --features da3/cli";

/// Graphs build once: every node `build:` of dataflows/ is the one command scripts/demo.sh and
/// scripts/test.sh run first (a node without one, as in the multi-machine graph that
/// `dora start` runs, uses that build too), and running it again from dataflows/, as
/// `dora run` does, compiles nothing (every artifact fresh: the suite's own build came first).
#[test]
fn graphs_share_one_build_that_dora_run_finds_done() {
    for script in ["scripts/demo.sh", "scripts/test.sh"] {
        let text = std::fs::read_to_string(root().join(script)).expect("script");
        assert!(
            text.lines().any(|l| l.trim() == GRAPH_BUILD),
            "{script} does not run `{GRAPH_BUILD}`"
        );
    }
    let mut builds = 0;
    for e in std::fs::read_dir(root().join("dataflows")).expect("dataflows") {
        let p = e.expect("dir entry").path();
        if p.extension().is_none_or(|x| x != "yml") {
            continue;
        }
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&p).expect("read graph")).expect("YAML");
        for node in doc["nodes"].as_sequence().expect("nodes") {
            let path = node["path"].as_str().unwrap_or_default();
            if path.starts_with("../target/") {
                let build = node["build"].as_str();
                assert!(
                    build.is_none() || build == Some(GRAPH_BUILD),
                    "{}: node {:?} builds otherwise: {build:?}",
                    p.display(),
                    node["id"]
                );
                assert!(
                    path.starts_with("../target/debug/"),
                    "{}: {path}: the graphs run the build of `{GRAPH_BUILD}`",
                    p.display()
                );
                builds += build.is_some() as usize;
            }
        }
    }
    assert!(builds > 30, "only {builds} built nodes in dataflows/");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args: Vec<&str> = GRAPH_BUILD.split(' ').skip(1).collect();
    args.push("--message-format=json");
    // As a shell runs it: without the variables cargo sets for this test process (some build
    // scripts rerun when, e.g., CARGO_MANIFEST_DIR changes).
    let mut cmd = Command::new(cargo);
    for (k, _) in std::env::vars() {
        let set_by_cargo_test = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ];
        if set_by_cargo_test.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&k);
        }
    }
    let out = cmd
        .args(&args)
        .current_dir(root().join("dataflows"))
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["fresh"] == false)
        .map(|m| m["target"]["name"].to_string())
        .collect();
    assert!(stale.is_empty(), "`dora run` would compile: {stale:?}");
}
