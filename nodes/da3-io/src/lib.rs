//! `da3-io`: the file formats and the pose maths of dora-da3, with no network and no
//! dora dependency (so the sinks build without candle).
//!
//! | module | what it holds |
//! |---|---|
//! | [`geometry`] | matrix aliases and products, rigid-motion inverse, camera-to-world, quaternions, intrinsics, back-projection |
//! | [`align`] | the reference's camera alignment: Umeyama Sim(3) fit and its seeded RANSAC variant |
//! | [`align_poses`] | robust Sim(3) fit of camera poses (rotations, centres, depth ratios) onto a world's: tracking and window chaining |
//! | [`colormap`] | percentiles, the turbo colour map, colour-mapped depth |
//! | [`npy`], [`npz`] | NumPy files and the reference's `npz` / `mini_npz` exports ([`npz::Prediction`]) |
//! | [`png16`] | 16-bit depth PNG and its JSON sidecar |
//! | [`ply`] | binary PLY point clouds (writer and strict reader) |
//! | [`glb`] | binary glTF of a point cloud and a camera frustum (writer and strict reader) |
//! | [`colmap`] | COLMAP model, text or binary, every point observed in its image (a track of one), and readers of the text files |
//! | [`export`] | every format above for one multi-view prediction (the `da3` CLI's `--format`) |
//! | [`atomic`] | atomic file writes (temporary name, fsync, rename) |

pub mod align;
pub mod align_poses;
pub mod atomic;
pub mod colmap;
pub mod colormap;
pub mod export;
pub mod gaussians;
pub mod geometry;
pub mod glb;
pub mod npy;
pub mod npz;
pub mod ply;
pub mod png16;

pub use npy::{read_npy, write_npy, NpyArray, NpyData};
pub use npz::{read_npz, write_npz, Prediction};
