//! The one decoder of the conventions: [`Message::decode`] reads `primitive`
//! and hands the message to the type it names. Every sink calls this instead
//! of dispatching by hand; nothing routes on input names.
//!
//! Two messages are not plain data of their own type:
//! - the colour-mapped depth of the DA3 node is an [`ImageFrame`] marked with
//!   [`keys::COLORMAP`] ([`DepthVis`]), so that a sink tells it from a camera
//!   picture by its metadata;
//! - the sky mask of the DA3 node is a `mono8` [`ImageFrame`] marked with
//!   [`keys::MASK`] ([`Mask`]);
//! - [`Status`] is the DA3 node's `status` output, one JSON document.

use std::sync::Arc;

use crate::arrow::array::{Array, ArrayRef, StringArray};
use crate::camera::CameraMsg;
use crate::depth::DepthMap;
use crate::error::{MsgError, Result};
use crate::image_frame::{Encoding, ImageFrame};
use crate::keys;
use crate::meta::{opt_str, FrameInfo};
use crate::points::PointCloud;
use crate::splats::Splats;
use dora_node_api::{MetadataParameters, Parameter};

/// The values of `primitive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    Image,
    Depth,
    Confidence,
    Camera,
    Points,
    Gaussians,
    Status,
}

impl Primitive {
    pub const ALL: [Primitive; 7] = [
        Self::Image,
        Self::Depth,
        Self::Confidence,
        Self::Camera,
        Self::Points,
        Self::Gaussians,
        Self::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Depth => "depth",
            Self::Confidence => "confidence",
            Self::Camera => "camera",
            Self::Points => "points",
            Self::Gaussians => "gaussians",
            Self::Status => "status",
        }
    }

    /// The primitive of this name (exact, lower case), `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Colour map name of the DA3 node's `depth_vis` (turbo of inverse depth).
pub const COLORMAP_TURBO: &str = "turbo";

/// A colour-mapped rendering of a depth map (the DA3 node's `depth_vis`): an
/// [`ImageFrame`] whose metadata also carries [`keys::COLORMAP`].
#[derive(Debug, Clone, PartialEq)]
pub struct DepthVis {
    pub frame: ImageFrame,
    /// The colour map's name ([`COLORMAP_TURBO`]).
    pub colormap: String,
}

impl DepthVis {
    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let (array, mut params) = self.frame.to_message();
        params.insert(
            keys::COLORMAP.into(),
            Parameter::String(self.colormap.clone()),
        );
        (array, params)
    }
}

/// Mask name of the DA3 node's `sky` output.
pub const MASK_SKY: &str = "sky";

/// A per-pixel mask (the DA3 node's `sky`): a `mono8` [`ImageFrame`], 255 where the mask holds
/// and 0 elsewhere, whose metadata also carries [`keys::MASK`] (its name).
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub frame: ImageFrame,
    /// The mask's name ([`MASK_SKY`]).
    pub mask: String,
}

impl Mask {
    /// A mask of `width x height` from one flag per pixel.
    pub fn from_flags(
        mask: &str,
        width: u32,
        height: u32,
        flags: &[bool],
        info: crate::meta::FrameInfo,
    ) -> Self {
        Self {
            frame: ImageFrame {
                encoding: crate::image_frame::Encoding::Mono8,
                width,
                height,
                data: flags.iter().map(|&f| if f { 255 } else { 0 }).collect(),
                info,
                intrinsics: None,
            },
            mask: mask.to_string(),
        }
    }

    /// Whether pixel `i` (row-major) is in the mask.
    pub fn contains(&self, i: usize) -> bool {
        self.frame.data.get(i).is_some_and(|&v| v >= 128)
    }

    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let (array, mut params) = self.frame.to_message();
        params.insert(keys::MASK.into(), Parameter::String(self.mask.clone()));
        (array, params)
    }

    fn from_frame(frame: ImageFrame, mask: &str) -> Result<Self> {
        if frame.encoding != crate::image_frame::Encoding::Mono8 {
            return Err(MsgError::InvalidValue {
                key: keys::MASK,
                reason: format!("a mask is mono8, got {}", frame.encoding),
            });
        }
        Ok(Self {
            frame,
            mask: mask.to_string(),
        })
    }
}

/// Marks an image of a recording made before [`keys::COLORMAP`] existed as
/// the colour-mapped depth: a message recorded on a stream named `depth_vis`
/// with `primitive: image` and no `colormap` gets `colormap: turbo` (the only
/// map the DA3 node ever drew). `true` when it changed `params`. The `replay`
/// node applies this to what it sends, so old recordings keep their meaning.
pub fn mark_legacy_depth_vis(stream: &str, params: &mut MetadataParameters) -> bool {
    let is_image = matches!(
        params.get(keys::PRIMITIVE),
        Some(Parameter::String(s)) if s == Primitive::Image.as_str()
    );
    if stream != "depth_vis" || !is_image || params.contains_key(keys::COLORMAP) {
        return false;
    }
    params.insert(
        keys::COLORMAP.into(),
        Parameter::String(COLORMAP_TURBO.into()),
    );
    true
}

/// The DA3 node's `status` output: one JSON object with a string `type`
/// (`stats`, `error` or `warning`; see `docs/messages.md` for the fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub json: serde_json::Value,
}

impl Status {
    /// The record's `type`: `stats`, `error` or `warning`.
    pub fn record_type(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }

    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        let mut params = MetadataParameters::new();
        params.insert(
            keys::PRIMITIVE.into(),
            Parameter::String(Primitive::Status.as_str().into()),
        );
        let array: ArrayRef = Arc::new(StringArray::from(vec![self.json.to_string()]));
        (array, params)
    }

    pub fn from_message(data: &dyn Array, _params: &MetadataParameters) -> Result<Self> {
        let arr = data.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            MsgError::WrongArrowType {
                expected: "Utf8",
                found: format!("{}", data.data_type()),
            }
        })?;
        if arr.len() != 1 {
            return Err(MsgError::LengthMismatch {
                expected: 1,
                got: arr.len(),
                unit: "strings",
            });
        }
        if arr.null_count() > 0 {
            return Err(MsgError::Nulls);
        }
        let invalid = |reason: String| MsgError::InvalidValue {
            key: keys::PRIMITIVE,
            reason,
        };
        let json: serde_json::Value = serde_json::from_str(arr.value(0))
            .map_err(|e| invalid(format!("status is not JSON: {e}")))?;
        if !json.get("type").is_some_and(serde_json::Value::is_string) {
            return Err(invalid("status JSON has no string `type`".into()));
        }
        Ok(Self { json })
    }
}

/// `encoding` names `mono16` (or an alias).
fn is_mono16(params: &MetadataParameters) -> bool {
    matches!(
        params.get(keys::ENCODING),
        Some(Parameter::String(s)) if Encoding::parse(s) == Some(Encoding::Mono16)
    )
}

/// Any message of the conventions, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A camera picture (`image` without `colormap`).
    Image(ImageFrame),
    /// The colour-mapped depth (`image` with `colormap`).
    DepthVis(DepthVis),
    /// A mask (`image` with `mask`).
    Mask(Mask),
    Depth(DepthMap),
    Confidence(DepthMap),
    /// A camera whose geometry has been checked (see [`CameraMsg::from_message`]).
    Camera(CameraMsg),
    Points(PointCloud),
    /// 3D Gaussians of one view ([`Splats`]).
    Gaussians(Splats),
    Status(Status),
}

impl Message {
    /// Decodes a message by its `primitive`. A message without `primitive`
    /// but with `encoding` is an image (frames of other dora nodes carry no
    /// `primitive`); any other message without one, or with a name this crate
    /// does not define, is an error. Images are checked as messages, not
    /// decoded (see [`ImageFrame::to_rgb8`]), except `mono16` frames: depth
    /// images in millimetres, decoded to a [`DepthMap`] in metres
    /// ([`DepthMap::from_mono16`]) whether they say `image`, `depth` or nothing.
    pub fn decode(data: &dyn Array, params: &MetadataParameters) -> Result<Self> {
        let primitive = match opt_str(params, keys::PRIMITIVE)? {
            Some(name) => Primitive::parse(name).ok_or_else(|| MsgError::InvalidValue {
                key: keys::PRIMITIVE,
                reason: format!("unknown primitive `{name}`"),
            })?,
            None if params.contains_key(keys::ENCODING) => Primitive::Image,
            None => {
                return Err(MsgError::MissingKey {
                    key: keys::PRIMITIVE,
                })
            }
        };
        if matches!(primitive, Primitive::Image | Primitive::Depth) && is_mono16(params) {
            // A depth camera's 16-bit depth image (millimetres), as an image
            // (`primitive: image` or none) or claimed as depth: a depth map.
            let frame = ImageFrame::from_message(data, params)?;
            return Ok(Self::Depth(DepthMap::from_mono16(&frame)?));
        }
        Ok(match primitive {
            Primitive::Image => {
                let frame = ImageFrame::from_message(data, params)?;
                match (
                    opt_str(params, keys::COLORMAP)?,
                    opt_str(params, keys::MASK)?,
                ) {
                    (Some(map), _) => Self::DepthVis(DepthVis {
                        frame,
                        colormap: map.to_string(),
                    }),
                    (None, Some(mask)) => Self::Mask(Mask::from_frame(frame, mask)?),
                    (None, None) => Self::Image(frame),
                }
            }
            Primitive::Depth => Self::Depth(DepthMap::from_message(data, params)?),
            Primitive::Confidence => Self::Confidence(DepthMap::from_message(data, params)?),
            Primitive::Camera => Self::Camera(CameraMsg::from_message(data, params)?),
            Primitive::Points => Self::Points(PointCloud::from_message(data, params)?),
            Primitive::Gaussians => Self::Gaussians(Splats::from_message(data, params)?),
            Primitive::Status => Self::Status(Status::from_message(data, params)?),
        })
    }

    /// [`decode`](Self::decode) for a message that says it is one of ours:
    /// `Ok(None)` when `primitive` is absent or a string this crate does not
    /// define (another convention's message, not judged); a `primitive` that
    /// is not a string is an error.
    pub fn decode_claimed(data: &dyn Array, params: &MetadataParameters) -> Result<Option<Self>> {
        match opt_str(params, keys::PRIMITIVE)? {
            Some(name) if Primitive::parse(name).is_some() => Self::decode(data, params).map(Some),
            _ => Ok(None),
        }
    }

    /// The frame this message belongs to (`None` for [`Status`]).
    pub fn info(&self) -> Option<&FrameInfo> {
        match self {
            Self::Image(f)
            | Self::DepthVis(DepthVis { frame: f, .. })
            | Self::Mask(Mask { frame: f, .. }) => Some(&f.info),
            Self::Depth(d) | Self::Confidence(d) => Some(&d.info),
            Self::Camera(c) => Some(&c.info),
            Self::Points(p) => Some(&p.info),
            Self::Gaussians(g) => Some(&g.info),
            Self::Status(_) => None,
        }
    }

    pub fn to_message(&self) -> (ArrayRef, MetadataParameters) {
        match self {
            Self::Image(f) => f.to_message(),
            Self::DepthVis(v) => v.to_message(),
            Self::Mask(m) => m.to_message(),
            Self::Depth(d) | Self::Confidence(d) => d.to_message(),
            Self::Camera(c) => c.to_message(),
            Self::Points(p) => p.to_message(),
            Self::Gaussians(g) => g.to_message(),
            Self::Status(s) => s.to_message(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::array::Float32Array;
    use crate::depth::DepthKind;

    fn depth() -> DepthMap {
        DepthMap {
            kind: DepthKind::Depth,
            width: 2,
            height: 1,
            values: vec![1.0, 2.0],
            info: FrameInfo {
                frame_id: Some(4),
                ..Default::default()
            },
            intrinsics: None,
            pose: None,
            is_metric: false,
        }
    }

    #[test]
    fn every_message_round_trips_through_decode() {
        let mut conf = depth();
        conf.kind = DepthKind::Confidence;
        let img = ImageFrame::rgb8(1, 1, vec![1, 2, 3]);
        let all = [
            Message::Image(img.clone()),
            Message::DepthVis(DepthVis {
                frame: img,
                colormap: COLORMAP_TURBO.into(),
            }),
            Message::Mask(Mask::from_flags(
                MASK_SKY,
                2,
                1,
                &[true, false],
                FrameInfo::default(),
            )),
            Message::Depth(depth()),
            Message::Confidence(conf),
            Message::Camera(crate::camera::tests::identity_camera()),
            Message::Points(PointCloud::default()),
            Message::Gaussians(crate::splats::tests::sample()),
            Message::Status(Status {
                json: serde_json::json!({"type": "stats", "fps": 2.5}),
            }),
        ];
        for m in all {
            let (a, p) = m.to_message();
            assert_eq!(Message::decode(a.as_ref(), &p).unwrap(), m);
            assert_eq!(Message::decode_claimed(a.as_ref(), &p).unwrap(), Some(m));
        }
    }

    #[test]
    fn a_mask_is_mono8_and_keeps_its_flags() {
        let m = Mask::from_flags(MASK_SKY, 3, 1, &[true, false, true], FrameInfo::default());
        assert!(m.contains(0) && !m.contains(1) && m.contains(2) && !m.contains(3));
        let (a, p) = m.to_message();
        assert_eq!(Message::decode(a.as_ref(), &p).unwrap(), Message::Mask(m));
        // A mask on a colour image is rejected, naming the key.
        let (a, mut p) = ImageFrame::rgb8(1, 1, vec![1, 2, 3]).to_message();
        p.insert(keys::MASK.into(), Parameter::String("sky".into()));
        assert!(matches!(
            Message::decode(a.as_ref(), &p),
            Err(MsgError::InvalidValue { key: "mask", .. })
        ));
    }

    #[test]
    fn mono16_frames_are_depth_in_metres() {
        use crate::arrow::array::UInt16Array;
        use crate::meta::Intrinsics;
        // As dora's RealSense node sends it: no primitive, UInt16 millimetres.
        let mm = UInt16Array::from(vec![0u16, 1500, 65535, 250]);
        let mut p = MetadataParameters::new();
        p.insert(keys::ENCODING.into(), Parameter::String("mono16".into()));
        p.insert(keys::WIDTH.into(), Parameter::Integer(2));
        p.insert(keys::HEIGHT.into(), Parameter::Integer(2));
        p.insert(keys::FRAME_ID.into(), Parameter::Integer(9));
        p.insert(keys::FOCAL.into(), Parameter::ListFloat(vec![100.0, 100.0]));
        p.insert(
            keys::PRINCIPAL_POINT.into(),
            Parameter::ListFloat(vec![1.0, 1.0]),
        );
        let want = DepthMap {
            kind: DepthKind::Depth,
            width: 2,
            height: 2,
            values: vec![0.0, 1.5, 65.535, 0.25],
            info: FrameInfo {
                frame_id: Some(9),
                ..Default::default()
            },
            intrinsics: Some(Intrinsics {
                fx: 100.0,
                fy: 100.0,
                cx: 1.0,
                cy: 1.0,
            }),
            pose: None,
            is_metric: true,
        };
        assert_eq!(Message::decode(&mm, &p), Ok(Message::Depth(want.clone())));
        for primitive in ["image", "depth"] {
            p.insert(keys::PRIMITIVE.into(), Parameter::String(primitive.into()));
            assert_eq!(
                Message::decode_claimed(&mm, &p),
                Ok(Some(Message::Depth(want.clone()))),
                "{primitive}"
            );
        }
        // Truncated: the image frame's length error.
        let short = UInt16Array::from(vec![0u16, 1500, 65535]);
        assert!(matches!(
            Message::decode(&short, &p),
            Err(MsgError::LengthMismatch { .. })
        ));
        // A confidence map is never a mono16 frame.
        p.insert(
            keys::PRIMITIVE.into(),
            Parameter::String("confidence".into()),
        );
        assert!(matches!(
            Message::decode(&mm, &p),
            Err(MsgError::WrongArrowType { .. })
        ));
    }

    #[test]
    fn primitive_decides_not_the_input_name() {
        let (a, mut p) = ImageFrame::rgb8(1, 1, vec![1, 2, 3]).to_message();
        // Frames of other dora nodes: no `primitive`, but an `encoding`.
        p.remove(keys::PRIMITIVE);
        assert!(matches!(
            Message::decode(a.as_ref(), &p),
            Ok(Message::Image(_))
        ));
        assert_eq!(Message::decode_claimed(a.as_ref(), &p), Ok(None));
        p.remove(keys::ENCODING);
        assert_eq!(
            Message::decode(a.as_ref(), &p),
            Err(MsgError::MissingKey { key: "primitive" })
        );
        p.insert(keys::PRIMITIVE.into(), Parameter::String("what".into()));
        assert!(matches!(
            Message::decode(a.as_ref(), &p),
            Err(MsgError::InvalidValue {
                key: "primitive",
                ..
            })
        ));
        assert_eq!(Message::decode_claimed(a.as_ref(), &p), Ok(None));
        p.insert(keys::PRIMITIVE.into(), Parameter::Integer(1));
        assert!(Message::decode_claimed(a.as_ref(), &p).is_err());
        // A depth payload of the wrong size.
        let (_, p) = depth().to_message();
        let short = Float32Array::from(vec![1.0f32]);
        assert!(Message::decode(&short, &p).is_err());
    }

    #[test]
    fn status_must_be_one_json_object_with_a_type() {
        let (_, p) = Status {
            json: serde_json::json!({"type": "error"}),
        }
        .to_message();
        for bad in [
            vec!["not json"],
            vec![r#"{"fps": 1}"#],
            vec![r#"{"type": "stats"}"#, r#"{"type": "stats"}"#],
        ] {
            assert!(Message::decode(&StringArray::from(bad), &p).is_err());
        }
        assert!(Message::decode(&Float32Array::from(vec![1.0f32]), &p).is_err());
    }

    #[test]
    fn legacy_depth_vis_is_marked_once() {
        let (a, mut p) = ImageFrame::rgb8(1, 1, vec![1, 2, 3]).to_message();
        let mut other = p.clone();
        assert!(!mark_legacy_depth_vis("image", &mut other));
        assert!(mark_legacy_depth_vis("depth_vis", &mut p));
        assert!(!mark_legacy_depth_vis("depth_vis", &mut p));
        assert!(matches!(
            Message::decode(a.as_ref(), &p),
            Ok(Message::DepthVis(DepthVis { colormap, .. })) if colormap == COLORMAP_TURBO
        ));
        let (a, mut p) = depth().to_message();
        assert!(!mark_legacy_depth_vis("depth_vis", &mut p));
        assert!(matches!(
            Message::decode(a.as_ref(), &p),
            Ok(Message::Depth(_))
        ));
    }
}
