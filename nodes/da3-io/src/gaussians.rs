//! 3D Gaussian splats of the DA3 Gaussian head (the reference's `Gaussians`, world space)
//! and their PLY file, `gs_ply`: the reference's `export_to_gs_ply`
//! (`depth_anything_3.utils.gsply_helpers.save_gaussian_ply` with its settings: DC colour
//! only, opacity as a logit, scales as logs, border Gaussians and the farthest 10% of each
//! view dropped). The standard 3DGS vertex layout, so splat viewers and trainers open it.

use std::io::Write;
use std::path::Path;

use eyre::{ensure, Result};

use crate::atomic;

/// One Gaussian per input pixel, views in order, rows then columns within a view.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gaussians {
    pub views: usize,
    pub height: usize,
    pub width: usize,
    /// Centres, world frame.
    pub means: Vec<[f32; 3]>,
    /// Standard deviations along the Gaussian's axes (not logs).
    pub scales: Vec<[f32; 3]>,
    /// World-frame rotations as the reference stores them (`mat_to_quat`: vector part first,
    /// real part last and non-negative; written as `rot_0..3`).
    pub rotations: Vec<[f32; 4]>,
    /// Spherical-harmonic colour, world frame: `d_sh` coefficients per colour channel,
    /// `[gaussian][channel][coefficient]`.
    pub harmonics: Vec<f32>,
    /// Coefficients per channel: `(sh_degree + 1)^2`.
    pub d_sh: usize,
    /// Opacities in (0, 1).
    pub opacities: Vec<f32>,
}

impl Gaussians {
    pub fn len(&self) -> usize {
        self.means.len()
    }

    pub fn is_empty(&self) -> bool {
        self.means.is_empty()
    }

    /// View `i` alone (`views` 1).
    pub fn view(&self, i: usize) -> Gaussians {
        let n = self.height * self.width;
        let r = i * n..(i + 1) * n;
        let k = 3 * self.d_sh;
        Gaussians {
            views: 1,
            height: self.height,
            width: self.width,
            means: self.means[r.clone()].to_vec(),
            scales: self.scales[r.clone()].to_vec(),
            rotations: self.rotations[r.clone()].to_vec(),
            harmonics: self.harmonics[r.start * k..r.end * k].to_vec(),
            d_sh: self.d_sh,
            opacities: self.opacities[r].to_vec(),
        }
    }

    /// Each Gaussian's base colour: its degree-0 SH coefficient as RGB (`0.5 + C0 * dc`, the
    /// 3DGS convention), for viewers that draw points.
    pub fn dc_colours(&self) -> Vec<[u8; 3]> {
        const C0: f32 = 0.282_094_8;
        (0..self.len())
            .map(|i| {
                std::array::from_fn(|ch| {
                    let v = 0.5 + C0 * self.harmonics[(i * 3 + ch) * self.d_sh];
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                })
            })
            .collect()
    }

    /// Every array holds one entry per pixel of every view.
    pub fn validate(&self) -> Result<()> {
        let n = self.views * self.height * self.width;
        ensure!(
            self.means.len() == n
                && self.scales.len() == n
                && self.rotations.len() == n
                && self.opacities.len() == n
                && self.harmonics.len() == n * 3 * self.d_sh,
            "gaussians: {} views of {}x{} need {n} of each parameter (and {} harmonics), got \
             means {}, scales {}, rotations {}, opacities {}, harmonics {}",
            self.views,
            self.width,
            self.height,
            n * 3 * self.d_sh,
            self.means.len(),
            self.scales.len(),
            self.rotations.len(),
            self.opacities.len(),
            self.harmonics.len()
        );
        ensure!(self.d_sh >= 1, "gaussians: no colour coefficient");
        Ok(())
    }
}

/// Which Gaussians a `gs_ply` keeps (the reference's `export_to_gs_ply` settings by default).
#[derive(Debug, Clone, PartialEq)]
pub struct GsPlyOptions {
    /// Every this many views (`gs_views_interval`, 1 = all).
    pub views_interval: usize,
    /// Per view, keep pixels whose depth is at most this quantile of the view's depth
    /// (`prune_by_depth_percent`, 0.9); `None` keeps all.
    pub depth_quantile: Option<f64>,
    /// Drop a border of `int(8/256 * side)` pixels (`prune_border_gs`). As in the reference, a
    /// side under 32 pixels (border 0) leaves nothing.
    pub prune_border: bool,
}

impl Default for GsPlyOptions {
    fn default() -> Self {
        Self {
            views_interval: 1,
            depth_quantile: Some(0.9),
            prune_border: true,
        }
    }
}

/// `torch.quantile`'s linear interpolation, on the finite values.
fn quantile(values: &[f32], q: f64) -> Option<f32> {
    crate::colormap::percentile(values, q * 100.0)
}

/// Indices (into `g`) of the Gaussians written, in the reference's order. `depth` is the
/// prediction's depth (`views * height * width`), used for pruning only.
pub fn gs_ply_selection(g: &Gaussians, depth: &[f32], opts: &GsPlyOptions) -> Result<Vec<usize>> {
    g.validate()?;
    let (h, w) = (g.height, g.width);
    let hw = h * w;
    ensure!(
        depth.len() == g.views * hw,
        "gs_ply: {} depth values for {} views of {w}x{h}",
        depth.len(),
        g.views
    );
    ensure!(
        opts.views_interval >= 1,
        "gs_ply: views_interval must be at least 1"
    );
    // `mask[:, t:-t, t:-t]`: with t = 0 the slice 0:-0 is empty.
    let (th, tw) = (8 * h / 256, 8 * w / 256);
    let inside = |r: usize, c: usize| -> bool {
        if !opts.prune_border {
            return true;
        }
        r >= th && r + th < h && th > 0 && c >= tw && c + tw < w && tw > 0
    };
    let mut keep = Vec::new();
    for v in (0..g.views).step_by(opts.views_interval) {
        let d = &depth[v * hw..(v + 1) * hw];
        let limit = match opts.depth_quantile {
            Some(q) if q < 1.0 => quantile(d, q),
            _ => None,
        };
        for r in 0..h {
            for c in 0..w {
                let i = r * w + c;
                if inside(r, c) && limit.is_none_or(|l| d[i] <= l) {
                    keep.push(v * hw + i);
                }
            }
        }
    }
    Ok(keep)
}

/// The PLY vertex properties, in order (`save_sh_dc_only`): the reference's names.
pub const GS_PLY_PROPERTIES: [&str; 17] = [
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
    "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
];

/// The bytes of the `gs_ply` of the selected Gaussians (binary little-endian, one `vertex`
/// element of 17 floats).
pub fn gs_ply_bytes(g: &Gaussians, keep: &[usize]) -> Vec<u8> {
    let mut header = format!(
        "ply\nformat binary_little_endian 1.0\nelement vertex {}\n",
        keep.len()
    );
    for p in GS_PLY_PROPERTIES {
        header.push_str(&format!("property float {p}\n"));
    }
    header.push_str("end_header\n");
    let mut out = Vec::with_capacity(header.len() + keep.len() * 17 * 4);
    out.extend_from_slice(header.as_bytes());
    let mut put = |v: f32| out.extend_from_slice(&v.to_le_bytes());
    for &i in keep {
        g.means[i].iter().for_each(|&v| put(v));
        (0..3).for_each(|_| put(0.0));
        (0..3).for_each(|ch| put(g.harmonics[(i * 3 + ch) * g.d_sh]));
        let o = g.opacities[i];
        put((o / (1.0 - o)).ln());
        g.scales[i].iter().for_each(|&v| put(v.ln()));
        g.rotations[i].iter().for_each(|&v| put(v));
    }
    out
}

/// Writes `gs_ply` atomically; returns how many Gaussians it holds.
pub fn write_gs_ply(
    path: &Path,
    g: &Gaussians,
    depth: &[f32],
    opts: &GsPlyOptions,
) -> Result<usize> {
    let keep = gs_ply_selection(g, depth, opts)?;
    let bytes = gs_ply_bytes(g, &keep);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| eyre::eyre!("creating {}: {e}", d.display()))?;
    }
    atomic::write_with(path, |w| Ok(w.write_all(&bytes)?))?;
    Ok(keep.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(views: usize, h: usize, w: usize) -> Gaussians {
        let n = views * h * w;
        Gaussians {
            views,
            height: h,
            width: w,
            means: (0..n).map(|i| [i as f32, 1.0, 2.0]).collect(),
            scales: vec![[1.0, std::f32::consts::E, 0.5]; n],
            rotations: vec![[0.0, 0.0, 0.0, 1.0]; n],
            harmonics: (0..n * 3 * 4).map(|i| i as f32).collect(),
            d_sh: 4,
            opacities: vec![0.5; n],
        }
    }

    #[test]
    fn view_is_that_views_gaussians() {
        let g = sample(3, 4, 5);
        let v = g.view(1);
        v.validate().unwrap();
        assert_eq!((v.views, v.height, v.width, v.d_sh), (1, 4, 5, 4));
        assert_eq!(v.means[..], g.means[20..40]);
        assert_eq!(v.harmonics[..], g.harmonics[20 * 12..40 * 12]);
        assert_eq!(v.opacities.len(), 20);
    }

    #[test]
    fn selection_prunes_border_and_far_pixels_like_the_reference() {
        // 64x32: border 2 rows and 1 column; 90% depth quantile per view.
        let g = sample(2, 64, 32);
        let depth: Vec<f32> = (0..2 * 64 * 32).map(|i| (i % (64 * 32)) as f32).collect();
        let keep = gs_ply_selection(&g, &depth, &GsPlyOptions::default()).unwrap();
        let hw = 64 * 32;
        // quantile 0.9 of 0..2047 = 1842.3: rows up to 57 (57*32 + 18 = 1842) are kept.
        for &i in &keep {
            let (r, c) = ((i % hw) / 32, i % 32);
            assert!((2..62).contains(&r) && (1..31).contains(&c), "{r} {c}");
            assert!(depth[i] <= 1842.3);
        }
        let per_view = keep.iter().filter(|&&i| i < hw).count();
        // rows 2..=56 complete (55 * 30), row 57 up to column 18 (columns 1..=18)
        assert_eq!(per_view, 55 * 30 + 18);
        assert_eq!(keep.len(), 2 * per_view);
        let every_other = GsPlyOptions {
            views_interval: 2,
            ..Default::default()
        };
        assert_eq!(
            gs_ply_selection(&g, &depth, &every_other).unwrap().len(),
            per_view
        );
        // sides under 32 pixels: the border slice is empty (the reference's behaviour)
        let small = sample(1, 28, 42);
        let d = vec![1.0; 28 * 42];
        assert!(gs_ply_selection(&small, &d, &GsPlyOptions::default())
            .unwrap()
            .is_empty());
        let all = GsPlyOptions {
            views_interval: 1,
            depth_quantile: None,
            prune_border: false,
        };
        assert_eq!(gs_ply_selection(&small, &d, &all).unwrap().len(), 28 * 42);
        assert!(gs_ply_selection(&small, &d[1..], &all).is_err());
    }

    #[test]
    fn ply_holds_the_reference_properties() {
        let g = sample(1, 2, 2);
        let bytes = gs_ply_bytes(&g, &[3]);
        let end = bytes
            .windows(11)
            .position(|w| w == b"end_header\n")
            .unwrap()
            + 11;
        let header = std::str::from_utf8(&bytes[..end]).unwrap();
        assert!(header.contains("element vertex 1\n"));
        let props: Vec<&str> = header
            .lines()
            .filter_map(|l| l.strip_prefix("property float "))
            .collect();
        assert_eq!(props, GS_PLY_PROPERTIES);
        let vals: Vec<f32> = bytes[end..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals.len(), 17);
        assert_eq!(&vals[..6], &[3.0, 1.0, 2.0, 0.0, 0.0, 0.0]);
        // DC of each channel: harmonics[(3*3 + ch) * 4]
        assert_eq!(&vals[6..9], &[36.0, 40.0, 44.0]);
        assert_eq!(vals[9], 0.0); // logit(0.5)
        assert!((vals[10] - 0.0).abs() < 1e-7 && (vals[11] - 1.0).abs() < 1e-6);
        assert_eq!(&vals[13..], &[0.0, 0.0, 0.0, 1.0]);
        let mut bad = g.clone();
        bad.opacities.pop();
        assert!(bad.validate().is_err());
    }
}
