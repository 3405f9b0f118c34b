//! Damaged MCAP recordings, each damaged *by construction*, for the replay
//! node's bad-input test: [`McapKit`] starts from one good recording of the
//! `recorder` ([`good_recording`]) and breaks it either as bytes (cut short,
//! a bit flipped anywhere, a record length set huge, a wrong magic) or as
//! content, rewriting a file whose framing and CRCs are valid but one record
//! of which cannot be read back (its payload message missing or damaged, its
//! protobuf, metadata, Arrow payload or Arrow type wrong, its channel's
//! encoding not protobuf).

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::Arc;

use da3_msg::arrow::array::{ArrayRef, StringArray};
use da3_msg::{
    CameraMsg, DepthKind, DepthMap, Encoding, ImageFrame, Intrinsics, MetadataParameters,
    PointCloud, Pose,
};
use eyre::{bail, eyre, Result};
use foxglove::messages::{PointCloud as FoxPointCloud, RawImage};
use prost::Message as _;
use recorder::mcap_recording::{Compression, McapRecordingWriter, Record, MAGIC, RECORD_SCHEMA};

use crate::rng::Rng;

/// What reading a damaged recording must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Not a recording at all: refused when opened, with an error naming the file.
    Refused,
    /// Read up to the damage and reported as cut or damaged: what is read is
    /// some of the good messages, in order, unchanged.
    Damaged,
    /// Every good message but this one (by `seq`), which is undecodable (one error).
    BadMessage(u64),
}

/// One damaged recording.
#[derive(Debug, Clone)]
pub struct McapCase {
    pub kind: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

fn info(i: u64) -> da3_msg::FrameInfo {
    da3_msg::FrameInfo {
        frame_id: Some(i),
        stamp_ns: Some(1_700_000_000_000_000_000 + i * 1000),
        camera: Some("cam".into()),
        last: false,
    }
}

/// The messages of [`good_recording`]: one of each kind the MCAP recorder
/// writes differently (raw and JPEG images, depth with pose and intrinsics,
/// a camera, points, a status, a message that is no da3 message).
pub fn good_messages() -> Vec<(String, MetadataParameters, ArrayRef)> {
    let mut out = Vec::new();
    let mut push = |s: &str, m: (ArrayRef, MetadataParameters)| out.push((s.to_string(), m.1, m.0));
    let mut img = ImageFrame::rgb8(4, 3, (0..36).collect());
    img.info = info(0);
    img.intrinsics = Some(Intrinsics {
        fx: 3.0,
        fy: 3.0,
        cx: 2.0,
        cy: 1.5,
    });
    push("image", img.to_message());
    let mut jpeg = ImageFrame::rgb8(0, 0, vec![0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]);
    jpeg.encoding = Encoding::Jpeg;
    jpeg.info = info(1);
    push("jpeg", jpeg.to_message());
    let depth = DepthMap {
        kind: DepthKind::Depth,
        width: 3,
        height: 2,
        values: vec![0.5, 1.0, f32::NAN, 2.0, 3.0, f32::INFINITY],
        info: info(2),
        intrinsics: Some(Intrinsics {
            fx: 2.0,
            fy: 2.0,
            cx: 1.5,
            cy: 1.0,
        }),
        pose: Some(Pose {
            position: [1.0, 2.0, 3.0],
            orientation: [0.0, 0.0, 0.0, 1.0],
        }),
        is_metric: true,
    };
    push("depth", depth.to_message());
    let cam = CameraMsg {
        extrinsics: [1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 0.0, 0.2, 0.0, 0.0, 1.0, 0.3],
        intrinsics: [100.0, 0.0, 32.0, 0.0, 100.0, 24.0, 0.0, 0.0, 1.0],
        width: 64,
        height: 48,
        info: info(3),
        is_metric: false,
    };
    push("camera", cam.to_message());
    let pts = PointCloud {
        xyz: vec![[1.0, 2.0, 3.0], [-1.0, 0.5, 7.0]],
        rgb: vec![[255, 0, 10], [1, 2, 3]],
        info: info(4),
        is_metric: true,
    };
    push("points", pts.to_message());
    let status: ArrayRef = Arc::new(StringArray::from(vec![r#"{"type":"stats"}"#]));
    let mut p = MetadataParameters::new();
    p.insert(
        "primitive".into(),
        dora_node_api::Parameter::String("status".into()),
    );
    push("status", (status, p));
    let other: ArrayRef = Arc::new(da3_msg::arrow::array::Int32Array::from(vec![1, -2, 3]));
    push("other", (other, MetadataParameters::new()));
    out
}

/// A finished MCAP recording of [`good_messages`], two messages per chunk.
pub fn good_recording(compression: Compression) -> Result<Vec<u8>> {
    let mut w = McapRecordingWriter::new(Cursor::new(Vec::new()), compression)?;
    for (i, (s, p, a)) in good_messages().iter().enumerate() {
        w.push(s, 1_000 + i as i64, p, a.as_ref())?;
        if w.pending() >= 2 {
            w.flush()?;
        }
    }
    Ok(w.finish()?.into_inner())
}

/// Breaks one good recording in many ways.
pub struct McapKit {
    good: Vec<u8>,
    /// Top-level records after the magic: (offset, length of the whole record).
    records: Vec<(usize, usize)>,
    messages: Vec<mcap::Message<'static>>,
}

/// A record as written: the decoded `da3.Record` of an MCAP message, if it is one.
fn record_of(m: &mcap::Message) -> Option<Record> {
    let s = m.channel.schema.as_ref()?;
    (s.name == RECORD_SCHEMA).then(|| Record::decode(&m.data[..]).ok())?
}

impl McapKit {
    pub fn new(good: Vec<u8>) -> Result<Self> {
        let mut records = Vec::new();
        let mut at = MAGIC.len();
        while at + 9 <= good.len() {
            let len = u64::from_le_bytes(good[at + 1..at + 9].try_into()?) as usize;
            records.push((at, 9 + len));
            at += 9 + len;
        }
        let messages = mcap::io::MessageReader::new(Cursor::new(good.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if messages.iter().filter_map(record_of).count() == 0 {
            bail!("the good recording holds no da3.Record");
        }
        Ok(Self {
            good,
            records,
            messages,
        })
    }

    /// The good recording.
    pub fn good(&self) -> &[u8] {
        &self.good
    }

    /// Writes the messages again (framing and CRCs valid), after `edit`
    /// changed or dropped (`None`) the one at index `at`.
    fn rewrite(
        &self,
        at: usize,
        edit: impl FnOnce(mcap::Message<'static>) -> Option<mcap::Message<'static>>,
    ) -> Result<Vec<u8>> {
        let mut w = mcap::Writer::new(Cursor::new(Vec::new()))?;
        let mut edit = Some(edit);
        for (i, m) in self.messages.iter().enumerate() {
            let m = if i == at {
                let f = edit.take().ok_or_else(|| eyre!("edited twice"))?;
                match f(m.clone()) {
                    Some(m) => m,
                    None => continue,
                }
            } else {
                m.clone()
            };
            w.write(&m)?;
        }
        w.finish()?;
        Ok(w.into_inner().into_inner())
    }

    /// Index (among the messages) and record of a record chosen by `pick`.
    fn find_record(&self, pick: impl Fn(&Record) -> bool) -> Result<(usize, Record)> {
        self.messages
            .iter()
            .enumerate()
            .find_map(|(i, m)| record_of(m).filter(&pick).map(|r| (i, r)))
            .ok_or_else(|| eyre!("no such record in the good recording"))
    }

    /// Index of the message holding the payload of `r`.
    fn payload_message(&self, rec_at: usize, r: &Record) -> Result<usize> {
        (0..rec_at)
            .rev()
            .find(|&i| self.messages[i].channel.topic == r.payload_topic)
            .ok_or_else(|| eyre!("no payload message for `{}`", r.stream))
    }

    /// A record rewritten with `change`.
    fn edit_record(
        &self,
        stream: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<(Vec<u8>, u64)> {
        let (at, mut r) = self.find_record(|r| r.stream == stream)?;
        let seq = r.seq;
        change(&mut r);
        let bytes = self.rewrite(at, |mut m| {
            m.data = Cow::Owned(r.encode_to_vec());
            Some(m)
        })?;
        Ok((bytes, seq))
    }

    /// One damaged recording, chosen by `rng`.
    pub fn bad(&self, rng: &mut Rng) -> Result<McapCase> {
        let len = self.good.len();
        let mut b = self.good.clone();
        let (kind, bytes, expect) = match rng.below(14) {
            0 => {
                b.truncate(MAGIC.len() + rng.index(len - MAGIC.len()));
                ("cut short", b, Expect::Damaged)
            }
            1 | 2 => {
                let at = MAGIC.len() + rng.index(len - MAGIC.len());
                b[at] ^= 1 << rng.below(8);
                ("a bit flipped", b, Expect::Damaged)
            }
            3 => {
                let (at, _) = *rng.pick(&self.records);
                let huge = *rng.pick(&[1u64 << 33, 1 << 40, u64::MAX, len as u64 * 1000]);
                b[at + 1..at + 9].copy_from_slice(&huge.to_le_bytes());
                ("a record length set huge", b, Expect::Damaged)
            }
            4 => {
                b[rng.index(MAGIC.len())] ^= 0x20;
                ("wrong magic", b, Expect::Refused)
            }
            5 => {
                b.truncate(rng.index(MAGIC.len()));
                ("shorter than the magic", b, Expect::Refused)
            }
            6 => {
                let mut g = MAGIC.to_vec();
                let n = 1 + rng.index(2000);
                g.extend(rng.bytes(n));
                ("magic then garbage", g, Expect::Damaged)
            }
            7 => {
                let (at, r) = self.find_record(|r| !r.payload_topic.is_empty())?;
                let p = self.payload_message(at, &r)?;
                let bytes = self.rewrite(p, |_| None)?;
                ("payload message missing", bytes, Expect::BadMessage(r.seq))
            }
            8 => {
                let (at, r) = self.find_record(|r| r.stream == "status")?;
                // A length-delimited field longer than the message: no protobuf.
                let bytes = self.rewrite(at, |mut m| {
                    m.data = Cow::Owned(vec![0x0a, 0xff, 0x01, b'x']);
                    Some(m)
                })?;
                ("record not protobuf", bytes, Expect::BadMessage(r.seq))
            }
            9 => {
                let s = *rng.pick(&["image", "depth", "camera", "status"]);
                let (bytes, seq) =
                    self.edit_record(s, |r| r.metadata = "{\"frame_id\": 3".into())?;
                ("metadata not typed JSON", bytes, Expect::BadMessage(seq))
            }
            10 => {
                let s = *rng.pick(&["camera", "status", "other"]);
                let n = rng.index(64);
                let junk = rng.bytes(n);
                let (bytes, seq) = self.edit_record(s, |r| r.payload = junk)?;
                ("payload not Arrow IPC", bytes, Expect::BadMessage(seq))
            }
            11 => {
                let s = *rng.pick(&["image", "depth", "camera", "points", "status"]);
                let (bytes, seq) = self.edit_record(s, |r| r.arrow_type = "Float16".into())?;
                (
                    "record names another Arrow type",
                    bytes,
                    Expect::BadMessage(seq),
                )
            }
            12 => {
                let s = *rng.pick(&["image", "depth"]);
                let (at, r) = self.find_record(|r| r.stream == s)?;
                let p = self.payload_message(at, &r)?;
                let bytes = self.rewrite(p, |mut m| {
                    let mut img = RawImage::decode(&m.data[..]).ok()?;
                    let mut d = img.data.to_vec();
                    d.pop();
                    img.data = d.into();
                    m.data = Cow::Owned(img.encode_to_vec());
                    Some(m)
                })?;
                (
                    "RawImage shorter than its size",
                    bytes,
                    Expect::BadMessage(r.seq),
                )
            }
            _ => {
                if rng.chance(1, 2) {
                    let (at, r) = self.find_record(|r| r.stream == "points")?;
                    let p = self.payload_message(at, &r)?;
                    let bytes = self.rewrite(p, |mut m| {
                        let mut pc = FoxPointCloud::decode(&m.data[..]).ok()?;
                        pc.point_stride = 16;
                        m.data = Cow::Owned(pc.encode_to_vec());
                        Some(m)
                    })?;
                    (
                        "PointCloud of another layout",
                        bytes,
                        Expect::BadMessage(r.seq),
                    )
                } else {
                    let (at, r) = self.find_record(|r| r.stream == "status")?;
                    let bytes = self.rewrite(at, |mut m| {
                        let mut ch = (*m.channel).clone();
                        ch.id = 999;
                        ch.message_encoding = "json".into();
                        m.channel = Arc::new(ch);
                        Some(m)
                    })?;
                    (
                        "record channel not protobuf",
                        bytes,
                        Expect::BadMessage(r.seq),
                    )
                }
            }
        };
        Ok(McapCase {
            kind,
            bytes,
            expect,
        })
    }
}
