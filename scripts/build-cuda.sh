#!/usr/bin/env bash
# Builds the `da3` CLI (and with --node the DA3 node) with candle's CUDA backend for Hopper
# (H100/H200, compute capability 9.0), against CUDA 13.0 from PyPI's wheels. No GPU is
# needed to build; no system CUDA either.
#
#   bash scripts/build-cuda.sh            # -> $CARGO_TARGET_DIR/release/da3
#   bash scripts/build-cuda.sh --node     # also dora-da3 (DEVICE=cuda:N)
#   CUDA_COMPUTE_CAP=80 bash scripts/build-cuda.sh   # another GPU generation
#
# The toolchain goes to ${DA3_CACHE:-~/.cache/dora-da3}/cuda13 (about 1.2 GB, once):
# nvcc/ptxas/cicc, headers, cudart, cuBLAS, cuRAND, NVRTC, all 13.0. Pinned to 13.0 because
# the lent machines' driver (580) is CUDA 13.0 and refuses PTX from a newer nvcc
# (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). The binary links the CUDA libraries by soname
# (libcublas.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13, libcuda.so.1) and
# finds them at run time through LD_LIBRARY_PATH (scripts/gpu-check.sh points it at torch's
# nvidia-* wheels and the driver). The driver's libcuda is not on PyPI: a link-time stub
# with the driver API's symbols (read from cudarc's bindings) stands in for it here.
set -euo pipefail
cd "$(dirname "$0")/.."
node=0
[ "${1:-}" = "--node" ] && node=1
CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
TOOLS="$CACHE/cuda13"
CU="$TOOLS/nvidia/cu13"
if [ ! -x "$CU/bin/nvcc" ]; then
  echo "build-cuda: installing the CUDA 13.0 toolchain wheels into $TOOLS"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$TOOLS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
# Link names for the versioned libraries, lib64 where nvcc looks, the libcuda stub.
for l in cudart cublas cublasLt nvrtc; do ln -sfn "lib$l.so.13" "$CU/lib/lib$l.so"; done
ln -sfn libcurand.so.10 "$CU/lib/libcurand.so"
ln -sfn lib "$CU/lib64"
if [ ! -f "$CU/lib/stubs/libcuda.so" ]; then
  cudarc="$(cargo metadata --format-version 1 --manifest-path nodes/da3/Cargo.toml \
    --features cuda | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')"
  mkdir -p "$CU/lib/stubs"
  grep -oE "pub unsafe fn cu[A-Za-z0-9_]+" "$(dirname "$cudarc")/src/driver/sys/mod.rs" \
    | awk '{print "void " $4 "(void) {}"}' | sort -u > "$CU/lib/stubs/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/cuda_stub.c"
fi
export PATH="$CU/bin:$PATH" CUDA_HOME="$CU"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/cuda-target}"
nvcc --version | tail -2
cargo build --release --manifest-path nodes/da3/Cargo.toml --features cuda,cli --bin da3
if [ "$node" = 1 ]; then
  cargo build --release --manifest-path nodes/dora-da3/Cargo.toml --features cuda
fi
echo "build-cuda: built $CARGO_TARGET_DIR/release/da3$([ "$node" = 1 ] && echo " and dora-da3") (CUDA 13.0, compute capability $CUDA_COMPUTE_CAP)"
