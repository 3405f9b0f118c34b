//! Raw payloads to packed RGB8: the one place where pixel layouts are turned
//! into colour.
//!
//! The YUV layouts (`yuv420`, `nv12`, `yuyv`, `uyvy`) are converted by the
//! `yuvutils-rs` crate with BT.601 limited-range coefficients, the conversion
//! OpenCV's `cvtColor` applies to the same layouts (`COLOR_YUV2RGB_I420`,
//! `_NV12`, `_YUYV`, `_UYVY`), so frames that `opencv-video-capture` made
//! with `COLOR_BGR2YUV_I420` come back within two levels of OpenCV's own
//! round trip (its fixed point rounds a little differently; the tests here
//! and `tests/tests/encodings.rs` measure it against the formula and cv2). Chroma is taken per 2x2 (4:2:0) or 2x1
//! (4:2:2) block, as OpenCV does.

use yuvutils_rs::{
    uyvy422_to_rgb, yuv420_to_rgb, yuv_nv12_to_rgb, yuyv422_to_rgb, YuvBiPlanarImage,
    YuvConversionMode, YuvPackedImage, YuvPlanarImage, YuvRange, YuvStandardMatrix,
};

use crate::encoding::Encoding;
use crate::error::{MsgError, Result};
use crate::keys;

/// Packed RGB8 of a raw `width x height` payload, which must be exactly
/// [`Encoding::raw_len`] bytes. `mono16` (a depth image) and the compressed
/// encodings are refused.
pub(crate) fn raw_to_rgb8(enc: Encoding, width: u32, height: u32, data: &[u8]) -> Result<Vec<u8>> {
    match enc {
        Encoding::Mono16 => {
            return Err(MsgError::InvalidValue {
                key: keys::ENCODING,
                reason: NOT_A_PICTURE.into(),
            })
        }
        Encoding::Jpeg | Encoding::Png | Encoding::Webp | Encoding::Bmp => {
            return Err(MsgError::InvalidValue {
                key: keys::ENCODING,
                reason: format!("{enc} is not a raw encoding"),
            })
        }
        _ => {}
    }
    let expected = enc.raw_len(width, height);
    if expected != Some(data.len()) {
        return Err(MsgError::LengthMismatch {
            expected: expected.unwrap_or(0),
            got: data.len(),
            unit: "bytes",
        });
    }
    let (w, h) = (width as usize, height as usize);
    let yuv_err = |e: yuvutils_rs::YuvError| MsgError::Decode {
        encoding: enc.as_str(),
        reason: e.to_string(),
    };
    let mut rgb = vec![0u8; w * h * 3];
    match enc {
        Encoding::Rgb8 => rgb.copy_from_slice(data),
        Encoding::Bgr8 => swizzle::<3>(data, &mut rgb, [2, 1, 0]),
        Encoding::Rgba8 => swizzle::<4>(data, &mut rgb, [0, 1, 2]),
        Encoding::Bgra8 => swizzle::<4>(data, &mut rgb, [2, 1, 0]),
        Encoding::Mono8 => {
            for (o, &v) in rgb.chunks_exact_mut(3).zip(data) {
                o.fill(v);
            }
        }
        Encoding::Yuv420 => {
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let (y, uv) = data.split_at(w * h);
            let (u, v) = uv.split_at(cw * ch);
            let img = YuvPlanarImage {
                y_plane: y,
                y_stride: width,
                u_plane: u,
                u_stride: cw as u32,
                v_plane: v,
                v_stride: cw as u32,
                width,
                height,
            };
            yuv420_to_rgb(&img, &mut rgb, width * 3, LIMITED, BT601).map_err(yuv_err)?;
        }
        Encoding::Nv12 => {
            let (y, uv) = data.split_at(w * h);
            let img = YuvBiPlanarImage {
                y_plane: y,
                y_stride: width,
                uv_plane: uv,
                uv_stride: (w.div_ceil(2) * 2) as u32,
                width,
                height,
            };
            yuv_nv12_to_rgb(
                &img,
                &mut rgb,
                width * 3,
                LIMITED,
                BT601,
                YuvConversionMode::Balanced,
            )
            .map_err(yuv_err)?;
        }
        Encoding::Yuyv | Encoding::Uyvy => {
            let img = YuvPackedImage {
                yuy: data,
                yuy_stride: (w.div_ceil(2) * 4) as u32,
                width,
                height,
            };
            let f = if enc == Encoding::Yuyv {
                yuyv422_to_rgb
            } else {
                uyvy422_to_rgb
            };
            f(&img, &mut rgb, width * 3, LIMITED, BT601).map_err(yuv_err)?;
        }
        // Refused above.
        Encoding::Mono16 | Encoding::Jpeg | Encoding::Png | Encoding::Webp | Encoding::Bmp => {}
    }
    Ok(rgb)
}

/// Why a `mono16` frame has no colours.
pub const NOT_A_PICTURE: &str = "mono16 is a 16-bit depth image (millimetres), not a colour \
     picture: send it to a depth input (viewer, depth-export), or send colour frames";

const LIMITED: YuvRange = YuvRange::Limited;
const BT601: YuvStandardMatrix = YuvStandardMatrix::Bt601;

/// Picks three of the `N` bytes of each pixel, in the order `pick`.
fn swizzle<const N: usize>(src: &[u8], rgb: &mut [u8], pick: [usize; 3]) {
    for (o, p) in rgb.chunks_exact_mut(3).zip(src.chunks_exact(N)) {
        o.copy_from_slice(&[p[pick[0]], p[pick[1]], p[pick[2]]]);
    }
}

/// The values of a `mono16` payload (little-endian byte pairs).
pub(crate) fn mono16_values(data: &[u8]) -> impl Iterator<Item = u16> + '_ {
    data.chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenCV's BT.601 limited-range YUV -> RGB (`cvtColor` COLOR_YUV2RGB_*),
    /// in floating point: the reference the crate's fixed point is held to
    /// (within 2 levels; OpenCV's own fixed point is within 0.5 of it).
    fn bt601(y: u8, u: u8, v: u8) -> [f64; 3] {
        let (y, u, v) = (y as f64 - 16.0, u as f64 - 128.0, v as f64 - 128.0);
        [
            1.164 * y + 1.596 * v,
            1.164 * y - 0.391 * u - 0.813 * v,
            1.164 * y + 2.018 * u,
        ]
        .map(|c| c.clamp(0.0, 255.0))
    }

    fn close(got: &[u8], want: [f64; 3], what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() <= 2.0, "{what}: {got:?} vs {want:?}");
        }
    }

    #[test]
    fn yuv_layouts_use_bt601_limited_range_per_block() {
        // 4x2 image: two chroma blocks (4:2:0) of different colours.
        let (w, h) = (4u32, 2u32);
        let ys = [16u8, 60, 120, 235, 81, 145, 41, 200];
        let (u, v) = ([90u8, 200], [240u8, 30]);
        let mut i420 = ys.to_vec();
        i420.extend(u);
        i420.extend(v);
        let mut nv12 = ys.to_vec();
        nv12.extend([u[0], v[0], u[1], v[1]]);
        // 4:2:2: same chroma on both rows.
        let mut yuyv = Vec::new();
        let mut uyvy = Vec::new();
        for row in 0..2 {
            for b in 0..2 {
                let (y0, y1) = (ys[row * 4 + b * 2], ys[row * 4 + b * 2 + 1]);
                yuyv.extend([y0, u[b], y1, v[b]]);
                uyvy.extend([u[b], y0, v[b], y1]);
            }
        }
        for (enc, data) in [
            (Encoding::Yuv420, i420),
            (Encoding::Nv12, nv12),
            (Encoding::Yuyv, yuyv),
            (Encoding::Uyvy, uyvy),
        ] {
            let rgb = raw_to_rgb8(enc, w, h, &data).unwrap();
            for (i, px) in rgb.chunks(3).enumerate() {
                let b = (i % 4) / 2;
                close(px, bt601(ys[i], u[b], v[b]), &format!("{enc} pixel {i}"));
            }
        }
    }

    #[test]
    fn odd_sizes_round_the_chroma_up() {
        let (w, h) = (3u32, 3u32);
        for enc in [
            Encoding::Yuv420,
            Encoding::Nv12,
            Encoding::Yuyv,
            Encoding::Uyvy,
        ] {
            let n = enc.raw_len(w, h).unwrap();
            // Grey: Y = 126 everywhere, chroma neutral.
            let data: Vec<u8> = match enc {
                Encoding::Yuyv => [126u8, 128].repeat(n / 2),
                Encoding::Uyvy => [128u8, 126].repeat(n / 2),
                _ => (0..n).map(|i| if i < 9 { 126 } else { 128 }).collect(),
            };
            let rgb = raw_to_rgb8(enc, w, h, &data).unwrap();
            assert_eq!(rgb.len(), 27);
            for c in &rgb {
                assert!((*c as i32 - 128).abs() <= 1, "{enc}: {c}");
            }
            let short = &data[..n - 1];
            assert!(matches!(
                raw_to_rgb8(enc, w, h, short),
                Err(MsgError::LengthMismatch { .. })
            ));
        }
    }

    #[test]
    fn packed_and_grey_layouts() {
        let px = [10u8, 20, 30, 40];
        assert_eq!(
            raw_to_rgb8(Encoding::Bgra8, 1, 1, &px).unwrap(),
            [30, 20, 10]
        );
        assert_eq!(
            raw_to_rgb8(Encoding::Rgba8, 1, 1, &px).unwrap(),
            [10, 20, 30]
        );
        assert_eq!(
            raw_to_rgb8(Encoding::Mono8, 2, 1, &px[..2]).unwrap(),
            [10, 10, 10, 20, 20, 20]
        );
        let err = raw_to_rgb8(Encoding::Mono16, 2, 1, &px).unwrap_err();
        assert!(err.to_string().contains("depth image"), "{err}");
        assert_eq!(
            mono16_values(&[0x34, 0x12, 0xff, 0xff]).collect::<Vec<_>>(),
            [0x1234, 0xffff]
        );
    }
}
