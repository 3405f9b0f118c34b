#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine into .gpu/ (git-ignored; the lent
# machines take the working tree plus carried paths, 64 MiB in all, and have no registry):
#   .gpu/bin/da3(.xz)  the CUDA build of the `da3` CLI (scripts/build-cuda.sh), stripped
#   .gpu/site/         depth-anything-3==0.1.1 and the pure-Python packages it imports that
#                      the machine lacks (no compiled code: any Python 3 there)
# Then: carry `.gpu`, run `bash scripts/gpu-check.sh OUTDIR` there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
bash scripts/build-cuda.sh
target="${CARGO_TARGET_DIR:-${DA3_CACHE:-$HOME/.cache/dora-da3}/cuda-target}"
rm -rf .gpu
mkdir -p .gpu/bin
strip -o .gpu/bin/da3 "$target/release/da3"
# PTX is text: compress the binary when it is big (gpu-check.sh unpacks it).
if [ "$(stat -c %s .gpu/bin/da3)" -gt $((24 * 1024 * 1024)) ]; then
  xz -T0 -6 .gpu/bin/da3
fi
python3 -m pip install -q --disable-pip-version-check --no-deps --no-compile --target .gpu/site \
  depth-anything-3==0.1.1 addict==2.4.0 omegaconf==2.4.0 plyfile==1.1.3 trimesh==5.2.0 \
  evo==1.38.1 moviepy==1.0.3 decorator==4.4.2 proglog==0.1.12 natsort==8.4.0
rm -rf .gpu/site/bin
size=$(du -sb .gpu | cut -f1)
echo "gpu-pack: .gpu is $((size / 1024 / 1024)) MiB (limit 64 MiB with the working tree)"
[ "$size" -lt $((56 * 1024 * 1024)) ] || { echo "gpu-pack: too big" >&2; exit 1; }
