//! Input preprocessing matching the DA3 reference (`depth-anything-3==0.1.1`, `InputProcessor`).
//!
//! Per view: boundary resize of the longest (`upper_bound_*`) or shortest (`lower_bound_*`) side
//! to `process_res` (OpenCV `INTER_CUBIC` when enlarging, `INTER_AREA` otherwise, sizes rounded
//! half-to-even), then each side made a multiple of 14 — by a small resize to the nearest
//! multiple (`*_resize`, ties go up) or a centre crop to the multiple below (`*_crop`).
//! Intrinsics follow each step. Views of different sizes are then centre-cropped to the smallest
//! height and width, and the batch is normalised with the ImageNet mean/std into a
//! `(1, S, 3, H, W)` `f32` tensor.
//!
//! [`restore`] holds the inverse direction (outputs back to the input image size).

pub mod resize;
pub mod restore;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use eyre::{bail, ensure, Result, WrapErr};

pub use resize::Interpolation;
pub use restore::{restore_intrinsics, restore_map, ViewTransform};

/// Patch size of the DA3 backbone: processed sides are multiples of it.
pub const PATCH_SIZE: usize = 14;
/// Default processing resolution of the reference API.
pub const DEFAULT_PROCESS_RES: usize = 504;
/// ImageNet mean (RGB), as `torchvision.transforms.Normalize` receives it.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A 3x3 camera matrix, row-major (the alias of [`da3_io::geometry`]).
pub use da3_io::geometry::Mat3;

/// Element type of camera matrices: the reference keeps the caller's NumPy dtype while it
/// rescales, so both `f32` and `f64` inputs are supported with their own arithmetic.
pub trait KScalar:
    Copy + PartialEq + fmt::Debug + std::ops::MulAssign + std::ops::SubAssign + std::ops::AddAssign
{
    /// Conversion from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Widening conversion to `f64`.
    fn to_f64(self) -> f64;
}
impl KScalar for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl KScalar for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// The reference's `process_res_method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResizeMethod {
    /// Longest side to `process_res`, then resize each side to the nearest multiple of 14.
    #[default]
    UpperBoundResize,
    /// Longest side to `process_res`, then centre-crop each side down to a multiple of 14.
    UpperBoundCrop,
    /// Shortest side to `process_res`, then resize each side to the nearest multiple of 14.
    LowerBoundResize,
    /// Shortest side to `process_res`, then centre-crop each side down to a multiple of 14.
    LowerBoundCrop,
}

impl ResizeMethod {
    /// All methods, in the reference's order.
    pub const ALL: [ResizeMethod; 4] = [
        ResizeMethod::UpperBoundResize,
        ResizeMethod::UpperBoundCrop,
        ResizeMethod::LowerBoundResize,
        ResizeMethod::LowerBoundCrop,
    ];

    /// The reference's name for the method (`"upper_bound_resize"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMethod::UpperBoundResize => "upper_bound_resize",
            ResizeMethod::UpperBoundCrop => "upper_bound_crop",
            ResizeMethod::LowerBoundResize => "lower_bound_resize",
            ResizeMethod::LowerBoundCrop => "lower_bound_crop",
        }
    }

    /// Whether the boundary resize targets the longest side.
    pub fn is_upper_bound(self) -> bool {
        matches!(
            self,
            ResizeMethod::UpperBoundResize | ResizeMethod::UpperBoundCrop
        )
    }

    /// Whether the multiple-of-14 step crops (rather than resizes).
    pub fn is_crop(self) -> bool {
        matches!(
            self,
            ResizeMethod::UpperBoundCrop | ResizeMethod::LowerBoundCrop
        )
    }
}

impl fmt::Display for ResizeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResizeMethod {
    type Err = eyre::Report;
    fn from_str(s: &str) -> Result<Self> {
        ResizeMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| eyre::eyre!("unknown process_res_method {s:?} (expected one of upper_bound_resize, upper_bound_crop, lower_bound_resize, lower_bound_crop)"))
    }
}

/// Preprocessing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreprocessConfig {
    /// Target size of the bounded side (reference default 504).
    pub process_res: usize,
    /// Resize method (reference default `upper_bound_resize`).
    pub method: ResizeMethod,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            process_res: DEFAULT_PROCESS_RES,
            method: ResizeMethod::default(),
        }
    }
}

/// An RGB 8-bit image, row-major `H x W x 3`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// Wrap a packed `H x W x 3` buffer.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        ensure!(width > 0 && height > 0, "empty image ({width}x{height})");
        ensure!(
            data.len() == width * height * 3,
            "RGB buffer of {} bytes does not match {width}x{height}x3",
            data.len()
        );
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }

    /// Decode an image file (PNG, JPEG, WebP) to RGB, dropping any alpha channel like PIL's
    /// `convert("RGB")`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let img = image::ImageReader::open(path)
            .wrap_err_with(|| format!("opening {}", path.display()))?
            .with_guessed_format()
            .wrap_err_with(|| format!("reading {}", path.display()))?
            .decode()
            .wrap_err_with(|| format!("decoding {}", path.display()))?;
        Ok(Self::from_dynamic(img))
    }

    /// Decode an in-memory encoded image (PNG, JPEG, WebP).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let img = image::load_from_memory(bytes).wrap_err("decoding image")?;
        Ok(Self::from_dynamic(img))
    }

    /// Convert any decoded image to RGB8.
    pub fn from_dynamic(img: image::DynamicImage) -> Self {
        let rgb = img.into_rgb8();
        let (w, h) = rgb.dimensions();
        RgbImage {
            width: w as usize,
            height: h as usize,
            data: rgb.into_raw(),
        }
    }

    /// Resize with an OpenCV-exact interpolation.
    pub fn resize(&self, width: usize, height: usize, interpolation: Interpolation) -> RgbImage {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let data = resize::resize(
            &self.data,
            self.width,
            self.height,
            3,
            width,
            height,
            interpolation,
        );
        RgbImage {
            width,
            height,
            data,
        }
    }

    /// Crop a `width x height` window whose top-left corner is `(left, top)`.
    pub fn crop(&self, left: usize, top: usize, width: usize, height: usize) -> RgbImage {
        assert!(
            left + width <= self.width && top + height <= self.height,
            "crop outside the image"
        );
        let mut data = Vec::with_capacity(width * height * 3);
        for y in top..top + height {
            let start = (y * self.width + left) * 3;
            data.extend_from_slice(&self.data[start..start + width * 3]);
        }
        RgbImage {
            width,
            height,
            data,
        }
    }
}

/// Python's `round()` of a non-negative `f64` to an integer (ties to even).
fn py_round(v: f64) -> usize {
    v.round_ties_even() as usize
}

/// Size after the boundary resize: `(width, height)` and whether it is an enlargement.
///
/// Returns `None` when the bounded side already equals `process_res` (the reference then keeps
/// the image untouched).
pub fn boundary_size(
    width: usize,
    height: usize,
    process_res: usize,
    upper: bool,
) -> Option<(usize, usize, bool)> {
    let side = if upper {
        width.max(height)
    } else {
        width.min(height)
    };
    if side == process_res {
        return None;
    }
    let scale = process_res as f64 / side as f64;
    let w = py_round(width as f64 * scale).max(1);
    let h = py_round(height as f64 * scale).max(1);
    Some((w, h, scale > 1.0))
}

/// Nearest multiple of `patch` (ties round up), at least `patch`-agnostic `1`.
pub fn nearest_multiple(x: usize, patch: usize) -> usize {
    let down = x / patch * patch;
    let up = down + patch;
    let v = if up - x <= x - down { up } else { down };
    v.max(1)
}

/// Scale the first row of `k` by `w / orig_w` and the second by `h / orig_h` (the reference's
/// intrinsics rule for a resize), in `T`'s own arithmetic.
pub fn resize_intrinsics<T: KScalar>(
    k: &Mat3<T>,
    orig_w: usize,
    orig_h: usize,
    w: usize,
    h: usize,
) -> Mat3<T> {
    let mut out = *k;
    let sx = T::from_f64(w as f64 / orig_w as f64);
    let sy = T::from_f64(h as f64 / orig_h as f64);
    for v in out[0].iter_mut() {
        *v *= sx;
    }
    for v in out[1].iter_mut() {
        *v *= sy;
    }
    out
}

/// Shift the principal point for a crop whose top-left corner is `(left, top)`.
pub fn crop_intrinsics<T: KScalar>(k: &Mat3<T>, left: usize, top: usize) -> Mat3<T> {
    let mut out = *k;
    out[0][2] -= T::from_f64(left as f64);
    out[1][2] -= T::from_f64(top as f64);
    out
}

/// One view after the per-image steps (before batch unification).
#[derive(Clone, Debug)]
pub struct ProcessedView<T: KScalar = f32> {
    /// The processed 8-bit image.
    pub image: RgbImage,
    /// Intrinsics in the processed image's pixel frame.
    pub intrinsics: Option<Mat3<T>>,
    /// How processed pixels map back to the input image.
    pub transform: ViewTransform,
}

/// Per-image preprocessing (the reference's `_process_one`): boundary resize, then the
/// multiple-of-14 resize or crop, with the intrinsics following.
pub fn process_view<T: KScalar>(
    img: &RgbImage,
    intrinsics: Option<&Mat3<T>>,
    cfg: &PreprocessConfig,
) -> Result<ProcessedView<T>> {
    ensure!(cfg.process_res > 0, "process_res must be positive");
    let (orig_w, orig_h) = (img.width, img.height);
    let mut k = intrinsics.copied();

    // Boundary resize.
    let mut cur = match boundary_size(orig_w, orig_h, cfg.process_res, cfg.method.is_upper_bound())
    {
        Some((w, h, enlarge)) => {
            let interp = if enlarge {
                Interpolation::Cubic
            } else {
                Interpolation::Area
            };
            img.resize(w, h, interp)
        }
        None => img.clone(),
    };
    if let Some(kk) = k.as_mut() {
        *kk = resize_intrinsics(kk, orig_w, orig_h, cur.width, cur.height);
    }
    let mut transform = ViewTransform::new(orig_w, orig_h, cur.width, cur.height);

    // Multiple of the patch size.
    let (w, h) = (cur.width, cur.height);
    if cfg.method.is_crop() {
        let nw = w / PATCH_SIZE * PATCH_SIZE;
        let nh = h / PATCH_SIZE * PATCH_SIZE;
        ensure!(
            nw > 0 && nh > 0,
            "image {w}x{h} is smaller than one {PATCH_SIZE}-pixel patch after resizing"
        );
        if (nw, nh) != (w, h) {
            let (left, top) = ((w - nw) / 2, (h - nh) / 2);
            cur = cur.crop(left, top, nw, nh);
            transform.crop(left, top, nw, nh);
        }
        if let Some(kk) = k.as_mut() {
            *kk = crop_intrinsics(kk, (w - nw) / 2, (h - nh) / 2);
        }
    } else {
        let nw = nearest_multiple(w, PATCH_SIZE);
        let nh = nearest_multiple(h, PATCH_SIZE);
        if (nw, nh) != (w, h) {
            let interp = if nw > w || nh > h {
                Interpolation::Cubic
            } else {
                Interpolation::Area
            };
            cur = cur.resize(nw, nh, interp);
            transform.resize(nw, nh);
        }
        if let Some(kk) = k.as_mut() {
            *kk = resize_intrinsics(kk, w, h, nw, nh);
        }
    }
    Ok(ProcessedView {
        image: cur,
        intrinsics: k,
        transform,
    })
}

/// Centre-crop every view to the smallest height and width of the batch (the reference's
/// `_unify_batch_shapes`). The image uses torchvision's `CenterCrop` offsets
/// (`round((H - h) / 2)`, ties to even) and the intrinsics the floor `(H - h) // 2`, as the
/// reference does; both agree for the even differences that multiples of 14 produce.
pub fn unify_views<T: KScalar>(views: &mut [ProcessedView<T>]) {
    let Some(first) = views.first() else { return };
    let (w0, h0) = (first.image.width, first.image.height);
    if views
        .iter()
        .all(|v| v.image.width == w0 && v.image.height == h0)
    {
        return;
    }
    let min_w = views.iter().map(|v| v.image.width).min().unwrap();
    let min_h = views.iter().map(|v| v.image.height).min().unwrap();
    tracing::warn!("views have different processed sizes; centre-cropping all to {min_w}x{min_h}");
    for v in views.iter_mut() {
        let (w, h) = (v.image.width, v.image.height);
        let top = py_round((h - min_h) as f64 / 2.0);
        let left = py_round((w - min_w) as f64 / 2.0);
        if (w, h) != (min_w, min_h) {
            v.image = v.image.crop(left, top, min_w, min_h);
            v.transform.crop(left, top, min_w, min_h);
        }
        if let Some(k) = v.intrinsics.as_mut() {
            *k = crop_intrinsics(k, (w - min_w) / 2, (h - min_h) / 2);
        }
    }
}

/// Normalise one 8-bit value of channel `c` like `ToTensor` + `Normalize` (all `f32`).
#[inline]
pub fn normalize_value(v: u8, c: usize) -> f32 {
    (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
}

/// The reference's de-normalised export image value for a normalised `f32` value of channel
/// `c`: `uint8(clip(x * std + mean, 0, 1) * 255)` in `f64` with truncation.
#[inline]
pub fn denormalize_value(x: f32, c: usize) -> u8 {
    const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
    const STD: [f64; 3] = [0.229, 0.224, 0.225];
    let v = (x as f64 * STD[c] + MEAN[c]).clamp(0.0, 1.0);
    (v * 255.0) as u8
}

/// The batch the network consumes, plus what is needed to interpret its outputs.
#[derive(Debug)]
pub struct PreprocessedBatch {
    /// `(1, S, 3, H, W)` normalised `f32` tensor.
    pub tensor: Tensor,
    /// The processed 8-bit views (all `W x H`).
    pub images: Vec<RgbImage>,
    /// Intrinsics in the processed frame, as `f32` (what the reference hands the network).
    pub intrinsics: Option<Vec<Mat3<f32>>>,
    /// Per-view mapping back to the input images.
    pub transforms: Vec<ViewTransform>,
    /// Processed width.
    pub width: usize,
    /// Processed height.
    pub height: usize,
}

impl PreprocessedBatch {
    /// Number of views.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the batch is empty (never, for a batch built by [`preprocess`]).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The reference's `processed_images` (`(N, H, W, 3)` `u8`, as the `npz` export stores them):
    /// the normalised tensor values mapped back through `f64` with truncation, which can be one
    /// below the processed 8-bit value.
    pub fn export_images(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.images.len() * self.width * self.height * 3);
        for img in &self.images {
            out.extend(
                img.data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| denormalize_value(normalize_value(v, i % 3), i % 3)),
            );
        }
        out
    }
}

/// Pack processed views (same size) into a normalised `(1, S, 3, H, W)` `f32` tensor.
pub fn to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    ensure!(!images.is_empty(), "no images to stack");
    let (w, h) = (images[0].width, images[0].height);
    ensure!(
        images.iter().all(|i| i.width == w && i.height == h),
        "all views must have the same size to be stacked"
    );
    let plane = w * h;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (s, img) in images.iter().enumerate() {
        let base = s * 3 * plane;
        for (p, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[base + c * plane + p] = normalize_value(px[c], c);
            }
        }
    }
    Ok(Tensor::from_vec(data, (1, images.len(), 3, h, w), device)?)
}

/// Full reference preprocessing of a batch of views.
///
/// `intrinsics`, when given, has one matrix per image (in the input images' pixel frames) and
/// is rescaled in `T` arithmetic, then returned as `f32`.
pub fn preprocess<T: KScalar>(
    images: &[RgbImage],
    intrinsics: Option<&[Mat3<T>]>,
    cfg: &PreprocessConfig,
    device: &Device,
) -> Result<PreprocessedBatch> {
    if images.is_empty() {
        bail!("no input images");
    }
    if let Some(k) = intrinsics {
        ensure!(
            k.len() == images.len(),
            "{} intrinsics for {} images",
            k.len(),
            images.len()
        );
    }
    let mut views = images
        .iter()
        .enumerate()
        .map(|(i, img)| process_view(img, intrinsics.map(|k| &k[i]), cfg))
        .collect::<Result<Vec<_>>>()?;
    unify_views(&mut views);
    let imgs: Vec<RgbImage> = views.iter().map(|v| v.image.clone()).collect();
    let tensor = to_tensor(&imgs, device)?;
    let (width, height) = (imgs[0].width, imgs[0].height);
    let intrinsics = intrinsics.map(|_| {
        views
            .iter()
            .map(|v| v.intrinsics.unwrap().map(|r| r.map(|x| x.to_f64() as f32)))
            .collect()
    });
    Ok(PreprocessedBatch {
        tensor,
        images: imgs,
        intrinsics,
        transforms: views.into_iter().map(|v| v.transform).collect(),
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[
                    (x * 255 / w.max(1)) as u8,
                    (y * 255 / h.max(1)) as u8,
                    ((x + y) % 256) as u8,
                ]);
            }
        }
        RgbImage::new(w, h, data).unwrap()
    }

    fn k(w: f32, h: f32) -> Mat3<f32> {
        [
            [1200.0, 0.0, w / 2.0],
            [0.0, 1100.0, h / 2.0],
            [0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn method_names_round_trip() {
        for m in ResizeMethod::ALL {
            assert_eq!(m.as_str().parse::<ResizeMethod>().unwrap(), m);
        }
        assert!("bogus".parse::<ResizeMethod>().is_err());
    }

    #[test]
    fn boundary_sizes_round_half_even() {
        // 640x480 -> 504x378 (upper), 672x504 (lower).
        assert_eq!(boundary_size(640, 480, 504, true), Some((504, 378, false)));
        assert_eq!(boundary_size(640, 480, 504, false), Some((672, 504, true)));
        assert_eq!(boundary_size(504, 100, 504, true), None);
        // 1000x3 with scale 0.5: 1.5 rounds to 2 (even); 1000x5 -> 2.5 -> 2.
        assert_eq!(boundary_size(1000, 3, 500, true), Some((500, 2, false)));
        assert_eq!(boundary_size(1000, 5, 500, true), Some((500, 2, false)));
        assert_eq!(boundary_size(1000, 7, 500, true), Some((500, 4, false)));
    }

    #[test]
    fn nearest_multiple_ties_up() {
        assert_eq!(nearest_multiple(378, 14), 378);
        assert_eq!(nearest_multiple(377, 14), 378);
        assert_eq!(nearest_multiple(371, 14), 378); // 7 away from both: up
        assert_eq!(nearest_multiple(370, 14), 364);
        assert_eq!(nearest_multiple(3, 14), 1); // rounds to 0, clamped to 1
    }

    #[test]
    fn sizes_for_all_methods() {
        let img = gradient(680, 1208);
        let cases = [
            (ResizeMethod::UpperBoundResize, (280, 504)),
            (ResizeMethod::UpperBoundCrop, (280, 504)),
            (ResizeMethod::LowerBoundResize, (504, 896)),
            (ResizeMethod::LowerBoundCrop, (504, 882)), // 895 floors to 882
        ];
        for (m, (w, h)) in cases {
            let cfg = PreprocessConfig {
                process_res: 504,
                method: m,
            };
            let v = process_view::<f32>(&img, None, &cfg).unwrap();
            assert_eq!((v.image.width, v.image.height), (w, h), "{m}");
        }
        // 504x376 source: resize rounds 376 -> 378, crop floors it to 364.
        let img = gradient(504, 376);
        let r = process_view(
            &img,
            Some(&k(504.0, 376.0)),
            &PreprocessConfig {
                process_res: 504,
                method: ResizeMethod::UpperBoundResize,
            },
        )
        .unwrap();
        assert_eq!((r.image.width, r.image.height), (504, 378));
        let kr = r.intrinsics.unwrap();
        assert_eq!(kr[1][1], 1100.0f32 * (378.0f64 / 376.0) as f32);
        assert_eq!(kr[0][0], 1200.0);
        let c = process_view(
            &img,
            Some(&k(504.0, 376.0)),
            &PreprocessConfig {
                process_res: 504,
                method: ResizeMethod::UpperBoundCrop,
            },
        )
        .unwrap();
        assert_eq!((c.image.width, c.image.height), (504, 364));
        let kc = c.intrinsics.unwrap();
        assert_eq!(kc[1][2], 188.0 - 6.0);
        assert_eq!(kc[0][2], 252.0);
        assert_eq!(c.image, img.crop(0, 6, 504, 364));
    }

    #[test]
    fn intrinsics_scale_rows_in_own_precision() {
        let k64: Mat3<f64> = [[1000.0, 1.0, 320.0], [0.0, 1000.0, 240.0], [0.0, 0.0, 1.0]];
        let r = resize_intrinsics(&k64, 640, 480, 504, 378);
        assert_eq!(
            r[0],
            [
                1000.0 * (504.0 / 640.0),
                504.0 / 640.0,
                320.0 * (504.0 / 640.0)
            ]
        );
        assert_eq!(r[1][2], 240.0 * (378.0 / 480.0));
        assert_eq!(r[2], [0.0, 0.0, 1.0]);
        let k32: Mat3<f32> = k64.map(|row| row.map(|v| v as f32));
        let r32 = resize_intrinsics(&k32, 640, 480, 505, 377);
        assert_eq!(r32[0][0], 1000.0f32 * (505.0f64 / 640.0) as f32);
    }

    #[test]
    fn batch_unification_crops_to_smallest() {
        let a = gradient(640, 480); // -> 504x378
        let b = gradient(480, 640); // -> 378x504
        let ks = [k(640.0, 480.0), k(480.0, 640.0)];
        let batch = preprocess(
            &[a, b],
            Some(&ks),
            &PreprocessConfig::default(),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!((batch.width, batch.height), (378, 378));
        assert_eq!(batch.tensor.dims(), &[1, 2, 3, 378, 378]);
        let k0 = batch.intrinsics.as_ref().unwrap()[0];
        // cx: 320 * 504/640 = 252, minus the (504-378)/2 = 63 crop.
        assert_eq!(k0[0][2], 252.0 - 63.0);
        assert_eq!(k0[1][2], 189.0);
        let k1 = batch.intrinsics.as_ref().unwrap()[1];
        assert_eq!(k1[1][2], 252.0 - 63.0);
    }

    #[test]
    fn normalisation_values_and_layout() {
        let img = RgbImage::new(14, 14, [0u8, 128, 255].repeat(14 * 14)).unwrap();
        let t = to_tensor(&[img], &Device::Cpu).unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v[0], (0.0 - 0.485f32) / 0.229f32);
        assert_eq!(v[14 * 14], (128.0f32 / 255.0 - 0.456f32) / 0.224f32);
        assert_eq!(v[2 * 14 * 14 + 5], (1.0f32 - 0.406f32) / 0.225f32);
    }

    #[test]
    fn export_images_truncate_like_reference() {
        // Every value either survives the float round trip or drops by exactly one.
        let mut drops = 0;
        for v in 0..=255u8 {
            for c in 0..3 {
                let back = denormalize_value(normalize_value(v, c), c);
                assert!(back == v || back + 1 == v, "{v} -> {back}");
                drops += (back != v) as usize;
            }
        }
        assert!(drops > 0, "expected some truncation drops");
    }

    #[test]
    fn untouched_when_already_sized() {
        let img = gradient(504, 378);
        let v = process_view::<f32>(&img, None, &PreprocessConfig::default()).unwrap();
        assert_eq!(v.image, img);
    }
}
