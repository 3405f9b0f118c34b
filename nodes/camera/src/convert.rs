//! Pixel conversions and timestamp arithmetic, free of any device.

use da3_msg::image_frame::{decode_compressed, encode_jpeg};
use da3_msg::{DecodeLimits, Encoding};
use eyre::{bail, Result};

/// What a source produced for one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Captured {
    /// Packed RGB8, `width * height * 3` bytes.
    Rgb(Vec<u8>),
    /// A complete JPEG (MJPEG frame from a camera).
    Jpeg(Vec<u8>),
}

/// Turns a captured frame into the payload of the requested output
/// `encoding` (`rgb8`, `bgr8` or `jpeg`). JPEG input passes through
/// untouched for `jpeg`; otherwise it is decoded and must be `width x height`.
pub fn to_output(
    captured: Captured,
    width: u32,
    height: u32,
    encoding: Encoding,
    jpeg_quality: u8,
) -> Result<Vec<u8>> {
    let rgb = match (captured, encoding) {
        (Captured::Jpeg(j), Encoding::Jpeg) => return Ok(j),
        (Captured::Jpeg(j), _) => {
            let (w, h, rgb) = decode_compressed(Encoding::Jpeg, &j, &DecodeLimits::default())?;
            if (w, h) != (width, height) {
                bail!("the camera's JPEG is {w}x{h}, expected {width}x{height}");
            }
            rgb
        }
        (Captured::Rgb(rgb), _) => rgb,
    };
    let n = width as usize * height as usize * 3;
    if rgb.len() != n {
        bail!(
            "frame has {} bytes, expected {n} for {width}x{height} rgb8",
            rgb.len()
        );
    }
    Ok(match encoding {
        Encoding::Rgb8 => rgb,
        Encoding::Bgr8 => rgb_to_bgr(rgb),
        Encoding::Jpeg => encode_jpeg(width, height, &rgb, jpeg_quality)?,
        other => bail!("unsupported output encoding {other}"),
    })
}

/// Swaps R and B in place.
pub fn rgb_to_bgr(mut rgb: Vec<u8>) -> Vec<u8> {
    for p in rgb.chunks_exact_mut(3) {
        p.swap(0, 2);
    }
    rgb
}

/// One YUV (BT.601, limited "video" range 16-235/16-240) pixel to RGB8,
/// in 8-bit fixed point as the usual integer reference does.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16);
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clip(c + 409 * e),
        clip(c - 100 * d - 208 * e),
        clip(c + 516 * d),
    ]
}

/// Converts a YUYV (YUY2, 4:2:2) image to packed RGB8.
///
/// `stride` is the length of one source row in bytes (at least `2 * width`,
/// drivers may pad). Two horizontally adjacent pixels share one U and V; an
/// odd last column uses the first half of a final pair.
pub fn yuyv_to_rgb(src: &[u8], width: u32, height: u32, stride: usize) -> Result<Vec<u8>> {
    let (w, h) = (width as usize, height as usize);
    let row_bytes = w.div_ceil(2) * 4;
    if stride < row_bytes {
        bail!("YUYV stride {stride} is shorter than a {w}-pixel row ({row_bytes} bytes)");
    }
    let needed = if h == 0 {
        0
    } else {
        (h - 1) * stride + row_bytes
    };
    if src.len() < needed {
        bail!(
            "YUYV frame has {} bytes, {needed} needed for {w}x{h} (stride {stride})",
            src.len()
        );
    }
    let mut out = vec![0u8; w * h * 3];
    if w == 0 {
        return Ok(out);
    }
    for (y, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let row = &src[y * stride..y * stride + row_bytes];
        for (pair, q) in row.chunks_exact(4).enumerate() {
            let (y0, u, y1, v) = (q[0], q[1], q[2], q[3]);
            let x = pair * 2;
            dst[x * 3..x * 3 + 3].copy_from_slice(&yuv_to_rgb(y0, u, v));
            if x + 1 < w {
                dst[x * 3 + 3..x * 3 + 6].copy_from_slice(&yuv_to_rgb(y1, u, v));
            }
        }
    }
    Ok(out)
}

/// Converts a capture time on the monotonic clock to the UNIX epoch, given
/// both clocks read "now". `None` when the capture time is 0, in the future
/// (by more than 10 ms) or over 10 s old: not a plausible capture stamp.
pub fn mono_to_epoch_ns(capture_mono_ns: u64, mono_now_ns: u64, epoch_now_ns: u64) -> Option<u64> {
    const SLACK: u64 = 10_000_000;
    const MAX_AGE: u64 = 10_000_000_000;
    if capture_mono_ns == 0 || capture_mono_ns > mono_now_ns + SLACK {
        return None;
    }
    let age = mono_now_ns.saturating_sub(capture_mono_ns);
    if age > MAX_AGE {
        return None;
    }
    epoch_now_ns.checked_sub(age)
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock V4L2 stamps buffers with).
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuv_reference_values() {
        // Black, white and mid grey of the limited range.
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(126, 128, 128), [128, 128, 128]);
        // Out-of-range values clamp.
        assert_eq!(yuv_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(255, 128, 128), [255, 255, 255]);
        // BT.601 primaries (75%-free, full saturation), within 1 step.
        let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 1);
        assert!(
            close(yuv_to_rgb(81, 90, 240), [255, 0, 0]),
            "{:?}",
            yuv_to_rgb(81, 90, 240)
        );
        assert!(
            close(yuv_to_rgb(145, 54, 34), [0, 255, 0]),
            "{:?}",
            yuv_to_rgb(145, 54, 34)
        );
        assert!(
            close(yuv_to_rgb(41, 240, 110), [0, 0, 255]),
            "{:?}",
            yuv_to_rgb(41, 240, 110)
        );
    }

    #[test]
    fn yuyv_image_with_padding_and_odd_width() {
        // 3x2 image: row 0 = red, red, white; row 1 = black, black, blue.
        // Rows are padded to 12 bytes (pairs of 4) + 4 junk bytes.
        let stride = 12;
        #[rustfmt::skip]
        let src = [
            81, 90, 81, 240,   235, 128, 0, 128,   9, 9, 9, 9,
            16, 128, 16, 128,  41, 240, 0, 110,
        ];
        let rgb = yuyv_to_rgb(&src, 3, 2, stride).unwrap();
        assert_eq!(rgb.len(), 18);
        assert_eq!(&rgb[0..3], &yuv_to_rgb(81, 90, 240));
        assert_eq!(&rgb[3..6], &yuv_to_rgb(81, 90, 240));
        assert_eq!(&rgb[6..9], &[255, 255, 255]);
        assert_eq!(&rgb[9..15], &[0, 0, 0, 0, 0, 0]);
        assert_eq!(&rgb[15..18], &yuv_to_rgb(41, 240, 110));
        // Shared chroma: Y differs, U/V shared.
        let rgb = yuyv_to_rgb(&[16, 128, 235, 128], 2, 1, 4).unwrap();
        assert_eq!(rgb, vec![0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn yuyv_short_input_is_an_error() {
        assert!(yuyv_to_rgb(&[0; 7], 2, 2, 4).is_err());
        assert!(
            yuyv_to_rgb(&[0; 8], 4, 1, 4).is_err(),
            "stride shorter than a row"
        );
        assert!(yuyv_to_rgb(&[0; 8], 2, 2, 4).is_ok());
    }

    #[test]
    fn output_encodings() {
        let rgb = vec![10u8, 20, 30, 40, 50, 60];
        assert_eq!(
            to_output(Captured::Rgb(rgb.clone()), 2, 1, Encoding::Rgb8, 90).unwrap(),
            rgb
        );
        assert_eq!(
            to_output(Captured::Rgb(rgb.clone()), 2, 1, Encoding::Bgr8, 90).unwrap(),
            vec![30, 20, 10, 60, 50, 40]
        );
        assert!(to_output(Captured::Rgb(rgb.clone()), 3, 1, Encoding::Rgb8, 90).is_err());
        assert!(to_output(Captured::Rgb(rgb.clone()), 2, 1, Encoding::Png, 90).is_err());

        // JPEG passes through for jpeg, is decoded for rgb8 / bgr8.
        let img: Vec<u8> = (0..16 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let jpeg = encode_jpeg(16, 8, &img, 90).unwrap();
        assert_eq!(
            to_output(Captured::Jpeg(jpeg.clone()), 16, 8, Encoding::Jpeg, 50).unwrap(),
            jpeg
        );
        let dec = to_output(Captured::Jpeg(jpeg.clone()), 16, 8, Encoding::Rgb8, 90).unwrap();
        assert_eq!(dec.len(), 16 * 8 * 3);
        let bgr = to_output(Captured::Jpeg(jpeg.clone()), 16, 8, Encoding::Bgr8, 90).unwrap();
        assert_eq!(bgr, rgb_to_bgr(dec));
        assert!(to_output(Captured::Jpeg(jpeg.clone()), 8, 8, Encoding::Rgb8, 90).is_err());
        assert!(to_output(Captured::Jpeg(vec![1, 2, 3]), 16, 8, Encoding::Rgb8, 90).is_err());

        // RGB is encoded for jpeg.
        let enc = to_output(Captured::Rgb(img), 16, 8, Encoding::Jpeg, 90).unwrap();
        assert_eq!(&enc[..2], &[0xFF, 0xD8]);
    }

    #[test]
    fn monotonic_to_epoch() {
        let epoch_now = 1_700_000_000_000_000_000;
        let mono_now = 5_000_000_000;
        assert_eq!(
            mono_to_epoch_ns(4_990_000_000, mono_now, epoch_now),
            Some(epoch_now - 10_000_000)
        );
        assert_eq!(
            mono_to_epoch_ns(mono_now, mono_now, epoch_now),
            Some(epoch_now)
        );
        assert_eq!(mono_to_epoch_ns(0, mono_now, epoch_now), None);
        assert_eq!(
            mono_to_epoch_ns(mono_now + 1_000_000_000, mono_now, epoch_now),
            None
        );
        assert_eq!(mono_to_epoch_ns(1, 20_000_000_000, epoch_now), None);
        let a = mono_now_ns();
        let b = mono_now_ns();
        assert!(a > 0 && b >= a);
    }
}
