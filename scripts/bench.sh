#!/usr/bin/env bash
# CPU benchmark, ours vs the PyTorch reference, same machine, same seeded
# checkpoints, same input (a 640x480 frame at process_res 504 = 504x378), same
# thread count. Writes docs/benchmarks.md. Run on a quiet machine:
#
#   bash scripts/bench.sh                       # DA3-SMALL and DA3-BASE, 1 and 4 views
#   VARIANTS=da3-small VIEWS="1" ITERS=3 bash scripts/bench.sh
#   bash scripts/bench.sh --report        # only rewrite docs/benchmarks.md from the last results
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
VARIANTS="${VARIANTS:-da3-small da3-base}"
VIEWS="${VIEWS:-1 4}"
THREADS="${THREADS:-$(nproc)}"
ITERS="${ITERS:-5}"
PY="$CACHE/ref-venv/bin/python"
OUT="$CACHE/bench/results.jsonl"

if [ "${1:-}" != "--report" ]; then
bash scripts/setup-reference.sh
cargo build --release -p da3 --bin da3
mkdir -p "$CACHE/bench"
: > "$OUT"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
for v in $VARIANTS; do
  ckpt="$CACHE/bench/$v"
  [ -f "$ckpt/model.safetensors" ] || "$PY" scripts/bench_reference.py --make-checkpoint "$v" "$ckpt"
  for s in $VIEWS; do
    echo "bench: $v, $s view(s)"
    target/release/da3 bench --model "$ckpt" --views "$s" --iters "$ITERS" | grep '^{' | sed "s/\"model\":\"[^\"]*\"/\"model\":\"$v\"/" >> "$OUT"
    "$PY" scripts/bench_reference.py --checkpoint "$ckpt" --views "$s" --threads "$THREADS" --iters "$ITERS" --mode forward \
      | grep '^{' | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$v\"/" >> "$OUT"
    "$PY" scripts/bench_reference.py --checkpoint "$ckpt" --views "$s" --threads "$THREADS" --iters "$ITERS" --mode api \
      | grep '^{' | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$v\"/" >> "$OUT"
  done
done
fi
python3 - "$OUT" "$THREADS" <<'PY'
import json, platform, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
threads = sys.argv[2]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
simd = ", ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)
out = ["# Benchmarks", "",
       "Written by `scripts/bench.sh` (ours: `da3 bench`, release build; reference:",
       "`scripts/bench_reference.py`, depth-anything-3 0.1.1). Seeded random-weight",
       "checkpoints of the published configs; input 504x378 (a 640x480 frame at",
       "process_res 504); f32; median of the timed runs after one warm-up.", "",
       f"Machine: {cpu}, {threads} threads, {int(mem)//1024} MiB RAM, SIMD: {simd}.", "",
       "| model | views | ours ms | ref forward ms | ours/ref | ref inference() ms | ours RSS MiB | ref RSS MiB |",
       "|---|---|---|---|---|---|---|---|"]
by = {}
for r in rows:
    by.setdefault((r["model"], r["views"]), {})[r["impl"]] = r
for (m, v), d in sorted(by.items()):
    ours = d.get("dora-da3 (candle)"); ref = d.get("reference forward f32"); api = d.get("reference inference() (autocast)")
    f = lambda r, k: f"{r[k]:.0f}" if r and r.get(k) is not None else "-"
    ratio = f"{ours['median_ms']/ref['median_ms']:.2f}" if ours and ref else "-"
    out.append(f"| {m} | {v} | {f(ours,'median_ms')} | {f(ref,'median_ms')} | {ratio} | {f(api,'median_ms')} | {f(ours,'peak_rss_mib')} | {f(ref,'peak_rss_mib')} |")
out += ["", "Raw results: `~/.cache/dora-da3/bench/results.jsonl`.", ""]
open("docs/benchmarks.md.new", "w").write("\n".join(out))
PY
# Keep the notes below the generated table, if any.
if [ -f docs/benchmarks.md ] && grep -q "^## Notes" docs/benchmarks.md; then
  sed -n '/^## Notes/,$p' docs/benchmarks.md >> docs/benchmarks.md.new
fi
mv docs/benchmarks.md.new docs/benchmarks.md
cat docs/benchmarks.md
