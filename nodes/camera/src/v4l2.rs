//! Capture from a V4L2 device (`/dev/videoN`) with mmap buffers.

use std::io;
use std::path::Path;
use std::time::Duration;

use eyre::{bail, eyre, Result};
use v4l::buffer::{Flags as BufFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::format::FourCC;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, Fraction};

use crate::convert::{mono_now_ns, mono_to_epoch_ns, yuyv_to_rgb, Captured};
use crate::PixelFormat;
use da3_msg::node_util::now_ns;

const MJPG: [u8; 4] = *b"MJPG";
const JPEG: [u8; 4] = *b"JPEG";
const YUYV: [u8; 4] = *b"YUYV";
/// Buffers in the mmap ring.
const BUFFERS: u32 = 4;
/// How long the first frame may take after the stream starts.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// The hint appended to every "cannot open" error.
const HINT: &str = "set CAMERA_DEVICE=test-pattern for a synthetic source without a camera, \
                    or CAMERA_DEVICE=/dev/videoN for another one (`v4l2-ctl --list-devices` lists them)";

/// Opens `path` as a V4L2 capture device; the error names the device and
/// suggests `CAMERA_DEVICE=test-pattern`.
pub fn open_device(path: &Path) -> Result<Device> {
    let shown = path.display();
    if !path.exists() {
        bail!("camera device {shown} does not exist: {HINT}");
    }
    let dev = Device::with_path(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => eyre!(
            "cannot open camera device {shown}: permission denied (add the user to the `video` group); {HINT}"
        ),
        _ => eyre!("cannot open camera device {shown}: {e}; {HINT}"),
    })?;
    let caps = dev
        .query_caps()
        .map_err(|e| eyre!("{shown} is not a V4L2 video device ({e}); {HINT}"))?;
    if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
        bail!(
            "{shown} ({}, driver {}) cannot capture single-planar video; {HINT}",
            caps.card,
            caps.driver
        );
    }
    if !caps.capabilities.contains(CapFlags::STREAMING) {
        bail!(
            "{shown} ({}, driver {}) does not support streaming I/O; {HINT}",
            caps.card,
            caps.driver
        );
    }
    Ok(dev)
}

/// The pixel format actually streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Mjpeg,
    Yuyv { stride: usize },
}

/// An open, configured camera.
pub struct Camera {
    // Field order matters: the stream (buffers) goes before the device.
    stream: MmapStream<'static>,
    dev: Device,
    kind: Stream,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    started: bool,
    /// Description for log lines, e.g. `/dev/video0 (HD Webcam, MJPG 640x480 @ 30 fps)`.
    pub describe: String,
}

fn fourcc_str(f: FourCC) -> String {
    f.str()
        .map(str::to_owned)
        .unwrap_or_else(|_| format!("{:?}", f.repr))
}

impl Camera {
    /// Opens and configures the camera: format, size and frame rate.
    /// The driver may adjust size and rate (a warning says so); a pixel
    /// format it does not give is an error.
    pub fn open(
        path: &Path,
        format: PixelFormat,
        width: u32,
        height: u32,
        fps: f64,
    ) -> Result<Self> {
        let shown = path.display();
        let dev = open_device(path)?;
        let caps = dev.query_caps()?;
        let offered: Vec<FourCC> = dev
            .enum_formats()
            .map_err(|e| eyre!("{shown}: cannot list pixel formats: {e}"))?
            .into_iter()
            .map(|d| d.fourcc)
            .collect();
        let offered_str = offered
            .iter()
            .map(|&f| fourcc_str(f))
            .collect::<Vec<_>>()
            .join(", ");
        let has = |c: [u8; 4]| offered.contains(&FourCC::new(&c));
        let want = match format {
            PixelFormat::Auto if has(MJPG) => MJPG,
            PixelFormat::Auto if has(JPEG) => JPEG,
            PixelFormat::Auto if has(YUYV) => YUYV,
            PixelFormat::Auto => bail!(
                "{shown} offers neither MJPEG nor YUYV (it offers: {offered_str}); not supported"
            ),
            PixelFormat::Mjpeg if has(JPEG) && !has(MJPG) => JPEG,
            PixelFormat::Mjpeg => MJPG,
            PixelFormat::Yuyv => YUYV,
        };
        let mut fmt = dev
            .format()
            .map_err(|e| eyre!("{shown}: cannot read the format: {e}"))?;
        fmt.width = width;
        fmt.height = height;
        fmt.fourcc = FourCC::new(&want);
        let fmt = dev.set_format(&fmt).map_err(|e| {
            eyre!(
                "{shown}: cannot set format {}: {e}",
                fourcc_str(FourCC::new(&want))
            )
        })?;
        if fmt.fourcc != FourCC::new(&want) {
            bail!(
                "{shown} does not give {} (it gives {}; offers: {offered_str}): try another FORMAT",
                fourcc_str(FourCC::new(&want)),
                fourcc_str(fmt.fourcc)
            );
        }
        if (fmt.width, fmt.height) != (width, height) {
            tracing::warn!(
                "{shown}: asked for {width}x{height}, the camera gives {}x{}",
                fmt.width,
                fmt.height
            );
        }
        let kind = if want == YUYV {
            Stream::Yuyv {
                stride: (fmt.stride as usize).max(fmt.width as usize * 2),
            }
        } else {
            Stream::Mjpeg
        };
        // Frame interval 1/fps, in milliseconds of a thousandth.
        let denom = (fps * 1000.0).round().clamp(1.0, u32::MAX as f64) as u32;
        let got_fps = match dev.set_params(&Parameters::new(Fraction::new(1000, denom))) {
            Ok(p) if p.interval.numerator > 0 => {
                p.interval.denominator as f64 / p.interval.numerator as f64
            }
            Ok(_) => fps,
            Err(e) => {
                tracing::warn!("{shown}: cannot set {fps} fps ({e}); using the camera's rate");
                fps
            }
        };
        if (got_fps - fps).abs() > 0.01 * fps {
            tracing::warn!("{shown}: asked for {fps} fps, the camera gives {got_fps:.2}");
        }
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, BUFFERS)
            .map_err(|e| eyre!("{shown}: cannot map capture buffers: {e}"))?;
        stream.set_timeout(FIRST_FRAME_TIMEOUT);
        let describe = format!(
            "{shown} ({}, {} {}x{} @ {got_fps:.1} fps)",
            caps.card,
            fourcc_str(fmt.fourcc),
            fmt.width,
            fmt.height
        );
        Ok(Self {
            stream,
            dev,
            kind,
            width: fmt.width,
            height: fmt.height,
            fps: got_fps,
            started: false,
            describe,
        })
    }

    /// `true` when the MJPEG stream can pass through undecoded.
    pub fn is_mjpeg(&self) -> bool {
        self.kind == Stream::Mjpeg
    }

    /// Waits up to `timeout` for a frame to be ready; `Ok(false)` on timeout.
    /// Before the first frame (stream not started yet) it returns at once.
    pub fn wait_ready(&self, timeout: Duration) -> Result<bool> {
        if !self.started {
            return Ok(true);
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        Ok(self.dev.handle().poll(libc::POLLIN, ms)? > 0)
    }

    /// Dequeues the next frame: its pixels and its capture time (ns since the
    /// UNIX epoch; from the buffer's monotonic stamp when it has one).
    ///
    /// The outer error is fatal (the stream is broken); the inner one is a
    /// bad frame that can be skipped.
    pub fn next_frame(&mut self) -> Result<(Result<Captured>, u64)> {
        let (buf, meta) = self.stream.next().map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                eyre!("no frame from the camera within {FIRST_FRAME_TIMEOUT:?}")
            } else {
                eyre!("cannot dequeue a frame: {e}")
            }
        })?;
        self.started = true;
        let epoch_now = now_ns();
        let stamp = if meta.flags & BufFlags::TIMESTAMP_MASK == BufFlags::TIMESTAMP_MONOTONIC {
            let ts = Duration::from(meta.timestamp).as_nanos() as u64;
            mono_to_epoch_ns(ts, mono_now_ns(), epoch_now).unwrap_or(epoch_now)
        } else {
            epoch_now
        };
        if meta.flags.contains(BufFlags::ERROR) {
            let e = eyre!("the driver flagged frame {} as corrupt", meta.sequence);
            return Ok((Err(e), stamp));
        }
        let used = (meta.bytesused as usize).min(buf.len());
        let captured = match self.kind {
            Stream::Mjpeg if used == 0 => Err(eyre!("empty MJPEG frame {}", meta.sequence)),
            Stream::Mjpeg => Ok(Captured::Jpeg(buf[..used].to_vec())),
            Stream::Yuyv { stride } => {
                yuyv_to_rgb(buf, self.width, self.height, stride).map(Captured::Rgb)
            }
        };
        Ok((captured, stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_names_it_and_suggests_test_pattern() {
        let path = Path::new("/dev/video-that-does-not-exist-77");
        let e = format!("{:#}", open_device(path).err().expect("no such device"));
        assert!(e.contains("/dev/video-that-does-not-exist-77"), "{e}");
        assert!(e.contains("does not exist"), "{e}");
        assert!(e.contains("DEVICE=test-pattern"), "{e}");
        assert!(!e.contains('\n'), "not one line: {e}");
        let e = match Camera::open(path, PixelFormat::Auto, 640, 480, 30.0) {
            Ok(_) => panic!("opened a missing device"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("DEVICE=test-pattern"), "{e}");
    }

    #[test]
    fn non_v4l2_file_is_refused() {
        let e = format!(
            "{:#}",
            open_device(Path::new("/dev/null"))
                .err()
                .expect("not a camera")
        );
        assert!(e.contains("/dev/null is not a V4L2 video device"), "{e}");
        assert!(e.contains("DEVICE=test-pattern"), "{e}");
    }
}
