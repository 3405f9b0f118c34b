"""Generate tests/fixtures/cv_resize.npz: OpenCV cv2.resize outputs on uint8 RGB images for the
Rust parity test (tests/preprocess.rs). Run with the reference venv:
    python nodes/da3/tests/gen_cv_resize.py nodes/da3/tests/fixtures/cv_resize.npz
Each case i stores `i.src` (H,W,3 uint8), `i.dst` (h,w,3 uint8, default cv2 -- with the Intel IPP
backend the opencv-python wheels enable, as the reference runs), `i.dst_noipp` (only where it differs; cv2.ipp.setUseIPP(False):
OpenCV's own fixed-point code) and `i.meta` int64 [interp (0 cubic, 1 area), w, h].
IPP's cubic is float-based and CPU-dispatched; the Rust code emulates OpenCV's own implementation."""
import sys

import cv2
import numpy as np

rng = np.random.default_rng(1234)
cases = [
    # (src_w, src_h, dst_w, dst_h, interp)
    (17, 11, 41, 29, "cubic"), (32, 24, 64, 48, "cubic"), (23, 19, 24, 18, "cubic"),
    (9, 7, 14, 14, "cubic"), (50, 37, 98, 70, "cubic"), (64, 48, 63, 49, "cubic"),
    (5, 3, 33, 2, "cubic"), (31, 29, 30, 28, "cubic"), (40, 30, 39, 70, "cubic"),
    (64, 48, 32, 24, "area"), (64, 48, 21, 16, "area"), (63, 47, 42, 28, "area"),
    (50, 37, 28, 21, "area"), (45, 33, 45, 28, "area"), (44, 60, 14, 14, "area"),
    (97, 61, 56, 42, "area"), (13, 13, 1, 1, "area"), (60, 60, 20, 30, "area"),
    # DA3-like: boundary enlarge, multiple-of-14 snaps (one axis up, one down / unchanged)
    (60, 45, 84, 63, "cubic"), (51, 38, 56, 42, "cubic"), (56, 43, 56, 42, "area"),
    (56, 41, 56, 42, "cubic"),
]
out = {}
for i, (sw, sh, dw, dh, interp) in enumerate(cases):
    base = rng.integers(0, 256, size=(sh, sw, 3)).astype(np.float64)
    if i % 4 != 1:  # mostly smooth content with a little noise
        yy, xx = np.mgrid[0:sh, 0:sw]
        base = (127 + 120 * np.sin(xx[..., None] / 3.0 + np.arange(3)) * np.cos(yy / 4.0)[..., None]) + (base % 5 - 2)
    if i % 4 == 1:  # saturated regions exercise clamping
        base = np.where(base > 128, 255, 0)
    src = np.clip(base, 0, 255).astype(np.uint8)
    flag = cv2.INTER_CUBIC if interp == "cubic" else cv2.INTER_AREA
    cv2.ipp.setUseIPP(True)
    dst = cv2.resize(src, (dw, dh), interpolation=flag)
    cv2.ipp.setUseIPP(False)
    dst_noipp = cv2.resize(src, (dw, dh), interpolation=flag)
    cv2.ipp.setUseIPP(True)
    out[f"{i}.src"] = src
    out[f"{i}.dst"] = dst
    if not np.array_equal(dst, dst_noipp):
        out[f"{i}.dst_noipp"] = dst_noipp
    out[f"{i}.meta"] = np.array([0 if interp == "cubic" else 1, dw, dh], dtype=np.int64)
np.savez_compressed(sys.argv[1], **out)
print(f"wrote {len(cases)} cases with OpenCV {cv2.__version__}, IPP {cv2.ipp.getIppVersion()}")
