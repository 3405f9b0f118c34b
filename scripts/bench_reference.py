#!/usr/bin/env python3
"""Times the PyTorch reference (depth-anything-3==0.1.1) on the same seeded
checkpoint and input sizes as `da3 bench`, one JSON line per view count.

  python scripts/bench_reference.py --make-checkpoint da3-base DIR   # seeded random weights, hub layout
  python scripts/bench_reference.py --checkpoint DIR --views 1 --threads 2 --mode forward
  python scripts/bench_reference.py --checkpoint DIR --views 4 --threads 2 --mode api

--mode forward: the network called directly in f32 under inference_mode (what
our `da3 bench` times). --mode api: the reference's own `inference()` on
640x480 uint8 frames at process_res 504 (preprocessing, autocast, outputs).
Run one view count per process so peak RSS is per configuration.

--lockstep WAIT,SIGNAL (forward mode): take turns with `da3 bench --lockstep
SIGNAL,WAIT` over two named pipes, one forward per turn, so that each timed run
of ours sits next to one of the reference's on a machine whose speed drifts.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time


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
    ap.add_argument("--lockstep", help="WAIT,SIGNAL named pipes (forward mode)")
    a = ap.parse_args()
    if a.make_checkpoint:
        make_checkpoint(*a.make_checkpoint)
        return
    if not a.checkpoint:
        sys.exit("--checkpoint DIR is required")
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

    import numpy as np
    import torch
    from depth_anything_3.api import DepthAnything3

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    api = DepthAnything3.from_pretrained(a.checkpoint).eval()
    load_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    times = []
    if a.mode == "forward":
        x = torch.rand((1, a.views, 3, a.height, a.width), generator=g) * 4 - 2
        with torch.inference_mode():
            def run():
                t = time.perf_counter()
                api.model(x, export_feat_layers=[])
                return (time.perf_counter() - t) * 1e3

            for _ in range(a.warmup):
                turn(run)
            for _ in range(a.iters):
                times.append(turn(run))
    else:
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
        "impl": "reference " + ("forward f32" if a.mode == "forward" else "inference() (autocast)"),
        "model": a.checkpoint,
        "views": a.views,
        "height": a.height,
        "width": a.width,
        "threads": a.threads,
        "torch": torch.__version__,
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
