#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, checks formatting,
# lints and the C's kernel style (checkpatch), then runs every test, including the ones
# that boot a guest (through the virtual host where this machine has no hardware
# virtualization).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "host packages"
if [ "$(id -u)" -eq 0 ]; then
	bash ci/install-deps.sh
else
	echo "not root: skipping ci/install-deps.sh (guest tests SKIP if QEMU is missing)"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "checkpatch (the guest driver's C, kernel style)"
bash ci/checkpatch.sh

step "cargo test (unit, KVM smoke and guest-booting tests)"
# A test that cannot run here records why in this file (protocol::testing::skip) and
# counts as skipped, not passed; in CI (CI=true) it fails instead.
export VGPU_SKIP_LOG="$PWD/target/skips.log"
mkdir -p target
rm -f "$VGPU_SKIP_LOG"
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log || status=$?
# One summary line over every test binary, for humans and CI alike: ignored tests and
# tests that gave up are skips.
skips=0
if [ -f "$VGPU_SKIP_LOG" ]; then
	echo "skipped tests:"
	sed 's/^/  /' "$VGPU_SKIP_LOG"
	skips=$(wc -l <"$VGPU_SKIP_LOG")
fi
awk -v s="$skips" '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p - s, f, i + s }' target/test.log
exit "$status"
