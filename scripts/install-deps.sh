#!/bin/sh
# The Debian packages GSE needs, in one place, by purpose:
#   build   building gsed and gsectl, and the demo (a private dbus-daemon)
#   test    everything the test suite drives for real (adds nginx, dnsmasq,
#           qemu, debootstrap, polkitd, prometheus, chromium, ...)
#
#   scripts/install-deps.sh [build|test]         installs the missing ones (default test)
#   scripts/install-deps.sh [build|test] --list  prints the list (.ci/run installs it)
set -eu

build="build-essential pkg-config libudev-dev dbus-daemon"
test="$build
  dbus libglib2.0-bin systemd util-linux mount
  e2fsprogs btrfs-progs fdisk attr busybox-static
  nginx minisign zstd xz-utils cpio tar
  iproute2 dnsmasq
  shellcheck
  prometheus prometheus-node-exporter chromium curl wget polkitd
  debootstrap debian-archive-keyring qemu-system-x86 kmod grub-pc-bin
"

set_name="test"
case "${1:-}" in
build | test)
	set_name=$1
	shift
	;;
esac
if [ "$set_name" = build ]; then packages=$build; else packages=$test; fi

if [ "${1:-}" = "--list" ]; then
	# shellcheck disable=SC2086  # one word a package
	echo $packages
	exit 0
fi

missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "install-deps: installing:$missing" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing
fi
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
