//! Message conventions shared by every dora-da3 node.
//!
//! Only this crate knows metadata keys and Arrow layouts: nodes call the typed
//! `to_message` / `from_message` pairs and never parse metadata by hand. The
//! conventions are documented for users in `docs/messages.md` at the
//! repository root; keep that page and this crate in step.
//!
//! | message | Arrow payload | `primitive` |
//! |---|---|---|
//! | [`ImageFrame`] | `UInt8` (raw pixels or an encoded JPEG/PNG/WebP/BMP; `mono16` also `UInt16`) | `image` |
//! | [`DepthMap`] (depth) | `Float32`, row-major `height x width` | `depth` |
//! | [`DepthMap`] (confidence) | `Float32`, row-major `height x width` | `confidence` |
//! | [`CameraMsg`] | `Float64`, 21 values: extrinsics 3x4 then intrinsics 3x3 | `camera` |
//! | [`PointCloud`] | `Struct{x,y,z: Float32, r,g,b: UInt8}` | `points` |
//! | [`Splats`] (3D Gaussians of a view) | `Struct{x,y,z, scale_0..2, rot_0..3, opacity, sh_0.., depth: Float32}` | `gaussians` |
//! | [`DepthVis`] (colour-mapped depth) | as [`ImageFrame`], plus `colormap` | `image` |
//! | [`Status`] | `Utf8`, one JSON object | `status` |
//!
//! Sinks decode with [`Message::decode`], which dispatches on `primitive`.

pub mod camera;
pub mod depth;
pub mod encoding;
pub mod error;
pub mod image_frame;
pub mod keys;
pub mod message;
pub mod meta;
pub mod node_util;
mod pixels;
pub mod points;
pub mod source;
pub mod splats;

pub use camera::CameraMsg;
pub use depth::{DepthKind, DepthMap};
pub use error::MsgError;
pub use image_frame::{DecodeLimits, Encoding, ImageFrame};
pub use message::{DepthVis, Mask, Message, Primitive, Status};
pub use meta::{FrameInfo, Intrinsics, Pose};
pub use points::PointCloud;
pub use splats::Splats;

/// Arrow, as re-exported by `dora-node-api` (one major for the whole project).
pub use dora_node_api::arrow_v59 as arrow;
pub use dora_node_api::{MetadataParameters, Parameter};
