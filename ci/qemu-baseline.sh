#!/usr/bin/env bash
# Reference measurement: how long QEMU with -accel kvm takes to boot the same guest image
# inside the same virtual host that `vmm run` uses, so `boot_ms` has something to be
# compared with. Adds QEMU and its firmware to a copy of the virtual-host initramfs (a
# second cpio archive appended to it; its /init replaces the host init), boots it like
# `vmm run --host nested` does, and prints one JSON line:
#   qemu_guest_boot_ms  QEMU start to the guest's VGPU-INIT line (inside the virtual host)
#   qemu_guest_run_ms   QEMU start to its exit (guest ran selfcheck and powered off)
#   virtual_host_boot_ms, wall_ms  as seen from here
# Usage: ci/qemu-baseline.sh  (builds target/release/vmm and the images if needed)
# BASELINE_RUN=PROG[,PROG] (default selfcheck) and BASELINE_REPEAT_FOR=SECS (default 0) run
# other guest programs, as `vmm run --run ... --repeat-for ...` would: with `churn`, which
# needs no device, this is the control experiment for the nested platform under load.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[qemu-baseline] %s\n' "$*" >&2; }
qemu=$(command -v qemu-system-x86_64) || {
	echo "qemu-system-x86_64 not found: run ci/install-deps.sh" >&2
	exit 2
}
vmm=target/release/vmm
[ -x "$vmm" ] || cargo build --release -p vmm >&2
"$vmm" image build >&2
host=build/images/host-latest
run=${BASELINE_RUN:-selfcheck}
repeat_for=${BASELINE_REPEAT_FOR:-0}
guest_cmdline="console=ttyS0 panic=-1 loglevel=4 vgpu.run=$run vgpu.repeat_for=$repeat_for vgpu.expect_cpus=2 vgpu.expect_mem_mib=512"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage
mkdir -p "$stage/bin" "$stage/usr/share/qemu" "$stage/usr/share/seabios"

log "staging QEMU $($qemu --version | head -1 | awk '{print $4}') and its libraries"
cp "$qemu" "$stage/bin/qemu-system-x86_64"
ldd "$qemu" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
	mkdir -p "$stage$(dirname "$lib")"
	cp -L "$lib" "$stage$lib"
done
cp -L /usr/share/seabios/bios-256k.bin "$stage/usr/share/seabios/"
for f in linuxboot_dma.bin kvmvapic.bin; do
	cp -L "/usr/share/qemu/$f" "$stage/usr/share/qemu/"
done

cat >"$stage/init" <<INIT
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "VGPU-HOST-INIT"
while read -r m; do insmod "/lib/modules/\$m.ko"; done </etc/vgpu/modules
up() { cut -d' ' -f1 /proc/uptime; }
echo "BASELINE-START \$(up)"
qemu-system-x86_64 -accel kvm -cpu host -M q35 -smp 2 -m 512 \\
	-kernel /guest/vmlinuz -initrd /guest/initrd.img \\
	-append "$guest_cmdline" -device virtio-rng-pci \\
	-display none -serial stdio -monitor none -nodefaults -no-reboot 2>&1 |
	while IFS= read -r line; do
		case "\$line" in
		*VGPU-INIT*) echo "BASELINE-GUEST-INIT \$(up)" ;;
		esac
		echo "\$line"
	done
echo "BASELINE-END \$(up)"
poweroff -f
INIT
chmod +x "$stage/init"

initrd=$work/initrd.img
cp "$host/initrd.img" "$initrd"
(cd "$stage" && find . | cpio -o -H newc --quiet) >>"$initrd"

log "booting the virtual host (QEMU TCG, EPYC+svm+npt) with QEMU -accel kvm inside"
t0=$(date +%s%N)
declare -A at
while IFS= read -r line; do
	line=${line%$'\r'}
	now=$(( ($(date +%s%N) - t0) / 1000000 ))
	case "$line" in
	VGPU-HOST-INIT) at[host_init]=$now ;;
	BASELINE-START*) at[start]=${line#BASELINE-START } ;;
	BASELINE-GUEST-INIT*) at[guest_init]=${line#BASELINE-GUEST-INIT } ;;
	BASELINE-END*) at[end]=${line#BASELINE-END } ;;
	check* | churn:* | VGPU-RESULT* | VGPU-DONE* | *"Kernel panic"* | *"double fault"*)
		log "guest: $line" ;;
	esac
done < <(timeout $((600 + repeat_for)) "$qemu" -M q35 -cpu EPYC,+svm,+npt -accel tcg,thread=multi -smp 2 -m 1536 \
	-kernel "$host/vmlinuz" -initrd "$initrd" -append "console=ttyS0 panic=-1 loglevel=4" \
	-display none -serial stdio -monitor none -nodefaults -no-reboot </dev/null)
wall=$(( ($(date +%s%N) - t0) / 1000000 ))

for k in host_init start guest_init end; do
	[ -n "${at[$k]:-}" ] || { echo "no $k marker: the baseline run failed" >&2; exit 1; }
done
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
printf '{"qemu_guest_boot_ms":%s,"qemu_guest_run_ms":%s,"virtual_host_boot_ms":%s,"wall_ms":%s}\n' \
	"$(ms "${at[start]}" "${at[guest_init]}")" "$(ms "${at[start]}" "${at[end]}")" \
	"${at[host_init]}" "$wall"
