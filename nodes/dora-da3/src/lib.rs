//! `dora-da3`: the Depth Anything 3 node. Image frames in (any number of
//! camera inputs), depth, confidence, camera pose + intrinsics, coloured
//! points, a colour-mapped depth image and a status stream out.
//!
//! See `nodes/dora-da3/README.md` for ports, modes and env vars.

pub mod chain;
pub mod config;
pub mod engine;
pub mod pool;
pub mod post;
pub mod sched;
pub mod status;
pub mod track;
pub mod track_mode;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{never, select, unbounded, Receiver};
use da3::preprocess::RgbImage;
use da3::Da3Model;
use da3_msg::arrow::array::{Array, ArrayRef};
use da3_msg::{CameraMsg, DecodeLimits, ImageFrame, Intrinsics, MetadataParameters};
use dora_node_api::futures::StreamExt;
use dora_node_api::{DoraNode, Event, EventStream};
use eyre::{bail, eyre, Context, Result};
use serde_json::json;

use config::{Config, Mode};
use engine::{UnitOut, ViewIn};
use pool::{Finished, Pool, Reorder};
use sched::Scheduler;
use status::Stats;

/// Output ports.
pub const OUTPUTS: [&str; 8] = [
    "depth",
    "confidence",
    "camera",
    "points",
    "depth_vis",
    "sky",
    "gaussians",
    "status",
];

/// Inputs with these ids are triggers: in window mode they flush partial windows.
pub fn is_trigger(id: &str) -> bool {
    id == "trigger" || id == "flush"
}

/// Inputs whose id starts with this carry known cameras (`CameraMsg`).
pub fn is_camera_info(id: &str) -> bool {
    id.starts_with("camera_info")
}

/// Loads one replica per device (CPU replicas share one copy of the weights).
pub fn load_models(cfg: &Config) -> Result<Vec<Da3Model>> {
    let mut models: Vec<Da3Model> = Vec::new();
    let mut cpu: Option<Da3Model> = None;
    for spec in &cfg.devices {
        let device = spec.open().map_err(|e| eyre!("DEVICE {spec}: {e:#}"))?;
        if device.is_cpu() {
            if let Some(m) = &cpu {
                models.push(m.clone());
                continue;
            }
        }
        let dtype = cfg.precision.dtype(&device);
        let t0 = Instant::now();
        let m = Da3Model::load_named(&cfg.model, cfg.model_name.as_deref(), &device, dtype)
            .wrap_err_with(|| format!("cannot load MODEL={} on {spec}", cfg.model))?;
        tracing::info!(
            "loaded {} on {spec} as {dtype:?} in {:.1}s",
            cfg.model,
            t0.elapsed().as_secs_f64()
        );
        if device.is_cpu() {
            let gemm = da3::model::ops::onednn_describe();
            tracing::info!("CPU linear layers' GEMMs: {gemm}");
            cpu = Some(m.clone());
        }
        models.push(m);
    }
    Ok(models)
}

/// A known camera: intrinsics at `width x height`, world-to-camera `[R|t]`.
type Known = (Intrinsics, [f64; 12], u32, u32);

/// What the node knows about each camera from `camera_info*` inputs: a camera_info without
/// `frame_id` / `stamp_ns` holds for every frame of its camera (a calibrated rig); one with
/// them holds for that frame only (a moving camera with a pose per frame).
#[derive(Default)]
struct KnownCameras {
    by_name: HashMap<String, Known>,
    by_frame: HashMap<(String, u64), Known>,
    by_stamp: HashMap<(String, u64), Known>,
    /// Insertion order of the per-frame entries (the oldest are forgotten).
    order: std::collections::VecDeque<(bool, String, u64)>,
}

/// Per-frame cameras kept (per-frame camera_info must come before its frame).
const KNOWN_PER_FRAME: usize = 1024;

impl KnownCameras {
    fn insert(&mut self, name: String, info: &da3_msg::FrameInfo, cam: Known) {
        if info.frame_id.is_none() && info.stamp_ns.is_none() {
            self.by_name.insert(name, cam);
            return;
        }
        if let Some(id) = info.frame_id {
            self.by_frame.insert((name.clone(), id), cam);
            self.order.push_back((true, name.clone(), id));
        }
        if let Some(t) = info.stamp_ns {
            self.by_stamp.insert((name.clone(), t), cam);
            self.order.push_back((false, name, t));
        }
        while self.order.len() > 2 * KNOWN_PER_FRAME {
            if let Some((by_id, n, k)) = self.order.pop_front() {
                let map = if by_id {
                    &mut self.by_frame
                } else {
                    &mut self.by_stamp
                };
                map.remove(&(n, k));
            }
        }
    }

    /// The camera of a frame: by its `frame_id`, else its `stamp_ns`, else the camera's own.
    fn get(&self, name: &str, info: &da3_msg::FrameInfo) -> Option<Known> {
        let key = |k: u64| (name.to_string(), k);
        info.frame_id
            .and_then(|id| self.by_frame.get(&key(id)))
            .or_else(|| info.stamp_ns.and_then(|t| self.by_stamp.get(&key(t))))
            .or_else(|| self.by_name.get(name))
            .copied()
    }
}

struct Node<'a> {
    node: &'a mut DoraNode,
    cfg: Arc<Config>,
    wired: BTreeSet<String>,
    sched: Scheduler,
    stats: Stats,
    known: KnownCameras,
    chains: HashMap<String, chain::Chain>,
    limits: DecodeLimits,
    base_status: serde_json::Value,
    /// The model's depth is metric only with a known focal (DA3METRIC-LARGE).
    needs_focal: bool,
    /// Warnings already logged (kind + camera): each is said once, counted every time.
    warned: std::collections::HashSet<String>,
    /// Track mode's trackers (`MODE=track` only).
    track: Option<track_mode::TrackMode>,
}

/// Intrinsics known for an image of `w x h` at `kw x kh` (0 = the same size), rescaled;
/// `None` when the aspect ratios differ by more than 1% (calibrated for another image).
fn rescale_intrinsics(k: &Intrinsics, kw: u32, kh: u32, w: u32, h: u32) -> Option<Intrinsics> {
    if kw == 0 || kh == 0 {
        return Some(*k);
    }
    let (sx, sy) = (w as f64 / kw as f64, h as f64 / kh as f64);
    ((sx - sy).abs() <= 0.01 * sx.max(sy)).then(|| k.scaled(sx, sy))
}

impl Node<'_> {
    fn send(&mut self, output: &str, msg: (ArrayRef, MetadataParameters)) -> Result<()> {
        if !self.wired.contains(output) {
            return Ok(());
        }
        self.node
            .send_output(output.to_owned().into(), msg.1, msg.0)
            .wrap_err_with(|| format!("cannot send on `{output}`"))
    }

    fn send_status(&mut self, json: serde_json::Value) -> Result<()> {
        self.send("status", da3_msg::Status { json }.to_message())
    }

    /// Counts a warning; logs it and sends its status record the first time for `key`.
    fn warn(
        &mut self,
        key: String,
        kind: &str,
        input: &str,
        frame: Option<u64>,
        reason: String,
    ) -> Result<()> {
        let rec = self.stats.warning(kind, input, frame, &reason);
        if self.warned.insert(key) {
            tracing::warn!("input `{input}` frame {frame:?}: {reason} (said once)");
            self.send_status(rec)?;
        }
        Ok(())
    }

    fn reject(&mut self, input: &str, frame: Option<u64>, reason: String) -> Result<()> {
        self.stats.rejected += 1;
        tracing::warn!("rejected input `{input}` frame {frame:?}: {reason}");
        let rec = self.stats.error("rejected", input, frame, &reason);
        self.send_status(rec)
    }

    fn on_input(&mut self, id: &str, params: &MetadataParameters, data: &dyn Array) -> Result<()> {
        if is_trigger(id) {
            self.sched.flush();
            return Ok(());
        }
        let frame_hint = da3_msg::FrameInfo::read(params)
            .ok()
            .and_then(|i| i.frame_id);
        if is_camera_info(id) {
            // The decode checks the geometry (rigid pose, positive focals).
            return match CameraMsg::from_message(data, params) {
                Ok(cam) => {
                    let k = cam.k();
                    let name = cam.info.camera.clone().unwrap_or_else(|| {
                        id.trim_start_matches("camera_info")
                            .trim_start_matches('_')
                            .to_string()
                    });
                    let jump = self.track.as_mut().and_then(|t| {
                        t.camera_info(&name, &k, &cam.extrinsics, (cam.width, cam.height))
                    });
                    self.known.insert(
                        name.clone(),
                        &cam.info,
                        (k, cam.extrinsics, cam.width, cam.height),
                    );
                    match jump {
                        Some(reason) => self.send_status(json!({"type": "track",
                            "event": "camera_info_jump", "camera": name, "reason": reason})),
                        None => Ok(()),
                    }
                }
                Err(e) => self.reject(id, frame_hint, format!("bad camera message: {e}")),
            };
        }
        self.stats.frames_in += 1;
        let frame = match ImageFrame::from_message(data, params) {
            Ok(f) => f,
            Err(e) => return self.reject(id, frame_hint, e.to_string()),
        };
        let (w, h, rgb) = match frame.to_rgb8(&self.limits) {
            Ok(x) => x,
            Err(e) => return self.reject(id, frame_hint, e.to_string()),
        };
        let image = match RgbImage::new(w as usize, h as usize, rgb) {
            Ok(i) => i,
            Err(e) => return self.reject(id, frame_hint, format!("{e:#}")),
        };
        let name = frame.info.camera.clone().unwrap_or_else(|| id.to_string());
        // Intrinsics: the frame's own, else its camera_info's, else INTRINSICS; known ones
        // refer to their message's image size and are rescaled to the frame's.
        let mut intrinsics = frame.intrinsics;
        let mut extrinsics = None;
        let frame_id = frame.info.frame_id;
        if let Some((k, e, kw, kh)) = self.known.get(&name, &frame.info) {
            match rescale_intrinsics(&k, kw, kh, w, h) {
                Some(k) => {
                    intrinsics = intrinsics.or(Some(k));
                    extrinsics = Some(e);
                }
                None => self.warn(
                    format!("camera_size:{name}"),
                    "camera_size",
                    id,
                    frame_id,
                    format!(
                        "camera_info of `{name}` is for {kw}x{kh} images, the frame is {w}x{h} \
                         (another aspect ratio): its intrinsics and pose are not used"
                    ),
                )?,
            }
        }
        if let (None, Some((k, size))) = (intrinsics, self.cfg.intrinsics) {
            let (kw, kh) = size.unwrap_or((w, h));
            match rescale_intrinsics(&k, kw, kh, w, h) {
                Some(k) => intrinsics = Some(k),
                None => self.warn(
                    format!("intrinsics_size:{name}"),
                    "intrinsics_size",
                    id,
                    frame_id,
                    format!(
                        "INTRINSICS are for {kw}x{kh} images, the frame is {w}x{h} (another \
                         aspect ratio): not used"
                    ),
                )?,
            }
        }
        let mut info = frame.info.clone();
        if info.camera.is_none() {
            info.camera = Some(name);
        }
        self.sched.push(ViewIn {
            input: id.to_string(),
            info,
            image,
            intrinsics,
            extrinsics,
            received: Instant::now(),
        });
        Ok(())
    }

    /// A finished unit's bookkeeping (errors, tracking, chaining), before its outputs are
    /// sent: the unit to send, if it succeeded.
    fn on_result(&mut self, seq: u64, out: UnitResult) -> Result<Option<UnitOut>> {
        let mut unit = match out {
            Ok(u) => u,
            Err((reason, frames)) => {
                if let Some(t) = self.track.as_mut() {
                    t.forget(seq);
                }
                self.stats.failed_units += 1;
                tracing::error!("inference failed for {frames:?}: {reason}");
                let rec = self
                    .stats
                    .error("inference", &frames.join(","), None, &reason);
                self.send_status(rec)?;
                return Ok(None);
            }
        };
        if let Some(t) = self.track.as_mut() {
            for rec in t.apply(&mut unit) {
                self.send_status(rec)?;
            }
        }
        // A pose-conditioned window is in the given cameras' world already: nothing to chain.
        let given = unit.views.iter().all(|v| v.pose_given);
        if let (Some(key), false) = (unit.chain_key.clone(), given) {
            self.chains.entry(key).or_default().apply(&mut unit.views);
        }
        Ok(Some(unit))
    }

    /// Sends a unit's outputs.
    fn send_unit(&mut self, unit: UnitOut) -> Result<()> {
        let t0 = Instant::now();
        for (v, emit) in unit.views.iter().zip(&unit.emit) {
            if !emit {
                continue;
            }
            self.send("depth", post::depth_msg(v).to_message())?;
            if let Some(c) = post::conf_msg(v) {
                self.send("confidence", c.to_message())?;
            }
            if let Some(c) = post::camera_msg(v) {
                self.send("camera", c.to_message())?;
            }
            if self.wired.contains("points") {
                if let Some(p) = post::points_msg(v, self.cfg.conf_percentile, self.cfg.max_points)
                {
                    self.send("points", p.to_message())?;
                }
            }
            if self.wired.contains("depth_vis") {
                self.send("depth_vis", post::depth_vis(v).to_message())?;
            }
            if self.wired.contains("sky") {
                if let Some(m) = post::sky_msg(v) {
                    self.send("sky", m.to_message())?;
                }
            }
            if let Some(g) = post::gaussians_msg(v) {
                self.send("gaussians", g.to_message())?;
            }
            if self.needs_focal && !v.is_metric {
                let cam = v.info.camera.clone().unwrap_or_else(|| v.input.clone());
                self.warn(
                    format!("no_focal:{cam}"),
                    "no_focal",
                    &v.input,
                    v.info.frame_id,
                    format!(
                        "camera `{cam}`: the metric model needs the focal length for metres \
                         (frame `focal` metadata, camera_info or INTRINSICS): relative depth \
                         sent, is_metric false"
                    ),
                )?;
            }
            self.stats
                .frame_out(v.received.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(t) = self.track.as_mut() {
            t.record_send_ms(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    }

    /// Starts units on the idle replicas while there is work.
    fn dispatch(&mut self, pool: &mut Pool, next_seq: &mut u64) -> Result<()> {
        while let Some(r) = pool.idle() {
            let Some(mut u) = self.sched.next_unit() else {
                break;
            };
            u.seq = *next_seq;
            *next_seq += 1;
            if let Some(t) = self.track.as_mut() {
                u = t.unit(u);
            }
            pool.dispatch(r, u)?;
        }
        Ok(())
    }

    fn report(&mut self, pool: &Pool) -> Result<()> {
        let mut rep = self.stats.report(
            &self.base_status,
            self.sched.dropped,
            self.sched.pending(),
            pool.in_flight(),
        );
        if let Some(t) = &self.track {
            rep["track"] = t.report(self.sched.out_of_order, self.sched.duplicate_stamps);
        }
        self.send_status(rep)
    }
}

/// A unit's result as a replica reports it (or why it failed, with its frames).
type UnitResult = std::result::Result<UnitOut, (String, Vec<String>)>;

/// What the event thread hands to the main loop.
enum Incoming {
    Event(Event),
    /// Inputs dora discarded on full queues before they reached the node.
    DroppedByDora(u64),
}

/// Runs the node until its inputs end and every accepted frame is processed.
pub fn run(
    node: &mut DoraNode,
    events: EventStream,
    mut cfg: Config,
    models: Vec<Da3Model>,
) -> Result<()> {
    let inputs = da3_msg::node_util::input_ids(node);
    let mut wired: BTreeSet<String> = node
        .node_config()
        .outputs
        .iter()
        .map(|o| o.to_string())
        .collect();
    // The Gaussian head runs only for a graph that asks for its output.
    cfg.gaussians = wired.contains("gaussians");
    if let (true, Some(m)) = (cfg.gaussians, models.first()) {
        if !m.has_gaussian_head() {
            eyre::bail!(
                "the `gaussians` output is wired, but {} has no Gaussian head (DA3-GIANT and \
                 DA3NESTED-GIANT-LARGE have one): remove the output or change MODEL",
                cfg.model
            );
        }
    }
    let cfg = Arc::new(cfg);
    if wired.is_empty() {
        // No output list (e.g. a node started for tests): send on every port.
        wired = OUTPUTS.iter().map(|o| o.to_string()).collect();
    }
    let rig_inputs: Vec<String> = match &cfg.rig_inputs {
        Some(r) => r.clone(),
        None => inputs
            .iter()
            .filter(|i| !is_trigger(i) && !is_camera_info(i))
            .cloned()
            .collect(),
    };
    if cfg.mode == Mode::Rig && rig_inputs.len() < 2 {
        tracing::warn!(
            "MODE=rig with {} image input(s): a rig usually has two or more",
            rig_inputs.len()
        );
    }
    let devices: Vec<String> = cfg.devices.iter().map(|d| d.to_string()).collect();
    let precision = models
        .first()
        .map(|m| format!("{:?}", m.dtype()).to_lowercase())
        .unwrap_or_default();
    let needs_focal = models
        .first()
        .is_some_and(|m| m.units() == da3::DepthUnits::FocalOver300);
    let mut pool = Pool::start(models, cfg.clone());
    let mut n = Node {
        node,
        cfg: cfg.clone(),
        wired,
        sched: Scheduler::new(cfg.mode, cfg.window, cfg.stride, cfg.sync, rig_inputs),
        stats: Stats::default(),
        known: KnownCameras::default(),
        chains: HashMap::new(),
        limits: DecodeLimits {
            max_pixels: cfg.max_pixels,
        },
        base_status: json!({
            "model": cfg.model,
            "precision": precision,
            "devices": devices,
            "replicas": cfg.devices.len(),
            "mode": cfg.mode.as_str(),
        }),
        needs_focal,
        warned: Default::default(),
        track: (cfg.mode == Mode::Track).then(|| track_mode::TrackMode::new(cfg.track)),
    };

    // Events are read in arrival order on their own thread (`StreamExt::next`
    // keeps order; `recv` may hand out Stop before the last inputs), with the
    // inputs dora itself dropped on full queues (e.g. `queue_size: 1`).
    let (ev_tx, ev_rx) = unbounded::<Incoming>();
    let reader = std::thread::Builder::new()
        .name("dora-events".into())
        .spawn(move || {
            let mut events = events;
            while let Some(ev) = dora_node_api::futures::executor::block_on(events.next()) {
                let dropped: u64 = events.drain_drop_counts().values().sum();
                if dropped > 0 && ev_tx.send(Incoming::DroppedByDora(dropped)).is_err() {
                    break;
                }
                if ev_tx.send(Incoming::Event(ev)).is_err() {
                    break;
                }
            }
        })
        .wrap_err("cannot start the event thread")?;
    let mut ev_rx: Receiver<Incoming> = ev_rx;
    let mut inputs_done = false;
    let mut reorder: Reorder<(u64, UnitResult)> = Reorder::default();
    let mut last_status = Instant::now();
    let mut next_seq = 0u64;
    loop {
        n.dispatch(&mut pool, &mut next_seq)?;
        if inputs_done && n.sched.pending() == 0 && pool.in_flight() == 0 {
            break;
        }
        let wait = n.cfg.status_every.saturating_sub(last_status.elapsed());
        select! {
            recv(ev_rx) -> ev => match ev {
                Ok(Incoming::DroppedByDora(k)) => n.stats.dropped_by_dora += k,
                Ok(Incoming::Event(Event::Input { id, metadata, data })) => {
                    n.on_input(id.as_str(), &metadata.parameters, data.as_array().as_ref())?;
                }
                Ok(Incoming::Event(Event::Stop(_))) => {
                    tracing::info!("stop received; finishing accepted frames")
                }
                Ok(Incoming::Event(Event::Error(e))) => tracing::warn!("event stream: {e}"),
                Ok(Incoming::Event(_)) => {}
                Err(_) => {
                    inputs_done = true;
                    n.sched.finish();
                    ev_rx = never();
                }
            },
            recv(pool.results) -> r => {
                let Finished { replica, seq, result } = r.map_err(|_| eyre!("all replicas stopped"))?;
                pool.done(replica);
                reorder.insert(seq, (seq, result));
                let mut ready = Vec::new();
                while let Some((seq, res)) = reorder.pop() {
                    ready.extend(n.on_result(seq, res)?);
                }
                // The next unit starts before these outputs are sent: the freshest frame
                // waits for an inference, not for the sending.
                n.dispatch(&mut pool, &mut next_seq)?;
                for unit in ready {
                    n.send_unit(unit)?;
                }
            },
            default(wait) => {}
        }
        if last_status.elapsed() >= n.cfg.status_every {
            n.report(&pool)?;
            last_status = Instant::now();
        }
    }
    n.report(&pool)?;
    tracing::info!(
        "dora-da3: {} frames in, {} out, {} dropped, {} rejected, {} failed units, {} warnings",
        n.stats.frames_in,
        n.stats.frames_out,
        n.sched.dropped,
        n.stats.rejected,
        n.stats.failed_units,
        n.stats.warnings
    );
    pool.shutdown();
    let _ = reader.join();
    Ok(())
}

/// Entry point of the `dora-da3` binary: configuration first (one clear line
/// on a bad value, before any model loads), then the model, then dora.
pub fn lib_main() -> Result<()> {
    da3_msg::node_util::init_logging();
    let cfg = Config::from_env().wrap_err("dora-da3: bad configuration")?;
    da3::tuning::set(da3::tuning::Tuning::from_env().wrap_err("dora-da3: bad DA3_* tuning")?);
    let models = load_models(&cfg)?;
    if models.is_empty() {
        bail!("no model replica could be started");
    }
    let (mut node, events) = DoraNode::init_from_env()?;
    run(&mut node, events, cfg, models)
}
