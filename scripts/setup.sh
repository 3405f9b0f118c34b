#!/usr/bin/env bash
# Installs what dora-da3 needs on a fresh Debian/Ubuntu machine, idempotently:
#   - Debian packages: FFmpeg's libraries (video input), clang (bindgen), V4L2, pkg-config, ffmpeg
#   - the dora CLI 1.1.0 and the Rerun SDK 0.36.3 (viewer + .rrd reader) from PyPI into ./.venv
#   - pycolmap 4.2.1, trimesh 5.2.0, plyfile 1.1.5 (the tests read the exports with them) into ./.venv
#   - dora's opencv-video-capture 0.5.0 node and OpenCV 4.14 (headless), for the encoding tests
#   - the MCAP readers of the tests (mcap, mcap-protobuf-support) from PyPI into ./.venv
#   - oneMKL 2026.2 static libraries (mkl-static, PyPI) into ./.venv/lib, for bf16 GEMMs
#   - oneDNN 3.2 (onednn-cpu-gomp, PyPI) into ./.venv/lib, for the linear layers' GEMMs
#   - the Rust dependencies (cargo fetch)
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# A full disk shows up later as long pip or linker tracebacks: say it first. The Python
# tools take about 2.5 GiB in ./.venv, a cold debug build several GiB more.
free_gib=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "${free_gib:-0}" -lt 10 ]; then
  echo "setup: warning: only ${free_gib} GiB free here; a fresh setup and a cold build need around 10 GiB." >&2
  echo "setup: warning: the build folder (\$CARGO_TARGET_DIR, else target/) and ~/.cache/dora-da3/bench are safe to delete." >&2
fi

DEB_PKGS=(pkg-config clang libclang-dev libavcodec-dev libavformat-dev libavutil-dev
          libswscale-dev libavfilter-dev libavdevice-dev libv4l-dev ffmpeg python3-venv)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/dora ] || ! .venv/bin/dora --version 2>/dev/null | grep -q "1.1.0"; then
  echo "setup: installing dora-rs-cli==1.1.0 into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check dora-rs-cli==1.1.0
fi

# The Rerun SDK of the viewer node's version: the `rerun` viewer binary (opens
# .rrd files, RERUN_MODE=spawn) and the .rrd reader the viewer tests use.
if ! .venv/bin/python -c "import rerun, sys; sys.exit(rerun.__version__ != '0.36.3')" 2>/dev/null; then
  echo "setup: installing rerun-sdk==0.36.3 into .venv"
  .venv/bin/pip install -q --disable-pip-version-check rerun-sdk==0.36.3
fi

# What the export tests read the COLMAP, glTF and PLY files with (tests/export_check.py).
# All three use the numpy already in .venv (rerun-sdk's) and leave it as it is.
if ! .venv/bin/python -c "import sys, pycolmap, trimesh; from importlib.metadata import version; \
    sys.exit((pycolmap.__version__, trimesh.__version__, version('plyfile')) != ('4.2.1', '5.2.0', '1.1.5'))" 2>/dev/null; then
  echo "setup: installing pycolmap==4.2.1 trimesh==5.2.0 plyfile==1.1.5 into .venv"
  .venv/bin/pip install -q --disable-pip-version-check pycolmap==4.2.1 trimesh==5.2.0 plyfile==1.1.5
fi

# dora's `opencv-video-capture` camera node (PyPI), which the encoding tests run
# (tests/tests/encodings.rs), with OpenCV's headless wheel. The node is installed
# with --no-deps: it asks for the GUI build of OpenCV and for dora-rs, and the venv
# keeps its own dora-rs 1.1.0, numpy and pyarrow (OpenCV itself only needs numpy>=2).
if ! .venv/bin/python -c "import sys, cv2, importlib.metadata as m; sys.exit(m.version('opencv-video-capture') != '0.5.0' or cv2.__version__ != '4.14.0')" 2>/dev/null; then
  echo "setup: installing opencv-video-capture==0.5.0 and opencv-python-headless==4.14.0.94 into .venv"
  .venv/bin/pip install -q --disable-pip-version-check opencv-python-headless==4.14.0.94
  .venv/bin/pip install -q --disable-pip-version-check --no-deps opencv-video-capture==0.5.0
fi

# The MCAP readers of the recorder's tests (tests/mcap_check.py): the `mcap` package and its
# protobuf decoder (Foxglove schemas and the recorder's da3.Record are protobuf).
if ! .venv/bin/python -c "import sys, importlib.metadata as m; sys.exit(m.version('mcap') != '1.6.0' or m.version('mcap-protobuf-support') != '0.6.0' or m.version('protobuf') != '7.36.2')" 2>/dev/null; then
  echo "setup: installing mcap==1.6.0, mcap-protobuf-support==0.6.0, protobuf==7.36.2 into .venv"
  .venv/bin/pip install -q --disable-pip-version-check mcap==1.6.0 mcap-protobuf-support==0.6.0 protobuf==7.36.2
fi

# Intel oneMKL, static, for the CPU's bf16/f16 GEMMs (mixed precision): nodes/da3/build.rs
# links it from .venv/lib into the binaries (nothing is loaded at run time). Without it
# the build still works and half-precision weights are widened to f32 (slower).
if [ ! -f .venv/lib/libmkl_core.a ]; then
  echo "setup: installing mkl-static==2026.2.0 into .venv (oneMKL, static libraries)"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps mkl-static==2026.2.0
fi

# oneDNN 3.2 (GNU OpenMP build: needs only libgomp), for the linear layers' GEMMs (bf16 and
# f32): nodes/da3/build.rs records .venv/lib/libdnnl.so.3 and the binaries load it at run
# time (model/cpu/onednn.rs); without it the other kernels run.
if [ ! -f .venv/lib/libdnnl.so.3 ]; then
  echo "setup: installing onednn-cpu-gomp==2023.2.0 into .venv (oneDNN 3.2)"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps onednn-cpu-gomp==2023.2.0
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
cargo fetch -q
echo "setup: ok ($(.venv/bin/dora --version), $(cargo --version))"
