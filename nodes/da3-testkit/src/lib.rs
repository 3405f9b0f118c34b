//! Test helpers shared by every node's bad-input test and by the fuzz targets
//! (`fuzz/` at the repository root). Nothing here ships in a node.
//!
//! - [`rng`]: a seeded xorshift PRNG (runs are reproducible from the seed);
//! - [`bad`]: generators of broken messages, each broken *by construction*
//!   (a node must reject every one), plus generic garbage;
//! - [`encode`]: a picture as the payload of any encoding (YUV layouts,
//!   files, `mono16` depth), as camera nodes send it;
//! - [`harness`]: feeds messages to a node through
//!   `dora_node_api::integration_testing`, payloads as Arrow IPC files so that
//!   any Arrow type, NaN and nulls arrive exactly;
//! - [`fuzz`]: the functions the fuzz targets call, also run on stable by the
//!   `fuzz_corpus` test of this crate.

pub mod bad;
pub mod encode;
pub mod fuzz;
pub mod harness;
pub mod rng;

pub use bad::Case;
pub use encode::encode_as;
pub use rng::Rng;

/// A valid camera of camera `cam` for a `width`×`height` view: identity rotation, 0.1 along
/// x, focal 50 px, principal point (28, 21): the good camera the node tests condition on.
pub fn test_camera(width: u32, height: u32) -> da3_msg::CameraMsg {
    da3_msg::CameraMsg {
        extrinsics: [1.0, 0.0, 0.0, 0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        intrinsics: [50.0, 0.0, 28.0, 0.0, 50.0, 21.0, 0.0, 0.0, 1.0],
        width,
        height,
        info: da3_msg::FrameInfo {
            camera: Some("cam".into()),
            ..Default::default()
        },
        is_metric: false,
    }
}

/// Frame `id` of camera `cam`, captured at `id` ns: the frame identity of
/// the small messages of the sink tests.
pub fn frame_info(id: u64) -> da3_msg::FrameInfo {
    da3_msg::FrameInfo {
        frame_id: Some(id),
        stamp_ns: Some(id),
        camera: Some("cam".into()),
        last: false,
    }
}

/// A valid camera for a 6×4 view: identity pose, focal 5 px, principal point
/// (3, 2): the good camera the sinks' bad-input tests break.
pub fn small_camera(info: da3_msg::FrameInfo) -> da3_msg::CameraMsg {
    da3_msg::CameraMsg {
        extrinsics: [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        intrinsics: [5.0, 0.0, 3.0, 0.0, 5.0, 2.0, 0.0, 0.0, 1.0],
        width: 6,
        height: 4,
        info,
        is_metric: false,
    }
}

/// A deterministic RGB8 test picture (`w`×`h`, row-major), different for each `seed`:
/// the good frames the node tests send between broken ones.
pub fn test_picture(w: u32, h: u32, seed: u32) -> Vec<u8> {
    (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    ((x * 5 + seed * 31) % 256) as u8,
                    ((y * 7 + seed * 17) % 256) as u8,
                    (((x + y) * 3 + seed * 7) % 256) as u8,
                ]
            })
        })
        .collect()
}
