//! The synthetic `CAMERA_DEVICE=test-pattern` scene.
//!
//! A sky gradient, a checkerboard floor in perspective scrolling towards the
//! viewer, a box sliding left and right and a shaded ball bouncing on the
//! floor with its shadow, so a depth model sees real structure. The top-left
//! corner carries the frame number twice: as a binary bar code that
//! [`decode_frame_number`] reads back (also after JPEG compression) and as
//! big blocky digits for humans.
//!
//! Everything is a pure function of `(frame_idx, width, height)`: a test can
//! recompute the exact bytes of frame N with [`render_test_pattern`].

/// Sync cells at the start of the bar code (1 = white).
const SYNC: [bool; 4] = [true, false, true, false];
/// Data bits: the low 32 bits of the frame number, most significant first.
const DATA_BITS: usize = 32;
/// CRC-8 of the 4 data bytes.
const CRC_BITS: usize = 8;
/// Cells of the whole bar code.
const CODE_CELLS: usize = SYNC.len() + DATA_BITS + CRC_BITS;
/// Width of the corner box in cells: the code plus a one-cell quiet zone each side.
const BOX_CELLS_W: usize = CODE_CELLS + 2;
/// Height of the corner box in cells: quiet zone, code, quiet zone, 5-cell digits, margin.
const BOX_CELLS_H: usize = 9;

const WHITE: [u8; 3] = [240, 240, 240];
const BLACK: [u8; 3] = [16, 16, 16];

/// Side of one bar-code cell in pixels, `None` when the frame is too small
/// to carry a code. 8 px cells sit exactly on the JPEG 8x8 block grid.
fn code_cell(width: usize, height: usize) -> Option<usize> {
    let cell = if width >= BOX_CELLS_W * 8 {
        8
    } else {
        width / BOX_CELLS_W
    };
    (cell >= 2 && height >= BOX_CELLS_H * cell).then_some(cell)
}

/// CRC-8 (polynomial 0x07, init 0).
fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The bar code cells for a frame number (its low 32 bits).
fn code_bits(frame_idx: u64) -> [bool; CODE_CELLS] {
    let v = frame_idx as u32;
    let crc = crc8(&v.to_be_bytes());
    let mut bits = [false; CODE_CELLS];
    bits[..SYNC.len()].copy_from_slice(&SYNC);
    for i in 0..DATA_BITS {
        bits[SYNC.len() + i] = (v >> (DATA_BITS - 1 - i)) & 1 == 1;
    }
    for i in 0..CRC_BITS {
        bits[SYNC.len() + DATA_BITS + i] = (crc >> (CRC_BITS - 1 - i)) & 1 == 1;
    }
    bits
}

/// 3x5 digit glyphs, row-major, most significant bit = top-left.
const DIGITS: [u16; 10] = [
    0b111_101_101_101_111, // 0
    0b010_110_010_010_111, // 1
    0b111_001_111_100_111, // 2
    0b111_001_111_001_111, // 3
    0b101_101_111_001_001, // 4
    0b111_100_111_001_111, // 5
    0b111_100_111_101_111, // 6
    0b111_001_010_010_010, // 7
    0b111_101_111_101_111, // 8
    0b111_101_111_001_111, // 9
];

/// Fills the rectangle `[x0, x1) x [y0, y1)`, clipped to the image.
fn fill_rect(buf: &mut [u8], w: usize, h: usize, rect: [i64; 4], color: [u8; 3]) {
    let [x0, y0, x1, y1] = rect;
    let (x0, x1) = (
        x0.clamp(0, w as i64) as usize,
        x1.clamp(0, w as i64) as usize,
    );
    let (y0, y1) = (
        y0.clamp(0, h as i64) as usize,
        y1.clamp(0, h as i64) as usize,
    );
    if x0 >= x1 {
        return;
    }
    for y in y0..y1 {
        let row = &mut buf[(y * w + x0) * 3..(y * w + x1) * 3];
        for px in row.chunks_exact_mut(3) {
            px.copy_from_slice(&color);
        }
    }
}

fn lerp(a: [f64; 3], b: [f64; 3], t: f64) -> [u8; 3] {
    [0, 1, 2].map(|i| (a[i] + (b[i] - a[i]) * t).round().clamp(0.0, 255.0) as u8)
}

/// Triangle wave in `[-1, 1]` with period 1.
fn triangle(t: f64) -> f64 {
    4.0 * (t - (t + 0.5).floor()).abs() - 1.0
}

const SKY_TOP: [f64; 3] = [25.0, 55.0, 135.0];
const SKY_HORIZON: [f64; 3] = [175.0, 200.0, 230.0];
const FLOOR_LIGHT: [f64; 3] = [225.0, 222.0, 205.0];
const FLOOR_DARK: [f64; 3] = [45.0, 60.0, 55.0];
/// Camera height above the floor (m) and checker side (m).
const CAM_HEIGHT: f64 = 1.0;
const CHECKER: f64 = 0.5;
/// Floor scroll per frame (m): 0.6 m/s at 30 fps.
const SCROLL_PER_FRAME: f64 = 0.02;

/// Renders frame `frame_idx` of the test pattern as packed RGB8, `width x height`.
///
/// Deterministic: the same arguments always give the same bytes.
pub fn render_test_pattern(frame_idx: u64, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut buf = vec![0u8; w * h * 3];
    if w == 0 || h == 0 {
        return buf;
    }
    let t = frame_idx as f64;
    let f = h as f64; // focal length in pixels
    let cx = w as f64 / 2.0;
    let horizon = (h as f64 * 0.45).round() as usize;

    // Sky: vertical gradient plus a red tint growing to the right.
    let tint: Vec<u8> = (0..w).map(|x| (x * 50 / w) as u8).collect();
    // Floor: per row, its distance, checker row parity and the step of the
    // world x coordinate per pixel (16.16 fixed point, in checker cells).
    let scroll = t * SCROLL_PER_FRAME;
    for (y, row) in buf.chunks_exact_mut(w * 3).enumerate() {
        if y < horizon {
            let base = lerp(SKY_TOP, SKY_HORIZON, y as f64 / horizon as f64);
            for (px, &tn) in row.chunks_exact_mut(3).zip(&tint) {
                px[0] = base[0].saturating_add(tn);
                px[1] = base[1];
                px[2] = base[2].saturating_sub(tn / 2);
            }
        } else {
            let z = f * CAM_HEIGHT / ((y - horizon) as f64 + 0.5);
            let fog = 1.0 - (-z / 8.0).exp();
            let light = lerp(FLOOR_LIGHT, SKY_HORIZON, fog);
            let dark = lerp(FLOOR_DARK, SKY_HORIZON, fog);
            let iz = ((z + scroll) / CHECKER).floor() as i64;
            let step = (z / f / CHECKER * 65536.0) as i64;
            let mut acc = -(cx as i64) * step;
            for px in row.chunks_exact_mut(3) {
                let ix = acc >> 16;
                px.copy_from_slice(if (ix ^ iz) & 1 == 0 { &light } else { &dark });
                acc += step;
            }
        }
    }
    let ground_y = |z: f64| horizon as f64 + f * CAM_HEIGHT / z;

    // A box (0.6 m wide, 1.2 m tall) 4 m away, sliding left and right.
    {
        let z = 4.0;
        let bx = cx + triangle(t / 240.0) * w as f64 * 0.35;
        let (bw, bh) = (f * 0.6 / z, f * 1.2 / z);
        let bottom = ground_y(z);
        let (x0, x1) = ((bx - bw / 2.0) as i64, (bx + bw / 2.0) as i64);
        let (y0, y1) = ((bottom - bh) as i64, bottom as i64);
        let rows = (y1 - y0).max(1) as f64;
        for y in y0.max(0)..y1.min(h as i64) {
            let s = 1.0 - 0.35 * (y - y0) as f64 / rows;
            let c = [(235.0 * s) as u8, (140.0 * s) as u8, (40.0 * s) as u8];
            fill_rect(&mut buf, w, h, [x0, y, x1, y + 1], c);
        }
        // A darker side face gives it volume.
        let side = (bw * 0.25) as i64;
        fill_rect(
            &mut buf,
            w,
            h,
            [x1, y0 + side / 2, x1 + side, y1],
            [150, 85, 25],
        );
    }

    // A ball (radius 0.35 m) 2.5 m away, bouncing and drifting sideways.
    {
        let z = 2.5;
        let radius = 0.35;
        let height_m = (t * 0.09).sin().abs() * 1.0;
        let r = f * radius / z;
        let bx = cx + triangle(t / 150.0 + 0.25) * w as f64 * 0.3;
        let gy = ground_y(z);
        let by = gy - f * (height_m + radius) / z;
        // Shadow: an ellipse on the floor, smaller and fainter when the ball is high.
        let shrink = 1.0 / (1.0 + height_m);
        let (rx, ry) = (r * 1.1 * shrink, r * 0.3 * shrink);
        if rx >= 1.0 && ry >= 1.0 {
            let (x0, x1) = (
                ((bx - rx) as i64).max(0),
                ((bx + rx) as i64 + 1).min(w as i64),
            );
            let (y0, y1) = (
                ((gy - ry) as i64).max(horizon as i64),
                ((gy + ry) as i64 + 1).min(h as i64),
            );
            for y in y0..y1 {
                let dy = (y as f64 + 0.5 - gy) / ry;
                for x in x0..x1 {
                    let dx = (x as f64 + 0.5 - bx) / rx;
                    if dx * dx + dy * dy <= 1.0 {
                        let i = (y as usize * w + x as usize) * 3;
                        for c in &mut buf[i..i + 3] {
                            *c /= 2;
                        }
                    }
                }
            }
        }
        let r2 = r * r;
        let (x0, x1) = (
            ((bx - r) as i64).max(0),
            ((bx + r) as i64 + 1).min(w as i64),
        );
        let (y0, y1) = (
            ((by - r) as i64).max(0),
            ((by + r) as i64 + 1).min(h as i64),
        );
        // Light from the upper left.
        let (lx, ly) = (bx - r * 0.35, by - r * 0.35);
        for y in y0..y1 {
            let py = y as f64 + 0.5;
            for x in x0..x1 {
                let px = x as f64 + 0.5;
                let d2 = (px - bx) * (px - bx) + (py - by) * (py - by);
                if d2 <= r2 {
                    let l2 = (px - lx) * (px - lx) + (py - ly) * (py - ly);
                    let s = (1.15 - 0.8 * l2 / (1.8 * r2)).clamp(0.25, 1.0);
                    let i = (y as usize * w + x as usize) * 3;
                    buf[i] = (230.0 * s) as u8;
                    buf[i + 1] = (45.0 * s + 60.0 * (s - 0.9).max(0.0) * 10.0).min(255.0) as u8;
                    buf[i + 2] = (70.0 * s) as u8;
                }
            }
        }
    }

    // Frame number: bar code and digits in the top-left corner.
    if let Some(cell) = code_cell(w, h) {
        let c = cell as i64;
        fill_rect(
            &mut buf,
            w,
            h,
            [0, 0, BOX_CELLS_W as i64 * c, BOX_CELLS_H as i64 * c],
            BLACK,
        );
        for (i, &bit) in code_bits(frame_idx).iter().enumerate() {
            if bit {
                let x = (i as i64 + 1) * c;
                fill_rect(&mut buf, w, h, [x, c, x + c, 2 * c], WHITE);
            }
        }
        let text = frame_idx.to_string();
        for (k, ch) in text.bytes().enumerate() {
            let x0 = (1 + 4 * k as i64) * c;
            if x0 + 3 * c > BOX_CELLS_W as i64 * c {
                break;
            }
            let glyph = DIGITS[(ch - b'0') as usize];
            for gy in 0..5i64 {
                for gx in 0..3i64 {
                    if glyph >> (14 - (gy * 3 + gx)) & 1 == 1 {
                        let (x, y) = (x0 + gx * c, (3 + gy) * c);
                        fill_rect(&mut buf, w, h, [x, y, x + c, y + c], WHITE);
                    }
                }
            }
        }
    }
    buf
}

/// Reads the frame number back from a rendered test-pattern frame (packed
/// RGB8, `width x height`): the low 32 bits of `frame_idx`.
///
/// `None` when the frame carries no valid code (too small, wrong size, not a
/// test pattern, or damaged: sync cells and CRC are checked). Each cell is
/// read from the mean of its central pixels, so mild JPEG compression is fine.
pub fn decode_frame_number(rgb: &[u8], width: u32, height: u32) -> Option<u64> {
    let (w, h) = (width as usize, height as usize);
    if rgb.len() != w.checked_mul(h)?.checked_mul(3)? {
        return None;
    }
    let cell = code_cell(w, h)?;
    let (m0, m1) = (cell / 4, cell - cell / 4);
    let mut bits = [false; CODE_CELLS];
    for (i, bit) in bits.iter_mut().enumerate() {
        let (x0, y0) = ((i + 1) * cell, cell);
        let (mut sum, mut n) = (0u32, 0u32);
        for y in y0 + m0..y0 + m1 {
            for x in x0 + m0..x0 + m1 {
                let p = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
                sum += p[0] as u32 + p[1] as u32 + p[2] as u32;
                n += 3;
            }
        }
        *bit = sum > 128 * n;
    }
    if bits[..SYNC.len()] != SYNC {
        return None;
    }
    let read = |from: usize, count: usize| {
        bits[from..from + count]
            .iter()
            .fold(0u32, |acc, &b| (acc << 1) | b as u32)
    };
    let v = read(SYNC.len(), DATA_BITS);
    let crc = read(SYNC.len() + DATA_BITS, CRC_BITS) as u8;
    (crc8(&v.to_be_bytes()) == crc).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use da3_msg::image_frame::{decode_compressed, encode_jpeg};
    use da3_msg::{DecodeLimits, Encoding};

    #[test]
    fn deterministic() {
        for (w, h) in [(640, 480), (97, 53), (1, 1)] {
            for n in [0, 1, 77, 12345] {
                let a = render_test_pattern(n, w, h);
                assert_eq!(a.len(), (w * h * 3) as usize);
                assert_eq!(a, render_test_pattern(n, w, h), "frame {n} at {w}x{h}");
            }
        }
        assert!(render_test_pattern(3, 0, 10).is_empty());
    }

    #[test]
    fn consecutive_frames_differ_outside_the_code() {
        let (w, h) = (320u32, 240u32);
        let cell = code_cell(w as usize, h as usize).unwrap();
        let box_h = BOX_CELLS_H * cell;
        let mut prev = render_test_pattern(0, w, h);
        for n in 1..40 {
            let cur = render_test_pattern(n, w, h);
            // Compare below the corner box only: the scene itself must move.
            let from = box_h * w as usize * 3;
            let changed = prev[from..]
                .chunks_exact(3)
                .zip(cur[from..].chunks_exact(3))
                .filter(|(a, b)| a != b)
                .count();
            assert!(changed > 100, "frame {n}: only {changed} pixels changed");
            prev = cur;
        }
    }

    #[test]
    fn scene_has_structure() {
        // Not a flat image: many distinct colours, both bright and dark pixels.
        let img = render_test_pattern(10, 640, 480);
        let mut colours: Vec<[u8; 3]> = img.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(colours.len() > 200, "{} colours", colours.len());
        let luma: Vec<u32> = img
            .chunks_exact(3)
            .map(|p| p[0] as u32 + p[1] as u32 + p[2] as u32)
            .collect();
        assert!(luma.iter().any(|&l| l < 200) && luma.iter().any(|&l| l > 600));
    }

    #[test]
    fn frame_number_reads_back() {
        for (w, h) in [
            (640u32, 480u32),
            (1280, 720),
            (368, 72),
            (200, 150),
            (93, 40),
        ] {
            for n in [
                0u64,
                1,
                2,
                9,
                10,
                255,
                256,
                4095,
                65_537,
                1_000_003,
                u32::MAX as u64,
            ] {
                let img = render_test_pattern(n, w, h);
                assert_eq!(
                    decode_frame_number(&img, w, h),
                    Some(n),
                    "frame {n} at {w}x{h}"
                );
            }
        }
        // Ids wrap at 2^32.
        let img = render_test_pattern((1u64 << 32) + 5, 640, 480);
        assert_eq!(decode_frame_number(&img, 640, 480), Some(5));
    }

    #[test]
    fn frame_number_survives_jpeg() {
        for (w, h) in [(640u32, 480u32), (320, 240), (1280, 720)] {
            for n in [0u64, 1, 42, 1234, 99_999, 3_000_000_000] {
                let img = render_test_pattern(n, w, h);
                for q in [90u8, 75] {
                    let jpeg = encode_jpeg(w, h, &img, q).unwrap();
                    let (dw, dh, rgb) =
                        decode_compressed(Encoding::Jpeg, &jpeg, &DecodeLimits::default()).unwrap();
                    assert_eq!((dw, dh), (w, h));
                    assert_eq!(
                        decode_frame_number(&rgb, w, h),
                        Some(n),
                        "frame {n} at {w}x{h} q{q}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_code_is_none() {
        // Too small, wrong length, or an image without a code.
        assert_eq!(
            decode_frame_number(&render_test_pattern(3, 40, 30), 40, 30),
            None
        );
        assert_eq!(decode_frame_number(&[0u8; 10], 640, 480), None);
        assert_eq!(
            decode_frame_number(&vec![0u8; 640 * 480 * 3], 640, 480),
            None
        );
        assert_eq!(
            decode_frame_number(&vec![255u8; 640 * 480 * 3], 640, 480),
            None
        );
        // One flipped data cell breaks the CRC.
        let (w, h) = (640usize, 480usize);
        let mut img = render_test_pattern(1000, w as u32, h as u32);
        let cell = code_cell(w, h).unwrap();
        let x = (SYNC.len() + 31 + 1) * cell; // least significant data bit
        let val = if img[(cell * w + x) * 3 + 1] > 128 {
            16
        } else {
            240
        };
        for y in cell..2 * cell {
            for xx in x..x + cell {
                img[(y * w + xx) * 3..(y * w + xx) * 3 + 3].fill(val);
            }
        }
        assert_eq!(decode_frame_number(&img, w as u32, h as u32), None);
    }

    #[test]
    fn crc8_known_value() {
        // CRC-8/SMBUS check value.
        assert_eq!(crc8(b"123456789"), 0xF4);
    }
}
