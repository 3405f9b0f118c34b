//! Binary glTF 2.0 (`.glb`): a point cloud as a `POINTS` mesh with `COLOR_0`,
//! and each camera's frustum as a `LINES` mesh; and a strict reader of those files.
//!
//! Coordinates are the world frame turned from OpenCV axes (x right, y down,
//! z forward) to glTF's (y up, z backward): `(x, y, z) -> (x, -y, -z)`.

use eyre::Result;
use serde_json::{json, Value};

use crate::geometry::Vec3;

const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const FLOAT: u32 = 5126;
const UNSIGNED_INT: u32 = 5125;

fn gl(p: Vec3) -> [f32; 3] {
    [p[0] as f32, -p[1] as f32, -p[2] as f32]
}

#[derive(Default)]
struct Builder {
    bin: Vec<u8>,
    views: Vec<Value>,
    accessors: Vec<Value>,
}

impl Builder {
    fn view(&mut self, bytes: &[u8], target: u32) -> usize {
        let offset = self.bin.len();
        self.bin.extend_from_slice(bytes);
        self.views.push(
            json!({"buffer": 0, "byteOffset": offset, "byteLength": bytes.len(), "target": target}),
        );
        self.views.len() - 1
    }

    fn vec3(&mut self, p: &[[f32; 3]], with_bounds: bool) -> usize {
        let bytes: Vec<u8> = p.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let view = self.view(&bytes, ARRAY_BUFFER);
        let mut acc =
            json!({"bufferView": view, "componentType": FLOAT, "count": p.len(), "type": "VEC3"});
        if with_bounds {
            let mut lo = [f32::INFINITY; 3];
            let mut hi = [f32::NEG_INFINITY; 3];
            for q in p {
                for a in 0..3 {
                    lo[a] = lo[a].min(q[a]);
                    hi[a] = hi[a].max(q[a]);
                }
            }
            acc["min"] = json!(lo);
            acc["max"] = json!(hi);
        }
        self.accessors.push(acc);
        self.accessors.len() - 1
    }

    fn indices(&mut self, idx: &[u32]) -> usize {
        let bytes: Vec<u8> = idx.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = self.view(&bytes, ELEMENT_ARRAY_BUFFER);
        self.accessors.push(json!({"bufferView": view, "componentType": UNSIGNED_INT, "count": idx.len(), "type": "SCALAR"}));
        self.accessors.len() - 1
    }
}

/// The `.glb` bytes of points (world, OpenCV axes) and camera frusta (each the
/// centre then four image corners, as [`crate::geometry::frustum`] gives them).
pub fn glb_bytes(xyz: &[[f32; 3]], rgb: &[[u8; 3]], frusta: &[[Vec3; 5]]) -> Vec<u8> {
    let mut b = Builder::default();
    let mut meshes = Vec::new();
    let finite: Vec<usize> = (0..xyz.len())
        .filter(|&i| xyz[i].iter().all(|v| v.is_finite()))
        .collect();
    if !finite.is_empty() {
        let p: Vec<[f32; 3]> = finite
            .iter()
            .map(|&i| gl(xyz[i].map(|v| v as f64)))
            .collect();
        let c: Vec<[f32; 3]> = finite
            .iter()
            .map(|&i| rgb[i].map(|v| v as f32 / 255.0))
            .collect();
        let pos = b.vec3(&p, true);
        let col = b.vec3(&c, false);
        meshes.push(json!({"name": "points", "primitives": [{"attributes": {"POSITION": pos, "COLOR_0": col}, "mode": 0}]}));
    }
    let mut lines = None;
    for (i, fr) in frusta.iter().enumerate() {
        let p: Vec<[f32; 3]> = fr.iter().map(|&q| gl(q)).collect();
        let pos = b.vec3(&p, true);
        // One index buffer for every frustum: the same 8 segments.
        let idx = *lines
            .get_or_insert_with(|| b.indices(&[0, 1, 0, 2, 0, 3, 0, 4, 1, 2, 2, 3, 3, 4, 4, 1]));
        let name = if frusta.len() == 1 {
            "camera".to_string()
        } else {
            format!("camera_{i}")
        };
        meshes.push(json!({"name": name, "primitives": [{"attributes": {"POSITION": pos}, "indices": idx, "mode": 1}]}));
    }
    let nodes: Vec<Value> = (0..meshes.len()).map(|i| json!({"mesh": i})).collect();
    let mut doc = json!({
        "asset": {"version": "2.0", "generator": "dora-da3"},
        "scene": 0,
        "scenes": [{"nodes": (0..meshes.len()).collect::<Vec<_>>()}],
        "nodes": nodes,
    });
    if !meshes.is_empty() {
        doc["meshes"] = json!(meshes);
        doc["accessors"] = json!(b.accessors);
        doc["bufferViews"] = json!(b.views);
        doc["buffers"] = json!([{"byteLength": b.bin.len()}]);
    }
    let mut js = serde_json::to_vec(&doc).expect("JSON");
    while !js.len().is_multiple_of(4) {
        js.push(b' ');
    }
    let mut bin = b.bin;
    while bin.len() % 4 != 0 {
        bin.push(0);
    }
    let has_bin = !bin.is_empty();
    let total = 12 + 8 + js.len() + if has_bin { 8 + bin.len() } else { 0 };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(js.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&js);
    if has_bin {
        out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
        out.extend_from_slice(b"BIN\0");
        out.extend_from_slice(&bin);
    }
    out
}

/// A strict reader of the `.glb` files written here: the JSON document and
/// the float VEC3 data of every accessor named by a mesh's `POSITION`.
pub fn parse_glb(bytes: &[u8]) -> Result<(Value, Vec<Vec<[f32; 3]>>)> {
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            bytes
                .get(o..o + 4)
                .ok_or_else(|| eyre::eyre!("truncated at {o}"))?
                .try_into()?,
        ))
    };
    eyre::ensure!(bytes.get(..4) == Some(b"glTF"), "bad magic");
    eyre::ensure!(u32_at(4)? == 2, "not glTF 2");
    eyre::ensure!(u32_at(8)? as usize == bytes.len(), "length field");
    let jl = u32_at(12)? as usize;
    eyre::ensure!(
        &bytes[16..20] == b"JSON" && jl.is_multiple_of(4),
        "JSON chunk"
    );
    let doc: Value = serde_json::from_slice(&bytes[20..20 + jl])?;
    let bin = if bytes.len() > 20 + jl {
        let bl = u32_at(20 + jl)? as usize;
        eyre::ensure!(&bytes[24 + jl..28 + jl] == b"BIN\0", "BIN chunk");
        eyre::ensure!(28 + jl + bl == bytes.len(), "BIN length");
        &bytes[28 + jl..]
    } else {
        &bytes[..0]
    };
    let mut out = Vec::new();
    for m in doc["meshes"].as_array().into_iter().flatten() {
        let a = &doc["accessors"][m["primitives"][0]["attributes"]["POSITION"]
            .as_u64()
            .ok_or_else(|| eyre::eyre!("no POSITION"))? as usize];
        let v = &doc["bufferViews"][a["bufferView"].as_u64().unwrap_or(0) as usize];
        let off = v["byteOffset"].as_u64().unwrap_or(0) as usize;
        let n = a["count"].as_u64().unwrap_or(0) as usize;
        eyre::ensure!(
            a["componentType"] == FLOAT && a["type"] == "VEC3",
            "POSITION type"
        );
        eyre::ensure!(
            v["byteLength"].as_u64() == Some(n as u64 * 12),
            "view length"
        );
        let data = bin
            .get(off..off + n * 12)
            .ok_or_else(|| eyre::eyre!("view out of the buffer"))?;
        out.push(
            data.chunks_exact(12)
                .map(|c| {
                    let f = |i: usize| f32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap());
                    [f(0), f(1), f(2)]
                })
                .collect(),
        );
    }
    Ok((doc, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_frustum_read_back() {
        let xyz = [[1.0f32, 2.0, 3.0], [-1.0, 0.5, 2.0], [f32::NAN, 0.0, 1.0]];
        let rgb = [[255u8, 0, 0], [0, 255, 0], [0, 0, 255]];
        let fr = [[1.0, 2.0, 3.0]; 5];
        let bytes = glb_bytes(&xyz, &rgb, &[fr]);
        assert_eq!(bytes.len() % 4, 0);
        let (doc, pos) = parse_glb(&bytes).unwrap();
        assert_eq!(doc["meshes"][0]["primitives"][0]["mode"], 0);
        assert_eq!(doc["meshes"][1]["primitives"][0]["mode"], 1);
        // Non-finite points are left out; axes turned to glTF's.
        assert_eq!(pos[0], [[1.0, -2.0, -3.0], [-1.0, -0.5, -2.0]]);
        assert_eq!(pos[1], [[1.0, -2.0, -3.0]; 5]);
        assert_eq!(doc["accessors"][0]["min"], json!([-1.0, -2.0, -3.0]));
        // No points, no camera: a valid empty scene.
        let (doc, pos) = parse_glb(&glb_bytes(&[], &[], &[])).unwrap();
        assert!(pos.is_empty());
        assert_eq!(doc["asset"]["version"], "2.0");
        assert!(parse_glb(&bytes[..bytes.len() - 4]).is_err());
        // Several cameras: one LINES mesh each, sharing the index buffer.
        let fr2 = [[0.0, 0.0, 1.0]; 5];
        let (doc, pos) = parse_glb(&glb_bytes(&xyz, &rgb, &[fr, fr2])).unwrap();
        assert_eq!(pos.len(), 3);
        assert_eq!(pos[2], [[0.0, 0.0, -1.0]; 5]);
        assert_eq!(doc["meshes"][2]["name"], "camera_1");
        assert_eq!(
            doc["meshes"][1]["primitives"][0]["indices"],
            doc["meshes"][2]["primitives"][0]["indices"]
        );
    }
}
