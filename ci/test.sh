#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, checks formatting and
# lints, then runs every test, including the ones that boot a guest (through the virtual host
# where this machine has no hardware virtualization).
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

step "cargo test (unit, KVM smoke and guest-booting tests)"
cargo test --workspace 2>&1 | tee target/test.log
# One summary line over every test binary, for humans and CI alike.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' target/test.log
