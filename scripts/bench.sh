#!/usr/bin/env bash
# CPU benchmark, ours vs the PyTorch reference and the runtimes a robotics user would pick
# instead (ONNX Runtime, OpenVINO f32 and bf16, all on the reference exported to ONNX), same
# machine, same seeded checkpoints, same input (a 640x480 frame at process_res 504 =
# 504x378), same thread count. Writes docs/benchmarks.md.
#
#   bash scripts/bench.sh                       # DA3-SMALL and DA3-BASE, 1 and 4 views, all peers
#   VARIANTS=da3-small VIEWS="1" ITERS=3 bash scripts/bench.sh
#   PEERS="torch ort" bash scripts/bench.sh     # only some of: torch ort ov-f32 ov-bf16
#   PRECISION=bf16 bash scripts/bench.sh        # ours' --precision in the pairs (default: da3 bench's, f32)
#   bash scripts/bench.sh --report        # only rewrite docs/benchmarks.md from the last results
#
# As root, both sides run under SCHED_FIFO (`chrt -f 10`) so that other work on the
# machine (builds, tests) cannot preempt them; BENCH_RT=0 turns that off. Mixed precision
# (bf16, f16) is timed for ours on the first variant, 1 view (MIXED=0 skips it).
# The ONNX peers run the reference's forward exported by `bench_reference.py --export-onnx`
# (checked against torch there), cached in $CACHE/bench/onnx/; delete a file to re-export it.
# Ours is the release build in $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
VARIANTS="${VARIANTS:-da3-small da3-base}"
VIEWS="${VIEWS:-1 4}"
THREADS="${THREADS:-$(nproc)}"
ITERS="${ITERS:-7}"
PEERS="${PEERS:-torch ort ov-f32 ov-bf16}"
for p in $PEERS; do
  case "$p" in torch|ort|ov-f32|ov-bf16) ;; *) echo "bench: unknown peer '$p' (torch ort ov-f32 ov-bf16)" >&2; exit 2 ;; esac
done
# Ours and a peer run at the same time in lockstep (`--lockstep`: two named pipes,
# strict turns, one forward per turn), so each timed run of ours sits right next to one of
# the peer's and a slow spell of a shared machine lands on both. ROUNDS > 1 repeats
# each pair of processes; the report pools the runs of all rounds.
ROUNDS="${ROUNDS:-1}"
WARMUP="${WARMUP:-1}"
RT=()
if [ "${BENCH_RT:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v chrt >/dev/null; then
  RT=(chrt -f 10)
fi
# Ours' compute precision, when set (otherwise `da3 bench`'s default).
OURS_PRECISION=()
if [ -n "${PRECISION:-}" ]; then OURS_PRECISION=(--precision "$PRECISION"); fi
DA3="${CARGO_TARGET_DIR:-target}/release/da3"
PY="$CACHE/ref-venv/bin/python"
OUT="$CACHE/bench/results.jsonl"
# The input size of both sides' defaults (height x width), for the ONNX files' names.
SIZE=378x504
# The ONNX peers' packages, pinned, in the reference venv; "numpy<2" keeps the reference's
# own pin, which a plain install of onnx (through ml_dtypes) would lift.
PEER_PKGS=("numpy<2" onnx==1.23.2 onnxruntime==1.32.0 openvino==2026.4.1)
ONNX_PEERS=0  # 1 when a peer other than torch is selected: ONNX export and packages needed
for p in $PEERS; do [ "$p" = torch ] || ONNX_PEERS=1; done

if [ "${1:-}" != "--report" ]; then
bash scripts/setup-reference.sh
# The ONNX peers' packages, when missing or not at the pinned versions.
if [ "$ONNX_PEERS" = 1 ] && ! "$PY" - "${PEER_PKGS[@]:1}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
then
  "$PY" -m pip install "${PEER_PKGS[@]}"
fi
cargo build --release -p da3 --features cli --bin da3
mkdir -p "$CACHE/bench"
: > "$OUT"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
# shellcheck source=scripts/lockstep.sh
. scripts/lockstep.sh
onnx_of() { echo "$CACHE/bench/onnx/$1-$2v-$SIZE.onnx"; }
# One configuration, ours and one peer (torch, ort, ov-f32, ov-bf16) taking turns; their
# JSON lines go to $OUT, ours' tagged with the peer it ran against ("vs"). Ours profiles one
# forward (--profile) in the first pair of a configuration only.
pair() {
  local v="$1" ckpt="$2" s="$3" peer="$4" profile="$5" tmp po pr prof=() extra=0
  if [ "$profile" = 1 ]; then prof=(--profile); extra=1; fi
  tmp="$(mktemp -d)"
  mkfifo "$tmp/a" "$tmp/b"
  "${RT[@]}" "$DA3" bench --model "$ckpt" --views "$s" --iters "$ITERS" --warmup "$WARMUP" \
    "${OURS_PRECISION[@]}" "${prof[@]}" --lockstep "$tmp/a,$tmp/b" > "$tmp/ours" &
  po=$!
  # One warm-up more for the peer when ours profiles: it runs while ours runs that forward.
  "${RT[@]}" "$PY" scripts/bench_reference.py --checkpoint "$ckpt" --views "$s" --threads "$THREADS" \
    --runtime "$peer" --onnx "$(onnx_of "$v" "$s")" \
    --iters "$ITERS" --warmup "$((WARMUP + extra))" --mode forward --lockstep "$tmp/b,$tmp/a" > "$tmp/ref" &
  pr=$!
  lockstep_finish "bench: $v, $s view(s), vs $peer" "$tmp/a" "$po" "$pr" || exit 1
  grep '^{' "$tmp/ours" | sed "s/\"model\":\"[^\"]*\"/\"model\":\"$v\",\"vs\":\"$peer\"/" >> "$OUT"
  grep '^{' "$tmp/ref" | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$v\"/" >> "$OUT"
  rm -r "$tmp"
}
for round in $(seq 1 "$ROUNDS"); do
for v in $VARIANTS; do
  ckpt="$CACHE/bench/$v"
  [ -f "$ckpt/model.safetensors" ] || "$PY" scripts/bench_reference.py --make-checkpoint "$v" "$ckpt"
  for s in $VIEWS; do
    # The network in ONNX for the ONNX peers, exported once (again when the checkpoint is newer).
    onnx="$(onnx_of "$v" "$s")"
    if [ "$ONNX_PEERS" = 1 ] && ! [ "$onnx" -nt "$ckpt/model.safetensors" ]; then
      echo "bench: $v, $s view(s), exporting the reference to ONNX"
      "$PY" scripts/bench_reference.py --checkpoint "$ckpt" --views "$s" --threads "$THREADS" --export-onnx "$onnx"
    fi
    profile="$([ "$round" = 1 ] && echo 1 || echo 0)"  # ours profiles in round 1's first pair
    for peer in $PEERS; do
      echo "bench: round $round/$ROUNDS, $v, $s view(s), ours and $peer in lockstep"
      pair "$v" "$ckpt" "$s" "$peer" "$profile"
      profile=0
    done
    # The reference's own API (slow: autocast, pre/post-processing) once, not every round.
    if [ "$round" = 1 ] && [[ " $PEERS " == *" torch "* ]]; then
      "${RT[@]}" "$PY" scripts/bench_reference.py --checkpoint "$ckpt" --views "$s" --threads "$THREADS" --iters "${API_ITERS:-3}" --warmup 1 --mode api \
        | grep '^{' | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$v\"/" >> "$OUT"
    fi
  done
done
done
if [ "${MEMORY:-1}" != 0 ]; then
  # Peak RSS per view count (one process per count: the peak is per process).
  v="${VARIANTS%% *}"
  for s in ${MEMORY_VIEWS:-1 2 4 8 16}; do
    echo "bench: $v, memory, $s view(s)"
    "${RT[@]}" "$DA3" bench --model "$CACHE/bench/$v" --views "$s" --iters 1 --warmup 0 \
      | grep '^{' | sed "s/\"model\":\"[^\"]*\"/\"model\":\"$v\"/; s/\"impl\":\"[^\"]*\"/\"impl\":\"memory ours\"/" >> "$OUT"
    if [ "$s" -le "${MEMORY_REF_MAX:-8}" ]; then
      "${RT[@]}" "$PY" scripts/bench_reference.py --checkpoint "$CACHE/bench/$v" --views "$s" --threads "$THREADS" --iters 1 --warmup 0 --mode forward \
        | grep '^{' | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$v\"/; s/\"impl\": \"[^\"]*\"/\"impl\": \"memory ref\"/" >> "$OUT"
    fi
  done
fi
if [ "${MIXED:-1}" != 0 ]; then
  v="${VARIANTS%% *}"
  for p in bf16 f16; do
    echo "bench: $v, 1 view, $p"
    "${RT[@]}" "$DA3" bench --model "$CACHE/bench/$v" --views 1 --iters 3 --warmup 1 --precision "$p" \
      | grep '^{' | sed "s/\"model\":\"[^\"]*\"/\"model\":\"$v\"/" >> "$OUT"
  done
fi
fi
python3 - "$OUT" "$THREADS" "$ITERS" "$WARMUP" "${RT[*]:-}" <<'PY'
import json, platform, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
threads, iters, warmup, rt = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
OURS = "dora-da3 (candle)"
# The peers in the order of their columns: --runtime name, `impl` of their JSON, column name.
PEERS = [("torch", "reference forward f32", "torch"), ("ort", "onnxruntime f32", "ORT f32"),
         ("ov-f32", "openvino f32", "OV f32"), ("ov-bf16", "openvino bf16", "OV bf16")]
BY_IMPL = {impl: p for p, impl, _ in PEERS}
# Several rounds of one configuration: pool their timed runs (each row's `times_ms`, in
# the order they ran); RSS is the largest of the rounds, the profile the first round's.
# Ours' rows carry the peer they ran against ("vs"; results of before the peers: torch).
for r in rows:
    if r["impl"] == OURS and "vs" not in r and r.get("dtype", "f32") == "f32":
        r["vs"] = "torch"
groups = {}
for r in rows:
    key = (r["impl"], r.get("dtype", "f32"), r["model"], r["views"], r.get("vs"))
    groups.setdefault(key, []).append(r)
rows = []
for g in groups.values():
    pick = dict(g[0])
    runs = [r.get("times_ms") or [r["median_ms"]] for r in g]
    pooled = [t for run in runs for t in run]
    pick["median_ms"] = statistics.median(pooled)
    pick["min_ms"] = min(pooled)
    pick["runs"] = runs
    pick["rounds"] = len(g)
    if all(r.get("peak_rss_mib") is not None for r in g):
        pick["peak_rss_mib"] = max(r["peak_rss_mib"] for r in g)
    rows.append(pick)
# Per (model, views): ours against each peer, the peers, the reference's API, ours' mixed precision.
conf = {}
for r in rows:
    if r["impl"].startswith("memory"):
        continue
    c = conf.setdefault((r["model"], r["views"]), {"ours": {}, "peer": {}, "mixed": {}, "api": None})
    if r["impl"] == OURS and r.get("vs"):
        c["ours"][r["vs"]] = r
    elif r["impl"] == OURS:
        c["mixed"][r.get("dtype", "f32")] = r
    elif r["impl"] in BY_IMPL:
        c["peer"][BY_IMPL[r["impl"]]] = r
    elif r["impl"].startswith("reference inference"):
        c["api"] = r
paired_rows = [o for c in conf.values() for o in c["ours"].values()]
nrounds = max((r["rounds"] for r in paired_rows), default=1)
ntimed = max((len(r["runs"][0]) for r in paired_rows), default=1)
ours_dtypes = sorted({r.get("dtype", "f32") for r in paired_rows}) or ["f32"]
present = [p for p in PEERS if any(p[0] in c["peer"] for c in conf.values())]
def paired(o, r):
    """ours/peer per turn: the i-th timed run of ours against the peer's i-th, which ran
    right after it (lockstep); None when the runs do not pair up."""
    if not o or not r or len(o["runs"]) != len(r["runs"]):
        return None
    ratios = [a / b for ro, rr in zip(o["runs"], r["runs"]) if len(ro) == len(rr) for a, b in zip(ro, rr)]
    return ratios or None
def ours_all(c):
    """Ours' timed runs against all peers, pooled: (median, min, peak RSS) or None."""
    ts = [t for o in c["ours"].values() for run in o["runs"] for t in run]
    rss = [o["peak_rss_mib"] for o in c["ours"].values() if o.get("peak_rss_mib") is not None]
    return (statistics.median(ts), min(ts), max(rss) if rss else None) if ts else None
cpuinfo = open("/proc/cpuinfo").read().splitlines()
field = lambda k: next((l.split(":", 1)[1].strip() for l in cpuinfo if l.split(":")[0].strip() == k), None)
cpu = field("model name") or platform.processor()
if field("cpu family") and field("model"):
    cpu += f" (family {field('cpu family')}, model {field('model')})"
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
flags = set((field("flags") or "").split())
simd = ", ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags)
bf16 = " and ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"
if "avx512_bf16" in flags and "amx_bf16" not in flags:
    bf16 += " (no AMX)"
versions = {}
for r in rows:
    for k in ("torch", "onnxruntime", "openvino"):
        if r.get(k):
            versions.setdefault(k, r[k].split("-")[0])
    if str(r.get("onednn", "")).startswith("oneDNN") and "not loaded" not in r["onednn"]:
        versions.setdefault("ours' kernels", r["onednn"])
out = ["# Benchmarks", "",
       "Written by `scripts/bench.sh` (ours: `da3 bench`, release build; peers: `scripts/bench_reference.py`:",
       "the reference depth-anything-3 0.1.1 forward in torch, and the same forward exported to ONNX",
       "(opset 18, fixed shape, checked against torch) run by ONNX Runtime f32 and OpenVINO with f32 and",
       "bf16 inference precision, all on the CPU). Seeded random-weight checkpoints of the published",
       "configs; input 504x378 (a 640x480 frame at process_res 504); " + ("ours " + "/".join(ours_dtypes) + "; ")
       + f"median (and min) of {ntimed * nrounds} timed runs" + (f" ({nrounds} rounds of {ntimed})" if nrounds > 1 else "") + f" after {warmup} warm-up run(s).",
       "Ours and each peer ran at the same time, taking strict turns (one forward each, `--lockstep`),",
       "one peer after the other, so every timed run of ours has one of the peer's right after it and",
       "a slow spell of this shared machine lands on both. Ours/peer is the median of those per-turn",
       "ratios; ours ms pools ours' runs against all peers. " + (f"Both sides ran under `{rt}` (real-time priority)." if rt else ""), "",
       f"Machine: {cpu}, {threads} threads, {int(mem)//1024} MiB RAM, SIMD: {simd}; bf16: {bf16}.",
       "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
names = [n for _, _, n in present]
out += ["| model | views | ours ms (min) | " + " | ".join(f"{n} ms (ours/{n})" for n in names)
        + " | peak RSS MiB: ours / " + " / ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names) + "---|"]
for (m, v), c in sorted(conf.items()):
    oa = ours_all(c)
    if not oa and not c["peer"]:
        continue
    cells = []
    for p, _, _ in present:
        r, o = c["peer"].get(p), c["ours"].get(p)
        pr = paired(o, r)
        ratio = statistics.median(pr) if pr else (o["median_ms"] / r["median_ms"] if o and r else None)
        cells.append(f"{r['median_ms']:.0f}" + (f" ({ratio:.2f})" if ratio else "") if r else "-")
    rss = [oa[2] if oa else None] + [c["peer"].get(p, {}).get("peak_rss_mib") for p, _, _ in present]
    out.append(f"| {m} | {v} | " + (f"{oa[0]:.0f} ({oa[1]:.0f})" if oa else "-") + " | " + " | ".join(cells)
               + " | " + " / ".join(f"{x:.0f}" if x is not None else "-" for x in rss) + " |")
ov = [(p, n) for p, _, n in present if p.startswith("ov-")]
if ov:
    out += ["", "What OpenVINO executed (`INFERENCE_PRECISION_HINT` of the compiled model; nodes of its exec",
            "graph by runtime precision, FullyConnected/MatMul/Convolution ones):", ""]
    for p, n in ov:
        seen = [(m, v, c["peer"][p]) for (m, v), c in sorted(conf.items()) if p in c["peer"]]
        out.append(f"- {n}: " + "; ".join(
            f"{m} {v}v {r.get('inference_precision', '?')}, "
            + ", ".join(f"{k} {x}" for k, x in sorted(r.get("exec_precisions_gemm", {}).items())) for m, v, r in seen) + ".")
if "torch" in [p for p, _, _ in present]:
    out += ["", "Ours against the torch reference in detail (ours' runs against torch only; paired: median and",
            "range of the per-turn ratios; inference(): the reference's own API, preprocessing and autocast):", "",
            "| model | views | ours ms (min) | ref forward ms (min) | ours/ref | paired (range) | ref inference() ms | ours RSS MiB | ref RSS MiB | ours GFLOP/s (matmul peak) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for (m, v), c in sorted(conf.items()):
        ours, ref, api = c["ours"].get("torch"), c["peer"].get("torch"), c["api"]
        if not ours and not ref:
            continue
        f = lambda r, k: f"{r[k]:.0f}" if r and r.get(k) is not None else "-"
        fm = lambda r: f"{r['median_ms']:.0f} ({r['min_ms']:.0f})" if r else "-"
        ratio = f"{ours['median_ms']/ref['median_ms']:.2f}" if ours and ref else "-"
        pr = paired(ours, ref)
        pairs = f"{statistics.median(pr):.2f} ({min(pr):.2f}-{max(pr):.2f})" if pr else "-"
        prof = next((o["profile"] for o in c["ours"].values() if o.get("profile")), None)
        gf = f"{prof['gflops_overall']:.0f} ({prof['matmul_peak_gflops']:.0f})" if prof else "-"
        out.append(f"| {m} | {v} | {fm(ours)} | {fm(ref)} | {ratio} | {pairs} | {f(api,'median_ms')} | {f(ours,'peak_rss_mib')} | {f(ref,'peak_rss_mib')} | {gf} |")
out += ["", "Timed runs in the order they ran, ms, ours / peer (one list per round):", ""]
for (m, v), c in sorted(conf.items()):
    for p, _, n in present:
        o, r = c["ours"].get(p), c["peer"].get(p)
        if o and r:
            fmt = lambda x: "; ".join(str([round(t) for t in run]) for run in x["runs"])
            out.append(f"- {m}, {v} view(s), vs {n}: {fmt(o)} / {fmt(r)}")
mixed = []
for (m, v), c in sorted(conf.items()):
    base = [t for o in c["ours"].values() if o.get("dtype", "f32") == "f32" for run in o["runs"] for t in run]
    base = statistics.median(base) if base else None
    for p in ("bf16", "f16"):
        r = c["mixed"].get(p)
        if r:
            mixed.append(f"| {m} | {v} | {p} | {r['median_ms']:.0f} | " + (f"{base:.0f} | {r['median_ms']/base:.2f}" if base else "- | -") + f" | {r['peak_rss_mib']:.0f} |")
if mixed:
    out += ["", "Mixed precision on this CPU (ours; bf16/f16 weights of the linear layers and the DPT's token projections, f32 activations; their GEMMs and the attention's two products through oneDNN where it runs the type (bf16 on CPUs with AVX512-BF16 or AMX), else oneMKL (the attention then f32); the any-view models' depth decoder (the 3x3s of the neck's adapters, the fusion blocks, `output_conv1` and the full-resolution head) in oneDNN's channels-last bf16 convolution where it has one; parity within 2e-2 of the reference on every fixture output is tested in `nodes/da3/tests/parity.rs`):", "",
            "| model | views | dtype | ms | f32 ms | vs f32 | RSS MiB |", "|---|---|---|---|---|---|---|"] + mixed
memo = {}
for r in rows:
    if r["impl"] in ("memory ours", "memory ref"):
        memo.setdefault((r["model"], r["views"]), {})[r["impl"]] = r
if memo:
    out += ["", "Peak RSS by number of views (one forward per process, f32; the reference stops at the count set by MEMORY_REF_MAX):", "",
            "| model | views | ours MiB | ours ms | ref MiB | ref ms |", "|---|---|---|---|---|---|"]
    for (m, v), d in sorted(memo.items()):
        o = d.get("memory ours"); r = d.get("memory ref")
        g = lambda x, k: f"{x[k]:.0f}" if x else "-"
        out.append(f"| {m} | {v} | {g(o,'peak_rss_mib')} | {g(o,'median_ms')} | {g(r,'peak_rss_mib')} | {g(r,'median_ms')} |")
kern = [(m, v, p) for (m, v), c in sorted(conf.items()) for p in [next((o["profile"] for o in c["ours"].values() if o.get("profile")), None)] if p]
if kern:
    out += ["", "Where our time goes (one profiled forward, `da3 bench --profile`; GFLOP counted in GEMM work only):", ""]
    for m, v, p in kern:
        parts = ", ".join(f"{k['kernel']} {k['ms']:.0f} ms" + (f" ({k['gflop']/k['ms']*1e3:.0f} GFLOP/s)" if k['gflop'] > 0.05 else "") for k in sorted(p["kernels"], key=lambda k: -k["ms"])[:6])
        busy = f" ({p['busy_pct']:.0f}% busy: CPU time over wall time x threads)" if p.get("busy_pct") else ""
        out.append(f"- {m}, {v} view(s): {p['forward_ms']:.0f} ms{busy}, {p['gflop']:.0f} GFLOP, {p['gflops_overall']:.0f} GFLOP/s overall against a matmul peak of {p['matmul_peak_gflops']:.0f}; {parts}; other (candle ops) {p['other_ms']:.0f} ms.")
out += ["", "Raw results: `~/.cache/dora-da3/bench/results.jsonl`; ONNX exports: `~/.cache/dora-da3/bench/onnx/`.", "", ""]
open("docs/benchmarks.md.new", "w").write("\n".join(out))
PY
# Keep the notes below the generated table, if any.
if [ -f docs/benchmarks.md ] && grep -q "^## Notes" docs/benchmarks.md; then
  sed -n '/^## Notes/,$p' docs/benchmarks.md >> docs/benchmarks.md.new
fi
mv docs/benchmarks.md.new docs/benchmarks.md
cat docs/benchmarks.md
