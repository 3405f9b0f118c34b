#!/usr/bin/env bash
# Creates the PyTorch reference environment used to generate parity fixtures.
# Location: ${DA3_CACHE:-$HOME/.cache/dora-da3}/ref-venv  (idempotent).
set -euo pipefail

CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
VENV="$CACHE/ref-venv"
PY="$VENV/bin/python"
STAMP="$VENV/.dora-da3-ref-ok"

if [[ -f "$STAMP" ]] && "$PY" -c 'import depth_anything_3, torch, numpy' >/dev/null 2>&1; then
  echo "reference venv already set up: $VENV"
  exit 0
fi

mkdir -p "$CACHE"
if [[ ! -x "$PY" ]]; then
  python3 -m venv "$VENV"
fi
"$PY" -m pip install --upgrade pip

# The reference package pins heavy/optional deps (xformers, gsplat, ...); install it
# without dependencies and add only what model construction, the API and export need.
"$PY" -m pip install "depth-anything-3==0.1.1" --no-deps
# torch pulls several GB of CUDA wheels from PyPI; this is expected (~4 min).
"$PY" -m pip install torch torchvision huggingface_hub pillow omegaconf addict einops \
  opencv-python-headless imageio tqdm trimesh "moviepy==1.0.3" plyfile matplotlib \
  pycolmap evo safetensors e3nn "numpy<2"

"$PY" -c 'import depth_anything_3, torch; print("depth_anything_3 OK, torch", torch.__version__)'
touch "$STAMP"
echo "reference venv ready: $VENV"
