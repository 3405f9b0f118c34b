"""Compares what the DA3 node sent (a da3_collector.py .npz) with a fidelity fixture
(tests/fixtures/node/<case>.npz) and prints one JSON object: per output the max relative
error (max |node - reference| / max |reference|), the sky agreement and flags.

    python fidelity_compare.py FIXTURE COLLECTED CAMERA_OF_VIEW_0 [CAMERA_OF_VIEW_1 ...]

View i of the fixture is the node's message whose camera is the i-th name given (several views
of one camera: the names repeat and frame ids 0, 1, ... tell them apart).
Sky: the node marks depth 0 where the sky probability is >= 0.3; those pixels are compared as
a mask (disagreements only allowed within 1e-4 of the threshold), the others as depth.
"""
import json
import sys

import numpy as np

fx = np.load(sys.argv[1])
got = np.load(sys.argv[2])
cams = sys.argv[3:]
n, h, w = fx["depth"].shape
SKY = 0.3


def msg(port, i):
    cam = cams[i]
    frame_ids = [k.split("/")[2] for k in got.files
                 if k.startswith(f"{port}/{cam}/") and not k.endswith(".meta")]
    # several views of one camera: the i-th of that camera's frames, in frame order
    same = [j for j in range(i + 1) if cams[j] == cam]
    frame_ids.sort(key=lambda f: int(f) if f else -1)
    if len(frame_ids) < len(same):
        return None, None
    key = f"{port}/{cam}/{frame_ids[len(same) - 1]}"
    return got[key], json.loads(str(got[key + ".meta"]))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


report = {"views": n, "missing": [], "is_metric": [], "sky_pixels": 0, "sky_disagree": 0,
          "sky_disagree_off_threshold": 0}
ref_depth = fx["depth_metres"] if "depth_metres" in fx.files else fx["depth"]
depth_err, conf_err, ext_err, ixt_err, mask_err = [], [], [], [], []
for i in range(n):
    d, meta = msg("depth", i)
    if d is None:
        report["missing"].append(f"depth {i}")
        continue
    report["is_metric"].append(bool(meta.get("is_metric")))
    d = d.reshape(h, w)
    ref = ref_depth[i]
    if "sky_prob" in fx.files:
        p = fx["sky_prob"][i]
        sky_ref = p >= SKY
        sky_node = d == 0
        report["sky_pixels"] += int(sky_ref.sum())
        bad = sky_ref != sky_node
        report["sky_disagree"] += int(bad.sum())
        report["sky_disagree_off_threshold"] += int((bad & (np.abs(p - SKY) > 1e-4)).sum())
        keep = ~sky_ref & ~sky_node
        depth_err.append(rel(d[keep], ref[keep]))
        m, _ = msg("sky", i)
        if m is None:
            report["missing"].append(f"sky {i}")
        else:
            mask_err.append(int(((m.reshape(h, w) >= 128) != sky_node).sum()))
    else:
        depth_err.append(rel(d, ref))
    if "conf" in fx.files:
        c, _ = msg("confidence", i)
        if c is None:
            report["missing"].append(f"confidence {i}")
        else:
            keep = (d != 0) if "sky_prob" in fx.files else np.ones_like(d, bool)
            conf_err.append(rel(c.reshape(h, w)[keep], fx["conf"][i][keep]))
    if "extrinsics" in fx.files:
        cam, _ = msg("camera", i)
        if cam is None:
            report["missing"].append(f"camera {i}")
        else:
            ext_err.append(rel(cam[:12].reshape(3, 4), fx["extrinsics"][i]))
            ixt_err.append(rel(cam[12:].reshape(3, 3), fx["intrinsics"][i]))
for name, errs in [("depth", depth_err), ("confidence", conf_err), ("extrinsics", ext_err),
                   ("intrinsics", ixt_err)]:
    if errs:
        report[name] = max(errs)
if mask_err:
    report["sky_mask_vs_depth_zeros"] = sum(mask_err)
print(json.dumps(report))
