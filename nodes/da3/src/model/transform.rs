//! Camera conventions: pose encoding `[t(3), quaternion xyzw(4), fov_h, fov_w]` of a
//! camera-to-world pose <-> world-to-camera extrinsics and pinhole intrinsics.
//! Small per-view math, done in f64 on the host.

use candle_core::{DType, Device, Result, Tensor};

pub use da3_io::geometry::{affine_inverse, Mat3, Mat34};

pub fn quat_to_mat(q: [f64; 4]) -> Mat3 {
    let [i, j, k, r] = q;
    let two_s = 2.0 / (i * i + j * j + k * k + r * r);
    [
        [
            1.0 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
        ],
        [
            two_s * (i * j + k * r),
            1.0 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
        ],
        [
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1.0 - two_s * (i * i + j * j),
        ],
    ]
}

/// Rotation matrix -> quaternion (x, y, z, w), w >= 0 (same branch selection as the reference).
pub fn mat_to_quat(m: &Mat3) -> [f64; 4] {
    let [[m00, m01, m02], [m10, m11, m12], [m20, m21, m22]] = *m;
    let sp = |x: f64| if x > 0.0 { x.sqrt() } else { 0.0 };
    let q_abs = [
        sp(1.0 + m00 + m11 + m22),
        sp(1.0 + m00 - m11 - m22),
        sp(1.0 - m00 + m11 - m22),
        sp(1.0 - m00 - m11 + m22),
    ];
    // candidates in (r, i, j, k) order
    let cand = [
        [q_abs[0] * q_abs[0], m21 - m12, m02 - m20, m10 - m01],
        [m21 - m12, q_abs[1] * q_abs[1], m10 + m01, m02 + m20],
        [m02 - m20, m10 + m01, q_abs[2] * q_abs[2], m12 + m21],
        [m10 - m01, m20 + m02, m21 + m12, q_abs[3] * q_abs[3]],
    ];
    let mut best = 0;
    for i in 1..4 {
        if q_abs[i] > q_abs[best] {
            best = i;
        }
    }
    let d = 2.0 * q_abs[best].max(0.1);
    let c = cand[best];
    let mut q = [c[1] / d, c[2] / d, c[3] / d, c[0] / d];
    if q[3] < 0.0 {
        q = q.map(|v| -v);
    }
    q
}

/// Pose encoding (camera-to-world) -> (world-to-camera 3x4, intrinsics) for an (H, W) image.
pub fn pose_encoding_to_extri_intri(pe: &[f64], (h, w): (usize, usize)) -> (Mat34, Mat3) {
    let r = quat_to_mat([pe[3], pe[4], pe[5], pe[6]]);
    let mut c2w = [[0.0; 4]; 3];
    for i in 0..3 {
        c2w[i][..3].copy_from_slice(&r[i]);
        c2w[i][3] = pe[i];
    }
    let (hf, wf) = (h as f64, w as f64);
    let fy = (hf / 2.0) / (pe[7] / 2.0).tan().max(1e-6);
    let fx = (wf / 2.0) / (pe[8] / 2.0).tan().max(1e-6);
    let k = [[fx, 0.0, wf / 2.0], [0.0, fy, hf / 2.0], [0.0, 0.0, 1.0]];
    (affine_inverse(&c2w), k)
}

/// (world-to-camera extrinsics, intrinsics) -> pose encoding of the camera-to-world pose.
pub fn extri_intri_to_pose_encoding(w2c: &Mat34, k: &Mat3, (h, w): (usize, usize)) -> [f64; 9] {
    let c2w = affine_inverse(w2c);
    let r = [
        [c2w[0][0], c2w[0][1], c2w[0][2]],
        [c2w[1][0], c2w[1][1], c2w[1][2]],
        [c2w[2][0], c2w[2][1], c2w[2][2]],
    ];
    let q = mat_to_quat(&r);
    let fov_h = 2.0 * ((h as f64 / 2.0) / k[1][1]).atan();
    let fov_w = 2.0 * ((w as f64 / 2.0) / k[0][0]).atan();
    [
        c2w[0][3], c2w[1][3], c2w[2][3], q[0], q[1], q[2], q[3], fov_h, fov_w,
    ]
}

/// A small matrix stored row-major.
pub type RowMajor = Vec<f64>;

/// Read a (B, S, r, c) tensor as per-view row-major f64 matrices.
pub fn tensor_to_mats(t: &Tensor) -> Result<(usize, usize, usize, usize, Vec<RowMajor>)> {
    let (b, s, r, c) = t.dims4()?;
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mats = v
        .chunks(r * c)
        .map(|m| m.iter().map(|&x| x as f64).collect())
        .collect();
    Ok((b, s, r, c, mats))
}

/// Extrinsics given as (B, S, 4, 4) or (B, S, 3, 4) -> per-view 3x4.
pub fn extrinsics_from_tensor(t: &Tensor) -> Result<Vec<Mat34>> {
    let (_, _, r, c, mats) = tensor_to_mats(t)?;
    if c != 4 || (r != 3 && r != 4) {
        candle_core::bail!(
            "extrinsics must be (B, S, 4, 4) or (B, S, 3, 4), got {:?}",
            t.dims()
        );
    }
    Ok(mats
        .iter()
        .map(|m| {
            [
                [m[0], m[1], m[2], m[3]],
                [m[4], m[5], m[6], m[7]],
                [m[8], m[9], m[10], m[11]],
            ]
        })
        .collect())
}

pub fn intrinsics_from_tensor(t: &Tensor) -> Result<Vec<Mat3>> {
    let (_, _, r, c, mats) = tensor_to_mats(t)?;
    if r != 3 || c != 3 {
        candle_core::bail!("intrinsics must be (B, S, 3, 3), got {:?}", t.dims());
    }
    Ok(mats
        .iter()
        .map(|m| [[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]])
        .collect())
}

pub fn mats34_to_tensor(m: &[Mat34], b: usize, s: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = m
        .iter()
        .flat_map(|x| x.iter().flat_map(|r| r.iter().map(|&a| a as f32)))
        .collect();
    Tensor::from_vec(v, (b, s, 3, 4), dev)
}

pub fn mats3_to_tensor(m: &[Mat3], b: usize, s: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = m
        .iter()
        .flat_map(|x| x.iter().flat_map(|r| r.iter().map(|&a| a as f32)))
        .collect();
    Tensor::from_vec(v, (b, s, 3, 3), dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn quat_roundtrip() {
        let q = [0.1f64, -0.2, 0.3, 0.9];
        let n = q.iter().map(|v| v * v).sum::<f64>().sqrt();
        let q = q.map(|v| v / n);
        let back = mat_to_quat(&quat_to_mat(q));
        for i in 0..4 {
            assert!((back[i] - q[i]).abs() < 1e-12);
        }
    }
    #[test]
    fn pose_roundtrip() {
        let pe = [0.1, -0.3, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 1.2];
        let (w2c, k) = pose_encoding_to_extri_intri(&pe, (140, 196));
        let back = extri_intri_to_pose_encoding(&w2c, &k, (140, 196));
        for i in 0..9 {
            assert!(
                (back[i] - pe[i]).abs() < 1e-9,
                "{i}: {} vs {}",
                back[i],
                pe[i]
            );
        }
    }
}
