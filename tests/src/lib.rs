//! Harness for the end-to-end tests: take a graph from `dataflows/`, point its
//! nodes at the binaries of this build, override env vars, run it with the
//! real `dora run`, and read what the `msg-dump` sinks wrote.
//!
//! The node binaries must be built first (`cargo build --workspace --bins
//! --features da3/cli`, as `scripts/test.sh` does: `cargo test` alone builds
//! only the binaries of the package under test, and the `da3` CLI needs its
//! feature).
//! The dora CLI is taken from `$DORA`, else `<repo>/.venv/bin/dora`, else `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use eyre::{bail, eyre, Context, Result};
use serde_yaml::{Mapping, Value};
use wait_timeout::ChildExt;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The committed tiny any-view checkpoint (random weights).
/// Runs the .venv's python (scripts/setup.sh installs it with the packages the checks read
/// our files with: numpy, pycolmap, trimesh, plyfile, mcap, rerun-sdk) with `args` (a script of
/// `tests/` and its arguments, or `-c` and code); it must succeed and print one JSON document,
/// which is returned.
pub fn venv_python_json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<serde_json::Value> {
    let python = repo_root().join(".venv/bin/python");
    let what = args
        .iter()
        .take(2)
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(&python)
        .args(args)
        .output()
        .wrap_err_with(|| {
            format!(
                "cannot run {} (bash scripts/setup.sh installs it)",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "python {what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).wrap_err_with(|| format!("python {what} printed no JSON"))
}

/// A Rerun `.rrd` file summarised by `tests/rrd_check.py` (rerun-sdk): entities, archetypes,
/// rows per frame (JSON).
pub fn rrd_summary(path: &Path) -> Result<serde_json::Value> {
    let script = repo_root().join("tests/rrd_check.py");
    venv_python_json(&[script.as_os_str(), path.as_os_str()])
}

/// The files directly in `dir` whose name ends with `suffix` (e.g. `.npz`, `_gs.ply`),
/// sorted; none when the folder does not exist.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

pub fn tiny_model() -> String {
    repo_root()
        .join("nodes/da3/tests/fixtures/tiny-anyview")
        .display()
        .to_string()
}

/// The bundled sample images, in name order.
pub fn sample_images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples/images"))
        .expect("examples/images")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

/// Frame `i` of a synthetic RGB clip: `w x h` packed RGB8, different per frame.
pub fn synthetic_rgb(w: u32, h: u32, i: u32) -> Vec<u8> {
    (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    ((x * 4 + i * 10) % 256) as u8,
                    ((y * 5 + i) % 256) as u8,
                    ((i * 20 + x + y) % 256) as u8,
                ]
            })
        })
        .collect()
}

/// Writes frames `0..n` of [`synthetic_rgb`] as a lossless RGB H.264 MP4 at
/// 10 fps (decoded bytes equal the encoded ones), with the `ffmpeg` CLI.
pub fn write_test_video(path: &Path, w: u32, h: u32, n: u32) -> Result<()> {
    let raw: Vec<u8> = (0..n).flat_map(|i| synthetic_rgb(w, h, i)).collect();
    let raw_path = path.with_extension("rgb");
    std::fs::write(&raw_path, &raw)?;
    let status = Command::new("ffmpeg")
        .args([
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
        ])
        .args(["-s", &format!("{w}x{h}"), "-r", "10", "-i"])
        .arg(&raw_path)
        .args(["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"])
        .arg(path)
        .status()
        .wrap_err("ffmpeg (Debian package `ffmpeg`) is needed to make the test video")?;
    if !status.success() {
        bail!("ffmpeg failed ({status}) writing {}", path.display());
    }
    Ok(())
}

/// Folder holding the workspace's binaries for this build profile.
pub fn bin_dir() -> PathBuf {
    // <target>/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, checked to exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.is_file() {
        bail!(
            "binary `{}` is missing: run `cargo build --workspace --bins --features da3/cli` first (scripts/test.sh does)",
            p.display()
        );
    }
    Ok(p)
}

/// The dora CLI to use.
pub fn dora_cli() -> PathBuf {
    if let Ok(p) = std::env::var("DORA") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/dora");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("dora")
}

/// A dataflow loaded from `dataflows/`, rewritten for the test.
pub struct Flow {
    doc: Value,
    pub dir: tempfile::TempDir,
}

/// Result of one `dora run`.
pub struct RunOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub log: String,
}

impl Flow {
    /// Loads `dataflows/<name>`; node paths under `../target/<profile>/` are
    /// redirected to this build's binaries and `build:` steps are dropped
    /// (the test has built everything already).
    pub fn load(name: &str) -> Result<Self> {
        let path = repo_root().join("dataflows").join(name);
        let text = std::fs::read_to_string(&path)
            .wrap_err_with(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A graph written by the test itself, rewritten as [`Flow::load`] does.
    pub fn from_yaml(text: &str) -> Result<Self> {
        Self::parse(text, "the test's graph")
    }

    fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut doc: Value =
            serde_yaml::from_str(text).wrap_err_with(|| format!("{origin} is not valid YAML"))?;
        let nodes = doc
            .get_mut("nodes")
            .and_then(Value::as_sequence_mut)
            .ok_or_else(|| eyre!("{origin} has no `nodes` list"))?;
        for node in nodes {
            let map = node
                .as_mapping_mut()
                .ok_or_else(|| eyre!("a node of {origin} is not a mapping"))?;
            map.remove("build");
            if let Some(Value::String(p)) = map.get("path") {
                if let Some(name) = p
                    .strip_prefix("../target/debug/")
                    .or_else(|| p.strip_prefix("../target/release/"))
                {
                    let b = bin(name)?;
                    map.insert("path".into(), Value::String(b.display().to_string()));
                }
            }
        }
        Ok(Self {
            doc,
            dir: tempfile::tempdir()?,
        })
    }

    /// Sets (or replaces) any key of a node (`restart_policy`, `deploy`,
    /// `shared_memory_pool_size`, `path`...).
    pub fn set(&mut self, node: &str, key: &str, value: Value) -> Result<&mut Self> {
        self.node_mut(node)?.insert(key.into(), value);
        Ok(self)
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut Mapping> {
        self.doc["nodes"]
            .as_sequence_mut()
            .and_then(|nodes| {
                nodes
                    .iter_mut()
                    .find(|n| n.get("id").and_then(Value::as_str) == Some(id))
            })
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| eyre!("dataflow has no node `{id}`"))
    }

    /// A node's `env` or `inputs` mapping, created when absent.
    fn section_mut(&mut self, node: &str, key: &str) -> Result<&mut Mapping> {
        self.node_mut(node)?
            .entry(key.into())
            .or_insert_with(|| Value::Mapping(Mapping::new()))
            .as_mapping_mut()
            .ok_or_else(|| eyre!("{key} of `{node}` is not a mapping"))
    }

    /// Sets (or replaces) an env var of a node.
    pub fn env(&mut self, node: &str, key: &str, value: impl ToString) -> Result<&mut Self> {
        self.section_mut(node, "env")?
            .insert(key.into(), Value::String(value.to_string()));
        Ok(self)
    }

    /// Sets (or replaces) one input of a node.
    pub fn input(&mut self, node: &str, input: &str, source: &str) -> Result<&mut Self> {
        self.section_mut(node, "inputs")?
            .insert(input.into(), Value::String(source.into()));
        Ok(self)
    }

    /// Sets (or replaces) one input of a node with dora's lossless delivery
    /// (`queue_policy: backpressure`): for sinks that must see every message.
    pub fn input_lossless(&mut self, node: &str, input: &str, source: &str) -> Result<&mut Self> {
        let mut m = Mapping::new();
        m.insert("source".into(), Value::String(source.into()));
        m.insert("queue_size".into(), Value::Number(1000.into()));
        m.insert("queue_policy".into(), Value::String("backpressure".into()));
        self.section_mut(node, "inputs")?
            .insert(input.into(), Value::Mapping(m));
        Ok(self)
    }

    /// Loads a graph whose `images` source feeds a `da3` node, pointed at the
    /// bundled sample images and the tiny test checkpoint at PROCESS_RES 112.
    pub fn sample_images_into_tiny_da3(name: &str) -> Result<Self> {
        let mut flow = Self::load(name)?;
        let images = repo_root().join("examples/images");
        flow.env("images", "SOURCE", images.display())?;
        flow.env("da3", "MODEL", tiny_model())?;
        flow.env("da3", "PROCESS_RES", "112")?;
        Ok(flow)
    }

    /// Adds an output to a node's `outputs` list (when not there yet).
    pub fn add_output(&mut self, node: &str, output: &str) -> Result<&mut Self> {
        let outs = self
            .node_mut(node)?
            .entry("outputs".into())
            .or_insert_with(|| Value::Sequence(Vec::new()))
            .as_sequence_mut()
            .ok_or_else(|| eyre!("outputs of `{node}` is not a list"))?;
        let v = Value::String(output.into());
        if !outs.contains(&v) {
            outs.push(v);
        }
        Ok(self)
    }

    /// Removes one input of a node.
    pub fn remove_input(&mut self, node: &str, input: &str) -> Result<&mut Self> {
        let n = self.node_mut(node)?;
        if let Some(inputs) = n.get_mut("inputs").and_then(Value::as_mapping_mut) {
            inputs.remove(input);
        }
        Ok(self)
    }

    /// A path inside the test's scratch folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the graph as it stands to `flow.yml` in the scratch folder.
    pub fn write(&self) -> Result<PathBuf> {
        let file = self.path("flow.yml");
        std::fs::write(&file, serde_yaml::to_string(&self.doc)?)
            .wrap_err_with(|| format!("cannot write {}", file.display()))?;
        Ok(file)
    }

    /// Runs the graph with `dora run`, killing it after `timeout`.
    pub fn run(&self, timeout: Duration) -> Result<RunOutput> {
        self.run_with(&[], timeout)
    }

    /// Runs the graph with `dora run <extra args>` (e.g. `--stop-after 20s`),
    /// killing it after `timeout`.
    pub fn run_with(&self, args: &[&str], timeout: Duration) -> Result<RunOutput> {
        let file = self.write()?;
        let log_path = self.path("dora.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(dora_cli())
            .arg("run")
            .arg(&file)
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .wrap_err_with(|| {
                format!(
                    "cannot start `{}`: install the dora CLI (see README)",
                    dora_cli().display()
                )
            })?;
        let status = match child.wait_timeout(timeout)? {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("dora run did not finish within {timeout:?}; log:\n{log}");
            }
        };
        Ok(RunOutput {
            success: status.success(),
            code: status.code(),
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        })
    }
}

/// Reads the JSON lines written by a `msg-dump` node.
pub fn read_dump(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .wrap_err_with(|| format!("msg-dump wrote no file at {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).wrap_err_with(|| format!("bad JSON line: {l}")))
        .collect()
}

/// The `type: stats` records of the DA3 node's `status` output among the
/// lines of a `msg-dump` sink (every input named `status`), in order.
pub fn da3_stats(recs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    recs.iter()
        .filter(|r| r["input"] == "status")
        .filter_map(|r| r["text"].as_str())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .filter(|s| s["type"] == "stats")
        .collect()
}

/// A copy of a workspace binary under a name of its own in `dir`, so a test
/// can find (and kill) exactly its own process by that name.
pub fn bin_copy(name: &str, dir: &Path, new_name: &str) -> Result<PathBuf> {
    let to = dir.join(new_name);
    std::fs::copy(bin(name)?, &to)
        .wrap_err_with(|| format!("cannot copy `{name}` to {}", to.display()))?;
    Ok(to)
}

/// Sends SIGKILL to every process whose command line contains `pattern`
/// (`pgrep -f`); returns their pids.
pub fn sigkill_matching(pattern: &str) -> Result<Vec<u32>> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(pattern)
        .output()
        .wrap_err("cannot run pgrep")?;
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for pid in &pids {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    Ok(pids)
}

/// Resident memory of a process in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib_of(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What [`record_and_kill`] leaves for the test to check.
pub struct KilledRecording {
    /// The graph that ran (its scratch folder holds the files).
    pub flow: Flow,
    /// The recording the killed recorder left.
    pub path: PathBuf,
    /// msg-dump's record of every frame the camera sent.
    pub sent: Vec<serde_json::Value>,
    /// Frames sent more than FLUSH_MS (200 ms) + 0.5 s of slack before the kill: these must
    /// be in the recording.
    pub flushed_before_kill: usize,
    /// The copy of the recorder binary that was killed (kept while this lives).
    _bin_dir: tempfile::TempDir,
}

/// Records the camera's test pattern (`w`x`h`, 150 frames at 30 fps, `camera_env` added to its
/// env, e.g. `ENCODING: jpeg`) into `file_name` (its extension picks the format) with a
/// recorder (FLUSH_MS 200) that is SIGKILLed 1.5 s after it first wrote 10 kB, while msg-dump
/// logs what the camera sent. Fails when the recorder was never seen running.
pub fn record_and_kill(
    w: u32,
    h: u32,
    camera_env: &str,
    file_name: &str,
    timeout: Duration,
) -> Result<KilledRecording> {
    // A copy of the recorder binary with a name of its own, so only this recorder is killed.
    let bin_dir = tempfile::tempdir()?;
    let stem = file_name.replace('.', "-");
    let rec_bin = bin_copy(
        "recorder",
        bin_dir.path(),
        &format!("recorder-{stem}-to-kill"),
    )?;
    let yaml = format!(
        r#"
nodes:
  - id: camera
    path: ../target/debug/camera
    outputs: [image]
    env: {{CAMERA_DEVICE: test-pattern, WIDTH: "{w}", HEIGHT: "{h}", FPS: "30", MAX_FRAMES: "150", CAMERA_NAME: pattern{camera_env}}}
  - id: recorder
    path: {}
    inputs:
      image: {{source: camera/image, queue_size: 100, queue_policy: backpressure}}
    env: {{FLUSH_MS: "200", BATCH: "1000"}}
  - id: dump
    path: ../target/debug/msg-dump
    inputs:
      image: {{source: camera/image, queue_size: 1000, queue_policy: backpressure}}
"#,
        rec_bin.display()
    );
    let mut flow = Flow::from_yaml(&yaml)?;
    let path = flow.path(file_name);
    let dump = flow.path("sent.jsonl");
    flow.env("recorder", "OUT", path.display())?;
    flow.env("dump", "OUT_FILE", dump.display())?;
    flow.env("dump", "PRINT", "0")?;
    let killer = {
        let path = path.clone();
        let pattern = rec_bin.display().to_string();
        std::thread::spawn(move || -> Option<u64> {
            // Wait until the recorder has flushed, then 1.5 s more.
            let start = std::time::Instant::now();
            while std::fs::metadata(&path).map_or(0, |m| m.len()) < 10_000 {
                if start.elapsed() > Duration::from_secs(60) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(1500));
            let kill_ns = da3_msg::node_util::now_ns();
            let pids = sigkill_matching(&pattern).ok()?;
            (!pids.is_empty()).then_some(kill_ns)
        })
    };
    let run = flow.run(timeout)?;
    let kill_ns = killer
        .join()
        .map_err(|_| eyre!("the killer thread panicked"))?
        .ok_or_else(|| eyre!("the recorder was not found running:\n{}", run.log))?;
    let sent = read_dump(&dump)?;
    let cutoff = kill_ns - 200_000_000 - 500_000_000;
    let mut flushed_before_kill = 0;
    for r in &sent {
        let t = r["metadata"]["stamp_ns"]
            .as_u64()
            .ok_or_else(|| eyre!("a sent frame without stamp_ns: {r}"))?;
        flushed_before_kill += (t < cutoff) as usize;
    }
    Ok(KilledRecording {
        flow,
        path,
        sent,
        flushed_before_kill,
        _bin_dir: bin_dir,
    })
}
