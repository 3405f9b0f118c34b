//! Broken image frames: every encoding's payload cut, mis-sized, emptied or
//! garbled; metadata of the wrong type; compressed files with lying headers.

use std::sync::Arc;

use da3_msg::arrow::array::{ArrayRef, UInt16Array, UInt8Array};
use da3_msg::arrow::datatypes::DataType;
use da3_msg::image_frame::{encode_jpeg, encode_png};
use da3_msg::{keys, Encoding, ImageFrame, MetadataParameters, Parameter};

use super::{bad_size, break_common, break_intrinsics, param_except, wrong_type_array, Case};
use crate::encode::encode_as;
use crate::rng::Rng;

fn with_nulls_u8(rng: &mut Rng, values: &[u8]) -> ArrayRef {
    let n = values.len().max(1);
    let holes = 1 + rng.index(4);
    let mut v: Vec<Option<u8>> = (0..n)
        .map(|i| Some(values.get(i).copied().unwrap_or(0)))
        .collect();
    for _ in 0..holes {
        let i = rng.index(n);
        v[i] = None;
    }
    Arc::new(UInt8Array::from(v))
}
/// Offset of the first `marker` (two bytes) in `data`.
fn find(data: &[u8], marker: &[u8]) -> Option<usize> {
    data.windows(marker.len()).position(|w| w == marker)
}

/// CRC-32 (PNG chunks).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims `w x h` (the data stays that of the small image).
pub fn png_claiming(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    // Signature (8) + length (4) + "IHDR" (4): width at 16, height at 20, CRC at 29.
    out[16..20].copy_from_slice(&w.to_be_bytes());
    out[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A JPEG whose frame header (SOF0) claims `w x h`.
pub fn jpeg_claiming(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    if let Some(i) = find(&out, &[0xFF, 0xC0]) {
        // FFC0, length (2), precision (1), height (2), width (2)
        if out.len() > i + 9 {
            out[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
            out[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
        }
    }
    out
}

/// Image frames: one good raw RGB frame, its JPEG and PNG files, and the
/// same picture in every other encoding ([`ImageKit::encoded`]).
pub struct ImageKit {
    pub good: ImageFrame,
    pub jpeg: Vec<u8>,
    pub png: Vec<u8>,
    /// The pixel limit of the node under test (`MAX_PIXELS`).
    pub max_pixels: u64,
}

impl ImageKit {
    /// `good` must be an `rgb8` frame.
    pub fn new(good: ImageFrame, max_pixels: u64) -> eyre::Result<Self> {
        eyre::ensure!(good.encoding == Encoding::Rgb8, "the kit starts from rgb8");
        let jpeg = encode_jpeg(good.width, good.height, &good.data, 90)?;
        let png = encode_png(good.width, good.height, &good.data)?;
        Ok(Self {
            good,
            jpeg,
            png,
            max_pixels,
        })
    }

    /// The good frame as it would be sent with another encoding of the same
    /// picture (the kit's own JPEG and PNG; the others by [`encode_as`];
    /// `mono16` is the picture's depth image, see [`crate::encode::mono16_mm`]).
    pub fn encoded(&self, enc: Encoding) -> ImageFrame {
        let mut f = self.good.clone();
        f.encoding = enc;
        f.data = match enc {
            Encoding::Jpeg => self.jpeg.clone(),
            Encoding::Png => self.png.clone(),
            // The kit's frame is a valid rgb8 frame (checked by `new`):
            // every encoder takes it.
            _ => encode_as(enc, f.width, f.height, &f.data).unwrap_or_default(),
        };
        f
    }

    /// The good frame in `enc`, cut short: a raw payload anywhere before its
    /// end (`mono16` as 16-bit values or as bytes), a WebP or BMP file within
    /// its first three quarters. Raw ones fail the message's size check;
    /// files only fail to decode (`pixels_only`).
    pub fn truncated(&self, enc: Encoding, rng: &mut Rng) -> Case {
        let f = self.encoded(enc);
        let (_, mut p) = f.to_message();
        let full = f.data.len();
        if enc.is_compressed() {
            let cut = 1 + rng.index((full - full / 4).max(1));
            let data: ArrayRef = Arc::new(UInt8Array::from(f.data[..cut].to_vec()));
            compressed_meta(&mut p, enc.as_str());
            return Case::pixels(truncated_kind(enc), (data, p));
        }
        let cut = rng.index(full);
        let data: ArrayRef = if enc == Encoding::Mono16 && rng.chance(1, 2) {
            let values: Vec<u16> = f.data[..cut / 2 * 2]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            Arc::new(UInt16Array::from(values))
        } else {
            Arc::new(UInt8Array::from(f.data[..cut].to_vec()))
        };
        Case::new(truncated_kind(enc), (data, p))
    }

    /// One broken image message.
    pub fn bad(&self, rng: &mut Rng) -> Case {
        let g = &self.good;
        let (arr, mut p) = g.to_message();
        let n = g.data.len();
        let kinds = if self.max_pixels <= 4 << 20 { 16 } else { 15 };
        match rng.below(kinds) {
            0 => {
                let len = rng.index(2 * n + 1);
                Case::new(
                    "wrong arrow type",
                    (wrong_type_array(rng, len, &DataType::UInt8), p),
                )
            }
            1 => Case::new("nulls in the payload", (with_nulls_u8(rng, &g.data), p)),
            2 => {
                let raw = loop {
                    let e = *rng.pick(&Encoding::ALL);
                    if !e.is_compressed() {
                        break e;
                    }
                };
                let want = raw.raw_len(g.width, g.height).unwrap_or(n);
                let len = loop {
                    let l = rng.index(2 * want + 2);
                    if l != want {
                        break l;
                    }
                };
                p.insert(
                    keys::ENCODING.into(),
                    Parameter::String(raw.as_str().into()),
                );
                let data: ArrayRef = Arc::new(UInt8Array::from(rng.bytes(len)));
                Case::new("raw payload of the wrong length", (data, p))
            }
            3 => {
                let key = *rng.pick(&[keys::WIDTH, keys::HEIGHT]);
                if rng.chance(1, 2) {
                    p.insert(key.into(), bad_size(rng));
                } else {
                    // A plausible size that does not match the payload.
                    let other = if key == keys::WIDTH {
                        g.height
                    } else {
                        g.width
                    } as usize;
                    let v = loop {
                        let v = rng.range(1, 100_000) as usize;
                        if v * other * 3 != n {
                            break v;
                        }
                    };
                    p.insert(key.into(), Parameter::Integer(v as i64));
                }
                Case::new("bad width or height", (arr, p))
            }
            4 => {
                let key = *rng.pick(&[keys::ENCODING, keys::WIDTH, keys::HEIGHT]);
                p.remove(key);
                Case::new("missing encoding, width or height", (arr, p))
            }
            5 => {
                let key = *rng.pick(&[keys::ENCODING, keys::WIDTH, keys::HEIGHT, keys::LAST]);
                let v = match key {
                    keys::ENCODING => param_except(rng, &["String"]),
                    keys::LAST => param_except(rng, &["Bool"]),
                    _ => param_except(rng, &["Integer", "Float"]),
                };
                p.insert(key.into(), v);
                Case::new("metadata of the wrong type", (arr, p))
            }
            6 => {
                let kind = break_common(rng, &mut p);
                Case::new(kind, (arr, p))
            }
            7 => {
                let name = loop {
                    let name = format!(
                        "{}{}",
                        rng.pick(&["yuv", "nv", "bayer_", "h26", "", "rgb"]),
                        rng.below(1000)
                    );
                    if Encoding::parse(&name).is_none() {
                        break name;
                    }
                };
                p.insert(keys::ENCODING.into(), Parameter::String(name));
                Case::new("unknown encoding", (arr, p))
            }
            8 => {
                let enc = rng.pick(&Encoding::ALL).as_str();
                p.insert(keys::ENCODING.into(), Parameter::String(enc.into()));
                let empty: ArrayRef = Arc::new(UInt8Array::from(Vec::<u8>::new()));
                Case::new("empty payload", (empty, p))
            }
            9 => {
                // Random bytes that do not start like the format's signature.
                let (enc, first_not) = *rng.pick(&[
                    ("jpeg", 0xFFu8),
                    ("png", 0x89u8),
                    ("webp", b'R'),
                    ("bmp", b'B'),
                ]);
                let len = 1 + rng.index(4096);
                let mut bytes = rng.bytes(len);
                if bytes[0] == first_not {
                    bytes[0] ^= 0x40;
                }
                let data: ArrayRef = Arc::new(UInt8Array::from(bytes));
                compressed_meta(&mut p, enc);
                Case::pixels("garbage compressed image", (data, p))
            }
            10 => {
                // Cut inside the header, before the compressed data starts.
                let sos = find(&self.jpeg, &[0xFF, 0xDA]).unwrap_or(self.jpeg.len() / 2);
                let cut = 1 + rng.index(sos + 2);
                let data: ArrayRef = Arc::new(UInt8Array::from(self.jpeg[..cut].to_vec()));
                compressed_meta(&mut p, "jpeg");
                Case::pixels("truncated jpeg", (data, p))
            }
            11 => {
                // Cut before the end of the image data.
                let idat = find(&self.png, b"IDAT").unwrap_or(self.png.len() / 2);
                let len = u32::from_be_bytes(self.png[idat - 4..idat].try_into().unwrap_or([0; 4]))
                    as usize;
                let cut = 1 + rng.index(idat + 4 + len - 1);
                let data: ArrayRef = Arc::new(UInt8Array::from(self.png[..cut].to_vec()));
                compressed_meta(&mut p, "png");
                Case::pixels("truncated png", (data, p))
            }
            12 => {
                // A header claiming a huge image: refused before decoding.
                let data = if rng.chance(1, 2) {
                    let w = rng.range(20_000, 0x7fff_ffff) as u32;
                    let h = rng.range(20_000, 0x7fff_ffff) as u32;
                    compressed_meta(&mut p, "png");
                    png_claiming(&self.png, w, h)
                } else {
                    let w = rng.range(20_000, 65_535) as u16;
                    let h = rng.range(20_000, 65_535) as u16;
                    compressed_meta(&mut p, "jpeg");
                    jpeg_claiming(&self.jpeg, w, h)
                };
                Case::pixels(
                    "huge size in the image header",
                    (Arc::new(UInt8Array::from(data)), p),
                )
            }
            13 => {
                if rng.chance(1, 2) {
                    let w = rng.range(100_000, u32::MAX as i64);
                    let h = rng.range(100_000, u32::MAX as i64);
                    p.insert(keys::WIDTH.into(), Parameter::Integer(w));
                    p.insert(keys::HEIGHT.into(), Parameter::Integer(h));
                    Case::new("huge width x height in metadata", (arr, p))
                } else {
                    let kind = break_intrinsics(rng, &mut p);
                    Case::new(kind, (arr, p))
                }
            }
            14 => {
                let enc = *rng.pick(NEW_ENCODINGS);
                self.truncated(enc, rng)
            }
            _ => {
                // A well-formed raw frame over the node's pixel limit.
                let side = (self.max_pixels as f64).sqrt() as u64 + 1;
                let w = side + rng.below(64);
                let h = side + rng.below(64);
                let f = ImageFrame {
                    width: w as u32,
                    height: h as u32,
                    data: vec![0x55; (w * h * 3) as usize],
                    ..g.clone()
                };
                Case::pixels("over the pixel limit", f.to_message())
            }
        }
    }
}

/// The encodings added for dora's camera nodes (`Encoding::ALL` after rgb8, bgr8, rgba8,
/// mono8, jpeg, png): each gets truncated frames.
pub const NEW_ENCODINGS: &[Encoding] = Encoding::ALL.split_at(6).1;

fn truncated_kind(enc: Encoding) -> &'static str {
    match enc {
        Encoding::Bgra8 => "truncated bgra8 frame",
        Encoding::Mono16 => "truncated mono16 frame",
        Encoding::Yuv420 => "truncated yuv420 frame",
        Encoding::Nv12 => "truncated nv12 frame",
        Encoding::Yuyv => "truncated yuyv frame",
        Encoding::Uyvy => "truncated uyvy frame",
        Encoding::Webp => "truncated webp",
        Encoding::Bmp => "truncated bmp",
        _ => "truncated frame",
    }
}

fn compressed_meta(p: &mut MetadataParameters, enc: &str) {
    p.insert(keys::ENCODING.into(), Parameter::String(enc.into()));
    p.remove(keys::WIDTH);
    p.remove(keys::HEIGHT);
}
