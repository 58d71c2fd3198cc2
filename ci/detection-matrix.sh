#!/usr/bin/env bash
# The detection matrix of the README: every workload under every guest-driver bug injection,
# printed by `vmm matrix` from the typed run reports (see `vmm matrix --help`).
# Usage: ci/detection-matrix.sh [vmm matrix options, e.g. --policy naive] (builds the vmm first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vmm >&2
exec target/release/vmm matrix "$@"
