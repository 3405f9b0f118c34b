//! `viewer`: a dora sink that logs the DA3 node's results to [Rerun]: source
//! images, depth, confidence, the colour-mapped depth, the cameras (pinhole +
//! camera-to-world pose), each camera's trajectory and the coloured point
//! clouds, on a `frame` sequence timeline and a `capture_time` timestamp
//! timeline. It saves an `.rrd` file (default), spawns a viewer or connects
//! to a running one.
//!
//! See `nodes/viewer/README.md` for entities, ports, env vars and a YAML snippet.
//!
//! [Rerun]: https://rerun.io

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use da3_msg::node_util::{for_each_input, start, Env, Step};
use da3_msg::{DecodeLimits, DepthVis, FrameInfo, Intrinsics, Message, Pose};
use dora_node_api::EventStream;
use eyre::{bail, eyre, Context, Result};
use rerun::{RecordingStream, RecordingStreamBuilder};

/// Timeline of the frames' `frame_id` (a sequence).
pub const FRAME_TIMELINE: &str = "frame";
/// Timeline of the frames' `stamp_ns` (capture time, a timestamp).
pub const TIME_TIMELINE: &str = "capture_time";

/// Where the recording goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Write an `.rrd` file.
    Save(PathBuf),
    /// Start a `rerun` viewer (found on `PATH`) and stream to it.
    Spawn,
    /// Stream to a running viewer or server at this gRPC URL.
    Connect(String),
}

/// Node configuration, from env vars.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub app_id: String,
    /// Shared by several loggers that should land in one recording.
    pub recording_id: Option<String>,
    /// Most camera centres kept in each trajectory (the latest ones).
    pub trajectory_max: usize,
    /// How long to wait at the end for the data to reach the file / viewer.
    pub flush_timeout: Duration,
}

/// The default gRPC address of a local Rerun viewer.
pub const DEFAULT_ADDR: &str = "rerun+http://127.0.0.1:9876/proxy";

/// The env vars the viewer reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[&[
    "RERUN_MODE",
    "RERUN_RRD",
    "RERUN_ADDR",
    "RERUN_APP_ID",
    "RERUN_RECORDING_ID",
    "TRAJECTORY_MAX",
    "FLUSH_TIMEOUT_S",
]];

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env() -> Result<Self> {
        let env = Env::new(ENV_VARS);
        let mode: String = env.or("RERUN_MODE", "save".to_string())?;
        let rrd: String = env.or("RERUN_RRD", "out/viewer.rrd".to_string())?;
        let addr: String = env.or("RERUN_ADDR", DEFAULT_ADDR.to_string())?;
        let mode = match mode.as_str() {
            "save" => Mode::Save(PathBuf::from(rrd)),
            "spawn" => Mode::Spawn,
            "connect" => Mode::Connect(addr),
            other => bail!("invalid RERUN_MODE={other:?}: expected save, spawn or connect"),
        };
        let trajectory_max: usize = env.or("TRAJECTORY_MAX", 10_000)?;
        if trajectory_max < 2 {
            bail!("invalid TRAJECTORY_MAX={trajectory_max}: must be at least 2");
        }
        let flush_s: f64 = env.or("FLUSH_TIMEOUT_S", 30.0)?;
        if !(flush_s.is_finite() && flush_s > 0.0) {
            bail!("invalid FLUSH_TIMEOUT_S={flush_s}: must be > 0");
        }
        let app_id = env.or("RERUN_APP_ID", "dora-da3".to_string())?;
        let recording_id = env.opt("RERUN_RECORDING_ID")?;
        env.finish();
        Ok(Self {
            mode,
            app_id,
            recording_id,
            trajectory_max,
            flush_timeout: Duration::from_secs_f64(flush_s),
        })
    }
}

/// Finds an executable on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Opens the recording stream for the configured mode.
pub fn open_stream(cfg: &Config) -> Result<RecordingStream> {
    let app_id = rerun::ApplicationId::try_from(cfg.app_id.clone())
        .map_err(|e| eyre!("invalid RERUN_APP_ID={:?}: {e}", cfg.app_id))?;
    let mut b = RecordingStreamBuilder::new(app_id).enabled(true);
    if let Some(id) = &cfg.recording_id {
        b = b.recording_id(id.clone());
    }
    match &cfg.mode {
        Mode::Save(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).wrap_err_with(|| {
                    format!("cannot create the folder of `{}`", path.display())
                })?;
            }
            b.save(path)
                .wrap_err_with(|| format!("cannot write `{}`", path.display()))
        }
        Mode::Spawn => {
            if find_on_path("rerun").is_none() {
                bail!(
                    "RERUN_MODE=spawn needs the `rerun` viewer on PATH, and it is not there: \
                     `pip install rerun-sdk==0.36.3` (scripts/setup.sh puts it into .venv/bin), \
                     or use RERUN_MODE=save"
                );
            }
            b.spawn().wrap_err("cannot spawn the rerun viewer")
        }
        Mode::Connect(addr) => b
            .connect_grpc_opts(addr.as_str())
            .wrap_err_with(|| format!("cannot connect to `{addr}`")),
    }
}

/// A camera name as one entity path part: characters other than
/// `A-Za-z0-9_-` become `_`.
pub fn entity_name(camera: &str) -> String {
    let s: String = camera
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// The entity paths of one camera.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `Transform3D`: camera-to-world pose.
    pub camera: String,
    /// `Pinhole` at the depth size; parent of `depth`, `confidence`, `depth_vis`.
    pub pinhole: String,
    pub depth: String,
    pub confidence: String,
    pub depth_vis: String,
    /// `Pinhole` at the source image size; parent of `rgb`.
    pub image: String,
    pub rgb: String,
    /// `Points3D`, world frame.
    pub points: String,
    /// `Points3D` of the Gaussians' centres (DC colour, radius = largest scale), world frame.
    pub gaussians: String,
    /// `LineStrips3D` of the camera centres so far.
    pub trajectory: String,
}

impl Paths {
    pub fn new(camera: &str) -> Self {
        let c = entity_name(camera);
        let cam = format!("world/cameras/{c}");
        Self {
            pinhole: format!("{cam}/pinhole"),
            depth: format!("{cam}/pinhole/depth"),
            confidence: format!("{cam}/pinhole/confidence"),
            depth_vis: format!("{cam}/pinhole/depth_vis"),
            image: format!("{cam}/image"),
            rgb: format!("{cam}/image/rgb"),
            points: format!("world/points/{c}"),
            gaussians: format!("world/gaussians/{c}"),
            trajectory: format!("world/trajectory/{c}"),
            camera: cam,
        }
    }
}

/// What is known about one camera.
struct CamState {
    paths: Paths,
    /// Camera centres, oldest first (at most `trajectory_max`).
    trajectory: Vec<[f32; 3]>,
    /// Frame whose pose / intrinsics were logged last (one log per frame).
    pose_frame: Option<u64>,
    k_frame: Option<u64>,
    /// Latest intrinsics and the size they refer to.
    k: Option<(Intrinsics, u32, u32)>,
    /// Size of the latest source image, and the size its pinhole was logged for.
    image_size: Option<(u32, u32)>,
    image_pinhole: Option<(u32, u32)>,
}

/// Messages logged, per kind, and problems.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub images: u64,
    pub depth_vis: u64,
    /// Masks (the DA3 node's `sky`), logged beside the depth.
    pub masks: u64,
    pub depth: u64,
    pub confidence: u64,
    pub cameras: u64,
    pub points: u64,
    /// Gaussian sets (the DA3 node's `gaussians`), as their centres.
    pub gaussians: u64,
    /// Poses logged (`Transform3D`), one per frame.
    pub poses: u64,
    /// Messages that could not be decoded.
    pub rejected: u64,
    /// Messages decoded but not loggable (e.g. a corrupt JPEG).
    pub errors: u64,
}

/// Turns decoded messages into Rerun log calls.
pub struct Logger {
    rec: RecordingStream,
    cams: HashMap<String, CamState>,
    default_camera: String,
    trajectory_max: usize,
    pub counts: Counts,
}

fn f32s<const N: usize>(v: [f64; N]) -> [f32; N] {
    v.map(|x| x as f32)
}

/// Pinhole of `k` at `w x h`, OpenCV axes (x right, y down, z forward).
fn pinhole(k: &Intrinsics, w: u32, h: u32) -> rerun::Pinhole {
    // `image_from_camera` is column-major.
    rerun::Pinhole::new([
        [k.fx as f32, 0.0, 0.0],
        [0.0, k.fy as f32, 0.0],
        [k.cx as f32, k.cy as f32, 1.0],
    ])
    .with_resolution([w as f32, h as f32])
    .with_camera_xyz(rerun::components::ViewCoordinates::RDF)
}

impl Logger {
    /// Logs the world's axes (OpenCV: x right, y down, z forward) as static data.
    pub fn new(rec: RecordingStream, default_camera: &str, trajectory_max: usize) -> Result<Self> {
        rec.log_static("world", &rerun::ViewCoordinates::RIGHT_HAND_Y_DOWN())?;
        Ok(Self {
            rec,
            cams: HashMap::new(),
            default_camera: default_camera.to_string(),
            trajectory_max: trajectory_max.max(2),
            counts: Counts::default(),
        })
    }

    fn cam(&mut self, info: &FrameInfo) -> &mut CamState {
        let name = info
            .camera
            .clone()
            .unwrap_or_else(|| self.default_camera.clone());
        self.cams.entry(name).or_insert_with_key(|name| CamState {
            paths: Paths::new(name),
            trajectory: Vec::new(),
            pose_frame: None,
            k_frame: None,
            k: None,
            image_size: None,
            image_pinhole: None,
        })
    }

    /// Sets the timelines of the next log calls from the frame's metadata.
    fn set_time(&self, info: &FrameInfo) {
        match info.frame_id {
            Some(id) => self
                .rec
                .set_time_sequence(FRAME_TIMELINE, i64::try_from(id).unwrap_or(i64::MAX)),
            None => self.rec.disable_timeline(FRAME_TIMELINE),
        }
        match info.stamp_ns {
            Some(ns) => self.rec.set_timestamp_nanos_since_epoch(
                TIME_TIMELINE,
                i64::try_from(ns).unwrap_or(i64::MAX),
            ),
            None => self.rec.disable_timeline(TIME_TIMELINE),
        }
    }

    /// Logs one message. A message that cannot be logged is an error the
    /// caller counts; nothing here panics on message content.
    pub fn handle(&mut self, msg: &Message) -> Result<()> {
        match msg {
            Message::Image(f) => {
                self.set_time(&f.info);
                let (w, h, rgb) = f.to_rgb8(&DecodeLimits::default())?;
                let own_k = f.intrinsics;
                let cam = self.cam(&f.info);
                cam.image_size = Some((w, h));
                let rgb_path = cam.paths.rgb.clone();
                // The source image's pinhole: DA3's intrinsics scaled to this
                // size, else the frame's own; logged when the size changes.
                if cam.image_pinhole != Some((w, h)) {
                    let k = match cam.k {
                        Some((k, kw, kh)) => {
                            Some(k.scaled(w as f64 / kw as f64, h as f64 / kh as f64))
                        }
                        None => own_k,
                    };
                    if let Some(k) = k {
                        cam.image_pinhole = Some((w, h));
                        let p = cam.paths.image.clone();
                        self.rec.log(p, &pinhole(&k, w, h))?;
                    }
                }
                self.rec
                    .log(rgb_path, &rerun::Image::from_rgb24(rgb, [w, h]))?;
                self.counts.images += 1;
            }
            Message::Mask(m) => {
                let f = &m.frame;
                self.set_time(&f.info);
                let p = format!(
                    "{}/{}",
                    self.cam(&f.info).paths.pinhole,
                    entity_name(&m.mask)
                );
                let img = rerun::Image::from_l8(f.data.clone(), [f.width, f.height]);
                self.rec.log(p, &img)?;
                self.counts.masks += 1;
            }
            Message::DepthVis(DepthVis { frame: f, .. }) => {
                self.set_time(&f.info);
                let (w, h, rgb) = f.to_rgb8(&DecodeLimits::default())?;
                let p = self.cam(&f.info).paths.depth_vis.clone();
                self.rec.log(p, &rerun::Image::from_rgb24(rgb, [w, h]))?;
                self.counts.depth_vis += 1;
            }
            Message::Depth(d) => {
                self.set_time(&d.info);
                self.geometry(
                    &d.info,
                    d.pose,
                    d.intrinsics.map(|k| (k, d.width, d.height)),
                )?;
                let bytes: Vec<u8> = d.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let img = rerun::DepthImage::from_data_type_and_bytes(
                    bytes,
                    [d.width, d.height],
                    rerun::ChannelDatatype::F32,
                )
                .with_meter(1.0);
                let p = self.cam(&d.info).paths.depth.clone();
                self.rec.log(p, &img)?;
                self.counts.depth += 1;
            }
            Message::Confidence(d) => {
                self.set_time(&d.info);
                let img = rerun::Image::from_elements(
                    &d.values,
                    [d.width, d.height],
                    rerun::ColorModel::L,
                );
                let p = self.cam(&d.info).paths.confidence.clone();
                self.rec.log(p, &img)?;
                self.counts.confidence += 1;
            }
            Message::Camera(c) => {
                self.set_time(&c.info);
                self.geometry(&c.info, Some(c.pose()), Some((c.k(), c.width, c.height)))?;
                self.counts.cameras += 1;
            }
            Message::Points(p) => {
                self.set_time(&p.info);
                let colors = p
                    .rgb
                    .iter()
                    .map(|c| rerun::Color::from_rgb(c[0], c[1], c[2]));
                let pts = rerun::Points3D::new(p.xyz.iter().copied()).with_colors(colors);
                let path = self.cam(&p.info).paths.points.clone();
                self.rec.log(path, &pts)?;
                self.counts.points += 1;
            }
            Message::Gaussians(g) => {
                self.set_time(&g.info);
                let colors = g
                    .gaussians
                    .dc_colours()
                    .into_iter()
                    .map(|c| rerun::Color::from_rgb(c[0], c[1], c[2]));
                let radii = g.gaussians.scales.iter().map(|s| s[0].max(s[1]).max(s[2]));
                let pts = rerun::Points3D::new(g.gaussians.means.iter().copied())
                    .with_colors(colors)
                    .with_radii(radii);
                let path = self.cam(&g.info).paths.gaussians.clone();
                self.rec.log(path, &pts)?;
                self.counts.gaussians += 1;
            }
            // Decoded (so not counted as rejected) but nothing to show.
            Message::Status(_) => {}
        }
        Ok(())
    }

    /// Logs a frame's pose (transform + trajectory) and intrinsics (pinholes),
    /// once per frame whichever message (camera or depth) brings them first.
    fn geometry(
        &mut self,
        info: &FrameInfo,
        pose: Option<Pose>,
        k: Option<(Intrinsics, u32, u32)>,
    ) -> Result<()> {
        let max = self.trajectory_max;
        let rec = self.rec.clone();
        let cam = self.cam(info);
        let fresh = |last: Option<u64>| info.frame_id.is_none() || last != info.frame_id;
        if let Some(pose) = pose.filter(|_| fresh(cam.pose_frame)) {
            let pos = f32s(pose.position);
            if pos.iter().all(|v| v.is_finite()) {
                cam.pose_frame = info.frame_id;
                let q = rerun::Quaternion::from_xyzw(f32s(pose.orientation));
                rec.log(
                    cam.paths.camera.as_str(),
                    &rerun::Transform3D::from_translation_rotation(pos, q),
                )?;
                cam.trajectory.push(pos);
                if cam.trajectory.len() > max {
                    let cut = cam.trajectory.len() - max;
                    cam.trajectory.drain(..cut);
                }
                rec.log(
                    cam.paths.trajectory.as_str(),
                    &rerun::LineStrips3D::new([cam.trajectory.clone()]),
                )?;
                self.counts.poses += 1;
            }
        }
        let cam = self.cam(info);
        if let Some((k, w, h)) = k.filter(|_| fresh(cam.k_frame)) {
            if w > 0 && h > 0 {
                cam.k_frame = info.frame_id;
                cam.k = Some((k, w, h));
                rec.log(cam.paths.pinhole.as_str(), &pinhole(&k, w, h))?;
                if let Some((iw, ih)) = cam.image_size {
                    let ks = k.scaled(iw as f64 / w as f64, ih as f64 / h as f64);
                    cam.image_pinhole = Some((iw, ih));
                    rec.log(cam.paths.image.as_str(), &pinhole(&ks, iw, ih))?;
                }
            }
        }
        Ok(())
    }

    /// Waits until everything logged has reached the sink, then closes it
    /// (an `.rrd` gets its footer when its writer closes).
    pub fn finish(self, timeout: Duration) -> Result<Counts> {
        self.rec
            .flush_with_timeout(timeout)
            .map_err(|e| eyre!("the recording could not be flushed: {e}"))?;
        let Self { rec, counts, .. } = self;
        drop(rec);
        Ok(counts)
    }
}

/// Runs the sink until the event stream ends.
pub fn run(
    events: &mut EventStream,
    mut logger: Logger,
    flush_timeout: Duration,
) -> Result<Counts> {
    for_each_input(events, |step| {
        if let Step::Input { id, params, data } = step {
            // By `primitive` (the colour-mapped depth is marked in its metadata).
            match Message::decode(data.as_ref(), &params) {
                Ok(msg) => {
                    if let Err(e) = logger.handle(&msg) {
                        logger.counts.errors += 1;
                        tracing::warn!("input `{id}`: not logged: {e:#}");
                    }
                }
                Err(e) => {
                    logger.counts.rejected += 1;
                    tracing::warn!("input `{id}`: message rejected: {e:#}");
                }
            }
        }
        Ok(())
    })?;
    let c = logger.finish(flush_timeout)?;
    tracing::info!(
        "viewer: logged image: {}, depth: {}, confidence: {}, depth_vis: {}, camera: {}, points: {}, poses: {}; {} messages rejected, {} not logged",
        c.images,
        c.depth,
        c.confidence,
        c.depth_vis,
        c.cameras,
        c.points,
        c.poses,
        c.rejected,
        c.errors
    );
    Ok(c)
}

/// Entry point of the `viewer` binary.
pub fn lib_main() -> Result<()> {
    let (cfg, node, mut events) = start("viewer", Config::from_env)?;
    let rec = open_stream(&cfg).wrap_err("viewer")?;
    match &cfg.mode {
        Mode::Save(p) => tracing::info!("viewer: recording to {}", p.display()),
        Mode::Spawn => tracing::info!("viewer: streaming to a spawned rerun viewer"),
        Mode::Connect(a) => tracing::info!("viewer: streaming to {a}"),
    }
    let logger = Logger::new(rec, node.id().as_ref(), cfg.trajectory_max)?;
    run(&mut events, logger, cfg.flush_timeout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use da3_msg::{CameraMsg, DepthKind, DepthMap, ImageFrame, PointCloud};
    use rerun::log::{Chunk, LogMsg};

    /// Rows logged per `(entity, archetype)`.
    fn logged(storage: &rerun::sink::MemorySinkStorage) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for msg in storage.take() {
            if let LogMsg::ArrowMsg(_, m) = msg {
                let c = Chunk::from_arrow_msg(&m).unwrap();
                let mut archs: Vec<String> = c
                    .component_descriptors()
                    .filter_map(|d| d.archetype.map(|a| a.short_name().to_string()))
                    .collect();
                archs.dedup();
                for a in archs {
                    // Entity paths print as `/world/...`.
                    let e = c
                        .entity_path()
                        .to_string()
                        .trim_start_matches('/')
                        .to_string();
                    *out.entry((e, a)).or_default() += c.num_rows();
                }
            }
        }
        out
    }

    fn memory_logger() -> (Logger, rerun::sink::MemorySinkStorage) {
        let (rec, storage) = RecordingStreamBuilder::new("test")
            .enabled(true)
            .memory()
            .unwrap();
        (Logger::new(rec, "node", 3).unwrap(), storage)
    }

    fn info(i: u64) -> FrameInfo {
        FrameInfo {
            frame_id: Some(i),
            stamp_ns: Some(1_000 + i),
            camera: Some("cam a".into()),
            last: false,
        }
    }

    fn depth(i: u64) -> DepthMap {
        DepthMap {
            kind: DepthKind::Depth,
            width: 4,
            height: 3,
            values: vec![1.5; 12],
            info: info(i),
            intrinsics: Some(Intrinsics {
                fx: 4.0,
                fy: 4.0,
                cx: 2.0,
                cy: 1.5,
            }),
            pose: Some(Pose {
                position: [i as f64, 0.0, 0.0],
                orientation: [0.0, 0.0, 0.0, 1.0],
            }),
            is_metric: false,
        }
    }

    fn camera(i: u64) -> CameraMsg {
        CameraMsg {
            extrinsics: [
                1.0,
                0.0,
                0.0,
                -(i as f64),
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                0.0,
                1.0,
                0.0,
            ],
            intrinsics: [4.0, 0.0, 2.0, 0.0, 4.0, 1.5, 0.0, 0.0, 1.0],
            width: 4,
            height: 3,
            info: info(i),
            is_metric: false,
        }
    }

    #[test]
    fn one_pose_and_pinhole_per_frame_and_a_capped_trajectory() {
        let (mut lg, storage) = memory_logger();
        for i in 0..5 {
            let mut img = ImageFrame::rgb8(8, 6, vec![7; 8 * 6 * 3]);
            img.info = info(i);
            lg.handle(&Message::Image(img)).unwrap();
            // Camera and depth both carry the pose: logged once.
            lg.handle(&Message::Camera(camera(i))).unwrap();
            lg.handle(&Message::Depth(depth(i))).unwrap();
            let mut conf = depth(i);
            conf.kind = DepthKind::Confidence;
            lg.handle(&Message::Confidence(conf)).unwrap();
            lg.handle(&Message::Points(PointCloud {
                xyz: vec![[0.0, 0.0, 1.0]; 3],
                rgb: vec![[1, 2, 3]; 3],
                info: info(i),
                is_metric: false,
            }))
            .unwrap();
        }
        assert_eq!(lg.cams["cam a"].trajectory.len(), 3, "TRAJECTORY_MAX");
        assert_eq!(lg.cams["cam a"].trajectory[2], [4.0, 0.0, 0.0]);
        let c = lg.finish(Duration::from_secs(10)).unwrap();
        assert_eq!((c.images, c.depth, c.cameras, c.poses), (5, 5, 5, 5));
        let got = logged(&storage);
        let n = |e: &str, a: &str| got.get(&(e.to_string(), a.to_string())).copied();
        let cam = "world/cameras/cam_a";
        assert_eq!(n(cam, "Transform3D"), Some(5));
        assert_eq!(n(&format!("{cam}/pinhole"), "Pinhole"), Some(5));
        assert_eq!(n(&format!("{cam}/pinhole/depth"), "DepthImage"), Some(5));
        assert_eq!(n(&format!("{cam}/pinhole/confidence"), "Image"), Some(5));
        // The image pinhole: first when frame 0's K arrives, then per frame.
        assert_eq!(n(&format!("{cam}/image"), "Pinhole"), Some(5));
        assert_eq!(n(&format!("{cam}/image/rgb"), "Image"), Some(5));
        assert_eq!(n("world/points/cam_a", "Points3D"), Some(5));
        assert_eq!(n("world/trajectory/cam_a", "LineStrips3D"), Some(5));
        assert_eq!(n("world", "ViewCoordinates"), Some(1));
    }

    #[test]
    fn messages_without_frame_ids_use_the_node_name_and_still_log() {
        let (mut lg, storage) = memory_logger();
        let mut d = depth(0);
        d.info = FrameInfo::default();
        lg.handle(&Message::Depth(d.clone())).unwrap();
        lg.handle(&Message::Depth(d)).unwrap();
        lg.finish(Duration::from_secs(10)).unwrap();
        let got = logged(&storage);
        let key = ("world/cameras/node".to_string(), "Transform3D".to_string());
        assert_eq!(got.get(&key), Some(&2));
    }

    #[test]
    fn a_corrupt_jpeg_is_an_error_not_a_panic() {
        let (mut lg, _storage) = memory_logger();
        let mut f = ImageFrame::rgb8(0, 0, b"nope".to_vec());
        f.encoding = da3_msg::Encoding::Jpeg;
        assert!(lg.handle(&Message::Image(f)).is_err());
        // Non-finite poses are skipped, not logged.
        let mut d = depth(1);
        d.pose = Some(Pose {
            position: [f64::NAN, 0.0, 0.0],
            orientation: [0.0, 0.0, 0.0, 1.0],
        });
        lg.handle(&Message::Depth(d)).unwrap();
        assert_eq!(lg.counts.poses, 0);
    }

    #[test]
    fn entity_names_are_one_path_part() {
        assert_eq!(entity_name("front cam/1"), "front_cam_1");
        assert_eq!(entity_name(""), "_");
        assert_eq!(Paths::new("a.b").points, "world/points/a_b");
    }

    #[test]
    fn config_from_env_and_spawn_without_rerun() {
        // Env vars are process-wide: only this test touches these names.
        std::env::set_var("RERUN_MODE", "bogus");
        let e = Config::from_env().unwrap_err().to_string();
        assert!(e.contains("invalid RERUN_MODE"), "{e}");
        std::env::set_var("RERUN_MODE", "connect");
        assert_eq!(
            Config::from_env().unwrap().mode,
            Mode::Connect(DEFAULT_ADDR.into())
        );
        std::env::set_var("TRAJECTORY_MAX", "1");
        assert!(Config::from_env().is_err());
        std::env::remove_var("TRAJECTORY_MAX");
        std::env::remove_var("RERUN_MODE");
        let c = Config::from_env().unwrap();
        assert_eq!(c.mode, Mode::Save(PathBuf::from("out/viewer.rrd")));
        assert_eq!(c.app_id, "dora-da3");

        let dir = tempfile::tempdir().unwrap();
        let old = std::env::var_os("PATH");
        std::env::set_var("PATH", dir.path());
        let cfg = Config {
            mode: Mode::Spawn,
            ..c
        };
        let e = format!("{:#}", open_stream(&cfg).unwrap_err());
        if let Some(p) = old {
            std::env::set_var("PATH", p);
        }
        assert!(e.contains("needs the `rerun` viewer on PATH"), "{e}");
    }

    #[test]
    fn save_writes_a_file_that_grows_and_is_closed_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.rrd");
        let cfg = Config {
            mode: Mode::Save(path.clone()),
            app_id: "t".into(),
            recording_id: None,
            trajectory_max: 10,
            flush_timeout: Duration::from_secs(10),
        };
        let mut lg = Logger::new(open_stream(&cfg).unwrap(), "n", 10).unwrap();
        lg.handle(&Message::Depth(depth(0))).unwrap();
        lg.finish(Duration::from_secs(10)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 100);
        assert_eq!(&bytes[..4], b"RRF2", "rrd magic");
    }
}
