"""Frames in the encodings that opencv-video-capture does not send, made with
OpenCV as camera drivers deliver them, for the end-to-end tests
(tests/tests/encodings.rs). Needs the test venv's numpy, pyarrow, dora-rs and
opencv-python-headless (scripts/setup.sh).

As a dora node: on each `tick` input, reads the next frame of the video at
CAPTURE_PATH (BGR, like opencv-video-capture) and sends it on `image` in
ENCODING, with `encoding`, `width`, `height` and no `primitive` (as dora's
camera nodes send frames), plus `frame_id`, `stamp_ns` and `camera` copied
from the tick. Stops when the tick input closes.

  nv12           Y plane, then interleaved U, V (from OpenCV's I420 planes)
  yuyv, uyvy     cv2.COLOR_BGR2YUV_YUYV / _UYVY
  yuv422         the UYVY bytes under ROS's name for them
  bgra8          cv2.COLOR_BGR2BGRA
  mono16         depth in millimetres = green x 20, a UInt16 array (as dora's
                 RealSense node sends its z16 depth)
  16uc1          the same values as little-endian bytes (a UInt8 array, as
                 ROS sends 16UC1)

As a script: `yuv_camera.py reference FILE.rgb W H OUT_DIR` reads a packed
RGB8 picture and writes, for yuv420 (cv2.COLOR_RGB2YUV_I420, what
opencv-video-capture sends), nv12, yuyv and uyvy, the payload OUT_DIR/<enc>.yuv
and OpenCV's own conversion of it back to RGB, OUT_DIR/<enc>.rgb.
"""

import os
import sys

import cv2
import numpy as np


def i420_to_nv12(i420, w, h):
    """Interleaves the U and V planes of an I420 payload (even w, h)."""
    flat = i420.ravel()
    y, u, v = flat[: w * h], flat[w * h : w * h * 5 // 4], flat[w * h * 5 // 4 :]
    uv = np.stack([u, v], axis=1).ravel()
    return np.concatenate([y, uv])


def payload(bgr, encoding):
    """(payload as a numpy array, encoding name to send) of one BGR frame."""
    h, w = bgr.shape[:2]
    if encoding == "nv12":
        return i420_to_nv12(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), w, h), encoding
    if encoding == "yuyv":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_YUYV).ravel(), encoding
    if encoding in ("uyvy", "yuv422"):
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_UYVY).ravel(), encoding
    if encoding == "bgra8":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA).ravel(), encoding
    mm = bgr[:, :, 1].astype(np.uint16) * 20
    if encoding == "mono16":
        return mm.ravel(), encoding
    if encoding == "16uc1":
        return mm.astype("<u2").view(np.uint8).ravel(), "16UC1"
    raise SystemExit(f"yuv_camera: unknown ENCODING {encoding!r}")


def run_node():
    import pyarrow as pa
    from dora import Node

    capture = cv2.VideoCapture(os.environ["CAPTURE_PATH"])
    encoding = os.environ.get("ENCODING", "nv12").lower()
    node = Node()
    for event in node:
        if event["type"] == "INPUT_CLOSED" and event.get("id") == "tick":
            break
        if event["type"] == "STOP":
            break
        if event["type"] != "INPUT" or event["id"] != "tick":
            continue
        ok, bgr = capture.read()
        if not ok:
            raise RuntimeError("yuv_camera: no frame left in CAPTURE_PATH")
        data, name = payload(bgr, encoding)
        tick = event["metadata"]
        meta = {k: tick[k] for k in ("frame_id", "stamp_ns", "camera") if k in tick}
        meta.update(encoding=name, width=int(bgr.shape[1]), height=int(bgr.shape[0]))
        node.send_output("image", pa.array(data), meta)


def reference(rgb_file, w, h, out_dir):
    rgb = np.fromfile(rgb_file, dtype=np.uint8).reshape(h, w, 3)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    made = {
        "yuv420": (i420, cv2.COLOR_YUV2RGB_I420),
        "nv12": (i420_to_nv12(i420, w, h).reshape(h * 3 // 2, w), cv2.COLOR_YUV2RGB_NV12),
        "yuyv": (cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUYV), cv2.COLOR_YUV2RGB_YUYV),
        "uyvy": (cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY), cv2.COLOR_YUV2RGB_UYVY),
    }
    for name, (yuv, back) in made.items():
        yuv.tofile(os.path.join(out_dir, f"{name}.yuv"))
        cv2.cvtColor(yuv, back).tofile(os.path.join(out_dir, f"{name}.rgb"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "reference":
        reference(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        run_node()
