#!/usr/bin/env bash
# Runs the kernel's scripts/checkpatch.pl --no-tree --strict on every C source and header
# under guest-driver/ and prints one line per file; exits 1 if any file has an error, a
# warning or (--strict) a check. checkpatch.pl and its data files (spelling.txt,
# const_structs.checkpatch) come from Debian's linux-source-6.1, the package the image
# builder already keeps in ${VGPU_IMAGES_DIR:-build/images}/cache/debs (downloaded there
# with apt-get download if it is missing); they are extracted once, next to it.
#
# The headers in guest-driver/include are shared with user space (the device model's ABI
# test compiles them as plain C), so, as checkpatch itself does for include/uapi/, they
# are not asked to use the kernel-only BIT() macro (BIT_MACRO); every other check applies.
set -euo pipefail
cd "$(dirname "$0")/.."

package=linux-source-6.1
cache="${VGPU_IMAGES_DIR:-build/images}/cache"
debs="$cache/debs"

for tool in perl dpkg-deb tar xz; do
	command -v "$tool" >/dev/null || { echo "checkpatch: $tool is missing" >&2; exit 2; }
done

# A fresh checkout has no cache yet (and find on a missing directory would end the script).
mkdir -p "$debs"
newest_deb() {
	find "$debs" -maxdepth 1 -name "${package}_*_all.deb" | sort -V | tail -n 1
}

deb=$(newest_deb)
if [ -z "$deb" ]; then
	echo "checkpatch: no $package in $debs, downloading it" >&2
	(cd "$debs" && apt-get download "$package")
	deb=$(newest_deb)
	[ -n "$deb" ] || { echo "checkpatch: apt-get download $package left no .deb" >&2; exit 2; }
fi

# One directory per package version: linux-source-6.1_<version>_all.deb -> ..._<version>-checkpatch.
tools="$cache/$(basename "$deb" _all.deb)-checkpatch"
files=(checkpatch.pl spelling.txt const_structs.checkpatch)
if ! [ -f "$tools/checkpatch.pl" ] || ! [ -f "$tools/spelling.txt" ] ||
	! [ -f "$tools/const_structs.checkpatch" ]; then
	echo "checkpatch: extracting scripts/checkpatch.pl from $(basename "$deb")" >&2
	tmp=$(mktemp -d "$cache/checkpatch.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	members=()
	for f in "${files[@]}"; do
		members+=("$package/scripts/$f")
	done
	# The package's data holds the tree as one .tar.xz; only the three members leave it.
	dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$package.tar.xz" | xz -dc |
		tar -x -C "$tmp" --strip-components=2 "${members[@]}"
	for f in "${files[@]}"; do
		[ -f "$tmp/$f" ] || { echo "checkpatch: $package has no scripts/$f" >&2; exit 2; }
	done
	rm -rf "$tools"
	mv "$tmp" "$tools"
	trap - EXIT
fi

mapfile -t sources < <(find guest-driver -type f \( -name '*.c' -o -name '*.h' \) \
	! -name '*.mod.c' | sort)
[ "${#sources[@]}" -gt 0 ] || { echo "checkpatch: no sources under guest-driver/" >&2; exit 2; }

failed=0
for f in "${sources[@]}"; do
	args=(--no-tree --strict --terse --show-types --no-summary --color=never -f)
	note=""
	case "$f" in
	guest-driver/include/*)
		args=(--ignore BIT_MACRO "${args[@]}")
		note=" (shared with user space: BIT_MACRO not checked, as for include/uapi/)"
		;;
	esac
	# checkpatch exits 1 on findings; what it prints decides here.
	out=$(perl "$tools/checkpatch.pl" "${args[@]}" "$f" 2>&1) || true
	findings=$(grep -cE '^[^:]+:[0-9]+: (ERROR|WARNING|CHECK):' <<<"$out" || true)
	if [ "$findings" -eq 0 ] && [ -z "$out" ]; then
		echo "ok    $f$note"
	else
		echo "FAIL  $f: $findings findings$note"
		sed 's/^/      /' <<<"$out"
		failed=1
	fi
done
exit "$failed"
