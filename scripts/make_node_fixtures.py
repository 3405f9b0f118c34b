#!/usr/bin/env python3
"""Fixtures for the DA3 node's end-to-end fidelity tests (tests/tests/fidelity.rs), made with the
reference API's own `DepthAnything3.inference()` (run it with the reference venv's python,
`bash scripts/setup-reference.sh` makes it):

    ~/.cache/dora-da3/ref-venv/bin/python scripts/make_node_fixtures.py [--out tests/fixtures/node]

Each case is one `<case>.npz` (inputs and expected outputs) plus a line in `meta.json`. The
networks are the committed tiny checkpoints of nodes/da3/tests/fixtures (seeded random weights,
hub layout); the API object's forward is replaced by a plain f32 call of the net (the API
autocasts, even on the CPU), as scripts/make_fixtures.py does for the CLI fixture.

Cases (process_res 70, images 63x84 RGB):
- rig:    tiny-anyview, 4 calibrated cameras (world-to-camera poses in metres + intrinsics);
          `inference(images, extrinsics, intrinsics)`: input cameras normalised, outputs aligned
          to them (depth / Umeyama scale), the given cameras reported.
- window: tiny-anyview, 3 frames of one moving camera with a pose per frame, same call.
- metric: tiny-metric (DA3METRIC-LARGE layout), 1 view with known intrinsics: the API's raw depth
          and `depth_metres = raw * focal / 300` (focal = mean of fx, fy of the intrinsics the
          API rescaled to the processed size: the reference's FAQ), sky.
- mono:   tiny-mono, 1 view: depth (sky filled by the network's own step) and the sky mask.
- nested: tiny-nested, 2 views: metric depth, confidence, cameras and the sky mask.
Every npz holds `images` (N,H,W,3) uint8 and the expected `depth`, plus per case `conf`,
`extrinsics` (N,3,4), `intrinsics` (N,3,3), `sky_prob` (N,h,w: the net's sky probabilities; the
node marks sky at >= 0.3, where the network fills depth in), `sky_api` (the API's
`Prediction.sky`, probability >= 0.5, mono/metric only), `in_extrinsics` (N,4,4),
`in_intrinsics` (N,3,3) in input pixels, `depth_metres`.
"""
from __future__ import annotations

import os

# OpenCV's IPP backend resizes INTER_CUBIC differently from OpenCV's own code by one level on
# ~1% of pixels; the node reproduces OpenCV's own resize bit for bit (see nodes/da3/tests/cli.rs).
# Per thread, and the reference resizes in worker threads: switch it off before cv2 loads.
os.environ["OPENCV_IPP"] = "disabled"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import types
from collections import OrderedDict
from pathlib import Path

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (the tiny configs, images and cameras)
from depth_anything_3.api import DepthAnything3  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "nodes" / "da3" / "tests" / "fixtures"
PROCESS_RES = 70
H, W = 63, 84


def api_for(name: str) -> DepthAnything3:
    api = DepthAnything3(model_name="da3-small")
    net = mf.build_net(mf.TINY_CONFIGS[name])
    sd = load_file(str(FIX / name / "model.safetensors"))
    missing, unexpected = mf.HubWrapper(net).load_state_dict(sd, strict=False)
    assert not unexpected and all(".output_conv2_aux." in k for k in missing), (missing, unexpected)
    api.model = net.eval()

    def f32_forward(self, image, extrinsics=None, intrinsics=None, export_feat_layers=None,
                    infer_gs=False, use_ray_pose=False, ref_view_strategy="saddle_balanced"):
        with torch.inference_mode():
            return self.model(image, extrinsics, intrinsics, export_feat_layers, infer_gs,
                              use_ray_pose, ref_view_strategy)

    api.forward = types.MethodType(f32_forward, api)
    return api


def run(api: DepthAnything3, images, ext=None, ixt=None):
    """inference() plus the net's raw outputs: the sky probabilities (the Prediction keeps only
    a mask at 0.5, and none for the nested model: there they are its metric branch's)."""
    raw = {}
    sky_net = getattr(api.model, "da3_metric", api.model)
    h = sky_net.register_forward_hook(
        lambda m, i, o: raw.update({k: v.detach().clone() for k, v in o.items()
                                    if isinstance(v, torch.Tensor)}))
    try:
        torch.manual_seed(mf.SEED)
        pred = api.inference(list(images), extrinsics=ext, intrinsics=ixt,
                             process_res=PROCESS_RES)
    finally:
        h.remove()
    return pred, raw


def processed_intrinsics(api, images, ixt):
    _, _, k = api._preprocess_inputs(list(images), None, ixt, PROCESS_RES, "upper_bound_resize")
    return np.asarray(k, dtype=np.float32)


def pack(pred, raw, images, **extra):
    out = OrderedDict(images=np.stack(images).astype(np.uint8),
                      depth=np.asarray(pred.depth, np.float32))
    if pred.conf is not None:
        out["conf"] = np.asarray(pred.conf, np.float32)
    if pred.extrinsics is not None:
        out["extrinsics"] = np.asarray(pred.extrinsics, np.float32)
    if pred.intrinsics is not None:
        out["intrinsics"] = np.asarray(pred.intrinsics, np.float32)
    if "sky" in raw:
        out["sky_prob"] = raw["sky"][0].float().numpy()
        if pred.sky is not None:
            out["sky_api"] = np.asarray(pred.sky, bool)
    out.update(extra)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "node"))
    args = ap.parse_args()
    assert not cv2.ipp.useIPP()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = OrderedDict()

    anyview = api_for("tiny-anyview")
    # A calibrated rig: 4 cameras, poses in metres (translations ~2 m), intrinsics per camera.
    imgs = mf.seeded_u8_images(4, H, W, seed=701)
    ext = mf.make_cameras(4, 17).numpy()
    ext[:, :3, 3] *= 2.5
    ixt = mf.intrinsics_for(4, H, W).numpy()
    pred, raw = run(anyview, imgs, ext, ixt)
    cases["rig"] = pack(pred, raw, imgs, in_extrinsics=ext, in_intrinsics=ixt)

    # One camera moving: 3 frames, one pose per frame (a window of the node).
    imgs = mf.seeded_u8_images(3, H, W, seed=702)
    ext = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
    for i in range(3):
        a = 0.08 * i
        ext[i, :3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        ext[i, :3, 3] = [-0.4 * i, 0.05 * i, 0.1 * i]
    k = mf.intrinsics_for(1, H, W).numpy()[0]
    ixt = np.tile(k, (3, 1, 1))
    pred, raw = run(anyview, imgs, ext, ixt)
    cases["window"] = pack(pred, raw, imgs, in_extrinsics=ext, in_intrinsics=ixt)

    metric = api_for("tiny-metric")
    imgs = mf.seeded_u8_images(1, H, W, seed=703)
    ixt = mf.intrinsics_for(1, H, W).numpy()
    pred, raw = run(metric, imgs, None, ixt)
    kp = processed_intrinsics(metric, imgs, ixt)
    focal = (kp[:, 0, 0] + kp[:, 1, 1]) / 2.0
    metres = np.asarray(pred.depth, np.float32) * (focal / 300.0)[:, None, None]
    cases["metric"] = pack(pred, raw, imgs, in_intrinsics=ixt, processed_intrinsics=kp,
                           depth_metres=metres.astype(np.float32))

    mono = api_for("tiny-mono")
    imgs = mf.seeded_u8_images(1, H, W, seed=704)
    pred, raw = run(mono, imgs)
    cases["mono"] = pack(pred, raw, imgs)

    nested = api_for("tiny-nested")
    imgs = mf.seeded_u8_images(2, H, W, seed=705)
    pred, raw = run(nested, imgs)
    cases["nested"] = pack(pred, raw, imgs)

    meta = OrderedDict(
        made_by="scripts/make_node_fixtures.py",
        opencv=f"{cv2.__version__}, IPP off (OPENCV_IPP=disabled)",
        call=f"DepthAnything3.inference(images, extrinsics, intrinsics, process_res={PROCESS_RES})"
             " with f32 forward (no autocast)",
        torch=torch.__version__, numpy=np.__version__,
        cases=OrderedDict(),
    )
    for name, arrays in cases.items():
        np.savez_compressed(out / f"{name}.npz", **arrays)
        mf.repack_zip_deterministic_inplace(out / f"{name}.npz")
        meta["cases"][name] = {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
        if "sky_prob" in arrays:
            meta["cases"][name]["sky_fraction_0.3"] = float((arrays["sky_prob"] >= 0.3).mean())
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"node fixtures in {out}: {total / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
