#!/bin/sh
# /bin/vgpu-hmm-tests in the guest image (busybox sh): runs the kernel's own HMM
# selftest, /bin/hmm-tests (tools/testing/selftests/vm/hmm-tests.c of 6.1, built
# by the image builder), against the dmirror devices of vgpu_mirror
# (/dev/hmm_dmirror0 and 1). Its raw kselftest output goes to the console
# between two markers that the host reads:
#   VGPU-KSELFTEST-BEGIN hmm
#   VGPU-KSELFTEST-END hmm <exit code of hmm-tests>
# Exits 0 when hmm-tests ran (the host judges the TAP lines), else non-zero.

# anon_write_hugetlbfs and compound each map one 2 MiB hugetlb page; the
# harness runs one test at a time. Four pages (8 MiB) leave room for a page a
# failed test has not given back yet.
HUGEPAGES=4

if [ ! -x /bin/hmm-tests ]; then
	echo "VGPU-ERROR hmm-tests: /bin/hmm-tests missing"
	exit 1
fi
# The kernel turns THP off on guests under 512 MiB of RAM (the default guest is
# just below); anon_write_huge asks for a THP with MADV_HUGEPAGE, so THP is
# allowed where asked for ("madvise", the mode the 6.1 suite passes with).
echo madvise >/sys/kernel/mm/transparent_hugepage/enabled ||
	echo "vgpu-hmm-tests: cannot set THP to madvise"
if ! echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages; then
	echo "vgpu-hmm-tests: cannot set vm.nr_hugepages"
fi
echo "vgpu-hmm-tests: vm.nr_hugepages=$(cat /proc/sys/vm/nr_hugepages) (asked $HUGEPAGES)," \
	"THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
for n in 0 1; do
	[ -c "/dev/hmm_dmirror$n" ] || echo "vgpu-hmm-tests: /dev/hmm_dmirror$n missing"
done

# Each failed test costs the 6.1 harness a 30 s teardown loop that stalls a
# nested guest; the driver waits up to 30 s for the device meanwhile (instead
# of its default 5 s): with the default, the last CI dry run's guest died of a
# double fault during those stalls, with 30 s the suite ran to its end.
echo 30000 >/sys/module/vgpu_mirror/parameters/timeout_ms ||
	echo "vgpu-hmm-tests: cannot raise vgpu_mirror timeout_ms"

# file_read and file_write create O_TMPFILE files in /tmp (a tmpfs).
cd /tmp || exit 1
# The output goes to the console as it is, except that a line repeated at once
# is printed once (uniq): a failed test whose teardown asserts again makes the
# 6.1 harness print the same line in a loop until its 30 s timeout, and that
# flood on the serial console stalls a nested guest for minutes (CPU 0 in the
# serial interrupt). TAP lines are numbered, so they never repeat.
echo "VGPU-KSELFTEST-BEGIN hmm"
rm -f /tmp/hmm-tests.exit
{
	/bin/hmm-tests 2>&1
	echo $? >/tmp/hmm-tests.exit
} | uniq
code=$(cat /tmp/hmm-tests.exit 2>/dev/null || echo 127)
echo "VGPU-KSELFTEST-END hmm $code"
# 126/127: the shell could not execute it.
if [ "$code" -eq 126 ] || [ "$code" -eq 127 ]; then
	exit "$code"
fi
exit 0
