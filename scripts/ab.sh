#!/usr/bin/env bash
# A/B timing of two builds or two settings of ours, in lockstep (`da3 bench --lockstep`):
# both processes load the model, then take strict turns, one forward each, so every run
# of A sits next to one of B's and the drift of a shared machine lands on both.
#
#   bash scripts/ab.sh "DA3_CONV_ROWS=1" "DA3_CONV_ROWS=0"           # two settings
#   A_BIN=/tmp/old/da3 bash scripts/ab.sh "" ""                      # old build vs this one
#   VIEWS=1 ITERS=15 MODEL=path/to/checkpoint bash scripts/ab.sh "X=1" "X=2"
#   A_ARGS="--precision bf16" bash scripts/ab.sh "" ""                # bf16 vs f32
#
# Arguments: environment assignments for A and for B (space separated, may be empty).
# Prints both sides' runs in order and the median (and range) of the per-turn A/B ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
MODEL="${MODEL:-$CACHE/bench/da3-small}"
VIEWS="${VIEWS:-4}"
ITERS="${ITERS:-9}"
THREADS="${THREADS:-$(nproc)}"
B_BIN="${B_BIN:-target/release/da3}"
A_BIN="${A_BIN:-$B_BIN}"
[ $# = 2 ] || { sed -n '2,11p' "$0"; exit 2; }
[ -f "$MODEL/model.safetensors" ] || {
  echo "ab: no checkpoint at $MODEL (bash scripts/bench.sh makes it; or set MODEL)" >&2
  exit 1
}
[ "$B_BIN" != target/release/da3 ] || cargo build --release -p da3 --features cli --bin da3
RT=()
if [ "${BENCH_RT:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v chrt >/dev/null; then
  RT=(chrt -f 10)
fi
export RAYON_NUM_THREADS="$THREADS"
# shellcheck source=scripts/lockstep.sh
. scripts/lockstep.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/a" "$tmp/b"
side() { # env, binary, wait, signal, output, extra `da3 bench` arguments
  # shellcheck disable=SC2086
  exec env $1 "${RT[@]}" "$2" bench --model "$MODEL" --views "$VIEWS" --iters "$ITERS" --warmup 1 \
    --lockstep "$3,$4" $6 > "$5"
}
side "$1" "$A_BIN" "$tmp/a" "$tmp/b" "$tmp/A" "${A_ARGS:-}" &
pa=$!
side "$2" "$B_BIN" "$tmp/b" "$tmp/a" "$tmp/B" "${B_ARGS:-}" &
pb=$!
lockstep_finish ab "$tmp/a" "$pa" "$pb" || exit 1
python3 - "$tmp/A" "$tmp/B" "$1" "$2" <<'PY'
import json, os, statistics, sys
ja, jb = (json.loads([l for l in open(p) if l.startswith("{")][-1]) for p in sys.argv[1:3])
a, b = ja["times_ms"], jb["times_ms"]
r = [x / y for x, y in zip(a, b)]
# What each side's kernels were: a build that lost oneDNN or oneMKL (its build script ran
# where .venv/lib was missing) still runs, only on the fallback kernels.
for name, j in (("A", ja), ("B", jb)):
    print(f"{name}: {j.get('dtype')}, {j.get('onednn')}; half GEMMs: {j.get('half_gemm', '-')[:40]}")
if (ja.get("onednn"), ja.get("half_gemm")) != (jb.get("onednn"), jb.get("half_gemm")):
    print("ab: warning: A and B ran different kernel libraries (above)", file=sys.stderr)
print(f"A ({sys.argv[3] or 'as is'} {os.environ.get('A_ARGS', '')}): {[round(x) for x in a]} ms, median {statistics.median(a):.0f}")
print(f"B ({sys.argv[4] or 'as is'} {os.environ.get('B_ARGS', '')}): {[round(x) for x in b]} ms, median {statistics.median(b):.0f}")
print(f"A/B per turn: median {statistics.median(r):.3f}, range {min(r):.3f}-{max(r):.3f}")
PY
