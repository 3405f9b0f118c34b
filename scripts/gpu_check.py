#!/usr/bin/env python3
"""The GPU check of `scripts/gpu-check.sh`: parity, speed, memory and replicas of our CUDA
build against the reference (depth-anything-3==0.1.1) on the same GPU, in one run.

    python3 scripts/gpu_check.py --bin .gpu/bin/da3 --out OUTDIR          # on the GPU machine
    python3 scripts/gpu_check.py --dry-run --bin target/debug/da3 --out OUTDIR   # CPU, no torch

Writes OUTDIR/gpu-check.json (rewritten after every phase, so a run cut short still leaves
what it measured) and OUTDIR/gpu-check.log. Phases, in order of importance:

1. env       the machine (GPU, driver, torch, our binary).
2. parity    seeded full-size DA3-SMALL and DA3-LARGE checkpoints made here with the machine's
             torch; the reference's network in f32 (TF32 off) on 1 view, 4 views and 4 views
             with input cameras; ours (`da3 forward`) in f32, bf16 and f16 against it
             (max |ours - ref| / max |ref| per output). The reference under bf16 autocast is
             measured against its own f32 too, for scale.
3. speed     DA3-LARGE, DA3-SMALL, DA3-GIANT at 1, 4 and 16 views (504x378): ours (`da3 bench`,
             bf16) and the reference's forward under `torch.autocast(bf16)` and prepared by
             HF Accelerate (`Accelerator(mixed_precision="bf16").prepare(model)`), in strict
             alternation (ours, autocast, accelerate, ours, ...; `--lockstep` pipes).
4. memory    DA3-LARGE, each side alone on the GPU: peak device memory per view count, stepping
             the view count up (16, 64, 256, 1024, ...) until it fails or the time is spent.
5. replicas  two replicas of DA3-LARGE on one GPU (`da3 bench --replicas 2`), against one.

--dry-run runs the same phases on the CPU with the committed tiny fixtures and without torch:
parity against the fixtures' reference outputs, our side of the timings, the JSON shape.
Reference entries are null there. CI runs it so that this script cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA = 1
HEIGHT, WIDTH = 378, 504
PARITY_TOL = {"f32": 1e-4, "bf16": 2e-2, "f16": 2e-2}
OURS_DEVICE = "cuda:0"
PARITY_VARIANTS = ("da3-small", "da3-large")
SPEED_VARIANTS = ("da3-large", "da3-small", "da3-giant")
SPEED_VIEWS = [1, 4, 16]
MEMORY_VARIANT = "da3-large"
MEMORY_STEPS = [1, 4, 16, 64, 128, 256, 512, 1024, 1536]


class Check:
    def __init__(self, out: Path, dry: bool, binary: Path, budget_s: float):
        self.out, self.dry, self.bin = out, dry, binary
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.log_f = open(out / "gpu-check.log", "w")
        self.result = {
            "schema": SCHEMA,
            "mode": "dry-run" if dry else "gpu",
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "bash scripts/gpu-check.sh " + ("--dry-run " if dry else "") + str(out),
            "env": {},
            "parity": [],
            "speed": [],
            "memory": [],
            "max_views": {},
            "replicas": [],
            "errors": [],
            "phases_s": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str):
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_f.write(line + "\n")
        self.log_f.flush()

    def save(self):
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "gpu-check.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1))
        tmp.replace(self.out / "gpu-check.json")

    def phase(self, name, fn):
        t = time.monotonic()
        self.log(f"== {name} ({self.left():.0f} s left)")
        try:
            fn()
        except Exception as e:  # a failed phase is recorded; the others still run
            self.log(f"{name} failed: {e!r}\n{traceback.format_exc()}")
            self.result["errors"].append({"phase": name, "error": repr(e)})
        self.result["phases_s"][name] = round(time.monotonic() - t, 1)
        self.save()

    def da3(self, *args, timeout=None, check=True) -> list[dict]:
        """Runs our binary; returns its JSON output lines."""
        cmd = [str(self.bin), *map(str, args)]
        self.log("$ " + " ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=timeout or max(10.0, self.left()))
        if p.stderr.strip():
            self.log_f.write(p.stderr[-4000:] + "\n")
        if check and p.returncode != 0:
            raise RuntimeError(f"{cmd[1]} exited {p.returncode}: {p.stderr.strip()[-600:]}")
        return [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]


# ------------------------------------------------------------------------------------------
# GPU memory sampling (NVML through nvidia-ml-py, which the GPU machine has)


class MemSampler:
    """Samples the device's used memory every `period` s on a thread; `peak()` since `reset()`."""

    def __init__(self, period=0.005):
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.h = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.period = period
        self._peak = 0
        self._stop = False
        self._lock = threading.Lock()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def used(self) -> int:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.h).used

    def _run(self):
        while not self._stop:
            u = self.used()
            with self._lock:
                self._peak = max(self._peak, u)
            time.sleep(self.period)

    def reset(self):
        with self._lock:
            self._peak = self.used()

    def peak(self) -> int:
        with self._lock:
            return max(self._peak, self.used())

    def stop(self):
        self._stop = True


MIB = 1024.0 * 1024.0

# ------------------------------------------------------------------------------------------
# The reference (GPU mode only)


def exporters_only(*names):
    """The reference's package imports its exporters' libraries (pycolmap, moviepy with an
    ffmpeg binary: over 100 MB) at import time; this check never exports. Where one is not
    installed, a module that fails on first use stands in for it, so an export attempt
    would still fail loudly."""
    import importlib.util
    import types

    class Missing(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            sub = sys.modules.get(f"{self.__name__}.{attr}")
            if sub is not None:
                return sub
            raise ImportError(f"{self.__name__} is not installed here (exporters only)")

    for name in names:
        try:
            ok = importlib.util.find_spec(name.split(".")[0]) is not None
            if ok:
                __import__(name)
        except Exception:
            ok = False
        if not ok:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sys.modules.setdefault(".".join(parts[:i]), Missing(".".join(parts[:i])))


class Reference:
    def __init__(self, chk: Check, root: Path):
        exporters_only("pycolmap", "moviepy.editor")
        import torch

        self.torch = torch
        self.chk = chk
        self.root = root
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.models = {}

    def checkpoint(self, variant: str) -> Path:
        """Seeded random weights in the hub layout (as scripts/bench_reference.py writes)."""
        torch = self.torch
        from safetensors.torch import save_model
        from depth_anything_3.api import DepthAnything3

        d = self.root / variant
        if variant in self.models:
            return d
        t = time.monotonic()
        if (d / "model.safetensors").is_file():  # made by an earlier run on this machine
            api = DepthAnything3.from_pretrained(str(d)).eval()
            self.models[variant] = api.model.cuda().eval()
            return d
        torch.manual_seed(0)
        api = DepthAnything3(model_name=variant).eval()
        d.mkdir(parents=True, exist_ok=True)
        save_model(api, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps({"model_name": variant}))
        nparams = sum(p.numel() for p in api.parameters())
        self.models[variant] = api.model.cuda().eval()
        del api
        self.chk.log(f"checkpoint {variant}: {nparams / 1e6:.1f} M parameters, "
                     f"{time.monotonic() - t:.1f} s")
        return d

    def net(self, variant):
        self.checkpoint(variant)
        return self.models[variant]

    def drop(self, variant):
        self.models.pop(variant, None)
        self.torch.cuda.empty_cache()


def ref_cases(ref: Reference, variant: str, path: Path) -> dict:
    """Writes parity cases (fixture layout) for `variant`; returns the reference's own
    autocast-bf16 error against its f32, per case and output."""
    torch = ref.torch
    from safetensors.torch import save_file

    net = ref.net(variant)
    g = torch.Generator().manual_seed(1)
    T = {}
    own = {}
    x1 = (torch.rand((1, 1, 3, HEIGHT, WIDTH), generator=g) * 4 - 2)
    x4 = (torch.rand((1, 4, 3, HEIGHT, WIDTH), generator=g) * 4 - 2)
    with torch.inference_mode():
        o4 = net(x4.cuda(), export_feat_layers=[])
        ext = torch.eye(4).repeat(1, 4, 1, 1)
        ext[:, :, :3, :] = o4["extrinsics"].float().cpu()
        ixt = o4["intrinsics"].float().cpu()
    cases = {"s1": (x1, None, None), "s4": (x4, None, None), "p4": (x4, ext, ixt)}
    for name, (x, e, k) in cases.items():
        kw = {}
        if e is not None:
            kw = {"extrinsics": e.cuda(), "intrinsics": k.cuda()}
            T[f"{name}.input_extrinsics"] = e.contiguous()
            T[f"{name}.input_intrinsics"] = k.contiguous()
        T[f"{name}.input"] = x.contiguous()
        with torch.inference_mode():
            out = net(x.cuda(), export_feat_layers=[], **kw)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out_bf = net(x.cuda(), export_feat_layers=[], **kw)
        own[name] = {}
        for k2 in ("depth", "depth_conf", "extrinsics", "intrinsics", "sky"):
            if k2 in out and isinstance(out[k2], torch.Tensor):
                want = out[k2].float()
                T[f"{name}.out.{k2}"] = want.cpu().contiguous()
                got = out_bf[k2].float()
                own[name][k2] = float((got - want).abs().max() / want.abs().max())
    save_file(T, str(path))
    return own


def ref_bench_modes(ref: Reference, variant: str):
    """(label, callable(x)) for the reference's bf16 paths: plain autocast and Accelerate."""
    torch = ref.torch
    import copy

    net = ref.net(variant)
    modes = []

    def autocast(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return net(x, export_feat_layers=[])

    modes.append(("reference autocast bf16", autocast))
    try:
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision="bf16")
        prepared = acc.prepare(copy.deepcopy(net))

        def accelerate(x):
            with torch.inference_mode():
                return prepared(x, export_feat_layers=[])

        modes.append(("reference accelerate bf16", accelerate))
    except Exception as e:
        ref.chk.log(f"accelerate unavailable: {e!r}")
    return modes


# ------------------------------------------------------------------------------------------
# Phases


def phase_env(chk: Check):
    env = chk.result["env"]
    env["host"] = platform.node()
    env["python"] = platform.python_version()
    env["cpu_count"] = os.cpu_count()
    try:
        env["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                          if l.startswith("model name"))
    except Exception:
        pass
    p = subprocess.run([str(chk.bin), "--version"], capture_output=True, text=True)
    env["da3"] = p.stdout.strip()
    if chk.dry:
        return
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                        "--format=csv,noheader"], capture_output=True, text=True)
    env["nvidia_smi"] = q.stdout.strip()
    import torch

    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    env["gpu"] = torch.cuda.get_device_name(0)
    env["capability"] = list(torch.cuda.get_device_capability(0))
    try:
        import accelerate

        env["accelerate"] = accelerate.__version__
    except Exception as e:
        env["accelerate"] = repr(e)
    env["ld_library_path"] = os.environ.get("LD_LIBRARY_PATH", "")


def phase_parity(chk: Check, ref: Reference | None):
    if chk.dry:
        fx = REPO / "nodes/da3/tests/fixtures/tiny-anyview"
        runs = [("tiny-anyview", fx, fx / "cases.safetensors", "v1,v4,v2_cam:v2", None)]
    else:
        runs = []
        for variant in PARITY_VARIANTS:
            ck = ref.checkpoint(variant)
            cases = ck / "cases.safetensors"
            own = ref_cases(ref, variant, cases)
            runs.append((variant, ck, cases, "s1,s4,p4", own))
    dev = "cpu" if chk.dry else OURS_DEVICE
    for variant, ck, cases, names, own in runs:
        for prec in ("f32", "bf16", "f16"):
            if chk.dry and prec != "f32":
                continue  # candle's generic reduced-precision CPU ops: minutes, not a check
            lines = chk.da3("forward", "--model", ck, "--cases", cases, "--case", names,
                            "--device", dev, "--precision", prec)
            for l in lines:
                worst = max(l["max_rel_err"].values(), default=float("nan"))
                entry = {"model": variant, "case": l["case"], "views": l["views"],
                         "precision": prec, "max_rel_err": l["max_rel_err"], "worst": worst,
                         "tolerance": PARITY_TOL[prec], "pass": worst <= PARITY_TOL[prec],
                         "reference_autocast_bf16_vs_f32":
                             own.get(l["case"]) if own else None}
                chk.result["parity"].append(entry)
                chk.log(f"parity {variant} {l['case']} {prec}: worst {worst:.2e}")
            chk.save()


def lockstep_bench(chk: Check, model: Path, views: list[int], warmup: int, iters: int,
                   modes, make_x, label: str, extra=()):
    """Ours (`da3 bench --lockstep`) and each reference mode in strict alternation."""
    tmp = Path(tempfile.mkdtemp(prefix="da3-lockstep-"))
    a, b = tmp / "a", tmp / "b"
    os.mkfifo(a)
    os.mkfifo(b)
    dev = "cpu" if chk.dry else OURS_DEVICE
    prec = "f32" if chk.dry else "bf16"
    h, w = (42, 56) if chk.dry else (HEIGHT, WIDTH)
    cmd = [str(chk.bin), "bench", "--model", str(model), "--device", dev, "--precision", prec,
           "--views", ",".join(map(str, views)), "--height", str(h), "--width", str(w),
           "--warmup", str(warmup), "--iters", str(iters), "--lockstep", f"{a},{b}", *extra]
    chk.log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wa, sb = os.open(a, os.O_RDWR), os.open(b, os.O_RDWR)
    ref_times = {}
    try:
        for s in views:
            x = make_x(s, h, w) if modes else None
            for i in range(warmup + iters):
                os.write(wa, b"x")
                # Our turn: wait for its byte, but not for a process that has died.
                while not select.select([sb], [], [], 1.0)[0]:
                    if proc.poll() is not None or chk.left() < 0:
                        raise RuntimeError("our bench stopped: "
                                           + (proc.stderr.read() or "")[-600:])
                os.read(sb, 1)
                for name, fn in modes:
                    t = time.perf_counter()
                    fn(x)
                    chk.sync()
                    ms = (time.perf_counter() - t) * 1e3
                    if i >= warmup:
                        ref_times.setdefault((name, s), []).append(ms)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(wa)
        os.close(sb)
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"da3 bench exited {proc.returncode}: {err.strip()[-600:]}")
    ours = {l["views"]: l for l in map(json.loads, filter(lambda l: l.startswith("{"),
                                                              out.splitlines()))}
    for s in views:
        o = ours[s]
        entry = {"model": label, "views": s, "height": h, "width": w,
                 "ours": {"impl": o["impl"], "dtype": o["dtype"], "median_ms": o["median_ms"],
                          "min_ms": o["min_ms"], "views_per_s": o["views_per_s"]},
                 "reference": {}}
        for name, _ in modes:
            t = sorted(ref_times[(name, s)])
            med = t[len(t) // 2]
            entry["reference"][name] = {"median_ms": med, "min_ms": t[0],
                                        "views_per_s": s / (med / 1e3)}
            entry[f"speedup_vs_{name.split()[1]}"] = med / o["median_ms"]
        chk.result["speed"].append(entry)
        chk.log(f"speed {label} {s} views: ours {o['median_ms']:.1f} ms; " + ", ".join(
            f"{n} {v['median_ms']:.1f} ms" for n, v in entry["reference"].items()))
    chk.save()


def phase_speed(chk: Check, ref: Reference | None):
    if chk.dry:
        fx = REPO / "nodes/da3/tests/fixtures/tiny-anyview"
        lockstep_bench(chk, fx, [1, 2], 1, 2, [], None, "tiny-anyview")
        return
    torch = ref.torch

    def make_x(s, h, w):
        g = torch.Generator().manual_seed(0)
        return (torch.rand((1, s, 3, h, w), generator=g) * 4 - 2).cuda()

    for variant in SPEED_VARIANTS:
        if chk.left() < 60:
            chk.log(f"speed: skipping {variant}, {chk.left():.0f} s left")
            break
        ck = ref.checkpoint(variant)
        modes = ref_bench_modes(ref, variant)
        lockstep_bench(chk, ck, SPEED_VIEWS, 3, 10, modes, make_x, variant)
        if variant != MEMORY_VARIANT:
            ref.drop(variant)


def phase_memory(chk: Check, ref: Reference | None):
    """Each side alone: peak device memory per view count, stepping up."""
    if chk.dry:
        fx = REPO / "nodes/da3/tests/fixtures/tiny-anyview"
        for s in (1, 4):
            chk.da3("bench", "--model", fx, "--views", s, "--height", 42, "--width", 56,
                    "--warmup", 0, "--iters", 1)
            chk.result["memory"].append({"model": "tiny-anyview", "views": s,
                                         "ours_peak_mib": None, "reference_peak_mib": None})
        chk.result["max_views"] = {"model": "tiny-anyview", "ours": 4, "reference": None}
        return
    torch = ref.torch
    variant = MEMORY_VARIANT
    ck = ref.checkpoint(variant)
    net = ref.net(variant)
    mem = MemSampler()
    steps = MEMORY_STEPS
    ours_max = ref_max = None
    ours_ok = ref_ok = True
    ours_cost = ref_cost = (0.0, 0.0)  # (fixed s, forward s) of the last step
    prev = 1
    for s in steps:
        if chk.left() < 40:
            chk.log(f"memory: stopping at {s} views, {chk.left():.0f} s left")
            break
        entry = {"model": variant, "views": s}
        # Ours, alone: the reference holds only its cached weights meanwhile.
        # Attention grows with the square of the views: predict this step from the last.
        grow = (s / prev) ** 2
        prev = s
        if ours_ok and ours_cost[0] + ours_cost[1] * grow < chk.left() - 30:
            torch.cuda.synchronize()
            base = mem.used()
            mem.reset()
            t = time.monotonic()
            try:
                lines = chk.da3("bench", "--model", ck, "--device", OURS_DEVICE, "--precision",
                                "bf16", "--views", s, "--height", HEIGHT, "--width", WIDTH,
                                "--warmup", 0, "--iters", 1,
                                timeout=chk.left() - 20)
                entry["ours_ms"] = lines[0]["median_ms"]
                entry["ours_peak_mib"] = (mem.peak() - base) / MIB
                ours_max = s
                fwd = lines[0]["median_ms"] / 1e3
                ours_cost = (time.monotonic() - t - fwd, fwd)
            except Exception as e:
                entry["ours_error"] = repr(e)[-300:]
                ours_ok = False
        # The reference, alone (autocast bf16, as its API runs): its weights are resident.
        if ref_ok and ref_cost[1] * grow < chk.left() - 30:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_alloc = torch.cuda.memory_allocated()
            t = time.monotonic()
            try:
                g = torch.Generator().manual_seed(0)
                x = (torch.rand((1, s, 3, HEIGHT, WIDTH), generator=g) * 4 - 2).cuda()
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                    net(x, export_feat_layers=[])
                torch.cuda.synchronize()
                entry["reference_ms"] = (time.monotonic() - t) * 1e3
                weights = sum(p.numel() * p.element_size() for p in net.parameters())
                # Tensors only (weights + activations + input); a CUDA context comes on top
                # of it, as it does on top of ours (see `context_mib`).
                entry["reference_peak_mib"] = (torch.cuda.max_memory_allocated() - base_alloc
                                               + weights) / MIB
                ref_max = s
                del x
            except torch.OutOfMemoryError as e:
                entry["reference_error"] = "out of memory: " + str(e)[:200]
                ref_ok = False
            except Exception as e:
                entry["reference_error"] = repr(e)[-300:]
                ref_ok = False
            ref_cost = (0.0, time.monotonic() - t)
            torch.cuda.empty_cache()
        chk.result["memory"].append(entry)
        chk.result["max_views"] = {"model": variant, "ours": ours_max, "reference": ref_max,
                                   "steps": steps, "note": "largest view count run; the "
                                   "stepping stops at the first failure or when the time "
                                   "budget would be exceeded"}
        chk.log(f"memory {s} views: {entry}")
        chk.save()
        if not ours_ok and not ref_ok:
            break
    # The CUDA context and kernels of a process that only opened the device.
    try:
        torch.cuda.synchronize()
        base = mem.used()
        mem.reset()
        chk.da3("bench", "--model", REPO / "nodes/da3/tests/fixtures/tiny-anyview",
                "--device", OURS_DEVICE, "--precision", "bf16", "--views", 1, "--height", 42,
                "--width", 56, "--warmup", 0, "--iters", 1)
        chk.result["context_mib"] = (mem.peak() - base) / MIB
    except Exception as e:
        chk.result["errors"].append({"phase": "memory/context", "error": repr(e)})
    mem.stop()


def phase_replicas(chk: Check, ref: Reference | None):
    if chk.dry:
        model, extra = REPO / "nodes/da3/tests/fixtures/tiny-anyview", ["--height", 42,
                                                                         "--width", 56]
        dev, prec, label = "cpu", "f32", "tiny-anyview"
    else:
        model, extra = ref.checkpoint(MEMORY_VARIANT), ["--height", HEIGHT, "--width", WIDTH]
        dev, prec, label = OURS_DEVICE, "bf16", MEMORY_VARIANT
    for n in (1, 2):
        lines = chk.da3("bench", "--model", model, "--device", dev, "--precision", prec,
                        "--views", 4, "--warmup", 2, "--iters", 3 if chk.dry else 10,
                        "--replicas", n, *extra)
        l = lines[0]
        chk.result["replicas"].append({"model": label, "views": 4, "replicas": n,
                                       "views_per_s": l["views_per_s"]})
        chk.log(f"replicas {n}: {l['views_per_s']:.1f} views/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="wall-time budget; later phases shrink or stop to stay inside it")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "da3-gpu-check",
                    help="checkpoints go here (GPU mode)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    chk = Check(a.out, a.dry_run, a.bin.resolve(), a.budget_s)
    ref = None
    chk.sync = lambda: None
    chk.phase("env", lambda: phase_env(chk))
    if not a.dry_run:
        ref = Reference(chk, a.work)
        chk.sync = ref.torch.cuda.synchronize
    chk.phase("parity", lambda: phase_parity(chk, ref))
    chk.phase("speed", lambda: phase_speed(chk, ref))
    chk.phase("replicas", lambda: phase_replicas(chk, ref))
    chk.phase("memory", lambda: phase_memory(chk, ref))
    ok = not chk.result["errors"] and all(p["pass"] for p in chk.result["parity"])
    chk.result["ok"] = ok
    chk.save()
    chk.log(f"done: {'ok' if ok else 'FAILED'}; {chk.out / 'gpu-check.json'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
