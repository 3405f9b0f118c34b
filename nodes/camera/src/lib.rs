//! `camera`: a dora node that sends the frames of a V4L2 camera, or of a
//! synthetic moving test pattern (`CAMERA_DEVICE=test-pattern`), as
//! [`da3_msg::ImageFrame`]s on `image`.
//!
//! See `nodes/camera/README.md` for ports, env vars and a YAML snippet.

pub mod convert;
pub mod pattern;
pub mod v4l2;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use da3_msg::node_util::{linger, now_ns, send_frame, Env};
use da3_msg::source::SourceConfig;
use da3_msg::{Encoding, FrameInfo, ImageFrame, Intrinsics};
use dora_node_api::{DoraNode, Event, EventStream, TryRecvError};
use eyre::{bail, Context, Result};

pub use convert::{yuyv_to_rgb, Captured};
pub use pattern::{decode_frame_number, render_test_pattern};

/// The output port.
pub const OUTPUT: &str = "image";

/// Where frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceSpec {
    /// The synthetic scene of [`render_test_pattern`], paced by the wall clock.
    TestPattern,
    /// A V4L2 device node.
    Path(PathBuf),
}

/// Pixel format asked of a V4L2 camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// MJPEG when the camera offers it, else YUYV.
    Auto,
    Mjpeg,
    Yuyv,
}

/// Largest accepted `WIDTH * HEIGHT` (64 megapixels).
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Node configuration, from env vars.
#[derive(Debug, Clone)]
pub struct Config {
    pub device: DeviceSpec,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub format: PixelFormat,
    pub encoding: Encoding,
    pub jpeg_quality: u8,
    pub max_frames: Option<u64>,
    /// Intrinsics at `width x height` (`INTRINSICS=fx,fy,cx,cy`).
    pub intrinsics: Option<Intrinsics>,
    pub camera: String,
    pub linger: Duration,
}

/// The env vars the camera reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[
    SourceConfig::ENV_VARS,
    &["CAMERA_DEVICE", "WIDTH", "HEIGHT", "FORMAT"],
];

/// Old names still accepted, with a deprecation warning: `DEVICE` is
/// dora-da3's compute device, the camera's is `CAMERA_DEVICE`.
pub const RENAMED: &[(&str, &str)] = &[("DEVICE", "CAMERA_DEVICE")];

/// Encodings the camera sends.
pub const ENCODINGS: &[Encoding] = &[Encoding::Rgb8, Encoding::Bgr8, Encoding::Jpeg];

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env(default_camera: &str) -> Result<Self> {
        let env = Env::new(ENV_VARS).with_renamed(RENAMED);
        let device = match env.opt::<String>("CAMERA_DEVICE")? {
            None => DeviceSpec::Path("/dev/video0".into()),
            Some(d) if d.eq_ignore_ascii_case("test-pattern") => DeviceSpec::TestPattern,
            Some(d) if d.parse::<u32>().is_ok() => {
                DeviceSpec::Path(format!("/dev/video{d}").into())
            }
            Some(d) => DeviceSpec::Path(d.into()),
        };
        let width: u32 = env.or("WIDTH", 640)?;
        let height: u32 = env.or("HEIGHT", 480)?;
        if width == 0 || height == 0 {
            bail!("invalid WIDTH={width}, HEIGHT={height}: both must be at least 1");
        }
        if width as u64 * height as u64 > MAX_PIXELS {
            bail!("invalid WIDTH={width}, HEIGHT={height}: over 64 megapixels");
        }
        let format = match env
            .or("FORMAT", "auto".to_string())?
            .to_ascii_lowercase()
            .as_str()
        {
            "auto" => PixelFormat::Auto,
            "mjpeg" | "mjpg" => PixelFormat::Mjpeg,
            "yuyv" | "yuy2" => PixelFormat::Yuyv,
            other => bail!("invalid FORMAT={other:?}: expected auto, mjpeg or yuyv"),
        };
        let src = SourceConfig::from_env(&env, ENCODINGS, default_camera)?;
        env.finish();
        let fps = src.fps.unwrap_or(30.0);
        if !(fps > 0.0 && fps <= 1000.0) {
            bail!("invalid FPS={fps}: must be > 0 and at most 1000");
        }
        Ok(Self {
            device,
            width,
            height,
            fps,
            format,
            encoding: src.encoding,
            jpeg_quality: src.jpeg_quality,
            max_frames: src.max_frames,
            intrinsics: src.intrinsics,
            camera: src.camera,
            linger: src.linger,
        })
    }
}

/// The true pinhole intrinsics of the test-pattern scene at `width x height`
/// (not attached automatically: set `INTRINSICS` to send them).
pub fn test_pattern_intrinsics(width: u32, height: u32) -> Intrinsics {
    Intrinsics {
        fx: height as f64,
        fy: height as f64,
        cx: width as f64 / 2.0,
        cy: height as f64 / 2.0,
    }
}

/// Absolute frame deadlines: frame `n` is due at `start + n / fps`, computed
/// from `n` every time so the schedule never drifts.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    first: u64,
    fps: f64,
}

impl Pacer {
    /// After this much lateness the schedule restarts from now (after a
    /// suspend, say) instead of sending a burst of catch-up frames.
    pub const RESYNC_AFTER: Duration = Duration::from_secs(1);

    pub fn new(start: Instant, fps: f64) -> Self {
        Self {
            start,
            first: 0,
            fps,
        }
    }

    /// When frame `n` is due.
    pub fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n.saturating_sub(self.first) as f64 / self.fps)
    }

    /// Restarts the schedule: frame `n` is due at `now`.
    pub fn resync(&mut self, n: u64, now: Instant) {
        self.start = now;
        self.first = n;
    }
}

/// Polls the event stream without blocking: `true` on `Stop` or when closed.
fn stop_requested(events: &mut EventStream) -> bool {
    loop {
        match events.try_recv() {
            Ok(Event::Stop(_)) | Err(TryRecvError::Closed) => return true,
            Ok(_) => continue,
            Err(TryRecvError::Empty) => return false,
        }
    }
}

/// Waits until `deadline`, handling events: `true` on `Stop` or when closed.
fn wait_until(events: &mut EventStream, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return stop_requested(events);
        }
        match events.recv_timeout(left) {
            None | Some(Event::Stop(_)) => return true,
            Some(_) => {}
        }
    }
}

/// Builds frame `frame_id` in the configured output encoding.
fn make_frame(
    config: &Config,
    frame_id: u64,
    stamp_ns: u64,
    (width, height): (u32, u32),
    captured: Captured,
    intrinsics: Option<Intrinsics>,
) -> Result<ImageFrame> {
    let data = convert::to_output(
        captured,
        width,
        height,
        config.encoding,
        config.jpeg_quality,
    )
    .wrap_err_with(|| format!("frame {frame_id}"))?;
    Ok(ImageFrame {
        encoding: config.encoding,
        width,
        height,
        data,
        info: FrameInfo {
            frame_id: Some(frame_id),
            stamp_ns: Some(stamp_ns),
            camera: Some(config.camera.clone()),
            last: config.max_frames == Some(frame_id + 1),
        },
        intrinsics,
    })
}

fn send(node: &mut DoraNode, frame: &ImageFrame) -> Result<()> {
    send_frame(node, OUTPUT, frame)
        .wrap_err_with(|| format!("cannot send frame {:?}", frame.info.frame_id))
}

/// How a run ended.
#[derive(Debug, Default)]
struct Summary {
    sent: u64,
    stopped: bool,
    /// Test pattern: frames sent after their deadline.
    late: u64,
    /// Camera: bad frames skipped.
    skipped: u64,
}

/// Sends the test pattern at `config.fps`.
fn run_test_pattern(
    node: &mut DoraNode,
    events: &mut EventStream,
    config: &Config,
) -> Result<Summary> {
    const LATE_SLACK: Duration = Duration::from_millis(2);
    const LATE_LOG_EVERY: Duration = Duration::from_secs(5);
    let (w, h) = (config.width, config.height);
    tracing::info!("camera: test pattern {w}x{h} @ {} fps", config.fps);
    let mut pacer = Pacer::new(Instant::now(), config.fps);
    let (mut n, mut late, mut logged_late) = (0u64, 0u64, 0u64);
    let mut last_log = Instant::now();
    loop {
        if config.max_frames.is_some_and(|m| n >= m) {
            return Ok(Summary {
                sent: n,
                late,
                ..Summary::default()
            });
        }
        // Render ahead of the deadline, then wait for it.
        let rgb = render_test_pattern(n, w, h);
        let now = Instant::now();
        let due = pacer.due(n);
        if now > due + LATE_SLACK {
            late += 1;
            if now - due > Pacer::RESYNC_AFTER {
                tracing::warn!(
                    "camera: {:.1} s behind schedule at frame {n}: restarting the schedule",
                    (now - due).as_secs_f64()
                );
                pacer.resync(n, now);
            }
        }
        if late > logged_late && last_log.elapsed() >= LATE_LOG_EVERY {
            tracing::warn!(
                "camera: {late} of {} frames late so far (slower than {} fps)",
                n + 1,
                config.fps
            );
            logged_late = late;
            last_log = Instant::now();
        }
        if wait_until(events, pacer.due(n)) {
            return Ok(Summary {
                sent: n,
                stopped: true,
                late,
                ..Summary::default()
            });
        }
        let frame = make_frame(
            config,
            n,
            now_ns(),
            (w, h),
            Captured::Rgb(rgb),
            config.intrinsics,
        )?;
        send(node, &frame)?;
        n += 1;
    }
}

/// Streams a V4L2 camera.
fn run_v4l2(
    node: &mut DoraNode,
    events: &mut EventStream,
    config: &Config,
    path: &std::path::Path,
) -> Result<Summary> {
    const POLL: Duration = Duration::from_millis(100);
    const STALL: Duration = Duration::from_secs(5);
    const MAX_BAD_IN_A_ROW: u32 = 30;
    let mut cam = v4l2::Camera::open(path, config.format, config.width, config.height, config.fps)?;
    tracing::info!("camera: streaming {}", cam.describe);
    let (w, h) = (cam.width, cam.height);
    let intrinsics = config.intrinsics.map(|k| {
        k.scaled(
            w as f64 / config.width as f64,
            h as f64 / config.height as f64,
        )
    });
    if config.encoding == Encoding::Jpeg && cam.is_mjpeg() {
        tracing::info!("camera: passing the camera's MJPEG through undecoded");
    }
    let (mut n, mut bad, mut bad_in_a_row) = (0u64, 0u64, 0u32);
    let mut stalled = Duration::ZERO;
    loop {
        if config.max_frames.is_some_and(|m| n >= m) {
            return Ok(Summary {
                sent: n,
                skipped: bad,
                ..Summary::default()
            });
        }
        if stop_requested(events) {
            return Ok(Summary {
                sent: n,
                stopped: true,
                skipped: bad,
                ..Summary::default()
            });
        }
        if !cam.wait_ready(POLL)? {
            stalled += POLL;
            if stalled >= STALL {
                bail!("{}: no frame for {STALL:?}", cam.describe);
            }
            continue;
        }
        stalled = Duration::ZERO;
        let (captured, stamp) = cam.next_frame()?;
        match captured.and_then(|c| make_frame(config, n, stamp, (w, h), c, intrinsics)) {
            Ok(frame) => {
                send(node, &frame)?;
                n += 1;
                bad_in_a_row = 0;
            }
            Err(e) => {
                bad += 1;
                bad_in_a_row += 1;
                if bad_in_a_row >= MAX_BAD_IN_A_ROW {
                    return Err(e.wrap_err(format!(
                        "{}: {MAX_BAD_IN_A_ROW} bad frames in a row",
                        cam.describe
                    )));
                }
                if bad <= 10 || bad.is_power_of_two() {
                    tracing::warn!("camera: skipping a bad frame ({bad} so far): {e:#}");
                }
            }
        }
    }
}

/// Runs the node on an initialised dora node and event stream.
pub fn run(node: &mut DoraNode, events: &mut EventStream, config: Config) -> Result<()> {
    let started = Instant::now();
    let s = match &config.device {
        DeviceSpec::TestPattern => run_test_pattern(node, events, &config)?,
        DeviceSpec::Path(p) => run_v4l2(node, events, &config, p)?,
    };
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "camera: sent {} frames in {secs:.1} s ({:.1} fps), {} late, {} bad frames skipped{}",
        s.sent,
        s.sent as f64 / secs.max(1e-9),
        s.late,
        s.skipped,
        if s.stopped { " (stopped)" } else { "" }
    );
    if !s.stopped {
        linger(events, config.linger);
    }
    Ok(())
}

/// Entry point of the `camera` binary.
pub fn lib_main() -> Result<()> {
    da3_msg::node_util::init_logging();
    let (mut node, mut events) = DoraNode::init_from_env()?;
    let default_camera = node.id().to_string();
    let config = Config::from_env(&default_camera).wrap_err("camera: bad configuration")?;
    run(&mut node, &mut events, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Env vars are process-wide: tests that set them take this lock.
    static ENV: Mutex<()> = Mutex::new(());
    fn config_with(vars: &[(&str, &str)]) -> Result<Config> {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let old = RENAMED.iter().map(|(old, _)| old);
        for v in ENV_VARS.iter().flat_map(|l| l.iter()).chain(old) {
            std::env::remove_var(v);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let c = Config::from_env("cam0");
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        c
    }

    fn err_of(vars: &[(&str, &str)]) -> String {
        format!("{:#}", config_with(vars).expect_err("should be rejected"))
    }

    #[test]
    fn defaults() {
        let c = config_with(&[]).unwrap();
        assert_eq!(c.device, DeviceSpec::Path("/dev/video0".into()));
        assert_eq!((c.width, c.height, c.fps), (640, 480, 30.0));
        assert_eq!(c.format, PixelFormat::Auto);
        assert_eq!(c.encoding, Encoding::Rgb8);
        assert_eq!(c.jpeg_quality, 90);
        assert_eq!(c.max_frames, None);
        assert_eq!(c.intrinsics, None);
        assert_eq!(c.camera, "cam0");
        assert_eq!(c.linger, Duration::from_secs(1));
    }

    #[test]
    fn all_set() {
        let c = config_with(&[
            ("CAMERA_DEVICE", "test-pattern"),
            ("WIDTH", "1280"),
            ("HEIGHT", "720"),
            ("FPS", "59.94"),
            ("FORMAT", "YUYV"),
            ("ENCODING", "jpeg"),
            ("JPEG_QUALITY", "75"),
            ("MAX_FRAMES", "12"),
            ("INTRINSICS", "700, 710.5, 640, 360"),
            ("CAMERA_NAME", "front"),
            ("LINGER_MS", "0"),
        ])
        .unwrap();
        assert_eq!(c.device, DeviceSpec::TestPattern);
        assert_eq!((c.width, c.height, c.fps), (1280, 720, 59.94));
        assert_eq!(c.format, PixelFormat::Yuyv);
        assert_eq!(c.encoding, Encoding::Jpeg);
        assert_eq!(c.jpeg_quality, 75);
        assert_eq!(c.max_frames, Some(12));
        assert_eq!(
            c.intrinsics,
            Some(Intrinsics {
                fx: 700.0,
                fy: 710.5,
                cx: 640.0,
                cy: 360.0
            })
        );
        assert_eq!(c.camera, "front");
        assert_eq!(c.linger, Duration::ZERO);

        let c = config_with(&[
            ("CAMERA_DEVICE", "2"),
            ("FORMAT", "mjpeg"),
            ("ENCODING", "BGR8"),
        ])
        .unwrap();
        assert_eq!(c.device, DeviceSpec::Path("/dev/video2".into()));
        assert_eq!(c.format, PixelFormat::Mjpeg);
        assert_eq!(c.encoding, Encoding::Bgr8);
        let c = config_with(&[("CAMERA_DEVICE", "/dev/v4l/by-id/usb-cam")]).unwrap();
        assert_eq!(c.device, DeviceSpec::Path("/dev/v4l/by-id/usb-cam".into()));
    }

    #[test]
    fn the_old_device_name_still_works() {
        let c = config_with(&[("DEVICE", "test-pattern")]).unwrap();
        assert_eq!(c.device, DeviceSpec::TestPattern);
        let c = config_with(&[("DEVICE", "test-pattern"), ("CAMERA_DEVICE", "3")]).unwrap();
        assert_eq!(c.device, DeviceSpec::Path("/dev/video3".into()));
    }

    #[test]
    fn invalid_values_are_one_clear_line() {
        for (vars, needle) in [
            (&[("WIDTH", "wide")][..], "invalid WIDTH=\"wide\""),
            (&[("WIDTH", "0")][..], "invalid WIDTH=0"),
            (&[("HEIGHT", "-5")][..], "invalid HEIGHT=\"-5\""),
            (
                &[("WIDTH", "100000"), ("HEIGHT", "100000")][..],
                "over 64 megapixels",
            ),
            (&[("FPS", "0")][..], "invalid FPS=0"),
            (&[("FPS", "-1")][..], "invalid FPS=-1"),
            (&[("FPS", "NaN")][..], "invalid FPS=NaN"),
            (&[("FPS", "fast")][..], "invalid FPS=\"fast\""),
            (&[("FORMAT", "h264")][..], "invalid FORMAT=\"h264\""),
            (&[("ENCODING", "png")][..], "invalid ENCODING=\"png\""),
            (&[("ENCODING", "rgba8")][..], "invalid ENCODING=\"rgba8\""),
            (&[("JPEG_QUALITY", "0")][..], "invalid JPEG_QUALITY=0"),
            (&[("JPEG_QUALITY", "101")][..], "invalid JPEG_QUALITY=101"),
            (&[("MAX_FRAMES", "0")][..], "invalid MAX_FRAMES=0"),
            (&[("MAX_FRAMES", "ten")][..], "invalid MAX_FRAMES=\"ten\""),
            (
                &[("INTRINSICS", "1,2,3")][..],
                "invalid INTRINSICS=\"1,2,3\"",
            ),
            (
                &[("INTRINSICS", "0,2,3,4")][..],
                "invalid INTRINSICS=\"0,2,3,4\"",
            ),
            (
                &[("INTRINSICS", "a,2,3,4")][..],
                "invalid INTRINSICS=\"a,2,3,4\"",
            ),
            (&[("LINGER_MS", "soon")][..], "invalid LINGER_MS=\"soon\""),
        ] {
            let e = err_of(vars);
            assert!(e.contains(needle), "{vars:?}: {e:?} lacks {needle:?}");
            assert!(!e.contains('\n'), "{vars:?}: not one line: {e:?}");
        }
    }

    #[test]
    fn empty_values_mean_default() {
        let c = config_with(&[("CAMERA_DEVICE", ""), ("FPS", " "), ("MAX_FRAMES", "")]).unwrap();
        assert_eq!(c.device, DeviceSpec::Path("/dev/video0".into()));
        assert_eq!(c.fps, 30.0);
        assert_eq!(c.max_frames, None);
    }

    #[test]
    fn pacer_never_drifts() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 30.0);
        assert_eq!(p.due(0), t0);
        assert_eq!(p.due(300), t0 + Duration::from_secs(10));
        // 1e6 frames at 29.97 fps: no accumulated rounding error.
        let p2 = Pacer::new(t0, 30_000.0 / 1001.0);
        let want = Duration::from_secs_f64(1_000_000.0 * 1001.0 / 30_000.0);
        let got = p2.due(1_000_000) - t0;
        assert!(
            got.abs_diff(want) < Duration::from_micros(1),
            "{got:?} vs {want:?}"
        );
        // Deadlines are strictly increasing, one period apart.
        let d = p.due(11) - p.due(10);
        assert!(d.abs_diff(Duration::from_secs_f64(1.0 / 30.0)) < Duration::from_micros(1));
        // A resync makes frame n due at the new anchor.
        let t1 = t0 + Duration::from_secs(100);
        p.resync(50, t1);
        assert_eq!(p.due(50), t1);
        assert_eq!(p.due(80), t1 + Duration::from_secs(1));
    }

    #[test]
    fn test_pattern_intrinsics_match_the_scene() {
        let k = test_pattern_intrinsics(640, 480);
        assert_eq!((k.fx, k.fy, k.cx, k.cy), (480.0, 480.0, 320.0, 240.0));
    }
}
