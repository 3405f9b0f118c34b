//! Binary little-endian PLY point clouds: `float x, y, z` then
//! `uchar red, green, blue` per vertex, and a strict reader of exactly that layout.

use std::io::Write;
use std::path::Path;

use eyre::Result;

use crate::atomic;

/// Points and their colours.
pub type ColouredPoints = (Vec<[f32; 3]>, Vec<[u8; 3]>);

/// The bytes of a PLY of `xyz` coloured by `rgb`.
pub fn ply_bytes(xyz: &[[f32; 3]], rgb: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + xyz.len() * 15);
    let header = format!(
        "ply\nformat binary_little_endian 1.0\ncomment written by dora-da3\nelement vertex {}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n",
        xyz.len()
    );
    out.extend_from_slice(header.as_bytes());
    for (p, c) in xyz.iter().zip(rgb) {
        for v in p {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(c);
    }
    out
}

/// Writes a PLY atomically (see [`crate::atomic`]).
pub fn write_ply(path: &Path, xyz: &[[f32; 3]], rgb: &[[u8; 3]]) -> Result<()> {
    atomic::write_with(path, |w| Ok(w.write_all(&ply_bytes(xyz, rgb))?))
}

/// Reads back a PLY written by [`ply_bytes`], strictly: binary little-endian,
/// exactly the properties `float x,y,z` + `uchar red,green,blue`, and a body
/// of exactly `vertex count * 15` bytes (comments are allowed).
pub fn read_ply(bytes: &[u8]) -> Result<ColouredPoints> {
    let end = b"end_header\n";
    let pos = bytes
        .windows(end.len())
        .position(|w| w == end)
        .ok_or_else(|| eyre::eyre!("PLY: no end_header"))?
        + end.len();
    let header = std::str::from_utf8(&bytes[..pos])?;
    let lines: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with("comment"))
        .collect();
    let expected_props = [
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "end_header",
    ];
    eyre::ensure!(
        lines.len() == 3 + expected_props.len()
            && lines[0] == "ply"
            && lines[1] == "format binary_little_endian 1.0"
            && lines[3..] == expected_props,
        "PLY: unexpected header {lines:?}"
    );
    let n: usize = lines[2]
        .strip_prefix("element vertex ")
        .ok_or_else(|| eyre::eyre!("PLY: no vertex count"))?
        .parse()?;
    let body = &bytes[pos..];
    eyre::ensure!(
        body.len() == n * 15,
        "PLY: {} body bytes for {n} vertices",
        body.len()
    );
    Ok(body
        .chunks_exact(15)
        .map(|v| {
            let f =
                |i: usize| f32::from_le_bytes([v[i * 4], v[i * 4 + 1], v[i * 4 + 2], v[i * 4 + 3]]);
            ([f(0), f(1), f(2)], [v[12], v[13], v[14]])
        })
        .unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twelve points with distinct coordinates and colours.
    pub fn sample_points() -> ColouredPoints {
        (0..12)
            .map(|i| {
                let f = i as f32;
                (
                    [f * 0.5 - 1.0, 2.0 - f, 1.0 + f * 0.25],
                    [i * 3, i * 3 + 1, i * 3 + 2],
                )
            })
            .unzip()
    }

    #[test]
    fn ply_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (xyz, rgb) = sample_points();
        let p = dir.path().join("a.ply");
        write_ply(&p, &xyz, &rgb).unwrap();
        let (x2, c2) = read_ply(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(x2.len(), 12);
        assert_eq!(x2, xyz);
        assert_eq!(c2, rgb);
        let (x0, _) = read_ply(&ply_bytes(&[], &[])).unwrap();
        assert!(x0.is_empty());
    }

    #[test]
    fn strict_reader_rejects_other_layouts() {
        let (xyz, rgb) = sample_points();
        let good = ply_bytes(&xyz, &rgb);
        assert!(read_ply(&good[..good.len() - 1]).is_err(), "short body");
        let ascii = String::from_utf8_lossy(&good).replace("binary_little_endian", "ascii");
        assert!(read_ply(ascii.as_bytes()).is_err(), "other format");
        assert!(read_ply(b"ply\n").is_err(), "no end_header");
    }
}
