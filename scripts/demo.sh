#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: the bundled sample images
# through the DA3 dataflow. Results land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
FLOW="${1:-dataflows/frames.yml}"
cargo build --workspace --bins
mkdir -p out
dora run "$FLOW"
echo "demo: done; outputs in $PWD/out/"
