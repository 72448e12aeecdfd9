#!/bin/sh
# The Debian packages that building GSE and running its tests need, in one place.
#   scripts/install-deps.sh          installs the missing ones (safe to run again)
#   scripts/install-deps.sh --list   prints the list (.ci/run installs it)
set -eu

packages="
  build-essential pkg-config libudev-dev
  dbus dbus-daemon libglib2.0-bin systemd util-linux mount
  e2fsprogs btrfs-progs fdisk attr busybox-static
  nginx minisign zstd cpio tar
  iproute2 dnsmasq
  shellcheck
  prometheus prometheus-node-exporter chromium curl polkitd
  debootstrap debian-archive-keyring qemu-system-x86 kmod
"

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
