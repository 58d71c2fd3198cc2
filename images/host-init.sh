#!/bin/sh
# /init of the virtual-host image (busybox sh), run by QEMU TCG with an AMD CPU
# that has SVM and nested paging. Loads kvm_amd, runs the vmm on /dev/kvm with the
# guest image under /guest, and reports back on the serial console; see
# images/README.md. Every marker starts a line.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "VGPU-HOST-INIT"

while read -r m; do
	[ -n "$m" ] || continue
	if ! out=$(insmod "/lib/modules/$m.ko" 2>&1); then
		echo "VGPU-HOST-ERROR module $m: $(printf "%s" "$out" | tr "\n" " ")"
	fi
done </etc/vgpu/modules

# vgpu.command=selftest,hmm: the vmm subcommand (default run); vgpu.args=--cpus,2,--mem,512M:
# its extra arguments. Both comma-separated.
command=run
args=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vgpu.command=*) command=$(echo "${arg#vgpu.command=}" | tr ',' ' ') ;;
	vgpu.args=*) args=$(echo "${arg#vgpu.args=}" | tr ',' ' ') ;;
	esac
done

if [ -c /dev/kvm ]; then
	# shellcheck disable=SC2086 # $command and $args are word lists on purpose
	/bin/vmm $command --host kvm --kernel /guest/vmlinuz --initrd /guest/initrd.img \
		--report /tmp/report.json $args
	code=$?
else
	echo "VGPU-HOST-ERROR no /dev/kvm"
	code=125
fi

if [ -f /tmp/report.json ]; then
	echo "VGPU-HOST-REPORT $(tr -d '\n' </tmp/report.json)"
fi
echo "VGPU-HOST-EXIT $code"
poweroff -f
reboot -f
