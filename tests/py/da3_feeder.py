"""A plain Python dora node (dora-rs 1.1.0 + pyarrow + numpy), written the way a robot
integrator would, that feeds the DA3 node the inputs of one fidelity fixture
(tests/fixtures/node/<case>.npz, made by scripts/make_node_fixtures.py).

Env:
  FIXTURE   the .npz
  CAMERAS   `rig`: frame i on output `cam{i}` (camera `cam{i}`), one camera_info per camera;
            `moving`: every frame on output `image` (camera `cam0`, frame_id i), one
            camera_info per frame (matched by frame_id);
            `focal`: every frame on `image` with `focal` / `principal_point` metadata;
            `none`: frames only.
Frames go out as raw rgb8 (`encoding`, `width`, `height`, `frame_id`, `camera`); cameras as
the documented camera message (docs/messages.md: 12 extrinsics + 9 intrinsics, float64).
"""
import os
import time

import numpy as np
import pyarrow as pa
from dora import Node

fx = np.load(os.environ["FIXTURE"])
mode = os.environ.get("CAMERAS", "none")
images = fx["images"]
n, h, w, _ = images.shape
node = Node()


def camera_info(i, camera, frame_id=None):
    e = fx["in_extrinsics"][i].astype(np.float64)[:3, :4]
    k = fx["in_intrinsics"][i].astype(np.float64)
    meta = {"primitive": "camera", "layout": "extrinsics3x4+intrinsics3x3",
            "width": int(w), "height": int(h), "camera": camera}
    if frame_id is not None:
        meta["frame_id"] = int(frame_id)
    node.send_output("camera_info", pa.array(np.concatenate([e.ravel(), k.ravel()])), meta)


def frame(i, output, camera):
    meta = {"encoding": "rgb8", "width": int(w), "height": int(h), "frame_id": int(i),
            "camera": camera}
    if mode == "focal":
        k = fx["in_intrinsics"][i].astype(np.float64)
        meta["focal"] = [float(k[0, 0]), float(k[1, 1])]
        meta["principal_point"] = [float(k[0, 2]), float(k[1, 2])]
    node.send_output(output, pa.array(images[i].ravel()), meta)


if mode == "rig":
    for i in range(n):
        camera_info(i, f"cam{i}")
    for i in range(n):
        frame(i, f"cam{i}", f"cam{i}")
else:
    for i in range(n):
        if mode == "moving":
            camera_info(i, "cam0", frame_id=i)
        frame(i, "image", "cam0")
# dora 1.1 may lose what a source sends right before it exits: stay a moment.
time.sleep(2.0)
