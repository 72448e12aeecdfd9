#!/bin/sh
# GSE early-boot hook, for any initramfs generator (the dracut module in
# dracut/90gse calls it; the initramfs built by `gsectl initramfs build` runs it
# from /init).
#
# It mounts the boot partition and the user-data area, starts `gsed --early`,
# and lets `gsectl boot prepare` decide the slot and mount the new root at
# SYSROOT with the stateless layout. If anything in GSE fails, it says so loudly
# on the console and mounts the primary slot read-only as it is, so the machine
# still boots; with gse.rescue on the kernel command line (or GSE_RESCUE=1) it
# opens a rescue shell instead.
#
# Usage: gse-hook.sh [SYSROOT]          (default /sysroot)
# Settings (environment, or gse.* on the kernel command line):
#   GSE_ROOT           prefix of every GSE path (default /; tests use a directory)
#   GSE_BOOT_DEV       boot partition (default LABEL=gse-boot; empty: already there)
#   GSE_DATA_DEV       user-data area (default LABEL=gse-data; empty: already there)
#   GSE_FALLBACK_DEV   the primary slot, mounted as is when GSE fails
#                      (default LABEL=gse-a; gse.fallback=)
#   GSE_FALLBACK_FSTYPE, GSE_FALLBACK_OPTS  its filesystem type and options
#   GSED, GSECTL       the binaries (default /usr/sbin/gsed, /usr/bin/gsectl)
#   GSE_DEVICE_WAIT    seconds to wait for a device to appear (default 10)
#   GSE_CONSOLE        where the rescue shell talks (default /dev/console; -: this
#                      script's own standard input and output)

SYSROOT=${1:-${GSE_SYSROOT:-/sysroot}}

cmdline_arg() {
	line=
	read -r line </proc/cmdline 2>/dev/null
	for word in $line; do
		case "$word" in
		"$1"=*) echo "${word#*=}" ;;
		"$1") echo 1 ;;
		esac
	done
}

: "${GSE_ROOT:=/}"
: "${GSED:=/usr/sbin/gsed}"
: "${GSECTL:=/usr/bin/gsectl}"
: "${GSE_BOOT_DEV=LABEL=gse-boot}"
: "${GSE_DATA_DEV=LABEL=gse-data}"
: "${GSE_FALLBACK_DEV:=$(cmdline_arg gse.fallback)}"
: "${GSE_FALLBACK_DEV:=LABEL=gse-a}"
: "${GSE_FALLBACK_FSTYPE:=auto}"
: "${GSE_FALLBACK_OPTS:=ro}"
: "${GSE_RESCUE:=$(cmdline_arg gse.rescue)}"
: "${GSE_CONSOLE:=/dev/console}"
: "${GSE_DEVICE_WAIT:=10}"
root=${GSE_ROOT%/}

# In an initramfs, stderr is the console.
say() {
	echo "gse: $*" >&2
}

# Resolves LABEL=/UUID= to a device (blkid, or busybox findfs).
device() {
	case "$1" in
	LABEL=* | UUID=* | PARTLABEL=*)
		blkid -l -o device -t "$1" 2>/dev/null || findfs "$1" 2>/dev/null
		;;
	*) echo "$1" ;;
	esac
}

# Block devices appear a moment after their drivers load (udev, or /init's
# insmod): a device named by LABEL= is waited for, at most GSE_DEVICE_WAIT
# seconds.
mount_area() { # DEVICE TARGET
	[ -n "$1" ] || return 0
	mkdir -p "$2"
	tries=0
	until dev=$(device "$1") && [ -n "$dev" ] && [ -b "$dev" ]; do
		tries=$((tries + 1))
		[ "$tries" -gt $((GSE_DEVICE_WAIT * 10)) ] && say "no device $1 after ${GSE_DEVICE_WAIT} s" && return 1
		sleep 0.1
	done
	mount "$dev" "$2"
}

# busybox builds do not all have mountpoint(1).
is_mounted() {
	grep -q " ${1%/} " /proc/self/mounts 2>/dev/null
}

# Early boot is done with the boot partition (flags, key, its copy of
# config.d) once the slot is mounted: release it, so the running system mounts
# it as its fstab says and a clean shutdown leaves it clean.
release_boot() {
	if [ -n "$GSE_BOOT_DEV" ] && is_mounted "$root/boot"; then
		umount "$root/boot" || say "could not release the boot partition; it stays mounted from early boot"
	fi
}

# The slot's layout holds the user-data area through its own binds
# (/user-data, /home, ...): detach early boot's mount of it, so that the running
# system's mounts are the only ones and its shutdown leaves the area clean (a
# mount left in the initramfs would stay behind switch_root until power-off).
# When nothing in the new root holds it, it is unmounted.
release_data() {
	[ -n "$GSE_DATA_DEV" ] && is_mounted "$root/user-data" || return 0
	if is_mounted "$SYSROOT/user-data"; then
		umount -l "$root/user-data"
	else
		umount "$root/user-data"
	fi || say "could not release the user-data area; it stays mounted from early boot"
}

fail() {
	say "=================================================================="
	say "EARLY BOOT FAILED: $*"
	say "the health record and boot flags were NOT checked for this boot"
	say "=================================================================="
	[ -n "${gsed_pid:-}" ] && kill "$gsed_pid" 2>/dev/null
	if [ "$GSE_RESCUE" = 1 ]; then
		say "gse.rescue is set: starting a rescue shell; exit it to go on booting"
		if [ "$GSE_CONSOLE" = - ]; then
			sh -i
		else
			# shellcheck disable=SC2094  # a terminal: read and written at once
			sh -i <"$GSE_CONSOLE" >"$GSE_CONSOLE" 2>&1 || sh -i
		fi
	fi
	if ! is_mounted "$SYSROOT"; then
		say "booting the primary slot as it is: $GSE_FALLBACK_DEV, read-only"
		mkdir -p "$SYSROOT"
		# busybox's mount -t auto tries only the filesystems the kernel has
		# loaded, and a GSE initramfs loads btrfs only on demand.
		[ "$GSE_FALLBACK_FSTYPE" = auto ] && modprobe btrfs >/dev/null 2>&1
		mount -t "$GSE_FALLBACK_FSTYPE" -o "$GSE_FALLBACK_OPTS" "$(device "$GSE_FALLBACK_DEV")" "$SYSROOT" ||
			say "cannot mount $GSE_FALLBACK_DEV either; the boot cannot go on"
	fi
	release_boot
	release_data
	exit 0
}

mount_area "$GSE_BOOT_DEV" "$root/boot" || fail "cannot mount the boot partition $GSE_BOOT_DEV"
mount_area "$GSE_DATA_DEV" "$root/user-data" || fail "cannot mount the user-data area $GSE_DATA_DEV"

mkdir -p "$root/run/gse"
"$GSED" --early --root "$GSE_ROOT" &
gsed_pid=$!
tries=0
until [ -S "$root/run/gse/early.sock" ]; do
	kill -0 "$gsed_pid" 2>/dev/null || fail "gsed --early exited at start"
	tries=$((tries + 1))
	[ "$tries" -gt 100 ] && fail "gsed --early did not open its socket within 10 s"
	sleep 0.1
done

"$GSECTL" --root "$GSE_ROOT" boot prepare --sysroot "$SYSROOT" >/dev/null
case $? in
0) ;;
4)
	# The slot runs a kernel of its own, loaded by gsed: the disks are
	# released (everything early boot wrote is on them) and that kernel starts
	# with the decision handed over. It does not return unless it fails.
	wait "$gsed_pid" 2>/dev/null
	release_boot
	release_data
	sync
	"$GSECTL" --root "$GSE_ROOT" boot kexec
	fail "the slot's own kernel could not be started (see above)"
	;;
*) fail "gsectl boot prepare failed (see above)" ;;
esac
wait "$gsed_pid" 2>/dev/null
release_boot
release_data
exit 0
