#!/usr/bin/env bash
# CPU benchmark, ours vs the PyTorch reference, same machine, same seeded
# checkpoints, same input (a 640x480 frame at process_res 504 = 504x378), same
# thread count. Writes docs/benchmarks.md.
#
#   bash scripts/bench.sh                       # DA3-SMALL and DA3-BASE, 1 and 4 views
#   VARIANTS=da3-small VIEWS="1" ITERS=3 bash scripts/bench.sh
#   bash scripts/bench.sh --report        # only rewrite docs/benchmarks.md from the last results
#
# As root, both sides run under SCHED_FIFO (`chrt -f 10`) so that other work on the
# machine (builds, tests) cannot preempt them; BENCH_RT=0 turns that off. Mixed precision
# (bf16, f16) is timed for ours on the first variant, 1 view (MIXED=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
VARIANTS="${VARIANTS:-da3-small da3-base}"
VIEWS="${VIEWS:-1 4}"
THREADS="${THREADS:-$(nproc)}"
ITERS="${ITERS:-7}"
# Ours and the reference run at the same time in lockstep (`--lockstep`: two named pipes,
# strict turns, one forward per turn), so each timed run of ours sits right next to one of
# the reference's and a slow spell of a shared machine lands on both. ROUNDS > 1 repeats
# each pair of processes; the report pools the runs of all rounds.
ROUNDS="${ROUNDS:-1}"
WARMUP="${WARMUP:-1}"
RT=()
if [ "${BENCH_RT:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v chrt >/dev/null; then
  RT=(chrt -f 10)
fi
PY="$CACHE/ref-venv/bin/python"
OUT="$CACHE/bench/results.jsonl"

if [ "${1:-}" != "--report" ]; then
bash scripts/setup-reference.sh
cargo build --release -p da3 --features cli --bin da3
mkdir -p "$CACHE/bench"
: > "$OUT"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
# shellcheck source=scripts/lockstep.sh
. scripts/lockstep.sh
# One configuration, ours and the reference taking turns; their JSON lines go to $OUT.
pair() {
  local v="$1" ckpt="$2" s="$3" tmp po pr
  tmp="$(mktemp -d)"
  mkfifo "$tmp/a" "$tmp/b"
  "${RT[@]}" target/release/da3 bench --model "$ckpt" --views "$s" --iters "$ITERS" --warmup "$WARMUP" \
    --profile --lockstep "$tmp/a,$tmp/b" > "$tmp/ours" &
  po=$!
  # One warm-up more for the reference: it runs while ours runs its --profile forward.
  "${RT[@]}" "$PY" scripts/bench_reference.py --checkpoint "$ckpt" --views "$s" --threads "$THREADS" \
    --iters "$ITERS" --warmup "$((WARMUP + 1))" --mode forward --lockstep "$tmp/b,$tmp/a" > "$tmp/ref" &
  pr=$!
  lockstep_finish "bench: $v, $s view(s)" "$tmp/a" "$po" "$pr" || exit 1
  grep '^{' "$tmp/ours" | sed "s/\"model\":\"[^\"]*\"/\"model\":\"$v\"/" >> "$OUT"
  grep '^{' "$tmp/ref" | sed "s/\"model\": \"[^\"]*\"/\"model\": \"$v\"/" >> "$OUT"
  rm -r "$tmp"
}
for round in $(seq 1 "$ROUNDS"); do
for v in $VARIANTS; do
  ckpt="$CACHE/bench/$v"
  [ -f "$ckpt/model.safetensors" ] || "$PY" scripts/bench_reference.py --make-checkpoint "$v" "$ckpt"
  for s in $VIEWS; do
    echo "bench: round $round/$ROUNDS, $v, $s view(s), ours and the reference in lockstep"
    pair "$v" "$ckpt" "$s"
    # The reference's own API (slow: autocast, pre/post-processing) once, not every round.
    if [ "$round" = 1 ]; then
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
    "${RT[@]}" target/release/da3 bench --model "$CACHE/bench/$v" --views "$s" --iters 1 --warmup 0 \
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
    "${RT[@]}" target/release/da3 bench --model "$CACHE/bench/$v" --views 1 --iters 3 --warmup 1 --precision "$p" \
      | grep '^{' | sed "s/\"model\":\"[^\"]*\"/\"model\":\"$v\"/" >> "$OUT"
  done
fi
fi
python3 - "$OUT" "$THREADS" "$ITERS" "$WARMUP" "${RT[*]:-}" <<'PY'
import json, platform, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
threads, iters, warmup, rt = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
# Several rounds of one configuration: pool their timed runs (each row's `times_ms`, in
# the order they ran); RSS is the largest of the rounds, the profile the first round's.
groups = {}
for r in rows:
    key = (r["impl"], r.get("dtype", "f32"), r["model"], r["views"])
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
nrounds = max((r["rounds"] for r in rows if r["impl"] == "dora-da3 (candle)"), default=1)
ntimed = max((len(r["runs"][0]) for r in rows if r["impl"] == "dora-da3 (candle)"), default=1)
def paired(o, r):
    """ours/ref per turn: the i-th timed run of ours against the reference's i-th, which ran
    right after it (lockstep); None when the runs do not pair up."""
    if not o or not r or len(o["runs"]) != len(r["runs"]):
        return None
    ratios = [a / b for ro, rr in zip(o["runs"], r["runs"]) if len(ro) == len(rr) for a, b in zip(ro, rr)]
    return ratios or None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?")
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
simd = ", ".join(f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)
out = ["# Benchmarks", "",
       "Written by `scripts/bench.sh` (ours: `da3 bench`, release build; reference:",
       "`scripts/bench_reference.py`, depth-anything-3 0.1.1, torch CPU). Seeded random-weight",
       "checkpoints of the published configs; input 504x378 (a 640x480 frame at",
       f"process_res 504); f32; median (and min) of {ntimed * nrounds} timed runs" + (f" ({nrounds} rounds of {ntimed})" if nrounds > 1 else "") + f" after {warmup} warm-up run(s).",
       "Ours and the reference's forward ran at the same time, taking strict turns (one forward",
       "each, `--lockstep`), so every timed run of ours has one of the reference's right after it",
       "and a slow spell of this shared machine lands on both. Ours/ref compares the medians;",
       "paired is the median (and range) of the per-turn ratios. " + (f"Both sides ran under `{rt}` (real-time priority)." if rt else ""), "",
       f"Machine: {cpu}, {threads} threads, {int(mem)//1024} MiB RAM, SIMD: {simd}.", "",
       "| model | views | ours ms (min) | ref forward ms (min) | ours/ref | paired (range) | ref inference() ms | ours RSS MiB | ref RSS MiB | ours GFLOP/s (matmul peak) |",
       "|---|---|---|---|---|---|---|---|---|---|"]
by = {}
for r in rows:
    if r["impl"].startswith("memory"):
        continue
    key = r["impl"] + ("" if r.get("dtype", "f32") == "f32" else " " + r["dtype"])
    by.setdefault((r["model"], r["views"]), {})[key] = r
mixed = []
for (m, v), d in sorted(by.items()):
    ours = d.get("dora-da3 (candle)"); ref = d.get("reference forward f32"); api = d.get("reference inference() (autocast)")
    f = lambda r, k: f"{r[k]:.0f}" if r and r.get(k) is not None else "-"
    fm = lambda r: f"{r['median_ms']:.0f} ({r['min_ms']:.0f})" if r else "-"
    ratio = f"{ours['median_ms']/ref['median_ms']:.2f}" if ours and ref else "-"
    pr = paired(ours, ref)
    pairs = f"{statistics.median(pr):.2f} ({min(pr):.2f}-{max(pr):.2f})" if pr else "-"
    prof = ours.get("profile") if ours else None
    gf = f"{prof['gflops_overall']:.0f} ({prof['matmul_peak_gflops']:.0f})" if prof else "-"
    out.append(f"| {m} | {v} | {fm(ours)} | {fm(ref)} | {ratio} | {pairs} | {f(api,'median_ms')} | {f(ours,'peak_rss_mib')} | {f(ref,'peak_rss_mib')} | {gf} |")
    for p in ("bf16", "f16"):
        r = d.get(f"dora-da3 (candle) {p}")
        if r:
            mixed.append(f"| {m} | {v} | {p} | {r['median_ms']:.0f} | {ours['median_ms']:.0f} | {r['median_ms']/ours['median_ms']:.2f} | {r['peak_rss_mib']:.0f} |" if ours else "")
out += ["", "Timed runs in the order they ran, ms, ours / reference forward (one list per round):", ""]
for (m, v), d in sorted(by.items()):
    o = d.get("dora-da3 (candle)"); r = d.get("reference forward f32")
    if o and r:
        fmt = lambda x: "; ".join(str([round(t) for t in run]) for run in x["runs"])
        out.append(f"- {m}, {v} view(s): {fmt(o)} / {fmt(r)}")
if mixed:
    out += ["", "Mixed precision on this CPU (ours; parity with f32 is tested to 2e-2 in `nodes/da3/tests/loading.rs`):", "",
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
kern = [(m, v, d["dora-da3 (candle)"]["profile"]) for (m, v), d in sorted(by.items()) if d.get("dora-da3 (candle)", {}).get("profile")]
if kern:
    out += ["", "Where our time goes (one profiled forward, `da3 bench --profile`; GFLOP counted in GEMM work only):", ""]
    for m, v, p in kern:
        parts = ", ".join(f"{k['kernel']} {k['ms']:.0f} ms" + (f" ({k['gflop']/k['ms']*1e3:.0f} GFLOP/s)" if k['gflop'] > 0.05 else "") for k in sorted(p["kernels"], key=lambda k: -k["ms"])[:6])
        busy = f" ({p['busy_pct']:.0f}% busy: CPU time over wall time x threads)" if p.get("busy_pct") else ""
        out.append(f"- {m}, {v} view(s): {p['forward_ms']:.0f} ms{busy}, {p['gflop']:.0f} GFLOP, {p['gflops_overall']:.0f} GFLOP/s overall against a matmul peak of {p['matmul_peak_gflops']:.0f}; {parts}; other (candle ops) {p['other_ms']:.0f} ms.")
out += ["", "Raw results: `~/.cache/dora-da3/bench/results.jsonl`.", "", ""]
open("docs/benchmarks.md.new", "w").write("\n".join(out))
PY
# Keep the notes below the generated table, if any.
if [ -f docs/benchmarks.md ] && grep -q "^## Notes" docs/benchmarks.md; then
  sed -n '/^## Notes/,$p' docs/benchmarks.md >> docs/benchmarks.md.new
fi
mv docs/benchmarks.md.new docs/benchmarks.md
cat docs/benchmarks.md
