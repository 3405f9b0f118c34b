#!/usr/bin/env python3
"""Parity fixture generator for the dora-da3 Rust port (run it with the reference venv's python).

    python scripts/make_fixtures.py [--out nodes/da3/tests/fixtures] [--full da3-small] [--keys]

Default mode writes the small committed fixtures (see docs/reference-notes.md and the fixture
contract): reduced-width seeded TEST models in hub layout (`config.json` with a custom
`net_config`, `model.safetensors`) plus `cases.safetensors` / `meta.json` per model, the
preprocessing fixture and the CLI (API + npz export) fixture.

`--full da3-small` additionally writes a full-size seeded DA3-SMALL checkpoint with a few cases
into ${DA3_CACHE:-~/.cache/dora-da3}/fixtures/da3-small/ (not committed).
`--keys` regenerates nodes/da3/tests/keys/<variant>.tsv from the packaged configs.

Everything runs in float32 with the network called directly under torch.inference_mode()
(the reference API autocasts, even on CPU). Seeds are fixed; torch runs single-threaded for
the small fixtures so that reruns give identical bytes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file, save_model

import depth_anything_3
import depth_anything_3.model.dinov2.vision_transformer as vt_mod
import depth_anything_3.utils.ray_utils as ray_utils
from depth_anything_3.api import DepthAnything3
from depth_anything_3.model.cam_dec import CameraDec
from depth_anything_3.model.cam_enc import CameraEnc
from depth_anything_3.model.da3 import DepthAnything3Net, NestedDepthAnything3Net
from depth_anything_3.model.dinov2.dinov2 import DinoV2
from depth_anything_3.model.dinov2.vision_transformer import DinoVisionTransformer
from depth_anything_3.model.dpt import DPT
from depth_anything_3.model.dualdpt import DualDPT
from depth_anything_3.model.gs_adapter import GaussianAdapter
from depth_anything_3.model.gsdpt import GSDPT
from depth_anything_3.registry import MODEL_REGISTRY
from depth_anything_3.utils import alignment as align_utils

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DA3_CACHE", str(Path.home() / ".cache" / "dora-da3")))
SEED = 0
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
REF_STRATEGIES = ["first", "middle", "saddle_balanced", "saddle_sim_range"]
PUBLISHED = ["da3-small", "da3-base", "da3-large", "da3-giant", "da3metric-large",
             "da3mono-large", "da3nested-giant-large"]

# ------------------------------------------------------------------------------------------
# Test configurations (fixture contract shapes, reduced dims). The contract's example dims
# (embed_dim 64) give 3.8 MB for the any-view weights alone, so, to keep all committed
# fixtures under ~6 MB, the any-view model uses embed_dim 32 (contract head dims) and the
# mono / metric / nested models embed_dim 16 with DPT out_channels [8,16,24,32]. Every dim is
# explicit in config.json's net_config. Heads of the embed_dim-16 models use features 8.
# The Gaussian-head fixture (tiny-gs, +1.8 MB: 0.8 MB of weights, the rest every Gaussian
# parameter of 2 x 2352 pixels and the reference's gs_ply) brings the total to ~7.8 MB.
# ------------------------------------------------------------------------------------------


def vit_cfg(embed_dim, depth, heads, ffn, anyview):
    c = {"name": "custom", "embed_dim": embed_dim, "depth": depth, "num_heads": heads,
         "mlp_ratio": 4.0, "ffn_layer": ffn, "out_layers": [3, 5, 6, 7]}
    if anyview:
        c.update({"alt_start": 2, "qknorm_start": 2, "rope_start": 2, "cat_token": True})
    else:
        c.update({"alt_start": -1, "qknorm_start": -1, "rope_start": -1, "cat_token": False})
    return c


def anyview_cfg(embed_dim=32, ffn="mlp", out_channels=(8, 16, 32, 64), features=16):
    return {"type": "da3",
            "net": vit_cfg(embed_dim, 8, 2, ffn, True),
            "head": {"type": "dualdpt", "dim_in": 2 * embed_dim, "output_dim": 2, "features": features,
                     "out_channels": list(out_channels)},
            "cam_enc": {"dim_out": embed_dim},
            "cam_dec": {"dim_in": 2 * embed_dim}}


def mono_cfg(embed_dim=16, metric=False, out_channels=(8, 16, 24, 32), features=8):
    c = {"type": "da3",
         "net": vit_cfg(embed_dim, 8, 2, "mlp", False),
         "head": {"type": "dpt", "dim_in": embed_dim, "output_dim": 1, "features": features,
                  "out_channels": list(out_channels)}}
    if metric:
        c["metric"] = True
    return c


# DA3-GIANT's Gaussian adapter (configs/da3-giant.yaml); the head's output_dim = its d_in + 1.
GS_ADAPTER = {"sh_degree": 2, "pred_color": False, "pred_offset_depth": True,
              "pred_offset_xy": True, "gaussian_scale_min": 1e-5, "gaussian_scale_max": 30.0}


def gs_cfg():
    c = anyview_cfg(16, "mlp", out_channels=(8, 16, 24, 32), features=8)
    c["gs_head"] = {"dim_in": 32, "output_dim": 38, "features": 16, "out_channels": [8, 16, 24, 32]}
    c["gs_adapter"] = dict(GS_ADAPTER)
    return c


TINY_CONFIGS = OrderedDict([
    ("tiny-anyview", anyview_cfg(32, "mlp")),
    ("tiny-mono", mono_cfg(16, metric=False)),
    ("tiny-metric", mono_cfg(16, metric=True)),
    ("tiny-nested", {"type": "nested",
                     "anyview": anyview_cfg(16, "swiglufused", out_channels=(8, 16, 24, 32),
                                            features=8),
                     "metric": mono_cfg(16, metric=True)}),
    ("tiny-gs", gs_cfg()),
])


# ------------------------------------------------------------------------------------------
# Model construction from a net_config (reference classes only)
# ------------------------------------------------------------------------------------------


def build_backbone(c):
    """A reference DinoV2 wrapper around a DinoVisionTransformer with explicit dims."""
    bb = DinoV2.__new__(DinoV2)
    nn.Module.__init__(bb)
    bb.name = c["name"]
    bb.out_layers = list(c["out_layers"])
    bb.alt_start, bb.qknorm_start, bb.rope_start = c["alt_start"], c["qknorm_start"], c["rope_start"]
    bb.cat_token = c["cat_token"]
    bb.pretrained = DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=c["embed_dim"], depth=c["depth"],
        num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], ffn_layer=c["ffn_layer"],
        alt_start=c["alt_start"], qknorm_start=c["qknorm_start"], rope_start=c["rope_start"],
        cat_token=c["cat_token"])
    return bb


def build_da3(c):
    backbone = build_backbone(c["net"])
    h = c["head"]
    kw = dict(output_dim=h["output_dim"], features=h["features"], out_channels=h["out_channels"])
    head = DualDPT(h["dim_in"], **kw) if h["type"] == "dualdpt" else DPT(h["dim_in"], **kw)
    cam_dec = CameraDec(dim_in=c["cam_dec"]["dim_in"]) if "cam_dec" in c else None
    cam_enc = CameraEnc(dim_out=c["cam_enc"]["dim_out"]) if "cam_enc" in c else None
    gs_head = gs_adapter = None
    if "gs_head" in c:
        g = c["gs_head"]
        gs_head = GSDPT(g["dim_in"], output_dim=g["output_dim"], features=g["features"],
                        out_channels=g["out_channels"])
        gs_adapter = GaussianAdapter(**c["gs_adapter"])
    return DepthAnything3Net(backbone, head, cam_dec=cam_dec, cam_enc=cam_enc, gs_head=gs_head,
                             gs_adapter=gs_adapter)


def build_net(c):
    if c["type"] == "nested":
        net = NestedDepthAnything3Net.__new__(NestedDepthAnything3Net)
        nn.Module.__init__(net)
        net.da3 = build_da3(c["anyview"])
        net.da3_metric = build_da3(c["metric"])
        return net.eval()
    return build_da3(c).eval()


class HubWrapper(nn.Module):
    """Same attribute layout as the reference `DepthAnything3` (weights under `model.`)."""

    def __init__(self, net):
        super().__init__()
        self.model = net


# ------------------------------------------------------------------------------------------
# Weight perturbation (seeded) so that every parameter matters
# ------------------------------------------------------------------------------------------


def perturb_(module: nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():  # tied parameters are visited once
            leaf = name.split(".")[-1]
            if leaf in ("pos_embed", "cls_token", "camera_token"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g) + (p if leaf == "camera_token" else 0))
            elif leaf == "gamma":  # LayerScale
                p.mul_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and leaf == "weight":  # LayerNorm weights
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and leaf == "bias" and bool(torch.all(p == 0)):  # LayerNorm biases
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def tune_anyview_(net: DepthAnything3Net, cam_enc_gamma=True):
    """FoV > 0 after the ReLU, larger dynamic range on the final 1x1 convs (full model)."""
    with torch.no_grad():
        if net.cam_dec is not None:
            net.cam_dec.fc_fov[0].bias.add_(1.0)
        if cam_enc_gamma and net.cam_enc is not None:
            # LayerScale init 0.01 in the camera encoder trunk: make the trunk visible
            for blk in net.cam_enc.trunk:
                blk.ls1.gamma.mul_(20.0)
                blk.ls2.gamma.mul_(20.0)
        net.head.scratch.output_conv2[2].weight.mul_(4.0)
        net.head.scratch.output_conv2_aux[3][5].weight.mul_(4.0)


def _conv_output(net, conv, x, **kw):
    got = {}
    h = conv.register_forward_hook(lambda m, i, o: got.__setitem__("o", o.detach().clone()))
    with torch.inference_mode():
        net(x, export_feat_layers=[], **kw)
    h.remove()
    return got["o"]


def calibrate_conv_(net, conv: nn.Conv2d, x, target_std, target_mean=0.0, **kw):
    """Affinely rescale a final 1x1 conv so that, on calibration input x, each output channel
    has the given mean/std (random init gives near-constant logits, hiding spatial errors)."""
    o = _conv_output(net, conv, x, **kw)
    dims = [d for d in range(o.ndim) if d != 1]
    m, sd = o.mean(dim=dims), o.std(dim=dims).clamp_min(1e-6)
    k = torch.as_tensor(target_std, dtype=o.dtype) / sd
    t = torch.as_tensor(target_mean, dtype=o.dtype).expand_as(m)
    with torch.no_grad():
        conv.weight.mul_(k.view(-1, 1, 1, 1))
        conv.bias.copy_((conv.bias - m) * k + t)


def tune_heads_anyview_(net: DepthAnything3Net, x: torch.Tensor):
    """Depth/conf logits ~ N(0, 0.5) and ray logits ~ N(0, 1) on x."""
    calibrate_conv_(net, net.head.scratch.output_conv2[2], x, 0.5)
    calibrate_conv_(net, net.head.scratch.output_conv2_aux[3][5], x, 1.0, use_ray_pose=True)


def tune_dpt_(net: DepthAnything3Net, x: torch.Tensor, sky_frac: float):
    """Depth logits ~ N(0, 0.5) on x; sky logits shifted so that ~sky_frac of the pixels of x
    end up with sky >= 0.3 (the mono/nested sky threshold)."""
    calibrate_conv_(net, net.head.scratch.output_conv2[2], x, 0.5)
    conv = net.head.scratch.sky_output_conv2[-1]
    calibrate_conv_(net, conv, x, 0.3, 0.0)
    q = torch.quantile(_conv_output(net, conv, x).flatten(), 1.0 - sky_frac)
    with torch.no_grad():
        conv.bias.add_(0.3 - float(q) + 0.02)


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


def seeded_u8_images(n, h, w, seed):
    """Smooth random RGB uint8 images (low-frequency pattern + noise), HxWx3."""
    rs = np.random.RandomState(seed)
    out = []
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for i in range(n):
        p = rs.rand(6) * 6.0
        base = np.stack([
            127 + 100 * np.sin(xx / (9 + 4 * i + p[3]) + p[0]),
            127 + 100 * np.cos(yy / (7 + 3 * i + p[4]) + p[1]),
            127 + 80 * np.sin((xx + yy) / (15 + p[5]) + p[2])], -1)
        img = np.clip(base + rs.randn(h, w, 3) * 20, 0, 255).astype(np.uint8)
        out.append(img)
    return out


def normalize_u8(imgs):
    """ToTensor (/255) then ImageNet mean/std, as the reference InputProcessor does."""
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float() / 255.0
                     for i in imgs])
    return (x - MEAN) / STD


def views(n, h, w, seed):
    return normalize_u8(seeded_u8_images(n, h, w, seed))[None].contiguous()


def make_cameras(n, seed):
    """World-to-camera 4x4 extrinsics (small rotations + translations) and pixel intrinsics."""
    g = torch.Generator().manual_seed(seed)
    ext = torch.eye(4).repeat(n, 1, 1)
    for i in range(n):
        ang = 0.2 * torch.randn(3, generator=g)
        cx, cy, cz = torch.cos(ang)
        sx, sy, sz = torch.sin(ang)
        rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        ext[i, :3, :3] = rz @ ry @ rx
        ext[i, :3, 3] = torch.randn(3, generator=g) * 0.8
    return ext


def intrinsics_for(n, h, w):
    k = torch.tensor([[0.9 * w, 0.0, w / 2.0 + 1.5], [0.0, 0.95 * w, h / 2.0 - 1.0], [0, 0, 1.0]])
    k = k.repeat(n, 1, 1)
    for i in range(n):
        k[i, 0, 0] += 2.0 * i
        k[i, 1, 1] += 1.0 * i
    return k


def normalize_extrinsics_like_api(ex):
    """Same computation as DepthAnything3._normalize_extrinsics, called through the API object."""
    api = DepthAnything3.__new__(DepthAnything3)
    return DepthAnything3._normalize_extrinsics(api, ex.clone())


# ------------------------------------------------------------------------------------------
# Recording
# ------------------------------------------------------------------------------------------


def stats(t: torch.Tensor):
    t = t.detach().double()
    return dict(shape=list(t.shape), min=float(t.min()), max=float(t.max()),
                mean=float(t.mean()), finite=bool(torch.isfinite(t).all()))


class Recorder:
    """Forward hooks on a DepthAnything3Net; `keep` selects which intermediates to store."""

    def __init__(self, net: DepthAnything3Net, prefix=""):
        self.store = OrderedDict()
        self.keep = set()
        self.handles = []
        self.prefix = prefix
        vit = net.backbone.pretrained

        def put(name, t):
            if name in self.keep or "*" in self.keep:
                self.store[self.prefix + name] = t.detach().clone().contiguous()

        self.handles.append(vit.patch_embed.register_forward_hook(
            lambda m, i, o: put("backbone.patch_embed", o)))
        for bi, blk in enumerate(vit.blocks):
            self.handles.append(blk.register_forward_hook(
                lambda m, i, o, bi=bi: put(f"backbone.block{bi:02d}.out", o)))

        def bb_hook(m, i, o):
            feats, _aux = o
            for li, (f, cam) in enumerate(feats):
                put(f"backbone.out{li}.feat", f)
                put(f"backbone.out{li}.cam_token", cam)
        self.handles.append(net.backbone.register_forward_hook(bb_hook))

        def head_hook(m, i, o):
            for k, v in o.items():
                put(f"head.{k}", v)
        self.handles.append(net.head.register_forward_hook(head_hook))
        if net.cam_dec is not None:
            self.handles.append(net.cam_dec.register_forward_hook(
                lambda m, i, o: put("cam_dec.pose_enc", o)))
        if net.cam_enc is not None:
            self.handles.append(net.cam_enc.register_forward_hook(
                lambda m, i, o: put("cam_enc.tokens", o)))

    def pop(self):
        s, self.store = self.store, OrderedDict()
        return s

    def close(self):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def capture_rng_sites(log):
    """Record the RANSAC sample indices and the selected reference view."""
    orig_params = ray_utils.get_params_for_ransac
    orig_sel = vt_mod.select_reference_view

    def params(N, device):
        r = orig_params(N, device)
        log.setdefault("ransac", []).append(dict(N=N, n_iter=r[0], num_sample=r[1], n_sample=r[2],
                                                 idx=r[3].clone()))
        return r

    def sel(x, strategy="saddle_balanced"):
        b = orig_sel(x, strategy=strategy)
        log.setdefault("ref_view", []).append(dict(strategy=strategy, b_idx=b.clone()))
        return b

    orig_h = ray_utils.ransac_find_homography_weighted_fast_batch
    orig_rk = ray_utils.compute_optimal_rotation_intrinsics_batch

    def homog(*a, **k):
        H = orig_h(*a, **k)
        log.setdefault("H", []).append(H.clone())
        return H

    def rot_intr(*a, **k):
        R, f, pp = orig_rk(*a, **k)
        log["R_f_pp"] = (R.clone(), f.clone(), pp.clone())
        return R, f, pp

    ray_utils.get_params_for_ransac = params
    ray_utils.ransac_find_homography_weighted_fast_batch = homog
    ray_utils.compute_optimal_rotation_intrinsics_batch = rot_intr
    vt_mod.select_reference_view = sel
    try:
        yield
    finally:
        ray_utils.get_params_for_ransac = orig_params
        ray_utils.ransac_find_homography_weighted_fast_batch = orig_h
        ray_utils.compute_optimal_rotation_intrinsics_batch = orig_rk
        vt_mod.select_reference_view = orig_sel


def to_out_tensors(prefix, out, tensors):
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            tensors[f"{prefix}.{k}"] = v.detach().clone().contiguous()
        elif k == "aux" and v:
            for ak, av in v.items():
                tensors[f"{prefix}.aux.{ak}"] = av.detach().clone().contiguous()


def run_case(net, rec, name, x, tensors, meta, keep=(), input_of=None, **kw):
    """Run net(x, **kw) in f32 under inference_mode and store inputs/outputs/intermediates."""
    rec.keep = set(keep)
    rec.pop()
    log = {}
    kw.setdefault("export_feat_layers", [])
    torch.manual_seed(SEED)
    with capture_rng_sites(log), torch.inference_mode():
        out = net(x, **kw)
    if input_of is None:
        tensors[f"{name}.input"] = x.clone().contiguous()
    else:  # same input as an earlier case: stored once (size budget)
        assert torch.equal(tensors[f"{input_of}.input"], x)
    for k in ("extrinsics", "intrinsics"):
        if kw.get(k) is not None:
            tensors[f"{name}.input_{k}"] = kw[k].contiguous()
    to_out_tensors(f"{name}.out", out, tensors)
    for k, v in rec.pop().items():
        tensors[f"{name}.{k}"] = v
    cm = dict(input=f"{input_of or name}.input",
              views=int(x.shape[1]), height=int(x.shape[-2]), width=int(x.shape[-1]),
              kwargs={k: (v if not isinstance(v, torch.Tensor) else f"tensor{list(v.shape)}")
                      for k, v in kw.items()},
              outputs={k: stats(v) for k, v in out.items() if isinstance(v, torch.Tensor)})
    if "ransac" in log:
        r = log["ransac"]
        assert len(r) == 1
        tensors[f"{name}.ransac.rand_sample_iters_idx"] = r[0]["idx"].contiguous()
        # solver intermediates (per view, B*S first): refitted homography, QL results
        tensors[f"{name}.ransac.H"] = torch.cat(log["H"], 0).contiguous()
        R, f, pp = log["R_f_pp"]
        tensors[f"{name}.ransac.R"] = R.contiguous()
        tensors[f"{name}.ransac.focal_raw"] = f.contiguous()
        tensors[f"{name}.ransac.pp_raw"] = pp.contiguous()
        cm["ransac"] = dict(N_per_view=r[0]["N"], n_iter=r[0]["n_iter"],
                            num_sample_for_ransac=r[0]["num_sample"], n_sample=r[0]["n_sample"],
                            second_randperm_triggered=bool(r[0]["N"] > 8000))
    if "ref_view" in log:
        r = log["ref_view"]
        assert len(r) == 1
        tensors[f"{name}.ref_view_b_idx"] = r[0]["b_idx"].contiguous()
        cm["ref_view_b_idx"] = r[0]["b_idx"].tolist()
        cm["ref_view_strategy_used"] = r[0]["strategy"]
    else:
        cm["ref_view_b_idx"] = None
    meta["cases"][name] = cm
    return out


def save_hub(net, cfg, outdir: Path, model_name="custom"):
    outdir.mkdir(parents=True, exist_ok=True)
    wrapper = HubWrapper(net)
    # save_model drops tied duplicates (keeps the sorted-first name), as the hub files do.
    save_model(wrapper, str(outdir / "model.safetensors"), metadata={"format": "pt"})
    canonicalize_header_(outdir / "model.safetensors")
    conf = {"model_name": model_name} if cfg is None else {"model_name": "custom", "net_config": cfg}
    (outdir / "config.json").write_text(json.dumps(conf, indent=1) + "\n")
    stored = load_file(str(outdir / "model.safetensors"))
    sd = wrapper.state_dict()
    for k, v in stored.items():
        assert torch.equal(v, sd[k]), k
    return dict(state_dict_keys=len(sd), stored_keys=len(stored),
                params=int(sum(v.numel() for v in stored.values())),
                dropped_aliases=sorted(set(sd) - set(stored)))


def canonicalize_header_(path: Path):
    """safetensors writes __metadata__ (incl. save_model's alias map) in hash order; rewrite the
    header with sorted metadata (same length, same data) so reruns give identical bytes."""
    b = bytearray(path.read_bytes())
    n = int.from_bytes(b[:8], "little")
    hdr = json.loads(bytes(b[8:8 + n]), object_pairs_hook=OrderedDict)
    if "__metadata__" in hdr:
        hdr["__metadata__"] = OrderedDict(sorted(hdr["__metadata__"].items()))
    new = json.dumps(hdr, separators=(",", ":")).encode()
    assert len(new) <= n
    b[8:8 + n] = new + b" " * (n - len(new))
    path.write_bytes(bytes(b))


def write_cases(outdir: Path, tensors, meta):
    tensors = OrderedDict((k, v.detach().clone().contiguous()) for k, v in tensors.items())
    save_file(dict(tensors), str(outdir / "cases.safetensors"), metadata={"format": "pt"})
    meta["tensors"] = {k: dict(shape=list(v.shape), dtype=str(v.dtype).replace("torch.", ""))
                       for k, v in sorted(tensors.items())}
    (outdir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")


def base_meta(name, cfg):
    return OrderedDict(
        fixture=name, seed=SEED, torch=torch.__version__, numpy=np.__version__,
        depth_anything_3="0.1.1",
        how=("float32; net(x, ...) called directly under torch.inference_mode() (no autocast); "
             "torch.manual_seed(0) right before every case; weights = torch default init "
             "(seeded) + perturbation (see scripts/make_fixtures.py)"),
        dims_note=("reduced dims vs the contract example (size budget): any-view embed_dim 32, "
                   "mono/metric/nested embed_dim 16 with head features 8, out_channels "
                   "[8,16,24,32]; all dims are explicit in net_config"),
        inputs_note="each case's input tensor is named in cases.<case>.input (shared inputs are stored once)",
        net_config=cfg, cases=OrderedDict())


# ------------------------------------------------------------------------------------------
# Fixture builders
# ------------------------------------------------------------------------------------------


def fixture_anyview(out: Path):
    name = "tiny-anyview"
    cfg = TINY_CONFIGS[name]
    torch.manual_seed(SEED)
    net = build_net(cfg)
    perturb_(net, SEED)
    tune_anyview_(net)
    x2 = views(2, 56, 70, 102)
    tune_heads_anyview_(net, x2)
    info = save_hub(net, cfg, out / name)
    meta = base_meta(name, cfg)
    meta["weights"] = info
    rec = Recorder(net)
    T = OrderedDict()
    full_keep = ["backbone.patch_embed", "backbone.block00.out", "backbone.block01.out",
                 "backbone.block02.out", "backbone.block03.out", "backbone.block07.out",
                 "backbone.out3.feat", "backbone.out3.cam_token", "backbone.out0.feat",
                 "cam_dec.pose_enc"]

    run_case(net, rec, "v1", views(1, 42, 56, 101), T, meta,
             keep=["backbone.patch_embed", "backbone.block03.out", "cam_dec.pose_enc"])
    run_case(net, rec, "v2", x2, T, meta, keep=full_keep, export_feat_layers=[1, 6])
    x3 = views(3, 28, 42, 103)
    first = None
    for s in REF_STRATEGIES:
        run_case(net, rec, f"v3_{s}", x3, T, meta, keep=["backbone.block01.out", "cam_dec.pose_enc"],
                 ref_view_strategy=s, input_of=first)
        first = first or f"v3_{s}"
    run_case(net, rec, "v4", views(4, 28, 42, 104), T, meta,
             keep=["backbone.block02.out", "backbone.block03.out", "cam_dec.pose_enc"])

    # camera-conditioned: raw world-to-camera 4x4 extrinsics are normalised exactly as the API
    # does before the network; intrinsics are in processed-image pixels
    ext_raw = make_cameras(2, 7)[None]
    ixt = intrinsics_for(2, 56, 70)[None]
    ext_n = normalize_extrinsics_like_api(ext_raw)
    T["v2_cam.input_extrinsics_raw"] = ext_raw.contiguous()
    run_case(net, rec, "v2_cam", x2, T, meta, keep=["cam_enc.tokens", "backbone.block02.out",
                                                    "backbone.block03.out", "cam_dec.pose_enc"],
             extrinsics=ext_n, intrinsics=ixt, input_of="v2")
    meta["cases"]["v2_cam"]["note"] = ("input_extrinsics = API-normalised input_extrinsics_raw "
                                       "(see docs/reference-notes.md); no reference-view selection "
                                       "when cameras are given")
    ext3 = make_cameras(3, 8)[None]
    T["v3_cam.input_extrinsics_raw"] = ext3.contiguous()
    run_case(net, rec, "v3_cam", x3, T, meta, keep=["cam_enc.tokens", "cam_dec.pose_enc"],
             extrinsics=normalize_extrinsics_like_api(ext3), intrinsics=intrinsics_for(3, 28, 42)[None],
             input_of="v3_first")

    # ray-pose path: RANSAC sample indices recorded (inject them on the Rust side)
    run_case(net, rec, "v2_raypose", x2, T, meta, keep=["head.ray", "head.ray_conf"],
             use_ray_pose=True, input_of="v2")
    meta["cases"]["v2_raypose"]["note"] = (
        "ransac.rand_sample_iters_idx (100x8, int64) = the only RNG draw of the ray->pose solver "
        "here: 100 x torch.randperm(n_sample)[:8] in get_params_for_ransac, shared by all views; "
        "head.ray/head.ray_conf are the solver inputs")
    rec.close()
    write_cases(out / name, T, meta)


def fixture_mono(out: Path, name: str):
    cfg = TINY_CONFIGS[name]
    metric = name == "tiny-metric"
    seed = SEED + (20 if metric else 10)
    torch.manual_seed(seed)
    net = build_net(cfg)
    perturb_(net, seed)
    x1 = views(1, 42, 56, 201 if not metric else 301)
    x2 = views(2, 28, 42, 202 if not metric else 302)
    tune_dpt_(net, x1, sky_frac=0.25)
    info = save_hub(net, cfg, out / name)
    meta = base_meta(name, cfg)
    meta["weights"] = info
    rec = Recorder(net)
    T = OrderedDict()
    keep = ["backbone.patch_embed", "backbone.block03.out", "backbone.out3.feat", "head.depth"]
    for cname, x in (("m1", x1), ("m2", x2)):
        run_case(net, rec, cname, x, T, meta, keep=keep)
        sky = T[f"{cname}.out.sky"]
        non_sky = sky < 0.3
        cm = meta["cases"][cname]
        cm["sky_pixels_ge_0.3"] = int((~non_sky).sum())
        cm["non_sky_pixels"] = int(non_sky.sum())
        cm["mono_sky_step_applied"] = bool(non_sky.sum() > 10 and (~non_sky).sum() > 10)
        d = T[f"{cname}.head.depth"]
        cm["non_sky_q99"] = float(torch.quantile(d[non_sky], 0.99))
        cm["note"] = ("head.depth = raw DPT depth (exp); out.depth = after the mono sky step: "
                      "sky (>=0.3) pixels set to the 0.99 quantile of the non-sky depth")
    if metric:
        # metric conversion that users/Nested apply (the API does not): depth * ((fx+fy)/2) / 300
        ixt = intrinsics_for(1, 42, 56)[None]
        T["m1.metric.intrinsics"] = ixt.contiguous()
        T["m1.metric.depth_m"] = align_utils.apply_metric_scaling(T["m1.out.depth"], ixt).contiguous()
        meta["metric_scaling"] = ("m1.metric.depth_m = m1.out.depth * ((fx+fy)/2)/300 with "
                                  "m1.metric.intrinsics (apply_metric_scaling); the model itself "
                                  "returns raw output, and mono/metric configs are identical")
    rec.close()
    write_cases(out / name, T, meta)


def fixture_nested(out: Path):
    name = "tiny-nested"
    cfg = TINY_CONFIGS[name]
    torch.manual_seed(SEED + 30)
    net = build_net(cfg)
    perturb_(net, SEED + 30)
    tune_anyview_(net.da3)
    x2 = views(2, 42, 56, 401)
    x3 = views(3, 28, 42, 402)
    tune_heads_anyview_(net.da3, x2)
    tune_dpt_(net.da3_metric, x2, sky_frac=0.2)
    info = save_hub(net, cfg, out / name)
    meta = base_meta(name, cfg)
    meta["weights"] = info
    T = OrderedDict()
    rec = Recorder(net.da3, prefix="anyview.")
    branch = {}

    def grab(tag):
        def hook(m, i, o):
            branch[tag] = {k: v.detach().clone() for k, v in o.items() if isinstance(v, torch.Tensor)}
        return hook
    hs = [net.da3.register_forward_hook(grab("anyview")),
          net.da3_metric.register_forward_hook(grab("metric"))]
    for cname, x in (("n2", x2), ("n3", x3)):
        res = run_case(net, rec, cname, x, T, meta, keep=["cam_dec.pose_enc"])
        a, m = branch["anyview"], branch["metric"]
        # recompute the nested steps with the reference helpers, to expose every intermediate
        m_scaled = align_utils.apply_metric_scaling(m["depth"], a["intrinsics"])
        non_sky = align_utils.compute_sky_mask(m["sky"], threshold=0.3)
        conf_ns = a["depth_conf"][non_sky]
        assert conf_ns.numel() <= 100000, "randperm sampling would trigger"
        median_conf = torch.quantile(conf_ns, 0.5)
        mask = align_utils.compute_alignment_mask(a["depth_conf"], non_sky, a["depth"], m_scaled,
                                                  median_conf)
        scale = align_utils.least_squares_scale_scalar(m_scaled[mask], a["depth"][mask])
        d_scaled = a["depth"] * scale
        assert d_scaled[non_sky].numel() <= 100000, "randint sampling would trigger"
        q99 = torch.quantile(d_scaled[non_sky], 0.99)
        for k in ("depth", "depth_conf", "extrinsics", "intrinsics"):
            T[f"{cname}.anyview.{k}"] = a[k].contiguous()
        for k in ("depth", "sky"):
            T[f"{cname}.metric.{k}"] = m[k].contiguous()
        T[f"{cname}.metric.depth_scaled"] = m_scaled.contiguous()
        T[f"{cname}.align.non_sky_mask"] = non_sky.to(torch.uint8).contiguous()
        T[f"{cname}.align.mask"] = mask.to(torch.uint8).contiguous()
        T[f"{cname}.align.median_conf"] = median_conf.reshape(1).contiguous()
        T[f"{cname}.align.scale_factor"] = scale.reshape(1).contiguous()
        T[f"{cname}.align.non_sky_q99"] = q99.reshape(1).contiguous()
        cm = meta["cases"][cname]
        cm["scale_factor"] = float(res["scale_factor"])
        cm["recomputed_scale_factor"] = float(scale)
        cm["non_sky_pixels"] = int(non_sky.sum())
        cm["sky_pixels"] = int((~non_sky).sum())
        cm["align_mask_pixels"] = int(mask.sum())
        cm["sky_depth"] = float(min(float(q99), 200.0))
        cm["is_metric"] = int(res["is_metric"])
        assert abs(float(res["scale_factor"]) - float(scale)) <= 1e-6 * abs(float(scale)) + 1e-12
        ok = torch.allclose(T[f"{cname}.out.depth"][non_sky], d_scaled[non_sky], rtol=0, atol=0)
        cm["recomputed_matches_out_depth_exactly"] = bool(ok)
    meta["rng"] = ("no RNG draws: every sampled set is <= 100000 elements (the metric branch's "
                   "mono sky step, sample_tensor_for_quantile and the sky quantile all take the "
                   "whole set)")
    meta["note"] = ("out.* = nested output (anyview depth/extrinsic translations x scale_factor, "
                    "sky pixels -> min(q99 non-sky depth, 200), depth_conf there -> 1.0). "
                    "anyview.* intermediates are recorded with prefix '<case>.anyview.'; "
                    "metric.depth is the metric branch output after its own mono sky step")
    for h in hs:
        h.remove()
    rec.close()
    write_cases(out / name, T, meta)


# ------------------------------------------------------------------------------------------
# Preprocessing fixture
# ------------------------------------------------------------------------------------------

PRE_METHODS = ["upper_bound_resize", "lower_bound_resize", "upper_bound_crop", "lower_bound_crop"]


GS_FIELDS = ("means", "scales", "rotations", "harmonics", "opacities")


def fixture_gs(out: Path):
    """The Gaussian head (GSDPT + GaussianAdapter, DA3-GIANT's adapter settings) on a reduced
    any-view model: `infer_gs=True` without cameras (one 42x56 view, whose gs_ply the
    reference's own `export_to_gs_ply` writes to gs_ply/0000.ply) and with input cameras (two
    28x42 views: the predicted cameras' scale is fitted to the given ones)."""
    from depth_anything_3.specs import Prediction
    from depth_anything_3.utils.export.gs import export_to_gs_ply

    name = "tiny-gs"
    cfg = TINY_CONFIGS[name]
    torch.manual_seed(SEED)
    net = build_net(cfg)
    perturb_(net, SEED)
    tune_anyview_(net)
    x1 = views(1, 42, 56, 111)
    tune_heads_anyview_(net, x1)
    # raw Gaussian logits ~ N(0, 1) and densities spread around 0.5 on x1; the depth offset
    # (channel 36) small, so that every Gaussian stays in front of its camera (positive scales)
    std = torch.ones(38)
    std[36] = 0.05
    calibrate_conv_(net, net.gs_head.scratch.output_conv2[2], x1, std, infer_gs=True)
    info = save_hub(net, cfg, out / name)
    meta = base_meta(name, cfg)
    meta["weights"] = info
    rec = Recorder(net)
    T = OrderedDict()

    def put_gs(case, o):
        g = o.gaussians
        for f in GS_FIELDS:
            T[f"{case}.out.gs.{f}"] = getattr(g, f).detach().clone().contiguous()
        meta["cases"][case]["gaussians"] = {f: list(getattr(g, f).shape) for f in GS_FIELDS}

    o = run_case(net, rec, "gs_v1", x1, T, meta, infer_gs=True)
    put_gs("gs_v1", o)
    pred = Prediction(depth=o.depth[0].numpy(), is_metric=0, gaussians=o.gaussians)
    with tempfile.TemporaryDirectory() as d:
        export_to_gs_ply(pred, d)
        shutil.copy(Path(d) / "gs_ply" / "0000.ply", out / name / "gs_v1.ply")
    meta["cases"]["gs_v1"]["gs_ply"] = ("gs_v1.ply: depth_anything_3.utils.export.gs."
                                        "export_to_gs_ply(Prediction(depth=out.depth[0], "
                                        "gaussians=out.gaussians), dir)")
    x2 = views(2, 28, 42, 112)
    ext = make_cameras(2, 9)[None]
    T["gs_v2_cam.input_extrinsics_raw"] = ext.contiguous()
    o = run_case(net, rec, "gs_v2_cam", x2, T, meta, infer_gs=True,
                 extrinsics=normalize_extrinsics_like_api(ext),
                 intrinsics=intrinsics_for(2, 28, 42)[None])
    put_gs("gs_v2_cam", o)
    rec.close()
    write_cases(out / name, T, meta)


def preproc_cases(out_st: Path, out_json: Path, specs):
    from depth_anything_3.utils.io.input_processor import InputProcessor
    proc = InputProcessor()
    T = OrderedDict()
    desc = OrderedDict(
        note=("uint8 HxWx3 input `<tag>.in_u8` (single image) or `<tag>.in<i>_u8` (batch); "
              "output `<tag>.<method>.out` is (3,h,w) f32 (or (N,3,h,w) for a batch) from the "
              "reference InputProcessor (num_workers=1); intrinsics `<tag>.K_in` (3,3)/(N,3,3) "
              "f32 and `<tag>.<method>.K_out`"),
        cases=OrderedDict())
    for tag, spec in specs.items():
        sizes, res = spec["sizes"], spec["process_res"]
        imgs = [seeded_u8_images(1, h, w, seed=1000 + 7 * h + w)[0] for (h, w) in sizes]
        Ks = [np.array([[0.8 * w + 3.0, 0.0, w / 2.0 - 2.25], [0.0, 0.85 * w + 1.0, h / 2.0 + 1.75],
                        [0.0, 0.0, 1.0]], dtype=np.float32) for (h, w) in sizes]
        batch = len(sizes) > 1
        if batch:
            for i, im in enumerate(imgs):
                T[f"{tag}.in{i}_u8"] = torch.from_numpy(im.copy())
            T[f"{tag}.K_in"] = torch.from_numpy(np.stack(Ks))
        else:
            T[f"{tag}.in_u8"] = torch.from_numpy(imgs[0].copy())
            T[f"{tag}.K_in"] = torch.from_numpy(Ks[0])
        cd = OrderedDict(sizes_hw=[list(s) for s in sizes], process_res=res, out_hw={})
        for m in spec.get("methods", PRE_METHODS):
            t, _, k = proc([im for im in imgs], None, np.stack(Ks), res, m, num_workers=1)
            T[f"{tag}.{m}.out"] = (t if batch else t[0]).contiguous()
            T[f"{tag}.{m}.K_out"] = (k if batch else k[0]).contiguous()
            cd["out_hw"][m] = list(t.shape[-2:])
        desc["cases"][tag] = cd
    out_st.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(T), str(out_st), metadata={"format": "pt"})
    desc["tensors"] = {k: dict(shape=list(v.shape), dtype=str(v.dtype).replace("torch.", ""))
                       for k, v in T.items()}
    out_json.write_text(json.dumps(desc, indent=1) + "\n")


# tags are <kind><W>x<H>; sizes are (H, W)
SMALL_PRE = OrderedDict([
    ("e30x20", dict(sizes=[(20, 30)], process_res=42)),       # enlarge both stages (INTER_CUBIC)
    ("h28x15", dict(sizes=[(15, 28)], process_res=42,         # 22.5 -> 22: round-half-even
                    methods=["upper_bound_resize", "lower_bound_resize"])),
    ("o37x61", dict(sizes=[(61, 37)], process_res=42)),       # odd sizes, portrait
    ("s90x60", dict(sizes=[(60, 90)], process_res=42)),       # shrink (INTER_AREA), 63 -> 70 cubic
    ("s67x93", dict(sizes=[(93, 67)], process_res=42)),       # shrink, odd, portrait
    ("x42x28", dict(sizes=[(28, 42)], process_res=42,         # longest == res (no resize)
                    methods=["upper_bound_resize", "lower_bound_resize"])),
    ("b2", dict(sizes=[(20, 30), (27, 30)], process_res=42,   # batch: centre-crop to min h,w
                methods=["upper_bound_resize", "lower_bound_crop"])),
])
LARGE_PRE = OrderedDict([
    ("p640x480", dict(sizes=[(480, 640)], process_res=504)),
    ("p480x640", dict(sizes=[(640, 480)], process_res=504)),
])


# ------------------------------------------------------------------------------------------
# CLI / API fixture
# ------------------------------------------------------------------------------------------


def fixture_cli(out: Path):
    from PIL import Image
    cdir = out / "cli"
    cdir.mkdir(parents=True, exist_ok=True)
    imgs = seeded_u8_images(3, 63, 84, seed=501)
    paths = []
    for i, im in enumerate(imgs):
        p = cdir / f"view{i}.png"
        Image.fromarray(im).save(p, format="PNG", optimize=False)
        paths.append(str(p))

    # the API object with the tiny-anyview weights (loaded back from the fixture file)
    api = DepthAnything3(model_name="da3-small")
    net = build_net(TINY_CONFIGS["tiny-anyview"])
    sd = load_file(str(out / "tiny-anyview" / "model.safetensors"))
    missing, unexpected = HubWrapper(net).load_state_dict(sd, strict=False)
    assert not unexpected and all(".output_conv2_aux." in k for k in missing), (missing, unexpected)
    api.model = net.eval()

    def f32_forward(self, image, extrinsics=None, intrinsics=None, export_feat_layers=None,
                    infer_gs=False, use_ray_pose=False, ref_view_strategy="saddle_balanced"):
        with torch.inference_mode():  # no autocast: f32 reference
            return self.model(image, extrinsics, intrinsics, export_feat_layers, infer_gs,
                              use_ray_pose, ref_view_strategy)
    api.forward = types.MethodType(f32_forward, api)

    process_res = 70
    raw = {}
    h = api.model.register_forward_hook(
        lambda m, i, o: raw.update({k: v.detach().clone() for k, v in o.items()
                                    if isinstance(v, torch.Tensor)}))
    with tempfile.TemporaryDirectory() as td:
        before = set(threading.enumerate())
        torch.manual_seed(SEED)
        pred = api.inference(paths, export_dir=td, export_format="npz", process_res=process_res)
        for t in set(threading.enumerate()) - before:
            t.join()  # the npz writer runs in a background thread
        src = Path(td) / "exports" / "npz" / "results.npz"
        repack_zip_deterministic(src, cdir / "results.npz")
    # same images with input cameras: intrinsics rescaled by the processor, extrinsics
    # normalised before the net (camera-token path), then the prediction is aligned back
    # to the input cameras (Umeyama Sim(3) on camera centres; depth /= scale)
    import depth_anything_3.api as api_mod
    ext_in = make_cameras(3, 9).numpy()
    ixt_in = intrinsics_for(3, 63, 84).numpy()
    um = {}
    orig_um = api_mod.align_poses_umeyama

    def um_rec(*a, **k):
        r = orig_um(*a, **k)
        um.update(R=np.asarray(r[0]).tolist(), t=np.asarray(r[1]).tolist(), s=float(r[2]),
                  ransac=bool(k.get("ransac")))
        return r
    api_mod.align_poses_umeyama = um_rec
    raw_cam = {}
    h.remove()
    h = api.model.register_forward_hook(
        lambda m, i, o: raw_cam.update({k: v.detach().clone() for k, v in o.items()
                                        if isinstance(v, torch.Tensor)}))
    try:
        with tempfile.TemporaryDirectory() as td:
            before = set(threading.enumerate())
            torch.manual_seed(SEED)
            api.inference(paths, extrinsics=ext_in, intrinsics=ixt_in, export_dir=td,
                          export_format="npz", process_res=process_res)
            for t in set(threading.enumerate()) - before:
                t.join()
            repack_zip_deterministic(Path(td) / "exports" / "npz" / "results.npz",
                                     cdir / "results_cam.npz")
    finally:
        api_mod.align_poses_umeyama = orig_um
    h.remove()
    np.savez(cdir / "cameras_in.npz", extrinsics=ext_in, intrinsics=ixt_in)
    repack_zip_deterministic_inplace(cdir / "cameras_in.npz")
    npz_cam = np.load(cdir / "results_cam.npz")
    npz = np.load(cdir / "results.npz")
    x, _, _ = api.input_processor(paths, None, None, process_res, "upper_bound_resize", num_workers=1)
    # the "image" entry: denormalised processed image, truncated (astype) not rounded
    resized_direct = x.permute(0, 2, 3, 1).numpy() * np.array([0.229, 0.224, 0.225]) + np.array(
        [0.485, 0.456, 0.406])
    meta = OrderedDict(
        images=[os.path.basename(p) for p in paths],
        call=("DepthAnything3.inference(image=[paths], export_dir=D, export_format='npz', "
              f"process_res={process_res}) with process_res_method='upper_bound_resize' "
              "(default), ref_view_strategy='saddle_balanced', use_ray_pose=False, "
              "align_to_input_ext_scale=True (no-op without input extrinsics)"),
        weights="tiny-anyview/model.safetensors (config ../tiny-anyview/config.json)",
        precision=("f32: DepthAnything3.forward (which autocasts to bf16/fp16, even on CPU) was "
                   "replaced by a plain call of the net under torch.inference_mode()"),
        api_steps=[
            "InputProcessor(images, None, None, process_res, method) -> (N,3,H,W) normalised",
            "imgs[None].float(); extrinsics (if any) normalised: ext @ inv(ext[:, :1]), "
            "then translations / clamp(median camera distance, min=0.1)",
            "net(imgs, ext, ixt, export_feat_layers=[], infer_gs=False, use_ray_pose, strategy)",
            "OutputProcessor: depth (1,N,H,W)->(N,H,W); depth_conf->(N,H,W) as conf; "
            "extrinsics (1,N,3,4)->(N,3,4); intrinsics (1,N,3,3)->(N,3,3); sky (if any) >= 0.5 "
            "-> bool",
            "with input extrinsics: Umeyama alignment (not used here)",
            "processed_images = clip(x*std+mean, 0, 1)*255 -> astype(uint8) (truncation)",
            "export npz (exports/npz/results.npz, np.savez_compressed, background thread)",
        ],
        npz={k: dict(shape=list(npz[k].shape), dtype=str(npz[k].dtype)) for k in npz.files},
        npz_rounding={"depth": "np.round(depth, 6)", "conf": "np.round(conf, 2)",
                      "extrinsics": "as is (float32, world-to-camera 3x4)",
                      "intrinsics": "as is (float32)", "image": "uint8 (N,H,W,3)"},
        npz_repacked=("results.npz: member bytes exactly as numpy wrote them; only the zip "
                      "timestamps are fixed (1980-01-01) so reruns give identical bytes"),
        net_output_stats={k: stats(v) for k, v in raw.items()},
        cam_case=OrderedDict(
            files="cameras_in.npz (extrinsics (3,4,4) world-to-camera f32, intrinsics (3,3,3) f32 "
                  "in original 84x63 pixels) -> results_cam.npz",
            call="same call plus extrinsics=..., intrinsics=... (align_to_input_ext_scale=True)",
            umeyama=um,
            npz={k: dict(shape=list(npz_cam[k].shape), dtype=str(npz_cam[k].dtype))
                 for k in npz_cam.files},
            net_depth_over_npz_depth=float(np.median(raw_cam["depth"][0].numpy() /
                                                     np.maximum(npz_cam["depth"], 1e-12))),
            note=("npz extrinsics = input extrinsics[:, :3, :] (NOT normalised), npz intrinsics = "
                  "processor-rescaled input intrinsics, depth = net depth / umeyama scale; "
                  "the umeyama call aligns the INPUT camera centres onto the PREDICTED ones "
                  "(evo PosePath3D.align, correct_scale=True); RANSAC only for >= 10 views"),
        ),
        image_vs_direct_u8_maxdiff=int(np.abs(
            (np.clip(resized_direct, 0, 1) * 255).astype(np.uint8).astype(np.int32)
            - npz["image"].astype(np.int32)).max()),
        prediction_depth_equals_net=bool(np.array_equal(pred.depth, raw["depth"][0].numpy())),
    )
    (cdir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def repack_zip_deterministic_inplace(p: Path):
    tmp = p.with_suffix(".tmp")
    p.rename(tmp)
    repack_zip_deterministic(tmp, p)
    tmp.unlink()


def repack_zip_deterministic(src: Path, dst: Path):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            data = zin.read(info.filename)
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = info.compress_type
            zi.external_attr = 0o644 << 16
            zout.writestr(zi, data)


# ------------------------------------------------------------------------------------------
# Full-size DA3-SMALL (cache, not committed)
# ------------------------------------------------------------------------------------------


def fixture_full(variant: str):
    assert variant == "da3-small", "only --full da3-small is supported"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = CACHE / "fixtures" / variant
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    api = DepthAnything3(model_name=variant).eval()
    net = api.model
    perturb_(net, SEED)
    tune_anyview_(net, cam_enc_gamma=False)
    tune_heads_anyview_(net, views(1, 140, 182, 600))
    info = save_hub(net, None, out, model_name=variant)
    meta = base_meta(variant, {"model_name": variant})
    meta["weights"] = info
    rec = Recorder(net)
    T = OrderedDict()
    keep = ["backbone.patch_embed", "backbone.block00.out", "backbone.block03.out",
            "backbone.block04.out", "backbone.block05.out", "backbone.block11.out",
            "backbone.out3.feat", "cam_dec.pose_enc"]
    run_case(net, rec, "v1", views(1, 378, 504, 601), T, meta, keep=keep)
    run_case(net, rec, "v2", views(2, 378, 504, 602), T, meta, keep=keep)
    rec.close()
    write_cases(out, T, meta)
    # big preprocessing cases (640x480 at 504), too large to commit
    preproc_cases(out / "preproc-large.safetensors", out / "preproc-large.json", LARGE_PRE)
    # round trip through the reference loader
    api2 = DepthAnything3.from_pretrained(str(out)).eval()
    with torch.inference_mode():
        o = api2.model(T["v1.input"], export_feat_layers=[])
    d = float((o.depth - T["v1.out.depth"]).abs().max())
    print(f"full {variant}: written to {out}; from_pretrained round trip max|d depth| = {d}")


# ------------------------------------------------------------------------------------------
# Key lists
# ------------------------------------------------------------------------------------------


def tied_drops(sd):
    """Names save_model() drops: for tensors sharing storage, all but the sorted-first name."""
    groups = OrderedDict()
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        groups.setdefault(key, []).append(k)
    alias = {}
    for names in groups.values():
        if len(names) > 1:
            keep = sorted(names)[0]
            for n in names:
                if n != keep:
                    alias[n] = keep
    return alias


def regen_keys(keys_dir: Path):
    keys_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    orig_init = {}
    # skip the (slow, irrelevant) random init of the huge variants
    for fn in ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "zeros_", "ones_",
               "constant_", "xavier_uniform_"):
        if hasattr(nn.init, fn):
            orig_init[fn] = getattr(nn.init, fn)
            setattr(nn.init, fn, lambda t, *a, **k: t)
    report = {}
    try:
        for v in PUBLISHED:
            assert v in MODEL_REGISTRY, v
            api = DepthAnything3(model_name=v)
            sd = api.state_dict()  # keys already carry the hub's "model." prefix
            alias = tied_drops(sd)
            lines = ["key\tshape\tdtype\tnumel\tin_hub_file"]
            for k, t in sd.items():
                lines.append(f"{k}\t{list(t.shape)}\t{str(t.dtype).replace('torch.', '')}\t"
                             f"{t.numel()}\t{('alias_of:' + alias[k]) if k in alias else 'yes'}")
            text = "\n".join(lines) + "\n"
            path = keys_dir / f"{v}.tsv"
            old = path.read_text() if path.exists() else None
            report[v] = "unchanged" if old == text else ("new" if old is None else "CHANGED")
            path.write_text(text)
            print(f"keys {v}: {len(sd)} keys, {len(alias)} aliases -> {report[v]}")
            del api, sd
    finally:
        for fn, f in orig_init.items():
            setattr(nn.init, fn, f)
    return report


# ------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "nodes" / "da3" / "tests" / "fixtures"))
    ap.add_argument("--full", default=None, help="also write the full-size seeded checkpoint "
                    "(da3-small) + cases into $DA3_CACHE/fixtures/<name>")
    ap.add_argument("--keys", action="store_true", help="regenerate nodes/da3/tests/keys/*.tsv")
    ap.add_argument("--skip-small", action="store_true", help="skip the committed small fixtures")
    ap.add_argument("--only", default=None, help="write only this small fixture (e.g. tiny-gs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    if args.only:
        builders = {"tiny-anyview": fixture_anyview, "tiny-nested": fixture_nested,
                    "tiny-gs": fixture_gs, "cli": fixture_cli,
                    "tiny-mono": lambda o: fixture_mono(o, "tiny-mono"),
                    "tiny-metric": lambda o: fixture_mono(o, "tiny-metric")}
        if args.only not in builders:
            sys.exit(f"--only: one of {', '.join(builders)}")
        builders[args.only](out)
        return
    if not args.skip_small:
        out.mkdir(parents=True, exist_ok=True)
        fixture_anyview(out)
        fixture_mono(out, "tiny-mono")
        fixture_mono(out, "tiny-metric")
        fixture_nested(out)
        fixture_gs(out)
        preproc_cases(out / "preproc.safetensors", out / "preproc.json", SMALL_PRE)
        fixture_cli(out)
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"small fixtures in {out}: {total / 1e6:.2f} MB")
        for p in sorted(out.rglob("*")):
            if p.is_file():
                print(f"  {p.stat().st_size:>9d}  {p.relative_to(out)}")
    if args.full:
        fixture_full(args.full)
    if args.keys:
        regen_keys(REPO / "nodes" / "da3" / "tests" / "keys")


if __name__ == "__main__":
    main()
