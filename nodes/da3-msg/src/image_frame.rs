//! Image frames: a flat `UInt8Array` plus `encoding`, `width`, `height`
//! (`mono16` depth images also as a `UInt16Array`).
//!
//! Compatible with what dora's `opencv-video-capture` and camera nodes send
//! (`encoding` + `width` + `height` on raw data, or a whole JPEG/PNG/WebP/BMP
//! file); the encodings are listed in [`Encoding`].

use std::io::Cursor;

use crate::arrow::array::{Array, ArrayRef, UInt16Array, UInt8Array};
use crate::arrow::datatypes::DataType;
pub use crate::encoding::Encoding;
use crate::error::{MsgError, Result};
use crate::keys;
use crate::meta::{opt_int, opt_str, req_dim, FrameInfo, Intrinsics};
use crate::pixels::{mono16_values, raw_to_rgb8};
use dora_node_api::{MetadataParameters, Parameter};

/// Safety limits applied when decoding frames from the outside world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 64 megapixels: larger than any camera a robot carries, small enough
    /// that a corrupt header cannot make a node allocate gigabytes.
    fn default() -> Self {
        Self {
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    fn check(&self, width: u64, height: u64) -> Result<()> {
        if width.saturating_mul(height) > self.max_pixels {
            return Err(MsgError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }
}

/// One image of one camera.
///
/// For raw encodings `width`/`height` describe `data`; for compressed ones
/// (`jpeg`, `png`, `webp`, `bmp`) they are optional on the wire (0 when
/// unknown) and come from the file header. A `mono16` frame keeps its values
/// as little-endian byte pairs in `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFrame {
    pub encoding: Encoding,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    pub info: FrameInfo,
    /// Known intrinsics of the camera at this image size, if the source has them.
    pub intrinsics: Option<Intrinsics>,
}

impl ImageFrame {
    /// A raw RGB frame.
    pub fn rgb8(width: u32, height: u32, data: Vec<u8>) -> Self {
        Self {
            encoding: Encoding::Rgb8,
            width,
            height,
            data,
            info: FrameInfo::default(),
            intrinsics: None,
        }
    }

    /// Encodes the frame as a dora message (`mono16` as a `UInt16Array`, as
    /// depth cameras send it; everything else as a `UInt8Array`).
    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let mut params = MetadataParameters::new();
        params.insert(
            keys::ENCODING.into(),
            Parameter::String(self.encoding.as_str().into()),
        );
        params.insert(keys::PRIMITIVE.into(), Parameter::String("image".into()));
        if self.width > 0 && self.height > 0 {
            params.insert(keys::WIDTH.into(), Parameter::Integer(self.width as i64));
            params.insert(keys::HEIGHT.into(), Parameter::Integer(self.height as i64));
        }
        self.info.write(&mut params);
        if let Some(k) = &self.intrinsics {
            k.write(&mut params);
        }
        let array: ArrayRef =
            if self.encoding == Encoding::Mono16 && self.data.len().is_multiple_of(2) {
                std::sync::Arc::new(UInt16Array::from(
                    mono16_values(&self.data).collect::<Vec<_>>(),
                ))
            } else {
                std::sync::Arc::new(UInt8Array::from(self.data.clone()))
            };
        (array, params)
    }

    /// Decodes a dora message, checking the payload against the metadata.
    ///
    /// Raw encodings need `width` and `height` and a payload of exactly
    /// [`Encoding::raw_len`] bytes (`mono16`: also a `UInt16Array` of
    /// `width * height` values). Compressed payloads are not decoded here
    /// (see [`ImageFrame::to_rgb8`]).
    pub fn from_message(data: &dyn Array, params: &MetadataParameters) -> Result<Self> {
        let enc_name = opt_str(params, keys::ENCODING)?.ok_or(MsgError::MissingKey {
            key: keys::ENCODING,
        })?;
        let encoding = Encoding::parse(enc_name).ok_or_else(|| MsgError::InvalidValue {
            key: keys::ENCODING,
            reason: format!(
                "unknown encoding `{enc_name}` (expected one of {})",
                Encoding::names()
            ),
        })?;
        let bytes = if encoding == Encoding::Mono16 && data.data_type() == &DataType::UInt16 {
            u16_payload(data)?
        } else {
            u8_payload(data, encoding)?.to_vec()
        };
        let (width, height) = if !encoding.is_compressed() {
            let w = req_dim(params, keys::WIDTH)?;
            let h = req_dim(params, keys::HEIGHT)?;
            let expected = encoding
                .raw_len(w, h)
                .ok_or_else(|| MsgError::InvalidValue {
                    key: keys::WIDTH,
                    reason: format!("{w}x{h} overflows"),
                })?;
            if bytes.len() != expected {
                return Err(MsgError::LengthMismatch {
                    expected,
                    got: bytes.len(),
                    unit: "bytes",
                });
            }
            (w, h)
        } else {
            // Optional for compressed images, but must be sane when present.
            let w = opt_int(params, keys::WIDTH)?.unwrap_or(0);
            let h = opt_int(params, keys::HEIGHT)?.unwrap_or(0);
            if w < 0 || w > u32::MAX as i64 {
                return Err(MsgError::InvalidValue {
                    key: keys::WIDTH,
                    reason: format!("{w} is not a size"),
                });
            }
            if h < 0 || h > u32::MAX as i64 {
                return Err(MsgError::InvalidValue {
                    key: keys::HEIGHT,
                    reason: format!("{h} is not a size"),
                });
            }
            if bytes.is_empty() {
                return Err(MsgError::LengthMismatch {
                    expected: 1,
                    got: 0,
                    unit: "bytes (empty compressed image)",
                });
            }
            (w as u32, h as u32)
        };
        Ok(Self {
            encoding,
            width,
            height,
            data: bytes,
            info: FrameInfo::read(params)?,
            intrinsics: Intrinsics::read(params)?,
        })
    }

    /// Decodes any picture encoding to packed RGB8 `(width, height, pixels)`;
    /// a `mono16` depth image is refused (it has no colours).
    ///
    /// For compressed files the header's size wins; when the metadata also
    /// gives a size, the two must agree.
    pub fn to_rgb8(&self, limits: &DecodeLimits) -> Result<(u32, u32, Vec<u8>)> {
        if self.encoding.is_compressed() {
            let (w, h, rgb) = decode_compressed(self.encoding, &self.data, limits)?;
            if (self.width != 0 && self.width != w) || (self.height != 0 && self.height != h) {
                return Err(MsgError::InvalidValue {
                    key: keys::WIDTH,
                    reason: format!(
                        "metadata says {}x{} but the {} data is {w}x{h}",
                        self.width, self.height, self.encoding
                    ),
                });
            }
            return Ok((w, h, rgb));
        }
        limits.check(self.width as u64, self.height as u64)?;
        let rgb = raw_to_rgb8(self.encoding, self.width, self.height, &self.data)?;
        Ok((self.width, self.height, rgb))
    }

    /// The values of a `mono16` frame (millimetres, 0 = no reading), row-major.
    pub fn mono16_values(&self) -> Result<Vec<u16>> {
        if self.encoding != Encoding::Mono16 {
            return Err(MsgError::InvalidValue {
                key: keys::ENCODING,
                reason: format!("expected mono16, found {}", self.encoding),
            });
        }
        let n = Encoding::Mono16
            .raw_len(self.width, self.height)
            .unwrap_or(usize::MAX);
        if self.data.len() != n {
            return Err(MsgError::LengthMismatch {
                expected: n,
                got: self.data.len(),
                unit: "bytes",
            });
        }
        Ok(mono16_values(&self.data).collect())
    }
}

/// A `mono16` payload sent as 16-bit values, as little-endian byte pairs.
fn u16_payload(data: &dyn Array) -> Result<Vec<u8>> {
    let arr = data
        .as_any()
        .downcast_ref::<UInt16Array>()
        .ok_or(MsgError::WrongArrowType {
            expected: "UInt16",
            found: "an unknown UInt16 array type".into(),
        })?;
    if arr.null_count() > 0 {
        return Err(MsgError::Nulls);
    }
    Ok(arr.values().iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn u8_payload(data: &dyn Array, encoding: Encoding) -> Result<&[u8]> {
    if data.data_type() != &DataType::UInt8 {
        return Err(MsgError::WrongArrowType {
            expected: if encoding == Encoding::Mono16 {
                "UInt8 or UInt16"
            } else {
                "UInt8"
            },
            found: format!("{}", data.data_type()),
        });
    }
    let arr = data
        .as_any()
        .downcast_ref::<UInt8Array>()
        .ok_or(MsgError::WrongArrowType {
            expected: "UInt8",
            found: "an unknown UInt8 array type".into(),
        })?;
    if arr.null_count() > 0 {
        return Err(MsgError::Nulls);
    }
    Ok(arr.values())
}

/// Decodes a JPEG, PNG, WebP or BMP file to RGB8, refusing images over
/// `limits` before allocating their pixels.
pub fn decode_compressed(
    encoding: Encoding,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(u32, u32, Vec<u8>)> {
    let format = match encoding {
        Encoding::Jpeg => image::ImageFormat::Jpeg,
        Encoding::Png => image::ImageFormat::Png,
        Encoding::Webp => image::ImageFormat::WebP,
        Encoding::Bmp => image::ImageFormat::Bmp,
        _ => {
            return Err(MsgError::InvalidValue {
                key: keys::ENCODING,
                reason: format!("{encoding} is not a compressed encoding"),
            })
        }
    };
    let decode_err = |e: image::ImageError| MsgError::Decode {
        encoding: encoding.as_str(),
        reason: e.to_string(),
    };
    // A PNG's size is at a fixed place: check it before the decoder sees it,
    // so that an image over the limit is named as such (`TooLarge`) even when
    // the decoder's own allocation limit would trip first.
    if let (Encoding::Png, Some((w, h))) = (encoding, png_size(bytes)) {
        limits.check(w as u64, h as u64)?;
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(l);
    let (w, h) = reader.into_dimensions().map_err(decode_err)?;
    limits.check(w as u64, h as u64)?;
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(l);
    let img = reader.decode().map_err(decode_err)?;
    let rgb = img.into_rgb8();
    Ok((rgb.width(), rgb.height(), rgb.into_raw()))
}

/// Width and height from a PNG's `IHDR` chunk, when `bytes` starts like a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if bytes.len() < 24 || bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let h = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    Some((w, h))
}

/// Encodes packed RGB8 pixels as JPEG of the given quality (1-100).
pub fn encode_jpeg(width: u32, height: u32, rgb: &[u8], quality: u8) -> eyre::Result<Vec<u8>> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
    image::ImageEncoder::write_image(enc, rgb, width, height, image::ExtendedColorType::Rgb8)?;
    Ok(out)
}

/// Encodes packed RGB8 pixels as PNG.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> eyre::Result<Vec<u8>> {
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    image::ImageEncoder::write_image(enc, rgb, width, height, image::ExtendedColorType::Rgb8)?;
    Ok(out)
}

/// Encodes packed RGB8 pixels as lossless WebP.
pub fn encode_webp(width: u32, height: u32, rgb: &[u8]) -> eyre::Result<Vec<u8>> {
    let mut out = Vec::new();
    let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
    image::ImageEncoder::write_image(enc, rgb, width, height, image::ExtendedColorType::Rgb8)?;
    Ok(out)
}

/// Encodes packed RGB8 pixels as a 24-bit BMP.
pub fn encode_bmp(width: u32, height: u32, rgb: &[u8]) -> eyre::Result<Vec<u8>> {
    let mut out = Vec::new();
    let enc = image::codecs::bmp::BmpEncoder::new(&mut out);
    image::ImageEncoder::write_image(enc, rgb, width, height, image::ExtendedColorType::Rgb8)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::{Float32Array, Int32Array, UInt16Array};
    use std::sync::Arc;

    fn pattern(w: u32, h: u32, ch: usize) -> Vec<u8> {
        (0..(w * h) as usize * ch)
            .map(|i| (i * 37 % 251) as u8)
            .collect()
    }

    fn frame(enc: Encoding, w: u32, h: u32, data: Vec<u8>) -> ImageFrame {
        ImageFrame {
            encoding: enc,
            width: w,
            height: h,
            data,
            info: FrameInfo {
                frame_id: Some(7),
                stamp_ns: Some(1_700_000_000_123_456_789),
                camera: Some("front".into()),
                last: true,
            },
            intrinsics: Some(Intrinsics {
                fx: 500.0,
                fy: 501.0,
                cx: 320.5,
                cy: 240.25,
            }),
        }
    }

    #[test]
    fn every_encoding_round_trips_and_decodes() {
        let (w, h) = (5u32, 3u32);
        let rgb = pattern(w, h, 3);
        let cases: Vec<(Encoding, Vec<u8>, Vec<u8>)> = vec![
            (Encoding::Rgb8, rgb.clone(), rgb.clone()),
            (
                Encoding::Bgr8,
                rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect(),
                rgb.clone(),
            ),
            (
                Encoding::Rgba8,
                rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 9]).collect(),
                rgb.clone(),
            ),
            (
                Encoding::Mono8,
                pattern(w, h, 1),
                pattern(w, h, 1).iter().flat_map(|&v| [v, v, v]).collect(),
            ),
            (
                Encoding::Bgra8,
                rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0], 7]).collect(),
                rgb.clone(),
            ),
            (Encoding::Png, encode_png(w, h, &rgb).unwrap(), rgb.clone()),
            (
                Encoding::Webp,
                encode_webp(w, h, &rgb).unwrap(),
                rgb.clone(),
            ),
            (Encoding::Bmp, encode_bmp(w, h, &rgb).unwrap(), rgb.clone()),
        ];
        for (enc, payload, expected_rgb) in cases {
            let f = frame(enc, w, h, payload);
            let (arr, params) = f.to_message();
            let back = ImageFrame::from_message(arr.as_ref(), &params).unwrap();
            assert_eq!(back, f, "{enc}");
            let (dw, dh, px) = back.to_rgb8(&DecodeLimits::default()).unwrap();
            assert_eq!((dw, dh), (w, h), "{enc}");
            assert_eq!(px, expected_rgb, "{enc}");
        }
        // JPEG is lossy: check size and closeness.
        let (w, h) = (32u32, 16u32);
        let flat: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 100, 50]).collect();
        let f = frame(Encoding::Jpeg, 0, 0, encode_jpeg(w, h, &flat, 95).unwrap());
        let (arr, params) = f.to_message();
        let back = ImageFrame::from_message(arr.as_ref(), &params).unwrap();
        let (dw, dh, px) = back.to_rgb8(&DecodeLimits::default()).unwrap();
        assert_eq!((dw, dh), (w, h));
        let err = px
            .iter()
            .zip(&flat)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(err <= 4, "jpeg error {err}");
    }

    #[test]
    fn mono16_is_a_depth_image_sent_as_u16_or_bytes() {
        let mm: Vec<u16> = vec![0, 1, 999, 1000, 4321, 65535];
        let bytes: Vec<u8> = mm.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = frame(Encoding::Mono16, 3, 2, bytes.clone());
        let (arr, params) = f.to_message();
        assert_eq!(arr.data_type(), &DataType::UInt16);
        let back = ImageFrame::from_message(arr.as_ref(), &params).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.mono16_values().unwrap(), mm);
        // The same values as little-endian bytes (ROS `16UC1`, is_bigendian 0).
        let mut p = params.clone();
        p.insert(keys::ENCODING.into(), Parameter::String("16UC1".into()));
        let as_bytes = ImageFrame::from_message(&UInt8Array::from(bytes.clone()), &p).unwrap();
        assert_eq!(as_bytes.mono16_values().unwrap(), mm);
        // Wrong counts, either way.
        let short = UInt16Array::from(mm[..5].to_vec());
        assert!(matches!(
            ImageFrame::from_message(&short, &params),
            Err(MsgError::LengthMismatch {
                expected: 12,
                got: 10,
                ..
            })
        ));
        let odd = UInt8Array::from(bytes[..11].to_vec());
        assert!(matches!(
            ImageFrame::from_message(&odd, &params),
            Err(MsgError::LengthMismatch { .. })
        ));
        // UInt16 is only a mono16 payload.
        let (_, rgb_params) = frame(Encoding::Rgb8, 1, 2, vec![0; 6]).to_message();
        assert!(matches!(
            ImageFrame::from_message(&UInt16Array::from(vec![0u16; 6]), &rgb_params),
            Err(MsgError::WrongArrowType {
                expected: "UInt8",
                ..
            })
        ));
        // No colours: refused by the picture decoder, with the reason.
        let err = back.to_rgb8(&DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("depth image"), "{err}");
        assert!(frame(Encoding::Rgb8, 1, 1, vec![0; 3])
            .mono16_values()
            .is_err());
    }

    #[test]
    fn yuv_frames_need_their_exact_plane_sizes() {
        // 640x480 as opencv-video-capture sends yuv420: w*h*3/2 bytes.
        for (enc, len) in [
            (Encoding::Yuv420, 640 * 480 * 3 / 2),
            (Encoding::Nv12, 640 * 480 * 3 / 2),
            (Encoding::Yuyv, 640 * 480 * 2),
            (Encoding::Uyvy, 640 * 480 * 2),
        ] {
            let f = frame(enc, 640, 480, vec![128; len]);
            let (arr, params) = f.to_message();
            let back = ImageFrame::from_message(arr.as_ref(), &params).unwrap();
            let (w, h, rgb) = back.to_rgb8(&DecodeLimits::default()).unwrap();
            assert_eq!((w, h, rgb.len()), (640, 480, 640 * 480 * 3), "{enc}");
            let cut = UInt8Array::from(vec![128u8; len - 640]);
            assert_eq!(
                ImageFrame::from_message(&cut, &params),
                Err(MsgError::LengthMismatch {
                    expected: len,
                    got: len - 640,
                    unit: "bytes"
                }),
                "{enc}"
            );
        }
    }

    #[test]
    fn raw_needs_width_and_height() {
        let f = frame(Encoding::Rgb8, 2, 2, pattern(2, 2, 3));
        let (arr, mut params) = f.to_message();
        params.remove(keys::WIDTH);
        assert_eq!(
            ImageFrame::from_message(arr.as_ref(), &params),
            Err(MsgError::MissingKey { key: keys::WIDTH })
        );
        let (arr, mut params) = f.to_message();
        params.insert(keys::HEIGHT.into(), Parameter::String("2".into()));
        assert!(matches!(
            ImageFrame::from_message(arr.as_ref(), &params),
            Err(MsgError::WrongType { key: "height", .. })
        ));
        let (arr, mut params) = f.to_message();
        params.insert(keys::HEIGHT.into(), Parameter::Integer(0));
        assert!(matches!(
            ImageFrame::from_message(arr.as_ref(), &params),
            Err(MsgError::InvalidValue { key: "height", .. })
        ));
        let (arr, mut params) = f.to_message();
        params.insert(keys::WIDTH.into(), Parameter::Integer(-3));
        assert!(matches!(
            ImageFrame::from_message(arr.as_ref(), &params),
            Err(MsgError::InvalidValue { key: "width", .. })
        ));
    }

    #[test]
    fn wrong_length_type_and_encoding_are_rejected() {
        let f = frame(Encoding::Rgb8, 2, 2, pattern(2, 2, 3));
        let (_, params) = f.to_message();
        let short = UInt8Array::from(vec![0u8; 11]);
        assert_eq!(
            ImageFrame::from_message(&short, &params),
            Err(MsgError::LengthMismatch {
                expected: 12,
                got: 11,
                unit: "bytes"
            })
        );
        let floats = Float32Array::from(vec![0f32; 12]);
        assert!(matches!(
            ImageFrame::from_message(&floats, &params),
            Err(MsgError::WrongArrowType { .. })
        ));
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![0; 12]));
        assert!(matches!(
            ImageFrame::from_message(ints.as_ref(), &params),
            Err(MsgError::WrongArrowType { .. })
        ));
        let nulls = UInt8Array::from(
            vec![Some(1u8); 11]
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            ImageFrame::from_message(&nulls, &params),
            Err(MsgError::Nulls)
        );
        let mut p2 = params.clone();
        p2.insert(keys::ENCODING.into(), Parameter::String("yuv444".into()));
        assert!(matches!(
            ImageFrame::from_message(&short, &p2),
            Err(MsgError::InvalidValue {
                key: "encoding",
                ..
            })
        ));
        let mut p3 = params.clone();
        p3.remove(keys::ENCODING);
        assert_eq!(
            ImageFrame::from_message(&short, &p3),
            Err(MsgError::MissingKey { key: "encoding" })
        );
        let mut p4 = params;
        p4.insert(keys::ENCODING.into(), Parameter::Integer(1));
        assert!(matches!(
            ImageFrame::from_message(&short, &p4),
            Err(MsgError::WrongType {
                key: "encoding",
                ..
            })
        ));
    }

    #[test]
    fn corrupt_and_oversized_compressed_images_are_rejected() {
        let rgb = pattern(8, 8, 3);
        let mut jpeg = encode_jpeg(8, 8, &rgb, 90).unwrap();
        jpeg.truncate(jpeg.len() / 3);
        let f = frame(Encoding::Jpeg, 0, 0, jpeg);
        assert!(matches!(
            f.to_rgb8(&DecodeLimits::default()),
            Err(MsgError::Decode {
                encoding: "jpeg",
                ..
            })
        ));
        for (enc, file) in [
            (Encoding::Webp, encode_webp(8, 8, &rgb).unwrap()),
            (Encoding::Bmp, encode_bmp(8, 8, &rgb).unwrap()),
        ] {
            for cut in [file.len() / 2, 20, 3] {
                let f = frame(enc, 0, 0, file[..cut].to_vec());
                assert!(
                    matches!(
                        f.to_rgb8(&DecodeLimits::default()),
                        Err(MsgError::Decode { .. })
                    ),
                    "{enc} cut at {cut}"
                );
            }
            let f = frame(enc, 0, 0, file);
            assert!(matches!(
                f.to_rgb8(&DecodeLimits { max_pixels: 63 }),
                Err(MsgError::TooLarge { .. })
            ));
        }
        let garbage = frame(Encoding::Png, 0, 0, b"not a png at all".to_vec());
        assert!(matches!(
            garbage.to_rgb8(&DecodeLimits::default()),
            Err(MsgError::Decode {
                encoding: "png",
                ..
            })
        ));
        let png = frame(Encoding::Png, 0, 0, encode_png(8, 8, &rgb).unwrap());
        assert!(matches!(
            png.to_rgb8(&DecodeLimits { max_pixels: 63 }),
            Err(MsgError::TooLarge { .. })
        ));
        // Metadata size disagreeing with the header.
        let lying = frame(Encoding::Png, 9, 8, encode_png(8, 8, &rgb).unwrap());
        assert!(matches!(
            lying.to_rgb8(&DecodeLimits::default()),
            Err(MsgError::InvalidValue { key: "width", .. })
        ));
        let empty = UInt8Array::from(Vec::<u8>::new());
        let (_, params) = frame(Encoding::Jpeg, 0, 0, vec![1]).to_message();
        assert!(matches!(
            ImageFrame::from_message(&empty, &params),
            Err(MsgError::LengthMismatch { .. })
        ));
        let raw = frame(Encoding::Rgb8, 100, 100, pattern(100, 100, 3));
        assert!(matches!(
            raw.to_rgb8(&DecodeLimits { max_pixels: 9_999 }),
            Err(MsgError::TooLarge { .. })
        ));
    }
}
