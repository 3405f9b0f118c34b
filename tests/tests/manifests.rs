//! Every node's `dora-node.yml` (dora's node manifest, `apiVersion: 1`)
//! against the code: its env list is exactly the node's `ENV_VARS` (the
//! list its config parser reads through `da3_msg::node_util::Env`, which in
//! debug builds panics on a read that is not declared and on a declared name
//! that is never read), its README's env table names the same variables, and
//! the manifest follows the schema (`libraries/core/dora-node-schema.json`
//! in dora-rs/dora): required fields, port type URNs, env types and defaults.
//!
//! Needs no dora and no binaries: it links the node libraries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The manifest fields of dora's schema this project uses (unknown fields
/// are an error, as in dora's own parser).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Manifest {
    api_version: u64,
    name: String,
    namespace: String,
    description: String,
    categories: Vec<String>,
    keywords: Vec<String>,
    runtime: String,
    build: String,
    entrypoint: String,
    #[serde(default)]
    platforms: Vec<String>,
    dora: Option<String>,
    inputs: BTreeMap<String, Port>,
    outputs: BTreeMap<String, Port>,
    #[serde(default)]
    types: BTreeMap<String, TypeDef>,
    env: BTreeMap<String, EnvVar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Port {
    #[serde(rename = "type")]
    ty: Option<String>,
    required: Option<bool>,
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeDef {
    arrow: String,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    fields: Vec<FieldDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDef {
    #[allow(dead_code)]
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    #[serde(rename = "type")]
    ty: EnvType,
    default: Option<serde_yaml::Value>,
    description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EnvType {
    String,
    Int,
    Float,
    Bool,
}

/// dora's fixed category list.
const CATEGORIES: &[&str] = &[
    "sensor",
    "actuator",
    "robot",
    "transform",
    "filter",
    "ml-inference",
    "llm",
    "speech",
    "communication",
    "recorder",
    "visualization",
    "simulator",
    "debug",
];

/// Arrow types of dora's `std/core/v1` types this project's messages use.
const STD_CORE: &[&str] = &["UInt8", "Float32", "Float64", "String"];

/// One node: its crate folder, declared env vars, old names still read,
/// and a parse of its config from the process env.
struct Node {
    dir: &'static str,
    env_vars: &'static [&'static [&'static str]],
    renamed: &'static [(&'static str, &'static str)],
    parse: fn() -> eyre::Result<()>,
}

fn nodes() -> Vec<Node> {
    vec![
        Node {
            dir: "camera",
            env_vars: camera::ENV_VARS,
            renamed: camera::RENAMED,
            parse: || camera::Config::from_env("cam").map(drop),
        },
        Node {
            dir: "image-source",
            env_vars: image_source::ENV_VARS,
            renamed: image_source::RENAMED,
            parse: || image_source::Config::from_env("images").map(drop),
        },
        Node {
            dir: "dora-da3",
            env_vars: dora_da3::config::ENV_VARS,
            renamed: &[],
            parse: || dora_da3::config::Config::from_env().map(drop),
        },
        Node {
            dir: "depth-export",
            env_vars: depth_export::ENV_VARS,
            renamed: &[],
            parse: || depth_export::Config::from_env().map(drop),
        },
        Node {
            dir: "recorder",
            env_vars: recorder::ENV_VARS,
            renamed: &[],
            parse: || recorder::Config::from_env().map(drop),
        },
        Node {
            dir: "replay",
            env_vars: replay::ENV_VARS,
            renamed: replay::RENAMED,
            parse: || replay::Config::from_env().map(drop),
        },
        Node {
            dir: "viewer",
            env_vars: viewer::ENV_VARS,
            renamed: &[],
            parse: || viewer::Config::from_env().map(drop),
        },
        Node {
            dir: "msg-dump",
            env_vars: msg_dump::ENV_VARS,
            renamed: &[],
            parse: || msg_dump::Config::from_env().map(drop),
        },
    ]
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

fn check_manifest(node: &Node, m: &Manifest, errs: &mut Vec<String>) {
    let mut err = |e: String| errs.push(format!("nodes/{}/dora-node.yml: {e}", node.dir));
    if m.api_version != 1 {
        err(format!("apiVersion {} (dora's schema is 1)", m.api_version));
    }
    if m.name != node.dir {
        err(format!(
            "name `{}`, expected the crate's `{}`",
            m.name, node.dir
        ));
    }
    if m.namespace != "dora-da3" || m.runtime != "rust" {
        err("namespace must be dora-da3, runtime rust".into());
    }
    if m.description.trim().is_empty() || m.keywords.is_empty() {
        err("description and keywords must not be empty".into());
    }
    for c in &m.categories {
        if !CATEGORIES.contains(&c.as_str()) {
            err(format!("category `{c}` is not in dora's list"));
        }
    }
    let entry = format!("target/release/{}", node.dir);
    if m.entrypoint != entry || !m.build.contains(&format!("-p {} ", node.dir)) {
        err(format!("entrypoint must be `{entry}`, built by `cargo build --release -p {} --target-dir target`", node.dir));
    }
    for p in &m.platforms {
        if p.split_once('-').is_none() {
            err(format!("platform `{p}` is not <os>-<arch>"));
        }
    }
    if m.dora.is_none() {
        err("dora version range missing".into());
    }
    for (urn, t) in &m.types {
        if !urn.starts_with("dora-da3/") {
            err(format!("shipped type `{urn}` is outside the namespace"));
        }
        if t.arrow != "Struct" && !STD_CORE.contains(&t.arrow.as_str()) {
            err(format!("type `{urn}`: arrow `{}`", t.arrow));
        }
        for f in &t.fields {
            if !["Float32", "Float64", "UInt8", "UInt32", "Utf8"].contains(&f.ty.as_str()) {
                err(format!("type `{urn}`: field type `{}`", f.ty));
            }
        }
    }
    for (dir, ports) in [("inputs", &m.inputs), ("outputs", &m.outputs)] {
        for (id, p) in ports {
            if p.description.trim().is_empty() {
                err(format!("{dir}.{id}: no description"));
            }
            if dir == "outputs" && p.required.is_some() {
                err(format!("{dir}.{id}: `required` is only for inputs"));
            }
            match p.ty.as_deref() {
                None => {}
                Some(t)
                    if t.strip_prefix("std/core/v1/")
                        .is_some_and(|a| STD_CORE.contains(&a)) => {}
                Some(t) if m.types.contains_key(t) => {}
                Some(t) => err(format!(
                    "{dir}.{id}: type `{t}` is neither std/core/v1 nor shipped here"
                )),
            }
        }
    }
    for (name, v) in &m.env {
        if v.description.trim().is_empty() {
            err(format!("env.{name}: no description"));
        }
        let ok = match (&v.default, v.ty) {
            (None, _) => true,
            (Some(d), EnvType::String) => d.is_string(),
            (Some(d), EnvType::Int) => d.is_i64() || d.is_u64(),
            (Some(d), EnvType::Float) => d.is_number(),
            (Some(d), EnvType::Bool) => d.is_bool(),
        };
        if !ok {
            err(format!(
                "env.{name}: default {:?} is not a {:?}",
                v.default, v.ty
            ));
        }
        if name == "PATH" || name.starts_with("LD_") || name.starts_with("DORA_") {
            err(format!("env.{name}: a name dora's validation rejects"));
        }
    }
}

/// The variable names of the first table under the README's `## Env...` heading.
fn readme_env_names(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("\n## Env")
        .expect("the README has an `## Environment` section");
    readme[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .filter_map(|cell| {
            let name = cell.trim().strip_prefix('`')?.strip_suffix('`')?;
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn every_node_manifest_matches_what_the_node_reads() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("a.png");
    image::RgbImage::new(4, 4).save(&image).unwrap();
    let recording = tmp.path().join("a.arrows");
    std::fs::write(&recording, b"").unwrap();
    // The knobs that have no default; every other one is left unset.
    let required = [
        ("SOURCE", image.to_str().unwrap()),
        ("FILE", recording.to_str().unwrap()),
        ("OUT", tmp.path().to_str().unwrap()),
        ("DEVICE", "cpu"),
    ];

    let mut errs = Vec::new();
    let all = nodes();
    let mut seen = BTreeSet::new();
    for node in &all {
        let dir = repo.join("nodes").join(node.dir);
        let text = std::fs::read_to_string(dir.join("dora-node.yml"))
            .unwrap_or_else(|e| panic!("nodes/{}/dora-node.yml: {e}", node.dir));
        let m: Manifest = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("nodes/{}/dora-node.yml: {e}", node.dir));
        check_manifest(node, &m, &mut errs);

        let flat: Vec<&str> = node
            .env_vars
            .iter()
            .flat_map(|l| l.iter().copied())
            .collect();
        let code: BTreeSet<String> = flat.iter().map(|s| s.to_string()).collect();
        if code.len() != flat.len() {
            errs.push(format!(
                "{}: ENV_VARS lists a name twice: {flat:?}",
                node.dir
            ));
        }
        let manifest: BTreeSet<String> = m.env.keys().cloned().collect();
        for n in code.difference(&manifest) {
            errs.push(format!(
                "{}: reads {n}, which its dora-node.yml lacks",
                node.dir
            ));
        }
        for n in manifest.difference(&code) {
            errs.push(format!(
                "{}: dora-node.yml lists {n}, which the node does not read",
                node.dir
            ));
        }
        for (old, new) in node.renamed {
            if manifest.contains(*old) || !manifest.contains(*new) {
                errs.push(format!(
                    "{}: renamed {old} -> {new}: the manifest lists the new name only",
                    node.dir
                ));
            }
        }
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let table = readme_env_names(&readme);
        if table != manifest {
            errs.push(format!(
                "{}: README env table {table:?} != dora-node.yml env {manifest:?}",
                node.dir
            ));
        }

        // Parse the config with only the required knobs set: in this debug
        // build `Env` panics on an undeclared read or a declared name never read.
        let names: Vec<&str> = flat
            .iter()
            .copied()
            .chain(node.renamed.iter().map(|(old, _)| *old))
            .collect();
        for n in &names {
            std::env::remove_var(n);
        }
        for (k, v) in required {
            if names.contains(&k) {
                std::env::set_var(k, v);
            }
        }
        if let Err(e) = (node.parse)() {
            errs.push(format!("{}: config with defaults fails: {e:#}", node.dir));
        }
        for n in &names {
            std::env::remove_var(n);
        }
        seen.insert(node.dir);
    }

    // Every node crate (a folder of nodes/ with a dora-node.yml or a binary
    // that is not a library or a CLI) is listed above.
    for entry in std::fs::read_dir(repo.join("nodes")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        if dir.join("dora-node.yml").exists() && !seen.contains(name.as_str()) {
            errs.push(format!("nodes/{name}/dora-node.yml is not checked here"));
        }
        let is_node = dir.join("src/main.rs").exists() && name != "da3";
        if is_node && !seen.contains(name.as_str()) {
            errs.push(format!(
                "nodes/{name} is a node without a checked dora-node.yml"
            ));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
