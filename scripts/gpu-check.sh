#!/usr/bin/env bash
# The GPU check of issue #16, one command on a machine with an NVIDIA GPU (run from the
# repository root of a copy that holds the payload made by scripts/gpu-pack.sh in .gpu/):
#
#   bash scripts/gpu-check.sh OUTDIR            # parity, speed, memory, replicas vs the reference
#   bash scripts/gpu-check.sh --dry-run OUTDIR  # the same harness on the CPU: tiny fixtures, no torch
#
# Writes OUTDIR/gpu-check.json and OUTDIR/gpu-check.log (see scripts/gpu_check.py for what
# each phase measures). Needs there: python3 with torch (CUDA), safetensors, nvidia-ml-py and
# accelerate (the lent H200 machines have them); the reference package and its pure-Python
# dependencies travel in .gpu/site; the CUDA libraries are the machine's (torch's
# nvidia-* wheels and the driver). Extra arguments go to gpu_check.py (e.g. --budget-s 300).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
out="${1:?usage: scripts/gpu-check.sh [--dry-run] OUTDIR [gpu_check.py options]}"
shift
mkdir -p "$out"

if [ "$dry" = 1 ]; then
  bin="${DA3_BIN:-}"
  if [ -z "$bin" ]; then
    target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    bin="$target/debug/da3"
    [ -x "$bin" ] || cargo build --workspace --bins --features da3/cli
  fi
  exec python3 scripts/gpu_check.py --dry-run --bin "$bin" --out "$out" "$@"
fi

payload=.gpu
if [ ! -x "$payload/bin/da3" ] && [ -f "$payload/bin/da3.xz" ]; then
  xz -dk "$payload/bin/da3.xz" && chmod +x "$payload/bin/da3"
fi
[ -x "$payload/bin/da3" ] || { echo "gpu-check: no $payload/bin/da3: run scripts/gpu-pack.sh first" >&2; exit 1; }

# The machine's CUDA libraries: torch's nvidia-* wheels (cuBLAS, cuRAND, NVRTC, the
# runtime) and the driver's libcuda.
libs="$(python3 - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for d in sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib"))):
        if d not in dirs:
            dirs.append(d)
print(":".join(dirs))
PY
)"
export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/$payload/site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$payload/bin/da3" --version; then
  echo "gpu-check: our binary does not start; its libraries:" >&2
  ldd "$payload/bin/da3" >&2 || true
  exit 1
fi
exec python3 scripts/gpu_check.py --bin "$payload/bin/da3" --out "$out" "$@"
