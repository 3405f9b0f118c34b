//! How recorded messages appear in MCAP recordings as Foxglove messages
//! (protobuf, the schemas of the `foxglove` crate), and back.
//!
//! Write side ([`map_message`]): a message that decodes as a da3 message
//! ([`da3_msg::Message::decode`]) gets Foxglove views on topics named after
//! its stream `S`:
//!
//! | da3 message | topic `S` | `S/calibration` | `S/pose` |
//! |---|---|---|---|
//! | image `rgb8`/`bgr8`/`rgba8`/`mono8`, `depth_vis` | `RawImage` (same encoding) | with intrinsics | - |
//! | image `jpeg`/`png` | `CompressedImage` | with intrinsics and a size | - |
//! | depth, confidence | `RawImage` `32FC1` | with intrinsics | with a pose |
//! | camera | `CameraCalibration` (`K`, `P = [K\|0]`) | - | `FrameTransform` |
//! | points | `PointCloud` (x, y, z `FLOAT32`, red, green, blue `UINT8`) | - | - |
//!
//! Frames: an image, depth or camera message is in frame `<camera>/<S>`
//! (`S` alone when it names no camera), its pose a `FrameTransform` from
//! [`WORLD_FRAME`] to that frame (camera-to-world, as in the metadata);
//! points are in [`WORLD_FRAME`]. Rerun turns `CameraCalibration` into a
//! `Pinhole` between `<frame>` and `<frame>_image_plane`, where it puts the
//! images of that frame.
//!
//! When the Foxglove message on `S` holds the payload exactly (the values,
//! the Arrow type, no nulls), the recording keeps the payload only there and
//! [`rebuild_payload`] makes the Arrow array again on read; otherwise (a
//! camera's 21 values, anything that does not decode) the record keeps the
//! payload itself.

use std::sync::Arc;

use da3_msg::arrow::array::{Array, ArrayRef, Float32Array, UInt8Array};
use da3_msg::arrow::datatypes::DataType;
use da3_msg::{
    DepthMap, DepthVis, Encoding, ImageFrame, Message, MetadataParameters, PointCloud, Pose,
};
use eyre::{bail, eyre, Result};
use foxglove::messages::{
    packed_element_field::NumericType, CameraCalibration, CompressedImage, FrameTransform,
    PackedElementField, PointCloud as FoxPointCloud, Quaternion, RawImage, Timestamp, Vector3,
};
use foxglove::Encode;
use prost::bytes::Bytes;

/// The parent frame of every pose, and the frame of point clouds.
pub const WORLD_FRAME: &str = "world";
/// Topic suffix of the intrinsics of a stream.
pub const CALIBRATION_SUFFIX: &str = "calibration";
/// Topic suffix of the poses of a stream.
pub const POSE_SUFFIX: &str = "pose";
/// Encoding of depth and confidence in a `RawImage`.
pub const DEPTH_ENCODING: &str = "32FC1";
/// Bytes per point of our `PointCloud` layout.
pub const POINT_STRIDE: u32 = 15;

/// The Foxglove schemas recordings use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FoxKind {
    RawImage,
    CompressedImage,
    CameraCalibration,
    FrameTransform,
    PointCloud,
}

impl FoxKind {
    pub const ALL: [FoxKind; 5] = [
        Self::RawImage,
        Self::CompressedImage,
        Self::CameraCalibration,
        Self::FrameTransform,
        Self::PointCloud,
    ];

    /// The schema: name (`foxglove.RawImage`...), `protobuf`, the file descriptor set.
    pub fn schema(self) -> foxglove::Schema {
        let s = match self {
            Self::RawImage => RawImage::get_schema(),
            Self::CompressedImage => CompressedImage::get_schema(),
            Self::CameraCalibration => CameraCalibration::get_schema(),
            Self::FrameTransform => FrameTransform::get_schema(),
            Self::PointCloud => FoxPointCloud::get_schema(),
        };
        s.unwrap_or_else(|| foxglove::Schema::new(self.name(), "protobuf", Vec::new()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RawImage => "foxglove.RawImage",
            Self::CompressedImage => "foxglove.CompressedImage",
            Self::CameraCalibration => "foxglove.CameraCalibration",
            Self::FrameTransform => "foxglove.FrameTransform",
            Self::PointCloud => "foxglove.PointCloud",
        }
    }

    /// The kind of a schema name, `None` for other schemas.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether a message of this schema can hold a recorded payload.
    pub fn holds_payload(self) -> bool {
        matches!(
            self,
            Self::RawImage | Self::CompressedImage | Self::PointCloud
        )
    }
}

/// One Foxglove message to write: its topic, schema and protobuf bytes.
#[derive(Debug, Clone)]
pub struct FoxMessage {
    pub topic: String,
    pub kind: FoxKind,
    pub data: Vec<u8>,
}

/// The Foxglove views of one recorded message.
#[derive(Debug, Clone, Default)]
pub struct Mapped {
    /// Written before the message's record, in this order.
    pub messages: Vec<FoxMessage>,
    /// Set when the message on this topic holds the payload exactly (the
    /// record then leaves its payload out).
    pub payload_topic: Option<String>,
}

/// The Foxglove views of a message recorded on `stream`; see the module docs.
/// `stamp_ns`: the time written into the Foxglove messages (capture time, or
/// the receive time when the message has none). Never fails: a message
/// without a view maps to nothing.
pub fn map_message(
    stream: &str,
    stamp_ns: u64,
    params: &MetadataParameters,
    data: &dyn Array,
) -> Mapped {
    let Ok(msg) = Message::decode(data, params) else {
        return Mapped::default();
    };
    let ts = Some(timestamp(stamp_ns));
    let frame = |camera: &Option<String>| match camera {
        Some(c) if !c.is_empty() => format!("{c}/{stream}"),
        _ => stream.to_string(),
    };
    let mut out = Mapped::default();
    let mut push = |topic: String, kind: FoxKind, data: Vec<u8>| {
        out.messages.push(FoxMessage { topic, kind, data });
    };
    let calibration_topic = format!("{stream}/{CALIBRATION_SUFFIX}");
    let pose_topic = format!("{stream}/{POSE_SUFFIX}");
    let mut payload_here = false;
    match msg {
        Message::Image(f)
        | Message::DepthVis(DepthVis { frame: f, .. })
        | Message::Mask(da3_msg::Mask { frame: f, .. }) => {
            let frame_id = frame(&f.info.camera);
            payload_here = data.data_type() == &DataType::UInt8 && no_nulls(data);
            if let Some(k) = f.intrinsics.filter(|_| f.width > 0 && f.height > 0) {
                let cal = calibration(ts, &frame_id, f.width, f.height, &k.matrix());
                push(calibration_topic, FoxKind::CameraCalibration, encode(&cal));
            }
            push(
                stream.to_string(),
                image_kind(&f),
                encode_image(ts, frame_id, f),
            );
        }
        Message::Depth(d) | Message::Confidence(d) => {
            let frame_id = frame(&d.info.camera);
            payload_here = data.data_type() == &DataType::Float32 && no_nulls(data);
            if let Some(k) = &d.intrinsics {
                let cal = calibration(ts, &frame_id, d.width, d.height, &k.matrix());
                push(calibration_topic, FoxKind::CameraCalibration, encode(&cal));
            }
            if let Some(p) = &d.pose {
                push(
                    pose_topic,
                    FoxKind::FrameTransform,
                    encode(&transform(ts, &frame_id, p)),
                );
            }
            push(
                stream.to_string(),
                FoxKind::RawImage,
                encode_depth(ts, frame_id, d),
            );
        }
        Message::Camera(c) => {
            let frame_id = frame(&c.info.camera);
            let cal = calibration(ts, &frame_id, c.width, c.height, &c.intrinsics);
            push(stream.to_string(), FoxKind::CameraCalibration, encode(&cal));
            push(
                pose_topic,
                FoxKind::FrameTransform,
                encode(&transform(ts, &frame_id, &c.pose())),
            );
        }
        Message::Points(p) => {
            payload_here = data.data_type() == &points_type() && no_nulls(data);
            push(
                stream.to_string(),
                FoxKind::PointCloud,
                encode(&point_cloud(ts, &p)),
            );
        }
        Message::Gaussians(g) => {
            // The centres with their DC colour; the record keeps every parameter.
            let p = PointCloud {
                xyz: g.gaussians.means.clone(),
                rgb: g.gaussians.dc_colours(),
                info: g.info.clone(),
                is_metric: g.is_metric,
            };
            push(
                stream.to_string(),
                FoxKind::PointCloud,
                encode(&point_cloud(ts, &p)),
            );
        }
        Message::Status(_) => {}
    }
    if payload_here {
        out.payload_topic = Some(stream.to_string());
    }
    out
}

/// The Arrow type of a da3 point cloud.
fn points_type() -> DataType {
    PointCloud::default().to_message().0.data_type().clone()
}

/// No nulls anywhere in the array (children included).
fn no_nulls(a: &dyn Array) -> bool {
    fn rec(d: &da3_msg::arrow::array::ArrayData) -> bool {
        d.null_count() == 0 && d.child_data().iter().all(rec)
    }
    rec(&a.to_data())
}

fn encode<T: prost::Message>(m: &T) -> Vec<u8> {
    m.encode_to_vec()
}

fn timestamp(ns: u64) -> Timestamp {
    let sec = (ns / 1_000_000_000).min(u32::MAX as u64) as u32;
    Timestamp::new(sec, (ns % 1_000_000_000) as u32)
}

fn calibration(
    ts: Option<Timestamp>,
    frame_id: &str,
    width: u32,
    height: u32,
    k: &[f64; 9],
) -> CameraCalibration {
    CameraCalibration {
        timestamp: ts,
        frame_id: frame_id.to_string(),
        width,
        height,
        distortion_model: String::new(),
        d: Vec::new(),
        k: k.to_vec(),
        r: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p: vec![
            k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0,
        ],
    }
}

fn transform(ts: Option<Timestamp>, frame_id: &str, p: &Pose) -> FrameTransform {
    let [x, y, z] = p.position;
    let [qx, qy, qz, qw] = p.orientation;
    FrameTransform {
        timestamp: ts,
        parent_frame_id: WORLD_FRAME.to_string(),
        child_frame_id: frame_id.to_string(),
        translation: Some(Vector3 { x, y, z }),
        rotation: Some(Quaternion {
            x: qx,
            y: qy,
            z: qz,
            w: qw,
        }),
    }
}

fn image_kind(f: &ImageFrame) -> FoxKind {
    // The same decision as `encode_image`: files (jpeg, png, webp, bmp) are compressed images.
    match f.encoding.row_bytes(f.width) {
        None => FoxKind::CompressedImage,
        Some(_) => FoxKind::RawImage,
    }
}

fn encode_image(ts: Option<Timestamp>, frame_id: String, f: ImageFrame) -> Vec<u8> {
    match f.encoding.row_bytes(f.width) {
        None => encode(&CompressedImage {
            timestamp: ts,
            frame_id,
            data: Bytes::from(f.data),
            format: f.encoding.as_str().to_string(),
        }),
        Some(step) => encode(&RawImage {
            timestamp: ts,
            frame_id,
            width: f.width,
            height: f.height,
            encoding: f.encoding.as_str().to_string(),
            step: u32::try_from(step).unwrap_or(u32::MAX),
            data: Bytes::from(f.data),
        }),
    }
}

fn encode_depth(ts: Option<Timestamp>, frame_id: String, d: DepthMap) -> Vec<u8> {
    let data: Vec<u8> = d.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode(&RawImage {
        timestamp: ts,
        frame_id,
        width: d.width,
        height: d.height,
        encoding: DEPTH_ENCODING.to_string(),
        step: d.width.saturating_mul(4),
        data: Bytes::from(data),
    })
}

/// Our point layout: x, y, z (f32 LE) then red, green, blue (u8), 15 bytes.
fn point_fields() -> Vec<PackedElementField> {
    [
        ("x", 0, NumericType::Float32),
        ("y", 4, NumericType::Float32),
        ("z", 8, NumericType::Float32),
        ("red", 12, NumericType::Uint8),
        ("green", 13, NumericType::Uint8),
        ("blue", 14, NumericType::Uint8),
    ]
    .into_iter()
    .map(|(name, offset, ty)| PackedElementField {
        name: name.to_string(),
        offset,
        r#type: ty as i32,
    })
    .collect()
}

fn point_cloud(ts: Option<Timestamp>, p: &PointCloud) -> FoxPointCloud {
    let mut data = Vec::with_capacity(p.len() * POINT_STRIDE as usize);
    for (xyz, rgb) in p.xyz.iter().zip(&p.rgb) {
        for v in xyz {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(rgb);
    }
    FoxPointCloud {
        timestamp: ts,
        frame_id: WORLD_FRAME.to_string(),
        pose: Some(foxglove::messages::Pose {
            position: Some(Vector3 {
                x: 0.0,
                y: 0.0,
                z: 0.0,
            }),
            orientation: Some(Quaternion {
                x: 0.0,
                y: 0.0,
                z: 0.0,
                w: 1.0,
            }),
        }),
        point_stride: POINT_STRIDE,
        fields: point_fields(),
        data: Bytes::from(data),
    }
}

/// The Arrow payload held by a Foxglove message of schema `schema` (the
/// inverse of [`map_message`] for the payload). `arrow_type`: what the
/// record says the payload is; a message that does not give exactly that is
/// an error (a damaged file), as are sizes that do not add up.
pub fn rebuild_payload(schema: &str, data: Bytes, arrow_type: &str) -> Result<ArrayRef> {
    let kind = FoxKind::from_name(schema)
        .filter(|k| k.holds_payload())
        .ok_or_else(|| eyre!("a `{schema}` message holds no payload"))?;
    let array: ArrayRef = match kind {
        FoxKind::RawImage => {
            let m: RawImage = prost::Message::decode(data)?;
            let rows = m.step as u64 * m.height as u64;
            if rows != m.data.len() as u64 {
                bail!(
                    "RawImage of {} bytes, but step {} x height {}",
                    m.data.len(),
                    m.step,
                    m.height
                );
            }
            if m.encoding == DEPTH_ENCODING {
                if m.step as u64 != m.width as u64 * 4 {
                    bail!("32FC1 RawImage with step {} for width {}", m.step, m.width);
                }
                let v: Vec<f32> = m
                    .data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Arc::new(Float32Array::from(v))
            } else {
                let step = Encoding::parse(&m.encoding)
                    .and_then(|e| e.row_bytes(m.width))
                    .ok_or_else(|| eyre!("RawImage encoding `{}` is not ours", m.encoding))?;
                if m.step as u64 != step as u64 {
                    bail!(
                        "{} RawImage with step {} for width {}",
                        m.encoding,
                        m.step,
                        m.width
                    );
                }
                Arc::new(UInt8Array::from(m.data.to_vec()))
            }
        }
        FoxKind::CompressedImage => {
            let m: CompressedImage = prost::Message::decode(data)?;
            Arc::new(UInt8Array::from(m.data.to_vec()))
        }
        _ => {
            let m: FoxPointCloud = prost::Message::decode(data)?;
            if m.point_stride != POINT_STRIDE || m.fields != point_fields() {
                bail!("PointCloud with a layout other than ours (x, y, z, red, green, blue)");
            }
            let rows = m.data.chunks_exact(POINT_STRIDE as usize);
            if !rows.remainder().is_empty() {
                bail!("PointCloud of {} bytes, not whole points", m.data.len());
            }
            let f = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let mut p = PointCloud::default();
            for r in rows {
                p.xyz.push([f(&r[0..4]), f(&r[4..8]), f(&r[8..12])]);
                p.rgb.push([r[12], r[13], r[14]]);
            }
            p.to_message().0
        }
    };
    let got = array.data_type().to_string();
    if got != arrow_type {
        bail!("the `{schema}` message gives a {got} payload, the record says {arrow_type}");
    }
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3_msg::{DepthKind, FrameInfo, Intrinsics};

    fn info() -> FrameInfo {
        FrameInfo {
            frame_id: Some(3),
            stamp_ns: Some(1_700_000_000_123_456_789),
            camera: Some("cam".into()),
            last: false,
        }
    }

    #[test]
    fn depth_maps_to_raw_image_calibration_and_pose_and_back() {
        let d = DepthMap {
            kind: DepthKind::Depth,
            width: 3,
            height: 2,
            values: vec![0.5, f32::NAN, -0.0, 1e-30, f32::INFINITY, 7.0],
            info: info(),
            intrinsics: Some(Intrinsics {
                fx: 2.0,
                fy: 2.5,
                cx: 1.5,
                cy: 1.0,
            }),
            pose: Some(Pose {
                position: [1.0, 2.0, 3.0],
                orientation: [0.0, 0.0, 0.0, 1.0],
            }),
            is_metric: true,
        };
        let (a, p) = d.to_message();
        let m = map_message("depth", 5, &p, a.as_ref());
        let topics: Vec<(&str, FoxKind)> = m
            .messages
            .iter()
            .map(|f| (f.topic.as_str(), f.kind))
            .collect();
        assert_eq!(
            topics,
            vec![
                ("depth/calibration", FoxKind::CameraCalibration),
                ("depth/pose", FoxKind::FrameTransform),
                ("depth", FoxKind::RawImage),
            ]
        );
        assert_eq!(m.payload_topic.as_deref(), Some("depth"));
        let img: RawImage = prost::Message::decode(&m.messages[2].data[..]).unwrap();
        assert_eq!((img.width, img.height, img.step), (3, 2, 12));
        assert_eq!(img.encoding, "32FC1");
        assert_eq!(img.frame_id, "cam/depth");
        let cal: CameraCalibration = prost::Message::decode(&m.messages[0].data[..]).unwrap();
        assert_eq!(cal.k, vec![2.0, 0.0, 1.5, 0.0, 2.5, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(cal.p[3], 0.0);
        let tf: FrameTransform = prost::Message::decode(&m.messages[1].data[..]).unwrap();
        assert_eq!(tf.child_frame_id, "cam/depth");
        assert_eq!(tf.translation.unwrap().z, 3.0);
        let back = rebuild_payload(
            "foxglove.RawImage",
            Bytes::from(m.messages[2].data.clone()),
            "Float32",
        )
        .unwrap();
        assert_eq!(back.to_data(), a.to_data());
        let bits = |x: &dyn Array| -> Vec<u32> {
            x.as_any()
                .downcast_ref::<Float32Array>()
                .unwrap()
                .values()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(back.as_ref()), bits(a.as_ref()), "NaN bits kept");
        // A record claiming another type is refused.
        let e = rebuild_payload(
            "foxglove.RawImage",
            Bytes::from(m.messages[2].data.clone()),
            "UInt8",
        );
        assert!(e.is_err());
    }

    #[test]
    fn images_points_and_cameras() {
        let mut f = ImageFrame::rgb8(2, 2, (0..12).collect());
        f.info = info();
        let (a, p) = f.to_message();
        let m = map_message("image", 0, &p, a.as_ref());
        assert_eq!(m.messages.len(), 1);
        let back = rebuild_payload(
            "foxglove.RawImage",
            m.messages[0].data.clone().into(),
            "UInt8",
        )
        .unwrap();
        assert_eq!(back.to_data(), a.to_data());

        let mut j = f.clone();
        j.encoding = Encoding::Jpeg;
        j.data = vec![0xff, 0xd8, 1, 2, 3];
        let (a, p) = j.to_message();
        let m = map_message("image", 0, &p, a.as_ref());
        assert_eq!(m.messages[0].kind, FoxKind::CompressedImage);
        let c: CompressedImage = prost::Message::decode(&m.messages[0].data[..]).unwrap();
        assert_eq!(c.format, "jpeg");

        let pts = PointCloud {
            xyz: vec![[1.0, 2.0, 3.0], [-1.0, 0.5, f32::NAN]],
            rgb: vec![[255, 0, 10], [1, 2, 3]],
            info: info(),
            is_metric: true,
        };
        let (a, p) = pts.to_message();
        let m = map_message("points", 0, &p, a.as_ref());
        assert_eq!(m.payload_topic.as_deref(), Some("points"));
        let back = rebuild_payload(
            "foxglove.PointCloud",
            m.messages[0].data.clone().into(),
            &a.data_type().to_string(),
        )
        .unwrap();
        assert_eq!(back.data_type(), a.data_type());
        assert_eq!(
            PointCloud::from_message(back.as_ref(), &p).unwrap().rgb,
            pts.rgb
        );

        let cam = da3_msg::CameraMsg {
            extrinsics: [1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 0.0, 0.2, 0.0, 0.0, 1.0, 0.3],
            intrinsics: [100.0, 0.0, 32.0, 0.0, 100.0, 24.0, 0.0, 0.0, 1.0],
            width: 64,
            height: 48,
            info: info(),
            is_metric: false,
        };
        let (a, p) = cam.to_message();
        let m = map_message("camera", 0, &p, a.as_ref());
        assert_eq!(m.payload_topic, None, "the 21 values stay in the record");
        assert_eq!(m.messages[0].kind, FoxKind::CameraCalibration);
        let tf: FrameTransform = prost::Message::decode(&m.messages[1].data[..]).unwrap();
        let t = tf.translation.unwrap();
        assert_eq!([t.x, t.y, t.z], [-0.1, -0.2, -0.3]);
    }

    #[test]
    fn what_does_not_decode_maps_to_nothing() {
        let a: ArrayRef = Arc::new(Float32Array::from(vec![1.0f32]));
        let m = map_message("x", 0, &MetadataParameters::new(), a.as_ref());
        assert!(m.messages.is_empty() && m.payload_topic.is_none());
        // An image whose payload has nulls keeps its payload in the record.
        let mut f = ImageFrame::rgb8(1, 1, vec![1, 2, 3]);
        f.info = info();
        let (_, p) = f.to_message();
        let with_null: ArrayRef = Arc::new(UInt8Array::from(vec![Some(1), None, Some(3)]));
        let m = map_message("image", 0, &p, with_null.as_ref());
        assert!(m.payload_topic.is_none());
    }
}
