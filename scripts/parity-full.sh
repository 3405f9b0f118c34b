#!/usr/bin/env bash
# Full-size DA3-SMALL parity with the PyTorch reference, in one command:
# installs the reference (a ~6 GB venv in ~/.cache/dora-da3, once), writes a
# seeded full-size checkpoint and its reference outputs into the same cache,
# and runs our model on them (max |ours - ref| / max |ref| <= 1e-4 per output; the bf16
# mixed precision <= 2e-2).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${DA3_CACHE:-$HOME/.cache/dora-da3}"
bash scripts/setup-reference.sh
if [ ! -f "$CACHE/fixtures/da3-small/cases.safetensors" ]; then
  "$CACHE/ref-venv/bin/python" scripts/make_fixtures.py --full da3-small --skip-small
fi
DA3_CACHE="$CACHE" cargo test -p da3 --test parity -- --ignored full_da3_small --nocapture
