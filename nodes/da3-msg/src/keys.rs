//! Metadata keys of the conventions (see `docs/messages.md`).

/// Image encoding of an [`crate::ImageFrame`]: `rgb8`, `bgr8`, `rgba8`, `mono8`, `jpeg`, `png`.
pub const ENCODING: &str = "encoding";
/// Width in pixels (Integer).
pub const WIDTH: &str = "width";
/// Height in pixels (Integer).
pub const HEIGHT: &str = "height";
/// Frame number, monotonic per stream (Integer).
pub const FRAME_ID: &str = "frame_id";
/// Alias of `frame_id` used by some dora nodes (Integer); read, never written.
pub const SEQ: &str = "seq";
/// Capture time in nanoseconds since the UNIX epoch (Integer).
pub const STAMP_NS: &str = "stamp_ns";
/// Camera (stream) name (String).
pub const CAMERA: &str = "camera";
/// Focal lengths `[fx, fy]` in pixels (ListFloat).
pub const FOCAL: &str = "focal";
/// Principal point `[cx, cy]` in pixels (ListFloat).
pub const PRINCIPAL_POINT: &str = "principal_point";
/// Kind of payload: `image`, `depth`, `confidence`, `camera`, `points`, `status` (String).
pub const PRIMITIVE: &str = "primitive";
/// Camera centre in the world frame `[x, y, z]` (ListFloat).
pub const CAMERA_POSITION: &str = "camera_position";
/// Camera-to-world rotation as a quaternion `[x, y, z, w]` (ListFloat).
pub const CAMERA_ORIENTATION: &str = "camera_orientation";
/// Whether depth / translations are in metres (Bool).
pub const IS_METRIC: &str = "is_metric";
/// Set to `true` on the last frame of a finite stream (Bool).
pub const LAST: &str = "last";
/// Layout of a [`crate::CameraMsg`] payload (String, `extrinsics3x4+intrinsics3x3`).
pub const LAYOUT: &str = "layout";
/// On an `image`: the frame is a colour-mapped depth map drawn with this
/// colour map (String, `turbo`), not a camera picture (see [`crate::DepthVis`]).
pub const COLORMAP: &str = "colormap";
/// On an `image`: the frame is a per-pixel mask (`mono8`, 255 = in the mask, 0 = not) of
/// this name (String, `sky`), not a camera picture (see [`crate::Mask`]).
pub const MASK: &str = "mask";
