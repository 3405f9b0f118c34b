#!/usr/bin/env bash
# Builds the DA3 node and the `da3` CLI with candle's CUDA backend, using the CUDA
# toolkit from Debian's packages (bookworm: nvidia-cuda-toolkit 11.8, in `non-free`).
# No GPU is needed to build; the binaries need an NVIDIA driver to run on one.
#
#   bash scripts/build-cuda.sh            # installs the toolkit if missing, then builds
#   CUDA_COMPUTE_CAP=86 bash scripts/build-cuda.sh
#
# CUDA_COMPUTE_CAP defaults to 80 (Ampere; runs on later GPUs through PTX JIT). Debian's
# CUDA 11.8 cannot target 90 (Hopper) natively: build with a CUDA 12+ nvcc for that.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
    if [ ! -f /etc/apt/sources.list.d/debian-nonfree.sources ]; then
        cat > /etc/apt/sources.list.d/debian-nonfree.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvidia-cuda-toolkit
fi
# Debian's nvcc 11.8 wrapper refuses gcc 12 (bookworm's default) as host compiler and
# picks a supported one when present: gcc 11.
if ! command -v g++-11 >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-11
fi
nvcc --version | tail -2
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
cargo build --release -p dora-da3 -p da3 --features dora-da3/cuda,da3/cuda,da3/cli "$@"
echo "built: $(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/{dora-da3,da3} with CUDA (compute cap $CUDA_COMPUTE_CAP)"
