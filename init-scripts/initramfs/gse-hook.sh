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
#   GSE_INSTALL        what a machine with no GSE system does: auto, ask or
#                      diskless (gse.install=; default: nothing, say so)
#   GSE_SERVER         a server for a machine with no config (gse.server=URL)
#   GSE_INSTALL_TRIES  attempts before an install or diskless boot gives up (default 3)
#   GSE_RETRY_WAIT     seconds between them (default 10)
#   GSE_ASK_WAIT       seconds the gse.install=ask menu waits (default 30; then diskless)

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
: "${GSE_INSTALL:=$(cmdline_arg gse.install)}"
: "${GSE_SERVER:=$(cmdline_arg gse.server)}"
: "${GSE_INSTALL_TRIES:=3}"
: "${GSE_RETRY_WAIT:=10}"
: "${GSE_ASK_WAIT:=30}"
root=${GSE_ROOT%/}

# In an initramfs, stderr is the console.
say() {
	echo "gse: $*" >&2
}

# Resolves LABEL=/UUID= to a device (blkid, or busybox findfs: busybox has
# no blkid, and `command -v` finds that out without a process).
device() {
	case "$1" in
	LABEL=* | UUID=* | PARTLABEL=*)
		{ command -v blkid >/dev/null && blkid -l -o device -t "$1" 2>/dev/null; } || findfs "$1" 2>/dev/null
		;;
	*) echo "$1" ;;
	esac
}

# Block devices appear a moment after their drivers load (udev, or /init's
# insmod): a device named by LABEL= is waited for, at most GSE_DEVICE_WAIT
# seconds. Prints the device.
wait_device() { # DEVICE
	tries=0
	until dev=$(device "$1") && [ -n "$dev" ] && [ -b "$dev" ]; do
		tries=$((tries + 1))
		[ "$tries" -gt $((GSE_DEVICE_WAIT * 10)) ] && return 1
		sleep 0.1
	done
	echo "$dev"
}

mount_area() { # DEVICE TARGET
	[ -n "$1" ] || return 0
	mkdir -p "$2"
	dev=$(wait_device "$1") || {
		say "no device $1 after ${GSE_DEVICE_WAIT} s"
		return 1
	}
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

start_gsed() {
	mkdir -p "$root/run/gse"
	rm -f "$root/run/gse/early.sock"
	"$GSED" --early --root "$GSE_ROOT" &
	gsed_pid=$!
	tries=0
	until [ -S "$root/run/gse/early.sock" ]; do
		kill -0 "$gsed_pid" 2>/dev/null || fail "gsed --early exited at start"
		tries=$((tries + 1))
		[ "$tries" -gt 100 ] && fail "gsed --early did not open its socket within 10 s"
		sleep 0.1
	done
}

stop_gsed() {
	kill "$gsed_pid" 2>/dev/null
	wait "$gsed_pid" 2>/dev/null
	gsed_pid=
}

# gse.install=ask: what the install would erase, and a choice; no answer
# within GSE_ASK_WAIT seconds runs diskless, which touches no disk. Sets
# mode and force.
ask() {
	say "------------------------------------------------------------------"
	"$GSECTL" --root "$GSE_ROOT" boot plan 2>&1 | while read -r line; do say "$line"; done
	say "  i  install GSE on this disk (the next power-on boots from it)"
	say "  d  run diskless from RAM (no disk is touched)"
	say "  s  a shell"
	say "your choice [i/d/s] (diskless in ${GSE_ASK_WAIT} s):"
	answer=
	# shellcheck disable=SC3045  # busybox's and every initramfs shell's read has -t
	read -r -t "$GSE_ASK_WAIT" answer <"$GSE_TTY" || answer=d
	case "$answer" in
	i* | I*)
		mode=auto
		if "$GSECTL" --root "$GSE_ROOT" boot plan 2>/dev/null | grep -q "IS ERASED"; then
			say "type erase to confirm that everything on the disk is lost:"
			read -r answer <"$GSE_TTY"
			[ "$answer" = erase ] || fail "not confirmed: nothing was erased"
			force=--force
		fi
		;;
	s* | S*) GSE_RESCUE=1 fail "a shell was asked for at the install menu" ;;
	*) mode=diskless ;;
	esac
}

# No GSE system here (why: $1): by gse.install, install it from the server and
# restart from the disk, or run diskless; a server that does not answer is
# asked again, GSE_INSTALL_TRIES times in all.
blank_machine() { # WHY
	say "=================================================================="
	say "$1"
	say "=================================================================="
	mode=$GSE_INSTALL
	case "$mode" in
	auto | ask | diskless) ;;
	"") fail "$1; boot with gse.install=auto (install it), ask (a menu) or diskless (run from RAM)" ;;
	*) fail "gse.install=$mode is not auto, ask or diskless" ;;
	esac
	# Until there is a disk (or for good, diskless) the user-data area is RAM;
	# the install moves what early boot put there onto the new disk.
	mkdir -p "$root/user-data"
	mount -t tmpfs -o mode=0755 tmpfs "$root/user-data" || fail "cannot mount a tmpfs at $root/user-data"
	GSE_DATA_DEV=tmpfs
	case "$GSE_SERVER" in
	"" | http://* | https://*) ;;
	*) fail "gse.server=$GSE_SERVER is not an http:// or https:// URL" ;;
	esac
	case "$GSE_SERVER" in
	*[\"\\]*) fail "gse.server=$GSE_SERVER: quotes and backslashes have no place in a server URL" ;;
	esac
	if [ -n "$GSE_SERVER" ]; then
		# Replaces the carried config's server list until the first sync
		# brings the server's own (the key that checks it stays the carried one).
		conf="$root/user-data/persistent/config.d/controller/server"
		mkdir -p "$conf"
		printf '[[server]]\nname = "gse.server"\nurl = "%s"\n' "$GSE_SERVER" >"$conf/server.info.conf"
	fi
	[ "$mode" = ask ] && ask
	attempt=1
	while :; do
		start_gsed
		if [ "$mode" = diskless ]; then
			"$GSECTL" --root "$GSE_ROOT" boot prepare --diskless --sysroot "$SYSROOT" >/dev/null && return 0
		else
			# shellcheck disable=SC2086  # force is one word or none
			if "$GSECTL" --root "$GSE_ROOT" boot install $force; then
				stop_gsed
				say "installed: restarting from the disk"
				sync
				reboot -f
				sleep 30
				fail "the machine did not restart"
			fi
		fi
		stop_gsed
		[ "$attempt" -ge "$GSE_INSTALL_TRIES" ] && fail "gave up after $attempt attempts (see above)"
		attempt=$((attempt + 1))
		say "trying again in $GSE_RETRY_WAIT s (attempt $attempt of $GSE_INSTALL_TRIES)"
		sleep "$GSE_RETRY_WAIT"
	done
}

run_prepare() {
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
}

: "${GSE_TTY:=$GSE_CONSOLE}"
[ "$GSE_TTY" = - ] && GSE_TTY=/dev/stdin

# A disk with GSE's boot partition is a GSE system, unless an install of it
# was cut short (it then starts again).
blank=''
force=''
if [ -n "$GSE_BOOT_DEV" ]; then
	if ! boot_dev=$(wait_device "$GSE_BOOT_DEV"); then
		blank="no GSE system is found locally: no $GSE_BOOT_DEV after ${GSE_DEVICE_WAIT} s"
	else
		mkdir -p "$root/boot"
		mount "$boot_dev" "$root/boot" || fail "cannot mount the boot partition $GSE_BOOT_DEV ($boot_dev)"
		if [ -e "$root/boot/gse/install-unfinished" ]; then
			umount "$root/boot"
			# gsed sees the mark too, and lays the disk out again.
			blank="the install of this machine was cut short: starting it again"
			GSE_INSTALL=${GSE_INSTALL:-auto}
		fi
	fi
fi
if [ -n "$blank" ]; then
	GSE_BOOT_DEV=
	blank_machine "$blank"
else
	mount_area "$GSE_DATA_DEV" "$root/user-data" || fail "cannot mount the user-data area $GSE_DATA_DEV"
	start_gsed
	run_prepare
fi

wait "$gsed_pid" 2>/dev/null
release_boot
release_data
exit 0
