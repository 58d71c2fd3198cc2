#!/usr/bin/env bash
# Runs every workload under every guest-driver bug injection (`vmm run --list-injections`)
# and prints the detection matrix as a Markdown table: the coherence-oracle violations each
# run reported, "caught" when there were any, with how many of them the phase-end device
# audits found ("audit N"; the rest are stale translations a job used). The first row is the
# correct driver, which must show 0 everywhere. Usage: ci/detection-matrix.sh [--policy P] (builds the vmm first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vmm >&2
vmm=target/release/vmm
workloads=(touch protect race)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cell() { # report workload -> "N (caught)" / "0" / "?"
	python3 - "$1" "$2" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("? (no report)"); sys.exit()
w = [w for w in r.get("workloads", []) if w.get("name") == sys.argv[2]]
n = w[0].get("violations") if w else None
audit = (w[0].get("audit") or {}).get("disagreements") if w else None
seen = f" (audit {audit})" if audit else ""
print("?" if n is None else (f"{n} caught{seen}" if n > 0 else "0"))
PY
}

printf '| injection |'; printf ' %s |' "${workloads[@]}"; printf '\n|---|'
printf -- '---|%.0s' "${workloads[@]}"; printf '\n'
missed=()
for inj in none $("$vmm" run --list-injections); do
	printf '| %s |' "$inj"
	caught=no
	for w in "${workloads[@]}"; do
		args=(run --workload "$w" --report "$out/r.json" "$@")
		[ "$inj" = none ] || args+=(--inject "$inj")
		rm -f "$out/r.json"
		echo "[matrix] $inj / $w" >&2
		"$vmm" "${args[@]}" >/dev/null 2>&1 || true
		c=$(cell "$out/r.json" "$w")
		case "$c" in *caught*) caught=yes ;; esac
		printf ' %s |' "$c"
	done
	printf '\n'
	[ "$inj" = none ] || [ "$caught" = yes ] || missed+=("$inj")
done

# Injections no workload caught, with the reason where it is known.
for inj in "${missed[@]}"; do
	case "$inj" in
	skip-event:EXCLUSIVE)
		why="this guest kernel never sends EXCLUSIVE: make_device_exclusive_range() needs CONFIG_DEVICE_PRIVATE, which Debian's 6.1 kernels leave unset" ;;
	*) why="no workload makes this mistake visible yet" ;;
	esac
	printf '\nNot caught: `%s`: %s.\n' "$inj" "$why"
done
