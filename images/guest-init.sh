#!/bin/sh
# /init of the guest image (busybox sh). Prints the line protocol that the VMM
# reads from the serial console; see images/README.md. Every marker starts a line.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "VGPU-INIT"
echo "VGPU-KERNEL $(uname -r)"

# Kernel command line: vgpu.run=a,b,c selects the programs (selfcheck when
# absent); vgpu.policy=naive|event-aware is passed to vgpu_mirror as policy=,
# vgpu.inject=NAME (a deliberate driver bug, vmm/src/injections.rs) as inject=;
# vgpu.repeat_for=SECS runs the list again until SECS seconds have passed (a
# stress run), stopping after the first round with a failure.
run=selfcheck
policy=
inject=
repeat_for=0
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vgpu.run=*) run="${arg#vgpu.run=}" ;;
	vgpu.policy=*) policy="${arg#vgpu.policy=}" ;;
	vgpu.inject=*) inject="${arg#vgpu.inject=}" ;;
	vgpu.repeat_for=*) repeat_for="${arg#vgpu.repeat_for=}" ;;
	esac
done

# Modules, in dependency order (written by the image builder).
while read -r m; do
	[ -n "$m" ] || continue
	set --
	if [ "$m" = vgpu_mirror ]; then
		[ -z "$policy" ] || set -- "$@" "policy=$policy"
		[ -z "$inject" ] || set -- "$@" "inject=$inject"
	fi
	if ! out=$(insmod "/lib/modules/$m.ko" "$@" 2>&1); then
		echo "VGPU-ERROR module $m: $(printf "%s" "$out" | tr "\n" " ")"
	fi
done </etc/vgpu/modules

case "$repeat_for" in
'' | *[!0-9]*)
	echo "VGPU-ERROR bad vgpu.repeat_for $repeat_for"
	repeat_for=0
	;;
esac
uptime_s() { cut -d. -f1 /proc/uptime; }
started=$(uptime_s)
failed=0
rounds=0
while :; do
	rounds=$((rounds + 1))
	for name in $(echo "$run" | tr ',' ' '); do
		case "$name" in
		*[!A-Za-z0-9_.-]*)
			echo "VGPU-ERROR bad program name $name"
			failed=$((failed + 1))
			continue
			;;
		esac
		if [ -x "/bin/vgpu-$name" ]; then
			"/bin/vgpu-$name"
			code=$?
		else
			echo "VGPU-ERROR no program $name"
			code=127
		fi
		[ "$code" -eq 0 ] || failed=$((failed + 1))
		echo "VGPU-RESULT {\"name\":\"$name\",\"exit\":$code}"
	done
	[ "$failed" -eq 0 ] || break
	[ $(($(uptime_s) - started)) -lt "$repeat_for" ] || break
done

echo "VGPU-DONE {\"failed\":$failed,\"rounds\":$rounds}"
poweroff -f
reboot -f
