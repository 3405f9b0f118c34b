//! The functions behind the fuzz targets (`fuzz/fuzz_targets/*.rs`): one per
//! target, called by the target on every input and by the `fuzz_corpus` test
//! on the corpus plus seeded mutations (stable Rust, CI). They must never
//! panic, whatever the bytes; a decode error is a normal outcome.

use std::io::Cursor;
use std::sync::Arc;

use da3_msg::arrow::array::{ArrayRef, UInt8Array};
use da3_msg::image_frame::{encode_jpeg, encode_png};
use da3_msg::{
    keys, CameraMsg, DecodeLimits, DepthKind, DepthMap, DepthVis, Encoding, FrameInfo, ImageFrame,
    Message, MetadataParameters, Parameter, PointCloud,
};
use recorder::mcap_recording::{Compression, McapRecordingReader, McapRecordingWriter};
use recorder::recording::{decode_row, row_infos, RecordingReader, RecordingWriter};

/// Once per fuzzing process: libFuzzer's panic hook aborts on *any* panic,
/// even one the code under test catches and turns into an error (the
/// recording reader does so around arrow-ipc, which panics on some malformed
/// streams). Replace it with a silent hook: a panic that escapes still fails
/// the run (libfuzzer-sys aborts when the target unwinds, and saves the
/// input; replay it with the `fuzz_corpus` test, which prints the message),
/// a caught one does not, and caught panics do not flood the log with
/// backtraces (hundreds of MB in a few minutes otherwise).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// Pixel limit of the fuzz targets: small, so that no input can make one run slow.
pub const FUZZ_MAX_PIXELS: u64 = 1 << 20;

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decoded completely.
    Accepted,
    /// Refused with an error (the expected result for most inputs).
    Rejected,
}

/// Layout of a `frame_decoder` input: byte 0 picks the encoding (modulo
/// 16: 0-13 the known ones in the order of `Encoding::ALL`, 14 an unknown
/// name, 15 none), byte 1 flags which metadata keys are present, bytes 2-9
/// are `width` and `height` (i32 LE), the rest is the payload.
pub const FRAME_HEADER: usize = 10;

/// Builds a `frame_decoder` input.
pub fn frame_input(enc: u8, flags: u8, width: i32, height: i32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![enc, flags];
    v.extend_from_slice(&width.to_le_bytes());
    v.extend_from_slice(&height.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Flag bits of byte 1.
pub const F_WIDTH: u8 = 1;
pub const F_HEIGHT: u8 = 2;
pub const F_INTRINSICS: u8 = 4;
pub const F_FRAME_ID: u8 = 8;
pub const F_SIZES_AS_FLOAT: u8 = 16;

/// Byte 0 of a `frame_decoder` input for `enc`.
pub fn encoding_byte(enc: Encoding) -> u8 {
    Encoding::ALL.iter().position(|e| *e == enc).unwrap_or(15) as u8
}

/// `ImageFrame::from_message` then `to_rgb8` on arbitrary bytes (see
/// [`FRAME_HEADER`]); a `mono16` frame goes to `DepthMap::from_mono16`
/// instead, as `Message::decode` sends it.
pub fn frame_decoder(data: &[u8]) -> Outcome {
    if data.len() < FRAME_HEADER {
        return Outcome::Rejected;
    }
    let mut p = MetadataParameters::new();
    let enc = match (data[0] % 16) as usize {
        i if i < Encoding::ALL.len() => Some(Encoding::ALL[i].as_str().to_string()),
        14 => Some("yuv444".to_string()),
        _ => None,
    };
    if let Some(e) = enc {
        p.insert(keys::ENCODING.into(), Parameter::String(e));
    }
    let flags = data[1];
    let w = i32::from_le_bytes([data[2], data[3], data[4], data[5]]) as i64;
    let h = i32::from_le_bytes([data[6], data[7], data[8], data[9]]) as i64;
    let size = |v: i64| {
        if flags & F_SIZES_AS_FLOAT != 0 {
            Parameter::Float(v as f64)
        } else {
            Parameter::Integer(v)
        }
    };
    if flags & F_WIDTH != 0 {
        p.insert(keys::WIDTH.into(), size(w));
    }
    if flags & F_HEIGHT != 0 {
        p.insert(keys::HEIGHT.into(), size(h));
    }
    if flags & F_INTRINSICS != 0 {
        p.insert(
            keys::FOCAL.into(),
            Parameter::ListFloat(vec![w as f64, h as f64]),
        );
        p.insert(
            keys::PRINCIPAL_POINT.into(),
            Parameter::ListFloat(vec![1.0, 1.0]),
        );
    }
    if flags & F_FRAME_ID != 0 {
        p.insert(keys::FRAME_ID.into(), Parameter::Integer(w ^ h));
    }
    let payload: ArrayRef = Arc::new(UInt8Array::from(data[FRAME_HEADER..].to_vec()));
    let limits = DecodeLimits {
        max_pixels: FUZZ_MAX_PIXELS,
    };
    let Ok(frame) = ImageFrame::from_message(payload.as_ref(), &p) else {
        return Outcome::Rejected;
    };
    if frame.encoding == Encoding::Mono16 {
        return match DepthMap::from_mono16(&frame) {
            Ok(d) => {
                assert_eq!(
                    d.values.len(),
                    frame.width as usize * frame.height as usize,
                    "depth size"
                );
                Outcome::Accepted
            }
            Err(_) => Outcome::Rejected,
        };
    }
    match frame.to_rgb8(&limits) {
        Ok((w, h, rgb)) => {
            assert_eq!(rgb.len(), w as usize * h as usize * 3, "decoded size");
            assert!(w as u64 * h as u64 <= FUZZ_MAX_PIXELS, "over the limit");
            Outcome::Accepted
        }
        Err(_) => Outcome::Rejected,
    }
}

/// The recording reader on arbitrary bytes: every message read, each decoded
/// as the da3 message its `primitive` names.
pub fn recording_reader(data: &[u8]) -> Outcome {
    let Ok(mut reader) = RecordingReader::with_len(Cursor::new(data), "fuzz", data.len() as u64)
    else {
        return Outcome::Rejected;
    };
    let mut ok = true;
    while let Some(batch) = reader.next_batch() {
        let Ok(rows) = row_infos(&batch) else {
            ok = false;
            continue;
        };
        for i in 0..rows.len() {
            match decode_row(&batch, i) {
                Ok(m) => ok &= decode_as_da3(m.data.as_ref(), &m.metadata),
                Err(_) => ok = false,
            }
        }
    }
    if ok && reader.truncated().is_none() {
        Outcome::Accepted
    } else {
        Outcome::Rejected
    }
}

/// Largest MCAP record the `mcap_reader` target reads: small, so that no
/// length in an input can make it allocate much (the recorder's own limit,
/// `MAX_RECORD`, is 256 MiB).
pub const FUZZ_MAX_RECORD: usize = 4 << 20;

/// The MCAP recording reader on arbitrary bytes: every record read (its
/// payload rebuilt from the Foxglove message holding it, or decoded from the
/// record), each message decoded as the da3 message its `primitive` names.
pub fn mcap_reader(data: &[u8]) -> Outcome {
    let Ok(mut reader) =
        McapRecordingReader::with_limit(Cursor::new(data), "fuzz", FUZZ_MAX_RECORD)
    else {
        return Outcome::Rejected;
    };
    let mut ok = true;
    for m in reader.by_ref() {
        match m {
            Ok(m) => ok &= decode_as_da3(m.data.as_ref(), &m.metadata),
            Err(_) => ok = false,
        }
    }
    if ok && reader.truncated().is_none() {
        Outcome::Accepted
    } else {
        Outcome::Rejected
    }
}

/// Decodes a message as what its `primitive` says ([`Message::decode_claimed`],
/// images also to pixels); `false` when it does not decode. A message that
/// names no da3 primitive is not judged (`true`).
pub fn decode_as_da3(data: &dyn da3_msg::arrow::array::Array, p: &MetadataParameters) -> bool {
    let limits = DecodeLimits {
        max_pixels: FUZZ_MAX_PIXELS,
    };
    match Message::decode_claimed(data, p) {
        Ok(Some(
            Message::Image(f)
            | Message::DepthVis(DepthVis { frame: f, .. })
            | Message::Mask(da3_msg::Mask { frame: f, .. }),
        )) => f.to_rgb8(&limits).is_ok(),
        Ok(_) => true,
        Err(_) => false,
    }
}

fn info(i: u64) -> FrameInfo {
    FrameInfo {
        frame_id: Some(i),
        stamp_ns: Some(1_700_000_000_000_000_000 + i),
        camera: Some("cam".into()),
        last: false,
    }
}

/// A small test picture.
pub fn picture(w: u32, h: u32) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x * 37 % 256) as u8,
                (y * 53 % 256) as u8,
                ((x + y) * 11 % 256) as u8,
            ]
        })
        .collect()
}

/// Seed inputs of `frame_decoder`: each encoding, valid, with and without sizes.
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let (w, h) = (16u32, 12u32);
    let rgb = picture(w, h);
    let f = ImageFrame::rgb8(w, h, rgb.clone());
    let mut seeds = Vec::new();
    let wh = F_WIDTH | F_HEIGHT;
    seeds.push(frame_input(0, wh | F_FRAME_ID, w as i32, h as i32, &rgb));
    for (i, enc) in Encoding::ALL.iter().enumerate().take(4).skip(1) {
        let mut kit_frame = f.clone();
        kit_frame.encoding = *enc;
        let data: Vec<u8> = match enc {
            Encoding::Bgr8 => rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect(),
            Encoding::Rgba8 => rgb
                .chunks(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect(),
            _ => rgb.chunks(3).map(|p| p[0]).collect(),
        };
        seeds.push(frame_input(
            i as u8,
            wh | F_INTRINSICS,
            w as i32,
            h as i32,
            &data,
        ));
    }
    if let Ok(j) = encode_jpeg(w, h, &rgb, 80) {
        seeds.push(frame_input(4, 0, 0, 0, &j));
        seeds.push(frame_input(4, wh, w as i32, h as i32, &j));
    }
    if let Ok(p) = encode_png(w, h, &rgb) {
        seeds.push(frame_input(5, 0, 0, 0, &p));
        seeds.push(frame_input(
            5,
            wh | F_SIZES_AS_FLOAT,
            w as i32,
            h as i32,
            &p,
        ));
        // Headers claiming more pixels than the limit.
        seeds.push(frame_input(
            5,
            0,
            0,
            0,
            &crate::bad::png_claiming(&p, 40_000, 40_000),
        ));
    }
    if let Ok(j) = encode_jpeg(w, h, &rgb, 80) {
        seeds.push(frame_input(
            4,
            0,
            0,
            0,
            &crate::bad::jpeg_claiming(&j, 60_000, 60_000),
        ));
    }
    // The encodings of dora's camera nodes: whole, with sizes (files also
    // without), and an odd size for the YUV layouts.
    for &enc in crate::bad::NEW_ENCODINGS {
        let b = encoding_byte(enc);
        if let Ok(d) = crate::encode_as(enc, w, h, &rgb) {
            seeds.push(frame_input(b, wh | F_FRAME_ID, w as i32, h as i32, &d));
            if enc.is_compressed() {
                seeds.push(frame_input(b, 0, 0, 0, &d));
            }
        }
        if let Ok(d) = crate::encode_as(enc, 5, 3, &picture(5, 3)) {
            seeds.push(frame_input(b, wh, 5, 3, &d));
        }
    }
    seeds
}

/// Seed inputs of `recording_reader`: small valid recordings of every message kind.
pub fn recording_seeds() -> Vec<Vec<u8>> {
    let msgs = seed_messages();
    let mut seeds = Vec::new();
    for per_batch in [1usize, 2, 5] {
        let Ok(mut w) = RecordingWriter::new(Vec::new()) else {
            continue;
        };
        let mut ok = true;
        for (i, (s, (a, p))) in msgs.iter().enumerate() {
            ok &= w.push(s, i as i64, p, a.as_ref()).is_ok();
            if w.pending() >= per_batch {
                ok &= w.flush().is_ok();
            }
        }
        if let (true, Ok(bytes)) = (ok, w.finish()) {
            seeds.push(bytes);
        }
    }
    seeds
}

/// Seed inputs of `mcap_reader`: small valid MCAP recordings of every message
/// kind, one chunk per message or a few, each compression, finished or (the
/// last) cut after its last chunk as by a killed recorder.
pub fn mcap_seeds() -> Vec<Vec<u8>> {
    let msgs = seed_messages();
    let mut seeds = Vec::new();
    let plans = [
        (1usize, Compression::None, true),
        (2, Compression::Zstd, true),
        (5, Compression::Lz4, true),
        (2, Compression::None, false),
    ];
    for (per_chunk, compression, finish) in plans {
        let Ok(mut w) = McapRecordingWriter::new(Cursor::new(Vec::new()), compression) else {
            continue;
        };
        let mut ok = true;
        for (i, (s, (a, p))) in msgs.iter().enumerate() {
            ok &= w.push(s, i as i64, p, a.as_ref()).is_ok();
            if w.pending() >= per_chunk {
                ok &= w.flush().is_ok();
            }
        }
        ok &= w.flush().is_ok();
        let bytes = if finish {
            w.finish().map(Cursor::into_inner).ok()
        } else {
            Some(w.abandon().into_inner())
        };
        if let (true, Some(bytes)) = (ok, bytes) {
            seeds.push(bytes);
        }
    }
    seeds
}

/// The messages of the recording seeds: one of every kind.
fn seed_messages() -> Vec<(&'static str, (ArrayRef, MetadataParameters))> {
    let mut msgs: Vec<(&str, (ArrayRef, MetadataParameters))> = Vec::new();
    let mut img = ImageFrame::rgb8(4, 3, picture(4, 3));
    img.info = info(0);
    msgs.push(("image", img.to_message()));
    if let Ok(png) = encode_png(4, 3, &picture(4, 3)) {
        let mut f = img.clone();
        f.encoding = Encoding::Png;
        f.data = png;
        msgs.push(("image", f.to_message()));
    }
    let depth = DepthMap {
        kind: DepthKind::Depth,
        width: 3,
        height: 2,
        values: vec![0.5, 1.0, f32::NAN, 2.0, 3.0, f32::INFINITY],
        info: info(1),
        intrinsics: None,
        pose: None,
        is_metric: true,
    };
    msgs.push(("depth", depth.to_message()));
    let cam = CameraMsg {
        extrinsics: [1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 0.0, 0.2, 0.0, 0.0, 1.0, 0.3],
        intrinsics: [100.0, 0.0, 32.0, 0.0, 100.0, 24.0, 0.0, 0.0, 1.0],
        width: 64,
        height: 48,
        info: info(2),
        is_metric: false,
    };
    msgs.push(("camera", cam.to_message()));
    let pts = PointCloud {
        xyz: vec![[1.0, 2.0, 3.0], [-1.0, 0.5, 7.0]],
        rgb: vec![[255, 0, 10], [1, 2, 3]],
        info: info(3),
        is_metric: true,
    };
    msgs.push(("points", pts.to_message()));
    msgs
}
