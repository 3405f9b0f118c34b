//! From the processed frame back to the input image: per-pixel maps (depth, confidence, ...)
//! resampled bilinearly to the input size, and intrinsics expressed in input pixels.
//!
//! The reference API stops at the processed resolution; this is an option for users who want
//! outputs aligned with their original images.

use super::Mat3;

/// The geometric relation between one processed view and its input image: the input was
/// resized to `resized_width x resized_height`, then cropped at `(left, top)` to
/// `width x height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewTransform {
    /// Input image width.
    pub input_width: usize,
    /// Input image height.
    pub input_height: usize,
    /// Width after the last resize.
    pub resized_width: usize,
    /// Height after the last resize.
    pub resized_height: usize,
    /// Total crop offset (x) in the resized frame.
    pub left: usize,
    /// Total crop offset (y) in the resized frame.
    pub top: usize,
    /// Processed width.
    pub width: usize,
    /// Processed height.
    pub height: usize,
}

impl ViewTransform {
    /// Input of `input_width x input_height` resized to `width x height` (no crop).
    pub fn new(input_width: usize, input_height: usize, width: usize, height: usize) -> Self {
        ViewTransform {
            input_width,
            input_height,
            resized_width: width,
            resized_height: height,
            left: 0,
            top: 0,
            width,
            height,
        }
    }

    /// Identity transform for an image processed at its own size.
    pub fn identity(width: usize, height: usize) -> Self {
        Self::new(width, height, width, height)
    }

    /// Record a resize of the current (uncropped) frame.
    pub fn resize(&mut self, width: usize, height: usize) {
        assert!(
            self.left == 0
                && self.top == 0
                && self.width == self.resized_width
                && self.height == self.resized_height,
            "ViewTransform: resize after a crop is not representable"
        );
        self.resized_width = width;
        self.resized_height = height;
        self.width = width;
        self.height = height;
    }

    /// Record a crop of the current frame at `(left, top)` to `width x height`.
    pub fn crop(&mut self, left: usize, top: usize, width: usize, height: usize) {
        assert!(
            left + width <= self.width && top + height <= self.height,
            "ViewTransform: crop outside the frame"
        );
        self.left += left;
        self.top += top;
        self.width = width;
        self.height = height;
    }

    /// Whether every input pixel is covered by the processed view (no crop happened).
    pub fn covers_input(&self) -> bool {
        self.left == 0
            && self.top == 0
            && self.width == self.resized_width
            && self.height == self.resized_height
    }

    /// Continuous processed-frame coordinate of an input pixel centre (pixel centres at
    /// integers), per axis.
    pub fn input_to_processed(&self, x: f64, y: f64) -> (f64, f64) {
        let sx = self.resized_width as f64 / self.input_width as f64;
        let sy = self.resized_height as f64 / self.input_height as f64;
        (
            (x + 0.5) * sx - 0.5 - self.left as f64,
            (y + 0.5) * sy - 0.5 - self.top as f64,
        )
    }
}

/// Bilinear sample along one axis with half-pixel centres, clamped at the border like
/// `F.interpolate(mode="bilinear", align_corners=False)`.
fn axis_taps(pos: f64, len: usize) -> (usize, usize, f64) {
    let p = pos.max(0.0);
    let i0 = (p.floor() as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    let t = (p - i0 as f64).clamp(0.0, 1.0);
    (i0, i1, t)
}

/// Resample one processed `height x width` map (row-major) onto the input image grid
/// (`input_height x input_width`), bilinearly. Input pixels whose centre falls outside the
/// processed view (the parts removed by a crop) get `fill`.
pub fn restore_map(map: &[f32], t: &ViewTransform, fill: f32) -> Vec<f32> {
    assert_eq!(
        map.len(),
        t.width * t.height,
        "restore_map: map size does not match the transform"
    );
    let mut out = Vec::with_capacity(t.input_width * t.input_height);
    let xs: Vec<Option<(usize, usize, f64)>> = (0..t.input_width)
        .map(|x| {
            let (u, _) = t.input_to_processed(x as f64, 0.0);
            (u >= -0.5 && u <= t.width as f64 - 0.5).then(|| axis_taps(u, t.width))
        })
        .collect();
    for y in 0..t.input_height {
        let (_, v) = t.input_to_processed(0.0, y as f64);
        if v < -0.5 || v > t.height as f64 - 0.5 {
            out.extend(std::iter::repeat_n(fill, t.input_width));
            continue;
        }
        let (y0, y1, ty) = axis_taps(v, t.height);
        let (r0, r1) = (
            &map[y0 * t.width..(y0 + 1) * t.width],
            &map[y1 * t.width..(y1 + 1) * t.width],
        );
        for xt in &xs {
            match *xt {
                None => out.push(fill),
                Some((x0, x1, tx)) => {
                    let top = r0[x0] as f64 * (1.0 - tx) + r0[x1] as f64 * tx;
                    let bot = r1[x0] as f64 * (1.0 - tx) + r1[x1] as f64 * tx;
                    out.push((top * (1.0 - ty) + bot * ty) as f32);
                }
            }
        }
    }
    out
}

/// Express processed-frame intrinsics in the input image's pixels: undo the crops (principal
/// point shift), then the resize (first row by `input_w / resized_w`, second by
/// `input_h / resized_h`) — the inverse of the reference's forward rules.
pub fn restore_intrinsics(k: &Mat3<f32>, t: &ViewTransform) -> Mat3<f32> {
    let mut m: [[f64; 3]; 3] = k.map(|r| r.map(|v| v as f64));
    m[0][2] += t.left as f64;
    m[1][2] += t.top as f64;
    let sx = t.input_width as f64 / t.resized_width as f64;
    let sy = t.input_height as f64 / t.resized_height as f64;
    for v in m[0].iter_mut() {
        *v *= sx;
    }
    for v in m[1].iter_mut() {
        *v *= sy;
    }
    m.map(|r| r.map(|v| v as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_restore_is_exact() {
        let t = ViewTransform::identity(5, 3);
        let map: Vec<f32> = (0..15).map(|v| v as f32 * 0.5).collect();
        assert_eq!(restore_map(&map, &t, f32::NAN), map);
    }

    #[test]
    fn restore_of_linear_ramp_is_linear() {
        // Input 20 px wide resized to 10: processed pixel u covers input 2u..2u+2, centre 2u+0.5.
        let t = ViewTransform::new(20, 1, 10, 1);
        let map: Vec<f32> = (0..10).map(|u| (2 * u) as f32 + 0.5).collect();
        let out = restore_map(&map, &t, 0.0);
        for (x, &v) in out.iter().enumerate().take(19).skip(1) {
            assert!((v - x as f32).abs() < 1e-5, "x={x} v={v}");
        }
        // Border clamps.
        assert_eq!(out[0], 0.5);
        assert_eq!(out[19], 18.5);
    }

    #[test]
    fn cropped_regions_get_fill() {
        let mut t = ViewTransform::new(10, 10, 10, 10);
        t.crop(2, 0, 6, 10);
        let map = vec![1.0f32; 60];
        let out = restore_map(&map, &t, -1.0);
        assert_eq!(
            &out[0..10],
            &[-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
        );
        assert!(!t.covers_input());
    }

    #[test]
    fn intrinsics_round_trip_through_forward_rules() {
        use crate::preprocess::{process_view, PreprocessConfig, ResizeMethod, RgbImage};
        let img = RgbImage::new(640, 481, vec![9u8; 640 * 481 * 3]).unwrap();
        let k: Mat3<f64> = [[500.0, 0.0, 321.0], [0.0, 510.0, 239.0], [0.0, 0.0, 1.0]];
        for m in ResizeMethod::ALL {
            let v = process_view(
                &img,
                Some(&k),
                &PreprocessConfig {
                    process_res: 504,
                    method: m,
                },
            )
            .unwrap();
            let kp = v.intrinsics.unwrap().map(|r| r.map(|x| x as f32));
            let back = restore_intrinsics(&kp, &v.transform);
            for i in 0..2 {
                for j in 0..3 {
                    assert!((back[i][j] as f64 - k[i][j]).abs() < 1e-3, "{m}: {back:?}");
                }
            }
        }
    }
}
