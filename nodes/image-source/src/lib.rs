//! `image-source`: a dora node that sends the images of a folder, a glob, a
//! list of files or a video file as [`da3_msg::ImageFrame`]s on `image`.
//!
//! See `nodes/image-source/README.md` for ports, env vars and a YAML snippet.

pub mod sources;
#[cfg(feature = "video")]
pub mod video;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use da3_msg::image_frame::{encode_jpeg, encode_png};
use da3_msg::node_util::{linger, now_ns, send_frame, Env};
use da3_msg::source::SourceConfig;
use da3_msg::{Encoding, FrameInfo, ImageFrame, Intrinsics};
use dora_node_api::{DoraNode, Event, EventStream};
use eyre::{bail, eyre, Context, Result};
use sources::{limit_size, FrameReader, RawFrame, SourceSpec};

/// The output port.
pub const OUTPUT: &str = "image";

/// When to send the next frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// On every input event (`tick`, or any other input).
    Tick,
    /// At a fixed rate.
    Fps(f64),
    /// As fast as dora takes them (`FPS=0`).
    Unpaced,
}

/// Node configuration, from env vars.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceSpec,
    pub pace: Pace,
    pub looping: bool,
    /// Send every Nth image (`EVERY`).
    pub every: usize,
    pub max_size: Option<u32>,
    pub encoding: Encoding,
    pub jpeg_quality: u8,
    pub strict: bool,
    pub camera: String,
    pub max_frames: Option<u64>,
    pub linger: Duration,
    /// Intrinsics of the images at their original size (`INTRINSICS=fx,fy,cx,cy`).
    pub intrinsics: Option<Intrinsics>,
}

/// The env vars image-source reads (its `dora-node.yml` lists the same).
pub const ENV_VARS: &[&[&str]] = &[
    SourceConfig::ENV_VARS,
    &["SOURCE", "EVERY", "MAX_SIZE", "LOOP", "STRICT"],
];

/// Old names still accepted, with a deprecation warning: `STRIDE` is
/// dora-da3's window stride, every-Nth-image here is `EVERY` (as in depth-export).
pub const RENAMED: &[(&str, &str)] = &[("STRIDE", "EVERY")];

/// Encodings image-source sends.
pub const ENCODINGS: &[Encoding] = &[
    Encoding::Rgb8,
    Encoding::Bgr8,
    Encoding::Jpeg,
    Encoding::Png,
];

impl Config {
    /// Reads the env vars; any invalid value is one clear error line.
    pub fn from_env(default_camera: &str) -> Result<Self> {
        let env = Env::new(ENV_VARS).with_renamed(RENAMED);
        let source_str: String = env.opt("SOURCE")?.ok_or_else(|| {
            eyre!("SOURCE is not set: give a folder, a glob, a comma-separated list of images or a video file")
        })?;
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let source = SourceSpec::resolve(&source_str, &base)?;
        let every: usize = env.or("EVERY", 1)?;
        if every == 0 {
            bail!("invalid EVERY=0: must be at least 1");
        }
        let max_size: Option<u32> = env.opt("MAX_SIZE")?;
        if max_size == Some(0) {
            bail!("invalid MAX_SIZE=0: must be at least 1 pixel");
        }
        let src = SourceConfig::from_env(&env, ENCODINGS, default_camera)?;
        let looping = env.flag("LOOP", false)?;
        let strict = env.flag("STRICT", false)?;
        env.finish();
        let pace = match src.fps {
            None => Pace::Tick,
            Some(0.0) => Pace::Unpaced,
            Some(f) => Pace::Fps(f),
        };
        Ok(Self {
            source,
            pace,
            looping,
            every,
            max_size,
            encoding: src.encoding,
            jpeg_quality: src.jpeg_quality,
            strict,
            camera: src.camera,
            max_frames: src.max_frames,
            linger: src.linger,
            intrinsics: src.intrinsics,
        })
    }
}

/// Produces the frames to send, in order, applying `EVERY`, loop and size limit.
pub struct FrameProducer {
    config: Config,
    reader: FrameReader,
    next_id: u64,
    pass_had_frame: bool,
    /// Frames skipped because they could not be read (non-strict mode).
    pub skipped: u64,
}

impl FrameProducer {
    pub fn new(config: Config) -> Result<Self> {
        let reader = FrameReader::open(&config.source)?;
        Ok(Self {
            config,
            reader,
            next_id: 0,
            pass_had_frame: false,
            skipped: 0,
        })
    }

    fn next_raw(&mut self) -> Result<Option<RawFrame>> {
        loop {
            if self.config.max_frames.is_some_and(|m| self.next_id >= m) {
                return Ok(None);
            }
            match self.reader.next_frame() {
                Some(Ok(f)) => {
                    self.pass_had_frame = true;
                    for _ in 1..self.config.every {
                        if !self.reader.skip()? {
                            break;
                        }
                    }
                    return Ok(Some(f));
                }
                Some(Err(e)) => {
                    if self.config.strict {
                        return Err(e.wrap_err("STRICT=1: stopping at an unreadable input"));
                    }
                    self.skipped += 1;
                    tracing::warn!("skipping unreadable input: {e:#}");
                }
                None => {
                    if self.config.looping && self.pass_had_frame {
                        self.reader = FrameReader::open(&self.config.source)?;
                        self.pass_had_frame = false;
                        continue;
                    }
                    if self.config.looping {
                        bail!("LOOP=1 but no input could be read in a whole pass");
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The next message-ready frame, `None` when the source is exhausted.
    /// The frame after it is read ahead so the last one carries `last: true`.
    pub fn next_frame(&mut self) -> Result<Option<ImageFrame>> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        let (w0, h0) = (raw.width, raw.height);
        let raw = match self.config.max_size {
            Some(m) => limit_size(raw, m)?,
            None => raw,
        };
        let data = match self.config.encoding {
            Encoding::Rgb8 => raw.rgb,
            Encoding::Bgr8 => raw
                .rgb
                .chunks_exact(3)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect(),
            Encoding::Jpeg => {
                encode_jpeg(raw.width, raw.height, &raw.rgb, self.config.jpeg_quality)
                    .wrap_err_with(|| format!("cannot encode {} as JPEG", raw.origin))?
            }
            Encoding::Png => encode_png(raw.width, raw.height, &raw.rgb)
                .wrap_err_with(|| format!("cannot encode {} as PNG", raw.origin))?,
            other => bail!("unsupported output encoding {other}"),
        };
        let intrinsics = self
            .config
            .intrinsics
            .map(|k| k.scaled(raw.width as f64 / w0 as f64, raw.height as f64 / h0 as f64));
        let frame = ImageFrame {
            encoding: self.config.encoding,
            width: raw.width,
            height: raw.height,
            data,
            info: FrameInfo {
                frame_id: Some(self.next_id),
                stamp_ns: Some(now_ns()),
                camera: Some(self.config.camera.clone()),
                last: false,
            },
            intrinsics,
        };
        self.next_id += 1;
        Ok(Some(frame))
    }
}

/// Runs the node on an initialised dora node and event stream.
pub fn run(node: &mut DoraNode, events: &mut EventStream, config: Config) -> Result<()> {
    let pace = config.pace;
    let linger_for = config.linger;
    let mut producer = FrameProducer::new(config)?;
    let mut pending = producer.next_frame()?;
    let mut sent = 0u64;
    let started = Instant::now();
    let mut stopped = false;
    while let Some(mut frame) = pending.take() {
        // Wait for our turn.
        match pace {
            Pace::Unpaced => {
                if let Ok(Event::Stop(_)) = events.try_recv() {
                    stopped = true;
                }
            }
            Pace::Fps(fps) => {
                let due = started + Duration::from_secs_f64(sent as f64 / fps);
                loop {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match events.recv_timeout(left) {
                        None | Some(Event::Stop(_)) => {
                            stopped = true;
                            break;
                        }
                        _ => {}
                    }
                }
            }
            Pace::Tick => loop {
                match events.recv() {
                    None | Some(Event::Stop(_)) => {
                        stopped = true;
                        break;
                    }
                    Some(Event::Input { .. }) => break,
                    Some(_) => {}
                }
            },
        }
        if stopped {
            break;
        }
        pending = producer.next_frame()?;
        frame.info.last = pending.is_none();
        frame.info.stamp_ns = Some(now_ns());
        send_frame(node, OUTPUT, &frame)
            .wrap_err_with(|| format!("cannot send frame {:?}", frame.info.frame_id))?;
        sent += 1;
    }
    tracing::info!(
        "image-source: sent {sent} frames, skipped {} unreadable inputs{}",
        producer.skipped,
        if stopped { " (stopped)" } else { "" }
    );
    if !stopped {
        linger(events, linger_for);
    }
    Ok(())
}

/// Entry point of the `image-source` binary.
pub fn lib_main() -> Result<()> {
    da3_msg::node_util::init_logging();
    let (mut node, mut events) = DoraNode::init_from_env()?;
    let default_camera = node.id().to_string();
    let config = Config::from_env(&default_camera).wrap_err("image-source: bad configuration")?;
    run(&mut node, &mut events, config)
}
