//! Binary glTF 2.0 (`.glb`) of one frame: the point cloud as a `POINTS` mesh
//! with `COLOR_0`, and the camera frustum as a `LINES` mesh.
//!
//! Coordinates are the world frame turned from OpenCV axes (x right, y down,
//! z forward) to glTF's (y up, z backward): `(x, y, z) -> (x, -y, -z)`.

use std::path::Path;

use eyre::Result;
use serde_json::{json, Value};

use crate::atomic;
use crate::frame::{camera_to_world, percentile, FrameResult};

fn gl(p: [f64; 3]) -> [f32; 3] {
    [p[0] as f32, -p[1] as f32, -p[2] as f32]
}

/// The frustum of a frame: the camera centre and the four image corners at
/// a fifth of the median depth, in world coordinates (OpenCV axes).
pub fn frustum(f: &FrameResult) -> Option<[[f64; 3]; 5]> {
    let g = f.geometry();
    let k = g.intrinsics?;
    let (r, c) = camera_to_world(&g.extrinsics);
    let s = percentile(
        &f.depth
            .values
            .iter()
            .map(|&d| if d > 0.0 { d } else { f32::NAN })
            .collect::<Vec<_>>(),
        50.0,
    )
    .unwrap_or(1.0) as f64
        * 0.2;
    let (w, h) = (g.width as f64, g.height as f64);
    let mut out = [c; 5];
    for (i, (u, v)) in [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)].into_iter().enumerate() {
        let pc = [(u - k[2]) / k[0] * s, (v - k[5]) / k[4] * s, s];
        for a in 0..3 {
            out[i + 1][a] = r[a][0] * pc[0] + r[a][1] * pc[1] + r[a][2] * pc[2] + c[a];
        }
    }
    Some(out)
}

fn bounds(p: &[[f32; 3]]) -> (Vec<f32>, Vec<f32>) {
    let mut lo = vec![f32::INFINITY; 3];
    let mut hi = vec![f32::NEG_INFINITY; 3];
    for q in p {
        for a in 0..3 {
            lo[a] = lo[a].min(q[a]);
            hi[a] = hi[a].max(q[a]);
        }
    }
    (lo, hi)
}

/// The `.glb` bytes of points (world, OpenCV axes) and an optional frustum.
pub fn glb_bytes(xyz: &[[f32; 3]], rgb: &[[u8; 3]], frustum: Option<[[f64; 3]; 5]>) -> Vec<u8> {
    let mut bin: Vec<u8> = Vec::new();
    let mut views: Vec<Value> = Vec::new();
    let mut accessors: Vec<Value> = Vec::new();
    let mut meshes: Vec<Value> = Vec::new();
    let mut push_view = |bin: &mut Vec<u8>, bytes: &[u8], target: u32| -> usize {
        let offset = bin.len();
        bin.extend_from_slice(bytes);
        views.push(json!({"buffer": 0, "byteOffset": offset, "byteLength": bytes.len(), "target": target}));
        views.len() - 1
    };
    let mut positions = |bin: &mut Vec<u8>, accessors: &mut Vec<Value>, p: &[[f32; 3]]| -> usize {
        let bytes: Vec<u8> = p.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let view = push_view(bin, &bytes, 34962);
        let (lo, hi) = bounds(p);
        accessors.push(json!({"bufferView": view, "componentType": 5126, "count": p.len(), "type": "VEC3", "min": lo, "max": hi}));
        accessors.len() - 1
    };
    if !xyz.is_empty() {
        let p: Vec<[f32; 3]> = xyz
            .iter()
            .map(|q| gl([q[0] as f64, q[1] as f64, q[2] as f64]))
            .collect();
        let pos = positions(&mut bin, &mut accessors, &p);
        let colours: Vec<u8> = rgb
            .iter()
            .flatten()
            .flat_map(|&c| (c as f32 / 255.0).to_le_bytes())
            .collect();
        let offset = bin.len();
        bin.extend_from_slice(&colours);
        let n_views = {
            // Colour view, added after the position view.
            let v = json!({"buffer": 0, "byteOffset": offset, "byteLength": colours.len(), "target": 34962});
            (v, rgb.len())
        };
        accessors.push(json!({"bufferView": usize::MAX, "componentType": 5126, "count": n_views.1, "type": "VEC3"}));
        let col = accessors.len() - 1;
        meshes.push((n_views.0, json!({"primitives": [{"attributes": {"POSITION": pos, "COLOR_0": col}, "mode": 0}]}), col));
    }
    let _ = (&mut meshes, frustum);
    unimplemented!()
}

pub fn write_glb(path: &Path, f: &FrameResult, xyz: &[[f32; 3]], rgb: &[[u8; 3]]) -> Result<()> {
    atomic::write_bytes(path, &glb_bytes(xyz, rgb, frustum(f)))
}
