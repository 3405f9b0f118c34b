//! Test payloads in every encoding of the conventions, made from one RGB8
//! picture: what a camera node would send for it. YUV layouts are made with
//! `yuvutils-rs` (BT.601 limited range, the inverse of what `da3-msg`
//! decodes), files with the `image` crate (through `da3-msg`'s encoders).

use da3_msg::image_frame::{encode_bmp, encode_jpeg, encode_png, encode_webp};
use da3_msg::Encoding;
use eyre::{eyre, Result};
use yuvutils_rs::{
    rgb_to_yuv420, yuv420_to_uyvy422, yuv420_to_yuyv422, BufferStoreMut, YuvChromaSubsampling,
    YuvConversionMode, YuvPackedImageMut, YuvPlanarImageMut, YuvRange, YuvStandardMatrix,
};

/// Depth in millimetres that [`encode_as`] gives a pixel of `mono16`: the
/// green value times 20 (0-5100 mm), so that a test can predict it.
pub fn mono16_mm(rgb: [u8; 3]) -> u16 {
    rgb[1] as u16 * 20
}

/// The payload of a `w x h` RGB8 picture in `enc` (JPEG at quality 95,
/// lossless WebP, `mono16` as [`mono16_mm`] little-endian).
pub fn encode_as(enc: Encoding, w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    eyre::ensure!(
        rgb.len() == w as usize * h as usize * 3,
        "{w}x{h} RGB8 needs {} bytes, got {}",
        w as usize * h as usize * 3,
        rgb.len()
    );
    let px = rgb.chunks_exact(3);
    Ok(match enc {
        Encoding::Rgb8 => rgb.to_vec(),
        Encoding::Bgr8 => px.flat_map(|p| [p[2], p[1], p[0]]).collect(),
        Encoding::Rgba8 => px.flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        Encoding::Bgra8 => px.flat_map(|p| [p[2], p[1], p[0], 255]).collect(),
        Encoding::Mono8 => px.map(|p| p[1]).collect(),
        Encoding::Mono16 => px
            .flat_map(|p| mono16_mm([p[0], p[1], p[2]]).to_le_bytes())
            .collect(),
        Encoding::Jpeg => encode_jpeg(w, h, rgb, 95)?,
        Encoding::Png => encode_png(w, h, rgb)?,
        Encoding::Webp => encode_webp(w, h, rgb)?,
        Encoding::Bmp => encode_bmp(w, h, rgb)?,
        Encoding::Yuv420 | Encoding::Nv12 | Encoding::Yuyv | Encoding::Uyvy => yuv(enc, w, h, rgb)?,
    })
}

fn yuv(enc: Encoding, w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let err = |e: yuvutils_rs::YuvError| eyre!("{enc}: {e}");
    let mut planar = YuvPlanarImageMut::<u8>::alloc(w, h, YuvChromaSubsampling::Yuv420);
    rgb_to_yuv420(
        &mut planar,
        rgb,
        w * 3,
        YuvRange::Limited,
        YuvStandardMatrix::Bt601,
        YuvConversionMode::Balanced,
    )
    .map_err(err)?;
    let (y, u, v) = (
        planar.y_plane.borrow(),
        planar.u_plane.borrow(),
        planar.v_plane.borrow(),
    );
    Ok(match enc {
        Encoding::Yuv420 => [y, u, v].concat(),
        Encoding::Nv12 => {
            let mut out = y.to_vec();
            out.extend(u.iter().zip(v).flat_map(|(a, b)| [*a, *b]));
            out
        }
        _ => {
            let len = enc
                .raw_len(w, h)
                .ok_or_else(|| eyre!("{w}x{h} overflows"))?;
            let mut packed = YuvPackedImageMut {
                yuy: BufferStoreMut::Owned(vec![0u8; len]),
                yuy_stride: (w as usize).div_ceil(2) as u32 * 4,
                width: w,
                height: h,
            };
            let fixed = planar.to_fixed();
            if enc == Encoding::Yuyv {
                yuv420_to_yuyv422(&mut packed, &fixed).map_err(err)?;
            } else {
                yuv420_to_uyvy422(&mut packed, &fixed).map_err(err)?;
            }
            packed.yuy.borrow().to_vec()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3_msg::{DecodeLimits, ImageFrame};

    #[test]
    fn every_encoding_decodes_back_to_the_picture() {
        let (w, h) = (10u32, 6u32);
        // Smooth colours: 4:2:0 subsampling costs little on them.
        let rgb: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [40 + x as u8 * 3, 90 + y as u8 * 4, 150]))
            .collect();
        for enc in Encoding::ALL {
            let data = encode_as(enc, w, h, &rgb).unwrap();
            let mut f = ImageFrame::rgb8(w, h, data);
            f.encoding = enc;
            let (arr, p) = f.to_message();
            let back = ImageFrame::from_message(arr.as_ref(), &p).unwrap();
            if enc == Encoding::Mono16 {
                let want: Vec<u16> = rgb
                    .chunks(3)
                    .map(|p| mono16_mm([p[0], p[1], p[2]]))
                    .collect();
                assert_eq!(back.mono16_values().unwrap(), want);
                continue;
            }
            let (dw, dh, px) = back.to_rgb8(&DecodeLimits::default()).unwrap();
            assert_eq!((dw, dh), (w, h), "{enc}");
            let worst = px
                .iter()
                .zip(&rgb)
                .enumerate()
                .filter(|(i, _)| enc != Encoding::Mono8 || i % 3 == 1)
                .map(|(_, (a, b))| (*a as i32 - *b as i32).abs())
                .max()
                .unwrap_or(0);
            let bound = match enc {
                Encoding::Jpeg => 6,
                Encoding::Yuv420 | Encoding::Nv12 | Encoding::Yuyv | Encoding::Uyvy => 4,
                _ => 0,
            };
            assert!(worst <= bound, "{enc}: worst {worst} > {bound}");
        }
    }
}
