#!/usr/bin/env bash
# Installs the host packages the project needs: QEMU for the virtual host (from
# bookworm-backports, QEMU 10), the tools that unpack Debian packages, and the
# build dependencies of the guest image. The guest driver module is built
# against Debian's linux-headers packages, which name gcc-12 as the compiler and
# run the prebuilt kbuild tools (objtool needs libelf1). The kernel's HMM selftest
# (hmm-tests) is built statically with gcc-12 against libc6-dev and the kernel uapi
# headers of linux-libc-dev, from files extracted (bash, tar, xz) from the kernel
# source package; checkpatch.pl (ci/checkpatch.sh) comes from the same package and needs
# perl. Idempotent; safe to run on every CI start.
#
# The backports source reuses the mirror URI already configured in this
# machine's apt sources, so no registry host is written anywhere.
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "must run as root (apt-get install)"
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive

backports_list=/etc/apt/sources.list.d/vgpu-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	uri=$(grep -rhoE '^(URIs:|deb)[[:space:]]+[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
	if [ -z "$uri" ]; then
		log "no Debian mirror URI found in the apt sources; cannot add bookworm-backports"
		exit 1
	fi
	log "adding bookworm-backports from the configured mirror"
	echo "deb ${uri%/} bookworm-backports main" >"$backports_list"
fi

log "apt-get update"
apt-get update -qq

pkgs=(busybox-static cpio kmod xz-utils zstd make gcc-12 libc6-dev linux-libc-dev libelf1 perl)
log "installing ${pkgs[*]}"
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

if ! command -v qemu-system-x86_64 >/dev/null; then
	log "installing qemu-system-x86 from bookworm-backports"
	apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null ||
		apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi
log "qemu: $(qemu-system-x86_64 --version | head -n1)"
