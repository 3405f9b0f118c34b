#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: the bundled sample images
# through the DA3 dataflow into files (dataflows/images-da3-export.yml):
# out/export/ holds per frame an .npz, a 16-bit depth PNG + JSON, a colour
# depth PNG, a .ply and a .glb, plus a COLMAP model.
#
#   bash scripts/demo.sh                 # MODEL=depth-anything/DA3-SMALL
#   MODEL=depth-anything/DA3-BASE bash scripts/demo.sh
#   bash scripts/demo.sh dataflows/camera-da3-live.yml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
FLOW="${1:-dataflows/images-da3-export.yml}"
TEST_MODEL="$PWD/nodes/da3/tests/fixtures/tiny-anyview"

if [ -z "${MODEL:-}" ]; then
  MODEL="depth-anything/DA3-SMALL"
  # Offline, or no route to the model hub: say so, and run the bundled
  # random-weight test checkpoint so the graph itself still runs.
  endpoint="${HF_ENDPOINT:-https://huggingface.co}"
  if [ -z "${HF_HUB_OFFLINE:-}" ] && ! python3 - "$endpoint" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/api/models/depth-anything/DA3-SMALL", timeout=8)
PY
  then
    cache="${HF_HOME:-$HOME/.cache/huggingface}/hub/models--depth-anything--DA3-SMALL"
    if [ ! -d "$cache" ]; then
      echo "demo: WARNING: the model hub ($endpoint) cannot be reached and DA3-SMALL is not cached;"
      echo "demo: WARNING: running the bundled test checkpoint (random weights: outputs are not depth)."
      MODEL="$TEST_MODEL"
    fi
  fi
fi
export MODEL
echo "demo: MODEL=$MODEL, graph $FLOW"
# The same command as every node's `build:` key in dataflows/ (and scripts/test.sh): one
# feature set, so `dora run` finds nothing left to compile.
cargo build --workspace --bins --features da3/cli
# The graphs name their nodes as ../target/debug/<node>. With CARGO_TARGET_DIR set
# elsewhere, point target/debug at that build (unless a real target/debug is there).
tdir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if [ "$tdir" != "$PWD/target" ]; then
  if [ -L target/debug ] || [ ! -e target/debug ]; then
    mkdir -p target
    ln -sfn "$tdir/debug" target/debug
  else
    echo "demo: WARNING: built into $tdir, but the graph runs the binaries in $PWD/target/debug"
  fi
fi
mkdir -p out
rm -rf out/export
dora run "$FLOW"
if [ -d out/export ]; then
  echo "demo: wrote $(find out/export -type f | wc -l) files in out/export:"
  find out/export -type f | sort | head -12
fi
if [ -f out/da3.jsonl ] && [ "$FLOW" = dataflows/images-da3.yml ]; then
  python3 - <<'PY'
import collections, json
counts = collections.Counter()
last_stats = None
for line in open("out/da3.jsonl"):
    rec = json.loads(line)
    counts[rec["input"]] += 1
    if rec["input"] == "status":
        s = json.loads(rec.get("text", "{}"))
        if s.get("type") == "stats":
            last_stats = s
print("demo: messages per output:", dict(counts))
if last_stats:
    print("demo: frames in {frames_in}, out {frames_out}, latency p50 {p50} ms".format(
        p50=last_stats["latency_ms"]["p50"], **last_stats))
PY
fi
echo "demo: done; outputs in $PWD/out/"
