//! `dataflows/multi-machine.yml` over two dora daemons with different machine
//! ids (`robot`, `gpu-server`) and one coordinator, all on 127.0.0.1, started
//! and stopped by the test: `dora start --attach` deploys each node on its
//! machine; frames cross from the robot to the DA3 node on the server, depth
//! and status come back to the recorder and msg-dump on the robot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{da3_stats, dora_cli, read_dump, tiny_model, Flow};
use recorder::recording::RecordingReader;
use wait_timeout::ChildExt;

/// A port free right now on 127.0.0.1 (the OS picks it, so tests running
/// side by side do not collide).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The zenoh settings the graph's header tells users to give each daemon
/// (`DORA_ZENOH_CONFIG_OVERLAY`); `MM_ZENOH_OVERLAY` names another file (e.g.
/// one with `wait_before_drop: 1` shows the loss it prevents).
fn zenoh_overlay() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataflows/zenoh-multi-machine.json5")
}

/// A coordinator and daemons on 127.0.0.1; every process is ended on drop,
/// also when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    procs: Vec<(String, Child)>,
}

impl Cluster {
    fn start(machines: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut c = Cluster {
            dir,
            port,
            procs: Vec::new(),
        };
        c.spawn(
            "coordinator",
            &[
                "coordinator",
                "--port",
                &port.to_string(),
                "--store",
                "memory",
            ],
        );
        // Daemons dial each other directly (zenoh mesh), no multicast needed.
        let zenoh: Vec<u16> = machines.iter().map(|_| free_port()).collect();
        std::thread::sleep(Duration::from_millis(500));
        for (i, m) in machines.iter().enumerate() {
            let connect: Vec<String> = zenoh
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("tcp/127.0.0.1:{p}"))
                .collect();
            c.spawn(
                m,
                &[
                    "daemon",
                    "--machine-id",
                    m,
                    "--coordinator-addr",
                    "127.0.0.1",
                    "--coordinator-port",
                    &port.to_string(),
                    "--local-listen-port",
                    &free_port().to_string(),
                    "--zenoh-listen",
                    &format!("127.0.0.1:{}", zenoh[i]),
                    "--zenoh-connect",
                    &connect.join(","),
                ],
            );
        }
        c.wait_for_daemons(machines);
        c
    }

    /// Starts `dora <args>` with its log in `<name>.log`, in a folder of its own.
    fn spawn(&mut self, name: &str, args: &[&str]) {
        let cwd = self.dir.path().join(name);
        std::fs::create_dir_all(&cwd).unwrap();
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let child = Command::new(dora_cli())
            .args(args)
            .current_dir(&cwd)
            .env("NO_COLOR", "1")
            .env(
                "DORA_ZENOH_CONFIG_OVERLAY",
                std::env::var_os("MM_ZENOH_OVERLAY").unwrap_or_else(|| zenoh_overlay().into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", dora_cli().display()));
        self.procs.push((name.to_string(), child));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Every process's log and the nodes' logs the daemons wrote (`out/`), for
    /// a failure message.
    fn logs(&self) -> String {
        fn files(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    files(&p, out);
                } else if p.extension().is_some_and(|x| x == "txt") {
                    out.push(p);
                }
            }
        }
        let mut nodes = Vec::new();
        files(self.dir.path(), &mut nodes);
        let procs = self
            .procs
            .iter()
            .map(|(n, _)| format!("--- dora {n}:\n{}", self.log(n)));
        let nodes = nodes.iter().map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {}:\n{text}", p.display())
        });
        procs.chain(nodes).collect::<Vec<_>>().join("\n")
    }

    fn pid(&self, name: &str) -> u32 {
        self.procs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
            .unwrap()
    }

    /// Waits until every daemon has registered with the coordinator.
    fn wait_for_daemons(&mut self, machines: &[&str]) {
        let start = Instant::now();
        loop {
            let connected = machines
                .iter()
                .filter(|m| self.log(m).contains("Connected to dora-coordinator"))
                .count();
            if connected == machines.len() {
                return;
            }
            for (name, child) in &mut self.procs {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "`dora {name}` exited with {st}:\n{}",
                        std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                            .unwrap_or_default()
                    );
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemons did not connect; logs: {:?}",
                machines.iter().map(|m| self.log(m)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `dora start <flow> --attach` against this coordinator.
    fn start_attached(&self, flow: &Path, timeout: Duration) -> (bool, String) {
        let log_path = self.log_path("start");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(dora_cli())
            .arg("start")
            .arg(flow)
            .args(["--attach", "--coordinator-addr", "127.0.0.1"])
            .args(["--coordinator-port", &self.port.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ok = match child.wait_timeout(timeout).unwrap() {
            Some(st) => st.success(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dora start did not finish within {timeout:?}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        (ok, std::fs::read_to_string(&log_path).unwrap_or_default())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop what may still run, then end the daemons before the coordinator.
        let _ = Command::new(dora_cli())
            .args(["stop", "--all", "--force", "--coordinator-port"])
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for (_, child) in self.procs.iter_mut().rev() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            if !matches!(child.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Names of the executables a process has as children (`/proc`).
fn children(pid: u32) -> Vec<String> {
    let out = Command::new("pgrep")
        .arg("-P")
        .arg(pid.to_string())
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn nodes_run_on_their_machines_and_data_crosses_between_them() {
    let machines = ["robot", "gpu-server"];
    let cluster = Cluster::start(&machines);

    let frames = 40u64;
    let mut flow = Flow::load("multi-machine.yml").unwrap();
    flow.env("camera", "WIDTH", 320).unwrap();
    flow.env("camera", "HEIGHT", 240).unwrap();
    flow.env("camera", "FPS", 10).unwrap();
    flow.env("camera", "MAX_FRAMES", frames).unwrap();
    flow.env("da3", "MODEL", tiny_model()).unwrap();
    flow.env("da3", "PROCESS_RES", 112).unwrap();
    flow.env("da3", "STATUS_MS", 500).unwrap();
    let rec = flow.path("rec.arrows");
    let out = flow.path("dump.jsonl");
    flow.env("recorder", "OUT", rec.display()).unwrap();
    flow.env("dump", "OUT_FILE", out.display()).unwrap();
    let file = flow.write().unwrap();

    // Which executables each daemon spawned, sampled while the graph runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let daemons: Vec<(String, u32)> = machines
            .iter()
            .map(|m| (m.to_string(), cluster.pid(m)))
            .collect();
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for (m, pid) in &daemons {
                    seen.entry(m.clone()).or_default().extend(children(*pid));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };
    let t = Instant::now();
    let (ok, log) = cluster.start_attached(&file, Duration::from_secs(180));
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let spawned = sampler.join().unwrap();
    assert!(ok, "dora start --attach failed:\n{log}");

    // Each node ran on its machine: dora says so, and it was that daemon's child.
    let placement = [
        ("camera", "robot", "camera"),
        ("da3", "gpu-server", "dora-da3"),
        ("recorder", "robot", "recorder"),
        ("dump", "robot", "msg-dump"),
    ];
    for (node, machine, exe) in placement {
        assert!(
            log.contains(&format!(
                "{node} on daemon `{machine}`: daemon {node} finished successfully"
            )),
            "{node} did not finish on `{machine}`:\n{log}"
        );
        for m in machines {
            let has = spawned.get(m).is_some_and(|s| s.contains(exe));
            assert_eq!(
                has,
                m == machine,
                "`{exe}` as a child of daemon `{m}`: {spawned:?}"
            );
        }
    }

    // Frames crossed robot -> gpu-server, results crossed back.
    let recs = read_dump(&out).unwrap();
    let depth = recs.iter().filter(|r| r["input"] == "depth").count() as u64;
    let cams = recs.iter().filter(|r| r["input"] == "camera").count() as u64;
    let st = da3_stats(&recs);
    let last = st.last().expect("DA3 status on the robot");
    let (fin, fout) = (
        last["frames_in"].as_u64().unwrap(),
        last["frames_out"].as_u64().unwrap(),
    );
    let mut reader = RecordingReader::open(&rec).unwrap();
    let mut recorded: BTreeMap<String, u64> = BTreeMap::new();
    for m in reader.by_ref() {
        *recorded.entry(m.unwrap().stream).or_default() += 1;
    }
    assert!(reader.truncated().is_none());
    println!(
        "multi-machine: {spawned:?}; camera sent {frames} frames on `robot`; DA3 on `gpu-server` got {fin}, \
         sent {fout}; back on `robot`: msg-dump {depth} depth + {cams} camera + {} status, \
         recorder {recorded:?}; {secs:.1} s",
        st.len()
    );
    assert!(fin > 0, "no frame reached the server: {last}");
    assert!(fin <= frames);
    assert!(fout > 0, "{last}");
    let ids: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["input"] == "depth")
        .map(|r| &r["metadata"]["frame_id"])
        .collect();
    let logs = format!(
        "frame ids of the depth maps back: {ids:?}\n--- dora start:\n{log}\n{}",
        cluster.logs()
    );
    assert_eq!(depth, fout, "depth maps back on the robot\n{logs}");
    assert_eq!(cams, fout, "camera messages back on the robot\n{logs}");
    assert_eq!(recorded.get("depth"), Some(&fout), "recorder on the robot");
    assert_eq!(
        recorded.get("image"),
        Some(&frames),
        "recorder's local camera input"
    );
}
