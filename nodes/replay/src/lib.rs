//! `replay`: a dora source that sends the messages of recordings made by the
//! `recorder` node (Arrow IPC `.arrows` or MCAP `.mcap`, told apart by their
//! first bytes) again, each on the output named like its stream, with its
//! metadata and payload unchanged; at the recorded timing (scaled by
//! `SPEED`), as fast as possible (`SPEED=0`) or one per `tick` (`PACE=tick`).
//!
//! See `nodes/replay/README.md` for ports, env vars and a YAML snippet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use da3_msg::message::mark_legacy_depth_vis;
use da3_msg::node_util::{linger, start, Env};
use dora_node_api::dora_core::config::DataId;
use dora_node_api::{DoraNode, Event, EventStream};
use eyre::{bail, eyre, Context, Result};
use recorder::format::{AnyReader, Format};

/// When to send the next message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// At the recorded timing (`recv_ns`), this many times faster.
    Speed(f64),
    /// As fast as possible (`SPEED=0`).
    Unpaced,
    /// One message per input event (`PACE=tick`).
    Tick,
}

/// Node configuration, from env vars.
#[derive(Debug, Clone)]
pub struct Config {
    pub files: Vec<PathBuf>,
    pub pace: Pace,
    pub looping: bool,
    /// Recorded streams to send (`None`: all).
    pub streams: Option<BTreeSet<String>>,
    /// Recorded stream -> output name.
    pub rename: BTreeMap<String, String>,
    pub linger: Duration,
}

/// The env vars replay reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[&[
    "FILE",
    "PACE",
    "SPEED",
    "STREAMS",
    "RENAME",
    "LOOP",
    "LINGER_MS",
]];

/// Old names still accepted, with a deprecation warning: `MODE` is
/// dora-da3's scheduling mode, replay's pacing is `PACE`.
pub const RENAMED: &[(&str, &str)] = &[("MODE", "PACE")];

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env() -> Result<Self> {
        let env = Env::new(ENV_VARS).with_renamed(RENAMED);
        let file: String = env.opt("FILE")?.ok_or_else(|| {
            eyre!("FILE is not set: give a recording, a comma-separated list, a glob or a folder of .arrows / .mcap files")
        })?;
        let files = resolve_files(&file)?;
        let pace: String = env.or("PACE", "time".to_string())?;
        let speed: f64 = env.or("SPEED", 1.0)?;
        let pace = match pace.to_ascii_lowercase().as_str() {
            "tick" => Pace::Tick,
            "time" => match speed {
                0.0 => Pace::Unpaced,
                s if s > 0.0 && s.is_finite() => Pace::Speed(s),
                s => bail!("invalid SPEED={s}: must be > 0 (or 0 for as fast as possible)"),
            },
            other => bail!("invalid PACE={other:?}: expected time or tick"),
        };
        let streams = env.opt::<String>("STREAMS")?.map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        });
        let rename = match env.opt::<String>("RENAME")? {
            None => BTreeMap::new(),
            Some(s) => parse_rename(&s)?,
        };
        let looping = env.flag("LOOP", false)?;
        let linger = Duration::from_millis(env.or("LINGER_MS", 1000)?);
        env.finish();
        Ok(Self {
            files,
            pace,
            looping,
            streams,
            rename,
            linger,
        })
    }
}

/// `old:new,old2:new2`.
pub fn parse_rename(s: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once(':') {
            Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
                m.insert(a.trim().to_string(), b.trim().to_string());
            }
            _ => bail!("invalid RENAME={s:?}: expected old:new[,old2:new2]"),
        }
    }
    Ok(m)
}

/// The files of `FILE`: a comma-separated list of files, globs (sorted) and
/// folders (their `*.arrows` and `*.mcap`, sorted by name: rotated files in order).
pub fn resolve_files(spec: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p = Path::new(item);
        if item.contains(['*', '?', '[']) {
            let mut v: Vec<PathBuf> = glob::glob(item)
                .map_err(|e| eyre!("invalid FILE pattern `{item}`: {e}"))?
                .filter_map(std::result::Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if v.is_empty() {
                bail!("FILE pattern `{item}` matches no file");
            }
            v.sort();
            out.extend(v);
        } else if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .wrap_err_with(|| format!("cannot list `{item}`"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && Format::of_extension(p).is_some())
                .collect();
            if v.is_empty() {
                bail!("FILE folder `{item}` has no .arrows or .mcap recording");
            }
            v.sort();
            out.extend(v);
        } else if p.is_file() {
            out.push(p.to_path_buf());
        } else {
            bail!("FILE `{item}` does not exist");
        }
    }
    if out.is_empty() {
        bail!("FILE names no recording");
    }
    Ok(out)
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Messages sent per output.
    pub sent: BTreeMap<String, u64>,
    /// Messages skipped per recorded stream (no output of that name, or not in `STREAMS`).
    pub skipped: BTreeMap<String, u64>,
    /// Messages that could not be decoded (skipped, each logged).
    pub bad: u64,
    /// Files that ended early or were damaged (read up to the damage, logged).
    pub damaged: u64,
    pub stopped: bool,
}

/// Waits until `due`; `true` when dora said stop meanwhile.
fn wait_until(events: &mut EventStream, due: Instant) -> bool {
    loop {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match events.recv_timeout(left) {
            None | Some(Event::Stop(_)) => return true,
            _ => {}
        }
    }
}

/// Waits for one input event; `true` when dora said stop instead.
fn wait_tick(events: &mut EventStream) -> bool {
    loop {
        match events.recv() {
            None | Some(Event::Stop(_)) => return true,
            Some(Event::Input { .. }) => return false,
            Some(_) => {}
        }
    }
}

/// Runs the node on an initialised dora node and event stream, sending on
/// the outputs its YAML declares.
pub fn run(node: &mut DoraNode, events: &mut EventStream, config: &Config) -> Result<Summary> {
    let outputs: BTreeSet<DataId> = node.node_config().outputs.clone();
    run_with_outputs(node, events, config, &outputs)
}

/// [`run`] with the outputs given (dora's testing mode declares none).
pub fn run_with_outputs(
    node: &mut DoraNode,
    events: &mut EventStream,
    config: &Config,
    outputs: &BTreeSet<DataId>,
) -> Result<Summary> {
    let mut s = Summary::default();
    'passes: loop {
        let mut pass_sent = 0u64;
        // Recorded time of the pass's first message -> when it was sent.
        let mut base: Option<(Instant, i64)> = None;
        for file in &config.files {
            let mut reader = AnyReader::open(file)?;
            tracing::info!("replay: {} ({})", file.display(), reader.format().as_str());
            for msg in reader.by_ref() {
                let mut msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("{}: skipping a message: {e:#}", file.display());
                        s.bad += 1;
                        continue;
                    }
                };
                if config
                    .streams
                    .as_ref()
                    .is_some_and(|sel| !sel.contains(&msg.stream))
                {
                    *s.skipped.entry(msg.stream).or_default() += 1;
                    continue;
                }
                let out = config
                    .rename
                    .get(&msg.stream)
                    .unwrap_or(&msg.stream)
                    .clone();
                let out_id = DataId::from(out.clone());
                if !outputs.contains(&out_id) {
                    let n = s.skipped.entry(msg.stream.clone()).or_default();
                    if *n == 0 {
                        tracing::info!(
                            "replay: stream `{}` has no output `{out}` in the graph: skipped",
                            msg.stream
                        );
                    }
                    *n += 1;
                    continue;
                }
                let stopped = match config.pace {
                    Pace::Tick => wait_tick(events),
                    Pace::Unpaced => matches!(events.try_recv(), Ok(Event::Stop(_))),
                    Pace::Speed(speed) => {
                        let (t0, r0) = *base.get_or_insert((Instant::now(), msg.recv_ns));
                        let dt = (msg.recv_ns - r0).max(0) as f64 / 1e9 / speed;
                        wait_until(events, t0 + Duration::from_secs_f64(dt))
                    }
                };
                if stopped {
                    s.stopped = true;
                    break 'passes;
                }
                // Recordings made before the colour-mapped depth was marked.
                mark_legacy_depth_vis(&msg.stream, &mut msg.metadata);
                node.send_output(out_id, msg.metadata, msg.data)
                    .wrap_err_with(|| format!("cannot send message {} on `{out}`", msg.seq))?;
                *s.sent.entry(out).or_default() += 1;
                pass_sent += 1;
            }
            if reader.truncated().is_some() {
                s.damaged += 1;
            } else if reader.mcap_records() == Some(0) {
                tracing::warn!(
                    "replay: {} holds no da3.Record messages (an MCAP file the recorder did not write?): nothing to send",
                    file.display()
                );
            }
        }
        if !config.looping {
            break;
        }
        if pass_sent == 0 {
            bail!(
                "LOOP=1 but a whole pass sent no message (check STREAMS, RENAME and the outputs)"
            );
        }
    }
    Ok(s)
}

/// Entry point of the `replay` binary.
pub fn lib_main() -> Result<()> {
    let (config, mut node, mut events) = start("replay", Config::from_env)?;
    let s = run(&mut node, &mut events, &config)?;
    let total: u64 = s.sent.values().sum();
    let fmt = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::info!(
        "replay: sent {total} messages ({}), skipped ({}), {} undecodable, {} file(s) cut or damaged{}",
        fmt(&s.sent),
        fmt(&s.skipped),
        s.bad,
        s.damaged,
        if s.stopped { " (stopped)" } else { "" }
    );
    if !s.stopped {
        linger(&mut events, config.linger);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_pace_speed_and_the_old_mode_name() {
        // Env vars are process-wide: only this test touches these names.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.arrows");
        std::fs::write(&file, b"").unwrap();
        std::env::set_var("FILE", &file);
        std::env::set_var("SPEED", "2");
        assert_eq!(Config::from_env().unwrap().pace, Pace::Speed(2.0));
        std::env::set_var("MODE", "tick");
        assert_eq!(Config::from_env().unwrap().pace, Pace::Tick, "old name");
        std::env::set_var("PACE", "time");
        assert_eq!(Config::from_env().unwrap().pace, Pace::Speed(2.0));
        std::env::set_var("PACE", "fast");
        let e = Config::from_env().unwrap_err().to_string();
        assert!(e.contains("invalid PACE=\"fast\""), "{e}");
        for n in ["FILE", "SPEED", "MODE", "PACE"] {
            std::env::remove_var(n);
        }
    }

    #[test]
    fn rename_pairs() {
        let m = parse_rename("image:frames, depth:d2").unwrap();
        assert_eq!(m["image"], "frames");
        assert_eq!(m["depth"], "d2");
        assert!(parse_rename("image").is_err());
        assert!(parse_rename("image:").is_err());
    }

    #[test]
    fn files_from_list_glob_and_folder() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "r-0001.arrows",
            "r-0000.arrows",
            "r-0002.arrows",
            "r-0003.mcap",
            "notes.txt",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let dir = d.path().display().to_string();
        let want = vec!["r-0000.arrows", "r-0001.arrows", "r-0002.arrows"];
        let mut all = want.clone();
        all.push("r-0003.mcap");
        assert_eq!(names(resolve_files(&dir).unwrap()), all);
        assert_eq!(
            names(resolve_files(&format!("{dir}/r-*.arrows")).unwrap()),
            want
        );
        let list = format!("{dir}/r-0002.arrows,{dir}/r-0000.arrows");
        assert_eq!(
            names(resolve_files(&list).unwrap()),
            vec!["r-0002.arrows", "r-0000.arrows"]
        );
        let e = resolve_files(&format!("{dir}/missing.arrows")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(resolve_files(&format!("{dir}/x*.arrows")).is_err());
    }
}
