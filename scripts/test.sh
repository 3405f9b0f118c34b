#!/usr/bin/env bash
# Runs every test of the project: unit tests, model parity tests on the
# committed fixtures, node tests without a daemon, and the end-to-end
# dataflows under the real `dora run`. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# The end-to-end tests run the node binaries under `dora run`: build them all
# first (`cargo test` builds a package's binaries only for its own tests), with
# the `da3` CLI (feature `da3/cli`), which the export tests run too.
cargo build --workspace --bins --features da3/cli
# Two test binaries at a time: the dataflow tests start several processes each.
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@"
