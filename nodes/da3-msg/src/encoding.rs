//! The pixel encodings of an [`ImageFrame`](crate::ImageFrame) payload: their
//! names on the wire and, for raw ones, the exact payload size.
//!
//! The names are those of dora's camera nodes (`opencv-video-capture`'s
//! `ENCODING`) and of ROS `sensor_msgs/Image` (`yuv422` is ROS's name for the
//! UYVY byte order, `yuv422_yuy2` for YUYV, `16UC1` for `mono16`).

/// Pixel encoding of an image frame payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Packed R, G, B.
    Rgb8,
    /// Packed B, G, R.
    Bgr8,
    /// Packed R, G, B, A (alpha ignored).
    Rgba8,
    /// One grey byte per pixel.
    Mono8,
    /// A JPEG file.
    Jpeg,
    /// A PNG file.
    Png,
    /// Packed B, G, R, A (alpha ignored).
    Bgra8,
    /// One unsigned 16-bit value per pixel, little-endian: a depth image in
    /// millimetres (0 = no reading), as depth cameras send it (RealSense
    /// `z16`, ROS `16UC1`). Not a colour picture.
    Mono16,
    /// Planar YUV 4:2:0 (I420): the Y plane (`w x h`), then U, then V
    /// (`ceil(w/2) x ceil(h/2)` each). BT.601, limited range.
    Yuv420,
    /// Semi-planar YUV 4:2:0: the Y plane, then one plane of interleaved U, V
    /// pairs (`ceil(h/2)` rows of `ceil(w/2)` pairs). BT.601, limited range.
    Nv12,
    /// Packed YUV 4:2:2, bytes Y0 U Y1 V per two pixels (YUY2; rows of
    /// `ceil(w/2)` such groups). BT.601, limited range.
    Yuyv,
    /// Packed YUV 4:2:2, bytes U Y0 V Y1 per two pixels (ROS `yuv422`).
    /// BT.601, limited range.
    Uyvy,
    /// A WebP file (lossless or lossy).
    Webp,
    /// A BMP file.
    Bmp,
}

impl Encoding {
    /// Every encoding. The first six keep their places (the fuzz inputs pick
    /// encodings by index).
    pub const ALL: [Encoding; 14] = [
        Encoding::Rgb8,
        Encoding::Bgr8,
        Encoding::Rgba8,
        Encoding::Mono8,
        Encoding::Jpeg,
        Encoding::Png,
        Encoding::Bgra8,
        Encoding::Mono16,
        Encoding::Yuv420,
        Encoding::Nv12,
        Encoding::Yuyv,
        Encoding::Uyvy,
        Encoding::Webp,
        Encoding::Bmp,
    ];

    /// Parses an encoding name, case-insensitively. Aliases: `jpg` (jpeg),
    /// `i420` (yuv420), `yuy2` and `yuv422_yuy2` (yuyv), `yuv422` (uyvy, as
    /// ROS names it), `16uc1` (mono16).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "rgb8" => Self::Rgb8,
            "bgr8" => Self::Bgr8,
            "rgba8" => Self::Rgba8,
            "bgra8" => Self::Bgra8,
            "mono8" => Self::Mono8,
            "mono16" | "16uc1" => Self::Mono16,
            "yuv420" | "i420" => Self::Yuv420,
            "nv12" => Self::Nv12,
            "yuyv" | "yuy2" | "yuv422_yuy2" => Self::Yuyv,
            "uyvy" | "yuv422" => Self::Uyvy,
            "jpeg" | "jpg" => Self::Jpeg,
            "png" => Self::Png,
            "webp" => Self::Webp,
            "bmp" => Self::Bmp,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rgb8 => "rgb8",
            Self::Bgr8 => "bgr8",
            Self::Rgba8 => "rgba8",
            Self::Bgra8 => "bgra8",
            Self::Mono8 => "mono8",
            Self::Mono16 => "mono16",
            Self::Yuv420 => "yuv420",
            Self::Nv12 => "nv12",
            Self::Yuyv => "yuyv",
            Self::Uyvy => "uyvy",
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Bmp => "bmp",
        }
    }

    /// The canonical names, comma-separated (for error messages).
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A whole image file (`width`/`height` optional on the wire).
    pub fn is_compressed(self) -> bool {
        matches!(self, Self::Jpeg | Self::Png | Self::Webp | Self::Bmp)
    }

    /// A colour or grey picture (everything but the `mono16` depth image).
    pub fn is_picture(self) -> bool {
        self != Self::Mono16
    }

    /// Bytes per row of a raw frame's first plane (ROS / Foxglove `RawImage.step`): the Y
    /// plane's for the planar YUV layouts; `None` for compressed encodings, or on overflow.
    pub fn row_bytes(self, width: u32) -> Option<usize> {
        let w = width as usize;
        match self {
            Self::Mono8 | Self::Yuv420 | Self::Nv12 => Some(w),
            Self::Mono16 => w.checked_mul(2),
            Self::Rgb8 | Self::Bgr8 => w.checked_mul(3),
            Self::Rgba8 | Self::Bgra8 => w.checked_mul(4),
            Self::Yuyv | Self::Uyvy => w.div_ceil(2).checked_mul(4),
            Self::Jpeg | Self::Png | Self::Webp | Self::Bmp => None,
        }
    }

    /// Exact payload size in bytes of a raw `width x height` frame; `None`
    /// for compressed encodings, or when the size overflows.
    pub fn raw_len(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let pixels = w.checked_mul(h)?;
        match self {
            Self::Mono8 => Some(pixels),
            Self::Mono16 => pixels.checked_mul(2),
            Self::Rgb8 | Self::Bgr8 => pixels.checked_mul(3),
            Self::Rgba8 | Self::Bgra8 => pixels.checked_mul(4),
            // Y plane, then two (interleaved or not) chroma planes.
            Self::Yuv420 | Self::Nv12 => pixels.checked_add(cw.checked_mul(ch)?.checked_mul(2)?),
            // Four bytes per two pixels, rows rounded up to a whole group.
            Self::Yuyv | Self::Uyvy => cw.checked_mul(4)?.checked_mul(h),
            Self::Jpeg | Self::Png | Self::Webp | Self::Bmp => None,
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases() {
        for e in Encoding::ALL {
            assert_eq!(Encoding::parse(e.as_str()), Some(e));
            assert_eq!(Encoding::parse(&e.as_str().to_uppercase()), Some(e));
        }
        for (alias, e) in [
            ("JPG", Encoding::Jpeg),
            ("I420", Encoding::Yuv420),
            ("yuy2", Encoding::Yuyv),
            ("yuv422_yuy2", Encoding::Yuyv),
            ("yuv422", Encoding::Uyvy),
            ("16UC1", Encoding::Mono16),
        ] {
            assert_eq!(Encoding::parse(alias), Some(e), "{alias}");
        }
        for unknown in ["yuv444", "nv21", "bayer_rggb8", "h264", "", "rgb16"] {
            assert_eq!(Encoding::parse(unknown), None, "{unknown}");
        }
        assert!(Encoding::names().contains("yuv420, nv12, yuyv, uyvy"));
    }

    #[test]
    fn raw_sizes() {
        use Encoding::*;
        assert_eq!(Rgb8.raw_len(4, 2), Some(24));
        assert_eq!(Bgra8.raw_len(4, 2), Some(32));
        assert_eq!(Mono16.raw_len(4, 2), Some(16));
        // I420 / NV12: w*h*3/2 for even sizes, chroma rounded up otherwise.
        assert_eq!(Yuv420.raw_len(640, 480), Some(640 * 480 * 3 / 2));
        assert_eq!(Nv12.raw_len(640, 480), Some(640 * 480 * 3 / 2));
        assert_eq!(Yuv420.raw_len(5, 3), Some(15 + 2 * 3 * 2));
        assert_eq!(Yuyv.raw_len(640, 480), Some(640 * 480 * 2));
        assert_eq!(Uyvy.raw_len(5, 3), Some(3 * 4 * 3));
        for e in [Jpeg, Png, Webp, Bmp] {
            assert!(e.is_compressed());
            assert_eq!(e.raw_len(4, 4), None);
        }
        assert_eq!(Rgba8.raw_len(u32::MAX, u32::MAX), None);
        assert!(!Mono16.is_picture() && Yuv420.is_picture());
    }
}
