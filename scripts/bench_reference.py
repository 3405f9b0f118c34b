#!/usr/bin/env python3
"""Times the PyTorch reference (depth-anything-3==0.1.1) on the same seeded
checkpoints and input sizes as `da3 bench`, one JSON line per view count, and the
same network run by the peers a robotics user would pick instead: ONNX Runtime and
OpenVINO on the reference exported to ONNX.

  python scripts/bench_reference.py --make-checkpoint da3-base DIR   # seeded random weights, hub layout
  python scripts/bench_reference.py --checkpoint DIR --views 1 --threads 2 --mode forward
  python scripts/bench_reference.py --checkpoint DIR --views 4 --threads 2 --mode api
  python scripts/bench_reference.py --checkpoint DIR --views 1 --export-onnx FILE   # export + check against torch
  python scripts/bench_reference.py --onnx FILE --views 1 --threads 2 --runtime ov-bf16
  python scripts/bench_reference.py --onnx FILE --views 1 --runtime ov-bf16 --profile   # per-node ms

--mode forward: the network called directly in f32 under inference_mode (what
our `da3 bench` times). --mode api: the reference's own `inference()` on
640x480 uint8 frames at process_res 504 (preprocessing, autocast, outputs).
Run one view count per process so peak RSS is per configuration.

--runtime (forward mode): torch (the default: the reference itself), ort (ONNX
Runtime, CPU, f32), ov-f32 or ov-bf16 (OpenVINO, CPU, with that inference
precision). The last three run the file of --onnx, written by --export-onnx: the
same forward (`model(x, export_feat_layers=[])`) traced at one fixed input shape
(1, views, 3, H, W), checked against torch through ONNX Runtime (the run fails
above 1e-4 max relative error of the depth). They do not import torch, so that
their peak RSS is their own; their input is seeded numpy noise of the same range.

--profile (ov-f32, ov-bf16): OpenVINO's own per-node timings (PERF_COUNT) of
--iters forwards, by node type and the slowest nodes with their kernels, to
set beside `da3 bench --profile` (instead of the timed runs).

--lockstep WAIT,SIGNAL (forward mode): take turns with `da3 bench --lockstep
SIGNAL,WAIT` over two named pipes, one forward per turn, so that each timed run
of ours sits next to one of the reference's on a machine whose speed drifts.
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

IMPL = {
    "torch": "reference forward f32",
    "ort": "onnxruntime f32",
    "ov-f32": "openvino f32",
    "ov-bf16": "openvino bf16",
}
# Largest max relative error of the exported depth against torch that --export-onnx accepts.
EXPORT_TOL = 1e-4


def make_checkpoint(variant, out):
    import torch
    from safetensors.torch import save_model
    from depth_anything_3.api import DepthAnything3

    torch.manual_seed(0)
    api = DepthAnything3(model_name=variant).eval()
    os.makedirs(out, exist_ok=True)
    save_model(api, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"model_name": variant}, f)
    print(f"wrote {out}")


@contextlib.contextmanager
def exportable():
    """Swaps, for the time of an export, the two pieces of depth_anything_3 that the
    TorchScript ONNX exporter cannot translate ("UnsupportedOperatorError: Exporting the
    operator 'aten::...' to ONNX opset version 18 is not supported"), for equivalents it
    can (the installed package is left as it is):
    - torch.cartesian_prod (RoPE positions, model/dinov2/layers/rope.py): meshgrid
      (indexing="ij") + stack gives the same (N*M, 2) grid;
    - utils/geometry.py's affine_inverse, a @torch.jit.script function using `.mT`
      (aten::mT; the camera decoder's pose, model/da3.py): the same inverse in plain
      python with transpose(-2, -1). model/da3.py imported it by name, so it is
      replaced there (and in the other modules that hold it)."""
    from unittest import mock
    import torch
    import depth_anything_3.model.cam_enc as cam_enc
    import depth_anything_3.model.da3 as da3_net
    import depth_anything_3.utils.geometry as geometry

    def cartesian_prod(*ts):
        grids = torch.meshgrid(*ts, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)

    def affine_inverse(A):
        R = A[..., :3, :3]
        T = A[..., :3, 3:]
        P = A[..., 3:, :]
        Rt = R.transpose(-2, -1)
        return torch.cat([torch.cat([Rt, -Rt @ T], dim=-1), P], dim=-2)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch, "cartesian_prod", cartesian_prod))
        for m in (da3_net, cam_enc, geometry):
            stack.enter_context(mock.patch.object(m, "affine_inverse", affine_inverse))
        yield


def export_onnx(a):
    """--export-onnx: trace the reference forward at (1, views, 3, H, W) into an ONNX file,
    run it with ONNX Runtime on the torch input and compare; the file is only written
    (atomically) when the depth matches."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from depth_anything_3.api import DepthAnything3

    torch.set_num_threads(a.threads)
    api = DepthAnything3.from_pretrained(a.checkpoint).eval()
    x = torch.rand((1, a.views, 3, a.height, a.width), generator=torch.Generator().manual_seed(0)) * 4 - 2
    with torch.inference_mode():
        ref = api.model(x, export_feat_layers=[])
    # The tensors of the output dict (depth, depth_conf, extrinsics, intrinsics for the
    # published any-view configs; `aux` is an empty dict without export_feat_layers).
    names = [k for k, v in ref.items() if isinstance(v, torch.Tensor)]
    print(f"export: outputs {', '.join(f'{k} {tuple(ref[k].shape)}' for k in names)}")

    class Forward(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x, export_feat_layers=[])
            return tuple(out[k] for k in names)

    # The RoPE position getter caches its grid per size; empty it so that the trace
    # computes the positions (through the swapped cartesian_prod) instead of holding
    # the grid of the forward above as a constant.
    for m in api.model.modules():
        cache = getattr(getattr(m, "position_getter", None), "position_cache", None)
        if cache is not None:
            cache.clear()
    os.makedirs(os.path.dirname(os.path.abspath(a.export_onnx)), exist_ok=True)
    tmp = a.export_onnx + ".tmp"
    t0 = time.perf_counter()
    with exportable(), torch.no_grad():
        torch.onnx.export(Forward(api.model), (x,), tmp, dynamo=False, opset_version=18,
                          input_names=["image"], output_names=names)
    export_s = time.perf_counter() - t0

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    sess = ort.InferenceSession(tmp, so, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x.numpy()})))
    errs = {}
    for k in names:
        want, diff = ref[k].numpy(), np.abs(got[k] - ref[k].numpy())
        if k == "depth":
            # The check: max over pixels of |onnx - torch| / |torch| (depth > 0: exp activation).
            errs[k] = float(np.max(diff / np.abs(want)))
        else:
            # For information; relative to the output's largest magnitude, as the camera
            # matrices hold exact zeros.
            errs[k] = float(diff.max() / max(np.abs(want).max(), 1e-12))
    print(f"export: {a.export_onnx} in {export_s:.0f} s; onnxruntime vs torch: depth max rel err "
          f"{errs['depth']:.2e}; max abs err / max abs: "
          + ", ".join(f"{k} {e:.2e}" for k, e in errs.items() if k != "depth"))
    if not errs["depth"] <= EXPORT_TOL:
        os.remove(tmp)
        sys.exit(f"export: FAILED, onnxruntime depth differs from torch by {errs['depth']:.2e} "
                 f"(max rel err, limit {EXPORT_TOL:g}); {a.export_onnx} not written")
    os.replace(tmp, a.export_onnx)


def load_runtime(a):
    """The forward of --runtime, ready to time: (function running one forward, the fields of
    the JSON line naming the runtime, its versions and settings)."""
    if a.runtime == "torch":
        import torch
        from depth_anything_3.api import DepthAnything3

        torch.set_num_threads(a.threads)
        api = DepthAnything3.from_pretrained(a.checkpoint).eval()
        x = torch.rand((1, a.views, 3, a.height, a.width), generator=torch.Generator().manual_seed(0)) * 4 - 2

        def infer():
            with torch.inference_mode():
                api.model(x, export_feat_layers=[])

        return infer, {"torch": torch.__version__}

    x = onnx_input(a)
    if a.runtime == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
        sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        return (lambda: sess.run(None, feed)), {"onnxruntime": ort.__version__, "onnx": a.onnx}

    import openvino as ov

    compiled = ov_compile(a)
    req = compiled.create_infer_request()
    # What it actually executes: the compiled precision hint and, from the runtime (exec)
    # graph, how many nodes run in each precision, all and the GEMM-heavy ones.
    counts, gemm = {}, {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        p, kind = str(rt["runtimePrecision"].astype(str)), str(rt["layerType"].astype(str))
        counts[p] = counts.get(p, 0) + 1
        if kind in ("FullyConnected", "MatMul", "Convolution", "Deconvolution"):
            gemm[p] = gemm.get(p, 0) + 1
    info = {
        "openvino": ov.get_version(),
        "onnx": a.onnx,
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "exec_precisions": counts,
        "exec_precisions_gemm": gemm,
    }
    return (lambda: req.infer({0: x})), info


def onnx_input(a):
    """The input of the ONNX peers, after checking that --onnx exists: seeded numpy noise in
    the torch input's range ([-2, 2), like ImageNet-normalised pixels)."""
    import numpy as np

    if not a.onnx or not os.path.exists(a.onnx):
        what = "--profile" if a.profile else f"--runtime {a.runtime}"
        sys.exit(f"{what} needs --onnx FILE (written by --export-onnx): {a.onnx}")
    return (np.random.default_rng(0).random((1, a.views, 3, a.height, a.width), dtype=np.float32) * 4 - 2)


def ov_compile(a, **extra):
    """The --onnx file compiled by OpenVINO for the CPU, --runtime's precision, --threads."""
    import openvino as ov

    # Precision set explicitly either way: OpenVINO runs bf16 by default on CPUs with
    # bf16 support (AVX512-BF16, AMX), even for an f32 model.
    core = ov.Core()
    return core.compile_model(core.read_model(a.onnx), "CPU", {
        "INFERENCE_NUM_THREADS": a.threads,
        "INFERENCE_PRECISION_HINT": a.runtime.split("-")[1],
        "PERFORMANCE_HINT": "LATENCY",
        **extra,
    })


def ov_profile(a):
    """--profile: OpenVINO's own per-node timings (`PERF_COUNT`) of --iters forwards after the
    warm-up, as a JSON line: ms per forward by node type, and the slowest nodes with the
    kernel that ran each. Instead of the timed runs (the counters cost little: DA3-SMALL 1
    view bf16 counted 211 ms, timed 208)."""
    import collections

    import openvino as ov

    x = onnx_input(a)
    req = ov_compile(a, PERF_COUNT="YES").create_infer_request()
    for _ in range(a.warmup):
        req.infer({0: x})
    by_type, by_node = collections.Counter(), collections.Counter()
    wall = 0.0
    for _ in range(a.iters):
        t = time.perf_counter()
        req.infer({0: x})
        wall += (time.perf_counter() - t) * 1e3 / a.iters
        for p in req.profiling_info:
            if p.status == p.Status.EXECUTED:
                ms = p.real_time.total_seconds() * 1e3 / a.iters
                by_type[p.node_type] += ms
                by_node[(p.node_type, p.exec_type, p.node_name)] += ms
    print(json.dumps({
        "impl": IMPL[a.runtime], "model": a.onnx, "views": a.views, "threads": a.threads,
        "openvino": ov.get_version(), "forward_ms_counted": wall,
        "ms_by_node_type": {k: round(v, 3) for k, v in by_type.most_common()},
        "slowest_nodes": [{"type": t, "kernel": e, "node": n, "ms": round(v, 3)}
                          for (t, e, n), v in by_node.most_common(40)],
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-checkpoint", nargs=2, metavar=("VARIANT", "DIR"))
    ap.add_argument("--checkpoint")
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--height", type=int, default=378)
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--mode", choices=["forward", "api"], default="forward")
    ap.add_argument("--runtime", choices=list(IMPL), default="torch",
                    help="forward mode: the reference in torch, or its ONNX export (--onnx) "
                         "in ONNX Runtime or OpenVINO")
    ap.add_argument("--onnx", help="the exported network, for --runtime ort|ov-f32|ov-bf16")
    ap.add_argument("--export-onnx", metavar="FILE",
                    help="export the forward of --checkpoint at --views/--height/--width to FILE, check it, exit")
    ap.add_argument("--lockstep", help="WAIT,SIGNAL named pipes (forward mode)")
    ap.add_argument("--profile", action="store_true",
                    help="ov-f32|ov-bf16: OpenVINO's per-node timings instead of the timed runs")
    a = ap.parse_args()
    if a.make_checkpoint:
        make_checkpoint(*a.make_checkpoint)
        return
    if a.runtime == "torch" or a.export_onnx:
        if not a.checkpoint:
            sys.exit("--checkpoint DIR is required")
    if a.export_onnx:
        export_onnx(a)
        return
    if a.profile:
        if not a.runtime.startswith("ov-") or a.lockstep:
            sys.exit("--profile is for --runtime ov-f32|ov-bf16, without --lockstep")
        ov_profile(a)
        return
    if a.mode == "api" and a.runtime != "torch":
        sys.exit("--mode api is the reference's own API (--runtime torch)")
    turn = lambda f: f()
    if a.lockstep:
        if a.mode != "forward":
            sys.exit("--lockstep is for --mode forward")
        wait_path, signal_path = a.lockstep.split(",")
        # Read + write opens of a FIFO do not wait for the other end (Linux).
        wait_fd, signal_fd = os.open(wait_path, os.O_RDWR), os.open(signal_path, os.O_RDWR)

        def turn(f):
            if len(os.read(wait_fd, 1)) != 1:
                sys.exit("lockstep: the other side went away")
            # As `da3 bench`: let the other side's idle workers stop spinning first.
            time.sleep(0.05)
            try:
                return f()
            finally:
                os.write(signal_fd, b"x")

    times = []
    t0 = time.perf_counter()
    if a.mode == "forward":
        infer, info = load_runtime(a)
        load_s = time.perf_counter() - t0

        def run():
            t = time.perf_counter()
            infer()
            return (time.perf_counter() - t) * 1e3

        for _ in range(a.warmup):
            turn(run)
        for _ in range(a.iters):
            times.append(turn(run))
    else:
        import numpy as np
        import torch
        from depth_anything_3.api import DepthAnything3

        torch.set_num_threads(a.threads)
        api = DepthAnything3.from_pretrained(a.checkpoint).eval()
        load_s = time.perf_counter() - t0
        info = {"torch": torch.__version__}
        rs = np.random.RandomState(0)
        frames = [rs.randint(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(a.views)]
        for _ in range(a.warmup):
            api.inference(frames, process_res=504)
        for _ in range(a.iters):
            t = time.perf_counter()
            api.inference(frames, process_res=504)
            times.append((time.perf_counter() - t) * 1e3)
    in_order = list(times)
    times.sort()
    median = statistics.median(times)
    print(json.dumps({
        "impl": IMPL[a.runtime] if a.mode == "forward" else "reference inference() (autocast)",
        "model": a.checkpoint or a.onnx,
        "views": a.views,
        "height": a.height,
        "width": a.width,
        "threads": a.threads,
        **info,
        "median_ms": median,
        "min_ms": times[0],
        "views_per_s": a.views / (median / 1e3),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_s": load_s,
        "iters": a.iters,
        "times_ms": in_order,
    }))


if __name__ == "__main__":
    main()
